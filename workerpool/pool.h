/*
 * The worker pool's internals, shared by the files of workerpool/. Never
 * installed.
 *
 * Threads and what they own:
 *   - the thread in kiln_pool_start runs the consumer loop (consumer.c): it
 *     owns the consuming broker connection, decodes deliveries, hands jobs
 *     to the workers, settles their outcomes and coalesces acks;
 *   - `concurrency` worker threads (workers.c) run task functions;
 *   - the publisher (publisher.c) owns the publishing connections and
 *     serves kiln_pool_send_task(s) from any thread.
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

/* One delivery in flight, from consume to settle. Slots are preallocated
 * (prefetch + concurrency of them), so the per-task path allocates only
 * what decoding needs. */
typedef enum kiln__work_state {
    KILN__WORK_FREE = 0,
    KILN__WORK_QUEUED,  /* in the work queue, not started */
    KILN__WORK_RUNNING, /* a worker has it */
    KILN__WORK_DONE,    /* finished with verdict ACK; ack not yet sent */
    KILN__WORK_SETTLED  /* acked or nacked; waiting to leave the window */
} kiln__work_state;

typedef struct kiln__work {
    kiln__delivery dl;
    kiln__job job;
    kiln__work_state state;
    bool orphan;             /* its connection was lost: drop the outcome */
    struct kiln__work *next; /* work queue, done list or free list */
} kiln__work;

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
    bool closing;         /* workers exit once the queue is empty */
    unsigned running;     /* tasks being run right now */
    unsigned max_running; /* highest `running` seen (tests check <= C) */

    kiln__work *slots;
    size_t n_slots;
    pthread_t *workers;
    unsigned n_workers; /* started */

    /* The consuming broker, kept by a drain that timed out: the deliveries
     * of tasks still running are released with it by kiln_pool_free. */
    kiln__broker *leftover;

    /* Publishing, created on first send. */
    pthread_mutex_t pub_mu;
    kiln__publisher *pub;
    /* Destination keys of delayed sends found bound lately (dispatch.h);
     * it has its own lock. */
    kiln__probe_cache probe;
};

/* workers.c */
kiln_err kiln__workers_start(kiln_pool *p, kiln_error *err);
void kiln__workers_join(kiln_pool *p);

/* consumer.c: the loop of kiln_pool_start. */
kiln_err kiln__consumer_run(kiln_pool *p, kiln_error *err);

/* Wakes the consumer loop (eventfd write). Any thread; async-signal-safe. */
void kiln__pool_wake(kiln_pool *p);

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
/* Fails what is still queued with KILN_ECLOSED, joins the threads, closes
 * the connections. NULL is a no-op. */
void kiln__publisher_free(kiln__publisher *p);

/* Test hook: replaces the broker factory (default: the AMQP broker).
 * Before kiln_pool_start and the first send only. */
void kiln__pool_set_broker_factory(kiln_pool *p, kiln__broker_factory f,
                                   void *ctx);
/* Test hook: records states in `store` (borrowed; outlives the pool)
 * instead of the one cfg.store made. Before kiln_pool_start only. */
void kiln__pool_set_store(kiln_pool *p, kiln__store *store);

#endif /* KILN_POOL_H */
