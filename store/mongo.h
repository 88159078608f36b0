/*
 * The MongoDB store: kiln__store on libmongoc, in machinery's schema
 * (collection `tasks`, one document per task UUID; store/mongo_doc.h lists
 * the fields). Never installed.
 *
 * Threads. The object is shared: every op takes a client from a
 * mongoc_client_pool_t for its duration and gives it back, so any number
 * of threads may call it at once.
 *
 * The state rules of store/store.h hold on the server, not only in this
 * process: against MongoDB each write is one conditional upsert, atomic
 * on the server, so producers and workers in every process obey the same
 * rules. FerretDB 1.x (found by its buildInfo) runs updates as a read and
 * a write that are not atomic together, and scans the whole collection
 * for any filter but {_id}; against it the store reads the task by _id,
 * checks the rules and writes by _id under a per-task lock. Writers in one
 * process are then serialised per task; two processes writing one task at
 * the same instant are only as safe as FerretDB's own updates.
 *
 * Expiry. With results_expire_s > 0, a finished task's document gets
 * `delete_at` = finish time + results_expire_s, and the first write creates
 * machinery's TTL index on it (`delete_at_1`, expireAfterSeconds 0). A
 * server without TTL indexes (FerretDB 1.x answers NotImplemented) gets a
 * plain index instead, and the store deletes expired documents itself,
 * from the thread of a write, at most once per min(results_expire_s, 60)
 * seconds.
 *
 * Failures. Every server or network error is KILN_ESTORE with libmongoc's
 * text. serverSelectionTimeoutMS, connectTimeoutMS and socketTimeoutMS
 * default to cfg->connect_timeout_ms (a URL that sets them wins), so an
 * unreachable server fails a call within about that long. A write that
 * fails on a connection the server closed (it restarted) is sent once more
 * on a fresh one.
 */
#ifndef KILN_STORE_MONGO_H
#define KILN_STORE_MONGO_H

#include "store/store.h"

/* kiln__mongo_store_new makes a store for cfg->mongodb_url and
 * cfg->mongodb_database. It does not contact the server: the first call
 * does, so a store can be made while MongoDB is down.
 * Returns: caller owns; free with kiln__store_destroy. NULL with `err`:
 * KILN_EINVAL for a URL libmongoc rejects (the message never holds the
 * password) or an empty database name, KILN_ENOMEM. */
kiln__store *kiln__mongo_store_new(const kiln_config *cfg, kiln_error *err);

/* For tests: makes `s` write with one conditional upsert, as it does
 * against MongoDB, whatever server it finds, so that path can be tested
 * against FerretDB too (where it is correct for one writer per task at a
 * time, and slow: FerretDB scans the collection for such a filter). Call
 * before the first write. */
void kiln__mongo_store_force_conditional(kiln__store *s);

#endif /* KILN_STORE_MONGO_H */
