/* A worker pool's start on the in-memory broker: kiln_pool_wait_ready
 * tells when it consumes; a broker that is down at start is retried with
 * a log line saying why, until it is up; a stop or SIGTERM during that
 * first connection ends kiln_pool_start at once and cleanly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mocks/mocks.h"
#include "workerpool/pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUEUE "start_tasks"

/* ---- a log sink the test can wait on ------------------------------------ */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t log_cv = PTHREAD_COND_INITIALIZER;
static int unreachable_lines; /* "cannot reach the broker" */
static int consuming_lines;   /* "consuming queue=" */
static char last_unreachable[512];

static void sink(kiln_log_level level, const char *line, void *user)
{
    (void)level;
    (void)user;
    pthread_mutex_lock(&log_mu);
    if (strstr(line, "cannot reach the broker") != NULL) {
        unreachable_lines++;
        (void)snprintf(last_unreachable, sizeof(last_unreachable), "%s", line);
    }
    if (strstr(line, "consuming queue=" QUEUE) != NULL)
        consuming_lines++;
    pthread_cond_broadcast(&log_cv);
    pthread_mutex_unlock(&log_mu);
}

/* Waits (10 s at most) until *counter reaches `want`; returns it. */
static int wait_lines(const int *counter, int want)
{
    struct timespec ts;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&log_mu);
    while (*counter < want &&
           pthread_cond_timedwait(&log_cv, &log_mu, &ts) == 0)
        ;
    n = *counter;
    pthread_mutex_unlock(&log_mu);
    return n;
}

/* ---- fixture ------------------------------------------------------------- */

typedef struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *producer;
    kiln_pool *pool;
    pthread_t thread;
    bool started;
    kiln_err start_rc;
    kiln_error start_err;
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

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    kiln_error err;

    pthread_mutex_lock(&log_mu);
    unreachable_lines = consuming_lines = 0;
    last_unreachable[0] = '\0';
    pthread_mutex_unlock(&log_mu);
    atomic_store(&runs, 0);
    kiln_config_init(&f->cfg);
    strcpy(f->cfg.queue, QUEUE);
    strcpy(f->cfg.binding_key, QUEUE);
    strcpy(f->cfg.dead_letter_queue, QUEUE ".dead");
    strcpy(f->cfg.dead_letter_exchange, QUEUE ".dlx");
    f->cfg.concurrency = 2;
    f->cfg.prefetch = 8;
    f->cfg.log_level = KILN_LOG_NOTICE;
    kiln_log_set_sink(sink, NULL);
    f->srv = kiln__mock_server_new(&err);
    f->producer = kiln__mock_broker_new(f->srv, &err);
    assert_int_equal(kiln__broker_connect(f->producer, &err), KILN_OK);
    f->pool = kiln_pool_new(&f->cfg, 0, "starter", &err);
    assert_non_null(f->pool);
    kiln__pool_set_broker_factory(f->pool, factory, f->srv);
    assert_int_equal(
        kiln_pool_register(f->pool, "work", work, NULL, NULL, &err), KILN_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    if (f->started) {
        kiln_pool_stop(f->pool);
        kiln_pool_stop(f->pool);
        pthread_join(f->thread, NULL);
    }
    kiln_pool_free(f->pool);
    kiln__broker_destroy(f->producer);
    kiln__mock_server_free(f->srv);
    kiln_log_set_sink(NULL, NULL);
    kiln_log_set_level(KILN_LOG_OFF);
    free(f);
    return 0;
}

static void *start_main(void *arg)
{
    fixture *f = arg;

    f->start_rc = kiln_pool_start(f->pool, &f->start_err);
    return NULL;
}

static void start(fixture *f)
{
    assert_int_equal(pthread_create(&f->thread, NULL, start_main, f), 0);
    f->started = true;
}

static kiln_err join(fixture *f)
{
    pthread_join(f->thread, NULL);
    f->started = false;
    return f->start_rc;
}

/* Sends one "work" task on the test's own connection (the queue must
 * exist: the pool's declare made it). */
static void send_work(fixture *f)
{
    kiln_signature *sig = kiln_signature_new("work", NULL);
    const kiln_signature *one[1] = {sig};
    kiln_error err;

    assert_int_equal(
        kiln__send_tasks(&f->cfg, f->producer, NULL, one, 1, NULL, &err),
        KILN_OK);
    kiln_signature_free(sig);
}

/* ---- tests --------------------------------------------------------------- */

/* Before start: not ready, and the error says why. Once started it is
 * ready as soon as it consumes, tasks sent then run, and after the stop
 * every wait says closed. */
static void test_wait_ready(void **state)
{
    fixture *f = *state;
    kiln_error err;

    assert_int_equal(kiln_pool_wait_ready(f->pool, 0, &err), KILN_ETIMEDOUT);
    assert_non_null(strstr(err.message, "not consuming queue " QUEUE));
    assert_non_null(strstr(err.message, "kiln_pool_start has not been called"));
    start(f);
    assert_int_equal(kiln_pool_wait_ready(f->pool, 10000, &err), KILN_OK);
    assert_int_equal(wait_lines(&consuming_lines, 0), 1); /* logged first */
    assert_int_equal(kiln_pool_wait_ready(f->pool, 0, &err), KILN_OK);
    send_work(f);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 10000),
                     KILN_OK);
    assert_int_equal(atomic_load(&runs), 1);
    kiln_pool_stop(f->pool);
    assert_int_equal(kiln_pool_wait_ready(f->pool, 10000, &err), KILN_ECLOSED);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(kiln_pool_wait_ready(f->pool, 0, &err), KILN_ECLOSED);
    assert_non_null(strstr(err.message, "stopping"));
    assert_int_equal(kiln_pool_wait_ready(NULL, 0, &err), KILN_EINVAL);
}

/* The broker is down when the worker starts: kiln_pool_start keeps
 * trying and logs why, kiln_pool_wait_ready times out with that reason;
 * once the broker is up the worker consumes and runs tasks. */
static void test_broker_down_at_start(void **state)
{
    fixture *f = *state;
    kiln_error err;

    kiln__mock_server_refuse_connections(f->srv, true);
    start(f);
    assert_true(wait_lines(&unreachable_lines, 2) >= 2);
    pthread_mutex_lock(&log_mu);
    assert_non_null(strstr(last_unreachable, "pool=starter cannot reach the "
                                             "broker: mock broker: "
                                             "connection refused (injected)"));
    assert_non_null(strstr(last_unreachable, "retrying in"));
    pthread_mutex_unlock(&log_mu);
    assert_int_equal(kiln_pool_wait_ready(f->pool, 50, &err), KILN_ETIMEDOUT);
    assert_non_null(strstr(err.message, "connection refused (injected)"));
    assert_int_equal(kiln__mock_server_connects(f->srv), 1); /* the test's */
    kiln__mock_server_refuse_connections(f->srv, false);
    assert_int_equal(kiln_pool_wait_ready(f->pool, 20000, &err), KILN_OK);
    send_work(f);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 10000),
                     KILN_OK);
    assert_int_equal(atomic_load(&runs), 1);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
}

/* A stop while the first connection is still being retried ends
 * kiln_pool_start without waiting out the backoff, with KILN_OK: there
 * was nothing to drain. */
static void test_stop_during_first_connection(void **state)
{
    fixture *f = *state;
    kiln_error err;

    kiln__mock_server_refuse_connections(f->srv, true);
    start(f);
    assert_true(wait_lines(&unreachable_lines, 1) >= 1);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(kiln_pool_wait_ready(f->pool, 0, &err), KILN_ECLOSED);
    assert_int_equal(atomic_load(&runs), 0);
}

/* The same with SIGTERM, as a process manager stops a worker that never
 * reached its broker. */
static void test_sigterm_during_first_connection(void **state)
{
    fixture *f = *state;

    kiln__mock_server_refuse_connections(f->srv, true);
    start(f);
    /* kiln's handler is installed before the first attempt. */
    assert_true(wait_lines(&unreachable_lines, 1) >= 1);
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(kiln__mock_server_connects(f->srv), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_wait_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_down_at_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stop_during_first_connection,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_during_first_connection,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
