/* The publisher behind kiln_pool_send_task(s): confirmed publishing from
 * any thread over a few connections, each owned by its own thread because
 * a rabbitmq-c connection is not thread-safe.
 *
 * A caller puts one request (its messages, borrowed, and a deadline of
 * publish_timeout_ms) on the queue of its thread's home connection and
 * sleeps on its own condition variable (an asynchronous request leaves a
 * callback instead). The owner writes the messages of every request
 * queued as soon as it sees them, while the confirms of earlier ones are
 * still on their way, up to a window of KILN__PUB_WINDOW unsettled
 * messages (the broker's pipelined op, broker.h publish_async), and reads
 * the broker's confirms, nacks and returns as they come (wait_settled).
 * A request is done when each of its messages is final. So concurrent
 * callers never wait for each other's round trips, and their confirms
 * come back together, often as one `multiple` ack: group commit (DESIGN
 * "Where the time goes").
 *
 * Delivery is at least once. A message that a lost connection left
 * unsettled is sent again on a new connection while its request's deadline
 * holds (a duplicate is possible, a loss is not); a message the broker
 * nacked or returned is a final KILN_EBROKER. At the deadline, a message
 * that was written and is still unsettled is KILN_ETIMEDOUT (the broker
 * may have it); one never written (no connection could be opened, or the
 * connection was busy with earlier messages) is KILN_EBROKER, "not sent",
 * with the last connection error: the broker cannot have it. A caller
 * waits at most its deadline plus the rest of a batch or connection
 * attempt already in progress, which the broker's own publish and connect
 * timeouts bound.
 *
 * Threads, and the lock rule: see workerpool/publisher.h. */
#include "workerpool/publisher.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---- settling messages --------------------------------------------------- */

void kiln__pub_finish(kiln__pub_req *r, size_t i, kiln_err s, const char *why)
{
    const kiln__message *m = &r->msgs[i];

    r->status[i] = s;
    r->pending--;
    if (s == KILN_OK || i >= r->bad)
        return;
    r->bad = i;
    if (why != NULL)
        kiln__fail(&r->err, s, "%s", why);
    else
        kiln__fail(&r->err, s, "to '%s' key '%s': %s",
                   m->exchange != NULL ? m->exchange : "", m->routing_key,
                   s == KILN_EBROKER ? "nacked or returned unroutable"
                                     : kiln_strerror(s));
}

/* Ends every message of `r` still pending with `code`. */
void kiln__pub_finish_rest(kiln__pub_req *r, kiln_err code, const char *why)
{
    for (size_t i = r->low; i < r->n && r->pending > 0; i++)
        if (kiln__pub_unsettled(r->status[i]))
            kiln__pub_finish(r, i, code, why);
}

/* Memory short: the old scratch stays, and batches are only smaller. */
size_t kiln__pub_scratch(kiln__pub_conn *c, size_t want)
{
    size_t ncap = c->bcap > 0 ? c->bcap : KILN__PUB_SCRATCH_MIN,
           each = sizeof(*c->bmsgs) + sizeof(*c->bslot) + sizeof(*c->bseq) +
                  sizeof(*c->bst);
    void *block;

    want = want < KILN__PUB_BATCH_CAP ? want : KILN__PUB_BATCH_CAP;
    while (ncap < want)
        ncap *= 2;
    if (ncap == c->bcap || (block = kiln__malloc(ncap * each)) == NULL)
        return c->bcap;
    kiln__free(c->bmsgs);
    c->bmsgs = block;
    /* Alignments decrease along the block. */
    c->bslot = (kiln__pub_slot *)(void *)(c->bmsgs + ncap);
    c->bseq = (uint64_t *)(void *)(c->bslot + ncap);
    c->bst = (kiln_err *)(void *)(c->bseq + ncap);
    c->bcap = ncap;
    return ncap;
}

/* ---- life cycle ---------------------------------------------------------- */

static kiln_err conn_init(kiln__publisher *p, kiln__pub_conn *c, unsigned id,
                          kiln__broker_factory factory, void *ctx,
                          kiln_error *err)
{
    kiln_error e;
    int rc;

    c->pub = p;
    c->id = id;
    c->wake_fd = -1;
    atomic_init(&c->load, 0);
    if ((rc = pthread_mutex_init(&c->mu, NULL)) == 0 &&
        (rc = pthread_cond_init(&c->idle_cv, NULL)) != 0)
        pthread_mutex_destroy(&c->mu);
    if (rc != 0)
        return kiln__fail(err, KILN_ENOMEM, "publisher: mutex or condvar");
    c->sync_ok = true;
    if ((c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        return kiln__fail(err, KILN_ENOMEM, "publisher: eventfd: %d", errno);
    e.code = KILN_OK;
    if ((c->b = factory(ctx, &p->cfg, &e)) == NULL) {
        if (e.code == KILN_OK)
            kiln__fail(&e, KILN_ENOMEM, "broker factory failed");
        return kiln__fail(err, e.code, "publisher connection %u: %s", id,
                          e.message);
    }
    if (!kiln__broker_pipelines(c->b))
        return kiln__fail(err, KILN_EINVAL,
                          "publisher connection %u: the broker has no "
                          "pipelined publishing",
                          id);
    if (kiln__pub_scratch(c, KILN__PUB_SCRATCH_MIN) == 0)
        return kiln__fail(err, KILN_ENOMEM, "publisher: batch of %d",
                          KILN__PUB_SCRATCH_MIN);
    if (pthread_create(&c->thread, NULL, kiln__pub_owner_main, c) != 0)
        return kiln__fail(err, KILN_ENOMEM, "publisher: thread %u", id);
    c->started = true;
    return KILN_OK;
}

kiln__publisher *kiln__publisher_new(const kiln_config *cfg,
                                     kiln__broker_factory factory, void *ctx,
                                     unsigned n_conns, const char *name,
                                     kiln_error *err)
{
    kiln__publisher *p;

    if (cfg == NULL || factory == NULL || n_conns == 0 || n_conns > 64) {
        kiln__fail(err, KILN_EINVAL,
                   "publisher: cfg, factory and 1..64 connections required");
        return NULL;
    }
    if ((p = kiln__calloc(1, sizeof(*p))) == NULL ||
        (p->conns = kiln__calloc(n_conns, sizeof(*p->conns))) == NULL) {
        kiln__free(p);
        kiln__fail(err, KILN_ENOMEM, "publisher");
        return NULL;
    }
    p->cfg = *cfg;
    kiln__strlcpy(p->name, name != NULL ? name : "kiln", sizeof(p->name));
    p->n_conns = n_conns;
    /* Half the heartbeat, so one tick always falls within it. */
    p->tick_ns =
        (cfg->heartbeat_s > 0 ? (int64_t)cfg->heartbeat_s * 500 : 1000) *
        1000000;
    for (unsigned i = 0; i < n_conns; i++) {
        if (conn_init(p, &p->conns[i], i, factory, ctx, err) != KILN_OK) {
            kiln__publisher_free(p);
            return NULL;
        }
    }
    kiln__ok(err);
    return p;
}

void kiln__publisher_free(kiln__publisher *p)
{
    if (p == NULL)
        return;
    for (unsigned i = 0; i < p->n_conns; i++) {
        kiln__pub_conn *c = &p->conns[i];
        if (!c->sync_ok)
            continue;
        pthread_mutex_lock(&c->mu);
        c->stopping = true;
        bool kick = kiln__pub_wake_locked(c);
        pthread_mutex_unlock(&c->mu);
        if (kick)
            kiln__pub_kick(c);
    }
    for (unsigned i = 0; i < p->n_conns; i++) {
        kiln__pub_conn *c = &p->conns[i];
        if (c->started)
            pthread_join(c->thread, NULL);
        if (!c->sync_ok)
            continue;
        /* Callers woken with their result may still be on their way out. */
        pthread_mutex_lock(&c->mu);
        while (c->users > 0)
            pthread_cond_wait(&c->idle_cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
        pthread_cond_destroy(&c->idle_cv);
        pthread_mutex_destroy(&c->mu);
    }
    for (unsigned i = 0; i < p->n_conns; i++) {
        kiln__broker_destroy(p->conns[i].b);
        kiln__free(p->conns[i].bmsgs);
        kiln__free(p->conns[i].ring);
        if (p->conns[i].wake_fd >= 0)
            (void)close(p->conns[i].wake_fd);
    }
    kiln__free(p->conns);
    kiln__free(p);
}

/* ---- callers ------------------------------------------------------------- */

/* Each calling thread has a home connection. Group commit needs its
 * callers together: spread over the connections by load, the callers a
 * batch wakes go different ways and no batch gathers them all again.
 * Sticky homes keep one set of callers per connection. A thread moves
 * only when its home is far busier than another (a huge send there). */
static _Thread_local bool homed;
static _Thread_local unsigned home;

static kiln__pub_conn *pick(kiln__publisher *p)
{
    kiln__pub_conn *mine, *least;
    size_t load, low;

    if (!homed) {
        home = atomic_fetch_add_explicit(&p->rr, 1, memory_order_relaxed);
        homed = true;
    }
    mine = least = &p->conns[home % p->n_conns];
    load = low = atomic_load_explicit(&mine->load, memory_order_relaxed);
    for (unsigned k = 1; k < p->n_conns && load > KILN__PUB_SPILL; k++) {
        kiln__pub_conn *c = &p->conns[(home + k) % p->n_conns];
        size_t l = atomic_load_explicit(&c->load, memory_order_relaxed);
        if (l < low) {
            least = c;
            low = l;
        }
    }
    return load > KILN__PUB_SPILL && load / 2 > low ? least : mine;
}

bool kiln__pub_wake_locked(kiln__pub_conn *c)
{
    bool kick = c->sleeping;

    c->sleeping = false;
    return kick;
}

void kiln__pub_kick(kiln__pub_conn *c)
{
    uint64_t one = 1;

    /* Fails only on a full counter, which wakes the owner all the same. */
    if (write(c->wake_fd, &one, sizeof(one)) < 0)
        return;
}

/* Puts `r` on the queue of `c`. c->mu held, not stopping. Returns
 * kiln__pub_wake_locked's verdict. */
static bool enqueue(kiln__pub_conn *c, kiln__pub_req *r)
{
    if (c->q_tail != NULL)
        c->q_tail->next = r;
    else
        c->q_head = r;
    c->q_tail = r;
    c->q_len++;
    atomic_fetch_add(&c->load, r->n);
    return kiln__pub_wake_locked(c);
}

/* Queues `r` on `c` and waits until the owner is done with it. */
static bool wait_done(kiln__pub_conn *c, kiln__pub_req *r)
{
    bool kick;

    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        return false;
    }
    c->users++;
    kick = enqueue(c, r);
    if (kick) { /* not under the lock the owner is about to take */
        pthread_mutex_unlock(&c->mu);
        kiln__pub_kick(c);
        pthread_mutex_lock(&c->mu);
    }
    while (!r->done)
        pthread_cond_wait(&r->cv, &c->mu);
    if (--c->users == 0 && c->stopping)
        pthread_cond_signal(&c->idle_cv);
    pthread_mutex_unlock(&c->mu);
    return true;
}

static kiln_err result(const kiln__pub_req *r, kiln_error *err)
{
    if (r->bad == r->n) {
        kiln__ok(err);
        return KILN_OK;
    }
    return kiln__fail(err, r->status[r->bad], "message %zu of %zu: %s", r->bad,
                      r->n, r->err.message);
}

kiln_err kiln__publisher_submit(kiln__publisher *p, kiln__pub_req *r,
                                const kiln__message *msgs, size_t n,
                                kiln_err *status, kiln__pub_notify notify,
                                void *ctx)
{
    unsigned conn = UINT_MAX;

    return kiln__publisher_submit_to(p, &conn, r, msgs, n, status, notify, ctx);
}

kiln_err kiln__publisher_submit_to(kiln__publisher *p, unsigned *conn,
                                   kiln__pub_req *r, const kiln__message *msgs,
                                   size_t n, kiln_err *status,
                                   kiln__pub_notify notify, void *ctx)
{
    kiln__pub_conn *c;
    bool kick;

    if (p == NULL || conn == NULL || r == NULL || msgs == NULL ||
        status == NULL || n == 0 || notify == NULL)
        return KILN_EINVAL;
    *r = (kiln__pub_req){.msgs = msgs,
                         .n = n,
                         .status = status,
                         .pending = n,
                         .bad = n,
                         .notify = notify,
                         .notify_ctx = ctx};
    for (size_t i = 0; i < n; i++)
        status[i] = KILN__PUB_PENDING;
    r->deadline_ns =
        kiln__monotonic_ns() + (int64_t)p->cfg.publish_timeout_ms * 1000000;
    if (*conn >= p->n_conns)
        *conn = (unsigned)(pick(p) - p->conns);
    c = &p->conns[*conn];
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        return KILN_ECLOSED;
    }
    kick = enqueue(c, r);
    pthread_mutex_unlock(&c->mu);
    if (kick)
        kiln__pub_kick(c);
    return KILN_OK;
}

kiln_err kiln__publisher_send(kiln__publisher *p, const kiln__message *msgs,
                              size_t n, kiln_err *status, kiln_error *err)
{
    kiln__pub_req r = {
        .msgs = msgs, .n = n, .status = status, .pending = n, .bad = n};
    kiln_err one, rc;

    if (p == NULL || (msgs == NULL && n > 0) || n > SIZE_MAX / sizeof(one))
        return kiln__fail(err, KILN_EINVAL,
                          "publish: publisher and msgs required");
    if (n == 0) {
        kiln__ok(err);
        return KILN_OK;
    }
    if (r.status == NULL)
        r.status = n == 1 ? &one : kiln__malloc(n * sizeof(*r.status));
    if (r.status == NULL)
        return kiln__fail(err, KILN_ENOMEM, "publish: %zu statuses", n);
    for (size_t i = 0; i < n; i++)
        r.status[i] = KILN__PUB_PENDING;
    r.deadline_ns =
        kiln__monotonic_ns() + (int64_t)p->cfg.publish_timeout_ms * 1000000;
    if (pthread_cond_init(&r.cv, NULL) != 0) {
        kiln__pub_finish_rest(&r, KILN_ENOMEM, "publish: condition variable");
    } else {
        if (!wait_done(pick(p), &r))
            kiln__pub_finish_rest(&r, KILN_ECLOSED, "the publisher is closing");
        pthread_cond_destroy(&r.cv);
    }
    rc = result(&r, err);
    if (r.status != status && r.status != &one)
        kiln__free(r.status);
    return rc;
}
