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
    kiln_signature_set_eta(
        sig, kiln__sat_add(kiln__realtime_ns(), kiln__ms_to_ns(delay_ms)));
    job->delay_ms = delay_ms;
    if (sig->dialect == KILN_DIALECT_PAOTA_HEADERS)
        return kiln__signature_to_raw_fields(sig, &job->out_body, &job->out_len,
                                             &job->out_headers,
                                             &job->n_out_headers, err);
    return kiln_signature_to_json(sig, sig->dialect, &job->out_body,
                                  &job->out_len, err);
}

/* The headers the copy adds to those it inherits from the delivery:
 * those of the new encoding (paota's header mode), then the counts, as
 * integers, which replace the delivery's. */
static size_t copy_headers(const kiln__job *job, kiln__hdr *h)
{
    bool again = job->out_body != NULL;
    size_t n = 0;

    for (size_t i = 0; again && i < job->n_out_headers; i++)
        h[n++] = job->out_headers[i];
    /* A retry counts one more; a requeue counts a delivery and a retry
     * starts counting afresh; a task early for its ETA, or a classic
     * redelivery (whose count already includes the delivery before),
     * keeps its count. */
    h[n++] = kiln__hdr_int(KILN__HDR_RETRIES, KILN__HV_I64,
                           (int64_t)job->retries + (again ? 1 : 0));
    h[n++] = kiln__hdr_int(KILN__HDR_DELIVERIES, KILN__HV_I64,
                           job->count ? (int64_t)job->deliveries + 1
                           : again    ? 0
                                      : (int64_t)job->deliveries);
    return n;
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
    uint64_t max = kiln__delay_max_ms(cfg);
    bool again = job->out_body != NULL;
    size_t n_max = (again ? job->n_out_headers : 0) + 2;
    kiln_err rc;

    s->what = "sending on through the delay queues";
    rc = kiln__delay_route(cfg, job->delay_ms < max ? job->delay_ms : max,
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
                             .body = again ? job->out_body : dl->body,
                             .body_len = again ? job->out_len : dl->body_len,
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
    kiln__hdr *h;
    kiln_err rc;

    memset(&job, 0, sizeof(job));
    job.delay_ms = delay_ms;
    job.retries = retries;
    job.deliveries = deliveries;
    if ((rc = kiln__retry_build(cfg, dl, &job, s, err)) != KILN_OK)
        return rc;
    s->what = "lease copy";
    /* A lease copy that does not fit a frame is not turned into a dead
     * letter (its task still runs): the lease is tried again later. */
    s->msg.oversize = NULL;
    s->msg.trim = false;
    /* It replaces an x-kiln-lease the delivery may carry already. */
    h = kiln__realloc(s->headers, (s->msg.n_fields + 1) * sizeof(*h));
    if (h == NULL) {
        kiln__settle_discard(s);
        return kiln__fail(err, KILN_ENOMEM, "headers of a lease copy");
    }
    h[s->msg.n_fields] = kiln__hdr_text(KILN__HDR_LEASE, kiln__worker_id());
    s->headers = h;
    s->msg.fields = h;
    s->msg.n_fields++;
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
