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
 */
#include "workerpool/pool.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

/* Flush acks when this many are waiting, or after ACK_DELAY_NS. */
#define ACK_BATCH    64
#define ACK_DELAY_NS (2 * 1000000LL)
/* Deliveries taken per loop turn, so outcomes are settled in between. */
#define FETCH_TURN 256
/* Longest sleep of an idle loop: bounds how late a stop is noticed when
 * the wake-up is lost, and lets consume send heartbeats. */
#define IDLE_WAIT_MS 200

typedef struct consumer {
    kiln_pool *p;
    kiln__broker *b;
    bool connected;
    unsigned attempt; /* reconnects since the last success */
    kiln__work **win; /* ring: deliveries in tag order */
    size_t win_head, win_len;
    kiln__work *free_list;
    size_t done_unacked; /* entries in state DONE */
    size_t ack_batch;
    int64_t flush_due_ns; /* 0: nothing waits */
    size_t in_workers;    /* QUEUED entries: in the queue or running */
    size_t orphans;       /* tasks of a lost connection still running */
    /* Outcomes that publish before their ack (retries, dead letters),
     * settled as one confirmed batch per turn; n_slots entries each. */
    kiln__work **batch;
    kiln__settle *settles;
    kiln_err *begun;     /* per outcome: its message could be built */
    kiln__message *msgs; /* the messages to confirm, in batch order */
    kiln_err *confirmed; /* per message */
    size_t n_batch;
} consumer;

static kiln__work *win_at(consumer *c, size_t i)
{
    return c->win[(c->win_head + i) % c->p->n_slots];
}

static void win_push(consumer *c, kiln__work *w)
{
    c->win[(c->win_head + c->win_len) % c->p->n_slots] = w;
    c->win_len++;
}

static void work_release(consumer *c, kiln__work *w)
{
    if (w->dl.body != NULL || w->dl.headers != NULL || w->dl.tag != 0)
        kiln__broker_release(c->b, &w->dl);
    kiln__job_release(&w->job);
    memset(w, 0, sizeof(*w));
    w->next = c->free_list;
    c->free_list = w;
}

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
 * nothing here may be acked any more. Jobs not started are dropped; tasks
 * already running finish, and their outcomes are dropped on arrival. */
static void lose(consumer *c, const kiln_error *why)
{
    kiln__work *w = unqueue_all(c->p), *next;

    kiln__log(KILN_LOG_WARN, "pool",
              "pool=%s lost its broker connection: %s; unacked deliveries "
              "return to the queue",
              c->p->name, why != NULL ? why->message : "closed");
    for (; w != NULL; w = next) {
        next = w->next;
        w->state = KILN__WORK_SETTLED; /* released by the sweep below */
        c->in_workers--;
    }
    for (size_t i = 0; i < c->win_len; i++) {
        kiln__work *e = win_at(c, i);
        if (e->state == KILN__WORK_QUEUED) {
            e->orphan = true; /* running now */
            c->orphans++;
        } else {
            work_release(c, e);
        }
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
    kiln__log(KILN_LOG_NOTICE, "pool", "pool=%s consuming queue=%s%s", p->name,
              p->cfg.queue, c->attempt > 0 ? " (reconnected)" : "");
    c->attempt = 0;
    return KILN_OK;
}

/* Sleeps until `ms` passed or a stop request came. */
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
    kiln__log(KILN_LOG_WARN, "pool",
              "pool=%s cannot reach the broker: %s; retrying in %llu ms",
              c->p->name, e.message, (unsigned long long)ms);
    nap(c, ms);
}

/* Acks what is finished. The finished prefix of the window goes in one
 * `multiple` ack; finished entries behind a running one are acked singly
 * (see the top of the file). */
static void flush_acks(consumer *c)
{
    uint64_t high = 0;
    kiln_error e;

    while (c->win_len > 0) {
        kiln__work *w = win_at(c, 0);
        if (w->state != KILN__WORK_DONE && w->state != KILN__WORK_SETTLED)
            break;
        if (w->state == KILN__WORK_DONE) {
            high = w->dl.tag;
            c->done_unacked--;
        }
        c->win_head = (c->win_head + 1) % c->p->n_slots;
        c->win_len--;
        work_release(c, w);
    }
    if (high != 0 && kiln__broker_ack(c->b, high, true, &e) != KILN_OK) {
        lose(c, &e);
        return;
    }
    for (size_t i = 0; c->done_unacked > 0 && i < c->win_len; i++) {
        kiln__work *w = win_at(c, i);
        if (w->state != KILN__WORK_DONE)
            continue;
        if (kiln__broker_ack(c->b, w->dl.tag, false, &e) != KILN_OK) {
            lose(c, &e);
            return;
        }
        w->state = KILN__WORK_SETTLED;
        c->done_unacked--;
    }
    c->flush_due_ns = 0;
}

/* Releases the settled entries anywhere in the window and keeps the rest
 * in tag order. Without it a window of only retried or dead-lettered
 * deliveries (never DONE, so never flushed) would keep every slot, and a
 * slow task at the head would keep the slots of all finished behind it:
 * the consumer would stop taking deliveries. */
static void compact(consumer *c)
{
    size_t i = 0, kept, n = c->win_len;

    while (i < n && win_at(c, i)->state != KILN__WORK_SETTLED)
        i++; /* the usual case: nothing to move */
    for (kept = i; i < n; i++) {
        kiln__work *w = win_at(c, i);
        if (w->state == KILN__WORK_SETTLED) {
            work_release(c, w);
            continue;
        }
        /* kept <= i: never overwrites an entry still to be read */
        c->win[(c->win_head + kept) % c->p->n_slots] = w;
        kept++;
    }
    c->win_len = kept;
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

/* Settles a job whose verdict is not a plain ack: dead-letter, retry or
 * requeue (each confirmed before the delivery is acked). */
static void settle_other(consumer *c, kiln__work *w)
{
    kiln_error e;

    if (kiln__dispatch_settle(&c->p->dispatch, c->b, &w->dl, &w->job, &e) !=
        KILN_OK) {
        w->state = KILN__WORK_SETTLED;
        lose(c, &e);
        return;
    }
    w->state = KILN__WORK_SETTLED;
}

static void finish(consumer *c, kiln__work *w)
{
    if (w->job.verdict == KILN__VERDICT_ACK) {
        w->state = KILN__WORK_DONE;
        if (c->done_unacked++ == 0)
            c->flush_due_ns = kiln__monotonic_ns() + ACK_DELAY_NS;
        return;
    }
    settle_other(c, w);
}

/* Settles the batched outcomes: their messages go out as one publish with
 * one wait for the confirms, then each confirmed delivery is acked. A
 * message that was not confirmed leaves its delivery unacked, and the
 * connection is dropped so that the broker redelivers it (as a single
 * settle does). */
static void settle_batch(consumer *c)
{
    size_t n = c->n_batch, n_msgs = 0, k = 0;
    kiln_error e, pub = {KILN_OK, ""}, why = {KILN_OK, ""};

    c->n_batch = 0;
    for (size_t i = 0; i < n; i++) {
        kiln__work *w = c->batch[i];
        kiln__settle *s = &c->settles[i];
        c->begun[i] =
            kiln__settle_begin(&c->p->dispatch, &w->dl, &w->job, s, &e);
        if (c->begun[i] != KILN_OK && why.code == KILN_OK)
            why = e;
        if (s->publish) /* false when begin failed */
            c->msgs[n_msgs++] = s->msg;
    }
    if (n_msgs > 0)
        (void)kiln__broker_publish(c->b, c->msgs, n_msgs, c->confirmed, &pub);
    for (size_t i = 0; i < n; i++) {
        kiln__work *w = c->batch[i];
        kiln__settle *s = &c->settles[i];
        bool refused = s->publish && c->confirmed[k++] != KILN_OK;
        w->state = KILN__WORK_SETTLED;
        if (refused && why.code == KILN_OK) {
            why = pub;
            kiln__prefix(&why, "%s", s->what);
        }
        if (c->begun[i] != KILN_OK || refused) {
            kiln__settle_discard(s);
        } else if (kiln__settle_end(c->b, &w->dl, s, &e) != KILN_OK &&
                   why.code == KILN_OK) {
            why = e;
        }
    }
    if (why.code != KILN_OK)
        lose(c, &why);
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
        /* An orphan's connection is gone, and after a loss the broker
         * redelivers anyway: only a live delivery is settled. */
        if (w->orphan)
            c->orphans--;
        if (w->orphan || !c->connected)
            work_release(c, w);
        else if (w->job.verdict == KILN__VERDICT_ACK)
            finish(c, w);
        else
            c->batch[c->n_batch++] = w;
    }
    if (c->n_batch > 0)
        settle_batch(c);
}

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

/* True when the task of `w` is still running here on behalf of a lost
 * connection: the broker redelivered it, and running it again now would
 * run it twice at once. It goes back through the delay queues instead,
 * until the first run is over. Orphans are rare, so this costs nothing
 * on the usual path. */
static bool still_running(consumer *c, kiln__work *w)
{
    const char *uuid = w->job.sig->uuid;

    for (size_t i = 0; c->orphans > 0 && i < c->p->n_slots; i++) {
        kiln__work *o = &c->p->slots[i];
        if (o->orphan && o->state == KILN__WORK_QUEUED && o->job.sig != NULL &&
            strcmp(o->job.sig->uuid, uuid) == 0) {
            kiln__job_hold(&w->job, 1000);
            kiln__log_task(KILN_LOG_NOTICE, "pool", uuid, w->job.sig->name,
                           "redelivered while its first run is still going "
                           "on here: back to the delay queues for 1 s");
            return true;
        }
    }
    return false;
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
        if (rc == KILN_ETIMEDOUT)
            break;
        if (rc != KILN_OK) {
            enqueue(c, head, tail, n);
            lose(c, &e);
            return;
        }
        c->free_list = w->next;
        w->next = NULL;
        win_push(c, w);
        if (!kiln__dispatch_prepare(&c->p->dispatch, &w->dl, &w->job) ||
            (c->orphans > 0 && w->job.fn != NULL && still_running(c, w))) {
            /* Bad input, decided without a worker. Its settling may lose
             * the connection, so the jobs gathered so far go to the
             * workers first: a loss then finds them queued, not adrift. */
            enqueue(c, head, tail, n);
            head = tail = NULL;
            n = 0;
            finish(c, w);
            if (!c->connected)
                return;
            continue;
        }
        w->state = KILN__WORK_QUEUED;
        if (tail != NULL)
            tail->next = w;
        else
            head = w;
        tail = w;
        n++;
    }
    enqueue(c, head, tail, n);
}

/* Waits for a delivery, an outcome, a stop request or the next ack flush. */
static void wait_events(consumer *c)
{
    struct pollfd pfd[2] = {{.fd = c->p->wake_fd, .events = POLLIN},
                            {.fd = -1, .events = POLLIN}};
    int timeout = IDLE_WAIT_MS, nfds = 1;
    uint64_t drained;
    const kiln__broker_ops *ops = c->b->ops;

    /* Frames already in memory: do not sleep, unless the window is full,
     * when they must wait for a free slot anyway. */
    if (c->connected && c->free_list != NULL && ops->pending != NULL &&
        ops->pending(c->b))
        return;
    if (c->flush_due_ns != 0) {
        int64_t left = (c->flush_due_ns - kiln__monotonic_ns()) / 1000000;
        timeout = left < 0 ? 0 : (int)left + 1;
    }
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

static void consumer_free_arrays(consumer *c)
{
    kiln__free(c->win);
    kiln__free(c->batch);
    kiln__free(c->settles);
    kiln__free(c->begun);
    kiln__free(c->msgs);
    kiln__free(c->confirmed);
}

static kiln_err consumer_init(consumer *c, kiln_pool *p, kiln_error *err)
{
    memset(c, 0, sizeof(*c));
    c->p = p;
    c->ack_batch =
        p->cfg.prefetch / 2 < ACK_BATCH ? p->cfg.prefetch / 2 : ACK_BATCH;
    if (c->ack_batch == 0)
        c->ack_batch = 1;
    c->win = kiln__calloc(p->n_slots, sizeof(kiln__work *)); // NOLINT
    /* (arrays of pointers, on purpose) */
    c->batch = kiln__calloc(p->n_slots, sizeof(kiln__work *)); // NOLINT
    c->settles = kiln__calloc(p->n_slots, sizeof(*c->settles));
    c->begun = kiln__calloc(p->n_slots, sizeof(*c->begun));
    c->msgs = kiln__calloc(p->n_slots, sizeof(*c->msgs));
    c->confirmed = kiln__calloc(p->n_slots, sizeof(*c->confirmed));
    if (c->win == NULL || c->batch == NULL || c->settles == NULL ||
        c->begun == NULL || c->msgs == NULL || c->confirmed == NULL) {
        consumer_free_arrays(c);
        kiln__fail(err, KILN_ENOMEM, "pool: ack window");
        return KILN_ENOMEM;
    }
    for (size_t i = p->n_slots; i-- > 0;) {
        p->slots[i].next = c->free_list;
        c->free_list = &p->slots[i];
    }
    c->b = p->broker_new(p->broker_ctx, &p->cfg, err);
    if (c->b == NULL) {
        consumer_free_arrays(c);
        if (err == NULL || err->code == KILN_OK)
            return kiln__fail(err, KILN_EBROKER, "pool: no broker object");
        return err->code;
    }
    return KILN_OK;
}

static void tick(consumer *c);

/* Stopping: no new deliveries, jobs not started go back to the queue,
 * running ones finish and are acked, until the drain deadline. */
static kiln_err drain(consumer *c)
{
    kiln_pool *p = c->p;
    int64_t deadline =
        p->cfg.drain_timeout_ms == 0
            ? INT64_MAX
            : kiln__monotonic_ns() + (int64_t)p->cfg.drain_timeout_ms * 1000000;
    kiln__work *w = unqueue_all(p), *next;
    kiln_error e;

    if (c->connected && c->b->ops->cancel != NULL &&
        c->b->ops->cancel(c->b, &e) != KILN_OK)
        lose(c, &e);
    for (; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        c->in_workers--;
        w->state = KILN__WORK_SETTLED;
        if (c->connected &&
            kiln__broker_nack(c->b, w->dl.tag, true, &e) != KILN_OK)
            lose(c, &e);
    }
    kiln__log(KILN_LOG_NOTICE, "pool", "pool=%s draining: %zu task(s) running",
              p->name, c->in_workers);
    while (c->in_workers > 0 && atomic_load(&p->stop_level) < 2 &&
           kiln__monotonic_ns() < deadline) {
        take_outcomes(c);
        maybe_flush(c, true);
        tick(c);
        if (c->in_workers > 0)
            nap(c, 10);
    }
    take_outcomes(c);
    maybe_flush(c, true);
    if (c->in_workers == 0)
        return KILN_OK;
    /* Workers retrying a store write stop now; their deliveries return
     * to the queue with the connection. */
    atomic_store(&p->abandon, true);
    return KILN_ETIMEDOUT;
}

static void consumer_fini(consumer *c)
{
    bool running = false;

    if (c->connected)
        c->b->ops->close(c->b);
    for (size_t i = 0; i < c->win_len; i++) {
        kiln__work *w = win_at(c, i);
        if (w->state == KILN__WORK_QUEUED)
            running = true; /* kiln_pool_free releases it */
        else
            work_release(c, w);
    }
    /* Orphans of an earlier connection may still run as well. */
    for (size_t i = 0; i < c->p->n_slots; i++)
        if (c->p->slots[i].state == KILN__WORK_QUEUED)
            running = true;
    if (running)
        c->p->leftover = c->b;
    else
        kiln__broker_destroy(c->b);
    consumer_free_arrays(c);
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

kiln_err kiln__consumer_run(kiln_pool *p, kiln_error *err)
{
    consumer c;
    kiln_err rc;

    if ((rc = consumer_init(&c, p, err)) != KILN_OK)
        return rc;
    while (atomic_load(&p->stop_level) == 0) {
        if (!c.connected) {
            reconnect(&c);
            take_outcomes(&c);
            continue;
        }
        take_outcomes(&c);
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
