/* The owner thread of one publishing connection: takes every request
 * queued, publishes their messages as one batch, settles them, reconnects
 * after a loss, and keeps an idle connection alive. */
#include "workerpool/publisher.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"

#include <stdio.h>
#include <time.h>

#define MODULE      "publisher"
#define BATCH_SHARE 256     /* per request in the first pass: no starving */
#define LINGER_NS   1000000 /* at most, after a batch: see linger() */

/* ---- requests (c->mu held) ----------------------------------------------- */

static void take_queued(kiln__pub_conn *c)
{
    if (c->q_head == NULL)
        return;
    if (c->act_tail != NULL)
        c->act_tail->next = c->q_head;
    else
        c->act_head = c->q_head;
    c->act_tail = c->q_tail;
    c->q_head = c->q_tail = NULL;
    c->q_len = 0;
}

/* Hands finished requests back to their callers. A request may vanish as
 * soon as c->mu is released after its `done` is set. */
static void complete(kiln__pub_conn *c)
{
    kiln__pub_req **pp = &c->act_head, *r;

    c->act_tail = NULL;
    c->woken = 0;
    while ((r = *pp) != NULL) {
        if (r->pending > 0) {
            c->act_tail = r;
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        atomic_fetch_sub(&c->load, r->n);
        if (r->notify != NULL) {
            /* Not a caller who sends again at once: linger() waits for
             * no one on its behalf. */
            r->notify(r, r->notify_ctx); /* r may be reused from here */
            continue;
        }
        c->woken++;
        r->done = true;
        pthread_cond_signal(&r->cv);
    }
}

/* Fails what is unsettled at its deadline: KILN_ETIMEDOUT for a message
 * that was written (the broker may have it), KILN_EBROKER for one that
 * never was (it cannot), with the reason a caller can act on. */
static void expire(kiln__pub_conn *c, int64_t now)
{
    char lost[sizeof(c->last.message) + 96];
    char unsent[sizeof(c->last.message) + 96];
    unsigned ms = c->pub->cfg.publish_timeout_ms;

    if (c->last.code != KILN_OK) {
        (void)snprintf(lost, sizeof(lost),
                       "no confirm within %u ms (KILN_PUBLISH_TIMEOUT_MS): %s",
                       ms, c->last.message);
        (void)snprintf(unsent, sizeof(unsent),
                       "not sent within %u ms (KILN_PUBLISH_TIMEOUT_MS): %s",
                       ms, c->last.message);
    } else {
        (void)snprintf(lost, sizeof(lost),
                       "no confirm within %u ms (KILN_PUBLISH_TIMEOUT_MS)", ms);
        (void)snprintf(unsent, sizeof(unsent),
                       "not sent within %u ms (KILN_PUBLISH_TIMEOUT_MS): the "
                       "connection was still waiting for the broker to "
                       "confirm earlier messages",
                       ms);
    }
    for (kiln__pub_req *r = c->act_head; r != NULL; r = r->next) {
        if (r->pending == 0 || now < r->deadline_ns)
            continue;
        for (size_t i = r->low; i < r->n && r->pending > 0; i++) {
            if (r->status[i] == KILN__PUB_LOST)
                kiln__pub_finish(r, i, KILN_ETIMEDOUT, lost);
            else if (r->status[i] == KILN__PUB_PENDING)
                kiln__pub_finish(r, i, KILN_EBROKER, unsent);
        }
    }
}

/* ---- the connection (owner) ---------------------------------------------- */

/* `e` (may be NULL) says why `what` failed. */
static void connection_failed(kiln__pub_conn *c, const kiln_error *e,
                              const char *what)
{
    int64_t now = kiln__monotonic_ns();
    uint64_t wait = kiln__backoff_ms(c->attempt, KILN__RECONNECT_BASE_MS,
                                     KILN__RECONNECT_CAP_MS);

    kiln__broker_close(c->b);
    c->connected = false;
    if (e != NULL)
        kiln__fail(&c->last, KILN_EBROKER, "%s: %s", what, e->message);
    else
        kiln__fail(&c->last, KILN_EBROKER, "%s", what);
    /* Every failure of a long outage would flood the log: the first ones,
     * then one per doubling. */
    if ((c->attempt & (c->attempt - 1)) == 0)
        kiln__log(KILN_LOG_WARN, MODULE,
                  "%s/%u: %s; retrying in %llu ms (attempt %u)", c->pub->name,
                  c->id, c->last.message, (unsigned long long)wait,
                  c->attempt + 1);
    c->retry_at_ns = now + (int64_t)wait * 1000000;
    if (c->attempt < 64)
        c->attempt++;
}

/* Connects and declares the topology: a producer declares it too, as
 * machinery and paota do, so the first task is routable before any worker
 * ever ran. */
static bool open_conn(kiln__pub_conn *c)
{
    kiln__broker *b = c->b;
    kiln_error e;

    if (kiln__broker_connect(b, &e) != KILN_OK ||
        kiln__broker_declare(b, &c->pub->cfg, &e) != KILN_OK) {
        connection_failed(c, &e, "connect");
        return false;
    }
    if (c->attempt > 0)
        kiln__log(KILN_LOG_NOTICE, MODULE, "%s/%u: connected again",
                  c->pub->name, c->id);
    c->connected = true;
    c->io_ns = kiln__monotonic_ns();
    return true;
}

/* Without publish_lost: did the connection survive the last publish? */
static bool probe_lost(kiln__pub_conn *c)
{
    kiln_error e;
    kiln_err rc = kiln__broker_probe(c->b, &c->pub->cfg, &e);

    return rc == KILN_EBROKER || rc == KILN_ECLOSED;
}

/* Idle: heartbeats go out and a dead connection is noticed before the
 * next send needs it. */
static void tick(kiln__pub_conn *c, int64_t now)
{
    kiln_error e;
    kiln_err rc;

    c->io_ns = now;
    rc = kiln__broker_tick(c->b, &e);
    if (rc != KILN_EBROKER && rc != KILN_ECLOSED)
        return;
    kiln__log(KILN_LOG_INFO, MODULE,
              "%s/%u: idle connection lost: %s; reconnecting on the next send",
              c->pub->name, c->id, e.message);
    kiln__broker_close(c->b);
    c->connected = false;
    c->retry_at_ns = now;
}

/* ---- one batch (owner) --------------------------------------------------- */

static size_t take(kiln__pub_conn *c, kiln__pub_req *r, size_t m, size_t limit)
{
    for (; r->scan < r->n && m < limit; r->scan++) {
        if (!kiln__pub_unsettled(r->status[r->scan]))
            continue;
        c->bmsgs[m] = r->msgs[r->scan];
        c->bslot[m].r = r;
        c->bslot[m++].i = r->scan;
    }
    return m;
}

/* Every pending message of every active request, up to the cap. The first
 * pass takes a share of each, so one huge send cannot hold back a small
 * one queued behind it. */
static size_t assemble(kiln__pub_conn *c)
{
    size_t m = 0, want = 0, cap;

    for (kiln__pub_req *r = c->act_head; r != NULL; r = r->next) {
        while (r->low < r->n && !kiln__pub_unsettled(r->status[r->low]))
            r->low++;
        r->scan = r->low;
        want += r->pending;
    }
    cap = kiln__pub_scratch(c, want);
    for (kiln__pub_req *r = c->act_head; r != NULL && m < cap; r = r->next)
        m = take(c, r, m, m + BATCH_SHARE < cap ? m + BATCH_SHARE : cap);
    for (kiln__pub_req *r = c->act_head; r != NULL && m < cap; r = r->next)
        m = take(c, r, m, cap);
    return m;
}

/* Applies the statuses of a publish of `m` messages that returned `rc`
 * (`e` describes its first failure). */
static void settle(kiln__pub_conn *c, size_t m, kiln_err rc,
                   const kiln_error *e)
{
    bool knows_lost = kiln__broker_knows_lost(c->b);
    bool probed = false, lost = false, first_lost = false;
    size_t first = m;

    for (size_t j = 0; rc != KILN_OK && j < m && first == m; j++)
        first = c->bst[j] != KILN_OK ? j : m;
    if (first < m && !knows_lost)
        probed = probe_lost(c);
    for (size_t j = 0; j < m; j++) {
        kiln_err s = rc == KILN_OK ? KILN_OK : c->bst[j];
        if (s == KILN__PUB_PENDING) /* not a publish outcome */
            s = KILN_EBROKER;
        if (s == KILN_EBROKER &&
            (knows_lost ? kiln__broker_publish_lost(c->b, j) : probed)) {
            first_lost |= j == first;
            lost = true;
            /* Still pending, sent again after reconnecting; the broker
             * may have it already. */
            c->bslot[j].r->status[c->bslot[j].i] = KILN__PUB_LOST;
            continue;
        }
        /* A message nacked or returned unroutable: the queue or an
         * exchange it needs may have been deleted; the topology is
         * declared again before the next batch, so a copy sent again
         * finds it. */
        c->redeclare |= s == KILN_EBROKER;
        kiln__pub_finish(c->bslot[j].r, c->bslot[j].i, s,
                         j == first ? e->message : NULL);
    }
    if (lost) {
        connection_failed(c, first_lost ? e : NULL, "connection lost");
    } else {
        c->attempt = 0;
        c->last.code = KILN_OK;
    }
}

static void run_batch(kiln__pub_conn *c)
{
    kiln_error e;
    kiln_err rc;
    int64_t t0;
    size_t m;

    if (!c->connected && !open_conn(c))
        return;
    if (c->redeclare) {
        c->redeclare = false;
        if (kiln__broker_declare(c->b, &c->pub->cfg, &e) != KILN_OK) {
            connection_failed(c, &e, "declare");
            return;
        }
    }
    if ((m = assemble(c)) == 0)
        return;
    for (size_t j = 0; j < m; j++)
        c->bst[j] = KILN_ETIMEDOUT; /* what a message nobody settled is */
    t0 = kiln__monotonic_ns();
    rc = kiln__broker_publish(c->b, c->bmsgs, m, c->bst, &e);
    c->io_ns = kiln__monotonic_ns();
    c->linger_until =
        c->io_ns +
        ((c->io_ns - t0) / 2 < LINGER_NS ? (c->io_ns - t0) / 2 : LINGER_NS);
    settle(c, m, rc, &e);
}

/* ---- the owner thread ---------------------------------------------------- */

static bool runnable(const kiln__pub_conn *c, int64_t now)
{
    return c->act_head != NULL && (c->connected || now >= c->retry_at_ns);
}

/* Expires what is late, then publishes one batch or, when idle, ticks. */
static void step(kiln__pub_conn *c)
{
    int64_t now = kiln__monotonic_ns();

    expire(c, now);
    if (runnable(c, now))
        run_batch(c);
    else if (c->connected && now - c->io_ns >= c->pub->tick_ns)
        tick(c, now);
}

static void wait_until(kiln__pub_conn *c, int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};

    (void)pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

/* Callers that send again as soon as their send returns would otherwise
 * split into two cohorts riding alternate batches: the batch that wakes
 * one cohort takes only the other, queued meanwhile. So right after a
 * batch woke k callers while j more queued, wait a moment (at most
 * LINGER_NS, and half that batch's time) until k + j requests are queued:
 * then they all share one round trip. c->mu held. */
static void linger(kiln__pub_conn *c)
{
    size_t want = c->woken + c->q_len;

    while (c->act_head == NULL && !c->stopping && c->q_len < want &&
           kiln__monotonic_ns() < c->linger_until)
        wait_until(c, c->linger_until);
    c->woken = 0;
}

/* Sleeps until work arrives, the next tick or reconnect is due, or the
 * earliest deadline passes. c->mu held. */
static void idle_wait(kiln__pub_conn *c)
{
    int64_t wake =
        (c->connected ? c->io_ns : kiln__monotonic_ns()) + c->pub->tick_ns;

    if (c->act_head != NULL && c->retry_at_ns < wake)
        wake = c->retry_at_ns;
    for (const kiln__pub_req *r = c->act_head; r != NULL; r = r->next)
        wake = r->deadline_ns < wake ? r->deadline_ns : wake;
    wait_until(c, wake);
}

void *kiln__pub_owner_main(void *arg)
{
    kiln__pub_conn *c = arg;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        take_queued(c);
        if (c->stopping)
            break;
        pthread_mutex_unlock(&c->mu);
        step(c);
        pthread_mutex_lock(&c->mu);
        complete(c);
        linger(c);
        if (c->q_head == NULL && !c->stopping &&
            !runnable(c, kiln__monotonic_ns()))
            idle_wait(c);
    }
    /* The batch in progress has ended; what is left never will. */
    for (kiln__pub_req *r = c->act_head; r != NULL; r = r->next)
        kiln__pub_finish_rest(r, KILN_ECLOSED, "the publisher is closing");
    complete(c);
    pthread_mutex_unlock(&c->mu);
    if (c->connected)
        kiln__broker_close(c->b);
    c->connected = false;
    return NULL;
}
