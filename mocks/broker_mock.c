/* A connection to the in-memory broker's server (mocks/mock_server.c),
 * implementing broker/broker.h. Like a real one it belongs to one thread;
 * the server it shares is safe from any thread. The lock rule is in
 * mocks/mock_internal.h. */
#include "mocks/mock_internal.h"

#include "broker/outgoing.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

/* Pipelined publishing: a confirm (or nack, or return) on its way back. */
struct pend {
    uint64_t seq;
    kiln_err status;
    int64_t due_ns; /* CLOCK_MONOTONIC: when it arrives */
    char why[96];
};

struct conn {
    kiln__broker base;
    kiln__mock_server *srv;
    bool connected, subscribed;
    bool broken;      /* lost (fail_connection): ops fail until close */
    size_t lost_from; /* last publish: messages from here were lost */
    size_t queue;
    unsigned prefetch;
    uint64_t next_tag;
    struct msg *unacked, *unacked_tail; /* by tag; under srv->mu */
    size_t n_unacked;
    uint64_t last_seq; /* pipelined: the last sequence number given */
    struct pend *pend; /* ring of outcomes not yet reported, by due */
    size_t p_head, p_len, p_cap;
    bool saw_blocked; /* publish_async found publishing blocked */
};

/* ---- publish ------------------------------------------------------------ */

/* Caller holds srv->mu. The message that breaks the connection
 * (fail_connection) reaches its queue, but its confirm is lost with the
 * connection; every later one is lost before the broker sees it. */
static kiln_err publish_one(struct conn *c, const kiln__message *m, size_t i,
                            kiln_error *err)
{
    if (!c->broken && c->srv->fail_conn_at > 0 && --c->srv->fail_conn_at == 0) {
        (void)kiln__mock_route(c->srv, m, err);
        c->broken = true;
    }
    if (!c->broken)
        return kiln__mock_route(c->srv, m, err);
    c->lost_from = i < c->lost_from ? i : c->lost_from;
    return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
}

/* As the AMQP broker does, before anything reaches the server: checks
 * `m`, merges its headers and decides what goes out when they do not fit
 * a frame of KILN__FRAME_MAX bytes. The result goes to *flat, its headers
 * all typed in a table that `*scratch` owns (kiln__free it). */
static kiln_err prepare(const kiln__message *m, kiln__hdr **scratch, char *note,
                        size_t note_len, kiln__message *flat, kiln_error *err)
{
    size_t cap = kiln__outgoing_cap(m);
    kiln__outgoing o;
    kiln_err rc;

    if ((*scratch = kiln__malloc(cap * sizeof(**scratch))) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mock broker: headers");
    rc = kiln__outgoing_prepare(m, KILN__MAX_PROPS, *scratch, cap, note,
                                note_len, &o, err);
    if (rc != KILN_OK)
        return rc;
    *flat = *o.msg;
    flat->inherit = NULL;
    flat->keep = NULL;
    flat->fields = o.table;
    flat->n_fields = o.n;
    flat->headers = NULL;
    flat->n_headers = 0;
    flat->oversize = NULL;
    flat->trim = false;
    return KILN_OK;
}

static kiln_err conn_publish(kiln__broker *b, const kiln__message *msgs,
                             size_t n, kiln_err *status, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    kiln_err first = KILN_OK;
    unsigned delay_ms;
    char note[1024];

    c->lost_from = SIZE_MAX;
    if (!c->connected) {
        for (size_t i = 0; status != NULL && i < n; i++)
            status[i] = KILN_ECLOSED;
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    }
    for (size_t i = 0; i < n; i++) {
        kiln__hdr *scratch = NULL;
        kiln__message flat;
        kiln_error e;
        kiln_err rc =
            prepare(&msgs[i], &scratch, note, sizeof(note), &flat, &e);
        if (rc == KILN_OK) {
            pthread_mutex_lock(&c->srv->mu);
            rc = publish_one(c, &flat, i, &e);
            pthread_mutex_unlock(&c->srv->mu);
        }
        kiln__free(scratch);
        if (status != NULL)
            status[i] = rc;
        if (rc != KILN_OK && first == KILN_OK)
            first = kiln__fail(err, rc, "publish %zu of %zu: %s", i + 1, n,
                               e.message);
    }
    pthread_mutex_lock(&c->srv->mu);
    c->srv->publish_calls++;
    delay_ms = c->srv->confirm_delay_ms;
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    if (delay_ms > 0) /* the confirm's round trip */
        kiln__sleep_ns((int64_t)delay_ms * 1000000);
    return first;
}

/* ---- pipelined publish -------------------------------------------------- */

/* Room for one more outcome; taken before the message is routed, so a
 * message is refused (KILN_ENOMEM) rather than routed and unreported. */
static bool pend_room(struct conn *c)
{
    size_t cap = c->p_cap > 0 ? c->p_cap * 2 : 16;
    struct pend *n;

    if (c->p_len < c->p_cap)
        return true;
    if ((n = kiln__malloc(cap * sizeof(*n))) == NULL)
        return false;
    for (size_t i = 0; i < c->p_len && c->p_cap > 0; i++)
        n[i] = c->pend[(c->p_head + i) % c->p_cap];
    kiln__free(c->pend);
    c->pend = n;
    c->p_cap = cap;
    c->p_head = 0;
    return true;
}

static void pend_push(struct conn *c, uint64_t seq, kiln_err status,
                      int64_t due_ns, const char *why)
{
    struct pend *p = &c->pend[(c->p_head + c->p_len++) % c->p_cap];

    p->seq = seq;
    p->status = status;
    p->due_ns = due_ns;
    kiln__strlcpy(p->why, why != NULL ? why : "", sizeof(p->why));
}

/* When the confirm of a message written now arrives: at once, or, with a
 * confirm delay, `delay_ms` after the first message written since the
 * last round of confirms, together with everything written meanwhile, as
 * a broker that syncs its disk confirms all it took since its last sync
 * at once. */
static int64_t due_after(const struct conn *c, int64_t now, unsigned delay_ms)
{
    if (delay_ms == 0)
        return now;
    if (c->p_len > 0) {
        int64_t last = c->pend[(c->p_head + c->p_len - 1) % c->p_cap].due_ns;
        if (last > now)
            return last;
    }
    return now + (int64_t)delay_ms * 1000000;
}

/* Routes one prepared message for publish_async. The message that breaks
 * the connection (fail_connection) reaches its queue, but its confirm is
 * lost with the connection. Caller holds srv->mu. */
static kiln_err route_async(struct conn *c, const kiln__message *flat,
                            kiln_err *outcome, kiln_error *e)
{
    kiln__mock_server *srv = c->srv;

    if (srv->shutdown)
        return kiln__fail(e, KILN_EBROKER, "mock broker: shut down");
    if (srv->fail_conn_at > 0 && --srv->fail_conn_at == 0) {
        (void)kiln__mock_route(srv, flat, e);
        c->broken = true;
        return kiln__fail(e, KILN_EBROKER, "connection lost (injected)");
    }
    /* Nacked or returned (KILN_EBROKER), or not enqueued for want of
     * memory (KILN_ENOMEM): the broker's final word. */
    *outcome = kiln__mock_route(srv, flat, e);
    return KILN_OK;
}

static kiln_err conn_publish_async(kiln__broker *b, const kiln__message *msgs,
                                   size_t n, uint64_t *seq, kiln_err *status,
                                   size_t *done, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    bool refused = false;
    char note[1024];

    *done = 0;
    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    for (size_t i = 0; i < n; i++) {
        kiln__hdr *scratch = NULL;
        kiln__message flat;
        kiln_err rc, outcome = KILN_OK;
        bool blocked;
        int64_t due;
        kiln_error e;
        if (c->broken)
            return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
        rc = prepare(&msgs[i], &scratch, note, sizeof(note), &flat, &e);
        if (rc == KILN_OK && !pend_room(c))
            rc = kiln__fail(&e, KILN_ENOMEM, "mock broker: no memory");
        pthread_mutex_lock(&c->srv->mu);
        blocked = c->srv->blocked;
        due = due_after(c, kiln__monotonic_ns(), c->srv->confirm_delay_ms);
        if (rc == KILN_OK && !blocked)
            rc = route_async(c, &flat, &outcome, &e);
        pthread_cond_broadcast(&c->srv->cond);
        pthread_mutex_unlock(&c->srv->mu);
        kiln__free(scratch);
        if (blocked) {
            c->saw_blocked = true;
            break;
        }
        if (rc == KILN_EBROKER && !c->broken) {
            if (err != NULL)
                *err = e;
            return rc; /* shut down: not written */
        }
        seq[i] = rc == KILN_EBROKER || rc == KILN_OK ? ++c->last_seq : 0;
        status[i] = rc == KILN_EBROKER ? KILN_OK : rc;
        *done = i + 1;
        if (rc == KILN_EBROKER)
            return kiln__fail(err, rc, "%s", e.message);
        if (rc != KILN_OK && !refused) {
            refused = true;
            (void)kiln__fail(err, rc, "refused: %s", e.message);
        }
        if (rc == KILN_OK)
            pend_push(c, seq[i], outcome, due,
                      outcome == KILN_OK ? NULL : e.message);
    }
    if (!refused)
        kiln__ok(err);
    return KILN_OK;
}

/* Reports what is due; one round of confirms counts as one publish call
 * (a confirm round trip). */
static bool report_due(struct conn *c, kiln__settled_fn fn, void *ctx)
{
    int64_t now = kiln__monotonic_ns();
    size_t n = 0;

    while (c->p_len > 0 && c->pend[c->p_head].due_ns <= now) {
        struct pend p = c->pend[c->p_head];
        uint64_t last = p.seq;
        c->p_head = (c->p_head + 1) % c->p_cap;
        c->p_len--;
        /* Confirms due together go as one `multiple` ack. */
        while (p.status == KILN_OK && c->p_len > 0) {
            const struct pend *q = &c->pend[c->p_head];
            if (q->status != KILN_OK || q->due_ns > now || q->seq != last + 1)
                break;
            last = q->seq;
            c->p_head = (c->p_head + 1) % c->p_cap;
            c->p_len--;
        }
        fn(ctx, p.seq, last, p.status, p.why);
        n++;
    }
    if (n > 0) {
        pthread_mutex_lock(&c->srv->mu);
        c->srv->publish_calls++;
        pthread_mutex_unlock(&c->srv->mu);
    }
    return n > 0;
}

static kiln_err conn_wait_settled(kiln__broker *b, int64_t deadline_ns,
                                  int wake_fd, kiln__settled_fn fn, void *ctx,
                                  kiln_error *err)
{
    struct conn *c = (struct conn *)b;

    for (;;) {
        int64_t now, until;
        bool blocked;
        struct pollfd p = {wake_fd, POLLIN, 0};
        int ms, got;
        if (report_due(c, fn, ctx))
            return KILN_OK;
        if (!c->connected)
            return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
        if (c->broken)
            return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
        pthread_mutex_lock(&c->srv->mu);
        blocked = c->srv->blocked;
        pthread_mutex_unlock(&c->srv->mu);
        if (c->saw_blocked && !blocked) { /* connection.unblocked */
            c->saw_blocked = false;
            return KILN_OK;
        }
        now = kiln__monotonic_ns();
        if (now >= deadline_ns)
            return kiln__fail(err, KILN_ETIMEDOUT, "nothing settled in time");
        until = deadline_ns;
        if (c->p_len > 0 && c->pend[c->p_head].due_ns < until)
            until = c->pend[c->p_head].due_ns;
        if (c->saw_blocked && until - now > 2000000) /* unblocking is */
            until = now + 2000000;                   /* not signalled */
        ms = (int)((until - now + 999999) / 1000000);
        got = poll(&p, wake_fd >= 0 ? 1 : 0, ms);
        if (got > 0) {
            uint64_t v;
            if (read(wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                return kiln__fail(err, KILN_EINVAL, "wake fd: read failed");
            return KILN_OK;
        }
    }
}

/* ---- connection --------------------------------------------------------- */

static kiln_err conn_connect(kiln__broker *b, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    bool down, refused;

    if (c->broken)
        kiln__broker_close(b);
    pthread_mutex_lock(&c->srv->mu);
    down = c->srv->shutdown;
    refused = c->srv->refuse_connects;
    if (!down && !refused)
        c->srv->connects++;
    pthread_mutex_unlock(&c->srv->mu);
    if (down)
        return kiln__fail(err, KILN_EBROKER,
                          "mock broker: connection "
                          "refused (shut down)");
    if (refused)
        return kiln__fail(err, KILN_EBROKER,
                          "mock broker: connection refused (injected)");
    c->connected = true;
    c->last_seq = 0;
    c->p_len = c->p_head = 0;
    c->saw_blocked = false;
    return KILN_OK;
}

/* Returns every unacked delivery to the head of its queue, oldest first,
 * as the broker does when a channel closes. */
static void conn_close(kiln__broker *b)
{
    struct conn *c = (struct conn *)b;
    struct msg *rev = NULL;

    pthread_mutex_lock(&c->srv->mu);
    while (c->unacked != NULL) {
        struct msg *m = c->unacked;
        c->unacked = m->next;
        m->next = rev;
        rev = m;
    }
    while (rev != NULL) {
        struct msg *m = rev;
        rev = m->next;
        kiln__mock_queue_push_head(&c->srv->queues[m->queue], m);
    }
    c->srv->unacked -= c->n_unacked;
    c->unacked_tail = NULL;
    c->n_unacked = 0;
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    c->connected = c->subscribed = c->broken = false;
    c->next_tag = 0;
}

static kiln_err conn_declare(kiln__broker *b, const kiln_config *cfg,
                             kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    const char *key = cfg->binding_key[0] ? cfg->binding_key : cfg->queue;
    kiln_err rc;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    if (c->broken)
        return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
    if ((rc = kiln__mock_server_bind(c->srv, cfg->exchange, key, cfg->queue,
                                     err)) != KILN_OK)
        return rc;
    if (cfg->dead_letter_queue[0] != '\0' &&
        (rc = kiln__mock_server_bind(c->srv, cfg->dead_letter_exchange,
                                     cfg->dead_letter_queue,
                                     cfg->dead_letter_queue, err)) != KILN_OK)
        return rc;
    return kiln__mock_server_declare_delay(c->srv, cfg, err);
}

static kiln_err conn_subscribe(kiln__broker *b, const char *queue,
                               unsigned prefetch, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    bool found;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    if (c->subscribed)
        return kiln__fail(err, KILN_EINVAL, "mock broker: already consuming");
    pthread_mutex_lock(&c->srv->mu);
    found = kiln__mock_find_queue(c->srv, queue, &c->queue);
    pthread_mutex_unlock(&c->srv->mu);
    if (!found)
        return kiln__fail(err, KILN_EBROKER, "404 NOT_FOUND - no queue '%s'",
                          queue);
    c->subscribed = true;
    c->prefetch = prefetch;
    return KILN_OK;
}

/* Waits for a deliverable message. Caller holds srv->mu. */
static kiln_err wait_message(struct conn *c, int timeout_ms, kiln_error *err)
{
    kiln__mock_server *srv = c->srv;
    struct timespec ts;

    kiln__mock_deadline_after(&ts, timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        if (srv->shutdown)
            return kiln__fail(err, KILN_ECLOSED, "broker is shutting down");
        if (srv->fail_consume > 0) {
            srv->fail_consume--;
            return kiln__fail(err, KILN_EBROKER,
                              "connection lost "
                              "(injected)");
        }
        kiln__mock_release_due(srv);
        if (srv->queues[c->queue].head != NULL &&
            (c->prefetch == 0 || c->n_unacked < c->prefetch))
            return KILN_OK;
        if (timeout_ms == 0 || !kiln__mock_wait_until(srv, &ts, timeout_ms))
            return kiln__fail(err, KILN_ETIMEDOUT, "no delivery");
    }
}

static kiln_err conn_consume(kiln__broker *b, kiln__delivery *out,
                             int timeout_ms, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    struct msg *m, *copy;
    kiln__message view;
    kiln_err rc;

    if (!c->connected || !c->subscribed)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not consuming");
    pthread_mutex_lock(&c->srv->mu);
    if ((rc = wait_message(c, timeout_ms, err)) != KILN_OK)
        goto out;
    view = kiln__mock_msg_view(c->srv->queues[c->queue].head);
    if ((copy = kiln__mock_msg_pack(&view)) == NULL) {
        rc = kiln__fail(err, KILN_ENOMEM, "mock broker: delivery");
        goto out;
    }
    m = kiln__mock_queue_pop(&c->srv->queues[c->queue]);
    m->tag = ++c->next_tag;
    if (c->unacked_tail != NULL)
        c->unacked_tail->next = m;
    else
        c->unacked = m;
    c->unacked_tail = m;
    c->n_unacked++;
    c->srv->unacked++;
    *out = (kiln__delivery){.tag = m->tag,
                            .exchange = copy->exchange,
                            .routing_key = copy->routing_key,
                            .body = copy->body,
                            .body_len = copy->body_len,
                            .headers = copy->headers,
                            .n_headers = copy->n_headers,
                            .fields = copy->fields,
                            .message_id = copy->message_id,
                            .priority = m->priority,
                            .redelivered = m->deliveries > 0,
                            .delivery_count = m->deliveries,
                            .impl = copy};
    m->deliveries++;
out:
    pthread_mutex_unlock(&c->srv->mu);
    return rc;
}

/* Unlinks and returns the unacked delivery `tag`, or NULL. Caller holds
 * srv->mu. */
static struct msg *take_unacked(struct conn *c, uint64_t tag)
{
    struct msg *prev = NULL;

    for (struct msg *m = c->unacked; m != NULL; prev = m, m = m->next) {
        if (m->tag != tag)
            continue;
        if (prev != NULL)
            prev->next = m->next;
        else
            c->unacked = m->next;
        if (c->unacked_tail == m)
            c->unacked_tail = prev;
        m->next = NULL;
        c->n_unacked--;
        c->srv->unacked--;
        return m;
    }
    return NULL;
}

static kiln_err conn_ack(kiln__broker *b, uint64_t tag, bool multiple,
                         kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    kiln_err rc = KILN_OK;
    struct msg *m;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    pthread_mutex_lock(&c->srv->mu);
    if ((m = take_unacked(c, tag)) == NULL)
        rc = kiln__fail(err, KILN_EBROKER,
                        "406 PRECONDITION_FAILED - "
                        "unknown delivery tag %llu",
                        (unsigned long long)tag);
    kiln__free(m);
    /* Tags are handed out in order, so everything older is at the front. */
    while (rc == KILN_OK && multiple && c->unacked != NULL &&
           c->unacked->tag < tag)
        kiln__free(take_unacked(c, c->unacked->tag));
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    return rc;
}

static kiln_err conn_nack(kiln__broker *b, uint64_t tag, bool requeue,
                          kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    kiln_err rc = KILN_OK;
    struct msg *m;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    pthread_mutex_lock(&c->srv->mu);
    if ((m = take_unacked(c, tag)) == NULL)
        rc = kiln__fail(err, KILN_EBROKER,
                        "406 PRECONDITION_FAILED - "
                        "unknown delivery tag %llu",
                        (unsigned long long)tag);
    else if (requeue)
        kiln__mock_queue_push_head(&c->srv->queues[m->queue], m);
    else
        kiln__free(m);
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    return rc;
}

static void conn_release(kiln__broker *b, kiln__delivery *d)
{
    (void)b;
    kiln__free(d->impl);
    memset(d, 0, sizeof(*d));
}

static void conn_destroy(kiln__broker *b)
{
    conn_close(b);
    kiln__free(((struct conn *)b)->pend);
    kiln__free(b);
}

/* basic.cancel: no more deliveries; those already handed out stay
 * unacked until acked, nacked or the connection closes, as on RabbitMQ. */
static kiln_err conn_cancel(kiln__broker *b, kiln_error *err)
{
    struct conn *c = (struct conn *)b;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    c->subscribed = false;
    return KILN_OK;
}

/* The publisher's idle check, and how it tells a lost connection. */
static kiln_err conn_tick(kiln__broker *b, kiln_error *err)
{
    const struct conn *c = (const struct conn *)b;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    if (c->broken)
        return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
    return KILN_OK;
}

static bool conn_publish_lost(kiln__broker *b, size_t i)
{
    return i >= ((const struct conn *)b)->lost_from;
}

static const kiln__broker_ops conn_ops = {
    .connect = conn_connect,
    .close = conn_close,
    .declare = conn_declare,
    .publish = conn_publish,
    .subscribe = conn_subscribe,
    .consume = conn_consume,
    .ack = conn_ack,
    .nack = conn_nack,
    .release = conn_release,
    .destroy = conn_destroy,
    .cancel = conn_cancel,
    .tick = conn_tick,
    .publish_lost = conn_publish_lost,
    .publish_async = conn_publish_async,
    .wait_settled = conn_wait_settled,
};

kiln__broker *kiln__mock_broker_new(kiln__mock_server *srv, kiln_error *err)
{
    struct conn *c;

    if (srv == NULL) {
        kiln__fail(err, KILN_EINVAL, "mock broker: no server");
        return NULL;
    }
    if ((c = kiln__calloc(1, sizeof(*c))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "mock broker: connection");
        return NULL;
    }
    c->base.ops = &conn_ops;
    c->srv = srv;
    return &c->base;
}
