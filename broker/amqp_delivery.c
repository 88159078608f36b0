/* A delivery as a kiln__delivery: the headers twice, typed (core/headers.h,
 * converted by amqp_fields.c) and as strings (kiln__hval_text).
 *
 * The body is not copied: the delivery takes rabbitmq-c's buffer (which
 * rabbitmq-c allocated with malloc for the message and would free with
 * the envelope); it is not NUL-terminated. Besides it a delivery is at most two
 * allocations: d->impl holds the pointer to that buffer, the strings and the
 * string headers; the typed headers, when there are any, are one block that
 * starts with d->fields. Release frees all three and touches nothing but the
 * delivery (any thread may call it). */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"

#include <stdlib.h>
#include <string.h>

/* rabbitmq-c's body buffer of `m`, to be taken; NULL for an empty body
 * (which is copied: a "" in the delivery's block). */
static char *own_body(const amqp_message_t *m)
{
    return m->body.len > 0 ? m->body.bytes : NULL;
}

static const amqp_table_t *headers_of(const amqp_message_t *msg)
{
    const amqp_basic_properties_t *p = &msg->properties;

    return (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL;
}

/* Everything but the typed headers `f`, which are in place already; the
 * body is `owned` (taken, own_body) or else copied. */
static void fill(kiln__bump *s, const kiln__amqp_content *c, char *owned,
                 kiln__delivery *d, const kiln__hdr *f, size_t nh)
{
    const amqp_basic_properties_t *p = &c->msg->properties;
    void **body = kiln__bump_take(s, sizeof(void *), _Alignof(void *));
    kiln_header *hdrs;

    d->exchange = kiln__bump_str(s, c->exchange.bytes, c->exchange.len);
    hdrs = kiln__bump_take(s, nh * sizeof(kiln_header), _Alignof(kiln_header));
    d->routing_key =
        kiln__bump_str(s, c->routing_key.bytes, c->routing_key.len);
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        d->message_id =
            kiln__bump_str(s, p->message_id.bytes, p->message_id.len);
    else
        d->message_id = kiln__bump_str(s, "", 0);
    if (owned != NULL) {
        d->body = owned;
        if (body != NULL)
            *body = d->body;
    } else {
        d->body = kiln__bump_str(s, c->msg->body.bytes, c->msg->body.len);
        if (body != NULL)
            *body = NULL;
    }
    for (size_t i = 0; i < nh; i++) {
        char *at = kiln__bump_take(s, 0, 1);
        s->len += kiln__hval_text(&f[i].value, at);
        (void)kiln__bump_str(s, "", 0);
        if (hdrs != NULL) {
            hdrs[i].key = f[i].key; /* the same string as the typed one */
            hdrs[i].value = at;
        }
    }
    d->headers = nh > 0 ? hdrs : NULL;
    d->fields = nh > 0 ? f : NULL;
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

/* Gives a delivery that cannot be held back rather than leave it
 * unacknowledged. */
static kiln_err refuse(kiln__amqp *b, const kiln__amqp_content *c, size_t n,
                       kiln_error *err)
{
    (void)amqp_basic_reject(b->conn, KILN__AMQP_CHANNEL, c->tag, 1);
    return kiln__fail(err, KILN_ENOMEM, "delivery of %zu bytes", n);
}

kiln_err kiln__amqp_build(kiln__amqp *b, const kiln__amqp_content *c,
                          kiln__delivery *out, kiln_error *err)
{
    const amqp_table_t *h = headers_of(c->msg);
    size_t nh = h != NULL && h->num_entries > 0 ? (size_t)h->num_entries : 0;
    kiln__bump s = {NULL, 0}, t = {NULL, 0};
    kiln__hdr *fields = NULL;
    char *owned = own_body(c->msg);
    kiln__delivery d;

    memset(&d, 0, sizeof(d));
    if (nh > 0) {
        (void)kiln__amqp_fields_in(&t, h);
        if ((t.p = kiln__malloc(t.len)) == NULL)
            return refuse(b, c, t.len, err);
        t.len = 0;
        fields = kiln__amqp_fields_in(&t, h);
    }
    fill(&s, c, owned, &d, fields, nh);
    if ((s.p = kiln__malloc(s.len)) == NULL) {
        kiln__free(fields);
        return refuse(b, c, s.len, err);
    }
    s.len = 0;
    fill(&s, c, owned, &d, fields, nh);
    d.impl = s.p;
    d.body_len = c->msg->body.len;
    if (owned != NULL)
        c->msg->body = amqp_empty_bytes; /* ours now: not freed with it */
    d.tag = b->tag_base + c->tag;
    if (d.tag > b->max_tag)
        b->max_tag = d.tag;
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
    if (d->impl != NULL)
        free(*(void **)d->impl); /* rabbitmq-c's malloc: not kiln__free */
    kiln__free(d->impl);
    kiln__free((void *)(uintptr_t)d->fields); /* the typed block */
    memset(d, 0, sizeof(*d));
}
