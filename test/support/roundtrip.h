/*
 * A whole producer-broker-worker round trip in one test process: a
 * producer, a consumer and (optionally) a store on one private mock
 * server, wired to the dispatcher the worker pool uses (workerpool/
 * dispatch.h). A test sends tasks, then drains the queue so each runs
 * through the registry, the codec, the dead-letter path and the store
 * on the calling thread, without a network.
 */
#ifndef KILN_TEST_ROUNDTRIP_H
#define KILN_TEST_ROUNDTRIP_H

#include "mocks/mocks.h"
#include "workerpool/dispatch.h"

typedef struct roundtrip roundtrip;

/* Declares the topology of `cfg` (copied) on a new mock server. `reg` is
 * borrowed and must outlive the object. With `with_store` a mock store
 * records every state. Caller owns; free with roundtrip_free. */
roundtrip *roundtrip_new(const kiln_config *cfg, const kiln_registry *reg,
                         bool with_store, kiln_error *err);
void roundtrip_free(roundtrip *rt);

/* Encodes `n` signatures in the configured dialect and publishes them
 * (kiln__send_tasks). Producer side: one thread at a time. */
kiln_err roundtrip_send(roundtrip *rt, const kiln_signature *const *sigs,
                        size_t n, kiln_err *status, kiln_error *err);

/* Consumes one delivery (waiting up to `timeout_ms`) and dispatches it.
 * KILN_ETIMEDOUT when the queue stayed empty. *verdict (may be NULL)
 * gets what was done with it. Consumer side: one thread at a time, which
 * may differ from the producer's. */
kiln_err roundtrip_run_once(roundtrip *rt, int timeout_ms,
                            kiln__verdict *verdict, kiln_error *err);

/* Runs deliveries until the queue is empty or `max` were handled (0 = no
 * limit); *handled (may be NULL) gets the count. Consumer side. */
kiln_err roundtrip_drain(roundtrip *rt, size_t max, size_t *handled,
                         kiln_error *err);

/* Borrowed; valid until roundtrip_free. The store is NULL without
 * `with_store`. */
kiln__mock_server *roundtrip_server(roundtrip *rt);
kiln__store *roundtrip_store(roundtrip *rt);

#endif /* KILN_TEST_ROUNDTRIP_H */
