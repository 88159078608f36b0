/* Worker pools recording task state in a real MongoDB wire-protocol
 * server (scripts/with-ferretdb.sh starts a private FerretDB and sets
 * KILN_TEST_MONGODB_URL), beside the private RabbitMQ: the lifecycle of a
 * succeeding, a failing, an unregistered and a malformed task; typed
 * results read back exactly; a send that fails recorded FAILURE, not
 * PENDING for ever; 8 producer threads x 5,000 tasks with every
 * final state right (KILN_IT_STORE_TASKS sets the 5,000: the
 * ThreadSanitizer pass of make test runs 500, since at FerretDB's pace the
 * full load takes minutes there and only repeats the same paths); the store
 * stopped mid-run and started again with no state lost.
 *
 * Workers run as separate processes (prog_worker), so every read here is
 * a read from another process, through the public kiln_store API. A raw
 * libmongoc client counts documents independently of the code under
 * test. Each test has a database of its own, dropped in teardown. */
#include "test/support/pool_it_store.h"

#include <pthread.h>

#define PRODUCERS      8
#define PRODUCER_BATCH 100

/* Tasks each producer sends: KILN_IT_STORE_TASKS, a multiple of
 * PRODUCER_BATCH, or 5,000. */
static size_t tasks_per_producer(void)
{
    const char *v = getenv("KILN_IT_STORE_TASKS");
    char *end;
    unsigned long n;

    if (v == NULL || v[0] == '\0')
        return 5000;
    n = strtoul(v, &end, 10);
    if (*end != '\0' || n == 0 || n % PRODUCER_BATCH != 0 || n > 1000000)
        fail_msg("KILN_IT_STORE_TASKS=\"%s\": expected a multiple of %d", v,
                 PRODUCER_BATCH);
    return (size_t)n;
}

static int setup_lifecycle(void **state)
{
    return it_setup_store(state, "st-life");
}

static int setup_load(void **state)
{
    return it_setup_store(state, "st-load");
}

static int setup_outage(void **state)
{
    return it_setup_store(state, "st-out");
}

static mongoc_client_t *raw_client(void)
{
    mongoc_client_t *c = mongoc_client_new(it_mongo_url());

    assert_non_null(c);
    mongoc_client_set_error_api(c, MONGOC_ERROR_API_VERSION_2);
    return c;
}

/* Documents of the test's `tasks` collection in `state` (NULL: all). */
static long long raw_count(const it_fix *f, const char *state)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll =
        mongoc_client_get_collection(c, f->cfg.mongodb_database, "tasks");
    bson_t filter = BSON_INITIALIZER;
    bson_error_t e;
    int64_t n;

    if (state != NULL)
        BSON_APPEND_UTF8(&filter, "state", state);
    n = mongoc_collection_count_documents(coll, &filter, NULL, NULL, NULL, &e);
    if (n < 0)
        printf("  count_documents: %s\n", e.message);
    bson_destroy(&filter);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    return (long long)n;
}

static void send_one(it_fix *f, const char *name, it_uuid uuid)
{
    kiln_error err;
    kiln_signature *sig = kiln_signature_new(name, &err);

    assert_non_null(sig);
    kiln__strlcpy(uuid, kiln_signature_uuid(sig), sizeof(it_uuid));
    if (kiln_pool_send_task(it_pool(f), sig, &err) != KILN_OK)
        fail_msg("send %s: %s", name, err.message);
    kiln_signature_free(sig);
}

/* A body whose arguments cannot be decoded, but whose UUID can be read. */
static void publish_malformed(const it_fix *f, const char *uuid)
{
    amqp_connection_state_t c = it_raw_open();
    amqp_basic_properties_t props;
    char body[256];
    int n = snprintf(body, sizeof(body),
                     "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[{\"Type\":"
                     "\"int8\",\"Value\":1000}]}",
                     uuid, IT_TASK_RECORD);

    assert_non_null(c);
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = 2;
    assert_int_equal(
        amqp_basic_publish(c, 1, amqp_cstring_bytes(f->cfg.exchange),
                           amqp_cstring_bytes(f->cfg.binding_key), 0, 0, &props,
                           (amqp_bytes_t){(size_t)n, body}),
        AMQP_STATUS_OK);
    it_raw_close(c);
}

static void check_results(const kiln_result *res)
{
    const kiln_signature *v = kiln_result_values(res);
    static const unsigned char bytes[] = {0, 1, 0x7f, 0x80, 0xff};
    static const struct {
        kiln_type type;
        int64_t value;
    } ints[] = {{KILN_TYPE_INT, IT_RESULT_INT},
                {KILN_TYPE_INT8, INT8_MIN},
                {KILN_TYPE_INT16, INT16_MIN},
                {KILN_TYPE_INT32, INT32_MIN},
                {KILN_TYPE_INT64, INT64_MIN}};
    static const struct {
        kiln_type type;
        uint64_t value;
    } uints[] = {{KILN_TYPE_UINT, IT_RESULT_UINT64},
                 {KILN_TYPE_UINT8, UINT8_MAX},
                 {KILN_TYPE_UINT16, UINT16_MAX},
                 {KILN_TYPE_UINT32, UINT32_MAX},
                 {KILN_TYPE_UINT64, IT_RESULT_UINT64}};
    kiln_type t;
    bool b = false;
    int64_t i64;
    uint64_t u64;
    double d;
    const char *s;
    const uint8_t *data;
    size_t n, k = 0;

    assert_int_equal(kiln_signature_arg_count(v), 15);
    assert_int_equal(kiln_signature_arg_type(v, k, &t, NULL), KILN_OK);
    assert_int_equal(t, KILN_TYPE_BOOL);
    assert_int_equal(kiln_signature_arg_bool(v, k++, &b, NULL), KILN_OK);
    assert_true(b);
    for (size_t j = 0; j < KILN__ARRAY_LEN(ints); j++, k++) {
        assert_int_equal(kiln_signature_arg_type(v, k, &t, NULL), KILN_OK);
        assert_int_equal(t, ints[j].type);
        assert_int_equal(kiln_signature_arg_int64(v, k, &i64, NULL), KILN_OK);
        assert_true(i64 == ints[j].value);
    }
    for (size_t j = 0; j < KILN__ARRAY_LEN(uints); j++, k++) {
        assert_int_equal(kiln_signature_arg_type(v, k, &t, NULL), KILN_OK);
        assert_int_equal(t, uints[j].type);
        assert_int_equal(kiln_signature_arg_uint64(v, k, &u64, NULL), KILN_OK);
        assert_true(u64 == uints[j].value);
    }
    assert_int_equal(kiln_signature_arg_type(v, k, &t, NULL), KILN_OK);
    assert_int_equal(t, KILN_TYPE_FLOAT32);
    assert_int_equal(kiln_signature_arg_double(v, k++, &d, NULL), KILN_OK);
    assert_true(d == (double)(float)IT_RESULT_FLOAT);
    assert_int_equal(kiln_signature_arg_type(v, k, &t, NULL), KILN_OK);
    assert_int_equal(t, KILN_TYPE_FLOAT64);
    assert_int_equal(kiln_signature_arg_double(v, k++, &d, NULL), KILN_OK);
    assert_true(d == IT_RESULT_FLOAT);
    assert_int_equal(kiln_signature_arg_string(v, k++, &s, NULL), KILN_OK);
    assert_string_equal(s, IT_RESULT_STRING);
    assert_int_equal(kiln_signature_arg_type(v, k, &t, NULL), KILN_OK);
    assert_int_equal(t, KILN_TYPE_BYTES);
    assert_int_equal(kiln_signature_arg_bytes(v, k, &data, &n, NULL), KILN_OK);
    assert_int_equal(n, sizeof(bytes));
    assert_memory_equal(data, bytes, n);
}

/* PENDING on send; then, from a worker in another process, SUCCESS with
 * typed results, FAILURE with the task's message, FAILURE for an
 * unregistered and for a malformed task (both dead-lettered). */
static void test_lifecycle(void **state)
{
    it_fix *f = *state;
    it_uuid ok, failing, unreg, malformed, results;
    kiln_store *st = it_open_store(f);
    kiln_result *res;
    kiln_error err;
    long ready = 0;

    send_one(f, IT_TASK_RECORD, ok);
    send_one(f, IT_TASK_FAIL, failing);
    send_one(f, "it.nobody", unreg);
    send_one(f, IT_TASK_RESULTS, results);
    {
        kiln_signature *sig = kiln_signature_new("x", &err);
        assert_non_null(sig); /* just for a fresh UUID */
        kiln__strlcpy(malformed, kiln_signature_uuid(sig), sizeof(malformed));
        kiln_signature_free(sig);
    }
    publish_malformed(f, malformed);

    /* No worker yet: sent tasks are PENDING, the raw message unknown. */
    assert_int_equal(kiln_store_get_result(st, ok, &res, &err), KILN_OK);
    assert_int_equal(kiln_result_state(res), KILN_STATE_PENDING);
    assert_string_equal(kiln_result_task_name(res), IT_TASK_RECORD);
    assert_false(kiln_result_finished(res));
    kiln_result_free(res);
    assert_int_equal(kiln_store_get_result(st, malformed, &res, &err),
                     KILN_ENOTFOUND);
    assert_null(res);

    it_start_worker(f, "w1", NULL);
    res = it_expect_final(st, ok, KILN_STATE_SUCCESS, NULL);
    assert_int_equal(kiln_signature_arg_count(kiln_result_values(res)), 0);
    assert_true(kiln_result_updated_at(res) >= kiln_result_created_at(res));
    kiln_result_free(res);
    kiln_result_free(
        it_expect_final(st, failing, KILN_STATE_FAILURE, "asked to fail"));
    kiln_result_free(
        it_expect_final(st, unreg, KILN_STATE_FAILURE, "unregistered task"));
    kiln_result_free(
        it_expect_final(st, malformed, KILN_STATE_FAILURE, "undecodable"));
    res = it_expect_final(st, results, KILN_STATE_SUCCESS, NULL);
    check_results(res);
    kiln_result_free(res);

    /* Failures are dead-lettered as well as recorded. */
    assert_true(it_wait_ready(f->cfg.dead_letter_queue, 3, 10000) == 3);
    assert_true(it_queue_info(f->cfg.queue, &ready, NULL));
    assert_int_equal(ready, 0);
    assert_int_equal(raw_count(f, NULL), 5);
    kiln_store_free(st);
    it_signal(f, 0, SIGTERM);
    (void)it_expect_exit0(f, 0, 20000);
    f->passed = true;
}

/* Sends `sig` (borrowed) through `pool`; the code it returned. */
static kiln_err try_send(kiln_pool *pool, const kiln_signature *sig,
                         kiln_error *err)
{
    kiln_err rc = kiln_pool_send_task(pool, sig, err);

    printf("  send %s: %s%s%s\n", kiln_signature_uuid(sig), kiln_strerror(rc),
           rc == KILN_OK ? "" : ": ", rc == KILN_OK ? "" : err->message);
    return rc;
}

/* A send that fails for certain leaves FAILURE "not sent: ...", not
 * PENDING for ever: a waiter learns at once that the task will not run.
 * Sent again (the same signature, now routable) it is PENDING again and a
 * worker's SUCCESS follows. A send that could not even connect is
 * recorded the same way, and an unregistered task that asks to be ignored
 * ends FAILURE with that reason. */
static void test_send_failure_recorded(void **state)
{
    it_fix *f = *state;
    kiln_store *st = it_open_store(f);
    kiln_config down = f->cfg;
    kiln_signature *sig = it_new_sig(IT_TASK_RECORD, NULL);
    kiln_signature *ign = it_new_sig("it.nobody", NULL);
    kiln_pool *nowhere;
    kiln_result *res;
    kiln_error err;
    long long t0;

    /* Unroutable. */
    assert_int_equal(kiln_signature_set_routing_key(sig, "nobody.bound", NULL),
                     KILN_OK);
    assert_int_equal(try_send(it_pool(f), sig, &err), KILN_EBROKER);
    t0 = it_ms();
    res = it_expect_final(st, kiln_signature_uuid(sig), KILN_STATE_FAILURE,
                          "not sent: ");
    printf("  recorded (read after %lld ms): FAILURE \"%s\"\n", it_ms() - t0,
           kiln_result_error(res));
    assert_non_null(strstr(kiln_result_error(res), "nobody.bound"));
    kiln_result_free(res);

    /* The same task sent again, where a worker takes it. */
    assert_int_equal(
        kiln_signature_set_routing_key(sig, f->cfg.binding_key, NULL), KILN_OK);
    assert_int_equal(try_send(it_pool(f), sig, &err), KILN_OK);
    assert_int_equal(
        kiln_store_get_result(st, kiln_signature_uuid(sig), &res, &err),
        KILN_OK);
    assert_int_equal(kiln_result_state(res), KILN_STATE_PENDING);
    assert_string_equal(kiln_result_error(res), "");
    kiln_result_free(res);
    kiln_signature_set_ignore_unregistered(ign, true);
    assert_int_equal(try_send(it_pool(f), ign, &err), KILN_OK);
    it_start_worker(f, "w1", NULL);
    kiln_result_free(it_expect_final(st, kiln_signature_uuid(sig),
                                     KILN_STATE_SUCCESS, NULL));
    res = it_expect_final(st, kiln_signature_uuid(ign), KILN_STATE_FAILURE,
                          "unregistered task it.nobody, ignored "
                          "(IgnoreWhenTaskNotRegistered)");
    kiln_result_free(res);

    /* No broker to reach. */
    it_closed_url(down.broker_url, sizeof(down.broker_url));
    down.publish_timeout_ms = 1000;
    nowhere = kiln_pool_new(&down, 1, "nowhere", &err);
    assert_non_null(nowhere);
    kiln_signature_free(sig);
    sig = it_new_sig(IT_TASK_RECORD, NULL);
    assert_int_equal(try_send(nowhere, sig, &err), KILN_EBROKER);
    res = it_expect_final(st, kiln_signature_uuid(sig), KILN_STATE_FAILURE,
                          "not sent within 1000 ms");
    kiln_result_free(res);
    kiln_pool_free(nowhere);

    kiln_signature_free(sig);
    kiln_signature_free(ign);
    kiln_store_free(st);
    it_signal(f, 0, SIGTERM);
    (void)it_expect_exit0(f, 0, 20000);
    f->passed = true;
}

typedef struct producer {
    it_fix *f;
    unsigned index;
    size_t n;       /* tasks to send */
    it_uuid *uuids; /* n */
    kiln_err rc;
    kiln_error err;
} producer;

/* Sends its tasks in batches through the shared pool. */
static void *produce(void *arg)
{
    producer *p = arg;
    kiln_signature *sigs[PRODUCER_BATCH];

    for (size_t done = 0; done < p->n && p->rc == KILN_OK;
         done += PRODUCER_BATCH) {
        for (size_t i = 0; i < PRODUCER_BATCH; i++) {
            sigs[i] = kiln_signature_new(IT_TASK_RECORD, &p->err);
            if (sigs[i] == NULL) {
                p->rc = p->err.code;
                return NULL;
            }
            kiln__strlcpy(p->uuids[done + i], kiln_signature_uuid(sigs[i]),
                          sizeof(it_uuid));
        }
        p->rc = kiln_pool_send_tasks(p->f->pool,
                                     (const kiln_signature *const *)sigs,
                                     PRODUCER_BATCH, NULL, &p->err);
        for (size_t i = 0; i < PRODUCER_BATCH; i++)
            kiln_signature_free(sigs[i]);
    }
    return NULL;
}

/* Waits until `want` documents are in `state`; false at the deadline. */
static bool wait_state_count(const it_fix *f, const char *state, long long want,
                             int timeout_ms)
{
    long long end = it_ms() + timeout_ms, n = 0;

    while ((n = raw_count(f, state)) < want && it_ms() < end)
        it_sleep_ms(500);
    if (n < want)
        printf("  %lld of %lld tasks in %s\n", n, want, state);
    return n >= want;
}

/* 8 producer threads x 5,000 tasks with two worker processes: every task
 * ends SUCCESS, recorded once, and its document reads back by UUID. */
static void test_eight_producers(void **state)
{
    it_fix *f = *state;
    producer p[PRODUCERS];
    pthread_t t[PRODUCERS];
    const size_t per = tasks_per_producer();
    const long long total = (long long)PRODUCERS * (long long)per;
    kiln_store *st;
    long long t0 = it_ms(), t_sent;

    f->cfg.concurrency = 8;
    (void)it_pool(f);
    it_start_worker(f, "w1", NULL);
    it_start_worker(f, "w2", NULL);
    for (unsigned i = 0; i < PRODUCERS; i++) {
        p[i] = (producer){.f = f, .index = i, .n = per};
        p[i].uuids = calloc(per, sizeof(it_uuid));
        assert_non_null(p[i].uuids);
        assert_int_equal(pthread_create(&t[i], NULL, produce, &p[i]), 0);
    }
    for (unsigned i = 0; i < PRODUCERS; i++) {
        pthread_join(t[i], NULL);
        if (p[i].rc != KILN_OK)
            fail_msg("producer %u: %s", i, p[i].err.message);
    }
    t_sent = it_ms();
    assert_true(wait_state_count(f, "SUCCESS", total, 600000));
    printf("  %lld tasks: sent in %.1f s, all SUCCESS after %.1f s "
           "(%.0f tasks/s; PENDING, STARTED, SUCCESS each)\n",
           total, (double)(t_sent - t0) / 1000, (double)(it_ms() - t0) / 1000,
           (double)total * 1000 / (double)(it_ms() - t0));
    assert_int_equal(raw_count(f, NULL), total);
    /* A sample of each producer's tasks reads back by UUID. */
    st = it_open_store(f);
    for (unsigned i = 0; i < PRODUCERS; i++)
        for (size_t k = 0; k < per; k += 997)
            kiln_result_free(
                it_expect_final(st, p[i].uuids[k], KILN_STATE_SUCCESS, NULL));
    kiln_store_free(st);
    for (unsigned i = 0; i < PRODUCERS; i++)
        free(p[i].uuids);
    it_signal(f, 0, SIGTERM);
    it_signal(f, 1, SIGTERM);
    (void)it_expect_exit0(f, 0, 20000);
    (void)it_expect_exit0(f, 1, 20000);
    f->passed = true;
}

/* Set while test_store_outage holds the store down, so that its teardown
 * starts it again even when an assertion ended the test early: the tests
 * after it need it. */
static bool store_stopped;

static void run_env_cmd(const char *var)
{
    const char *cmd = it_env_need(var);
    int rc = system(cmd); /* NOLINT(concurrency-mt-unsafe): test thread */

    if (rc != 0)
        fail_msg("%s (%s) exited with %d", var, cmd, rc);
}

/* The store stops while a worker runs tasks: the worker keeps finished
 * deliveries unacked (never more than the prefetch window), stays up,
 * and once the store is back every task ends SUCCESS. A send during the
 * outage fails with KILN_ESTORE and publishes nothing. */
static void test_store_outage(void **state)
{
    it_fix *f = *state;
    const long long n = 3000;
    long ready = 0, unacked = 0, consumers = 0;
    kiln_signature *sig;
    kiln_error err;
    kiln_err rc;

    f->cfg.prefetch = 32;
    f->cfg.connect_timeout_ms = 1000;
    it_send(f, (size_t)n, 500, NULL);
    /* Tasks of 20 ms keep the worker busy well past the moment the store
     * stops (it finishes states in bulk, at several hundred a second). */
    it_start_worker(f, "w1", (const char *const[]){"KILN_IT_SLEEP_MS=20", NULL});
    assert_true(wait_state_count(f, "SUCCESS", n / 10, 60000));
    store_stopped = true;
    run_env_cmd("KILN_TEST_MONGODB_STOP");
    it_sleep_ms(3000);
    assert_true(it_alive(f, 0));
    assert_true(it_ctl_queue(f->cfg.queue, &ready, &unacked, &consumers));
    printf("  store down: %ld ready, %ld unacked (prefetch %u)\n", ready,
           unacked, f->cfg.prefetch);
    assert_true(unacked <= (long)f->cfg.prefetch);
    assert_true(ready > 0);
    sig = kiln_signature_new(IT_TASK_RECORD, &err);
    assert_non_null(sig);
    rc = kiln_pool_send_task(it_pool(f), sig, &err);
    kiln_signature_free(sig);
    assert_int_equal(rc, KILN_ESTORE);
    run_env_cmd("KILN_TEST_MONGODB_START");
    store_stopped = false;
    assert_true(wait_state_count(f, "SUCCESS", n, 120000));
    assert_int_equal(raw_count(f, NULL), n);
    assert_true(it_ctl_wait_settled(f->cfg.queue, 0, 20000, &ready, &unacked,
                                    &consumers));
    assert_true(it_alive(f, 0));
    it_signal(f, 0, SIGTERM);
    (void)it_expect_exit0(f, 0, 20000);
    f->passed = true;
}

static int teardown_outage(void **state)
{
    if (store_stopped) {
        store_stopped = false;
        run_env_cmd("KILN_TEST_MONGODB_START");
    }
    return it_teardown_store(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lifecycle, setup_lifecycle,
                                        it_teardown_store),
        cmocka_unit_test_setup_teardown(test_send_failure_recorded,
                                        setup_lifecycle, it_teardown_store),
        cmocka_unit_test_setup_teardown(test_store_outage, setup_outage,
                                        teardown_outage),
        cmocka_unit_test_setup_teardown(test_eight_producers, setup_load,
                                        it_teardown_store),
    };

    mongoc_init();
    kiln_log_set_level(KILN_LOG_WARN);
    /* KILN_IT_FILTER=test_send* runs one test (cmocka's pattern). */
    if (getenv("KILN_IT_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_IT_FILTER"));
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    mongoc_cleanup();
    return rc;
}
