/*
 * The broker interface: what the worker pool and the producer need from a
 * message broker, as a table of function pointers (STYLE §15). The AMQP
 * broker (broker/amqp_*.c) and the in-memory mock (mocks/broker_mock.c)
 * each implement it. Never installed.
 *
 * Threads. A broker object is one connection with one channel and belongs
 * to exactly one thread at a time, because a rabbitmq-c connection is not
 * thread-safe: every op below must be called from the owning thread. Other
 * threads hand work to the owner through a queue (DESIGN "The flow of one
 * task"). Ownership may move between threads only with a happens-before
 * edge (a mutex or a join) between the last call of one and the first call
 * of the other.
 *
 * Memory. Messages handed to publish are borrowed for the call only,
 * and so is a delivery a message inherits headers from. A delivery
 * filled by consume is owned by the broker object's caller until it is
 * given back with release; its fields are read-only, so another thread's
 * broker object may publish a copy of it meanwhile (the typed headers are
 * only read), as long as the delivery is not released before that
 * publish returns.
 */
#ifndef KILN_BROKER_H
#define KILN_BROKER_H

#include "core/core.h"
#include "core/headers.h"

#include <string.h>

/* Headers the library itself reads or writes. */
#define KILN__HDR_REASON      "x-kiln-reason"         /* dead-letter reason */
#define KILN__HDR_ROUTING_KEY "x-kiln-routing-key"    /* original routing key */
#define KILN__HDR_EXCHANGE    "x-kiln-exchange"       /* original exchange */
#define KILN__HDR_RETRY_DELAY "x-kiln-retry-delay-ms" /* asked-for delay */
#define KILN__HDR_TASK_NAME   "task_name"             /* paota header mode */
#define KILN__HDR_DELIVERIES  "x-kiln-deliveries"     /* earlier deliveries */
#define KILN__HDR_RETRIES     "x-kiln-retries"        /* retries so far */
#define KILN__HDR_ATTEMPTS    "x-kiln-attempts" /* runs, in a dead letter */
#define KILN__HDR_WORKER      "x-kiln-worker"   /* host:pid, dead letter */
#define KILN__HDR_LEASE       "x-kiln-lease"    /* host:pid that leased it */

/* One message received. Every pointer is owned by the delivery and valid
 * until the delivery is given back with the broker's release op.
 *
 * Headers come two ways, entry for entry in the same order (headers[i]
 * is fields[i] as text, with the same key pointer): `fields` with the
 * types they travelled with, for republishing them as they came, and
 * `headers` as strings (kiln__hval_text: numbers in decimal, booleans
 * as "true"/"false", tables and arrays as JSON), the shape
 * kiln_signature_from_raw and the rest of the worker read. */
typedef struct kiln__delivery {
    uint64_t tag;   /* delivery tag, unique per broker object */
    char *exchange; /* the exchange it was published to */
    char *routing_key;
    char *body; /* body_len bytes; not NUL-terminated (the AMQP
                   broker hands rabbitmq-c's buffer on uncopied) */
    size_t body_len;
    kiln_header *headers;
    size_t n_headers;
    const kiln__hdr *fields; /* n_headers of them */
    char *message_id;        /* "" when the publisher set none */
    uint8_t priority;
    bool redelivered;        /* AMQP redelivered flag */
    uint32_t delivery_count; /* earlier deliveries of this message, as a
                                quorum queue's x-delivery-count; 0 on the
                                first delivery or when unknown */
    void *impl;              /* the implementation's own; do not touch */
} kiln__delivery;

/* One message to publish. Every pointer is borrowed for the publish call.
 *
 * Headers. The table that goes out is, in this order: the typed headers
 * of `inherit` (a delivery of any broker implementation) that `keep`
 * accepts, then `fields`, then the string headers `headers` (as UTF-8
 * strings). An entry of `fields` or `headers` replaces every earlier
 * entry of the same name, so the headers a copy adds win over those it
 * inherits.
 *
 * Size. A message's content header (its properties, headers included)
 * must fit one frame of the connection (frame_max, 128 KiB on RabbitMQ
 * unless the server sets less). publish checks every message before it
 * writes anything: one that does not fit is published as `oversize`
 * instead when that is set; else, with `trim`, without inherited headers,
 * the largest first, until it fits (their names and sizes are appended
 * to its x-kiln-reason header, which it gets if it has none); else it is
 * refused alone with KILN_ETOOBIG, and the rest of the batch goes on. */
typedef struct kiln__message {
    const char *exchange;          /* "" = the default exchange */
    const char *routing_key;       /* never NULL */
    const void *body;              /* may be NULL when body_len is 0 */
    size_t body_len;               /* excluding that NUL */
    const kiln__delivery *inherit; /* NULL: none; one without typed
                                      headers gives its strings */
    bool (*keep)(const char *key); /* inherited names to keep; NULL: all */
    const kiln__hdr *fields;       /* NULL when n_fields is 0 */
    size_t n_fields;
    const kiln_header *headers; /* NULL when n_headers is 0 */
    size_t n_headers;
    const char *message_id;   /* the task UUID; NULL = none */
    const char *content_type; /* NULL = "application/json" */
    uint8_t priority;         /* 0 = none; capped by the queue's maximum */
    bool persistent;          /* delivery mode 2 */
    const struct kiln__message *oversize; /* see Size; NULL: none */
    bool trim;                            /* see Size */
} kiln__message;

typedef struct kiln__broker kiln__broker;

/* What pipelined publishing (publish_async) says about the messages with
 * sequence numbers first..last (inclusive, consecutive, all written by
 * publish_async on the current channel): KILN_OK when the broker
 * confirmed them and none was returned, KILN_EBROKER when it nacked or
 * returned them (`why` says which, e.g. "unroutable: 312 NO_ROUTE";
 * borrowed for the call). Each message is reported once. */
typedef void (*kiln__settled_fn)(void *ctx, uint64_t first, uint64_t last,
                                 kiln_err status, const char *why);

typedef struct kiln__broker_ops {
    /* Opens the connection and channel, enables publisher confirms.
     * Calling it on a connected object is a no-op. KILN_EBROKER with the
     * server's or the socket's reason on failure. */
    kiln_err (*connect)(kiln__broker *b, kiln_error *err);

    /* Closes the connection; the object may connect again. Deliveries not
     * yet acknowledged return to their queue (redelivered). Never fails. */
    void (*close)(kiln__broker *b);

    /* Declares the exchange, the task queue and its binding, the dead-letter
     * exchange and queue (and, for the AMQP broker, the delay cascade) that
     * `cfg` names. Idempotent. KILN_EBROKER, naming the setting that
     * differs, when an existing queue has other arguments. */
    kiln_err (*declare)(kiln__broker *b, const kiln_config *cfg,
                        kiln_error *err);

    /* Publishes `n` messages, mandatory, and returns once the broker has
     * settled every one of them (confirmed, nacked or returned), or the
     * publish timeout passed. status[i] (status may be NULL) receives
     * KILN_OK when message i was confirmed and routed, KILN_EBROKER when it
     * was nacked or returned unroutable, KILN_ETIMEDOUT when no confirm
     * came in time; every status is set, also when the connection failed
     * before anything was sent. A message no broker can take is refused
     * alone, before anything of it is written, and the others go on:
     * KILN_EINVAL (naming the field: no routing key, a name or id over
     * the 255 bytes of an AMQP short string, ...) or KILN_ETOOBIG (see
     * kiln__message, Size). Returns KILN_OK when every message is
     * KILN_OK, else the first failing code with that message's index and
     * reason in `err`. */
    kiln_err (*publish)(kiln__broker *b, const kiln__message *msgs, size_t n,
                        kiln_err *status, kiln_error *err);

    /* Starts consuming `queue` with at most `prefetch` unacknowledged
     * deliveries (0 = no limit). Once per connection. */
    kiln_err (*subscribe)(kiln__broker *b, const char *queue, unsigned prefetch,
                          kiln_error *err);

    /* Waits up to `timeout_ms` (0 = poll, negative = forever) for the next
     * delivery and fills *out. KILN_ETIMEDOUT when none arrived,
     * KILN_ECLOSED when the broker is closing, KILN_EBROKER when the
     * connection failed (close and connect again). *out is untouched on
     * failure. */
    kiln_err (*consume)(kiln__broker *b, kiln__delivery *out, int timeout_ms,
                        kiln_error *err);

    /* Acknowledges delivery `tag`, or, with `multiple`, every outstanding
     * delivery up to and including it. */
    kiln_err (*ack)(kiln__broker *b, uint64_t tag, bool multiple,
                    kiln_error *err);

    /* Rejects delivery `tag`: back to the head of its queue with the
     * redelivered flag when `requeue`, otherwise dropped (or dead-lettered
     * by the queue's own x-dead-letter-exchange, if it has one). */
    kiln_err (*nack)(kiln__broker *b, uint64_t tag, bool requeue,
                     kiln_error *err);

    /* Frees what consume put into *d and zeroes it. Does not ack. Safe on
     * a zeroed delivery. */
    void (*release)(kiln__broker *b, kiln__delivery *d);

    /* Closes and frees the object. NULL is not accepted here; use
     * kiln__broker_destroy, which is NULL-safe. */
    void (*destroy)(kiln__broker *b);

    /* Optional (may be NULL), for owners that wait in poll(2) on several
     * things at once. poll_fd: the descriptor to poll for reading, -1 when
     * not connected or when the implementation has none (the owner then
     * polls consume with short timeouts). pending: true when a delivery or
     * frames already wait in memory, so poll must not block. tick: the
     * connection's housekeeping without waiting (heartbeats, the server's
     * frames); an idle publisher calls it at least every heartbeat / 2.
     * cancel: stop the subscription (basic.cancel); deliveries already
     * received stay valid and must still be settled. */
    int (*poll_fd)(kiln__broker *b);
    bool (*pending)(kiln__broker *b);
    kiln_err (*tick)(kiln__broker *b, kiln_error *err);
    kiln_err (*cancel)(kiln__broker *b, kiln_error *err);

    /* Optional (may be NULL), for a publisher that sends again what a lost
     * connection left unsettled. After publish returned: true when message
     * i of that call failed only because the connection or its channel
     * went away before the broker settled it (neither confirmed, nacked
     * nor returned: the broker may or may not have it, so sending it again
     * on a new connection is at least once, never a loss); false when it
     * was confirmed, nacked, returned, refused or timed out. Valid until
     * the next op on the object. Without it the publisher asks tick (or
     * else declare) whether the connection survived. */
    bool (*publish_lost)(kiln__broker *b, size_t i);

    /* Optional (may be NULL): pipelined publishing, for an owner that
     * keeps writing while earlier confirms are outstanding (the
     * publisher of workerpool/). Both or neither.
     *
     * publish_async writes msgs[0..n) in order, mandatory, without
     * waiting for any confirm, and sets *done to how many it consumed:
     * for i < *done, seq[i] is message i's sequence number on the
     * channel (consecutive across calls, from 1 on each new channel), or
     * 0 when the message was refused before any byte of it was written,
     * with status[i] saying why (KILN_EINVAL, KILN_ETOOBIG or KILN_ENOMEM,
     * as for publish). It stops early, returning KILN_OK, only while the
     * broker blocks publishing (a resource alarm: connection.blocked);
     * nothing is written then until wait_settled has seen the broker
     * unblock; KILN_OK too when it refused messages, with `err` (code
     * and reason) describing the first it refused. KILN_EBROKER
     * (KILN_ECLOSED when not connected) when the connection or its
     * channel is unusable or failed: messages from *done on were not
     * written. Messages are borrowed for the call only; status and seq
     * may not be NULL.
     *
     * wait_settled first reports, through fn(ctx, ...), every message
     * the broker settled since the last call (frames any op read count),
     * in the order settled, and returns KILN_OK at once when there was
     * any. Else it waits until frames arrive (and reports what they
     * settle), the eventfd `wake_fd` (-1: none) becomes readable (it then
     * reads it, clearing it), or the monotonic clock passes deadline_ns,
     * and returns KILN_OK, or KILN_ETIMEDOUT when the deadline came with
     * nothing to report. A basic.return is matched to its message
     * (exchange, routing key and message id, in publish order) and
     * reported as soon as it arrives; the ack that follows it is not.
     *
     * A lost connection or channel. When an op returns KILN_EBROKER or
     * KILN_ECLOSED, wait_settled still reports what was settled before,
     * then returns that error; every message written by publish_async
     * and not reported by then never will be: the broker may or may not
     * have it, so sending it again on a new connection is at least once,
     * never a loss. close forgets nothing of this (a wait_settled after
     * it reports, then returns KILN_ECLOSED); connect starts afresh. */
    kiln_err (*publish_async)(kiln__broker *b, const kiln__message *msgs,
                              size_t n, uint64_t *seq, kiln_err *status,
                              size_t *done, kiln_error *err);
    kiln_err (*wait_settled)(kiln__broker *b, int64_t deadline_ns, int wake_fd,
                             kiln__settled_fn fn, void *ctx, kiln_error *err);
} kiln__broker_ops;

/* Every implementation starts its object with this struct, so a
 * kiln__broker * is also a pointer to the implementation's object. */
struct kiln__broker {
    const kiln__broker_ops *ops;
};

/* ---- the ops, called through these wrappers ------------------------------
 * Every op has one, and every call site goes through it (never b->ops->),
 * so the optional ops' defaults are decided here, once. Same rules as the
 * ops: only the owning thread may call them. */

static inline kiln_err kiln__broker_connect(kiln__broker *b, kiln_error *err)
{
    return b->ops->connect(b, err);
}

static inline void kiln__broker_close(kiln__broker *b)
{
    b->ops->close(b);
}

static inline kiln_err
kiln__broker_declare(kiln__broker *b, const kiln_config *cfg, kiln_error *err)
{
    return b->ops->declare(b, cfg, err);
}

static inline kiln_err kiln__broker_publish(kiln__broker *b,
                                            const kiln__message *msgs, size_t n,
                                            kiln_err *status, kiln_error *err)
{
    return b->ops->publish(b, msgs, n, status, err);
}

static inline kiln_err kiln__broker_subscribe(kiln__broker *b,
                                              const char *queue,
                                              unsigned prefetch,
                                              kiln_error *err)
{
    return b->ops->subscribe(b, queue, prefetch, err);
}

static inline kiln_err kiln__broker_publish_async(kiln__broker *b,
                                                  const kiln__message *msgs,
                                                  size_t n, uint64_t *seq,
                                                  kiln_err *status,
                                                  size_t *done, kiln_error *err)
{
    return b->ops->publish_async(b, msgs, n, seq, status, done, err);
}

static inline kiln_err
kiln__broker_wait_settled(kiln__broker *b, int64_t deadline_ns, int wake_fd,
                          kiln__settled_fn fn, void *ctx, kiln_error *err)
{
    return b->ops->wait_settled(b, deadline_ns, wake_fd, fn, ctx, err);
}

static inline kiln_err kiln__broker_consume(kiln__broker *b,
                                            kiln__delivery *out, int timeout_ms,
                                            kiln_error *err)
{
    return b->ops->consume(b, out, timeout_ms, err);
}

static inline kiln_err kiln__broker_ack(kiln__broker *b, uint64_t tag,
                                        bool multiple, kiln_error *err)
{
    return b->ops->ack(b, tag, multiple, err);
}

static inline kiln_err kiln__broker_nack(kiln__broker *b, uint64_t tag,
                                         bool requeue, kiln_error *err)
{
    return b->ops->nack(b, tag, requeue, err);
}

static inline void kiln__broker_release(kiln__broker *b, kiln__delivery *d)
{
    b->ops->release(b, d);
}

/* NULL-safe. */
static inline void kiln__broker_destroy(kiln__broker *b)
{
    if (b != NULL)
        b->ops->destroy(b);
}

/* Without poll_fd: -1, as for an object not connected (the owner then
 * polls consume with short timeouts). */
static inline int kiln__broker_poll_fd(kiln__broker *b)
{
    return b->ops->poll_fd != NULL ? b->ops->poll_fd(b) : -1;
}

/* Without pending: false (nothing is known to wait in memory). */
static inline bool kiln__broker_pending(kiln__broker *b)
{
    return b->ops->pending != NULL && b->ops->pending(b);
}

/* Without tick: KILN_OK, an object with no housekeeping to do. */
static inline kiln_err kiln__broker_tick(kiln__broker *b, kiln_error *err)
{
    return b->ops->tick != NULL ? b->ops->tick(b, err) : KILN_OK;
}

/* Without cancel: KILN_OK, and nothing is stopped: the caller stops
 * consuming and what the broker still sends waits in the object until
 * close returns it to the queue. */
static inline kiln_err kiln__broker_cancel(kiln__broker *b, kiln_error *err)
{
    return b->ops->cancel != NULL ? b->ops->cancel(b, err) : KILN_OK;
}

/* kiln__broker_pipelines: whether the object can publish while earlier
 * confirms are outstanding (it has publish_async and wait_settled), as
 * the pool's publisher needs. */
static inline bool kiln__broker_pipelines(const kiln__broker *b)
{
    return b->ops->publish_async != NULL && b->ops->wait_settled != NULL;
}

/* kiln__broker_knows_lost: whether the object can tell a message lost
 * with its connection from one refused (it has publish_lost). Without
 * it, kiln__broker_publish_lost is always false and a caller asks
 * kiln__broker_probe instead. */
static inline bool kiln__broker_knows_lost(const kiln__broker *b)
{
    return b->ops->publish_lost != NULL;
}

static inline bool kiln__broker_publish_lost(kiln__broker *b, size_t i)
{
    return b->ops->publish_lost != NULL && b->ops->publish_lost(b, i);
}

/* kiln__broker_probe asks whether the connection still works: tick, or
 * for an object without it the declare of `cfg` (idempotent). KILN_EBROKER
 * or KILN_ECLOSED when it is gone. */
static inline kiln_err
kiln__broker_probe(kiln__broker *b, const kiln_config *cfg, kiln_error *err)
{
    return b->ops->tick != NULL ? b->ops->tick(b, err)
                                : b->ops->declare(b, cfg, err);
}

/* kiln__delivery_header returns the value of header `key` in `d`, or NULL.
 * Borrowed; valid until the delivery is released. */
static inline const char *kiln__delivery_header(const kiln__delivery *d,
                                                const char *key)
{
    for (size_t i = 0; i < d->n_headers; i++)
        if (d->headers[i].key != NULL && strcmp(d->headers[i].key, key) == 0)
            return d->headers[i].value;
    return NULL;
}

#endif /* KILN_BROKER_H */
