/* The producer side of a send: encode each signature, route it (through
 * the delay cascade when it has an ETA in the future, after probing its
 * destination: probe.c), record PENDING and publish the batch. See
 * dispatch.h. */
#include "broker/delay.h"
#include "broker/outgoing.h"
#include "logger/logger.h"
#include "workerpool/dispatch.h"

#include <stdio.h>
#include <string.h>

/* A task sent without a CreatedAt gets the time it is sent, as paota's
 * producer does: paota's TaskTimeOut counts from it. machinery's Signature
 * has no such key, so a machinery body carries one (after its own keys)
 * only when the task has a TaskTimeOut, the one thing that reads it; any
 * other machinery body stays byte for byte what machinery writes. */
static bool stamp_created_at(const kiln_config *cfg, const kiln_signature *sig)
{
    return !sig->has_created_at &&
           (cfg->dialect != KILN_DIALECT_MACHINERY || sig->task_timeout > 0);
}

static kiln_err encode(const kiln_config *cfg, const kiln_signature *sig,
                       kiln__staged *o, kiln_error *err)
{
    kiln_signature stamped;

    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "NULL signature");
    if (stamp_created_at(cfg, sig)) {
        /* The caller's signature is borrowed and stays as it is: a
         * shallow copy, only read by the encoder, carries the stamp. */
        stamped = *sig;
        stamped.has_created_at = true;
        stamped.created_at = (kiln__time){kiln__realtime_ns(), 0};
        sig = &stamped;
    }
    if (cfg->dialect == KILN_DIALECT_PAOTA_HEADERS)
        return kiln__signature_to_raw_fields(sig, &o->body, &o->len,
                                             &o->headers, &o->n_headers, err);
    return kiln_signature_to_json(sig, cfg->dialect, &o->body, &o->len, err);
}

static const char *destination(const kiln_config *cfg,
                               const kiln_signature *sig)
{
    return sig->routing_key[0]   ? sig->routing_key
           : cfg->binding_key[0] ? cfg->binding_key
                                 : cfg->queue;
}

/* An ETA in the future sends the task through the delay cascade; one
 * further away than the cascade holds is an error. The difference
 * saturates, so an ETA of any int64 is either due or too far. */
static kiln_err route_eta(const kiln_config *cfg, const kiln_signature *sig,
                          kiln__staged *o, kiln_error *err)
{
    uint64_t left_ms;
    kiln_err rc;

    if (!sig->has_eta || (left_ms = kiln__ns_to_ms_ceil(kiln__sat_sub(
                              sig->eta.unix_ns, kiln__realtime_ns()))) == 0)
        return KILN_OK;
    rc = kiln__delay_route(cfg, left_ms, destination(cfg, sig), o->exchange,
                           sizeof(o->exchange), o->routing_key,
                           sizeof(o->routing_key), err);
    if (rc != KILN_OK)
        kiln__prefix(err, "ETA");
    return rc;
}

static kiln__message outgoing_message(const kiln_config *cfg,
                                      const kiln_signature *sig,
                                      const kiln__staged *o)
{
    bool delayed = o->exchange[0] != '\0';

    return (kiln__message){
        .exchange = delayed ? o->exchange : cfg->exchange,
        .routing_key = delayed ? o->routing_key : destination(cfg, sig),
        .body = o->body,
        .body_len = o->len,
        .fields = o->headers,
        .n_fields = o->n_headers,
        .message_id = sig->uuid,
        .priority = (uint8_t)(sig->priority > 255 ? 255 : sig->priority),
        .persistent = true};
}

/* The UUID and the routing key travel as AMQP short strings (255 bytes),
 * which a decoded signature may exceed. Checked per signature, before
 * PENDING is written and before its message joins a batch that other
 * callers share, so that no message can fail the batch. */
static kiln_err check_names(const kiln_config *cfg, const kiln_signature *sig,
                            kiln_error *err)
{
    size_t n;

    if ((n = strlen(kiln_signature_uuid(sig))) > 255)
        return kiln__fail(err, KILN_EINVAL,
                          "UUID of %zu bytes: it travels as the AMQP message "
                          "id, which holds 255",
                          n);
    if ((n = strlen(destination(cfg, sig))) > 255)
        return kiln__fail(err, KILN_EINVAL,
                          "routing key of %zu bytes: an AMQP routing key "
                          "holds 255",
                          n);
    return KILN_OK;
}

/* The whole message, as a broker will check it: header names, and its
 * properties within the largest frame any connection of kiln has. */
static kiln_err check_message(const kiln_config *cfg, const kiln_signature *sig,
                              const kiln__staged *o, kiln_error *err)
{
    kiln__message m = outgoing_message(cfg, sig, o);

    return kiln__message_check(&m, KILN__MAX_PROPS, NULL, err);
}

/* Records PENDING for every signature staged so far (out[i].rc == OK),
 * in one store call; a failure marks that signature. */
static void stage_pending(kiln__store *store, const kiln_signature *const *sigs,
                          size_t from, size_t n, kiln__staged *out,
                          size_t *first, kiln_error *err)
{
    kiln__state_update *u =
        kiln__calloc(n - from, sizeof(*u) + sizeof(kiln_err) + sizeof(size_t));
    kiln_err *st;
    size_t *idx, m = 0;
    kiln_error e;

    if (u == NULL) {
        for (size_t i = from; i < n; i++) {
            if (out[i].rc != KILN_OK)
                continue;
            out[i].rc = KILN_ENOMEM;
            if (i < *first) {
                kiln__fail(err, KILN_ENOMEM, "task %zu (%.64s): PENDING", i,
                           sigs[i]->name);
                *first = i;
            }
        }
        return;
    }
    /* One block; alignments decrease along it. */
    idx = (size_t *)(void *)(u + (n - from));
    st = (kiln_err *)(void *)(idx + (n - from));
    for (size_t i = from; i < n; i++) {
        if (out[i].rc != KILN_OK)
            continue;
        u[m] = (kiln__state_update){.uuid = sigs[i]->uuid,
                                    .task_name = sigs[i]->name,
                                    .state = KILN_STATE_PENDING};
        idx[m++] = i;
    }
    if (m > 0 && kiln__store_add_pending(store, u, m, st, &e) != KILN_OK) {
        for (size_t j = 0; j < m; j++) {
            size_t i = idx[j];
            if ((out[i].rc = st[j]) == KILN_OK)
                continue;
            if (i < *first)
                kiln__fail(err, st[j], "task %zu (%.64s): %s", i, sigs[i]->name,
                           e.message);
            *first = i < *first ? i : *first;
        }
    }
    kiln__free(u);
}

size_t kiln__stage_range(const kiln_config *cfg, kiln__store *store,
                         const kiln__prober *probe,
                         const kiln_signature *const *sigs, size_t from,
                         size_t n, kiln__staged *out, kiln__message *msgs,
                         size_t *map, size_t *first, kiln_error *err)
{
    size_t m = 0;

    for (size_t i = from; i < n; i++) {
        const kiln_signature *sig = sigs[i];
        kiln_error e;

        if ((out[i].rc = encode(cfg, sig, &out[i], &e)) != KILN_OK ||
            (out[i].rc = check_names(cfg, sig, &e)) != KILN_OK ||
            (out[i].rc = route_eta(cfg, sig, &out[i], &e)) != KILN_OK ||
            (out[i].rc = check_message(cfg, sig, &out[i], &e)) != KILN_OK) {
            if (i < *first)
                kiln__fail(err, out[i].rc, "task %zu (%.64s): %s", i,
                           sig ? sig->name : "?", e.message);
            *first = i < *first ? i : *first;
        }
    }
    /* Before PENDING: a task refused here leaves no state behind. */
    kiln__probe_staged(cfg, probe, sigs, from, n, out, first, err);
    if (store != NULL)
        stage_pending(store, sigs, from, n, out, first, err);
    for (size_t i = from; i < n; i++) {
        if (out[i].rc != KILN_OK)
            continue;
        msgs[m] = outgoing_message(cfg, sigs[i], &out[i]);
        map[m++] = i;
    }
    return m;
}

size_t kiln__stage_tasks(const kiln_config *cfg, kiln__store *store,
                         const kiln__prober *probe,
                         const kiln_signature *const *sigs, size_t n,
                         kiln__staged *out, kiln__message *msgs, size_t *map,
                         size_t *first, kiln_error *err)
{
    return kiln__stage_range(cfg, store, probe, sigs, 0, n, out, msgs, map,
                             first, err);
}

void kiln__staged_release(kiln__staged *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        kiln__free(out[i].body);
        kiln__free(out[i].headers);
        memset(&out[i], 0, sizeof(out[i]));
    }
}

bool kiln__unsent_definite(kiln_err status)
{
    return status != KILN_OK && status != KILN_ETIMEDOUT &&
           status != KILN_ECLOSED;
}

static const char *unsent_reason(kiln_err status)
{
    switch (status) {
    case KILN_EBROKER:
        return "the broker did not take it (nacked, returned unroutable, or "
               "not written within KILN_PUBLISH_TIMEOUT_MS)";
    case KILN_EINVAL:
    case KILN_ETOOBIG:
        return "refused before it was written: no broker can take it";
    default:
        return kiln_strerror(status);
    }
}

void kiln__stage_unsent(kiln__store *store, const kiln_signature *const *sigs,
                        const size_t *map, const kiln_err *pst,
                        const bool *lost, size_t m, size_t why_j,
                        const char *why)
{
    char text[sizeof(((kiln_error *)0)->message) + 64];

    for (size_t j = 0; store != NULL && j < m; j++) {
        const kiln_signature *sig = sigs[map[j]];
        kiln__state_update u = {.uuid = sig->uuid,
                                .task_name = sig->name,
                                .state = KILN_STATE_FAILURE,
                                .error = text};
        kiln_error e;

        if (!kiln__unsent_definite(pst[j]) || (lost != NULL && lost[j]))
            continue;
        (void)snprintf(text, sizeof(text), "not sent: %s",
                       j == why_j && why != NULL ? why : unsent_reason(pst[j]));
        if (kiln__store_send_failed(store, &u, &e) != KILN_OK)
            kiln__log_task(KILN_LOG_WARN, "pool", sig->uuid, sig->name,
                           "its send failed and its FAILURE could not be "
                           "recorded, so the store keeps it PENDING: %s",
                           e.message);
    }
}

static kiln_err broker_publish(void *ctx, const kiln__message *msgs, size_t n,
                               kiln_err *status, kiln_error *err)
{
    return kiln__broker_publish(ctx, msgs, n, status, err);
}

/* kiln__stage_unsent after a publish on `b`, which may say that a
 * message was lost with the connection rather than refused. */
static void record_unsent(kiln__broker *b, kiln__store *store,
                          const kiln_signature *const *sigs, const size_t *map,
                          const kiln_err *pst, size_t m, size_t why_j,
                          const char *why)
{
    bool *lost = NULL;

    if (store == NULL)
        return;
    if (kiln__broker_knows_lost(b) &&
        (lost = kiln__calloc(m, sizeof(*lost))) == NULL)
        return; /* unsure which were lost: they stay PENDING */
    for (size_t j = 0; lost != NULL && j < m; j++)
        lost[j] = pst[j] != KILN_OK && kiln__broker_publish_lost(b, j);
    kiln__stage_unsent(store, sigs, map, pst, lost, m, why_j, why);
    kiln__free(lost);
}

kiln_err kiln__send_tasks(const kiln_config *cfg, kiln__broker *b,
                          kiln__store *store, const kiln_signature *const *sigs,
                          size_t n, kiln_err *status, kiln_error *err)
{
    kiln__prober probe = {.publish = broker_publish, .ctx = b};
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
    m = kiln__stage_tasks(cfg, store, &probe, sigs, n, out, msgs, map, &first,
                          err);
    for (size_t j = 0; j < m; j++)
        pst[j] = KILN_ETIMEDOUT; /* what a message nobody settled is */
    if (m > 0 && kiln__broker_publish(b, msgs, m, pst, &e) != KILN_OK) {
        size_t why_j = m;
        for (size_t j = 0; j < m; j++) {
            out[map[j]].rc = pst[j];
            why_j = pst[j] != KILN_OK && why_j == m ? j : why_j;
            if (pst[j] != KILN_OK && map[j] < first) {
                first = map[j];
                kiln__fail(err, pst[j], "task %zu (%.64s): %s", first,
                           sigs[first]->name, e.message);
            }
        }
        record_unsent(b, store, sigs, map, pst, m, why_j, e.message);
    }
    for (size_t i = 0; status != NULL && i < n; i++)
        status[i] = out[i].rc;
    if (first < n)
        rc = out[first].rc;
    kiln__staged_release(out, n);
    kiln__free(out);
    return rc;
}
