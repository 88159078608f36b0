/*
 * Capped exponential backoff with full jitter, for reconnects. Never
 * installed.
 */
#ifndef KILN_BACKOFF_H
#define KILN_BACKOFF_H

#include "core/core.h"

/* kiln__backoff_ms returns a delay for retry number `attempt` (0 for the
 * first retry): uniform in [0, min(cap_ms, base_ms * 2^attempt)], at least
 * 1 ms ("full jitter": reconnecting clients spread out instead of hitting
 * a restarted broker together). Thread-safe. */
uint64_t kiln__backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms);

/* Reconnect policy shared by the consumer and the publishers: first retry
 * after up to 100 ms, doubling, never more than 10 s apart. */
#define KILN__RECONNECT_BASE_MS 100
#define KILN__RECONNECT_CAP_MS  10000

#endif /* KILN_BACKOFF_H */
