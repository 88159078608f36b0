/* The owner thread of one publishing connection. It loops: take what
 * callers queued, give up on what passed its deadline, write what is
 * unsent while the window has room, hand finished requests back, and
 * wait: for the broker's outcomes while messages are in flight (the
 * broker's wait_settled, which a caller's wake-up interrupts), else for
 * a caller, a deadline, the next reconnect or the idle tick. After a loss
 * it reconnects and writes again what the lost connection left unsettled.
 *
 * In flight: the ring maps each sequence number written on the current
 * channel to its request and index until the broker settles it, so no
 * outcome is applied twice, and one for a message whose request gave up
 * (its deadline passed) is dropped. */
#include "workerpool/publisher.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

#define MODULE      "publisher"
#define BATCH_SHARE 256 /* per request in the first pass: no starving */
#define RING_MIN    64

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
    while ((r = *pp) != NULL) {
        if (r->pending > 0) {
            c->act_tail = r;
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        atomic_fetch_sub(&c->load, r->n);
        if (r->notify != NULL) {
            r->notify(r, r->notify_ctx); /* r may be reused from here */
            continue;
        }
        r->done = true;
        pthread_cond_signal(&r->cv);
    }
}

/* ---- in flight (owner) --------------------------------------------------- */

static kiln__pub_slot *slot(const kiln__pub_conn *c, uint64_t seq)
{
    return &c->ring[seq & (c->ring_cap - 1)];
}

/* Room in the ring for `want` more in flight (up to the window); false
 * when memory is short, and the window is only smaller. */
static bool ring_room(kiln__pub_conn *c, size_t want)
{
    size_t need = (size_t)(c->next - c->low) + want, cap = c->ring_cap;
    kiln__pub_slot *n;

    if (need <= cap)
        return true;
    while (cap < need)
        cap = cap > 0 ? cap * 2 : RING_MIN;
    if ((n = kiln__calloc(cap, sizeof(*n))) == NULL)
        return false;
    for (uint64_t s = c->low; s < c->next; s++)
        n[s & (cap - 1)] = *slot(c, s);
    kiln__free(c->ring);
    c->ring = n;
    c->ring_cap = cap;
    return true;
}

/* Moves low past slots nobody waits for: the window counts from the
 * oldest message a caller still waits on. */
static void advance(kiln__pub_conn *c)
{
    while (c->low < c->next && slot(c, c->low)->r == NULL)
        c->low++;
    if (c->low == c->next)
        c->low = c->next = 0;
}

/* The window's room: messages that may be written now. */
static size_t room(const kiln__pub_conn *c)
{
    size_t span = (size_t)(c->next - c->low);

    return span < KILN__PUB_WINDOW ? KILN__PUB_WINDOW - span : 0;
}

/* The broker's word on message i of r. */
static void broker_final(kiln__pub_req *r, size_t i, kiln_err s,
                         const char *why)
{
    const kiln__message *m = &r->msgs[i];
    char text[KILN_NAME_MAX * 2 + 96];

    if (s == KILN_OK || i >= r->bad) {
        kiln__pub_finish(r, i, s, NULL);
        return;
    }
    (void)snprintf(text, sizeof(text), "to '%.255s' key '%.255s': %s",
                   m->exchange != NULL ? m->exchange : "", m->routing_key,
                   why != NULL && why[0] != '\0' ? why : "nacked");
    kiln__pub_finish(r, i, s, text);
}

/* wait_settled's callback: the broker settled seqs first..last. */
static void on_settled(void *ctx, uint64_t first, uint64_t last,
                       kiln_err status, const char *why)
{
    kiln__pub_conn *c = ctx;

    if (c->low == c->next || last < c->low || first >= c->next)
        return; /* given up, or of a connection already forgotten */
    first = first > c->low ? first : c->low;
    last = last < c->next ? last : c->next - 1;
    for (uint64_t s = first; s <= last; s++) {
        kiln__pub_slot *sl = slot(c, s);
        kiln__pub_req *r = sl->r;
        if (r == NULL)
            continue;
        sl->r = NULL;
        c->inflight--;
        /* A message nacked or returned unroutable: the queue or an
         * exchange it needs may have been deleted; the topology is
         * declared again before more is written, so a copy sent again
         * finds it. */
        c->redeclare |= status != KILN_OK;
        broker_final(r, sl->i, status, why);
    }
    advance(c);
}

/* The connection went away: what was in flight may or may not have
 * reached the broker, and is sent again on the next connection. */
static void lose_inflight(kiln__pub_conn *c)
{
    for (uint64_t s = c->low; s < c->next; s++) {
        kiln__pub_slot *sl = slot(c, s);
        if (sl->r != NULL)
            sl->r->status[sl->i] = KILN__PUB_LOST;
        sl->r = NULL;
    }
    c->low = c->next = 0;
    c->inflight = 0;
}

/* Gives up waiting for the broker's word on what `r` has in flight. */
static void abandon(kiln__pub_conn *c, const kiln__pub_req *r)
{
    for (uint64_t s = c->low; s < c->next && c->inflight > 0; s++) {
        kiln__pub_slot *sl = slot(c, s);
        if (sl->r == r) {
            sl->r = NULL;
            c->inflight--;
        }
    }
    advance(c);
}

/* ---- deadlines (owner) --------------------------------------------------- */

/* Why a message was never written, for a caller who can act on it. */
static void unsent_reason(const kiln__pub_conn *c, char *buf, size_t n)
{
    unsigned ms = c->pub->cfg.publish_timeout_ms;

    if (c->last.code != KILN_OK)
        (void)snprintf(buf, n,
                       "not sent within %u ms (KILN_PUBLISH_TIMEOUT_MS): %s",
                       ms, c->last.message);
    else if (c->blocked)
        (void)snprintf(buf, n,
                       "not sent within %u ms (KILN_PUBLISH_TIMEOUT_MS): the "
                       "broker blocks publishing (a memory or disk alarm)",
                       ms);
    else
        (void)snprintf(buf, n,
                       "not sent within %u ms (KILN_PUBLISH_TIMEOUT_MS): the "
                       "connection was busy with earlier messages (%d "
                       "unconfirmed at most)",
                       ms, KILN__PUB_WINDOW);
}

/* Fails what is unsettled at its deadline: KILN_ETIMEDOUT for a message
 * that was written (the broker may have it), KILN_EBROKER for one that
 * never was (it cannot), with the reason a caller can act on. */
static void expire(kiln__pub_conn *c, int64_t now)
{
    char lost[sizeof(c->last.message) + 96];
    char unsent[sizeof(c->last.message) + 128];
    bool texts = false;

    for (kiln__pub_req *r = c->act_head; r != NULL; r = r->next) {
        if (r->pending == 0 || now < r->deadline_ns)
            continue;
        if (!texts) {
            texts = true;
            (void)snprintf(lost, sizeof(lost),
                           "no confirm within %u ms (KILN_PUBLISH_TIMEOUT_MS)"
                           "%s%s",
                           c->pub->cfg.publish_timeout_ms,
                           c->last.code != KILN_OK ? ": " : "",
                           c->last.code != KILN_OK ? c->last.message : "");
            unsent_reason(c, unsent, sizeof(unsent));
        }
        abandon(c, r);
        for (size_t i = r->low; i < r->n && r->pending > 0; i++) {
            kiln_err s = r->status[i];
            if (s == KILN__PUB_LOST || s == KILN__PUB_INFLIGHT)
                kiln__pub_finish(r, i, KILN_ETIMEDOUT, lost);
            else if (s == KILN__PUB_PENDING)
                kiln__pub_finish(r, i, KILN_EBROKER, unsent);
        }
    }
}

/* Closing: what was never written (or must be written again) will not
 * be; what is in flight still gets the broker's word. */
static void refuse_unsent(kiln__pub_conn *c)
{
    for (kiln__pub_req *r = c->act_head; r != NULL; r = r->next)
        kiln__pub_finish_rest(r, KILN_ECLOSED, "the publisher is closing");
}

/* ---- the connection (owner) ---------------------------------------------- */

/* `e` (may be NULL) says why `what` failed. Outcomes the broker sent
 * before the failure still count; the rest in flight is lost. */
static void connection_failed(kiln__pub_conn *c, const kiln_error *e,
                              const char *what)
{
    int64_t now = kiln__monotonic_ns();
    uint64_t wait = kiln__backoff_ms(c->attempt, KILN__RECONNECT_BASE_MS,
                                     KILN__RECONNECT_CAP_MS);
    kiln_error ignored;

    if (c->inflight > 0)
        (void)kiln__broker_wait_settled(c->b, now, -1, on_settled, c, &ignored);
    lose_inflight(c);
    kiln__broker_close(c->b);
    c->connected = false;
    c->blocked = false;
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
    c->redeclare = false;
    c->io_ns = kiln__monotonic_ns();
    return true;
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
    c->blocked = false;
    c->retry_at_ns = now;
}

/* ---- writing (owner) ----------------------------------------------------- */

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

/* Unsent messages of the active requests, up to `cap`. The first pass
 * takes a share of each, so one huge send cannot hold back a small one
 * queued behind it. */
static size_t assemble(kiln__pub_conn *c, size_t cap)
{
    size_t m = 0, want = 0;

    for (kiln__pub_req *r = c->act_head; r != NULL; r = r->next) {
        while (r->low < r->n && !kiln__pub_unsettled(r->status[r->low]) &&
               r->status[r->low] != KILN__PUB_INFLIGHT)
            r->low++;
        r->scan = r->low;
        want += r->pending;
    }
    want = want < cap ? want : cap;
    if (want == 0 || !ring_room(c, want))
        return 0;
    if ((cap = kiln__pub_scratch(c, want)) > want)
        cap = want;
    for (kiln__pub_req *r = c->act_head; r != NULL && m < cap; r = r->next)
        m = take(c, r, m, m + BATCH_SHARE < cap ? m + BATCH_SHARE : cap);
    for (kiln__pub_req *r = c->act_head; r != NULL && m < cap; r = r->next)
        m = take(c, r, m, cap);
    return m;
}

/* Records what one publish_async call consumed of the batch; `why` says
 * why it refused the first message it refused. */
static void record(kiln__pub_conn *c, size_t done, const char *why)
{
    for (size_t j = 0; j < done; j++) {
        kiln__pub_req *r = c->bslot[j].r;
        size_t i = c->bslot[j].i;
        uint64_t s = c->bseq[j];
        if (s == 0) { /* refused before it was written */
            broker_final(r, i, c->bst[j], why);
            why = NULL;
            continue;
        }
        if (c->low == c->next)
            c->low = s;
        c->next = s + 1;
        *slot(c, s) = c->bslot[j];
        r->status[i] = KILN__PUB_INFLIGHT;
        c->inflight++;
    }
}

static bool has_unsent(const kiln__pub_conn *c)
{
    for (const kiln__pub_req *r = c->act_head; r != NULL; r = r->next)
        for (size_t i = r->low; i < r->n; i++)
            if (kiln__pub_unsettled(r->status[i]))
                return true;
    return false;
}

/* Writes what is unsent, as far as the window allows. */
static void write_some(kiln__pub_conn *c)
{
    size_t m, done = 0;
    kiln_error e;
    kiln_err rc;

    if (!c->connected && !open_conn(c))
        return;
    if (c->redeclare) {
        c->redeclare = false;
        if (kiln__broker_declare(c->b, &c->pub->cfg, &e) != KILN_OK) {
            connection_failed(c, &e, "declare");
            return;
        }
    }
    if ((m = assemble(c, room(c))) == 0)
        return;
    rc = kiln__broker_publish_async(c->b, c->bmsgs, m, c->bseq, c->bst, &done,
                                    &e);
    c->io_ns = kiln__monotonic_ns();
    record(c, done, rc == KILN_OK && e.code != KILN_OK ? e.message : NULL);
    c->blocked = rc == KILN_OK && done < m;
    c->poked = false;
    if (rc != KILN_OK) {
        connection_failed(c, &e, "connection lost");
        return;
    }
    if (c->inflight > 0 || done > 0) {
        c->attempt = 0;
        c->last.code = KILN_OK;
    }
}

/* ---- the owner thread ---------------------------------------------------- */

/* Is there something to write now? */
static bool writable(const kiln__pub_conn *c, int64_t now)
{
    if (c->closing || c->act_head == NULL)
        return false;
    if (c->connected ? (c->blocked && !c->poked) || room(c) == 0
                     : now < c->retry_at_ns)
        return false;
    return has_unsent(c);
}

/* When the owner must look again even if nothing arrives. */
static int64_t wake_at(const kiln__pub_conn *c, int64_t now)
{
    int64_t wake = (c->connected ? c->io_ns : now) + c->pub->tick_ns;

    if (!c->connected && !c->closing && c->act_head != NULL &&
        c->retry_at_ns < wake)
        wake = c->retry_at_ns;
    for (const kiln__pub_req *r = c->act_head; r != NULL; r = r->next)
        wake = r->deadline_ns < wake ? r->deadline_ns : wake;
    return wake;
}

/* Waits without the broker: for a caller (wake_fd) or `until`. */
static void sleep_until(kiln__pub_conn *c, int64_t until)
{
    struct pollfd p = {c->wake_fd, POLLIN, 0};
    int64_t left = until - kiln__monotonic_ns();
    int ms = left <= 0            ? 0
             : left > 60000000000 ? 60000
                                  : (int)((left + 999999) / 1000000);
    uint64_t v;

    if (poll(&p, 1, ms) > 0 && read(c->wake_fd, &v, sizeof(v)) < 0 &&
        errno != EAGAIN)
        kiln__log(KILN_LOG_DEBUG, MODULE, "wake fd read failed");
}

/* One wait, c->mu not held: for the broker's outcomes while any are due
 * (or for connection.unblocked), else for a caller; both end early when
 * a caller kicks wake_fd. */
static void wait_step(kiln__pub_conn *c)
{
    int64_t now = kiln__monotonic_ns(), until = wake_at(c, now);
    kiln_error e;
    kiln_err rc;

    if (!c->connected || (c->inflight == 0 && !c->blocked)) {
        sleep_until(c, until);
        return;
    }
    rc = kiln__broker_wait_settled(c->b, until, c->wake_fd, on_settled, c, &e);
    if (rc == KILN_OK) {
        c->io_ns = kiln__monotonic_ns();
        c->poked = c->blocked; /* try again: maybe it was unblocked */
    } else if (rc != KILN_ETIMEDOUT)
        connection_failed(c, &e, "connection lost");
}

static bool any_late(const kiln__pub_conn *c, int64_t now)
{
    for (const kiln__pub_req *r = c->act_head; r != NULL; r = r->next)
        if (r->pending > 0 && now >= r->deadline_ns)
            return true;
    return false;
}

/* Everything but waiting, c->mu not held. */
static void step(kiln__pub_conn *c)
{
    int64_t now = kiln__monotonic_ns();
    kiln_error e;
    kiln_err rc;

    /* Before giving up on anything, the outcomes already here: a confirm
     * that came in time counts. */
    if (c->connected && c->inflight > 0 && any_late(c, now)) {
        rc = kiln__broker_wait_settled(c->b, now, -1, on_settled, c, &e);
        if (rc != KILN_OK && rc != KILN_ETIMEDOUT)
            connection_failed(c, &e, "connection lost");
    }
    expire(c, now);
    if (writable(c, now))
        write_some(c);
    else if (c->connected && c->inflight == 0 && !c->blocked &&
             now - c->io_ns >= c->pub->tick_ns)
        tick(c, now);
}

void *kiln__pub_owner_main(void *arg)
{
    kiln__pub_conn *c = arg;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        take_queued(c);
        c->closing |= c->stopping;
        if (c->closing)
            refuse_unsent(c);
        if (c->closing && c->act_head == NULL) {
            complete(c);
            break;
        }
        pthread_mutex_unlock(&c->mu);
        step(c);
        pthread_mutex_lock(&c->mu);
        complete(c);
        if (c->q_head != NULL || c->stopping != c->closing ||
            writable(c, kiln__monotonic_ns()))
            continue;
        if (c->closing && c->act_head == NULL)
            continue;
        c->sleeping = true;
        pthread_mutex_unlock(&c->mu);
        wait_step(c);
        pthread_mutex_lock(&c->mu);
        c->sleeping = false;
    }
    pthread_mutex_unlock(&c->mu);
    if (c->connected)
        kiln__broker_close(c->b);
    c->connected = false;
    return NULL;
}
