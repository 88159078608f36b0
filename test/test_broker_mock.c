/* The in-memory broker: publish and consume across connections, nack,
 * close and redelivery, prefetch, unroutable messages, injected faults,
 * waiting consumers, pipelined publishing (its outcomes, rounds of
 * confirms, a lost connection, a blocked broker, the wake fd), and the
 * dead-letter helper on top of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/mock_fixture.h"
#include "workerpool/dispatch.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdio.h>
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
    assert_int_equal(kiln__broker_subscribe(c, "nowhere", 0, &err),
                     KILN_EBROKER);
    assert_int_equal(kiln__broker_subscribe(c, "q", 0, &err), KILN_OK);
    assert_int_equal(kiln__broker_subscribe(c, "q", 0, &err), KILN_EINVAL);
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

/* ---- pipelined publishing ------------------------------------------------ */

typedef struct outcomes {
    kiln_err st[16];   /* by seq */
    unsigned seen[16]; /* reports of each seq */
    char why[16][96];
    unsigned calls;
} outcomes;

static void on_outcome(void *ctx, uint64_t first, uint64_t last,
                       kiln_err status, const char *why)
{
    outcomes *o = ctx;

    o->calls++;
    for (uint64_t s = first; s <= last && s < 16; s++) {
        o->st[s] = status;
        o->seen[s]++;
        (void)snprintf(o->why[s], sizeof(o->why[s]), "%s", why);
    }
}

static kiln_err settle_within(kiln__broker *b, int ms, outcomes *o)
{
    kiln_error err;

    return kiln__broker_wait_settled(
        b, kiln__monotonic_ns() + (int64_t)ms * 1000000, -1, on_outcome, o,
        &err);
}

/* Outcomes come from wait_settled only, each once: confirmed, nacked,
 * returned; a refused message takes no number; confirms due together are
 * one report (one round trip). */
static void test_pipelined_outcomes(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0);
    kiln__broker *idle = kiln__mock_broker_new(srv, NULL);
    kiln__message m[5] = {text_msg("ex", "rk", "1"), text_msg("ex", "rk", "2"),
                          text_msg("ex", "nowhere", "3"),
                          text_msg("ex", "rk", "4"), text_msg("ex", "rk", "5")};
    uint64_t seq[5];
    kiln_err st[5];
    outcomes o;
    kiln_error err;
    size_t done, calls = kiln__mock_server_publish_calls(srv);

    (void)state;
    memset(&o, 0, sizeof(o));
    m[3].routing_key = NULL; /* refused */
    kiln__mock_server_fail_publish(srv, 2);
    assert_int_equal(kiln__broker_publish_async(p, m, 5, seq, st, &done, &err),
                     KILN_OK);
    assert_int_equal(done, 5);
    assert_int_equal(err.code, KILN_EINVAL); /* the first refused */
    assert_non_null(strstr(err.message, "refused"));
    assert_int_equal(seq[0], 1);
    assert_int_equal(seq[1], 2);
    assert_int_equal(seq[2], 3);
    assert_int_equal(seq[3], 0);
    assert_int_equal(st[3], KILN_EINVAL);
    assert_int_equal(seq[4], 4);
    assert_int_equal(o.calls, 0); /* nothing reported while writing */
    assert_int_equal(settle_within(p, 1000, &o), KILN_OK);
    assert_int_equal(o.st[1], KILN_OK);
    assert_int_equal(o.st[2], KILN_EBROKER);
    assert_non_null(strstr(o.why[2], "nacked"));
    assert_int_equal(o.st[3], KILN_EBROKER);
    assert_non_null(strstr(o.why[3], "NO_ROUTE"));
    assert_int_equal(o.st[4], KILN_OK);
    for (int s = 1; s <= 4; s++)
        assert_int_equal(o.seen[s], 1);
    assert_int_equal(kiln__mock_server_publish_calls(srv), calls + 1);
    assert_int_equal(settle_within(p, 20, &o), KILN_ETIMEDOUT);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 2);

    /* With a confirm delay, what is written meanwhile joins the round. */
    memset(&o, 0, sizeof(o));
    kiln__mock_server_set_confirm_delay(srv, 50);
    m[3].routing_key = "rk";
    assert_int_equal(kiln__broker_publish_async(p, m, 2, seq, st, &done, &err),
                     KILN_OK);
    assert_int_equal(settle_within(p, 0, &o), KILN_ETIMEDOUT);
    assert_int_equal(
        kiln__broker_publish_async(p, m + 3, 2, seq, st, &done, &err), KILN_OK);
    assert_int_equal(seq[0], 7);
    assert_int_equal(settle_within(p, 5000, &o), KILN_OK);
    assert_int_equal(o.calls, 1);
    for (int s = 5; s <= 8; s++)
        assert_int_equal(o.seen[s], 1);

    assert_int_equal(
        kiln__broker_publish_async(idle, m, 1, seq, st, &done, &err),
        KILN_ECLOSED);
    assert_int_equal(done, 0);
    kiln__broker_destroy(idle);
    kiln__broker_destroy(p);
    kiln__mock_server_free(srv);
}

/* The connection breaks at the 3rd message: that one reaches its queue
 * but is never reported, the rest of the call is not written, what was
 * due before is still reported, then every op fails until a new
 * connection, which numbers from 1 again. */
static void test_pipelined_lost(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0);
    kiln__message m[4] = {text_msg("ex", "rk", "1"), text_msg("ex", "rk", "2"),
                          text_msg("ex", "rk", "3"), text_msg("ex", "rk", "4")};
    uint64_t seq[4];
    kiln_err st[4];
    outcomes o;
    kiln_error err;
    size_t done;

    (void)state;
    memset(&o, 0, sizeof(o));
    kiln__mock_server_fail_connection(srv, 3);
    assert_int_equal(kiln__broker_publish_async(p, m, 4, seq, st, &done, &err),
                     KILN_EBROKER);
    assert_int_equal(done, 3);
    assert_int_equal(seq[2], 3);
    assert_int_equal(settle_within(p, 100, &o), KILN_OK);
    assert_int_equal(o.seen[1] + o.seen[2], 2);
    assert_int_equal(settle_within(p, 100, &o), KILN_EBROKER);
    assert_int_equal(o.seen[3], 0);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 3);
    assert_int_equal(kiln__broker_publish_async(p, m, 1, seq, st, &done, &err),
                     KILN_EBROKER);
    p->ops->close(p);
    assert_int_equal(settle_within(p, 0, &o), KILN_ECLOSED);
    assert_int_equal(kiln__broker_connect(p, &err), KILN_OK);
    assert_int_equal(kiln__broker_publish_async(p, m, 1, seq, st, &done, &err),
                     KILN_OK);
    assert_int_equal(seq[0], 1);

    /* Confirms still on their way are lost with the connection. */
    memset(&o, 0, sizeof(o));
    assert_int_equal(settle_within(p, 100, &o), KILN_OK);
    kiln__mock_server_set_confirm_delay(srv, 1000);
    kiln__mock_server_fail_connection(srv, 2);
    assert_int_equal(kiln__broker_publish_async(p, m, 2, seq, st, &done, &err),
                     KILN_EBROKER);
    assert_int_equal(settle_within(p, 100, &o), KILN_EBROKER);
    assert_int_equal(o.seen[2] + o.seen[3], 0);
    kiln__broker_destroy(p);
    kiln__mock_server_free(srv);
}

static void *unblock_later(void *arg)
{
    struct timespec ts = {0, 100 * 1000000};

    nanosleep(&ts, NULL);
    kiln__mock_server_block_publishing(arg, false);
    return NULL;
}

/* Blocked: nothing is written; wait_settled returns once it ends. */
static void test_pipelined_blocked(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0);
    kiln__message m = text_msg("ex", "rk", "1");
    uint64_t seq;
    kiln_err st;
    outcomes o;
    kiln_error err;
    size_t done = 1;
    pthread_t t;

    (void)state;
    memset(&o, 0, sizeof(o));
    kiln__mock_server_block_publishing(srv, true);
    assert_int_equal(
        kiln__broker_publish_async(p, &m, 1, &seq, &st, &done, &err), KILN_OK);
    assert_int_equal(done, 0);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 0);
    assert_int_equal(settle_within(p, 20, &o), KILN_ETIMEDOUT);
    assert_int_equal(pthread_create(&t, NULL, unblock_later, srv), 0);
    assert_int_equal(settle_within(p, 10000, &o), KILN_OK);
    pthread_join(t, NULL);
    assert_int_equal(
        kiln__broker_publish_async(p, &m, 1, &seq, &st, &done, &err), KILN_OK);
    assert_int_equal(done, 1);
    assert_int_equal(kiln__mock_server_ready(srv, "q"), 1);
    kiln__broker_destroy(p);
    kiln__mock_server_free(srv);
}

static void *kick_later(void *arg)
{
    struct timespec ts = {0, 50 * 1000000};
    uint64_t one = 1;

    nanosleep(&ts, NULL);
    if (write(*(int *)arg, &one, sizeof(one)) != (ssize_t)sizeof(one))
        return arg;
    return NULL;
}

/* The wake fd ends a wait early, and is read. */
static void test_pipelined_wake(void **state)
{
    kiln__mock_server *srv = new_server();
    kiln__broker *p = open_conn(srv, NULL, 0);
    int fd = eventfd(0, EFD_NONBLOCK);
    outcomes o;
    kiln_error err;
    pthread_t t;
    void *res;
    uint64_t v;

    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(pthread_create(&t, NULL, kick_later, &fd), 0);
    assert_int_equal(
        kiln__broker_wait_settled(p, kiln__monotonic_ns() + 60000000000LL, fd,
                                  on_outcome, &o, &err),
        KILN_OK);
    pthread_join(t, &res);
    assert_null(res);
    assert_true(read(fd, &v, sizeof(v)) < 0);
    close(fd);
    kiln__broker_destroy(p);
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

/* The dead-letter copy a worker settles a refused delivery with: its
 * body and headers, the reason and where it came from, an earlier reason
 * replaced; the original acked only once the copy is confirmed. */
static void test_dead_letter_settle(void **state)
{
    kiln__mock_server *srv = kiln__mock_server_new(NULL);
    kiln__broker *p, *c, *dlq;
    kiln_header h[] = {{"x-kiln-reason", "old"}, {"keep", "me"}};
    kiln__message m;
    kiln__delivery d, dead;
    kiln_config cfg;
    kiln__dispatch disp = {.cfg = &cfg};
    kiln__job job = {.verdict = KILN__VERDICT_DEADLETTER};
    kiln_error err;

    (void)state;
    kiln_config_init(&cfg);
    kiln__fail(&job.reason, KILN_ECODEC, "bad thing");
    p = open_conn(srv, NULL, 0);
    assert_int_equal(kiln__broker_declare(p, &cfg, &err), KILN_OK);
    c = open_conn(srv, cfg.queue, 0);
    dlq = open_conn(srv, cfg.dead_letter_queue, 0);
    m = text_msg(cfg.exchange, cfg.binding_key, "{}");
    m.headers = h;
    m.n_headers = 2;
    assert_int_equal(kiln__broker_publish(p, &m, 1, NULL, &err), KILN_OK);
    expect_body(c, &d, "{}");

    /* A failed dead-letter publish leaves the delivery unacked. */
    kiln__mock_server_fail_publish(srv, 1);
    assert_int_equal(kiln__dispatch_settle(&disp, c, &d, &job, &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "dead-letter"));
    assert_int_equal(kiln__mock_server_unacked(srv), 1);
    assert_int_equal(kiln__dispatch_settle(&disp, c, &d, &job, &err), KILN_OK);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_publish_consume),
        cmocka_unit_test(test_broker_nack_and_close),
        cmocka_unit_test(test_broker_ack_multiple_and_prefetch),
        cmocka_unit_test(test_broker_unroutable_and_faults),
        cmocka_unit_test(test_broker_timeout_and_wakeup),
        cmocka_unit_test(test_pipelined_outcomes),
        cmocka_unit_test(test_pipelined_lost),
        cmocka_unit_test(test_pipelined_blocked),
        cmocka_unit_test(test_pipelined_wake),
        cmocka_unit_test(test_dead_letter_settle),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
