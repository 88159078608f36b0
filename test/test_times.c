/* Times at the edges of what kiln reads: ETAs and CreatedAts from 1678 to
 * 2262 in JSON, paota header-mode seconds anywhere in int64, and any
 * delay a task asks for. Each goes through the decoder, the producer's
 * routing and the dispatcher on the mock broker; the ASan build aborts on
 * any signed overflow (-fno-sanitize-recover), so reaching the asserts
 * says the arithmetic held, and the asserts say what became of the task:
 * a past ETA is due now, a far-future one is refused as longer than the
 * delay queues hold, and a task's retry delay is capped by
 * KILN_RETRY_MAX_MS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "task/task.h"
#include "test/support/mock_fixture.h"
#include "workerpool/retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EARLIEST "1678-01-01T00:00:00Z"
#define LATEST   "2262-04-11T23:47:16Z"

struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *p, *c, *dlq;
    kiln__store *store;
    kiln_registry *reg;
    kiln__dispatch d;
    uint64_t retry_ms; /* what the "again" task asks for */
    int runs;
};

static kiln_err ok_task(kiln_task_ctx *ctx, void *user)
{
    int *runs = user;

    (void)ctx;
    (*runs)++;
    return KILN_OK;
}

static kiln_err again_task(kiln_task_ctx *ctx, void *user)
{
    const struct fixture *fx = user;

    return kiln_task_retry(ctx, fx->retry_ms);
}

static int fx_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    kiln_task_def defs[] = {
        {"ok", ok_task, &fx->runs, NULL},
        {"again", again_task, fx, NULL},
    };
    kiln_config_init(&fx->cfg);
    fx->srv = kiln__mock_server_new(NULL);
    fx->p = open_conn(fx->srv, NULL, 0);
    assert_int_equal(kiln__broker_declare(fx->p, &fx->cfg, NULL), KILN_OK);
    fx->c = open_conn(fx->srv, fx->cfg.queue, 0);
    fx->dlq = open_conn(fx->srv, fx->cfg.dead_letter_queue, 0);
    fx->store = kiln__mock_store_new(NULL);
    fx->reg = kiln_registry_new(NULL);
    assert_int_equal(kiln_registry_add_table(fx->reg, defs, 2, NULL), KILN_OK);
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

/* Publishes `body` straight to the task queue, as a producer that does not
 * use the delay queues would, with `n` header-mode headers. */
static void publish(struct fixture *fx, const char *body, const kiln_header *h,
                    size_t n)
{
    kiln__message m = text_msg(fx->cfg.exchange, fx->cfg.binding_key, body);

    m.headers = h;
    m.n_headers = n;
    assert_int_equal(kiln__broker_publish(fx->p, &m, 1, NULL, NULL), KILN_OK);
}

/* Dispatches the next delivery of the task queue. */
static kiln__verdict dispatch_next(struct fixture *fx)
{
    kiln__verdict v = KILN__VERDICT_REQUEUE;
    kiln__delivery dl;

    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    assert_int_equal(kiln__dispatch_delivery(&fx->d, fx->c, &dl, &v, NULL),
                     KILN_OK);
    kiln__broker_release(fx->c, &dl);
    return v;
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

static void expect_dead_letter(struct fixture *fx, const char *want)
{
    char reason[512];

    assert_int_equal(dispatch_next(fx), KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    if (strstr(reason, want) == NULL)
        fail_msg("reason \"%s\" lacks \"%s\"", reason, want);
}

/* A JSON body with `extra` members after UUID and Name. */
static void publish_json(struct fixture *fx, const char *name,
                         const char *extra)
{
    char body[512];

    (void)snprintf(body, sizeof(body),
                   "{\"UUID\":\"task_t1\",\"Name\":\"%s\"%s}", name, extra);
    publish(fx, body, NULL, 0);
}

/* The earliest ETA the parser accepts is long past: the task runs now,
 * whether it arrives straight in the queue or is sent by kiln. */
static void test_eta_1678_runs_now(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = NULL;
    int64_t eta;

    publish_json(fx, "ok", ",\"ETA\":\"" EARLIEST "\"");
    assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, 1);

    static const char body[] = "{\"UUID\":\"task_t2\",\"Name\":\"ok\","
                               "\"ETA\":\"" EARLIEST "\"}";
    assert_int_equal(
        kiln_signature_from_json(body, strlen(body), 0, &sig, NULL), KILN_OK);
    assert_true(kiln_signature_eta(sig, &eta));
    assert_true(eta < -9000000000000000000LL);
    assert_int_equal(kiln__send_tasks(&fx->cfg, fx->p, NULL,
                                      (const kiln_signature *const[]){sig}, 1,
                                      NULL, NULL),
                     KILN_OK);
    assert_int_equal(kiln__mock_server_delayed(fx->srv), 0);
    assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, 2);

    /* The very first nanosecond int64 holds, set through the API. */
    kiln_signature_set_eta(sig, INT64_MIN);
    assert_int_equal(kiln__send_tasks(&fx->cfg, fx->p, NULL,
                                      (const kiln_signature *const[]){sig}, 1,
                                      NULL, NULL),
                     KILN_OK);
    assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, 3);
    kiln_signature_free(sig);
}

/* The latest ETA the parser accepts is centuries past what the delay
 * queues hold: a send says so, and a worker dead-letters such a task with
 * that reason instead of cycling it through the cascade for ever. */
static void test_eta_2262_too_far(void **state)
{
    struct fixture *fx = *state;
    static const char body[] = "{\"UUID\":\"task_t3\",\"Name\":\"ok\","
                               "\"ETA\":\"" LATEST "\"}";
    kiln_signature *sig = NULL;
    kiln_error err;

    assert_int_equal(
        kiln_signature_from_json(body, strlen(body), 0, &sig, NULL), KILN_OK);
    assert_int_equal(kiln__send_tasks(&fx->cfg, fx->p, NULL,
                                      (const kiln_signature *const[]){sig}, 1,
                                      NULL, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "longer than the delay queues hold"));
    kiln_signature_set_eta(sig, INT64_MAX);
    assert_int_equal(kiln__send_tasks(&fx->cfg, fx->p, NULL,
                                      (const kiln_signature *const[]){sig}, 1,
                                      NULL, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "longer than the delay queues hold"));
    kiln_signature_free(sig);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);

    publish(fx, body, NULL, 0);
    expect_dead_letter(fx, "longer than the delay queues hold");
    assert_int_equal(kiln__mock_server_delayed(fx->srv), 0);
    assert_int_equal(fx->runs, 0);
}

/* paota's CreatedAt in 1678 with a TaskTimeOut: expired, by centuries. */
static void test_created_at_1678_expires(void **state)
{
    struct fixture *fx = *state;

    publish_json(fx, "ok", ",\"CreatedAt\":\"" EARLIEST "\",\"TaskTimeOut\":1");
    expect_dead_letter(fx, "expired");
    /* And one from the far future has not expired. */
    publish_json(fx, "ok", ",\"CreatedAt\":\"" LATEST "\",\"TaskTimeOut\":1");
    assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, 1);
}

/* Header mode carries whole seconds as int64: every value is read, those
 * past 64-bit nanoseconds saturate, and the same rules follow. */
static void test_header_mode_far_seconds(void **state)
{
    struct fixture *fx = *state;
    static const char *const past[] = {"-9223372036854775808", "-9223372037",
                                       "-9223372036", "-1", "0"};
    kiln_header h[4] = {{"task_name", "ok"}, {"uuid", "task_h1"}};
    kiln_signature *sig = NULL;
    int64_t eta;

    for (size_t i = 0; i < KILN__ARRAY_LEN(past); i++) {
        h[2] = (kiln_header){"eta", past[i]};
        publish(fx, "[1]", h, 3);
        assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
        assert_int_equal(fx->runs, (int)i + 1);
    }
    h[2] = (kiln_header){"eta", "-9223372036854775808"};
    assert_int_equal(kiln_signature_from_raw("1", 1, h, 3, 0, &sig, NULL),
                     KILN_OK);
    assert_true(kiln_signature_eta(sig, &eta));
    assert_true(eta == INT64_MIN);
    kiln_signature_free(sig);

    h[2] = (kiln_header){"eta", "9223372036854775807"};
    publish(fx, "[1]", h, 3);
    expect_dead_letter(fx, "longer than the delay queues hold");

    h[2] = (kiln_header){"created_at", "-9223372036854775808"};
    h[3] = (kiln_header){"timeout", "1"};
    publish(fx, "[1]", h, 4);
    expect_dead_letter(fx, "expired");
    h[2] = (kiln_header){"created_at", "9223372036854775807"};
    publish(fx, "[1]", h, 4);
    assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, (int)KILN__ARRAY_LEN(past) + 1);
}

/* kiln_task_retry with any delay: capped by KILN_RETRY_MAX_MS, the copy's
 * ETA is now + the cap and it waits that long in the delay queues. */
static void test_retry_delay_capped(void **state)
{
    struct fixture *fx = *state;
    static const uint64_t asked[] = {UINT64_MAX, (uint64_t)INT64_MAX,
                                     1ULL << 62, 9223372036855ULL};
    kiln_signature *sig = NULL;
    kiln__delivery dl;
    int64_t before, after, eta;

    fx->cfg.retry_max_ms = 5000;
    for (size_t i = 0; i < KILN__ARRAY_LEN(asked); i++) {
        fx->retry_ms = asked[i];
        publish_json(fx, "again", "");
        before = kiln__realtime_ns();
        assert_int_equal(dispatch_next(fx), KILN__VERDICT_RETRY);
        after = kiln__realtime_ns();
        assert_int_equal(kiln__mock_server_delayed(fx->srv), 1);
        kiln__mock_server_advance(fx->srv, 4900);
        assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
        kiln__mock_server_advance(fx->srv, 200);
        assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
        assert_int_equal(
            kiln_signature_from_json(dl.body, dl.body_len, 0, &sig, NULL),
            KILN_OK);
        assert_true(kiln_signature_eta(sig, &eta));
        assert_true(eta >= before + 5000 * 1000000LL);
        assert_true(eta <= after + 5000 * 1000000LL);
        kiln_signature_free(sig);
        assert_int_equal(kiln__broker_ack(fx->c, dl.tag, false, NULL), KILN_OK);
        kiln__broker_release(fx->c, &dl);
    }
}

/* Every instant int64 nanoseconds hold is written and read back as JSON,
 * the first one included; one nanosecond further is refused. */
static void test_time_text_ends(void **state)
{
    static const int64_t ends[] = {INT64_MIN, INT64_MIN + 1, -1, 0, INT64_MAX};
    kiln_signature *sig = kiln_signature_new("ok", NULL), *back = NULL;
    kiln__time t;
    char *json;
    size_t len;
    int64_t eta;

    (void)state;
    assert_int_equal(
        kiln__time_parse("1677-09-21T00:12:43.145224192Z", &t, NULL), KILN_OK);
    assert_true(t.unix_ns == INT64_MIN);
    assert_int_equal(
        kiln__time_parse("1677-09-21T00:12:43.145224191Z", &t, NULL),
        KILN_ECODEC);
    assert_int_equal(
        kiln__time_parse("1677-09-21T01:12:43.145224192+01:00", &t, NULL),
        KILN_OK);
    assert_true(t.unix_ns == INT64_MIN);
    for (size_t i = 0; i < KILN__ARRAY_LEN(ends); i++) {
        kiln_signature_set_eta(sig, ends[i]);
        assert_int_equal(
            kiln_signature_to_json(sig, KILN_DIALECT_PAOTA, &json, &len, NULL),
            KILN_OK);
        assert_int_equal(kiln_signature_from_json(json, len, 0, &back, NULL),
                         KILN_OK);
        assert_true(kiln_signature_eta(back, &eta));
        assert_true(eta == ends[i]);
        kiln_signature_free(back);
        kiln_free(json);
    }
    kiln_signature_free(sig);
}

/* An argument runs only the tests whose names match it (a glob). */
int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_eta_1678_runs_now, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_eta_2262_too_far, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_created_at_1678_expires, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_header_mode_far_seconds, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_retry_delay_capped, fx_setup,
                                        fx_teardown),
        cmocka_unit_test(test_time_text_ends),
    };

    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
