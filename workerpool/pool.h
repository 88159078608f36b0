/*
 * The worker pool's internals, shared by the files of workerpool/. Never
 * installed.
 *
 * Threads and what they own:
 *   - the thread in kiln_pool_start runs the consumer loop (consumer.c): it
 *     owns the consuming broker connection, hands deliveries to the
 *     workers undecoded, settles their outcomes and coalesces acks; it
 *     decodes only deliveries seen before, to look them up;
 *   - `concurrency` worker threads (workers.c) decode deliveries, look
 *     their tasks up and run them;
 *   - the publisher (publisher.c) owns the publishing connections and
 *     serves kiln_pool_send_task(s) from any thread, and the consumer's
 *     outcome copies (dead letters, retries), asynchronously.
 * Data goes one way: consumer -> work queue -> worker -> done list ->
 * consumer. Workers never touch a broker connection.
 */
#ifndef KILN_POOL_H
#define KILN_POOL_H

#include "broker/broker.h"
#include "store/store.h"
#include "workerpool/dispatch.h"

#include <pthread.h>
#include <stdatomic.h>

/* Makes an unconnected broker for `cfg`; the pool calls it for its
 * consuming connection and the publisher for each publishing one. Tests
 * swap in the mock broker. */
typedef kiln__broker *(*kiln__broker_factory)(void *ctx, const kiln_config *cfg,
                                              kiln_error *err);

typedef struct kiln__publisher kiln__publisher; /* publisher.c */
typedef struct kiln__pub_req kiln__pub_req;

/* Called by a publishing connection's owner thread once every message of
 * an asynchronous request (kiln__publisher_submit) is final, with that
 * connection's lock held: it may only hand the request on (put it on a
 * list, wake a thread) and must not call the publisher. The owner never
 * touches the request again after it. */
typedef void (*kiln__pub_notify)(kiln__pub_req *r, void *ctx);

/* One call's messages on their way through a publishing connection. A
 * synchronous send keeps it on its stack; an asynchronous one in memory
 * that lives until `notify` ran. */
struct kiln__pub_req {
    const kiln__message *msgs; /* borrowed from the caller */
    size_t n;
    kiln_err *status; /* per message; KILN__PUB_PENDING until final */
    int64_t deadline_ns;
    size_t pending; /* messages not final yet */
    size_t low;     /* status[0..low) is final */
    size_t scan;    /* assembly: next index to look at */
    size_t bad;     /* lowest failed index; n when none */
    kiln_error err; /* its reason */
    bool done;      /* synchronous: under the connection's lock */
    pthread_cond_t cv;
    kiln__pub_notify notify; /* asynchronous: NULL for a synchronous one */
    void *notify_ctx;
    struct kiln__pub_req *next;
};

/* One delivery in flight, from consume to settle. Slots are preallocated
 * (prefetch + concurrency of them), so the per-task path allocates only
 * what decoding needs.
 *
 * A slot's life: QUEUED (handed to the workers) -> the outcome comes back
 * -> SENDING (its copy, a dead letter or a retry, is with the publisher;
 * WAITING when the broker refused it and it goes again later) -> DONE
 * (nothing left to publish; the ack waits for the next flush) ->
 * SETTLED, when the slot is free again. An outcome without a copy goes
 * straight to DONE. `live` says whether the delivery is still unacked on
 * the consumer's current channel; it is not once the connection was lost
 * (the broker redelivers it) or once a lease copy took its place (see
 * consumer.c), and then the outcome is recorded instead of acked. */
typedef enum kiln__work_state {
    KILN__WORK_FREE = 0,
    KILN__WORK_QUEUED,  /* in the work queue, or a worker runs it */
    KILN__WORK_SENDING, /* its copy is with the publisher */
    KILN__WORK_WAITING, /* its copy was refused; sent again at retry_at_ns */
    KILN__WORK_PARKED,  /* a copy of a delivery here not yet acked: it
                           waits for that ack before a worker takes it */
    KILN__WORK_DONE,    /* outcome settled but for the ack */
    KILN__WORK_SETTLED  /* acked, nacked or given up: the slot is free */
} kiln__work_state;

/* The copy an outcome publishes before its delivery is settled (retry,
 * hold, requeue, counted redelivery, lease, dead letter), with its
 * request to the publisher. Kept apart from kiln__work, in an array of
 * its own that only outcomes with a copy write to: a worker whose tasks
 * succeed never touches its pages (1.7 kB a slot). */
typedef struct kiln__work_copy {
    kiln__settle settle;
    kiln__pub_req req;
    kiln_err req_status;
} kiln__work_copy;

typedef struct kiln__work {
    kiln__delivery dl;
    kiln__job job;
    kiln__work_state state;
    bool live;          /* the delivery is unacked on the current channel */
    bool in_window;     /* in the consumer's ack window */
    bool started;       /* a worker took it; under kiln_pool.mu */
    bool leasing;       /* a lease copy is with the publisher */
    bool leased;        /* a lease copy took the delivery's place */
    bool outcome_waits; /* finished while its lease copy was in flight */
    int64_t taken_ns;   /* monotonic time it was consumed */
    int64_t retry_at_ns;
    unsigned attempts; /* publishes of its copy so far */
    /* Whose task this is, to match its redeliveries and copies: the
     * message id when the producer set one (kiln sets the task UUID),
     * else the UUID the body gives ("" when none can be read). Set by the
     * consumer at fetch, or, for a raw delivery whose message has no id,
     * by the worker once it decoded it: NULL until then. Written once with
     * release, read with acquire (kiln__work_key): once it is non-NULL,
     * job.sig may be read by the consumer too. */
    _Atomic(const char *) key;
    /* Raw: the consumer handed the delivery on undecoded and the worker
     * decodes it (kiln__dispatch_prepare); the usual case. Deliveries
     * seen before (redelivered, counted, a lease copy) are decoded by the
     * consumer, which must look them up against the slots. */
    bool raw;
    unsigned retries_seen;    /* job.retries and job.deliveries as they */
    uint32_t deliveries_seen; /* came in, for a copy made while it runs or
                                 before a worker took it */
    kiln__work_copy *copy;    /* its entry in kiln_pool.copies, for good */
    /* With the pool's state writer (state_writer.c), under kiln_pool.mu:
     * its STARTED is queued (KILN__WR_QUEUED: the final write takes it
     * along) or being written (KILN__WR_SENT: the final write waits for
     * it), and the link of that queue. The rest is the writer's. */
    unsigned char wr_start;
    struct kiln__work *wr_start_next;
    bool wr_start_owed;        /* its STARTED was not written: the final
                                  write carries it (state_update.started) */
    unsigned wr_attempts;      /* failed writes of its final state */
    int64_t wr_due_ns;         /* monotonic: the next of them */
    struct kiln__work *behind; /* PARKED: the delivery it waits for */
    struct kiln__work *next;   /* work queue, done lists or free list */
} kiln__work;

/* The key of `w` (see kiln__work.key), NULL while a worker has yet to
 * decode it. Any thread. */
static inline const char *kiln__work_key(kiln__work *w)
{
    return atomic_load_explicit(&w->key, memory_order_acquire);
}

/* The task's name for the log, NULL when not known (yet). The consumer
 * thread. */
static inline const char *kiln__work_name(kiln__work *w)
{
    return kiln__work_key(w) != NULL && w->job.sig != NULL ? w->job.sig->name
                                                           : NULL;
}

/* Sets the key of `w` from its delivery and job, once its body was
 * decoded (or refused). The thread that decoded it. */
void kiln__work_set_key(kiln__work *w);

typedef enum kiln__pool_state {
    KILN__POOL_NEW = 0,
    KILN__POOL_RUNNING,
    KILN__POOL_DONE
} kiln__pool_state;

struct kiln_pool {
    kiln_config cfg;
    char name[128];
    unsigned concurrency;
    kiln_registry *reg;
    kiln__store *store;      /* NULL: no state recorded */
    bool own_store;          /* made from cfg.store; destroyed with the pool */
    atomic_int store_outage; /* kiln__dispatch.outage */
    /* Set when the pool stops for good (a drain that timed out, a second
     * signal): workers stop retrying store writes and requeue instead. */
    atomic_bool abandon;
    kiln__dispatch dispatch;
    kiln__broker_factory broker_new;
    void *broker_ctx;
    atomic_int state;      /* kiln__pool_state */
    atomic_int stop_level; /* 0 run, 1 drain, 2 stop at once */
    int wake_fd;           /* eventfd: outcomes and stop requests */

    /* Work queue and done list. Lock order: never hold `mu` while running
     * a task, publishing or calling the broker. */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;
    kiln__work *queue_head, *queue_tail;
    kiln__work *done_head, *done_tail;
    kiln__work *sent_head; /* copies the publisher is done with */
    bool closing;          /* workers exit once the queue is empty */
    unsigned running;      /* tasks being run right now */
    unsigned max_running;  /* highest `running` seen (tests check <= C) */

    /* The state writer (state_writer.c), when there is a store: the
     * STARTED writes to do (linked by wr_start_next) and the finished
     * deliveries whose state is to be written (linked by next), under
     * `mu`; writer_cv wakes it (CLOCK_MONOTONIC). */
    pthread_t writer;
    bool writer_on;
    bool writer_stop;
    pthread_cond_t writer_cv;
    kiln__work *wr_start_head, *wr_start_tail;
    kiln__work *wr_head, *wr_tail;

    kiln__work *slots;
    kiln__work_copy *copies; /* slots[i].copy is &copies[i] */
    size_t n_slots;
    pthread_t *workers;
    unsigned n_workers; /* started */

    /* The consuming broker, kept by a drain that timed out: the deliveries
     * of tasks still running are released with it by kiln_pool_free. */
    kiln__broker *leftover;

    /* Publishing, created on first send (and by kiln_pool_start, whose
     * consumer publishes outcome copies through it too). */
    pthread_mutex_t pub_mu;
    kiln__publisher *pub;
    atomic_bool hold_acks; /* kiln__pool_hold_acks */
    /* Deliveries the consumer thread decoded itself (seen before, or
     * arriving while it drains): kiln__pool_consumer_decodes. */
    atomic_ulong consumer_decodes;
    /* Destination keys of delayed sends found bound lately (dispatch.h);
     * it has its own lock. */
    kiln__probe_cache probe;

    /* Readiness, for kiln_pool_wait_ready: `ready_mu` guards `ready` (the
     * consumer is subscribed right now) and `ready_why` (the last failed
     * connection attempt; code KILN_OK when none); `ready_cv`
     * (CLOCK_MONOTONIC) is broadcast on each change. Never held while
     * calling the broker. */
    pthread_mutex_t ready_mu;
    pthread_cond_t ready_cv;
    bool ready;
    kiln_error ready_why;
};

/* workers.c */
kiln_err kiln__workers_start(kiln_pool *p, kiln_error *err);
void kiln__workers_join(kiln_pool *p);

/* Puts the list head..tail (linked by next) on the done list and wakes
 * the consumer when it was empty. Any thread; takes `mu`. */
void kiln__pool_done(kiln_pool *p, kiln__work *head, kiln__work *tail);

/* state_writer.c: the thread that writes the task states of the pool's
 * workers in bulk. It takes everything queued since its last write (at
 * most KILN__WRITER_BULK states) in one kiln__store_set_states call, so a
 * lone task is written at once and a busy pool shares round trips; a
 * delivery reaches the done list only once its final state is written
 * (a failed one is retried with backoff, as kiln__dispatch says). start
 * is a no-op without a store; stop (after the workers are joined) writes
 * what is queued and joins the thread. */
#define KILN__WRITER_BULK 256
#define KILN__WR_QUEUED   1
#define KILN__WR_SENT     2
kiln_err kiln__writer_start(kiln_pool *p, kiln_error *err);
void kiln__writer_stop(kiln_pool *p);

/* A worker hands `w` over once its task ended, when w->job.write or
 * w->wr_start says the writer has a part in it. Any thread. */
void kiln__writer_put(kiln_pool *p, kiln__work *w);

/* consumer.c: the loop of kiln_pool_start. */
kiln_err kiln__consumer_run(kiln_pool *p, kiln_error *err);

/* Wakes the consumer loop (eventfd write). Any thread; async-signal-safe. */
void kiln__pool_wake(kiln_pool *p);

/* The consumer says whether it is subscribed now, and after a failed
 * connection attempt why (`why` may be NULL); wakes kiln_pool_wait_ready.
 * Any thread, not from a signal handler. */
void kiln__pool_ready(kiln_pool *p, bool ready, const kiln_error *why);

/* The pool's publisher, created on first use. NULL with `err` when it
 * cannot be made. Any thread. */
kiln__publisher *kiln__pool_publisher(kiln_pool *p, kiln_error *err);

/* publisher.c: thread-safe confirmed publishing over `n_conns`
 * connections, each owned by its own thread. */
kiln__publisher *kiln__publisher_new(const kiln_config *cfg,
                                     kiln__broker_factory factory, void *ctx,
                                     unsigned n_conns, const char *name,
                                     kiln_error *err);
/* Publishes `n` messages (borrowed for the call) and waits until each is
 * confirmed, refused, or cfg->publish_timeout_ms passed. Same status
 * contract as the broker's publish op. Safe from any thread; concurrent
 * calls share confirm round trips. */
kiln_err kiln__publisher_send(kiln__publisher *p, const kiln__message *msgs,
                              size_t n, kiln_err *status, kiln_error *err);
/* Queues the `n` messages of `r` (borrowed, with `status`, until notify)
 * and returns at once; r->notify(r, r->notify_ctx) is called on a
 * publishing connection's owner thread once every status[i] is final,
 * with the same codes as kiln__publisher_send (KILN_ECLOSED when the
 * publisher closed first). Returns KILN_ECLOSED, queuing nothing and never
 * calling notify, when the publisher is already closing. The rest of `r`
 * is the publisher's until notify. Safe from any thread. */
kiln_err kiln__publisher_submit(kiln__publisher *p, kiln__pub_req *r,
                                const kiln__message *msgs, size_t n,
                                kiln_err *status, kiln__pub_notify notify,
                                void *ctx);
/* kiln__publisher_submit on connection *conn, which the publisher picks
 * when it is UINT_MAX (or out of range) and writes back: requests
 * submitted on one connection are written in the order they came, and
 * their confirms share round trips. Same contract and threads. */
kiln_err kiln__publisher_submit_to(kiln__publisher *p, unsigned *conn,
                                   kiln__pub_req *r, const kiln__message *msgs,
                                   size_t n, kiln_err *status,
                                   kiln__pub_notify notify, void *ctx);

/* Fails what is still queued with KILN_ECLOSED, joins the threads, closes
 * the connections. NULL is a no-op. */
void kiln__publisher_free(kiln__publisher *p);

/* Test hook: while `hold` is true the consumer sends no acks, so a test
 * can kill the process after tasks finished and before their acks. */
void kiln__pool_hold_acks(kiln_pool *p, bool hold);

/* How many deliveries the consumer thread decoded itself; the others
 * were decoded by the workers. Any thread. */
unsigned long kiln__pool_consumer_decodes(kiln_pool *p);

/* Test hook: replaces the broker factory (default: the AMQP broker).
 * Before kiln_pool_start and the first send only. */
void kiln__pool_set_broker_factory(kiln_pool *p, kiln__broker_factory f,
                                   void *ctx);
/* Test hook: records states in `store` (borrowed; outlives the pool)
 * instead of the one cfg.store made. Before kiln_pool_start only. */
void kiln__pool_set_store(kiln_pool *p, kiln__store *store);

#endif /* KILN_POOL_H */
