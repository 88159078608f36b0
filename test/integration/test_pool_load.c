/* The worker pool end to end on a real RabbitMQ, under load: 10,000 tasks
 * run exactly once by an undisturbed worker process, and at least once
 * when the worker is killed with SIGKILL halfway and started again.
 * Fixture and conventions: pool_it.h. */
#include "test/support/pool_it.h"

#define N_TASKS 10000
#define BATCH   1000 /* tasks per kiln_pool_send_tasks call */

static int setup_load(void **state)
{
    return it_setup(state, "load");
}

static void print_runs_per_pid(const it_events *ev)
{
    long pids[IT_MAX_PROCS];
    size_t runs[IT_MAX_PROCS], n = 0;

    for (size_t i = 0; i < ev->n; i++) {
        size_t k = 0;
        if (ev->v[i].kind != 'F')
            continue;
        while (k < n && pids[k] != ev->v[i].pid)
            k++;
        if (k == n && n < IT_MAX_PROCS) {
            pids[n] = ev->v[i].pid;
            runs[n++] = 0;
        }
        if (k < n)
            runs[k]++;
    }
    for (size_t k = 0; k < n; k++)
        printf("    worker pid %ld ran %zu tasks\n", pids[k], runs[k]);
}

/* 10,000 tasks sent with confirms while a worker process consumes: each
 * UUID runs exactly once, and the queue ends empty with nothing unacked. */
static void test_every_task_runs_exactly_once(void **state)
{
    it_fix *f = *state;
    it_uuid *uuids = calloc(N_TASKS, sizeof(*uuids));
    it_events ev;
    it_tally t;
    long long t0, t_sent, t_done;
    long r, u, n;
    size_t w, got;

    assert_non_null(uuids);
    f->cfg.concurrency = 8;
    f->cfg.prefetch = 128;
    w = it_start_worker(f, "worker", NULL);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));

    t0 = it_ms();
    it_send(f, N_TASKS, BATCH, uuids);
    t_sent = it_ms();
    got = it_wait_count(f->log, 'F', N_TASKS, 90000);
    t_done = it_ms();
    assert_int_equal(got, N_TASKS);

    /* Acks go out within milliseconds of the last task. */
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 10000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(n, 1);
    assert_true(it_alive(f, w));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);

    /* Read after the worker's exit: no late duplicate can hide. */
    it_read_events(f->log, &ev);
    t = it_tally_of(&ev, 'F', uuids, N_TASKS);
    printf("  exactly once: %d tasks sent in %lld ms (%.0f/s, confirmed, "
           "batches of %d), all run %lld ms after the first send "
           "(%.0f tasks/s end to end); missing %zu, duplicates %zu, "
           "unknown %zu\n",
           N_TASKS, t_sent - t0, N_TASKS * 1000.0 / (double)(t_sent - t0 + 1),
           BATCH, t_done - t0, N_TASKS * 1000.0 / (double)(t_done - t0 + 1),
           t.missing, t.dup_runs, t.unknown);
    if (t.missing > 0)
        fail_msg("%zu task(s) never ran, e.g. %s", t.missing, t.first_missing);
    assert_int_equal(t.dup_runs, 0);
    assert_int_equal(t.unknown, 0);
    assert_int_equal(t.events, N_TASKS);
    it_events_free(&ev);
    free(uuids);
    f->passed = true;
}

/* A worker killed with SIGKILL after a few thousand of 10,000 tasks, then
 * started again: every task runs at least once; the ones the first worker
 * finished but had not acknowledged run twice, and are counted. */
static void test_sigkill_loses_nothing(void **state)
{
    it_fix *f = *state;
    it_uuid *uuids = calloc(N_TASKS, sizeof(*uuids));
    it_events ev;
    it_tally t = {0};
    long long t0, t_kill, t_done, end;
    long r, u, n;
    size_t w, at_kill;

    assert_non_null(uuids);
    f->cfg.concurrency = 8;
    f->cfg.prefetch = 128;
    /* A first worker declares the topology and drains at once, so the
     * 10,000 tasks wait in the queue before the worker to kill starts. */
    w = it_start_worker(f, "declare", NULL);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, 15000);
    it_send(f, N_TASKS, BATCH, uuids);
    assert_int_equal(it_wait_ready(f->cfg.queue, N_TASKS, 10000), N_TASKS);

    t0 = it_ms();
    w = it_start_worker(f, "killed", NULL);
    at_kill = it_wait_count(f->log, 'F', 3000, 60000);
    assert_true(at_kill >= 3000);
    it_signal(f, w, SIGKILL);
    t_kill = it_ms();
    assert_true(it_wait_exit(f, w, 10000));
    assert_true(WIFSIGNALED(f->procs[w].status));
    at_kill = it_count(f->log, 'F');
    if (at_kill >= N_TASKS)
        fail_msg("the worker ran all %zu tasks before the kill: not a "
                 "mid-run kill",
                 at_kill);
    if (it_ctl_queue(f->cfg.queue, &r, &u, &n))
        printf("  after SIGKILL: %zu runs logged, queue ready %ld unacked "
               "%ld consumers %ld\n",
               at_kill, r, u, n);

    (void)it_start_worker(f, "restarted", NULL);
    end = it_ms() + 90000;
    ev.v = NULL;
    do { /* until every UUID has run */
        it_sleep_ms(200);
        it_events_free(&ev);
        it_read_events(f->log, &ev);
        t = it_tally_of(&ev, 'F', uuids, N_TASKS);
    } while (t.missing > 0 && it_ms() < end);
    t_done = it_ms();
    if (t.missing > 0)
        fail_msg("%zu task(s) never ran, e.g. %s", t.missing, t.first_missing);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 10000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(n, 1);
    it_signal(f, f->n_procs - 1, SIGTERM);
    (void)it_expect_exit0(f, f->n_procs - 1,
                          (int)f->cfg.drain_timeout_ms + 5000);

    it_events_free(&ev);
    it_read_events(f->log, &ev);
    t = it_tally_of(&ev, 'F', uuids, N_TASKS);
    printf("  SIGKILL after %zu of %d runs (%lld ms in); all %d ran %lld ms "
           "after the kill; %zu task(s) ran twice or more (%zu extra runs), "
           "missing %zu, unknown %zu\n",
           at_kill, N_TASKS, t_kill - t0, N_TASKS, t_done - t_kill, t.dup_tasks,
           t.dup_runs, t.missing, t.unknown);
    print_runs_per_pid(&ev);
    assert_int_equal(t.missing, 0);
    assert_int_equal(t.unknown, 0);
    /* Only deliveries unacked at the kill can run twice: at most the
     * prefetch window. */
    assert_true(t.dup_runs <= f->cfg.prefetch);
    it_events_free(&ev);
    free(uuids);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_task_runs_exactly_once,
                                        setup_load, it_teardown),
        cmocka_unit_test_setup_teardown(test_sigkill_loses_nothing, setup_load,
                                        it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
