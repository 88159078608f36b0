/* A state write of the MongoDB store (see store/mongo.h): how the server
 * takes conditional writes, and the expiry index with the sweep that
 * stands in for it where the server has no TTL indexes. */
#include "store/mongo_impl.h"

#include <errno.h>
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

/* ---- the sweep, where the server has no TTL index ------------------ */

/* Deletes finished documents whose delete_at has passed, where the server
 * will not. A failure waits for the next period (the documents are only
 * kept longer). */
static void sweep_once(struct kiln__mongo_store *ms)
{
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll =
        mongoc_client_get_collection(client, ms->db, KILN__MONGO_TASKS);
    bson_t filter = BSON_INITIALIZER, cond;
    bson_error_t be;

    BSON_APPEND_DOCUMENT_BEGIN(&filter, "delete_at", &cond);
    BSON_APPEND_DATE_TIME(&cond, "$lte", kiln__mongo_now_ms());
    bson_append_document_end(&filter, &cond);
    if (!mongoc_collection_delete_many(coll, &filter, NULL, NULL, &be))
        kiln__log(KILN_LOG_DEBUG, KILN__MONGO_MODULE,
                  "deleting expired tasks: %s", be.message);
    bson_destroy(&filter);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
}

static void *sweeper_main(void *arg)
{
    struct kiln__mongo_store *ms = arg;
    int64_t every_ms = (ms->expire_s < 60 ? (int64_t)ms->expire_s : 60) * 1000;
    bool stop;

    pthread_mutex_lock(&ms->sweep_mu);
    while (!ms->sweep_stop) {
        int64_t due = kiln__monotonic_ns() + every_ms * 1000000;
        struct timespec until = {(time_t)(due / 1000000000),
                                 (long)(due % 1000000000)};

        while (!ms->sweep_stop &&
               pthread_cond_timedwait(&ms->sweep_cv, &ms->sweep_mu, &until) !=
                   ETIMEDOUT) {
        }
        stop = ms->sweep_stop;
        pthread_mutex_unlock(&ms->sweep_mu);
        if (!stop)
            sweep_once(ms);
        pthread_mutex_lock(&ms->sweep_mu);
    }
    pthread_mutex_unlock(&ms->sweep_mu);
    return NULL;
}

/* Starts the sweeping thread once. Caller holds ms->index_mu. Without it
 * (no thread could be made) the documents are kept: logged, not fatal. */
static void sweeper_start(struct kiln__mongo_store *ms)
{
    pthread_mutex_lock(&ms->sweep_mu);
    if (!ms->sweep_running && !ms->sweep_stop) {
        if (pthread_create(&ms->sweeper, NULL, sweeper_main, ms) == 0)
            ms->sweep_running = true;
        else
            kiln__log(KILN_LOG_WARN, KILN__MONGO_MODULE,
                      "no thread to delete expired tasks: they are kept");
    }
    pthread_mutex_unlock(&ms->sweep_mu);
}

void kiln__mongo_sweeper_stop(struct kiln__mongo_store *ms)
{
    bool running;

    if (!ms->sweep_made)
        return;
    pthread_mutex_lock(&ms->sweep_mu);
    ms->sweep_stop = true;
    running = ms->sweep_running;
    pthread_cond_signal(&ms->sweep_cv);
    pthread_mutex_unlock(&ms->sweep_mu);
    if (running)
        (void)pthread_join(ms->sweeper, NULL);
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
    sweeper_start(ms);
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

/* Reads u's task by _id (the one filter FerretDB looks up by index) and
 * sets *apply to whether `rule` lets u apply to it (true for a task not
 * there yet). False with `be` when the read failed. */
static bool rule_applies(mongoc_collection_t *coll, const kiln__state_update *u,
                         kiln__mongo_rule rule, bool *apply, bson_error_t *be)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bool ok = true;

    *apply = true;
    BSON_APPEND_UTF8(&filter, "_id", u->uuid);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "state", 1);
    BSON_APPEND_INT32(&proj, KILN__MONGO_UNSENT, 1);
    bson_append_document_end(&opts, &proj);
    cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    if (mongoc_cursor_next(cur, &doc)) {
        bool marked;
        const char *st = state_of(doc, &marked);

        *apply = kiln__mongo_applies(st, marked, u, rule);
    } else if (mongoc_cursor_error(cur, be)) {
        ok = *apply = false;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return ok;
}

/* Reads the state by _id, checks the rules, writes by _id (see
 * probe_server). Caller holds the task's stripe lock. */
static bool write_checked(mongoc_collection_t *coll,
                          const kiln__state_update *u, kiln__mongo_rule rule,
                          const bson_t *update, bson_error_t *be)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    bool apply = false, ok = rule_applies(coll, u, rule, &apply, be);

    BSON_APPEND_UTF8(&filter, "_id", u->uuid);
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
        if (rc == KILN_OK)
            ok = write_one(ms, coll, u, rule, update, &be);
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

/* The index, code and message of the write error `arr` points at (one
 * entry of a reply's writeErrors); *idx is -1 when it has none. */
static void write_error_of(const bson_iter_t *arr, int64_t *idx, int64_t *code,
                           const char **msg)
{
    bson_iter_t doc;

    *idx = -1;
    *code = 0;
    *msg = "";
    if (!BSON_ITER_HOLDS_DOCUMENT(arr) || !bson_iter_recurse(arr, &doc))
        return;
    while (bson_iter_next(&doc)) {
        const char *k = bson_iter_key(&doc);

        if (strcmp(k, "index") == 0)
            *idx = bson_iter_as_int64(&doc);
        else if (strcmp(k, "code") == 0)
            *code = bson_iter_as_int64(&doc);
        else if (strcmp(k, "errmsg") == 0 && BSON_ITER_HOLDS_UTF8(&doc))
            *msg = bson_iter_utf8(&doc, NULL);
    }
}

/* Sets status[i] from the writeErrors of an unordered insert: a duplicate
 * _id means the task is known already, which rule 2 leaves as it is
 * unless it is a failed send's FAILURE (rule 4): dup[i] says to look.
 * Returns false when the reply has no per-document errors (the whole call
 * failed). *rc gets the first real failure, KILN_OK when there is none. */
static bool pending_errors(const bson_t *reply, const kiln__state_update *u,
                           size_t n, kiln_err *status, bool *dup, kiln_err *rc,
                           kiln_error *err)
{
    bson_iter_t it, arr;
    size_t first_i = n;

    *rc = KILN_OK;
    if (!bson_iter_init_find(&it, reply, "writeErrors") ||
        !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr))
        return false;
    while (bson_iter_next(&arr)) {
        int64_t idx, code;
        const char *msg;

        write_error_of(&arr, &idx, &code, &msg);
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

/* ---- many states in one bulk write -------------------------------------- */

/* One document of a bulk: its index in the caller's array, whether it
 * goes in the bulk (a FerretDB read may find that a rule ignores it), and
 * whether it met a duplicate _id. */
typedef struct bulk_doc {
    size_t i;
    bool sent;
    bool dup;
} bulk_doc;

/* Sets status[] from the writeErrors of an unordered bulk whose operation
 * k is u[docs[map[k]].i]: a duplicate _id is marked for a single write (see
 * write_atomic); anything else fails that document alone. False when the
 * reply has no per-document errors (the call failed as a whole). */
static bool bulk_errors(const bson_t *reply, const kiln__state_update *u,
                        bulk_doc *docs, const size_t *map, size_t n_sent,
                        kiln_err *status, kiln_error *errs)
{
    bson_iter_t it, arr;
    int64_t done = 0, last = -1;

    if (!bson_iter_init_find(&it, reply, "writeErrors") ||
        !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &arr))
        return false;
    while (bson_iter_next(&arr)) {
        int64_t idx, code;
        const char *msg;
        size_t i;

        write_error_of(&arr, &idx, &code, &msg);
        if (idx < 0 || (size_t)idx >= n_sent)
            continue;
        done++;
        if (idx > last)
            last = idx;
        i = docs[map[idx]].i;
        if (code == CODE_DUPLICATE_KEY || strstr(msg, "E11000") != NULL) {
            docs[map[idx]].dup = true;
            continue;
        }
        status[i] = kiln__fail(&errs[i], KILN_ESTORE,
                               "mongodb writing state of '%.80s': %s (code "
                               "%lld)",
                               u[i].uuid, msg, (long long)code);
    }
    /* FerretDB 1.x stops an update command at its first failed update
     * even when unordered, and says nothing of the rest: what the counts
     * do not account for goes again singly (MongoDB's always add up). */
    if (bson_iter_init_find(&it, reply, "nMatched"))
        done += bson_iter_as_int64(&it);
    if (bson_iter_init_find(&it, reply, "nUpserted"))
        done += bson_iter_as_int64(&it);
    if (done < (int64_t)n_sent)
        for (size_t k = (size_t)(last + 1); k < n_sent; k++)
            docs[map[k]].dup = true;
    return true;
}

/* FerretDB: reads the state of each document by _id (the one filter it
 * looks up by index) and keeps in the bulk only those a rule lets apply.
 * Caller holds their stripe locks. False with `be` when a read failed. */
static bool bulk_check(mongoc_collection_t *coll, const kiln__state_update *u,
                       bulk_doc *docs, size_t n_ops, bson_error_t *be)
{
    for (size_t k = 0; k < n_ops; k++)
        if (!rule_applies(coll, &u[docs[k].i], KILN__MONGO_RULE_STATE,
                          &docs[k].sent, be))
            return false;
    return true;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;

    return x < y ? -1 : x > y;
}

/* The stripe locks of every document, taken in ascending order (so two
 * bulks never wait for each other) or released. `idx` has room for n. */
static void bulk_stripes(struct kiln__mongo_store *ms,
                         const kiln__state_update *u, const bulk_doc *docs,
                         size_t n_ops, size_t *idx, bool lock)
{
    for (size_t k = 0; k < n_ops; k++)
        idx[k] = kiln__hash_str(u[docs[k].i].uuid) % KILN__MONGO_STRIPES;
    qsort(idx, n_ops, sizeof(*idx), cmp_size);
    for (size_t k = 0; k < n_ops; k++) {
        if (k > 0 && idx[k] == idx[k - 1])
            continue;
        if (lock)
            pthread_mutex_lock(&ms->stripes[idx[k]]);
        else
            pthread_mutex_unlock(&ms->stripes[idx[k]]);
    }
}

/* One unordered bulk of conditional upserts (MongoDB), or of upserts by
 * _id of the documents bulk_check let through (FerretDB). False with `be`
 * when the call failed as a whole. */
static bool bulk_chunk(struct kiln__mongo_store *ms, mongoc_collection_t *coll,
                       const kiln__state_update *u, const bson_t *updates,
                       bulk_doc *docs, size_t n_ops, size_t *map,
                       kiln_err *status, kiln_error *errs, bson_error_t *be)
{
    bool ferret = atomic_load(&ms->server) == KILN__MONGO_FERRETDB;
    bson_t opts = BSON_INITIALIZER, uopts = BSON_INITIALIZER, reply;
    mongoc_bulk_operation_t *bulk;
    size_t n_sent = 0;
    bool ok = true;

    if (ferret && !bulk_check(coll, u, docs, n_ops, be))
        return false;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    BSON_APPEND_BOOL(&uopts, "upsert", true);
    bulk = mongoc_collection_create_bulk_operation_with_opts(coll, &opts);
    /* Operation j of the bulk is docs[map[j]]. */
    for (size_t k = 0; ok && k < n_ops; k++) {
        bson_t filter = BSON_INITIALIZER;

        if (ferret && !docs[k].sent)
            continue;
        if (ferret)
            BSON_APPEND_UTF8(&filter, "_id", u[docs[k].i].uuid);
        else
            kiln__mongo_filter(&filter, &u[docs[k].i], KILN__MONGO_RULE_STATE);
        ok = mongoc_bulk_operation_update_one_with_opts(
            bulk, &filter, &updates[docs[k].i], &uopts, be);
        bson_destroy(&filter);
        if (ok)
            map[n_sent++] = k;
    }
    if (ok && n_sent > 0) {
        if (!mongoc_bulk_operation_execute(bulk, &reply, be))
            ok = bulk_errors(&reply, u, docs, map, n_sent, status, errs);
        bson_destroy(&reply);
    }
    mongoc_bulk_operation_destroy(bulk);
    bson_destroy(&opts);
    bson_destroy(&uopts);
    return ok;
}

/* FerretDB 1.x keeps a SQLite connection open for every update of one
 * command until the command ends, out of one pool of 100 for all its
 * clients: a command of more updates than that waits for itself for
 * ever, and a few workers' commands of a few dozen each wait for one
 * another until the socket times out. So it gets its bulks in chunks of
 * a few: most of a command's cost is paid once per command already. */
#define FERRET_CHUNK 16

static bool bulk_run(struct kiln__mongo_store *ms, mongoc_collection_t *coll,
                     const kiln__state_update *u, const bson_t *updates,
                     bulk_doc *docs, size_t n_ops, size_t *map,
                     kiln_err *status, kiln_error *errs, bson_error_t *be)
{
    size_t chunk =
        atomic_load(&ms->server) == KILN__MONGO_FERRETDB ? FERRET_CHUNK : n_ops;

    for (size_t lo = 0; lo < n_ops; lo += chunk) {
        size_t m = n_ops - lo < chunk ? n_ops - lo : chunk;
        if (!bulk_chunk(ms, coll, u, updates, docs + lo, m, map, status, errs,
                        be))
            return false;
    }
    return true;
}

/* One client's turn: probe, index, the bulk under the stripe locks
 * (FerretDB), the sweep. */
static kiln_err bulk_turn(struct kiln__mongo_store *ms,
                          const kiln__state_update *u, const bson_t *updates,
                          bulk_doc *docs, size_t n_ops, size_t *idx,
                          size_t *map, kiln_err *status, kiln_error *errs,
                          bool *whole, bson_error_t *be, kiln_error *err)
{
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll =
        mongoc_client_get_collection(client, ms->db, KILN__MONGO_TASKS);
    kiln_err rc = probe_server(ms, client, err);
    bool ferret;

    *whole = false;
    if (rc == KILN_OK)
        rc = ensure_index(ms, coll, err);
    if (rc == KILN_OK) {
        ferret = atomic_load(&ms->server) == KILN__MONGO_FERRETDB;
        if (ferret)
            bulk_stripes(ms, u, docs, n_ops, idx, true);
        *whole =
            !bulk_run(ms, coll, u, updates, docs, n_ops, map, status, errs, be);
        if (ferret)
            bulk_stripes(ms, u, docs, n_ops, idx, false);
    }
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    return rc;
}

/* A duplicate _id (a concurrent insert of the same task, in this process
 * or another) is settled by one single write each, as write_atomic and
 * write_one do. */
static void bulk_dups(struct kiln__mongo_store *ms, const kiln__state_update *u,
                      const bson_t *updates, const bulk_doc *docs, size_t n_ops,
                      kiln_err *status, kiln_error *errs)
{
    for (size_t k = 0; k < n_ops; k++)
        if (docs[k].dup)
            status[docs[k].i] =
                kiln__mongo_write(ms, &u[docs[k].i], KILN__MONGO_RULE_STATE,
                                  &updates[docs[k].i], &errs[docs[k].i]);
}

kiln_err kiln__mongo_set_states(kiln__store *s, const kiln__state_update *u,
                                size_t n, kiln_err *status, kiln_error *err)
{
    struct kiln__mongo_store *ms = (struct kiln__mongo_store *)s;
    kiln__mongo_write_ctx ctx = {kiln__mongo_now_ms(), ms->worker, ms->expire_s,
                                 false};
    size_t per = sizeof(bson_t) + sizeof(bulk_doc) + 2 * sizeof(size_t) +
                 sizeof(kiln_error);
    bson_t *updates;
    bulk_doc *docs;
    size_t *idx, *map, n_ops = 0;
    kiln_error *errs;
    bson_error_t be = {0};
    kiln_err rc = KILN_OK;
    bool whole = false;

    if (n == 0)
        return KILN_OK;
    /* One block: the updates, the bulk's documents, the stripe indices
     * and each document's reason. */
    if ((updates = kiln__calloc(n, per)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mongodb store: %zu states", n);
    docs = (bulk_doc *)(void *)(updates + n);
    idx = (size_t *)(void *)(docs + n);
    map = idx + n;
    errs = (kiln_error *)(void *)(map + n);
    for (size_t i = 0; i < n; i++) {
        bson_init(&updates[i]);
        status[i] = KILN_OK;
        if (u[i].uuid == NULL || u[i].uuid[0] == '\0')
            status[i] = kiln__fail(&errs[i], KILN_EINVAL,
                                   "mongodb store: task UUID required");
        else if ((unsigned)u[i].state > KILN__STATE_LAST)
            status[i] = kiln__fail(&errs[i], KILN_EINVAL,
                                   "mongodb store: state %d", (int)u[i].state);
        else
            status[i] = kiln__mongo_update(&updates[i], &u[i], &ctx, &errs[i]);
        if (status[i] == KILN_OK)
            docs[n_ops++] = (bulk_doc){i, true, false};
    }
    for (int attempt = 0; n_ops > 0 && attempt < 2; attempt++) {
        rc = bulk_turn(ms, u, updates, docs, n_ops, idx, map, status, errs,
                       &whole, &be, err);
        /* A resend after a stale socket is safe: the rules make a write
         * applied twice the same as once. */
        if (rc != KILN_OK || !whole || !kiln__mongo_stale_socket(&be))
            break;
    }
    if (rc == KILN_OK && whole)
        rc = kiln__mongo_fail(err, KILN_ESTORE, &be,
                              "writing the states of %zu tasks", n_ops);
    if (rc == KILN_OK)
        bulk_dups(ms, u, updates, docs, n_ops, status, errs);
    else
        for (size_t k = 0; k < n_ops; k++)
            status[docs[k].i] = rc;
    for (size_t i = 0; i < n; i++) {
        if (rc == KILN_OK && status[i] != KILN_OK) {
            rc = status[i];
            if (err != NULL)
                *err = errs[i];
        }
        bson_destroy(&updates[i]);
    }
    kiln__free(updates);
    return rc;
}
