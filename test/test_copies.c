/* The copies a worker publishes for a delivery (dead letter, retry, hold)
 * on the mock broker: they carry the delivery's headers with the types
 * they came with, less x-death and its kin for those sent on through the
 * delay queues; the headers kiln adds replace same-named ones and its
 * counters are integers; paota's header mode travels with paota's Go
 * types; a copy too big for one frame is dead-lettered without its
 * largest headers, saying so, and never looped; a message no broker can
 * take is refused alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "broker/outgoing.h"
#include "test/support/mock_fixture.h"
#include "workerpool/dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S(k, s)                                                      \
    {                                                                \
        k,                                                           \
        {                                                            \
            .type = KILN__HV_UTF8, .v = {.str = {s, sizeof(s) - 1} } \
        }                                                            \
    }
#define N(k, t, n)                      \
    {                                   \
        k,                              \
        {                               \
            .type = t, .v = {.i = (n) } \
        }                               \
    }

struct fixture {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *p, *c, *dlq;
    kiln_registry *reg;
    kiln__dispatch d;
};

static kiln_err boom_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_fail(ctx, "boom");
}

static kiln_err again_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_retry(ctx, 100);
}

static int setup_dialect(void **state, kiln_dialect dialect)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    kiln_task_def defs[] = {
        {"boom", boom_task, NULL, NULL},
        {"again", again_task, NULL, NULL},
    };

    assert_non_null(fx);
    kiln_log_set_level(KILN_LOG_OFF);
    kiln_config_init(&fx->cfg);
    fx->cfg.dialect = dialect;
    fx->srv = kiln__mock_server_new(NULL);
    fx->p = open_conn(fx->srv, NULL, 0);
    assert_int_equal(kiln__broker_declare(fx->p, &fx->cfg, NULL), KILN_OK);
    fx->c = open_conn(fx->srv, fx->cfg.queue, 0);
    fx->dlq = open_conn(fx->srv, fx->cfg.dead_letter_queue, 0);
    fx->reg = kiln_registry_new(NULL);
    assert_int_equal(kiln_registry_add_table(fx->reg, defs, 2, NULL), KILN_OK);
    fx->d = (kiln__dispatch){.cfg = &fx->cfg, .reg = fx->reg};
    *state = fx;
    return 0;
}

static int setup(void **state)
{
    return setup_dialect(state, KILN_DIALECT_MACHINERY);
}

static int setup_paota_headers(void **state)
{
    return setup_dialect(state, KILN_DIALECT_PAOTA_HEADERS);
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    kiln__broker_destroy(fx->p);
    kiln__broker_destroy(fx->c);
    kiln__broker_destroy(fx->dlq);
    kiln__mock_server_free(fx->srv);
    kiln_registry_free(fx->reg);
    free(fx);
    return 0;
}

/* ---- a delivery with typed headers --------------------------------------- */

static const kiln__hdr inner[] = {S("k", "v"), N("n", KILN__HV_I32, 7)};
static const kiln__hval items[] = {
    {.type = KILN__HV_BOOL, .v = {.b = true}},
    {.type = KILN__HV_I64, .v = {.i = -5}},
    {.type = KILN__HV_TABLE, .v = {.table = {inner, 2}}},
};
static const kiln__hval keys[] = {
    {.type = KILN__HV_UTF8, .v = {.str = {"task", 4}}}};
static const kiln__hdr death[] = {
    N("count", KILN__HV_I64, 1),
    S("reason", "expired"),
    S("queue", "ttl"),
    {"time", {.type = KILN__HV_TIMESTAMP, .v = {.u = 1700000000}}},
    S("exchange", ""),
    {"routing-keys", {.type = KILN__HV_ARRAY, .v = {.array = {keys, 1}}}},
};
static const kiln__hval deaths[] = {
    {.type = KILN__HV_TABLE, .v = {.table = {death, 6}}}};

/* What a task arrives with: user headers of several types, RabbitMQ's
 * x-death trail and kiln headers of an earlier copy, as strings. */
static const kiln__hdr typed[] = {
    {"flag", {.type = KILN__HV_BOOL, .v = {.b = true}}},
    N("i32", KILN__HV_I32, -7),
    N("i64", KILN__HV_I64, 9007199254740993LL),
    {"table", {.type = KILN__HV_TABLE, .v = {.table = {inner, 2}}}},
    {"array", {.type = KILN__HV_ARRAY, .v = {.array = {items, 3}}}},
    {"x-death", {.type = KILN__HV_ARRAY, .v = {.array = {deaths, 1}}}},
    S("x-first-death-queue", "ttl"),
    S("x-kiln-reason", "an older reason"),
    S("x-kiln-retries", "5"),
};
#define N_TYPED 9

static const char *destination(const kiln_config *cfg)
{
    return cfg->binding_key[0] ? cfg->binding_key : cfg->queue;
}

/* Publishes task `name` (machinery JSON) with `n` headers `h` and
 * consumes it into *dl. */
static void arrive(struct fixture *fx, const char *name, const kiln__hdr *h,
                   size_t n, kiln__delivery *dl)
{
    kiln_signature *sig = kiln_signature_new(name, NULL);
    kiln__message m;
    char *body = NULL;
    size_t len = 0;
    kiln_error err;

    assert_non_null(sig);
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &body, &len, &err),
        KILN_OK);
    m = text_msg(fx->cfg.exchange, destination(&fx->cfg), body);
    m.fields = h;
    m.n_fields = n;
    m.message_id = kiln_signature_uuid(sig);
    assert_int_equal(kiln__broker_publish(fx->p, &m, 1, NULL, &err), KILN_OK);
    kiln_free(body);
    kiln_signature_free(sig);
    assert_int_equal(kiln__broker_consume(fx->c, dl, 0, &err), KILN_OK);
}

static kiln__verdict dispatch(struct fixture *fx, kiln__delivery *dl)
{
    kiln__verdict v;
    kiln_error err;

    if (kiln__dispatch_delivery(&fx->d, fx->c, dl, &v, &err) != KILN_OK)
        fail_msg("dispatch: %s", err.message);
    kiln__broker_release(fx->c, dl);
    return v;
}

static const kiln__hval *get(const kiln__delivery *d, const char *key)
{
    const kiln__hdr *h = kiln__hdrs_find(d->fields, d->n_headers, key);

    return h != NULL ? &h->value : NULL;
}

static size_t count_of(const kiln__delivery *d, const char *key)
{
    size_t n = 0;

    for (size_t i = 0; i < d->n_headers; i++)
        n += strcmp(d->fields[i].key, key) == 0;
    return n;
}

static void assert_type(const kiln__delivery *d, const char *key,
                        kiln__htype type)
{
    const kiln__hval *v = get(d, key);

    if (v == NULL)
        fail_msg("header %s missing", key);
    if (v->type != type)
        fail_msg("header %s: type %d, want %d", key, (int)v->type, (int)type);
}

static void assert_text(const kiln__delivery *d, const char *key,
                        const char *want)
{
    const kiln__hval *v = get(d, key);

    assert_type(d, key, KILN__HV_UTF8);
    assert_int_equal(v->v.str.len, strlen(want));
    assert_memory_equal(v->v.str.p, want, v->v.str.len);
}

static void assert_int(const kiln__delivery *d, const char *key,
                       kiln__htype type, int64_t want)
{
    assert_type(d, key, type);
    assert_int_equal(get(d, key)->v.i, want);
}

/* The user headers of `typed`, as they were. */
static void assert_user_headers(const kiln__delivery *d)
{
    const kiln__hval *t, *a;

    assert_type(d, "flag", KILN__HV_BOOL);
    assert_true(get(d, "flag")->v.b);
    assert_int(d, "i32", KILN__HV_I32, -7);
    assert_int(d, "i64", KILN__HV_I64, 9007199254740993LL);
    assert_type(d, "table", KILN__HV_TABLE);
    t = get(d, "table");
    assert_int_equal(t->v.table.n, 2);
    assert_string_equal(t->v.table.items[0].key, "k");
    assert_int_equal(t->v.table.items[0].value.type, KILN__HV_UTF8);
    assert_int_equal(t->v.table.items[1].value.type, KILN__HV_I32);
    assert_int_equal(t->v.table.items[1].value.v.i, 7);
    assert_type(d, "array", KILN__HV_ARRAY);
    a = get(d, "array");
    assert_int_equal(a->v.array.n, 3);
    assert_int_equal(a->v.array.items[0].type, KILN__HV_BOOL);
    assert_int_equal(a->v.array.items[1].type, KILN__HV_I64);
    assert_int_equal(a->v.array.items[1].v.i, -5);
    assert_int_equal(a->v.array.items[2].type, KILN__HV_TABLE);
    assert_int_equal(a->v.array.items[2].v.table.n, 2);
    /* the string view still reads them */
    assert_string_equal(kiln__delivery_header(d, "i32"), "-7");
    assert_string_equal(kiln__delivery_header(d, "flag"), "true");
    assert_string_equal(kiln__delivery_header(d, "table"),
                        "{\"k\":\"v\",\"n\":7}");
}

/* ---- dead letters -------------------------------------------------------- */

static void test_dead_letter_keeps_types(void **state)
{
    struct fixture *fx = *state;
    const kiln__hval *x;
    kiln__delivery dl, dead;

    arrive(fx, "boom", typed, N_TYPED, &dl);
    assert_int_equal(dispatch(fx, &dl), KILN__VERDICT_DEADLETTER);
    assert_int_equal(kiln__broker_consume(fx->dlq, &dead, 0, NULL), KILN_OK);
    assert_user_headers(&dead);
    /* RabbitMQ's trail goes with a dead letter, as it came */
    assert_type(&dead, "x-death", KILN__HV_ARRAY);
    x = get(&dead, "x-death");
    assert_int_equal(x->v.array.n, 1);
    assert_int_equal(x->v.array.items[0].type, KILN__HV_TABLE);
    assert_int_equal(x->v.array.items[0].v.table.items[0].value.type,
                     KILN__HV_I64);
    assert_int_equal(x->v.array.items[0].v.table.items[3].value.type,
                     KILN__HV_TIMESTAMP);
    assert_text(&dead, "x-first-death-queue", "ttl");
    /* kiln's own replace the same-named ones, once each */
    assert_text(&dead, KILN__HDR_REASON, "boom");
    assert_int_equal(count_of(&dead, KILN__HDR_REASON), 1);
    assert_int(&dead, KILN__HDR_ATTEMPTS, KILN__HV_I64, 6); /* 5 retries */
    assert_type(&dead, KILN__HDR_WORKER, KILN__HV_UTF8);
    assert_int_equal(dead.n_headers, N_TYPED + 4);
    kiln__broker_release(fx->dlq, &dead);
}

/* ---- retries and holds --------------------------------------------------- */

/* Runs the delay queues forward and consumes what comes back. */
static void come_back(struct fixture *fx, kiln__delivery *dl)
{
    kiln__mock_server_advance(fx->srv, 60000);
    assert_int_equal(kiln__broker_consume(fx->c, dl, 0, NULL), KILN_OK);
}

static void test_retry_keeps_types(void **state)
{
    struct fixture *fx = *state;
    kiln__delivery dl, back;

    arrive(fx, "again", typed, N_TYPED, &dl);
    assert_int_equal(dispatch(fx, &dl), KILN__VERDICT_RETRY);
    come_back(fx, &back);
    assert_user_headers(&back);
    /* dead-lettering adds these again on the way: never copied */
    assert_null(get(&back, "x-death"));
    assert_null(get(&back, "x-first-death-queue"));
    assert_text(&back, KILN__HDR_REASON, "an older reason");
    /* counters are integers, replacing the string ones */
    assert_int(&back, KILN__HDR_RETRIES, KILN__HV_I64, 6);
    assert_int_equal(count_of(&back, KILN__HDR_RETRIES), 1);
    assert_int(&back, KILN__HDR_DELIVERIES, KILN__HV_I64, 0);
    assert_int_equal(back.n_headers, N_TYPED - 2 + 1);
    kiln__broker_release(fx->c, &back);
}

/* A task early for its ETA goes back unchanged, its headers too. */
static void test_hold_keeps_types(void **state)
{
    struct fixture *fx = *state;
    kiln__delivery dl, back;
    kiln__job job;
    kiln__settle s;
    kiln_error err;

    arrive(fx, "boom", typed, N_TYPED, &dl);
    assert_true(kiln__dispatch_prepare(&fx->d, &dl, &job));
    kiln__job_hold(&job, 1500);
    assert_int_equal(kiln__settle_begin(&fx->d, &dl, &job, &s, &err), KILN_OK);
    assert_int_equal(kiln__broker_publish(fx->c, &s.msg, 1, NULL, &err),
                     KILN_OK);
    assert_int_equal(kiln__settle_end(fx->c, &dl, &s, &err), KILN_OK);
    kiln__job_release(&job);
    kiln__broker_release(fx->c, &dl);
    come_back(fx, &back);
    assert_user_headers(&back);
    assert_null(get(&back, "x-death"));
    assert_int(&back, KILN__HDR_RETRIES, KILN__HV_I64, 5);
    kiln__broker_release(fx->c, &back);
}

/* ---- paota's header mode ------------------------------------------------- */

/* The headers paota's registrar reads, with the Go types it asserts. */
static void assert_paota_types(const kiln__delivery *d, int retries_done)
{
    assert_type(d, "uuid", KILN__HV_UTF8);
    assert_text(d, "task_name", "boom");
    assert_int(d, "retry_count", KILN__HV_I32, 2);
    assert_type(d, "retry_timeout", KILN__HV_I32); /* Fibonacci grows it */
    assert_int(d, "timeout", KILN__HV_I32, 30);
    assert_int(d, "wait_time", KILN__HV_I32, 0);
    assert_int(d, "retries_done", KILN__HV_I32, retries_done);
    assert_type(d, "ignore_if_unregistered", KILN__HV_BOOL);
    assert_false(get(d, "ignore_if_unregistered")->v.b);
    assert_text(d, "routing_key", "rk.paota");
    assert_type(d, "priority", KILN__HV_F64);
    assert_true(get(d, "priority")->v.f64 == 3.0);
}

static void test_paota_headers_typed(void **state)
{
    struct fixture *fx = *state;
    kiln_signature *sig = kiln_signature_new("boom", NULL);
    const kiln_signature *sigs[1] = {sig};
    kiln__delivery dl, back;
    kiln_error err;

    assert_non_null(sig);
    assert_int_equal(kiln_signature_set_raw_body(sig, "[1,2]", 5, &err),
                     KILN_OK);
    assert_int_equal(kiln_signature_set_retry(sig, 2, 0, &err), KILN_OK);
    assert_int_equal(kiln_signature_set_task_timeout(sig, 30, &err), KILN_OK);
    assert_int_equal(kiln_signature_set_routing_key(sig, "rk.paota", &err),
                     KILN_OK);
    assert_int_equal(kiln_signature_set_priority(sig, 3, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_bind(fx->srv, fx->cfg.exchange,
                                            "rk.paota", fx->cfg.queue, &err),
                     KILN_OK);
    assert_int_equal(
        kiln__send_tasks(&fx->cfg, fx->p, NULL, sigs, 1, NULL, &err), KILN_OK);
    kiln_signature_free(sig);

    /* as a kiln producer sends it */
    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, &err), KILN_OK);
    assert_paota_types(&dl, 0);
    assert_null(get(&dl, "eta"));
    /* and as a retry re-encodes it */
    assert_int_equal(dispatch(fx, &dl), KILN__VERDICT_RETRY);
    come_back(fx, &back);
    assert_paota_types(&back, 1);
    assert_type(&back, "eta", KILN__HV_I64);
    assert_int(&back, KILN__HDR_RETRIES, KILN__HV_I64, 1);
    assert_int_equal(count_of(&back, "retries_done"), 1);
    kiln__broker_release(fx->c, &back);
}

/* A producer's message whose headers cannot fit one frame (a task name of
 * 140 KiB in header mode) fails alone with KILN_ETOOBIG, before PENDING;
 * the rest of the batch is sent. */
static void test_producer_too_big_fails_alone(void **state)
{
    struct fixture *fx = *state;
    size_t big = 140 * 1024;
    char *name = malloc(big + 1);
    kiln_signature *sigs[3];
    kiln_err st[3];
    kiln_error err;

    assert_non_null(name);
    memset(name, 'n', big);
    name[big] = '\0';
    for (int i = 0; i < 3; i++) {
        sigs[i] = kiln_signature_new(i == 1 ? name : "boom", NULL);
        assert_non_null(sigs[i]);
        assert_int_equal(kiln_signature_set_raw_body(sigs[i], "1", 1, NULL),
                         KILN_OK);
    }
    assert_int_equal(kiln__send_tasks(&fx->cfg, fx->p, NULL,
                                      (const kiln_signature *const *)sigs, 3,
                                      st, &err),
                     KILN_ETOOBIG);
    print_message("%s\n", err.message);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_ETOOBIG);
    assert_int_equal(st[2], KILN_OK);
    assert_non_null(strstr(err.message, "task 1"));
    assert_non_null(strstr(err.message, "do not fit one frame"));
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 2);
    for (int i = 0; i < 3; i++)
        kiln_signature_free(sigs[i]);
    free(name);
}

/* ---- too big for one frame ----------------------------------------------- */

/* `typed` (without x-death and x-first-death-queue when `no_death`) plus a
 * header "x-big" long enough that the delivery's properties take
 * KILN__MAX_PROPS - `room` bytes. *big is malloc'd. Returns the count. */
static size_t big_headers(struct fixture *fx, kiln__hdr *h, char **big,
                          size_t room, bool no_death)
{
    kiln__message m = text_msg(fx->cfg.exchange, destination(&fx->cfg), "{}");
    char id[KILN_UUID_LEN];
    size_t props, n = 0;

    for (size_t i = 0; i < N_TYPED; i++)
        if (!no_death || strncmp(typed[i].key, "x-", 2) != 0 ||
            strncmp(typed[i].key, "x-kiln", 6) == 0)
            h[n++] = typed[i];
    h[n] = (kiln__hdr)S("x-big", "");
    m.fields = h;
    m.n_fields = n + 1;
    memset(id, 'u', sizeof(id) - 1); /* a UUID's length */
    id[sizeof(id) - 1] = '\0';
    m.message_id = id;
    assert_int_equal(kiln__message_check(&m, 0, &props, NULL), KILN_OK);
    h[n].value.v.str.len = KILN__MAX_PROPS - room - props;
    *big = malloc(h[n].value.v.str.len);
    assert_non_null(*big);
    memset(*big, 'b', h[n].value.v.str.len);
    h[n].value.v.str.p = *big;
    return n + 1;
}

static void test_dead_letter_too_big_is_trimmed(void **state)
{
    struct fixture *fx = *state;
    kiln__hdr h[N_TYPED + 1];
    kiln__delivery dl, dead;
    const kiln__hval *r;
    char *big;

    arrive(fx, "boom", h, big_headers(fx, h, &big, 10, false), &dl);
    assert_int_equal(dispatch(fx, &dl), KILN__VERDICT_DEADLETTER);
    assert_int_equal(kiln__broker_consume(fx->dlq, &dead, 0, NULL), KILN_OK);
    assert_null(get(&dead, "x-big"));
    assert_user_headers(&dead); /* the rest stays */
    assert_type(&dead, "x-death", KILN__HV_ARRAY);
    r = get(&dead, KILN__HDR_REASON);
    assert_non_null(r);
    print_message("reason: %.*s\n", (int)r->v.str.len, r->v.str.p);
    assert_non_null(strstr(kiln__delivery_header(&dead, KILN__HDR_REASON),
                           "boom; left out headers too large for one frame"));
    assert_non_null(
        strstr(kiln__delivery_header(&dead, KILN__HDR_REASON), "x-big ("));
    assert_int_equal(kiln__broker_ack(fx->dlq, dead.tag, false, NULL), KILN_OK);
    kiln__broker_release(fx->dlq, &dead);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 0);
    free(big);
}

/* The copy sent on would not fit (it adds the counters): the delivery is
 * dead-lettered instead, and nothing is left in the delay queues. */
static void test_retry_too_big_is_dead_lettered(void **state)
{
    struct fixture *fx = *state;
    kiln__hdr h[N_TYPED + 1];
    kiln__delivery dl, dead;
    const char *reason;
    char *big;

    arrive(fx, "again", h, big_headers(fx, h, &big, 10, true), &dl);
    assert_int_equal(dispatch(fx, &dl), KILN__VERDICT_RETRY);
    assert_int_equal(kiln__mock_server_delayed(fx->srv), 0);
    assert_int_equal(kiln__broker_consume(fx->dlq, &dead, 0, NULL), KILN_OK);
    reason = kiln__delivery_header(&dead, KILN__HDR_REASON);
    assert_non_null(reason);
    print_message("reason: %s\n", reason != NULL ? reason : "-");
    assert_non_null(strstr(reason, "not sent on through the delay queues: "
                                   "its headers do not fit one frame"));
    assert_non_null(strstr(reason, "x-big ("));
    assert_null(get(&dead, "x-big"));
    assert_user_headers(&dead);
    assert_int_equal(kiln__broker_ack(fx->dlq, dead.tag, false, NULL), KILN_OK);
    kiln__broker_release(fx->dlq, &dead);
    kiln__mock_server_advance(fx->srv, 60000);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 0);
    free(big);
}

/* ---- refused alone ------------------------------------------------------- */

static void test_refused_alone(void **state)
{
    struct fixture *fx = *state;
    const char *rk = destination(&fx->cfg);
    kiln__message m[4] = {text_msg(fx->cfg.exchange, rk, "a"),
                          text_msg(fx->cfg.exchange, rk, "b"),
                          text_msg(fx->cfg.exchange, rk, "c"),
                          text_msg(fx->cfg.exchange, rk, "d")};
    kiln__hdr huge[1] = {S("x-huge", "")};
    kiln_err st[4];
    char id[300];
    kiln_error err;

    memset(id, 'i', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    m[1].message_id = id;
    huge[0].value.v.str.len = KILN__FRAME_MAX;
    huge[0].value.v.str.p = calloc(1, KILN__FRAME_MAX);
    assert_non_null(huge[0].value.v.str.p);
    m[2].fields = huge;
    m[2].n_fields = 1;
    assert_int_equal(kiln__broker_publish(fx->p, m, 4, st, &err), KILN_EINVAL);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EINVAL);
    assert_int_equal(st[2], KILN_ETOOBIG);
    assert_int_equal(st[3], KILN_OK);
    assert_non_null(strstr(err.message, "message id of 299 bytes"));
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 2);
    free((void *)(uintptr_t)huge[0].value.v.str.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_dead_letter_keeps_types),
        T(test_retry_keeps_types),
        T(test_hold_keeps_types),
        cmocka_unit_test_setup_teardown(test_paota_headers_typed,
                                        setup_paota_headers, teardown),
        cmocka_unit_test_setup_teardown(test_producer_too_big_fails_alone,
                                        setup_paota_headers, teardown),
        T(test_dead_letter_too_big_is_trimmed),
        T(test_retry_too_big_is_dead_lettered),
        T(test_refused_alone),
#undef T
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
