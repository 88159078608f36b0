/*
 * A worker against the broker's limits, on the private RabbitMQ node (and
 * FerretDB): its consumer_timeout, a dead-letter queue that refuses
 * messages, and a memory alarm. Each time every task must end as if the
 * limit were not there: run once, its outcome recorded, its delivery
 * settled, and the worker connected all along.
 *
 *   scripts/with-rabbitmq.sh scripts/with-ferretdb.sh \
 *       build/asan/it/test_pool_broker_limits
 */
#include "test/support/pool_it_store.h"

/* The worker's log line when it loses its connection. */
#define LOST "lost its broker connection"

static int setup(void **state)
{
    return it_setup_store(state, "limits");
}

static int teardown(void **state)
{
    /* Whatever a test changed on the shared node goes back. */
    (void)it_ctl("eval 'application:set_env(rabbit, consumer_timeout, "
                 "1800000).'");
    (void)it_ctl("set_vm_memory_high_watermark 0.4");
    return it_teardown_store(state);
}

/* S lines of `uuid` in the task log: the runs it started. */
static size_t starts_of(const it_fix *f, const char *uuid)
{
    it_events ev;
    size_t n = 0;

    it_read_events(f->log, &ev);
    for (size_t i = 0; i < ev.n; i++)
        n += ev.v[i].kind == 'S' && strcmp(ev.v[i].uuid, uuid) == 0;
    it_events_free(&ev);
    return n;
}

static size_t runs_of(const it_fix *f, char kind, const char *uuid)
{
    it_events ev;
    size_t n = 0;

    it_read_events(f->log, &ev);
    for (size_t i = 0; i < ev.n; i++)
        n += ev.v[i].kind == kind && strcmp(ev.v[i].uuid, uuid) == 0;
    it_events_free(&ev);
    return n;
}

static bool wait_ready_at_least(const char *queue, long want, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;
    long n;

    do {
        if (it_queue_info(queue, &n, NULL) && n >= want)
            return true;
        it_sleep_ms(50);
    } while (it_ms() < end);
    return false;
}

static kiln_signature *sleep_sig(int64_t ms, it_uuid uuid)
{
    kiln_signature *sig = it_new_sig(IT_TASK_SLEEP, uuid);

    assert_int_equal(kiln_signature_add_arg_int64(sig, "ms", ms, NULL),
                     KILN_OK);
    return sig;
}

/* Checks the final state of `uuid` and that it started once. */
static void expect_once(kiln_store *st, const char *uuid, kiln_task_state want)
{
    kiln_result *res = it_expect_final(st, uuid, want, NULL);

    if (kiln_result_attempts(res) != 1)
        fail_msg("task %s started %u times", uuid, kiln_result_attempts(res));
    kiln_result_free(res);
}

/* The broker closes a channel that keeps a delivery unacked longer than
 * its consumer_timeout (4 s here; it checks about once a minute), and
 * requeues all of its deliveries. A 70 s task, and two tasks whose final
 * states wait through a 70 s store outage (the second runs on the thread
 * the first one left: a worker thread does not wait for the store), must
 * each run once, end SUCCESS, and leave nothing in the queues. */
static void test_consumer_timeout(void **state)
{
    it_fix *f = *state;
    const char *extra[] = {"KILN_IT_LOG_STARTS=1", NULL};
    kiln_signature *sigs[3];
    it_uuid slow, outage, behind;
    kiln_store *st;
    long r, u, n;
    size_t w;

    assert_int_equal(
        it_ctl("eval 'application:set_env(rabbit, consumer_timeout, 4000).'"),
        0);
    f->cfg.consumer_timeout_ms = 4000;
    f->cfg.concurrency = 2;
    f->cfg.prefetch = 3;
    w = it_start_worker(f, "worker", extra);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));

    sigs[0] = sleep_sig(70000, slow);
    sigs[1] = sleep_sig(4000, outage);
    sigs[2] = sleep_sig(100, behind);
    it_send_free(f, sigs, 3);
    /* Both worker threads busy; the second task then finishes while the
     * store is down, and the third runs on its thread: their SUCCESS is
     * retried for the whole outage, their deliveries unacked. */
    assert_int_equal(it_wait_count(f->log, 'S', 2, 20000), 2);
    assert_int_equal(system(it_env_need("KILN_TEST_MONGODB_STOP")), 0);
    assert_int_equal(it_wait_count(f->log, 'F', 2, 20000), 2);
    it_sleep_ms(66000);
    assert_int_equal(system(it_env_need("KILN_TEST_MONGODB_START")), 0);

    st = it_open_store(f);
    expect_once(st, slow, KILN_STATE_SUCCESS);
    expect_once(st, outage, KILN_STATE_SUCCESS);
    expect_once(st, behind, KILN_STATE_SUCCESS);
    kiln_store_free(st);
    /* Lease copies come back and are acked; nothing else is left. */
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 30000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(starts_of(f, slow), 1);
    assert_int_equal(starts_of(f, outage), 1);
    assert_int_equal(starts_of(f, behind), 1);
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, 0, 1000), 0);
    assert_false(it_file_contains(f->procs[w].out, LOST));
    assert_true(it_file_contains(f->procs[w].out, "lease copy"));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, 20000);
    f->passed = true;
}

/* A dead-letter queue that refuses messages (a policy: at most one,
 * reject-publish): the dead letter of the second failing task is nacked.
 * Only that delivery waits, unacked, while the worker stays connected and
 * runs everything else; once the queue takes messages again, it goes
 * through. The failing task ran once. */
static void test_dead_letter_queue_full(void **state)
{
    it_fix *f = *state;
    kiln_signature *sigs[40];
    it_uuid first, second, rec[38];
    char cmd[KILN_NAME_MAX + 160];
    long r, u, n;
    size_t w;

    f->cfg.concurrency = 2;
    f->cfg.publish_timeout_ms = 3000;
    (void)snprintf(cmd, sizeof(cmd),
                   "set_policy --apply-to queues dlq-full '^%s$' "
                   "'{\"max-length\":1,\"overflow\":\"reject-publish\"}'",
                   f->cfg.dead_letter_queue);
    w = it_start_worker(f, "worker", NULL);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    assert_int_equal(it_ctl(cmd), 0);

    sigs[0] = it_new_sig(IT_TASK_FLAKY, first);
    it_send_free(f, sigs, 1);
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, 1, 20000), 1);
    sigs[0] = it_new_sig(IT_TASK_FLAKY, second);
    for (size_t i = 0; i < 38; i++)
        sigs[1 + i] = it_new_sig(IT_TASK_RECORD, rec[i]);
    it_send_free(f, sigs, 39);
    assert_int_equal(it_wait_count(f->log, 'F', 38, 30000), 38);
    assert_int_equal(it_wait_count(f->log, 'R', 2, 30000), 2);
    it_sleep_ms(3000); /* a few refusals and resends */
    /* The refused dead letter keeps its delivery, and only that one. */
    assert_true(it_ctl_queue(f->cfg.queue, &r, &u, &n));
    assert_int_equal(r, 0);
    assert_int_equal(u, 1);
    assert_int_equal(runs_of(f, 'R', second), 1);

    (void)snprintf(cmd, sizeof(cmd), "clear_policy dlq-full");
    assert_int_equal(it_ctl(cmd), 0);
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, 2, 30000), 2);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 30000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(runs_of(f, 'R', first), 1);
    assert_int_equal(runs_of(f, 'R', second), 1);
    assert_false(it_file_contains(f->procs[w].out, LOST));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, 20000);
    f->passed = true;
}

/* A memory alarm blocks every publishing connection. The worker, started
 * during the alarm, consumes and acks (consuming is not blocked), and a
 * task that fails waits for its dead letter instead of dropping the
 * connection and running again; after the alarm the dead letter goes
 * out. */
static void test_memory_alarm(void **state)
{
    it_fix *f = *state;
    kiln_signature *sigs[21];
    it_uuid failing, rec[20];
    long r, u, n;
    size_t w;

    f->cfg.concurrency = 2;
    f->cfg.publish_timeout_ms = 2000;
    /* The topology, and the tasks, before the alarm. */
    sigs[0] = it_new_sig(IT_TASK_FLAKY, failing);
    for (size_t i = 0; i < 20; i++)
        sigs[1 + i] = it_new_sig(IT_TASK_RECORD, rec[i]);
    it_send_free(f, sigs, 21);
    kiln_pool_free(f->pool); /* its publishing connection would be blocked */
    f->pool = NULL;
    assert_int_equal(it_ctl("set_vm_memory_high_watermark 0.0000001"), 0);

    w = it_start_worker(f, "worker", NULL);
    assert_int_equal(it_wait_count(f->log, 'F', 20, 60000), 20);
    assert_int_equal(it_wait_count(f->log, 'R', 1, 30000), 1);
    it_sleep_ms(6000); /* refused (no confirm in 2 s), sent again, ... */
    assert_true(it_ctl_queue(f->cfg.queue, &r, &u, &n));
    assert_int_equal(r, 0);
    assert_int_equal(u, 1);
    assert_int_equal(n, 1);
    assert_int_equal(runs_of(f, 'R', failing), 1);

    assert_int_equal(it_ctl("set_vm_memory_high_watermark 0.4"), 0);
    /* The first copy went out before the broker said it blocks: it may be
     * confirmed now as well as the one sent again (at least once). */
    assert_true(wait_ready_at_least(f->cfg.dead_letter_queue, 1, 30000));
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 30000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(runs_of(f, 'R', failing), 1);
    assert_false(it_file_contains(f->procs[w].out, LOST));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, 20000);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dead_letter_queue_full, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_memory_alarm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consumer_timeout, setup,
                                        teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    /* KILN_IT_FILTER=test_memory_alarm runs one test (cmocka's pattern). */
    if (getenv("KILN_IT_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_IT_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
