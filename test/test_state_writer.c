/* The pool's state writer on the in-memory broker and store: the states
 * of tasks finished while a bulk is in flight go out as one bulk, a lone
 * task is written and acked without waiting for others, and a document
 * that fails holds back its own delivery only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mocks/mocks.h"
#include "test/support/pool_runner.h"
#include "workerpool/pool.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QUEUE "writer_tasks"
#define WAIT  10000 /* ms: bounds every wait */

typedef struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *producer;
    kiln__store *store;
    kiln_pool *pool;
    pool_runner run;
} fixture;

static atomic_int finished;

static kiln__broker *factory(void *ctx, const kiln_config *cfg, kiln_error *err)
{
    (void)cfg;
    return kiln__mock_broker_new(ctx, err);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static kiln_err work(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    atomic_fetch_add(&finished, 1);
    return KILN_OK;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    kiln_error err;

    kiln_log_set_level(KILN_LOG_OFF);
    atomic_store(&finished, 0);
    kiln_config_init(&f->cfg);
    strcpy(f->cfg.queue, QUEUE);
    strcpy(f->cfg.binding_key, QUEUE);
    strcpy(f->cfg.dead_letter_queue, QUEUE ".dead");
    strcpy(f->cfg.dead_letter_exchange, QUEUE ".dlx");
    f->cfg.prefetch = 16;
    f->cfg.concurrency = 4;
    f->cfg.log_level = KILN_LOG_OFF;
    assert_non_null(f->srv = kiln__mock_server_new(&err));
    assert_non_null(f->producer = kiln__mock_broker_new(f->srv, &err));
    assert_int_equal(f->producer->ops->connect(f->producer, &err), KILN_OK);
    assert_int_equal(f->producer->ops->declare(f->producer, &f->cfg, &err),
                     KILN_OK);
    assert_non_null(f->store = kiln__mock_store_new(&err));
    assert_non_null(f->pool = kiln_pool_new(&f->cfg, 0, "test", &err));
    kiln__pool_set_broker_factory(f->pool, factory, f->srv);
    kiln__pool_set_store(f->pool, f->store);
    assert_int_equal(
        kiln_pool_register(f->pool, "work", work, NULL, NULL, &err), KILN_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    kiln__mock_store_hold(f->store, false);
    pool_runner_cleanup(&f->run);
    kiln_pool_free(f->pool);
    kiln__store_destroy(f->store);
    kiln__broker_destroy(f->producer);
    kiln__mock_server_free(f->srv);
    free(f);
    return 0;
}

static void start(fixture *f)
{
    pool_runner_start(&f->run, f->pool);
}

static void stop(fixture *f)
{
    kiln_pool_stop(f->pool);
    assert_int_equal(pool_runner_join(&f->run), KILN_OK);
}

/* Sends `n` tasks; the UUID of the first goes to `uuid0` (may be NULL). */
static void send_n(fixture *f, int n, char *uuid0, size_t len)
{
    kiln_error err;

    for (int i = 0; i < n; i++) {
        kiln_signature *sig = kiln_signature_new("work", &err);
        const kiln_signature *one[1] = {sig};
        assert_non_null(sig);
        if (i == 0 && uuid0 != NULL)
            kiln__strlcpy(uuid0, kiln_signature_uuid(sig), len);
        assert_int_equal(
            kiln__send_tasks(&f->cfg, f->producer, NULL, one, 1, NULL, &err),
            KILN_OK);
        kiln_signature_free(sig);
    }
}

/* Finished deliveries waiting in the writer's queue for their write. */
static size_t writer_queued(kiln_pool *p)
{
    size_t n = 0;

    pthread_mutex_lock(&p->mu);
    for (const kiln__work *w = p->wr_head; w != NULL; w = w->next)
        n++;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* Waits until at least `want` wait (the first task's own final state may
 * be among them, when the held bulk had its STARTED alone). */
static bool wait_queued(kiln_pool *p, size_t want)
{
    for (int i = 0; i < WAIT && writer_queued(p) < want; i++)
        sleep_ms(1);
    return writer_queued(p) >= want;
}

static bool wait_unacked(fixture *f, size_t want)
{
    for (int i = 0; i < WAIT && kiln__mock_server_unacked(f->srv) != want; i++)
        sleep_ms(1);
    return kiln__mock_server_unacked(f->srv) == want;
}

/* The first task's write is held in flight while 8 more tasks finish:
 * their 8 final states then go out as one set_states call, and every
 * delivery is acked. */
static void test_finished_in_one_turn_one_bulk(void **state)
{
    fixture *f = *state;
    size_t calls, largest;

    kiln__mock_store_hold(f->store, true);
    start(f);
    send_n(f, 1, NULL, 0);
    assert_true(kiln__mock_store_wait_held(f->store, WAIT));
    send_n(f, 8, NULL, 0);
    assert_true(wait_queued(f->pool, 8));
    kiln__mock_store_bulks(f->store, &calls, &largest);
    assert_int_equal(calls, 0); /* the first is still held */
    kiln__mock_store_hold(f->store, false);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, WAIT), KILN_OK);
    stop(f);
    kiln__mock_store_bulks(f->store, &calls, &largest);
    /* The held bulk (the first task's STARTED, or its STARTED and final
     * state as one write), then one of the 8 final states, and the first
     * task's final state with them when it was not in the held one. */
    assert_true(calls >= 2 && calls <= 3);
    assert_true(largest == 8 || largest == 9);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_SUCCESS), 9);
    assert_int_equal(atomic_load(&finished), 9);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

/* A lone task does not wait for a bulk to fill: it is written and its
 * delivery acked while nothing else comes. */
static void test_lone_task_written_at_once(void **state)
{
    fixture *f = *state;
    char uuid[KILN_NAME_MAX];
    size_t calls, largest;

    start(f);
    send_n(f, 1, uuid, sizeof(uuid));
    assert_int_equal(kiln__mock_store_wait_finished(f->store, uuid, WAIT),
                     KILN_OK);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, WAIT), KILN_OK);
    kiln__mock_store_bulks(f->store, &calls, &largest);
    assert_true(calls >= 1 && calls <= 2); /* STARTED apart, or along */
    assert_int_equal(largest, 1);
    stop(f);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_SUCCESS), 1);
}

/* One document of a bulk fails: the other deliveries are acked, its own
 * stays unacked (its write retried with backoff, its task not run
 * again) until the store takes it. */
static void test_failed_document_not_acked(void **state)
{
    fixture *f = *state;
    char bad[KILN_NAME_MAX];
    kiln__task_record rec = {0};
    kiln_error err;

    kiln__mock_store_hold(f->store, true);
    start(f);
    send_n(f, 1, NULL, 0);
    assert_true(kiln__mock_store_wait_held(f->store, WAIT));
    send_n(f, 8, bad, sizeof(bad));
    kiln__mock_store_fail_uuid(f->store, bad);
    assert_true(wait_queued(f->pool, 8));
    kiln__mock_store_hold(f->store, false);
    for (int i = 0;
         i < WAIT && kiln__mock_store_count(f->store, KILN_STATE_SUCCESS) < 8;
         i++)
        sleep_ms(1);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_SUCCESS), 8);
    assert_true(wait_unacked(f, 1));
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 0);
    assert_int_not_equal(kiln__store_get(f->store, bad, &rec, &err), KILN_OK);
    kiln__mock_store_fail_uuid(f->store, NULL);
    assert_int_equal(kiln__mock_store_wait_finished(f->store, bad, WAIT),
                     KILN_OK);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, WAIT), KILN_OK);
    stop(f);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_SUCCESS), 9);
    assert_int_equal(atomic_load(&finished), 9); /* none ran twice */
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_finished_in_one_turn_one_bulk,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lone_task_written_at_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_document_not_acked, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
