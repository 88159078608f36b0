/* The pool's state writer: the task states of all workers go to the
 * store in bulk (DESIGN "Where the time goes": never make a thread wait
 * for a round trip it could share), as the publisher coalesces confirms.
 *
 * A worker queues its task's STARTED before the run and does not wait for
 * it; when the task ends, its delivery comes here with the final (or
 * RETRY) state still to write, instead of going to the consumer. Each
 * turn the writer takes everything queued (at most KILN__WRITER_BULK),
 * writes it with one set_states call, and hands the deliveries whose
 * state is written to the consumer, which acks them: "ack only after the
 * final state is written" holds per delivery, and a document that failed
 * holds back only its own. A lone task is written at once: nothing waits
 * for a batch to fill. The STARTED and the final state of one task never
 * go as two writes of one bulk (its order is not kept): a final state
 * whose STARTED is still queued takes it along as one write, one whose
 * STARTED is being written waits for the next turn.
 *
 * A failed final write is retried with backoff, its delivery unacked,
 * until it succeeds or the pool gives up (the verdict is then REQUEUE),
 * as kiln__dispatch describes for a worker's own write; non-final states
 * are written once and skipped while an outage is known. */
#include "workerpool/pool.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"

#include <errno.h>
#include <stddef.h>
#include <time.h>

#define RETRY_BASE_MS 100
#define RETRY_CAP_MS  5000
#define IDLE_WAIT_MS  50 /* re-checks give_up() while retries wait */

typedef struct batch {
    kiln__work *w[KILN__WRITER_BULK];
    bool start[KILN__WRITER_BULK];  /* its STARTED, else its final write */
    bool merged[KILN__WRITER_BULK]; /* a final write that takes its STARTED
                                       along */
    kiln__state_update u[KILN__WRITER_BULK];
    kiln_err st[KILN__WRITER_BULK];
    size_t n;
    kiln__work *retry; /* final writes that failed: the writer's own */
    kiln__work *done_head, *done_tail;
} batch;

static kiln__work *work_of(kiln__job *job)
{
    return (kiln__work *)(void *)((char *)job - offsetof(kiln__work, job));
}

/* dispatch.started: queued before the task runs, not waited for. */
static void on_started(void *ctx, kiln__job *job)
{
    kiln_pool *p = ctx;
    kiln__work *w = work_of(job);

    pthread_mutex_lock(&p->mu);
    if (kiln__dispatch_outage_known(&p->dispatch)) {
        /* It would fail too: the final write counts the run instead. */
        w->wr_start_owed = true;
        pthread_mutex_unlock(&p->mu);
        return;
    }
    w->wr_start = KILN__WR_QUEUED;
    w->wr_start_next = NULL;
    if (p->wr_start_tail != NULL)
        p->wr_start_tail->wr_start_next = w;
    else
        p->wr_start_head = w;
    p->wr_start_tail = w;
    pthread_cond_signal(&p->writer_cv);
    pthread_mutex_unlock(&p->mu);
}

void kiln__writer_put(kiln_pool *p, kiln__work *w)
{
    pthread_mutex_lock(&p->mu);
    w->next = NULL;
    if (p->wr_tail != NULL)
        p->wr_tail->next = w;
    else
        p->wr_head = w;
    p->wr_tail = w;
    pthread_cond_signal(&p->writer_cv);
    pthread_mutex_unlock(&p->mu);
}

static bool queued(const kiln_pool *p)
{
    return p->wr_start_head != NULL || p->wr_head != NULL;
}

static int64_t first_due(const batch *b)
{
    int64_t due = INT64_MAX;

    for (const kiln__work *w = b->retry; w != NULL; w = w->next)
        if (w->wr_due_ns < due)
            due = w->wr_due_ns;
    return due;
}

/* Waits for work, a due retry or the stop. p->mu held. */
static void wait_turn(kiln_pool *p, const batch *b)
{
    while (!queued(p) && !p->writer_stop) {
        int64_t now = kiln__monotonic_ns(), due = first_due(b);
        struct timespec ts;

        if (due <= now)
            return;
        if (due == INT64_MAX) {
            pthread_cond_wait(&p->writer_cv, &p->mu);
            continue;
        }
        if (due - now > IDLE_WAIT_MS * 1000000LL)
            due = now + IDLE_WAIT_MS * 1000000LL;
        ts.tv_sec = (time_t)(due / 1000000000LL);
        ts.tv_nsec = (long)(due % 1000000000LL);
        if (pthread_cond_timedwait(&p->writer_cv, &p->mu, &ts) == ETIMEDOUT)
            return; /* give_up() may have changed */
    }
}

/* Unlinks w's STARTED from the queue. p->mu held. */
static void unqueue_start(kiln_pool *p, kiln__work *w)
{
    kiln__work **pp = &p->wr_start_head, *prev = NULL;

    for (; *pp != NULL; prev = *pp, pp = &(*pp)->wr_start_next) {
        if (*pp != w)
            continue;
        *pp = w->wr_start_next;
        if (p->wr_start_tail == w)
            p->wr_start_tail = prev;
        w->wr_start_next = NULL;
        return;
    }
}

/* Takes the finished deliveries (a final write takes along its task's
 * STARTED when that is still queued, and waits for the next turn when
 * it is being written), then the STARTED writes left. p->mu held. */
static void take(kiln_pool *p, batch *b)
{
    kiln__work **pp;

    for (pp = &p->wr_head; *pp != NULL && b->n < KILN__WRITER_BULK;) {
        kiln__work *w = *pp;
        if (w->wr_start == KILN__WR_SENT) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->next = NULL;
        if (w->wr_start == KILN__WR_QUEUED) {
            unqueue_start(p, w);
            w->wr_start_owed = true;
        }
        b->merged[b->n] = w->wr_start_owed;
        w->wr_start = 0;
        b->start[b->n] = false;
        b->w[b->n++] = w;
    }
    /* The tail is the last entry still in the list. */
    p->wr_tail = NULL;
    for (kiln__work *w = p->wr_head; w != NULL; w = w->next)
        p->wr_tail = w;
    while (p->wr_start_head != NULL && b->n < KILN__WRITER_BULK) {
        kiln__work *w = p->wr_start_head;
        p->wr_start_head = w->wr_start_next;
        if (p->wr_start_head == NULL)
            p->wr_start_tail = NULL;
        w->wr_start_next = NULL;
        w->wr_start = KILN__WR_SENT;
        b->start[b->n] = true;
        b->merged[b->n] = false;
        b->w[b->n++] = w;
    }
}

static void to_done(batch *b, kiln__work *w)
{
    w->next = NULL;
    w->wr_attempts = 0;
    if (b->done_tail != NULL)
        b->done_tail->next = w;
    else
        b->done_head = w;
    b->done_tail = w;
}

/* Due retries join the batch. */
static void take_retries(batch *b, int64_t now)
{
    kiln__work **pp = &b->retry;

    while (*pp != NULL && b->n < KILN__WRITER_BULK) {
        kiln__work *w = *pp;
        if (w->wr_due_ns > now) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->next = NULL;
        b->start[b->n] = false;
        b->merged[b->n] = w->wr_start_owed;
        b->w[b->n++] = w;
    }
}

/* A final write failed: again after a backoff, or REQUEUE when the pool
 * gives up. */
static void failed_final(kiln_pool *p, batch *b, kiln__work *w)
{
    const kiln__dispatch *d = &p->dispatch;

    if (p->writer_stop || d->give_up == NULL || d->give_up(d->give_up_ctx)) {
        w->job.verdict = KILN__VERDICT_REQUEUE;
        to_done(b, w);
        return;
    }
    w->wr_due_ns = kiln__monotonic_ns() +
                   (int64_t)kiln__backoff_ms(w->wr_attempts++, RETRY_BASE_MS,
                                             RETRY_CAP_MS) *
                       1000000LL;
    w->next = b->retry;
    b->retry = w;
}

/* Writes the batch and sorts out what each write did. */
static void write_batch(kiln_pool *p, batch *b)
{
    const kiln__dispatch *d = &p->dispatch;
    bool outage = kiln__dispatch_outage_known(d);
    kiln__state_update u[KILN__WRITER_BULK];
    size_t map[KILN__WRITER_BULK], m = 0;
    kiln_err st[KILN__WRITER_BULK];
    kiln_error e;

    for (size_t k = 0; k < b->n; k++)
        b->st[k] = KILN_OK;
    for (size_t k = 0; k < b->n; k++) {
        kiln__work *w = b->w[k];
        if (b->start[k]) {
            if (outage) {
                b->st[k] = KILN_ESTORE; /* not written: owed */
                continue;
            }
            u[m] = (kiln__state_update){.uuid = w->job.sig->uuid,
                                        .task_name = w->job.sig->name,
                                        .state = KILN_STATE_STARTED};
        } else if (!w->job.write ||
                   (outage && !kiln__state_finished(w->job.write_state))) {
            continue;
        } else {
            kiln__dispatch_write_of(&w->job, &u[m]);
            u[m].started = b->merged[k];
        }
        map[m++] = k;
    }
    if (m > 0) {
        (void)kiln__store_set_states(d->store, u, m, st, &e);
        for (size_t j = 0; j < m; j++) {
            b->st[map[j]] = st[j];
            if (st[j] != KILN_OK) {
                kiln_error one = e;
                kiln__fail(&one, st[j], "%s", e.message);
                kiln__dispatch_store_failed(d, &u[j], &one);
            }
        }
    }
}

/* After the write: STARTED entries free their task's final write; the
 * deliveries whose state is written go to the consumer. */
static void settle_batch(kiln_pool *p, batch *b)
{
    const kiln__dispatch *d = &p->dispatch;
    bool any_ok = false;

    pthread_mutex_lock(&p->mu);
    for (size_t k = 0; k < b->n; k++) {
        if (!b->start[k])
            continue;
        b->w[k]->wr_start = 0;
        if (b->st[k] != KILN_OK) /* the final write counts the run */
            b->w[k]->wr_start_owed = true;
    }
    pthread_mutex_unlock(&p->mu);
    for (size_t k = 0; k < b->n; k++) {
        kiln__work *w = b->w[k];
        if (b->start[k])
            continue;
        if (b->st[k] == KILN_OK || !kiln__state_finished(w->job.write_state)) {
            if (b->st[k] == KILN_OK && w->job.write)
                any_ok = true;
            w->wr_start_owed = false;
            to_done(b, w);
        } else {
            failed_final(p, b, w);
        }
    }
    if (any_ok)
        kiln__dispatch_store_ok(d, 0);
    if (b->done_head != NULL)
        kiln__pool_done(p, b->done_head, b->done_tail);
    b->done_head = b->done_tail = NULL;
    b->n = 0;
}

static void *writer_main(void *arg)
{
    kiln_pool *p = arg;
    batch *b = kiln__calloc(1, sizeof(*b));
    bool stop;

    if (b == NULL) /* cannot happen: kiln__writer_start made it */
        return NULL;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        wait_turn(p, b);
        stop = p->writer_stop && !queued(p);
        take(p, b);
        pthread_mutex_unlock(&p->mu);
        take_retries(b, stop ? INT64_MAX : kiln__monotonic_ns());
        if (stop && b->n == 0 && b->retry == NULL)
            break;
        write_batch(p, b);
        settle_batch(p, b);
    }
    kiln__free(b);
    return NULL;
}

kiln_err kiln__writer_start(kiln_pool *p, kiln_error *err)
{
    pthread_condattr_t ca;
    int rc;

    if (p->store == NULL || p->writer_on)
        return KILN_OK;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    rc = pthread_cond_init(&p->writer_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        return kiln__fail(err, KILN_ENOMEM, "pool: state writer: error %d", rc);
    p->writer_stop = false;
    if ((rc = pthread_create(&p->writer, NULL, writer_main, p)) != 0) {
        pthread_cond_destroy(&p->writer_cv);
        return kiln__fail(err, KILN_ENOMEM,
                          "pool: starting the state writer: error %d", rc);
    }
    p->writer_on = true;
    p->dispatch.started = on_started;
    p->dispatch.writer_ctx = p;
    return KILN_OK;
}

void kiln__writer_stop(kiln_pool *p)
{
    if (!p->writer_on)
        return;
    pthread_mutex_lock(&p->mu);
    p->writer_stop = true;
    pthread_cond_signal(&p->writer_cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->writer, NULL);
    pthread_cond_destroy(&p->writer_cv);
    p->writer_on = false;
    p->dispatch.started = NULL;
    p->dispatch.writer_ctx = NULL;
}
