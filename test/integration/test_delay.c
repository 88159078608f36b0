/* The delay cascade on a real RabbitMQ (KILN_TEST_AMQP_URL; run beside a
 * private node with scripts/with-rabbitmq.sh): declared by the AMQP
 * broker's declare, messages published with kiln__delay_route arrive no
 * earlier than due and within a second after, a short delay overtakes a
 * long one, classic and quorum queues, a broker restart while messages
 * wait, and a second declare. Unroutable delayed messages: a pool's send
 * refuses an ETA for a key no queue is bound for; messages whose queue
 * is deleted while they wait end in the unroutable queue and do not stop
 * a quorum level; a delivery exchange from before the unroutable queue
 * is refused with what to do. Each test names its own exchanges and
 * queues (the cascade included) and deletes them after. */
#include "broker/amqp.h"
#include "broker/delay.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test/support/amqp_raw.h"
#include "test/support/delivery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Lateness allowed past the due time (the README's promise). */
#define LATE_MAX_MS 1000

typedef struct fixture {
    kiln_config cfg;  /* classic queue and cascade */
    kiln_config qcfg; /* quorum queue and cascade, same delay exchange */
    kiln_config gcfg; /* like qcfg, another queue and binding key */
    kiln__broker *b, *qb, *gb;
    kiln_pool *pool;
} fixture;

/* The worst lateness over the run, and the earliest arrival (least
 * lateness), reported at the end. */
static int64_t worst_late_ms = -1, least_late_ms = INT64_MAX;

static int64_t now_ms(void)
{
    return kiln__monotonic_ns() / 1000000;
}

static void name_cfg(kiln_config *c, const char *sfx, const char *kind)
{
    kiln_config_init(c);
    kiln__strlcpy(c->broker_url, test_amqp_url(), sizeof(c->broker_url));
    (void)snprintf(c->exchange, sizeof(c->exchange), "kiln_it.delay.%s.x", sfx);
    (void)snprintf(c->queue, sizeof(c->queue), "kiln_it.delay.%s.%s", sfx,
                   kind);
    (void)snprintf(c->binding_key, sizeof(c->binding_key), "task.%s", sfx);
    (void)snprintf(c->dead_letter_exchange, sizeof(c->dead_letter_exchange),
                   "kiln_it.delay.%s.dlx", sfx);
    (void)snprintf(c->dead_letter_queue, sizeof(c->dead_letter_queue),
                   "kiln_it.delay.%s.%s.dlq", sfx, kind);
    (void)snprintf(c->delay_exchange, sizeof(c->delay_exchange),
                   "kiln_it.delay.%s.delay", sfx);
    c->connect_timeout_ms = 5000;
    c->publish_timeout_ms = 10000;
    /* Both kinds of level, each with a task queue of its kind. */
    c->delay_queue_type = KILN_QUEUE_CLASSIC;
    if (strcmp(kind, "quorum") == 0)
        c->queue_type = c->delay_queue_type = KILN_QUEUE_QUORUM;
}

static kiln__broker *new_broker(const kiln_config *cfg)
{
    kiln_error err;
    kiln__broker *b = kiln__amqp_broker_new(cfg, &err);

    if (b == NULL)
        fail_msg("broker_new: %s", err.message);
    return b;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    unsigned char r[5];
    char sfx[16];

    assert_non_null(f);
    assert_int_equal(kiln__random(r, sizeof(r), NULL), KILN_OK);
    (void)snprintf(sfx, sizeof(sfx), "%02x%02x%02x%02x%02x", r[0], r[1], r[2],
                   r[3], r[4]);
    name_cfg(&f->cfg, sfx, "classic");
    name_cfg(&f->qcfg, sfx, "quorum");
    name_cfg(&f->gcfg, sfx, "quorum");
    (void)snprintf(f->gcfg.queue, sizeof(f->gcfg.queue),
                   "kiln_it.delay.%s.gone", sfx);
    (void)snprintf(f->gcfg.binding_key, sizeof(f->gcfg.binding_key), "gone.%s",
                   sfx);
    (void)snprintf(f->gcfg.dead_letter_queue, sizeof(f->gcfg.dead_letter_queue),
                   "kiln_it.delay.%s.gone.dlq", sfx);
    f->b = new_broker(&f->cfg);
    f->qb = new_broker(&f->qcfg);
    f->gb = new_broker(&f->gcfg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    amqp_connection_state_t c;

    kiln_pool_free(f->pool);
    kiln__broker_destroy(f->b);
    kiln__broker_destroy(f->qb);
    kiln__broker_destroy(f->gb);
    c = test_amqp_open();
    test_amqp_delete_topology(c, &f->cfg);
    test_amqp_delete_topology(c, &f->qcfg);
    test_amqp_delete_topology(c, &f->gcfg);
    test_amqp_close(c);
    free(f);
    return 0;
}

/* Connects and declares; returns how long declare took, in ms. */
static double connect_declare(kiln__broker *b, const kiln_config *cfg)
{
    kiln_error err;
    int64_t t0;

    if (kiln__broker_connect(b, &err) != KILN_OK)
        fail_msg("connect: %s", err.message);
    t0 = kiln__monotonic_ns();
    if (kiln__broker_declare(b, cfg, &err) != KILN_OK)
        fail_msg("declare: %s", err.message);
    return (double)(kiln__monotonic_ns() - t0) / 1e6;
}

static void subscribe(kiln__broker *b, const kiln_config *cfg)
{
    kiln_error err;

    if (kiln__broker_subscribe(b, cfg->queue, 100, &err) != KILN_OK)
        fail_msg("subscribe: %s", err.message);
}

/* Publishes body `body` to arrive after `delay_ms`; returns the time just
 * before the publish, from which the delay counts. */
static int64_t publish_delayed(kiln__broker *b, const kiln_config *cfg,
                               uint64_t delay_ms, const char *body)
{
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX];
    kiln__message m;
    kiln_error err;
    int64_t t0 = now_ms();

    if (kiln__delay_route(cfg, delay_ms, kiln__delay_dest_key(cfg), exch,
                          sizeof(exch), rk, sizeof(rk), &err) != KILN_OK)
        fail_msg("route: %s", err.message);
    memset(&m, 0, sizeof(m));
    m.exchange = exch;
    m.routing_key = rk;
    m.body = body;
    m.body_len = strlen(body);
    m.persistent = true;
    if (kiln__broker_publish(b, &m, 1, NULL, &err) != KILN_OK)
        fail_msg("publish %llu ms: %s", (unsigned long long)delay_ms,
                 err.message);
    return t0;
}

/* What one test sent: when each message is due. */
typedef struct sent {
    size_t n;
    int64_t due[32];
    bool seen[32];
    bool dups_ok;     /* at least once: count a second copy, do not fail */
    int64_t early_ok; /* ms a message may come before it is due */
    size_t dups;
} sent;

static void send_all(kiln__broker *b, const kiln_config *cfg, sent *s,
                     const uint64_t *delays, size_t n)
{
    char body[16];

    assert_true(s->n + n <= 32);
    for (size_t i = 0; i < n; i++) {
        (void)snprintf(body, sizeof(body), "%zu", s->n);
        s->due[s->n] =
            publish_delayed(b, cfg, delays[i], body) + (int64_t)delays[i];
        s->seen[s->n++] = false;
    }
}

/* Consumes until every message of `s` arrived (or `wait_ms` passed),
 * checking each is not early, nor later than `late_max_ms`, nor seen
 * twice. Returns the worst lateness. */
static int64_t receive_all(kiln__broker *b, const kiln_config *cfg, sent *s,
                           int64_t late_max_ms, int wait_ms)
{
    int64_t end = now_ms() + wait_ms, worst = 0;
    size_t got = 0;
    int level;
    while (got < s->n && now_ms() < end) {
        kiln__delivery d;
        kiln_error err;
        const char *dest;
        char num[32];
        int64_t at, late;
        size_t i;
        kiln_err rc = kiln__broker_consume(b, &d, (int)(end - now_ms()), &err);

        if (rc == KILN_ETIMEDOUT)
            break;
        if (rc != KILN_OK)
            fail_msg("consume: %s", err.message);
        at = now_ms();
        i = (size_t)strtoul(body_text(&d, num, sizeof(num)), NULL, 10);
        assert_true(i < s->n);
        if (s->seen[i] && s->dups_ok)
            s->dups++;
        else if (s->seen[i])
            fail_msg("message %zu arrived twice", i);
        got += !s->seen[i];
        s->seen[i] = true;
        late = at - s->due[i];
        if (late < -s->early_ok || late > late_max_ms)
            fail_msg("message %zu arrived %lld ms after it was due", i,
                     (long long)late);
        worst = late > worst ? late : worst;
        least_late_ms = late < least_late_ms ? late : least_late_ms;
        /* The exchange the last level dead-lettered it to. */
        assert_true(kiln__delay_exchange_level(cfg, d.exchange, &level));
        assert_int_equal(
            kiln__delay_parse(cfg, d.routing_key, NULL, &dest, NULL), KILN_OK);
        assert_string_equal(dest, kiln__delay_dest_key(cfg));
        assert_int_equal(kiln__broker_ack(b, d.tag, false, &err), KILN_OK);
        kiln__broker_release(b, &d);
    }
    if (got < s->n)
        fail_msg("%zu of %zu delayed messages arrived", got, s->n);
    if (late_max_ms == LATE_MAX_MS && worst > worst_late_ms)
        worst_late_ms = worst;
    return worst;
}

static void note_lateness(const char *what, int64_t worst)
{
    print_message("%s: worst lateness %lld ms\n", what, (long long)worst);
}

/* ---- tests ----------------------------------------------------------------
 */

/* Delays from 0.2 to 3 s, all waiting at once, published in an order
 * that is not their due order. */
static void test_delays_arrive_on_time(void **state)
{
    static const uint64_t delays[] = {3000, 200,  1234, 250,  2600, 300, 700,
                                      1000, 2345, 400,  1800, 500,  900, 1500,
                                      2000, 2999, 333,  1111, 50,   0};
    fixture *f = *state;
    sent s = {0};
    double first, again;

    first = connect_declare(f->b, &f->cfg);
    again = connect_declare(f->b, &f->cfg);
    print_message("declare: %.1f ms creating %u levels, %.1f ms again\n", first,
                  f->cfg.delay_levels, again);
    subscribe(f->b, &f->cfg);
    send_all(f->b, &f->cfg, &s, delays, sizeof(delays) / sizeof(delays[0]));
    note_lateness("0 to 3 s, classic",
                  receive_all(f->b, &f->cfg, &s, LATE_MAX_MS, 6000));
}

/* A 1 s message sent after a 1 h one does not wait behind it. */
static void test_short_overtakes_long(void **state)
{
    static const uint64_t hour[] = {3600000}, second[] = {1000};
    fixture *f = *state;
    sent s = {0}, ignored = {0};
    kiln__delay_level lv;

    connect_declare(f->b, &f->cfg);
    subscribe(f->b, &f->cfg);
    send_all(f->b, &f->cfg, &ignored, hour, 1);
    send_all(f->b, &f->cfg, &s, second, 1);
    note_lateness("1 s after 1 h",
                  receive_all(f->b, &f->cfg, &s, LATE_MAX_MS, 3000));
    /* 1 h = 72000 units = 0b10001100101000000: it waits first in level 16,
     * the highest bit. */
    assert_int_equal(kiln__delay_level_get(&f->cfg, 16, &lv, NULL), KILN_OK);
    assert_int_equal(test_amqp_count(lv.name), 1);
}

/* A quorum queue beside a classic one, bound with the same key: what
 * either type's cascade delivers reaches both queues, since both cascades
 * end in the one delivery exchange. */
static void test_quorum_queue(void **state)
{
    static const uint64_t quorum[] = {300, 800, 1500, 0}, classic[] = {600};
    fixture *f = *state;
    sent sq = {0}, sc;

    double first = connect_declare(f->qb, &f->qcfg);

    print_message("declare: %.1f ms creating %u quorum levels, %.1f ms "
                  "again\n",
                  first, f->qcfg.delay_levels,
                  connect_declare(f->qb, &f->qcfg));
    connect_declare(f->b, &f->cfg);
    subscribe(f->qb, &f->qcfg);
    subscribe(f->b, &f->cfg);
    send_all(f->qb, &f->qcfg, &sq, quorum, 4);
    send_all(f->b, &f->cfg, &sq, classic, 1);
    sc = sq;
    note_lateness("both cascades to a quorum queue",
                  receive_all(f->qb, &f->qcfg, &sq, LATE_MAX_MS, 4000));
    /* They waited in the classic queue while the quorum one was read. */
    note_lateness("both cascades to a classic queue",
                  receive_all(f->b, &f->cfg, &sc, 5000, 1000));
}

static int rabbitmq(const char *verb)
{
    const char *script = getenv("KILN_TEST_RABBITMQ");
    const char *dir = getenv("KILN_TEST_RABBITMQ_DIR");
    char cmd[2048];

    if (script == NULL || dir == NULL)
        return -1;
    (void)snprintf(cmd, sizeof(cmd), "'%s' %s '%s' >/dev/null 2>&1", script,
                   verb, dir);
    return system(cmd);
}

static void reconnect(kiln__broker *b, const kiln_config *cfg)
{
    kiln_error err;
    int64_t t0 = now_ms();
    kiln_err rc = KILN_EBROKER;

    /* As a worker does: right after start_app the quorum levels may still
     * be recovering, and a declare can time out on a busy machine. */
    do {
        kiln__broker_close(b);
        if ((rc = kiln__broker_connect(b, &err)) == KILN_OK &&
            (rc = kiln__broker_declare(b, cfg, &err)) == KILN_OK)
            break;
        usleep(200000);
    } while (now_ms() - t0 < 60000);
    if (rc != KILN_OK)
        fail_msg("reconnect: %s", err.message);
    subscribe(b, cfg);
}

/* Messages waiting in both cascades while the broker stops and starts:
 * some fall due while it is down (RabbitMQ dead-letters them when it
 * starts), the others after. None is lost, none is early. */
static void test_broker_restart(void **state)
{
    static const uint64_t delays[] = {500, 1500, 2500, 4000, 6000, 9000};
    fixture *f = *state;
    /* A quorum level recovered from a restart expired a message up to
     * 12 ms early in these runs (RabbitMQ 3.10.8): the consumer checks
     * the ETA itself. */
    sent sc = {.dups_ok = true}, sq = {.dups_ok = true, .early_ok = 100};
    int64_t t0;

    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        print_message("broker given from outside: no restart test\n");
        return;
    }
    connect_declare(f->b, &f->cfg);
    connect_declare(f->qb, &f->qcfg);
    send_all(f->b, &f->cfg, &sc, delays, 6);
    send_all(f->qb, &f->qcfg, &sq, delays, 6);
    t0 = now_ms();
    assert_int_equal(rabbitmq("stop_app"), 0);
    assert_int_equal(rabbitmq("start_app"), 0);
    print_message("restart: broker down and up in %lld ms\n",
                  (long long)(now_ms() - t0));
    reconnect(f->b, &f->cfg);
    reconnect(f->qb, &f->qcfg);
    /* Those due during the restart come late by up to its length. */
    note_lateness("classic across a restart",
                  receive_all(f->b, &f->cfg, &sc, 30000, 20000));
    note_lateness("quorum across a restart",
                  receive_all(f->qb, &f->qcfg, &sq, 30000, 20000));
    print_message("restart: none lost; %zu classic and %zu quorum messages "
                  "came twice (at least once)\n",
                  sc.dups, sq.dups);
}

/* Declaring again is harmless; another unit is a 406 naming the setting,
 * and the object works on. */
static void test_redeclare_and_conflict(void **state)
{
    static const uint64_t one[] = {100};
    fixture *f = *state;
    kiln_config other = f->cfg;
    kiln_error err;
    sent s = {0};

    connect_declare(f->b, &f->cfg);
    connect_declare(f->b, &f->cfg);
    connect_declare(f->b, &f->cfg);
    other.delay_unit_ms = 100;
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_EBROKER);
    print_message("unit conflict: %s\n", err.message);
    assert_non_null(strstr(err.message, "406"));
    assert_non_null(strstr(err.message, "x-message-ttl"));
    assert_non_null(strstr(err.message, "KILN_DELAY_UNIT_MS=100"));
    /* Fewer levels is fine: the level bindings do not depend on them. */
    other = f->cfg;
    other.delay_levels = 20;
    connect_declare(f->b, &other);
    subscribe(f->b, &f->cfg);
    send_all(f->b, &other, &s, one, 1);
    note_lateness("after a conflict, 20 levels",
                  receive_all(f->b, &other, &s, LATE_MAX_MS, 3000));
}

/* The longest delay is accepted and waits; one unit more is refused
 * before anything is sent. */
static void test_longest_delay(void **state)
{
    fixture *f = *state;
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX];
    uint64_t max = kiln__delay_max_ms(&f->cfg);
    kiln__delay_level lv;
    kiln_error err;

    connect_declare(f->b, &f->cfg);
    (void)publish_delayed(f->b, &f->cfg, max, "years");
    assert_int_equal(
        kiln__delay_level_get(&f->cfg, f->cfg.delay_levels - 1, &lv, NULL),
        KILN_OK);
    assert_int_equal(test_amqp_count(lv.name), 1);
    assert_int_equal(kiln__delay_route(&f->cfg, max + 1, "x", exch,
                                       sizeof(exch), rk, sizeof(rk), &err),
                     KILN_EINVAL);
    print_message("past the longest delay: %s\n", err.message);
}

/* ---- unroutable delayed messages ------------------------------------------
 */

static kiln_signature *eta_sig(const char *routing_key, int64_t in_ms)
{
    kiln_signature *sig = kiln_signature_new("delayed", NULL);

    assert_non_null(sig);
    if (routing_key != NULL)
        assert_int_equal(kiln_signature_set_routing_key(sig, routing_key, NULL),
                         KILN_OK);
    kiln_signature_set_eta(sig, kiln__realtime_ns() + in_ms * 1000000);
    return sig;
}

/* Consumes `n` deliveries within `wait_ms` and checks the destination
 * each was sent to. */
static void receive_n(kiln__broker *b, const kiln_config *cfg, size_t n,
                      const char *dest_key, int wait_ms)
{
    int64_t end = now_ms() + wait_ms;

    for (size_t got = 0; got < n; got++) {
        kiln__delivery d;
        kiln_error err;
        const char *dest;
        int64_t left = end - now_ms();
        kiln_err rc =
            kiln__broker_consume(b, &d, left > 0 ? (int)left : 0, &err);

        if (rc != KILN_OK)
            fail_msg("%zu of %zu deliveries in %d ms: %s", got, n, wait_ms,
                     err.message);
        assert_int_equal(
            kiln__delay_parse(cfg, d.routing_key, NULL, &dest, NULL), KILN_OK);
        assert_string_equal(dest, dest_key);
        assert_int_equal(kiln__broker_ack(b, d.tag, false, &err), KILN_OK);
        kiln__broker_release(b, &d);
    }
}

/* A task with an ETA for a routing key no queue is bound for would be
 * confirmed into a delay level and never arrive: kiln_pool_send_task(s)
 * refuses it with KILN_EBROKER naming the key, and sends the rest of the
 * batch, which arrives. */
static void test_pool_refuses_unbound_eta(void **state)
{
    fixture *f = *state;
    char nobody[KILN_NAME_MAX + 8];
    kiln_signature *sigs[3];
    kiln_err st[3];
    kiln_error err;

    connect_declare(f->b, &f->cfg);
    subscribe(f->b, &f->cfg);
    (void)snprintf(nobody, sizeof(nobody), "nobody.%s", f->cfg.binding_key);
    sigs[0] = eta_sig(NULL, 2000);
    sigs[1] = eta_sig(nobody, 2000);
    sigs[2] = eta_sig(f->cfg.binding_key, 2000);
    f->pool = kiln_pool_new(&f->cfg, 1, "it-delay", &err);
    if (f->pool == NULL)
        fail_msg("pool: %s", err.message);
    assert_int_equal(kiln_pool_send_tasks(f->pool,
                                          (const kiln_signature *const *)sigs,
                                          3, st, &err),
                     KILN_EBROKER);
    print_message("batch with an unbound key: %s\n", err.message);
    assert_non_null(strstr(err.message, nobody));
    assert_non_null(strstr(err.message, "task 1 "));
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_OK);
    assert_int_equal(kiln_pool_send_task(f->pool, sigs[1], &err), KILN_EBROKER);
    assert_non_null(strstr(err.message, nobody));
    /* The two bound ones arrive at their ETA. */
    receive_n(f->b, &f->cfg, 2, f->cfg.binding_key, 2000 + 3000);
    for (size_t i = 0; i < 3; i++)
        kiln_signature_free(sigs[i]);
}

/* More than dead_letter_worker_consumer_prefetch (32) */
#define GONE 40

/* Messages whose destination queue is deleted while they wait in a quorum
 * level reach the delivery exchange with nowhere to go. Without an
 * alternate exchange the level's at-least-once dead-lettering keeps them
 * and retries, and once 32 are outstanding it moves nothing else: the
 * message behind them, for a queue that exists, would wait for ever. With
 * it they end in the unroutable queue, and that message arrives on time. */
static void test_gone_queue_does_not_stall_level(void **state)
{
    static const uint64_t one_s[] = {1000};
    fixture *f = *state;
    char unroutable[KILN_NAME_MAX];
    amqp_connection_state_t c;
    sent s = {0};

    connect_declare(f->qb, &f->qcfg);
    subscribe(f->qb, &f->qcfg);
    connect_declare(f->gb, &f->gcfg);
    for (size_t i = 0; i < GONE; i++)
        (void)publish_delayed(f->gb, &f->gcfg, 1000, "gone");
    c = test_amqp_open();
    assert_non_null(
        amqp_queue_delete(c, 1, amqp_cstring_bytes(f->gcfg.queue), 0, 0));
    test_amqp_close(c);
    /* Same delay, so the same levels, behind them. */
    send_all(f->qb, &f->qcfg, &s, one_s, 1);
    note_lateness("behind 40 messages whose queue was deleted",
                  receive_all(f->qb, &f->qcfg, &s, LATE_MAX_MS, 5000));
    assert_int_equal(
        kiln__delay_unroutable(&f->qcfg, unroutable, sizeof(unroutable), NULL),
        KILN_OK);
    if (kiln__broker_subscribe(f->gb, unroutable, 100, NULL) != KILN_OK)
        fail_msg("subscribe to %s", unroutable);
    receive_n(f->gb, &f->gcfg, GONE, f->gcfg.binding_key, 5000);
}

/* Log lines captured by a sink (one test at a time). */
static char captured[4096];

static void capture(kiln_log_level level, const char *line, void *user)
{
    (void)level;
    (void)user;
    if (strlen(captured) + strlen(line) + 2 < sizeof(captured)) {
        strcat(captured, line);
        strcat(captured, "\n");
    }
}

/* A delivery exchange declared without the alternate exchange (as earlier
 * versions did): RabbitMQ refuses to add one (406), so kiln says once what
 * to do and works with the exchange as it is; tasks still arrive. Deleted
 * once, the next declare makes it with the alternate exchange. */
static void test_old_delivery_exchange_kept(void **state)
{
    fixture *f = *state;
    char delivery[KILN_NAME_MAX];
    amqp_connection_state_t c;
    kiln_error err;

    assert_int_equal(
        kiln__delay_delivery(&f->cfg, delivery, sizeof(delivery), NULL),
        KILN_OK);
    c = test_amqp_open();
    (void)amqp_exchange_declare(c, 1, amqp_cstring_bytes(delivery),
                                amqp_cstring_bytes("topic"), 0, 1, 0, 0,
                                amqp_empty_table);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    if (kiln__broker_connect(f->b, &err) != KILN_OK)
        fail_msg("connect: %s", err.message);
    captured[0] = '\0';
    kiln_log_set_sink(capture, NULL);
    if (kiln__broker_declare(f->b, &f->cfg, &err) != KILN_OK)
        fail_msg("declare: %s", err.message);
    kiln_log_set_sink(NULL, NULL);
    print_message("old delivery exchange: %s", captured);
    assert_non_null(strstr(captured, delivery));
    assert_non_null(strstr(captured, "deleted once"));
    connect_declare(f->b, &f->cfg); /* every connect: the same, no error */
    (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(delivery), 0);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    test_amqp_close(c);
    kiln__broker_close(f->b);
    captured[0] = '\0';
    kiln_log_set_sink(capture, NULL);
    connect_declare(f->b, &f->cfg);
    kiln_log_set_sink(NULL, NULL);
    assert_null(strstr(captured, "deleted once"));
}

static int report(void **state)
{
    (void)state;
    print_message("delay precision: worst lateness %lld ms over the on-time "
                  "tests (limit %d ms); earliest arrival %lld ms after due\n",
                  (long long)worst_late_ms, LATE_MAX_MS,
                  (long long)least_late_ms);
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_delays_arrive_on_time),
        T(test_short_overtakes_long),
        T(test_quorum_queue),
        T(test_redeclare_and_conflict),
        T(test_longest_delay),
        T(test_pool_refuses_unbound_eta),
        T(test_gone_queue_does_not_stall_level),
        T(test_old_delivery_exchange_kept),
        T(test_broker_restart),
    };

    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, report);
}
