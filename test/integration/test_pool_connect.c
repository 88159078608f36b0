/* The first connection, on a real RabbitMQ: a worker started while the
 * broker is stopped keeps trying, logs why, and consumes once it is up
 * (kiln_pool_wait_ready says when); a SIGTERM while a worker still makes
 * its first connection ends it at once with exit status 0; a send with no
 * broker to reach fails within KILN_PUBLISH_TIMEOUT_MS with the connect
 * error; and a producer started before any worker declares the queue it
 * sends to, so its first task, delayed or not, is routed there.
 * Fixture and conventions: pool_it.h. */
#include "test/support/pool_it.h"

#include <pthread.h>
#include <stdatomic.h>

static int setup_connect(void **state)
{
    return it_setup(state, "connect");
}

/* ---- a log sink to wait on ----------------------------------------------- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t log_cv = PTHREAD_COND_INITIALIZER;
static int unreachable; /* "cannot reach the broker" lines */
static char first_unreachable[512];

static void sink(kiln_log_level level, const char *line, void *user)
{
    (void)level;
    (void)user;
    pthread_mutex_lock(&log_mu);
    if (strstr(line, "cannot reach the broker") != NULL && unreachable++ == 0)
        (void)snprintf(first_unreachable, sizeof(first_unreachable), "%s",
                       line);
    pthread_cond_broadcast(&log_cv);
    pthread_mutex_unlock(&log_mu);
}

static int wait_unreachable(int want, int timeout_s)
{
    struct timespec ts;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_s;
    pthread_mutex_lock(&log_mu);
    while (unreachable < want &&
           pthread_cond_timedwait(&log_cv, &log_mu, &ts) == 0)
        ;
    n = unreachable;
    pthread_mutex_unlock(&log_mu);
    return n;
}

/* ---- an in-process worker ------------------------------------------------ */

typedef struct worker {
    kiln_pool *pool;
    pthread_t thread;
    kiln_err rc;
    kiln_error err;
    atomic_int ran;
} worker;

static kiln_err count_task(kiln_task_ctx *ctx, void *user)
{
    worker *w = user;

    (void)ctx;
    atomic_fetch_add(&w->ran, 1);
    return KILN_OK;
}

static void *worker_main(void *arg)
{
    worker *w = arg;

    w->rc = kiln_pool_start(w->pool, &w->err);
    return NULL;
}

/* ---- tests --------------------------------------------------------------- */

/* The broker is stopped when the worker starts. kiln_pool_start keeps
 * trying (capped backoff) and logs why each time; kiln_pool_wait_ready
 * times out with that reason. Once the broker is back the worker
 * consumes, kiln_pool_wait_ready returns, and tasks sent then run. */
static void test_worker_started_before_its_broker(void **state)
{
    it_fix *f = *state;
    kiln_config cfg = f->cfg;
    worker w = {0};
    long long t0;
    kiln_error err;

    cfg.handle_signals = false; /* the test's own process */
    assert_int_equal(it_rabbitmq("stop_app"), 0);
    f->broker_stopped = true;
    pthread_mutex_lock(&log_mu);
    unreachable = 0;
    pthread_mutex_unlock(&log_mu);
    kiln_log_set_sink(sink, NULL);
    w.pool = kiln_pool_new(&cfg, 2, "early", &err);
    assert_non_null(w.pool);
    assert_int_equal(
        kiln_pool_register(w.pool, IT_TASK_RECORD, count_task, &w, NULL, &err),
        KILN_OK);
    assert_int_equal(pthread_create(&w.thread, NULL, worker_main, &w), 0);
    assert_true(wait_unreachable(2, 30) >= 2);
    printf("  broker stopped, worker started: %s\n", first_unreachable);
    assert_non_null(strstr(first_unreachable, "pool=early cannot reach the "
                                              "broker: amqp connect to"));
    assert_non_null(strstr(first_unreachable, "retrying in"));
    assert_int_equal(kiln_pool_wait_ready(w.pool, 100, &err), KILN_ETIMEDOUT);
    printf("  kiln_pool_wait_ready: %s\n", err.message);
    assert_non_null(strstr(err.message, "amqp connect to"));

    assert_int_equal(it_rabbitmq("start_app"), 0);
    f->broker_stopped = false;
    t0 = it_ms();
    if (kiln_pool_wait_ready(w.pool, 60000, &err) != KILN_OK)
        fail_msg("kiln_pool_wait_ready: %s", err.message);
    printf("  consuming %lld ms after start_app returned, after %d failed "
           "attempts\n",
           it_ms() - t0, wait_unreachable(0, 0));
    it_send(f, 3, 3, NULL);
    t0 = it_ms() + 20000;
    while (atomic_load(&w.ran) < 3 && it_ms() < t0)
        it_sleep_ms(10);
    assert_int_equal(atomic_load(&w.ran), 3);
    kiln_pool_stop(w.pool);
    pthread_join(w.thread, NULL);
    assert_int_equal(w.rc, KILN_OK);
    kiln_pool_free(w.pool);
    kiln_log_set_sink(NULL, NULL);
    f->passed = true;
}

/* A worker process whose broker cannot be reached gets SIGTERM while it
 * still tries to connect: it stops at once, drained, exit status 0. */
static void test_sigterm_during_first_connection(void **state)
{
    it_fix *f = *state;
    long long end, took;
    char *out;
    size_t w, len;

    it_closed_url(f->cfg.broker_url, sizeof(f->cfg.broker_url));
    w = it_start_worker(f, "worker", NULL);
    end = it_ms() + 20000;
    do {
        it_sleep_ms(20);
        out = it_slurp(f->procs[w].out, &len);
        if (out != NULL && strstr(out, "cannot reach the broker") != NULL)
            break;
        free(out);
        out = NULL;
    } while (it_ms() < end);
    assert_non_null(out);
    free(out);
    it_signal(f, w, SIGTERM);
    took = it_expect_exit0(f, w, 10000);
    printf("  SIGTERM while connecting: exit 0 after %lld ms\n", took);
    out = it_slurp(f->procs[w].out, &len);
    assert_non_null(out);
    assert_non_null(strstr(out, "drained"));
    free(out);
    f->passed = true;
}

/* No broker to reach: a send fails within KILN_PUBLISH_TIMEOUT_MS as not
 * sent (KILN_EBROKER, so the task certainly did not reach a broker), and
 * the message names the connect error. */
static void test_send_without_broker(void **state)
{
    it_fix *f = *state;
    kiln_config cfg = f->cfg;
    kiln_signature *sig = it_new_sig(IT_TASK_RECORD, NULL);
    kiln_pool *p;
    kiln_error err;
    long long t0;
    kiln_err rc;

    it_closed_url(cfg.broker_url, sizeof(cfg.broker_url));
    cfg.publish_timeout_ms = 1500;
    p = kiln_pool_new(&cfg, 1, "lonely", &err);
    assert_non_null(p);
    t0 = it_ms();
    rc = kiln_pool_send_task(p, sig, &err);
    printf("  send with no broker: %s after %lld ms: %s\n", kiln_strerror(rc),
           it_ms() - t0, err.message);
    assert_int_equal(rc, KILN_EBROKER);
    assert_non_null(strstr(err.message, "not sent within 1500 ms"));
    assert_non_null(strstr(err.message, "amqp connect to 127.0.0.1:"));
    kiln_signature_free(sig);
    kiln_pool_free(p);
    f->passed = true;
}

/* A producer pool that was never started, with no worker and no queue
 * yet: its publishing connection declares the topology of its
 * configuration, so its first task is routed to the queue it names, and
 * so is a delayed one (the send-time probe finds the key that connection
 * bound). A task for a routing key nobody bound is still refused. */
static void test_producer_declares_its_queue(void **state)
{
    it_fix *f = *state;
    kiln_signature *sig;
    kiln_error err;
    long ready = -1;

    assert_false(it_queue_info(f->cfg.queue, NULL, NULL));
    it_send(f, 1, 1, NULL);
    assert_true(it_queue_info(f->cfg.queue, &ready, NULL));
    assert_int_equal(ready, 1);
    assert_true(it_queue_info(f->cfg.dead_letter_queue, NULL, NULL));

    sig = it_new_sig(IT_TASK_RECORD, NULL);
    kiln_signature_set_eta(sig, kiln__realtime_ns() + 500 * 1000000LL);
    it_send_free(f, &sig, 1);
    assert_int_equal(it_wait_ready(f->cfg.queue, 2, 20000), 2);

    sig = it_new_sig(IT_TASK_RECORD, NULL);
    assert_int_equal(kiln_signature_set_routing_key(sig, "nobody.bound", NULL),
                     KILN_OK);
    assert_int_equal(kiln_pool_send_task(it_pool(f), sig, &err), KILN_EBROKER);
    printf("  to an unbound key: %s\n", err.message);
    kiln_signature_free(sig);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_worker_started_before_its_broker,
                                        setup_connect, it_teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_during_first_connection,
                                        setup_connect, it_teardown),
        cmocka_unit_test_setup_teardown(test_send_without_broker, setup_connect,
                                        it_teardown),
        cmocka_unit_test_setup_teardown(test_producer_declares_its_queue,
                                        setup_connect, it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    if (getenv("KILN_IT_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_IT_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
