/* The worker pool when the topology goes away under it. Its queue is
 * deleted while a worker process consumes: the broker cancels the
 * consumer (basic.cancel, which kiln asks for with the
 * consumer_cancel_notify capability), and the same process must connect
 * again, declare the queue again and go on consuming. The exchange is
 * deleted under a sending pool: its publisher must declare it again and
 * deliver what it sends next. Fixture and conventions: pool_it.h. */
#include "test/support/pool_it.h"

#define AFTER     100 /* tasks sent once the queue is back */
#define CANCELLED "cancelled by the broker"

static int setup_cancel(void **state)
{
    return it_setup(state, "cancel");
}

static int setup_exchange(void **state)
{
    return it_setup(state, "exchange");
}

/* `rabbitmqctl delete_queue NAME` on the test node. */
static void ctl_delete_queue(const char *queue)
{
    char cmd[PATH_MAX * 2 + KILN_NAME_MAX + 64];
    int rc;

    (void)snprintf(cmd, sizeof(cmd),
                   "'%s' ctl '%s' delete_queue '%s' >/dev/null",
                   it_env_need("KILN_TEST_RABBITMQ"),
                   it_env_need("KILN_TEST_RABBITMQ_DIR"), queue);
    rc = system(cmd);
    if (rc != 0)
        fail_msg("rabbitmqctl delete_queue %s: status %d", queue, rc);
}

/* Waits until every task of `want` (n UUIDs) has finished, each run in
 * process `w`. */
static void expect_ran_in(it_fix *f, it_uuid *want, size_t n, size_t w)
{
    long long end = it_ms() + 30000;
    it_events ev = {0};
    it_tally t;

    do {
        it_events_free(&ev);
        it_read_events(f->log, &ev);
        t = it_tally_of(&ev, 'F', want, n);
        if (t.missing > 0)
            it_sleep_ms(50);
    } while (t.missing > 0 && it_ms() < end);
    if (t.missing > 0)
        fail_msg("%zu of %zu task(s) never ran, e.g. %s", t.missing, n,
                 t.first_missing);
    for (size_t i = 0; i < ev.n; i++)
        assert_int_equal(ev.v[i].pid, f->procs[w].pid);
    it_events_free(&ev);
}

/* The queue is deleted while tasks run: the broker cancels the consumer,
 * the tasks queued with it are gone (deleting a queue drops its
 * messages), and the worker recovers by itself in the same process. */
static void test_queue_deleted_while_consuming(void **state)
{
    it_fix *f = *state;
    const char *const extra[] = {IT_ENV_SLEEP_MS "=20", NULL};
    it_uuid *after = calloc(AFTER, sizeof(*after));
    size_t w, before;
    long long t0;
    long r, u, n;

    assert_non_null(after);
    f->cfg.concurrency = 4;
    f->cfg.prefetch = 16;
    w = it_start_worker(f, "worker", extra);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    it_send(f, 500, 100, NULL);
    assert_true(it_wait_count(f->log, 'F', 20, 20000) >= 20);

    t0 = it_ms();
    ctl_delete_queue(f->cfg.queue);
    before = it_count(f->log, 'F');
    printf("  queue deleted after %zu of 500 tasks ran\n", before);
    while (!it_file_contains(f->procs[w].out, CANCELLED) &&
           it_ms() < t0 + 10000)
        it_sleep_ms(20);
    if (!it_file_contains(f->procs[w].out, CANCELLED))
        fail_msg("the worker did not notice the cancel within 10 s");
    /* only the worker declares the queue again */
    if (!it_wait_consumers(f->cfg.queue, 1, 20000))
        fail_msg("the worker did not consume again within 20 s");
    printf("  consuming again %lld ms after delete_queue\n", it_ms() - t0);

    it_send(f, AFTER, 20, after);
    expect_ran_in(f, after, AFTER, w);
    assert_true(it_alive(f, w)); /* the same process throughout */
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 20000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(n, 1);
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
    free(after);
    f->passed = true;
}

/* The exchange is deleted between two sends of a pool in the test
 * process. The next send's messages meet a 404 that closes the channel
 * before they are settled; the publisher counts them as lost, connects
 * again, declares the exchange and its binding again, and sends them
 * again: the send succeeds and every task runs. */
static void test_exchange_deleted_while_sending(void **state)
{
    it_fix *f = *state;
    it_uuid *after = calloc(AFTER, sizeof(*after));
    amqp_connection_state_t c;
    size_t w;

    assert_non_null(after);
    w = it_start_worker(f, "worker", NULL);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    it_send(f, 10, 10, NULL);
    assert_true(it_wait_count(f->log, 'F', 10, 20000) >= 10);

    c = it_raw_open();
    assert_non_null(c);
    (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(f->cfg.exchange), 0);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    it_raw_close(c);

    it_send(f, AFTER, 20, after);
    expect_ran_in(f, after, AFTER, w);
    assert_true(it_alive(f, w));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
    free(after);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_queue_deleted_while_consuming,
                                        setup_cancel, it_teardown),
        cmocka_unit_test_setup_teardown(test_exchange_deleted_while_sending,
                                        setup_exchange, it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
