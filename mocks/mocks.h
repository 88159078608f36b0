/*
 * In-memory implementations of the broker and store interfaces, for the
 * tests. Test code: the Makefile builds mocks/ into a library of its own
 * (libkiln_mock.a) that only test programs link; libkiln never holds it.
 * It depends on the interfaces only (broker/, store/), never on the pool.
 * Never installed.
 *
 * The mock broker is split the way RabbitMQ is: a server
 * (kiln__mock_server) holds exchanges, bindings and queues and is safe
 * from any thread; each kiln__broker made by kiln__mock_broker_new is one
 * connection to it and, like a real one, belongs to one thread. So a test
 * can publish from one thread and consume from another, each on its own
 * connection.
 *
 * Routing is deliberately simple: an exchange delivers a message to every
 * queue bound to it whose binding key equals the routing key, or is "#";
 * the default exchange "" delivers to the queue named by the routing key.
 * The exchanges of a declared delay cascade hold a message for its delay
 * first (kiln__mock_server_declare_delay).
 * Queues are FIFO (priorities are kept on the message but not ordered by).
 * A message nobody receives is returned, as a mandatory publish is.
 */
#ifndef KILN_MOCKS_H
#define KILN_MOCKS_H

#include "broker/broker.h"
#include "store/store.h"

/* ---- mock broker ------------------------------------------------------ */

typedef struct kiln__mock_server kiln__mock_server;

/* Creates an empty server. Caller owns; free with kiln__mock_server_free
 * once every connection to it is destroyed. NULL with `err` on ENOMEM. */
kiln__mock_server *kiln__mock_server_new(kiln_error *err);
void kiln__mock_server_free(kiln__mock_server *srv);

/* Makes every waiting and later consume return KILN_ECLOSED, and every
 * later publish fail. Safe from any thread; used to stop consumer threads. */
void kiln__mock_server_shutdown(kiln__mock_server *srv);

/* Creates a connection to `srv` (not yet connected). Caller owns; free
 * with kiln__broker_destroy. Owned by one thread at a time. */
kiln__broker *kiln__mock_broker_new(kiln__mock_server *srv, kiln_error *err);

/* Declares `exchange` and `queue` when new and binds them with
 * `binding_key`. Idempotent. Safe from any thread. */
kiln_err kiln__mock_server_bind(kiln__mock_server *srv, const char *exchange,
                                const char *binding_key, const char *queue,
                                kiln_error *err);

/* Declares the delay cascade of `cfg` (broker/delay.h) and binds
 * cfg->queue on its delivery exchange and its key on the probe; the mock
 * broker's declare op calls it. A message published to one of the
 * cascade's exchanges is then held until its delay has passed on the mock
 * clock and delivered, with the delivery exchange and its whole routing
 * key, to the queues bound for its destination key, or, when there are
 * none, to the queue "<KILN_DELAY_EXCHANGE>.unroutable" (the delivery
 * exchange's alternate exchange, as on RabbitMQ). A delay of 0 units is
 * delivered at once, the same way. A message published to
 * "<KILN_DELAY_EXCHANGE>.probe" is confirmed and dropped when a queue was
 * declared for its key, and returned unroutable otherwise. KILN_EBROKER
 * ("406 ...") when the same cascade was declared with another
 * KILN_DELAY_UNIT_MS. Safe from any thread. */
kiln_err kiln__mock_server_declare_delay(kiln__mock_server *srv,
                                         const kiln_config *cfg,
                                         kiln_error *err);

/* The mock clock: CLOCK_MONOTONIC plus every `ms` given here. Advancing
 * it delivers the held messages now due, so a test need not wait them
 * out; held messages also fall due as real time passes, and a consumer
 * waiting in consume wakes for them. Safe from any thread. */
void kiln__mock_server_advance(kiln__mock_server *srv, int64_t ms);

/* Messages held in delay cascades, after delivering those now due. Safe
 * from any thread. */
size_t kiln__mock_server_delayed(kiln__mock_server *srv);

/* Failure injection; each is safe from any thread. Each applies to the
 * blocking publish op and to pipelined publishing (publish_async, whose
 * outcome wait_settled then reports) alike.
 * fail_publish: the nth message published from now (1 = the next one) is
 * nacked (KILN_EBROKER); 0 disarms.
 * fail_consume: the next `count` consume calls fail with KILN_EBROKER, as
 * a lost connection would, but the connection stays usable.
 * set_unroutable: messages with routing key `key` are returned unroutable
 * even when a queue is bound for them; NULL clears it.
 * fail_connection: the connection publishing the nth message from now
 * (1 = the next one) is lost: that message reaches its queue but its
 * confirm is lost, it and the rest of the call fail with KILN_EBROKER
 * (publish_lost says so), and publish, declare and tick fail until the
 * connection is closed or connected again; 0 disarms. Pipelined, that
 * message is written but never reported, the call returns KILN_EBROKER
 * and so do the ops after it, and outcomes still on their way (a confirm
 * delay) are lost with the connection. */
void kiln__mock_server_fail_publish(kiln__mock_server *srv, unsigned nth);
/* refuse_connections: while `refuse`, every connect fails with KILN_EBROKER
 * "mock broker: connection refused (injected)", as against a broker that is
 * down; connections already open stay. connects: connections opened so
 * far. */
void kiln__mock_server_refuse_connections(kiln__mock_server *srv, bool refuse);
unsigned kiln__mock_server_connects(kiln__mock_server *srv);
void kiln__mock_server_fail_connection(kiln__mock_server *srv, unsigned nth);
void kiln__mock_server_fail_consume(kiln__mock_server *srv, unsigned count);
kiln_err kiln__mock_server_set_unroutable(kiln__mock_server *srv,
                                          const char *key, kiln_error *err);

/* Inspection; safe from any thread. ready: messages waiting in `queue`
 * (0 for an unknown queue); unacked: deliveries not yet settled on any
 * connection; published: messages confirmed since the server was made. */
size_t kiln__mock_server_ready(kiln__mock_server *srv, const char *queue);
size_t kiln__mock_server_unacked(kiln__mock_server *srv);
size_t kiln__mock_server_published(kiln__mock_server *srv);

/* publish_calls: confirm round trips since the server was made: one per
 * call of the blocking publish op, whatever its size, and one per round
 * of confirms of pipelined publishing (publish_async) that a connection
 * received together, as one `multiple` ack.
 * set_confirm_delay: from now on every blocking publish call waits `ms`
 * after routing, as a confirm round trip would, and the confirms of
 * pipelined publishing arrive in rounds: `ms` after the first message
 * written since the last round, together with every message written
 * meanwhile, as a broker that syncs its disk confirms all it took since
 * the last sync at once (0: at once).
 * block_publishing: while `blocked`, as during a broker's resource alarm
 * (connection.blocked), publish_async writes nothing and wait_settled
 * returns soon after it ends; the blocking publish is not affected.
 * Safe from any thread. */
size_t kiln__mock_server_publish_calls(kiln__mock_server *srv);
void kiln__mock_server_set_confirm_delay(kiln__mock_server *srv, unsigned ms);
void kiln__mock_server_block_publishing(kiln__mock_server *srv, bool blocked);

/* Waits up to `timeout_ms` until `queue` is empty and nothing is unacked.
 * KILN_OK or KILN_ETIMEDOUT. Safe from any thread. */
kiln_err kiln__mock_server_wait_idle(kiln__mock_server *srv, const char *queue,
                                     int timeout_ms);

/* ---- mock store ------------------------------------------------------- */

/* Creates an empty in-memory store implementing store/store.h, rules
 * included. Caller owns; free with kiln__store_destroy. Safe from any
 * thread. */
kiln__store *kiln__mock_store_new(kiln_error *err);

/* Number of tasks in `state`, or of all tasks when `state` is negative. */
size_t kiln__mock_store_count(kiln__store *s, int state);

/* The next `count` set_state calls fail with KILN_ESTORE. */
void kiln__mock_store_fail_writes(kiln__store *s, unsigned count);

/* While `down`, every set_state call fails with KILN_ESTORE, as against a
 * stopped server. Any thread. */
void kiln__mock_store_set_down(kiln__store *s, bool down);

/* Until called again with another UUID (NULL or "": none), every write of
 * task `uuid` fails with KILN_ESTORE, alone in its bulk. Any thread. */
void kiln__mock_store_fail_uuid(kiln__store *s, const char *uuid);

/* While `hold`, set_states calls wait before writing, so a test can keep
 * a bulk in flight; kiln__mock_store_wait_held waits up to `timeout_ms`
 * until one waits (true) or not (false). Any thread. */
void kiln__mock_store_hold(kiln__store *s, bool hold);
bool kiln__mock_store_wait_held(kiln__store *s, int timeout_ms);

/* How many set_states calls were made, and the most updates one had. */
void kiln__mock_store_bulks(kiln__store *s, size_t *calls, size_t *largest);

/* How many set_state calls failed because the store was down. */
unsigned kiln__mock_store_failed_while_down(kiln__store *s);

/* Waits up to `timeout_ms` until task `uuid` is finished; KILN_OK or
 * KILN_ETIMEDOUT. */
kiln_err kiln__mock_store_wait_finished(kiln__store *s, const char *uuid,
                                        int timeout_ms);

#endif /* KILN_MOCKS_H */
