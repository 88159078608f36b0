/* The publisher behind kiln_pool_send_task(s), on the in-memory broker:
 * a connection keeps writing while earlier confirms are outstanding, up
 * to its window; concurrent sends are all confirmed and enqueued exactly
 * once and share confirm round trips (group commit); nacks and returns
 * are per message; a lost connection is re-established and what it left
 * unsettled is sent again; a blocked broker gets nothing written;
 * deadlines and shutdown never leave a caller waiting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mocks/mocks.h"
#include "workerpool/publisher.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS    8
#define PER_THREAD 2000

/* ---- a counting wrapper around the mock broker --------------------------- */

typedef struct env {
    kiln__mock_server *srv;
    atomic_uint publishes, connects, ticks; /* publishes: writes */
    atomic_size_t max_batch;                /* messages in one write */
    atomic_size_t max_inflight; /* written, not yet reported, at once */
    atomic_int refuse;          /* connects to refuse; negative: all */
    atomic_bool tick_breaks;    /* the next tick reports a lost connection */
    atomic_int delay_ms;        /* each write takes this long */
    bool no_async;              /* leave pipelined publishing out */
} env;

typedef struct wrap {
    kiln__broker base;
    kiln__broker *in;
    env *env;
    size_t inflight; /* the owner thread's: this connection's */
} wrap;

#define IN(b) (((wrap *)(b))->in)

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    return kiln__monotonic_ns() / 1000000;
}

/* Waits until the broker has seen `n` publish calls (a batch is running). */
static void await_publishes(const atomic_uint *calls, unsigned n)
{
    for (int i = 0; i < 500 && atomic_load(calls) < n; i++)
        sleep_ms(2);
}

static kiln_err w_connect(kiln__broker *b, kiln_error *err)
{
    env *e = ((wrap *)b)->env;
    int left = atomic_load(&e->refuse);

    ((wrap *)b)->inflight = 0;
    while (left > 0 &&
           !atomic_compare_exchange_weak(&e->refuse, &left, left - 1))
        ;
    if (left != 0)
        return kiln__fail(err, KILN_EBROKER, "connection refused (test)");
    atomic_fetch_add(&e->connects, 1);
    return kiln__broker_connect(IN(b), err);
}

static void w_close(kiln__broker *b)
{
    kiln__broker_close(IN(b));
}

static kiln_err w_declare(kiln__broker *b, const kiln_config *cfg,
                          kiln_error *err)
{
    return kiln__broker_declare(IN(b), cfg, err);
}

static kiln_err w_publish(kiln__broker *b, const kiln__message *msgs, size_t n,
                          kiln_err *status, kiln_error *err)
{
    return kiln__broker_publish(IN(b), msgs, n, status, err);
}

static kiln_err w_subscribe(kiln__broker *b, const char *q, unsigned prefetch,
                            kiln_error *err)
{
    return kiln__broker_subscribe(IN(b), q, prefetch, err);
}

static kiln_err w_consume(kiln__broker *b, kiln__delivery *out, int timeout_ms,
                          kiln_error *err)
{
    return kiln__broker_consume(IN(b), out, timeout_ms, err);
}

static kiln_err w_ack(kiln__broker *b, uint64_t tag, bool multiple,
                      kiln_error *err)
{
    return kiln__broker_ack(IN(b), tag, multiple, err);
}

static kiln_err w_nack(kiln__broker *b, uint64_t tag, bool requeue,
                       kiln_error *err)
{
    return kiln__broker_nack(IN(b), tag, requeue, err);
}

static void w_release(kiln__broker *b, kiln__delivery *d)
{
    kiln__broker_release(IN(b), d);
}

static void w_destroy(kiln__broker *b)
{
    kiln__broker_destroy(IN(b));
    free(b);
}

static kiln_err w_tick(kiln__broker *b, kiln_error *err)
{
    env *e = ((wrap *)b)->env;
    bool breaks = true;

    atomic_fetch_add(&e->ticks, 1);
    if (atomic_compare_exchange_strong(&e->tick_breaks, &breaks, false))
        return kiln__fail(err, KILN_EBROKER, "missed heartbeats (test)");
    return kiln__broker_tick(IN(b), err);
}

static bool w_publish_lost(kiln__broker *b, size_t i)
{
    return kiln__broker_publish_lost(IN(b), i);
}

static void note_max(atomic_size_t *max, size_t n)
{
    size_t m = atomic_load(max);

    while (n > m && !atomic_compare_exchange_weak(max, &m, n))
        ;
}

static kiln_err w_publish_async(kiln__broker *b, const kiln__message *msgs,
                                size_t n, uint64_t *seq, kiln_err *status,
                                size_t *done, kiln_error *err)
{
    wrap *w = (wrap *)b;
    kiln_err rc;

    atomic_fetch_add(&w->env->publishes, 1);
    note_max(&w->env->max_batch, n);
    if (atomic_load(&w->env->delay_ms) > 0)
        sleep_ms(atomic_load(&w->env->delay_ms));
    rc = IN(b)->ops->publish_async(IN(b), msgs, n, seq, status, done, err);
    for (size_t i = 0; i < *done; i++)
        w->inflight += seq[i] != 0;
    note_max(&w->env->max_inflight, w->inflight);
    return rc;
}

typedef struct relay {
    wrap *w;
    kiln__settled_fn fn;
    void *ctx;
} relay;

static void w_settled(void *ctx, uint64_t first, uint64_t last, kiln_err status,
                      const char *why)
{
    relay *r = ctx;

    r->w->inflight -= (size_t)(last - first + 1);
    r->fn(r->ctx, first, last, status, why);
}

static kiln_err w_wait_settled(kiln__broker *b, int64_t deadline_ns,
                               int wake_fd, kiln__settled_fn fn, void *ctx,
                               kiln_error *err)
{
    relay r = {(wrap *)b, fn, ctx};

    return IN(b)->ops->wait_settled(IN(b), deadline_ns, wake_fd, w_settled, &r,
                                    err);
}

#define BASE_OPS                                                              \
    .connect = w_connect, .close = w_close, .declare = w_declare,             \
    .publish = w_publish, .subscribe = w_subscribe, .consume = w_consume,     \
    .ack = w_ack, .nack = w_nack, .release = w_release, .destroy = w_destroy, \
    .tick = w_tick, .publish_lost = w_publish_lost

static const kiln__broker_ops full_ops = {
    BASE_OPS, .publish_async = w_publish_async, .wait_settled = w_wait_settled};
static const kiln__broker_ops sync_ops = {BASE_OPS};

static kiln__broker *factory(void *ctx, const kiln_config *cfg, kiln_error *err)
{
    env *e = ctx;
    wrap *w = calloc(1, sizeof(*w));

    (void)cfg;
    if (w == NULL) {
        kiln__fail(err, KILN_ENOMEM, "test wrapper");
        return NULL;
    }
    if ((w->in = kiln__mock_broker_new(e->srv, err)) == NULL) {
        free(w);
        return NULL;
    }
    w->base.ops = e->no_async ? &sync_ops : &full_ops;
    w->env = e;
    return &w->base;
}

/* ---- fixture ------------------------------------------------------------ */

typedef struct fixture {
    kiln_config cfg;
    env env;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    kiln_log_set_level(KILN_LOG_OFF);
    kiln_config_init(&f->cfg);
    strcpy(f->cfg.exchange, "ex");
    strcpy(f->cfg.queue, "q");
    strcpy(f->cfg.binding_key, "rk");
    strcpy(f->cfg.dead_letter_exchange, "dlx");
    strcpy(f->cfg.dead_letter_queue, "dlq");
    f->cfg.pool_size = 2;
    if ((f->env.srv = kiln__mock_server_new(NULL)) == NULL) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    kiln__mock_server_free(f->env.srv);
    free(f);
    return 0;
}

static kiln__publisher *new_pub(fixture *f, unsigned n_conns)
{
    kiln_error err;
    kiln__publisher *p =
        kiln__publisher_new(&f->cfg, factory, &f->env, n_conns, "test", &err);

    assert_non_null(p);
    return p;
}

static kiln__message msg(const char *rk, const char *body)
{
    return (kiln__message){.exchange = "ex",
                           .routing_key = rk,
                           .body = body,
                           .body_len = strlen(body),
                           .message_id = body,
                           .persistent = true};
}

/* Drains queue "q" through a consuming connection; counts[k] gets how many
 * copies of body "m<k>" arrived. Returns the number of deliveries. */
static size_t drain(kiln__mock_server *srv, unsigned *counts, size_t n)
{
    kiln__broker *c = kiln__mock_broker_new(srv, NULL);
    kiln__delivery d;
    size_t got = 0;

    assert_non_null(c);
    assert_int_equal(kiln__broker_connect(c, NULL), KILN_OK);
    assert_int_equal(kiln__broker_subscribe(c, "q", 0, NULL), KILN_OK);
    while (kiln__broker_consume(c, &d, 0, NULL) == KILN_OK) {
        unsigned long k = strtoul(d.body + 1, NULL, 10);
        if (d.body[0] == 'm' && k < n)
            counts[k]++;
        assert_int_equal(kiln__broker_ack(c, d.tag, false, NULL), KILN_OK);
        kiln__broker_release(c, &d);
        got++;
    }
    kiln__broker_destroy(c);
    return got;
}

/* ---- many threads, single sends --------------------------------------------
 */

typedef struct sender {
    kiln__publisher *pub;
    unsigned id, count;
    kiln_err *status; /* count of them, by the thread */
    char (*bodies)[16];
} sender;

static void *send_singles(void *arg)
{
    sender *s = arg;

    for (unsigned i = 0; i < s->count; i++) {
        unsigned k = s->id * s->count + i;
        kiln__message m;
        (void)snprintf(s->bodies[i], sizeof(s->bodies[i]), "m%u", k);
        m = msg("rk", s->bodies[i]);
        s->status[i] = kiln__publisher_send(s->pub, &m, 1, NULL, NULL);
    }
    return NULL;
}

/* Runs THREADS senders of `per` messages each on `pub`; every status goes
 * to status[k] for message "m<k>". */
static void run_senders(kiln__publisher *pub, unsigned per, kiln_err *status)
{
    pthread_t t[THREADS];
    sender s[THREADS];

    for (unsigned i = 0; i < THREADS; i++) {
        s[i] = (sender){pub, i, per, status + (size_t)i * per,
                        calloc(per, sizeof(*s[i].bodies))};
        assert_non_null(s[i].bodies);
        assert_int_equal(pthread_create(&t[i], NULL, send_singles, &s[i]), 0);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        free(s[i].bodies);
    }
}

static void test_concurrent_sends_group_commit(void **state)
{
    fixture *f = *state;
    size_t total = (size_t)THREADS * PER_THREAD;
    kiln_err *status = calloc(total, sizeof(*status));
    unsigned *counts = calloc(total, sizeof(*counts));
    kiln__publisher *pub = new_pub(f, 2);
    unsigned calls;

    assert_non_null(status);
    assert_non_null(counts);
    /* Confirms that take a moment, as a broker's disk sync does: the
     * sends made meanwhile are written at once and confirmed with them. */
    kiln__mock_server_set_confirm_delay(f->env.srv, 2);
    run_senders(pub, PER_THREAD, status);
    kiln__publisher_free(pub);
    calls = (unsigned)kiln__mock_server_publish_calls(f->env.srv);
    printf("group commit: %zu sends in %u confirm round trips (%.1f each), "
           "%u writes, at most %zu in flight\n",
           total, calls, (double)total / calls, atomic_load(&f->env.publishes),
           atomic_load(&f->env.max_inflight));
    for (size_t k = 0; k < total; k++)
        assert_int_equal(status[k], KILN_OK);
    assert_int_equal(kiln__mock_server_published(f->env.srv), total);
    assert_int_equal(drain(f->env.srv, counts, total), total);
    for (size_t k = 0; k < total; k++)
        assert_int_equal(counts[k], 1);
    assert_true(calls * 3 <= total);
    assert_true(atomic_load(&f->env.max_inflight) >= 2);
    assert_int_equal(atomic_load(&f->env.connects), 2);
    free(status);
    free(counts);
}

/* ---- per-message outcomes --------------------------------------------------
 */

static void test_unroutable_and_nacked(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub = new_pub(f, 1);
    kiln__message m[6] = {msg("rk", "m0"),      msg("rk", "m1"),
                          msg("nowhere", "m2"), msg("rk", "m3"),
                          msg("rk", "m4"),      msg("rk", "m5")};
    kiln_err st[6];
    kiln_error err;

    assert_int_equal(kiln__publisher_send(pub, m, 6, st, &err), KILN_EBROKER);
    for (int i = 0; i < 6; i++)
        assert_int_equal(st[i], i == 2 ? KILN_EBROKER : KILN_OK);
    assert_non_null(strstr(err.message, "message 2 of 6"));
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    /* The 2nd message from now is nacked; a nack is final, not resent. */
    kiln__mock_server_fail_publish(f->env.srv, 2);
    assert_int_equal(kiln__publisher_send(pub, m + 3, 3, st, &err),
                     KILN_EBROKER);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_OK);
    assert_non_null(strstr(err.message, "message 1 of 3"));
    assert_non_null(strstr(err.message, "nacked"));
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 5 + 2);
    assert_int_equal(atomic_load(&f->env.connects), 1);
    /* status may be NULL, and an empty send is fine. */
    assert_int_equal(kiln__publisher_send(pub, m, 2, NULL, &err), KILN_OK);
    assert_int_equal(kiln__publisher_send(pub, m, 0, NULL, &err), KILN_OK);
    assert_int_equal(kiln__publisher_send(NULL, m, 1, NULL, &err), KILN_EINVAL);
    assert_int_equal(kiln__publisher_send(pub, NULL, 1, NULL, &err),
                     KILN_EINVAL);
    kiln__publisher_free(pub);
    kiln__publisher_free(NULL);
}

/* ---- lost connections ------------------------------------------------------
 */

/* The 4th message of 10 breaks the connection: it reaches the queue but its
 * confirm is lost, so it and the 6 after it are sent again on a new
 * connection. One duplicate, no loss. Run with each way of telling. */
static void lost_mid_batch(fixture *f)
{
    kiln__publisher *pub = new_pub(f, 1);
    char bodies[10][16];
    kiln__message m[10];
    kiln_err st[10];
    unsigned counts[10] = {0};
    kiln_error err;

    for (int i = 0; i < 10; i++) {
        (void)snprintf(bodies[i], sizeof(bodies[i]), "m%d", i);
        m[i] = msg("rk", bodies[i]);
    }
    kiln__mock_server_fail_connection(f->env.srv, 4);
    assert_int_equal(kiln__publisher_send(pub, m, 10, st, &err), KILN_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(st[i], KILN_OK);
    assert_int_equal(atomic_load(&f->env.connects), 2);
    assert_int_equal(drain(f->env.srv, counts, 10), 11);
    for (int i = 0; i < 10; i++)
        assert_int_equal(counts[i], i == 3 ? 2 : 1);
    kiln__publisher_free(pub);
}

static void test_lost_connection_resends(void **state)
{
    lost_mid_batch(*state);
}

/* The same with confirms on their way when the connection goes: those
 * the broker had not sent yet are lost with it, so their messages go
 * again too (duplicates), and still every send succeeds. */
static void test_lost_connection_with_confirms_pending(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub = new_pub(f, 1);
    char bodies[10][16];
    kiln__message m[10];
    kiln_err st[10];
    unsigned counts[10] = {0};

    for (int i = 0; i < 10; i++) {
        (void)snprintf(bodies[i], sizeof(bodies[i]), "m%d", i);
        m[i] = msg("rk", bodies[i]);
    }
    kiln__mock_server_set_confirm_delay(f->env.srv, 50);
    kiln__mock_server_fail_connection(f->env.srv, 4);
    assert_int_equal(kiln__publisher_send(pub, m, 10, st, NULL), KILN_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(st[i], KILN_OK);
    assert_int_equal(atomic_load(&f->env.connects), 2);
    assert_int_equal(drain(f->env.srv, counts, 10), 14);
    for (int i = 0; i < 10; i++)
        assert_int_equal(counts[i], i <= 3 ? 2 : 1);
    kiln__publisher_free(pub);
}

/* A broker without pipelined publishing cannot serve a publisher. */
static void test_needs_pipelined_broker(void **state)
{
    fixture *f = *state;
    kiln_error err;

    f->env.no_async = true;
    assert_null(
        kiln__publisher_new(&f->cfg, factory, &f->env, 1, "test", &err));
    assert_int_equal(err.code, KILN_EINVAL);
    assert_non_null(strstr(err.message, "pipelined"));
}

typedef struct chaos {
    kiln__mock_server *srv;
    atomic_bool stop;
    unsigned armed;
} chaos;

static void *break_connections(void *arg)
{
    chaos *c = arg;

    while (!atomic_load(&c->stop)) {
        kiln__mock_server_fail_connection(c->srv, 25);
        c->armed++;
        sleep_ms(15);
    }
    return NULL;
}

/* Connections keep breaking while 8 threads send: every send that says
 * KILN_OK is in the queue (duplicates allowed), and with a generous
 * deadline every send says KILN_OK. */
static void test_lost_connections_under_load(void **state)
{
    fixture *f = *state;
    enum { PER = 300 };
    size_t total = (size_t)THREADS * PER, got;
    kiln_err status[THREADS * PER];
    unsigned counts[THREADS * PER] = {0};
    chaos c = {.srv = f->env.srv};
    kiln__publisher *pub = new_pub(f, 2);
    pthread_t t;

    atomic_init(&c.stop, false);
    assert_int_equal(pthread_create(&t, NULL, break_connections, &c), 0);
    run_senders(pub, PER, status);
    atomic_store(&c.stop, true);
    pthread_join(t, NULL);
    kiln__mock_server_fail_connection(f->env.srv, 0);
    kiln__publisher_free(pub);
    got = drain(f->env.srv, counts, total);
    printf("chaos: %u faults armed, %u connects, %zu deliveries for %zu "
           "sends\n",
           c.armed, atomic_load(&f->env.connects), got, total);
    assert_true(atomic_load(&f->env.connects) > 2);
    for (size_t k = 0; k < total; k++) {
        assert_int_equal(status[k], KILN_OK);
        assert_true(counts[k] >= 1);
    }
}

/* The broker refuses connections for a while: backoff, then success. */
static void test_reconnect_backoff(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub = new_pub(f, 1);
    kiln__message m = msg("rk", "m0");
    kiln_error err;

    atomic_store(&f->env.refuse, 3);
    assert_int_equal(kiln__publisher_send(pub, &m, 1, NULL, &err), KILN_OK);
    assert_int_equal(atomic_load(&f->env.refuse), 0);
    assert_int_equal(atomic_load(&f->env.connects), 1);
    kiln__publisher_free(pub);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 1);
}

/* Idle: ticks go out every heartbeat / 2; a tick that finds the
 * connection dead makes the next send connect again. */
static void test_idle_tick_and_lazy_reconnect(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub;
    kiln__message m = msg("rk", "m0");

    f->cfg.heartbeat_s = 1;
    pub = new_pub(f, 1);
    assert_int_equal(kiln__publisher_send(pub, &m, 1, NULL, NULL), KILN_OK);
    sleep_ms(1300);
    assert_true(atomic_load(&f->env.ticks) >= 2);
    atomic_store(&f->env.tick_breaks, true);
    for (int i = 0; i < 100 && atomic_load(&f->env.tick_breaks); i++)
        sleep_ms(20);
    assert_false(atomic_load(&f->env.tick_breaks));
    assert_int_equal(kiln__publisher_send(pub, &m, 1, NULL, NULL), KILN_OK);
    assert_int_equal(atomic_load(&f->env.connects), 2);
    kiln__publisher_free(pub);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 2);
}

/* ---- deadlines and shutdown
 * -------------------------------------------------- */

/* No connection can be opened: at the deadline the messages fail as not
 * sent (KILN_EBROKER: the broker cannot have them), with the connect
 * error, not as unconfirmed. */
static void test_timeout_when_broker_down(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub;
    kiln__message m[2] = {msg("rk", "m0"), msg("rk", "m1")};
    kiln_err st[2];
    kiln_error err;
    int64_t t0;

    f->cfg.publish_timeout_ms = 300;
    atomic_store(&f->env.refuse, -1);
    pub = new_pub(f, 1);
    t0 = now_ms();
    assert_int_equal(kiln__publisher_send(pub, m, 2, st, &err), KILN_EBROKER);
    assert_true(now_ms() - t0 >= 290);
    assert_true(now_ms() - t0 < 3000);
    assert_int_equal(st[0], KILN_EBROKER);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_non_null(strstr(err.message, "not sent within 300 ms"));
    assert_non_null(strstr(err.message, "connection refused"));
    kiln__publisher_free(pub);
    assert_int_equal(atomic_load(&f->env.publishes), 0);
}

/* A message written on a connection that is then lost, and no new
 * connection before the deadline: the broker may have it (here it does),
 * so it is KILN_ETIMEDOUT, never "not sent". */
static void test_timeout_after_lost_connection(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub;
    kiln__message m = msg("rk", "m0");
    kiln_error err;

    f->cfg.publish_timeout_ms = 300;
    pub = new_pub(f, 1);
    assert_int_equal(kiln__publisher_send(pub, &m, 1, NULL, &err), KILN_OK);
    atomic_store(&f->env.refuse, -1);
    kiln__mock_server_fail_connection(f->env.srv, 1);
    assert_int_equal(kiln__publisher_send(pub, &m, 1, NULL, &err),
                     KILN_ETIMEDOUT);
    assert_non_null(strstr(err.message, "no confirm within 300 ms"));
    kiln__publisher_free(pub);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 2);
}

typedef struct one_send {
    kiln__publisher *pub;
    kiln__message m;
    kiln_err rc;
    int64_t took_ms;
} one_send;

static void *send_one(void *arg)
{
    one_send *s = arg;
    int64_t t0 = now_ms();

    s->rc = kiln__publisher_send(s->pub, &s->m, 1, NULL, NULL);
    s->took_ms = now_ms() - t0;
    return NULL;
}

/* A send queued behind a slow batch reaches its deadline without being
 * sent (KILN_EBROKER, "not sent"); the one in the batch is confirmed. */
static void test_timeout_behind_slow_batch(void **state)
{
    fixture *f = *state;
    one_send a, b;
    pthread_t ta, tb;

    f->cfg.publish_timeout_ms = 200;
    atomic_store(&f->env.delay_ms, 500);
    a = (one_send){new_pub(f, 1), msg("rk", "m0"), KILN_OK, 0};
    b = (one_send){a.pub, msg("rk", "m1"), KILN_OK, 0};
    assert_int_equal(pthread_create(&ta, NULL, send_one, &a), 0);
    await_publishes(&f->env.publishes, 1);
    assert_int_equal(pthread_create(&tb, NULL, send_one, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    kiln__publisher_free(a.pub);
    assert_int_equal(a.rc, KILN_OK);
    assert_int_equal(b.rc, KILN_EBROKER);
    assert_int_equal(atomic_load(&f->env.publishes), 1);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 1);
}

/* free while callers wait: the batch in progress ends normally, queued
 * sends get KILN_ECLOSED, nobody hangs. */
static void test_free_with_waiting_callers(void **state)
{
    fixture *f = *state;
    one_send s[4];
    pthread_t t[4];
    kiln__publisher *pub;
    int64_t t0;

    f->cfg.publish_timeout_ms = 60000;
    atomic_store(&f->env.delay_ms, 400);
    pub = new_pub(f, 1);
    for (int i = 0; i < 4; i++) {
        s[i] = (one_send){pub, msg("rk", "m0"), KILN_OK, 0};
        assert_int_equal(pthread_create(&t[i], NULL, send_one, &s[i]), 0);
        if (i == 0) /* the others queue behind its batch */
            await_publishes(&f->env.publishes, 1);
    }
    sleep_ms(50);
    t0 = now_ms();
    kiln__publisher_free(pub);
    assert_true(now_ms() - t0 < 2000);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(s[i].rc, i == 0 ? KILN_OK : KILN_ECLOSED);
    }
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 1);
}

static void test_free_while_broker_down(void **state)
{
    fixture *f = *state;
    one_send s[3];
    pthread_t t[3];
    kiln__publisher *pub;

    f->cfg.publish_timeout_ms = 60000;
    atomic_store(&f->env.refuse, -1);
    pub = new_pub(f, 2);
    for (int i = 0; i < 3; i++) {
        s[i] = (one_send){pub, msg("rk", "m0"), KILN_OK, 0};
        assert_int_equal(pthread_create(&t[i], NULL, send_one, &s[i]), 0);
    }
    sleep_ms(300);
    kiln__publisher_free(pub);
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(s[i].rc, KILN_ECLOSED);
        assert_true(s[i].took_ms < 2000);
    }
}

/* ---- batches ------------------------------------------------------------- */

typedef struct big_send {
    kiln__publisher *pub;
    kiln__message *m;
    size_t n;
    kiln_err rc;
    int64_t done_ms;
} big_send;

static void *send_big(void *arg)
{
    big_send *s = arg;

    s->rc = kiln__publisher_send(s->pub, s->m, s->n, NULL, NULL);
    s->done_ms = now_ms();
    return NULL;
}

/* A send of 10,000 goes out through the window: never more than
 * KILN__PUB_WINDOW unconfirmed, the window filled while confirms are on
 * their way, and a small send made meanwhile is not held back until the
 * big one is done. */
static void test_big_send_is_capped_and_fair(void **state)
{
    fixture *f = *state;
    enum { N = 10000 };
    kiln__message *m = calloc(N, sizeof(*m));
    big_send big;
    one_send small;
    int64_t small_done;
    pthread_t t;

    assert_non_null(m);
    for (size_t i = 0; i < N; i++)
        m[i] = msg("rk", "big");
    big = (big_send){new_pub(f, 1), m, N, KILN_EINVAL, 0};
    small = (one_send){big.pub, msg("rk", "small"), KILN_EINVAL, 0};
    atomic_store(&f->env.delay_ms, 20);
    kiln__mock_server_set_confirm_delay(f->env.srv, 5);
    assert_int_equal(pthread_create(&t, NULL, send_big, &big), 0);
    await_publishes(&f->env.publishes, 1);
    send_one(&small);
    small_done = now_ms();
    pthread_join(t, NULL);
    kiln__publisher_free(big.pub);
    assert_int_equal(big.rc, KILN_OK);
    assert_int_equal(small.rc, KILN_OK);
    printf("10,000 in %u writes, at most %zu in flight\n",
           atomic_load(&f->env.publishes), atomic_load(&f->env.max_inflight));
    assert_true(atomic_load(&f->env.max_batch) <= KILN__PUB_WINDOW);
    assert_true(atomic_load(&f->env.max_inflight) <= KILN__PUB_WINDOW);
    assert_true(atomic_load(&f->env.max_inflight) >= KILN__PUB_WINDOW / 2);
    assert_true(atomic_load(&f->env.publishes) >= N / KILN__PUB_WINDOW);
    /* It went out with the second batch, not after the last. */
    assert_true(small_done < big.done_ms);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), N + 1);
    free(m);
}

/* ---- the window -----------------------------------------------------------
 */

typedef struct waiter {
    kiln__publisher *pub;
    kiln__message m;
    kiln_err rc;
    atomic_bool returned;
} waiter;

static void *send_and_flag(void *arg)
{
    waiter *w = arg;

    w->rc = kiln__publisher_send(w->pub, &w->m, 1, NULL, NULL);
    atomic_store(&w->returned, true);
    return NULL;
}

static void await_ready(kiln__mock_server *srv, size_t n)
{
    for (int i = 0; i < 1000 && kiln__mock_server_ready(srv, "q") < n; i++)
        sleep_ms(2);
}

/* A send made while an earlier one waits for its confirm is written at
 * once, not after that confirm: both are on the broker while the first
 * caller still waits, and they are confirmed together. */
static void test_writes_while_confirms_outstanding(void **state)
{
    fixture *f = *state;
    kiln_error err;
    kiln__publisher *pub =
        kiln__publisher_new(&f->cfg, factory, &f->env, 1, "test", &err);
    waiter a = {pub, msg("rk", "m0"), KILN_EINVAL, false};
    waiter b = {pub, msg("rk", "m1"), KILN_EINVAL, false};
    pthread_t ta, tb;

    assert_non_null(pub);
    /* Generous, so that a slow machine still sees the first one wait. */
    kiln__mock_server_set_confirm_delay(f->env.srv, 2000);
    assert_int_equal(pthread_create(&ta, NULL, send_and_flag, &a), 0);
    await_ready(f->env.srv, 1);
    assert_int_equal(pthread_create(&tb, NULL, send_and_flag, &b), 0);
    await_ready(f->env.srv, 2);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 2);
    assert_false(atomic_load(&a.returned));
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.rc, KILN_OK);
    assert_int_equal(b.rc, KILN_OK);
    kiln__publisher_free(pub);
}

/* A confirm that comes after its request gave up (KILN_ETIMEDOUT) is
 * dropped: it is not applied to the next message, and nothing is counted
 * twice. */
static void test_late_confirm_is_dropped(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub;
    kiln__message m[3] = {msg("rk", "m0"), msg("rk", "m1"), msg("rk", "m2")};
    kiln_err st[2];
    kiln_error err;

    f->cfg.publish_timeout_ms = 1000;
    pub = new_pub(f, 1);
    kiln__mock_server_set_confirm_delay(f->env.srv, 1500);
    assert_int_equal(kiln__publisher_send(pub, &m[0], 1, NULL, &err),
                     KILN_ETIMEDOUT);
    assert_non_null(strstr(err.message, "no confirm within 1000 ms"));
    /* Written into the same round of confirms as the one given up. */
    kiln__mock_server_set_confirm_delay(f->env.srv, 0);
    assert_int_equal(kiln__publisher_send(pub, &m[1], 2, st, &err), KILN_OK);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_OK);
    assert_int_equal(kiln__publisher_send(pub, &m[0], 1, NULL, &err), KILN_OK);
    kiln__publisher_free(pub);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 4);
    assert_int_equal(atomic_load(&f->env.connects), 1);
}

/* A broker that blocks publishing (a resource alarm) gets nothing
 * written: a send fails as not sent, saying why, and one made during the
 * alarm goes out once it ends. */
static void test_blocked_broker_gets_nothing(void **state)
{
    fixture *f = *state;
    kiln__publisher *pub;
    waiter w = {NULL, msg("rk", "m1"), KILN_EINVAL, false};
    kiln__message m = msg("rk", "m0");
    kiln_error err;
    pthread_t t;

    f->cfg.publish_timeout_ms = 300;
    pub = new_pub(f, 1);
    kiln__mock_server_block_publishing(f->env.srv, true);
    assert_int_equal(kiln__publisher_send(pub, &m, 1, NULL, &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "not sent within 300 ms"));
    assert_non_null(strstr(err.message, "blocks publishing"));
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 0);
    kiln__publisher_free(pub);

    f->cfg.publish_timeout_ms = 30000;
    w.pub = pub = new_pub(f, 1);
    atomic_store(&f->env.publishes, 0);
    assert_int_equal(pthread_create(&t, NULL, send_and_flag, &w), 0);
    await_publishes(&f->env.publishes, 1); /* tried, and stopped */
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 0);
    kiln__mock_server_block_publishing(f->env.srv, false);
    pthread_join(t, NULL);
    assert_int_equal(w.rc, KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 1);
    kiln__publisher_free(pub);
}

/* Asynchronous requests (the worker pool's outcome copies): each one's
 * notify runs once, when all its messages are final. */
typedef struct notes {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned done;
} notes;

static void on_note(kiln__pub_req *r, void *ctx)
{
    notes *n = ctx;

    (void)r;
    pthread_mutex_lock(&n->mu);
    n->done++;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

static void test_async_requests_notify(void **state)
{
    fixture *f = *state;
    enum { N = 200 };
    kiln__publisher *pub = new_pub(f, 2);
    kiln__pub_req *reqs = calloc(N, sizeof(*reqs));
    kiln__message *m = calloc(N, sizeof(*m));
    kiln_err *st = calloc(N, sizeof(*st));
    notes n = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

    assert_non_null(reqs);
    assert_non_null(m);
    assert_non_null(st);
    kiln__mock_server_set_confirm_delay(f->env.srv, 2);
    for (int i = 0; i < N; i++) {
        m[i] = msg(i == 7 ? "nowhere" : "rk", "m0");
        assert_int_equal(kiln__publisher_submit(pub, &reqs[i], &m[i], 1, &st[i],
                                                on_note, &n),
                         KILN_OK);
    }
    pthread_mutex_lock(&n.mu);
    while (n.done < N)
        pthread_cond_wait(&n.cv, &n.mu);
    pthread_mutex_unlock(&n.mu);
    kiln__publisher_free(pub);
    assert_int_equal(n.done, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(st[i], i == 7 ? KILN_EBROKER : KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), N - 1);
    free(reqs);
    free(m);
    free(st);
}

/* ---- through the pool ------------------------------------------------------
 */

static kiln_pool *new_pool(fixture *f)
{
    kiln_error err;
    kiln_pool *pool = kiln_pool_new(&f->cfg, 1, "test", &err);

    assert_non_null(pool);
    kiln__pool_set_broker_factory(pool, factory, &f->env);
    return pool;
}

static kiln_signature *sig_with_key(const char *key)
{
    kiln_signature *s = kiln_signature_new("add", NULL);

    assert_non_null(s);
    assert_int_equal(kiln_signature_add_arg_int64(s, "x", 1, NULL), KILN_OK);
    if (key != NULL)
        assert_int_equal(kiln_signature_set_routing_key(s, key, NULL), KILN_OK);
    return s;
}

static void test_pool_send_tasks_statuses(void **state)
{
    fixture *f = *state;
    kiln_pool *pool = new_pool(f);
    kiln__store *store = kiln__mock_store_new(NULL);
    const kiln_signature *sigs[10];
    kiln_signature *own[10];
    kiln__task_record rec;
    kiln_err st[10];
    kiln_error err;

    assert_non_null(store);
    kiln__pool_set_store(pool, store);
    for (int i = 0; i < 10; i++)
        sigs[i] = own[i] = sig_with_key(i == 5 ? "nowhere" : NULL);
    assert_int_equal(kiln_pool_send_tasks(pool, sigs, 10, st, &err),
                     KILN_EBROKER);
    for (int i = 0; i < 10; i++)
        assert_int_equal(st[i], i == 5 ? KILN_EBROKER : KILN_OK);
    assert_non_null(strstr(err.message, "task 5 (add)"));
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 9);
    /* The unroutable one will never run: FAILURE, not PENDING for ever. */
    assert_int_equal(kiln__mock_store_count(store, KILN_STATE_PENDING), 9);
    assert_int_equal(kiln__mock_store_count(store, KILN_STATE_FAILURE), 1);
    assert_int_equal(
        kiln__store_get(store, kiln_signature_uuid(own[5]), &rec, &err),
        KILN_OK);
    assert_int_equal(rec.state, KILN_STATE_FAILURE);
    assert_non_null(strstr(rec.error, "not sent: "));
    assert_non_null(strstr(rec.error, "'nowhere'"));
    kiln__task_record_release(&rec);
    /* A NULL signature fails alone; the others go. */
    sigs[5] = NULL;
    assert_int_equal(kiln_pool_send_tasks(pool, sigs, 10, st, &err),
                     KILN_EINVAL);
    assert_int_equal(st[5], KILN_EINVAL);
    assert_int_equal(st[6], KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 18);
    assert_int_equal(kiln_pool_send_task(pool, own[0], &err), KILN_OK);
    assert_int_equal(kiln_pool_send_task(pool, own[5], &err), KILN_EBROKER);
    assert_int_equal(kiln_pool_send_task(pool, NULL, &err), KILN_EINVAL);
    assert_int_equal(kiln_pool_send_task(NULL, own[0], &err), KILN_EINVAL);
    assert_int_equal(kiln_pool_send_tasks(pool, NULL, 1, st, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_pool_send_tasks(pool, sigs, 0, NULL, &err), KILN_OK);
    /* One thread sends: it keeps to its home connection. */
    assert_int_equal(atomic_load(&f->env.connects), 1);
    kiln_pool_free(pool);
    kiln__store_destroy(store);
    for (int i = 0; i < 10; i++)
        kiln_signature_free(own[i]);
}

/* A send larger than a part goes in parts on one connection, the first
 * written while the rest is staged: every status, the lowest failure,
 * PENDING and FAILURE in the store, and the order of arrival are as for
 * one batch. */
static void test_pool_send_tasks_in_parts(void **state)
{
    enum { N = 700, UNROUTABLE = 300, MISSING = 650 };
    fixture *f = *state;
    kiln_pool *pool = new_pool(f);
    kiln__store *store = kiln__mock_store_new(NULL);
    kiln__broker *c = kiln__mock_broker_new(f->env.srv, NULL);
    const kiln_signature **sigs = calloc(N, sizeof(*sigs));
    kiln_signature **own = calloc(N, sizeof(*own));
    kiln_err *st = calloc(N, sizeof(*st));
    kiln_error err;
    size_t next = 0;

    assert_non_null(store);
    assert_non_null(c);
    assert_true(sigs != NULL && own != NULL && st != NULL);
    kiln__pool_set_store(pool, store);
    /* confirms come in rounds, so parts are in flight together */
    kiln__mock_server_set_confirm_delay(f->env.srv, 2);
    for (int i = 0; i < N; i++)
        own[i] = sig_with_key(i == UNROUTABLE ? "nowhere" : NULL);
    memcpy(sigs, own, N * sizeof(*sigs));
    sigs[MISSING] = NULL;
    assert_int_equal(kiln_pool_send_tasks(pool, sigs, N, st, &err),
                     KILN_EBROKER);
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "task 300 (add)"));
    for (int i = 0; i < N; i++)
        assert_int_equal(st[i], i == UNROUTABLE ? KILN_EBROKER
                                : i == MISSING  ? KILN_EINVAL
                                                : KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), N - 2);
    assert_int_equal(kiln__mock_store_count(store, KILN_STATE_PENDING), N - 2);
    assert_int_equal(kiln__mock_store_count(store, KILN_STATE_FAILURE), 1);
    /* one connection, so the tasks arrive in the order they were given */
    assert_int_equal(atomic_load(&f->env.connects), 1);
    assert_int_equal(c->ops->connect(c, NULL), KILN_OK);
    assert_int_equal(c->ops->subscribe(c, "q", 0, NULL), KILN_OK);
    for (int k = 0; k < N - 2; k++) {
        kiln__delivery d;
        assert_int_equal(c->ops->consume(c, &d, 1000, NULL), KILN_OK);
        while (next == UNROUTABLE || next == MISSING)
            next++;
        assert_string_equal(d.message_id, kiln_signature_uuid(own[next]));
        next++;
        c->ops->release(c, &d);
    }
    kiln__broker_destroy(c);
    kiln_pool_free(pool);
    kiln__store_destroy(store);
    for (int i = 0; i < N; i++)
        kiln_signature_free(own[i]);
    free(sigs);
    free(own);
    free(st);
}

typedef struct pool_sender {
    kiln_pool *pool;
    const kiln_signature *sig;
    unsigned count, failed;
} pool_sender;

static void *pool_send_singles(void *arg)
{
    pool_sender *s = arg;

    for (unsigned i = 0; i < s->count; i++)
        if (kiln_pool_send_task(s->pool, s->sig, NULL) != KILN_OK)
            s->failed++;
    return NULL;
}

static void test_pool_send_task_threads(void **state)
{
    fixture *f = *state;
    kiln_pool *pool = new_pool(f);
    kiln_signature *sig = sig_with_key(NULL);
    pool_sender s[THREADS];
    pthread_t t[THREADS];

    for (int i = 0; i < THREADS; i++) {
        s[i] = (pool_sender){pool, sig, 500, 0};
        assert_int_equal(pthread_create(&t[i], NULL, pool_send_singles, &s[i]),
                         0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    kiln_pool_free(pool);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(s[i].failed, 0);
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), THREADS * 500);
    kiln_signature_free(sig);
}

/* A signature decoded from JSON may carry a UUID or a routing key longer
 * than the 255 bytes an AMQP short string holds. Sent by one thread while
 * another sends good ones through the same pool (so their messages would
 * share publisher batches), it fails alone, naming the field, before its
 * PENDING is written; every good send succeeds. */
typedef struct bad_sender {
    kiln_pool *pool;
    const kiln_signature *sig;
    unsigned count, not_einval;
    kiln_error last;
} bad_sender;

static void *pool_send_bad(void *arg)
{
    bad_sender *s = arg;

    for (unsigned i = 0; i < s->count; i++)
        if (kiln_pool_send_task(s->pool, s->sig, &s->last) != KILN_EINVAL)
            s->not_einval++;
    return NULL;
}

static kiln_signature *decoded_with(const char *key, size_t len)
{
    char *long_text = malloc(len + 1), *json = malloc(len + 128);
    kiln_signature *sig = NULL;
    kiln_error err;

    assert_non_null(long_text);
    assert_non_null(json);
    memset(long_text, 'k', len);
    long_text[len] = '\0';
    (void)snprintf(
        json, len + 128, "{\"UUID\":\"%s\",\"Name\":\"add\",%s\"%s\":\"%s\"}",
        strcmp(key, "UUID") == 0 ? long_text : "task_1", "\"Args\":[],",
        strcmp(key, "UUID") == 0 ? "RoutingKey" : key,
        strcmp(key, "UUID") == 0 ? "" : long_text);
    assert_int_equal(
        kiln_signature_from_json(json, strlen(json), 0, &sig, &err), KILN_OK);
    free(long_text);
    free(json);
    return sig;
}

static void test_pool_bad_signature_fails_alone(void **state)
{
    fixture *f = *state;
    kiln_pool *pool = new_pool(f);
    kiln__store *store = kiln__mock_store_new(NULL);
    kiln_signature *good = sig_with_key(NULL);
    kiln_signature *bad_id = decoded_with("UUID", 300);
    kiln_signature *bad_key = decoded_with("RoutingKey", 300);
    pool_sender g[2] = {{pool, good, 300, 0}, {pool, good, 300, 0}};
    bad_sender b[2] = {{pool, bad_id, 50, 0, {0}}, {pool, bad_key, 50, 0, {0}}};
    pthread_t t[4];

    assert_non_null(store);
    kiln__pool_set_store(pool, store);
    /* a confirm takes a while, so sends pile up into shared batches */
    atomic_store(&f->env.delay_ms, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_create(&t[i], NULL, pool_send_singles, &g[i]),
                         0);
        assert_int_equal(pthread_create(&t[2 + i], NULL, pool_send_bad, &b[i]),
                         0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    kiln_pool_free(pool);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(g[i].failed, 0);
        assert_int_equal(b[i].not_einval, 0);
        print_message("%s\n", b[i].last.message);
    }
    assert_non_null(strstr(b[0].last.message, "UUID of 300 bytes"));
    assert_non_null(strstr(b[1].last.message, "routing key of 300 bytes"));
    assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), 600);
    assert_int_equal(kiln__mock_store_count(store, KILN_STATE_PENDING), 1);
    kiln__store_destroy(store);
    kiln_signature_free(good);
    kiln_signature_free(bad_id);
    kiln_signature_free(bad_key);
}

/* ---- allocation failures
 * ----------------------------------------------------- */

/* Fails each allocation in turn, in the publisher's making, its threads
 * and the send: every result is KILN_OK or KILN_ENOMEM, and exactly the
 * messages said to be OK are in the queue. */
static void test_alloc_failures_publisher(void **state)
{
    fixture *f = *state;
    kiln__message m[3] = {msg("rk", "m0"), msg("rk", "m1"), msg("rk", "m2")};
    size_t queued = 0;
    bool fired = true;

    for (long n = 0; fired; n++) {
        kiln_err st[3] = {KILN_ENOMEM, KILN_ENOMEM, KILN_ENOMEM};
        kiln__publisher *pub;
        kiln_err rc = KILN_ENOMEM;

        kiln__alloc_fail_after(n);
        pub = kiln__publisher_new(&f->cfg, factory, &f->env, 2, "t", NULL);
        if (pub != NULL)
            rc = kiln__publisher_send(pub, m, 3, st, NULL);
        kiln__publisher_free(pub);
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        for (int i = 0; i < 3; i++) {
            assert_true(st[i] == KILN_OK || st[i] == KILN_ENOMEM);
            queued += st[i] == KILN_OK;
        }
        assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), queued);
    }
}

static void test_alloc_failures_pool_send(void **state)
{
    fixture *f = *state;
    kiln_signature *own[3] = {sig_with_key(NULL), sig_with_key(NULL),
                              sig_with_key(NULL)};
    const kiln_signature *sigs[3] = {own[0], own[1], own[2]};
    size_t queued = 0;
    bool fired = true;

    for (long n = 0; fired; n++) {
        kiln_err st[3] = {KILN_ENOMEM, KILN_ENOMEM, KILN_ENOMEM};
        kiln_pool *pool = new_pool(f);
        kiln_err rc;

        kiln__alloc_fail_after(n);
        rc = kiln_pool_send_tasks(pool, sigs, 3, st, NULL);
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        kiln_pool_free(pool);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        for (int i = 0; i < 3; i++) {
            assert_true(st[i] == KILN_OK || st[i] == KILN_ENOMEM);
            queued += st[i] == KILN_OK;
        }
        assert_int_equal(kiln__mock_server_ready(f->env.srv, "q"), queued);
    }
    for (int i = 0; i < 3; i++)
        kiln_signature_free(own[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_concurrent_sends_group_commit),
        T(test_unroutable_and_nacked),
        T(test_lost_connection_resends),
        T(test_lost_connection_with_confirms_pending),
        T(test_needs_pipelined_broker),
        T(test_lost_connections_under_load),
        T(test_reconnect_backoff),
        T(test_idle_tick_and_lazy_reconnect),
        T(test_timeout_when_broker_down),
        T(test_timeout_after_lost_connection),
        T(test_timeout_behind_slow_batch),
        T(test_free_with_waiting_callers),
        T(test_free_while_broker_down),
        T(test_big_send_is_capped_and_fair),
        T(test_writes_while_confirms_outstanding),
        T(test_late_confirm_is_dropped),
        T(test_blocked_broker_gets_nothing),
        T(test_async_requests_notify),
        T(test_pool_send_tasks_statuses),
        T(test_pool_send_tasks_in_parts),
        T(test_pool_send_task_threads),
        T(test_pool_bad_signature_fails_alone),
        T(test_alloc_failures_publisher),
        T(test_alloc_failures_pool_send),
#undef T
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
