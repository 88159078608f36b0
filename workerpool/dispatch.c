/* The per-delivery logic of a worker: decode, look up, run, record,
 * settle. See dispatch.h for which step runs on which thread.
 *
 * Delivery is at least once (DESIGN "Wire format and topology"): a
 * delivery is acked only after its final state is written and any message
 * it causes is confirmed. So a failed final store write requeues the
 * delivery, and a failed dead-letter or retry publish leaves it unacked for
 * the broker to redeliver. */
#include "workerpool/dispatch.h"

#include "broker/delay.h"
#include "logger/logger.h"
#include "workerpool/backoff.h"
#include "workerpool/retry.h"

#include <stdio.h>
#include <string.h>

#define MODULE "worker"

/* Store writes retried during an outage: first after up to 100 ms,
 * doubling, never more than 5 s apart; sleeps are cut into slices so a
 * stop is noticed quickly. */
#define STORE_RETRY_BASE_MS 100
#define STORE_RETRY_CAP_MS  5000
#define STORE_SLICE_MS      50

static bool outage_known(const kiln__dispatch *d)
{
    return d->outage != NULL && atomic_load(d->outage) != 0;
}

bool kiln__dispatch_outage_known(const kiln__dispatch *d)
{
    return outage_known(d);
}

/* The first failure of an outage is logged as a warning, the rest at
 * debug level; the first success after it says the store is back. */
static void note_failure(const kiln__dispatch *d, const char *uuid,
                         const char *name, kiln_task_state state,
                         const kiln_error *e)
{
    int was = d->outage != NULL ? atomic_exchange(d->outage, 1) : 0;

    kiln__log_task(was ? KILN_LOG_DEBUG : KILN_LOG_WARN, MODULE, uuid, name,
                   "store %s failed: %s%s", kiln__state_name(state), e->message,
                   d->give_up != NULL && kiln__state_finished(state)
                       ? "; the delivery stays unacked and the write is "
                         "retried with backoff"
                       : "");
}

static void note_success(const kiln__dispatch *d, unsigned retries)
{
    if (d->outage != NULL && atomic_exchange(d->outage, 0) != 0)
        kiln__log(KILN_LOG_NOTICE, MODULE,
                  "store reachable again (after %u retries of a write)",
                  retries);
}

void kiln__dispatch_store_failed(const kiln__dispatch *d,
                                 const kiln__state_update *u,
                                 const kiln_error *e)
{
    note_failure(d, u->uuid, u->task_name, u->state, e);
}

void kiln__dispatch_store_ok(const kiln__dispatch *d, unsigned retries)
{
    note_success(d, retries);
}

/* Sleeps `ms` in slices; returns true when give_up() said stop. */
static bool nap_or_give_up(const kiln__dispatch *d, uint64_t ms)
{
    for (;;) {
        uint64_t slice = ms < STORE_SLICE_MS ? ms : STORE_SLICE_MS;

        if (d->give_up(d->give_up_ctx))
            return true;
        if (ms == 0)
            return false;
        kiln__sleep_ns((int64_t)slice * 1000000);
        ms -= slice;
    }
}

/* Writes one state. A non-final state is tried once (and skipped during a
 * known outage); a final one is retried as kiln__dispatch describes.
 * Returns KILN_OK once written; a failure is logged and returned. */
static kiln_err record(const kiln__dispatch *d, const char *uuid,
                       const char *name, kiln_task_state state,
                       const kiln__values *results, const char *error)
{
    kiln__state_update u = {uuid, name, state, results, error, false};
    bool final = kiln__state_finished(state);
    kiln_error e;
    kiln_err rc;

    if (d->store == NULL || uuid == NULL || uuid[0] == '\0')
        return KILN_OK;
    if (!final && outage_known(d))
        return KILN_ESTORE;
    for (unsigned attempt = 0;; attempt++) {
        if ((rc = kiln__store_set(d->store, &u, &e)) == KILN_OK) {
            note_success(d, attempt);
            return KILN_OK;
        }
        note_failure(d, uuid, name, state, &e);
        if (!final || d->give_up == NULL ||
            nap_or_give_up(d, kiln__backoff_ms(attempt, STORE_RETRY_BASE_MS,
                                               STORE_RETRY_CAP_MS)))
            return rc;
    }
}

/* A state that ends the worker's part: with a state writer it is left in
 * the job for the writer (which holds the delivery until it is written),
 * else written here as record() does. SUCCESS keeps the run's results
 * (taken from `ctx`). */
static kiln_err record_end(const kiln__dispatch *d, kiln__job *job,
                           const char *uuid, const char *name,
                           kiln_task_state state, kiln_task_ctx *ctx)
{
    const kiln__values *res = NULL;

    if (state == KILN_STATE_SUCCESS && ctx != NULL && ctx->results.args.n > 0)
        res = &ctx->results.args;
    if (d->started == NULL)
        return record(d, uuid, name, state, res,
                      state == KILN_STATE_SUCCESS ? NULL : job->reason.message);
    if (d->store == NULL || uuid == NULL || uuid[0] == '\0')
        return KILN_OK;
    job->write = true;
    job->write_state = state;
    job->write_uuid = uuid;
    job->write_name = name;
    if (res != NULL) {
        /* The writer writes them after the context is gone. */
        job->results = ctx->results.args;
        ctx->results.args = (kiln__values){0};
    }
    return KILN_OK;
}

void kiln__dispatch_write_of(const kiln__job *job, kiln__state_update *u)
{
    *u = (kiln__state_update){
        .uuid = job->write_uuid,
        .task_name = job->write_name,
        .state = job->write_state,
        .results = job->results.n > 0 ? &job->results : NULL,
        .error = job->write_state == KILN_STATE_SUCCESS ? NULL
                                                        : job->reason.message};
}

/* ---- prepare ------------------------------------------------------------ */

static kiln_err decode(const kiln__dispatch *d, const kiln__delivery *dl,
                       kiln_signature **sig, kiln_error *err)
{
    if (kiln__delivery_header(dl, KILN__HDR_TASK_NAME) != NULL)
        return kiln_signature_from_raw(dl->body, dl->body_len, dl->headers,
                                       dl->n_headers, d->cfg->max_body_bytes,
                                       sig, err);
    return kiln_signature_from_json(dl->body, dl->body_len,
                                    d->cfg->max_body_bytes, sig, err);
}

bool kiln__delivery_seen_before(const kiln__delivery *dl)
{
    return dl->redelivered || dl->delivery_count > 0 ||
           kiln__delivery_header(dl, KILN__HDR_LEASE) != NULL ||
           kiln__header_uint(dl, KILN__HDR_DELIVERIES) > 0;
}

void kiln__dispatch_task_ids(const kiln__dispatch *d, const kiln__delivery *dl,
                             char *uuid, char *name, size_t n)
{
    size_t max = d->cfg->max_body_bytes ? d->cfg->max_body_bytes
                                        : KILN__DEFAULT_MAX_BODY;
    const char *hu = kiln__delivery_header(dl, "uuid");
    const char *hn = kiln__delivery_header(dl, KILN__HDR_TASK_NAME);

    kiln__strlcpy(uuid, hu ? hu : "", n);
    kiln__strlcpy(name, hn ? hn : "", n);
    if (uuid[0] != '\0' || hn != NULL || dl->body_len > max)
        return;
    /* No tree: a refused body costs a pass over it, not its size many
     * times over. */
    kiln__json_salvage_ids(dl->body, dl->body_len, uuid, name, n);
}

/* A task that will not run: FAILURE (written by a worker when there is a
 * store and the UUID can be read), then `verdict` (dead-letter or drop),
 * logged at `level`. Returns whether a worker must write that FAILURE. */
static bool refuse_at(const kiln__dispatch *d, const kiln__delivery *dl,
                      kiln__job *job, kiln_err status, kiln__verdict verdict,
                      kiln_log_level level)
{
    job->status = status;
    job->verdict = verdict;
    if (job->sig != NULL) {
        kiln__strlcpy(job->failed_uuid, job->sig->uuid,
                      sizeof(job->failed_uuid));
        kiln__strlcpy(job->failed_name, job->sig->name,
                      sizeof(job->failed_name));
    } else {
        kiln__dispatch_task_ids(d, dl, job->failed_uuid, job->failed_name,
                                sizeof(job->failed_uuid));
    }
    kiln__log_task(level, MODULE, job->failed_uuid, job->failed_name, "%s: %s",
                   verdict == KILN__VERDICT_ACK ? "dropped" : "dead-lettered",
                   job->reason.message);
    if (d->store == NULL || job->failed_uuid[0] == '\0') {
        job->failed_uuid[0] = '\0';
        return false;
    }
    return true;
}

static bool refuse_as(const kiln__dispatch *d, const kiln__delivery *dl,
                      kiln__job *job, kiln_err status, kiln__verdict verdict)
{
    return refuse_at(d, dl, job, status, verdict, KILN_LOG_WARN);
}

/* Bad input: dead-lettered with the reason, FAILURE where possible. */
static bool refuse(const kiln__dispatch *d, const kiln__delivery *dl,
                   kiln__job *job, kiln_err status)
{
    return refuse_as(d, dl, job, status, KILN__VERDICT_DEADLETTER);
}

/* Requeued later through the delay cascade, counting the delivery, so an
 * unregistered task waits for a worker that knows it without looping:
 * 1 s, doubling, at most KILN_RETRY_MAX_MS, until KILN_MAX_DELIVERIES. */
static uint64_t requeue_delay(const kiln__dispatch *d, uint32_t deliveries)
{
    uint64_t ms = 1000ull << (deliveries < 16 ? deliveries : 16);

    return ms < d->cfg->retry_max_ms ? ms : d->cfg->retry_max_ms;
}

static bool unregistered(const kiln__dispatch *d, const kiln__delivery *dl,
                         kiln__job *job)
{
    const kiln_signature *sig = job->sig;

    /* Acked and gone, it will never run here: FAILURE with the reason,
     * so that whoever waits for it learns so. */
    if (sig->ignore_unregistered) {
        kiln__fail(&job->reason, KILN_ENOHANDLER,
                   "unregistered task %s, ignored "
                   "(IgnoreWhenTaskNotRegistered)",
                   sig->name);
        return refuse_at(d, dl, job, KILN_ENOHANDLER, KILN__VERDICT_ACK,
                         KILN_LOG_INFO);
    }
    if (d->cfg->unregistered == KILN_UNREGISTERED_DROP) {
        kiln__fail(&job->reason, KILN_ENOHANDLER,
                   "unregistered task %s, dropped (KILN_UNREGISTERED=drop)",
                   sig->name);
        return refuse_at(d, dl, job, KILN_ENOHANDLER, KILN__VERDICT_ACK,
                         KILN_LOG_INFO);
    }
    kiln__fail(&job->reason, KILN_ENOHANDLER, "unregistered task %s",
               sig->name);
    if (d->cfg->unregistered == KILN_UNREGISTERED_REQUEUE) {
        unsigned max = d->cfg->max_deliveries;
        /* kiln requeued it itself each time: its deliveries count even
         * with a store, which sees no run of it. */
        if (max > 0 && job->deliveries >= max) {
            kiln__fail(&job->reason, KILN_EINVAL,
                       "delivered %u times (max_deliveries %u)",
                       job->deliveries + 1, max);
            return refuse(d, dl, job, KILN_EINVAL);
        }
        job->status = KILN_ENOHANDLER;
        job->verdict = KILN__VERDICT_RETRY;
        job->send.kind = KILN__SEND_REQUEUE;
        job->send.delay_ms = requeue_delay(d, job->deliveries);
        kiln__log_task(KILN_LOG_WARN, MODULE, sig->uuid, sig->name,
                       "requeued in %llu ms: unregistered task (delivery %u)",
                       (unsigned long long)job->send.delay_ms,
                       job->deliveries + 1);
        return false;
    }
    return refuse(d, dl, job, KILN_ENOHANDLER);
}

/* A task that arrived before its ETA (from a producer that does not use
 * the delay cascade, or released a little early) goes back into the
 * cascade for the time left: it never holds a worker or the queue. An ETA
 * further away than the cascade holds is refused with that reason rather
 * than cycled through it for ever. Times saturate: an ETA in 1678 is
 * simply due. */
enum eta_check { ETA_DUE, ETA_EARLY, ETA_TOO_FAR };

static enum eta_check early(const kiln__dispatch *d, kiln__job *job)
{
    uint64_t left_ms, units;
    kiln_error e;

    if (!job->sig->has_eta)
        return ETA_DUE;
    left_ms = kiln__ns_to_ms_ceil(
        kiln__sat_sub(job->sig->eta.unix_ns, kiln__realtime_ns()));
    /* RabbitMQ counts TTLs in whole milliseconds: within one of the ETA
     * is on time. */
    if (left_ms <= 1)
        return ETA_DUE;
    if (kiln__delay_units(d->cfg, left_ms, &units, &e) != KILN_OK) {
        kiln__fail(&job->reason, KILN_EINVAL, "ETA: %s", e.message);
        return ETA_TOO_FAR;
    }
    job->verdict = KILN__VERDICT_RETRY;
    job->send.kind = KILN__SEND_HOLD;
    job->send.delay_ms = left_ms;
    kiln__log_task(KILN_LOG_DEBUG, MODULE, job->sig->uuid, job->sig->name,
                   "early by %llu ms: back to the delay queues",
                   (unsigned long long)left_ms);
    return ETA_EARLY;
}

/* paota's TaskTimeOut: the task must start within that many seconds of
 * its CreatedAt. */
static bool expired(kiln__job *job)
{
    const kiln_signature *sig = job->sig;
    int64_t late_ms;

    if (sig->task_timeout <= 0 || !sig->has_created_at)
        return false;
    late_ms =
        kiln__sat_sub(kiln__realtime_ns(), sig->created_at.unix_ns) / 1000000 -
        (int64_t)sig->task_timeout * 1000;
    if (late_ms <= 0)
        return false;
    kiln__fail(&job->reason, KILN_ETIMEDOUT,
               "expired: not started within TaskTimeOut %d s of CreatedAt "
               "(%lld ms late)",
               sig->task_timeout, (long long)late_ms);
    return true;
}

bool kiln__dispatch_decode(const kiln__dispatch *d, const kiln__delivery *dl,
                           kiln__job *job, bool *needs_worker)
{
    kiln_err rc;

    memset(job, 0, sizeof(*job));
    *needs_worker = false;
    job->deliveries = kiln__earlier_deliveries(dl);
    job->retries = kiln__header_uint(dl, KILN__HDR_RETRIES);
    job->lease = kiln__delivery_header(dl, KILN__HDR_LEASE);
    job->redelivery = kiln__delivery_seen_before(dl);
    if ((rc = decode(d, dl, &job->sig, &job->reason)) != KILN_OK) {
        kiln__prefix(&job->reason, "undecodable message");
        *needs_worker = refuse(d, dl, job, rc);
        return false;
    }
    /* A paota worker's retry advances RetriesDone but carries no
     * x-kiln-retries: the larger count is the true one. */
    job->retries = kiln__signature_retries(job->sig, job->retries);
    return true;
}

bool kiln__dispatch_admit(const kiln__dispatch *d, const kiln__delivery *dl,
                          kiln__job *job)
{
    unsigned max = d->cfg->max_deliveries;

    /* A lease copy stands for a run that had started: admitted here, at
     * a worker that does not know it, it counts that run. (One that comes
     * back to its own worker is held or acked before this.) */
    if (job->lease != NULL && job->deliveries < UINT32_MAX)
        job->deliveries++;
    /* With a store, the runs it counted decide (on the worker): a
     * redelivery that never ran, after a drain or a lost connection, does
     * not count against max_deliveries. */
    job->check_store = d->store != NULL && job->redelivery;
    if (!job->check_store && max > 0 && job->deliveries >= max) {
        kiln__fail(&job->reason, KILN_EINVAL,
                   "delivered %u times (max_deliveries %u)",
                   job->deliveries + 1, max);
        return refuse(d, dl, job, KILN_EINVAL);
    }
    if (!job->check_store && max > 0 && kiln__classic_redelivery(dl)) {
        /* A classic queue only flags a redelivery. Send the message on at
         * once with the count in x-kiln-deliveries, so that a task that
         * kills its worker is still stopped after max_deliveries runs. */
        job->verdict = KILN__VERDICT_RETRY;
        job->send.kind = KILN__SEND_COUNTED;
        kiln__log_task(KILN_LOG_DEBUG, MODULE, job->sig->uuid, job->sig->name,
                       "redelivered (%u earlier): counted, sent on",
                       job->deliveries);
        return false;
    }
    switch (early(d, job)) {
    case ETA_EARLY:
        return false;
    case ETA_TOO_FAR:
        return refuse(d, dl, job, KILN_EINVAL);
    case ETA_DUE:
        break;
    }
    if (expired(job))
        return refuse_as(d, dl, job, KILN_ETIMEDOUT,
                         d->cfg->expired == KILN_EXPIRED_DROP
                             ? KILN__VERDICT_ACK
                             : KILN__VERDICT_DEADLETTER);
    if (kiln__registry_find(d->reg, job->sig->name, &job->fn, &job->user,
                            &job->time_limit_ms) != KILN_OK)
        return unregistered(d, dl, job);
    return true;
}

bool kiln__dispatch_prepare(const kiln__dispatch *d, const kiln__delivery *dl,
                            kiln__job *job)
{
    bool needs_worker;

    if (!kiln__dispatch_decode(d, dl, job, &needs_worker))
        return needs_worker;
    return kiln__dispatch_admit(d, dl, job);
}

/* ---- run ---------------------------------------------------------------- */

/* Sends the task again after `delay_ms`, re-encoded with its new counters
 * and ETA, and records RETRY. False when it could not be encoded (the
 * task then fails). */
static bool retry(const kiln__dispatch *d, kiln__job *job, uint64_t delay_ms)
{
    kiln_signature *sig = job->sig;
    kiln_error e;

    if (kiln__encode_again(sig, delay_ms, job, &e) != KILN_OK) {
        kiln__fail(&job->reason, e.code, "retry: %s", e.message);
        return false;
    }
    job->verdict = KILN__VERDICT_RETRY;
    kiln__log_task(KILN_LOG_INFO, MODULE, sig->uuid, sig->name,
                   "retry %u in %llu ms: %s", job->retries + 1,
                   (unsigned long long)delay_ms, job->reason.message);
    (void)record_end(d, job, sig->uuid, sig->name, KILN_STATE_RETRY, NULL);
    return true;
}

/* Turns the task's return into a verdict and records the state. The run
 * started at `t0_ns` and ended at `end_ns` (monotonic). */
static void conclude(const kiln__dispatch *d, kiln__job *job,
                     kiln_task_ctx *ctx, kiln_err rc, int64_t t0_ns,
                     int64_t end_ns)
{
    kiln_signature *sig = job->sig;
    uint64_t delay_ms;

    job->status = rc;
    /* A run that reached its soft limit failed whatever it returned: its
     * end is at or past the deadline exactly when kiln_task_expired could
     * have said true during it (the same clock, compared the same way), and
     * a task that stopped because of that has not finished its work. Not
     * retried: it would likely run as long again. */
    if (ctx->deadline_ns != 0 && end_ns >= ctx->deadline_ns) {
        job->status = rc = KILN_ETIMEDOUT;
        kiln__fail(&job->reason, rc, "time limit: ran %lld ms, limit %lld ms",
                   (long long)((end_ns - t0_ns) / 1000000),
                   (long long)((ctx->deadline_ns - t0_ns) / 1000000));
    } else if (rc == KILN_OK) {
        job->verdict = KILN__VERDICT_ACK;
        kiln__log_task(KILN_LOG_DEBUG, MODULE, sig->uuid, sig->name,
                       "succeeded");
        if (record_end(d, job, sig->uuid, sig->name, KILN_STATE_SUCCESS, ctx) !=
            KILN_OK)
            job->verdict = KILN__VERDICT_REQUEUE;
        return;
    } else if (rc == KILN_ERETRY) {
        /* machinery's retry-later: the count is not used up. */
        kiln__fail(&job->reason, KILN_ERETRY, "the task asked for a retry");
        if (retry(d, job,
                  ctx->retry_delay_ms < d->cfg->retry_max_ms
                      ? ctx->retry_delay_ms
                      : d->cfg->retry_max_ms))
            return;
    } else {
        if (rc == KILN_ETASK && ctx->failure.code == KILN_ETASK)
            job->reason = ctx->failure;
        else
            kiln__fail(&job->reason, rc, "task returned: %s",
                       kiln_strerror(rc));
        if (kiln__retry_plan(d->cfg, sig, job->retries, &delay_ms) &&
            retry(d, job, delay_ms))
            return;
    }
    job->verdict = KILN__VERDICT_DEADLETTER;
    kiln__log_task(KILN_LOG_WARN, MODULE, sig->uuid, sig->name,
                   "failed after %u run(s): %s", job->retries + 1,
                   job->reason.message);
    if (record_end(d, job, sig->uuid, sig->name, KILN_STATE_FAILURE, NULL) !=
        KILN_OK)
        job->verdict = KILN__VERDICT_REQUEUE;
}

/* A redelivery, with a store: what the store knows decides whether it
 * runs. A task already finished (its delivery was not acked before the
 * worker died or lost its connection) is not run again: SUCCESS is acked,
 * FAILURE dead-lettered again (its first dead letter may not have been
 * confirmed). A task started max_deliveries times is poison. Returns true
 * when the job's verdict is decided. An unknown task, or a store that
 * cannot be read, runs: at least once. */
static bool decided_by_store(const kiln__dispatch *d, kiln__job *job)
{
    const kiln_signature *sig = job->sig;
    unsigned max = d->cfg->max_deliveries;
    kiln__task_record rec = {0};
    kiln_error e;
    bool decided = true;

    if (kiln__store_get(d->store, sig->uuid, &rec, &e) != KILN_OK)
        return false;
    if (rec.state == KILN_STATE_SUCCESS) {
        job->status = KILN_OK;
        job->verdict = KILN__VERDICT_ACK;
        kiln__log_task(KILN_LOG_NOTICE, MODULE, sig->uuid, sig->name,
                       "redelivered, but the store says SUCCESS: acked "
                       "without running it again");
    } else if (rec.state == KILN_STATE_FAILURE) {
        job->status = KILN_ETASK;
        job->verdict = KILN__VERDICT_DEADLETTER;
        kiln__fail(&job->reason, KILN_ETASK, "%s", rec.error);
        kiln__log_task(KILN_LOG_NOTICE, MODULE, sig->uuid, sig->name,
                       "redelivered, but the store says FAILURE: "
                       "dead-lettered again without running it: %s",
                       rec.error);
    } else if (max > 0 && rec.attempts >= max) {
        job->status = KILN_EINVAL;
        job->verdict = KILN__VERDICT_DEADLETTER;
        kiln__fail(&job->reason, KILN_EINVAL,
                   "started %u times (max_deliveries %u)", rec.attempts, max);
        kiln__log_task(KILN_LOG_WARN, MODULE, sig->uuid, sig->name,
                       "dead-lettered: %s", job->reason.message);
        if (record_end(d, job, sig->uuid, sig->name, KILN_STATE_FAILURE,
                       NULL) != KILN_OK)
            job->verdict = KILN__VERDICT_REQUEUE;
    } else {
        decided = false;
    }
    kiln__task_record_release(&rec);
    return decided;
}

void kiln__dispatch_run(const kiln__dispatch *d, kiln__job *job)
{
    const kiln_signature *sig = job->sig;
    kiln_task_ctx ctx;
    unsigned limit;
    int64_t t0;
    kiln_err rc;

    if (job->fn != NULL && job->check_store && decided_by_store(d, job))
        return;
    if (job->fn == NULL) {
        /* Refused input: its FAILURE, then the dead-letter queue. */
        if (job->failed_uuid[0] != '\0' &&
            record_end(d, job, job->failed_uuid, job->failed_name,
                       KILN_STATE_FAILURE, NULL) != KILN_OK)
            job->verdict = KILN__VERDICT_REQUEUE;
        return;
    }
    /* A worker thread takes a task at the moment it starts it, so STARTED
     * says RECEIVED too: a RECEIVED write of its own would cost a store
     * round trip per task for a state that lasts microseconds. With a
     * state writer the task does not wait for it, but a redelivery's:
     * the poison count of a task that kills its worker needs it first. */
    if (d->started != NULL && !job->check_store)
        d->started(d->writer_ctx, job);
    else
        (void)record(d, sig->uuid, sig->name, KILN_STATE_STARTED, NULL, NULL);
    if ((rc = kiln__task_ctx_init(&ctx, sig, &job->reason)) != KILN_OK) {
        job->status = rc;
        job->verdict = KILN__VERDICT_REQUEUE;
        return;
    }
    ctx.attempt = job->retries + 1;
    limit =
        job->time_limit_ms != 0 ? job->time_limit_ms : d->cfg->time_limit_ms;
    t0 = kiln__monotonic_ns();
    if (limit > 0)
        ctx.deadline_ns = t0 + (int64_t)limit * 1000000;
    rc = job->fn(&ctx, job->user);
    conclude(d, job, &ctx, rc, t0, kiln__monotonic_ns());
    kiln__task_ctx_release(&ctx);
}

void kiln__job_hold(kiln__job *job, uint64_t delay_ms)
{
    job->fn = NULL;
    job->failed_uuid[0] = '\0';
    job->verdict = KILN__VERDICT_RETRY;
    kiln__free(job->send.body);
    kiln__free(job->send.headers);
    job->send = (kiln__send_on){.kind = KILN__SEND_HOLD, .delay_ms = delay_ms};
}

void kiln__job_release(kiln__job *job)
{
    if (job == NULL)
        return;
    kiln_signature_free(job->sig);
    kiln__values_clear(&job->results);
    kiln__free(job->send.body);
    kiln__free(job->send.headers);
    memset(job, 0, sizeof(*job));
}

/* ---- settle ------------------------------------------------------------- */

/* A persistent copy of `dl` into *m: its body and its typed headers, with
 * `own` added (replacing any of the same name). Too big for one frame, it
 * goes without its largest inherited headers, and says so in its
 * x-kiln-reason (broker.h, Size). */
static void build_copy(kiln__message *m, const char *exchange,
                       const char *routing_key, const kiln__delivery *dl,
                       const kiln__hdr *own, size_t n_own)
{
    *m = (kiln__message){.exchange = exchange,
                         .routing_key = routing_key,
                         .body = dl->body,
                         .body_len = dl->body_len,
                         .inherit = dl,
                         .fields = own,
                         .n_fields = n_own,
                         .message_id = dl->message_id,
                         .priority = dl->priority,
                         .persistent = true,
                         .trim = true};
}

bool kiln__dead_letter_copy(const kiln_config *cfg, const kiln__delivery *dl,
                            const char *reason, unsigned attempts,
                            kiln__hdr *own, kiln__message *m)
{
    if (cfg->dead_letter_queue[0] == '\0')
        return false;
    own[0] = kiln__hdr_text(KILN__HDR_REASON, reason);
    own[1] = kiln__hdr_text(KILN__HDR_EXCHANGE, dl->exchange);
    own[2] = kiln__hdr_text(KILN__HDR_ROUTING_KEY, dl->routing_key);
    own[3] = kiln__hdr_int(KILN__HDR_ATTEMPTS, KILN__HV_I64, attempts);
    own[4] = kiln__hdr_text(KILN__HDR_WORKER, kiln__worker_id());
    build_copy(m, cfg->dead_letter_exchange, cfg->dead_letter_queue, dl, own,
               attempts > 0 ? 5 : 3);
    return true;
}

/* The dead-letter copy; `attempts` > 0 adds how many times the task ran
 * and which worker ran it last. `reason` must live as long as *s, which
 * comes initialised by settle_init. */
static kiln_err dead_letter_build(const kiln_config *cfg,
                                  const kiln__delivery *dl, const char *reason,
                                  unsigned attempts, kiln__settle *s,
                                  kiln_error *err)
{
    (void)err;
    s->what = "dead-letter";
    if (!kiln__dead_letter_copy(cfg, dl, reason, attempts, s->own, &s->msg)) {
        kiln__log(KILN_LOG_ERR, MODULE,
                  "no dead-letter queue configured; "
                  "dropping message_id=%s reason=%s",
                  dl->message_id, reason);
        s->end = KILN__SETTLE_DROP;
        return KILN_OK;
    }
    s->publish = true;
    return KILN_OK;
}

static void settle_init(kiln__settle *s)
{
    s->publish = false;
    s->headers = NULL;
    s->end = KILN__SETTLE_ACK;
    s->what = "settle";
}

kiln_err kiln__settle_begin(const kiln__dispatch *d, const kiln__delivery *dl,
                            const kiln__job *job, kiln__settle *s,
                            kiln_error *err)
{
    settle_init(s);
    switch (job->verdict) {
    case KILN__VERDICT_ACK:
        return KILN_OK;
    case KILN__VERDICT_DEADLETTER:
        /* A task that ran: its runs and worker too. */
        return dead_letter_build(d->cfg, dl, job->reason.message,
                                 job->fn != NULL ? job->retries + 1 : 0, s,
                                 err);
    case KILN__VERDICT_RETRY:
        return kiln__retry_build(d->cfg, dl, job, s, err);
    case KILN__VERDICT_REQUEUE:
        s->end = KILN__SETTLE_REQUEUE;
        return KILN_OK;
    }
    return kiln__fail(err, KILN_EINVAL, "unknown verdict %d",
                      (int)job->verdict);
}

void kiln__settle_discard(kiln__settle *s)
{
    /* Read before written: a settle that never held a copy stays
     * untouched (see kiln__work_copy). */
    if (s->headers == NULL && !s->publish)
        return;
    kiln__free(s->headers);
    s->headers = NULL;
    s->publish = false;
}

kiln_err kiln__settle_end(kiln__broker *b, const kiln__delivery *dl,
                          kiln__settle *s, kiln_error *err)
{
    kiln__settle_end_action end = s->end;

    kiln__settle_discard(s);
    if (end == KILN__SETTLE_ACK)
        return kiln__broker_ack(b, dl->tag, false, err);
    return kiln__broker_nack(b, dl->tag, end == KILN__SETTLE_REQUEUE, err);
}

/* begin, publish alone, end. */
static kiln_err settle_one(kiln__broker *b, const kiln__delivery *dl,
                           kiln__settle *s, kiln_error *err)
{
    kiln_err rc;

    if (s->publish &&
        (rc = kiln__broker_publish(b, &s->msg, 1, NULL, err)) != KILN_OK) {
        kiln__prefix(err, "%s", s->what);
        kiln__settle_discard(s);
        return rc;
    }
    return kiln__settle_end(b, dl, s, err);
}

kiln_err kiln__dispatch_settle(const kiln__dispatch *d, kiln__broker *b,
                               const kiln__delivery *dl, const kiln__job *job,
                               kiln_error *err)
{
    kiln__settle s;
    kiln_err rc;

    if ((rc = kiln__settle_begin(d, dl, job, &s, err)) != KILN_OK)
        return rc;
    return settle_one(b, dl, &s, err);
}

kiln_err kiln__dispatch_delivery(const kiln__dispatch *d, kiln__broker *b,
                                 const kiln__delivery *dl,
                                 kiln__verdict *verdict, kiln_error *err)
{
    kiln__job job;
    kiln_err rc;

    if (kiln__dispatch_prepare(d, dl, &job))
        kiln__dispatch_run(d, &job);
    if (verdict != NULL)
        *verdict = job.verdict;
    rc = kiln__dispatch_settle(d, b, dl, &job, err);
    kiln__job_release(&job);
    return rc;
}
