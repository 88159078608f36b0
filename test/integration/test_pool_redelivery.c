/*
 * Redeliveries that are not the task's fault, on the private RabbitMQ
 * node (and FerretDB): a task that finished but whose ack never left the
 * worker is not run again, and a task a stopping worker handed back before
 * it started is not counted as poison.
 *
 *   scripts/with-rabbitmq.sh scripts/with-ferretdb.sh \
 *       build/asan/it/test_pool_redelivery
 */
#include "test/support/pool_it_store.h"

#define TASKS 30

static int setup_store(void **state)
{
    return it_setup_store(state, "redeliver");
}

static int setup(void **state)
{
    return it_setup(state, "redeliver");
}

/* A worker finishes TASKS tasks (their SUCCESS is in the store) and is
 * killed before any ack leaves it (a test hook holds the acks back).
 * The broker redelivers them all to the next worker, which must run none
 * of them again: each is acked because the store says SUCCESS. */
static void test_finished_tasks_not_run_again(void **state)
{
    it_fix *f = *state;
    const char *first_extra[] = {"KILN_IT_LOG_STARTS=1",
                                 IT_ENV_HOLD_ACKS "=1", NULL};
    const char *extra[] = {"KILN_IT_LOG_STARTS=1", NULL};
    it_uuid uuids[TASKS];
    kiln_store *st;
    long r, u, n;
    size_t w;

    f->cfg.prefetch = TASKS * 2;
    w = it_start_worker(f, "first", first_extra);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    it_send(f, TASKS, TASKS, uuids);
    assert_int_equal(it_wait_count(f->log, 'F', TASKS, 60000), TASKS);
    st = it_open_store(f);
    for (size_t i = 0; i < TASKS; i++)
        kiln_result_free(it_expect_final(st, uuids[i], KILN_STATE_SUCCESS,
                                         NULL));
    assert_true(it_ctl_queue(f->cfg.queue, &r, &u, &n));
    assert_int_equal(u, TASKS); /* finished, not acked */
    it_signal(f, w, SIGKILL);
    assert_true(it_wait_exit(f, w, 10000));

    w = it_start_worker(f, "second", extra);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 60000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(it_count(f->log, 'S'), TASKS);
    assert_int_equal(it_count(f->log, 'F'), TASKS);
    for (size_t i = 0; i < TASKS; i++) {
        kiln_result *res =
            it_expect_final(st, uuids[i], KILN_STATE_SUCCESS, NULL);
        assert_int_equal(kiln_result_attempts(res), 1);
        kiln_result_free(res);
    }
    kiln_store_free(st);
    assert_true(it_file_contains(f->procs[w].out, "the store says SUCCESS"));
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, 0, 1000), 0);
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, 20000);
    f->passed = true;
}

/* One worker thread, five one-second tasks. A worker is stopped (SIGTERM)
 * while it runs the first task it took, four times over: each time the
 * tasks it had not started go back to the queue. With KILN_MAX_DELIVERIES
 * 2, a redelivery counted for each of those stops would make the last
 * tasks poison before they ever ran; they must all run, once each. */
static void test_stops_do_not_count(void **state)
{
    it_fix *f = *state;
    const char *extra[] = {"KILN_IT_LOG_STARTS=1", NULL};
    kiln_signature *sigs[5];
    it_uuid uuids[5];
    long r, u, n;
    size_t w;

    f->cfg.concurrency = 1;
    f->cfg.prefetch = 10;
    f->cfg.max_deliveries = 2;
    for (size_t i = 0; i < 5; i++) {
        sigs[i] = it_new_sig(IT_TASK_SLEEP, uuids[i]);
        assert_int_equal(kiln_signature_add_arg_int64(sigs[i], "ms", 1000, NULL),
                         KILN_OK);
    }
    it_send_free(f, sigs, 5);
    for (size_t round = 1; round <= 4; round++) {
        w = it_start_worker(f, "stopped", extra);
        assert_int_equal(it_wait_count(f->log, 'S', round, 30000), round);
        it_signal(f, w, SIGTERM);
        (void)it_expect_exit0(f, w, 30000);
        assert_int_equal(it_count(f->log, 'F'), round);
    }
    w = it_start_worker(f, "last", extra);
    assert_int_equal(it_wait_count(f->log, 'F', 5, 30000), 5);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 30000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(it_count(f->log, 'S'), 5);
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, 0, 1000), 0);
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, 20000);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_finished_tasks_not_run_again,
                                        setup_store, it_teardown_store),
        cmocka_unit_test_setup_teardown(test_stops_do_not_count, setup,
                                        it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    /* KILN_IT_FILTER=test_memory_alarm runs one test (cmocka's pattern). */
    if (getenv("KILN_IT_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_IT_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
