/* The per-delivery logic of a worker: decode, look up, run, record,
 * settle. See dispatch.h for which step runs on which thread.
 *
 * Delivery is at least once (DESIGN "Wire format and topology"): a
 * delivery is acked only after its final state is written and any message
 * it causes is confirmed. So a failed final store write requeues the
 * delivery, and a failed dead-letter or retry publish leaves it unacked for
 * the broker to redeliver. */
#include "workerpool/dispatch.h"

#include "logger/logger.h"
#include "workerpool/backoff.h"

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

/* The first failure of an outage is logged as a warning, the rest at
 * debug level; the first success after it says the store is back. */
static void note_failure(const kiln__dispatch *d, const char *uuid,
                         const char *name, kiln__task_state state,
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
                       const char *name, kiln__task_state state,
                       const kiln__values *results, const char *error)
{
    kiln__state_update u = {uuid, name, state, results, error};
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

/* For a body that did not decode: the task's UUID and name where they can
 * still be read (paota's headers, or the JSON's top-level keys), so the
 * store can mark it FAILURE. */
static void salvage_ids(const kiln__dispatch *d, const kiln__delivery *dl,
                        char *uuid, char *name, size_t n)
{
    size_t max = d->cfg->max_body_bytes ? d->cfg->max_body_bytes
                                        : KILN__DEFAULT_MAX_BODY;
    const char *hu = kiln__delivery_header(dl, "uuid");
    const char *hn = kiln__delivery_header(dl, KILN__HDR_TASK_NAME);
    cJSON *root, *item;

    kiln__strlcpy(uuid, hu ? hu : "", n);
    kiln__strlcpy(name, hn ? hn : "", n);
    if (uuid[0] != '\0' || hn != NULL || dl->body_len > max)
        return;
    if ((root = cJSON_ParseWithLength(dl->body, dl->body_len)) == NULL)
        return;
    if (cJSON_IsString(item = cJSON_GetObjectItemCaseSensitive(root, "UUID")))
        kiln__strlcpy(uuid, item->valuestring, n);
    if (cJSON_IsString(item = cJSON_GetObjectItemCaseSensitive(root, "Name")))
        kiln__strlcpy(name, item->valuestring, n);
    cJSON_Delete(root);
}

/* Bad input: dead-letter with the reason, after a worker wrote FAILURE
 * when there is a store and the UUID can be read. */
static bool refuse(const kiln__dispatch *d, const kiln__delivery *dl,
                   kiln__job *job, kiln_err status)
{
    job->status = status;
    job->verdict = KILN__VERDICT_DEADLETTER;
    if (job->sig != NULL) {
        kiln__strlcpy(job->failed_uuid, job->sig->uuid,
                      sizeof(job->failed_uuid));
        kiln__strlcpy(job->failed_name, job->sig->name,
                      sizeof(job->failed_name));
    } else {
        salvage_ids(d, dl, job->failed_uuid, job->failed_name,
                    sizeof(job->failed_uuid));
    }
    kiln__log_task(KILN_LOG_WARN, MODULE, job->failed_uuid, job->failed_name,
                   "dead-lettered: %s", job->reason.message);
    if (d->store == NULL || job->failed_uuid[0] == '\0') {
        job->failed_uuid[0] = '\0';
        return false;
    }
    return true;
}

static bool unregistered(const kiln__dispatch *d, const kiln__delivery *dl,
                         kiln__job *job)
{
    const kiln_signature *sig = job->sig;

    kiln__fail(&job->reason, KILN_ENOHANDLER, "unregistered task %s",
               sig->name);
    if (sig->ignore_unregistered ||
        d->cfg->unregistered == KILN_UNREGISTERED_DROP) {
        job->status = KILN_ENOHANDLER;
        job->verdict = KILN__VERDICT_ACK;
        kiln__log_task(KILN_LOG_INFO, MODULE, sig->uuid, sig->name,
                       "dropped: unregistered task (%s)",
                       sig->ignore_unregistered ? "IgnoreWhenTaskNotRegistered"
                                                : "unregistered policy drop");
        return false;
    }
    if (d->cfg->unregistered == KILN_UNREGISTERED_REQUEUE) {
        job->status = KILN_ENOHANDLER;
        job->verdict = KILN__VERDICT_REQUEUE;
        kiln__log_task(KILN_LOG_WARN, MODULE, sig->uuid, sig->name,
                       "requeued: unregistered task (delivery %u)",
                       dl->delivery_count + 1);
        return false;
    }
    return refuse(d, dl, job, KILN_ENOHANDLER);
}

bool kiln__dispatch_prepare(const kiln__dispatch *d, const kiln__delivery *dl,
                            kiln__job *job)
{
    unsigned max = d->cfg->max_deliveries;
    kiln_err rc;

    memset(job, 0, sizeof(*job));
    if ((rc = decode(d, dl, &job->sig, &job->reason)) != KILN_OK) {
        kiln__prefix(&job->reason, "undecodable message");
        return refuse(d, dl, job, rc);
    }
    if (max > 0 && dl->delivery_count >= max) {
        kiln__fail(&job->reason, KILN_EINVAL,
                   "delivered %u times (max_deliveries %u)",
                   dl->delivery_count + 1, max);
        return refuse(d, dl, job, KILN_EINVAL);
    }
    if (kiln_registry_lookup(d->reg, job->sig->name, &job->fn, &job->user) !=
        KILN_OK)
        return unregistered(d, dl, job);
    return true;
}

/* ---- run ---------------------------------------------------------------- */

/* Turns the task's return into a verdict and records the state. */
static void conclude(const kiln__dispatch *d, kiln__job *job,
                     const kiln_task_ctx *ctx, kiln_err rc)
{
    const kiln_signature *sig = job->sig;
    const kiln__values *res = ctx->results ? &ctx->results->args : NULL;

    job->status = rc;
    if (rc == KILN_OK) {
        job->verdict = KILN__VERDICT_ACK;
        kiln__log_task(KILN_LOG_DEBUG, MODULE, sig->uuid, sig->name,
                       "succeeded");
        if (record(d, sig->uuid, sig->name, KILN__STATE_SUCCESS, res, NULL) !=
            KILN_OK)
            job->verdict = KILN__VERDICT_REQUEUE;
        return;
    }
    if (rc == KILN_ERETRY) {
        job->verdict = KILN__VERDICT_RETRY;
        job->retry_delay_ms = ctx->retry_delay_ms;
        kiln__fail(&job->reason, KILN_ERETRY, "retry in %llu ms",
                   (unsigned long long)ctx->retry_delay_ms);
        kiln__log_task(KILN_LOG_INFO, MODULE, sig->uuid, sig->name, "%s",
                       job->reason.message);
        (void)record(d, sig->uuid, sig->name, KILN__STATE_RETRY, NULL,
                     job->reason.message);
        return;
    }
    if (rc == KILN_ETASK && ctx->failure.code == KILN_ETASK)
        job->reason = ctx->failure;
    else
        kiln__fail(&job->reason, rc, "task returned: %s", kiln_strerror(rc));
    job->verdict = KILN__VERDICT_DEADLETTER;
    kiln__log_task(KILN_LOG_WARN, MODULE, sig->uuid, sig->name, "failed: %s",
                   job->reason.message);
    if (record(d, sig->uuid, sig->name, KILN__STATE_FAILURE, NULL,
               job->reason.message) != KILN_OK)
        job->verdict = KILN__VERDICT_REQUEUE;
}

void kiln__dispatch_run(const kiln__dispatch *d, kiln__job *job)
{
    const kiln_signature *sig = job->sig;
    kiln_task_ctx ctx;
    kiln_err rc;

    if (job->fn == NULL) {
        /* Refused input: its FAILURE, then the dead-letter queue. */
        if (job->failed_uuid[0] != '\0' &&
            record(d, job->failed_uuid, job->failed_name, KILN__STATE_FAILURE,
                   NULL, job->reason.message) != KILN_OK)
            job->verdict = KILN__VERDICT_REQUEUE;
        return;
    }
    /* A worker thread takes a task at the moment it starts it, so STARTED
     * says RECEIVED too: a RECEIVED write of its own would cost a store
     * round trip per task for a state that lasts microseconds. */
    (void)record(d, sig->uuid, sig->name, KILN__STATE_STARTED, NULL, NULL);
    if ((rc = kiln__task_ctx_init(&ctx, sig, &job->reason)) != KILN_OK) {
        job->status = rc;
        job->verdict = KILN__VERDICT_REQUEUE;
        return;
    }
    rc = job->fn(&ctx, job->user);
    conclude(d, job, &ctx, rc);
    kiln__task_ctx_release(&ctx);
}

void kiln__job_release(kiln__job *job)
{
    if (job == NULL)
        return;
    kiln_signature_free(job->sig);
    memset(job, 0, sizeof(*job));
}

/* ---- settle ------------------------------------------------------------- */

/* Publishes a persistent copy of `dl` with `extra` headers added (replacing
 * any of the same key) and waits for its confirm. */
static kiln_err publish_copy(kiln__broker *b, const char *exchange,
                             const char *routing_key, const kiln__delivery *dl,
                             const kiln_header *extra, size_t n_extra,
                             kiln_error *err)
{
    kiln_header *h = kiln__malloc((dl->n_headers + n_extra) * sizeof(*h));
    kiln__message m = {.exchange = exchange,
                       .routing_key = routing_key,
                       .body = dl->body,
                       .body_len = dl->body_len,
                       .message_id = dl->message_id,
                       .priority = dl->priority,
                       .persistent = true};
    size_t n = 0;
    kiln_err rc;

    if (h == NULL)
        return kiln__fail(err, KILN_ENOMEM, "headers of a copy");
    for (size_t i = 0; i < dl->n_headers; i++) {
        bool replaced = false;
        for (size_t j = 0; j < n_extra && !replaced; j++)
            replaced = strcmp(dl->headers[i].key, extra[j].key) == 0;
        if (!replaced)
            h[n++] = dl->headers[i];
    }
    memcpy(h + n, extra, n_extra * sizeof(*h));
    m.headers = h;
    m.n_headers = n + n_extra;
    rc = kiln__broker_publish(b, &m, 1, NULL, err);
    kiln__free(h);
    return rc;
}

kiln_err kiln__dead_letter(kiln__broker *b, const kiln_config *cfg,
                           const kiln__delivery *dl, const char *reason,
                           kiln_error *err)
{
    const kiln_header extra[] = {
        {KILN__HDR_REASON, reason},
        {KILN__HDR_EXCHANGE, dl->exchange},
        {KILN__HDR_ROUTING_KEY, dl->routing_key},
    };
    kiln_err rc;

    if (cfg->dead_letter_queue[0] == '\0') {
        kiln__log(KILN_LOG_ERR, MODULE,
                  "no dead-letter queue configured; "
                  "dropping message_id=%s reason=%s",
                  dl->message_id, reason);
        return kiln__broker_nack(b, dl->tag, false, err);
    }
    rc = publish_copy(b, cfg->dead_letter_exchange, cfg->dead_letter_queue, dl,
                      extra, KILN__ARRAY_LEN(extra), err);
    if (rc != KILN_OK) {
        kiln__prefix(err, "dead-letter");
        return rc;
    }
    return kiln__broker_ack(b, dl->tag, false, err);
}

/* For now a retry goes straight back to the queue it came from, with the
 * asked-for delay in a header; the delay cascade will honour it later. */
static kiln_err retry_later(kiln__broker *b, const kiln__delivery *dl,
                            uint64_t delay_ms, kiln_error *err)
{
    char delay[24];
    kiln_header extra[1] = {{KILN__HDR_RETRY_DELAY, delay}};
    kiln_err rc;

    (void)snprintf(delay, sizeof(delay), "%llu", (unsigned long long)delay_ms);
    rc = publish_copy(b, dl->exchange, dl->routing_key, dl, extra, 1, err);
    if (rc != KILN_OK) {
        kiln__prefix(err, "retry");
        return rc;
    }
    return kiln__broker_ack(b, dl->tag, false, err);
}

kiln_err kiln__dispatch_settle(const kiln__dispatch *d, kiln__broker *b,
                               const kiln__delivery *dl, const kiln__job *job,
                               kiln_error *err)
{
    switch (job->verdict) {
    case KILN__VERDICT_ACK:
        return kiln__broker_ack(b, dl->tag, false, err);
    case KILN__VERDICT_DEADLETTER:
        return kiln__dead_letter(b, d->cfg, dl, job->reason.message, err);
    case KILN__VERDICT_RETRY:
        return retry_later(b, dl, job->retry_delay_ms, err);
    case KILN__VERDICT_REQUEUE:
        return kiln__broker_nack(b, dl->tag, true, err);
    }
    return kiln__fail(err, KILN_EINVAL, "unknown verdict %d",
                      (int)job->verdict);
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

/* ---- producer ----------------------------------------------------------- */

static kiln_err encode(const kiln_config *cfg, const kiln_signature *sig,
                       kiln__staged *o, kiln_error *err)
{
    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "NULL signature");
    if (cfg->dialect == KILN_DIALECT_PAOTA_HEADERS)
        return kiln_signature_to_raw(sig, &o->body, &o->len, &o->headers,
                                     &o->n_headers, err);
    return kiln_signature_to_json(sig, cfg->dialect, &o->body, &o->len, err);
}

static kiln__message outgoing_message(const kiln_config *cfg,
                                      const kiln_signature *sig,
                                      const kiln__staged *o)
{
    const char *key = sig->routing_key[0]   ? sig->routing_key
                      : cfg->binding_key[0] ? cfg->binding_key
                                            : cfg->queue;

    return (kiln__message){
        .exchange = cfg->exchange,
        .routing_key = key,
        .body = o->body,
        .body_len = o->len,
        .headers = o->headers,
        .n_headers = o->n_headers,
        .message_id = sig->uuid,
        .priority = (uint8_t)(sig->priority > 255 ? 255 : sig->priority),
        .persistent = true};
}

/* Records PENDING for every signature staged so far (out[i].rc == OK),
 * in one store call; a failure marks that signature. */
static void stage_pending(kiln__store *store, const kiln_signature *const *sigs,
                          size_t n, kiln__staged *out, size_t *first,
                          kiln_error *err)
{
    kiln__state_update *u =
        kiln__calloc(n, sizeof(*u) + sizeof(kiln_err) + sizeof(size_t));
    kiln_err *st;
    size_t *idx, m = 0;
    kiln_error e;

    if (u == NULL) {
        for (size_t i = 0; i < n; i++) {
            if (out[i].rc != KILN_OK)
                continue;
            out[i].rc = KILN_ENOMEM;
            if (i < *first) {
                kiln__fail(err, KILN_ENOMEM, "task %zu (%s): PENDING", i,
                           sigs[i]->name);
                *first = i;
            }
        }
        return;
    }
    /* One block; alignments decrease along it. */
    idx = (size_t *)(void *)(u + n);
    st = (kiln_err *)(void *)(idx + n);
    for (size_t i = 0; i < n; i++) {
        if (out[i].rc != KILN_OK)
            continue;
        u[m] = (kiln__state_update){.uuid = sigs[i]->uuid,
                                    .task_name = sigs[i]->name,
                                    .state = KILN__STATE_PENDING};
        idx[m++] = i;
    }
    if (m > 0 && kiln__store_add_pending(store, u, m, st, &e) != KILN_OK) {
        for (size_t j = 0; j < m; j++) {
            size_t i = idx[j];
            if ((out[i].rc = st[j]) == KILN_OK)
                continue;
            if (i < *first)
                kiln__fail(err, st[j], "task %zu (%s): %s", i, sigs[i]->name,
                           e.message);
            *first = i < *first ? i : *first;
        }
    }
    kiln__free(u);
}

size_t kiln__stage_tasks(const kiln_config *cfg, kiln__store *store,
                         const kiln_signature *const *sigs, size_t n,
                         kiln__staged *out, kiln__message *msgs, size_t *map,
                         size_t *first, kiln_error *err)
{
    size_t m = 0;

    for (size_t i = 0; i < n; i++) {
        const kiln_signature *sig = sigs[i];
        kiln_error e;

        if ((out[i].rc = encode(cfg, sig, &out[i], &e)) != KILN_OK) {
            if (i < *first)
                kiln__fail(err, out[i].rc, "task %zu (%s): %s", i,
                           sig ? sig->name : "?", e.message);
            *first = i < *first ? i : *first;
        }
    }
    if (store != NULL)
        stage_pending(store, sigs, n, out, first, err);
    for (size_t i = 0; i < n; i++) {
        if (out[i].rc != KILN_OK)
            continue;
        msgs[m] = outgoing_message(cfg, sigs[i], &out[i]);
        map[m++] = i;
    }
    return m;
}

void kiln__staged_release(kiln__staged *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        kiln__free(out[i].body);
        kiln__free(out[i].headers);
        memset(&out[i], 0, sizeof(out[i]));
    }
}

kiln_err kiln__send_tasks(const kiln_config *cfg, kiln__broker *b,
                          kiln__store *store, const kiln_signature *const *sigs,
                          size_t n, kiln_err *status, kiln_error *err)
{
    kiln__staged *out;
    kiln__message *msgs;
    size_t *map, first = n, m;
    kiln_err *pst, rc = KILN_OK;
    kiln_error e;

    if (cfg == NULL || b == NULL || (sigs == NULL && n > 0))
        return kiln__fail(err, KILN_EINVAL, "cfg, broker and sigs required");
    if (n == 0)
        return KILN_OK;
    /* One block: the per-task state, the batch, its index map and the
     * publish statuses (alignments decrease along the block). */
    out = kiln__calloc(n, sizeof(*out) + sizeof(*msgs) + sizeof(*map) +
                              sizeof(*pst));
    if (out == NULL)
        return kiln__fail(err, KILN_ENOMEM, "send: %zu tasks", n);
    msgs = (kiln__message *)(void *)(out + n);
    map = (size_t *)(void *)(msgs + n);
    pst = (kiln_err *)(void *)(map + n);
    m = kiln__stage_tasks(cfg, store, sigs, n, out, msgs, map, &first, err);
    for (size_t j = 0; j < m; j++)
        pst[j] = KILN_ETIMEDOUT; /* what a message nobody settled is */
    if (m > 0 && kiln__broker_publish(b, msgs, m, pst, &e) != KILN_OK) {
        for (size_t j = 0; j < m; j++) {
            out[map[j]].rc = pst[j];
            if (pst[j] != KILN_OK && map[j] < first) {
                first = map[j];
                kiln__fail(err, pst[j], "task %zu (%s): %s", first,
                           sigs[first]->name, e.message);
            }
        }
    }
    for (size_t i = 0; status != NULL && i < n; i++)
        status[i] = out[i].rc;
    if (first < n)
        rc = out[first].rc;
    kiln__staged_release(out, n);
    kiln__free(out);
    return rc;
}
