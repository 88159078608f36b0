/*
 * The binary delay cascade: how a delayed message (an ETA, a countdown, a
 * retry delay) is named and routed on plain RabbitMQ, as pure functions
 * with no I/O, so that the AMQP declare (broker/amqp_delay.c), the
 * in-memory mock (mocks/) and the producer share one definition. Never
 * installed. docs/wire-format.md describes the same thing for other
 * clients.
 *
 * With N = KILN_DELAY_LEVELS levels and a unit u = KILN_DELAY_UNIT_MS, a
 * delay is rounded up to d whole units, 0 <= d <= 2^N - 1. Level k
 * (0 <= k < N) is a topic exchange and a durable queue of the same name,
 * "<KILN_DELAY_EXCHANGE>.<k>" (".quorum.<k>" when KILN_DELAY_QUEUE_TYPE is
 * quorum), whose x-message-ttl is 2^k * u and whose dead-letter exchange
 * is level k-1's exchange (level 0's: the delivery exchange,
 * "<KILN_DELAY_EXCHANGE>.delivery"). The routing key spells d in binary,
 * bit 0 first, one word per level, then the destination routing key:
 *
 *     d = 6 units, N = 4, destination "orders.eu":  "0.1.1.0.orders.eu"
 *
 * Level k's exchange routes on word k alone: "1" into its queue (binding
 * "*." x k then "1.#"), "0" straight on to level k-1's exchange (an
 * exchange-to-exchange binding, "*." x k then "0.#"). Dead-lettering
 * keeps the routing key, so a message waits exactly 2^k units in each
 * level k whose bit is set and nowhere else: d units in all, and only
 * ever behind messages with the same TTL, so no delay blocks another. The
 * delivery exchange binds each destination queue with exactly N "*."
 * words before its binding key; counted words, not "#", so a key with
 * dots never matches another queue's binding.
 *
 * Bit 0 comes first so that the level bindings do not depend on N:
 * changing KILN_DELAY_LEVELS adds a delivery binding and leaves messages
 * already waiting on their way. Changing KILN_DELAY_UNIT_MS changes the
 * TTLs, which RabbitMQ refuses for existing queues (406).
 *
 * Two more pairs keep RabbitMQ's "unroutable is an error" for delayed
 * messages, which a mandatory publish cannot see (the message is routed,
 * and confirmed, into a level queue):
 * - The probe, "<KILN_DELAY_EXCHANGE>.probe": a topic exchange and a
 *   classic queue of the same name with x-max-length 0 (drop-head: it
 *   keeps nothing, and a message routed to it is still confirmed as
 *   routed). Next to each destination binding on the delivery exchange
 *   the declare binds the probe queue with the bare binding key, so a
 *   key matches a probe binding exactly when, with the N delay words in
 *   front, it matches a destination binding. A producer publishes an
 *   empty, transient, mandatory message with the destination key to the
 *   probe exchange before it sends delayed messages for that key: a
 *   basic.return means no queue was ever bound for it. No consumer ever
 *   sees a probe.
 * - The alternate exchange of the delivery exchange,
 *   "<KILN_DELAY_EXCHANGE>.unroutable": a fanout exchange bound to a
 *   durable classic queue of the same name. RabbitMQ applies alternate
 *   exchanges to dead-lettered messages too (rabbit_exchange:route), so a
 *   message whose queue went away while it waited lands there, whole,
 *   instead of being dropped (classic level) or retained by a quorum
 *   level, whose at-least-once dead-letter worker holds at most 32
 *   (dead_letter_worker_consumer_prefetch) unconfirmed messages: 32 such
 *   messages would stop the level for every message behind them.
 * A delivery exchange declared before it had an alternate exchange is
 * refused with 406 (inequivalent arg 'alternate-exchange'): it must be
 * deleted once.
 *
 * Things a producer must know:
 * - A delayed message is routed (and confirmed) into a level queue, so a
 *   mandatory publish cannot tell that no destination queue is bound:
 *   probe the destination key first (above). A probe answers "a queue
 *   was bound for this key", not "it still exists": a message whose
 *   queue is deleted later ends in the unroutable queue. A message of 0
 *   units, published straight to the delivery exchange, also lands there
 *   when no queue is bound for it, with no basic.return.
 * - Do not copy the x-death, x-first-death-* and x-last-death-* headers of
 *   a delivery into a new delayed message: RabbitMQ keeps one x-death
 *   entry per queue it passed, and kiln__delay_keep_header says which
 *   headers to leave out.
 *
 * Thread-safety: every function here is pure (reads its arguments, writes
 * only the caller's buffers) and safe from any thread.
 */
#ifndef KILN_BROKER_DELAY_H
#define KILN_BROKER_DELAY_H

#include "core/core.h"

/* The most levels a cascade may have (KILN_DELAY_LEVELS is 1..32). */
#define KILN__DELAY_MAX_LEVELS 32

/* Bytes of the longest binding pattern of a level: 32 words plus "#". */
#define KILN__DELAY_PATTERN_MAX (2 * KILN__DELAY_MAX_LEVELS + 2)

/* One level of the cascade, as kiln__delay_level_get fills it in. */
typedef struct kiln__delay_level {
    unsigned level;           /* k */
    char name[KILN_NAME_MAX]; /* the level's exchange, and its queue */
    char next[KILN_NAME_MAX]; /* level k-1's exchange, or the delivery
                                 exchange for level 0: the queue's
                                 x-dead-letter-exchange and where "0"
                                 words go on */
    uint64_t ttl_ms;          /* x-message-ttl: 2^k units */
    char queue_key[KILN__DELAY_PATTERN_MAX]; /* binds the queue to the
                                                exchange: "*." x k "1.#" */
    char next_key[KILN__DELAY_PATTERN_MAX];  /* binds `next` to the
                                                exchange: "*." x k "0.#" */
} kiln__delay_level;

/* kiln__delay_check checks the cascade settings of `cfg`: levels 1..32, a
 * unit of at least 1 ms, and a KILN_DELAY_EXCHANGE short enough for the
 * suffixes it gets. KILN_EINVAL naming the variable otherwise. */
kiln_err kiln__delay_check(const kiln_config *cfg, kiln_error *err);

/* kiln__delay_max_ms returns the longest delay the cascade holds,
 * unit x (2^levels - 1) ms (levels capped at 32, so it never overflows). */
uint64_t kiln__delay_max_ms(const kiln_config *cfg);

/* kiln__delay_units rounds `delay_ms` up to whole units into *units.
 * KILN_EINVAL, naming KILN_DELAY_UNIT_MS and KILN_DELAY_LEVELS, when it
 * is longer than kiln__delay_max_ms. */
kiln_err kiln__delay_units(const kiln_config *cfg, uint64_t delay_ms,
                           uint64_t *units, kiln_error *err);

/* kiln__delay_route writes where to publish a message that must reach
 * the queues bound to `dest_rk` (its routing key without a delay) after
 * `delay_ms`: the exchange into exch[exch_len] (the level of the highest
 * set bit, or the delivery exchange for 0 units) and the routing key into
 * rk[rk_len]. Publish it persistent, with the exchange's usual flags. The
 * wait is the delay rounded up to a whole unit, never less. KILN_EINVAL
 * when the delay is too long, when dest_rk is empty or the key would pass
 * 255 bytes (naming KILN_DELAY_LEVELS), or when a buffer is too small. */
kiln_err kiln__delay_route(const kiln_config *cfg, uint64_t delay_ms,
                           const char *dest_rk, char *exch, size_t exch_len,
                           char *rk, size_t rk_len, kiln_error *err);

/* kiln__delay_level_get fills *out with the names, TTL and binding patterns
 * of level `k` (0 <= k < KILN_DELAY_LEVELS). KILN_EINVAL otherwise. */
kiln_err kiln__delay_level_get(const kiln_config *cfg, unsigned k,
                               kiln__delay_level *out, kiln_error *err);

/* kiln__delay_delivery writes the delivery exchange's name,
 * "<KILN_DELAY_EXCHANGE>.delivery", into out[n]. It is the same for
 * classic and quorum cascades, so a message sent through either reaches
 * every destination queue. */
kiln_err kiln__delay_delivery(const kiln_config *cfg, char *out, size_t n,
                              kiln_error *err);

/* kiln__delay_probe writes the probe's name, "<KILN_DELAY_EXCHANGE>.probe"
 * (its exchange and its sink queue), into out[n]; kiln__delay_unroutable
 * the delivery exchange's alternate exchange and queue,
 * "<KILN_DELAY_EXCHANGE>.unroutable". Both are shared by the classic and
 * quorum cascades, like the delivery exchange. KILN_EINVAL for a bad
 * setting or when `n` is too small. */
kiln_err kiln__delay_probe(const kiln_config *cfg, char *out, size_t n,
                           kiln_error *err);
kiln_err kiln__delay_unroutable(const kiln_config *cfg, char *out, size_t n,
                                kiln_error *err);

/* kiln__delay_dest_key returns the key cfg->queue is bound with on the
 * delivery exchange: KILN_BINDING_KEY, or the queue's name when there is
 * no binding key or no exchange (the default exchange routes by queue
 * name). Borrowed from `cfg`. A producer sends tasks for that queue with
 * it as dest_rk. */
const char *kiln__delay_dest_key(const kiln_config *cfg);

/* kiln__delay_dest_binding writes the delivery exchange's binding pattern
 * for a destination queue bound with `binding_key`: N words "*." then the
 * key, into out[n]. KILN_EINVAL when it would pass 255 bytes (naming
 * KILN_DELAY_LEVELS and KILN_BINDING_KEY) or `n` is too small. */
kiln_err kiln__delay_dest_binding(const kiln_config *cfg,
                                  const char *binding_key, char *out, size_t n,
                                  kiln_error *err);

/* kiln__delay_parse reads a cascade routing key back: *units (may be
 * NULL) gets the delay it spells, *dest the destination routing key,
 * borrowed from `rk` (a pointer into it). KILN_EINVAL when `rk` does not
 * start with KILN_DELAY_LEVELS words "0" or "1". Use it on deliveries
 * whose exchange belongs to the cascade (kiln__delay_exchange_level):
 * RabbitMQ reports the exchange the last level dead-lettered the message
 * to (level j-1's for a message whose lowest set bit is j, the delivery
 * exchange for j = 0), or the one it was published to for 0 units. */
kiln_err kiln__delay_parse(const kiln_config *cfg, const char *rk,
                           uint64_t *units, const char **dest, kiln_error *err);

/* kiln__delay_exchange_level tells whether `exchange` belongs to the
 * cascade of `cfg`: true with *level = k for level k's exchange (classic
 * or quorum, whatever cfg->queue_type says, since the producer's may
 * differ), or *level = -1 for the delivery exchange; false for any other
 * name. A message published to level k's exchange waits only for the
 * bits 0..k of its key. */
bool kiln__delay_exchange_level(const kiln_config *cfg, const char *exchange,
                                int *level);

/* kiln__delay_keep_header is false for the headers RabbitMQ adds when it
 * dead-letters a message (x-death, x-first-death-*, x-last-death-*),
 * which a producer leaves out when it sends a delivery on again. */
bool kiln__delay_keep_header(const char *key);

#endif /* KILN_BROKER_DELAY_H */
