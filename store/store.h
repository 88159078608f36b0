/*
 * The store interface: where a task's state, results and error are
 * recorded, as machinery's result backend does. A table of function
 * pointers (STYLE §15) implemented by the MongoDB store (store/mongo_*.c)
 * and the in-memory mock (mocks/store_mock.c). Never installed.
 *
 * Threads. Unlike a broker object, a store object is shared: every op is
 * safe from any thread at once (the MongoDB store takes a client from a
 * mongoc_client_pool_t per call), so worker threads record state without
 * going through the consumer thread.
 *
 * The state rules every implementation enforces, so that at-least-once
 * delivery, duplicates and late writes cannot make a task look unfinished:
 *
 * 1. A finished task (SUCCESS or FAILURE) never changes again: any later
 *    write for its UUID is ignored (and is not an error). The first
 *    finishing write wins. The one exception is rule 4's FAILURE.
 * 2. PENDING is written only for a task the store does not know yet (or
 *    that is still PENDING): a producer's PENDING that arrives after a
 *    worker's RECEIVED is ignored.
 * 3. Otherwise any unfinished state may follow any other (a retried task
 *    goes RETRY -> RECEIVED -> STARTED again).
 * 4. A producer whose send failed for certain (the broker never took the
 *    message: nacked, unroutable, never written) records FAILURE over its
 *    own PENDING with the send_failed op, so that a waiter learns the
 *    task will not run. That write applies only over PENDING (or an
 *    earlier such FAILURE), never over a worker's state. Readers see an
 *    ordinary FAILURE, but any later write replaces it, as if it were
 *    PENDING: a new send of the same UUID (its PENDING), or a worker's
 *    state (a message of an earlier send of that UUID did reach a queue,
 *    say one whose send timed out and was sent again).
 */
#ifndef KILN_STORE_H
#define KILN_STORE_H

#include "task/task.h"

#include "kiln/store_mongo.h"

/* The task states are the public kiln_task_state of kiln/store_mongo.h
 * (machinery's states, in the usual order of a task's life): the store,
 * the worker and the readers share the one enum. */
#define KILN__STATE_LAST KILN_STATE_FAILURE

/* kiln__state_name returns machinery's spelling ("PENDING", ...), or
 * "UNKNOWN" outside the enum: the one table of names, behind the public
 * kiln_task_state_name too. Static text; thread-safe. */
static inline const char *kiln__state_name(kiln_task_state s)
{
    static const char *const names[] = {"PENDING", "RECEIVED", "STARTED",
                                        "RETRY",   "SUCCESS",  "FAILURE"};

    return (unsigned)s <= KILN__STATE_LAST ? names[s] : "UNKNOWN";
}

/* kiln__state_finished: SUCCESS or FAILURE. */
static inline bool kiln__state_finished(kiln_task_state s)
{
    return s == KILN_STATE_SUCCESS || s == KILN_STATE_FAILURE;
}

/* One state write. Every pointer is borrowed for the call. */
typedef struct kiln__state_update {
    const char *uuid;      /* required, non-empty */
    const char *task_name; /* NULL or "" when unknown */
    kiln_task_state state;
    const kiln__values *results; /* SUCCESS: the task's results; else NULL */
    const char *error;           /* FAILURE (and RETRY): why; else NULL */
    /* The write also records the STARTED of a run that was not written
     * on its own (attempts and started_at, as a STARTED write would): a
     * writer that still holds a task's STARTED when its final state comes
     * sends the two as one. Implied for STARTED itself. */
    bool started;
} kiln__state_update;

/* What the store knows about one task. Filled by get_state: the caller
 * owns the strings and results; release with kiln__task_record_release. */
typedef struct kiln__task_record {
    char *uuid;
    char *task_name; /* "" when unknown */
    kiln_task_state state;
    kiln__values results; /* empty unless SUCCESS */
    char *error;          /* "" unless FAILURE or RETRY gave one */
    int64_t created_ns;   /* realtime of the first write */
    int64_t updated_ns;   /* realtime of the last applied write */
    unsigned attempts;    /* STARTED writes applied: the runs begun */
    char *worker;         /* "host:pid" of the last worker that wrote it;
                             NULL when none did or the store keeps none */
    int64_t started_ns;   /* realtime of the last STARTED; 0 = never */
    int64_t finished_ns;  /* realtime of SUCCESS or FAILURE; 0 = not yet */
    int64_t delete_ns;    /* when the store drops it; 0 = kept */
} kiln__task_record;

typedef struct kiln__store kiln__store;

typedef struct kiln__store_ops {
    /* Records `u` following the state rules above. Returns KILN_OK also
     * when a rule made the store ignore the write. KILN_EINVAL for a
     * missing UUID or a state outside the enum; KILN_ESTORE with the
     * server's reason when the write failed. */
    kiln_err (*set_state)(kiln__store *s, const kiln__state_update *u,
                          kiln_error *err);

    /* Records PENDING for each of the `n` updates (each u[i].state must be
     * KILN_STATE_PENDING) in as few round trips as the store can, with
     * rule 2: a task already known is left as it is. status[i] gets each
     * one's result, as set_state would give it; returns KILN_OK when all
     * succeeded, else the first failure's code with its reason in `err`.
     * May be NULL: kiln__store_add_pending then calls set_state n times. */
    kiln_err (*add_pending)(kiln__store *s, const kiln__state_update *u,
                            size_t n, kiln_err *status, kiln_error *err);

    /* Fills *out with what is known about `uuid`; KILN_ENOTFOUND when
     * nothing is. *out is untouched on failure. */
    kiln_err (*get_state)(kiln__store *s, const char *uuid,
                          kiln__task_record *out, kiln_error *err);

    /* Frees the object. No other thread may use it any more. */
    void (*destroy)(kiln__store *s);

    /* Records rule 4's FAILURE for `u` (u->state must be
     * KILN_STATE_FAILURE, u->error why the send failed): the producer's
     * send of the task failed for certain. KILN_OK also when the rule
     * made the store ignore it; otherwise as set_state. */
    kiln_err (*send_failed)(kiln__store *s, const kiln__state_update *u,
                            kiln_error *err);

    /* Records each of the `n` updates as set_state would, in as few round
     * trips as the store can (one unordered bulk write for MongoDB): the
     * writes of many tasks share one acknowledgement. No two updates may
     * name the same UUID (their order is not kept). status[i] gets each
     * one's result, as set_state would give it, so a document that failed
     * does not hold back the others; returns KILN_OK when all succeeded,
     * else the first failure's code with its reason in `err`. May be
     * NULL: kiln__store_set_states then calls set_state n times. */
    kiln_err (*set_states)(kiln__store *s, const kiln__state_update *u,
                           size_t n, kiln_err *status, kiln_error *err);
} kiln__store_ops;

/* Every implementation starts its object with this struct. */
struct kiln__store {
    const kiln__store_ops *ops;
};

static inline kiln_err
kiln__store_set(kiln__store *s, const kiln__state_update *u, kiln_error *err)
{
    return s->ops->set_state(s, u, err);
}

/* The writes of a store without a bulk op: set_state n times, status[i]
 * each one's result; returns the first failure (its reason in `err`). */
static inline kiln_err kiln__store_each(kiln__store *s,
                                        const kiln__state_update *u, size_t n,
                                        kiln_err *status, kiln_error *err)
{
    kiln_err first = KILN_OK;
    kiln_error e;

    for (size_t i = 0; i < n; i++) {
        status[i] = s->ops->set_state(s, &u[i], &e);
        if (status[i] != KILN_OK && first == KILN_OK) {
            first = status[i];
            if (err != NULL)
                *err = e;
        }
    }
    return first;
}

/* See add_pending above; any thread. */
static inline kiln_err kiln__store_add_pending(kiln__store *s,
                                               const kiln__state_update *u,
                                               size_t n, kiln_err *status,
                                               kiln_error *err)
{
    if (s->ops->add_pending != NULL)
        return s->ops->add_pending(s, u, n, status, err);
    return kiln__store_each(s, u, n, status, err);
}

/* See set_states above; any thread. */
static inline kiln_err kiln__store_set_states(kiln__store *s,
                                              const kiln__state_update *u,
                                              size_t n, kiln_err *status,
                                              kiln_error *err)
{
    if (s->ops->set_states != NULL)
        return s->ops->set_states(s, u, n, status, err);
    return kiln__store_each(s, u, n, status, err);
}

/* See send_failed above; any thread. */
static inline kiln_err kiln__store_send_failed(kiln__store *s,
                                               const kiln__state_update *u,
                                               kiln_error *err)
{
    return s->ops->send_failed(s, u, err);
}

static inline kiln_err kiln__store_get(kiln__store *s, const char *uuid,
                                       kiln__task_record *out, kiln_error *err)
{
    return s->ops->get_state(s, uuid, out, err);
}

/* NULL-safe. */
static inline void kiln__store_destroy(kiln__store *s)
{
    if (s != NULL)
        s->ops->destroy(s);
}

/* Frees what get_state put into *r and zeroes it. Safe on a zeroed record. */
static inline void kiln__task_record_release(kiln__task_record *r)
{
    kiln__free(r->uuid);
    kiln__free(r->task_name);
    kiln__free(r->error);
    kiln__free(r->worker);
    kiln__values_clear(&r->results);
    *r = (kiln__task_record){0};
}

#endif /* KILN_STORE_H */
