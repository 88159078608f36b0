/* kiln_pool_send_task(s) on the in-memory broker and store: what a failed
 * send leaves in the store (FAILURE when the broker certainly did not take
 * the task, PENDING when it may have), a send that cannot connect, a
 * producer that declares the queue it sends to, and the dialect of each
 * pool, header mode included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mocks/mocks.h"
#include "workerpool/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE "send_tasks"

typedef struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__store *store;
    kiln_pool *pool; /* a producer: never started, unless a test does */
} fixture;

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

static kiln_pool *new_pool(fixture *f, const kiln_config *cfg)
{
    kiln_error err;
    kiln_pool *p = kiln_pool_new(cfg, 2, "sender", &err);

    assert_non_null(p);
    kiln__pool_set_broker_factory(p, factory, f->srv);
    kiln__pool_set_store(p, f->store);
    assert_int_equal(kiln_pool_register(p, "work", work, NULL, NULL, &err),
                     KILN_OK);
    return p;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    kiln_error err;

    kiln_log_set_level(KILN_LOG_OFF);
    atomic_store(&runs, 0);
    kiln_config_init(&f->cfg);
    strcpy(f->cfg.queue, QUEUE);
    strcpy(f->cfg.binding_key, QUEUE);
    strcpy(f->cfg.dead_letter_queue, QUEUE ".dead");
    strcpy(f->cfg.dead_letter_exchange, QUEUE ".dlx");
    f->cfg.log_level = KILN_LOG_OFF;
    f->cfg.publish_timeout_ms = 300;
    f->srv = kiln__mock_server_new(&err);
    f->store = kiln__mock_store_new(&err);
    f->pool = new_pool(f, &f->cfg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    kiln_pool_free(f->pool);
    kiln__store_destroy(f->store);
    kiln__mock_server_free(f->srv);
    free(f);
    return 0;
}

static kiln_task_state state_of(fixture *f, const kiln_signature *sig,
                                char *error, size_t n)
{
    kiln__task_record r;
    kiln_task_state st;

    assert_int_equal(
        kiln__store_get(f->store, kiln_signature_uuid(sig), &r, NULL), KILN_OK);
    st = r.state;
    if (error != NULL)
        (void)snprintf(error, n, "%s", r.error);
    kiln__task_record_release(&r);
    return st;
}

/* ---- what a failed send leaves in the store ------------------------------ */

/* Sends the broker certainly did not take end FAILURE "not sent: ...",
 * so a waiter learns at once that they will never run: returned
 * unroutable, nacked, and never written because no connection could be
 * opened within KILN_PUBLISH_TIMEOUT_MS. */
static void test_definite_failures_recorded(void **state)
{
    fixture *f = *state;
    kiln_signature *sig = kiln_signature_new("work", NULL);
    char why[256];
    kiln_error err;

    /* Unroutable. */
    assert_int_equal(kiln_signature_set_routing_key(sig, "nowhere", NULL),
                     KILN_OK);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_EBROKER);
    assert_int_equal(state_of(f, sig, why, sizeof(why)), KILN_STATE_FAILURE);
    assert_non_null(strstr(why, "not sent: "));
    assert_non_null(strstr(why, "'nowhere'"));
    assert_int_equal(
        kiln__mock_store_wait_finished(f->store, kiln_signature_uuid(sig), 0),
        KILN_OK);
    kiln_signature_free(sig);

    /* Nacked. */
    sig = kiln_signature_new("work", NULL);
    kiln__mock_server_fail_publish(f->srv, 1);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_EBROKER);
    assert_int_equal(state_of(f, sig, why, sizeof(why)), KILN_STATE_FAILURE);
    assert_non_null(strstr(why, "not sent: "));
    kiln_signature_free(sig);

    /* No connection: a fresh producer while the broker refuses them. */
    kiln_pool_free(f->pool);
    f->pool = new_pool(f, &f->cfg);
    kiln__mock_server_refuse_connections(f->srv, true);
    sig = kiln_signature_new("work", NULL);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_EBROKER);
    assert_non_null(strstr(err.message, "not sent within 300 ms"));
    assert_non_null(strstr(err.message, "connection refused (injected)"));
    assert_int_equal(state_of(f, sig, why, sizeof(why)), KILN_STATE_FAILURE);
    assert_non_null(strstr(why, "not sent: "));
    assert_non_null(strstr(why, "connection refused (injected)"));
    kiln_signature_free(sig);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_PENDING), 0);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_FAILURE), 3);
}

/* Written, then the connection is lost before the confirm, and no new
 * one opens before the deadline: the broker may have the task (here it
 * does), so the send says KILN_ETIMEDOUT and the store keeps PENDING, for
 * the worker that may still run it. */
static void test_timed_out_send_stays_pending(void **state)
{
    fixture *f = *state;
    kiln_signature *sig = kiln_signature_new("work", NULL);
    kiln_error err;

    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_OK);
    kiln_signature_free(sig);
    sig = kiln_signature_new("work", NULL);
    kiln__mock_server_fail_connection(f->srv, 1);
    kiln__mock_server_refuse_connections(f->srv, true);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_ETIMEDOUT);
    assert_int_equal(state_of(f, sig, NULL, 0), KILN_STATE_PENDING);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 2);
    kiln_signature_free(sig);
}

typedef struct running {
    kiln_pool *pool;
    pthread_t thread;
    kiln_err rc;
} running;

static void *run_main(void *arg)
{
    running *r = arg;

    r->rc = kiln_pool_start(r->pool, NULL);
    return NULL;
}

/* A task whose send failed is sent again, the same signature, and runs:
 * its PENDING replaces the FAILURE, and the worker's SUCCESS follows. */
static void test_resend_after_failure(void **state)
{
    fixture *f = *state;
    kiln_signature *sig = kiln_signature_new("work", NULL);
    kiln_config wcfg = f->cfg;
    running w = {0};
    kiln_error err;

    kiln__mock_server_fail_publish(f->srv, 1);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_EBROKER);
    assert_int_equal(state_of(f, sig, NULL, 0), KILN_STATE_FAILURE);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_OK);
    assert_int_equal(state_of(f, sig, NULL, 0), KILN_STATE_PENDING);
    wcfg.handle_signals = false;
    w.pool = new_pool(f, &wcfg);
    assert_int_equal(pthread_create(&w.thread, NULL, run_main, &w), 0);
    assert_int_equal(kiln__mock_store_wait_finished(
                         f->store, kiln_signature_uuid(sig), 10000),
                     KILN_OK);
    assert_int_equal(state_of(f, sig, NULL, 0), KILN_STATE_SUCCESS);
    assert_int_equal(atomic_load(&runs), 1);
    kiln_pool_stop(w.pool);
    pthread_join(w.thread, NULL);
    assert_int_equal(w.rc, KILN_OK);
    kiln_pool_free(w.pool);
    kiln_signature_free(sig);
}

/* ---- a producer alone declares its queue --------------------------------- */

/* No worker ever ran and nothing is declared: the producer's publishing
 * connection declares the topology of its configuration, so the first
 * task is routed to the queue it names. */
static void test_producer_declares_its_queue(void **state)
{
    fixture *f = *state;
    kiln_signature *sig = kiln_signature_new("work", NULL);
    kiln_error err;

    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 0);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 1);
    kiln_signature_free(sig);
}

/* ---- one dialect per pool ------------------------------------------------ */

/* Takes the next message of QUEUE: its body (caller frees) and whether it
 * had a task_name header (paota's header mode). */
static char *take(kiln__broker *c, bool *header_mode)
{
    kiln__delivery d;
    kiln_error err;
    char *body;

    assert_int_equal(kiln__broker_consume(c, &d, 1000, &err), KILN_OK);
    body = strdup(d.body);
    *header_mode = kiln__delivery_header(&d, "task_name") != NULL;
    assert_int_equal(kiln__broker_ack(c, d.tag, false, &err), KILN_OK);
    kiln__broker_release(c, &d);
    return body;
}

/* Sending in two dialects takes two pools, one per configuration; both
 * feed the same queue. A paota-headers pool sends a signature with typed
 * arguments and no raw body as paota's JSON, one with a raw body in header
 * mode, and refuses one with both (the arguments would be lost): nothing
 * sent, no state recorded. */
static void test_one_dialect_per_pool(void **state)
{
    fixture *f = *state;
    kiln_config paota = f->cfg, headers = f->cfg;
    kiln_pool *pp, *ph;
    kiln_signature *sig = kiln_signature_new("work", NULL);
    kiln__broker *c = kiln__mock_broker_new(f->srv, NULL);
    size_t recorded;
    kiln_error err;
    bool hm;
    char *body;

    paota.dialect = KILN_DIALECT_PAOTA;
    headers.dialect = KILN_DIALECT_PAOTA_HEADERS;
    pp = new_pool(f, &paota);
    ph = new_pool(f, &headers);
    assert_int_equal(kiln_signature_add_arg_int64(sig, "n", 7, NULL), KILN_OK);
    assert_int_equal(kiln_pool_send_task(f->pool, sig, &err), KILN_OK);
    assert_int_equal(kiln_pool_send_task(pp, sig, &err), KILN_OK);
    assert_int_equal(kiln_pool_send_task(ph, sig, &err), KILN_OK);
    assert_int_equal(kiln__broker_connect(c, &err), KILN_OK);
    assert_int_equal(kiln__broker_subscribe(c, QUEUE, 0, &err), KILN_OK);
    body = take(c, &hm); /* machinery */
    assert_false(hm);
    assert_null(strstr(body, "RetriesDone"));
    assert_non_null(strstr(body, "\"GroupUUID\""));
    free(body);
    body = take(c, &hm); /* paota */
    assert_false(hm);
    assert_non_null(strstr(body, "\"RetriesDone\""));
    free(body);
    body = take(c, &hm); /* paota-headers, typed args only: paota JSON */
    assert_false(hm);
    assert_non_null(strstr(body, "\"RetriesDone\""));
    assert_non_null(strstr(body, "\"Type\":\"int64\",\"Value\":7"));
    free(body);

    /* Both a raw body and typed arguments: refused before anything. */
    assert_int_equal(kiln_signature_set_raw_body(sig, "{\"n\":7}", 7, NULL),
                     KILN_OK);
    recorded = kiln__mock_store_count(f->store, -1);
    assert_int_equal(kiln_pool_send_task(ph, sig, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "1 typed argument(s)"));
    assert_int_equal(kiln__mock_store_count(f->store, -1), recorded);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 0);
    /* A raw body alone: header mode. */
    kiln_signature_free(sig);
    sig = kiln_signature_new("work", NULL);
    assert_int_equal(kiln_signature_set_raw_body(sig, "{\"n\":7}", 7, NULL),
                     KILN_OK);
    assert_int_equal(kiln_pool_send_task(ph, sig, &err), KILN_OK);
    body = take(c, &hm);
    assert_true(hm);
    assert_string_equal(body, "{\"n\":7}");
    free(body);
    kiln__broker_destroy(c);
    kiln_pool_free(pp);
    kiln_pool_free(ph);
    kiln_signature_free(sig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_definite_failures_recorded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_timed_out_send_stays_pending,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_resend_after_failure, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_producer_declares_its_queue, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_one_dialect_per_pool, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
