/* The dispatcher on the mock broker and store, and eager mode end to end:
 * tasks sent in each dialect run through the registry exactly once,
 * failures and bad input end in the dead-letter queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/mock_fixture.h"
#include "test/support/roundtrip.h"
#include "workerpool/retry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- dispatcher ---------------------------------------------------------- */

struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *p, *c, *dlq;
    kiln__store *store;
    kiln_registry *reg;
    kiln__dispatch d;
    int flaky_calls;
    char uuid[KILN_UUID_LEN];
};

static kiln_err ok_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_add_result_string(ctx, "done", NULL);
}

static kiln_err boom_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_fail(ctx, "boom");
}

static kiln_err flaky_task(kiln_task_ctx *ctx, void *user)
{
    int *calls = user;

    return (*calls)++ == 0 ? kiln_task_retry(ctx, 250) : KILN_OK;
}

/* A task that "kills its worker": control goes back to bounce(), as if
 * the process died right there, after its STARTED was written. */
static jmp_buf crash_jmp;

static kiln_err crash_task(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    longjmp(crash_jmp, 1);
}

/* Sleeps 30 ms; records what it saw of its time limit in *user. */
static kiln_err slow_task(kiln_task_ctx *ctx, void *user)
{
    int64_t *left = user;
    struct timespec ts = {0, 30 * 1000000};

    *left = kiln_task_time_left_ms(ctx);
    nanosleep(&ts, NULL);
    return kiln_task_expired(ctx) ? KILN_OK : kiln_task_fail(ctx, "early");
}

static int64_t slow_left;

/* The shape a long task takes: work in small steps, stop as soon as
 * kiln_task_expired says so, and return what was done so far. Polling
 * closely, it returns within microseconds of its deadline. */
static kiln_err stops_at_limit_task(kiln_task_ctx *ctx, void *user)
{
    struct timespec step = {0, 100 * 1000};
    int64_t done = 0;

    (void)user;
    while (!kiln_task_expired(ctx)) {
        nanosleep(&step, NULL);
        done++;
    }
    return kiln_task_add_result_int(ctx, KILN_TYPE_INT64, done, NULL);
}

static int fx_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    kiln_task_def defs[] = {
        {"slow", slow_task, &slow_left, NULL},
        {"ok", ok_task, NULL, NULL},
        {"boom", boom_task, NULL, NULL},
        {"flaky", flaky_task, &fx->flaky_calls, NULL},
        {"crash", crash_task, NULL, NULL},
        {"stops_at_limit", stops_at_limit_task, NULL, NULL},
    };

    assert_non_null(fx);
    kiln_config_init(&fx->cfg);
    fx->srv = kiln__mock_server_new(NULL);
    fx->p = open_conn(fx->srv, NULL, 0);
    assert_int_equal(kiln__broker_declare(fx->p, &fx->cfg, NULL), KILN_OK);
    fx->c = open_conn(fx->srv, fx->cfg.queue, 0);
    fx->dlq = open_conn(fx->srv, fx->cfg.dead_letter_queue, 0);
    fx->store = kiln__mock_store_new(NULL);
    fx->reg = kiln_registry_new(NULL);
    assert_int_equal(kiln_registry_add_table(fx->reg, defs, 6, NULL), KILN_OK);
    fx->d =
        (kiln__dispatch){.cfg = &fx->cfg, .reg = fx->reg, .store = fx->store};
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fixture *fx = *state;

    kiln__broker_destroy(fx->p);
    kiln__broker_destroy(fx->c);
    kiln__broker_destroy(fx->dlq);
    kiln__mock_server_free(fx->srv);
    kiln__store_destroy(fx->store);
    kiln_registry_free(fx->reg);
    free(fx);
    return 0;
}

/* Sends one task named `name`; its UUID lands in fx->uuid. */
static void send_one(struct fixture *fx, const char *name)
{
    kiln_signature *sig = kiln_signature_new(name, NULL);
    const kiln_signature *const sigs[1] = {sig};
    kiln_error err;

    assert_non_null(sig);
    (void)snprintf(fx->uuid, sizeof(fx->uuid), "%s", kiln_signature_uuid(sig));
    assert_int_equal(
        kiln__send_tasks(&fx->cfg, fx->p, fx->store, sigs, 1, NULL, &err),
        KILN_OK);
    kiln_signature_free(sig);
}

static kiln_err dispatch_next(struct fixture *fx, kiln__verdict *verdict)
{
    kiln__delivery dl;
    kiln_err rc;

    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    rc = kiln__dispatch_delivery(&fx->d, fx->c, &dl, verdict, NULL);
    kiln__broker_release(fx->c, &dl);
    return rc;
}

static kiln_task_state state_of(struct fixture *fx, kiln__task_record *r)
{
    return get_state(fx->store, fx->uuid, r);
}

/* The dead-letter queue's next reason; "" when it is empty. */
static void next_reason(struct fixture *fx, char *out, size_t n)
{
    kiln__delivery dl;

    out[0] = '\0';
    if (kiln__broker_consume(fx->dlq, &dl, 0, NULL) != KILN_OK)
        return;
    (void)snprintf(out, n, "%s", kiln__delivery_header(&dl, KILN__HDR_REASON));
    assert_int_equal(kiln__broker_ack(fx->dlq, dl.tag, false, NULL), KILN_OK);
    kiln__broker_release(fx->dlq, &dl);
}

static void test_dispatch_retry(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__delivery dl;
    kiln__task_record r;

    send_one(fx, "flaky");
    assert_int_equal(state_of(fx, &r), KILN_STATE_PENDING);
    kiln__task_record_release(&r);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_RETRY);
    assert_int_equal(state_of(fx, &r), KILN_STATE_RETRY);
    assert_string_equal(r.error, "the task asked for a retry");
    kiln__task_record_release(&r);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 0);

    /* It waits in the delay queues, not in the task queue. */
    assert_int_equal(kiln__mock_server_delayed(fx->srv), 1);
    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_ETIMEDOUT);
    /* The copy carries its ETA, which the worker checks on the real
     * clock: wait it out. */
    assert_int_equal(kiln__broker_consume(fx->c, &dl, 2000, NULL), KILN_OK);
    assert_string_equal(kiln__delivery_header(&dl, KILN__HDR_RETRIES), "1");
    assert_string_equal(dl.message_id, fx->uuid);
    assert_int_equal(kiln__dispatch_delivery(&fx->d, fx->c, &dl, &v, NULL),
                     KILN_OK);
    kiln__broker_release(fx->c, &dl);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(fx->flaky_calls, 2);
    assert_int_equal(state_of(fx, &r), KILN_STATE_SUCCESS);
    kiln__task_record_release(&r);
}

/* Sends `sig` (owned; freed here). */
static void send_sig(struct fixture *fx, kiln_signature *sig)
{
    const kiln_signature *const sigs[1] = {sig};
    kiln_error err;

    (void)snprintf(fx->uuid, sizeof(fx->uuid), "%s", kiln_signature_uuid(sig));
    assert_int_equal(
        kiln__send_tasks(&fx->cfg, fx->p, fx->store, sigs, 1, NULL, &err),
        KILN_OK);
    kiln_signature_free(sig);
}

/* The next delivery of the task queue, decoded (caller frees). */
static kiln_signature *peek_next(struct fixture *fx, int timeout_ms,
                                 char *hdr_retries, size_t n)
{
    kiln__delivery dl;
    kiln_signature *sig = NULL;

    assert_int_equal(kiln__broker_consume(fx->c, &dl, timeout_ms, NULL),
                     KILN_OK);
    assert_int_equal(
        kiln_signature_from_json(dl.body, dl.body_len, 0, &sig, NULL), KILN_OK);
    (void)snprintf(hdr_retries, n, "%s",
                   kiln__delivery_header(&dl, KILN__HDR_RETRIES));
    assert_int_equal(kiln__broker_nack(fx->c, dl.tag, true, NULL), KILN_OK);
    kiln__broker_release(fx->c, &dl);
    return sig;
}

/* machinery's counters: RetryCount is what is left, RetryTimeout grows as
 * Fibonacci; exhausted retries end in FAILURE and the dead-letter queue
 * with the runs and the worker in headers. */
static void test_retry_counts_machinery(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = kiln_signature_new("boom", NULL);
    kiln__verdict v;
    kiln__task_record r;
    kiln__delivery dl;
    char retries[16];

    fx->cfg.retry_policy = KILN_RETRY_EXPONENTIAL; /* short delays */
    fx->cfg.retry_base_ms = 5;
    fx->cfg.retry_max_ms = 20;
    assert_int_equal(kiln_signature_set_retry(sig, 2, 0, NULL), KILN_OK);
    send_sig(fx, sig);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(dispatch_next(fx, &v), KILN_OK);
        assert_int_equal(v, KILN__VERDICT_RETRY);
        assert_int_equal(state_of(fx, &r), KILN_STATE_RETRY);
        assert_string_equal(r.error, "boom");
        kiln__task_record_release(&r);
        sig = peek_next(fx, 2000, retries, sizeof(retries));
        assert_int_equal(kiln_signature_retry_count(sig), 1 - i);
        assert_true(kiln_signature_eta(sig, &(int64_t){0}));
        assert_int_equal(atoi(retries), i + 1);
        kiln_signature_free(sig);
    }
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    kiln__task_record_release(&r);
    assert_int_equal(kiln__broker_consume(fx->dlq, &dl, 0, NULL), KILN_OK);
    assert_string_equal(kiln__delivery_header(&dl, KILN__HDR_REASON), "boom");
    assert_string_equal(kiln__delivery_header(&dl, KILN__HDR_ATTEMPTS), "3");
    assert_string_equal(kiln__delivery_header(&dl, KILN__HDR_WORKER),
                        kiln__worker_id());
    assert_int_equal(kiln__broker_ack(fx->dlq, dl.tag, false, NULL), KILN_OK);
    kiln__broker_release(fx->dlq, &dl);
}

/* paota's counters: RetryCount is the total, RetriesDone counts up. */
static void test_retry_counts_paota(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = kiln_signature_new("boom", NULL);
    kiln__verdict v;
    char retries[16];

    fx->cfg.dialect = KILN_DIALECT_PAOTA;
    fx->cfg.retry_policy = KILN_RETRY_EXPONENTIAL;
    fx->cfg.retry_base_ms = 5;
    fx->cfg.retry_max_ms = 20;
    assert_int_equal(kiln_signature_set_retry(sig, 1, 0, NULL), KILN_OK);
    send_sig(fx, sig);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_RETRY);
    sig = peek_next(fx, 2000, retries, sizeof(retries));
    assert_int_equal(kiln_signature_retry_count(sig), 1);
    assert_int_equal(kiln_signature_retries_done(sig), 1);
    kiln_signature_free(sig);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
}

static void test_retry_delays(void **state)
{
    kiln_config cfg;
    kiln_signature *sig = kiln_signature_new("x", NULL);
    static const uint64_t fib[] = {1, 2, 3, 5, 8, 13, 21};
    uint64_t ms;

    (void)state;
    kiln_config_init(&cfg);
    assert_int_equal(kiln__fibonacci_next(0), 1);
    assert_int_equal(kiln__fibonacci_next(1), 2);
    assert_int_equal(kiln__fibonacci_next(4), 5);
    assert_true(kiln__fibonacci_next(UINT64_MAX / 2) > 0);
    /* machinery's RetryTimeout: 1, 2, 3, 5 ... seconds. */
    assert_int_equal(kiln_signature_set_retry(sig, 7, 0, NULL), KILN_OK);
    for (size_t i = 0; i < KILN__ARRAY_LEN(fib); i++) {
        assert_true(kiln__retry_plan(&cfg, sig, (unsigned)i, &ms));
        assert_int_equal(ms, fib[i] * 1000);
        assert_int_equal(kiln_signature_retry_timeout(sig), (int)fib[i]);
    }
    assert_false(kiln__retry_plan(&cfg, sig, 7, &ms)); /* none left */
    /* RetryTimeout is where the sequence starts, not the first wait:
     * machinery's FibonacciNext(10) is 13, then 21. */
    assert_int_equal(kiln_signature_set_retry(sig, 2, 10, NULL), KILN_OK);
    assert_true(kiln__retry_plan(&cfg, sig, 0, &ms));
    assert_int_equal(ms, 13000);
    assert_true(kiln__retry_plan(&cfg, sig, 1, &ms));
    assert_int_equal(ms, 21000);
    assert_int_equal(kiln__fibonacci_next(2), 3);
    assert_int_equal(kiln__fibonacci_next(3), 5);
    assert_int_equal(kiln__fibonacci_next(5), 8);
    /* Capped by KILN_RETRY_MAX_MS; RetryTimeout still grows. */
    cfg.retry_max_ms = 4000;
    assert_int_equal(kiln_signature_set_retry(sig, 1, 3, NULL), KILN_OK);
    assert_true(kiln__retry_plan(&cfg, sig, 0, &ms));
    assert_int_equal(ms, 4000);
    assert_int_equal(kiln_signature_retry_timeout(sig), 5);
    /* Exponential with full jitter, capped. */
    cfg.retry_policy = KILN_RETRY_EXPONENTIAL;
    cfg.retry_base_ms = 100;
    cfg.retry_max_ms = 1000;
    assert_int_equal(kiln_signature_set_retry(sig, 100, 0, NULL), KILN_OK);
    for (unsigned i = 0; i < 20; i++) {
        assert_true(kiln__retry_plan(&cfg, sig, i, &ms));
        assert_true(ms >= 1 && ms <= 1000);
        assert_true(ms <= 100ull << (i < 10 ? i : 10));
    }
    kiln_signature_free(sig);
}

/* An ETA in the future: the send goes into the delay queues; a message
 * that arrives early anyway goes back into them. */
static void test_eta(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = kiln_signature_new("ok", NULL);
    kiln__message m;
    kiln__verdict v;
    kiln__delivery dl;
    char *body;
    size_t len;

    kiln_signature_set_eta(sig, kiln__realtime_ns() + 200 * 1000000LL);
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &body, &len, NULL),
        KILN_OK);
    send_sig(fx, sig);
    assert_int_equal(kiln__mock_server_delayed(fx->srv), 1);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
    /* The same task published straight to the queue by another producer. */
    m = (kiln__message){.exchange = fx->cfg.exchange,
                        .routing_key = fx->cfg.binding_key,
                        .body = body,
                        .body_len = len,
                        .persistent = true};
    assert_int_equal(kiln__broker_publish(fx->p, &m, 1, NULL, NULL), KILN_OK);
    kiln__free(body);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_RETRY);
    assert_int_equal(kiln__mock_server_delayed(fx->srv), 2);
    /* Both arrive after the ETA and run. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kiln__broker_consume(fx->c, &dl, 3000, NULL), KILN_OK);
        assert_int_equal(kiln__dispatch_delivery(&fx->d, fx->c, &dl, &v, NULL),
                         KILN_OK);
        kiln__broker_release(fx->c, &dl);
        assert_int_equal(v, KILN__VERDICT_ACK);
    }
}

/* paota's TaskTimeOut counted from CreatedAt: a late task does not run. */
static void test_expired(void **state)
{
    static const char body[] = "{\"UUID\":\"task_exp1\",\"Name\":\"ok\","
                               "\"CreatedAt\":\"2020-01-01T00:00:00Z\","
                               "\"TaskTimeOut\":1}";
    struct fixture *fx = *state;
    kiln_signature *sig = NULL;
    kiln__verdict v;
    kiln__task_record r;
    char reason[256];

    fx->cfg.dialect = KILN_DIALECT_PAOTA;
    assert_int_equal(
        kiln_signature_from_json(body, strlen(body), 0, &sig, NULL), KILN_OK);
    send_sig(fx, sig);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_non_null(strstr(r.error, "expired"));
    kiln__task_record_release(&r);
    next_reason(fx, reason, sizeof(reason));
    assert_non_null(strstr(reason, "expired"));

    /* KILN_EXPIRED=drop: recorded, acked, not dead-lettered. */
    fx->cfg.expired = KILN_EXPIRED_DROP;
    assert_int_equal(
        kiln_signature_from_json(body, strlen(body), 0, &sig, NULL), KILN_OK);
    assert_int_equal(kiln_signature_set_uuid(sig, "task_exp2", NULL), KILN_OK);
    send_sig(fx, sig);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_non_null(strstr(r.error, "expired: not started within"));
    kiln__task_record_release(&r);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "");
}

/* A task past its soft limit is a FAILURE "time limit", whatever it
 * returns; it saw the limit through its context. */
static void test_time_limit(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__task_record r;

    assert_int_equal(kiln_registry_set_time_limit(fx->reg, "slow", 10, NULL),
                     KILN_OK);
    assert_int_equal(kiln_registry_set_time_limit(fx->reg, "nobody", 10, NULL),
                     KILN_ENOHANDLER);
    send_one(fx, "slow");
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    assert_true(slow_left > 0 && slow_left <= 10);
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_non_null(strstr(r.error, "time limit"));
    kiln__task_record_release(&r);
    /* The default applies to every task without a limit of its own. */
    assert_int_equal(kiln_registry_set_time_limit(fx->reg, "slow", 0, NULL),
                     KILN_OK);
    fx->cfg.time_limit_ms = 1000;
    send_one(fx, "slow");
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER); /* "early": it failed */
    assert_true(slow_left > 900 && slow_left <= 1000);
}

/* A task that stopped because its limit came has not finished its work:
 * it is a FAILURE "time limit" even when it returns right at the limit,
 * and what it had added is not stored as its results. */
static void test_time_limit_stopped_at_limit(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__task_record r;
    char reason[256];

    assert_int_equal(
        kiln_registry_set_time_limit(fx->reg, "stops_at_limit", 20, NULL),
        KILN_OK);
    for (int i = 0; i < 5; i++) {
        send_one(fx, "stops_at_limit");
        assert_int_equal(dispatch_next(fx, &v), KILN_OK);
        assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
        assert_non_null(strstr(r.error, "time limit"));
        assert_int_equal(r.results.n, 0);
        kiln__task_record_release(&r);
        assert_int_equal(v, KILN__VERDICT_DEADLETTER);
        next_reason(fx, reason, sizeof(reason));
        assert_non_null(strstr(reason, "time limit"));
    }
}

static void test_dispatch_store_failure_requeues(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__task_record r;
    const char *s;

    send_one(fx, "ok");
    kiln__mock_store_fail_writes(fx->store, 2); /* STARTED SUCCESS */
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_REQUEUE);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 1);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(state_of(fx, &r), KILN_STATE_SUCCESS);
    assert_int_equal(r.results.n, 1);
    s = r.results.items[0].v.s;
    assert_string_equal(s, "done");
    kiln__task_record_release(&r);
}

static void test_dispatch_unregistered_policies(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__task_record r;
    char reason[256];

    fx->cfg.unregistered = KILN_UNREGISTERED_REQUEUE;
    fx->cfg.max_deliveries = 3;
    send_one(fx, "nobody");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(dispatch_next(fx, &v), KILN_OK);
        assert_int_equal(v, KILN__VERDICT_RETRY);
        /* Requeued later (1 s, 2 s, 4 s), not at once: no loop. */
        assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
        kiln__mock_server_advance(fx->srv, 1000LL << i);
    }
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "delivered 4 times (max_deliveries 3)");
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    kiln__task_record_release(&r);

    /* Dropped: acked, not dead-lettered, and recorded FAILURE, so a
     * producer waiting for it learns that it will never run. */
    fx->cfg.unregistered = KILN_UNREGISTERED_DROP;
    send_one(fx, "nobody");
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_ACK);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "");
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_string_equal(r.error, "unregistered task nobody, dropped "
                                 "(KILN_UNREGISTERED=drop)");
    kiln__task_record_release(&r);

    fx->cfg.unregistered = KILN_UNREGISTERED_DEADLETTER;
    send_one(fx, "nobody");
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "unregistered task nobody");
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_string_equal(r.error, "unregistered task nobody");
    kiln__task_record_release(&r);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 0);
}

/* A classic queue flags a redelivery but does not count it (the mock
 * counts as a quorum queue does: the count is cleared here). Each
 * redelivery is sent on once with the count in x-kiln-deliveries, so a
 * task that kills its worker runs max_deliveries times and is then
 * dead-lettered, as on a quorum queue. Without a store: with one, the
 * store counts the runs (the next test). */
static void test_poison_classic_queue(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v = KILN__VERDICT_ACK;
    char reason[256];
    int runs = 0, bounces = 0;

    fx->d.store = NULL;
    fx->cfg.max_deliveries = 3;
    send_one(fx, "ok");
    for (int i = 0; i < 20 && v != KILN__VERDICT_DEADLETTER; i++) {
        kiln__delivery dl;
        kiln__job job;

        assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
        dl.delivery_count = 0;
        if (kiln__dispatch_prepare(&fx->d, &dl, &job) && job.fn != NULL) {
            /* The worker dies in the task: the delivery goes back. */
            runs++;
            assert_int_equal(kiln__broker_nack(fx->c, dl.tag, true, NULL),
                             KILN_OK);
        } else {
            kiln__dispatch_run(&fx->d, &job);
            v = job.verdict;
            bounces += v == KILN__VERDICT_RETRY;
            assert_int_equal(
                kiln__dispatch_settle(&fx->d, fx->c, &dl, &job, NULL), KILN_OK);
        }
        kiln__job_release(&job);
        kiln__broker_release(fx->c, &dl);
    }
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    assert_int_equal(runs, 3);
    assert_int_equal(bounces, 2);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "delivered 4 times (max_deliveries 3)");
}

/* Delivers the next task. Without `run` it goes back at once (requeue),
 * as when a worker stops or loses its connection before a worker thread
 * took it. With `run` a worker thread takes it: true when the task
 * started and "crashed" (the delivery goes back too), false when the
 * dispatcher decided it without running (its verdict in *v, settled). */
static bool bounce(struct fixture *fx, bool run, kiln__verdict *v)
{
    kiln__delivery dl;
    kiln__job job;

    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    if (!run) {
        assert_int_equal(kiln__broker_nack(fx->c, dl.tag, true, NULL), KILN_OK);
        kiln__broker_release(fx->c, &dl);
        return false;
    }
    if (kiln__dispatch_prepare(&fx->d, &dl, &job) && setjmp(crash_jmp) != 0) {
        assert_int_equal(kiln__broker_nack(fx->c, dl.tag, true, NULL), KILN_OK);
        kiln__job_release(&job);
        kiln__broker_release(fx->c, &dl);
        return true;
    }
    kiln__dispatch_run(&fx->d, &job);
    *v = job.verdict;
    assert_int_equal(kiln__dispatch_settle(&fx->d, fx->c, &dl, &job, NULL),
                     KILN_OK);
    kiln__job_release(&job);
    kiln__broker_release(fx->c, &dl);
    return false;
}

/* With a store, the poison count is the runs the store recorded: a task
 * handed back unstarted (drains, lost connections) any number of times
 * still runs, and one that started max_deliveries times is dead-lettered
 * before it runs again. */
static void test_poison_counts_runs_with_store(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v = KILN__VERDICT_RETRY;
    kiln__task_record r;
    char reason[256];

    fx->cfg.max_deliveries = 3;
    send_one(fx, "ok");
    for (int i = 0; i < 6; i++)
        (void)bounce(fx, false, &v);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(state_of(fx, &r), KILN_STATE_SUCCESS);
    kiln__task_record_release(&r);

    send_one(fx, "crash");
    for (int i = 0; i < 3; i++)
        assert_true(bounce(fx, true, &v));
    assert_false(bounce(fx, true, &v));
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "started 3 times (max_deliveries 3)");
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_int_equal(r.attempts, 3);
    kiln__task_record_release(&r);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
}

static void test_dispatch_unsettled_on_broker_error(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__task_record r;
    char reason[256];

    send_one(fx, "boom");
    kiln__mock_server_fail_publish(fx->srv, 1);
    assert_int_equal(dispatch_next(fx, &v), KILN_EBROKER);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 1);
    /* The consumer reconnects; the broker redelivers. */
    kiln__broker_close(fx->c);
    assert_int_equal(kiln__broker_connect(fx->c, NULL), KILN_OK);
    assert_int_equal(kiln__broker_subscribe(fx->c, fx->cfg.queue, 0, NULL),
                     KILN_OK);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "boom");
    assert_int_equal(state_of(fx, &r), KILN_STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    kiln__task_record_release(&r);
}

static void test_send_failures(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *a = kiln_signature_new("ok", NULL);
    kiln_signature *b = kiln_signature_new("ok", NULL);
    const kiln_signature *sigs[3] = {a, b, NULL};
    kiln_err st[3];
    kiln_error err;

    kiln__mock_store_fail_writes(fx->store, 1);
    assert_int_equal(
        kiln__send_tasks(&fx->cfg, fx->p, fx->store, sigs, 2, st, &err),
        KILN_ESTORE);
    assert_int_equal(st[0], KILN_ESTORE);
    assert_int_equal(st[1], KILN_OK);
    assert_non_null(strstr(err.message, "task 0"));
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 1);

    kiln__mock_server_fail_publish(fx->srv, 2);
    assert_int_equal(kiln__send_tasks(&fx->cfg, fx->p, NULL, sigs, 3, st, &err),
                     KILN_EBROKER);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_EINVAL);
    assert_non_null(strstr(err.message, "task 1"));

    assert_int_equal(kiln_signature_set_routing_key(a, "nowhere", NULL),
                     KILN_OK);
    assert_int_equal(
        kiln__send_tasks(&fx->cfg, fx->p, NULL, sigs, 1, NULL, &err),
        KILN_EBROKER);
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    assert_int_equal(
        kiln__send_tasks(&fx->cfg, fx->p, NULL, sigs, 0, NULL, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 2);
    kiln_signature_free(a);
    kiln_signature_free(b);
}

struct runner {
    pthread_t tid;
    const kiln__dispatch *d;
    kiln__job *job;
};

static void *runner_main(void *arg)
{
    struct runner *r = arg;

    kiln__dispatch_run(r->d, r->job);
    return NULL;
}

/* The pool's split: prepare and settle on the consumer thread, run on a
 * worker thread. */
static void test_dispatch_steps_on_two_threads(void **state)
{
    struct fixture *fx = *state;
    kiln__delivery dl;
    kiln__job job;
    struct runner r = {.d = &fx->d, .job = &job};
    kiln__task_record rec;

    send_one(fx, "ok");
    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    assert_true(kiln__dispatch_prepare(&fx->d, &dl, &job));
    assert_int_equal(pthread_create(&r.tid, NULL, runner_main, &r), 0);
    assert_int_equal(pthread_join(r.tid, NULL), 0);
    assert_int_equal(job.verdict, KILN__VERDICT_ACK);
    assert_int_equal(job.status, KILN_OK);
    assert_int_equal(kiln__dispatch_settle(&fx->d, fx->c, &dl, &job, NULL),
                     KILN_OK);
    kiln__job_release(&job);
    kiln__job_release(&job);
    kiln__broker_release(fx->c, &dl);
    assert_int_equal(state_of(fx, &rec), KILN_STATE_SUCCESS);
    kiln__task_record_release(&rec);
}

/* ---- end to end through eager mode ------------------------------------- */

#define E2E_N 100

struct e2e {
    int add_hits[E2E_N], concat_hits[E2E_N], fail_hits[E2E_N];
    int bad_args;
};

static kiln_err e2e_add(kiln_task_ctx *ctx, void *user)
{
    struct e2e *st = user;
    const kiln_signature *sig = kiln_task_signature(ctx);
    int64_t a = -1, b = -1;
    double f = -1;
    bool flag = false;
    kiln_type t = KILN_TYPE_BOOL;

    if (kiln_signature_arg_count(sig) != 4 ||
        kiln_signature_arg_int64(sig, 0, &a, NULL) != KILN_OK ||
        kiln_signature_arg_int64(sig, 1, &b, NULL) != KILN_OK ||
        kiln_signature_arg_type(sig, 1, &t, NULL) != KILN_OK ||
        kiln_signature_arg_double(sig, 2, &f, NULL) != KILN_OK ||
        kiln_signature_arg_bool(sig, 3, &flag, NULL) != KILN_OK || a < 0 ||
        a >= E2E_N || t != KILN_TYPE_INT32 || b != a * 3 ||
        f != (double)a / 2 || flag != (a % 2 == 1)) {
        st->bad_args++;
        return kiln_task_fail(ctx, "bad arguments");
    }
    st->add_hits[a]++;
    return kiln_task_add_result_int(ctx, KILN_TYPE_INT64, a + b, NULL);
}

static const char *raw_item(const cJSON *array, int i)
{
    const char *s = cJSON_GetStringValue(cJSON_GetArrayItem(array, i));

    return s != NULL ? s : "";
}

/* Reads (s, tail) from typed arguments, or, for a header-mode message,
 * from the raw body ["s<i>", tail]. */
static bool concat_args(const kiln_signature *sig, char *s, char *tail,
                        size_t n)
{
    const char *a, *b;
    const int64_t *v;
    size_t len = 0;
    cJSON *raw;

    if (kiln_signature_arg_count(sig) == 0) {
        a = kiln_signature_raw_body(sig, &len);
        if (a == NULL || (raw = cJSON_ParseWithLength(a, len)) == NULL)
            return false;
        (void)snprintf(s, n, "%s", raw_item(raw, 0));
        (void)snprintf(tail, n, "%s", raw_item(raw, 1));
        cJSON_Delete(raw);
        return true;
    }
    if (kiln_signature_arg_string(sig, 0, &a, NULL) != KILN_OK ||
        kiln_signature_arg_string(sig, 1, &b, NULL) != KILN_OK ||
        kiln_signature_arg_int64_slice(sig, 2, &v, &len, NULL) != KILN_OK ||
        len != 2 || v[1] != v[0] + 1)
        return false;
    (void)snprintf(s, n, "%s", a);
    (void)snprintf(tail, n, "%s", b);
    return true;
}

static kiln_err e2e_concat(kiln_task_ctx *ctx, void *user)
{
    struct e2e *st = user;
    char s[32], tail[32], out[64];
    int i = -1;

    if (!concat_args(kiln_task_signature(ctx), s, tail, sizeof(s)) ||
        sscanf(s, "s%d", &i) != 1 || i < 0 || i >= E2E_N ||
        strcmp(tail, "-tail") != 0) {
        st->bad_args++;
        return kiln_task_fail(ctx, "bad arguments");
    }
    st->concat_hits[i]++;
    (void)snprintf(out, sizeof(out), "%s%s", s, tail);
    return kiln_task_add_result_string(ctx, out, NULL);
}

static kiln_err e2e_fail(kiln_task_ctx *ctx, void *user)
{
    struct e2e *st = user;
    uint64_t i = E2E_N;

    if (kiln_signature_arg_uint64(kiln_task_signature(ctx), 0, &i, NULL) !=
            KILN_OK ||
        i >= E2E_N) {
        st->bad_args++;
        return kiln_task_fail(ctx, "bad arguments");
    }
    st->fail_hits[i]++;
    return kiln_task_fail(ctx, "boom %llu", (unsigned long long)i);
}

static kiln_signature *e2e_sig(int i, kiln_dialect dialect)
{
    static const char *const names[] = {"add", "concat", "fail"};
    kiln_signature *sig = kiln_signature_new(names[i % 3], NULL);
    int64_t pair[2] = {i, i + 1};
    char text[32], raw[48];

    assert_non_null(sig);
    (void)snprintf(text, sizeof(text), "s%d", i);
    if (i % 3 == 0) {
        assert_int_equal(kiln_signature_add_arg_int64(sig, "a", i, NULL), 0);
        assert_int_equal(kiln_signature_add_arg_int(sig, "b", KILN_TYPE_INT32,
                                                    (int64_t)i * 3, NULL),
                         0);
        assert_int_equal(
            kiln_signature_add_arg_float64(sig, "h", i / 2.0, NULL), 0);
        assert_int_equal(
            kiln_signature_add_arg_bool(sig, NULL, i % 2 == 1, NULL), 0);
    } else if (i % 3 == 1 && dialect == KILN_DIALECT_PAOTA_HEADERS) {
        (void)snprintf(raw, sizeof(raw), "[\"%s\", \"-tail\"]", text);
        assert_int_equal(
            kiln_signature_set_raw_body(sig, raw, strlen(raw), NULL), 0);
    } else if (i % 3 == 1) {
        assert_int_equal(kiln_signature_add_arg_string(sig, "s", text, NULL),
                         0);
        assert_int_equal(kiln_signature_add_arg_string(sig, "t", "-tail", NULL),
                         0);
        assert_int_equal(kiln_signature_add_arg_int_slice(
                             sig, "v", KILN_TYPE_INT64_SLICE, pair, 2, NULL),
                         0);
    } else {
        assert_int_equal(kiln_signature_add_arg_uint(sig, "i", KILN_TYPE_UINT16,
                                                     (uint64_t)i, NULL),
                         0);
    }
    return sig;
}

struct e2e_run {
    struct e2e st;
    kiln_config cfg;
    kiln_registry *reg;
    roundtrip *e;
    kiln_signature *sigs[E2E_N + 2]; /* the tasks, "nope", "ghost" */
};

static void e2e_setup(struct e2e_run *r, kiln_dialect dialect)
{
    kiln_task_def defs[] = {
        {"add", e2e_add, &r->st, NULL},
        {"concat", e2e_concat, &r->st, NULL},
        {"fail", e2e_fail, &r->st, NULL},
    };
    kiln_error err;

    memset(r, 0, sizeof(*r));
    kiln_config_init(&r->cfg);
    r->cfg.dialect = dialect;
    r->reg = kiln_registry_new(NULL);
    assert_int_equal(kiln_registry_add_table(r->reg, defs, 3, NULL), 0);
    r->e = roundtrip_new(&r->cfg, r->reg, true, &err);
    assert_non_null(r->e);
    for (int i = 0; i < E2E_N; i++)
        r->sigs[i] = e2e_sig(i, dialect);
    r->sigs[E2E_N] = kiln_signature_new("nope", NULL);
    r->sigs[E2E_N + 1] = kiln_signature_new("ghost", NULL);
    assert_non_null(r->sigs[E2E_N + 1]);
    kiln_signature_set_ignore_unregistered(r->sigs[E2E_N + 1], true);
}

static void e2e_teardown(struct e2e_run *r)
{
    for (size_t i = 0; i < KILN__ARRAY_LEN(r->sigs); i++)
        kiln_signature_free(r->sigs[i]);
    roundtrip_free(r->e);
    kiln_registry_free(r->reg);
}

/* Three bodies no worker can run: a wrong argument type (its UUID is
 * readable), not JSON at all, and a header-mode body that is not JSON. */
static void publish_bad(struct e2e_run *r)
{
    static const char wrong_type[] =
        "{\"UUID\":\"task_bad\",\"Name\":\"add\","
        "\"Args\":[{\"Name\":\"\",\"Type\":\"int64\",\"Value\":\"x\"}]}";
    kiln_header raw_hdrs[] = {{"task_name", "concat"}, {"uuid", "task_badraw"}};
    kiln__broker *p = open_conn(roundtrip_server(r->e), NULL, 0);
    kiln__message m[3] = {
        text_msg(r->cfg.exchange, r->cfg.binding_key, wrong_type),
        text_msg(r->cfg.exchange, r->cfg.binding_key, "{not json"),
        text_msg(r->cfg.exchange, r->cfg.binding_key, "{oops"),
    };

    m[2].headers = raw_hdrs;
    m[2].n_headers = 2;
    assert_int_equal(kiln__broker_publish(p, m, 3, NULL, NULL), KILN_OK);
    kiln__broker_destroy(p);
}

static void check_task_states(struct e2e_run *r)
{
    kiln__store *s = roundtrip_store(r->e);
    kiln__task_record rec;
    char want[32];

    for (int i = 0; i < E2E_N; i++) {
        const char *uuid = kiln_signature_uuid(r->sigs[i]);
        kiln_task_state st = get_state(s, uuid, &rec);
        if (i % 3 == 0) {
            assert_int_equal(st, KILN_STATE_SUCCESS);
            assert_int_equal(rec.results.items[0].v.i, 4 * i);
        } else if (i % 3 == 1) {
            (void)snprintf(want, sizeof(want), "s%d-tail", i);
            assert_int_equal(st, KILN_STATE_SUCCESS);
            assert_string_equal(rec.results.items[0].v.s, want);
        } else {
            (void)snprintf(want, sizeof(want), "boom %d", i);
            assert_int_equal(st, KILN_STATE_FAILURE);
            assert_string_equal(rec.error, want);
        }
        assert_string_equal(rec.task_name, kiln_signature_name(r->sigs[i]));
        kiln__task_record_release(&rec);
    }
    assert_int_equal(get_state(s, kiln_signature_uuid(r->sigs[E2E_N]), &rec),
                     KILN_STATE_FAILURE);
    assert_string_equal(rec.error, "unregistered task nope");
    kiln__task_record_release(&rec);
    /* IgnoreWhenTaskNotRegistered: acked, and FAILURE for a waiter. */
    assert_int_equal(
        get_state(s, kiln_signature_uuid(r->sigs[E2E_N + 1]), &rec),
        KILN_STATE_FAILURE);
    assert_string_equal(rec.error, "unregistered task ghost, ignored "
                                   "(IgnoreWhenTaskNotRegistered)");
    kiln__task_record_release(&rec);
    assert_int_equal(get_state(s, "task_bad", &rec), KILN_STATE_FAILURE);
    assert_non_null(strstr(rec.error, "undecodable message"));
    assert_string_equal(rec.task_name, "add");
    kiln__task_record_release(&rec);
    assert_int_equal(get_state(s, "task_badraw", &rec), KILN_STATE_FAILURE);
    assert_string_equal(rec.task_name, "concat");
    kiln__task_record_release(&rec);
    assert_int_equal(kiln__mock_store_count(s, -1), E2E_N + 4);
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_SUCCESS), 67);
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_FAILURE), 37);
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_PENDING), 0);
}

/* Every dead-lettered message, counted by reason. */
static void check_dead_letters(struct e2e_run *r)
{
    kiln__broker *dlq =
        open_conn(roundtrip_server(r->e), r->cfg.dead_letter_queue, 0);
    int boom = 0, unregistered = 0, undecodable = 0, other = 0;
    kiln__delivery dl;

    while (kiln__broker_consume(dlq, &dl, 0, NULL) == KILN_OK) {
        const char *why = kiln__delivery_header(&dl, KILN__HDR_REASON);
        assert_non_null(why);
        if (strncmp(why, "boom ", 5) == 0)
            boom++;
        else if (strcmp(why, "unregistered task nope") == 0)
            unregistered++;
        else if (strncmp(why, "undecodable message: ", 21) == 0)
            undecodable++;
        else
            other++;
        assert_string_equal(kiln__delivery_header(&dl, KILN__HDR_ROUTING_KEY),
                            r->cfg.binding_key);
        assert_int_equal(kiln__broker_ack(dlq, dl.tag, false, NULL), 0);
        kiln__broker_release(dlq, &dl);
    }
    assert_int_equal(boom, 33);
    assert_int_equal(unregistered, 1);
    assert_int_equal(undecodable, 3);
    assert_int_equal(other, 0);
    kiln__broker_destroy(dlq);
}

static void check_hits(const struct e2e *st)
{
    assert_int_equal(st->bad_args, 0);
    for (int i = 0; i < E2E_N; i++) {
        assert_int_equal(st->add_hits[i], i % 3 == 0);
        assert_int_equal(st->concat_hits[i], i % 3 == 1);
        assert_int_equal(st->fail_hits[i], i % 3 == 2);
    }
}

static void run_e2e(kiln_dialect dialect)
{
    struct e2e_run *r = calloc(1, sizeof(*r));
    kiln_err status[E2E_N + 2];
    size_t handled = 0;
    kiln_error err;

    assert_non_null(r);
    e2e_setup(r, dialect);
    assert_int_equal(roundtrip_send(r->e,
                                    (const kiln_signature *const *)r->sigs,
                                    E2E_N + 2, status, &err),
                     KILN_OK);
    for (int i = 0; i < E2E_N + 2; i++)
        assert_int_equal(status[i], KILN_OK);
    publish_bad(r);
    assert_int_equal(roundtrip_drain(r->e, 0, &handled, &err), KILN_OK);
    assert_int_equal(handled, E2E_N + 5);
    check_hits(&r->st);
    check_task_states(r);
    check_dead_letters(r);
    assert_int_equal(
        kiln__mock_server_ready(roundtrip_server(r->e), r->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_unacked(roundtrip_server(r->e)), 0);
    e2e_teardown(r);
    free(r);
}

static void test_e2e_machinery(void **state)
{
    (void)state;
    run_e2e(KILN_DIALECT_MACHINERY);
}

static void test_e2e_paota(void **state)
{
    (void)state;
    run_e2e(KILN_DIALECT_PAOTA);
}

static void test_e2e_paota_headers(void **state)
{
    (void)state;
    run_e2e(KILN_DIALECT_PAOTA_HEADERS);
}

/* One consumer thread drains while the test thread sends. */
struct consumer {
    pthread_t tid;
    roundtrip *e;
    atomic_bool stop;
    long handled, errors;
};

static void *consumer_main(void *arg)
{
    struct consumer *c = arg;

    for (;;) {
        kiln_err rc = roundtrip_run_once(c->e, 20, NULL, NULL);
        if (rc == KILN_OK)
            c->handled++;
        else if (rc == KILN_ETIMEDOUT && atomic_load(&c->stop))
            break;
        else if (rc != KILN_ETIMEDOUT)
            c->errors++;
        if (rc == KILN_ECLOSED)
            break;
    }
    return NULL;
}

static void test_e2e_two_threads(void **state)
{
    struct e2e_run *r = calloc(1, sizeof(*r));
    struct consumer c = {0};

    (void)state;
    assert_non_null(r);
    e2e_setup(r, KILN_DIALECT_MACHINERY);
    c.e = r->e;
    atomic_init(&c.stop, false);
    assert_int_equal(pthread_create(&c.tid, NULL, consumer_main, &c), 0);
    for (int i = 0; i < E2E_N; i += 10)
        assert_int_equal(
            roundtrip_send(r->e, (const kiln_signature *const *)&r->sigs[i], 10,
                           NULL, NULL),
            KILN_OK);
    assert_int_equal(kiln__mock_server_wait_idle(roundtrip_server(r->e),
                                                 r->cfg.queue, 10000),
                     KILN_OK);
    atomic_store(&c.stop, true);
    assert_int_equal(pthread_join(c.tid, NULL), 0);
    assert_int_equal(c.errors, 0);
    assert_int_equal(c.handled, E2E_N);
    check_hits(&r->st);
    assert_int_equal(
        kiln__mock_store_count(roundtrip_store(r->e), KILN_STATE_SUCCESS), 67);
    assert_int_equal(
        kiln__mock_store_count(roundtrip_store(r->e), KILN_STATE_FAILURE), 33);
    e2e_teardown(r);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dispatch_retry, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_retry_counts_machinery, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_retry_counts_paota, fx_setup,
                                        fx_teardown),
        cmocka_unit_test(test_retry_delays),
        cmocka_unit_test_setup_teardown(test_eta, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_expired, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_time_limit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_time_limit_stopped_at_limit,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_store_failure_requeues,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_unregistered_policies,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_poison_counts_runs_with_store,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_poison_classic_queue, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_unsettled_on_broker_error,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_send_failures, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_steps_on_two_threads,
                                        fx_setup, fx_teardown),
        cmocka_unit_test(test_e2e_machinery),
        cmocka_unit_test(test_e2e_paota),
        cmocka_unit_test(test_e2e_paota_headers),
        cmocka_unit_test(test_e2e_two_threads),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
