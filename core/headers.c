/* Typed header values (see headers.h): wire sizes, deep copies and the text
 * form. Every walk keeps its own stack of KILN__HVAL_MAX_DEPTH levels. */
#include "core/headers.h"

#include "core/buf.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

/* One level of a walk: the entries of a table (tf) or the items of an
 * array (av), and the next one to visit. */
typedef struct level {
    const kiln__hdr *tf;
    const kiln__hval *av;
    size_t n, i;
    bool table; /* even when empty */
} level;

static bool nested(const kiln__hval *v)
{
    return v->type == KILN__HV_TABLE || v->type == KILN__HV_ARRAY;
}

static level level_of(const kiln__hval *v)
{
    level l = {NULL, NULL, 0, 0, v->type == KILN__HV_TABLE};

    if (v->type == KILN__HV_TABLE && v->v.table.items != NULL) {
        l.tf = v->v.table.items;
        l.n = v->v.table.n;
    } else if (v->type == KILN__HV_ARRAY && v->v.array.items != NULL) {
        l.av = v->v.array.items;
        l.n = v->v.array.n;
    }
    return l;
}

/* The next entry of `l`: its value, and its name (NULL in an array). */
static const kiln__hval *next_of(level *l, const char **key)
{
    const kiln__hval *v;

    if (l->tf != NULL) {
        *key = l->tf[l->i].key != NULL ? l->tf[l->i].key : "";
        v = &l->tf[l->i].value;
    } else {
        *key = NULL;
        v = &l->av[l->i];
    }
    l->i++;
    return v;
}

static bool is_string(const kiln__hval *v)
{
    return v->type == KILN__HV_UTF8 || v->type == KILN__HV_BYTES;
}

/* Bytes after the type octet; a table or an array adds its items. */
static size_t payload(const kiln__hval *v)
{
    switch (v->type) {
    case KILN__HV_BOOL:
    case KILN__HV_I8:
    case KILN__HV_U8:
        return 1;
    case KILN__HV_I16:
    case KILN__HV_U16:
        return 2;
    case KILN__HV_I32:
    case KILN__HV_U32:
    case KILN__HV_F32:
        return 4;
    case KILN__HV_I64:
    case KILN__HV_U64:
    case KILN__HV_F64:
    case KILN__HV_TIMESTAMP:
        return 8;
    case KILN__HV_DECIMAL:
        return 5;
    case KILN__HV_UTF8:
    case KILN__HV_BYTES:
        return 4 + v->v.str.len;
    case KILN__HV_TABLE:
    case KILN__HV_ARRAY:
        return 4;
    default: /* void, and anything unknown, which goes out as void */
        return 0;
    }
}

size_t kiln__hdrs_wire_size(const kiln__hdr *f, size_t n)
{
    level st[KILN__HVAL_MAX_DEPTH];
    int top = 1;
    size_t total = 0;

    st[0] = (level){f, NULL, f != NULL ? n : 0, 0, true};
    while (top > 0) {
        level *l = &st[top - 1];
        const kiln__hval *v;
        const char *key;
        size_t add, kl;

        if (l->i >= l->n) {
            top--;
            continue;
        }
        v = next_of(l, &key);
        if (is_string(v) && v->v.str.len > UINT32_MAX)
            return SIZE_MAX;
        add = 1 + payload(v);
        if (key != NULL) {
            if ((kl = strlen(key)) > 255)
                return SIZE_MAX;
            add += 1 + kl;
        }
        if (add > SIZE_MAX - total)
            return SIZE_MAX;
        total += add;
        if (nested(v)) {
            if (top == KILN__HVAL_MAX_DEPTH)
                return SIZE_MAX;
            st[top++] = level_of(v);
        }
    }
    return total;
}

/* ---- copies ------------------------------------------------------------- */

/* A level of a copy: where it reads, and where it writes (NULL when the
 * bump only counts). */
typedef struct copy_level {
    level src;
    kiln__hdr *tf;
    kiln__hval *av;
} copy_level;

/* Copies the strings and the item array of value `v` into `dv` (NULL:
 * counting); a table or array gets a level pushed onto st[*top]. */
static void copy_value(kiln__bump *b, const kiln__hval *v, kiln__hval *dv,
                       copy_level *st, int *top)
{
    level l;

    if (nested(v) && *top == KILN__HVAL_MAX_DEPTH) {
        if (dv != NULL)
            *dv = (kiln__hval){.type = KILN__HV_VOID};
        return;
    }
    if (dv != NULL)
        *dv = *v;
    if (is_string(v)) {
        const char *p = kiln__bump_str(b, v->v.str.p, v->v.str.len);
        if (dv != NULL)
            dv->v.str.p = p;
        return;
    }
    if (!nested(v))
        return;
    l = level_of(v);
    st[*top] = (copy_level){l, NULL, NULL};
    if (v->type == KILN__HV_TABLE) {
        st[*top].tf =
            kiln__bump_take(b, l.n * sizeof(kiln__hdr), _Alignof(kiln__hdr));
        if (dv != NULL) {
            dv->v.table.items = st[*top].tf;
            dv->v.table.n = l.n;
        }
    } else {
        st[*top].av =
            kiln__bump_take(b, l.n * sizeof(kiln__hval), _Alignof(kiln__hval));
        if (dv != NULL) {
            dv->v.array.items = st[*top].av;
            dv->v.array.n = l.n;
        }
    }
    (*top)++;
}

kiln__hdr *kiln__hdrs_copy(kiln__bump *b, const kiln__hdr *src, size_t n)
{
    copy_level st[KILN__HVAL_MAX_DEPTH];
    kiln__hdr *out;
    int top = 1;

    n = src != NULL ? n : 0;
    out = kiln__bump_take(b, n * sizeof(*out), _Alignof(kiln__hdr));
    st[0] = (copy_level){{src, NULL, n, 0, true}, out, NULL};
    while (top > 0) {
        copy_level *c = &st[top - 1];
        size_t at = c->src.i;
        kiln__hval *dv = NULL;
        const kiln__hval *v;
        const char *key;

        if (at >= c->src.n) {
            top--;
            continue;
        }
        v = next_of(&c->src, &key);
        if (key != NULL) {
            const char *k = kiln__bump_str(b, key, strlen(key));
            if (c->tf != NULL) {
                c->tf[at].key = k;
                dv = &c->tf[at].value;
            }
        } else if (c->av != NULL) {
            dv = &c->av[at];
        }
        copy_value(b, v, dv, st, &top);
    }
    return out;
}

const kiln__hdr *kiln__hdrs_find(const kiln__hdr *f, size_t n, const char *key)
{
    for (size_t i = n; f != NULL && i-- > 0;)
        if (f[i].key != NULL && strcmp(f[i].key, key) == 0)
            return &f[i];
    return NULL;
}

/* ---- text --------------------------------------------------------------- */

/* Bytes that are not UTF-8 are taken as Latin-1, so the JSON stays valid. */
static void put_json_string(kiln__buf *s, const char *str, size_t len)
{
    kiln__buf_put(s, "\"", 1);
    kiln__buf_json_escape(s, str, len, KILN__JSON_LATIN1);
    kiln__buf_put(s, "\"", 1);
}

/* AMQP decimal: value * 10^-decimals, e.g. {2, 1234} is "12.34". */
static int put_decimal(char *out, size_t n, uint8_t decimals, uint32_t value)
{
    char digits[32];
    int len = snprintf(digits, sizeof(digits), "%0*" PRIu32,
                       decimals < 10 ? (int)decimals + 1 : 1, value);
    int point = len - (int)decimals;

    if (decimals == 0 || decimals >= 10 || point < 1)
        return snprintf(out, n, "%s", digits);
    return snprintf(out, n, "%.*s.%s", point, digits, digits + point);
}

static int put_number(char *o, size_t n, const kiln__hval *v, bool json)
{
    double d;

    switch (v->type) {
    case KILN__HV_I8:
    case KILN__HV_I16:
    case KILN__HV_I32:
    case KILN__HV_I64:
        return snprintf(o, n, "%" PRId64, v->v.i);
    case KILN__HV_U8:
    case KILN__HV_U16:
    case KILN__HV_U32:
    case KILN__HV_U64:
    case KILN__HV_TIMESTAMP: /* seconds since the epoch */
        return snprintf(o, n, "%" PRIu64, v->v.u);
    case KILN__HV_F32:
    case KILN__HV_F64:
        d = v->type == KILN__HV_F32 ? (double)v->v.f32 : v->v.f64;
        if (json && !isfinite(d))
            return snprintf(o, n, "null");
        return snprintf(o, n, v->type == KILN__HV_F32 ? "%.9g" : "%.17g", d);
    case KILN__HV_DECIMAL:
        return put_decimal(o, n, v->v.dec.decimals, v->v.dec.value);
    default:
        return snprintf(o, n, "%s", json ? "null" : "");
    }
}

/* One value that is not a table or an array: as text, or as JSON. */
static void put_scalar(kiln__buf *s, const kiln__hval *v, bool json)
{
    char num[64];
    int k;

    if (v->type == KILN__HV_BOOL) {
        kiln__buf_puts(s, v->v.b ? "true" : "false");
    } else if (is_string(v) && json) {
        put_json_string(s, v->v.str.p, v->v.str.len);
    } else if (is_string(v)) {
        kiln__buf_put(s, v->v.str.p, v->v.str.len);
    } else {
        k = put_number(num, sizeof(num), v, json);
        kiln__buf_put(s, num, k > 0 ? (size_t)k : 0);
    }
}

/* A table or an array as JSON (x-death, for one). */
static void put_nested(kiln__buf *s, const kiln__hval *root)
{
    level st[KILN__HVAL_MAX_DEPTH];
    int top = 1;

    st[0] = level_of(root);
    kiln__buf_put(s, root->type == KILN__HV_TABLE ? "{" : "[", 1);
    while (top > 0) {
        level *l = &st[top - 1];
        const kiln__hval *v;
        const char *key;

        if (l->i >= l->n) {
            kiln__buf_put(s, l->table ? "}" : "]", 1);
            top--;
            continue;
        }
        if (l->i > 0)
            kiln__buf_put(s, ",", 1);
        v = next_of(l, &key);
        if (key != NULL) {
            put_json_string(s, key, strlen(key));
            kiln__buf_put(s, ":", 1);
        }
        if (nested(v) && top < KILN__HVAL_MAX_DEPTH) {
            st[top++] = level_of(v);
            kiln__buf_put(s, v->type == KILN__HV_TABLE ? "{" : "[", 1);
        } else if (nested(v)) {
            kiln__buf_puts(s, "null");
        } else {
            put_scalar(s, v, true);
        }
    }
}

size_t kiln__hval_text(const kiln__hval *v, char *out)
{
    kiln__buf s;

    /* `out` was sized by a counting call: it holds what is written. */
    if (out != NULL)
        kiln__buf_init(&s, out, SIZE_MAX, true);
    else
        kiln__buf_init_count(&s);

    if (nested(v))
        put_nested(&s, v);
    else
        put_scalar(&s, v, false);
    return s.n;
}
