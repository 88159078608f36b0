/* Publishing a batch with publisher confirms, pipelined: every message is
 * written first, then frames are read until each one is settled. In
 * confirm mode the broker numbers the publishes of a channel 1, 2, 3 ...
 * and acks or nacks by that number, `multiple` covering every number up
 * to it (RabbitMQ "Publisher Confirms").
 *
 * Each message is checked and its properties sized (broker/outgoing.c)
 * before any byte of it is written: rabbitmq-c writes the method frame
 * before it encodes the properties, so a failure there would leave half
 * a message on the wire and cost the connection. A message refused that
 * way is never written and takes no sequence number; the others go on. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "broker/outgoing.h"
#include "logger/logger.h"

#include <stdio.h>
#include <string.h>

enum {
    ST_SETTLED = 1,   /* confirmed or nacked */
    ST_RETURNED = 2,  /* basic.return */
    ST_NACKED = 4,    /* basic.nack */
    ST_WRITTEN = 8,   /* on the wire, with a sequence number */
    ST_BAD = 16,      /* refused: KILN_EINVAL */
    ST_BIG = 32,      /* refused: KILN_ETOOBIG */
    ST_NOMEM = 64,    /* refused: KILN_ENOMEM */
    ST_REPLACED = 128 /* written as its `oversize` */
};

#define ST_REFUSED (ST_BAD | ST_BIG | ST_NOMEM)

/* During a long batch, read what the broker sent every so many messages,
 * so its confirms never pile up against a socket nobody reads. */
#define DRAIN_EVERY 256

/* Settling works on written ordinals: the j-th message written has
 * sequence number first + j and index order[j] in msgs. */
struct kiln__amqp_batch {
    const kiln__message *msgs;
    size_t sent;       /* messages written so far */
    size_t *order;     /* written ordinal -> index in msgs */
    uint64_t first;    /* sequence number of the first written */
    unsigned char *st; /* ST_* per message (by index) */
    size_t unsettled;  /* among the written ones */
    size_t low;        /* every written ordinal below it is settled */
    size_t ret_next;   /* first ordinal for the next basic.return */
    bool lost;         /* the channel went away */
    char lost_why[200];
    char ret_why[64];           /* reply of the last basic.return */
    size_t refused;             /* lowest refused index, or SIZE_MAX */
    char refused_why[256 + 64]; /* and why */
};

/* Settles written ordinal j. */
static void mark(kiln__amqp_batch *t, size_t j, bool nacked)
{
    unsigned char *st = &t->st[t->order[j]];

    if (*st & ST_SETTLED)
        return;
    *st |= (unsigned char)(ST_SETTLED | (nacked ? ST_NACKED : 0));
    t->unsettled--;
}

/* The message as it went out: itself, or its replacement. */
static const kiln__message *written(const kiln__amqp_batch *t, size_t i)
{
    return (t->st[i] & ST_REPLACED) ? t->msgs[i].oversize : &t->msgs[i];
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
    while (t->low < t->sent && (t->st[t->order[t->low]] & ST_SETTLED))
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

    for (size_t j = t != NULL ? t->ret_next : 0; t != NULL && j < t->sent;
         j++) {
        size_t i = t->order[j];
        if ((t->st[i] & (ST_SETTLED | ST_RETURNED)) != 0 ||
            !is_returned(written(t, i), r, msg))
            continue;
        t->st[i] |= ST_RETURNED;
        t->ret_next = j + 1;
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

static kiln_err grow(kiln__amqp *b, size_t n, kiln_error *err)
{
    if (n > b->pub_cap) {
        unsigned char *p = kiln__realloc(b->pub_state, n);
        size_t *o;
        if (p != NULL)
            b->pub_state = p;
        o = p != NULL ? kiln__realloc(b->pub_order, n * sizeof(*o)) : NULL;
        if (o == NULL)
            return kiln__fail(err, KILN_ENOMEM, "publish: %zu messages", n);
        b->pub_order = o;
        b->pub_cap = n;
    }
    return KILN_OK;
}

/* Room for a header table of `n` entries, typed and as rabbitmq-c's. */
static bool grow_headers(kiln__amqp *b, size_t n)
{
    amqp_table_entry_t *h;
    kiln__hdr *f;

    if (n <= b->hdr_cap)
        return true;
    if ((h = kiln__realloc(b->hdr, n * sizeof(*h))) != NULL)
        b->hdr = h;
    if (h == NULL || (f = kiln__realloc(b->fhdr, n * sizeof(*f))) == NULL)
        return false;
    b->fhdr = f;
    b->hdr_cap = n;
    return true;
}

/* Message i will not be written: `rc` is its status, `why` the reason. */
static kiln_err refuse(kiln__amqp_batch *t, size_t i, kiln_err rc,
                       const char *why)
{
    t->st[i] |= (unsigned char)(rc == KILN_EINVAL    ? ST_BAD
                                : rc == KILN_ETOOBIG ? ST_BIG
                                                     : ST_NOMEM);
    if (i < t->refused) {
        t->refused = i;
        kiln__strlcpy(t->refused_why, why, sizeof(t->refused_why));
    }
    return rc;
}

static void properties(kiln__amqp *b, const kiln__outgoing *o,
                       amqp_basic_properties_t *p)
{
    const kiln__message *m = o->msg;

    memset(p, 0, sizeof(*p));
    p->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p->content_type = amqp_cstring_bytes(
        m->content_type != NULL ? m->content_type : "application/json");
    p->delivery_mode = (uint8_t)(m->persistent ? AMQP_DELIVERY_PERSISTENT
                                               : AMQP_DELIVERY_NONPERSISTENT);
    if (m->message_id != NULL) {
        p->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p->message_id = amqp_cstring_bytes(m->message_id);
    }
    if (m->priority > 0) {
        p->_flags |= AMQP_BASIC_PRIORITY_FLAG;
        p->priority = m->priority;
    }
    if (o->n > 0) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        p->headers.num_entries = (int)o->n;
        p->headers.entries = b->hdr;
    }
}

/* outgoing.c sizes the properties as rabbitmq-c encodes them; near the
 * limit, rabbitmq-c's own encoder has the last word. */
static bool encodes(kiln__amqp *b, amqp_basic_properties_t *p, size_t max)
{
    if (b->props_buf == NULL &&
        (b->props_buf = kiln__malloc(KILN__MAX_PROPS)) == NULL)
        return false;
    max = max < KILN__MAX_PROPS ? max : KILN__MAX_PROPS;
    return amqp_encode_properties(AMQP_BASIC_CLASS, p,
                                  (amqp_bytes_t){max, b->props_buf}) >= 0;
}

/* Writes message i, or refuses it before writing anything. KILN_EBROKER
 * when the connection failed; any other failure is message i's alone. */
static kiln_err send_one(kiln__amqp *b, kiln__amqp_batch *t, size_t i,
                         kiln_error *err)
{
    const kiln__message *m = &t->msgs[i];
    int frame_max = amqp_get_frame_max(b->conn);
    size_t max = frame_max > KILN__FRAME_OVERHEAD
                     ? (size_t)frame_max - KILN__FRAME_OVERHEAD
                     : KILN__MAX_PROPS;
    amqp_basic_properties_t p;
    kiln__outgoing o;
    kiln_error e;
    kiln_err rc;
    int s;

    if (!grow_headers(b, kiln__outgoing_cap(m)))
        return refuse(t, i, KILN_ENOMEM, "no memory for its headers");
    rc = kiln__outgoing_prepare(m, max, b->fhdr, b->hdr_cap, b->note,
                                sizeof(b->note), &o, &e);
    if (rc == KILN_OK)
        rc = kiln__amqp_fields_out(&b->pool, o.table, o.n, b->hdr, &e);
    if (rc == KILN_OK) {
        properties(b, &o, &p);
        if (o.props >= max / 2 && !encodes(b, &p, max))
            rc = kiln__fail(&e, KILN_ETOOBIG,
                            "properties do not encode within frame_max %d",
                            frame_max);
    }
    if (rc != KILN_OK) {
        recycle_amqp_pool(&b->pool);
        return refuse(t, i, rc, e.message);
    }
    s = amqp_basic_publish(
        b->conn, KILN__AMQP_CHANNEL,
        amqp_cstring_bytes(o.msg->exchange != NULL ? o.msg->exchange : ""),
        amqp_cstring_bytes(o.msg->routing_key), 1 /* mandatory */,
        0 /* immediate */, &p,
        (amqp_bytes_t){o.msg->body_len, (void *)(uintptr_t)o.msg->body});
    recycle_amqp_pool(&b->pool);
    if (s != AMQP_STATUS_OK)
        return kiln__amqp_fail_status(b, s, err, "basic.publish");
    t->st[i] |= (unsigned char)(ST_WRITTEN | (o.replaced ? ST_REPLACED : 0));
    t->order[t->sent++] = i;
    t->unsettled++;
    b->next_seq++;
    return KILN_OK;
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
        size_t before = t->sent;
        /* Never write on a channel the broker closed: after close-ok that
         * is a connection error (504 CHANNEL_ERROR). */
        if (t->lost || !b->chan_open)
            return KILN_EBROKER;
        if (t->st[i] & ST_REFUSED)
            continue;
        if (send_one(b, t, i, err) == KILN_EBROKER)
            return KILN_EBROKER;
        if (t->sent == before || t->sent % DRAIN_EVERY != 0)
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
    unsigned char st = t->st[i];

    if (st & ST_REFUSED)
        return (st & ST_BAD)   ? KILN_EINVAL
               : (st & ST_BIG) ? KILN_ETOOBIG
                               : KILN_ENOMEM;
    if ((st & ST_WRITTEN) && (st & (ST_RETURNED | ST_NACKED)))
        return KILN_EBROKER;
    if ((st & ST_WRITTEN) && (st & ST_SETTLED))
        return KILN_OK;
    return t->lost ? KILN_EBROKER : KILN_ETIMEDOUT;
}

static kiln_err describe(const kiln__amqp *b, const kiln__amqp_batch *t,
                         size_t i, size_t n, kiln_error *err)
{
    const kiln__message *m = written(t, i);
    char head[KILN_NAME_MAX * 2 + 64];
    kiln_err rc = outcome(t, i);
    bool sent = (t->st[i] & ST_WRITTEN) != 0;

    (void)snprintf(head, sizeof(head),
                   "publish msgs[%zu] of %zu to '%.255s' key '%.255s'", i, n,
                   m->exchange != NULL ? m->exchange : "",
                   m->routing_key != NULL ? m->routing_key : "");
    if (t->st[i] & ST_REFUSED)
        return kiln__fail(err, rc, "%s: refused: %s", head, t->refused_why);
    if (sent && (t->st[i] & ST_RETURNED))
        return kiln__fail(err, rc, "%s: unroutable: %s", head, t->ret_why);
    if (sent && (t->st[i] & ST_NACKED))
        return kiln__fail(err, rc, "%s: nacked by the broker", head);
    if (rc == KILN_EBROKER)
        return kiln__fail(err, rc, "%s: %s", head,
                          b->lost   ? b->lost_why
                          : t->lost ? t->lost_why
                                    : "not sent");
    if (!sent)
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

/* The connection was not usable (`rc`, `why`): every message not refused
 * gets rc; the first failure is reported. */
static kiln_err unready(const kiln__amqp_batch *t, size_t n, kiln_err rc,
                        const kiln_error *why, kiln_err *status,
                        kiln_error *err)
{
    for (size_t i = 0; status != NULL && i < n; i++)
        status[i] = (t->st[i] & ST_REFUSED) ? KILN_EINVAL : rc;
    if (t->refused == 0)
        return kiln__fail(err, KILN_EINVAL, "publish msgs[0] of %zu: %s", n,
                          t->refused_why);
    if (err != NULL)
        *err = *why;
    return rc;
}

kiln_err kiln__amqp_publish(kiln__broker *base, const kiln__message *msgs,
                            size_t n, kiln_err *status, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    int64_t deadline =
        kiln__monotonic_ns() + (int64_t)b->cfg.publish_timeout_ms * 1000000;
    kiln__amqp_batch t;
    kiln_error e;
    kiln_err rc;

    b->pub_n = n;
    b->pub_sent = 0;
    b->pub_lost = false;
    b->pub_checked = false;
    if (n == 0) {
        kiln__ok(err);
        return KILN_OK;
    }
    if (msgs == NULL) {
        (void)fail_all(KILN_EINVAL, n, status);
        return kiln__fail(err, KILN_EINVAL, "publish: no messages");
    }
    if ((rc = grow(b, n, err)) != KILN_OK)
        return fail_all(rc, n, status);
    memset(&t, 0, sizeof(t));
    t.msgs = msgs;
    t.st = b->pub_state;
    t.order = b->pub_order;
    t.refused = SIZE_MAX;
    memset(t.st, 0, n);
    b->pub_checked = true;
    if ((rc = kiln__amqp_ready(b, &e)) != KILN_OK) {
        /* Nothing written: what a broker would take can go on the next
         * connection; the rest is refused now. (On a usable connection
         * send_one checks each message as it comes.) */
        kiln_error bad;
        for (size_t i = 0; i < n; i++)
            if (kiln__message_valid(&msgs[i], &bad) != KILN_OK)
                (void)refuse(&t, i, KILN_EINVAL, bad.message);
        b->pub_lost = true;
        return unready(&t, n, rc, &e, status, err);
    }
    t.first = b->next_seq;
    b->batch = &t;
    rc = send_all(b, &t, n, deadline, err);
    if (rc == KILN_OK)
        (void)kiln__amqp_pump(b, deadline, settled, err);
    b->batch = NULL;
    b->pub_sent = t.sent;
    b->pub_lost = t.lost;
    return report(b, &t, n, status, err);
}

/* Unsettled when the channel went away: written but neither acked nor
 * nacked, and not returned either (a return is the broker's final word on
 * a message, even when its ack never came); or never written, unless it
 * was refused. */
bool kiln__amqp_publish_lost(kiln__broker *base, size_t i)
{
    const kiln__amqp *b = (const kiln__amqp *)base;
    unsigned char st;

    if (!b->pub_lost || i >= b->pub_n)
        return false;
    if (!b->pub_checked)
        return true;
    st = b->pub_state[i];
    if (st & ST_REFUSED)
        return false;
    return !(st & ST_WRITTEN) || (st & (ST_SETTLED | ST_RETURNED)) == 0;
}
