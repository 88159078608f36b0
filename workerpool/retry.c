/* Retries and delays of the worker (see retry.h). */
#include "workerpool/retry.h"

#include "broker/delay.h"
#include "workerpool/backoff.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

unsigned kiln__header_uint(const kiln__delivery *dl, const char *key)
{
    const char *v = kiln__delivery_header(dl, key);
    char *end;
    unsigned long n;

    if (v == NULL || v[0] < '0' || v[0] > '9')
        return 0;
    n = strtoul(v, &end, 10);
    return *end == '\0' && n <= UINT32_MAX ? (unsigned)n : 0;
}

uint32_t kiln__earlier_deliveries(const kiln__delivery *dl)
{
    uint32_t n = dl->delivery_count;
    unsigned own = kiln__header_uint(dl, KILN__HDR_DELIVERIES);

    if (kiln__classic_redelivery(dl))
        return own < UINT32_MAX ? own + 1 : own;
    return own > n ? own : n;
}

bool kiln__classic_redelivery(const kiln__delivery *dl)
{
    return dl->redelivered && dl->delivery_count == 0;
}

uint64_t kiln__fibonacci_next(uint64_t n)
{
    uint64_t a = 1, b = 1;

    while (a <= n && b < UINT64_MAX / 2) {
        uint64_t c = a + b;
        a = b;
        b = c;
    }
    return a > n ? a : b;
}

bool kiln__retry_plan(const kiln_config *cfg, kiln_signature *sig,
                      unsigned retries, uint64_t *delay_ms)
{
    bool paota = sig->dialect != KILN_DIALECT_MACHINERY;
    uint64_t ms;

    if (paota ? sig->retries_done >= sig->retry_count : sig->retry_count <= 0)
        return false;
    if (cfg->retry_policy == KILN_RETRY_FIBONACCI) {
        uint64_t next = kiln__fibonacci_next(
            sig->retry_timeout > 0 ? (uint64_t)sig->retry_timeout : 0);
        sig->retry_timeout = next > INT32_MAX ? INT32_MAX : (int)next;
        ms = (uint64_t)sig->retry_timeout * 1000;
    } else {
        ms = kiln__backoff_ms(retries, cfg->retry_base_ms, cfg->retry_max_ms);
    }
    if (paota)
        sig->retries_done++;
    else
        sig->retry_count--;
    *delay_ms = ms < cfg->retry_max_ms ? ms : cfg->retry_max_ms;
    return true;
}

kiln_err kiln__encode_again(kiln_signature *sig, uint64_t delay_ms,
                            kiln__job *job, kiln_error *err)
{
    kiln__send_on *s = &job->send;

    kiln_signature_set_eta(
        sig, kiln__sat_add(kiln__realtime_ns(), kiln__ms_to_ns(delay_ms)));
    s->kind = KILN__SEND_RETRY;
    s->delay_ms = delay_ms;
    if (sig->dialect == KILN_DIALECT_PAOTA_HEADERS)
        return kiln__signature_to_raw_fields(sig, &s->body, &s->len,
                                             &s->headers, &s->n_headers, err);
    return kiln_signature_to_json(sig, sig->dialect, &s->body, &s->len, err);
}

/* The headers the copy adds to those it inherits from the delivery:
 * those of the new encoding (paota's header mode), then the counts, as
 * integers, which replace the delivery's, as job->send.kind says
 * (dispatch.h); a lease copy names this worker. At most
 * job->send.n_headers + 3. */
static size_t copy_headers(const kiln__job *job, kiln__hdr *h)
{
    const kiln__send_on *s = &job->send;
    int64_t retries = (int64_t)job->retries,
            deliveries = (int64_t)job->deliveries;
    size_t n = 0;

    switch (s->kind) {
    case KILN__SEND_RETRY:
        for (size_t i = 0; i < s->n_headers; i++)
            h[n++] = s->headers[i];
        retries++;
        deliveries = 0;
        break;
    case KILN__SEND_REQUEUE:
        deliveries++;
        break;
    case KILN__SEND_NONE:
    case KILN__SEND_HOLD:
    case KILN__SEND_COUNTED:
    case KILN__SEND_LEASE:
        break;
    }
    h[n++] = kiln__hdr_int(KILN__HDR_RETRIES, KILN__HV_I64, retries);
    h[n++] = kiln__hdr_int(KILN__HDR_DELIVERIES, KILN__HV_I64, deliveries);
    if (s->kind == KILN__SEND_LEASE)
        h[n++] = kiln__hdr_text(KILN__HDR_LEASE, kiln__worker_id());
    return n;
}

/* Names the copy in the log ("%s not confirmed: ..."). */
static const char *send_what(kiln__send_kind kind)
{
    switch (kind) {
    case KILN__SEND_RETRY:
        return "retry through the delay queues";
    case KILN__SEND_HOLD:
        return "copy sent back to wait in the delay queues";
    case KILN__SEND_REQUEUE:
        return "requeue through the delay queues";
    case KILN__SEND_COUNTED:
        return "counted redelivery sent on through the delay queues";
    case KILN__SEND_LEASE:
        return "lease copy";
    case KILN__SEND_NONE:
        break;
    }
    return "copy sent on through the delay queues";
}

/* What goes instead when the copy does not fit one frame: the delivery,
 * dead-lettered with a reason that says so; without a dead-letter queue,
 * the copy itself without its largest inherited headers. */
static void oversize(const kiln_config *cfg, const kiln__delivery *dl,
                     const kiln__job *job, kiln__settle *s)
{
    const char *why = job->reason.message;

    (void)snprintf(s->fallback_reason, sizeof(s->fallback_reason),
                   "%s%snot sent on through the delay queues: its headers "
                   "do not fit one frame",
                   why, why[0] != '\0' ? "; " : "");
    if (kiln__dead_letter_copy(cfg, dl, s->fallback_reason,
                               job->fn != NULL ? job->retries + 1 : 0, s->own,
                               &s->fallback))
        s->msg.oversize = &s->fallback;
    else
        s->msg.trim = true;
}

kiln_err kiln__retry_build(const kiln_config *cfg, const kiln__delivery *dl,
                           const kiln__job *job, kiln__settle *s,
                           kiln_error *err)
{
    const kiln__send_on *on = &job->send;
    uint64_t max = kiln__delay_max_ms(cfg);
    bool again = on->kind == KILN__SEND_RETRY;
    size_t n_max = (again ? on->n_headers : 0) + 3;
    kiln_err rc;

    s->what = send_what(on->kind);
    rc = kiln__delay_route(cfg, on->delay_ms < max ? on->delay_ms : max,
                           kiln__delay_dest_key(cfg), s->exchange,
                           sizeof(s->exchange), s->routing_key,
                           sizeof(s->routing_key), err);
    if (rc != KILN_OK) {
        kiln__prefix(err, "%s", s->what);
        return rc;
    }
    if ((s->headers = kiln__malloc(n_max * sizeof(*s->headers))) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "headers of a copy");
    /* The delivery's headers go on with their types, less those RabbitMQ
     * added when dead-lettering it (x-death and its kin). */
    s->msg = (kiln__message){.exchange = s->exchange,
                             .routing_key = s->routing_key,
                             .body = again ? on->body : dl->body,
                             .body_len = again ? on->len : dl->body_len,
                             .inherit = dl,
                             .keep = kiln__delay_keep_header,
                             .fields = s->headers,
                             .n_fields = copy_headers(job, s->headers),
                             .message_id = dl->message_id,
                             .priority = dl->priority,
                             .persistent = true};
    oversize(cfg, dl, job, s);
    s->publish = true;
    return KILN_OK;
}

kiln_err kiln__lease_build(const kiln_config *cfg, const kiln__delivery *dl,
                           uint64_t delay_ms, unsigned retries,
                           uint32_t deliveries, kiln__settle *s,
                           kiln_error *err)
{
    kiln__job job;
    kiln_err rc;

    memset(&job, 0, sizeof(job));
    job.send = (kiln__send_on){.kind = KILN__SEND_LEASE, .delay_ms = delay_ms};
    job.retries = retries;
    job.deliveries = deliveries;
    /* Its x-kiln-lease replaces one the delivery may carry already. */
    if ((rc = kiln__retry_build(cfg, dl, &job, s, err)) != KILN_OK)
        return rc;
    /* A lease copy that does not fit a frame is not turned into a dead
     * letter (its task still runs): the lease is tried again later. */
    s->msg.oversize = NULL;
    s->msg.trim = false;
    return KILN_OK;
}

static char worker_id[320];
static pthread_once_t worker_once = PTHREAD_ONCE_INIT;

static void make_worker_id(void)
{
    char host[256] = "";

    if (gethostname(host, sizeof(host) - 1) != 0)
        kiln__strlcpy(host, "unknown", sizeof(host));
    (void)snprintf(worker_id, sizeof(worker_id), "%s:%ld", host,
                   (long)getpid());
}

const char *kiln__worker_id(void)
{
    (void)pthread_once(&worker_once, make_worker_id);
    return worker_id;
}
