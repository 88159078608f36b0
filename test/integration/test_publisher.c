/* kiln_pool_send_task(s) against a real RabbitMQ: the node whose URL is in
 * KILN_TEST_AMQP_URL (make check-integration starts a private one). Every
 * test names its exchanges and queues with a random suffix and deletes
 * them afterwards; queue depths are read through a raw rabbitmq-c
 * connection (a passive queue.declare), independently of the code under
 * test. Prints the measured send throughput. */
#include "workerpool/pool.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test/support/amqp_raw.h"

#include <amqp_tcp_socket.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS    8
#define PER_THREAD 2500

typedef struct fixture {
    kiln_config cfg;
    kiln_pool *pool;
} fixture;

/* ---- helpers ---------------------------------------------------------- */

static int64_t now_ms(void)
{
    return kiln__monotonic_ns() / 1000000;
}

static void name_cfg(kiln_config *cfg)
{
    unsigned char r[6];
    char sfx[16];

    kiln_config_init(cfg);
    assert_int_equal(kiln__random(r, sizeof(r), NULL), KILN_OK);
    (void)snprintf(sfx, sizeof(sfx), "%02x%02x%02x%02x%02x%02x", r[0], r[1],
                   r[2], r[3], r[4], r[5]);
    kiln__strlcpy(cfg->broker_url, test_amqp_url(), sizeof(cfg->broker_url));
    (void)snprintf(cfg->exchange, sizeof(cfg->exchange), "kiln_pt.%s.x", sfx);
    (void)snprintf(cfg->queue, sizeof(cfg->queue), "kiln_pt.%s.q", sfx);
    (void)snprintf(cfg->binding_key, sizeof(cfg->binding_key), "task.%s", sfx);
    (void)snprintf(cfg->dead_letter_exchange, sizeof(cfg->dead_letter_exchange),
                   "kiln_pt.%s.dlx", sfx);
    (void)snprintf(cfg->dead_letter_queue, sizeof(cfg->dead_letter_queue),
                   "kiln_pt.%s.dlq", sfx);
    cfg->connect_timeout_ms = 5000;
    cfg->publish_timeout_ms = 30000;
}

static void raw_delete(const kiln_config *cfg)
{
    amqp_connection_state_t c = test_amqp_open();
    const char *queues[] = {cfg->queue, cfg->dead_letter_queue};
    const char *xs[] = {cfg->exchange, cfg->dead_letter_exchange};

    for (size_t i = 0; i < 2; i++) {
        (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(queues[i]), 0, 0);
        (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(xs[i]), 0);
    }
    test_amqp_close(c);
}

static int rabbitmqctl(const char *args)
{
    const char *script = getenv("KILN_TEST_RABBITMQ");
    const char *dir = getenv("KILN_TEST_RABBITMQ_DIR");
    char cmd[2048];

    if (script == NULL || dir == NULL)
        return -1;
    (void)snprintf(cmd, sizeof(cmd), "'%s' ctl '%s' %s >/dev/null 2>&1", script,
                   dir, args);
    return system(cmd);
}

/* `n` signatures of task "add" (caller owns each). */
static kiln_signature **make_sigs(size_t n, const char *routing_key)
{
    kiln_signature **s = calloc(n, sizeof(*s));

    assert_non_null(s);
    for (size_t i = 0; i < n; i++) {
        s[i] = kiln_signature_new("add", NULL);
        assert_non_null(s[i]);
        assert_int_equal(
            kiln_signature_add_arg_int64(s[i], "x", (int64_t)i, NULL), KILN_OK);
        if (routing_key != NULL)
            assert_int_equal(
                kiln_signature_set_routing_key(s[i], routing_key, NULL),
                KILN_OK);
    }
    return s;
}

static void free_sigs(kiln_signature **s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kiln_signature_free(s[i]);
    free(s);
}

static int setup(void **state)
{
    fixture *f;
    kiln_error err;

    (void)
        test_amqp_url(); /* fails the test, before anything to free, if unset */
    f = calloc(1, sizeof(*f));
    assert_non_null(f);
    name_cfg(&f->cfg);
    if ((f->pool = kiln_pool_new(&f->cfg, 1, "it-publisher", &err)) == NULL)
        fail_msg("kiln_pool_new: %s", err.message);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    kiln_pool_free(f->pool);
    raw_delete(&f->cfg);
    free(f);
    return 0;
}

/* ---- single sends from many threads -------------------------------------- */

typedef struct sender {
    kiln_pool *pool;
    kiln_signature **sigs;
    size_t n;
    pthread_barrier_t *go;
    atomic_bool *stop; /* NULL: send all n once */
    size_t ok, failed;
    kiln_error first;
} sender;

static void *send_loop(void *arg)
{
    sender *s = arg;

    pthread_barrier_wait(s->go);
    for (size_t i = 0; s->stop != NULL ? !atomic_load(s->stop) : i < s->n;
         i++) {
        kiln_error err;
        if (kiln_pool_send_task(s->pool, s->sigs[i % s->n], &err) == KILN_OK)
            s->ok++;
        else if (s->failed++ == 0)
            s->first = err;
    }
    return NULL;
}

/* Runs `threads` senders; returns the milliseconds from start to the last
 * join. */
static int64_t run_senders(sender *s, unsigned threads)
{
    pthread_t t[THREADS];
    pthread_barrier_t go;
    int64_t t0;

    assert_int_equal(pthread_barrier_init(&go, NULL, threads + 1), 0);
    for (unsigned i = 0; i < threads; i++) {
        s[i].go = &go;
        assert_int_equal(pthread_create(&t[i], NULL, send_loop, &s[i]), 0);
    }
    pthread_barrier_wait(&go);
    t0 = now_ms();
    for (unsigned i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    t0 = now_ms() - t0;
    pthread_barrier_destroy(&go);
    return t0;
}

static void test_send_task_8_threads(void **state)
{
    fixture *f = *state;
    sender s[THREADS];
    int64_t ms;
    long n;

    for (unsigned i = 0; i < THREADS; i++)
        s[i] = (sender){.pool = f->pool,
                        .sigs = make_sigs(PER_THREAD, NULL),
                        .n = PER_THREAD};
    ms = run_senders(s, THREADS);
    for (unsigned i = 0; i < THREADS; i++) {
        if (s[i].failed > 0)
            fail_msg("thread %u: %zu failed: %s", i, s[i].failed,
                     s[i].first.message);
        assert_int_equal(s[i].ok, PER_THREAD);
        free_sigs(s[i].sigs, PER_THREAD);
    }
    n = test_amqp_count(f->cfg.queue);
    printf("throughput: kiln_pool_send_task from %d threads: %d tasks in "
           "%lld ms = %.0f tasks/s (pool_size %u)\n",
           THREADS, THREADS * PER_THREAD, (long long)ms,
           THREADS * PER_THREAD * 1000.0 / (double)(ms > 0 ? ms : 1),
           f->cfg.pool_size);
    assert_int_equal(n, THREADS * PER_THREAD);
}

/* ---- batches --------------------------------------------------------------
 */

static void test_send_tasks_10000_waits_once(void **state)
{
    fixture *f = *state;
    enum { N = 10000 };
    kiln_signature **own = make_sigs(N, NULL);
    kiln_err *st = calloc(N, sizeof(*st));
    kiln_error err;
    int64_t t0;
    kiln_err rc;

    assert_non_null(st);
    t0 = now_ms();
    rc = kiln_pool_send_tasks(f->pool, (const kiln_signature *const *)own, N,
                              st, &err);
    t0 = now_ms() - t0;
    if (rc != KILN_OK)
        fail_msg("send_tasks: %s", err.message);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(st[i], KILN_OK);
    printf("throughput: one kiln_pool_send_tasks of %d: %lld ms = %.0f "
           "tasks/s\n",
           N, (long long)t0, N * 1000.0 / (double)(t0 > 0 ? t0 : 1));
    assert_int_equal(test_amqp_count(f->cfg.queue), N);
    free(st);
    free_sigs(own, N);
}

static void test_send_tasks_batches_of_1000(void **state)
{
    fixture *f = *state;
    enum { BATCH = 1000, BATCHES = 20 };
    kiln_signature **own = make_sigs(BATCH, NULL);
    kiln_err st[BATCH];
    kiln_error err;
    int64_t t0 = now_ms();

    for (int b = 0; b < BATCHES; b++)
        if (kiln_pool_send_tasks(f->pool, (const kiln_signature *const *)own,
                                 BATCH, st, &err) != KILN_OK)
            fail_msg("batch %d: %s", b, err.message);
    t0 = now_ms() - t0;
    printf("throughput: kiln_pool_send_tasks, %d batches of %d from one "
           "thread: %lld ms = %.0f tasks/s\n",
           BATCHES, BATCH, (long long)t0,
           BATCHES * BATCH * 1000.0 / (double)(t0 > 0 ? t0 : 1));
    assert_int_equal(test_amqp_count(f->cfg.queue), BATCH * BATCHES);
    free_sigs(own, BATCH);
}

static void test_send_tasks_unroutable_in_batch(void **state)
{
    fixture *f = *state;
    kiln_signature **own = make_sigs(10, NULL);
    kiln_err st[10];
    kiln_error err;

    assert_int_equal(kiln_signature_set_routing_key(own[4], "nowhere", NULL),
                     KILN_OK);
    assert_int_equal(kiln_pool_send_tasks(f->pool,
                                          (const kiln_signature *const *)own,
                                          10, st, &err),
                     KILN_EBROKER);
    printf("unroutable: %s\n", err.message);
    for (int i = 0; i < 10; i++)
        assert_int_equal(st[i], i == 4 ? KILN_EBROKER : KILN_OK);
    assert_non_null(strstr(err.message, "task 4 (add)"));
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    /* The connection is still fine: the next send goes through. */
    assert_int_equal(kiln_pool_send_task(f->pool, own[0], &err), KILN_OK);
    assert_int_equal(test_amqp_count(f->cfg.queue), 9 + 1);
    free_sigs(own, 10);
}

/* ---- a broker restart ------------------------------------------------------
 */

/* Senders keep going while the broker's application stops and starts
 * again: their sends wait through it (the deadline is 30 s), the
 * publisher reconnects, and every send that returned KILN_OK is in the
 * queue (a resent message may be there twice: at least once). */
static void test_broker_restart_while_sending(void **state)
{
    fixture *f = *state;
    enum { T = 4, N = 200 };
    sender s[T];
    pthread_t t[T];
    pthread_barrier_t go;
    atomic_bool stop;
    size_t ok = 0;
    long n;

    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        printf("broker given from outside: no restart test\n");
        return;
    }
    atomic_init(&stop, false);
    assert_int_equal(pthread_barrier_init(&go, NULL, T + 1), 0);
    for (unsigned i = 0; i < T; i++) {
        s[i] = (sender){.pool = f->pool,
                        .sigs = make_sigs(N, NULL),
                        .n = N,
                        .go = &go,
                        .stop = &stop};
        assert_int_equal(pthread_create(&t[i], NULL, send_loop, &s[i]), 0);
    }
    pthread_barrier_wait(&go);
    usleep(300000);
    assert_int_equal(rabbitmqctl("stop_app"), 0);
    usleep(500000);
    assert_int_equal(rabbitmqctl("start_app"), 0);
    usleep(1500000);
    atomic_store(&stop, true);
    for (unsigned i = 0; i < T; i++) {
        pthread_join(t[i], NULL);
        if (s[i].failed > 0)
            fail_msg("thread %u: %zu failed: %s", i, s[i].failed,
                     s[i].first.message);
        ok += s[i].ok;
        free_sigs(s[i].sigs, N);
    }
    pthread_barrier_destroy(&go);
    n = test_amqp_count(f->cfg.queue);
    printf("restart: %zu sends confirmed, %ld messages in the queue\n", ok, n);
    assert_true(n >= (long)ok);
}

#define TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_send_task_8_threads),
        TEST(test_send_tasks_10000_waits_once),
        TEST(test_send_tasks_batches_of_1000),
        TEST(test_send_tasks_unroutable_in_batch),
        TEST(test_broker_restart_while_sending),
    };

    kiln_log_set_level(KILN_LOG_ERR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
