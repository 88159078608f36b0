/*
 * Retries and delays of the worker: counting deliveries, planning a retry
 * with each dialect's counters, encoding the signature again and sending
 * a delivery on through the delay cascade. Used by dispatch.c. Never
 * installed.
 */
#ifndef KILN_RETRY_H
#define KILN_RETRY_H

#include "workerpool/dispatch.h"

/* The decimal header `key` of `dl`, or 0 when absent or not a number. */
unsigned kiln__header_uint(const kiln__delivery *dl, const char *key);

/* Earlier deliveries of `dl`: the larger of a quorum queue's
 * x-delivery-count and kiln's own x-kiln-deliveries (carried by messages
 * kiln sent on through the cascade); for a classic redelivery (see
 * kiln__classic_redelivery) x-kiln-deliveries plus one. */
uint32_t kiln__earlier_deliveries(const kiln__delivery *dl);

/* True for a delivery that was delivered before and carries no
 * x-delivery-count: a classic queue's redelivery, which says only "at
 * least once before". The worker sends it on through the cascade with
 * the count in x-kiln-deliveries before running it, so that counts add
 * up across redeliveries as a quorum queue's do. */
bool kiln__classic_redelivery(const kiln__delivery *dl);

/* machinery's retry.FibonacciNext: the first Fibonacci number (1, 2, 3,
 * 5, 8 ...) greater than `n`. */
uint64_t kiln__fibonacci_next(uint64_t n);

/* Decides whether a task that failed is run again, and when. The
 * counters follow the signature's dialect: machinery's RetryCount is what
 * is left (decremented here), paota's is the total and RetriesDone is
 * counted up here. The delay: KILN_RETRY_POLICY fibonacci grows
 * RetryTimeout as machinery does (1, 2, 3, 5 ... seconds, the first one
 * after RetryTimeout); exponential is full jitter over
 * min(KILN_RETRY_MAX_MS, KILN_RETRY_BASE_MS x 2^retries). Either is capped
 * by KILN_RETRY_MAX_MS. Returns false, leaving `sig` as it is, when no
 * retry is left. */
bool kiln__retry_plan(const kiln_config *cfg, kiln_signature *sig,
                      unsigned retries, uint64_t *delay_ms);

/* Sets the ETA of `sig` to now + delay_ms and encodes it in the dialect
 * it came in, into job->send (kind KILN__SEND_RETRY: body, and headers
 * for paota's header mode; delay_ms). */
kiln_err kiln__encode_again(kiln_signature *sig, uint64_t delay_ms,
                            kiln__job *job, kiln_error *err);

/* Builds into *s the message that sends `dl` on through the delay cascade
 * as job->send says (its kind, dispatch.h, decides the body and the
 * counts), to reach cfg's queue again after send.delay_ms (the key the
 * queue is bound with on the cascade's delivery exchange); its settle
 * then acks `dl`. The delivery's headers go on with their types, less
 * those RabbitMQ added when dead-lettering (kiln__delay_keep_header); a
 * retry's new encoding's headers (paota's header mode, typed) and
 * x-kiln-retries and x-kiln-deliveries (integers) replace theirs. Should
 * the copy not fit one frame, the delivery is dead-lettered instead, with
 * a reason that says so (s->fallback). *s comes initialised by
 * kiln__settle_begin.
 */
kiln_err kiln__retry_build(const kiln_config *cfg, const kiln__delivery *dl,
                           const kiln__job *job, kiln__settle *s,
                           kiln_error *err);

/* Builds into *s a lease copy of `dl`: its body and headers sent on
 * through the delay cascade to come back to cfg's queue after `delay_ms`,
 * with x-kiln-lease naming this worker and x-kiln-retries and
 * x-kiln-deliveries set to `retries` and `deliveries`. It takes the place
 * of a delivery whose task runs for longer than the broker's
 * consumer_timeout allows it to stay unacked. *s comes initialised by
 * kiln__settle_begin's rules (the caller zeroes it). */
kiln_err kiln__lease_build(const kiln_config *cfg, const kiln__delivery *dl,
                           uint64_t delay_ms, unsigned retries,
                           uint32_t deliveries, kiln__settle *s,
                           kiln_error *err);

/* "host:pid" of this process, for dead-letter headers. Static storage;
 * thread-safe. */
const char *kiln__worker_id(void);

#endif /* KILN_RETRY_H */
