/* Publishing with publisher confirms, two ways on one mechanism
 * (amqp_confirm.c tracks what was written until the broker settles it):
 *   - publish, a batch: every message is written first, then frames are
 *     read until each one is settled or the publish timeout passes;
 *   - publish_async, pipelined: messages are written and the call
 *     returns; wait_settled reports their outcomes as they arrive, so the
 *     caller keeps writing while earlier confirms are outstanding.
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
    bool lost;         /* the channel went away */
    char lost_why[200];
    char ret_why[48];           /* of the last basic.return */
    size_t refused;             /* lowest refused index, or SIZE_MAX */
    char refused_why[256 + 64]; /* and why */
};

/* The message as it went out: itself, or its replacement. */
static const kiln__message *written(const kiln__amqp_batch *t, size_t i)
{
    return (t->st[i] & ST_REPLACED) ? t->msgs[i].oversize : &t->msgs[i];
}

/* Index in msgs of the message written as `seq`, or SIZE_MAX when it is
 * not one of this batch (an earlier publish timed out before its
 * confirm). */
static size_t index_of(const kiln__amqp_batch *t, uint64_t seq)
{
    if (t == NULL || seq < t->first || seq - t->first >= t->sent)
        return SIZE_MAX;
    return t->order[seq - t->first];
}

static void settled_as(kiln__amqp_batch *t, size_t i, unsigned char how)
{
    if (t->st[i] & ST_SETTLED)
        return;
    t->st[i] |= (unsigned char)(ST_SETTLED | how);
    t->unsettled--;
}

void kiln__amqp_batch_report(kiln__amqp *b, uint64_t seq, kiln_err status,
                             bool nacked)
{
    size_t i = index_of(b->batch, seq);

    (void)status;
    if (i != SIZE_MAX)
        settled_as(b->batch, i, nacked ? ST_NACKED : 0);
}

/* A return is the broker's final word on a message: its ack follows, but
 * the message is settled now. */
void kiln__amqp_batch_returned(kiln__amqp *b, uint64_t seq, const char *why)
{
    size_t i = index_of(b->batch, seq);

    if (i == SIZE_MAX)
        return;
    settled_as(b->batch, i, ST_RETURNED);
    kiln__strlcpy(b->batch->ret_why, why, sizeof(b->batch->ret_why));
}

void kiln__amqp_batch_abort(kiln__amqp *b, const char *why)
{
    kiln__amqp_batch *t = b->batch;

    if (t != NULL && !t->lost) {
        t->lost = true;
        kiln__strlcpy(t->lost_why, why, sizeof(t->lost_why));
    }
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

/* Writes `m`, or its replacement, and tracks it as b->next_seq - 1.
 * KILN_EBROKER (in `err`) when the connection failed: nothing of it
 * counts as written, the broker never routes a message whose content did
 * not arrive whole. Any other failure refuses `m` before any byte of it
 * is written, with the reason in `err`. */
static kiln_err write_msg(kiln__amqp *b, const kiln__message *m, bool sync,
                          bool *replaced, kiln_error *err)
{
    int frame_max = amqp_get_frame_max(b->conn);
    size_t max = frame_max > KILN__FRAME_OVERHEAD
                     ? (size_t)frame_max - KILN__FRAME_OVERHEAD
                     : KILN__MAX_PROPS;
    amqp_basic_properties_t p;
    kiln__outgoing o;
    kiln_err rc;
    int s;

    if (!grow_headers(b, kiln__outgoing_cap(m)))
        return kiln__fail(err, KILN_ENOMEM, "no memory for its headers");
    if ((rc = kiln__amqp_track_room(b, err)) != KILN_OK)
        return rc;
    rc = kiln__outgoing_prepare(m, max, b->fhdr, b->hdr_cap, b->note,
                                sizeof(b->note), &o, err);
    if (rc == KILN_OK)
        rc = kiln__amqp_fields_out(&b->pool, o.table, o.n, b->hdr, err);
    if (rc == KILN_OK) {
        properties(b, &o, &p);
        if (o.props >= max / 2 && !encodes(b, &p, max))
            rc = kiln__fail(err, KILN_ETOOBIG,
                            "properties do not encode within frame_max %d",
                            frame_max);
    }
    if (rc != KILN_OK) {
        recycle_amqp_pool(&b->pool);
        return rc;
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
    kiln__amqp_track(b, kiln__amqp_key(o.msg), sync);
    *replaced = o.replaced;
    return KILN_OK;
}

/* Writes message i of the batch, or refuses it before writing anything.
 * KILN_EBROKER when the connection failed; any other failure is message
 * i's alone. */
static kiln_err send_one(kiln__amqp *b, kiln__amqp_batch *t, size_t i,
                         kiln_error *err)
{
    bool replaced = false;
    kiln_error e;
    kiln_err rc = write_msg(b, &t->msgs[i], true, &replaced, &e);

    if (rc == KILN_EBROKER) {
        if (err != NULL)
            *err = e;
        return rc;
    }
    if (rc != KILN_OK)
        return refuse(t, i, rc, e.message);
    t->st[i] |= (unsigned char)(ST_WRITTEN | (replaced ? ST_REPLACED : 0));
    t->order[t->sent++] = i;
    t->unsettled++;
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
        return kiln__fail(err, rc, "%s: %s", head, t->ret_why);
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

/* ---- pipelined ----------------------------------------------------------- */

kiln_err kiln__amqp_publish_async(kiln__broker *base, const kiln__message *msgs,
                                  size_t n, uint64_t *seq, kiln_err *status,
                                  size_t *done, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    size_t since_read = 0;
    bool refused = false;
    kiln_err rc;

    *done = 0;
    if (n > 0 && (msgs == NULL || seq == NULL || status == NULL))
        return kiln__fail(err, KILN_EINVAL, "publish_async: arguments");
    if ((rc = kiln__amqp_ready(b, err)) != KILN_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        bool replaced = false;
        kiln_error e;
        /* Blocked: the broker stops reading, and amqp_basic_publish
         * would wait on a full socket with no deadline. */
        if (b->blocked)
            break;
        if (b->lost || !b->chan_open)
            return kiln__amqp_usable(b, err) != KILN_OK
                       ? KILN_EBROKER
                       : kiln__fail(err, KILN_EBROKER, "channel closed");
        rc = write_msg(b, &msgs[i], false, &replaced, &e);
        if (rc == KILN_EBROKER) {
            if (err != NULL)
                *err = e;
            return rc;
        }
        seq[i] = rc == KILN_OK ? b->next_seq - 1 : 0;
        status[i] = rc;
        *done = i + 1;
        if (rc != KILN_OK && !refused) {
            refused = true;
            (void)kiln__fail(err, rc, "refused: %s", e.message);
        }
        if (rc != KILN_OK || ++since_read < DRAIN_EVERY)
            continue;
        since_read = 0;
        rc = kiln__amqp_pump(b, kiln__monotonic_ns(), drained, err);
        if (rc != KILN_ETIMEDOUT)
            return rc == KILN_OK ? KILN_EBROKER : rc;
    }
    if (!refused)
        kiln__ok(err);
    return KILN_OK;
}
