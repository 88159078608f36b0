/* Deliveries this process has seen before, on the consumer thread (see
 * workerpool/consumer.h and the top of consumer.c): a redelivery or lease
 * copy of a task that still runs here waits in the delay queues, one of a
 * task that finished here is acked unrun, one lost unstarted does not
 * count as a run, and a copy back before its original's ack waits for
 * that ack. Only deliveries that say they were delivered before are
 * decoded and looked up, by task key (kiln__work.key), so the usual path
 * pays nothing and never waits for a decode. */
#include "workerpool/consumer.h"

#include "logger/logger.h"

#include <string.h>

#define MODULE "pool"

static kiln__recent *recent_find(kiln__consumer *c, const char *uuid)
{
    int64_t now = kiln__monotonic_ns();

    for (size_t i = 0; uuid != NULL && i < c->n_recents; i++) {
        kiln__recent *r = &c->recents[i];
        if (r->kind != KILN__RECENT_FREE && r->until_ns > now &&
            strcmp(r->uuid, uuid) == 0)
            return r;
    }
    return NULL;
}

/* Remembers `uuid`; when the table is full the entry closest to expiry
 * goes (at worst a task then runs once more: at least once). */
void kiln__consumer_remember(kiln__consumer *c, const char *uuid,
                             kiln__recent_kind kind)
{
    int64_t now = kiln__monotonic_ns();
    kiln__recent *r = recent_find(c, uuid), *oldest = NULL;

    if (uuid == NULL || uuid[0] == '\0' || c->n_recents == 0)
        return;
    for (size_t i = 0; r == NULL && i < c->n_recents; i++) {
        kiln__recent *e = &c->recents[i];
        if (e->kind == KILN__RECENT_FREE || e->until_ns <= now)
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

/* A slot other than `self` whose task `key` still runs here, or whose
 * copy is still on its way, after its own delivery stopped being ours. A
 * task a worker has started to decode but whose key it has not set yet
 * counts as a match: for the moment it takes, it may be this one, and a
 * redelivery held a while too long costs less than a task run twice. */
static kiln__work *running_here(kiln__consumer *c, const kiln__work *self,
                                const char *key)
{
    for (size_t i = 0; i < c->p->n_slots; i++) {
        kiln__work *o = &c->p->slots[i];
        const char *k;
        if (o == self || o->live ||
            (o->state != KILN__WORK_QUEUED && o->state != KILN__WORK_SENDING &&
             o->state != KILN__WORK_WAITING))
            continue;
        if ((k = kiln__work_key(o)) == NULL || strcmp(k, key) == 0)
            return o;
    }
    return NULL;
}

/* A delivery that was delivered before, or a lease copy: true when what
 * this process knows decides it (held, or acked without running). */
static bool seen_here(kiln__consumer *c, kiln__work *w)
{
    kiln__job *job = &w->job;
    kiln__recent *r;

    const char *key = kiln__work_key(w);

    if (key[0] == '\0')
        return false; /* nothing to match it by */
    if (running_here(c, w, key) != NULL) {
        uint64_t ms = job->lease != NULL && c->lease_ns > 0
                          ? (uint64_t)(c->lease_ns / MS_NS)
                          : c->hold_ms;
        kiln__job_hold(job, ms);
        kiln__log_task(KILN_LOG_INFO, MODULE, key, job->sig->name,
                       "%s while its task still runs here: back to the "
                       "delay queues for %llu ms",
                       job->lease != NULL ? "lease copy back" : "redelivered",
                       (unsigned long long)ms);
        return true;
    }
    if ((r = recent_find(c, key)) == NULL)
        return false;
    if (r->kind == KILN__RECENT_DONE) {
        job->verdict = KILN__VERDICT_ACK;
        job->status = KILN_OK;
        kiln__log_task(KILN_LOG_INFO, MODULE, key, job->sig->name,
                       "%s of a task that finished here: acked without "
                       "running it again",
                       job->lease != NULL ? "lease copy" : "redelivery");
        return true;
    }
    /* Handed back unstarted by a lost connection: not a run. */
    r->kind = KILN__RECENT_FREE;
    job->redelivery = false;
    if (job->deliveries > 0)
        job->deliveries--;
    return false;
}

/* A live delivery here, other than `self`, of task `key` whose copy is
 * on its way: `self` may be that copy, back before the original's ack.
 * (A worker finished those: their keys are set.) */
static kiln__work *original_here(kiln__consumer *c, const kiln__work *self,
                                 const char *key)
{
    for (size_t i = 0; key[0] != '\0' && i < c->p->n_slots; i++) {
        kiln__work *o = &c->p->slots[i];
        const char *k;
        if (o != self && o->live &&
            (o->state == KILN__WORK_SENDING ||
             o->state == KILN__WORK_WAITING) &&
            (k = kiln__work_key(o)) != NULL && strcmp(k, key) == 0)
            return o;
    }
    return NULL;
}

/* Hands the copies parked behind `w` to the workers (back to the queue
 * when draining): `w` is settled. */
void kiln__consumer_unpark(kiln__consumer *c, const kiln__work *w)
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
            kiln__consumer_send_copy(c, o);
        } else {
            kiln__consumer_enqueue(c, o, o, 1);
        }
    }
}

/* Decides what to do with a new delivery: a worker takes it, or its
 * verdict is decided here, or it waits for a delivery here to be acked. */
kiln__admission kiln__consumer_admit(kiln__consumer *c, kiln__work *w)
{
    const kiln__dispatch *d = &c->p->dispatch;
    bool needs_worker;

    bool decoded = kiln__dispatch_decode(d, &w->dl, &w->job, &needs_worker);

    atomic_fetch_add_explicit(&c->p->consumer_decodes, 1, memory_order_relaxed);
    kiln__work_set_key(w);
    if (!decoded)
        return needs_worker ? KILN__ADMIT_RUN : KILN__ADMIT_DECIDED;
    if (w->job.redelivery && seen_here(c, w))
        return KILN__ADMIT_DECIDED;
    if (!kiln__dispatch_admit(d, &w->dl, &w->job))
        return KILN__ADMIT_DECIDED;
    if (c->draining) {
        /* Arrived before the cancel took effect: straight back. */
        kiln__job_hold(&w->job, 0);
        return KILN__ADMIT_DECIDED;
    }
    w->retries_seen = w->job.retries;
    w->deliveries_seen = w->job.deliveries;
    /* A copy can reach this consumer before the publisher's connection
     * has the broker's confirm, so before its original here is acked. A
     * task that kills its worker must not run until then, or both would
     * stay behind and run again. */
    if (w->job.redelivery &&
        (w->behind = original_here(c, w, kiln__work_key(w))) != NULL) {
        w->state = KILN__WORK_PARKED;
        c->parked++;
        return KILN__ADMIT_PARKED;
    }
    return KILN__ADMIT_RUN;
}
