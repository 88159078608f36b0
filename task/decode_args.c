/* Decoding machinery's Args: [{"Name":"","Type":"int64","Value":4}],
 * straight from the body's text into the signature's values.
 *
 * Each Value must match its Type exactly, as machinery's
 * tasks/reflect.go demands, with two differences: kiln refuses integers
 * outside their type's range (machinery wraps them silently through
 * reflect.Value.SetInt) and accepts a JSON array of numbers for "[]byte"
 * as for "[]uint8" (machinery does too; non-Go producers write it). A
 * null Value for a slice type is an empty slice, as in reflect.go.
 *
 * Go reads an argument's keys in any order, so the Value is first passed
 * over (and checked) where it stands, then decoded once the object has
 * given its last Type. That first pass also counts a slice's elements and
 * its strings' bytes, so each slice is one allocation of its exact size:
 * a slice never takes more than 4 bytes per byte of its text (a one-digit
 * int64 is 2 bytes of text and 8 in memory). */
#include "task/codec.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Doubles from here on round to infinity as a float (FLT_MAX + half an
 * ulp); the same limit as the value checks in value.c. */
#define FLOAT32_LIMIT 0x1.ffffffp+127

/* An argument sits in the body's object (depth 1) and the Args array. */
#define ARG_DEPTH 3

/* ---- one scalar --------------------------------------------------------- */

typedef union scalar {
    bool b;
    int64_t i;
    uint64_t u;
    double f;
    char *s;
} scalar;

/* Where a value is, for messages: Args[arg].Value, or [elem] of it. */
typedef struct place {
    size_t arg;
    size_t elem;
    bool in_slice;
} place;

static const char *path(const place *at, char *buf, size_t n)
{
    if (at->in_slice)
        (void)snprintf(buf, n, "Args[%zu].Value[%zu]", at->arg, at->elem);
    else
        (void)snprintf(buf, n, "Args[%zu].Value", at->arg);
    return buf;
}

static kiln_err want(const place *at, kiln_type t, unsigned char c,
                     kiln_error *err)
{
    char p[64];

    return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %s",
                      path(at, p, sizeof(p)), kiln_type_name(t),
                      kiln__json_kind_at(c));
}

static void int_range(kiln_type t, int64_t *lo, int64_t *hi)
{
    *lo = t == KILN_TYPE_INT8    ? INT8_MIN
          : t == KILN_TYPE_INT16 ? INT16_MIN
          : t == KILN_TYPE_INT32 ? INT32_MIN
                                 : INT64_MIN;
    *hi = t == KILN_TYPE_INT8    ? INT8_MAX
          : t == KILN_TYPE_INT16 ? INT16_MAX
          : t == KILN_TYPE_INT32 ? INT32_MAX
                                 : INT64_MAX;
}

static uint64_t uint_max(kiln_type t)
{
    return t == KILN_TYPE_UINT8    ? UINT8_MAX
           : t == KILN_TYPE_UINT16 ? UINT16_MAX
           : t == KILN_TYPE_UINT32 ? UINT32_MAX
                                   : UINT64_MAX;
}

static const char *number_why(kiln_err rc)
{
    return rc == KILN_ETYPE    ? "not an integer"
           : rc == KILN_EINVAL ? "negative"
                               : "out of range";
}

static kiln_err decode_number(const char *tok, size_t len, kiln_type t,
                              scalar *out, const place *at, kiln_error *err)
{
    char p[64];
    int64_t lo, hi;
    kiln_err rc;

    if (t >= KILN_TYPE_INT && t <= KILN_TYPE_INT64) {
        int_range(t, &lo, &hi);
        rc = kiln__parse_int_n(tok, len, &out->i);
        if (rc == KILN_OK && (out->i < lo || out->i > hi))
            rc = KILN_ERANGE;
    } else if (t >= KILN_TYPE_UINT && t <= KILN_TYPE_UINT64) {
        rc = kiln__parse_uint_n(tok, len, &out->u);
        if (rc == KILN_OK && out->u > uint_max(t))
            rc = KILN_ERANGE;
    } else {
        rc = kiln__parse_float_n(tok, len, &out->f);
        if (rc == KILN_OK && t == KILN_TYPE_FLOAT32 &&
            fabs(out->f) >= FLOAT32_LIMIT)
            rc = KILN_ERANGE;
    }
    if (rc == KILN_OK)
        return KILN_OK;
    return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %.*s (%s)",
                      path(at, p, sizeof(p)), kiln_type_name(t),
                      (int)(len < 40 ? len : 40), tok, number_why(rc));
}

/* Decodes the value at r->pos as one value of scalar type `t`. A string
 * in *out is the caller's. */
static kiln_err decode_scalar(kiln__reader *r, kiln_type t, scalar *out,
                              const place *at, kiln_error *err)
{
    const char *tok = (const char *)r->s + r->pos;
    unsigned char c = r->s[r->pos];
    size_t len;
    bool esc;

    if (t == KILN_TYPE_BOOL) {
        if (c != 't' && c != 'f')
            return want(at, t, c, err);
        out->b = c == 't';
        return kiln__rd_literal(r, out->b ? "true" : "false")
                   ? KILN_OK
                   : kiln__rd_fail(r, "body", err);
    }
    if (t == KILN_TYPE_STRING) {
        if (c != '"')
            return want(at, t, c, err);
        if (!kiln__rd_string(r, &len, &esc))
            return kiln__rd_fail(r, "body", err);
        if ((out->s = kiln__json_strdup(tok + 1, len, esc, NULL)) == NULL)
            return kiln__fail(err, KILN_ENOMEM, "Args[%zu]: a string of %zu",
                              at->arg, len);
        return KILN_OK;
    }
    if (c != '-' && (c < '0' || c > '9'))
        return want(at, t, c, err);
    if (!kiln__rd_number(r))
        return kiln__rd_fail(r, "body", err);
    return decode_number(tok, (size_t)((const char *)r->s + r->pos - tok), t,
                         out, at, err);
}

/* ---- slices ------------------------------------------------------------- */

static size_t slot_size(kiln_type et)
{
    if (et == KILN_TYPE_BOOL)
        return sizeof(bool);
    if (et == KILN_TYPE_FLOAT32 || et == KILN_TYPE_FLOAT64)
        return sizeof(double);
    return sizeof(int64_t);
}

static void store(void *arr, size_t i, kiln_type et, const scalar *s)
{
    if (et == KILN_TYPE_BOOL)
        ((bool *)arr)[i] = s->b;
    else if (et == KILN_TYPE_STRING)
        ((char **)arr)[i] = s->s;
    else if (et == KILN_TYPE_FLOAT32 || et == KILN_TYPE_FLOAT64)
        ((double *)arr)[i] = s->f;
    else if (et >= KILN_TYPE_UINT && et <= KILN_TYPE_UINT64)
        ((uint64_t *)arr)[i] = s->u;
    else
        ((int64_t *)arr)[i] = s->i;
}

/* Moves r past the comma after element j of n (the text was checked). */
static void next_elem(kiln__reader *r, size_t j, size_t n)
{
    kiln__rd_ws(r);
    if (j + 1 < n && r->pos < r->n && r->s[r->pos] == ',')
        r->pos++;
    kiln__rd_ws(r);
}

/* "[]string": the strings go into the slice's own block
 * (kiln__strings_alloc), each decoded in place. */
static kiln_err decode_strings(kiln__reader *r, kiln__value *v, place *at,
                               char *text, kiln_error *err)
{
    char **a = v->v.arr.ptr;
    size_t len;
    bool esc;

    for (at->elem = 0; at->elem < v->v.arr.n; at->elem++) {
        const char *raw = (const char *)r->s + r->pos + 1;

        if (r->s[r->pos] != '"')
            return want(at, KILN_TYPE_STRING, r->s[r->pos], err);
        if (!kiln__rd_string(r, &len, &esc))
            return kiln__rd_fail(r, "body", err);
        a[at->elem] = text;
        text += kiln__json_unescape(raw, len, esc, text, len + 1) + 1;
        next_elem(r, at->elem, v->v.arr.n);
    }
    return KILN_OK;
}

/* The elements of the array at r->pos (x: what the first pass saw). */
static kiln_err decode_elems(kiln__reader *r, const kiln__extent *x,
                             kiln__value *v, place *at, kiln_error *err)
{
    kiln_type et = kiln__type_elem(v->type);
    bool bytes = v->type == KILN_TYPE_BYTES || v->type == KILN_TYPE_UINT8_SLICE;
    char *text = NULL;
    scalar s = {0};
    kiln_err rc;

    if (et == KILN_TYPE_STRING)
        v->v.arr.ptr = kiln__strings_alloc(x->elems, x->text, &text);
    else
        v->v.arr.ptr = bytes ? kiln__malloc(x->elems)
                             : kiln__calloc(x->elems, slot_size(et));
    if (v->v.arr.ptr == NULL)
        return kiln__fail(err, KILN_ENOMEM, "Args[%zu].Value: %zu elements",
                          at->arg, x->elems);
    v->v.arr.n = x->elems;
    at->in_slice = true;
    r->pos++;
    kiln__rd_ws(r);
    if (et == KILN_TYPE_STRING)
        return decode_strings(r, v, at, text, err);
    for (at->elem = 0; at->elem < x->elems; at->elem++) {
        if ((rc = decode_scalar(r, et, &s, at, err)) != KILN_OK)
            return rc;
        if (bytes)
            ((uint8_t *)v->v.arr.ptr)[at->elem] = (uint8_t)s.u;
        else
            store(v->v.arr.ptr, at->elem, et, &s);
        next_elem(r, at->elem, x->elems);
    }
    return KILN_OK;
}

/* "[]uint8" and "[]byte" as base64 text, as Go writes them. */
static kiln_err decode_base64(kiln__reader *r, kiln__value *v, place *at,
                              kiln_error *err)
{
    const char *raw = (const char *)r->s + r->pos + 1;
    char p[64], *text = NULL;
    kiln_error why;
    uint8_t *out = NULL;
    size_t len;
    bool esc;
    kiln_err rc;

    if (!kiln__rd_string(r, &len, &esc))
        return kiln__rd_fail(r, "body", err);
    if (esc && (text = kiln__json_strdup(raw, len, true, &len)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "Args[%zu].Value: %zu bytes",
                          at->arg, len);
    rc = kiln__base64_decode(esc ? text : raw, len, &out, &v->v.arr.n, &why);
    kiln__free(text);
    v->v.arr.ptr = out;
    if (rc == KILN_ECODEC)
        return kiln__fail(err, rc, "%s: want %s, got invalid base64 (%s)",
                          path(at, p, sizeof(p)), kiln_type_name(v->type),
                          why.message);
    return rc == KILN_OK ? KILN_OK
                         : kiln__fail(err, rc, "%s: %s", path(at, p, sizeof(p)),
                                      why.message);
}

static kiln_err decode_slice(kiln__reader *r, const kiln__extent *x,
                             kiln__value *v, place *at, kiln_error *err)
{
    unsigned char c = r->s[r->pos];

    if (c == 'n') /* Go's nil slice */
        return KILN_OK;
    if ((v->type == KILN_TYPE_BYTES || v->type == KILN_TYPE_UINT8_SLICE) &&
        c == '"')
        return decode_base64(r, v, at, err);
    if (c != '[')
        return want(at, v->type, c, err);
    if (x->elems == 0)
        return KILN_OK;
    return decode_elems(r, x, v, at, err);
}

/* ---- one argument ------------------------------------------------------- */

/* The last Name or Type member of an argument: the first byte of its
 * value and, for a string, where its text lies. */
typedef struct member {
    bool seen;
    unsigned char kind;
    const char *raw;
    size_t len;
    bool esc;
} member;

static bool read_member(kiln__reader *r, member *m)
{
    m->seen = true;
    m->kind = r->s[r->pos];
    m->raw = (const char *)r->s + r->pos + 1;
    if (m->kind == '"')
        return kiln__rd_string(r, &m->len, &m->esc);
    return kiln__rd_skip(r, ARG_DEPTH, NULL);
}

/* Which of Name (0), Type (1), Value (2) a key is, as Go matches keys
 * (case-insensitively); -1 for any other, which Go ignores. */
static int arg_key(const kiln__key *k)
{
    static const char *const keys[] = {"Name", "Type", "Value"};

    for (int i = 0; i < 3; i++)
        if (strcmp(k->text, keys[i]) == 0)
            return i;
    for (int i = 0; i < 3; i++)
        if (kiln__key_match(k->text, keys[i]))
            return i;
    return -1;
}

/* Reads the members of the object at r->pos (its '{'). */
static bool read_arg(kiln__reader *r, member *name, member *type,
                     kiln__extent *value, bool *has_value)
{
    unsigned char c = ',';
    kiln__key k;
    int which;
    bool ok;

    r->pos++;
    kiln__rd_ws(r);
    if (r->pos < r->n && r->s[r->pos] == '}')
        c = r->s[r->pos++];
    while (c == ',') {
        kiln__rd_ws(r);
        if (!kiln__rd_key(r, &k))
            return false;
        which = arg_key(&k);
        if (which == 2)
            ok = *has_value = kiln__rd_skip(r, ARG_DEPTH, value);
        else if (which >= 0)
            ok = read_member(r, which == 0 ? name : type);
        else
            ok = kiln__rd_skip(r, ARG_DEPTH, NULL);
        if (!ok)
            return false;
        kiln__rd_ws(r);
        c = r->pos < r->n ? r->s[r->pos++] : '\0';
        if (c != ',' && c != '}')
            return false;
    }
    return true;
}

/* Name, Type and Value into v (released by the caller on failure), in
 * the order of Go's checks. */
static kiln_err decode_arg(kiln__reader *r, size_t i, kiln__value *v,
                           kiln_error *err)
{
    member name = {0}, type = {0};
    kiln__extent value;
    bool has_value = false;
    char tname[64];
    place at = {i, 0, false};
    scalar s = {0};
    kiln__reader vr;
    kiln_err rc;

    if (!read_arg(r, &name, &type, &value, &has_value))
        return kiln__rd_fail(r, "body", err);
    if (!type.seen || type.kind == 'n')
        return kiln__fail(err, KILN_ECODEC, "Args[%zu].Type: missing", i);
    if (type.kind != '"')
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Type: want string, got %s", i,
                          kiln__json_kind_at(type.kind));
    (void)kiln__json_unescape(type.raw, type.len, type.esc, tname,
                              sizeof(tname));
    if (kiln_type_from_name(tname, &v->type) != KILN_OK)
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Type: unknown type \"%.40s\"", i, tname);
    if (name.seen && name.kind != 'n' && name.kind != '"')
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Name: want string, got %s", i,
                          kiln__json_kind_at(name.kind));
    if (name.seen && name.kind == '"' && name.len > 0 &&
        (v->name = kiln__json_strdup(name.raw, name.len, name.esc, NULL)) ==
            NULL)
        return kiln__fail(err, KILN_ENOMEM, "Args[%zu].Name", i);
    if (!has_value) {
        if (v->type >= KILN_TYPE_BOOL_SLICE)
            return KILN_OK; /* a nil slice */
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Value: missing (want %s)", i,
                          kiln_type_name(v->type));
    }
    if (v->type == KILN_TYPE_STRING && r->s[value.off] == '"') {
        /* The pass over it found where it ends: no second scan. */
        v->v.s = kiln__json_strdup((const char *)r->s + value.off + 1,
                                   value.len - 2, value.esc, NULL);
        return v->v.s != NULL
                   ? KILN_OK
                   : kiln__fail(err, KILN_ENOMEM, "Args[%zu]: a string of %zu",
                                i, value.len);
    }
    vr = (kiln__reader){r->s, value.off + value.len, value.off, NULL};
    if (v->type >= KILN_TYPE_BOOL_SLICE)
        return decode_slice(&vr, &value, v, &at, err);
    if ((rc = decode_scalar(&vr, v->type, &s, &at, err)) != KILN_OK)
        return rc;
    store(&v->v, 0, v->type, &s);
    return KILN_OK;
}

kiln_err kiln__decode_args(kiln_signature *sig, kiln__reader *r,
                           kiln_error *err)
{
    kiln__values list = {0};
    unsigned char c = ',';
    kiln__value v;
    kiln_err rc = KILN_OK;

    r->pos++;
    kiln__rd_ws(r);
    if (r->pos < r->n && r->s[r->pos] == ']')
        c = r->s[r->pos++];
    for (size_t i = 0; c == ',' && rc == KILN_OK; i++) {
        kiln__rd_ws(r);
        if (r->pos >= r->n) {
            rc = kiln__rd_fail(r, "body", err);
        } else if (r->s[r->pos] != '{') {
            rc = kiln__fail(err, KILN_ECODEC, "Args[%zu]: want object, got %s",
                            i, kiln__json_kind_at(r->s[r->pos]));
        } else {
            memset(&v, 0, sizeof(v));
            if ((rc = decode_arg(r, i, &v, err)) != KILN_OK)
                kiln__value_release(&v);
            else
                rc = kiln__values_push(&list, &v, err);
        }
        if (rc != KILN_OK)
            break;
        kiln__rd_ws(r);
        c = r->pos < r->n ? r->s[r->pos++] : '\0';
        if (c != ',' && c != ']')
            rc = kiln__rd_fail(r, "body", err);
    }
    if (rc != KILN_OK) {
        kiln__values_clear(&list);
        return rc;
    }
    kiln__values_clear(&sig->args);
    sig->args = list;
    return KILN_OK;
}
