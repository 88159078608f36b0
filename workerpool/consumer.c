/*
 * The consumer loop of kiln_pool_start. One thread owns the consuming
 * broker connection: it takes deliveries, decodes them, hands jobs to the
 * workers, settles their outcomes and acknowledges.
 *
 * Acks are coalesced (DESIGN "Where the time goes"): deliveries sit in a
 * window in delivery-tag order; when the oldest ones are finished, one
 * basic.ack with `multiple` covers them all. A `multiple` ack covers every
 * outstanding tag up to its own, so it never reaches past a delivery that
 * is still running; finished deliveries stuck behind a slow one are acked
 * singly at the next flush, so the prefetch window never fills with
 * finished work (RABBITMQ.md: that would deadlock the consumer).
 *
 * Copies. The message an outcome causes (a dead letter, a retry, a task
 * sent back to wait for its ETA) goes out through the pool's publisher, on
 * a connection of its own, and the delivery is acked once the broker
 * confirmed the copy. The consuming connection never publishes, so a
 * broker that blocks publishers (a memory or disk alarm) never blocks its
 * acks, and a copy the broker refuses (a nack, no route, no confirm in
 * time) costs only its own delivery: that stays unacked and the copy goes
 * again with backoff while the other tasks go on.
 *
 * The broker's consumer_timeout. RabbitMQ closes a channel that keeps a
 * delivery unacked longer than consumer_timeout (30 minutes by default)
 * and requeues all of its deliveries. So no delivery stays unacked past
 * half of cfg.consumer_timeout_ms:
 *   - one still waiting for a worker is handed back: a copy with the same
 *     counts goes back to the queue through the delay exchange, then the
 *     delivery is acked;
 *   - one whose task runs is leased: a lease copy (x-kiln-lease) takes its
 *     place in the delay queues for half the timeout, then the delivery is
 *     acked. The task's outcome is applied when it ends, as for any task.
 *     A lease copy that comes back while the task still runs here is
 *     leased again; after the task ended here it is acked; a worker that
 *     does not know it (this one died) runs it as a redelivery.
 *
 * Redeliveries. After a lost connection the broker redelivers what was not
 * acked: tasks still running here too, and finished ones whose ack had
 * not gone out. A redelivery (or a lease copy) of a task that still runs
 * here, or whose copy is not confirmed yet, waits in the delay queues and
 * looks again; one whose task finished here is acked without running; one
 * that was handed back unstarted by the loss does not count as a run. The
 * look-ups go by task UUID over the slots and a small table of recent
 * outcomes, and only for deliveries that say they were delivered before,
 * so the usual path pays nothing for them.
 */
#include "workerpool/pool.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"
#include "workerpool/retry.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#define MODULE "pool"

/* Flush acks when this many are waiting, or after ACK_DELAY_NS. */
#define ACK_BATCH    64
#define ACK_DELAY_NS (2 * 1000000LL)
/* Deliveries taken per loop turn, so outcomes are settled in between. */
#define FETCH_TURN 256
/* Longest sleep of an idle loop: bounds how late a stop is noticed when
 * the wake-up is lost, and lets consume send heartbeats. */
#define IDLE_WAIT_MS 200
/* A refused copy goes again after up to 100 ms, doubling to 10 s. */
#define RESEND_BASE_MS 100
#define RESEND_CAP_MS  10000
/* A redelivery of a task still running here waits this long in the delay
 * queues before it looks again (less when the consumer timeout is short). */
#define HOLD_MS 5000
/* Outcomes of tasks whose delivery was lost or leased are kept for as long
 * as a copy of it can stay away, and this much more. */
#define REMEMBER_EXTRA_NS (60 * 1000000000LL)
#define MS_NS             1000000LL

typedef enum recent_kind {
    RECENT_FREE = 0,
    RECENT_DONE,     /* finished here: ack its redelivery without running */
    RECENT_UNSTARTED /* handed back unstarted by a lost connection */
} recent_kind;

typedef struct recent {
    char uuid[KILN_NAME_MAX];
    recent_kind kind;
    int64_t until_ns;
} recent;

typedef struct consumer {
    kiln_pool *p;
    kiln__broker *b;
    kiln__publisher *pub;
    bool connected;
    bool draining;
    unsigned attempt; /* reconnects since the last success */
    kiln__work **win; /* ring: live deliveries in tag order */
    size_t win_head, win_len;
    kiln__work **scratch; /* n_slots entries */
    kiln__work *free_list;
    size_t done_unacked; /* live entries in state DONE */
    size_t ack_batch;
    int64_t flush_due_ns; /* 0: nothing waits */
    size_t in_workers;    /* QUEUED entries not yet back: queued or running */
    size_t in_publisher;  /* copies the publisher has */
    size_t waiting;       /* WAITING entries */
    size_t parked;        /* PARKED entries */
    bool refusing;        /* the broker refuses copies: said once */
    int64_t lease_ns;     /* half the consumer timeout; 0: none */
    int64_t lease_check_ns;
    uint64_t hold_ms;
    int64_t remember_ns;
    recent *recents;
    size_t n_recents;
} consumer;

/* ---- slots and the window ------------------------------------------------ */

static kiln__work *win_at(consumer *c, size_t i)
{
    return c->win[(c->win_head + i) % c->p->n_slots];
}

static void win_push(consumer *c, kiln__work *w)
{
    c->win[(c->win_head + c->win_len) % c->p->n_slots] = w;
    c->win_len++;
    w->in_window = true;
}

static void work_release(consumer *c, kiln__work *w)
{
    if (w->dl.body != NULL || w->dl.headers != NULL || w->dl.tag != 0)
        kiln__broker_release(c->b, &w->dl);
    kiln__settle_discard(&w->settle);
    kiln__job_release(&w->job);
    memset(w, 0, sizeof(*w));
    w->next = c->free_list;
    c->free_list = w;
}

static void unpark(consumer *c, const kiln__work *w);

/* Nothing is left to do for `w`: its slot is free once it is out of the
 * window (the window drops it at the next compaction). */
static void settled(consumer *c, kiln__work *w)
{
    w->state = KILN__WORK_SETTLED;
    w->live = false;
    if (c->parked > 0)
        unpark(c, w);
    if (!w->in_window)
        work_release(c, w);
}

/* Drops what is no longer live from the window, keeping tag order, and
 * frees the slots of those settled. */
static void compact(consumer *c)
{
    size_t i = 0, kept, n = c->win_len;

    while (i < n && win_at(c, i)->live)
        i++; /* the usual case: nothing to move */
    for (kept = i; i < n; i++) {
        kiln__work *w = win_at(c, i);
        if (!w->live) {
            w->in_window = false;
            if (w->state == KILN__WORK_SETTLED)
                work_release(c, w);
            continue;
        }
        /* kept <= i: never overwrites an entry still to be read */
        c->win[(c->win_head + kept) % c->p->n_slots] = w;
        kept++;
    }
    c->win_len = kept;
}

/* ---- recent outcomes ----------------------------------------------------- */

static recent *recent_find(consumer *c, const char *uuid)
{
    int64_t now = kiln__monotonic_ns();

    for (size_t i = 0; uuid != NULL && i < c->n_recents; i++) {
        recent *r = &c->recents[i];
        if (r->kind != RECENT_FREE && r->until_ns > now &&
            strcmp(r->uuid, uuid) == 0)
            return r;
    }
    return NULL;
}

/* Remembers `uuid`; when the table is full the entry closest to expiry
 * goes (at worst a task then runs once more: at least once). */
static void remember(consumer *c, const char *uuid, recent_kind kind)
{
    int64_t now = kiln__monotonic_ns();
    recent *r = recent_find(c, uuid), *oldest = NULL;

    if (uuid == NULL || uuid[0] == '\0' || c->n_recents == 0)
        return;
    for (size_t i = 0; r == NULL && i < c->n_recents; i++) {
        recent *e = &c->recents[i];
        if (e->kind == RECENT_FREE || e->until_ns <= now)
            r = e;
        else if (oldest == NULL || e->until_ns < oldest->until_ns)
            oldest = e;
    }
    if (r == NULL)
        r = oldest;
    kiln__strlcpy(r->uuid, uuid, sizeof(r->uuid));
    r->kind = kind;
    r->until_ns = now + c->remember_ns;
}

/* ---- the connection ------------------------------------------------------ */

/* Takes back every job still in the work queue (not started). */
static kiln__work *unqueue_all(kiln_pool *p)
{
    kiln__work *list;

    pthread_mutex_lock(&p->mu);
    list = p->queue_head;
    p->queue_head = p->queue_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    return list;
}

/* The connection is gone: the broker requeues every unacked delivery, so
 * nothing here may be acked any more. Jobs not started are dropped (their
 * redelivery will not count as a run); tasks running and copies on their
 * way carry on, and their outcomes are remembered instead of acked; a
 * finished task whose ack had not gone out is remembered too. */
static void lose(consumer *c, const kiln_error *why)
{
    kiln__work *w = unqueue_all(c->p), *next;

    kiln__log(KILN_LOG_WARN, MODULE,
              "pool=%s lost its broker connection: %s; unacked deliveries "
              "return to the queue",
              c->p->name, why != NULL ? why->message : "closed");
    for (; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        c->in_workers--;
        remember(c, w->uuid, RECENT_UNSTARTED);
        w->state = KILN__WORK_SETTLED; /* released with the window below */
    }
    for (size_t i = 0; i < c->win_len; i++) {
        kiln__work *e = win_at(c, i);
        e->in_window = false;
        e->live = false;
        if (e->state == KILN__WORK_DONE)
            remember(c, e->uuid, RECENT_DONE);
        if (e->state == KILN__WORK_PARKED)
            c->parked--;
        if (e->state == KILN__WORK_DONE || e->state == KILN__WORK_SETTLED ||
            e->state == KILN__WORK_PARKED)
            work_release(c, e);
        /* else it runs, or its copy is on its way: an orphan until then */
    }
    c->win_head = c->win_len = 0;
    c->done_unacked = 0;
    c->flush_due_ns = 0;
    c->b->ops->close(c->b);
    c->connected = false;
}

static kiln_err connect_all(consumer *c, kiln_error *err)
{
    kiln_pool *p = c->p;
    kiln_err rc;

    if ((rc = c->b->ops->connect(c->b, err)) != KILN_OK ||
        (rc = c->b->ops->declare(c->b, &p->cfg, err)) != KILN_OK ||
        (rc = c->b->ops->subscribe(c->b, p->cfg.queue, p->cfg.prefetch, err)) !=
            KILN_OK) {
        c->b->ops->close(c->b);
        return rc;
    }
    c->connected = true;
    kiln__log(KILN_LOG_NOTICE, MODULE, "pool=%s consuming queue=%s%s", p->name,
              p->cfg.queue, c->attempt > 0 ? " (reconnected)" : "");
    c->attempt = 0;
    return KILN_OK;
}

/* Sleeps until `ms` passed or a wake-up came. */
static void nap(consumer *c, uint64_t ms)
{
    struct pollfd pfd = {.fd = c->p->wake_fd, .events = POLLIN};
    uint64_t drained;

    if (poll(&pfd, 1, ms > 60000 ? 60000 : (int)ms) > 0 &&
        read(c->p->wake_fd, &drained, sizeof(drained)) < 0) {
        /* EAGAIN: another reader got there first; nothing to do. */
    }
}

static void reconnect(consumer *c)
{
    kiln_error e;
    uint64_t ms;

    if (connect_all(c, &e) == KILN_OK)
        return;
    ms = kiln__backoff_ms(c->attempt++, KILN__RECONNECT_BASE_MS,
                          KILN__RECONNECT_CAP_MS);
    kiln__log(KILN_LOG_WARN, MODULE,
              "pool=%s cannot reach the broker: %s; retrying in %llu ms",
              c->p->name, e.message, (unsigned long long)ms);
    nap(c, ms);
}

/* Keeps an idle connection alive when the loop is not consuming (window
 * full, or draining): heartbeats, and the server's frames. */
static void tick(consumer *c)
{
    kiln_error e;

    if (c->connected && c->b->ops->tick != NULL &&
        c->b->ops->tick(c->b, &e) != KILN_OK && c->connected)
        lose(c, &e);
}

/* ---- acks ---------------------------------------------------------------- */

static void acked(consumer *c, kiln__work *w)
{
    c->done_unacked--;
    settled(c, w);
}

/* Acks what is finished. The finished prefix of the window goes in one
 * `multiple` ack; finished entries behind a running one are acked singly
 * (see the top of the file). */
static void flush_acks(consumer *c)
{
    uint64_t high = 0;
    size_t prefix;
    kiln_error e;

    if (atomic_load(&c->p->hold_acks))
        return;
    for (prefix = 0; prefix < c->win_len; prefix++) {
        kiln__work *w = win_at(c, prefix);
        if (!w->live)
            continue;
        if (w->state != KILN__WORK_DONE)
            break;
        high = w->dl.tag;
    }
    if (high != 0) {
        if (kiln__broker_ack(c->b, high, true, &e) != KILN_OK) {
            lose(c, &e);
            return;
        }
        for (size_t i = 0; i < prefix; i++)
            if (win_at(c, i)->live)
                acked(c, win_at(c, i));
    }
    for (size_t i = prefix; c->done_unacked > 0 && i < c->win_len; i++) {
        kiln__work *w = win_at(c, i);
        if (!w->live || w->state != KILN__WORK_DONE)
            continue;
        if (kiln__broker_ack(c->b, w->dl.tag, false, &e) != KILN_OK) {
            lose(c, &e);
            return;
        }
        acked(c, w);
    }
    c->flush_due_ns = 0;
}

static void maybe_flush(consumer *c, bool force)
{
    if (!c->connected)
        return;
    if (c->done_unacked > 0 && (force || c->done_unacked >= c->ack_batch ||
                                kiln__monotonic_ns() >= c->flush_due_ns))
        flush_acks(c);
    if (c->connected)
        compact(c);
}

/* ---- outcomes ------------------------------------------------------------ */

static void conclude(consumer *c, kiln__work *w);

/* The outcome is settled: ack at the next flush, or remember it when the
 * delivery is no longer ours. */
static void finish(consumer *c, kiln__work *w)
{
    if (w->live) {
        w->state = KILN__WORK_DONE;
        if (c->done_unacked++ == 0)
            c->flush_due_ns = kiln__monotonic_ns() + ACK_DELAY_NS;
        return;
    }
    remember(c, w->uuid, RECENT_DONE);
    settled(c, w);
}

/* Nacks a live delivery (requeue, or drop when there is no dead-letter
 * queue); for one no longer ours there is nothing to do. */
static void reject(consumer *c, kiln__work *w, bool requeue)
{
    kiln_error e;

    if (w->live && c->connected &&
        kiln__broker_nack(c->b, w->dl.tag, requeue, &e) != KILN_OK) {
        settled(c, w);
        lose(c, &e);
        return;
    }
    settled(c, w);
}

/* Called on a publisher thread (see kiln__pub_notify). */
static void on_sent(kiln__pub_req *r, void *ctx)
{
    kiln_pool *p = ctx;
    kiln__work *w =
        (kiln__work *)(void *)((char *)r - offsetof(kiln__work, req));

    pthread_mutex_lock(&p->mu);
    w->next = p->sent_head;
    p->sent_head = w;
    pthread_mutex_unlock(&p->mu);
    kiln__pool_wake(p);
}

static void refused(consumer *c, kiln__work *w, const char *why);

/* Hands the copy in w->settle to the publisher. */
static void submit(consumer *c, kiln__work *w)
{
    if (!w->leasing)
        w->state = KILN__WORK_SENDING;
    c->in_publisher++;
    if (kiln__publisher_submit(c->pub, &w->req, &w->settle.msg, 1,
                               &w->req_status, on_sent, c->p) == KILN_OK)
        return;
    c->in_publisher--;
    if (w->leasing) {
        w->leasing = false;
        kiln__settle_discard(&w->settle);
        return;
    }
    refused(c, w, "the publisher is closing");
}

/* Builds the copy the verdict asks for and sends it. */
static void send_copy(consumer *c, kiln__work *w)
{
    kiln_error e;

    kiln__settle_discard(&w->settle);
    memset(&w->settle, 0, sizeof(w->settle));
    if (kiln__settle_begin(&c->p->dispatch, &w->dl, &w->job, &w->settle, &e) !=
        KILN_OK) {
        refused(c, w, e.message);
        return;
    }
    if (!w->settle.publish) {
        /* Nothing to publish: no dead-letter queue is configured. */
        reject(c, w, w->settle.end == KILN__SETTLE_REQUEUE);
        return;
    }
    submit(c, w);
}

/* The copy of `w` could not be built or was refused: its delivery stays
 * unacked and the copy goes again after a backoff. During a drain a task
 * handed back goes back with a nack instead, so a broker that refuses
 * everything does not hold the drain until its deadline. */
static void refused(consumer *c, kiln__work *w, const char *why)
{
    uint64_t ms = kiln__backoff_ms(w->attempts, RESEND_BASE_MS, RESEND_CAP_MS);
    const char *what = w->settle.what != NULL ? w->settle.what : "copy";

    if (c->draining && w->job.fn == NULL &&
        w->job.verdict == KILN__VERDICT_RETRY && w->live) {
        reject(c, w, true);
        return;
    }
    kiln__log_task(c->refusing ? KILN_LOG_DEBUG : KILN_LOG_WARN, MODULE,
                   w->uuid, w->job.sig != NULL ? w->job.sig->name : NULL,
                   "%s not confirmed: %s; the delivery stays unacked and the "
                   "copy goes again in %llu ms (attempt %u)",
                   what, why, (unsigned long long)ms, w->attempts + 1);
    c->refusing = true;
    w->attempts++;
    w->state = KILN__WORK_WAITING;
    w->retry_at_ns = kiln__monotonic_ns() + (int64_t)ms * MS_NS;
    c->waiting++;
}

static void copy_sent(consumer *c, kiln__work *w)
{
    kiln__settle_end_action end = w->settle.end;

    if (w->req_status != KILN_OK) {
        refused(c, w, w->req.err.message);
        return;
    }
    if (c->refusing) {
        c->refusing = false;
        kiln__log(KILN_LOG_NOTICE, MODULE,
                  "pool=%s: the broker confirms copies again", c->p->name);
    }
    if (w->attempts > 0)
        kiln__log_task(KILN_LOG_NOTICE, MODULE, w->uuid,
                       w->job.sig != NULL ? w->job.sig->name : NULL,
                       "%s confirmed after %u attempts", w->settle.what,
                       w->attempts + 1);
    kiln__settle_discard(&w->settle);
    w->attempts = 0;
    if (end != KILN__SETTLE_ACK) {
        reject(c, w, end == KILN__SETTLE_REQUEUE);
        return;
    }
    finish(c, w);
    /* The copy stands for the delivery now: ack at once, not at the next
     * coalesced flush. A copy sent on at once can be back and running
     * within that flush's 2 ms, and a task that kills its worker would
     * then leave both behind, to be run again each. */
    maybe_flush(c, true);
}

/* A lease copy was confirmed (it now stands for the delivery, which is
 * acked) or refused (tried again later). */
static void lease_sent(consumer *c, kiln__work *w)
{
    kiln_err st = w->req_status;
    kiln_error e;

    w->leasing = false;
    kiln__settle_discard(&w->settle);
    if (st != KILN_OK) {
        kiln__log_task(KILN_LOG_WARN, MODULE, w->uuid, w->job.sig->name,
                       "lease copy not confirmed: %s; trying again",
                       w->req.err.message);
        w->retry_at_ns = kiln__monotonic_ns() +
                         (int64_t)kiln__backoff_ms(
                             w->attempts++, RESEND_BASE_MS, RESEND_CAP_MS) *
                             MS_NS;
    } else {
        w->attempts = 0;
        w->leased = true;
        if (w->live && c->connected) {
            kiln__log_task(KILN_LOG_NOTICE, MODULE, w->uuid, w->job.sig->name,
                           "running for more than half the broker's "
                           "consumer_timeout (KILN_CONSUMER_TIMEOUT_MS=%u): "
                           "a lease copy stands for it in the delay queues "
                           "and its delivery is acked",
                           c->p->cfg.consumer_timeout_ms);
            if (kiln__broker_ack(c->b, w->dl.tag, false, &e) != KILN_OK) {
                lose(c, &e);
            } else {
                w->live = false; /* leaves the window at the compaction */
            }
        }
    }
    if (w->outcome_waits) {
        w->outcome_waits = false;
        conclude(c, w);
    }
}

/* Settles the copies the publisher is done with. */
static void take_sent(consumer *c)
{
    kiln_pool *p = c->p;
    kiln__work *w, *next;

    pthread_mutex_lock(&p->mu);
    w = p->sent_head;
    p->sent_head = NULL;
    pthread_mutex_unlock(&p->mu);
    for (; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        c->in_publisher--;
        if (w->leasing)
            lease_sent(c, w);
        else
            copy_sent(c, w);
    }
}

/* Sends again the copies whose backoff ended. */
static void resend_due(consumer *c)
{
    int64_t now;

    if (c->waiting == 0)
        return;
    now = kiln__monotonic_ns();
    for (size_t i = 0; c->waiting > 0 && i < c->p->n_slots; i++) {
        kiln__work *w = &c->p->slots[i];
        if (w->state != KILN__WORK_WAITING || w->retry_at_ns > now)
            continue;
        c->waiting--;
        if (w->settle.publish)
            submit(c, w);
        else
            send_copy(c, w);
    }
}

/* What a task's outcome (or a verdict decided without a worker) does. */
static void conclude(consumer *c, kiln__work *w)
{
    if (w->leasing) {
        w->outcome_waits = true; /* after the lease copy's confirm */
        return;
    }
    switch (w->job.verdict) {
    case KILN__VERDICT_ACK:
        finish(c, w);
        return;
    case KILN__VERDICT_REQUEUE:
        reject(c, w, true);
        return;
    case KILN__VERDICT_DEADLETTER:
    case KILN__VERDICT_RETRY:
        send_copy(c, w);
        return;
    }
}

/* Settles what the workers finished since the last turn. */
static void take_outcomes(consumer *c)
{
    kiln_pool *p = c->p;
    kiln__work *w, *next;

    pthread_mutex_lock(&p->mu);
    w = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    for (; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        c->in_workers--;
        conclude(c, w);
    }
}

/* ---- the consumer timeout ------------------------------------------------ */

/* Unlinks `w` from the work queue; false when a worker took it. p->mu
 * held. */
static bool unqueue(kiln_pool *p, kiln__work *w)
{
    kiln__work **pp = &p->queue_head, *prev = NULL;

    for (; *pp != NULL; prev = *pp, pp = &(*pp)->next) {
        if (*pp != w)
            continue;
        *pp = w->next;
        if (p->queue_tail == w)
            p->queue_tail = prev;
        w->next = NULL;
        return true;
    }
    return false;
}

/* Sends a delivery no worker took back to the queue, counts unchanged. */
static void hand_back(consumer *c, kiln__work *w, const char *why)
{
    c->in_workers--;
    kiln__job_hold(&w->job, 0);
    kiln__log_task(KILN_LOG_NOTICE, MODULE, w->uuid,
                   w->job.sig != NULL ? w->job.sig->name : NULL,
                   "not started: handed back to the queue (%s)", why);
    send_copy(c, w);
}

static void start_lease(consumer *c, kiln__work *w, int64_t now)
{
    kiln_error e;

    kiln__settle_discard(&w->settle);
    memset(&w->settle, 0, sizeof(w->settle));
    if (kiln__lease_build(&c->p->cfg, &w->dl, (uint64_t)(c->lease_ns / MS_NS),
                          w->retries_seen, w->deliveries_seen, &w->settle,
                          &e) != KILN_OK) {
        kiln__log_task(KILN_LOG_WARN, MODULE, w->uuid, w->job.sig->name,
                       "cannot build a lease copy: %s", e.message);
        w->retry_at_ns = now + 1000 * MS_NS;
        return;
    }
    w->leasing = true;
    submit(c, w);
}

/* Keeps every delivery clear of the broker's consumer_timeout (see the
 * top of the file): those older than half of it that no worker took are
 * handed back, those whose task runs are leased. */
static void check_leases(consumer *c)
{
    kiln_pool *p = c->p;
    int64_t now = kiln__monotonic_ns();
    size_t n = 0;

    if (c->lease_ns == 0 || now < c->lease_check_ns)
        return;
    c->lease_check_ns =
        now + (c->lease_ns / 4 < 1000 * MS_NS ? c->lease_ns / 4 : 1000 * MS_NS);
    if (c->win_len == 0 || now - win_at(c, 0)->taken_ns < c->lease_ns)
        return;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < c->win_len; i++) {
        kiln__work *w = win_at(c, i);
        if (now - w->taken_ns < c->lease_ns)
            break;
        if (!w->live || w->state != KILN__WORK_QUEUED || w->leasing ||
            w->outcome_waits || now < w->retry_at_ns)
            continue;
        if (w->started || unqueue(p, w))
            c->scratch[n++] = w;
    }
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < n; i++) {
        kiln__work *w = c->scratch[i];
        if (w->started)
            start_lease(c, w, now);
        else
            hand_back(c, w,
                      "it waited longer than half the broker's "
                      "consumer_timeout behind the prefetch window");
    }
}

/* ---- deliveries ---------------------------------------------------------- */

/* Hands a batch of ready jobs to the workers under one lock. */
static void enqueue(consumer *c, kiln__work *head, kiln__work *tail, size_t n)
{
    kiln_pool *p = c->p;

    if (head == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    if (p->queue_tail != NULL)
        p->queue_tail->next = head;
    else
        p->queue_head = head;
    p->queue_tail = tail;
    if (n == 1)
        pthread_cond_signal(&p->work_cv);
    else
        pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    c->in_workers += n;
}

/* A slot other than `self` whose task `uuid` still runs here, or whose
 * copy is still on its way, after its own delivery stopped being ours. */
static kiln__work *running_here(consumer *c, const kiln__work *self,
                                const char *uuid)
{
    for (size_t i = 0; i < c->p->n_slots; i++) {
        kiln__work *o = &c->p->slots[i];
        if (o == self || o->live || o->uuid == NULL ||
            (o->state != KILN__WORK_QUEUED && o->state != KILN__WORK_SENDING &&
             o->state != KILN__WORK_WAITING))
            continue;
        if (strcmp(o->uuid, uuid) == 0)
            return o;
    }
    return NULL;
}

/* A delivery that was delivered before, or a lease copy: true when what
 * this process knows decides it (held, or acked without running). */
static bool seen_here(consumer *c, kiln__work *w)
{
    kiln__job *job = &w->job;
    recent *r;

    if (running_here(c, w, w->uuid) != NULL) {
        uint64_t ms = job->lease != NULL && c->lease_ns > 0
                          ? (uint64_t)(c->lease_ns / MS_NS)
                          : c->hold_ms;
        kiln__job_hold(job, ms);
        kiln__log_task(KILN_LOG_INFO, MODULE, w->uuid, job->sig->name,
                       "%s while its task still runs here: back to the "
                       "delay queues for %llu ms",
                       job->lease != NULL ? "lease copy back" : "redelivered",
                       (unsigned long long)ms);
        return true;
    }
    if ((r = recent_find(c, w->uuid)) == NULL)
        return false;
    if (r->kind == RECENT_DONE) {
        job->verdict = KILN__VERDICT_ACK;
        job->status = KILN_OK;
        kiln__log_task(KILN_LOG_INFO, MODULE, w->uuid, job->sig->name,
                       "%s of a task that finished here: acked without "
                       "running it again",
                       job->lease != NULL ? "lease copy" : "redelivery");
        return true;
    }
    /* Handed back unstarted by a lost connection: not a run. */
    r->kind = RECENT_FREE;
    job->redelivery = false;
    if (job->deliveries > 0)
        job->deliveries--;
    return false;
}

/* A live delivery here, other than `self`, of task `uuid` whose copy is
 * on its way: `self` may be that copy, back before the original's ack. */
static kiln__work *original_here(consumer *c, const kiln__work *self,
                                 const char *uuid)
{
    for (size_t i = 0; i < c->p->n_slots; i++) {
        kiln__work *o = &c->p->slots[i];
        if (o != self && o->live && o->uuid != NULL &&
            (o->state == KILN__WORK_SENDING ||
             o->state == KILN__WORK_WAITING) &&
            strcmp(o->uuid, uuid) == 0)
            return o;
    }
    return NULL;
}

/* Hands the copies parked behind `w` to the workers (back to the queue
 * when draining): `w` is settled. */
static void unpark(consumer *c, const kiln__work *w)
{
    for (size_t i = 0; c->parked > 0 && i < c->p->n_slots; i++) {
        kiln__work *o = &c->p->slots[i];
        if (o->state != KILN__WORK_PARKED || o->behind != w)
            continue;
        c->parked--;
        o->behind = NULL;
        o->state = KILN__WORK_QUEUED;
        if (c->draining) {
            kiln__job_hold(&o->job, 0);
            send_copy(c, o);
        } else {
            enqueue(c, o, o, 1);
        }
    }
}

typedef enum admission { ADMIT_RUN, ADMIT_DECIDED, ADMIT_PARKED } admission;

/* Decides what to do with a new delivery: a worker takes it, or its
 * verdict is decided here, or it waits for a delivery here to be acked. */
static admission admit(consumer *c, kiln__work *w)
{
    const kiln__dispatch *d = &c->p->dispatch;
    bool needs_worker;

    if (!kiln__dispatch_decode(d, &w->dl, &w->job, &needs_worker))
        return needs_worker ? ADMIT_RUN : ADMIT_DECIDED;
    w->uuid = w->job.sig->uuid;
    if (w->job.redelivery && seen_here(c, w))
        return ADMIT_DECIDED;
    if (!kiln__dispatch_admit(d, &w->dl, &w->job))
        return ADMIT_DECIDED;
    if (c->draining) {
        /* Arrived before the cancel took effect: straight back. */
        kiln__job_hold(&w->job, 0);
        return ADMIT_DECIDED;
    }
    w->retries_seen = w->job.retries;
    w->deliveries_seen = w->job.deliveries;
    /* A copy can reach this consumer before the publisher's connection
     * has the broker's confirm, so before its original here is acked. A
     * task that kills its worker must not run until then, or both would
     * stay behind and run again. */
    if (w->job.redelivery &&
        (w->behind = original_here(c, w, w->uuid)) != NULL) {
        w->state = KILN__WORK_PARKED;
        c->parked++;
        return ADMIT_PARKED;
    }
    return ADMIT_RUN;
}

/* Takes deliveries that already arrived, without waiting. */
static void fetch(consumer *c)
{
    kiln__work *head = NULL, *tail = NULL;
    kiln_error e;
    size_t n = 0;

    for (int turn = 0; turn < FETCH_TURN && c->free_list != NULL; turn++) {
        kiln__work *w = c->free_list;
        kiln_err rc = kiln__broker_consume(c->b, &w->dl, 0, &e);
        if (rc == KILN_ETIMEDOUT || (rc == KILN_ECLOSED && c->draining))
            break;
        if (rc != KILN_OK) {
            enqueue(c, head, tail, n);
            lose(c, &e);
            return;
        }
        c->free_list = w->next;
        w->next = NULL;
        w->live = true;
        w->state = KILN__WORK_QUEUED;
        w->taken_ns = kiln__monotonic_ns();
        win_push(c, w);
        switch (admit(c, w)) {
        case ADMIT_RUN:
            break;
        case ADMIT_PARKED:
            continue;
        case ADMIT_DECIDED:
            /* Decided without a worker. Its settling may lose the
             * connection, so the jobs gathered so far go to the workers
             * first: a loss then finds them queued, not adrift. */
            enqueue(c, head, tail, n);
            head = tail = NULL;
            n = 0;
            conclude(c, w);
            if (!c->connected)
                return;
            continue;
        }
        if (tail != NULL)
            tail->next = w;
        else
            head = w;
        tail = w;
        n++;
    }
    enqueue(c, head, tail, n);
}

/* The next moment the loop has something to do without a wake-up. */
static int64_t next_due(consumer *c)
{
    int64_t due = kiln__monotonic_ns() + IDLE_WAIT_MS * MS_NS;

    if (c->flush_due_ns != 0 && c->flush_due_ns < due)
        due = c->flush_due_ns;
    if (c->lease_ns > 0 && c->win_len > 0 && c->lease_check_ns < due)
        due = c->lease_check_ns;
    for (size_t i = 0; c->waiting > 0 && i < c->p->n_slots; i++) {
        const kiln__work *w = &c->p->slots[i];
        if (w->state == KILN__WORK_WAITING && w->retry_at_ns < due)
            due = w->retry_at_ns;
    }
    return due;
}

/* Waits for a delivery, an outcome, a stop request or the next thing due. */
static void wait_events(consumer *c)
{
    struct pollfd pfd[2] = {{.fd = c->p->wake_fd, .events = POLLIN},
                            {.fd = -1, .events = POLLIN}};
    int64_t left = (next_due(c) - kiln__monotonic_ns()) / MS_NS;
    int timeout = left < 0 ? 0 : (int)left + 1, nfds = 1;
    uint64_t drained;
    const kiln__broker_ops *ops = c->b->ops;

    /* Frames already in memory: do not sleep, unless the window is full,
     * when they must wait for a free slot anyway. */
    if (c->connected && c->free_list != NULL && ops->pending != NULL &&
        ops->pending(c->b))
        return;
    if (c->connected && c->free_list != NULL) {
        pfd[1].fd = ops->poll_fd != NULL ? ops->poll_fd(c->b) : -1;
        if (pfd[1].fd >= 0)
            nfds = 2;
        else if (timeout > 1)
            timeout = 1; /* no descriptor to wait on: poll consume often */
    }
    if (poll(pfd, (nfds_t)nfds, timeout) > 0 && (pfd[0].revents & POLLIN) &&
        read(c->p->wake_fd, &drained, sizeof(drained)) < 0) {
        /* EAGAIN: nothing to reset. */
    }
}

/* ---- life cycle ---------------------------------------------------------- */

static void consumer_free_arrays(consumer *c)
{
    kiln__free(c->win);
    kiln__free(c->scratch);
    kiln__free(c->recents);
}

static kiln_err consumer_init(consumer *c, kiln_pool *p, kiln_error *err)
{
    const kiln_config *cfg = &p->cfg;
    kiln_error e;

    memset(c, 0, sizeof(*c));
    c->p = p;
    c->ack_batch =
        cfg->prefetch / 2 < ACK_BATCH ? cfg->prefetch / 2 : ACK_BATCH;
    if (c->ack_batch == 0)
        c->ack_batch = 1;
    c->lease_ns = (int64_t)(cfg->consumer_timeout_ms / 2) * MS_NS;
    c->hold_ms = c->lease_ns > 0 && c->lease_ns / MS_NS < HOLD_MS
                     ? (uint64_t)(c->lease_ns / MS_NS)
                     : HOLD_MS;
    c->remember_ns = (c->lease_ns > (int64_t)c->hold_ms * MS_NS
                          ? c->lease_ns
                          : (int64_t)c->hold_ms * MS_NS) +
                     REMEMBER_EXTRA_NS;
    /* Entries outlive their slots: a few per slot, within reason. */
    c->n_recents = p->n_slots * 2 < 4096 ? p->n_slots * 2 : 4096;
    c->win = kiln__calloc(p->n_slots, sizeof(kiln__work *));     // NOLINT
    c->scratch = kiln__calloc(p->n_slots, sizeof(kiln__work *)); // NOLINT
    /* (arrays of pointers, on purpose) */
    c->recents = kiln__calloc(c->n_recents, sizeof(*c->recents));
    if (c->win == NULL || c->scratch == NULL || c->recents == NULL) {
        consumer_free_arrays(c);
        kiln__fail(err, KILN_ENOMEM, "pool: ack window");
        return KILN_ENOMEM; /* a constant: the analyzer follows it */
    }
    for (size_t i = p->n_slots; i-- > 0;) {
        p->slots[i].next = c->free_list;
        c->free_list = &p->slots[i];
    }
    /* Outcome copies go out through the pool's publisher. */
    e.code = KILN_OK;
    if ((c->pub = kiln__pool_publisher(p, &e)) == NULL ||
        (c->b = p->broker_new(p->broker_ctx, &p->cfg, &e)) == NULL) {
        kiln_err rc = e.code != KILN_OK ? e.code : KILN_EBROKER;
        consumer_free_arrays(c);
        kiln__fail(err, rc, "pool: %s",
                   e.code != KILN_OK ? e.message : "no broker object");
        return rc;
    }
    return KILN_OK;
}

static bool busy(const consumer *c)
{
    return c->in_workers > 0 || c->in_publisher > 0 || c->waiting > 0;
}

/* Stopping: no new deliveries; those not started go back to the queue as
 * copies with their counts unchanged (a nack would count them as a
 * delivery); running tasks finish and are settled, until the deadline. */
static kiln_err drain(consumer *c)
{
    kiln_pool *p = c->p;
    int64_t deadline =
        p->cfg.drain_timeout_ms == 0
            ? INT64_MAX
            : kiln__monotonic_ns() + (int64_t)p->cfg.drain_timeout_ms * MS_NS;
    kiln__work *w, *next;
    kiln_error e;

    c->draining = true;
    if (c->connected && c->b->ops->cancel != NULL &&
        c->b->ops->cancel(c->b, &e) != KILN_OK)
        lose(c, &e);
    if (c->connected)
        fetch(c); /* what the broker sent before the cancel */
    for (w = unqueue_all(p); w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        if (c->connected)
            hand_back(c, w, "the worker stops");
        else {
            c->in_workers--;
            settled(c, w);
        }
    }
    kiln__log(KILN_LOG_NOTICE, MODULE, "pool=%s draining: %zu task(s) running",
              p->name, c->in_workers);
    while (busy(c) && atomic_load(&p->stop_level) < 2 &&
           kiln__monotonic_ns() < deadline) {
        take_outcomes(c);
        take_sent(c);
        resend_due(c);
        maybe_flush(c, true);
        tick(c);
        if (busy(c))
            nap(c, 10);
    }
    take_outcomes(c);
    take_sent(c);
    maybe_flush(c, true);
    if (!busy(c))
        return KILN_OK;
    /* Workers retrying a store write stop now; their deliveries return
     * to the queue with the connection. */
    atomic_store(&p->abandon, true);
    return KILN_ETIMEDOUT;
}

static void consumer_fini(consumer *c)
{
    bool held = false;

    if (c->connected)
        c->b->ops->close(c->b);
    c->connected = false;
    /* Slots a worker or the publisher still has are released by
     * kiln_pool_free once those are stopped; the rest now. */
    for (size_t i = 0; i < c->p->n_slots; i++) {
        kiln__work *w = &c->p->slots[i];
        w->in_window = false;
        if (w->state == KILN__WORK_QUEUED || w->state == KILN__WORK_SENDING ||
            w->leasing)
            held = true;
        else if (w->state != KILN__WORK_FREE)
            work_release(c, w);
    }
    c->win_len = 0;
    if (held)
        c->p->leftover = c->b;
    else
        kiln__broker_destroy(c->b);
    consumer_free_arrays(c);
}

kiln_err kiln__consumer_run(kiln_pool *p, kiln_error *err)
{
    consumer c;
    kiln_err rc;

    if ((rc = consumer_init(&c, p, err)) != KILN_OK)
        return rc;
    while (atomic_load(&p->stop_level) == 0) {
        take_outcomes(&c);
        take_sent(&c);
        resend_due(&c);
        if (!c.connected) {
            reconnect(&c);
            continue;
        }
        check_leases(&c);
        if (c.connected && c.free_list != NULL)
            fetch(&c);
        else
            tick(&c);
        maybe_flush(&c, false);
        if (c.connected)
            wait_events(&c);
    }
    rc = drain(&c);
    if (rc != KILN_OK)
        kiln__fail(err, rc,
                   "pool %s: %zu task(s) still running when the drain ended; "
                   "their deliveries return to the queue",
                   p->name, c.in_workers);
    consumer_fini(&c);
    return rc;
}
