/* Two things a task's producer and its function see of its life, on the
 * mock broker and store:
 *
 * - kiln_task_attempt: 1, 2, 3 ... across real retries (each one published
 *   into the delay queues and consumed again), in the three wire forms,
 *   with retries asked for by kiln_task_retry too; paota's RetriesDone
 *   from a Go worker's retry; a redelivery is not a new attempt;
 * - CreatedAt from a C producer: kiln_pool_send_task's path stamps the
 *   time of sending where paota's TaskTimeOut needs it, leaves machinery
 *   bodies as machinery writes them otherwise (the golden vectors go
 *   through the send path byte for byte), keeps a machinery body carrying
 *   it machinery, and a C-produced task whose TaskTimeOut has passed is
 *   FAILURE "expired". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/files.h"
#include "test/support/mock_fixture.h"
#include "workerpool/dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RUNS 8

struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *p, *c, *dlq;
    kiln__store *store;
    kiln_registry *reg;
    kiln__dispatch d;
    /* What the "steps" task saw, run after run. */
    unsigned seen[MAX_RUNS];
    int runs;
};

/* Fails on its 1st run, asks for a retry later on its 2nd, fails on its
 * 3rd, succeeds on its 4th; records kiln_task_attempt each time. */
static kiln_err steps_task(kiln_task_ctx *ctx, void *user)
{
    struct fixture *fx = user;
    unsigned a = kiln_task_attempt(ctx);

    if (fx->runs < MAX_RUNS)
        fx->seen[fx->runs++] = a;
    switch (a) {
    case 1:
    case 3:
        return kiln_task_fail(ctx, "attempt %u fails", a);
    case 2:
        return kiln_task_retry(ctx, 5);
    default:
        return KILN_OK;
    }
}

static kiln_err ok_task(kiln_task_ctx *ctx, void *user)
{
    struct fixture *fx = user;

    if (fx->runs < MAX_RUNS)
        fx->seen[fx->runs++] = kiln_task_attempt(ctx);
    return KILN_OK;
}

static int fx_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    kiln_task_def defs[] = {
        {"steps", steps_task, fx, NULL},
        {"ok", ok_task, fx, NULL},
    };

    assert_non_null(fx);
    kiln_config_init(&fx->cfg);
    /* Short retry waits: the exponential policy's, from 5 ms. */
    fx->cfg.retry_policy = KILN_RETRY_EXPONENTIAL;
    fx->cfg.retry_base_ms = 5;
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

/* Sends `sig` (borrowed) the way kiln_pool_send_tasks does, in the
 * configured dialect. */
static void send_sig(struct fixture *fx, const kiln_signature *sig)
{
    const kiln_signature *const sigs[1] = {sig};
    kiln_error err;

    if (kiln__send_tasks(&fx->cfg, fx->p, fx->store, sigs, 1, NULL, &err) !=
        KILN_OK)
        fail_msg("send: %s", err.message);
}

/* Dispatches the next delivery of the task queue, waiting up to 2 s for
 * it (a retry waits out its delay first). */
static kiln__verdict dispatch_next(struct fixture *fx)
{
    kiln__verdict v = KILN__VERDICT_ACK;
    kiln__delivery dl;

    assert_int_equal(kiln__broker_consume(fx->c, &dl, 2000, NULL), KILN_OK);
    assert_int_equal(kiln__dispatch_delivery(&fx->d, fx->c, &dl, &v, NULL),
                     KILN_OK);
    kiln__broker_release(fx->c, &dl);
    return v;
}

static kiln_task_state state_of(struct fixture *fx, const char *uuid,
                                kiln__task_record *r)
{
    return get_state(fx->store, uuid, r);
}

/* ---- kiln_task_attempt ------------------------------------------------- */

/* A signature of the "steps" task for `dialect`: two retries allowed. */
static kiln_signature *steps_sig(kiln_dialect dialect)
{
    kiln_signature *sig = kiln_signature_new("steps", NULL);

    assert_non_null(sig);
    assert_int_equal(kiln_signature_set_retry(sig, 2, 0, NULL), KILN_OK);
    if (dialect == KILN_DIALECT_PAOTA_HEADERS)
        assert_int_equal(kiln_signature_set_raw_body(sig, "{}", 2, NULL),
                         KILN_OK);
    return sig;
}

/* Sends one "steps" task in `dialect` and runs it to the end through the
 * delay queues: four runs, numbered 1 to 4, whichever dialect counts. */
static void run_steps(struct fixture *fx, kiln_dialect dialect)
{
    kiln_signature *sig = steps_sig(dialect);
    kiln__task_record r;
    kiln__verdict v;
    int copies = 0;

    fx->cfg.dialect = dialect;
    fx->runs = 0;
    send_sig(fx, sig);
    while ((v = dispatch_next(fx)) == KILN__VERDICT_RETRY)
        assert_true(++copies < 10);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(copies, 3); /* two failures and one retry-later */
    assert_int_equal(fx->runs, 4);
    for (int i = 0; i < 4; i++)
        if (fx->seen[i] != (unsigned)i + 1)
            fail_msg("dialect %d, run %d: attempt %u, want %d", (int)dialect,
                     i + 1, fx->seen[i], i + 1);
    assert_int_equal(state_of(fx, kiln_signature_uuid(sig), &r),
                     KILN_STATE_SUCCESS);
    assert_int_equal(r.attempts, 4);
    kiln__task_record_release(&r);
    kiln_signature_free(sig);
}

static void test_attempt_machinery(void **state)
{
    run_steps(*state, KILN_DIALECT_MACHINERY);
}

static void test_attempt_paota(void **state)
{
    run_steps(*state, KILN_DIALECT_PAOTA);
}

static void test_attempt_paota_headers(void **state)
{
    run_steps(*state, KILN_DIALECT_PAOTA_HEADERS);
}

/* Publishes `body` to the task queue with an x-kiln-retries header of
 * `retries` (none when negative). */
static void publish_raw(struct fixture *fx, const char *body, int retries)
{
    kiln__message m = text_msg(fx->cfg.exchange, fx->cfg.binding_key, body);
    kiln__hdr h = kiln__hdr_int(KILN__HDR_RETRIES, KILN__HV_I64, retries);
    kiln_err st;

    if (retries >= 0) {
        m.fields = &h;
        m.n_fields = 1;
    }
    assert_int_equal(kiln__broker_publish(fx->p, &m, 1, &st, NULL), KILN_OK);
}

/* What the message carries decides: a paota worker's retry advances
 * RetriesDone without kiln's header; kiln's header also counts the
 * retries a task asked for, which RetriesDone does not. A machinery body
 * without the header is a first run. */
static void test_attempt_from_the_message(void **state)
{
    struct fixture *fx = *state;
    static const char paota[] =
        "{\"UUID\":\"task_p%d\",\"Name\":\"ok\",\"Args\":null,"
        "\"RawArgs\":null,\"RoutingKey\":\"\",\"Priority\":0,"
        "\"RetryCount\":5,\"RetryTimeout\":0,\"WaitTime\":0,"
        "\"RetriesDone\":%d,\"TaskTimeOut\":0,"
        "\"IgnoreWhenTaskNotRegistered\":false,\"CreatedAt\":null,"
        "\"ETA\":null}";
    static const char machinery[] =
        "{\"UUID\":\"task_m1\",\"Name\":\"ok\",\"GroupUUID\":\"\","
        "\"RetryCount\":1,\"RetryTimeout\":3}";
    char body[512];

    (void)snprintf(body, sizeof(body), paota, 1, 2);
    publish_raw(fx, body, -1); /* from a Go paota worker's second retry */
    (void)snprintf(body, sizeof(body), paota, 2, 1);
    publish_raw(fx, body, 3); /* a failure and two retries asked for */
    (void)snprintf(body, sizeof(body), paota, 3, 2);
    publish_raw(fx, body, 1); /* the larger count wins */
    publish_raw(fx, machinery, -1);
    publish_raw(fx, machinery, 2);
    for (int i = 0; i < 5; i++)
        assert_int_equal(dispatch_next(fx), KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, 5);
    assert_int_equal(fx->seen[0], 3);
    assert_int_equal(fx->seen[1], 4);
    assert_int_equal(fx->seen[2], 3);
    assert_int_equal(fx->seen[3], 1);
    assert_int_equal(fx->seen[4], 3);
}

/* A run cut short (a lost connection gives the delivery back to the
 * broker, which redelivers it) is not a new attempt. Without a store, a
 * classic queue's redelivery is first sent on to be counted, and comes
 * back with the same number. */
static void test_attempt_not_a_redelivery(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = kiln_signature_new("ok", NULL);
    kiln__delivery dl;
    kiln__verdict v;

    fx->d.store = NULL;
    send_sig(fx, sig);
    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    assert_int_equal(kiln__broker_nack(fx->c, dl.tag, true, NULL), KILN_OK);
    kiln__broker_release(fx->c, &dl);
    while ((v = dispatch_next(fx)) == KILN__VERDICT_RETRY)
        continue;
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(fx->runs, 1);
    assert_int_equal(fx->seen[0], 1);
    kiln_signature_free(sig);
}

/* Eager mode has no delivery: the signature's own count. */
static void test_attempt_eager(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = kiln_signature_new("ok", NULL);
    char *body, *at;
    kiln_signature *paota = NULL;

    assert_int_equal(kiln_registry_run(fx->reg, sig, NULL, NULL), KILN_OK);
    assert_int_equal(fx->seen[0], 1);
    /* A paota signature that was retried twice. */
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_PAOTA, &body, NULL, NULL),
        KILN_OK);
    at = strstr(body, "\"RetriesDone\":0");
    assert_non_null(at);
    at[strlen("\"RetriesDone\":")] = '2';
    assert_int_equal(
        kiln_signature_from_json(body, strlen(body), 0, &paota, NULL), KILN_OK);
    assert_int_equal(kiln_registry_run(fx->reg, paota, NULL, NULL), KILN_OK);
    assert_int_equal(fx->seen[1], 3);
    assert_int_equal(kiln_task_attempt(NULL), 0);
    kiln_free(body);
    kiln_signature_free(paota);
    kiln_signature_free(sig);
}

/* ---- CreatedAt from a C producer ---------------------------------------- */

/* The body of the next delivery (caller frees), with its created_at
 * header, if any, in *hdr; the delivery is acked. */
static char *take_body(struct fixture *fx, char *hdr, size_t n)
{
    kiln__delivery dl;
    const char *h;
    char *body;

    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    body = malloc(dl.body_len + 1);
    assert_non_null(body);
    memcpy(body, dl.body, dl.body_len);
    body[dl.body_len] = '\0';
    h = kiln__delivery_header(&dl, "created_at");
    (void)snprintf(hdr, n, "%s", h != NULL ? h : "");
    assert_int_equal(kiln__broker_ack(fx->c, dl.tag, false, NULL), KILN_OK);
    kiln__broker_release(fx->c, &dl);
    return body;
}

/* A golden vector, decoded and sent in its own dialect, is published as
 * the very bytes Go wrote: no CreatedAt is added to a machinery body that
 * has no TaskTimeOut, and a paota one keeps the CreatedAt it had. */
static void test_golden_bytes_through_send(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *file;
        kiln_dialect dialect;
    } golden[] = {
        {"test/data/golden/machinery_add.json", KILN_DIALECT_MACHINERY},
        {"test/data/golden/machinery_all_types.json", KILN_DIALECT_MACHINERY},
        {"test/data/golden/machinery_full.json", KILN_DIALECT_MACHINERY},
        {"test/data/golden/paota_simple.json", KILN_DIALECT_PAOTA},
        {"test/data/golden/paota_rawargs.json", KILN_DIALECT_PAOTA},
    };
    static const char future_eta[] =
        "\"ETA\":\"2031-07-14T09:26:53.589793-04:30\"";
    char hdr[32], want[8192];

    /* Their routing keys lead to the task queue too. */
    assert_int_equal(kiln__mock_server_bind(fx->srv, fx->cfg.exchange, "images",
                                            fx->cfg.queue, NULL),
                     KILN_OK);
    assert_int_equal(kiln__mock_server_bind(fx->srv, fx->cfg.exchange, "users",
                                            fx->cfg.queue, NULL),
                     KILN_OK);
    for (size_t i = 0; i < KILN__ARRAY_LEN(golden); i++) {
        size_t len;
        char *text = test_slurp(golden[i].file, &len, true), *body, *eta;
        kiln_signature *sig = NULL;

        assert_int_equal(kiln_signature_from_json(text, len, 0, &sig, NULL),
                         KILN_OK);
        fx->cfg.dialect = golden[i].dialect;
        (void)snprintf(want, sizeof(want), "%s", text);
        /* An ETA still to come would send it into the delay queues: sent
         * without it, it is the same bytes with "ETA":null. */
        if ((eta = strstr(text, future_eta)) != NULL) {
            kiln_signature_clear_eta(sig);
            (void)snprintf(want, sizeof(want), "%.*s\"ETA\":null%s",
                           (int)(eta - text), text, eta + strlen(future_eta));
        }
        send_sig(fx, sig);
        body = take_body(fx, hdr, sizeof(hdr));
        assert_string_equal(body, want);
        free(body);
        free(text);
        kiln_signature_free(sig);
    }
}

/* A signature sent with a TaskTimeOut and no CreatedAt carries the time
 * it was sent, in each dialect; the caller's signature is not changed; a
 * machinery body carries it after machinery's own keys and is still read
 * as machinery. */
static void test_created_at_stamped(void **state)
{
    struct fixture *fx = *state;
    static const kiln_dialect ds[] = {
        KILN_DIALECT_MACHINERY, KILN_DIALECT_PAOTA, KILN_DIALECT_PAOTA_HEADERS};
    char hdr[32];

    for (size_t i = 0; i < KILN__ARRAY_LEN(ds); i++) {
        kiln_signature *sig = steps_sig(ds[i]), *back = NULL;
        int64_t t0, t1, at = 0;
        char *body;

        assert_int_equal(kiln_signature_set_task_timeout(sig, 30, NULL),
                         KILN_OK);
        fx->cfg.dialect = ds[i];
        t0 = kiln__realtime_ns();
        send_sig(fx, sig);
        t1 = kiln__realtime_ns();
        assert_false(kiln_signature_created_at(sig, NULL));
        body = take_body(fx, hdr, sizeof(hdr));
        if (ds[i] == KILN_DIALECT_PAOTA_HEADERS) {
            /* Whole Unix seconds, as paota writes it. */
            at = strtoll(hdr, NULL, 10) * 1000000000;
            assert_true(at > t0 - 1000000000 && at <= t1);
        } else {
            assert_int_equal(
                kiln_signature_from_json(body, strlen(body), 0, &back, NULL),
                KILN_OK);
            assert_true(kiln_signature_created_at(back, &at));
            assert_true(at >= t0 && at <= t1);
            assert_int_equal(back->dialect, ds[i]);
            kiln_signature_free(back);
        }
        if (ds[i] == KILN_DIALECT_MACHINERY)
            assert_non_null(strstr(body, "\"IgnoreWhenTaskNotRegistered\":"
                                         "false,\"TaskTimeOut\":30,"
                                         "\"CreatedAt\":\""));
        free(body);
        kiln_signature_free(sig);
    }
    /* Without a TaskTimeOut: none in a machinery body, the time of
     * sending in a paota one, as paota's producer does. */
    for (size_t i = 0; i < 2; i++) {
        kiln_signature *sig = kiln_signature_new("ok", NULL);
        char *body;

        fx->cfg.dialect = ds[i];
        send_sig(fx, sig);
        body = take_body(fx, hdr, sizeof(hdr));
        if (ds[i] == KILN_DIALECT_MACHINERY)
            assert_null(strstr(body, "CreatedAt"));
        else
            assert_null(strstr(body, "\"CreatedAt\":null"));
        free(body);
        kiln_signature_free(sig);
    }
}

/* A C-produced task whose TaskTimeOut passed before a worker took it is
 * FAILURE "expired" and dead-lettered, in each dialect; one still within
 * it runs. The deadline counts from kiln_signature_set_created_at. */
static void test_c_task_expires(void **state)
{
    struct fixture *fx = *state;
    static const kiln_dialect ds[] = {
        KILN_DIALECT_MACHINERY, KILN_DIALECT_PAOTA, KILN_DIALECT_PAOTA_HEADERS};
    kiln__task_record r;
    kiln__delivery dl;

    for (size_t i = 0; i < KILN__ARRAY_LEN(ds); i++) {
        kiln_signature *late = steps_sig(ds[i]), *fresh = steps_sig(ds[i]);

        fx->cfg.dialect = ds[i];
        assert_int_equal(kiln_signature_set_task_timeout(late, 5, NULL),
                         KILN_OK);
        kiln_signature_set_created_at(late,
                                      kiln__realtime_ns() - 10 * 1000000000LL);
        assert_int_equal(kiln_signature_set_task_timeout(fresh, 60, NULL),
                         KILN_OK);
        send_sig(fx, late);
        send_sig(fx, fresh);
        fx->runs = 0;
        assert_int_equal(dispatch_next(fx), KILN__VERDICT_DEADLETTER);
        assert_int_equal(fx->runs, 0);
        assert_int_equal(state_of(fx, kiln_signature_uuid(late), &r),
                         KILN_STATE_FAILURE);
        assert_non_null(strstr(r.error, "expired"));
        kiln__task_record_release(&r);
        assert_int_equal(kiln__broker_consume(fx->dlq, &dl, 0, NULL), KILN_OK);
        assert_non_null(
            strstr(kiln__delivery_header(&dl, KILN__HDR_REASON), "expired"));
        assert_int_equal(kiln__broker_ack(fx->dlq, dl.tag, false, NULL),
                         KILN_OK);
        kiln__broker_release(fx->dlq, &dl);
        /* The fresh one fails its first run, as "steps" does: it ran. */
        assert_int_equal(dispatch_next(fx), KILN__VERDICT_RETRY);
        assert_int_equal(fx->runs, 1);
        while (dispatch_next(fx) == KILN__VERDICT_RETRY)
            continue;
        kiln_signature_free(late);
        kiln_signature_free(fresh);
    }
}

/* The setter and its accessor. */
static void test_created_at_setter(void **state)
{
    kiln_signature *sig = kiln_signature_new("ok", NULL);
    int64_t at = 0;
    char *json;

    (void)state;
    assert_false(kiln_signature_created_at(sig, &at));
    kiln_signature_set_created_at(sig, 1740830400123456789LL);
    assert_true(kiln_signature_created_at(sig, &at));
    assert_true(at == 1740830400123456789LL);
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_PAOTA, &json, NULL, NULL),
        KILN_OK);
    assert_non_null(
        strstr(json, "\"CreatedAt\":\"2025-03-01T12:00:00.123456789Z\""));
    kiln_free(json);
    kiln_signature_clear_created_at(sig);
    assert_false(kiln_signature_created_at(sig, NULL));
    kiln_signature_set_created_at(NULL, 1);
    kiln_signature_clear_created_at(NULL);
    kiln_signature_free(sig);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_attempt_machinery),
        T(test_attempt_paota),
        T(test_attempt_paota_headers),
        T(test_attempt_from_the_message),
        T(test_attempt_not_a_redelivery),
        T(test_attempt_eager),
        T(test_golden_bytes_through_send),
        T(test_created_at_stamped),
        T(test_c_task_expires),
        cmocka_unit_test(test_created_at_setter),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
