/* What a delivery's outcome causes, on the consumer thread (see
 * workerpool/consumer.h): the ack, or a copy (a dead letter, a retry, a
 * task sent back to wait) handed to the pool's publisher and the ack once
 * the broker confirmed it, sent again with backoff when it refused it; and
 * the leases and hand-backs that keep deliveries clear of the broker's
 * consumer_timeout (workerpool/consumer.c says why). */
#include "workerpool/consumer.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"
#include "workerpool/retry.h"

#include <stddef.h>
#include <string.h>

#define MODULE "pool"

static void refused(kiln__consumer *c, kiln__work *w, const char *why);

/* The outcome is settled: ack at the next flush, or remember it when the
 * delivery is no longer ours. */
static void finish(kiln__consumer *c, kiln__work *w)
{
    if (w->live) {
        w->state = KILN__WORK_DONE;
        if (c->done_unacked++ == 0)
            c->flush_due_ns = kiln__monotonic_ns() + KILN__ACK_DELAY_NS;
        return;
    }
    kiln__consumer_remember(c, kiln__work_key(w), KILN__RECENT_DONE);
    kiln__consumer_settled(c, w);
}

/* Nacks a live delivery (requeue, or drop when there is no dead-letter
 * queue); for one no longer ours there is nothing to do. */
static void reject(kiln__consumer *c, kiln__work *w, bool requeue)
{
    kiln_error e;

    if (w->live && c->connected &&
        kiln__broker_nack(c->b, w->dl.tag, requeue, &e) != KILN_OK) {
        kiln__consumer_settled(c, w);
        kiln__consumer_lose(c, &e);
        return;
    }
    kiln__consumer_settled(c, w);
}

/* Called on a publisher thread (see kiln__pub_notify). */
static void on_sent(kiln__pub_req *r, void *ctx)
{
    kiln_pool *p = ctx;
    kiln__work_copy *copy =
        (kiln__work_copy *)(void *)((char *)r - offsetof(kiln__work_copy, req));
    kiln__work *w = &p->slots[copy - p->copies];

    pthread_mutex_lock(&p->mu);
    w->next = p->sent_head;
    p->sent_head = w;
    pthread_mutex_unlock(&p->mu);
    kiln__pool_wake(p);
}

/* Hands the copy in w->copy->settle to the publisher. */
static void submit(kiln__consumer *c, kiln__work *w)
{
    if (!w->leasing)
        w->state = KILN__WORK_SENDING;
    c->in_publisher++;
    if (kiln__publisher_submit(c->pub, &w->copy->req, &w->copy->settle.msg, 1,
                               &w->copy->req_status, on_sent, c->p) == KILN_OK)
        return;
    c->in_publisher--;
    if (w->leasing) {
        w->leasing = false;
        kiln__settle_discard(&w->copy->settle);
        return;
    }
    refused(c, w, "the publisher is closing");
}

/* Builds the copy the verdict asks for and sends it. */
void kiln__consumer_send_copy(kiln__consumer *c, kiln__work *w)
{
    kiln_error e;

    kiln__settle_discard(&w->copy->settle);
    memset(&w->copy->settle, 0, sizeof(w->copy->settle));
    if (kiln__settle_begin(&c->p->dispatch, &w->dl, &w->job, &w->copy->settle,
                           &e) != KILN_OK) {
        refused(c, w, e.message);
        return;
    }
    if (!w->copy->settle.publish) {
        /* Nothing to publish: no dead-letter queue is configured. */
        reject(c, w, w->copy->settle.end == KILN__SETTLE_REQUEUE);
        return;
    }
    submit(c, w);
}

/* The copy of `w` could not be built or was refused: its delivery stays
 * unacked and the copy goes again after a backoff. During a drain a task
 * handed back goes back with a nack instead, so a broker that refuses
 * everything does not hold the drain until its deadline. */
static void refused(kiln__consumer *c, kiln__work *w, const char *why)
{
    uint64_t ms = kiln__backoff_ms(w->attempts, KILN__RESEND_BASE_MS,
                                   KILN__RESEND_CAP_MS);
    const char *what =
        w->copy->settle.what != NULL ? w->copy->settle.what : "copy";

    if (c->draining && w->job.fn == NULL &&
        w->job.verdict == KILN__VERDICT_RETRY && w->live) {
        reject(c, w, true);
        return;
    }
    kiln__log_task(c->refusing ? KILN_LOG_DEBUG : KILN_LOG_WARN, MODULE,
                   kiln__work_key(w), kiln__work_name(w),
                   "%s not confirmed: %s; the delivery stays unacked and the "
                   "copy goes again in %llu ms (attempt %u)",
                   what, why, (unsigned long long)ms, w->attempts + 1);
    c->refusing = true;
    w->attempts++;
    w->state = KILN__WORK_WAITING;
    w->retry_at_ns = kiln__monotonic_ns() + (int64_t)ms * MS_NS;
    c->waiting++;
}

static void copy_sent(kiln__consumer *c, kiln__work *w)
{
    kiln__settle_end_action end = w->copy->settle.end;

    if (w->copy->req_status != KILN_OK) {
        refused(c, w, w->copy->req.err.message);
        return;
    }
    if (c->refusing) {
        c->refusing = false;
        kiln__log(KILN_LOG_NOTICE, MODULE,
                  "pool=%s: the broker confirms copies again", c->p->name);
    }
    if (w->attempts > 0)
        kiln__log_task(KILN_LOG_NOTICE, MODULE, kiln__work_key(w),
                       kiln__work_name(w), "%s confirmed after %u attempts",
                       w->copy->settle.what, w->attempts + 1);
    kiln__settle_discard(&w->copy->settle);
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
    kiln__consumer_flush(c, true);
}

/* A lease copy was confirmed (it now stands for the delivery, which is
 * acked) or refused (tried again later). */
static void lease_sent(kiln__consumer *c, kiln__work *w)
{
    kiln_err st = w->copy->req_status;
    kiln_error e;

    w->leasing = false;
    kiln__settle_discard(&w->copy->settle);
    if (st != KILN_OK) {
        kiln__log_task(KILN_LOG_WARN, MODULE, kiln__work_key(w),
                       kiln__work_name(w),
                       "lease copy not confirmed: %s; trying again",
                       w->copy->req.err.message);
        w->retry_at_ns =
            kiln__monotonic_ns() +
            (int64_t)kiln__backoff_ms(w->attempts++, KILN__RESEND_BASE_MS,
                                      KILN__RESEND_CAP_MS) *
                MS_NS;
    } else {
        w->attempts = 0;
        w->leased = true;
        if (w->live && c->connected) {
            kiln__log_task(KILN_LOG_NOTICE, MODULE, kiln__work_key(w),
                           kiln__work_name(w),
                           "running for more than half the broker's "
                           "consumer_timeout (KILN_CONSUMER_TIMEOUT_MS=%u): "
                           "a lease copy stands for it in the delay queues "
                           "and its delivery is acked",
                           c->p->cfg.consumer_timeout_ms);
            if (kiln__broker_ack(c->b, w->dl.tag, false, &e) != KILN_OK) {
                kiln__consumer_lose(c, &e);
            } else {
                w->live = false; /* leaves the window at the compaction */
            }
        }
    }
    if (w->outcome_waits) {
        w->outcome_waits = false;
        kiln__consumer_conclude(c, w);
    }
}

/* Settles the copies the publisher is done with. */
void kiln__consumer_take_sent(kiln__consumer *c)
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
void kiln__consumer_resend_due(kiln__consumer *c)
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
        if (w->copy->settle.publish)
            submit(c, w);
        else
            kiln__consumer_send_copy(c, w);
    }
}

/* What a task's outcome (or a verdict decided without a worker) does. */
void kiln__consumer_conclude(kiln__consumer *c, kiln__work *w)
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
        kiln__consumer_send_copy(c, w);
        return;
    }
}

/* Settles what the workers finished since the last turn. */
void kiln__consumer_take_outcomes(kiln__consumer *c)
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
        kiln__consumer_conclude(c, w);
    }
}

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
void kiln__consumer_hand_back(kiln__consumer *c, kiln__work *w, const char *why)
{
    c->in_workers--;
    kiln__job_hold(&w->job, 0);
    /* Undecoded when it came raw: its copy carries the counts it came
     * with. */
    w->job.retries = w->retries_seen;
    w->job.deliveries = w->deliveries_seen;
    kiln__log_task(KILN_LOG_NOTICE, MODULE, kiln__work_key(w),
                   kiln__work_name(w),
                   "not started: handed back to the queue (%s)", why);
    kiln__consumer_send_copy(c, w);
}

static void start_lease(kiln__consumer *c, kiln__work *w, int64_t now)
{
    kiln_error e;

    kiln__settle_discard(&w->copy->settle);
    memset(&w->copy->settle, 0, sizeof(w->copy->settle));
    if (kiln__lease_build(&c->p->cfg, &w->dl, (uint64_t)(c->lease_ns / MS_NS),
                          w->retries_seen, w->deliveries_seen, &w->copy->settle,
                          &e) != KILN_OK) {
        kiln__log_task(KILN_LOG_WARN, MODULE, kiln__work_key(w),
                       kiln__work_name(w), "cannot build a lease copy: %s",
                       e.message);
        w->retry_at_ns = now + 1000 * MS_NS;
        return;
    }
    w->leasing = true;
    submit(c, w);
}

/* Keeps every delivery clear of the broker's consumer_timeout (see the
 * top of the file): those older than half of it that no worker took are
 * handed back, those whose task runs are leased. */
void kiln__consumer_check_leases(kiln__consumer *c)
{
    kiln_pool *p = c->p;
    int64_t now = kiln__monotonic_ns();
    size_t n = 0;

    if (c->lease_ns == 0 || now < c->lease_check_ns)
        return;
    c->lease_check_ns =
        now + (c->lease_ns / 4 < 1000 * MS_NS ? c->lease_ns / 4 : 1000 * MS_NS);
    if (c->win_len == 0 ||
        now - kiln__consumer_win_at(c, 0)->taken_ns < c->lease_ns)
        return;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < c->win_len; i++) {
        kiln__work *w = kiln__consumer_win_at(c, i);
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
            kiln__consumer_hand_back(
                c, w,
                "it waited longer than half the broker's "
                "consumer_timeout behind the prefetch window");
    }
}
