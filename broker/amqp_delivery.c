/* A delivery as a kiln__delivery: AMQP table headers become strings
 * (numbers in decimal, booleans true/false, strings and byte arrays as
 * they are, timestamps in seconds, nested tables and arrays as JSON).
 *
 * A delivery is one allocation, kept in d->impl: the strings, the body
 * and the headers array all live in it, so release is one free and
 * touches nothing but the delivery (any thread may call it). */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Deeper nesting in a header value is written as null. */
#define MAX_DEPTH 8

/* Output that either counts (p == NULL) or writes, so one function sizes
 * a delivery and then fills it. */
typedef struct sink {
    char *p;
    size_t len;
} sink;

static void put(sink *s, const void *src, size_t n)
{
    if (s->p != NULL && n > 0)
        memcpy(s->p + s->len, src, n);
    s->len += n;
}

static void put_cstr(sink *s, const char *str)
{
    put(s, str, strlen(str));
}

/* Bytes that are not UTF-8 are taken as Latin-1, so the JSON stays valid. */
static void put_json_string(sink *s, amqp_bytes_t b)
{
    const unsigned char *p = b.bytes;
    bool utf8 = kiln__utf8_valid(b.bytes, b.len);
    char esc[8];

    put(s, "\"", 1);
    for (size_t i = 0; i < b.len; i++) {
        if (p[i] == '"' || p[i] == '\\') {
            esc[0] = '\\';
            esc[1] = (char)p[i];
            put(s, esc, 2);
        } else if (p[i] < 0x20 || (p[i] >= 0x80 && !utf8)) {
            (void)snprintf(esc, sizeof(esc), "\\u%04x", p[i]);
            put(s, esc, 6);
        } else {
            put(s, &p[i], 1);
        }
    }
    put(s, "\"", 1);
}

/* AMQP decimal: value * 10^-decimals, e.g. {2, 1234} is "12.34". */
static int put_decimal(char *out, size_t n, amqp_decimal_t d)
{
    char digits[32];
    int len = snprintf(digits, sizeof(digits), "%0*" PRIu32,
                       d.decimals < 10 ? (int)d.decimals + 1 : 1, d.value);
    int point = len - (int)d.decimals;

    if (d.decimals == 0 || d.decimals >= 10 || point < 1)
        return snprintf(out, n, "%s", digits);
    return snprintf(out, n, "%.*s.%s", point, digits, digits + point);
}

static int put_number(char *o, size_t n, const amqp_field_value_t *v, bool json)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8:
        return snprintf(o, n, "%d", v->value.i8);
    case AMQP_FIELD_KIND_U8:
        return snprintf(o, n, "%u", v->value.u8);
    case AMQP_FIELD_KIND_I16:
        return snprintf(o, n, "%d", v->value.i16);
    case AMQP_FIELD_KIND_U16:
        return snprintf(o, n, "%u", v->value.u16);
    case AMQP_FIELD_KIND_I32:
        return snprintf(o, n, "%" PRId32, v->value.i32);
    case AMQP_FIELD_KIND_U32:
        return snprintf(o, n, "%" PRIu32, v->value.u32);
    case AMQP_FIELD_KIND_I64:
        return snprintf(o, n, "%" PRId64, v->value.i64);
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: /* seconds since the epoch */
        return snprintf(o, n, "%" PRIu64, v->value.u64);
    case AMQP_FIELD_KIND_F32:
    case AMQP_FIELD_KIND_F64: {
        double d = v->kind == AMQP_FIELD_KIND_F32 ? (double)v->value.f32
                                                  : v->value.f64;
        if (json && !isfinite(d))
            return snprintf(o, n, "null");
        return snprintf(o, n, v->kind == AMQP_FIELD_KIND_F32 ? "%.9g" : "%.17g",
                        d);
    }
    case AMQP_FIELD_KIND_DECIMAL:
        return put_decimal(o, n, v->value.decimal);
    default:
        return snprintf(o, n, "%s", json ? "null" : "");
    }
}

/* One value that is not a table or an array: as text, or as JSON. */
static void put_scalar(sink *s, const amqp_field_value_t *v, bool json)
{
    char num[64];
    int k;

    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        put_cstr(s, v->value.boolean ? "true" : "false");
        return;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        if (json)
            put_json_string(s, v->value.bytes);
        else
            put(s, v->value.bytes.bytes, v->value.bytes.len);
        return;
    default:
        k = put_number(num, sizeof(num), v, json);
        put(s, num, k > 0 ? (size_t)k : 0);
    }
}

typedef struct level {
    bool table;
    const amqp_table_entry_t *entries;
    const amqp_field_value_t *items;
    int n, i;
} level;

static bool nested(const amqp_field_value_t *v)
{
    return v->kind == AMQP_FIELD_KIND_TABLE || v->kind == AMQP_FIELD_KIND_ARRAY;
}

static void open_level(sink *s, level *l, const amqp_field_value_t *v)
{
    l->table = v->kind == AMQP_FIELD_KIND_TABLE;
    l->entries = l->table ? v->value.table.entries : NULL;
    l->items = l->table ? NULL : v->value.array.entries;
    l->n = l->table ? v->value.table.num_entries : v->value.array.num_entries;
    l->i = 0;
    put(s, l->table ? "{" : "[", 1);
}

/* Tables and arrays (x-death, for one) become JSON. Iterative, with an
 * explicit stack, so a hostile header cannot exhaust the C stack. */
static void put_nested(sink *s, const amqp_field_value_t *root)
{
    level st[MAX_DEPTH];
    int top = 0;

    open_level(s, &st[top++], root);
    while (top > 0) {
        level *l = &st[top - 1];
        const amqp_field_value_t *v;

        if (l->i >= l->n) {
            put(s, l->table ? "}" : "]", 1);
            top--;
            continue;
        }
        if (l->i > 0)
            put(s, ",", 1);
        if (l->table) {
            put_json_string(s, l->entries[l->i].key);
            put(s, ":", 1);
            v = &l->entries[l->i].value;
        } else {
            v = &l->items[l->i];
        }
        l->i++;
        if (nested(v) && top < MAX_DEPTH)
            open_level(s, &st[top++], v);
        else if (nested(v))
            put_cstr(s, "null");
        else
            put_scalar(s, v, true);
    }
}

/* Writes bytes and a NUL; returns where they went (NULL when counting). */
static char *put_str(sink *s, const void *src, size_t n)
{
    char *at = s->p != NULL ? s->p + s->len : NULL;

    put(s, src, n);
    put(s, "", 1);
    return at;
}

static const amqp_table_t *headers_of(const amqp_message_t *msg)
{
    const amqp_basic_properties_t *p = &msg->properties;

    return (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL;
}

static void fill(sink *s, const kiln__amqp_content *c, kiln__delivery *d)
{
    const amqp_basic_properties_t *p = &c->msg->properties;
    const amqp_table_t *h = headers_of(c->msg);
    size_t nh = h != NULL && h->num_entries > 0 ? (size_t)h->num_entries : 0;
    const size_t align = _Alignof(kiln_header);
    kiln_header *hdrs;

    d->exchange = put_str(s, c->exchange.bytes, c->exchange.len);
    s->len = (s->len + align - 1) / align * align;
    hdrs = s->p != NULL ? (kiln_header *)(void *)(s->p + s->len) : NULL;
    s->len += nh * sizeof(kiln_header);
    d->routing_key = put_str(s, c->routing_key.bytes, c->routing_key.len);
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        d->message_id = put_str(s, p->message_id.bytes, p->message_id.len);
    else
        d->message_id = put_str(s, "", 0);
    d->body = put_str(s, c->msg->body.bytes, c->msg->body.len);
    for (size_t i = 0; i < nh; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        char *key = put_str(s, e->key.bytes, e->key.len);
        char *value = s->p != NULL ? s->p + s->len : NULL;
        if (nested(&e->value))
            put_nested(s, &e->value);
        else
            put_scalar(s, &e->value, false);
        put(s, "", 1);
        if (hdrs != NULL) {
            hdrs[i].key = key;
            hdrs[i].value = value;
        }
    }
    d->headers = nh > 0 ? hdrs : NULL;
    d->n_headers = nh;
}

static bool as_count(const amqp_field_value_t *v, uint32_t *out)
{
    int64_t i;
    uint64_t u;

    switch (v->kind) {
    case AMQP_FIELD_KIND_I8:
        i = (int64_t)v->value.i8;
        break;
    case AMQP_FIELD_KIND_I16:
        i = v->value.i16;
        break;
    case AMQP_FIELD_KIND_I32:
        i = v->value.i32;
        break;
    case AMQP_FIELD_KIND_I64:
        i = v->value.i64;
        break;
    case AMQP_FIELD_KIND_U8:
        i = v->value.u8;
        break;
    case AMQP_FIELD_KIND_U16:
        i = v->value.u16;
        break;
    case AMQP_FIELD_KIND_U32:
        i = v->value.u32;
        break;
    case AMQP_FIELD_KIND_U64:
        u = v->value.u64;
        *out = u > UINT32_MAX ? UINT32_MAX : (uint32_t)u;
        return true;
    default:
        return false;
    }
    if (i < 0)
        return false;
    *out = i > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)i;
    return true;
}

/* A quorum queue counts earlier deliveries in x-delivery-count. */
static uint32_t delivery_count(const amqp_message_t *msg)
{
    const amqp_table_t *h = headers_of(msg);
    uint32_t n = 0;

    for (int i = 0; h != NULL && i < h->num_entries; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        if (e->key.len == 16 &&
            memcmp(e->key.bytes, "x-delivery-count", 16) == 0 &&
            as_count(&e->value, &n))
            return n;
    }
    return 0;
}

kiln_err kiln__amqp_build(kiln__amqp *b, const kiln__amqp_content *c,
                          kiln__delivery *out, kiln_error *err)
{
    sink s = {NULL, 0};
    kiln__delivery d;

    memset(&d, 0, sizeof(d));
    fill(&s, c, &d);
    if ((s.p = kiln__malloc(s.len)) == NULL) {
        /* Give it back rather than leave it unacknowledged. */
        (void)amqp_basic_reject(b->conn, KILN__AMQP_CHANNEL, c->tag, 1);
        return kiln__fail(err, KILN_ENOMEM, "delivery of %zu bytes", s.len);
    }
    s.len = 0;
    fill(&s, c, &d);
    d.impl = s.p;
    d.tag = b->tag_base + c->tag;
    if (d.tag > b->max_tag)
        b->max_tag = d.tag;
    d.body_len = c->msg->body.len;
    if (c->msg->properties._flags & AMQP_BASIC_PRIORITY_FLAG)
        d.priority = c->msg->properties.priority;
    d.redelivered = c->redelivered;
    d.delivery_count = delivery_count(c->msg);
    *out = d;
    return KILN_OK;
}

void kiln__amqp_release(kiln__broker *base, kiln__delivery *d)
{
    (void)base;
    if (d == NULL)
        return;
    kiln__free(d->impl);
    memset(d, 0, sizeof(*d));
}
