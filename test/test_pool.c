/* The worker pool on the in-memory broker: every task runs, concurrency and
 * prefetch bounds hold, bad input is dead-lettered, a lost connection is
 * survived, stop and SIGTERM drain. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mocks/mocks.h"
#include "test/support/pool_runner.h"
#include "workerpool/pool.h"

#include <signal.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUEUE "pool_tasks"

typedef struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *producer; /* owned by the test thread */
    kiln_pool *pool;
    pool_runner run;
    kiln__store *store; /* NULL unless a test records states */
} fixture;

/* What the tasks record; read on the test thread after joins only, or
 * through atomics. */
static atomic_int runs, running_now, max_running, finished;
static atomic_int sleep_ms;
static atomic_int raise_term_at; /* run number that sends SIGTERM, 0 = none */
static atomic_int seen[4096];    /* runs per task index */

static kiln__broker *factory(void *ctx, const kiln_config *cfg, kiln_error *err)
{
    (void)cfg;
    return kiln__mock_broker_new(ctx, err);
}

static void sleep_for(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static kiln_err work(kiln_task_ctx *ctx, void *user)
{
    int64_t idx = 0;
    int now = atomic_fetch_add(&running_now, 1) + 1, max;
    int n = atomic_fetch_add(&runs, 1) + 1;

    (void)user;
    max = atomic_load(&max_running);
    while (now > max && !atomic_compare_exchange_weak(&max_running, &max, now))
        ;
    if (kiln_signature_arg_int64(kiln_task_signature(ctx), 0, &idx, NULL) ==
            KILN_OK &&
        idx >= 0 && idx < 4096)
        atomic_fetch_add(&seen[idx], 1);
    if (atomic_load(&raise_term_at) == n)
        kill(getpid(), SIGTERM);
    if (atomic_load(&sleep_ms) > 0)
        sleep_for(atomic_load(&sleep_ms));
    atomic_fetch_sub(&running_now, 1);
    atomic_fetch_add(&finished, 1);
    return KILN_OK;
}

static atomic_bool release_slow;
static atomic_int slow_running;

/* Runs until the test sets release_slow (10 s at most). */
static kiln_err slow(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    atomic_fetch_add(&slow_running, 1);
    for (int i = 0; i < 10000 && !atomic_load(&release_slow); i++)
        sleep_for(1);
    atomic_fetch_sub(&slow_running, 1);
    return KILN_OK;
}

static kiln_err fails(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_fail(ctx, "disk full");
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    kiln_error err;

    kiln_log_set_level(KILN_LOG_OFF);
    atomic_store(&runs, 0);
    atomic_store(&running_now, 0);
    atomic_store(&max_running, 0);
    atomic_store(&finished, 0);
    atomic_store(&sleep_ms, 0);
    atomic_store(&raise_term_at, 0);
    for (int i = 0; i < 4096; i++)
        atomic_store(&seen[i], 0);
    kiln_config_init(&f->cfg);
    strcpy(f->cfg.queue, QUEUE);
    strcpy(f->cfg.binding_key, QUEUE);
    strcpy(f->cfg.dead_letter_queue, QUEUE ".dead");
    strcpy(f->cfg.dead_letter_exchange, QUEUE ".dlx");
    f->cfg.prefetch = 16;
    f->cfg.concurrency = 4;
    f->cfg.log_level = KILN_LOG_OFF;
    f->srv = kiln__mock_server_new(&err);
    f->producer = kiln__mock_broker_new(f->srv, &err);
    assert_int_equal(kiln__broker_connect(f->producer, &err), KILN_OK);
    assert_int_equal(kiln__broker_declare(f->producer, &f->cfg, &err), KILN_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    pool_runner_cleanup(&f->run); /* a test failed with its pool running */
    kiln_pool_free(f->pool);
    kiln__store_destroy(f->store);
    kiln__broker_destroy(f->producer);
    kiln__mock_server_free(f->srv);
    free(f);
    return 0;
}

static void make_pool(fixture *f)
{
    kiln_error err;

    f->pool = kiln_pool_new(&f->cfg, 0, "test", &err);
    assert_non_null(f->pool);
    kiln__pool_set_broker_factory(f->pool, factory, f->srv);
    assert_int_equal(
        kiln_pool_register(f->pool, "work", work, NULL, NULL, &err), KILN_OK);
    assert_int_equal(
        kiln_pool_register(f->pool, "fails", fails, NULL, NULL, &err), KILN_OK);
    assert_int_equal(
        kiln_pool_register(f->pool, "slow", slow, NULL, NULL, &err), KILN_OK);
}

static void start(fixture *f)
{
    pool_runner_start(&f->run, f->pool);
}

static kiln_err join(fixture *f)
{
    return pool_runner_join(&f->run);
}

static void send_n(fixture *f, const char *name, int from, int n)
{
    kiln_error err;

    for (int i = from; i < from + n; i++) {
        kiln_signature *sig = kiln_signature_new(name, &err);
        const kiln_signature *one[1] = {sig};
        assert_non_null(sig);
        assert_int_equal(kiln_signature_add_arg_int64(sig, "i", i, &err),
                         KILN_OK);
        assert_int_equal(
            kiln__send_tasks(&f->cfg, f->producer, NULL, one, 1, NULL, &err),
            KILN_OK);
        kiln_signature_free(sig);
    }
}

static void publish_raw(fixture *f, const char *body)
{
    kiln__message m = {.exchange = f->cfg.exchange,
                       .routing_key = f->cfg.binding_key,
                       .body = body,
                       .body_len = strlen(body),
                       .persistent = true};
    kiln_error err;

    assert_int_equal(kiln__broker_publish(f->producer, &m, 1, NULL, &err),
                     KILN_OK);
}

/* Waits (bounded) until `counter` reaches `want`. */
static void wait_count(atomic_int *counter, int want)
{
    for (int i = 0; i < 10000 && atomic_load(counter) < want; i++)
        sleep_for(1);
}

/* Redeliveries held in the delay queues come back (the mock clock skips
 * their wait) until nothing is held, ready or unacked. */
static void wait_held_copies(fixture *f)
{
    for (int i = 0; i < 100; i++) {
        kiln__mock_server_advance(f->srv, 5000);
        if (kiln__mock_server_delayed(f->srv) == 0 &&
            kiln__mock_server_wait_idle(f->srv, QUEUE, 50) == KILN_OK)
            break;
    }
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 5000), KILN_OK);
}

static void test_runs_every_task_once(void **state)
{
    fixture *f = *state;

    make_pool(f);
    send_n(f, "work", 0, 1000);
    start(f);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(atomic_load(&seen[i]), 1);
    assert_int_equal(atomic_load(&runs), 1000);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 0);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_true(atomic_load(&max_running) <= 4);
    assert_true(f->pool->max_running <= 4);
}

static void test_tasks_sent_while_running(void **state)
{
    fixture *f = *state;

    make_pool(f);
    start(f);
    send_n(f, "work", 0, 300);
    wait_count(&finished, 300);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(atomic_load(&runs), 300);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

static void test_concurrency_bound_with_slow_tasks(void **state)
{
    fixture *f = *state;

    f->cfg.concurrency = 3;
    make_pool(f);
    atomic_store(&sleep_ms, 5);
    send_n(f, "work", 0, 60);
    start(f);
    wait_count(&finished, 60);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(atomic_load(&finished), 60);
    assert_int_equal(atomic_load(&max_running), 3);
    assert_true(f->pool->max_running <= 3);
}

static void test_bad_input_goes_to_dead_letters(void **state)
{
    fixture *f = *state;

    make_pool(f);
    send_n(f, "work", 0, 10);
    publish_raw(f, "{not json");
    publish_raw(f, "{\"UUID\":\"task_x\",\"Name\":\"nobody\",\"Args\":null}");
    send_n(f, "fails", 10, 3);
    send_n(f, "work", 20, 10);
    start(f);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(atomic_load(&runs), 20);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 5);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

static void test_survives_a_lost_connection(void **state)
{
    fixture *f = *state;

    make_pool(f);
    send_n(f, "work", 0, 200);
    kiln__mock_server_fail_consume(f->srv, 2);
    start(f);
    wait_count(&finished, 200);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    for (int i = 0; i < 200; i++)
        assert_true(atomic_load(&seen[i]) >= 1); /* at least once */
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

/* The connection drops while one task runs and five wait for a worker:
 * the broker redelivers all six. The five had not started, so their
 * redelivery does not count against KILN_MAX_DELIVERIES (1 here: any
 * counted redelivery would be poison); the running one is not run twice.
 * Each runs exactly once. */
static void test_lost_connection_redeliveries_not_counted(void **state)
{
    fixture *f = *state;

    f->cfg.concurrency = 1;
    f->cfg.max_deliveries = 1;
    make_pool(f);
    atomic_store(&release_slow, false);
    send_n(f, "slow", 100, 1);
    send_n(f, "work", 0, 5);
    start(f);
    for (int i = 0; i < 5000 && atomic_load(&slow_running) == 0; i++)
        sleep_for(1);
    assert_int_equal(atomic_load(&slow_running), 1);
    sleep_for(50);                             /* the five are prefetched */
    kiln__mock_server_fail_consume(f->srv, 1); /* the connection drops */
    sleep_for(100);
    atomic_store(&release_slow, true);
    wait_count(&finished, 5);
    wait_held_copies(f);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(atomic_load(&seen[i]), 1);
    assert_int_equal(atomic_load(&slow_running), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 0);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

/* The dead-letter publish of a bad message fails: the connection is
 * dropped while good jobs from the same fetch are in hand. They must be
 * run or redelivered, and no slot may stay lost. */
static void test_dead_letter_failure_mid_fetch(void **state)
{
    fixture *f = *state;

    make_pool(f);
    send_n(f, "work", 0, 20);
    publish_raw(f, "{not json");
    send_n(f, "work", 20, 20);
    kiln__mock_server_fail_publish(f->srv, 1);
    start(f);
    wait_count(&finished, 40);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    /* The refused dead letter cost its own delivery a resend, nothing
     * else: the connection stayed up and no task ran twice. */
    for (int i = 0; i < 40; i++)
        assert_int_equal(atomic_load(&seen[i]), 1);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 1);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_null(f->pool->leftover); /* every slot came back */
}

/* Failed tasks publish their dead letters as confirmed batches, not one
 * confirm round trip each: with a 20 ms confirm, 200 failures take far
 * fewer than 200 publishes. A nack inside a batch drops the connection
 * for that delivery alone: the confirmed ones are acked, and each task
 * ends in the dead-letter queue exactly once. */
static void test_dead_letters_confirmed_in_batches(void **state)
{
    fixture *f = *state;
    size_t calls;

    make_pool(f);
    send_n(f, "fails", 0, 200);
    kiln__mock_server_set_confirm_delay(f->srv, 20);
    calls = kiln__mock_server_publish_calls(f->srv);
    kiln__mock_server_fail_publish(f->srv, 50);
    start(f);
    for (int i = 0;
         i < 3000 && kiln__mock_server_ready(f->srv, QUEUE ".dead") < 200; i++)
        sleep_for(10);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    calls = kiln__mock_server_publish_calls(f->srv) - calls;
    print_message("200 dead letters in %zu confirmed publishes\n", calls);
    assert_true(calls <= 100);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 200);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_null(f->pool->leftover);
}

/* A long task at the head of the window does not keep the slots of the
 * tasks finished behind it: 100 quick tasks (five times prefetch plus
 * concurrency) run to the end while it still runs. */
static void test_slow_head_does_not_stall(void **state)
{
    fixture *f = *state;

    atomic_store(&release_slow, false);
    make_pool(f);
    send_n(f, "slow", 1000, 1);
    send_n(f, "work", 0, 100);
    start(f);
    wait_count(&finished, 100);
    assert_int_equal(atomic_load(&finished), 100);
    assert_int_equal(atomic_load(&slow_running), 1);
    atomic_store(&release_slow, true);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

static void test_stop_drains_running_tasks(void **state)
{
    fixture *f = *state;

    make_pool(f);
    atomic_store(&sleep_ms, 100);
    send_n(f, "work", 0, 50);
    start(f);
    wait_count(&runs, 4);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    /* Every task that started finished, and was acked; the rest wait in
     * the queue for the next worker. */
    assert_int_equal(atomic_load(&finished), atomic_load(&runs));
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE),
                     50 - (size_t)atomic_load(&finished));
}

static void test_drain_timeout(void **state)
{
    fixture *f = *state;

    f->cfg.drain_timeout_ms = 50;
    make_pool(f);
    atomic_store(&sleep_ms, 400);
    send_n(f, "work", 0, 8);
    start(f);
    wait_count(&runs, 4);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_ETIMEDOUT);
    assert_non_null(strstr(f->run.err.message, "still running"));
    /* The connection closed: every unfinished delivery is back. */
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 8);
    kiln_pool_free(f->pool); /* waits for the running tasks */
    f->pool = NULL;
    assert_int_equal(atomic_load(&finished), 4);
}

/* What late_sender saw: its first send, and the one it makes while
 * kiln_pool_free runs (-1 until made). */
static atomic_int late_first, late_rc;

static bool pool_closing(kiln_pool *pool)
{
    bool closing;

    pthread_mutex_lock(&pool->mu);
    closing = pool->closing;
    pthread_mutex_unlock(&pool->mu);
    return closing;
}

/* Sends a task (which opens the pool's publisher), then outlives the
 * drain: it waits until kiln_pool_free has begun to join the workers and
 * sends again from there. */
static kiln_err late_sender(kiln_task_ctx *ctx, void *user)
{
    kiln_pool *pool = user;
    kiln_signature *sig = kiln_signature_new("work", NULL);

    (void)ctx;
    atomic_store(&late_first, kiln_pool_send_task(pool, sig, NULL));
    atomic_fetch_add(&slow_running, 1);
    for (int i = 0; i < 10000 && !pool_closing(pool); i++)
        sleep_for(1);
    atomic_store(&late_rc, kiln_pool_send_task(pool, sig, NULL));
    kiln_signature_free(sig);
    atomic_fetch_sub(&slow_running, 1);
    return KILN_OK;
}

/* A task still runs when the drain times out and sends a task while
 * kiln_pool_free runs: free waits for it before it closes the publisher,
 * so the late send ends cleanly (sent, or refused as closed) instead of
 * using freed memory (ASan and valgrind watch this test). */
static void test_free_joins_before_closing_publisher(void **state)
{
    fixture *f = *state;
    kiln_error err;

    f->cfg.drain_timeout_ms = 50;
    make_pool(f);
    assert_int_equal(
        kiln_pool_register(f->pool, "late", late_sender, f->pool, NULL, &err),
        KILN_OK);
    atomic_store(&slow_running, 0);
    atomic_store(&late_first, -1);
    atomic_store(&late_rc, -1);
    send_n(f, "late", 0, 1);
    start(f);
    wait_count(&slow_running, 1);
    assert_int_equal(atomic_load(&late_first), KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_ETIMEDOUT);
    assert_int_equal(atomic_load(&late_rc), -1); /* still waiting */
    kiln_pool_free(f->pool);
    f->pool = NULL;
    assert_int_equal(atomic_load(&slow_running), 0);
    assert_true(atomic_load(&late_rc) == KILN_OK ||
                atomic_load(&late_rc) == KILN_ECLOSED);
}

static void test_sigterm_drains(void **state)
{
    fixture *f = *state;

    make_pool(f);
    atomic_store(&raise_term_at, 5);
    atomic_store(&sleep_ms, 20);
    send_n(f, "work", 0, 100);
    start(f);
    assert_int_equal(join(f), KILN_OK);
    assert_true(atomic_load(&runs) >= 5);
    assert_int_equal(atomic_load(&finished), atomic_load(&runs));
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE),
                     100 - (size_t)atomic_load(&finished));
}

static atomic_int host_terms;

/* The program's own SIGTERM handler. */
static void host_on_term(int sig)
{
    (void)sig;
    atomic_fetch_add(&host_terms, 1);
}

static void set_handler(int sig, void (*fn)(int), struct sigaction *old)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(sig, &sa, old), 0);
}

static void (*handler_of(int sig))(int)
{
    struct sigaction cur;

    assert_int_equal(sigaction(sig, NULL, &cur), 0);
    return cur.sa_handler;
}

/* The program installs its own SIGTERM handler while the pool runs: it is
 * still there once kiln_pool_start has returned, and SIGINT, which the
 * program left alone, gets back the handler it had before the start. */
static void test_host_handler_survives_start(void **state)
{
    fixture *f = *state;
    struct sigaction orig_int, orig_term;

    assert_int_equal(sigaction(SIGINT, NULL, &orig_int), 0);
    assert_int_equal(sigaction(SIGTERM, NULL, &orig_term), 0);
    make_pool(f);
    send_n(f, "work", 0, 1);
    start(f);
    wait_count(&finished, 1); /* kiln's handlers are in place by now */
    assert_ptr_not_equal(handler_of(SIGTERM), orig_term.sa_handler);
    set_handler(SIGTERM, host_on_term, NULL);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_ptr_equal(handler_of(SIGTERM), host_on_term);
    assert_ptr_equal(handler_of(SIGINT), orig_int.sa_handler);
    assert_int_equal(sigaction(SIGTERM, &orig_term, NULL), 0);
}

/* With handle_signals off kiln leaves the signals to the program: a
 * SIGTERM reaches the program's handler, the pool runs on, and the
 * program drains it with kiln_pool_stop. */
static void test_signals_left_to_the_program(void **state)
{
    fixture *f = *state;
    struct sigaction orig_term;

    f->cfg.handle_signals = false;
    make_pool(f);
    atomic_store(&host_terms, 0);
    set_handler(SIGTERM, host_on_term, &orig_term);
    atomic_store(&sleep_ms, 20);
    send_n(f, "work", 0, 40);
    start(f);
    wait_count(&runs, 2);
    assert_ptr_equal(handler_of(SIGTERM), host_on_term);
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    wait_count(&host_terms, 1);
    assert_int_equal(atomic_load(&host_terms), 1);
    assert_int_equal(atomic_load(&f->pool->stop_level), 0); /* still runs */
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(atomic_load(&finished), atomic_load(&runs));
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE),
                     40 - (size_t)atomic_load(&finished));
    assert_ptr_equal(handler_of(SIGTERM), host_on_term);
    assert_int_equal(sigaction(SIGTERM, &orig_term, NULL), 0);
}

/* The connection is lost while a task runs: the broker redelivers it, but
 * it must not start again while its first run still holds a thread. It
 * waits in the delay queues and runs once the first run is over. */
/* Starts the pool on the one queued task (argument `id`), drops the
 * connection while it runs, and checks that the redelivery did not run
 * it again, neither beside the first run nor after it. */
static void runs_once_across_a_drop(fixture *f, int id)
{
    start(f);
    wait_count(&runs, 1);
    kiln__mock_server_fail_consume(f->srv, 1); /* the connection drops */
    wait_count(&finished, 1);
    wait_held_copies(f);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(atomic_load(&seen[id]), 1);
    assert_int_equal(atomic_load(&runs), 1);
    assert_int_equal(atomic_load(&max_running), 1);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 0);
}

/* The connection drops while a task runs, and the broker redelivers it:
 * the redelivery waits in the delay queues while the first run goes on,
 * and once that run has ended here it is acked without running. One run
 * in all, never two at once. */
static void test_redelivered_while_running_runs_once(void **state)
{
    fixture *f = *state;

    make_pool(f);
    atomic_store(&sleep_ms, 600);
    send_n(f, "work", 0, 1);
    runs_once_across_a_drop(f, 0);
}

/* The consumer thread only moves bytes: new deliveries, good and bad,
 * are decoded by the workers (bad ones still reach the dead-letter queue
 * with their reasons); only a delivery seen before is decoded by the
 * consumer, which must look it up against the tasks running here. */
static void test_workers_decode(void **state)
{
    fixture *f = *state;

    make_pool(f);
    send_n(f, "work", 0, 200);
    publish_raw(f, "{not json");
    publish_raw(f, "{\"UUID\":\"task_bad\",\"Name\":\"work\",\"Args\":7}");
    publish_raw(f, "{\"UUID\":\"task_unreg\",\"Name\":\"nobody\"}");
    start(f);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    assert_int_equal(atomic_load(&runs), 200);
    for (int i = 0; i < 200; i++)
        assert_int_equal(atomic_load(&seen[i]), 1);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 3);
    assert_int_equal(kiln__pool_consumer_decodes(f->pool), 0);
    /* A redelivery is the consumer's to decode. */
    atomic_store(&sleep_ms, 300);
    send_n(f, "work", 200, 1);
    wait_count(&runs, 201);
    kiln__mock_server_fail_consume(f->srv, 1);
    wait_count(&finished, 201);
    wait_held_copies(f);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(atomic_load(&seen[200]), 1);
    assert_true(kiln__pool_consumer_decodes(f->pool) >= 1);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

/* As test_redelivered_while_running_runs_once, for a message without a
 * message id (machinery and paota set none): the task is matched by the
 * UUID its worker decoded. */
static void test_redelivered_without_message_id_runs_once(void **state)
{
    fixture *f = *state;

    make_pool(f);
    atomic_store(&sleep_ms, 600);
    publish_raw(f, "{\"UUID\":\"task_go_1\",\"Name\":\"work\",\"Args\":"
                   "[{\"Type\":\"int64\",\"Value\":7}]}");
    runs_once_across_a_drop(f, 7);
}

static void test_store_records_final_states(void **state)
{
    fixture *f = *state;
    kiln_error err;

    make_pool(f);
    assert_non_null(f->store = kiln__mock_store_new(&err));
    kiln__pool_set_store(f->pool, f->store);
    send_n(f, "work", 0, 100);
    send_n(f, "fails", 100, 3);
    publish_raw(f, "{\"UUID\":\"task_unreg\",\"Name\":\"nobody\"}");
    publish_raw(f, "{\"UUID\":\"task_bad\",\"Name\":\"work\",\"Args\":7}");
    publish_raw(f, "{not json");
    start(f);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_SUCCESS), 100);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_FAILURE), 5);
    assert_int_equal(kiln__mock_store_count(f->store, -1), 105);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE ".dead"), 6);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

/* The store goes down: finished tasks keep their deliveries unacked while
 * the state writer retries the final write, consuming stops at the
 * prefetch limit, no task runs twice, and everything completes once it
 * is back. */
static void test_store_outage_holds_deliveries(void **state)
{
    fixture *f = *state;
    kiln_error err;

    make_pool(f);
    assert_non_null(f->store = kiln__mock_store_new(&err));
    kiln__pool_set_store(f->pool, f->store);
    kiln__mock_store_set_down(f->store, true);
    send_n(f, "work", 0, 40);
    start(f);
    wait_count(&finished, 16);
    sleep_for(300);
    /* The workers are free, but every delivery of the prefetch window
     * waits for its final state: the rest stays in the broker. */
    assert_int_equal(atomic_load(&runs), 16);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 16);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 24);
    assert_int_equal(kiln__mock_store_count(f->store, -1), 0);
    kiln__mock_store_set_down(f->store, false);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, QUEUE, 20000),
                     KILN_OK);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_OK);
    for (int i = 0; i < 40; i++)
        assert_int_equal(atomic_load(&seen[i]), 1);
    assert_int_equal(kiln__mock_store_count(f->store, KILN_STATE_SUCCESS), 40);
    assert_true(kiln__mock_store_failed_while_down(f->store) >= 4);
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
}

/* Stopping during an outage: the drain times out, the workers stop
 * retrying, and every delivery goes back to the queue. */
static void test_store_outage_then_stop(void **state)
{
    fixture *f = *state;
    kiln_error err;

    f->cfg.drain_timeout_ms = 200;
    make_pool(f);
    assert_non_null(f->store = kiln__mock_store_new(&err));
    kiln__pool_set_store(f->pool, f->store);
    kiln__mock_store_set_down(f->store, true);
    send_n(f, "work", 0, 20);
    start(f);
    wait_count(&finished, 4);
    kiln_pool_stop(f->pool);
    assert_int_equal(join(f), KILN_ETIMEDOUT);
    kiln_pool_free(f->pool); /* returns: the workers gave up */
    f->pool = NULL;
    assert_int_equal(kiln__mock_server_unacked(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 20);
    assert_int_equal(kiln__mock_store_count(f->store, -1), 0);
}

static kiln_signature *eta_sig(const char *routing_key, int64_t in_ms)
{
    kiln_signature *sig = kiln_signature_new("work", NULL);

    assert_non_null(sig);
    if (routing_key != NULL)
        assert_int_equal(kiln_signature_set_routing_key(sig, routing_key, NULL),
                         KILN_OK);
    if (in_ms > 0)
        kiln_signature_set_eta(sig, kiln__realtime_ns() + in_ms * 1000000);
    return sig;
}

/* A delayed task for a routing key no queue is bound for would be
 * confirmed into the delay queues and never arrive: the send refuses it
 * (KILN_EBROKER naming the key), records no state for it, and still sends
 * the rest of its batch. Keys found bound are not probed again. */
static void test_eta_to_unbound_key_refused(void **state)
{
    fixture *f = *state;
    kiln_signature *sigs[4] = {eta_sig(NULL, 2000), eta_sig("nobody", 2000),
                               eta_sig(QUEUE, 2000), eta_sig(NULL, 0)};
    kiln_err st[4];
    kiln_error err;
    size_t calls;

    f->store = kiln__mock_store_new(&err);
    make_pool(f);
    kiln__pool_set_store(f->pool, f->store);
    assert_int_equal(kiln_pool_send_tasks(f->pool,
                                          (const kiln_signature *const *)sigs,
                                          4, st, &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "task 1 (work)"));
    assert_non_null(strstr(err.message, "'nobody'"));
    assert_non_null(strstr(err.message, "no queue is bound"));
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_OK);
    assert_int_equal(st[3], KILN_OK);
    assert_int_equal(kiln__mock_server_delayed(f->srv), 2);
    assert_int_equal(kiln__mock_server_ready(f->srv, QUEUE), 1);
    assert_int_equal(kiln__mock_store_count(f->store, -1), 3);
    /* Alone, the same; the probe confirms the other key every time. */
    assert_int_equal(kiln_pool_send_task(f->pool, sigs[1], &err), KILN_EBROKER);
    assert_non_null(strstr(err.message, "'nobody'"));
    /* A key found bound costs no probe for a while: one publish. */
    calls = kiln__mock_server_publish_calls(f->srv);
    assert_int_equal(kiln_pool_send_task(f->pool, sigs[0], &err), KILN_OK);
    assert_int_equal(kiln__mock_server_publish_calls(f->srv), calls + 1);
    assert_int_equal(kiln__mock_server_delayed(f->srv), 3);
    /* The producer's own broker call probes too, with no cache. */
    calls = kiln__mock_server_publish_calls(f->srv);
    assert_int_equal(kiln__send_tasks(&f->cfg, f->producer, NULL,
                                      (const kiln_signature *const *)sigs, 2,
                                      st, &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "'nobody'"));
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(kiln__mock_server_publish_calls(f->srv), calls + 2);
    for (size_t i = 0; i < 4; i++)
        kiln_signature_free(sigs[i]);
}

static void test_misuse(void **state)
{
    fixture *f = *state;
    kiln_error err;
    kiln_config bad = f->cfg;

    bad.prefetch = 0;
    assert_null(kiln_pool_new(&bad, 0, "x", &err));
    assert_int_equal(err.code, KILN_EINVAL);
    assert_null(kiln_pool_new(NULL, 0, "x", &err));
    f->pool = kiln_pool_new(&f->cfg, 0, NULL, &err);
    assert_non_null(f->pool);
    kiln__pool_set_broker_factory(f->pool, factory, f->srv);
    assert_int_equal(kiln_pool_start(f->pool, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "no task registered"));
    assert_int_equal(
        kiln_pool_register(f->pool, "work", work, NULL, NULL, &err), KILN_OK);
    kiln_pool_stop(f->pool); /* before start: start drains at once */
    assert_int_equal(kiln_pool_start(f->pool, &err), KILN_OK);
    assert_int_equal(kiln_pool_start(f->pool, &err), KILN_ECLOSED);
    assert_int_equal(
        kiln_pool_register(f->pool, "late", work, NULL, NULL, &err),
        KILN_ECLOSED);
    kiln_pool_free(NULL);
    bad = f->cfg;
    bad.store = (kiln_store_kind)(KILN_STORE_MONGODB + 1);
    assert_null(kiln_pool_new(&bad, 0, "x", &err));
    assert_non_null(strstr(err.message, "KILN_STORE"));
}

/* A signature's Priority becomes the message's AMQP priority whatever
 * this process's KILN_MAX_PRIORITY: that setting only shapes the queue
 * this process declares, and a producer need not repeat the workers'
 * setting (a queue without x-max-priority ignores the property). */
static void test_priority_sent_without_max_priority(void **state)
{
    fixture *f = *state;
    kiln_signature *sigs[2] = {kiln_signature_new("work", NULL),
                               kiln_signature_new("work", NULL)};
    kiln__delivery d;
    kiln_error err;
    unsigned got[2] = {0, 0};

    assert_int_equal(f->cfg.max_priority, 0);
    assert_int_equal(kiln_signature_set_priority(sigs[0], 7, &err), KILN_OK);
    make_pool(f);
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(kiln_pool_send_task(f->pool, sigs[i], &err), KILN_OK);
    assert_int_equal(kiln__broker_subscribe(f->producer, QUEUE, 0, &err),
                     KILN_OK);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(kiln__broker_consume(f->producer, &d, 0, &err),
                         KILN_OK);
        got[strcmp(d.message_id, kiln_signature_uuid(sigs[0])) == 0 ? 0 : 1] =
            d.priority;
        assert_int_equal(kiln__broker_ack(f->producer, d.tag, false, &err),
                         KILN_OK);
        kiln__broker_release(f->producer, &d);
    }
    assert_int_equal(got[0], 7);
    assert_int_equal(got[1], 0); /* Priority 0: no property */
    kiln_signature_free(sigs[0]);
    kiln_signature_free(sigs[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_runs_every_task_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tasks_sent_while_running, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_bound_with_slow_tasks,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_goes_to_dead_letters,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_survives_a_lost_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_lost_connection_redeliveries_not_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_failure_mid_fetch,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letters_confirmed_in_batches,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_head_does_not_stall, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stop_drains_running_tasks, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drain_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_free_joins_before_closing_publisher, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_handler_survives_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_signals_left_to_the_program, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_redelivered_while_running_runs_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_workers_decode, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_redelivered_without_message_id_runs_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_records_final_states, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_outage_holds_deliveries,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_outage_then_stop, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_eta_to_unbound_key_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_priority_sent_without_max_priority,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_misuse, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
