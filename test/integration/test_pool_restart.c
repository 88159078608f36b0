/* The worker pool across a broker restart: while one producer process
 * keeps sending and one worker process keeps consuming, the RabbitMQ
 * application is stopped and started again (rabbitmqctl stop_app /
 * start_app through scripts/rabbitmq.sh). Both processes must recover by
 * themselves, and every task whose send was confirmed must run.
 * Fixture and conventions: pool_it.h. */
#include "test/support/pool_it.h"

#define BEFORE 1000 /* confirmed tasks before the restart */
#define AFTER  1000 /* confirmed tasks after it */

static int setup_restart(void **state)
{
    return it_setup(state, "restart");
}

/* Events of `kind` in `path` logged after `since_ms`, and the first one's
 * time (0 when none). */
static size_t count_since(const char *path, char kind, long long since_ms,
                          long long *first_ms)
{
    it_events ev;
    size_t n = 0;

    *first_ms = 0;
    it_read_events(path, &ev);
    for (size_t i = 0; i < ev.n; i++) {
        if (ev.v[i].kind != kind || ev.v[i].ms < since_ms)
            continue;
        if (n++ == 0 || ev.v[i].ms < *first_ms)
            *first_ms = ev.v[i].ms;
    }
    it_events_free(&ev);
    return n;
}

/* Prints the lines of `path` that contain `text`. */
static void print_lines_with(const char *path, const char *text)
{
    size_t len;
    char *buf = it_slurp(path, &len), *line, *save = NULL;

    for (line = buf != NULL ? strtok_r(buf, "\n", &save) : NULL; line != NULL;
         line = strtok_r(NULL, "\n", &save))
        if (strstr(line, text) != NULL)
            printf("    %s\n", line);
    free(buf);
}

/* Restarts the broker's application; returns how long it was down. */
static long long restart_broker(it_fix *f, size_t worker, size_t sender,
                                char *sent)
{
    long long t_stop = it_ms(), t_up, end;
    int rc;

    rc = it_rabbitmq("stop_app");
    if (rc != 0)
        fail_msg("rabbitmq.sh stop_app: exit %d", rc);
    f->broker_stopped = true;
    printf("  stop_app took %lld ms\n", it_ms() - t_stop);
    /* Down until both sides have noticed: the worker logs the lost
     * connection; the sender sees a failed send, unless its publisher
     * rides out the whole outage within its publish timeout. */
    end = it_ms() + 10000;
    while (
        !it_file_contains(f->procs[worker].out, "lost its broker connection") &&
        it_ms() < end)
        it_sleep_ms(20);
    if (!it_file_contains(f->procs[worker].out, "lost its broker connection"))
        fail_msg("the worker did not notice the broker going away");
    end = it_ms() + (long long)f->cfg.publish_timeout_ms + 1000;
    while (it_count(sent, 'X') == 0 && it_ms() < end)
        it_sleep_ms(20);
    assert_true(it_alive(f, worker));
    assert_true(it_alive(f, sender));
    rc = it_rabbitmq("start_app");
    if (rc != 0)
        fail_msg("rabbitmq.sh start_app: exit %d", rc);
    f->broker_stopped = false;
    t_up = it_ms();
    printf("  broker down for %lld ms (stop_app to start_app returning); "
           "sender failures during the outage: %zu\n",
           t_up - t_stop, it_count(sent, 'X'));
    return t_up;
}

static size_t start_sender(it_fix *f, const char *sent)
{
    it_env e;
    size_t s;

    it_env_init(&e, f);
    it_env_add(&e, IT_ENV_SENT, "%s", sent);
    it_env_add(&e, IT_ENV_BATCH, "20");
    it_env_add(&e, IT_ENV_PAUSE_MS, "5");
    it_env_add(&e, IT_ENV_SECONDS, "100");
    s = it_spawn(f, "prog_sender", "sender", &e);
    it_env_free(&e);
    return s;
}

/* Waits for new confirms and new runs after start_app, and prints how
 * long each side took to get going again. */
static void wait_recovered(it_fix *f, const char *sent, long long t_up)
{
    long long end = t_up + 60000, t_sender = 0, t_worker = 0;

    while ((count_since(sent, 'C', t_up, &t_sender) < AFTER ||
            count_since(f->log, 'F', t_up, &t_worker) < AFTER / 2) &&
           it_ms() < end)
        it_sleep_ms(50);
    if (count_since(sent, 'C', t_up, &t_sender) < AFTER)
        fail_msg("the sender did not recover within 60 s of start_app");
    if (count_since(f->log, 'F', t_up, &t_worker) < AFTER / 2)
        fail_msg("the worker did not recover within 60 s of start_app");
    printf("  recovery after start_app: sender's first confirm in %lld ms, "
           "worker's first task in %lld ms\n",
           t_sender - t_up, t_worker - t_up);
}

/* Waits until every task the sender logged as confirmed has run, all in
 * worker process `w`. */
static void expect_confirmed_ran(it_fix *f, const char *sent, size_t w,
                                 long long t_up)
{
    it_events ev = {0}, sev;
    it_uuid *confirmed;
    size_t n_confirmed;
    long long end = it_ms() + 60000;
    it_tally t;

    it_read_events(sent, &sev);
    confirmed = it_uuids_of(&sev, 'C', &n_confirmed);
    do {
        it_events_free(&ev);
        it_read_events(f->log, &ev);
        t = it_tally_of(&ev, 'F', confirmed, n_confirmed);
        if (t.missing > 0)
            it_sleep_ms(100);
    } while (t.missing > 0 && it_ms() < end);
    if (t.missing > 0)
        fail_msg("%zu of %zu confirmed task(s) never ran, e.g. %s", t.missing,
                 n_confirmed, t.first_missing);
    for (size_t i = 0; i < ev.n; i++)
        assert_int_equal(ev.v[i].pid, f->procs[w].pid);
    printf("  %zu confirmed, %zu failed sends; every confirmed task ran, the "
           "last %lld ms after start_app; %zu extra runs of %zu task(s); "
           "%zu runs of sends reported failed\n",
           n_confirmed, it_count(sent, 'X'), it_ms() - t_up, t.dup_runs,
           t.dup_tasks, t.unknown);
    it_events_free(&ev);
    it_events_free(&sev);
    free(confirmed);
}

/* The producer and the consumer survive a broker restart in the same
 * processes; no confirmed task is lost. */
static void test_broker_restart(void **state)
{
    it_fix *f = *state;
    char sent[PATH_MAX];
    long long t_up;
    size_t w, s;
    long r, u, n;

    f->cfg.concurrency = 8;
    f->cfg.prefetch = 64;
    f->cfg.heartbeat_s = 10;
    f->cfg.publish_timeout_ms = 5000;
    it_path(sent, sizeof(sent), f->dir, "sent.log");
    w = it_start_worker(f, "worker", NULL);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    s = start_sender(f, sent);
    assert_true(it_wait_count(sent, 'C', BEFORE, 30000) >= BEFORE);
    assert_true(it_wait_count(f->log, 'F', BEFORE / 2, 30000) >= BEFORE / 2);

    t_up = restart_broker(f, w, s, sent);
    wait_recovered(f, sent, t_up);
    assert_true(it_alive(f, w)); /* the same processes throughout */
    it_signal(f, s, SIGTERM);
    (void)it_expect_exit0(f, s, 30000);
    print_lines_with(f->procs[s].out, "prog_sender");

    expect_confirmed_ran(f, sent, w, t_up);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 20000, &r, &u, &n))
        fail_msg("queue not settled: ready %ld unacked %ld", r, u);
    assert_int_equal(n, 1);
    assert_true(it_alive(f, w));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
    print_lines_with(f->procs[w].out, "lost its broker");
    print_lines_with(f->procs[w].out, "(reconnected)");
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_broker_restart, setup_restart,
                                        it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
