/*
 * The consumer loop of kiln_pool_start. One thread owns the consuming
 * broker connection: it takes deliveries, hands them to the workers
 * undecoded (a worker decodes, validates, looks up and runs), settles
 * their outcomes and acknowledges. It moves bytes: one consumer thread
 * keeps up with as many workers as the broker can feed.
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
 * look-ups go by task key (the message id, else the UUID: kiln__work.key)
 * over the slots and a small table of recent outcomes, and only for
 * deliveries that say they were delivered before: those alone the
 * consumer decodes, so the usual path pays nothing for them.
 */
#include "workerpool/consumer.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"
#include "workerpool/retry.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#define MODULE "pool"

/* Flush acks when this many are waiting, or after KILN__ACK_DELAY_NS. */
#define ACK_BATCH 64
/* Deliveries taken per loop turn, so outcomes are settled in between. */
#define FETCH_TURN 256
/* Longest sleep of an idle loop: bounds how late a stop is noticed when
 * the wake-up is lost, and lets consume send heartbeats. */
#define IDLE_WAIT_MS 200

/* ---- slots and the window ------------------------------------------------ */

static void win_push(kiln__consumer *c, kiln__work *w)
{
    c->win[(c->win_head + c->win_len) % c->p->n_slots] = w;
    c->win_len++;
    w->in_window = true;
}

static void work_release(kiln__consumer *c, kiln__work *w)
{
    kiln__work_copy *copy = w->copy; /* the slot's for good */

    if (w->dl.body != NULL || w->dl.headers != NULL || w->dl.tag != 0)
        kiln__broker_release(c->b, &w->dl);
    kiln__settle_discard(&w->copy->settle);
    kiln__job_release(&w->job);
    memset(w, 0, sizeof(*w));
    w->copy = copy;
    w->next = c->free_list;
    c->free_list = w;
}

/* Nothing is left to do for `w`: its slot is free once it is out of the
 * window (the window drops it at the next compaction). */
void kiln__consumer_settled(kiln__consumer *c, kiln__work *w)
{
    w->state = KILN__WORK_SETTLED;
    w->live = false;
    if (c->parked > 0)
        kiln__consumer_unpark(c, w);
    if (!w->in_window)
        work_release(c, w);
}

/* Drops what is no longer live from the window, keeping tag order, and
 * frees the slots of those settled. */
static void compact(kiln__consumer *c)
{
    size_t i = 0, kept, n = c->win_len;

    while (i < n && kiln__consumer_win_at(c, i)->live)
        i++; /* the usual case: nothing to move */
    for (kept = i; i < n; i++) {
        kiln__work *w = kiln__consumer_win_at(c, i);
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
void kiln__consumer_lose(kiln__consumer *c, const kiln_error *why)
{
    kiln__work *w = unqueue_all(c->p), *next;

    kiln__log(KILN_LOG_WARN, MODULE,
              "pool=%s lost its broker connection: %s; unacked deliveries "
              "return to the queue",
              c->p->name, why != NULL ? why->message : "closed");
    kiln__pool_ready(c->p, false, why);
    for (; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        c->in_workers--;
        if (kiln__work_key(w) == NULL) {
            /* Raw, without a message id: its UUID, read without a
             * decode (no worker has it). */
            kiln__dispatch_task_ids(&c->p->dispatch, &w->dl, w->job.failed_uuid,
                                    w->job.failed_name,
                                    sizeof(w->job.failed_uuid));
            kiln__work_set_key(w);
        }
        kiln__consumer_remember(c, kiln__work_key(w), KILN__RECENT_UNSTARTED);
        w->state = KILN__WORK_SETTLED; /* released with the window below */
    }
    for (size_t i = 0; i < c->win_len; i++) {
        kiln__work *e = kiln__consumer_win_at(c, i);
        e->in_window = false;
        e->live = false;
        if (e->state == KILN__WORK_DONE)
            kiln__consumer_remember(c, kiln__work_key(e), KILN__RECENT_DONE);
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
    kiln__broker_close(c->b);
    c->connected = false;
}

static kiln_err connect_all(kiln__consumer *c, kiln_error *err)
{
    kiln_pool *p = c->p;
    kiln_err rc;

    if ((rc = kiln__broker_connect(c->b, err)) != KILN_OK ||
        (rc = kiln__broker_declare(c->b, &p->cfg, err)) != KILN_OK ||
        (rc = kiln__broker_subscribe(c->b, p->cfg.queue, p->cfg.prefetch,
                                     err)) != KILN_OK) {
        kiln__broker_close(c->b);
        return rc;
    }
    c->connected = true;
    /* The line kiln_pool_wait_ready stands for; the README documents it. */
    kiln__log(KILN_LOG_NOTICE, MODULE, "pool=%s consuming queue=%s%s", p->name,
              p->cfg.queue, c->attempt > 0 ? " (reconnected)" : "");
    c->attempt = 0;
    kiln__pool_ready(p, true, NULL);
    return KILN_OK;
}

/* Sleeps until `ms` passed or a wake-up came. */
static void nap(kiln__consumer *c, uint64_t ms)
{
    struct pollfd pfd = {.fd = c->p->wake_fd, .events = POLLIN};
    uint64_t drained;

    if (poll(&pfd, 1, ms > 60000 ? 60000 : (int)ms) > 0 &&
        read(c->p->wake_fd, &drained, sizeof(drained)) < 0) {
        /* EAGAIN: another reader got there first; nothing to do. */
    }
}

static void reconnect(kiln__consumer *c)
{
    kiln_error e;
    uint64_t ms;

    if (connect_all(c, &e) == KILN_OK)
        return;
    kiln__pool_ready(c->p, false, &e);
    ms = kiln__backoff_ms(c->attempt++, KILN__RECONNECT_BASE_MS,
                          KILN__RECONNECT_CAP_MS);
    kiln__log(KILN_LOG_WARN, MODULE,
              "pool=%s cannot reach the broker: %s; retrying in %llu ms",
              c->p->name, e.message, (unsigned long long)ms);
    nap(c, ms);
}

/* Keeps an idle connection alive when the loop is not consuming (window
 * full, or draining): heartbeats, and the server's frames. */
static void tick(kiln__consumer *c)
{
    kiln_error e;

    if (c->connected && kiln__broker_tick(c->b, &e) != KILN_OK && c->connected)
        kiln__consumer_lose(c, &e);
}

/* ---- acks ---------------------------------------------------------------- */

static void acked(kiln__consumer *c, kiln__work *w)
{
    c->done_unacked--;
    kiln__consumer_settled(c, w);
}

/* Acks what is finished. The finished prefix of the window goes in one
 * `multiple` ack; finished entries behind a running one are acked singly
 * (see the top of the file). */
static void flush_acks(kiln__consumer *c)
{
    uint64_t high = 0;
    size_t prefix;
    kiln_error e;

    if (atomic_load(&c->p->hold_acks))
        return;
    for (prefix = 0; prefix < c->win_len; prefix++) {
        kiln__work *w = kiln__consumer_win_at(c, prefix);
        if (!w->live)
            continue;
        if (w->state != KILN__WORK_DONE)
            break;
        high = w->dl.tag;
    }
    if (high != 0) {
        if (kiln__broker_ack(c->b, high, true, &e) != KILN_OK) {
            kiln__consumer_lose(c, &e);
            return;
        }
        for (size_t i = 0; i < prefix; i++)
            if (kiln__consumer_win_at(c, i)->live)
                acked(c, kiln__consumer_win_at(c, i));
    }
    for (size_t i = prefix; c->done_unacked > 0 && i < c->win_len; i++) {
        kiln__work *w = kiln__consumer_win_at(c, i);
        if (!w->live || w->state != KILN__WORK_DONE)
            continue;
        if (kiln__broker_ack(c->b, w->dl.tag, false, &e) != KILN_OK) {
            kiln__consumer_lose(c, &e);
            return;
        }
        acked(c, w);
    }
    c->flush_due_ns = 0;
}

void kiln__consumer_flush(kiln__consumer *c, bool force)
{
    if (!c->connected)
        return;
    if (c->done_unacked > 0 && (force || c->done_unacked >= c->ack_batch ||
                                kiln__monotonic_ns() >= c->flush_due_ns))
        flush_acks(c);
    if (c->connected)
        compact(c);
}

/* ---- deliveries ---------------------------------------------------------- */

/* Hands a batch of ready jobs to the workers under one lock. */
void kiln__consumer_enqueue(kiln__consumer *c, kiln__work *head,
                            kiln__work *tail, size_t n)
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

/* A new delivery goes to a worker undecoded: the consumer reads only its
 * headers, for the counts a copy made before the worker takes it (a
 * hand-back) or while it runs (a lease) must carry. */
static void take_raw(kiln__work *w)
{
    w->raw = true;
    w->retries_seen = kiln__header_uint(&w->dl, KILN__HDR_RETRIES);
    w->deliveries_seen = kiln__earlier_deliveries(&w->dl);
    if (w->dl.message_id != NULL && w->dl.message_id[0] != '\0')
        atomic_store_explicit(&w->key, w->dl.message_id, memory_order_relaxed);
}

/* Takes deliveries that already arrived, without waiting. */
static void fetch(kiln__consumer *c)
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
            kiln__consumer_enqueue(c, head, tail, n);
            kiln__consumer_lose(c, &e);
            return;
        }
        c->free_list = w->next;
        w->next = NULL;
        w->live = true;
        w->state = KILN__WORK_QUEUED;
        w->taken_ns = kiln__monotonic_ns();
        win_push(c, w);
        if (!c->draining && !kiln__delivery_seen_before(&w->dl)) {
            /* The usual case: a worker decodes it. */
            take_raw(w);
        } else {
            switch (kiln__consumer_admit(c, w)) {
            case KILN__ADMIT_RUN:
                break;
            case KILN__ADMIT_PARKED:
                continue;
            case KILN__ADMIT_DECIDED:
                /* Decided without a worker. Its settling may lose the
                 * connection, so the jobs gathered so far go to the
                 * workers first: a loss then finds them queued, not
                 * adrift. */
                kiln__consumer_enqueue(c, head, tail, n);
                head = tail = NULL;
                n = 0;
                kiln__consumer_conclude(c, w);
                if (!c->connected)
                    return;
                continue;
            }
        }
        if (tail != NULL)
            tail->next = w;
        else
            head = w;
        tail = w;
        n++;
    }
    kiln__consumer_enqueue(c, head, tail, n);
}

/* The next moment the loop has something to do without a wake-up. */
static int64_t next_due(kiln__consumer *c)
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
static void wait_events(kiln__consumer *c)
{
    struct pollfd pfd[2] = {{.fd = c->p->wake_fd, .events = POLLIN},
                            {.fd = -1, .events = POLLIN}};
    int64_t left = (next_due(c) - kiln__monotonic_ns()) / MS_NS;
    int timeout = left < 0 ? 0 : (int)left + 1, nfds = 1;
    uint64_t drained;

    /* Frames already in memory: do not sleep, unless the window is full,
     * when they must wait for a free slot anyway. */
    if (c->connected && c->free_list != NULL && kiln__broker_pending(c->b))
        return;
    if (c->connected && c->free_list != NULL) {
        pfd[1].fd = kiln__broker_poll_fd(c->b);
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

static void consumer_free_arrays(kiln__consumer *c)
{
    kiln__free(c->win);
    kiln__free(c->scratch);
    kiln__free(c->recents);
}

static kiln_err consumer_init(kiln__consumer *c, kiln_pool *p, kiln_error *err)
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
    c->hold_ms = c->lease_ns > 0 && c->lease_ns / MS_NS < KILN__HOLD_MS
                     ? (uint64_t)(c->lease_ns / MS_NS)
                     : KILN__HOLD_MS;
    c->remember_ns = (c->lease_ns > (int64_t)c->hold_ms * MS_NS
                          ? c->lease_ns
                          : (int64_t)c->hold_ms * MS_NS) +
                     KILN__REMEMBER_EXTRA_NS;
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

static bool busy(const kiln__consumer *c)
{
    return c->in_workers > 0 || c->in_publisher > 0 || c->waiting > 0;
}

/* Stopping: no new deliveries; those not started go back to the queue as
 * copies with their counts unchanged (a nack would count them as a
 * delivery); running tasks finish and are settled, until the deadline. */
static kiln_err drain(kiln__consumer *c)
{
    kiln_pool *p = c->p;
    int64_t deadline =
        p->cfg.drain_timeout_ms == 0
            ? INT64_MAX
            : kiln__monotonic_ns() + (int64_t)p->cfg.drain_timeout_ms * MS_NS;
    kiln__work *w, *next;
    kiln_error e;

    c->draining = true;
    kiln__pool_ready(p, false, NULL);
    if (c->connected && kiln__broker_cancel(c->b, &e) != KILN_OK)
        kiln__consumer_lose(c, &e);
    if (c->connected)
        fetch(c); /* what the broker sent before the cancel */
    for (w = unqueue_all(p); w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        if (c->connected)
            kiln__consumer_hand_back(c, w, "the worker stops");
        else {
            c->in_workers--;
            kiln__consumer_settled(c, w);
        }
    }
    kiln__log(KILN_LOG_NOTICE, MODULE, "pool=%s draining: %zu task(s) running",
              p->name, c->in_workers);
    while (busy(c) && atomic_load(&p->stop_level) < 2 &&
           kiln__monotonic_ns() < deadline) {
        kiln__consumer_take_outcomes(c);
        kiln__consumer_take_sent(c);
        kiln__consumer_resend_due(c);
        kiln__consumer_flush(c, true);
        tick(c);
        if (busy(c))
            nap(c, 10);
    }
    kiln__consumer_take_outcomes(c);
    kiln__consumer_take_sent(c);
    kiln__consumer_flush(c, true);
    if (!busy(c))
        return KILN_OK;
    /* Workers retrying a store write stop now; their deliveries return
     * to the queue with the connection. */
    atomic_store(&p->abandon, true);
    return KILN_ETIMEDOUT;
}

static void consumer_fini(kiln__consumer *c)
{
    bool held = false;

    if (c->connected)
        kiln__broker_close(c->b);
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
    kiln__consumer c;
    kiln_err rc;

    if ((rc = consumer_init(&c, p, err)) != KILN_OK)
        return rc;
    while (atomic_load(&p->stop_level) == 0) {
        kiln__consumer_take_outcomes(&c);
        kiln__consumer_take_sent(&c);
        kiln__consumer_resend_due(&c);
        if (!c.connected) {
            reconnect(&c);
            continue;
        }
        kiln__consumer_check_leases(&c);
        if (c.connected && c.free_list != NULL)
            fetch(&c);
        else
            tick(&c);
        kiln__consumer_flush(&c, false);
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
