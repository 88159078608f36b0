/*
 * kiln/store_mongo.h: what became of a task, read from the MongoDB result
 * store that workers write (kiln_config.store = KILN_STORE_MONGODB).
 *
 * Any process may read: the producer that sent a task, an operator's
 * tool, a service in Go reading the same `tasks` collection with
 * machinery. Documents follow machinery's schema (the README lists the
 * fields); states only move forward to SUCCESS or FAILURE, and a finished
 * task never changes again, with one exception: a FAILURE "not sent: ..."
 * that a producer recorded for a send that failed is replaced when the
 * same task is sent again (or when a worker runs an earlier send of it).
 *
 * Example (given: const kiln_config *cfg, const char *uuid):
 *
 *     kiln_error err;
 *     kiln_result *res;
 *     int64_t sum;
 *     kiln_store *st = kiln_store_new(cfg, &err);
 *
 *     if (st != NULL &&
 *         kiln_store_wait_result(st, uuid, 5000, &res, &err) == KILN_OK) {
 *         if (kiln_result_state(res) == KILN_STATE_SUCCESS &&
 *             kiln_signature_arg_int64(kiln_result_values(res), 0, &sum,
 *                                      &err) == KILN_OK)
 *             printf("%s: %lld\n", uuid, (long long)sum);
 *         kiln_result_free(res);
 *     }
 *     kiln_store_free(st);
 */
#ifndef KILN_PUBLIC_STORE_MONGO_H
#define KILN_PUBLIC_STORE_MONGO_H

#include <kiln.h>

#ifdef __cplusplus
extern "C" {
#endif

/* machinery's task states, in the usual order of a task's life. */
typedef enum kiln_task_state {
    KILN_STATE_PENDING = 0, /* sent, not yet received by a worker */
    KILN_STATE_RECEIVED,    /* a worker took the message */
    KILN_STATE_STARTED,     /* the task function is running */
    KILN_STATE_RETRY,       /* failed or asked to run again; will run later */
    KILN_STATE_SUCCESS,     /* finished; results recorded */
    KILN_STATE_FAILURE      /* finished; error recorded */
} kiln_task_state;

/* kiln_task_state_name returns machinery's spelling ("PENDING", ...), or
 * "UNKNOWN" outside the enum. Static text; never NULL. Thread-safe. */
KILN_API const char *kiln_task_state_name(kiln_task_state state);

/* A connection to the result store. Opaque.
 * Thread-safety: every function taking a kiln_store is safe from any
 * thread at once (each call borrows a connection from a pool). */
typedef struct kiln_store kiln_store;

/* One task's record as read at one moment: a snapshot that later writes do
 * not change. Opaque. Thread-safety: read-only; share it freely. */
typedef struct kiln_result kiln_result;

/* kiln_store_new makes a store for cfg->mongodb_url and
 * cfg->mongodb_database (cfg->store must be KILN_STORE_MONGODB). It does
 * not contact the server; the first call does, so a store can be made
 * while MongoDB is down. Each call fails within about
 * cfg->connect_timeout_ms when the server cannot be reached.
 * Returns: caller owns; free with kiln_store_free. NULL with `err`:
 * KILN_EINVAL for another store kind or a URL libmongoc rejects (the
 * message never holds the password), KILN_ENOMEM. */
KILN_API kiln_store *kiln_store_new(const kiln_config *cfg, kiln_error *err);

/* kiln_store_free closes the store. NULL is a no-op. No other thread may
 * use it any more; results read from it stay valid. */
KILN_API void kiln_store_free(kiln_store *st);

/* kiln_store_get_result reads what is recorded for the task `uuid`, in
 * whatever state it is. On KILN_OK, *out owns a result (caller owns; free
 * with kiln_result_free). Otherwise *out is NULL and the code says why:
 * KILN_ENOTFOUND when nothing is recorded (not sent with a store, expired
 * after results_expire_s, or not written yet), KILN_ESTORE with the
 * server's reason, KILN_EINVAL for a NULL or empty uuid. */
KILN_API kiln_err kiln_store_get_result(kiln_store *st, const char *uuid,
                                        kiln_result **out, kiln_error *err);

/* kiln_store_wait_result waits until the task `uuid` is finished (SUCCESS
 * or FAILURE) and returns its result as kiln_store_get_result does. It
 * polls, first every 5 ms and backing off to every 200 ms, for at most
 * `timeout_ms` (0: look once). A task not yet recorded and a store that
 * does not answer are waited for as well (each look at a store that does
 * not answer takes up to cfg->connect_timeout_ms, which may carry the wait
 * past `timeout_ms` by that much). At the deadline it returns
 * KILN_ETIMEDOUT with the last state seen in the message, or KILN_ESTORE
 * when the last attempt could not reach the store; *out is then NULL.
 * Blocks the calling thread; call it from any thread. */
KILN_API kiln_err kiln_store_wait_result(kiln_store *st, const char *uuid,
                                         unsigned timeout_ms, kiln_result **out,
                                         kiln_error *err);

/* kiln_result_free releases a result. NULL is a no-op. */
KILN_API void kiln_result_free(kiln_result *res);

/* The task's state when it was read. */
KILN_API kiln_task_state kiln_result_state(const kiln_result *res);

/* kiln_result_finished: the state is SUCCESS or FAILURE, so it is final. */
KILN_API bool kiln_result_finished(const kiln_result *res);

/* Strings are borrowed; valid until the result is freed. Never NULL:
 * "" when absent. kiln_result_error holds the failure's text for FAILURE,
 * and the reason of the last retry for RETRY. */
KILN_API const char *kiln_result_uuid(const kiln_result *res);
KILN_API const char *kiln_result_task_name(const kiln_result *res);
KILN_API const char *kiln_result_error(const kiln_result *res);

/* When the task was first recorded and last changed, in nanoseconds since
 * the Unix epoch (MongoDB keeps milliseconds). */
KILN_API int64_t kiln_result_created_at(const kiln_result *res);
KILN_API int64_t kiln_result_updated_at(const kiln_result *res);

/* kiln_result_attempts: how many times a worker started the task (its
 * STARTED writes); 0 for a task never started. A redelivered task that
 * finished before is not started again, so a task that ran once says 1
 * whatever the broker redelivered. */
KILN_API unsigned kiln_result_attempts(const kiln_result *res);

/* kiln_result_worker: the "host:pid" of the last worker that wrote the
 * task's state (whichever wrote its STARTED, RETRY, SUCCESS or FAILURE
 * last; a producer's PENDING names none). Borrowed; valid until the
 * result is freed. Never NULL: "" when no worker wrote it yet, or when a
 * document written by machinery has no such field. */
KILN_API const char *kiln_result_worker(const kiln_result *res);

/* Times in nanoseconds since the Unix epoch (the store keeps
 * milliseconds), 0 when the document has none:
 * - kiln_result_started_at: the last start (its latest STARTED write), so
 *   a retried task shows its last run; 0 when it never started;
 * - kiln_result_finished_at: when it finished (SUCCESS or FAILURE); 0
 *   while it has not;
 * - kiln_result_delete_at: when the store will drop the finished document
 *   (finished_at + KILN_RESULTS_EXPIRE, the TTL index's key); 0 while it
 *   is unfinished or when results are kept (KILN_RESULTS_EXPIRE=0). */
KILN_API int64_t kiln_result_started_at(const kiln_result *res);
KILN_API int64_t kiln_result_finished_at(const kiln_result *res);
KILN_API int64_t kiln_result_delete_at(const kiln_result *res);

/* kiln_result_values gives the task's results (SUCCESS only; empty
 * otherwise) as a borrowed, argument-shaped view: read them with
 * kiln_signature_arg_count, kiln_signature_arg_type and the
 * kiln_signature_arg_* getters, as a task reads its arguments. Integers
 * keep all 64 bits. Never NULL. Valid until the result is freed. */
KILN_API const kiln_signature *kiln_result_values(const kiln_result *res);

#ifdef __cplusplus
}
#endif

#endif /* KILN_PUBLIC_STORE_MONGO_H */
