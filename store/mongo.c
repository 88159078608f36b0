/* The MongoDB store (see store/mongo.h): the object, its connection pool
 * and the ops; a state write itself is in store/mongo_write.c. */
#include "store/mongo_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* libmongoc's log lines go through kiln's logger (module "mongoc"), so they
 * reach the application's sink at kiln's level with passwords masked. Its
 * retries against a server that is down are DEBUG, and so is its warning
 * that FerretDB does not know the endSessions command sent on shutdown. */
static void forward_log(mongoc_log_level_t level, const char *domain,
                        const char *message, void *user)
{
    kiln_log_level to = KILN_LOG_DEBUG;

    (void)user;
    if (level == MONGOC_LOG_LEVEL_TRACE)
        return;
    if (level == MONGOC_LOG_LEVEL_ERROR || level == MONGOC_LOG_LEVEL_CRITICAL)
        to = KILN_LOG_ERR;
    else if (level == MONGOC_LOG_LEVEL_WARNING &&
             strstr(message, "endSessions") == NULL)
        to = KILN_LOG_WARN;
    if (kiln__log_enabled(to))
        kiln__log(to, "mongoc", "%s: %s", domain, message);
}

/* libmongoc wants mongoc_init once per process. mongoc_cleanup is left to
 * the application, which may use libmongoc itself; so may its log handler,
 * which an application can set again after creating a store. */
static void init_mongoc(void)
{
    mongoc_init();
    mongoc_log_set_handler(forward_log, NULL);
}

kiln_err kiln__mongo_fail(kiln_error *err, kiln_err code,
                          const bson_error_t *be, const char *fmt, ...)
{
    char head[160], msg[sizeof(be->message)];
    va_list ap;

    va_start(ap, fmt);
    if (vsnprintf(head, sizeof(head), fmt, ap) < 0)
        head[0] = '\0';
    va_end(ap);
    kiln_log_redact_url(be->message, msg, sizeof(msg));
    return kiln__fail(err, code, "mongodb %s: %s", head, msg);
}

bool kiln__mongo_stale_socket(const bson_error_t *be)
{
    return be->domain == MONGOC_ERROR_STREAM;
}

/* ---- ops ------------------------------------------------------------- */

static kiln_err write_state(kiln__store *s, const kiln__state_update *u,
                            bool unsent, kiln_error *err)
{
    struct kiln__mongo_store *ms = (struct kiln__mongo_store *)s;
    bson_t update = BSON_INITIALIZER;
    kiln__mongo_write_ctx ctx;
    kiln_err rc;

    if (u == NULL || u->uuid == NULL || u->uuid[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "mongodb store: no task UUID");
    if ((unsigned)u->state > KILN__STATE_LAST)
        return kiln__fail(err, KILN_EINVAL, "mongodb store: state %d",
                          (int)u->state);
    ctx = (kiln__mongo_write_ctx){kiln__mongo_now_ms(), ms->worker,
                                  ms->expire_s, unsent};
    rc = kiln__mongo_update(&update, u, &ctx, err);
    if (rc == KILN_OK)
        rc = kiln__mongo_write(
            ms, u, unsent ? KILN__MONGO_RULE_UNSENT : KILN__MONGO_RULE_STATE,
            &update, err);
    bson_destroy(&update);
    return rc;
}

static kiln_err mongo_set_state(kiln__store *s, const kiln__state_update *u,
                                kiln_error *err)
{
    return write_state(s, u, false, err);
}

static kiln_err mongo_send_failed(kiln__store *s, const kiln__state_update *u,
                                  kiln_error *err)
{
    if (u != NULL && u->state != KILN_STATE_FAILURE)
        return kiln__fail(err, KILN_EINVAL,
                          "mongodb store: a failed send records FAILURE");
    return write_state(s, u, true, err);
}

/* One find by _id. False (with *be) when the server could not be asked;
 * otherwise *rc is the outcome: KILN_OK with *out filled, or why not. */
static bool find_one(struct kiln__mongo_store *ms, const char *uuid,
                     kiln__task_record *out, kiln_err *rc, kiln_error *err,
                     bson_error_t *be)
{
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll;
    mongoc_cursor_t *cur;
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    const bson_t *doc;
    bool ok = true;

    coll = mongoc_client_get_collection(client, ms->db, KILN__MONGO_TASKS);
    BSON_APPEND_UTF8(&filter, "_id", uuid);
    BSON_APPEND_INT64(&opts, "limit", 1);
    cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    if (mongoc_cursor_next(cur, &doc))
        *rc = kiln__mongo_read_record(doc, out, err);
    else if (mongoc_cursor_error(cur, be))
        ok = false;
    else
        *rc = kiln__fail(err, KILN_ENOTFOUND, "no task '%.80s'", uuid);
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    bson_destroy(&opts);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    return ok;
}

static kiln_err mongo_get_state(kiln__store *s, const char *uuid,
                                kiln__task_record *out, kiln_error *err)
{
    struct kiln__mongo_store *ms = (struct kiln__mongo_store *)s;
    bson_error_t be;
    kiln_err rc = KILN_OK;

    if (uuid == NULL || uuid[0] == '\0' || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "mongodb store: no uuid or out");
    for (int attempt = 0; attempt < 2; attempt++) {
        if (find_one(ms, uuid, out, &rc, err, &be))
            return rc;
        if (!kiln__mongo_stale_socket(&be))
            break;
    }
    return kiln__mongo_fail(err, KILN_ESTORE, &be, "reading state of '%.80s'",
                            uuid);
}

/* The sweeper's mutex and condition (monotonic, as its period is). */
static int sweep_init(struct kiln__mongo_store *ms)
{
    pthread_condattr_t ca;
    int rc;

    if (pthread_mutex_init(&ms->sweep_mu, NULL) != 0)
        return -1;
    if ((rc = pthread_condattr_init(&ca)) == 0) {
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(&ms->sweep_cv, &ca);
        (void)pthread_condattr_destroy(&ca);
    }
    if (rc != 0) {
        (void)pthread_mutex_destroy(&ms->sweep_mu);
        return -1;
    }
    ms->sweep_made = true;
    return 0;
}

static void mongo_destroy(kiln__store *s)
{
    struct kiln__mongo_store *ms = (struct kiln__mongo_store *)s;

    if (ms == NULL)
        return;
    kiln__mongo_sweeper_stop(ms);
    if (ms->sweep_made) {
        (void)pthread_cond_destroy(&ms->sweep_cv);
        (void)pthread_mutex_destroy(&ms->sweep_mu);
    }
    if (ms->pool != NULL)
        mongoc_client_pool_destroy(ms->pool);
    mongoc_uri_destroy(ms->uri);
    for (int i = 0; i < ms->stripes_made; i++)
        (void)pthread_mutex_destroy(&ms->stripes[i]);
    (void)pthread_mutex_destroy(&ms->index_mu);
    kiln__free(ms);
}

void kiln__mongo_store_force_conditional(kiln__store *s)
{
    atomic_store(&((struct kiln__mongo_store *)s)->server, KILN__MONGO_ATOMIC);
}

static const kiln__store_ops mongo_ops = {.set_state = mongo_set_state,
                                          .add_pending =
                                              kiln__mongo_add_pending,
                                          .get_state = mongo_get_state,
                                          .destroy = mongo_destroy,
                                          .send_failed = mongo_send_failed,
                                          .set_states = kiln__mongo_set_states};

/* ---- construction ------------------------------------------------------ */

/* The timeouts a URL leaves unset follow connect_timeout_ms, so that an
 * unreachable server fails a call quickly instead of after libmongoc's
 * 30 s server selection. */
static void set_timeouts(mongoc_uri_t *uri, unsigned ms)
{
    static const char *const keys[] = {MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                       MONGOC_URI_CONNECTTIMEOUTMS,
                                       MONGOC_URI_SOCKETTIMEOUTMS};
    int32_t v = ms > 0 && ms <= INT32_MAX ? (int32_t)ms : 10000;

    for (size_t i = 0; i < KILN__ARRAY_LEN(keys); i++)
        if (!mongoc_uri_has_option(uri, keys[i]))
            (void)mongoc_uri_set_option_as_int32(uri, keys[i], v);
}

static void worker_id(char *out, size_t n)
{
    char host[256];

    if (gethostname(host, sizeof(host)) != 0)
        kiln__strlcpy(host, "unknown", sizeof(host));
    host[sizeof(host) - 1] = '\0';
    (void)snprintf(out, n, "%s:%ld", host, (long)getpid());
}

static kiln_err open_pool(struct kiln__mongo_store *ms, const kiln_config *cfg,
                          kiln_error *err)
{
    char safe[KILN_URL_MAX];
    bson_error_t be;

    /* One whole URL: even a raw space does not end its password. */
    kiln__redact(cfg->mongodb_url, safe, sizeof(safe), KILN__SECRET_WHOLE);
    if ((ms->uri = mongoc_uri_new_with_error(cfg->mongodb_url, &be)) == NULL)
        return kiln__mongo_fail(err, KILN_EINVAL, &be, "url '%s'", safe);
    set_timeouts(ms->uri, cfg->connect_timeout_ms);
    if ((ms->pool = mongoc_client_pool_new_with_error(ms->uri, &be)) == NULL)
        return kiln__mongo_fail(err, KILN_ESTORE, &be, "client pool for '%s'",
                                safe);
    (void)mongoc_client_pool_set_error_api(ms->pool,
                                           MONGOC_ERROR_API_VERSION_2);
    (void)mongoc_client_pool_set_appname(ms->pool, "kiln");
    kiln__log(KILN_LOG_DEBUG, KILN__MONGO_MODULE,
              "mongodb store: %s database %s", safe, cfg->mongodb_database);
    return KILN_OK;
}

kiln__store *kiln__mongo_store_new(const kiln_config *cfg, kiln_error *err)
{
    struct kiln__mongo_store *ms;

    if (cfg == NULL || cfg->mongodb_database[0] == '\0') {
        kiln__fail(err, KILN_EINVAL, "mongodb store: no database name");
        return NULL;
    }
    (void)pthread_once(&init_once, init_mongoc);
    if ((ms = kiln__calloc(1, sizeof(*ms))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "mongodb store");
        return NULL;
    }
    if (pthread_mutex_init(&ms->index_mu, NULL) != 0) {
        kiln__free(ms);
        kiln__fail(err, KILN_ENOMEM, "mongodb store: mutex");
        return NULL;
    }
    ms->base.ops = &mongo_ops;
    if (sweep_init(ms) != 0) {
        mongo_destroy(&ms->base);
        kiln__fail(err, KILN_ENOMEM, "mongodb store: mutex");
        return NULL;
    }
    for (; ms->stripes_made < KILN__MONGO_STRIPES; ms->stripes_made++) {
        if (pthread_mutex_init(&ms->stripes[ms->stripes_made], NULL) != 0) {
            mongo_destroy(&ms->base);
            kiln__fail(err, KILN_ENOMEM, "mongodb store: mutex");
            return NULL;
        }
    }
    kiln__strlcpy(ms->db, cfg->mongodb_database, sizeof(ms->db));
    ms->expire_s = cfg->results_expire_s;
    worker_id(ms->worker, sizeof(ms->worker));
    if (open_pool(ms, cfg, err) != KILN_OK) {
        mongo_destroy(&ms->base);
        return NULL;
    }
    return &ms->base;
}
