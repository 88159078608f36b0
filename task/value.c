/* Typed values: the checks every argument and result passes, deep copies
 * and release. The checks live here, not in the setters or the codec, so
 * a signature never holds a value that JSON or Go cannot carry. */
#include "task/task.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Doubles below this magnitude round to a finite float (to FLT_MAX at
 * most); it is FLT_MAX plus half an ulp, and the tie rounds to infinity.
 * Go writes FLT_MAX as 3.4028235e+38, which parses to a double slightly
 * above FLT_MAX, so the limit cannot be FLT_MAX itself. */
#define FLOAT32_LIMIT 0x1.ffffffp+127

/* kiln_type_name for messages: never NULL. */
static const char *tname(kiln_type t)
{
    const char *s = kiln_type_name(t);

    return s != NULL ? s : "?";
}

static void int_bounds(kiln_type et, int64_t *lo, int64_t *hi)
{
    switch (et) {
    case KILN_TYPE_INT8:
        *lo = INT8_MIN, *hi = INT8_MAX;
        break;
    case KILN_TYPE_INT16:
        *lo = INT16_MIN, *hi = INT16_MAX;
        break;
    case KILN_TYPE_INT32:
        *lo = INT32_MIN, *hi = INT32_MAX;
        break;
    default:
        *lo = INT64_MIN, *hi = INT64_MAX;
        break;
    }
}

static uint64_t uint_bound(kiln_type et)
{
    switch (et) {
    case KILN_TYPE_UINT8:
        return UINT8_MAX;
    case KILN_TYPE_UINT16:
        return UINT16_MAX;
    case KILN_TYPE_UINT32:
        return UINT32_MAX;
    default:
        return UINT64_MAX;
    }
}

/* Fails with a message about element `i` of `v`, named "int8" for a
 * scalar or "[]int8[3]" for a slice element. Formats only on failure. */
static kiln_err bad_elem(kiln_error *err, kiln_err code, const kiln__value *v,
                         size_t i, const char *fmt, ...) KILN_PRINTF(5, 6);

static kiln_err bad_elem(kiln_error *err, kiln_err code, const kiln__value *v,
                         size_t i, const char *fmt, ...)
{
    char what[160];
    va_list ap;

    va_start(ap, fmt);
    if (vsnprintf(what, sizeof(what), fmt, ap) < 0)
        what[0] = '\0';
    va_end(ap);
    if (kiln__type_is_slice(v->type))
        return kiln__fail(err, code, "%s[%zu] %s", tname(v->type), i, what);
    return kiln__fail(err, code, "%s %s", tname(v->type), what);
}

/* Checks element `i` of `v` (a scalar has only element 0). */
static kiln_err check_elem(const kiln__value *v, size_t i, kiln_error *err)
{
    kiln_type et = kiln__type_elem(v->type);
    bool slice = kiln__type_is_slice(v->type);
    int64_t lo, hi, s;
    uint64_t u;
    double f;
    const char *str;

    if (et >= KILN_TYPE_INT && et <= KILN_TYPE_INT64) {
        s = slice ? ((const int64_t *)v->v.arr.ptr)[i] : v->v.i;
        int_bounds(et, &lo, &hi);
        if (s < lo || s > hi)
            return bad_elem(err, KILN_ERANGE, v, i,
                            "value %" PRId64 " out of range [%" PRId64
                            ", %" PRId64 "]",
                            s, lo, hi);
    } else if (et >= KILN_TYPE_UINT && et <= KILN_TYPE_UINT64) {
        if (v->type == KILN_TYPE_UINT8_SLICE || v->type == KILN_TYPE_BYTES)
            return KILN_OK; /* stored as uint8_t: always in range */
        u = slice ? ((const uint64_t *)v->v.arr.ptr)[i] : v->v.u;
        if (u > uint_bound(et))
            return bad_elem(err, KILN_ERANGE, v, i,
                            "value %" PRIu64 " out of range [0, %" PRIu64 "]",
                            u, uint_bound(et));
    } else if (et == KILN_TYPE_FLOAT32 || et == KILN_TYPE_FLOAT64) {
        f = slice ? ((const double *)v->v.arr.ptr)[i] : v->v.f;
        if (!isfinite(f))
            return bad_elem(err, KILN_EINVAL, v, i,
                            "value %g: JSON has no NaN or infinity", f);
        if (et == KILN_TYPE_FLOAT32 && fabs(f) >= FLOAT32_LIMIT)
            return bad_elem(err, KILN_ERANGE, v, i,
                            "value %g out of range [%g, %g]", f,
                            -(double)FLT_MAX, (double)FLT_MAX);
    } else if (et == KILN_TYPE_STRING) {
        str = slice ? ((char *const *)v->v.arr.ptr)[i] : v->v.s;
        if (str == NULL)
            return bad_elem(err, KILN_EINVAL, v, i, "is NULL");
        if (!kiln__utf8_valid(str, strlen(str)))
            return bad_elem(err, KILN_EINVAL, v, i, "is not valid UTF-8");
    }
    return KILN_OK;
}

static kiln_err check_value(const kiln__value *v, kiln_error *err)
{
    kiln_err rc;
    size_t n = 1;

    if ((unsigned)v->type > (unsigned)KILN_TYPE_LAST)
        return kiln__fail(err, KILN_EINVAL, "unknown value type %d",
                          (int)v->type);
    if (v->name != NULL && !kiln__utf8_valid(v->name, strlen(v->name)))
        return kiln__fail(err, KILN_EINVAL, "name is not valid UTF-8");
    if (kiln__type_is_slice(v->type)) {
        n = v->v.arr.n;
        if (n > 0 && v->v.arr.ptr == NULL)
            return kiln__fail(err, KILN_EINVAL, "%s of %zu with no data",
                              tname(v->type), n);
        if (n > SIZE_MAX / kiln__type_elem_size(v->type))
            return kiln__fail(err, KILN_ENOMEM, "%s of %zu elements",
                              tname(v->type), n);
    }
    for (size_t i = 0; i < n; i++)
        if ((rc = check_elem(v, i, err)) != KILN_OK)
            return rc;
    return KILN_OK;
}

/* A float32 is stored as the double of the nearest float, so reading it
 * back and encoding it gives what Go's float32 would. Only called on
 * checked values: the magnitude is below FLOAT32_LIMIT. */
static double round_float32(double f)
{
    if (fabs(f) > FLT_MAX)
        return copysign((double)FLT_MAX, f);
    return (double)(float)f;
}

static void normalize(kiln__value *v)
{
    if (v->type == KILN_TYPE_FLOAT32) {
        v->v.f = round_float32(v->v.f);
    } else if (v->type == KILN_TYPE_FLOAT32_SLICE) {
        double *a = v->v.arr.ptr;
        for (size_t i = 0; i < v->v.arr.n; i++)
            a[i] = round_float32(a[i]);
    }
}

char **kiln__strings_alloc(size_t n, size_t bytes, char **text)
{
    char **a;

    if (n > (SIZE_MAX - bytes) / (sizeof(char *) + 1) ||
        (a = kiln__malloc(n * (sizeof(char *) + 1) + bytes)) == NULL)
        return NULL;
    *text = (char *)(a + n);
    return a;
}

static kiln_err copy_strings(kiln__value *dst, const kiln__value *src)
{
    char *const *from = src->v.arr.ptr;
    size_t n = src->v.arr.n, bytes = 0, len;
    char **to, *text;

    for (size_t i = 0; i < n; i++)
        bytes += strlen(from[i]);
    if ((to = kiln__strings_alloc(n, bytes, &text)) == NULL)
        return KILN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        len = strlen(from[i]) + 1;
        memcpy(text, from[i], len);
        to[i] = text;
        text += len;
    }
    dst->v.arr.ptr = to;
    dst->v.arr.n = n;
    return KILN_OK;
}

/* Deep copy without checks. On failure `dst` holds nothing. */
static kiln_err copy_value(kiln__value *dst, const kiln__value *src,
                           kiln_error *err)
{
    kiln_err rc = KILN_OK;
    size_t bytes;

    memset(dst, 0, sizeof(*dst));
    dst->type = src->type;
    if (src->name != NULL && (dst->name = kiln__strdup(src->name)) == NULL)
        rc = KILN_ENOMEM;
    else if (src->type == KILN_TYPE_STRING) {
        if ((dst->v.s = kiln__strdup(src->v.s)) == NULL)
            rc = KILN_ENOMEM;
    } else if (src->type == KILN_TYPE_STRING_SLICE) {
        if (src->v.arr.n > 0)
            rc = copy_strings(dst, src);
    } else if (kiln__type_is_slice(src->type)) {
        if (src->v.arr.n > 0) {
            bytes = src->v.arr.n * kiln__type_elem_size(src->type);
            if ((dst->v.arr.ptr = kiln__malloc(bytes)) == NULL)
                rc = KILN_ENOMEM;
            else
                memcpy(dst->v.arr.ptr, src->v.arr.ptr, bytes);
            dst->v.arr.n = src->v.arr.n;
        }
    } else {
        dst->v = src->v;
    }
    if (rc != KILN_OK) {
        kiln__value_release(dst);
        return kiln__fail(err, rc, "copying a %s value", tname(src->type));
    }
    return KILN_OK;
}

static kiln_err reserve(kiln__values *list, kiln_error *err)
{
    size_t cap;
    kiln__value *items;

    if (list->n < list->cap)
        return KILN_OK;
    cap = list->cap == 0 ? 4 : list->cap * 2;
    if (cap > SIZE_MAX / sizeof(*items))
        return kiln__fail(err, KILN_ENOMEM, "value list of %zu", cap);
    items = kiln__realloc(list->items, cap * sizeof(*items));
    if (items == NULL)
        return kiln__fail(err, KILN_ENOMEM, "value list of %zu", cap);
    list->items = items;
    list->cap = cap;
    return KILN_OK;
}

kiln_err kiln__values_add(kiln__values *list, const kiln__value *v,
                          kiln_error *err)
{
    kiln__value copy;
    kiln_err rc;

    if (list == NULL || v == NULL)
        return kiln__fail(err, KILN_EINVAL, "list and value are required");
    if ((rc = check_value(v, err)) != KILN_OK)
        return rc;
    if ((rc = reserve(list, err)) != KILN_OK)
        return rc;
    if ((rc = copy_value(&copy, v, err)) != KILN_OK)
        return rc;
    normalize(&copy);
    list->items[list->n++] = copy;
    return KILN_OK;
}

/* On success and on failure `v` is left empty, so a caller that releases
 * it afterwards by habit frees nothing twice. */
kiln_err kiln__values_add_owned(kiln__values *list, kiln__value *v,
                                kiln_error *err)
{
    kiln_err rc;

    if (v == NULL)
        return kiln__fail(err, KILN_EINVAL, "value is required");
    if (list == NULL)
        rc = kiln__fail(err, KILN_EINVAL, "list is required");
    else if ((rc = check_value(v, err)) == KILN_OK &&
             (rc = reserve(list, err)) == KILN_OK) {
        normalize(v);
        list->items[list->n++] = *v;
        memset(v, 0, sizeof(*v));
        return KILN_OK;
    }
    kiln__value_release(v);
    return rc;
}

kiln_err kiln__values_push(kiln__values *list, kiln__value *v, kiln_error *err)
{
    kiln_err rc = reserve(list, err);

    if (rc != KILN_OK) {
        kiln__value_release(v);
        return rc;
    }
    normalize(v);
    list->items[list->n++] = *v;
    memset(v, 0, sizeof(*v));
    return KILN_OK;
}

kiln_err kiln__values_copy(kiln__values *dst, const kiln__values *src,
                           kiln_error *err)
{
    kiln__values tmp = {0};
    kiln_err rc;

    if (dst == NULL || src == NULL)
        return kiln__fail(err, KILN_EINVAL, "lists are required");
    if (src->n > 0) {
        tmp.items = kiln__calloc(src->n, sizeof(*tmp.items));
        if (tmp.items == NULL)
            return kiln__fail(err, KILN_ENOMEM, "value list of %zu", src->n);
        tmp.cap = src->n;
    }
    for (size_t i = 0; i < src->n; i++) {
        if ((rc = copy_value(&tmp.items[i], &src->items[i], err)) != KILN_OK) {
            kiln__values_clear(&tmp);
            return rc;
        }
        tmp.n++;
    }
    kiln__values_clear(dst);
    *dst = tmp;
    return KILN_OK;
}

void kiln__values_clear(kiln__values *list)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < list->n; i++)
        kiln__value_release(&list->items[i]);
    kiln__free(list->items);
    memset(list, 0, sizeof(*list));
}

/* A value with a type outside the enum can only have its name freed: it
 * is unknown which union member would be a pointer. */
void kiln__value_release(kiln__value *v)
{
    if (v == NULL)
        return;
    kiln__free(v->name);
    if (v->type == KILN_TYPE_STRING) {
        kiln__free(v->v.s);
    } else if (kiln__type_is_slice(v->type)) {
        kiln__free(v->v.arr.ptr); /* a []string's strings live in it too */
    }
    memset(v, 0, sizeof(*v));
}
