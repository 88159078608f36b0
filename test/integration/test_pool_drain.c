/* The worker pool's limits and its shutdown on a real RabbitMQ: a SIGTERM
 * drains (running tasks finish and are acked, the rest go back to the
 * queue, exit status 0), a task that outlives the drain does not keep a
 * program that exits without kiln_pool_free, and never more than C tasks
 * run at once nor more than the prefetch count wait unacknowledged.
 * Fixture and conventions: pool_it.h. */
#include "test/support/pool_it.h"

static int setup_drain(void **state)
{
    return it_setup(state, "drain");
}

static int setup_limits(void **state)
{
    return it_setup(state, "limits");
}

/* SIGTERM while tasks of ~300 ms run with concurrency 4: the worker exits
 * 0 within the drain timeout, every task that started also finished, and
 * the ones not started are back in the queue, ready. */
static void test_sigterm_drains(void **state)
{
    it_fix *f = *state;
    const char *const extra[] = {IT_ENV_SLEEP_MS "=300", IT_ENV_LOG_STARTS "=1",
                                 NULL};
    enum { SENT = 40 };
    it_uuid *started, *finished;
    size_t w, n_s = 0, n_f = 0, s_at, f_at, late = 0;
    long long t_term, took, end;
    it_events ev;
    it_tally t;
    long r, u, n;

    f->cfg.concurrency = 4;
    f->cfg.prefetch = 8;
    f->cfg.drain_timeout_ms = 5000;
    w = it_start_worker(f, "worker", extra);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    it_send(f, SENT, SENT, NULL);

    /* Signal once the second wave runs: more started than finished. */
    end = it_ms() + 30000;
    do {
        it_sleep_ms(10);
        s_at = it_count(f->log, 'S');
        f_at = it_count(f->log, 'F');
    } while ((s_at < 6 || s_at == f_at) && it_ms() < end);
    assert_true(s_at >= 6 && s_at > f_at);
    it_signal(f, w, SIGTERM);
    t_term = it_ms();
    took = it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms);

    it_read_events(f->log, &ev);
    started = it_uuids_of(&ev, 'S', &n_s);
    finished = it_uuids_of(&ev, 'F', &n_f);
    for (size_t i = 0; i < ev.n; i++)
        if (ev.v[i].kind == 'S' && ev.v[i].ms > t_term)
            late++;
    printf("  SIGTERM with %zu started, %zu finished; exit 0 after %lld ms "
           "(drain timeout %u ms); %zu task(s) finished during the drain, "
           "%zu started after the signal; %zu of %d ran in all\n",
           s_at, f_at, took, f->cfg.drain_timeout_ms, n_f - f_at, late, n_f,
           SENT);
    /* Every start has its finish, and each task ran once. */
    t = it_tally_of(&ev, 'F', started, n_s);
    assert_int_equal(t.missing, 0);
    assert_int_equal(t.unknown, 0);
    assert_int_equal(t.dup_runs, 0);
    assert_int_equal(n_f, n_s);
    assert_true(n_f > f_at); /* some task was running at the signal */
    assert_true(n_f < SENT);

    /* Acked: finished tasks are gone for good; the rest are ready again,
     * none unacked, nobody consuming, nothing dead-lettered. */
    assert_int_equal(it_wait_ready(f->cfg.queue, (long)(SENT - n_f), 5000),
                     (long)(SENT - n_f));
    assert_true(it_ctl_queue(f->cfg.queue, &r, &u, &n));
    printf("  after the drain: ready %ld (sent %d - finished %zu), unacked "
           "%ld, consumers %ld\n",
           r, SENT, n_f, u, n);
    assert_int_equal(r, SENT - (long)n_f);
    assert_int_equal(u, 0);
    assert_int_equal(n, 0);
    assert_true(it_queue_info(f->cfg.dead_letter_queue, &r, NULL));
    assert_int_equal(r, 0);
    it_events_free(&ev);
    free(started);
    free(finished);
    f->passed = true;
}

/* A task outlives the drain: kiln_pool_start returns KILN_ETIMEDOUT at
 * KILN_DRAIN_TIMEOUT_MS, and a program that then ends the process without
 * kiln_pool_free (the README's way out) exits at once and loses nothing:
 * the stuck task's delivery is back in the queue, ready for another
 * worker, and nothing is unacked. */
static void test_stuck_task_exit_without_free(void **state)
{
    it_fix *f = *state;
    const char *const extra[] = {IT_ENV_EXIT_ON_TIMEOUT "=1", NULL};
    kiln_signature *sig;
    long long end, t_term;
    it_proc *p;
    long r, u, n;
    size_t w;

    f->cfg.drain_timeout_ms = 500;
    w = it_start_worker(f, "worker", extra);
    p = &f->procs[w];
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    sig = it_new_sig(IT_TASK_SLEEP, NULL);
    assert_int_equal(kiln_signature_add_arg_int64(sig, "ms", 120000, NULL),
                     KILN_OK);
    it_send_free(f, &sig, 1);
    end = it_ms() + 20000;
    while (it_count(f->log, 'S') < 1 && it_ms() < end)
        it_sleep_ms(10);
    assert_int_equal(it_count(f->log, 'S'), 1);
    it_signal(f, w, SIGTERM);
    t_term = it_ms();
    /* The task sleeps 120 s: a worker waiting in kiln_pool_free for it
     * would still be here. */
    if (!it_wait_exit(f, w, 30000)) {
        it_tail(p->out, 20);
        fail_msg("the worker did not exit after its drain timed out");
    }
    printf("  SIGTERM with a task of 120 s running, drain timeout %u ms: "
           "exited after %lld ms with status %d\n",
           f->cfg.drain_timeout_ms, it_ms() - t_term,
           WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1);
    assert_true(WIFEXITED(p->status));
    assert_int_equal(WEXITSTATUS(p->status), IT_EXIT_ABANDONED);
    assert_int_equal(it_count(f->log, 'F'), 0);
    if (!it_ctl_wait_settled(f->cfg.queue, 1, 20000, &r, &u, &n))
        fail_msg("queue: ready %ld unacked %ld, want 1 and 0", r, u);
    assert_int_equal(n, 0);
    f->passed = true;
}

/* Never more than C tasks at once in the worker, never more than the
 * prefetch count unacknowledged at the broker. */
static void test_concurrency_and_prefetch_bounds(void **state)
{
    it_fix *f = *state;
    enum { SENT = 200, C = 4, PREFETCH = 10, MAX_SAMPLES = 16 };
    char counters_path[PATH_MAX], env_counters[PATH_MAX + 32];
    const char *extra[] = {IT_ENV_SLEEP_MS "=100", env_counters, NULL};
    long unacked[MAX_SAMPLES], running[MAX_SAMPLES], r, u, n;
    size_t w, samples = 0, busy = 0;
    it_counters *cnt;
    long long t0, end;
    int fd;

    it_path(counters_path, sizeof(counters_path), f->dir, "counters");
    (void)snprintf(env_counters, sizeof(env_counters), "%s=%s", IT_ENV_COUNTERS,
                   counters_path);
    fd = open(counters_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    cnt = mmap(NULL, sizeof(*cnt), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(cnt != MAP_FAILED);

    f->cfg.concurrency = C;
    f->cfg.prefetch = PREFETCH;
    w = it_start_worker(f, "worker", extra);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    t0 = it_ms();
    it_send(f, SENT, SENT, NULL);

    /* rabbitmqctl takes about half a second: a sample every turn. */
    end = it_ms() + 60000;
    while (it_count(f->log, 'F') < SENT && it_ms() < end) {
        if (samples < MAX_SAMPLES && it_ctl_queue(f->cfg.queue, &r, &u, &n) &&
            it_count(f->log, 'F') < SENT) {
            running[samples] = atomic_load(&cnt->running);
            unacked[samples++] = u;
            busy += u > 0;
        }
        it_sleep_ms(20);
    }
    assert_int_equal(it_count(f->log, 'F'), SENT);
    printf("  %d tasks of 100 ms, C=%d, prefetch %d: done in %lld ms; most "
           "running at once %ld; unacked samples:",
           SENT, C, PREFETCH, it_ms() - t0, atomic_load(&cnt->max_running));
    for (size_t i = 0; i < samples; i++)
        printf(" %ld", unacked[i]);
    printf(" (running then:");
    for (size_t i = 0; i < samples; i++)
        printf(" %ld", running[i]);
    printf(")\n");

    assert_true(atomic_load(&cnt->max_running) <= C);
    assert_int_equal(atomic_load(&cnt->max_running), C); /* it was busy */
    for (size_t i = 0; i < samples; i++)
        assert_true(unacked[i] <= PREFETCH);
    /* Sampled while the window was in use (rabbitmqctl takes 0.5 to 3 s
     * a call, depending on the load of the machine). */
    assert_true(busy >= 2);
    assert_int_equal(atomic_load(&cnt->started), SENT);
    assert_int_equal(atomic_load(&cnt->finished), SENT);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 10000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
    munmap(cnt, sizeof(*cnt));
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sigterm_drains, setup_drain,
                                        it_teardown),
        cmocka_unit_test_setup_teardown(test_stuck_task_exit_without_free,
                                        setup_drain, it_teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_and_prefetch_bounds,
                                        setup_limits, it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    /* KILN_IT_FILTER=test_stuck* runs one test (cmocka's pattern). */
    if (getenv("KILN_IT_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_IT_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
