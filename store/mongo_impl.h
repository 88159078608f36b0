/*
 * Internal to store/mongo*.c: the MongoDB store object and what its files
 * share. store/mongo.c makes the object and runs the ops; the state write
 * itself (how the server takes conditional writes, the expiry index) is in
 * store/mongo_write.c. Never installed.
 */
#ifndef KILN_STORE_MONGO_IMPL_H
#define KILN_STORE_MONGO_IMPL_H

#include "logger/logger.h"
#include "store/mongo.h"
#include "store/mongo_doc.h"

/* libbson's and libmongoc's inline functions do not pass -Wconversion. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#include <mongoc/mongoc.h>
#pragma GCC diagnostic pop

#include <pthread.h>
#include <stdatomic.h>

#define KILN__MONGO_MODULE "store"
#define KILN__MONGO_TASKS  "tasks"

#define KILN__MONGO_STRIPES 64 /* per-task locks, FerretDB only */

/* How the server takes conditional writes (see store/mongo_write.c). */
enum {
    KILN__MONGO_UNKNOWN = 0, /* not asked yet */
    KILN__MONGO_ATOMIC,      /* one conditional upsert (MongoDB) */
    KILN__MONGO_FERRETDB     /* read, check, write under a stripe lock */
};

struct kiln__mongo_store {
    kiln__store base;
    mongoc_uri_t *uri;
    mongoc_client_pool_t *pool;
    char db[KILN_NAME_MAX];
    char worker[320]; /* "host:pid", written as the `worker` field */
    unsigned expire_s;
    /* Held only while the expiry index is created (the first write waits
     * for it). index_ready and sweep are set under it and read without. */
    pthread_mutex_t index_mu;
    atomic_bool index_ready;
    atomic_bool sweep; /* no TTL index on this server */
    /* Where the server has no TTL index, a thread of the store's own
     * deletes expired documents once a period, so that no writer waits
     * for a delete (on FerretDB a scan of the whole collection). Started
     * with the index, stopped by destroy: sweep_stop, under sweep_mu, and
     * sweep_cv wake it. */
    pthread_mutex_t sweep_mu;
    pthread_cond_t sweep_cv;
    bool sweep_made, sweep_running, sweep_stop;
    pthread_t sweeper;
    atomic_int server; /* KILN__MONGO_*, learned on first use */
    /* FerretDB only: held across the read and the write of one task, the
     * task chosen by a hash of its UUID. Never two at once. */
    pthread_mutex_t stripes[KILN__MONGO_STRIPES];
    int stripes_made;
};

static inline int64_t kiln__mongo_now_ms(void)
{
    return kiln__realtime_ns() / 1000000;
}

/* kiln__mongo_fail fills `err` with `code` (KILN_ESTORE but for a bad URL),
 * what failed and libmongoc's text, any URL in it masked; returns `code`. */
kiln_err kiln__mongo_fail(kiln_error *err, kiln_err code,
                          const bson_error_t *be, const char *fmt, ...)
    KILN_PRINTF(4, 5);

/* kiln__mongo_sweeper_stop stops the sweeping thread, if one runs, and
 * waits for it. destroy's only; no other thread may use the store. */
void kiln__mongo_sweeper_stop(struct kiln__mongo_store *ms);

/* A socket the server closed (it restarted): worth one more try, on a
 * connection the pool opens afresh. */
bool kiln__mongo_stale_socket(const bson_error_t *be);

/* kiln__mongo_write applies `update` (kiln__mongo_update's document for
 * `u`) following store/store.h's rules as `rule` says (mongo_doc.h);
 * creates the expiry index first when the store has not yet. KILN_ESTORE
 * with the server's reason. */
kiln_err kiln__mongo_write(struct kiln__mongo_store *ms,
                           const kiln__state_update *u, kiln__mongo_rule rule,
                           const bson_t *update, kiln_error *err);

/* The add_pending op of store/store.h: one unordered insert. */
kiln_err kiln__mongo_add_pending(kiln__store *s, const kiln__state_update *u,
                                 size_t n, kiln_err *status, kiln_error *err);

/* The set_states op of store/store.h: one unordered bulk write (on
 * FerretDB after a read of each document by _id, see
 * store/mongo_write.c). */
kiln_err kiln__mongo_set_states(kiln__store *s, const kiln__state_update *u,
                                size_t n, kiln_err *status, kiln_error *err);

#endif /* KILN_STORE_MONGO_IMPL_H */
