/* A state write of the MongoDB store (see store/mongo.h): how the server
 * takes conditional writes, and the expiry index with the sweep that
 * stands in for it where the server has no TTL indexes. */
#include "store/mongo_impl.h"

#include <string.h>

#define TTL_INDEX "delete_at_1"

/* Server error codes that decide what a failed write means. */
#define CODE_DUPLICATE_KEY   11000
#define CODE_NOT_IMPLEMENTED 238
#define CODE_INDEX_OPTIONS   85 /* IndexOptionsConflict */
#define CODE_INDEX_KEYS      86 /* IndexKeySpecsConflict */

static bool is_dup_key(const bson_error_t *be)
{
    return be->code == CODE_DUPLICATE_KEY ||
           strstr(be->message, "E11000") != NULL ||
           strstr(be->message, "duplicate key") != NULL;
}

/* ---- the expiry index -------------------------------------------------- */

static bool create_index(mongoc_collection_t *coll, bool ttl, bson_error_t *be)
{
    bson_t cmd = BSON_INITIALIZER, arr, idx, key;
    bool ok;

    BSON_APPEND_UTF8(&cmd, "createIndexes", KILN__MONGO_TASKS);
    BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &arr);
    BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &idx);
    BSON_APPEND_DOCUMENT_BEGIN(&idx, "key", &key);
    BSON_APPEND_INT32(&key, "delete_at", 1);
    bson_append_document_end(&idx, &key);
    BSON_APPEND_UTF8(&idx, "name", TTL_INDEX);
    if (ttl)
        BSON_APPEND_INT32(&idx, "expireAfterSeconds", 0);
    bson_append_document_end(&arr, &idx);
    bson_append_array_end(&cmd, &arr);
    ok = mongoc_collection_write_command_with_opts(coll, &cmd, NULL, NULL, be);
    bson_destroy(&cmd);
    return ok;
}

/* Creates the index once per store object. Caller holds ms->index_mu. */
static kiln_err make_index(struct kiln__mongo_store *ms,
                           mongoc_collection_t *coll, kiln_error *err)
{
    bson_error_t be;

    if (create_index(coll, true, &be)) {
        atomic_store(&ms->index_ready, true);
        return KILN_OK;
    }
    if (be.code == CODE_INDEX_OPTIONS || be.code == CODE_INDEX_KEYS) {
        kiln__log(KILN_LOG_WARN, KILN__MONGO_MODULE,
                  "index %s.%s exists with other options; expiry follows "
                  "it: %s",
                  KILN__MONGO_TASKS, TTL_INDEX, be.message);
        atomic_store(&ms->index_ready, true);
        return KILN_OK;
    }
    if (be.code != CODE_NOT_IMPLEMENTED)
        return kiln__mongo_fail(err, KILN_ESTORE, &be, "creating index %s",
                                TTL_INDEX);
    /* FerretDB 1.x: "Index option expireAfterSeconds is not implemented". */
    if (!create_index(coll, false, &be))
        return kiln__mongo_fail(err, KILN_ESTORE, &be, "creating index %s",
                                TTL_INDEX);
    kiln__log(KILN_LOG_NOTICE, KILN__MONGO_MODULE,
              "the server has no TTL indexes; expired task documents are "
              "deleted by the store itself");
    atomic_store(&ms->sweep, true);
    atomic_store(&ms->index_ready, true);
    return KILN_OK;
}

static kiln_err ensure_index(struct kiln__mongo_store *ms,
                             mongoc_collection_t *coll, kiln_error *err)
{
    kiln_err rc = KILN_OK;

    if (ms->expire_s == 0 || atomic_load(&ms->index_ready))
        return KILN_OK;
    pthread_mutex_lock(&ms->index_mu);
    if (!atomic_load(&ms->index_ready))
        rc = make_index(ms, coll, err);
    pthread_mutex_unlock(&ms->index_mu);
    return rc;
}

/* Deletes finished documents whose delete_at has passed, where the server
 * will not. One thread at a time wins the CAS; failures wait for the next
 * turn (the documents are only kept longer). */
static void maybe_sweep(struct kiln__mongo_store *ms, mongoc_collection_t *coll,
                        int64_t now)
{
    int64_t due = atomic_load(&ms->next_sweep_ms);
    int64_t every = (ms->expire_s < 60 ? (int64_t)ms->expire_s : 60) * 1000;
    bson_t filter = BSON_INITIALIZER, cond;
    bson_error_t be;

    if (!atomic_load(&ms->sweep) || now < due ||
        !atomic_compare_exchange_strong(&ms->next_sweep_ms, &due, now + every))
        return;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "delete_at", &cond);
    BSON_APPEND_DATE_TIME(&cond, "$lte", now);
    bson_append_document_end(&filter, &cond);
    if (!mongoc_collection_delete_many(coll, &filter, NULL, NULL, &be))
        kiln__log(KILN_LOG_DEBUG, KILN__MONGO_MODULE,
                  "deleting expired tasks: %s", be.message);
    bson_destroy(&filter);
}

/* ---- how the server takes conditional writes -------------------------- */

/* FerretDB 1.x runs an update as a query followed by a write of the whole
 * document, not atomically, and pushes only a filter of exactly {_id} down
 * to SQLite: a conditional filter scans the whole collection on every
 * write. So against FerretDB the store reads the state by _id, applies the
 * rules here and writes by _id, holding a per-task lock: writers in this
 * process are serialised per task; writers in other processes are only as
 * atomic as FerretDB's own updates. MongoDB gets one conditional upsert. */
static kiln_err probe_server(struct kiln__mongo_store *ms,
                             mongoc_client_t *client, kiln_error *err)
{
    bson_t cmd = BSON_INITIALIZER, reply;
    bson_error_t be;
    bson_iter_t it;
    bool ferret;

    if (atomic_load(&ms->server) != KILN__MONGO_UNKNOWN)
        return KILN_OK;
    BSON_APPEND_INT32(&cmd, "buildInfo", 1);
    if (!mongoc_client_command_simple(client, "admin", &cmd, NULL, &reply,
                                      &be)) {
        bson_destroy(&cmd);
        bson_destroy(&reply);
        return kiln__mongo_fail(err, KILN_ESTORE, &be, "buildInfo");
    }
    ferret = bson_iter_init_find(&it, &reply, "ferretdbVersion");
    if (ferret && atomic_exchange(&ms->server, KILN__MONGO_FERRETDB) == 0)
        kiln__log(KILN_LOG_NOTICE, KILN__MONGO_MODULE,
                  "the server is FerretDB %s: task states are read, checked "
                  "and written under a per-task lock",
                  BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : "?");
    else if (!ferret)
        atomic_store(&ms->server, KILN__MONGO_ATOMIC);
    bson_destroy(&cmd);
    bson_destroy(&reply);
    return KILN_OK;
}

/* One conditional upsert (see kiln__mongo_filter). A duplicate _id means
 * the document exists but failed the condition when the upsert looked, or
 * a concurrent write created it in between; a plain conditional update
 * then applies `update` or finds that a rule says to ignore it. */
static bool write_atomic(mongoc_collection_t *coll, const kiln__state_update *u,
                         kiln__mongo_rule rule, const bson_t *update,
                         bson_error_t *be)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    bool ok;

    kiln__mongo_filter(&filter, u, rule);
    BSON_APPEND_BOOL(&opts, "upsert", true);
    ok = mongoc_collection_update_one(coll, &filter, update, &opts, NULL, be);
    if (!ok && is_dup_key(be))
        ok =
            mongoc_collection_update_one(coll, &filter, update, NULL, NULL, be);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return ok;
}

/* The `state` of a stored document ("" when it has none) and its
 * send_failed mark. */
static const char *state_of(const bson_t *doc, bool *unsent)
{
    bson_iter_t it;

    *unsent = bson_iter_init_find(&it, doc, KILN__MONGO_UNSENT) &&
              BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
    if (bson_iter_init_find(&it, doc, "state") && BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return "";
}

/* Reads the state by _id, checks the rules, writes by _id (see
 * probe_server). Caller holds the task's stripe lock. */
static bool write_checked(mongoc_collection_t *coll,
                          const kiln__state_update *u, kiln__mongo_rule rule,
                          const bson_t *update, bson_error_t *be)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bool ok = true, apply = true;

    BSON_APPEND_UTF8(&filter, "_id", u->uuid);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "state", 1);
    BSON_APPEND_INT32(&proj, KILN__MONGO_UNSENT, 1);
    bson_append_document_end(&opts, &proj);
    cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    if (mongoc_cursor_next(cur, &doc)) {
        bool marked;
        const char *st = state_of(doc, &marked);
        apply = kiln__mongo_applies(st, marked, u, rule);
    } else if (mongoc_cursor_error(cur, be)) {
        ok = apply = false;
    }
    mongoc_cursor_destroy(cur);
    bson_reinit(&opts);
    BSON_APPEND_BOOL(&opts, "upsert", true);
    if (apply)
        ok = mongoc_collection_update_one(coll, &filter, update, &opts, NULL,
                                          be);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return ok;
}

static bool write_one(struct kiln__mongo_store *ms, mongoc_collection_t *coll,
                      const kiln__state_update *u, kiln__mongo_rule rule,
                      const bson_t *update, bson_error_t *be)
{
    pthread_mutex_t *mu;
    bool ok;

    if (atomic_load(&ms->server) != KILN__MONGO_FERRETDB)
        return write_atomic(coll, u, rule, update, be);
    mu = &ms->stripes[kiln__hash_str(u->uuid) % KILN__MONGO_STRIPES];
    pthread_mutex_lock(mu);
    ok = write_checked(coll, u, rule, update, be);
    if (!ok && is_dup_key(be)) /* another process created it meanwhile */
        ok = write_checked(coll, u, rule, update, be);
    pthread_mutex_unlock(mu);
    return ok;
}

/* ---- the write ---------------------------------------------------------- */

kiln_err kiln__mongo_write(struct kiln__mongo_store *ms,
                           const kiln__state_update *u, kiln__mongo_rule rule,
                           const bson_t *update, kiln_error *err)
{
    mongoc_client_t *client;
    mongoc_collection_t *coll;
    bson_error_t be;
    kiln_err rc;
    bool ok = false;

    for (int attempt = 0; attempt < 2; attempt++) {
        client = mongoc_client_pool_pop(ms->pool);
        coll = mongoc_client_get_collection(client, ms->db, KILN__MONGO_TASKS);
        rc = probe_server(ms, client, err);
        if (rc == KILN_OK)
            rc = ensure_index(ms, coll, err);
        if (rc == KILN_OK && (ok = write_one(ms, coll, u, rule, update, &be)))
            maybe_sweep(ms, coll, kiln__mongo_now_ms());
        mongoc_collection_destroy(coll);
        mongoc_client_pool_push(ms->pool, client);
        if (rc != KILN_OK || ok || !kiln__mongo_stale_socket(&be))
            break;
    }
    if (rc != KILN_OK)
        return rc;
    return ok ? KILN_OK
              : kiln__mongo_fail(err, KILN_ESTORE, &be,
                                 "writing state of '%.80s'", u->uuid);
}

/* ---- PENDING in bulk ---------------------------------------------------- */

/* Sets status[i] from the writeErrors of an unordered insert: a duplicate
 * _id means the task is known already, which rule 2 leaves as it is
 * unless it is a failed send's FAILURE (rule 4): dup[i] says to look.
 * Returns false when the reply has no per-document errors (the whole call
 * failed). *rc gets the first real failure, KILN_OK when there is none. */
static bool pending_errors(const bson_t *reply, const kiln__state_update *u,
                           size_t n, kiln_err *status, bool *dup, kiln_err *rc,
                           kiln_error *err)
{
    bson_iter_t it, arr, doc;
    size_t first_i = n;

    *rc = KILN_OK;
    if (!bson_iter_init_find(&it, reply, "writeErrors") ||
        !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr))
        return false;
    while (bson_iter_next(&arr)) {
        int64_t idx = -1, code = 0;
        const char *msg = "";

        if (!BSON_ITER_HOLDS_DOCUMENT(&arr) || !bson_iter_recurse(&arr, &doc))
            continue;
        while (bson_iter_next(&doc)) {
            const char *k = bson_iter_key(&doc);
            if (strcmp(k, "index") == 0)
                idx = bson_iter_as_int64(&doc);
            else if (strcmp(k, "code") == 0)
                code = bson_iter_as_int64(&doc);
            else if (strcmp(k, "errmsg") == 0 && BSON_ITER_HOLDS_UTF8(&doc))
                msg = bson_iter_utf8(&doc, NULL);
        }
        if (idx < 0 || (size_t)idx >= n)
            continue;
        if (code == CODE_DUPLICATE_KEY) {
            dup[idx] = true;
            continue;
        }
        status[idx] = KILN_ESTORE;
        if ((size_t)idx < first_i) {
            first_i = (size_t)idx;
            *rc = kiln__fail(err, KILN_ESTORE,
                             "mongodb writing state of '%.80s': %s (code %lld)",
                             u[idx].uuid, msg, (long long)code);
        }
    }
    return true;
}

/* What one insert call did. */
typedef enum pending_outcome {
    PENDING_DONE,  /* status[] and *rc say what happened to each document */
    PENDING_WHOLE, /* the call failed as a whole, reason in *be */
    PENDING_SETUP  /* the server could not be probed or indexed: *rc, err */
} pending_outcome;

static pending_outcome insert_pending(struct kiln__mongo_store *ms,
                                      const bson_t **docs,
                                      const kiln__state_update *u, size_t n,
                                      kiln_err *status, bool *dup, kiln_err *rc,
                                      kiln_error *err, bson_error_t *be)
{
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll =
        mongoc_client_get_collection(client, ms->db, KILN__MONGO_TASKS);
    bson_t opts = BSON_INITIALIZER, reply;
    pending_outcome out = PENDING_DONE;

    BSON_APPEND_BOOL(&opts, "ordered", false);
    if ((*rc = probe_server(ms, client, err)) != KILN_OK ||
        (*rc = ensure_index(ms, coll, err)) != KILN_OK) {
        out = PENDING_SETUP;
    } else {
        if (!mongoc_collection_insert_many(coll, docs, n, &opts, &reply, be) &&
            !pending_errors(&reply, u, n, status, dup, rc, err))
            out = PENDING_WHOLE;
        bson_destroy(&reply);
    }
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    bson_destroy(&opts);
    return out;
}

/* A task already known gets PENDING only over a failed send's FAILURE
 * (rule 4: the task is sent again): one conditional write for each, so
 * only a send of a UUID the store knows pays for it. */
static void pending_known(struct kiln__mongo_store *ms,
                          const kiln__state_update *u, size_t n,
                          const bool *dup, const kiln__mongo_write_ctx *ctx,
                          kiln_err *status, kiln_err *rc, kiln_error *err)
{
    for (size_t i = 0; i < n; i++) {
        bson_t update = BSON_INITIALIZER;
        kiln_error e;

        if (!dup[i] || status[i] != KILN_OK)
            continue;
        if ((status[i] = kiln__mongo_update(&update, &u[i], ctx, &e)) ==
            KILN_OK)
            status[i] = kiln__mongo_write(ms, &u[i], KILN__MONGO_RULE_RESENT,
                                          &update, &e);
        bson_destroy(&update);
        if (status[i] != KILN_OK && *rc == KILN_OK) {
            *rc = status[i];
            if (err != NULL)
                *err = e;
        }
    }
}

/* One unordered insert of every PENDING document: an insert is atomic on
 * MongoDB and FerretDB alike, and a duplicate _id is rule 2's "the task is
 * known, leave it", but for rule 4 (pending_known). */
kiln_err kiln__mongo_add_pending(kiln__store *s, const kiln__state_update *u,
                                 size_t n, kiln_err *status, kiln_error *err)
{
    struct kiln__mongo_store *ms = (struct kiln__mongo_store *)s;
    kiln__mongo_write_ctx ctx = {kiln__mongo_now_ms(), ms->worker, ms->expire_s,
                                 false};
    pending_outcome out = PENDING_DONE;
    bson_t *docs;
    const bson_t **ptrs;
    bool *dup;
    bson_error_t be = {0};
    kiln_err rc = KILN_OK;

    for (size_t i = 0; i < n; i++)
        if (u[i].uuid == NULL || u[i].uuid[0] == '\0' ||
            u[i].state != KILN_STATE_PENDING)
            return kiln__fail(err, KILN_EINVAL,
                              "mongodb store: PENDING with a UUID required");
    if (n == 0)
        return KILN_OK;
    /* One block: the documents, the pointers insert_many takes and the
     * duplicate marks. */
    docs = kiln__calloc(n, sizeof(bson_t) + sizeof(void *) + sizeof(bool));
    if (docs == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mongodb store: %zu tasks", n);
    ptrs = (const bson_t **)(void *)(docs + n);
    dup = (bool *)(void *)(ptrs + n);
    for (size_t i = 0; i < n; i++) {
        bson_init(&docs[i]);
        kiln__mongo_pending_doc(&docs[i], &u[i], &ctx);
        ptrs[i] = &docs[i];
        status[i] = KILN_OK;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        out = insert_pending(ms, ptrs, u, n, status, dup, &rc, err, &be);
        /* A resend after a stale socket is safe: what the first call
         * inserted is a duplicate the second time. */
        if (out != PENDING_WHOLE || !kiln__mongo_stale_socket(&be))
            break;
    }
    if (out == PENDING_WHOLE)
        rc = kiln__mongo_fail(err, KILN_ESTORE, &be,
                              "writing PENDING for %zu tasks", n);
    else if (out == PENDING_DONE)
        pending_known(ms, u, n, dup, &ctx, status, &rc, err);
    for (size_t i = 0; i < n; i++) {
        if (out != PENDING_DONE)
            status[i] = rc;
        bson_destroy(&docs[i]);
    }
    kiln__free(docs);
    return rc;
}
