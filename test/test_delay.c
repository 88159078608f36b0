/* The binary delay cascade without a broker: every delay is followed
 * through the level bindings with a topic matcher as RabbitMQ's, and the
 * TTLs it waits must add up to the delay rounded up to a whole unit. Then
 * the keys, names and errors, and the mock broker holding delayed
 * messages on a clock the test advances. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "broker/delay.h"
#include "test/support/mock_fixture.h"

#include <stdio.h>
#include <string.h>

/* ---- a topic exchange's matching ---------------------------------------- */

/* The next word of `s` (up to '.' or the end): its length. */
static size_t word_len(const char *s)
{
    return strcspn(s, ".");
}

/* RabbitMQ's topic rule: words split on '.', "*" is exactly one word,
 * "#" zero or more. `key` is NULL past its last word. */
static bool match_words(const char *pat, const char *key)
{
    size_t pl = word_len(pat);
    const char *pnext = pat[pl] == '.' ? pat + pl + 1 : NULL;

    if (pl == 1 && pat[0] == '#') {
        if (pnext == NULL)
            return true;
        for (const char *k = key; k != NULL;) {
            size_t kl = word_len(k);
            if (match_words(pnext, k))
                return true;
            k = k[kl] == '.' ? k + kl + 1 : NULL;
        }
        return match_words(pnext, NULL);
    }
    if (key == NULL)
        return false;
    size_t kl = word_len(key);
    const char *knext = key[kl] == '.' ? key + kl + 1 : NULL;
    if (!(pl == 1 && pat[0] == '*') && (pl != kl || memcmp(pat, key, kl) != 0))
        return false;
    if (pnext == NULL)
        return knext == NULL;
    return match_words(pnext, knext);
}

static bool topic_match(const char *pattern, const char *key)
{
    return match_words(pattern, key);
}

static void test_topic_matcher(void **state)
{
    (void)state;
    assert_true(topic_match("a.*.c", "a.b.c"));
    assert_false(topic_match("a.*.c", "a.b.b.c"));
    assert_true(topic_match("*.*.1.#", "0.0.1"));
    assert_true(topic_match("*.*.1.#", "0.0.1.x.y"));
    assert_false(topic_match("*.*.1.#", "0.1.0.x"));
    assert_true(topic_match("#", "a.b"));
    assert_true(topic_match("a.#.z", "a.z"));
    assert_true(topic_match("a.#.z", "a.b.c.z"));
    assert_false(topic_match("*.orders", "0.x.orders"));
    assert_true(topic_match("*.a..b", "1.a..b"));
}

/* ---- following a message through the levels ----------------------------- */

static kiln_config make_cfg(unsigned levels, unsigned unit_ms)
{
    kiln_config cfg;

    kiln_config_init(&cfg);
    cfg.delay_levels = levels;
    cfg.delay_unit_ms = unit_ms;
    cfg.delay_queue_type = KILN_QUEUE_CLASSIC; /* the quorum names: below */
    return cfg;
}

/* Routes `rk` from exchange `exch` level by level as RabbitMQ would: at
 * each level exactly one of the two bindings must match; the queue one
 * adds its TTL before the message is dead-lettered one level down.
 * Returns the total wait, after checking it reached the delivery
 * exchange. */
static uint64_t simulate(const kiln_config *cfg, const char *exch,
                         const char *rk)
{
    char cur[KILN_NAME_MAX], delivery[KILN_NAME_MAX];
    uint64_t waited = 0;
    kiln__delay_level lv;
    int level, hops = 0;

    assert_int_equal(
        kiln__delay_delivery(cfg, delivery, sizeof(delivery), NULL), KILN_OK);
    kiln__strlcpy(cur, exch, sizeof(cur));
    for (;;) {
        bool to_queue, to_next;

        assert_true(kiln__delay_exchange_level(cfg, cur, &level));
        if (level < 0)
            break;
        assert_int_equal(kiln__delay_level_get(cfg, (unsigned)level, &lv, NULL),
                         KILN_OK);
        to_queue = topic_match(lv.queue_key, rk);
        to_next = topic_match(lv.next_key, rk);
        assert_true(to_queue != to_next);
        if (to_queue)
            waited += lv.ttl_ms; /* then dead-lettered to lv.next */
        kiln__strlcpy(cur, lv.next, sizeof(cur));
        assert_true(++hops <= (int)cfg->delay_levels);
    }
    assert_string_equal(cur, delivery);
    return waited;
}

/* Routes a delay to `dest` and checks the wait, the delivery binding and
 * the parse back. */
static void check_delay(const kiln_config *cfg, uint64_t delay_ms,
                        const char *dest)
{
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX], bind[KILN_NAME_MAX];
    uint64_t unit = cfg->delay_unit_ms, units, want, parsed;
    const char *back;
    kiln_error err;

    if (kiln__delay_route(cfg, delay_ms, dest, exch, sizeof(exch), rk,
                          sizeof(rk), &err) != KILN_OK)
        fail_msg("route %llu ms: %s", (unsigned long long)delay_ms,
                 err.message);
    want = (delay_ms + unit - 1) / unit * unit;
    if (simulate(cfg, exch, rk) != want)
        fail_msg("%llu ms waits %llu, want %llu (key %s)",
                 (unsigned long long)delay_ms,
                 (unsigned long long)simulate(cfg, exch, rk),
                 (unsigned long long)want, rk);
    assert_true(want >= delay_ms && want - delay_ms < unit);
    assert_int_equal(
        kiln__delay_dest_binding(cfg, dest, bind, sizeof(bind), NULL), KILN_OK);
    assert_true(topic_match(bind, rk));
    assert_int_equal(kiln__delay_units(cfg, delay_ms, &units, NULL), KILN_OK);
    assert_int_equal(kiln__delay_parse(cfg, rk, &parsed, &back, NULL), KILN_OK);
    assert_int_equal(parsed, units);
    assert_string_equal(back, dest);
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static void check_all_delays(const kiln_config *cfg)
{
    uint64_t unit = cfg->delay_unit_ms, max = kiln__delay_max_ms(cfg);

    check_delay(cfg, 0, "task");
    check_delay(cfg, 1, "task");
    check_delay(cfg, unit, "task");
    check_delay(cfg, max, "task");
    check_delay(cfg, max - unit + 1, "task");
    for (unsigned k = 0; k < cfg->delay_levels; k++) {
        uint64_t p = (1ull << k) * unit;
        check_delay(cfg, p, "task");        /* one level */
        check_delay(cfg, p - unit, "task"); /* 2^k - 1 units: k levels */
        check_delay(cfg, p - 1, "task");
        if (p + 1 <= max)
            check_delay(cfg, p + 1, "task"); /* rounds up to 2^k + 1 */
    }
    for (int i = 0; i < 2000; i++)
        check_delay(cfg, rnd() % (max + 1), "task");
}

static void test_every_delay_waits_its_units(void **state)
{
    kiln_config cfg;

    (void)state;
    kiln_config_init(&cfg);
    assert_int_equal(cfg.delay_levels, 32);
    assert_int_equal(cfg.delay_unit_ms, 50);
    /* 50 ms x (2^32 - 1): about 6.8 years */
    assert_int_equal(kiln__delay_max_ms(&cfg), 214748364750ull);
    check_all_delays(&cfg);
    cfg = make_cfg(28, 1000); /* kombu's cascade */
    check_all_delays(&cfg);
    cfg = make_cfg(1, 1);
    check_all_delays(&cfg);
    cfg = make_cfg(32, 3600000);
    cfg.delay_queue_type = KILN_QUEUE_QUORUM;
    check_all_delays(&cfg);
}

static void test_past_the_longest_delay(void **state)
{
    const unsigned shapes[][2] = {{32, 50}, {28, 1000}, {1, 1}, {32, 3600000}};
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX];
    uint64_t units;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        kiln_config cfg = make_cfg(shapes[i][0], shapes[i][1]);
        uint64_t max = kiln__delay_max_ms(&cfg);

        assert_int_equal(kiln__delay_units(&cfg, max, &units, NULL), KILN_OK);
        assert_int_equal(units, (1ull << shapes[i][0]) - 1);
        assert_int_equal(kiln__delay_route(&cfg, max + 1, "task", exch,
                                           sizeof(exch), rk, sizeof(rk), &err),
                         KILN_EINVAL);
        assert_non_null(strstr(err.message, "KILN_DELAY_LEVELS"));
        assert_non_null(strstr(err.message, "KILN_DELAY_UNIT_MS"));
    }
    assert_int_equal(kiln__delay_units(&(kiln_config){0}, 1, &units, &err),
                     KILN_EINVAL);
    assert_int_equal(
        kiln__delay_units(&(kiln_config){0}, UINT64_MAX, &units, &err),
        KILN_EINVAL);
}

/* ---- keys, names and bindings ------------------------------------------- */

static void test_key_layout(void **state)
{
    kiln_config cfg = make_cfg(4, 100);
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX];

    (void)state;
    /* 550 ms: 6 units, bits 1 and 2, bit 0 first; published at level 2 */
    assert_int_equal(kiln__delay_route(&cfg, 550, "orders.eu", exch,
                                       sizeof(exch), rk, sizeof(rk), NULL),
                     KILN_OK);
    assert_string_equal(rk, "0.1.1.0.orders.eu");
    assert_string_equal(exch, "kiln_tasks.delay.2");
    assert_int_equal(kiln__delay_route(&cfg, 0, "orders", exch, sizeof(exch),
                                       rk, sizeof(rk), NULL),
                     KILN_OK);
    assert_string_equal(rk, "0.0.0.0.orders");
    assert_string_equal(exch, "kiln_tasks.delay.delivery");
    cfg.delay_queue_type = KILN_QUEUE_QUORUM;
    assert_int_equal(kiln__delay_route(&cfg, 1500, "t", exch, sizeof(exch), rk,
                                       sizeof(rk), NULL),
                     KILN_OK);
    assert_string_equal(rk, "1.1.1.1.t");
    assert_string_equal(exch, "kiln_tasks.delay.quorum.3");
}

static void test_levels(void **state)
{
    kiln_config cfg = make_cfg(32, 50);
    kiln__delay_level lv;
    kiln_error err;
    char want[KILN_NAME_MAX];

    (void)state;
    assert_int_equal(kiln__delay_level_get(&cfg, 0, &lv, NULL), KILN_OK);
    assert_string_equal(lv.name, "kiln_tasks.delay.0");
    assert_string_equal(lv.next, "kiln_tasks.delay.delivery");
    assert_int_equal(lv.ttl_ms, 50);
    assert_string_equal(lv.queue_key, "1.#");
    assert_string_equal(lv.next_key, "0.#");
    assert_int_equal(kiln__delay_level_get(&cfg, 31, &lv, NULL), KILN_OK);
    assert_string_equal(lv.name, "kiln_tasks.delay.31");
    assert_string_equal(lv.next, "kiln_tasks.delay.30");
    assert_int_equal(lv.ttl_ms, 50ull << 31);
    (void)snprintf(want, sizeof(want), "%s1.#",
                   "*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*."
                   "*.*.");
    assert_string_equal(lv.queue_key, want);
    assert_int_equal(kiln__delay_level_get(&cfg, 32, &lv, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_DELAY_LEVELS"));
    cfg.delay_queue_type = KILN_QUEUE_QUORUM;
    assert_int_equal(kiln__delay_level_get(&cfg, 5, &lv, NULL), KILN_OK);
    assert_string_equal(lv.name, "kiln_tasks.delay.quorum.5");
    assert_string_equal(lv.next, "kiln_tasks.delay.quorum.4");
    /* The level patterns do not depend on the number of levels. */
    cfg = make_cfg(8, 50);
    assert_int_equal(kiln__delay_level_get(&cfg, 5, &lv, NULL), KILN_OK);
    assert_string_equal(lv.queue_key, "*.*.*.*.*.1.#");
}

/* Destination keys with dots reach their own queue and no other: the
 * delivery bindings count words. */
static void test_dotted_and_long_destinations(void **state)
{
    static const char *const dests[] = {"orders", "orders.eu", "x.orders",
                                        "a..b",   "0.1",       "1"};
    kiln_config cfg = make_cfg(32, 50);
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX], bind[KILN_NAME_MAX];
    char long_key[KILN_NAME_MAX];
    kiln_error err;
    const size_t n = sizeof(dests) / sizeof(dests[0]);

    (void)state;
    for (size_t i = 0; i < n; i++) {
        check_delay(&cfg, 1234, dests[i]);
        assert_int_equal(kiln__delay_route(&cfg, 777, dests[i], exch,
                                           sizeof(exch), rk, sizeof(rk), NULL),
                         KILN_OK);
        for (size_t j = 0; j < n; j++) {
            assert_int_equal(kiln__delay_dest_binding(&cfg, dests[j], bind,
                                                      sizeof(bind), NULL),
                             KILN_OK);
            assert_int_equal(topic_match(bind, rk), i == j);
        }
    }
    /* A topic binding key keeps its wildcards. */
    assert_int_equal(
        kiln__delay_dest_binding(&cfg, "orders.#", bind, sizeof(bind), NULL),
        KILN_OK);
    assert_int_equal(kiln__delay_route(&cfg, 50, "orders.eu.fr", exch,
                                       sizeof(exch), rk, sizeof(rk), NULL),
                     KILN_OK);
    assert_true(topic_match(bind, rk));
    /* 32 levels leave 255 - 64 = 191 bytes for the destination. */
    memset(long_key, 'k', 191);
    long_key[191] = '\0';
    check_delay(&cfg, 99999, long_key);
    assert_int_equal(strlen(rk), 64 + strlen("orders.eu.fr"));
    long_key[191] = 'k';
    long_key[192] = '\0';
    assert_int_equal(kiln__delay_route(&cfg, 50, long_key, exch, sizeof(exch),
                                       rk, sizeof(rk), &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_DELAY_LEVELS=32"));
    assert_int_equal(
        kiln__delay_dest_binding(&cfg, long_key, bind, sizeof(bind), &err),
        KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_BINDING_KEY"));
    assert_int_equal(kiln__delay_route(&cfg, 50, "", exch, sizeof(exch), rk,
                                       sizeof(rk), &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "empty"));
    /* Buffers too small are refused, not overrun. */
    assert_int_equal(
        kiln__delay_route(&cfg, 50, "orders", exch, 10, rk, sizeof(rk), NULL),
        KILN_EINVAL);
    assert_int_equal(
        kiln__delay_route(&cfg, 50, "orders", exch, sizeof(exch), rk, 70, NULL),
        KILN_EINVAL);
}

static void test_parse_and_names(void **state)
{
    kiln_config cfg = make_cfg(4, 50);
    const char *dest = NULL;
    uint64_t units = 0;
    int level = 99;
    kiln_error err;

    (void)state;
    assert_int_equal(
        kiln__delay_parse(&cfg, "1.0.1.1.a.b", &units, &dest, NULL), KILN_OK);
    assert_int_equal(units, 13);
    assert_string_equal(dest, "a.b");
    assert_int_equal(kiln__delay_parse(&cfg, "0.0.0.0.", &units, &dest, NULL),
                     KILN_OK);
    assert_string_equal(dest, "");
    static const char *const bad[] = {"",          "1.0.1",      "1.0.1.1",
                                      "1.0.2.1.a", "10.1.1.1.a", "1.0.1.1a"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(kiln__delay_parse(&cfg, bad[i], &units, &dest, &err),
                         KILN_EINVAL);
        assert_non_null(strstr(err.message, "KILN_DELAY_LEVELS=4"));
    }
    assert_true(kiln__delay_exchange_level(&cfg, "kiln_tasks.delay.3", &level));
    assert_int_equal(level, 3);
    assert_true(
        kiln__delay_exchange_level(&cfg, "kiln_tasks.delay.delivery", &level));
    assert_int_equal(level, -1);
    assert_false(
        kiln__delay_exchange_level(&cfg, "kiln_tasks.delay.4", &level));
    assert_false(kiln__delay_exchange_level(&cfg, "kiln_tasks", &level));
    assert_true(
        kiln__delay_exchange_level(&cfg, "kiln_tasks.delay.quorum.1", &level));
    assert_int_equal(level, 1);
    assert_false(
        kiln__delay_exchange_level(&cfg, "kiln_tasks.delay.quorum.4", &level));
    assert_string_equal(kiln__delay_dest_key(&cfg), "kiln_task");
    cfg.binding_key[0] = '\0';
    assert_string_equal(kiln__delay_dest_key(&cfg), "kiln_tasks");
    assert_true(kiln__delay_keep_header("x-kiln-reason"));
    assert_true(kiln__delay_keep_header("x-delivery-count"));
    assert_false(kiln__delay_keep_header("x-death"));
    assert_false(kiln__delay_keep_header("x-first-death-queue"));
    assert_false(kiln__delay_keep_header("x-last-death-reason"));
}

static void test_settings_checked(void **state)
{
    kiln_config cfg = make_cfg(32, 50);
    char name[KILN_NAME_MAX];
    kiln_error err;

    (void)state;
    /* ".unroutable" (and ".quorum.31") must still fit in 255 bytes */
    memset(cfg.delay_exchange, 'd', 244);
    cfg.delay_exchange[244] = '\0';
    assert_int_equal(kiln__delay_check(&cfg, NULL), KILN_OK);
    cfg.delay_queue_type = KILN_QUEUE_QUORUM;
    assert_int_equal(kiln__delay_delivery(&cfg, name, sizeof(name), NULL),
                     KILN_OK);
    assert_int_equal(kiln__delay_unroutable(&cfg, name, sizeof(name), NULL),
                     KILN_OK);
    assert_int_equal(strlen(name), 255);
    assert_int_equal(kiln__delay_probe(&cfg, name, sizeof(name), NULL),
                     KILN_OK);
    assert_int_equal(kiln__delay_probe(&cfg, name, 250, &err), KILN_EINVAL);
    cfg.delay_exchange[244] = 'd';
    cfg.delay_exchange[245] = '\0';
    assert_int_equal(kiln__delay_check(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_DELAY_EXCHANGE is 245 bytes"));
    assert_int_equal(kiln__delay_unroutable(&cfg, name, sizeof(name), &err),
                     KILN_EINVAL);
    cfg = make_cfg(33, 50);
    assert_int_equal(kiln__delay_check(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_DELAY_LEVELS=33"));
    cfg = make_cfg(32, 0);
    assert_int_equal(kiln__delay_check(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_DELAY_UNIT_MS"));
    cfg = make_cfg(32, 50);
    cfg.delay_exchange[0] = '\0';
    assert_int_equal(kiln__delay_check(&cfg, &err), KILN_EINVAL);
    assert_int_equal(kiln__delay_check(NULL, &err), KILN_EINVAL);
}

/* ---- the mock broker ------------------------------------------------------
 */

/* The default cascade's probe and unroutable queues. */
#define PROBE      "kiln_tasks.delay.probe"
#define UNROUTABLE "kiln_tasks.delay.unroutable"

typedef struct mock_fix {
    kiln_config cfg;
    kiln__mock_server *srv;
    kiln__broker *pub, *sub, *sub2;
} mock_fix;

static int mock_setup(void **state)
{
    mock_fix *f = test_calloc(1, sizeof(*f));
    kiln_error err;

    kiln_config_init(&f->cfg);
    f->cfg.delay_queue_type = KILN_QUEUE_CLASSIC; /* quorum: below */
    f->srv = kiln__mock_server_new(&err);
    assert_non_null(f->srv);
    f->pub = open_conn(f->srv, NULL, 0);
    assert_int_equal(kiln__broker_declare(f->pub, &f->cfg, &err), KILN_OK);
    f->sub = open_conn(f->srv, f->cfg.queue, 0);
    *state = f;
    return 0;
}

static int mock_teardown(void **state)
{
    mock_fix *f = *state;

    kiln__broker_destroy(f->pub);
    kiln__broker_destroy(f->sub);
    kiln__broker_destroy(f->sub2);
    kiln__mock_server_free(f->srv);
    test_free(f);
    return 0;
}

static kiln_err send_delayed(mock_fix *f, uint64_t delay_ms, const char *dest,
                             const char *body, kiln_error *err)
{
    char exch[KILN_NAME_MAX], rk[KILN_NAME_MAX];
    kiln__message m;

    assert_int_equal(kiln__delay_route(&f->cfg, delay_ms, dest, exch,
                                       sizeof(exch), rk, sizeof(rk), NULL),
                     KILN_OK);
    m = text_msg(exch, rk, body);
    return kiln__broker_publish(f->pub, &m, 1, NULL, err);
}

static void expect_delivery(mock_fix *f, const char *body, const char *exchange)
{
    kiln__delivery d;
    kiln_error err;
    const char *dest;

    assert_int_equal(kiln__broker_consume(f->sub, &d, 0, &err), KILN_OK);
    assert_string_equal(d.body, body);
    assert_string_equal(d.exchange, exchange);
    assert_int_equal(
        kiln__delay_parse(&f->cfg, d.routing_key, NULL, &dest, NULL), KILN_OK);
    assert_string_equal(dest, "kiln_task");
    assert_int_equal(kiln__broker_ack(f->sub, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->sub, &d);
}

static void test_mock_holds_until_due(void **state)
{
    mock_fix *f = *state;
    kiln__delivery d;
    kiln_error err;

    assert_int_equal(send_delayed(f, 3600000, "kiln_task", "1h", &err),
                     KILN_OK);
    assert_int_equal(send_delayed(f, 1000, "kiln_task", "1s", &err), KILN_OK);
    assert_int_equal(send_delayed(f, 0, "kiln_task", "now", &err), KILN_OK);
    assert_int_equal(kiln__mock_server_published(f->srv), 3);
    expect_delivery(f, "now", "kiln_tasks.delay.delivery");
    assert_int_equal(kiln__mock_server_delayed(f->srv), 2);
    assert_int_equal(kiln__broker_consume(f->sub, &d, 0, &err), KILN_ETIMEDOUT);
    /* Half way (real time passes too, slowly under valgrind). */
    kiln__mock_server_advance(f->srv, 500);
    assert_int_equal(kiln__mock_server_ready(f->srv, f->cfg.queue), 0);
    kiln__mock_server_advance(f->srv, 500);
    assert_int_equal(kiln__mock_server_ready(f->srv, f->cfg.queue), 1);
    /* Not stuck behind the 1 h one. 20 units: bits 2 and 4, so level 2
     * dead-lettered it last, to level 1. */
    expect_delivery(f, "1s", "kiln_tasks.delay.1");
    assert_int_equal(kiln__mock_server_delayed(f->srv), 1);
    kiln__mock_server_advance(f->srv, 3600000);
    expect_delivery(f, "1h", "kiln_tasks.delay.5");
    assert_int_equal(kiln__mock_server_delayed(f->srv), 0);
}

/* Without advancing: a consumer waiting in consume wakes when a held
 * message falls due in real time. */
static void test_mock_due_in_real_time(void **state)
{
    mock_fix *f = *state;
    int64_t t0 = kiln__monotonic_ns();
    kiln__delivery d;
    kiln_error err;

    assert_int_equal(send_delayed(f, 120, "kiln_task", "soon", &err), KILN_OK);
    assert_int_equal(kiln__broker_consume(f->sub, &d, 2000, &err), KILN_OK);
    assert_true(kiln__monotonic_ns() - t0 >= 120 * 1000000ll);
    assert_string_equal(d.body, "soon");
    assert_int_equal(kiln__broker_ack(f->sub, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->sub, &d);
    /* A timeout shorter than the delay still times out. */
    assert_int_equal(send_delayed(f, 5000, "kiln_task", "later", &err),
                     KILN_OK);
    assert_int_equal(kiln__broker_consume(f->sub, &d, 30, &err),
                     KILN_ETIMEDOUT);
    assert_int_equal(kiln__mock_server_wait_idle(f->srv, f->cfg.queue, 100),
                     KILN_OK);
}

static void test_mock_routes_and_refuses(void **state)
{
    mock_fix *f = *state;
    kiln_config other = f->cfg;
    kiln__message m;
    kiln_error err;

    /* Delay 0 to nobody goes to the unroutable queue at once (the
     * delivery exchange's alternate exchange: no basic.return); a delayed
     * one when due, as RabbitMQ does. */
    assert_int_equal(send_delayed(f, 0, "nobody", "x", &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->srv, UNROUTABLE), 1);
    assert_int_equal(send_delayed(f, 50, "nobody", "x", &err), KILN_OK);
    kiln__mock_server_advance(f->srv, 50);
    assert_int_equal(kiln__mock_server_delayed(f->srv), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, f->cfg.queue), 0);
    assert_int_equal(kiln__mock_server_ready(f->srv, UNROUTABLE), 2);
    /* A key that spells no delay matches no level binding. */
    m = text_msg("kiln_tasks.delay.3", "kiln_task", "bad");
    assert_int_equal(kiln__broker_publish(f->pub, &m, 1, NULL, &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    /* Bits above the exchange's level are not looked at. */
    m = text_msg("kiln_tasks.delay.1",
                 "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
                 "0.1.kiln_task",
                 "3 units");
    assert_int_equal(kiln__broker_publish(f->pub, &m, 1, NULL, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->srv, f->cfg.queue), 0);
    kiln__mock_server_advance(f->srv, 150);
    expect_delivery(f, "3 units", "kiln_tasks.delay.delivery");
    /* Another unit for the same cascade is a 406, as on RabbitMQ. */
    other.delay_unit_ms = 100;
    assert_int_equal(kiln__broker_declare(f->pub, &other, &err), KILN_EBROKER);
    assert_non_null(strstr(err.message, "KILN_DELAY_UNIT_MS=100"));
    /* A quorum cascade is another set of levels, same delivery. */
    other = f->cfg;
    other.delay_queue_type = KILN_QUEUE_QUORUM;
    assert_int_equal(kiln__broker_declare(f->pub, &other, &err), KILN_OK);
    m = text_msg("kiln_tasks.delay.quorum.0",
                 "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
                 "0.0.kiln_task",
                 "quorum");
    assert_int_equal(kiln__broker_publish(f->pub, &m, 1, NULL, &err), KILN_OK);
    kiln__mock_server_advance(f->srv, 50);
    expect_delivery(f, "quorum", "kiln_tasks.delay.delivery");
}

/* The probe: a key some queue was declared for is confirmed and kept
 * nowhere; any other is returned. A delayed message whose destination
 * is gone by the time it is due ends in the unroutable queue, whole,
 * and does not hold up the one due after it. */
static void test_mock_probe_and_unroutable(void **state)
{
    mock_fix *f = *state;
    kiln_config other = f->cfg;
    kiln__delivery d;
    kiln__message m;
    kiln_error err;

    m = text_msg(PROBE, "kiln_task", "");
    assert_int_equal(kiln__broker_publish(f->pub, &m, 1, NULL, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->srv, PROBE), 0);
    m = text_msg(PROBE, "elsewhere", "");
    assert_int_equal(kiln__broker_publish(f->pub, &m, 1, NULL, &err),
                     KILN_EBROKER);
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    /* Another queue's declare binds its key on the probe too. */
    kiln__strlcpy(other.queue, "elsewhere", sizeof(other.queue));
    kiln__strlcpy(other.binding_key, "elsewhere", sizeof(other.binding_key));
    assert_int_equal(kiln__broker_declare(f->pub, &other, &err), KILN_OK);
    m = text_msg(PROBE, "elsewhere", "");
    assert_int_equal(kiln__broker_publish(f->pub, &m, 1, NULL, &err), KILN_OK);
    assert_int_equal(kiln__mock_server_ready(f->srv, PROBE), 0);
    /* Sent to a key nobody is bound for (no probe asked), then one to the
     * task queue due a unit later. */
    assert_int_equal(send_delayed(f, 100, "gone", "lost", &err), KILN_OK);
    assert_int_equal(send_delayed(f, 150, "kiln_task", "behind", &err),
                     KILN_OK);
    kiln__mock_server_advance(f->srv, 150);
    expect_delivery(f, "behind", "kiln_tasks.delay.delivery");
    assert_int_equal(kiln__mock_server_ready(f->srv, UNROUTABLE), 1);
    f->sub2 = open_conn(f->srv, UNROUTABLE, 0);
    assert_int_equal(kiln__broker_consume(f->sub2, &d, 0, &err), KILN_OK);
    assert_string_equal(d.body, "lost");
    assert_non_null(strstr(d.routing_key, ".gone"));
    kiln__broker_release(f->sub2, &d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_matcher),
        cmocka_unit_test(test_every_delay_waits_its_units),
        cmocka_unit_test(test_past_the_longest_delay),
        cmocka_unit_test(test_key_layout),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_dotted_and_long_destinations),
        cmocka_unit_test(test_parse_and_names),
        cmocka_unit_test(test_settings_checked),
        cmocka_unit_test_setup_teardown(test_mock_holds_until_due, mock_setup,
                                        mock_teardown),
        cmocka_unit_test_setup_teardown(test_mock_due_in_real_time, mock_setup,
                                        mock_teardown),
        cmocka_unit_test_setup_teardown(test_mock_routes_and_refuses,
                                        mock_setup, mock_teardown),
        cmocka_unit_test_setup_teardown(test_mock_probe_and_unroutable,
                                        mock_setup, mock_teardown),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
