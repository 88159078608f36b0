/*
 * What a worker does with one delivery, and what a producer does with one
 * signature, independent of threads, so that the worker pool and the eager
 * mode share it. Never installed.
 *
 * A delivery goes through three steps, each on the thread the pool's
 * design gives it:
 *
 *   prepare  (a worker; the     decode the body, check the delivery count,
 *             consumer for a    look the name up; bad input is decided here
 *             delivery seen     (no store call, so the consumer never waits
 *             before)           for MongoDB)
 *   run      (any worker)       store STARTED, call the task,
 *                               store SUCCESS, FAILURE or RETRY; for bad
 *                               input with a readable UUID, store FAILURE
 *   settle   (consumer thread,  ack, dead-letter, republish for a retry, or
 *             it owns the       requeue; the ack comes only after every
 *             broker object)    message it causes is confirmed
 *
 * kiln__dispatch_delivery does all three in a row, for eager mode and for
 * a single-threaded consumer.
 */
#ifndef KILN_DISPATCH_H
#define KILN_DISPATCH_H

#include "broker/broker.h"
#include "store/store.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct kiln__job kiln__job;

/* Says whether to stop retrying a final state write (the pool is stopping
 * for good). Called from worker threads; must be thread-safe. */
typedef bool (*kiln__give_up_fn)(void *ctx);

/* What the worker needs; every pointer is borrowed, so one kiln__dispatch
 * may be shared by all threads of a pool.
 *
 * Store outages. A final state (SUCCESS or FAILURE) must be written before
 * its delivery is acked. With `give_up` set, a failed final write is
 * retried with backoff on the worker thread until it succeeds or
 * give_up() says stop (the verdict is then REQUEUE): the delivery stays
 * unacked, the worker stays busy, so during an outage consuming stops at
 * the prefetch limit and nothing is lost. Without `give_up` a failed final
 * write requeues at once. Non-final states (STARTED, RETRY) are
 * written once, and skipped while an outage is known: they would fail too
 * and only delay the task. `outage` (may be NULL) is that shared
 * knowledge; it also keeps the log to one line per outage and one when it
 * ends. */
typedef struct kiln__dispatch {
    const kiln_config *cfg; /* exchange names, dialect, limits, policies */
    const kiln_registry *reg;
    kiln__store *store; /* NULL: record no state */
    kiln__give_up_fn give_up;
    void *give_up_ctx;
    atomic_int *outage; /* 1 while the store is known to be unreachable */
    /* The pool's state writer (workerpool/state_writer.c), or NULL. When
     * set, a worker does not wait for its task's writes: run hands the
     * STARTED of a job to started(writer_ctx, job) before the task runs
     * (but writes a redelivery's itself, which the poison count needs
     * before the run), and leaves the final (or RETRY) write in
     * job->write for the writer, which writes the states of every task
     * finished meanwhile in one set_states call. */
    void (*started)(void *writer_ctx, kiln__job *job);
    void *writer_ctx;
} kiln__dispatch;

/* What settle does with a delivery. */
typedef enum kiln__verdict {
    KILN__VERDICT_ACK = 0,    /* done: success, or an unregistered or
                                 expired task the policy says to drop */
    KILN__VERDICT_DEADLETTER, /* bad input or task failure: a copy with the
                                 reason goes to the dead-letter exchange */
    KILN__VERDICT_RETRY,      /* a copy goes on through the delay cascade,
                                 then the delivery is acked: job->send
                                 says which copy (a retry, a hold, a
                                 requeue, a counted redelivery) */
    KILN__VERDICT_REQUEUE     /* nacked back to the queue: the final state
                                 could not be written and the pool stops */
} kiln__verdict;

/* Why a delivery is sent on through the delay cascade (verdict RETRY),
 * which decides what its copy carries. Every copy keeps the delivery's
 * message id, priority and headers (less RabbitMQ's dead-lettering
 * headers); x-kiln-retries and x-kiln-deliveries are set as each kind
 * says, from the job's `retries` and `deliveries`. */
typedef enum kiln__send_kind {
    KILN__SEND_NONE = 0,
    KILN__SEND_RETRY,   /* the task runs again: the signature re-encoded with
                           its new counters and ETA (send.body, and
                           send.headers in paota's header mode); retries
                           + 1, deliveries 0 (a retry counts afresh) */
    KILN__SEND_HOLD,    /* not to start now (early for its ETA, running here
                           already, handed back unstarted): the delivery as
                           it came, counts unchanged */
    KILN__SEND_REQUEUE, /* an unregistered task the policy requeues: the
                           delivery as it came, deliveries + 1 */
    KILN__SEND_COUNTED, /* a classic queue's redelivery, which carries no
                           count of its own: the delivery as it came, with
                           `deliveries` (which counts it already) */
    KILN__SEND_LEASE    /* a lease copy standing for a task that runs
                           (kiln__lease_build): as HOLD, plus x-kiln-lease */
} kiln__send_kind;

/* The copy of verdict RETRY. */
typedef struct kiln__send_on {
    kiln__send_kind kind;
    uint64_t delay_ms; /* how long it waits in the cascade */
    char *body;        /* RETRY: the new encoding; owned */
    size_t len;
    kiln__hdr *headers; /* RETRY in paota's header mode: typed; owned */
    size_t n_headers;
} kiln__send_on;

/* One delivery on its way through the steps. Zero it before prepare;
 * release it with kiln__job_release. Used by one thread at a time. */
struct kiln__job {
    kiln_signature *sig; /* owned; NULL when the body did not decode */
    kiln_task_fn fn;     /* NULL until prepare found the task */
    void *user;
    unsigned time_limit_ms; /* the task's own soft limit; 0: the default */
    /* Refused input whose FAILURE a worker must still write: the task's
     * UUID and name (read from the signature, or salvaged from a body
     * that did not decode). Empty uuid: nothing to write. */
    char failed_uuid[KILN_NAME_MAX];
    char failed_name[KILN_NAME_MAX];
    kiln__verdict verdict;
    kiln_err status;     /* the task's return, or why it was refused */
    kiln_error reason;   /* DEADLETTER: the reason; FAILURE: the error */
    uint32_t deliveries; /* earlier deliveries of this message, counted by
                            x-delivery-count, x-kiln-deliveries or the
                            redelivered flag */
    unsigned retries;    /* retries before this run: x-kiln-retries, or
                            paota's RetriesDone when larger */
    /* Delivered before (the redelivered flag, a delivery count, kiln's own
     * count) or a lease copy (x-kiln-lease): the delivery may have run
     * already, here or elsewhere. */
    bool redelivery;
    const char *lease; /* the x-kiln-lease header, borrowed from the
                          delivery; NULL for no lease copy */
    /* With a store, a redelivery's task state is read on the worker before
     * it runs: a finished task is not run again, and the poison count is
     * the number of runs the store recorded. */
    bool check_store;
    kiln__send_on send; /* verdict RETRY: the copy */
    /* A state write left to the pool's state writer (kiln__dispatch):
     * SUCCESS, FAILURE or RETRY of write_uuid (borrowed from sig or
     * failed_uuid), with the run's results (owned) for SUCCESS and
     * reason.message for the others. */
    bool write;
    kiln_task_state write_state;
    const char *write_uuid;
    const char *write_name;
    kiln__values results;
};

/* Decodes `dl` and finds its task. Returns true when the job needs
 * kiln__dispatch_run on a worker: a task to run, or refused input whose
 * FAILURE must be written to the store (its verdict stays DEADLETTER
 * unless that write fails). Returns false when the verdict is decided and
 * nothing is left to write (bad input without a store or a readable UUID,
 * an unregistered task to drop or requeue). Never calls the store. `dl` is
 * borrowed for the call. The same as kiln__dispatch_decode, then (when
 * that returned true) kiln__dispatch_admit. */
bool kiln__dispatch_prepare(const kiln__dispatch *d, const kiln__delivery *dl,
                            kiln__job *job);

/* The first half of prepare: zeroes `job`, reads the delivery's counts
 * and decodes the body. False when the body did not decode (the verdict
 * is decided; true again when its FAILURE needs a worker, as prepare).
 * On true the job has its signature and the caller may look at it (and
 * adjust job->deliveries) before kiln__dispatch_admit. */
bool kiln__dispatch_decode(const kiln__dispatch *d, const kiln__delivery *dl,
                           kiln__job *job, bool *needs_worker);

/* True when `dl` says it was delivered before, so it may have run
 * already: the redelivered flag, a delivery count, kiln's own count
 * (x-kiln-deliveries) or a lease copy (x-kiln-lease). Reads headers only.
 * Any thread. */
bool kiln__delivery_seen_before(const kiln__delivery *dl);

/* The task's UUID and name where they can be read without decoding the
 * body: paota's headers, or the JSON's top-level keys (a scan, no tree).
 * For a body that did not decode, so the store can mark it FAILURE, and
 * for one not decoded at all. Empty strings when not found. Any
 * thread. */
void kiln__dispatch_task_ids(const kiln__dispatch *d, const kiln__delivery *dl,
                             char *uuid, char *name, size_t n);

/* The second half: poison count, ETA, expiry, registry look-up; returns
 * what kiln__dispatch_prepare returns. */
bool kiln__dispatch_admit(const kiln__dispatch *d, const kiln__delivery *dl,
                          kiln__job *job);

/* Runs a prepared job's task and records its states (or, for refused
 * input, records its FAILURE). Never fails: the outcome is in
 * job->verdict, job->status and job->reason. May block while the store is
 * down (see kiln__dispatch). Any thread; no library lock is held while the
 * task runs. */
void kiln__dispatch_run(const kiln__dispatch *d, kiln__job *job);

/* The write job->write asks for, into *u (borrowing from the job). */
void kiln__dispatch_write_of(const kiln__job *job, kiln__state_update *u);

/* The store outage bookkeeping of kiln__dispatch, for a writer that
 * writes states itself: outage_known says an outage is known (non-final
 * writes are then skipped); store_failed logs a failed write of `state`
 * (a warning for the first of an outage); store_ok ends a known outage
 * after `retries` retries. Any thread. */
bool kiln__dispatch_outage_known(const kiln__dispatch *d);
void kiln__dispatch_store_failed(const kiln__dispatch *d,
                                 const kiln__state_update *u,
                                 const kiln_error *e);
void kiln__dispatch_store_ok(const kiln__dispatch *d, unsigned retries);

/* Carries out job->verdict for `dl` on `b`. Returns the broker's error when
 * a publish or the ack failed; the delivery is then unsettled and the
 * caller reconnects (the broker redelivers it). The broker's owner only. */
kiln_err kiln__dispatch_settle(const kiln__dispatch *d, kiln__broker *b,
                               const kiln__delivery *dl, const kiln__job *job,
                               kiln_error *err);

/* What a settle does once its message (if any) is confirmed. */
typedef enum kiln__settle_end_action {
    KILN__SETTLE_ACK = 0,
    KILN__SETTLE_REQUEUE, /* nack, requeue */
    KILN__SETTLE_DROP     /* nack, no requeue (no dead-letter queue) */
} kiln__settle_end_action;

/* A settle in two halves, so that a consumer can confirm the messages of
 * many settles as one batch (one round trip instead of one each):
 * kiln__settle_begin builds the message the verdict publishes, if any,
 * the caller publishes it, and kiln__settle_end acks or nacks the delivery
 * once it is confirmed (kiln__settle_discard when it was not: the
 * delivery stays unacked and the caller reconnects). `msg` borrows from
 * the delivery, the job and the struct itself, so all three must live
 * until the end or discard. The broker's owner only. */
typedef struct kiln__settle {
    bool publish; /* msg must be confirmed before the end */
    kiln__settle_end_action end;
    const char *what; /* names the copy in errors: "dead-letter", ... */
    kiln__message msg;
    kiln__hdr *headers;              /* owned; freed by end or discard */
    char exchange[KILN_NAME_MAX];    /* a retry's level of the cascade */
    char routing_key[KILN_NAME_MAX]; /* and its key */
    /* The headers a dead letter adds to those it inherits (msg's, or
     * fallback's), and a retry's replacement when it does not fit a
     * frame: a dead letter of the delivery saying so (msg.oversize points
     * to it). */
    kiln__hdr own[5];
    kiln__message fallback;
    char fallback_reason[sizeof(((kiln_error *)0)->message) + 96];
} kiln__settle;

/* Builds the settle of job->verdict for `dl` into *s. Fails when the
 * message cannot be built (no memory, or a retry delay the cascade cannot
 * route); *s then owns nothing and publishes nothing. */
kiln_err kiln__settle_begin(const kiln__dispatch *d, const kiln__delivery *dl,
                            const kiln__job *job, kiln__settle *s,
                            kiln_error *err);

/* Acks or nacks `dl` as s->end says and frees what *s owns. Returns the
 * broker's error when that failed (the caller reconnects). */
kiln_err kiln__settle_end(kiln__broker *b, const kiln__delivery *dl,
                          kiln__settle *s, kiln_error *err);

/* Frees what *s owns without settling the delivery. */
void kiln__settle_discard(kiln__settle *s);

/* prepare, run and settle in a row; *verdict (may be NULL) gets the
 * verdict. Same thread rule as settle. */
kiln_err kiln__dispatch_delivery(const kiln__dispatch *d, kiln__broker *b,
                                 const kiln__delivery *dl,
                                 kiln__verdict *verdict, kiln_error *err);

/* Turns a prepared job into one sent on through the delay queues after
 * `delay_ms`, unchanged and not counted as a delivery (KILN__SEND_HOLD):
 * for a task that must not start now. Its task is not run. */
void kiln__job_hold(kiln__job *job, uint64_t delay_ms);

/* Frees what the job owns and zeroes it. */
void kiln__job_release(kiln__job *job);

/* kiln__dead_letter_copy builds into *m the dead-letter copy of `dl`: its
 * body and typed headers (all of them, x-death included), with
 * x-kiln-reason `reason`, x-kiln-exchange and x-kiln-routing-key and, for
 * `attempts` > 0, x-kiln-attempts (an integer) and x-kiln-worker, which
 * go into own[5]. A copy too big for one frame goes without its largest
 * inherited headers, named in its reason. False, building nothing, when
 * cfg has no dead-letter queue. `dl`, `reason` and `own` must outlive the
 * publish of *m. Any thread. */
bool kiln__dead_letter_copy(const kiln_config *cfg, const kiln__delivery *dl,
                            const char *reason, unsigned attempts,
                            kiln__hdr *own, kiln__message *m);

/* ---- producer side ------------------------------------------------------ */

/* One signature encoded for publishing: the buffers a kiln__message built
 * by kiln__stage_tasks borrows. */
typedef struct kiln__staged {
    char *body; /* owned; freed by kiln__staged_release */
    size_t len;
    kiln__hdr *headers; /* owned; paota header mode only, typed; one
                           block */
    size_t n_headers;
    kiln_err rc; /* KILN_OK once staged, else why it was not */
    /* Set for a task with an ETA in the future: where the delay cascade
     * takes it in. Empty otherwise. */
    char exchange[KILN_NAME_MAX];
    char routing_key[KILN_NAME_MAX];
} kiln__staged;

/* Publishes `n` messages and waits for their confirms, with the status
 * contract of the broker's publish op (broker.h). */
typedef kiln_err (*kiln__publish_fn)(void *ctx, const kiln__message *msgs,
                                     size_t n, kiln_err *status,
                                     kiln_error *err);

/* How long a destination key found bound on the delay cascade's probe is
 * taken as bound without asking again. The probe only ever changes from
 * "not bound" to "bound" (nothing unbinds it), so this bounds the cost of
 * an operator's clean-up, not of normal traffic. */
#define KILN__PROBE_TTL_MS 5000
#define KILN__PROBE_CACHE  16 /* destination keys remembered */

/* Destination keys a producer found bound on the delay cascade's probe
 * (broker/delay.h), for KILN__PROBE_TTL_MS each. Thread-safety: `mu`
 * guards the entries; it is never held while publishing. */
typedef struct kiln__probe_cache {
    pthread_mutex_t mu;
    struct {
        int64_t until_ns; /* monotonic; 0 = empty */
        char key[KILN_NAME_MAX];
    } e[KILN__PROBE_CACHE];
} kiln__probe_cache;

/* kiln__probe_cache_init empties the cache and makes its mutex (with
 * default attributes, which cannot fail on Linux);
 * kiln__probe_cache_destroy frees the mutex. The owner calls each once,
 * with no other thread using the cache. */
void kiln__probe_cache_init(kiln__probe_cache *c);
void kiln__probe_cache_destroy(kiln__probe_cache *c);

/* How a producer asks whether a delayed task's destination is bound:
 * `publish` sends the probes (on `ctx`, borrowed); `cache` (may be NULL:
 * ask every time) remembers the keys found bound. */
typedef struct kiln__prober {
    kiln__publish_fn publish;
    void *ctx;
    kiln__probe_cache *cache;
} kiln__prober;

/* Encodes each of the `n` signatures in cfg->dialect and records PENDING
 * in `store` (may be NULL), on the calling thread: a producer with many
 * threads encodes in parallel. out[i] gets signature i's buffers and
 * result. Every signature staged becomes msgs[j] (persistent, to
 * cfg->exchange, routed by its routing key, else cfg->binding_key, else
 * the queue name; a signature whose ETA is in the future goes to the
 * delay cascade instead, to reach that routing key at its ETA) with
 * map[j] = i; returns how many. A signature no broker could take fails
 * alone, before PENDING and before it can join a batch, with KILN_EINVAL
 * naming the field (a UUID or routing key over the 255 bytes of an AMQP
 * short string) or KILN_ETOOBIG (headers too large for one frame). The
 * messages borrow from `out` and `sigs`.
 *
 * A delayed message would be confirmed even when no queue is bound for
 * its destination, so before PENDING is recorded every destination key of
 * a delayed signature not in probe->cache is probed, all in one publish
 * through `probe` (broker/delay.h); a signature whose key is not bound
 * fails with KILN_EBROKER naming the key, and one whose probe was not
 * confirmed with the probe's status. Neither is staged.
 *
 * For a failure at an index below *first, *first becomes that index and
 * `err` its reason ("task 3 (add): ..."). `out` (zeroed), `msgs` and `map`
 * hold `n` entries each; free the buffers with kiln__staged_release, also
 * after a failure. Any thread that may call probe->publish. */
size_t kiln__stage_tasks(const kiln_config *cfg, kiln__store *store,
                         const kiln__prober *probe,
                         const kiln_signature *const *sigs, size_t n,
                         kiln__staged *out, kiln__message *msgs, size_t *map,
                         size_t *first, kiln_error *err);

/* kiln__stage_range is kiln__stage_tasks on sigs[from..n) alone, so a
 * large send can publish its first part while it stages the rest: it
 * fills out[from..n), writes its messages to msgs[0..m) with their
 * indices into `sigs` in map[0..m), and returns m. Indices in `err` are
 * of `sigs`. Same threads as kiln__stage_tasks. */
size_t kiln__stage_range(const kiln_config *cfg, kiln__store *store,
                         const kiln__prober *probe,
                         const kiln_signature *const *sigs, size_t from,
                         size_t n, kiln__staged *out, kiln__message *msgs,
                         size_t *map, size_t *first, kiln_error *err);

/* kiln__probe_staged is the probing step of kiln__stage_tasks, on
 * out[from..n) after encoding and routing: it fails (out[i].rc, *first
 * and `err` as there) each delayed signature whose destination is not
 * found bound. Any thread that may call probe->publish. */
void kiln__probe_staged(const kiln_config *cfg, const kiln__prober *probe,
                        const kiln_signature *const *sigs, size_t from,
                        size_t n, kiln__staged *out, size_t *first,
                        kiln_error *err);

/* Frees the buffers of out[0..n) and zeroes the entries. */
void kiln__staged_release(kiln__staged *out, size_t n);

/* kiln__unsent_definite: a publish status that says the broker certainly
 * did not take the message (nacked, returned unroutable, refused or never
 * written). KILN_ETIMEDOUT and KILN_ECLOSED are not: such a message may
 * have reached the broker. */
bool kiln__unsent_definite(kiln_err status);

/* After the publish of `m` staged messages (msgs[j] is sigs[map[j]],
 * whose PENDING `store` recorded): for each message j whose status pst[j]
 * says the broker certainly did not take it, unless lost[j] (may be NULL)
 * says it may have, records FAILURE "not sent: ..." (store.h rule 4) so
 * that a waiter learns the task will not run. `why` is the reason of the
 * lowest failed message, `why_j` its index; the others get their code's
 * reason. A FAILURE that cannot be written is logged; the task then
 * stays PENDING. No-op when `store` is NULL. Any thread. */
void kiln__stage_unsent(kiln__store *store, const kiln_signature *const *sigs,
                        const size_t *map, const kiln_err *pst,
                        const bool *lost, size_t m, size_t why_j,
                        const char *why);

/* Producer side: encodes each of the `n` signatures in cfg->dialect,
 * records PENDING in `store` (may be NULL) and publishes them in one
 * confirmed batch to cfg->exchange, routed by the signature's routing key,
 * or the binding key (the queue name when that is empty). status[i] (status
 * may be NULL) gets each one's result; returns KILN_OK when all succeeded,
 * else the first failure with its index in `err`. A signature whose PENDING
 * write failed is not published. Delayed signatures are probed on `b`
 * first, with no cache (kiln__stage_tasks). The broker's owner only. */
kiln_err kiln__send_tasks(const kiln_config *cfg, kiln__broker *b,
                          kiln__store *store, const kiln_signature *const *sigs,
                          size_t n, kiln_err *status, kiln_error *err);

#endif /* KILN_DISPATCH_H */
