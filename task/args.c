/* Typed positional arguments: the public setters and getters. The setters
 * check the type family here and leave value checks (ranges, finiteness,
 * UTF-8) and the copy to kiln__values_add, so the codec and the setters
 * accept exactly the same values. A task's results (task/context.c) go
 * through the same kiln__values_put. */
#include "task/task.h"

#include <inttypes.h>

#define NONE KILN__TYPE_NONE

static const char *tname(kiln_type t)
{
    const char *s = kiln_type_name(t);

    return s != NULL ? s : "?";
}

/* ---- setters ----------------------------------------------------------- */

kiln_err kiln__family_check(const char *what, size_t index, kiln_type t,
                            kiln__family fam, kiln_error *err)
{
    if ((unsigned)t >= (unsigned)fam.lo && (unsigned)t <= (unsigned)fam.hi &&
        t != fam.except)
        return KILN_OK;
    return kiln__fail(err, KILN_EINVAL,
                      "%s %zu: type %s is not one of %s ... %s%s%s", what,
                      index, tname(t), tname(fam.lo), tname(fam.hi),
                      fam.except != NONE ? " except " : "",
                      fam.except != NONE ? tname(fam.except) : "");
}

/* The pointers in `v` are borrowed from the caller; kiln__values_add
 * copies them and leaves the list unchanged on failure. */
kiln_err kiln__values_put(kiln__values *list, const char *what,
                          const kiln__value *v, kiln__family fam,
                          kiln_error *err)
{
    kiln_err rc = kiln__family_check(what, list->n, v->type, fam, err);

    if (rc == KILN_OK && (rc = kiln__values_add(list, v, err)) != KILN_OK)
        kiln__prefix(err, "%s %zu", what, list->n);
    return rc;
}

static kiln_err add(kiln_signature *sig, const kiln__value *v, kiln__family fam,
                    kiln_error *err)
{
    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature is required");
    return kiln__values_put(&sig->args, "arg", v, fam, err);
}

static kiln_err add_slice(kiln_signature *sig, const char *name, kiln_type type,
                          kiln__family fam, const void *ptr, size_t n,
                          kiln_error *err)
{
    kiln__value v = {.type = type, .name = (char *)name};

    v.v.arr.ptr = (void *)ptr;
    v.v.arr.n = n;
    return add(sig, &v, fam, err);
}

kiln_err kiln_signature_add_arg_bool(kiln_signature *sig, const char *name,
                                     bool v, kiln_error *err)
{
    kiln__value a = {.type = KILN_TYPE_BOOL, .name = (char *)name};

    a.v.b = v;
    return add(sig, &a, KILN__FAMILY_OF(KILN_TYPE_BOOL), err);
}

kiln_err kiln_signature_add_arg_int(kiln_signature *sig, const char *name,
                                    kiln_type type, int64_t v, kiln_error *err)
{
    kiln__value a = {.type = type, .name = (char *)name};

    a.v.i = v;
    return add(sig, &a, KILN__FAMILY_INT, err);
}

kiln_err kiln_signature_add_arg_uint(kiln_signature *sig, const char *name,
                                     kiln_type type, uint64_t v,
                                     kiln_error *err)
{
    kiln__value a = {.type = type, .name = (char *)name};

    a.v.u = v;
    return add(sig, &a, KILN__FAMILY_UINT, err);
}

/* A float32 is rounded to the nearest float by kiln__values_add. */
kiln_err kiln_signature_add_arg_float(kiln_signature *sig, const char *name,
                                      kiln_type type, double v, kiln_error *err)
{
    kiln__value a = {.type = type, .name = (char *)name};

    a.v.f = v;
    return add(sig, &a, KILN__FAMILY_FLOAT, err);
}

kiln_err kiln_signature_add_arg_int64(kiln_signature *sig, const char *name,
                                      int64_t v, kiln_error *err)
{
    return kiln_signature_add_arg_int(sig, name, KILN_TYPE_INT64, v, err);
}

kiln_err kiln_signature_add_arg_uint64(kiln_signature *sig, const char *name,
                                       uint64_t v, kiln_error *err)
{
    return kiln_signature_add_arg_uint(sig, name, KILN_TYPE_UINT64, v, err);
}

kiln_err kiln_signature_add_arg_float64(kiln_signature *sig, const char *name,
                                        double v, kiln_error *err)
{
    return kiln_signature_add_arg_float(sig, name, KILN_TYPE_FLOAT64, v, err);
}

kiln_err kiln_signature_add_arg_string(kiln_signature *sig, const char *name,
                                       const char *v, kiln_error *err)
{
    kiln__value a = {.type = KILN_TYPE_STRING, .name = (char *)name};

    a.v.s = (char *)v;
    return add(sig, &a, KILN__FAMILY_OF(KILN_TYPE_STRING), err);
}

kiln_err kiln_signature_add_arg_bytes(kiln_signature *sig, const char *name,
                                      const void *data, size_t n,
                                      kiln_error *err)
{
    return add_slice(sig, name, KILN_TYPE_BYTES,
                     KILN__FAMILY_OF(KILN_TYPE_BYTES), data, n, err);
}

kiln_err kiln_signature_add_arg_bool_slice(kiln_signature *sig,
                                           const char *name, const bool *v,
                                           size_t n, kiln_error *err)
{
    return add_slice(sig, name, KILN_TYPE_BOOL_SLICE,
                     KILN__FAMILY_OF(KILN_TYPE_BOOL_SLICE), v, n, err);
}

kiln_err kiln_signature_add_arg_int_slice(kiln_signature *sig, const char *name,
                                          kiln_type type, const int64_t *v,
                                          size_t n, kiln_error *err)
{
    return add_slice(sig, name, type, KILN__FAMILY_INT_SLICE, v, n, err);
}

kiln_err kiln_signature_add_arg_uint_slice(kiln_signature *sig,
                                           const char *name, kiln_type type,
                                           const uint64_t *v, size_t n,
                                           kiln_error *err)
{
    return add_slice(sig, name, type, KILN__FAMILY_UINT_SLICE, v, n, err);
}

kiln_err kiln_signature_add_arg_uint8_slice(kiln_signature *sig,
                                            const char *name, const uint8_t *v,
                                            size_t n, kiln_error *err)
{
    return add_slice(sig, name, KILN_TYPE_UINT8_SLICE,
                     KILN__FAMILY_OF(KILN_TYPE_UINT8_SLICE), v, n, err);
}

kiln_err kiln_signature_add_arg_float_slice(kiln_signature *sig,
                                            const char *name, kiln_type type,
                                            const double *v, size_t n,
                                            kiln_error *err)
{
    return add_slice(sig, name, type, KILN__FAMILY_FLOAT_SLICE, v, n, err);
}

kiln_err kiln_signature_add_arg_string_slice(kiln_signature *sig,
                                             const char *name,
                                             const char *const *v, size_t n,
                                             kiln_error *err)
{
    return add_slice(sig, name, KILN_TYPE_STRING_SLICE,
                     KILN__FAMILY_OF(KILN_TYPE_STRING_SLICE), v, n, err);
}

/* ---- getters -----------------------------------------------------------
 * The lookups return the argument, or NULL with *rc and `err` set, so
 * every getter writes its out-parameters only on success. */

size_t kiln_signature_arg_count(const kiln_signature *sig)
{
    return sig != NULL ? sig->args.n : 0;
}

/* Argument `i`; `out` is the caller's out-parameter, checked here once
 * for every getter. */
static const kiln__value *arg_at(const kiln_signature *sig, size_t i,
                                 const void *out, kiln_err *rc, kiln_error *err)
{
    if (sig == NULL || out == NULL) {
        *rc = kiln__fail(err, KILN_EINVAL,
                         "arg %zu: signature and out are required", i);
        return NULL;
    }
    if (i >= sig->args.n) {
        *rc = kiln__fail(err, KILN_ENOTFOUND,
                         "arg %zu: no such argument (%zu in all)", i,
                         sig->args.n);
        return NULL;
    }
    *rc = KILN_OK;
    return &sig->args.items[i];
}

static bool in(kiln_type t, kiln_type lo, kiln_type hi)
{
    return t >= lo && t <= hi;
}

/* Argument `i` if its type is lo..hi but not `except`. */
static const kiln__value *typed_at(const kiln_signature *sig, size_t i,
                                   const void *out, const char *want,
                                   kiln_type lo, kiln_type hi, kiln_type except,
                                   kiln_err *rc, kiln_error *err)
{
    const kiln__value *v = arg_at(sig, i, out, rc, err);

    if (v != NULL && (!in(v->type, lo, hi) || v->type == except)) {
        *rc = kiln__fail(err, KILN_ETYPE, "arg %zu: want %s, have %s", i, want,
                         tname(v->type));
        return NULL;
    }
    return v;
}

/* typed_at for slices, which also hands out the length. */
static const kiln__value *slice_at(const kiln_signature *sig, size_t i,
                                   const void *out, size_t *n, const char *want,
                                   kiln_type lo, kiln_type hi, kiln_type except,
                                   kiln_err *rc, kiln_error *err)
{
    const kiln__value *v;

    v = typed_at(sig, i, n != NULL ? out : NULL, want, lo, hi, except, rc, err);
    if (v != NULL)
        *n = v->v.arr.n;
    return v;
}

kiln_err kiln_signature_arg_type(const kiln_signature *sig, size_t i,
                                 kiln_type *out, kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = arg_at(sig, i, out, &rc, err);

    if (v != NULL)
        *out = v->type;
    return rc;
}

const char *kiln_signature_arg_name(const kiln_signature *sig, size_t i)
{
    if (sig == NULL || i >= sig->args.n)
        return NULL;
    return sig->args.items[i].name != NULL ? sig->args.items[i].name : "";
}

kiln_err kiln_signature_arg_bool(const kiln_signature *sig, size_t i, bool *out,
                                 kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = typed_at(sig, i, out, "bool", KILN_TYPE_BOOL,
                                    KILN_TYPE_BOOL, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.b;
    return rc;
}

kiln_err kiln_signature_arg_int64(const kiln_signature *sig, size_t i,
                                  int64_t *out, kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = typed_at(sig, i, out, "int64", KILN_TYPE_INT,
                                    KILN_TYPE_UINT64, NONE, &rc, err);

    if (v == NULL)
        return rc;
    if (in(v->type, KILN_TYPE_INT, KILN_TYPE_INT64))
        *out = v->v.i;
    else if (v->v.u <= (uint64_t)INT64_MAX)
        *out = (int64_t)v->v.u;
    else
        return kiln__fail(err, KILN_ERANGE,
                          "arg %zu: want int64, have %s %" PRIu64
                          " (out of range)",
                          i, tname(v->type), v->v.u);
    return KILN_OK;
}

kiln_err kiln_signature_arg_uint64(const kiln_signature *sig, size_t i,
                                   uint64_t *out, kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = typed_at(sig, i, out, "uint64", KILN_TYPE_INT,
                                    KILN_TYPE_UINT64, NONE, &rc, err);

    if (v == NULL)
        return rc;
    if (in(v->type, KILN_TYPE_UINT, KILN_TYPE_UINT64))
        *out = v->v.u;
    else if (v->v.i >= 0)
        *out = (uint64_t)v->v.i;
    else
        return kiln__fail(err, KILN_ERANGE,
                          "arg %zu: want uint64, have %s %" PRId64
                          " (out of range)",
                          i, tname(v->type), v->v.i);
    return KILN_OK;
}

kiln_err kiln_signature_arg_double(const kiln_signature *sig, size_t i,
                                   double *out, kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = typed_at(sig, i, out, "float64", KILN_TYPE_FLOAT32,
                                    KILN_TYPE_FLOAT64, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.f;
    return rc;
}

kiln_err kiln_signature_arg_string(const kiln_signature *sig, size_t i,
                                   const char **out, kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = typed_at(sig, i, out, "string", KILN_TYPE_STRING,
                                    KILN_TYPE_STRING, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.s;
    return rc;
}

/* "[]byte" and "[]uint8" are two names for the same bytes. */
kiln_err kiln_signature_arg_bytes(const kiln_signature *sig, size_t i,
                                  const uint8_t **out, size_t *n,
                                  kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v = arg_at(sig, i, n != NULL ? out : NULL, &rc, err);

    if (v == NULL)
        return rc;
    if (v->type != KILN_TYPE_BYTES && v->type != KILN_TYPE_UINT8_SLICE)
        return kiln__fail(err, KILN_ETYPE, "arg %zu: want []byte, have %s", i,
                          tname(v->type));
    *out = v->v.arr.ptr;
    *n = v->v.arr.n;
    return KILN_OK;
}

kiln_err kiln_signature_arg_bool_slice(const kiln_signature *sig, size_t i,
                                       const bool **out, size_t *n,
                                       kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v =
        slice_at(sig, i, out, n, "[]bool", KILN_TYPE_BOOL_SLICE,
                 KILN_TYPE_BOOL_SLICE, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.arr.ptr;
    return rc;
}

kiln_err kiln_signature_arg_int64_slice(const kiln_signature *sig, size_t i,
                                        const int64_t **out, size_t *n,
                                        kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v =
        slice_at(sig, i, out, n, "[]int64", KILN_TYPE_INT_SLICE,
                 KILN_TYPE_INT64_SLICE, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.arr.ptr;
    return rc;
}

/* []uint8 sits between []uint and []uint16 in the enum and is stored as
 * bytes, so this getter skips it; kiln_signature_arg_bytes reads it. */
kiln_err kiln_signature_arg_uint64_slice(const kiln_signature *sig, size_t i,
                                         const uint64_t **out, size_t *n,
                                         kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v =
        slice_at(sig, i, out, n, "[]uint64", KILN_TYPE_UINT_SLICE,
                 KILN_TYPE_UINT64_SLICE, KILN_TYPE_UINT8_SLICE, &rc, err);

    if (v != NULL)
        *out = v->v.arr.ptr;
    return rc;
}

kiln_err kiln_signature_arg_double_slice(const kiln_signature *sig, size_t i,
                                         const double **out, size_t *n,
                                         kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v =
        slice_at(sig, i, out, n, "[]float64", KILN_TYPE_FLOAT32_SLICE,
                 KILN_TYPE_FLOAT64_SLICE, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.arr.ptr;
    return rc;
}

kiln_err kiln_signature_arg_string_slice(const kiln_signature *sig, size_t i,
                                         const char *const **out, size_t *n,
                                         kiln_error *err)
{
    kiln_err rc;
    const kiln__value *v =
        slice_at(sig, i, out, n, "[]string", KILN_TYPE_STRING_SLICE,
                 KILN_TYPE_STRING_SLICE, NONE, &rc, err);

    if (v != NULL)
        *out = v->v.arr.ptr;
    return rc;
}
