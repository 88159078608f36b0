/*
 * What the two halves of the mock broker share: the server
 * (mocks/mock_server.c: exchanges, bindings, queues, routing, faults,
 * inspection) and the connections to it (mocks/broker_mock.c: the
 * broker/broker.h ops). Never installed; only those two files include it.
 *
 * Lock rule: srv->mu guards the whole server and every connection's
 * unacked list (closing a connection moves its deliveries back to their
 * queues). It is never held while calling out of these two files.
 */
#ifndef KILN_MOCK_INTERNAL_H
#define KILN_MOCK_INTERNAL_H

#include "mocks/mocks.h"

#include <pthread.h>
#include <time.h>

/* A message in a queue or in a connection's unacked list. Its strings and
 * headers live in the same allocation, after the struct. */
struct msg {
    struct msg *next;
    size_t queue;        /* index in srv->queues; while held in the delay
                            cascade, the index in srv->cascades */
    int64_t due_ms;      /* held: when its delay has passed (mock clock) */
    uint64_t tag;        /* while unacked */
    uint32_t deliveries; /* times delivered so far */
    uint8_t priority;
    bool persistent;
    char *exchange, *routing_key, *message_id, *content_type, *body;
    size_t body_len;
    kiln__hdr *fields;    /* the headers with their types */
    kiln_header *headers; /* the same as text, as a delivery has them */
    size_t n_headers;
};

struct queue {
    char *name;
    struct msg *head, *tail;
    size_t ready;
    uint64_t mark; /* routing: already chosen for the current message */
    bool sink;     /* x-max-length 0: a message routed here counts as
                      routed (confirmed, not returned) and is dropped */
};

struct binding {
    char *exchange, *key;
    size_t queue;
};

/* An exchange's alternate-exchange argument: where a message goes that
 * none of its bindings match, whether published or dead-lettered. */
struct alternate {
    char *exchange, *alternate;
};

/* A delay cascade declared by some connection (broker/delay.h): the
 * config it was declared with names its exchanges and sets its unit. */
struct cascade {
    kiln_config cfg;
    char delivery[KILN_NAME_MAX]; /* its delivery exchange */
};

struct kiln__mock_server {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* broadcast on enqueue, settle and shutdown */
    struct queue *queues;
    size_t nq, capq;
    struct binding *binds;
    size_t nb, capb;
    struct alternate *alts;
    size_t nalt, capalt;
    char *unroutable;
    unsigned fail_publish_at, fail_consume, fail_conn_at;
    size_t unacked, published;
    size_t publish_calls;      /* publish operations, of any size */
    unsigned confirm_delay_ms; /* each publish call waits this long */
    bool blocked;              /* pipelined publishing writes nothing */
    uint64_t stamp;
    bool shutdown;
    bool refuse_connects; /* kiln__mock_server_refuse_connections */
    unsigned connects;    /* connections opened */
    struct cascade *cascades;
    size_t ncasc, capcasc;
    struct msg *held; /* waiting out a delay, soonest first */
    size_t n_held;
    int64_t offset_ms; /* the mock clock runs this far ahead of
                          CLOCK_MONOTONIC (kiln__mock_server_advance) */
};

/* Copies `m` into one allocation; free with kiln__free. Its headers must
 * all be in m->fields (no inherit, no string headers), as
 * kiln__outgoing_prepare leaves them and kiln__mock_msg_view gives them.
 * NULL on ENOMEM. */
struct msg *kiln__mock_msg_pack(const kiln__message *m);

/* Queue operations; the caller holds srv->mu. push_head puts a message
 * back in front (requeue, close); pop returns NULL on an empty queue. */
void kiln__mock_queue_push_head(struct queue *q, struct msg *m);
struct msg *kiln__mock_queue_pop(struct queue *q);

/* Sets *idx to the index of queue `name` in srv->queues; false when there
 * is none. Caller holds srv->mu. */
bool kiln__mock_find_queue(const kiln__mock_server *srv, const char *name,
                           size_t *idx);

/* The absolute CLOCK_MONOTONIC time `timeout_ms` from now, for
 * kiln__mock_wait_until. */
void kiln__mock_deadline_after(struct timespec *ts, int timeout_ms);

/* Waits on srv->cond; false once the deadline passed (timeout_ms < 0:
 * never). Wakes early, returning true, when a held message falls due
 * before the deadline. Caller holds srv->mu. */
bool kiln__mock_wait_until(kiln__mock_server *srv, const struct timespec *ts,
                           int timeout_ms);

/* kiln__mock_bind_locked is kiln__mock_server_bind with srv->mu held.
 * kiln__mock_set_alternate gives `exchange` the alternate exchange
 * `alternate` (idempotent; the first one set stays, as RabbitMQ keeps an
 * exchange's arguments). kiln__mock_make_sink declares `queue` when new
 * and makes it keep nothing (x-max-length 0). KILN_ENOMEM on failure.
 * Caller holds srv->mu. */
kiln_err kiln__mock_bind_locked(kiln__mock_server *srv, const char *exchange,
                                const char *key, const char *queue,
                                kiln_error *err);
kiln_err kiln__mock_set_alternate(kiln__mock_server *srv, const char *exchange,
                                  const char *alternate, kiln_error *err);
kiln_err kiln__mock_make_sink(kiln__mock_server *srv, const char *queue,
                              kiln_error *err);

/* Routes one message into every queue it reaches, all or none: KILN_EINVAL
 * for an incomplete message, KILN_ECLOSED after a shutdown, KILN_EBROKER
 * when it is nacked (fail_publish) or returned unroutable. Counts it as
 * published on success. Caller holds srv->mu and broadcasts srv->cond. */
kiln_err kiln__mock_route(kiln__mock_server *srv, const kiln__message *m,
                          kiln_error *err);

/* The view of a stored message as the message it was published as. */
kiln__message kiln__mock_msg_view(const struct msg *msg);

/* Puts a copy of `m` into every queue bound to `exchange` with `key` (or
 * with "#"), or, when there is none, into those its alternate exchange
 * routes it to; *n gets how many (sinks included). KILN_ENOMEM puts none.
 * Caller holds srv->mu. */
kiln_err kiln__mock_deliver(kiln__mock_server *srv, const char *exchange,
                            const char *key, const kiln__message *m, size_t *n,
                            kiln_error *err);

/* mock_delay.c. When m->exchange is one of a declared cascade's
 * exchanges, sets *taken and holds the message for its delay (or
 * delivers it now, for none); the result is kiln__mock_route's. Caller
 * holds srv->mu. */
kiln_err kiln__mock_route_delay(kiln__mock_server *srv, const kiln__message *m,
                                bool *taken, kiln_error *err);

/* The CLOCK_MONOTONIC time the first held message falls due into *ts;
 * false when none is held. Caller holds srv->mu. */
bool kiln__mock_next_due(const kiln__mock_server *srv, struct timespec *ts);

/* Routes every held message whose delay has passed to the queues bound
 * for its destination on the cascade's delivery exchange (to its
 * unroutable queue, the alternate exchange's, when there are none, as
 * RabbitMQ does) and broadcasts srv->cond when any moved. Caller holds
 * srv->mu. */
void kiln__mock_release_due(kiln__mock_server *srv);

#endif /* KILN_MOCK_INTERNAL_H */
