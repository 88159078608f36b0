/* Decoding machinery's Args: [{"Name":"","Type":"int64","Value":4}].
 *
 * Each Value must match its Type exactly, as machinery's
 * tasks/reflect.go demands, with two differences: kiln refuses integers
 * outside their type's range (machinery wraps them silently through
 * reflect.Value.SetInt) and accepts a JSON array of numbers for "[]byte"
 * as for "[]uint8" (machinery does too; non-Go producers write it). A
 * null Value for a slice type is an empty slice, as in reflect.go. */
#include "task/codec.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Doubles from here on round to infinity as a float (FLT_MAX + half an
 * ulp); the same limit as the value checks in value.c. */
#define FLOAT32_LIMIT 0x1.ffffffp+127

/* ---- numbers ------------------------------------------------------------ */

static bool all_digits(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static bool magnitude(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    for (; *s != '\0'; s++) {
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

kiln_err kiln__parse_int(const char *tok, int64_t *out)
{
    bool neg = tok[0] == '-';
    uint64_t m;

    if (!all_digits(tok + neg))
        return KILN_ETYPE;
    if (!magnitude(tok + neg, &m) ||
        m > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return KILN_ERANGE;
    *out = neg ? (int64_t)(0 - m) : (int64_t)m;
    return KILN_OK;
}

kiln_err kiln__parse_uint(const char *tok, uint64_t *out)
{
    bool neg = tok[0] == '-';

    if (!all_digits(tok + neg))
        return KILN_ETYPE;
    if (neg)
        return KILN_EINVAL;
    return magnitude(tok, out) ? KILN_OK : KILN_ERANGE;
}

/* strtod reads the decimal point of the C locale, so the token is
 * rewritten as digits and a power of ten first: "-12.5e3" -> "-125e2". */
kiln_err kiln__parse_float(const char *tok, double *out)
{
    char buf[KILN__JSON_NUMBER_MAX + 16];
    size_t k = 0;
    long exp = 0, frac = 0;
    const char *p = tok;
    double v;

    if (*p == '-')
        buf[k++] = *p++;
    for (; (*p >= '0' && *p <= '9') || *p == '.'; p++) {
        if (*p == '.')
            frac = 1;
        else if (k < KILN__JSON_NUMBER_MAX) {
            buf[k++] = *p;
            exp -= frac;
        }
    }
    if (*p == 'e' || *p == 'E') {
        long e = strtol(p + 1, NULL, 10); /* clamps; "+" and "-" ok */
        exp += e > 100000 ? 100000 : e < -100000 ? -100000 : e;
    }
    (void)snprintf(buf + k, sizeof(buf) - k, "e%ld", exp);
    errno = 0;
    v = strtod(buf, NULL);
    if (isinf(v))
        return KILN_ERANGE;
    *out = v;
    return KILN_OK;
}

/* ---- one scalar --------------------------------------------------------- */

typedef union scalar {
    bool b;
    int64_t i;
    uint64_t u;
    double f;
    char *s;
} scalar;

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

static kiln_err want(const char *path, kiln_type t, const cJSON *it,
                     const char *why, kiln_error *err)
{
    if (why != NULL)
        return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %.40s (%s)", path,
                          kiln_type_name(t), it->valuestring, why);
    return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %s", path,
                      kiln_type_name(t), kiln__json_kind(it));
}

static const char *number_why(kiln_err rc)
{
    return rc == KILN_ETYPE    ? "not an integer"
           : rc == KILN_EINVAL ? "negative"
                               : "out of range";
}

static kiln_err decode_number(const cJSON *it, kiln_type t, scalar *out,
                              const char *path, kiln_error *err)
{
    int64_t lo, hi;
    kiln_err rc;

    if (t >= KILN_TYPE_INT && t <= KILN_TYPE_INT64) {
        int_range(t, &lo, &hi);
        rc = kiln__parse_int(it->valuestring, &out->i);
        if (rc == KILN_OK && (out->i < lo || out->i > hi))
            rc = KILN_ERANGE;
    } else if (t >= KILN_TYPE_UINT && t <= KILN_TYPE_UINT64) {
        rc = kiln__parse_uint(it->valuestring, &out->u);
        if (rc == KILN_OK && out->u > uint_max(t))
            rc = KILN_ERANGE;
    } else {
        rc = kiln__parse_float(it->valuestring, &out->f);
        if (rc == KILN_OK && t == KILN_TYPE_FLOAT32 &&
            fabs(out->f) >= FLOAT32_LIMIT)
            rc = KILN_ERANGE;
    }
    return rc == KILN_OK ? KILN_OK : want(path, t, it, number_why(rc), err);
}

/* Decodes `it` (NULL when the key is absent) as one value of scalar type
 * `t`. A string in *out is the caller's. */
static kiln_err decode_scalar(const cJSON *it, kiln_type t, scalar *out,
                              const char *path, kiln_error *err)
{
    if (it == NULL)
        return kiln__fail(err, KILN_ECODEC, "%s: missing (want %s)", path,
                          kiln_type_name(t));
    if (t == KILN_TYPE_BOOL) {
        if (!cJSON_IsBool(it))
            return want(path, t, it, NULL, err);
        out->b = cJSON_IsTrue(it);
        return KILN_OK;
    }
    if (t == KILN_TYPE_STRING) {
        if (!cJSON_IsString(it))
            return want(path, t, it, NULL, err);
        if ((out->s = kiln__strdup(it->valuestring)) == NULL)
            return kiln__fail(err, KILN_ENOMEM, "%s: copying a string", path);
        return KILN_OK;
    }
    if (!cJSON_IsRaw(it))
        return want(path, t, it, NULL, err);
    return decode_number(it, t, out, path, err);
}

/* ---- slices ------------------------------------------------------------- */

static size_t slot_size(kiln_type et)
{
    if (et == KILN_TYPE_BOOL)
        return sizeof(bool);
    if (et == KILN_TYPE_STRING)
        return sizeof(char *);
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

static size_t count(const cJSON *array)
{
    size_t n = 0;

    for (const cJSON *c = array->child; c != NULL; c = c->next)
        n++;
    return n;
}

/* "[]uint8" and "[]byte": base64 text as Go writes them, or an array of
 * numbers 0..255. */
static kiln_err decode_bytes(const cJSON *it, kiln__value *v, const char *path,
                             kiln_error *err)
{
    char epath[64];
    kiln_error why;
    uint8_t *p;
    scalar s = {0};
    size_t i = 0;
    kiln_err rc;

    if (cJSON_IsString(it)) {
        rc = kiln__base64_decode(it->valuestring, strlen(it->valuestring), &p,
                                 &v->v.arr.n, &why);
        v->v.arr.ptr = p;
        if (rc == KILN_ECODEC)
            return kiln__fail(err, rc, "%s: want %s, got invalid base64 (%s)",
                              path, kiln_type_name(v->type), why.message);
        return rc == KILN_OK ? KILN_OK
                             : kiln__fail(err, rc, "%s: %s", path, why.message);
    }
    if (!cJSON_IsArray(it))
        return want(path, v->type, it, NULL, err);
    if ((v->v.arr.n = count(it)) == 0)
        return KILN_OK;
    if ((p = kiln__malloc(v->v.arr.n)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "%s: %zu bytes", path, v->v.arr.n);
    v->v.arr.ptr = p;
    for (const cJSON *c = it->child; c != NULL; c = c->next, i++) {
        (void)snprintf(epath, sizeof(epath), "%s[%zu]", path, i);
        if ((rc = decode_scalar(c, KILN_TYPE_UINT8, &s, epath, err)) != 0)
            return rc;
        p[i] = (uint8_t)s.u;
    }
    return KILN_OK;
}

static kiln_err decode_slice(const cJSON *it, kiln__value *v, const char *path,
                             kiln_error *err)
{
    kiln_type et = (kiln_type)(v->type - KILN_TYPE_BOOL_SLICE);
    char epath[64];
    size_t i = 0, n;
    kiln_err rc;
    scalar s = {0};

    if (it == NULL || cJSON_IsNull(it)) /* Go's nil slice */
        return KILN_OK;
    if (v->type == KILN_TYPE_BYTES || v->type == KILN_TYPE_UINT8_SLICE)
        return decode_bytes(it, v, path, err);
    if (!cJSON_IsArray(it))
        return want(path, v->type, it, NULL, err);
    if ((n = count(it)) == 0)
        return KILN_OK;
    /* Zeroed, so a failure half-way frees only the strings made so far. */
    if ((v->v.arr.ptr = kiln__calloc(n, slot_size(et))) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "%s: %zu elements", path, n);
    v->v.arr.n = n;
    for (const cJSON *c = it->child; c != NULL; c = c->next, i++) {
        (void)snprintf(epath, sizeof(epath), "%s[%zu]", path, i);
        if ((rc = decode_scalar(c, et, &s, epath, err)) != KILN_OK)
            return rc;
        store(v->v.arr.ptr, i, et, &s);
    }
    return KILN_OK;
}

/* ---- one argument ------------------------------------------------------- */

/* Fills v (released by the caller on failure). Keys match as in Go
 * (case-insensitively); keys other than Name, Type, Value are ignored,
 * as Go ignores them. */
static kiln_err decode_arg(const cJSON *arg, size_t i, kiln__value *v,
                           kiln_error *err)
{
    const cJSON *name = NULL, *type = NULL, *value = NULL;
    char path[48];
    scalar s = {0};
    kiln_err rc;

    if (!cJSON_IsObject(arg))
        return kiln__fail(err, KILN_ECODEC, "Args[%zu]: want object, got %s", i,
                          kiln__json_kind(arg));
    for (const cJSON *c = arg->child; c != NULL; c = c->next) {
        if (kiln__key_match(c->string, "Name"))
            name = c;
        else if (kiln__key_match(c->string, "Type"))
            type = c;
        else if (kiln__key_match(c->string, "Value"))
            value = c;
    }
    if (type == NULL || cJSON_IsNull(type))
        return kiln__fail(err, KILN_ECODEC, "Args[%zu].Type: missing", i);
    if (!cJSON_IsString(type))
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Type: want string, "
                          "got %s",
                          i, kiln__json_kind(type));
    if (kiln_type_from_name(type->valuestring, &v->type) != KILN_OK)
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Type: unknown type "
                          "\"%.40s\"",
                          i, type->valuestring);
    if (name != NULL && !cJSON_IsNull(name) && !cJSON_IsString(name))
        return kiln__fail(err, KILN_ECODEC,
                          "Args[%zu].Name: want string, "
                          "got %s",
                          i, kiln__json_kind(name));
    if (name != NULL && cJSON_IsString(name) && name->valuestring[0] != '\0' &&
        (v->name = kiln__strdup(name->valuestring)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "Args[%zu].Name", i);
    (void)snprintf(path, sizeof(path), "Args[%zu].Value", i);
    if (v->type >= KILN_TYPE_BOOL_SLICE)
        return decode_slice(value, v, path, err);
    if ((rc = decode_scalar(value, v->type, &s, path, err)) != KILN_OK)
        return rc;
    store(&v->v, 0, v->type, &s);
    return KILN_OK;
}

kiln_err kiln__decode_args(kiln_signature *sig, const cJSON *args,
                           kiln_error *err)
{
    kiln__values list = {0};
    kiln__value v;
    size_t i = 0;
    kiln_err rc = KILN_OK;

    for (const cJSON *c = args->child; c != NULL; c = c->next, i++) {
        memset(&v, 0, sizeof(v));
        if ((rc = decode_arg(c, i, &v, err)) != KILN_OK) {
            kiln__value_release(&v);
            break;
        }
        /* The model checks again; only memory can fail here, but a
         * refusal is reported as a codec error with its place. */
        if ((rc = kiln__values_add_owned(&list, &v, err)) != KILN_OK) {
            if (rc != KILN_ENOMEM) {
                kiln__prefix(err, "Args[%zu].Value", i);
                if (err != NULL)
                    err->code = KILN_ECODEC;
                rc = KILN_ECODEC;
            }
            break;
        }
    }
    if (rc != KILN_OK) {
        kiln__values_clear(&list);
        return rc;
    }
    kiln__values_clear(&sig->args);
    sig->args = list;
    return KILN_OK;
}
