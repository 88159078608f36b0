/* The MongoDB store as a loaded object (store/plugin.h): a worker without
 * a store never maps libmongoc; a store object that cannot be loaded is a
 * clear error, not an exit; the build's object is found and loaded. The
 * order of the tests matters: the last one loads the object for good. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "kiln/store_mongo.h"
#include "mocks/mocks.h"
#include "workerpool/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QUEUE "load_tasks"

static atomic_int runs;

static kiln__broker *factory(void *ctx, const kiln_config *cfg, kiln_error *err)
{
    (void)cfg;
    return kiln__mock_broker_new(ctx, err);
}

static kiln_err work(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    atomic_fetch_add(&runs, 1);
    return KILN_OK;
}

static void config(kiln_config *cfg)
{
    kiln_config_init(cfg);
    strcpy(cfg->queue, QUEUE);
    strcpy(cfg->binding_key, QUEUE);
    strcpy(cfg->dead_letter_queue, QUEUE ".dead");
    strcpy(cfg->dead_letter_exchange, QUEUE ".dlx");
    cfg->concurrency = 8;
    cfg->log_level = KILN_LOG_OFF;
}

/* Whether a file whose name holds `part` is mapped into this process. */
static bool mapped(const char *part)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    bool found = false;

    assert_non_null(f);
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, part) != NULL;
    fclose(f);
    return found;
}

typedef struct {
    kiln_pool *pool;
    kiln_err rc;
    kiln_error err;
} runner;

static void *start_main(void *arg)
{
    runner *r = arg;

    r->rc = kiln_pool_start(r->pool, &r->err);
    return NULL;
}

static void test_worker_without_store_maps_no_mongoc(void **state)
{
    kiln_config cfg;
    kiln_error err;
    kiln__mock_server *srv;
    kiln__broker *producer;
    runner r = {0};
    pthread_t th;

    (void)state;
    config(&cfg);
    cfg.store = KILN_STORE_NONE;
    srv = kiln__mock_server_new(&err);
    assert_non_null(srv);
    producer = kiln__mock_broker_new(srv, &err);
    assert_non_null(producer);
    assert_int_equal(producer->ops->connect(producer, &err), KILN_OK);
    assert_int_equal(producer->ops->declare(producer, &cfg, &err), KILN_OK);
    for (int i = 0; i < 100; i++) {
        kiln_signature *sig = kiln_signature_new("work", &err);
        const kiln_signature *one[1] = {sig};
        assert_non_null(sig);
        assert_int_equal(
            kiln__send_tasks(&cfg, producer, NULL, one, 1, NULL, &err),
            KILN_OK);
        kiln_signature_free(sig);
    }
    r.pool = kiln_pool_new(&cfg, 0, "test", &err);
    assert_non_null(r.pool);
    kiln__pool_set_broker_factory(r.pool, factory, srv);
    assert_int_equal(kiln_pool_register(r.pool, "work", work, NULL, NULL, &err),
                     KILN_OK);
    assert_int_equal(pthread_create(&th, NULL, start_main, &r), 0);
    assert_int_equal(kiln__mock_server_wait_idle(srv, QUEUE, 20000), KILN_OK);
    assert_int_equal(atomic_load(&runs), 100);

    /* Running, every task done: nothing of the store is in the process. */
    assert_false(mapped("libmongoc"));
    assert_false(mapped("libbson"));
    assert_false(mapped("libkiln-mongo"));
    assert_false(mapped("libicu"));

    kiln_pool_stop(r.pool);
    pthread_join(th, NULL);
    assert_int_equal(r.rc, KILN_OK);
    kiln_pool_free(r.pool);
    kiln__broker_destroy(producer);
    kiln__mock_server_free(srv);
}

static void test_missing_store_object_is_an_error(void **state)
{
    kiln_config cfg;
    kiln_error err = {0};

    (void)state;
    config(&cfg);
    cfg.store = KILN_STORE_MONGODB;
    strcpy(cfg.store_plugin, "/nonexistent/libkiln-mongo.so.0");

    assert_null(kiln_pool_new(&cfg, 0, "test", &err));
    assert_int_equal(err.code, KILN_ESTORE);
    assert_non_null(strstr(err.message, "KILN_STORE=mongodb"));
    assert_non_null(strstr(err.message, "KILN_STORE_PLUGIN"));
    assert_non_null(strstr(err.message, "/nonexistent/libkiln-mongo.so.0"));
    assert_non_null(strstr(err.message, "No such file"));

    err = (kiln_error){0};
    assert_null(kiln_store_new(&cfg, &err));
    assert_int_equal(err.code, KILN_ESTORE);
    assert_non_null(strstr(err.message, "/nonexistent/libkiln-mongo.so.0"));
    assert_false(mapped("libmongoc"));
}

/* A file that loads but is not a store object (libcjson, which every
 * kiln program maps anyway). */
static void test_wrong_object_is_an_error(void **state)
{
    kiln_config cfg;
    kiln_error err = {0};

    (void)state;
    config(&cfg);
    cfg.store = KILN_STORE_MONGODB;
    strcpy(cfg.store_plugin, "libcjson.so.1");
    assert_null(kiln_store_new(&cfg, &err));
    assert_int_equal(err.code, KILN_ESTORE);
    assert_non_null(strstr(err.message, "not a kiln store object"));
}

/* Without KILN_STORE_PLUGIN the build's object is found (this program's
 * RUNPATH names the build folder) and a store is made without a server. */
static void test_store_object_found_and_loaded(void **state)
{
    kiln_config cfg;
    kiln_error err = {0};
    kiln_store *st;

    (void)state;
    config(&cfg);
    cfg.store = KILN_STORE_MONGODB;
    st = kiln_store_new(&cfg, &err);
    if (st == NULL)
        fail_msg("kiln_store_new: %s", err.message);
    assert_true(mapped("libkiln-mongo.so"));
    assert_true(mapped("libmongoc"));
    kiln_store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_without_store_maps_no_mongoc),
        cmocka_unit_test(test_missing_store_object_is_an_error),
        cmocka_unit_test(test_wrong_object_is_an_error),
        cmocka_unit_test(test_store_object_found_and_loaded),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
