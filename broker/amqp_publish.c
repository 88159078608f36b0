/* Publishing a batch with publisher confirms, pipelined: every message is
 * written first, then frames are read until each one is settled. In
 * confirm mode the broker numbers the publishes of a channel 1, 2, 3 ...
 * and acks or nacks by that number, `multiple` covering every number up
 * to it (RabbitMQ "Publisher Confirms"). */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "logger/logger.h"

#include <stdio.h>
#include <string.h>

enum { ST_SETTLED = 1, ST_RETURNED = 2, ST_NACKED = 4 };

/* During a long batch, read what the broker sent every so many messages,
 * so its confirms never pile up against a socket nobody reads. */
#define DRAIN_EVERY 256

struct kiln__amqp_batch {
    const kiln__message *msgs;
    size_t sent;       /* messages written so far */
    uint64_t first;    /* sequence number of msgs[0] */
    unsigned char *st; /* ST_* per message */
    size_t unsettled;  /* among the sent ones */
    size_t low;        /* every message below it is settled */
    size_t ret_next;   /* first candidate for the next basic.return */
    bool lost;         /* the channel went away */
    char lost_why[200];
    char ret_why[64]; /* reply of the last basic.return */
};

static void mark(kiln__amqp_batch *t, size_t i, bool nacked)
{
    if (t->st[i] & ST_SETTLED)
        return;
    t->st[i] |= (unsigned char)(ST_SETTLED | (nacked ? ST_NACKED : 0));
    t->unsettled--;
}

void kiln__amqp_batch_settle(kiln__amqp *b, uint64_t seq, bool multiple,
                             bool nacked)
{
    kiln__amqp_batch *t = b->batch;
    size_t idx;

    /* Confirms below `first` belong to an earlier publish that timed out. */
    if (t == NULL || t->sent == 0 || seq < t->first)
        return;
    idx = seq - t->first < t->sent ? (size_t)(seq - t->first) : t->sent - 1;
    if (multiple) {
        for (size_t i = t->low; i <= idx; i++)
            mark(t, i, nacked);
    } else {
        mark(t, idx, nacked);
    }
    while (t->low < t->sent && (t->st[t->low] & ST_SETTLED))
        t->low++;
}

void kiln__amqp_batch_abort(kiln__amqp *b, const char *why)
{
    kiln__amqp_batch *t = b->batch;

    if (t != NULL && !t->lost) {
        t->lost = true;
        kiln__strlcpy(t->lost_why, why, sizeof(t->lost_why));
    }
}

static bool same(amqp_bytes_t a, const char *s)
{
    size_t n = strlen(s);

    return a.len == n && (n == 0 || memcmp(a.bytes, s, n) == 0);
}

static bool is_returned(const kiln__message *m, const amqp_basic_return_t *r,
                        const amqp_message_t *msg)
{
    bool has_id = (msg->properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) != 0;

    if (!same(r->exchange, m->exchange != NULL ? m->exchange : "") ||
        !same(r->routing_key, m->routing_key))
        return false;
    if (m->message_id == NULL)
        return !has_id;
    return has_id && same(msg->properties.message_id, m->message_id);
}

/* A basic.return carries no sequence number. RabbitMQ sends it before the
 * ack of the same message, and returns come in publish order, so the
 * message is the first unsettled, unreturned one with the same exchange,
 * routing key and message id. Messages alike in all three route alike. */
void kiln__amqp_batch_returned(kiln__amqp *b, const amqp_basic_return_t *r,
                               const amqp_message_t *msg)
{
    kiln__amqp_batch *t = b->batch;

    for (size_t i = t != NULL ? t->ret_next : 0; t != NULL && i < t->sent;
         i++) {
        if ((t->st[i] & (ST_SETTLED | ST_RETURNED)) != 0 ||
            !is_returned(&t->msgs[i], r, msg))
            continue;
        t->st[i] |= ST_RETURNED;
        t->ret_next = i + 1;
        (void)snprintf(t->ret_why, sizeof(t->ret_why), "%u %.*s", r->reply_code,
                       KILN__AMQP_BYTES(r->reply_text));
        return;
    }
    kiln__log(KILN_LOG_WARN, "broker",
              "amqp message returned after its publish ended: exchange '%.*s' "
              "routing key '%.*s': %.*s",
              KILN__AMQP_BYTES(r->exchange), KILN__AMQP_BYTES(r->routing_key),
              KILN__AMQP_BYTES(r->reply_text));
}

static kiln_err grow(kiln__amqp *b, size_t n, size_t n_headers, kiln_error *err)
{
    if (n > b->pub_cap) {
        unsigned char *p = kiln__realloc(b->pub_state, n);
        if (p == NULL)
            return kiln__fail(err, KILN_ENOMEM, "publish: %zu messages", n);
        b->pub_state = p;
        b->pub_cap = n;
    }
    if (n_headers > b->hdr_cap) {
        amqp_table_entry_t *h = kiln__realloc(b->hdr, n_headers * sizeof(*h));
        if (h == NULL)
            return kiln__fail(err, KILN_ENOMEM, "publish: %zu headers",
                              n_headers);
        b->hdr = h;
        b->hdr_cap = n_headers;
    }
    return KILN_OK;
}

/* AMQP short strings hold 255 bytes. rabbitmq-c finds an overlong one
 * only while encoding, after part of the message may be on the wire, so
 * check before writing anything. */
static bool short_ok(const char *s)
{
    return s == NULL || strlen(s) <= 255;
}

static const char *bad_field(const kiln__message *m)
{
    if (m->routing_key == NULL)
        return "no routing key";
    if ((m->body == NULL && m->body_len > 0) ||
        (m->headers == NULL && m->n_headers > 0))
        return "body or headers missing";
    if (m->n_headers > (size_t)INT32_MAX)
        return "too many headers";
    if (!short_ok(m->exchange) || !short_ok(m->routing_key) ||
        !short_ok(m->message_id) || !short_ok(m->content_type))
        return "exchange, routing key, message id or content type longer "
               "than 255 bytes";
    for (size_t h = 0; h < m->n_headers; h++)
        if (!short_ok(m->headers[h].key))
            return "a header name longer than 255 bytes";
    return NULL;
}

static kiln_err validate(const kiln__message *msgs, size_t n,
                         size_t *max_headers, kiln_error *err)
{
    const char *why;

    *max_headers = 0;
    if (msgs == NULL)
        return kiln__fail(err, KILN_EINVAL, "publish: no messages");
    for (size_t i = 0; i < n; i++) {
        if ((why = bad_field(&msgs[i])) != NULL)
            return kiln__fail(err, KILN_EINVAL, "publish msgs[%zu]: %s", i,
                              why);
        if (msgs[i].n_headers > *max_headers)
            *max_headers = msgs[i].n_headers;
    }
    return KILN_OK;
}

static int send_one(kiln__amqp *b, const kiln__message *m)
{
    amqp_basic_properties_t p;
    amqp_bytes_t body = {m->body_len, (void *)m->body};

    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.content_type = amqp_cstring_bytes(
        m->content_type != NULL ? m->content_type : "application/json");
    p.delivery_mode = (uint8_t)(m->persistent ? AMQP_DELIVERY_PERSISTENT
                                              : AMQP_DELIVERY_NONPERSISTENT);
    if (m->message_id != NULL) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = amqp_cstring_bytes(m->message_id);
    }
    if (m->priority > 0) {
        p._flags |= AMQP_BASIC_PRIORITY_FLAG;
        p.priority = m->priority;
    }
    if (m->n_headers > 0) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        for (size_t i = 0; i < m->n_headers; i++) {
            const kiln_header *h = &m->headers[i];
            b->hdr[i].key = amqp_cstring_bytes(h->key != NULL ? h->key : "");
            b->hdr[i].value.kind = AMQP_FIELD_KIND_UTF8;
            b->hdr[i].value.value.bytes =
                amqp_cstring_bytes(h->value != NULL ? h->value : "");
        }
        p.headers.num_entries = (int)m->n_headers;
        p.headers.entries = b->hdr;
    }
    return amqp_basic_publish(
        b->conn, KILN__AMQP_CHANNEL,
        amqp_cstring_bytes(m->exchange != NULL ? m->exchange : ""),
        amqp_cstring_bytes(m->routing_key), 1 /* mandatory */,
        0 /* immediate */, &p, body);
}

static bool drained(const kiln__amqp *b)
{
    (void)b;
    return false;
}

static bool settled(const kiln__amqp *b)
{
    return b->batch->unsettled == 0 || b->batch->lost;
}

static bool unblocked(const kiln__amqp *b)
{
    return !b->blocked || b->batch->lost;
}

/* While the broker blocks the connection (a memory or disk alarm) it
 * stops reading, and amqp_basic_publish waits on a full socket with no
 * deadline: wait for connection.unblocked here instead, within the
 * publish timeout. */
static kiln_err wait_unblocked(kiln__amqp *b, int64_t deadline, kiln_error *err)
{
    kiln_err rc;

    if (!b->blocked)
        return KILN_OK;
    rc = kiln__amqp_pump(b, deadline, unblocked, err);
    return rc == KILN_OK && b->batch->lost ? KILN_EBROKER : rc;
}

static kiln_err send_all(kiln__amqp *b, kiln__amqp_batch *t, size_t n,
                         int64_t deadline, kiln_error *err)
{
    kiln_err rc;

    if ((rc = wait_unblocked(b, deadline, err)) != KILN_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        int s;
        /* Never write on a channel the broker closed: after close-ok that
         * is a connection error (504 CHANNEL_ERROR). */
        if (t->lost || !b->chan_open)
            return KILN_EBROKER;
        if ((s = send_one(b, &t->msgs[i])) != AMQP_STATUS_OK)
            return kiln__amqp_fail_status(b, s, err, "basic.publish");
        t->sent++;
        t->unsettled++;
        b->next_seq++;
        if (t->sent % DRAIN_EVERY != 0)
            continue;
        rc = kiln__amqp_pump(b, kiln__monotonic_ns(), drained, err);
        if (rc != KILN_ETIMEDOUT ||
            (rc = wait_unblocked(b, deadline, err)) != KILN_OK)
            return rc;
    }
    return KILN_OK;
}

/* Unsent messages time out when a blocked broker held them back, and
 * fail when the channel went away. */
static kiln_err outcome(const kiln__amqp_batch *t, size_t i)
{
    if (i < t->sent && (t->st[i] & (ST_RETURNED | ST_NACKED)))
        return KILN_EBROKER;
    if (i < t->sent && (t->st[i] & ST_SETTLED))
        return KILN_OK;
    return t->lost ? KILN_EBROKER : KILN_ETIMEDOUT;
}

static kiln_err describe(const kiln__amqp *b, const kiln__amqp_batch *t,
                         size_t i, size_t n, kiln_error *err)
{
    const kiln__message *m = &t->msgs[i];
    char head[KILN_NAME_MAX * 2 + 64];
    kiln_err rc = outcome(t, i);

    (void)snprintf(head, sizeof(head),
                   "publish msgs[%zu] of %zu to '%s' key '%s'", i, n,
                   m->exchange != NULL ? m->exchange : "", m->routing_key);
    if (i < t->sent && (t->st[i] & ST_RETURNED))
        return kiln__fail(err, rc, "%s: unroutable: %s", head, t->ret_why);
    if (i < t->sent && (t->st[i] & ST_NACKED))
        return kiln__fail(err, rc, "%s: nacked by the broker", head);
    if (rc == KILN_EBROKER)
        return kiln__fail(err, rc, "%s: %s", head,
                          b->lost   ? b->lost_why
                          : t->lost ? t->lost_why
                                    : "not sent");
    if (i >= t->sent)
        return kiln__fail(err, rc,
                          "%s: not sent: the broker blocks publishing "
                          "(resource alarm) for more than %u ms",
                          head, b->cfg.publish_timeout_ms);
    return kiln__fail(err, rc,
                      "%s: no confirm within %u ms (KILN_PUBLISH_TIMEOUT_MS)%s",
                      head, b->cfg.publish_timeout_ms,
                      b->blocked ? "; the broker blocks publishing" : "");
}

static kiln_err report(const kiln__amqp *b, const kiln__amqp_batch *t, size_t n,
                       kiln_err *status, kiln_error *err)
{
    size_t bad = n;

    for (size_t i = 0; i < n; i++) {
        kiln_err s = outcome(t, i);
        if (status != NULL)
            status[i] = s;
        if (s != KILN_OK && bad == n)
            bad = i;
    }
    if (bad == n) {
        kiln__ok(err);
        return KILN_OK;
    }
    return describe(b, t, bad, n, err);
}

static kiln_err fail_all(kiln_err rc, size_t n, kiln_err *status)
{
    for (size_t i = 0; status != NULL && i < n; i++)
        status[i] = rc;
    return rc;
}

kiln_err kiln__amqp_publish(kiln__broker *base, const kiln__message *msgs,
                            size_t n, kiln_err *status, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    int64_t deadline =
        kiln__monotonic_ns() + (int64_t)b->cfg.publish_timeout_ms * 1000000;
    kiln__amqp_batch t;
    size_t max_headers;
    kiln_err rc;

    b->pub_n = n;
    b->pub_sent = 0;
    b->pub_lost = false;
    if (n == 0) {
        kiln__ok(err);
        return KILN_OK;
    }
    if ((rc = validate(msgs, n, &max_headers, err)) != KILN_OK)
        return fail_all(rc, n, status);
    if ((rc = kiln__amqp_ready(b, err)) != KILN_OK) {
        /* Nothing written: all of it can go on the next connection. */
        b->pub_lost = true;
        return fail_all(rc, n, status);
    }
    if ((rc = grow(b, n, max_headers, err)) != KILN_OK)
        return fail_all(rc, n, status);
    memset(&t, 0, sizeof(t));
    t.msgs = msgs;
    t.st = b->pub_state;
    t.first = b->next_seq;
    memset(t.st, 0, n);
    b->batch = &t;
    rc = send_all(b, &t, n, deadline, err);
    if (rc == KILN_OK)
        (void)kiln__amqp_pump(b, deadline, settled, err);
    b->batch = NULL;
    b->pub_sent = t.sent;
    b->pub_lost = t.lost;
    return report(b, &t, n, status, err);
}

/* Unsettled when the channel went away: neither acked nor nacked, and not
 * returned either (a return is the broker's final word on a message, even
 * when its ack never came). Messages never written count too. */
bool kiln__amqp_publish_lost(kiln__broker *base, size_t i)
{
    const kiln__amqp *b = (const kiln__amqp *)base;

    if (!b->pub_lost || i >= b->pub_n)
        return false;
    if (i >= b->pub_sent)
        return true;
    return (b->pub_state[i] & (ST_SETTLED | ST_RETURNED)) == 0;
}
