/* The MongoDB store against a real MongoDB wire-protocol server: the one
 * whose URL is in KILN_TEST_MONGODB_URL (scripts/with-ferretdb.sh starts a
 * private FerretDB and sets it). Each test works in a database of its own
 * with a random name and drops it afterwards; a raw libmongoc client
 * checks what the store wrote independently of the code under test.
 *
 * The restart test stops and starts the server with the commands in
 * KILN_TEST_MONGODB_STOP and KILN_TEST_MONGODB_START (with-ferretdb.sh
 * sets them to scripts/ferretdb.sh stop|start on its data directory). */
#include "kiln/store_mongo.h"
#include "store/mongo.h"
#include "test/support/results_fixture.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#include <mongoc/mongoc.h>
#pragma GCC diagnostic pop

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PASSWORD "s3cret-Pa55word"

typedef struct fixture {
    kiln_config cfg;
    kiln__store *s;
} fixture;

/* ---- fixtures and checks ---------------------------------------------- */

static const char *test_url(void)
{
    const char *url = getenv("KILN_TEST_MONGODB_URL");

    if (url == NULL || url[0] == '\0')
        fail_msg("KILN_TEST_MONGODB_URL is not set: run this test with "
                 "scripts/with-ferretdb.sh, which starts a private FerretDB "
                 "(or point it at a MongoDB)");
    return url;
}

static char log_seen[1 << 16];
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void capture_sink(kiln_log_level level, const char *line, void *user)
{
    size_t have;

    (void)level;
    (void)user;
    pthread_mutex_lock(&log_mu);
    have = strlen(log_seen);
    (void)snprintf(log_seen + have, sizeof(log_seen) - have, "%s\n", line);
    pthread_mutex_unlock(&log_mu);
}

static int64_t now_ms(void)
{
    return kiln__monotonic_ns() / 1000000;
}

static void make_cfg(kiln_config *cfg)
{
    unsigned char r[6];

    kiln_config_init(cfg);
    assert_int_equal(kiln__random(r, sizeof(r), NULL), KILN_OK);
    kiln__strlcpy(cfg->mongodb_url, test_url(), sizeof(cfg->mongodb_url));
    (void)snprintf(cfg->mongodb_database, sizeof(cfg->mongodb_database),
                   "kiln_it_%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3],
                   r[4], r[5]);
    cfg->store = KILN_STORE_MONGODB;
    cfg->connect_timeout_ms = 5000;
    cfg->results_expire_s = 3600;
}

/* A raw client for checks; used on the test thread only. */
static mongoc_client_t *raw_client(void)
{
    mongoc_client_t *c = mongoc_client_new(test_url());

    assert_non_null(c);
    mongoc_client_set_error_api(c, MONGOC_ERROR_API_VERSION_2);
    return c;
}

/* The stored document of `uuid` (caller destroys), or NULL. */
static bson_t *raw_doc(const kiln_config *cfg, const char *uuid)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll =
        mongoc_client_get_collection(c, cfg->mongodb_database, "tasks");
    bson_t filter = BSON_INITIALIZER;
    const bson_t *doc;
    bson_t *copy = NULL;
    mongoc_cursor_t *cur;

    BSON_APPEND_UTF8(&filter, "_id", uuid);
    cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
    if (mongoc_cursor_next(cur, &doc))
        copy = bson_copy(doc);
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    return copy;
}

static void raw_insert(const kiln_config *cfg, const bson_t *doc)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll =
        mongoc_client_get_collection(c, cfg->mongodb_database, "tasks");
    bson_error_t be;

    if (!mongoc_collection_insert_one(coll, doc, NULL, NULL, &be))
        fail_msg("insert: %s", be.message);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
}

/* Documents in the test's `tasks` collection. */
static int64_t raw_count(const kiln_config *cfg)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll =
        mongoc_client_get_collection(c, cfg->mongodb_database, "tasks");
    bson_t filter = BSON_INITIALIZER;
    bson_error_t be;
    int64_t n =
        mongoc_collection_count_documents(coll, &filter, NULL, NULL, NULL, &be);

    if (n < 0)
        fail_msg("count: %s", be.message);
    bson_destroy(&filter);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    return n;
}

static void raw_drop(const kiln_config *cfg)
{
    mongoc_client_t *c = raw_client();
    mongoc_database_t *db =
        mongoc_client_get_database(c, cfg->mongodb_database);
    bson_error_t be;

    (void)mongoc_database_drop(db, &be);
    mongoc_database_destroy(db);
    mongoc_client_destroy(c);
}

static int setup(void **state)
{
    fixture *f;
    kiln_error err;

    (void)test_url();
    f = calloc(1, sizeof(*f));
    assert_non_null(f);
    make_cfg(&f->cfg);
    f->s = kiln__mongo_store_new(&f->cfg, &err);
    if (f->s == NULL)
        fail_msg("mongo_store_new: %s", err.message);
    *state = f;
    return 0;
}

/* The same, writing with MongoDB's conditional upsert whatever the server. */
static int setup_conditional(void **state)
{
    setup(state);
    kiln__mongo_store_force_conditional(((fixture *)*state)->s);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    kiln__store_destroy(f->s);
    raw_drop(&f->cfg);
    free(f);
    return 0;
}

static void set_ok(kiln__store *s, const char *uuid, kiln_task_state st,
                   const char *name, const kiln__values *res, const char *error)
{
    kiln__state_update u = {uuid, name, st, res, error, false};
    kiln_error err;

    if (kiln__store_set(s, &u, &err) != KILN_OK)
        fail_msg("set_state %s %s: %s", uuid, kiln__state_name(st),
                 err.message);
}

static void get_ok(kiln__store *s, const char *uuid, kiln__task_record *r)
{
    kiln_error err;

    memset(r, 0, sizeof(*r));
    if (kiln__store_get(s, uuid, r, &err) != KILN_OK)
        fail_msg("get_state %s: %s", uuid, err.message);
}

static kiln_task_state state_of(kiln__store *s, const char *uuid)
{
    kiln__task_record r;
    kiln_task_state st;

    get_ok(s, uuid, &r);
    st = r.state;
    kiln__task_record_release(&r);
    return st;
}

static void add_i64(kiln__values *l, kiln_type t, int64_t v)
{
    kiln__value x = {.type = t, .v.i = v};
    kiln_error err;

    if (kiln__values_add(l, &x, &err) != KILN_OK)
        fail_msg("add %s: %s", kiln_type_name(t), err.message);
}

static void add_u64(kiln__values *l, kiln_type t, uint64_t v)
{
    kiln__value x = {.type = t, .v.u = v};
    kiln_error err;

    if (kiln__values_add(l, &x, &err) != KILN_OK)
        fail_msg("add %s: %s", kiln_type_name(t), err.message);
}

static void add_f64(kiln__values *l, kiln_type t, double v)
{
    kiln__value x = {.type = t, .v.f = v};
    kiln_error err;

    if (kiln__values_add(l, &x, &err) != KILN_OK)
        fail_msg("add %s: %s", kiln_type_name(t), err.message);
}

static void add_arr(kiln__values *l, kiln_type t, void *p, size_t n)
{
    kiln__value x = {.type = t};
    kiln_error err;

    x.v.arr.ptr = p;
    x.v.arr.n = n;
    if (kiln__values_add(l, &x, &err) != KILN_OK)
        fail_msg("add %s: %s", kiln_type_name(t), err.message);
}

static size_t elem_bytes(kiln_type t)
{
    switch (t) {
    case KILN_TYPE_BOOL_SLICE:
        return sizeof(bool);
    case KILN_TYPE_UINT8_SLICE:
    case KILN_TYPE_BYTES:
        return 1;
    case KILN_TYPE_FLOAT32_SLICE:
    case KILN_TYPE_FLOAT64_SLICE:
        return sizeof(double);
    default:
        return 8;
    }
}

/* Exact equality, doubles bit for bit. */
static void assert_value_equal(const kiln__value *a, const kiln__value *b,
                               size_t i)
{
    const char *an = a->name ? a->name : "", *bn = b->name ? b->name : "";

    if (a->type != b->type)
        fail_msg("result %zu: type %s, want %s", i, kiln_type_name(b->type),
                 kiln_type_name(a->type));
    assert_string_equal(an, bn);
    if (a->type == KILN_TYPE_STRING) {
        assert_string_equal(a->v.s, b->v.s);
    } else if (a->type == KILN_TYPE_STRING_SLICE) {
        assert_int_equal(a->v.arr.n, b->v.arr.n);
        for (size_t k = 0; k < a->v.arr.n; k++)
            assert_string_equal(((char **)a->v.arr.ptr)[k],
                                ((char **)b->v.arr.ptr)[k]);
    } else if (a->type >= KILN_TYPE_BOOL_SLICE) {
        if (a->v.arr.n != b->v.arr.n)
            fail_msg("result %zu (%s): %zu elements, want %zu", i,
                     kiln_type_name(a->type), b->v.arr.n, a->v.arr.n);
        if (a->v.arr.n > 0 && memcmp(a->v.arr.ptr, b->v.arr.ptr,
                                     a->v.arr.n * elem_bytes(a->type)) != 0)
            fail_msg("result %zu (%s): elements differ", i,
                     kiln_type_name(a->type));
    } else if (a->type == KILN_TYPE_BOOL) {
        assert_int_equal(a->v.b, b->v.b);
    } else if (memcmp(&a->v.u, &b->v.u, sizeof(a->v.u)) != 0) {
        fail_msg("result %zu (%s): %" PRIx64 ", want %" PRIx64, i,
                 kiln_type_name(a->type), b->v.u, a->v.u);
    }
}

static void assert_values_equal(const kiln__values *want,
                                const kiln__values *got)
{
    assert_int_equal(want->n, got->n);
    for (size_t i = 0; i < want->n; i++)
        assert_value_equal(&want->items[i], &got->items[i], i);
}

static bool doc_has(const bson_t *doc, const char *key, bson_type_t type)
{
    bson_iter_t it;

    return bson_iter_init_find(&it, doc, key) && bson_iter_type(&it) == type;
}

static int64_t doc_date(const bson_t *doc, const char *key)
{
    bson_iter_t it;

    assert_true(bson_iter_init_find(&it, doc, key));
    assert_true(BSON_ITER_HOLDS_DATE_TIME(&it));
    return bson_iter_date_time(&it);
}

static int32_t doc_int32(const bson_t *doc, const char *key)
{
    bson_iter_t it;

    assert_true(bson_iter_init_find(&it, doc, key));
    assert_true(BSON_ITER_HOLDS_INT32(&it));
    return bson_iter_int32(&it);
}

/* ---- states and rules ------------------------------------------------- */

static void test_url_is_set(void **state)
{
    (void)state;
    (void)test_url();
}

static void test_lifecycle(void **state)
{
    fixture *f = *state;
    const char *id = "task_lifecycle";
    kiln__values res = {0};
    kiln__task_record r;
    int64_t created;
    bson_t *doc;

    set_ok(f->s, id, KILN_STATE_PENDING, "add", NULL, NULL);
    get_ok(f->s, id, &r);
    assert_string_equal(r.uuid, id);
    assert_string_equal(r.task_name, "add");
    assert_int_equal(r.state, KILN_STATE_PENDING);
    assert_string_equal(r.error, "");
    assert_int_equal(r.results.n, 0);
    created = r.created_ns;
    assert_true(created > 0);
    kiln__task_record_release(&r);

    set_ok(f->s, id, KILN_STATE_RECEIVED, NULL, NULL, NULL);
    assert_int_equal(state_of(f->s, id), KILN_STATE_RECEIVED);
    set_ok(f->s, id, KILN_STATE_STARTED, "add", NULL, NULL);
    assert_int_equal(state_of(f->s, id), KILN_STATE_STARTED);
    add_i64(&res, KILN_TYPE_INT64, 42);
    set_ok(f->s, id, KILN_STATE_SUCCESS, "", &res, NULL);

    get_ok(f->s, id, &r);
    assert_int_equal(r.state, KILN_STATE_SUCCESS);
    assert_string_equal(r.task_name, "add"); /* kept across nameless writes */
    assert_int_equal(r.created_ns, created);
    assert_true(r.updated_ns >= created);
    assert_values_equal(&res, &r.results);
    kiln__task_record_release(&r);

    /* machinery's fields and kiln's own, as a raw client sees them. */
    doc = raw_doc(&f->cfg, id);
    assert_non_null(doc);
    assert_true(doc_has(doc, "state", BSON_TYPE_UTF8));
    assert_true(doc_has(doc, "task_name", BSON_TYPE_UTF8));
    assert_true(doc_has(doc, "results", BSON_TYPE_ARRAY));
    assert_true(doc_has(doc, "error", BSON_TYPE_UTF8));
    assert_true(doc_has(doc, "worker", BSON_TYPE_UTF8));
    assert_int_equal(doc_int32(doc, "attempts"), 1);
    assert_int_equal(doc_date(doc, "created_at"), created / 1000000);
    assert_true(doc_date(doc, "started_at") >= created / 1000000);
    assert_true(doc_date(doc, "finished_at") >= doc_date(doc, "started_at"));
    assert_int_equal(doc_date(doc, "delete_at"),
                     doc_date(doc, "finished_at") + 3600 * 1000);
    bson_destroy(doc);
    kiln__values_clear(&res);
}

/* Rule 1: the first finishing write wins; nothing changes it after. */
static void test_finished_never_changes(void **state)
{
    fixture *f = *state;
    static const kiln_task_state later[] = {
        KILN_STATE_PENDING, KILN_STATE_RECEIVED, KILN_STATE_STARTED,
        KILN_STATE_RETRY,   KILN_STATE_FAILURE,  KILN_STATE_SUCCESS};
    kiln__values res = {0}, other = {0};
    kiln__task_record r;

    add_i64(&res, KILN_TYPE_INT, 7);
    add_i64(&other, KILN_TYPE_INT, 8);
    set_ok(f->s, "t_ok", KILN_STATE_STARTED, "n", NULL, NULL);
    set_ok(f->s, "t_ok", KILN_STATE_SUCCESS, "n", &res, NULL);
    set_ok(f->s, "t_fail", KILN_STATE_FAILURE, "n", NULL, "boom");
    for (size_t i = 0; i < KILN__ARRAY_LEN(later); i++) {
        set_ok(f->s, "t_ok", later[i], "other", &other, "late");
        set_ok(f->s, "t_fail", later[i], "other", &other, "late");
    }
    get_ok(f->s, "t_ok", &r);
    assert_int_equal(r.state, KILN_STATE_SUCCESS);
    assert_string_equal(r.task_name, "n");
    assert_string_equal(r.error, "");
    assert_values_equal(&res, &r.results);
    kiln__task_record_release(&r);
    get_ok(f->s, "t_fail", &r);
    assert_int_equal(r.state, KILN_STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    assert_int_equal(r.results.n, 0);
    kiln__task_record_release(&r);
    kiln__values_clear(&res);
    kiln__values_clear(&other);
}

/* Rule 2: PENDING only for an unknown task or one still PENDING. */
static void test_pending_after_received_is_ignored(void **state)
{
    fixture *f = *state;
    kiln__task_record r;

    set_ok(f->s, "t1", KILN_STATE_RECEIVED, NULL, NULL, NULL);
    set_ok(f->s, "t1", KILN_STATE_PENDING, "late", NULL, NULL);
    get_ok(f->s, "t1", &r);
    assert_int_equal(r.state, KILN_STATE_RECEIVED);
    assert_string_equal(r.task_name, "");
    kiln__task_record_release(&r);

    set_ok(f->s, "t2", KILN_STATE_PENDING, "a", NULL, NULL);
    set_ok(f->s, "t2", KILN_STATE_PENDING, "b", NULL, NULL);
    get_ok(f->s, "t2", &r);
    assert_int_equal(r.state, KILN_STATE_PENDING);
    assert_string_equal(r.task_name, "b");
    kiln__task_record_release(&r);

    set_ok(f->s, "t2", KILN_STATE_STARTED, NULL, NULL, NULL);
    set_ok(f->s, "t2", KILN_STATE_PENDING, NULL, NULL, NULL);
    assert_int_equal(state_of(f->s, "t2"), KILN_STATE_STARTED);
}

/* PENDING in bulk (what kiln_pool_send_tasks writes): one insert; new
 * tasks become PENDING, known ones are left exactly as they are. */
static void test_add_pending_bulk(void **state)
{
    fixture *f = *state;
    enum { MANY = 250 };
    static const char *const ids[] = {"p_new1", "p_done", "p_new2", "p_pend",
                                      "p_started"};
    kiln__state_update u[MANY];
    kiln_err st[MANY];
    char names[MANY][32];
    kiln__task_record r;
    kiln_error err;

    set_ok(f->s, "p_done", KILN_STATE_FAILURE, "x", NULL, "boom");
    set_ok(f->s, "p_pend", KILN_STATE_PENDING, "a", NULL, NULL);
    set_ok(f->s, "p_started", KILN_STATE_STARTED, "s", NULL, NULL);
    for (size_t i = 0; i < KILN__ARRAY_LEN(ids); i++) {
        u[i] = (kiln__state_update){ids[i], "bulk", KILN_STATE_PENDING, NULL,
                                    NULL, false};
        st[i] = KILN_EINVAL;
    }
    assert_int_equal(
        kiln__store_add_pending(f->s, u, KILN__ARRAY_LEN(ids), st, &err),
        KILN_OK);
    for (size_t i = 0; i < KILN__ARRAY_LEN(ids); i++)
        assert_int_equal(st[i], KILN_OK);
    get_ok(f->s, "p_new1", &r);
    assert_int_equal(r.state, KILN_STATE_PENDING);
    assert_string_equal(r.task_name, "bulk");
    assert_true(r.created_ns > 0);
    kiln__task_record_release(&r);
    get_ok(f->s, "p_done", &r);
    assert_int_equal(r.state, KILN_STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    kiln__task_record_release(&r);
    get_ok(f->s, "p_pend", &r);
    assert_string_equal(r.task_name, "a");
    kiln__task_record_release(&r);
    assert_int_equal(state_of(f->s, "p_started"), KILN_STATE_STARTED);
    assert_int_equal(state_of(f->s, "p_new2"), KILN_STATE_PENDING);

    /* A batch larger than one reply page; then the same batch again. */
    for (size_t i = 0; i < MANY; i++) {
        (void)snprintf(names[i], sizeof(names[i]), "p_many_%zu", i);
        u[i] = (kiln__state_update){names[i], "many", KILN_STATE_PENDING, NULL,
                                    NULL, false};
    }
    assert_int_equal(kiln__store_add_pending(f->s, u, MANY, st, &err), KILN_OK);
    assert_int_equal(kiln__store_add_pending(f->s, u, MANY, st, &err), KILN_OK);
    for (size_t i = 0; i < MANY; i += 7)
        assert_int_equal(state_of(f->s, names[i]), KILN_STATE_PENDING);
    assert_int_equal(raw_count(&f->cfg), MANY + KILN__ARRAY_LEN(ids));

    /* Only PENDING with a UUID. */
    u[0].state = KILN_STATE_STARTED;
    assert_int_equal(kiln__store_add_pending(f->s, u, 1, st, &err),
                     KILN_EINVAL);
    u[0] = (kiln__state_update){"", "x", KILN_STATE_PENDING, NULL, NULL, false};
    assert_int_equal(kiln__store_add_pending(f->s, u, 1, st, &err),
                     KILN_EINVAL);
}

/* Rule 3: a retried task goes RETRY -> RECEIVED -> STARTED again. */
/* Many states in one bulk: each follows the rules as set_state would (a
 * finished task is left as it is, and that is no error), a write may
 * carry its run's STARTED along, a bad document fails alone, and more
 * documents than one FerretDB chunk all arrive. */
static void test_set_states_bulk(void **state)
{
    fixture *f = *state;
    enum { MANY = 40 };
    char names[MANY][32];
    kiln__state_update u[MANY + 3];
    kiln_err st[MANY + 3];
    kiln__task_record r;
    kiln_error err;

    set_ok(f->s, "b_done", KILN_STATE_SUCCESS, "b", NULL, NULL);
    set_ok(f->s, "b_started", KILN_STATE_STARTED, "b", NULL, NULL);
    for (size_t i = 0; i < MANY; i++) {
        (void)snprintf(names[i], sizeof(names[i]), "b_many_%zu", i);
        u[i] = (kiln__state_update){.uuid = names[i],
                                    .task_name = "b",
                                    .state = KILN_STATE_SUCCESS,
                                    .started = true};
    }
    u[MANY] = (kiln__state_update){.uuid = "b_done",
                                   .task_name = "b",
                                   .state = KILN_STATE_FAILURE,
                                   .error = "late"};
    u[MANY + 1] = (kiln__state_update){.uuid = "b_started",
                                       .task_name = "b",
                                       .state = KILN_STATE_FAILURE,
                                       .error = "boom"};
    u[MANY + 2] = (kiln__state_update){.uuid = "", .state = KILN_STATE_SUCCESS};
    assert_int_equal(kiln__store_set_states(f->s, u, MANY + 3, st, &err),
                     KILN_EINVAL);
    for (size_t i = 0; i < MANY + 2; i++)
        assert_int_equal(st[i], KILN_OK);
    assert_int_equal(st[MANY + 2], KILN_EINVAL);
    for (size_t i = 0; i < MANY; i++) {
        get_ok(f->s, names[i], &r);
        assert_int_equal(r.state, KILN_STATE_SUCCESS);
        assert_int_equal(r.attempts, 1);
        assert_true(r.started_ns > 0);
        kiln__task_record_release(&r);
    }
    get_ok(f->s, "b_done", &r);
    assert_int_equal(r.state, KILN_STATE_SUCCESS);
    kiln__task_record_release(&r);
    get_ok(f->s, "b_started", &r);
    assert_int_equal(r.state, KILN_STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    assert_int_equal(r.attempts, 1);
    kiln__task_record_release(&r);
}

static void test_retry_then_received(void **state)
{
    fixture *f = *state;
    kiln__values res = {0};
    kiln__task_record r;
    bson_t *doc;

    set_ok(f->s, "t", KILN_STATE_RECEIVED, "job", NULL, NULL);
    set_ok(f->s, "t", KILN_STATE_STARTED, "job", NULL, NULL);
    set_ok(f->s, "t", KILN_STATE_RETRY, "job", NULL, "try again");
    get_ok(f->s, "t", &r);
    assert_int_equal(r.state, KILN_STATE_RETRY);
    assert_string_equal(r.error, "try again");
    kiln__task_record_release(&r);
    set_ok(f->s, "t", KILN_STATE_RECEIVED, "job", NULL, NULL);
    get_ok(f->s, "t", &r);
    assert_int_equal(r.state, KILN_STATE_RECEIVED);
    assert_string_equal(r.error, "");
    kiln__task_record_release(&r);
    set_ok(f->s, "t", KILN_STATE_STARTED, "job", NULL, NULL);
    add_u64(&res, KILN_TYPE_UINT64, 1);
    set_ok(f->s, "t", KILN_STATE_SUCCESS, "job", &res, NULL);
    assert_int_equal(state_of(f->s, "t"), KILN_STATE_SUCCESS);
    doc = raw_doc(&f->cfg, "t");
    assert_non_null(doc);
    assert_int_equal(doc_int32(doc, "attempts"), 2);
    bson_destroy(doc);
    kiln__values_clear(&res);
}

static void send_failed_ok(kiln__store *s, const char *uuid, const char *why)
{
    kiln__state_update u = {.uuid = uuid,
                            .task_name = "sent",
                            .state = KILN_STATE_FAILURE,
                            .error = why};
    kiln_error err;

    if (kiln__store_send_failed(s, &u, &err) != KILN_OK)
        fail_msg("send_failed %s: %s", uuid, err.message);
}

static bool doc_key(const bson_t *doc, const char *key)
{
    bson_iter_t it;

    return bson_iter_init_find(&it, doc, key);
}

/* Rule 4: a producer whose send failed for certain records FAILURE over
 * its PENDING (marked send_failed, expiring as any finished task), never
 * over a worker's state; a new send of the task (PENDING, alone or in a
 * batch) or a worker's state replaces it and takes the mark away. */
static void test_send_failed(void **state)
{
    fixture *f = *state;
    kiln__state_update u[2] = {
        {.uuid = "sf_batch", .task_name = "b", .state = KILN_STATE_PENDING},
        {.uuid = "sf_done", .task_name = "b", .state = KILN_STATE_PENDING}};
    kiln_err st[2];
    kiln__task_record r;
    kiln_error err;
    bson_t *doc;

    set_ok(f->s, "sf", KILN_STATE_PENDING, "sent", NULL, NULL);
    send_failed_ok(f->s, "sf", "not sent: unroutable");
    get_ok(f->s, "sf", &r);
    assert_int_equal(r.state, KILN_STATE_FAILURE);
    assert_string_equal(r.error, "not sent: unroutable");
    kiln__task_record_release(&r);
    doc = raw_doc(&f->cfg, "sf");
    assert_non_null(doc);
    assert_true(doc_has(doc, "send_failed", BSON_TYPE_BOOL));
    assert_true(doc_has(doc, "delete_at", BSON_TYPE_DATE_TIME));
    assert_false(doc_key(doc, "worker"));
    bson_destroy(doc);
    /* Sent again: PENDING again, unmarked, no expiry. */
    set_ok(f->s, "sf", KILN_STATE_PENDING, "sent", NULL, NULL);
    get_ok(f->s, "sf", &r);
    assert_int_equal(r.state, KILN_STATE_PENDING);
    assert_string_equal(r.error, "");
    kiln__task_record_release(&r);
    doc = raw_doc(&f->cfg, "sf");
    assert_false(doc_key(doc, "send_failed"));
    assert_false(doc_key(doc, "delete_at"));
    bson_destroy(doc);
    /* Failed again, then a worker runs an earlier send's message. */
    send_failed_ok(f->s, "sf", "not sent: nacked");
    set_ok(f->s, "sf", KILN_STATE_STARTED, "sent", NULL, NULL);
    assert_int_equal(state_of(f->s, "sf"), KILN_STATE_STARTED);
    /* Never over a worker's state, finished or not. */
    send_failed_ok(f->s, "sf", "not sent: late");
    assert_int_equal(state_of(f->s, "sf"), KILN_STATE_STARTED);
    set_ok(f->s, "sf", KILN_STATE_SUCCESS, "sent", NULL, NULL);
    send_failed_ok(f->s, "sf", "not sent: late");
    assert_int_equal(state_of(f->s, "sf"), KILN_STATE_SUCCESS);
    doc = raw_doc(&f->cfg, "sf");
    assert_false(doc_key(doc, "send_failed"));
    bson_destroy(doc);

    /* A batch of PENDING replaces a failed send's FAILURE, not a
     * worker's. */
    set_ok(f->s, "sf_batch", KILN_STATE_PENDING, "b", NULL, NULL);
    send_failed_ok(f->s, "sf_batch", "not sent: unroutable");
    set_ok(f->s, "sf_done", KILN_STATE_FAILURE, "b", NULL, "boom");
    assert_int_equal(kiln__store_add_pending(f->s, u, 2, st, &err), KILN_OK);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_OK);
    assert_int_equal(state_of(f->s, "sf_batch"), KILN_STATE_PENDING);
    get_ok(f->s, "sf_done", &r);
    assert_int_equal(r.state, KILN_STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    kiln__task_record_release(&r);
    u[0].state = KILN_STATE_STARTED;
    assert_int_equal(kiln__store_send_failed(f->s, u, &err), KILN_EINVAL);
}

static void test_failure_keeps_utf8_error(void **state)
{
    fixture *f = *state;
    const char *why = "d\xc3\xa9j\xc3\xa0 vu \xe2\x9c\x93 \xf0\x9d\x84\x9e";
    kiln__task_record r;

    set_ok(f->s, "t", KILN_STATE_FAILURE, "\xe2\x9c\x93", NULL, why);
    get_ok(f->s, "t", &r);
    assert_int_equal(r.state, KILN_STATE_FAILURE);
    assert_string_equal(r.error, why);
    assert_string_equal(r.task_name, "\xe2\x9c\x93");
    kiln__task_record_release(&r);
}

static void test_bad_calls(void **state)
{
    fixture *f = *state;
    kiln__state_update u = {"t", NULL, KILN_STATE_PENDING, NULL, NULL, false};
    kiln__task_record r = {0};
    kiln_error err;

    assert_int_equal(kiln__store_get(f->s, "task_none", &r, &err),
                     KILN_ENOTFOUND);
    assert_null(r.uuid);
    u.uuid = "";
    assert_int_equal(kiln__store_set(f->s, &u, &err), KILN_EINVAL);
    u.uuid = NULL;
    assert_int_equal(kiln__store_set(f->s, &u, &err), KILN_EINVAL);
    u.uuid = "t";
    u.state = (kiln_task_state)(KILN__STATE_LAST + 1);
    assert_int_equal(kiln__store_set(f->s, &u, &err), KILN_EINVAL);
    assert_int_equal(kiln__store_get(f->s, "", &r, &err), KILN_EINVAL);
    assert_int_equal(kiln__store_get(f->s, NULL, &r, &err), KILN_EINVAL);
}

/* ---- results ---------------------------------------------------------- */

static void add_every_type(kiln__values *l)
{
    static bool bools[] = {true, false, true};
    static int64_t i64s[] = {INT64_MIN, -1, 0, 1, INT64_MAX};
    static int64_t i8s[] = {INT8_MIN, 0, INT8_MAX};
    static int64_t i16s[] = {INT16_MIN, INT16_MAX};
    static int64_t i32s[] = {INT32_MIN, INT32_MAX};
    static uint64_t u64s[] = {0, 1, (uint64_t)INT64_MAX,
                              (uint64_t)INT64_MAX + 1, UINT64_MAX};
    static uint64_t u16s[] = {0, UINT16_MAX};
    static uint64_t u32s[] = {0, UINT32_MAX};
    static uint8_t bytes[] = {0, 1, 0, 255, 0};
    static double f32s[] = {FLT_MAX, -FLT_MAX, FLT_MIN, 0x1p-149, 0.1f};
    static double f64s[] = {DBL_MAX, -DBL_MAX, DBL_MIN, 0x1p-1074, 1e308, 0.1};
    static char s0[] = "", s1[] = "plain",
                s2[] = "\xc3\xa9\xe2\x9c\x93\xf0\x9d\x84\x9e";
    static char *strs[] = {s0, s1, s2};
    static char named[] = "named";
    kiln__value s = {.type = KILN_TYPE_STRING};
    kiln__value b = {.type = KILN_TYPE_BOOL, .v.b = true};

    assert_int_equal(kiln__values_add(l, &b, NULL), KILN_OK);
    add_i64(l, KILN_TYPE_INT, INT64_MIN);
    add_i64(l, KILN_TYPE_INT, 5); /* Go writes a small int as int32 */
    add_i64(l, KILN_TYPE_INT8, INT8_MIN);
    add_i64(l, KILN_TYPE_INT16, INT16_MAX);
    add_i64(l, KILN_TYPE_INT32, INT32_MIN);
    add_i64(l, KILN_TYPE_INT64, INT64_MIN);
    add_i64(l, KILN_TYPE_INT64, INT64_MAX);
    add_u64(l, KILN_TYPE_UINT, UINT64_MAX);
    add_u64(l, KILN_TYPE_UINT8, UINT8_MAX);
    add_u64(l, KILN_TYPE_UINT16, UINT16_MAX);
    add_u64(l, KILN_TYPE_UINT32, UINT32_MAX);
    add_u64(l, KILN_TYPE_UINT64, UINT64_MAX);
    add_u64(l, KILN_TYPE_UINT64, (uint64_t)INT64_MAX);
    add_f64(l, KILN_TYPE_FLOAT32, FLT_MAX);
    add_f64(l, KILN_TYPE_FLOAT32, 0x1p-149); /* smallest float denormal */
    add_f64(l, KILN_TYPE_FLOAT64, DBL_MAX);
    add_f64(l, KILN_TYPE_FLOAT64, 0x1p-1074);
    add_f64(l, KILN_TYPE_FLOAT64, -DBL_MIN);
    s.v.s = strs[2];
    assert_int_equal(kiln__values_add(l, &s, NULL), KILN_OK);
    s.v.s = strs[0];
    s.name = named;
    assert_int_equal(kiln__values_add(l, &s, NULL), KILN_OK);
    add_arr(l, KILN_TYPE_BOOL_SLICE, bools, 3);
    add_arr(l, KILN_TYPE_INT_SLICE, i64s, 5);
    add_arr(l, KILN_TYPE_INT8_SLICE, i8s, 3);
    add_arr(l, KILN_TYPE_INT16_SLICE, i16s, 2);
    add_arr(l, KILN_TYPE_INT32_SLICE, i32s, 2);
    add_arr(l, KILN_TYPE_INT64_SLICE, i64s, 5);
    add_arr(l, KILN_TYPE_UINT_SLICE, u64s, 5);
    add_arr(l, KILN_TYPE_UINT8_SLICE, bytes, 5);
    add_arr(l, KILN_TYPE_UINT16_SLICE, u16s, 2);
    add_arr(l, KILN_TYPE_UINT32_SLICE, u32s, 2);
    add_arr(l, KILN_TYPE_UINT64_SLICE, u64s, 5);
    add_arr(l, KILN_TYPE_FLOAT32_SLICE, f32s, 5);
    add_arr(l, KILN_TYPE_FLOAT64_SLICE, f64s, 6);
    add_arr(l, KILN_TYPE_STRING_SLICE, strs, 3);
    add_arr(l, KILN_TYPE_BYTES, bytes, 5);
    for (kiln_type t = KILN_TYPE_BOOL_SLICE; t <= KILN_TYPE_LAST; t++)
        add_arr(l, t, NULL, 0); /* every slice type empty */
}

static void test_results_every_type(void **state)
{
    fixture *f = *state;
    kiln__values res = {0};
    kiln__task_record r;

    add_every_type(&res);
    set_ok(f->s, "t", KILN_STATE_SUCCESS, "all", &res, NULL);
    get_ok(f->s, "t", &r);
    assert_values_equal(&res, &r.results);
    kiln__task_record_release(&r);
    kiln__values_clear(&res);
}

/* A task's slice results, added with kiln_task_add_result_*_slice, as a
 * worker records them (SUCCESS with the context's results) and as any
 * process reads them back with kiln_store_get_result: every slice type,
 * exactly. */
static void test_slice_results_from_task(void **state)
{
    fixture *f = *state;
    kiln_registry *reg = kiln_registry_new(NULL);
    kiln_signature *sig = kiln_signature_new("slices", NULL), *res = NULL;
    kiln_result *got = NULL;
    kiln_store *st;
    kiln_error err;

    assert_non_null(reg);
    assert_non_null(sig);
    assert_int_equal(
        kiln_registry_add(reg, "slices", slices_task, NULL, NULL, NULL),
        KILN_OK);
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_OK);
    set_ok(f->s, kiln_signature_uuid(sig), KILN_STATE_SUCCESS, "slices",
           &res->args, NULL);
    if ((st = kiln_store_new(&f->cfg, &err)) == NULL)
        fail_msg("kiln_store_new: %s", err.message);
    if (kiln_store_get_result(st, kiln_signature_uuid(sig), &got, &err) !=
        KILN_OK)
        fail_msg("get_result: %s", err.message);
    assert_int_equal(kiln_result_state(got), KILN_STATE_SUCCESS);
    check_slice_results(kiln_result_values(got));
    kiln_result_free(got);
    kiln_store_free(st);
    kiln_signature_free(res);
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

/* -0.0 is a zero after the round trip; MongoDB keeps its sign, FerretDB
 * 1.x stores every zero as +0.0. */
static void test_negative_zero(void **state)
{
    fixture *f = *state;
    kiln__values res = {0};
    kiln__task_record r;

    add_f64(&res, KILN_TYPE_FLOAT64, -0.0);
    set_ok(f->s, "t", KILN_STATE_SUCCESS, "z", &res, NULL);
    get_ok(f->s, "t", &r);
    assert_int_equal(r.results.n, 1);
    assert_true(r.results.items[0].v.f == 0.0);
    print_message("-0.0 reads back as %s0.0\n",
                  signbit(r.results.items[0].v.f) ? "-" : "+");
    kiln__task_record_release(&r);
    kiln__values_clear(&res);
}

/* The BSON types a machinery client's Go driver expects, and reads. */
static void test_results_bson_types(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *path;
        bson_type_t type;
    } want[] = {
        {"results.0.value", BSON_TYPE_BOOL},
        {"results.1.value", BSON_TYPE_INT64},  /* int INT64_MIN */
        {"results.2.value", BSON_TYPE_INT32},  /* int 5 */
        {"results.3.value", BSON_TYPE_INT32},  /* int8 */
        {"results.6.value", BSON_TYPE_INT64},  /* int64 */
        {"results.8.value", BSON_TYPE_UTF8},   /* uint UINT64_MAX */
        {"results.9.value", BSON_TYPE_INT32},  /* uint8 */
        {"results.11.value", BSON_TYPE_INT64}, /* uint32 */
        {"results.13.value", BSON_TYPE_INT64}, /* uint64 INT64_MAX */
        {"results.14.value", BSON_TYPE_DOUBLE},
        {"results.19.value", BSON_TYPE_UTF8},
        {"results.21.value", BSON_TYPE_ARRAY},
        {"results.28.value", BSON_TYPE_BINARY}, /* []uint8 */
        {"results.35.value", BSON_TYPE_BINARY}, /* []byte */
        {"results.36.value", BSON_TYPE_ARRAY},  /* empty []bool */
    };
    kiln__values res = {0};
    bson_iter_t it, sub;
    bson_t *doc;

    add_every_type(&res);
    set_ok(f->s, "t", KILN_STATE_SUCCESS, "all", &res, NULL);
    doc = raw_doc(&f->cfg, "t");
    assert_non_null(doc);
    for (size_t i = 0; i < KILN__ARRAY_LEN(want); i++) {
        assert_true(bson_iter_init(&it, doc));
        if (!bson_iter_find_descendant(&it, want[i].path, &sub))
            fail_msg("no %s", want[i].path);
        if (bson_iter_type(&sub) != want[i].type)
            fail_msg("%s: BSON type 0x%02x, want 0x%02x", want[i].path,
                     (unsigned)bson_iter_type(&sub), (unsigned)want[i].type);
    }
    assert_true(bson_iter_init(&it, doc));
    assert_true(bson_iter_find_descendant(&it, "results.8.type", &sub));
    assert_string_equal(bson_iter_utf8(&sub, NULL), "uint");
    assert_true(bson_iter_init(&it, doc));
    assert_true(bson_iter_find_descendant(&it, "results.8.value", &sub));
    assert_string_equal(bson_iter_utf8(&sub, NULL), "18446744073709551615");
    bson_destroy(doc);
    kiln__values_clear(&res);
}

/* A document as machinery's Go backend writes it reads back. */
static void test_reads_machinery_document(void **state)
{
    fixture *f = *state;
    const uint8_t bin[] = {1, 0, 2};
    bson_t doc = BSON_INITIALIZER, arr, item, val;
    kiln__task_record r;

    BSON_APPEND_UTF8(&doc, "_id", "task_go");
    BSON_APPEND_UTF8(&doc, "task_name", "go_task");
    BSON_APPEND_UTF8(&doc, "state", "SUCCESS");
    BSON_APPEND_DATE_TIME(&doc, "created_at", 1700000000123);
    /* Not yet expired: the store deletes expired documents. */
    BSON_APPEND_DATE_TIME(&doc, "delete_at",
                          kiln__realtime_ns() / 1000000 + 3600 * 1000);
    BSON_APPEND_ARRAY_BEGIN(&doc, "results", &arr);
    BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &item);
    BSON_APPEND_UTF8(&item, "type", "int64");
    BSON_APPEND_INT32(&item, "value", 3); /* some drivers shrink it */
    bson_append_document_end(&arr, &item);
    BSON_APPEND_DOCUMENT_BEGIN(&arr, "1", &item);
    BSON_APPEND_UTF8(&item, "type", "json");
    BSON_APPEND_DOCUMENT_BEGIN(&item, "value", &val);
    BSON_APPEND_INT32(&val, "a", 1);
    bson_append_document_end(&item, &val);
    bson_append_document_end(&arr, &item);
    BSON_APPEND_DOCUMENT_BEGIN(&arr, "2", &item);
    BSON_APPEND_UTF8(&item, "type", "[]byte");
    BSON_APPEND_BINARY(&item, "value", BSON_SUBTYPE_BINARY, bin, 3);
    bson_append_document_end(&arr, &item);
    BSON_APPEND_DOCUMENT_BEGIN(&arr, "3", &item);
    BSON_APPEND_UTF8(&item, "type", "[]string");
    BSON_APPEND_NULL(&item, "value"); /* a nil slice */
    bson_append_document_end(&arr, &item);
    bson_append_array_end(&doc, &arr);
    BSON_APPEND_UTF8(&doc, "error", "");
    raw_insert(&f->cfg, &doc);
    bson_destroy(&doc);

    get_ok(f->s, "task_go", &r);
    assert_int_equal(r.state, KILN_STATE_SUCCESS);
    assert_string_equal(r.task_name, "go_task");
    assert_int_equal(r.created_ns, 1700000000123 * 1000000);
    assert_int_equal(r.results.n, 4);
    assert_int_equal(r.results.items[0].type, KILN_TYPE_INT64);
    assert_int_equal(r.results.items[0].v.i, 3);
    assert_int_equal(r.results.items[1].type, KILN_TYPE_STRING);
    assert_non_null(strstr(r.results.items[1].v.s, "\"a\""));
    assert_int_equal(r.results.items[2].type, KILN_TYPE_BYTES);
    assert_int_equal(r.results.items[2].v.arr.n, 3);
    assert_memory_equal(r.results.items[2].v.arr.ptr, bin, 3);
    assert_int_equal(r.results.items[3].type, KILN_TYPE_STRING_SLICE);
    assert_int_equal(r.results.items[3].v.arr.n, 0);
    /* machinery writes none of kiln's own fields; its delete_at is read. */
    assert_null(r.worker);
    assert_true(r.started_ns == 0 && r.finished_ns == 0);
    assert_true(r.delete_ns > r.created_ns);
    assert_int_equal(r.attempts, 0);
    kiln__task_record_release(&r);
    /* The store's later writes obey the rules on it too. */
    set_ok(f->s, "task_go", KILN_STATE_STARTED, NULL, NULL, NULL);
    assert_int_equal(state_of(f->s, "task_go"), KILN_STATE_SUCCESS);
}

/* ---- concurrency ------------------------------------------------------ */

#define THREADS    8
#define WRITES     1000
#define SHARED_IDS 25
#define MAX_FAILS  8

typedef struct worker {
    pthread_t th;
    kiln__store *s;
    int id;
    int failures; /* set_state calls that failed */
    char first_error[256];
} worker;

static void record_failure(worker *w, const kiln_error *err)
{
    if (w->failures++ == 0)
        kiln__strlcpy(w->first_error, err->message, sizeof(w->first_error));
}

static void write_as(worker *w, const char *uuid, kiln_task_state st,
                     const kiln__values *res, const char *error)
{
    kiln__state_update u = {uuid, "conc", st, res, error, false};
    kiln_error err;

    if (kiln__store_set(w->s, &u, &err) != KILN_OK)
        record_failure(w, &err);
}

/* Distinct tasks: each thread runs its own tasks through their lives. */
static void *distinct_main(void *arg)
{
    worker *w = arg;
    kiln__values res = {0};
    kiln__value v = {.type = KILN_TYPE_INT64};
    char uuid[64];

    for (int i = 0; i < WRITES / 4; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_d_%d_%d", w->id, i);
        v.v.i = (int64_t)w->id * 100000 + i;
        kiln__values_clear(&res);
        if (kiln__values_add(&res, &v, NULL) != KILN_OK)
            w->failures++;
        write_as(w, uuid, KILN_STATE_PENDING, NULL, NULL);
        write_as(w, uuid, KILN_STATE_RECEIVED, NULL, NULL);
        write_as(w, uuid, KILN_STATE_STARTED, NULL, NULL);
        write_as(w, uuid, KILN_STATE_SUCCESS, &res, NULL);
    }
    kiln__values_clear(&res);
    return NULL;
}

static void run_workers(kiln__store *s, void *(*fn)(void *), worker *ws)
{
    for (int i = 0; i < THREADS; i++) {
        ws[i] = (worker){.s = s, .id = i};
        assert_int_equal(pthread_create(&ws[i].th, NULL, fn, &ws[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(ws[i].th, NULL), 0);
    for (int i = 0; i < THREADS; i++)
        if (ws[i].failures > 0)
            fail_msg("thread %d: %d writes failed; first: %s", i,
                     ws[i].failures, ws[i].first_error);
}

static void test_concurrent_distinct(void **state)
{
    fixture *f = *state;
    worker ws[THREADS];
    kiln__task_record r;
    char uuid[64];
    int64_t t0 = now_ms();

    run_workers(f->s, distinct_main, ws);
    print_message("%d writes on distinct tasks in %" PRId64 " ms\n",
                  THREADS * WRITES, now_ms() - t0);
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < WRITES / 4; i++) {
            (void)snprintf(uuid, sizeof(uuid), "task_d_%d_%d", t, i);
            get_ok(f->s, uuid, &r);
            assert_int_equal(r.state, KILN_STATE_SUCCESS);
            assert_int_equal(r.results.n, 1);
            assert_int_equal(r.results.items[0].v.i, (int64_t)t * 100000 + i);
            kiln__task_record_release(&r);
        }
    }
}

/* Shared tasks: every thread writes every state, finishing ones included,
 * to the same UUIDs in its own order. Each finishing write carries the
 * thread's id, so the final document tells whose write won, and it must
 * be a finishing one, whole (state, results and error from one write). */
static void *shared_main(void *arg)
{
    static const kiln_task_state seq[] = {
        KILN_STATE_PENDING, KILN_STATE_RECEIVED, KILN_STATE_STARTED,
        KILN_STATE_RETRY,   KILN_STATE_RECEIVED, KILN_STATE_STARTED,
        KILN_STATE_SUCCESS, KILN_STATE_RECEIVED, KILN_STATE_PENDING,
        KILN_STATE_FAILURE};
    worker *w = arg;
    kiln__values res = {0};
    kiln__value v = {.type = KILN_TYPE_INT64, .v.i = w->id};
    char uuid[64], error[32];
    int n = 0;

    if (kiln__values_add(&res, &v, NULL) != KILN_OK)
        w->failures++;
    (void)snprintf(error, sizeof(error), "thread %d", w->id);
    for (int round = 0; n < WRITES; round++) {
        for (int k = 0; k < SHARED_IDS && n < WRITES; k++) {
            int id = (k + w->id * 3) % SHARED_IDS;
            /* Odd threads finish with FAILURE first, even with SUCCESS. */
            kiln_task_state st = seq[(size_t)round % KILN__ARRAY_LEN(seq)];
            if (w->id % 2 == 1 && kiln__state_finished(st))
                st = st == KILN_STATE_SUCCESS ? KILN_STATE_FAILURE
                                               : KILN_STATE_SUCCESS;
            (void)snprintf(uuid, sizeof(uuid), "task_s_%d", id);
            write_as(w, uuid, st, st == KILN_STATE_SUCCESS ? &res : NULL,
                     st == KILN_STATE_FAILURE ? error : NULL);
            n++;
        }
    }
    kiln__values_clear(&res);
    return NULL;
}

static void test_concurrent_same(void **state)
{
    fixture *f = *state;
    worker ws[THREADS];
    kiln__task_record r;
    char uuid[64], want[32];
    int64_t t0 = now_ms();

    run_workers(f->s, shared_main, ws);
    print_message("%d writes on %d shared tasks in %" PRId64 " ms\n",
                  THREADS * WRITES, SHARED_IDS, now_ms() - t0);
    for (int k = 0; k < SHARED_IDS; k++) {
        (void)snprintf(uuid, sizeof(uuid), "task_s_%d", k);
        get_ok(f->s, uuid, &r);
        if (!kiln__state_finished(r.state))
            fail_msg("%s ended %s", uuid, kiln__state_name(r.state));
        if (r.state == KILN_STATE_SUCCESS) {
            assert_int_equal(r.results.n, 1);
            assert_int_equal(r.results.items[0].v.i % 2, 0);
            assert_string_equal(r.error, "");
        } else {
            assert_int_equal(r.results.n, 0);
            assert_int_equal(sscanf(r.error, "thread %31s", want), 1);
            assert_int_equal(atoi(want) % 2, 1);
        }
        kiln__task_record_release(&r);
    }
}

/* ---- expiry ----------------------------------------------------------- */

/* The index named delete_at_1 on {delete_at: 1}; *ttl tells whether it has
 * expireAfterSeconds (and it must be 0 then). */
static bool find_ttl_index(const kiln_config *cfg, bool *ttl)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll =
        mongoc_client_get_collection(c, cfg->mongodb_database, "tasks");
    mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(coll, NULL);
    const bson_t *idx;
    bson_iter_t it;
    bool found = false;

    while (mongoc_cursor_next(cur, &idx)) {
        if (!bson_iter_init_find(&it, idx, "name") ||
            strcmp(bson_iter_utf8(&it, NULL), "delete_at_1") != 0)
            continue;
        found = true;
        assert_true(bson_iter_init(&it, idx));
        assert_true(bson_iter_find_descendant(&it, "key.delete_at", &it));
        *ttl = bson_iter_init_find(&it, idx, "expireAfterSeconds");
        if (*ttl)
            assert_int_equal(bson_iter_as_int64(&it), 0);
    }
    mongoc_cursor_destroy(cur);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    return found;
}

static void test_ttl_index(void **state)
{
    fixture *f = *state;
    bool ttl = false;

    set_ok(f->s, "t", KILN_STATE_FAILURE, "x", NULL, "e");
    assert_true(find_ttl_index(&f->cfg, &ttl));
    print_message("index delete_at_1 %s\n",
                  ttl ? "has expireAfterSeconds 0 (the server expires)"
                      : "is plain (the store expires)");
}

/* Documents past delete_at go: by the server's TTL monitor where the index
 * is a TTL index (within a minute, MongoDB's period, not waited for here),
 * else by the store's own sweeping thread, which this test waits for. */
static void test_expired_documents_go(void **state)
{
    fixture *f = *state;
    kiln__task_record r;
    kiln_error err;
    kiln__store *s;
    bool ttl = false;

    f->cfg.results_expire_s = 1;
    s = kiln__mongo_store_new(&f->cfg, &err);
    assert_non_null(s);
    set_ok(s, "t_old", KILN_STATE_SUCCESS, "x", NULL, NULL);
    set_ok(s, "t_open", KILN_STATE_STARTED, "x", NULL, NULL);
    assert_true(find_ttl_index(&f->cfg, &ttl));
    if (!ttl) {
        kiln_err rc = KILN_OK;

        /* The store's sweeper runs once a period (here 1 s) on its own
         * thread: t_old goes within a few periods, and no write waits. */
        for (int i = 0; i < 300 && rc == KILN_OK; i++) {
            usleep(100 * 1000);
            if ((rc = kiln__store_get(s, "t_old", &r, &err)) == KILN_OK)
                kiln__task_record_release(&r);
        }
        assert_int_equal(rc, KILN_ENOTFOUND);
        set_ok(s, "t_new", KILN_STATE_SUCCESS, "x", NULL, NULL);
        assert_int_equal(state_of(s, "t_new"), KILN_STATE_SUCCESS);
    }
    /* Unfinished tasks have no delete_at and stay. */
    assert_int_equal(state_of(s, "t_open"), KILN_STATE_STARTED);
    kiln__store_destroy(s);
}

static void test_no_expiry_when_zero(void **state)
{
    fixture *f = *state;
    kiln_error err;
    kiln__store *s;
    bool ttl;
    bson_t *doc;

    f->cfg.results_expire_s = 0;
    s = kiln__mongo_store_new(&f->cfg, &err);
    assert_non_null(s);
    set_ok(s, "t", KILN_STATE_SUCCESS, "x", NULL, NULL);
    doc = raw_doc(&f->cfg, "t");
    assert_non_null(doc);
    assert_false(doc_has(doc, "delete_at", BSON_TYPE_DATE_TIME));
    assert_false(find_ttl_index(&f->cfg, &ttl));
    bson_destroy(doc);
    kiln__store_destroy(s);
}

/* ---- failures --------------------------------------------------------- */

static void test_unreachable_fails_fast_without_password(void **state)
{
    kiln_config cfg;
    kiln__state_update u = {"t", "x", KILN_STATE_PENDING, NULL, NULL, false};
    kiln__task_record r;
    kiln_error err;
    kiln__store *s;
    int64_t t0;

    (void)state;
    make_cfg(&cfg);
    /* Port 1 refuses at once; nothing listens there. */
    (void)snprintf(cfg.mongodb_url, sizeof(cfg.mongodb_url),
                   "mongodb://kiln:%s@127.0.0.1:1/", PASSWORD);
    cfg.connect_timeout_ms = 500;
    log_seen[0] = '\0';
    kiln_log_set_sink(capture_sink, NULL);
    kiln_log_set_level(KILN_LOG_DEBUG);
    s = kiln__mongo_store_new(&cfg, &err);
    assert_non_null(s);
    t0 = now_ms();
    assert_int_equal(kiln__store_set(s, &u, &err), KILN_ESTORE);
    assert_true(now_ms() - t0 < 3000);
    assert_null(strstr(err.message, PASSWORD));
    t0 = now_ms();
    assert_int_equal(kiln__store_get(s, "t", &r, &err), KILN_ESTORE);
    assert_true(now_ms() - t0 < 3000);
    assert_null(strstr(err.message, PASSWORD));
    t0 = now_ms();
    {
        kiln__state_update two[2] = {u, u};
        kiln_err st[2] = {KILN_OK, KILN_OK};
        two[1].uuid = "t2";
        assert_int_equal(kiln__store_add_pending(s, two, 2, st, &err),
                         KILN_ESTORE);
        assert_int_equal(st[0], KILN_ESTORE);
        assert_int_equal(st[1], KILN_ESTORE);
    }
    assert_true(now_ms() - t0 < 3000);
    assert_null(strstr(err.message, PASSWORD));
    print_message("unreachable: %s\n", err.message);
    kiln__store_destroy(s);

    (void)snprintf(cfg.mongodb_url, sizeof(cfg.mongodb_url),
                   "mongodb://kiln:%s@/", PASSWORD); /* no host */
    assert_null(kiln__mongo_store_new(&cfg, &err));
    assert_int_equal(err.code, KILN_EINVAL);
    assert_null(strstr(err.message, PASSWORD));
    kiln_log_set_level(KILN_LOG_INFO);
    kiln_log_set_sink(NULL, NULL);
    assert_null(strstr(log_seen, PASSWORD));
}

/* Secrets as users write them reach neither an error text nor a log line
 * (the DEBUG line naming the store, libmongoc's own lines): a password
 * with quotes, angle brackets and a backtick, and the URI options that
 * carry a secret. Each secret holds "Zq9". */
static void test_secrets_never_shown(void **state)
{
    static const char *const bad_urls[] = {
        /* libmongoc refuses these, and the error quotes the URL. */
        "mongodb://kiln:Zq9<a>\"s`w@127.0.0.1:1,/",
        "mongodb://kiln:Zq9@s?s#w@127.0.0.1:1/",
        "mongodb://kiln:Zq9>`@127.0.0.1:1/?tlsInsecure=true"
        "&tlsAllowInvalidHostnames=true&tlsCertificateKeyFilePassword=Zq9",
    };
    kiln_config cfg;
    kiln__state_update u = {"t", "x", KILN_STATE_PENDING, NULL, NULL, false};
    kiln_error err;
    kiln__store *s;

    (void)state;
    make_cfg(&cfg);
    cfg.connect_timeout_ms = 300;
    log_seen[0] = '\0';
    kiln_log_set_sink(capture_sink, NULL);
    kiln_log_set_level(KILN_LOG_DEBUG);
    /* Port 1 refuses at once; nothing listens there. */
    kiln__strlcpy(
        cfg.mongodb_url,
        "mongodb://kiln:Zq9<a>\"s`w@127.0.0.1:1/?authMechanismProperties"
        "=AWS_SESSION_TOKEN:Zq9&tlsCertificateKeyFilePassword=Zq9"
        "&appname=kiln-test",
        sizeof(cfg.mongodb_url));
    s = kiln__mongo_store_new(&cfg, &err);
    assert_non_null(s);
    assert_int_equal(kiln__store_set(s, &u, &err), KILN_ESTORE);
    assert_null(strstr(err.message, "Zq9"));
    kiln__store_destroy(s);
    for (size_t i = 0; i < KILN__ARRAY_LEN(bad_urls); i++) {
        kiln__strlcpy(cfg.mongodb_url, bad_urls[i], sizeof(cfg.mongodb_url));
        assert_null(kiln__mongo_store_new(&cfg, &err));
        assert_int_equal(err.code, KILN_EINVAL);
        if (strstr(err.message, "Zq9") != NULL)
            fail_msg("secret shown: %s", err.message);
        assert_non_null(strstr(err.message, "***"));
    }
    kiln_log_set_level(KILN_LOG_INFO);
    kiln_log_set_sink(NULL, NULL);
    /* The DEBUG line was written, with its URL masked. */
    assert_non_null(strstr(log_seen, "mongodb store: mongodb://kiln:***@"));
    if (strstr(log_seen, "Zq9") != NULL)
        fail_msg("secret logged: %s", log_seen);
}

static void run_cmd(const char *var)
{
    const char *cmd = getenv(var);
    int rc;

    if (cmd == NULL || cmd[0] == '\0')
        fail_msg("%s is not set: run this test with scripts/with-ferretdb.sh "
                 "(or give the commands that stop and start your server)",
                 var);
    rc = system(cmd); /* NOLINT(concurrency-mt-unsafe): test thread only */
    if (rc != 0)
        fail_msg("%s ('%s') exited with %d", var, cmd, rc);
}

#define RESTART_TASKS 20

/* The server stops with tasks in flight: calls fail with KILN_ESTORE
 * within the configured timeout while it is down, and once it is back
 * every state written before is there and the tasks can finish. */
static void test_server_restart(void **state)
{
    fixture *f = *state;
    kiln__state_update u = {"task_down", "x", KILN_STATE_STARTED, NULL, NULL, false};
    kiln__values res = {0};
    kiln__task_record r;
    kiln_error err;
    kiln__store *s;
    char uuid[64];
    int64_t t0;
    int tries = 0;

    f->cfg.connect_timeout_ms = 1000;
    s = kiln__mongo_store_new(&f->cfg, &err);
    assert_non_null(s);
    add_i64(&res, KILN_TYPE_INT64, INT64_MAX);
    for (int i = 0; i < RESTART_TASKS; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_r_%d", i);
        set_ok(s, uuid, KILN_STATE_STARTED, "x", NULL, NULL);
        if (i % 2 == 0)
            set_ok(s, uuid, KILN_STATE_SUCCESS, "x", &res, NULL);
    }
    run_cmd("KILN_TEST_MONGODB_STOP");
    for (int i = 0; i < 3; i++) {
        t0 = now_ms();
        assert_int_equal(kiln__store_set(s, &u, &err), KILN_ESTORE);
        assert_int_equal(kiln__store_get(s, "task_r_0", &r, &err), KILN_ESTORE);
        if (now_ms() - t0 > 5000)
            fail_msg("two calls took %" PRId64 " ms while down", now_ms() - t0);
    }
    print_message("while down: %s\n", err.message);
    run_cmd("KILN_TEST_MONGODB_START");
    /* The first calls may meet a connection the restart closed. */
    while (kiln__store_set(s, &u, &err) != KILN_OK && ++tries < 20)
        usleep(250 * 1000);
    if (tries >= 20)
        fail_msg("no write succeeded after the restart: %s", err.message);
    for (int i = 0; i < RESTART_TASKS; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_r_%d", i);
        get_ok(s, uuid, &r);
        assert_int_equal(r.state, i % 2 == 0 ? KILN_STATE_SUCCESS
                                             : KILN_STATE_STARTED);
        if (i % 2 == 0)
            assert_values_equal(&res, &r.results);
        kiln__task_record_release(&r);
        set_ok(s, uuid, KILN_STATE_SUCCESS, "x", &res, NULL);
        assert_int_equal(state_of(s, uuid), KILN_STATE_SUCCESS);
    }
    kiln__values_clear(&res);
    kiln__store_destroy(s);
}

/* ---- the public API for producers ------------------------------------- */

typedef struct late_writer {
    pthread_t th;
    kiln__store *s;
    int failures;
} late_writer;

/* Moves task_late through its life while the test thread waits. */
static void *late_main(void *arg)
{
    static const kiln_task_state seq[] = {
        KILN_STATE_RECEIVED, KILN_STATE_STARTED, KILN_STATE_SUCCESS};
    late_writer *w = arg;
    kiln__values res = {0};
    kiln__value v = {.type = KILN_TYPE_UINT64, .v.u = UINT64_MAX};

    if (kiln__values_add(&res, &v, NULL) != KILN_OK)
        w->failures++;
    for (size_t i = 0; i < KILN__ARRAY_LEN(seq); i++) {
        kiln__state_update u = {"task_late", "late", seq[i], NULL, NULL, false};

        usleep(150 * 1000);
        u.results = seq[i] == KILN_STATE_SUCCESS ? &res : NULL;
        if (kiln__store_set(w->s, &u, NULL) != KILN_OK)
            w->failures++;
    }
    kiln__values_clear(&res);
    return NULL;
}

static void test_public_get_and_wait(void **state)
{
    fixture *f = *state;
    late_writer w = {.s = f->s};
    kiln_result *res = (kiln_result *)&w; /* must be reset to NULL */
    kiln_error err;
    kiln_store *st;
    uint64_t u = 0;
    int64_t t0;

    st = kiln_store_new(&f->cfg, &err);
    if (st == NULL)
        fail_msg("kiln_store_new: %s", err.message);
    assert_int_equal(kiln_store_get_result(st, "task_late", &res, &err),
                     KILN_ENOTFOUND);
    assert_null(res);
    assert_int_equal(kiln_store_wait_result(st, "task_late", 100, &res, &err),
                     KILN_ETIMEDOUT);
    assert_non_null(strstr(err.message, "nothing recorded"));

    set_ok(f->s, "task_late", KILN_STATE_PENDING, "late", NULL, NULL);
    assert_int_equal(kiln_store_get_result(st, "task_late", &res, &err),
                     KILN_OK);
    assert_int_equal(kiln_result_state(res), KILN_STATE_PENDING);
    assert_false(kiln_result_finished(res));
    assert_string_equal(kiln_result_task_name(res), "late");
    assert_int_equal(kiln_signature_arg_count(kiln_result_values(res)), 0);
    kiln_result_free(res);

    assert_int_equal(pthread_create(&w.th, NULL, late_main, &w), 0);
    t0 = now_ms();
    assert_int_equal(kiln_store_wait_result(st, "task_late", 10000, &res, &err),
                     KILN_OK);
    assert_int_equal(pthread_join(w.th, NULL), 0);
    assert_int_equal(w.failures, 0);
    assert_true(now_ms() - t0 >= 400);
    assert_int_equal(kiln_result_state(res), KILN_STATE_SUCCESS);
    assert_string_equal(kiln_task_state_name(kiln_result_state(res)),
                        "SUCCESS");
    assert_string_equal(kiln_result_uuid(res), "task_late");
    assert_string_equal(kiln_result_error(res), "");
    assert_true(kiln_result_updated_at(res) >= kiln_result_created_at(res));
    assert_int_equal(kiln_signature_arg_count(kiln_result_values(res)), 1);
    assert_int_equal(
        kiln_signature_arg_uint64(kiln_result_values(res), 0, &u, &err),
        KILN_OK);
    assert_true(u == UINT64_MAX);
    kiln_result_free(res);

    /* A finished task is returned at once. */
    t0 = now_ms();
    assert_int_equal(kiln_store_wait_result(st, "task_late", 0, &res, &err),
                     KILN_OK);
    assert_true(now_ms() - t0 < 1000);
    kiln_result_free(res);
    kiln_store_free(st);

    f->cfg.store = KILN_STORE_NONE;
    assert_null(kiln_store_new(&f->cfg, &err));
    assert_int_equal(err.code, KILN_EINVAL);
    kiln_result_free(NULL);
    kiln_store_free(NULL);
}

/* What kiln_result says of where and when a task ran, against the
 * document's own fields: the worker ("host:pid" of this process, which
 * wrote it), the last start, the finish and the expiry. */
static void test_public_record_fields(void **state)
{
    fixture *f = *state;
    char host[256], me[320];
    kiln_result *res;
    kiln_error err;
    kiln_store *st;
    int64_t first_start;
    bson_t *doc;

    assert_int_equal(gethostname(host, sizeof(host)), 0);
    host[sizeof(host) - 1] = '\0';
    (void)snprintf(me, sizeof(me), "%s:%ld", host, (long)getpid());
    if ((st = kiln_store_new(&f->cfg, &err)) == NULL)
        fail_msg("kiln_store_new: %s", err.message);

    /* PENDING only: no worker, no start, no finish, no expiry yet. */
    set_ok(f->s, "task_f", KILN_STATE_PENDING, "f", NULL, NULL);
    assert_int_equal(kiln_store_get_result(st, "task_f", &res, &err), KILN_OK);
    assert_string_equal(kiln_result_worker(res), "");
    assert_true(kiln_result_started_at(res) == 0);
    assert_true(kiln_result_finished_at(res) == 0);
    assert_true(kiln_result_delete_at(res) == 0);
    assert_int_equal(kiln_result_attempts(res), 0);
    kiln_result_free(res);

    /* Started, retried, started again, finished. */
    set_ok(f->s, "task_f", KILN_STATE_STARTED, "f", NULL, NULL);
    assert_int_equal(kiln_store_get_result(st, "task_f", &res, &err), KILN_OK);
    assert_string_equal(kiln_result_worker(res), me);
    first_start = kiln_result_started_at(res);
    assert_true(first_start >= kiln_result_created_at(res));
    assert_true(kiln_result_finished_at(res) == 0);
    kiln_result_free(res);
    usleep(5000); /* the store keeps milliseconds: two starts apart */
    set_ok(f->s, "task_f", KILN_STATE_RETRY, "f", NULL, "again");
    set_ok(f->s, "task_f", KILN_STATE_STARTED, "f", NULL, NULL);
    set_ok(f->s, "task_f", KILN_STATE_FAILURE, "f", NULL, "gave up");
    assert_int_equal(kiln_store_get_result(st, "task_f", &res, &err), KILN_OK);
    assert_int_equal(kiln_result_state(res), KILN_STATE_FAILURE);
    assert_int_equal(kiln_result_attempts(res), 2);
    assert_string_equal(kiln_result_worker(res), me);
    assert_true(kiln_result_started_at(res) > first_start);
    assert_true(kiln_result_finished_at(res) >= kiln_result_started_at(res));
    assert_true(kiln_result_delete_at(res) ==
                kiln_result_finished_at(res) + (int64_t)3600 * 1000000000);
    /* The same instants as the document's own fields. */
    doc = raw_doc(&f->cfg, "task_f");
    assert_non_null(doc);
    assert_true(kiln_result_started_at(res) ==
                doc_date(doc, "started_at") * 1000000);
    assert_true(kiln_result_finished_at(res) ==
                doc_date(doc, "finished_at") * 1000000);
    assert_true(kiln_result_delete_at(res) ==
                doc_date(doc, "delete_at") * 1000000);
    bson_destroy(doc);
    kiln_result_free(res);

    kiln_store_free(st);
    assert_string_equal(kiln_result_worker(NULL), "");
    assert_true(kiln_result_started_at(NULL) == 0);
    assert_true(kiln_result_finished_at(NULL) == 0);
    assert_true(kiln_result_delete_at(NULL) == 0);
}

/* With KILN_RESULTS_EXPIRE=0 a finished task is kept: no delete_at. */
static void test_public_no_delete_at_when_kept(void **state)
{
    fixture *f = *state;
    kiln_result *res;
    kiln_error err;
    kiln_store *st;
    kiln__store *s;

    f->cfg.results_expire_s = 0;
    if ((s = kiln__mongo_store_new(&f->cfg, &err)) == NULL)
        fail_msg("mongo_store_new: %s", err.message);
    set_ok(s, "task_k", KILN_STATE_SUCCESS, "k", NULL, NULL);
    kiln__store_destroy(s);
    if ((st = kiln_store_new(&f->cfg, &err)) == NULL)
        fail_msg("kiln_store_new: %s", err.message);
    assert_int_equal(kiln_store_get_result(st, "task_k", &res, &err), KILN_OK);
    assert_true(kiln_result_finished_at(res) > 0);
    assert_true(kiln_result_delete_at(res) == 0);
    kiln_result_free(res);
    kiln_store_free(st);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
/* The rules again through the path MongoDB takes (see store/mongo.h). */
#define C(fn)                                                              \
    {                                                                      \
#fn " (conditional upsert)", fn, setup_conditional, teardown, NULL \
    }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_is_set),
        T(test_lifecycle),
        T(test_finished_never_changes),
        T(test_pending_after_received_is_ignored),
        T(test_retry_then_received),
        T(test_add_pending_bulk),
        T(test_set_states_bulk),
        C(test_set_states_bulk),
        T(test_send_failed),
        T(test_failure_keeps_utf8_error),
        T(test_bad_calls),
        C(test_lifecycle),
        C(test_finished_never_changes),
        C(test_pending_after_received_is_ignored),
        C(test_retry_then_received),
        C(test_send_failed),
        C(test_reads_machinery_document),
        T(test_results_every_type),
        T(test_slice_results_from_task),
        T(test_negative_zero),
        T(test_results_bson_types),
        T(test_reads_machinery_document),
        T(test_concurrent_distinct),
        T(test_concurrent_same),
        T(test_ttl_index),
        T(test_expired_documents_go),
        T(test_no_expiry_when_zero),
        cmocka_unit_test(test_unreachable_fails_fast_without_password),
        cmocka_unit_test(test_secrets_never_shown),
        T(test_public_get_and_wait),
        T(test_public_record_fields),
        T(test_public_no_delete_at_when_kept),
        T(test_server_restart),
    };
    int rc;

    /* KILN_TEST_FILTER=test_lifecycle runs the tests whose names match. */
    if (getenv("KILN_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_TEST_FILTER"));
    mongoc_init();
    kiln_log_set_level(KILN_LOG_WARN);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    mongoc_cleanup();
    return rc;
}
