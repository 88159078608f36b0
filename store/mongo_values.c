/* Task results in BSON, both ways (see kiln__mongo_append_results in
 * store/mongo_doc.h). The encodings follow what Go's mongo driver writes
 * for machinery's TaskResult.Value, so a machinery client decodes kiln's
 * results and the reverse; the one value Go cannot write (a uint64 above
 * INT64_MAX) is stored as a decimal string, which keeps it exact. */
#include "store/mongo_doc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_bytes(kiln_type t)
{
    return t == KILN_TYPE_BYTES || t == KILN_TYPE_UINT8_SLICE;
}

static bool is_int(kiln_type et)
{
    return et >= KILN_TYPE_INT && et <= KILN_TYPE_INT64;
}

static bool is_uint(kiln_type et)
{
    return et >= KILN_TYPE_UINT && et <= KILN_TYPE_UINT64;
}

/* ---- results: C to BSON ----------------------------------------------- */

static bool append_int(bson_t *d, const char *key, int klen, kiln_type et,
                       int64_t x)
{
    bool fits32 = x >= INT32_MIN && x <= INT32_MAX;

    /* Go writes int8..int32 as int32, int as int32 when it fits. */
    if (et != KILN_TYPE_INT64 && fits32)
        return bson_append_int32(d, key, klen, (int32_t)x);
    return bson_append_int64(d, key, klen, x);
}

static bool append_uint(bson_t *d, const char *key, int klen, kiln_type et,
                        uint64_t x)
{
    char dec[24];
    int n;

    if (et == KILN_TYPE_UINT8 || et == KILN_TYPE_UINT16)
        return bson_append_int32(d, key, klen, (int32_t)x);
    if (x <= (uint64_t)INT64_MAX)
        return bson_append_int64(d, key, klen, (int64_t)x);
    n = snprintf(dec, sizeof(dec), "%" PRIu64, x);
    return n > 0 && bson_append_utf8(d, key, klen, dec, n);
}

/* Element i of slice `v`, or the scalar `v` itself when !slice. */
static bool append_elem(bson_t *d, const char *key, int klen,
                        const kiln__value *v, bool slice, size_t i)
{
    kiln_type et = kiln__type_elem(v->type);
    const void *p = v->v.arr.ptr;
    const char *s;

    if (et == KILN_TYPE_BOOL)
        return bson_append_bool(d, key, klen,
                                slice ? ((const bool *)p)[i] : v->v.b);
    if (is_int(et))
        return append_int(d, key, klen, et,
                          slice ? ((const int64_t *)p)[i] : v->v.i);
    if (is_uint(et))
        return append_uint(d, key, klen, et,
                           slice ? ((const uint64_t *)p)[i] : v->v.u);
    if (et == KILN_TYPE_FLOAT32 || et == KILN_TYPE_FLOAT64)
        return bson_append_double(d, key, klen,
                                  slice ? ((const double *)p)[i] : v->v.f);
    s = slice ? ((char *const *)p)[i] : v->v.s;
    return bson_append_utf8(d, key, klen, s, -1);
}

static bool append_value(bson_t *d, const char *key, const kiln__value *v)
{
    static const uint8_t none[1];
    char buf[16];
    const char *k;
    bson_t arr;
    bool ok = true;

    if (!kiln__type_is_slice(v->type))
        return append_elem(d, key, -1, v, false, 0);
    if (v->v.arr.n > UINT32_MAX)
        return false;
    if (is_bytes(v->type))
        return bson_append_binary(d, key, -1, BSON_SUBTYPE_BINARY,
                                  v->v.arr.n > 0 ? (const uint8_t *)v->v.arr.ptr
                                                 : none,
                                  (uint32_t)v->v.arr.n);
    if (!bson_append_array_begin(d, key, -1, &arr))
        return false;
    for (size_t i = 0; ok && i < v->v.arr.n; i++) {
        size_t kl = bson_uint32_to_string((uint32_t)i, &k, buf, sizeof(buf));
        ok = append_elem(&arr, k, (int)kl, v, true, i);
    }
    return bson_append_array_end(d, &arr) && ok;
}

kiln_err kiln__mongo_append_results(bson_t *doc, const char *key,
                                    const kiln__values *vals, kiln_error *err)
{
    char buf[16];
    const char *k;
    bson_t arr, item;
    bool ok;

    if (!bson_append_array_begin(doc, key, -1, &arr))
        return kiln__fail(err, KILN_ETOOBIG, "results do not fit in BSON");
    ok = true;
    for (size_t i = 0; ok && i < vals->n; i++) {
        const kiln__value *v = &vals->items[i];
        const char *type = kiln_type_name(v->type);
        size_t kl = bson_uint32_to_string((uint32_t)i, &k, buf, sizeof(buf));

        if (type == NULL) {
            bson_append_array_end(doc, &arr);
            return kiln__fail(err, KILN_EINVAL, "result %zu: type %d", i,
                              (int)v->type);
        }
        ok = bson_append_document_begin(&arr, k, (int)kl, &item) &&
             BSON_APPEND_UTF8(&item, "type", type) &&
             append_value(&item, "value", v) &&
             (v->name == NULL || v->name[0] == '\0' ||
              BSON_APPEND_UTF8(&item, "name", v->name));
        ok = bson_append_document_end(&arr, &item) && ok;
    }
    ok = bson_append_array_end(doc, &arr) && ok;
    if (!ok || vals->n > UINT32_MAX)
        return kiln__fail(err, KILN_ETOOBIG, "results do not fit in BSON");
    return KILN_OK;
}

/* ---- results: BSON to C ----------------------------------------------- */

static bool read_i64(const bson_iter_t *it, int64_t *out)
{
    double f;

    switch (bson_iter_type(it)) {
    case BSON_TYPE_INT32:
        *out = bson_iter_int32(it);
        return true;
    case BSON_TYPE_INT64:
        *out = bson_iter_int64(it);
        return true;
    case BSON_TYPE_DOUBLE:
        f = bson_iter_double(it);
        /* -2^63 is exact as a double; 2^63 is the first one too big. */
        if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0) ||
            f != (double)(int64_t)f)
            return false;
        *out = (int64_t)f;
        return true;
    default:
        return false;
    }
}

static bool read_u64(const bson_iter_t *it, uint64_t *out)
{
    const char *s;
    char *end;
    uint32_t n;
    int64_t i;
    double f;

    if (bson_iter_type(it) == BSON_TYPE_UTF8) {
        s = bson_iter_utf8(it, &n);
        if (n == 0 || n > 20 || s[0] < '0' || s[0] > '9')
            return false;
        errno = 0;
        *out = strtoull(s, &end, 10);
        return errno == 0 && end == s + n;
    }
    if (bson_iter_type(it) == BSON_TYPE_DOUBLE) {
        f = bson_iter_double(it);
        if (!(f >= 0 && f < 18446744073709551616.0) || f != (double)(uint64_t)f)
            return false;
        *out = (uint64_t)f;
        return true;
    }
    if (!read_i64(it, &i) || i < 0)
        return false;
    *out = (uint64_t)i;
    return true;
}

static bool read_f64(const bson_iter_t *it, double *out)
{
    int64_t i;

    if (bson_iter_type(it) == BSON_TYPE_DOUBLE) {
        *out = bson_iter_double(it);
        return true;
    }
    if (!read_i64(it, &i))
        return false;
    *out = (double)i;
    return true;
}

char *kiln__mongo_read_str(const bson_iter_t *it, bool *nomem)
{
    const char *s;
    uint32_t n;
    char *copy;

    *nomem = false;
    if (bson_iter_type(it) != BSON_TYPE_UTF8)
        return NULL;
    s = bson_iter_utf8(it, &n);
    if (memchr(s, '\0', n) != NULL)
        return NULL;
    if ((copy = kiln__strndup(s, n)) == NULL)
        *nomem = true;
    return copy;
}

/* Stores the element at `it` into slot i of v's array (slice) or into
 * v's scalar. KILN_ETYPE when the BSON type does not fit. */
static kiln_err read_elem(const bson_iter_t *it, kiln__value *v, bool slice,
                          size_t i)
{
    kiln_type et = kiln__type_elem(v->type);
    void *p = v->v.arr.ptr;
    int64_t x = 0;
    uint64_t u = 0;
    double f = 0;
    bool nomem;
    char *s;

    if (et == KILN_TYPE_BOOL) {
        if (!BSON_ITER_HOLDS_BOOL(it))
            return KILN_ETYPE;
        *(slice ? &((bool *)p)[i] : &v->v.b) = bson_iter_bool(it);
    } else if (is_int(et)) {
        if (!read_i64(it, &x))
            return KILN_ETYPE;
        *(slice ? &((int64_t *)p)[i] : &v->v.i) = x;
    } else if (is_bytes(v->type)) {
        if (!read_u64(it, &u) || u > UINT8_MAX)
            return KILN_ERANGE;
        ((uint8_t *)p)[i] = (uint8_t)u;
    } else if (is_uint(et)) {
        if (!read_u64(it, &u))
            return KILN_ETYPE;
        *(slice ? &((uint64_t *)p)[i] : &v->v.u) = u;
    } else if (et == KILN_TYPE_FLOAT32 || et == KILN_TYPE_FLOAT64) {
        if (!read_f64(it, &f))
            return KILN_ETYPE;
        *(slice ? &((double *)p)[i] : &v->v.f) = f;
    } else {
        if ((s = kiln__mongo_read_str(it, &nomem)) == NULL)
            return nomem ? KILN_ENOMEM : KILN_ETYPE;
        *(slice ? &((char **)p)[i] : &v->v.s) = s;
    }
    return KILN_OK;
}

/* A "[]string" of the `n` elements of the BSON array at `it`, in the
 * one block kiln__strings_alloc lays out. */
static kiln_err read_strings(const bson_iter_t *it, kiln__value *v, size_t n)
{
    bson_iter_t sub;
    size_t bytes = 0, i = 0;
    uint32_t len;
    const char *s;
    char **a, *text;

    if (!bson_iter_recurse(it, &sub))
        return KILN_ETYPE;
    while (bson_iter_next(&sub)) {
        if (bson_iter_type(&sub) != BSON_TYPE_UTF8)
            return KILN_ETYPE;
        s = bson_iter_utf8(&sub, &len);
        if (memchr(s, '\0', len) != NULL)
            return KILN_ETYPE;
        bytes += len;
    }
    if ((a = kiln__strings_alloc(n, bytes, &text)) == NULL)
        return KILN_ENOMEM;
    v->v.arr.ptr = a;
    v->v.arr.n = n;
    if (!bson_iter_recurse(it, &sub))
        return KILN_ETYPE;
    for (; i < n && bson_iter_next(&sub); i++) {
        s = bson_iter_utf8(&sub, &len);
        memcpy(text, s, len);
        text[len] = '\0';
        a[i] = text;
        text += len + 1;
    }
    return KILN_OK;
}

/* Fills slice `v` from the BSON array (or binary, or null) at `it`. */
static kiln_err read_slice(const bson_iter_t *it, kiln__value *v)
{
    bson_iter_t sub;
    const uint8_t *bin;
    bson_subtype_t st;
    uint32_t blen;
    size_t n = 0;
    kiln_err rc;

    if (BSON_ITER_HOLDS_NULL(it))
        return KILN_OK;
    if (is_bytes(v->type) && BSON_ITER_HOLDS_BINARY(it)) {
        bson_iter_binary(it, &st, &blen, &bin);
        if (blen > 0 && (v->v.arr.ptr = kiln__malloc(blen)) == NULL)
            return KILN_ENOMEM;
        if (blen > 0)
            memcpy(v->v.arr.ptr, bin, blen);
        v->v.arr.n = blen;
        return KILN_OK;
    }
    if (!BSON_ITER_HOLDS_ARRAY(it) || !bson_iter_recurse(it, &sub))
        return KILN_ETYPE;
    while (bson_iter_next(&sub))
        n++;
    if (n == 0)
        return KILN_OK;
    if (v->type == KILN_TYPE_STRING_SLICE)
        return read_strings(it, v, n);
    if ((v->v.arr.ptr = kiln__calloc(n, kiln__type_elem_size(v->type))) == NULL)
        return KILN_ENOMEM;
    v->v.arr.n = n;
    if (!bson_iter_recurse(it, &sub))
        return KILN_ETYPE;
    for (size_t i = 0; i < n && bson_iter_next(&sub); i++)
        if ((rc = read_elem(&sub, v, true, i)) != KILN_OK)
            return rc;
    return KILN_OK;
}

/* machinery stores a string result that parses as a JSON object as
 * {type: "json", value: <document>}; kiln reads it back as that JSON. */
static kiln_err read_json(const bson_iter_t *it, kiln__value *v)
{
    const uint8_t *data;
    uint32_t len;
    bson_t doc;
    char *json;

    if (!BSON_ITER_HOLDS_DOCUMENT(it) && !BSON_ITER_HOLDS_ARRAY(it))
        return KILN_ETYPE;
    if (BSON_ITER_HOLDS_DOCUMENT(it))
        bson_iter_document(it, &len, &data);
    else
        bson_iter_array(it, &len, &data);
    if (!bson_init_static(&doc, data, len))
        return KILN_ETYPE;
    json = BSON_ITER_HOLDS_DOCUMENT(it)
               ? bson_as_relaxed_extended_json(&doc, NULL)
               : bson_array_as_json(&doc, NULL);
    if (json == NULL)
        return KILN_ETYPE;
    v->type = KILN_TYPE_STRING;
    v->v.s = kiln__strdup(json);
    bson_free(json);
    return v->v.s != NULL ? KILN_OK : KILN_ENOMEM;
}

/* One {type, value[, name]} item. */
static kiln_err read_item(const bson_iter_t *item, size_t idx,
                          kiln__values *out, kiln_error *err)
{
    bson_iter_t f, val;
    kiln__value v = {0};
    const char *type = NULL;
    bool has_val = false, nomem = false;
    kiln_err rc;

    memset(&val, 0, sizeof(val));
    if (!BSON_ITER_HOLDS_DOCUMENT(item) || !bson_iter_recurse(item, &f))
        return kiln__fail(err, KILN_ESTORE, "result %zu: not a document", idx);
    while (bson_iter_next(&f)) {
        const char *k = bson_iter_key(&f);

        if (strcmp(k, "type") == 0 && BSON_ITER_HOLDS_UTF8(&f)) {
            type = bson_iter_utf8(&f, NULL);
        } else if (strcmp(k, "value") == 0) {
            val = f;
            has_val = true;
        } else if (strcmp(k, "name") == 0 && v.name == NULL) {
            v.name = kiln__mongo_read_str(&f, &nomem);
            if (nomem)
                return kiln__fail(err, KILN_ENOMEM, "result %zu: name", idx);
        }
    }
    if (type == NULL || !has_val) {
        kiln__value_release(&v);
        return kiln__fail(err, KILN_ESTORE, "result %zu: no type or value",
                          idx);
    }
    if (strcmp(type, "json") == 0)
        rc = read_json(&val, &v);
    else if (kiln_type_from_name(type, &v.type) != KILN_OK)
        rc = KILN_ETYPE;
    else
        rc = kiln__type_is_slice(v.type) ? read_slice(&val, &v)
                                         : read_elem(&val, &v, false, 0);
    if (rc != KILN_OK) {
        kiln__value_release(&v);
        return kiln__fail(err, rc == KILN_ENOMEM ? KILN_ENOMEM : KILN_ESTORE,
                          "result %zu: a %s value stored as BSON type 0x%02x",
                          idx, type, (unsigned)bson_iter_type(&val));
    }
    if ((rc = kiln__values_add_owned(out, &v, err)) != KILN_OK)
        kiln__prefix(err, "result %zu", idx);
    return rc;
}

kiln_err kiln__mongo_read_results(const bson_iter_t *iter, kiln__values *out,
                                  kiln_error *err)
{
    bson_iter_t it;
    size_t idx = 0;
    kiln_err rc;

    if (BSON_ITER_HOLDS_NULL(iter))
        return KILN_OK; /* Go's driver writes a nil slice as null */
    if (!BSON_ITER_HOLDS_ARRAY(iter) || !bson_iter_recurse(iter, &it))
        return kiln__fail(err, KILN_ESTORE, "results: not an array");
    while (bson_iter_next(&it)) {
        if ((rc = read_item(&it, idx++, out, err)) != KILN_OK) {
            kiln__values_clear(out);
            return rc;
        }
    }
    return KILN_OK;
}
