/* The in-memory broker and store, the dispatcher on top of them, and eager
 * mode end to end: tasks sent in each dialect run through the registry
 * exactly once, failures and bad input end in the dead-letter queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mocks/mocks.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- helpers ------------------------------------------------------------ */

static kiln__mock_server *new_server(void)
{
    kiln_error err;
    kiln__mock_server *srv = kiln__mock_server_new(&err);

    assert_non_null(srv);
    assert_int_equal(kiln__mock_server_bind(srv, "ex", "rk", "q", &err),
                     KILN_OK);
    return srv;
}

static kiln__broker *open_conn(kiln__mock_server *srv, const char *queue,
                               unsigned prefetch)
{
    kiln_error err;
    kiln__broker *b = kiln__mock_broker_new(srv, &err);

    assert_non_null(b);
    assert_int_equal(kiln__broker_connect(b, &err), KILN_OK);
    if (queue != NULL)
        assert_int_equal(b->ops->subscribe(b, queue, prefetch, &err), KILN_OK);
    return b;
}

static kiln__message text_msg(const char *exchange, const char *rk,
                              const char *body)
{
    return (kiln__message){.exchange = exchange,
                           .routing_key = rk,
                           .body = body,
                           .body_len = strlen(body),
                           .persistent = true};
}

static void publish_text(kiln__broker *b, const char *rk, const char *body)
{
    kiln__message m = text_msg("ex", rk, body);

    assert_int_equal(kiln__broker_publish(b, &m, 1, NULL, NULL), KILN_OK);
}

/* Consumes one delivery and checks its body. */
static void expect_body(kiln__broker *b, kiln__delivery *d, const char *body)
{
    kiln_error err;

    assert_int_equal(kiln__broker_consume(b, d, 0, &err), KILN_OK);
    assert_int_equal(d->body_len, strlen(body));
    assert_string_equal(d->body, body);
}

static int64_t now_ms(void)
{
    return kiln__monotonic_ns() / 1000000;
}

/* ---- mock broker --------------------------------------------------------- */

static void test_broker_publish_consume(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0), *c = open_conn(srv, NULL, 0);
    kiln__broker *idle = kiln__mock_broker_new(srv, NULL);
    kiln_header h[] = {{"k1", "v1"}, {"n", "42"}};
    kiln__message m = text_msg("ex", "rk", "hello");
    kiln__delivery d;
    kiln_err st[1] = {KILN_EINVAL};
    kiln_error err;

    (void)state;
    m.headers = h;
    m.n_headers = 2;
    m.message_id = "task_1";
    m.priority = 3;
    assert_int_equal(kiln__broker_publish(p, &m, 1, st, &err), KILN_OK);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 1);
    assert_int_equal(kiln__mock_server_published(srv), 1);
    assert_int_equal(c->ops->subscribe(c, "nowhere", 0, &err), KILN_EBROKER);
    assert_int_equal(c->ops->subscribe(c, "q", 0, &err), KILN_OK);
    assert_int_equal(c->ops->subscribe(c, "q", 0, &err), KILN_EINVAL);
    expect_body(c, &d, "hello");
    assert_string_equal(d.exchange, "ex");
    assert_string_equal(d.routing_key, "rk");
    assert_string_equal(d.message_id, "task_1");
    assert_int_equal(d.priority, 3);
    assert_false(d.redelivered);
    assert_int_equal(d.delivery_count, 0);
    assert_int_equal(d.n_headers, 2);
    assert_string_equal(kiln__delivery_header(&d, "k1"), "v1");
    assert_string_equal(kiln__delivery_header(&d, "n"), "42");
    assert_null(kiln__delivery_header(&d, "k2"));
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 0);
    assert_int_equal(kiln__mock_server_unacked(srv), 1);
    assert_int_equal(kiln__broker_ack(c, d.tag, false, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_unacked(srv), 0);
    assert_int_equal(kiln__broker_ack(c, d.tag, false, &err), KILN_EBROKER);
    kiln__broker_release(c, &d);
    assert_null(d.body);
    assert_int_equal(kiln__broker_consume(c, &d, 0, &err), KILN_ETIMEDOUT);

    /* The default exchange routes by queue name. */
    m = text_msg("", "q", "direct");
    assert_int_equal(kiln__broker_publish(p, &m, 1, NULL, &err), KILN_OK);
    expect_body(c, &d, "direct");
    assert_int_equal(kiln__broker_ack(c, d.tag, false, &err), KILN_OK);
    kiln__broker_release(c, &d);

    /* A connection that never connected refuses everything. */
    assert_int_equal(kiln__broker_publish(idle, &m, 1, st, &err), KILN_ECLOSED);
    assert_int_equal(st[0], KILN_ECLOSED);
    kiln__broker_destroy(idle);
    kiln__broker_destroy(p);
    kiln__broker_destroy(c);
    kiln__broker_destroy(NULL);
    kiln__mock_server_free(srv);
}

static void test_broker_nack_and_close(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0), *c = open_conn(srv, "q", 0);
    kiln__delivery d, d2;
    kiln_error err;

    (void)state;
    publish_text(p, "rk", "a");
    publish_text(p, "rk", "b");
    expect_body(c, &d, "a");
    assert_int_equal(kiln__broker_nack(c, d.tag, true, &err), KILN_OK);
    kiln__broker_release(c, &d);
    expect_body(c, &d, "a"); /* back at the head, flagged */
    assert_true(d.redelivered);
    assert_int_equal(d.delivery_count, 1);
    assert_int_equal(kiln__broker_nack(c, d.tag, false, &err), KILN_OK);
    assert_int_equal(kiln__broker_nack(c, d.tag, false, &err), KILN_EBROKER);
    kiln__broker_release(c, &d);
    expect_body(c, &d, "b");
    assert_false(d.redelivered);
    kiln__broker_release(c, &d);
    publish_text(p, "rk", "c");
    expect_body(c, &d, "c");
    kiln__broker_release(c, &d);

    /* Closing returns unacked deliveries in their order, redelivered. */
    kiln__broker_destroy(c);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 2);
    assert_int_equal(kiln__mock_server_unacked(srv), 0);
    c = open_conn(srv, "q", 0);
    expect_body(c, &d, "b");
    assert_true(d.redelivered);
    expect_body(c, &d2, "c");
    assert_true(d2.redelivered);
    assert_true(d2.tag > d.tag);
    assert_int_equal(kiln__broker_ack(c, d2.tag, true, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_unacked(srv), 0);
    kiln__broker_release(c, &d);
    kiln__broker_release(c, &d2);
    kiln__broker_destroy(p);
    kiln__broker_destroy(c);
    kiln__mock_server_free(srv);
}

static void test_broker_ack_multiple_and_prefetch(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0), *c = open_conn(srv, "q", 2);
    kiln__delivery d[3];
    kiln_error err;

    (void)state;
    for (int i = 0; i < 3; i++)
        publish_text(p, "rk", "m");
    expect_body(c, &d[0], "m");
    expect_body(c, &d[1], "m");
    assert_int_equal(kiln__broker_consume(c, &d[2], 0, &err), KILN_ETIMEDOUT);
    assert_int_equal(kiln__broker_ack(c, d[0].tag, false, &err), KILN_OK);
    expect_body(c, &d[2], "m");
    assert_int_equal(kiln__mock_server_unacked(srv), 2);
    assert_int_equal(kiln__broker_ack(c, d[2].tag, true, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_unacked(srv), 0);
    for (int i = 0; i < 3; i++)
        kiln__broker_release(c, &d[i]);
    kiln__broker_destroy(p);
    kiln__broker_destroy(c);
    kiln__mock_server_free(srv);
}

static void test_broker_unroutable_and_faults(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0), *c = open_conn(srv, "q", 0);
    kiln__message m[3] = {text_msg("ex", "rk", "1"),
                          text_msg("ex", "nowhere", "2"),
                          text_msg("ex", "rk", "3")};
    kiln_err st[3];
    kiln__delivery d;
    kiln_error err;

    (void)state;
    assert_int_equal(kiln__broker_publish(p, m, 3, st, &err), KILN_EBROKER);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_OK);
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    assert_non_null(strstr(err.message, "2 of 3"));
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 2);

    assert_int_equal(kiln__mock_server_set_unroutable(srv, "rk", &err),
                     KILN_OK);
    assert_int_equal(kiln__broker_publish(p, m, 1, st, &err), KILN_EBROKER);
    assert_int_equal(kiln__mock_server_set_unroutable(srv, NULL, &err),
                     KILN_OK);
    assert_int_equal(kiln__broker_publish(p, m, 1, st, &err), KILN_OK);

    m[1].routing_key = "rk";
    kiln__mock_server_fail_publish(srv, 2);
    assert_int_equal(kiln__broker_publish(p, m, 3, st, &err), KILN_EBROKER);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_OK);
    assert_int_equal(kiln__broker_publish(p, m, 3, st, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 8);

    kiln__mock_server_fail_consume(srv, 1);
    assert_int_equal(kiln__broker_consume(c, &d, 0, &err), KILN_EBROKER);
    expect_body(c, &d, "1");
    kiln__broker_release(c, &d);
    kiln__broker_destroy(p);
    kiln__broker_destroy(c);
    kiln__mock_server_free(srv);
}

struct waiter {
    pthread_t tid;
    kiln__broker *b;
    int timeout_ms;
    kiln_err rc;
    char body[16];
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    kiln__delivery d;

    w->rc = kiln__broker_consume(w->b, &d, w->timeout_ms, NULL);
    if (w->rc == KILN_OK) {
        (void)snprintf(w->body, sizeof(w->body), "%s", d.body);
        (void)kiln__broker_ack(w->b, d.tag, false, NULL);
        kiln__broker_release(w->b, &d);
    }
    return NULL;
}

static void test_broker_timeout_and_wakeup(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0);
    struct waiter w = {.b = open_conn(srv, "q", 0), .timeout_ms = -1};
    struct timespec pause = {0, 20000000};
    kiln__message late = text_msg("ex", "rk", "late");
    kiln__delivery d;
    int64_t t0 = now_ms();

    (void)state;
    assert_int_equal(kiln__broker_consume(w.b, &d, 50, NULL), KILN_ETIMEDOUT);
    assert_true(now_ms() - t0 >= 45);

    /* A consumer blocked without a deadline wakes for a publish... */
    assert_int_equal(pthread_create(&w.tid, NULL, waiter_main, &w), 0);
    (void)nanosleep(&pause, NULL);
    publish_text(p, "rk", "wake");
    assert_int_equal(pthread_join(w.tid, NULL), 0);
    assert_int_equal(w.rc, KILN_OK);
    assert_string_equal(w.body, "wake");

    /* ...and for a shutdown. */
    w.timeout_ms = 5000;
    assert_int_equal(pthread_create(&w.tid, NULL, waiter_main, &w), 0);
    (void)nanosleep(&pause, NULL);
    kiln__mock_server_shutdown(srv);
    assert_int_equal(pthread_join(w.tid, NULL), 0);
    assert_int_equal(w.rc, KILN_ECLOSED);
    assert_int_equal(kiln__broker_publish(p, &late, 1, NULL, NULL),
                     KILN_ECLOSED);
    kiln__broker_destroy(p);
    kiln__broker_destroy(w.b);
    kiln__mock_server_free(srv);
}

static void test_dead_letter_helper(void **state)
{
    kiln__mock_server *srv = kiln__mock_server_new(NULL);
    kiln__broker *p, *c, *dlq;
    kiln_header h[] = {{"x-kiln-reason", "old"}, {"keep", "me"}};
    kiln__message m;
    kiln__delivery d, dead;
    kiln_config cfg;
    kiln_error err;

    (void)state;
    kiln_config_init(&cfg);
    p = open_conn(srv, NULL, 0);
    assert_int_equal(p->ops->declare(p, &cfg, &err), KILN_OK);
    c = open_conn(srv, cfg.queue, 0);
    dlq = open_conn(srv, cfg.dead_letter_queue, 0);
    m = text_msg(cfg.exchange, cfg.binding_key, "{}");
    m.headers = h;
    m.n_headers = 2;
    assert_int_equal(kiln__broker_publish(p, &m, 1, NULL, &err), KILN_OK);
    expect_body(c, &d, "{}");

    /* A failed dead-letter publish leaves the delivery unacked. */
    kiln__mock_server_fail_publish(srv, 1);
    assert_int_equal(kiln__dead_letter(c, &cfg, &d, "bad thing", &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "dead-letter"));
    assert_int_equal(kiln__mock_server_unacked(srv), 1);
    assert_int_equal(kiln__dead_letter(c, &cfg, &d, "bad thing", &err),
                     KILN_OK);
    assert_int_equal(kiln__mock_server_unacked(srv), 0);
    kiln__broker_release(c, &d);
    expect_body(dlq, &dead, "{}");
    assert_string_equal(kiln__delivery_header(&dead, KILN__HDR_REASON),
                        "bad thing");
    assert_string_equal(kiln__delivery_header(&dead, KILN__HDR_ROUTING_KEY),
                        cfg.binding_key);
    assert_string_equal(kiln__delivery_header(&dead, KILN__HDR_EXCHANGE),
                        cfg.exchange);
    assert_string_equal(kiln__delivery_header(&dead, "keep"), "me");
    assert_int_equal(dead.n_headers, 4); /* the old reason was replaced */
    assert_int_equal(kiln__broker_ack(dlq, dead.tag, false, &err), KILN_OK);
    kiln__broker_release(dlq, &dead);
    kiln__broker_destroy(p);
    kiln__broker_destroy(c);
    kiln__broker_destroy(dlq);
    kiln__mock_server_free(srv);
}

/* ---- mock store ---------------------------------------------------------- */

static kiln_err set_state(kiln__store *s, const char *uuid, const char *name,
                          kiln__task_state state, const kiln__values *res,
                          const char *error)
{
    kiln__state_update u = {uuid, name, state, res, error};

    return kiln__store_set(s, &u, NULL);
}

static kiln__task_state get_state(kiln__store *s, const char *uuid,
                                  kiln__task_record *rec)
{
    assert_int_equal(kiln__store_get(s, uuid, rec, NULL), KILN_OK);
    return rec->state;
}

static void test_store_transitions(void **state)
{
    kiln__store *s = kiln__mock_store_new(NULL);
    kiln__value v = {.type = KILN_TYPE_INT64, .v.i = 7};
    kiln__values res = {0};
    kiln__task_record r;
    kiln_error err;

    (void)state;
    assert_int_equal(kiln__values_add(&res, &v, NULL), KILN_OK);
    assert_int_equal(set_state(s, "u1", "add", KILN__STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN__STATE_PENDING);
    assert_string_equal(r.task_name, "add");
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "u1", NULL, KILN__STATE_RECEIVED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(set_state(s, "u1", NULL, KILN__STATE_STARTED, NULL, NULL),
                     KILN_OK);
    /* A producer's PENDING that arrives late does not undo RECEIVED. */
    assert_int_equal(set_state(s, "u1", "add", KILN__STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN__STATE_STARTED);
    assert_string_equal(r.task_name, "add"); /* kept from the first write */
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "u1", "add", KILN__STATE_SUCCESS, &res, NULL),
                     KILN_OK);
    /* A late RECEIVED (a duplicate delivery) after SUCCESS is ignored. */
    assert_int_equal(
        set_state(s, "u1", "add", KILN__STATE_RECEIVED, NULL, NULL), KILN_OK);
    assert_int_equal(
        set_state(s, "u1", "add", KILN__STATE_FAILURE, NULL, "late"), KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN__STATE_SUCCESS);
    assert_int_equal(r.results.n, 1);
    assert_int_equal(r.results.items[0].v.i, 7);
    assert_string_equal(r.error, "");
    assert_true(r.created_ns > 0 && r.updated_ns >= r.created_ns);
    kiln__task_record_release(&r);

    /* A retried task goes round again; FAILURE keeps its error. */
    assert_int_equal(set_state(s, "u2", "f", KILN__STATE_RETRY, NULL, "again"),
                     KILN_OK);
    assert_int_equal(set_state(s, "u2", "f", KILN__STATE_RECEIVED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(set_state(s, "u2", "f", KILN__STATE_FAILURE, NULL, "boom"),
                     KILN_OK);
    assert_int_equal(get_state(s, "u2", &r), KILN__STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    kiln__task_record_release(&r);

    assert_int_equal(kiln__store_get(s, "u3", &r, &err), KILN_ENOTFOUND);
    assert_int_equal(set_state(s, "", "x", KILN__STATE_PENDING, NULL, NULL),
                     KILN_EINVAL);
    assert_int_equal(set_state(s, NULL, "x", KILN__STATE_PENDING, NULL, NULL),
                     KILN_EINVAL);
    assert_int_equal(set_state(s, "u3", "x", (kiln__task_state)99, NULL, NULL),
                     KILN_EINVAL);
    kiln__mock_store_fail_writes(s, 1);
    assert_int_equal(set_state(s, "u3", "x", KILN__STATE_PENDING, NULL, NULL),
                     KILN_ESTORE);
    assert_int_equal(set_state(s, "u3", "x", KILN__STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(kiln__mock_store_count(s, -1), 3);
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_SUCCESS), 1);
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_FAILURE), 1);
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_PENDING), 1);
    assert_string_equal(kiln__state_name(KILN__STATE_RETRY), "RETRY");
    assert_string_equal(kiln__state_name((kiln__task_state)42), "UNKNOWN");
    kiln__values_clear(&res);
    kiln__store_destroy(s);
    kiln__store_destroy(NULL);
}

static void test_store_many(void **state)
{
    kiln__store *s = kiln__mock_store_new(NULL);
    kiln__task_record r;
    char uuid[32];

    (void)state;
    for (int i = 0; i < 3000; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_%d", i);
        assert_int_equal(
            set_state(s, uuid, "n",
                      i % 2 ? KILN__STATE_SUCCESS : KILN__STATE_STARTED, NULL,
                      NULL),
            KILN_OK);
    }
    for (int i = 0; i < 3000; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_%d", i);
        assert_int_equal(get_state(s, uuid, &r),
                         i % 2 ? KILN__STATE_SUCCESS : KILN__STATE_STARTED);
        assert_string_equal(r.uuid, uuid);
        kiln__task_record_release(&r);
    }
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_SUCCESS), 1500);
    kiln__store_destroy(s);
}

struct late_writer {
    pthread_t tid;
    kiln__store *s;
};

static void *late_writer_main(void *arg)
{
    struct late_writer *w = arg;
    struct timespec pause = {0, 20000000};

    (void)nanosleep(&pause, NULL);
    (void)set_state(w->s, "slow", "n", KILN__STATE_SUCCESS, NULL, NULL);
    return NULL;
}

static void test_store_wait(void **state)
{
    struct late_writer w = {.s = kiln__mock_store_new(NULL)};

    (void)state;
    assert_int_equal(kiln__mock_store_wait_finished(w.s, "slow", 10),
                     KILN_ETIMEDOUT);
    assert_int_equal(pthread_create(&w.tid, NULL, late_writer_main, &w), 0);
    assert_int_equal(kiln__mock_store_wait_finished(w.s, "slow", 5000),
                     KILN_OK);
    assert_int_equal(pthread_join(w.tid, NULL), 0);
    assert_int_equal(kiln__mock_store_wait_finished(w.s, "slow", 0), KILN_OK);
    kiln__store_destroy(w.s);
}

static void test_store_alloc_failures(void **state)
{
    kiln__value v = {.type = KILN_TYPE_STRING, .v.s = (char *)"result"};
    kiln__values res = {0};
    bool fired = true;

    (void)state;
    assert_int_equal(kiln__values_add(&res, &v, NULL), KILN_OK);
    for (long n = 0; fired; n++) {
        kiln__store *s;
        kiln__task_record r = {0};
        kiln_err rc = KILN_ENOMEM, got = KILN_ENOMEM;

        kiln__alloc_fail_after(n);
        if ((s = kiln__mock_store_new(NULL)) != NULL &&
            (rc = set_state(s, "u", "n", KILN__STATE_SUCCESS, &res, NULL)) ==
                KILN_OK)
            got = kiln__store_get(s, "u", &r, NULL);
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        assert_true(got == KILN_OK || got == KILN_ENOMEM);
        if (got == KILN_OK)
            assert_string_equal(r.results.items[0].v.s, "result");
        kiln__task_record_release(&r);
        kiln__store_destroy(s);
    }
    kiln__values_clear(&res);
}

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

static int fx_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    kiln_task_def defs[] = {
        {"ok", ok_task, NULL, NULL},
        {"boom", boom_task, NULL, NULL},
        {"flaky", flaky_task, &fx->flaky_calls, NULL},
    };

    assert_non_null(fx);
    kiln_config_init(&fx->cfg);
    fx->srv = kiln__mock_server_new(NULL);
    fx->p = open_conn(fx->srv, NULL, 0);
    assert_int_equal(fx->p->ops->declare(fx->p, &fx->cfg, NULL), KILN_OK);
    fx->c = open_conn(fx->srv, fx->cfg.queue, 0);
    fx->dlq = open_conn(fx->srv, fx->cfg.dead_letter_queue, 0);
    fx->store = kiln__mock_store_new(NULL);
    fx->reg = kiln_registry_new(NULL);
    assert_int_equal(kiln_registry_add_table(fx->reg, defs, 3, NULL), KILN_OK);
    fx->d = (kiln__dispatch){&fx->cfg, fx->reg, fx->store};
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

static kiln__task_state state_of(struct fixture *fx, kiln__task_record *r)
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
    assert_int_equal(state_of(fx, &r), KILN__STATE_PENDING);
    kiln__task_record_release(&r);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_RETRY);
    assert_int_equal(state_of(fx, &r), KILN__STATE_RETRY);
    assert_string_equal(r.error, "retry in 250 ms");
    kiln__task_record_release(&r);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 0);

    assert_int_equal(kiln__broker_consume(fx->c, &dl, 0, NULL), KILN_OK);
    assert_string_equal(kiln__delivery_header(&dl, KILN__HDR_RETRY_DELAY),
                        "250");
    assert_string_equal(dl.message_id, fx->uuid);
    assert_int_equal(kiln__dispatch_delivery(&fx->d, fx->c, &dl, &v, NULL),
                     KILN_OK);
    kiln__broker_release(fx->c, &dl);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(fx->flaky_calls, 2);
    assert_int_equal(state_of(fx, &r), KILN__STATE_SUCCESS);
    kiln__task_record_release(&r);
}

static void test_dispatch_store_failure_requeues(void **state)
{
    struct fixture *fx = *state;
    kiln__verdict v;
    kiln__task_record r;
    const char *s;

    send_one(fx, "ok");
    kiln__mock_store_fail_writes(fx->store, 3); /* RECEIVED STARTED SUCCESS */
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_REQUEUE);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 1);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_ACK);
    assert_int_equal(state_of(fx, &r), KILN__STATE_SUCCESS);
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
        assert_int_equal(v, KILN__VERDICT_REQUEUE);
    }
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "delivered 4 times (max_deliveries 3)");
    assert_int_equal(state_of(fx, &r), KILN__STATE_FAILURE);
    kiln__task_record_release(&r);

    fx->cfg.unregistered = KILN_UNREGISTERED_DROP;
    send_one(fx, "nobody");
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_ACK);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "");
    assert_int_equal(state_of(fx, &r), KILN__STATE_PENDING);
    kiln__task_record_release(&r);

    fx->cfg.unregistered = KILN_UNREGISTERED_DEADLETTER;
    send_one(fx, "nobody");
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "unregistered task nobody");
    assert_int_equal(state_of(fx, &r), KILN__STATE_FAILURE);
    assert_string_equal(r.error, "unregistered task nobody");
    kiln__task_record_release(&r);
    assert_int_equal(kiln__mock_server_ready(fx->srv, fx->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_unacked(fx->srv), 0);
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
    fx->c->ops->close(fx->c);
    assert_int_equal(kiln__broker_connect(fx->c, NULL), KILN_OK);
    assert_int_equal(fx->c->ops->subscribe(fx->c, fx->cfg.queue, 0, NULL),
                     KILN_OK);
    assert_int_equal(dispatch_next(fx, &v), KILN_OK);
    assert_int_equal(v, KILN__VERDICT_DEADLETTER);
    next_reason(fx, reason, sizeof(reason));
    assert_string_equal(reason, "boom");
    assert_int_equal(state_of(fx, &r), KILN__STATE_FAILURE);
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
    assert_int_equal(state_of(fx, &rec), KILN__STATE_SUCCESS);
    kiln__task_record_release(&rec);
}

/* ---- end to end through eager mode ----------------------------------------
 */

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
    kiln__eager *e;
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
    r->e = kiln__eager_new(&r->cfg, r->reg, true, &err);
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
    kiln__eager_free(r->e);
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
    kiln__broker *p = open_conn(kiln__eager_server(r->e), NULL, 0);
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
    kiln__store *s = kiln__eager_store(r->e);
    kiln__task_record rec;
    char want[32];

    for (int i = 0; i < E2E_N; i++) {
        const char *uuid = kiln_signature_uuid(r->sigs[i]);
        kiln__task_state st = get_state(s, uuid, &rec);
        if (i % 3 == 0) {
            assert_int_equal(st, KILN__STATE_SUCCESS);
            assert_int_equal(rec.results.items[0].v.i, 4 * i);
        } else if (i % 3 == 1) {
            (void)snprintf(want, sizeof(want), "s%d-tail", i);
            assert_int_equal(st, KILN__STATE_SUCCESS);
            assert_string_equal(rec.results.items[0].v.s, want);
        } else {
            (void)snprintf(want, sizeof(want), "boom %d", i);
            assert_int_equal(st, KILN__STATE_FAILURE);
            assert_string_equal(rec.error, want);
        }
        assert_string_equal(rec.task_name, kiln_signature_name(r->sigs[i]));
        kiln__task_record_release(&rec);
    }
    assert_int_equal(get_state(s, kiln_signature_uuid(r->sigs[E2E_N]), &rec),
                     KILN__STATE_FAILURE);
    assert_string_equal(rec.error, "unregistered task nope");
    kiln__task_record_release(&rec);
    assert_int_equal(
        get_state(s, kiln_signature_uuid(r->sigs[E2E_N + 1]), &rec),
        KILN__STATE_PENDING);
    kiln__task_record_release(&rec);
    assert_int_equal(get_state(s, "task_bad", &rec), KILN__STATE_FAILURE);
    assert_non_null(strstr(rec.error, "undecodable message"));
    assert_string_equal(rec.task_name, "add");
    kiln__task_record_release(&rec);
    assert_int_equal(get_state(s, "task_badraw", &rec), KILN__STATE_FAILURE);
    assert_string_equal(rec.task_name, "concat");
    kiln__task_record_release(&rec);
    assert_int_equal(kiln__mock_store_count(s, -1), E2E_N + 4);
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_SUCCESS), 67);
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_FAILURE), 36);
    assert_int_equal(kiln__mock_store_count(s, KILN__STATE_PENDING), 1);
}

/* Every dead-lettered message, counted by reason. */
static void check_dead_letters(struct e2e_run *r)
{
    kiln__broker *dlq =
        open_conn(kiln__eager_server(r->e), r->cfg.dead_letter_queue, 0);
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
    assert_int_equal(kiln__eager_send(r->e,
                                      (const kiln_signature *const *)r->sigs,
                                      E2E_N + 2, status, &err),
                     KILN_OK);
    for (int i = 0; i < E2E_N + 2; i++)
        assert_int_equal(status[i], KILN_OK);
    publish_bad(r);
    assert_int_equal(kiln__eager_drain(r->e, 0, &handled, &err), KILN_OK);
    assert_int_equal(handled, E2E_N + 5);
    check_hits(&r->st);
    check_task_states(r);
    check_dead_letters(r);
    assert_int_equal(
        kiln__mock_server_ready(kiln__eager_server(r->e), r->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_unacked(kiln__eager_server(r->e)), 0);
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
    kiln__eager *e;
    atomic_bool stop;
    long handled, errors;
};

static void *consumer_main(void *arg)
{
    struct consumer *c = arg;

    for (;;) {
        kiln_err rc = kiln__eager_run_once(c->e, 20, NULL, NULL);
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
            kiln__eager_send(r->e, (const kiln_signature *const *)&r->sigs[i],
                             10, NULL, NULL),
            KILN_OK);
    assert_int_equal(kiln__mock_server_wait_idle(kiln__eager_server(r->e),
                                                 r->cfg.queue, 10000),
                     KILN_OK);
    atomic_store(&c.stop, true);
    assert_int_equal(pthread_join(c.tid, NULL), 0);
    assert_int_equal(c.errors, 0);
    assert_int_equal(c.handled, E2E_N);
    check_hits(&r->st);
    assert_int_equal(
        kiln__mock_store_count(kiln__eager_store(r->e), KILN__STATE_SUCCESS),
        67);
    assert_int_equal(
        kiln__mock_store_count(kiln__eager_store(r->e), KILN__STATE_FAILURE),
        33);
    e2e_teardown(r);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_publish_consume),
        cmocka_unit_test(test_broker_nack_and_close),
        cmocka_unit_test(test_broker_ack_multiple_and_prefetch),
        cmocka_unit_test(test_broker_unroutable_and_faults),
        cmocka_unit_test(test_broker_timeout_and_wakeup),
        cmocka_unit_test(test_dead_letter_helper),
        cmocka_unit_test(test_store_transitions),
        cmocka_unit_test(test_store_many),
        cmocka_unit_test(test_store_wait),
        cmocka_unit_test(test_store_alloc_failures),
        cmocka_unit_test_setup_teardown(test_dispatch_retry, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_store_failure_requeues,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_unregistered_policies,
                                        fx_setup, fx_teardown),
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
