/* The AMQP broker against a real RabbitMQ: the node whose URL is in
 * KILN_TEST_AMQP_URL (make check-integration starts a private one).
 * Each test uses exchanges and queues with a random suffix and deletes
 * them afterwards through a raw rabbitmq-c connection, which also checks
 * queue depths independently of the code under test. */
#include "broker/amqp.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test/support/amqp_raw.h"
#include "test/support/delivery.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BAD_PASSWORD "s3cret-Pa55word"

typedef struct fixture {
    kiln_config cfg;
    kiln__broker *b;
} fixture;

/* ---- helpers ---------------------------------------------------------- */

/* Log lines, kept to check that no password ever reaches them. */
static char log_seen[1 << 16];

static void capture_sink(kiln_log_level level, const char *line, void *user)
{
    size_t have = strlen(log_seen);

    (void)level;
    (void)user;
    (void)snprintf(log_seen + have, sizeof(log_seen) - have, "%s\n", line);
}

static int64_t now_ms(void)
{
    return kiln__monotonic_ns() / 1000000;
}

static void name_cfg(kiln_config *cfg)
{
    unsigned char r[6];
    char sfx[16];

    kiln_config_init(cfg);
    assert_int_equal(kiln__random(r, sizeof(r), NULL), KILN_OK);
    (void)snprintf(sfx, sizeof(sfx), "%02x%02x%02x%02x%02x%02x", r[0], r[1],
                   r[2], r[3], r[4], r[5]);
    kiln__strlcpy(cfg->broker_url, test_amqp_url(), sizeof(cfg->broker_url));
    (void)snprintf(cfg->exchange, sizeof(cfg->exchange), "kiln_it.%s.x", sfx);
    (void)snprintf(cfg->queue, sizeof(cfg->queue), "kiln_it.%s.q", sfx);
    (void)snprintf(cfg->binding_key, sizeof(cfg->binding_key), "task");
    (void)snprintf(cfg->dead_letter_exchange, sizeof(cfg->dead_letter_exchange),
                   "kiln_it.%s.dlx", sfx);
    (void)snprintf(cfg->dead_letter_queue, sizeof(cfg->dead_letter_queue),
                   "kiln_it.%s.dlq", sfx);
    cfg->connect_timeout_ms = 5000;
    cfg->publish_timeout_ms = 10000;
}

/* Polls until `queue` holds `want` messages or 5 s pass. */
static long wait_count(const char *queue, long want)
{
    long n = -1;

    for (int i = 0; i < 100 && (n = test_amqp_count(queue)) != want; i++)
        usleep(50000);
    return n;
}

static void raw_delete(const kiln_config *cfg)
{
    amqp_connection_state_t c = test_amqp_open();
    const char *queues[] = {cfg->queue, cfg->dead_letter_queue};
    const char *xs[] = {cfg->exchange, cfg->dead_letter_exchange};

    for (size_t i = 0; i < 2; i++) {
        (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(queues[i]), 0, 0);
        (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(xs[i]), 0);
    }
    test_amqp_close(c);
}

static int setup(void **state)
{
    fixture *f;
    kiln_error err;

    (void)
        test_amqp_url(); /* fails the test, before anything to free, if unset */
    f = calloc(1, sizeof(*f));
    assert_non_null(f);
    name_cfg(&f->cfg);
    f->b = kiln__amqp_broker_new(&f->cfg, &err);
    if (f->b == NULL)
        fail_msg("broker_new: %s", err.message);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    kiln__broker_destroy(f->b);
    raw_delete(&f->cfg);
    free(f);
    return 0;
}

static void connect_declare(fixture *f)
{
    kiln_error err;

    if (kiln__broker_connect(f->b, &err) != KILN_OK)
        fail_msg("connect: %s", err.message);
    if (kiln__broker_declare(f->b, &f->cfg, &err) != KILN_OK)
        fail_msg("declare: %s", err.message);
}

static kiln__message msg_to(const kiln_config *cfg, const char *body)
{
    kiln__message m;

    memset(&m, 0, sizeof(m));
    m.exchange = cfg->exchange;
    m.routing_key = cfg->binding_key;
    m.body = body;
    m.body_len = strlen(body);
    m.persistent = true;
    return m;
}

static void publish_one(fixture *f, const char *body, const char *id)
{
    kiln__message m = msg_to(&f->cfg, body);
    kiln_error err;

    m.message_id = id;
    if (kiln__broker_publish(f->b, &m, 1, NULL, &err) != KILN_OK)
        fail_msg("publish: %s", err.message);
}

static void subscribe(fixture *f, unsigned prefetch)
{
    kiln_error err;

    if (kiln__broker_subscribe(f->b, f->cfg.queue, prefetch, &err) != KILN_OK)
        fail_msg("subscribe: %s", err.message);
}

static void consume(fixture *f, kiln__delivery *d)
{
    kiln_error err;

    if (kiln__broker_consume(f->b, d, 5000, &err) != KILN_OK)
        fail_msg("consume: %s", err.message);
}

/* ---- connection ------------------------------------------------------- */

static void test_url_is_set(void **state)
{
    (void)state;
    assert_non_null(test_amqp_url());
}

static void test_connect_declare_close_reconnect(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    kiln_error err;

    connect_declare(f);
    /* connect on a connected object is a no-op */
    assert_int_equal(kiln__broker_connect(f->b, &err), KILN_OK);
    assert_true(kiln__amqp_fd(f->b) >= 0);
    assert_int_equal(kiln__amqp_heartbeat_ms(f->b), 30000);
    assert_int_equal(kiln__amqp_tick(f->b, &err), KILN_OK);
    publish_one(f, "before", "id-1");
    kiln__broker_close(f->b);
    kiln__broker_close(f->b); /* twice is fine */
    assert_int_equal(kiln__amqp_fd(f->b), -1);
    assert_int_equal(kiln__broker_consume(f->b, &d, 0, &err), KILN_ECLOSED);
    assert_int_equal(kiln__broker_declare(f->b, &f->cfg, &err), KILN_ECLOSED);

    connect_declare(f);
    publish_one(f, "after", "id-2");
    subscribe(f, 10);
    consume(f, &d);
    assert_body_is(&d, "before");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    consume(f, &d);
    assert_body_is(&d, "after");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    kiln__broker_release(f->b, &d); /* safe on a zeroed delivery */
}

static void test_ops_before_connect(void **state)
{
    fixture *f = *state;
    kiln__message m = msg_to(&f->cfg, "x");
    kiln_err st = KILN_OK;
    kiln__delivery d;
    kiln_error err;

    assert_int_equal(kiln__broker_publish(f->b, &m, 1, &st, &err),
                     KILN_ECLOSED);
    assert_int_equal(st, KILN_ECLOSED);
    assert_int_equal(kiln__broker_consume(f->b, &d, 10, &err), KILN_ECLOSED);
    assert_int_equal(kiln__broker_ack(f->b, 1, false, &err), KILN_ECLOSED);
    assert_int_equal(kiln__amqp_tick(f->b, &err), KILN_ECLOSED);
    assert_false(kiln__amqp_pending(f->b));
}

static void test_bad_credentials(void **state)
{
    fixture *f = *state;
    const char *at = strrchr(test_amqp_url(), '@');
    kiln_error err;
    int64_t t0;

    assert_non_null(at);
    (void)snprintf(f->cfg.broker_url, sizeof(f->cfg.broker_url),
                   "amqp://guest:%s%s", BAD_PASSWORD, at);
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, &err);
    assert_non_null(f->b);
    log_seen[0] = '\0';
    kiln_log_set_level(KILN_LOG_DEBUG);
    kiln_log_set_sink(capture_sink, NULL);
    t0 = now_ms();
    assert_int_equal(kiln__broker_connect(f->b, &err), KILN_EBROKER);
    kiln_log_set_level(KILN_LOG_INFO);
    print_message("bad credentials: %s\n", err.message);
    assert_true(now_ms() - t0 < 5000);
    assert_non_null(strstr(err.message, "ACCESS_REFUSED"));
    assert_non_null(strstr(err.message, "'guest'"));
    assert_null(strstr(err.message, BAD_PASSWORD));
    assert_null(strstr(log_seen, BAD_PASSWORD));
    /* and the object stays usable with the right URL */
    kiln__strlcpy(f->cfg.broker_url, test_amqp_url(),
                  sizeof(f->cfg.broker_url));
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, &err);
    connect_declare(f);
}

static void test_bad_port(void **state)
{
    fixture *f = *state;
    kiln_error err;
    int64_t t0;

    (void)snprintf(f->cfg.broker_url, sizeof(f->cfg.broker_url),
                   "amqp://guest:%s@127.0.0.1:1/", BAD_PASSWORD);
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, &err);
    assert_non_null(f->b);
    t0 = now_ms();
    assert_int_equal(kiln__broker_connect(f->b, &err), KILN_EBROKER);
    print_message("bad port: %s\n", err.message);
    assert_true(now_ms() - t0 < 2000);
    assert_non_null(strstr(err.message, "127.0.0.1:1: Connection refused"));
    assert_null(strstr(err.message, BAD_PASSWORD));
    /* every op fails fast afterwards */
    assert_int_equal(kiln__broker_declare(f->b, &f->cfg, &err), KILN_ECLOSED);
    kiln__strlcpy(f->cfg.broker_url, test_amqp_url(),
                  sizeof(f->cfg.broker_url));
}

static void test_bad_url(void **state)
{
    fixture *f = *state;
    kiln_error err;

    kiln__strlcpy(f->cfg.broker_url, "amqp://guest:pw@host:notaport/",
                  sizeof(f->cfg.broker_url));
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, &err);
    if (f->b != NULL) /* config validation may already refuse it */
        assert_int_equal(kiln__broker_connect(f->b, &err), KILN_EINVAL);
    assert_int_equal(err.code, KILN_EINVAL);
    assert_null(strstr(err.message, ":pw@"));
    kiln__strlcpy(f->cfg.broker_url, test_amqp_url(),
                  sizeof(f->cfg.broker_url));
    if (f->b == NULL)
        f->b = kiln__amqp_broker_new(&f->cfg, &err);
}

/* ---- topology --------------------------------------------------------- */

static void test_declare_twice(void **state)
{
    fixture *f = *state;
    kiln_error err;

    connect_declare(f);
    assert_int_equal(kiln__broker_declare(f->b, &f->cfg, &err), KILN_OK);
    assert_int_equal(test_amqp_count(f->cfg.queue), 0);
    assert_int_equal(test_amqp_count(f->cfg.dead_letter_queue), 0);
}

static void test_declare_conflict(void **state)
{
    fixture *f = *state;
    kiln_config other = f->cfg;
    kiln_error err;

    connect_declare(f);
    other.queue_type = KILN_QUEUE_QUORUM;
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_EBROKER);
    print_message("queue conflict: %s\n", err.message);
    assert_non_null(strstr(err.message, "406"));
    assert_non_null(strstr(err.message, "x-queue-type"));
    assert_non_null(strstr(err.message, "KILN_QUEUE_TYPE"));
    /* the dead-letter queue, of the same type, is declared first */
    assert_non_null(strstr(err.message, f->cfg.dead_letter_queue));

    other = f->cfg;
    kiln__strlcpy(other.exchange_type, "fanout", sizeof(other.exchange_type));
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_EBROKER);
    print_message("exchange conflict: %s\n", err.message);
    assert_non_null(strstr(err.message, "KILN_EXCHANGE_TYPE"));

    /* the channel came back: the object works on */
    assert_int_equal(kiln__broker_declare(f->b, &f->cfg, &err), KILN_OK);
    publish_one(f, "still fine", NULL);
    assert_int_equal(test_amqp_count(f->cfg.queue), 1);
}

static void test_quorum_queue(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    kiln_config classic;
    kiln_error err;

    f->cfg.queue_type = KILN_QUEUE_QUORUM;
    connect_declare(f);
    publish_one(f, "q1", "id-q1");
    subscribe(f, 10);
    consume(f, &d);
    assert_body_is(&d, "q1");
    assert_false(d.redelivered);
    assert_int_equal(d.delivery_count, 0);
    assert_int_equal(kiln__broker_nack(f->b, d.tag, true, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    consume(f, &d);
    assert_body_is(&d, "q1");
    assert_true(d.redelivered);
    assert_int_equal(d.delivery_count, 1); /* x-delivery-count */
    assert_string_equal(kiln__delivery_header(&d, "x-delivery-count"), "1");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);

    classic = f->cfg;
    classic.queue_type = KILN_QUEUE_CLASSIC;
    assert_int_equal(kiln__broker_declare(f->b, &classic, &err), KILN_EBROKER);
    assert_non_null(strstr(err.message, "KILN_QUEUE_TYPE"));
}

static void test_priority_queue(void **state)
{
    fixture *f = *state;
    const uint8_t prio[] = {1, 9, 5, 0, 7};
    const char *want[] = {"p9", "p7", "p5", "p1", "p0"};
    kiln__message m[5];
    char bodies[5][8];
    kiln__delivery d;
    kiln_config bad;
    kiln_error err;

    f->cfg.max_priority = 10;
    connect_declare(f);
    for (size_t i = 0; i < 5; i++) {
        (void)snprintf(bodies[i], sizeof(bodies[i]), "p%u", prio[i]);
        m[i] = msg_to(&f->cfg, bodies[i]);
        m[i].priority = prio[i];
    }
    assert_int_equal(kiln__broker_publish(f->b, m, 5, NULL, &err), KILN_OK);
    subscribe(f, 1);
    for (size_t i = 0; i < 5; i++) {
        consume(f, &d);
        assert_body_is(&d, want[i]);
        assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
        kiln__broker_release(f->b, &d);
    }
    /* quorum queues have no priorities: a config error, no round trip */
    bad = f->cfg;
    bad.queue_type = KILN_QUEUE_QUORUM;
    assert_int_equal(kiln__broker_declare(f->b, &bad, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_MAX_PRIORITY"));
    assert_null(kiln__amqp_broker_new(&bad, &err));
    assert_int_equal(err.code, KILN_EINVAL);
}

static void raw_delete_one(const char *queue, const char *exchange)
{
    amqp_connection_state_t c = test_amqp_open();

    if (queue != NULL)
        (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
    if (exchange != NULL)
        (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(exchange), 0);
    test_amqp_close(c);
}

/* The settings every process sharing a queue must agree on (the README's
 * table): a second declaration that differs is refused with 406 and the
 * setting named; the dead-letter queue's name and the delay levels' type
 * and count may differ without an error, with the effects the table
 * states. */
static void test_shared_settings(void **state)
{
    fixture *f = *state;
    kiln_config other = f->cfg, delay_a, delay_b;
    kiln__broker *b2;
    kiln_error err;

    f->cfg.max_priority = 5;
    connect_declare(f);
    other.max_priority = 0;
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_EBROKER);
    print_message("priority: %s\n", err.message);
    assert_non_null(strstr(err.message, "KILN_MAX_PRIORITY=0"));
    other = f->cfg;
    other.queue_dlx_arg = false;
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_EBROKER);
    print_message("dlx arg: %s\n", err.message);
    assert_non_null(strstr(err.message, "x-dead-letter-exchange"));
    assert_non_null(strstr(err.message, "KILN_QUEUE_DLX_ARG"));
    other = f->cfg;
    (void)snprintf(other.dead_letter_exchange,
                   sizeof(other.dead_letter_exchange), "%.200s.2",
                   f->cfg.dead_letter_exchange);
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_EBROKER);
    print_message("dlx name: %s\n", err.message);
    assert_non_null(strstr(err.message, "KILN_DEAD_LETTER_EXCHANGE"));
    raw_delete_one(NULL, other.dead_letter_exchange); /* made before */

    /* Another dead-letter queue on the same exchange: no error, and the
     * fanout copies every dead letter into both queues. */
    other = f->cfg;
    (void)snprintf(other.dead_letter_queue, sizeof(other.dead_letter_queue),
                   "%.200s.2", f->cfg.dead_letter_queue);
    assert_int_equal(kiln__broker_declare(f->b, &other, &err), KILN_OK);
    {
        kiln__message m = msg_to(&f->cfg, "dead");
        m.exchange = f->cfg.dead_letter_exchange;
        assert_int_equal(kiln__broker_publish(f->b, &m, 1, NULL, &err),
                         KILN_OK);
    }
    assert_int_equal(wait_count(f->cfg.dead_letter_queue, 1), 1);
    assert_int_equal(wait_count(other.dead_letter_queue, 1), 1);
    raw_delete_one(other.dead_letter_queue, NULL);

    /* Delay levels of the other type, or fewer of them, live beside the
     * first ones: no 406. */
    delay_a = f->cfg;
    delay_a.delay_levels = 4;
    delay_a.retry_base_ms = 100;
    delay_a.retry_max_ms = 700;
    (void)snprintf(delay_a.delay_exchange, sizeof(delay_a.delay_exchange),
                   "%.200s.delay", f->cfg.queue);
    delay_b = delay_a;
    delay_b.delay_queue_type = KILN_QUEUE_CLASSIC;
    delay_b.delay_levels = 3;
    delay_b.retry_max_ms = 300; /* what 3 levels of 50 ms hold */
    assert_int_equal(kiln__broker_declare(f->b, &delay_a, &err), KILN_OK);
    b2 = kiln__amqp_broker_new(&delay_b, &err);
    assert_non_null(b2);
    assert_int_equal(kiln__broker_connect(b2, &err), KILN_OK);
    if (kiln__broker_declare(b2, &delay_b, &err) != KILN_OK)
        fail_msg("other delay levels: %s", err.message);
    kiln__broker_destroy(b2);
    {
        amqp_connection_state_t c = test_amqp_open();
        test_amqp_delete_topology(c, &delay_a);
        test_amqp_delete_topology(c, &delay_b);
        test_amqp_close(c);
    }
}

/* ---- publish and consume ---------------------------------------------- */

#define BATCH 1000

static void test_batch_of_1000(void **state)
{
    fixture *f = *state;
    static kiln__message m[BATCH];
    static kiln_err st[BATCH];
    static char bodies[BATCH][32], ids[BATCH][32], idx[BATCH][16];
    static kiln_header hdrs[BATCH][2];
    kiln__delivery d;
    kiln_error err;

    connect_declare(f);
    for (size_t i = 0; i < BATCH; i++) {
        (void)snprintf(bodies[i], sizeof(bodies[i]), "{\"n\":%zu}", i);
        (void)snprintf(ids[i], sizeof(ids[i]), "task_%zu", i);
        (void)snprintf(idx[i], sizeof(idx[i]), "%zu", i);
        hdrs[i][0] = (kiln_header){"task_name", "add"};
        hdrs[i][1] = (kiln_header){"idx", idx[i]};
        m[i] = msg_to(&f->cfg, bodies[i]);
        m[i].message_id = ids[i];
        m[i].priority = (uint8_t)(i % 10);
        m[i].headers = hdrs[i];
        m[i].n_headers = 2;
    }
    assert_int_equal(kiln__broker_publish(f->b, m, BATCH, st, &err), KILN_OK);
    for (size_t i = 0; i < BATCH; i++)
        assert_int_equal(st[i], KILN_OK);
    assert_int_equal(test_amqp_count(f->cfg.queue), BATCH);

    subscribe(f, 128);
    for (size_t i = 0; i < BATCH; i++) {
        consume(f, &d);
        assert_body_is(&d, bodies[i]);
        assert_int_equal(d.body_len, strlen(bodies[i]));
        assert_string_equal(d.message_id, ids[i]);
        assert_string_equal(d.exchange, f->cfg.exchange);
        assert_string_equal(d.routing_key, f->cfg.binding_key);
        assert_int_equal(d.priority, i % 10);
        assert_int_equal(d.n_headers, 2);
        assert_string_equal(kiln__delivery_header(&d, "task_name"), "add");
        assert_string_equal(kiln__delivery_header(&d, "idx"), idx[i]);
        assert_false(d.redelivered);
        if (i % 50 == 49 || i == BATCH - 1)
            assert_int_equal(kiln__broker_ack(f->b, d.tag, true, &err),
                             KILN_OK);
        kiln__broker_release(f->b, &d);
    }
    /* nothing left unacknowledged: closing requeues nothing */
    kiln__broker_close(f->b);
    assert_int_equal(wait_count(f->cfg.queue, 0), 0);
}

static void test_ack_multiple(void **state)
{
    fixture *f = *state;
    kiln__delivery d[10];
    kiln_error err;

    connect_declare(f);
    for (int i = 0; i < 10; i++)
        publish_one(f, "m", NULL);
    subscribe(f, 20);
    for (int i = 0; i < 10; i++)
        consume(f, &d[i]);
    assert_int_equal(kiln__broker_ack(f->b, d[5].tag, true, &err), KILN_OK);
    for (int i = 0; i < 10; i++)
        kiln__broker_release(f->b, &d[i]);
    kiln__broker_close(f->b); /* the 4 unacked ones go back */
    assert_int_equal(wait_count(f->cfg.queue, 4), 4);
}

static void test_nack_requeue(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    kiln_error err;

    connect_declare(f);
    publish_one(f, "again", "id-again");
    subscribe(f, 10);
    consume(f, &d);
    assert_false(d.redelivered);
    assert_int_equal(kiln__broker_nack(f->b, d.tag, true, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    consume(f, &d);
    assert_true(d.redelivered);
    assert_string_equal(d.message_id, "id-again");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
}

static void test_nack_dead_letters(void **state)
{
    fixture *f = *state;
    kiln_config dl = f->cfg;
    kiln__broker *b2;
    kiln__delivery d;
    kiln_error err;
    const char *death;

    connect_declare(f);
    publish_one(f, "poison", "id-poison");
    subscribe(f, 10);
    consume(f, &d);
    assert_int_equal(kiln__broker_nack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    assert_int_equal(wait_count(f->cfg.dead_letter_queue, 1), 1);
    assert_int_equal(test_amqp_count(f->cfg.queue), 0);

    /* read it back: x-death arrives as JSON */
    b2 = kiln__amqp_broker_new(&dl, &err);
    assert_non_null(b2);
    assert_int_equal(kiln__broker_connect(b2, &err), KILN_OK);
    assert_int_equal(kiln__broker_subscribe(b2, dl.dead_letter_queue, 1, &err),
                     KILN_OK);
    assert_int_equal(kiln__broker_consume(b2, &d, 5000, &err), KILN_OK);
    assert_body_is(&d, "poison");
    assert_string_equal(d.message_id, "id-poison");
    assert_string_equal(d.exchange, f->cfg.dead_letter_exchange);
    death = kiln__delivery_header(&d, "x-death");
    assert_non_null(death);
    print_message("x-death: %s\n", death != NULL ? death : "(none)");
    assert_true(death[0] == '[');
    assert_non_null(strstr(death, "\"reason\":\"rejected\""));
    assert_non_null(strstr(death, f->cfg.queue));
    assert_int_equal(kiln__broker_ack(b2, d.tag, false, &err), KILN_OK);
    kiln__broker_release(b2, &d);
    kiln__broker_destroy(b2);
}

static void test_unroutable_in_batch(void **state)
{
    fixture *f = *state;
    kiln__message m[4];
    kiln_err st[4];
    kiln_error err;

    connect_declare(f);
    m[0] = msg_to(&f->cfg, "a");
    m[1] = msg_to(&f->cfg, "lost");
    m[1].routing_key = "no-such-binding";
    m[1].message_id = "id-lost";
    m[2] = msg_to(&f->cfg, "c");
    m[3] = m[1]; /* twice the same unroutable message */
    assert_int_equal(kiln__broker_publish(f->b, m, 4, st, &err), KILN_EBROKER);
    print_message("unroutable: %s\n", err.message);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_int_equal(st[2], KILN_OK);
    assert_int_equal(st[3], KILN_EBROKER);
    assert_non_null(strstr(err.message, "msgs[1]"));
    assert_non_null(strstr(err.message, "unroutable"));
    assert_non_null(strstr(err.message, "NO_ROUTE"));
    assert_int_equal(test_amqp_count(f->cfg.queue), 2);
    /* the channel is fine: the next batch goes through */
    assert_int_equal(kiln__broker_publish(f->b, m, 1, st, &err), KILN_OK);
}

/* Bad messages are refused before anything is written. */
/* A message no broker can take is refused alone, before any of it is
 * written; the others of its batch are published and the connection
 * stays up: [good, bad, good] gives OK, EINVAL, OK. */
static void test_publish_bad_message(void **state)
{
    fixture *f = *state;
    char long_id[300], long_key[300];
    kiln__message m[3];
    kiln_header h = {long_key, "v"};
    kiln_err st[3];
    kiln_error err;

    connect_declare(f);
    memset(long_id, 'i', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    memcpy(long_key, long_id, sizeof(long_key));
    m[0] = msg_to(&f->cfg, "good 1");
    m[1] = msg_to(&f->cfg, "bad");
    m[2] = msg_to(&f->cfg, "good 2");
    m[1].message_id = long_id;
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_EINVAL);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EINVAL);
    assert_int_equal(st[2], KILN_OK);
    print_message("bad message: %s\n", err.message);
    assert_non_null(strstr(err.message, "msgs[1]"));
    assert_non_null(strstr(err.message, "message id of 299 bytes"));
    assert_false(kiln__broker_publish_lost(f->b, 1)); /* nothing to resend */
    assert_int_equal(wait_count(f->cfg.queue, 2), 2);

    /* no routing key, a header name over 255 bytes: the same */
    m[1].message_id = NULL;
    m[1].routing_key = NULL;
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_EINVAL);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_EINVAL);
    assert_int_equal(st[2], KILN_OK);
    assert_non_null(strstr(err.message, "no routing key"));
    m[1].routing_key = f->cfg.binding_key;
    m[1].headers = &h;
    m[1].n_headers = 1;
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_EINVAL);
    assert_int_equal(st[1], KILN_EINVAL);
    assert_non_null(strstr(err.message, "header name"));
    assert_int_equal(wait_count(f->cfg.queue, 6), 6);
}

/* A message whose properties do not fit one frame is found before its
 * method frame is written (rabbitmq-c writes that first and fails only
 * while encoding the header frame, which breaks the connection): refused
 * alone with KILN_ETOOBIG, naming the sizes; the rest of the batch goes,
 * the connection stays up. */
static void test_publish_too_big_headers(void **state)
{
    fixture *f = *state;
    size_t big_len = 140 * 1024;
    char *big = malloc(big_len + 1);
    kiln_header h = {"x-big", big};
    kiln__message m[3];
    kiln_err st[3];
    kiln_error err;

    assert_non_null(big);
    memset(big, 'b', big_len);
    big[big_len] = '\0';
    connect_declare(f);
    m[0] = msg_to(&f->cfg, "good 1");
    m[1] = msg_to(&f->cfg, "big");
    m[2] = msg_to(&f->cfg, "good 2");
    m[1].headers = &h;
    m[1].n_headers = 1;
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_ETOOBIG);
    print_message("too big: %s\n", err.message);
    assert_int_equal(st[0], KILN_OK);
    assert_int_equal(st[1], KILN_ETOOBIG);
    assert_int_equal(st[2], KILN_OK);
    assert_non_null(strstr(err.message, "msgs[1]"));
    assert_non_null(strstr(err.message, "frame_max 131072"));
    assert_false(kiln__broker_publish_lost(f->b, 1));
    /* just under the limit still goes: the check is exact */
    big[131072 - 20 - 2 - 17 - 1 - 4 - 1 - 5 - 1 - 4] = '\0';
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_OK);
    big[strlen(big)] = 'b';
    big[131072 - 20 - 2 - 17 - 1 - 4 - 1 - 5 - 1 - 4 + 1] = '\0';
    assert_int_equal(kiln__broker_publish(f->b, &m[1], 1, st, &err),
                     KILN_ETOOBIG);
    publish_one(f, "after", NULL);
    assert_int_equal(wait_count(f->cfg.queue, 6), 6);
    free(big);
}

static void test_publish_to_missing_exchange(void **state)
{
    fixture *f = *state;
    kiln__message m[2];
    kiln_err st[2];
    kiln_error err;

    connect_declare(f);
    m[0] = msg_to(&f->cfg, "x");
    m[0].exchange = "kiln_it.no-such-exchange";
    m[1] = msg_to(&f->cfg, "y");
    m[1].exchange = "kiln_it.no-such-exchange";
    assert_int_equal(kiln__broker_publish(f->b, m, 2, st, &err), KILN_EBROKER);
    print_message("missing exchange: %s\n", err.message);
    assert_int_equal(st[0], KILN_EBROKER);
    assert_int_equal(st[1], KILN_EBROKER);
    assert_non_null(strstr(err.message, "404"));
    /* the channel went away before either was settled */
    assert_true(kiln__broker_publish_lost(f->b, 0));
    assert_true(kiln__broker_publish_lost(f->b, 1));
    assert_false(kiln__broker_publish_lost(f->b, 2)); /* out of range */
    /* a new channel is opened for the next publish */
    publish_one(f, "z", NULL);
    assert_int_equal(test_amqp_count(f->cfg.queue), 1);
    assert_false(kiln__broker_publish_lost(f->b, 0));
}

/* The exchange is deleted under a connected publisher. The 404 costs the
 * channel only; the next publish opens a new one and reports the same
 * 404 again: nothing declares the exchange behind the caller's back. The
 * messages count as lost (unsettled when the channel went away), so a
 * publisher sends them again after reconnecting, and declaring first. */
static void test_publish_to_deleted_exchange(void **state)
{
    fixture *f = *state;
    amqp_connection_state_t c;
    kiln__message m[3];
    kiln_err st[3];
    kiln_error err;

    connect_declare(f);
    publish_one(f, "before", NULL);
    c = test_amqp_open();
    (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(f->cfg.exchange), 0);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    test_amqp_close(c);
    for (size_t i = 0; i < 3; i++)
        m[i] = msg_to(&f->cfg, "after");
    for (int round = 0; round < 2; round++) {
        assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err),
                         KILN_EBROKER);
        print_message("deleted exchange (%d): %s\n", round, err.message);
        assert_non_null(strstr(err.message, "404"));
        assert_non_null(strstr(err.message, f->cfg.exchange));
        for (size_t i = 0; i < 3; i++) {
            assert_int_equal(st[i], KILN_EBROKER);
            assert_true(kiln__broker_publish_lost(f->b, i));
        }
    }
    /* the connection itself is fine, and declare brings the exchange
     * (and its binding) back */
    assert_int_equal(kiln__amqp_tick(f->b, &err), KILN_OK);
    assert_int_equal(kiln__broker_declare(f->b, &f->cfg, &err), KILN_OK);
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_OK);
    for (size_t i = 0; i < 3; i++)
        assert_false(kiln__broker_publish_lost(f->b, i));
    assert_int_equal(test_amqp_count(f->cfg.queue), 4);
}

static void test_consume_timeout(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    kiln_error err;
    int64_t t0;

    connect_declare(f);
    assert_int_equal(kiln__broker_consume(f->b, &d, 0, &err), KILN_EINVAL);
    subscribe(f, 10);
    t0 = now_ms();
    assert_int_equal(kiln__broker_consume(f->b, &d, 300, &err), KILN_ETIMEDOUT);
    assert_in_range(now_ms() - t0, 250, 1000);
    t0 = now_ms();
    assert_int_equal(kiln__broker_consume(f->b, &d, 0, &err), KILN_ETIMEDOUT);
    assert_in_range(now_ms() - t0, 0, 100);
    assert_int_equal(kiln__broker_subscribe(f->b, f->cfg.queue, 10, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln__broker_subscribe(f->b, f->cfg.queue, 70000, &err),
                     KILN_EINVAL);
}

static void test_queue_deleted_while_consuming(void **state)
{
    fixture *f = *state;
    amqp_connection_state_t c;
    kiln__delivery d;
    kiln_error err;
    int64_t t0;

    connect_declare(f);
    subscribe(f, 10);
    c = test_amqp_open();
    (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(f->cfg.queue), 0, 0);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    test_amqp_close(c);
    t0 = now_ms();
    assert_int_equal(kiln__broker_consume(f->b, &d, 5000, &err), KILN_EBROKER);
    print_message("queue deleted: %s\n", err.message);
    assert_true(now_ms() - t0 < 2000);
    assert_non_null(strstr(err.message, "cancel"));
    assert_int_equal(kiln__broker_consume(f->b, &d, 0, &err), KILN_EBROKER);
    assert_int_equal(kiln__amqp_tick(f->b, &err), KILN_EBROKER);
    /* recovery the pool's way: close, connect, declare, subscribe */
    kiln__broker_close(f->b);
    connect_declare(f);
    subscribe(f, 10);
    publish_one(f, "back", NULL);
    consume(f, &d);
    assert_body_is(&d, "back");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
}

static void test_stale_tag_after_reconnect(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    uint64_t old;
    kiln_error err;

    connect_declare(f);
    publish_one(f, "once", NULL);
    subscribe(f, 10);
    consume(f, &d);
    old = d.tag;
    kiln__broker_release(f->b, &d);
    kiln__broker_close(f->b);
    connect_declare(f);
    subscribe(f, 10);
    consume(f, &d); /* the same message, requeued by the close */
    assert_body_is(&d, "once");
    assert_true(d.redelivered);
    assert_true(d.tag > old);
    assert_int_equal(kiln__broker_ack(f->b, old, false, &err), KILN_ECLOSED);
    assert_int_equal(kiln__broker_ack(f->b, d.tag + 5, false, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
}

/* A second ack of the same tag makes the broker close the channel; the
 * next consume says so, and a new subscribe on the same object works. */
static void test_double_ack(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    kiln_error err;

    connect_declare(f);
    publish_one(f, "one", NULL);
    publish_one(f, "two", NULL);
    subscribe(f, 1);
    consume(f, &d);
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    /* "two" may arrive before the close; then the close comes next */
    if (kiln__broker_consume(f->b, &d, 5000, &err) == KILN_OK) {
        kiln__broker_release(f->b, &d);
        assert_int_equal(kiln__broker_consume(f->b, &d, 5000, &err),
                         KILN_EBROKER);
    }
    print_message("double ack: %s\n", err.message);
    assert_int_equal(err.code, KILN_EBROKER);
    assert_non_null(strstr(err.message, "unknown delivery tag"));
    subscribe(f, 1);
    consume(f, &d);
    assert_body_is(&d, "two");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
}

/* cancel stops the subscription; what the broker already sent is still
 * handed out and settled, then consume says KILN_ECLOSED. */
static void test_cancel_drains(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    uint64_t last = 0;
    kiln_error err;
    int got = 0;

    connect_declare(f);
    for (int i = 0; i < 20; i++)
        publish_one(f, "c", NULL);
    subscribe(f, 10);
    for (int i = 0; i < 3; i++) {
        consume(f, &d);
        last = d.tag;
        kiln__broker_release(f->b, &d);
        got++;
    }
    assert_non_null(f->b->ops->cancel);
    assert_int_equal(kiln__broker_cancel(f->b, &err), KILN_OK);
    while (kiln__broker_consume(f->b, &d, 1000, &err) == KILN_OK) {
        last = d.tag;
        kiln__broker_release(f->b, &d);
        got++;
    }
    assert_int_equal(err.code, KILN_ECLOSED);
    assert_int_equal(got, 10); /* the prefetch window, no more */
    assert_int_equal(kiln__broker_ack(f->b, last, true, &err), KILN_OK);
    assert_int_equal(kiln__broker_cancel(f->b, &err), KILN_OK); /* again */
    /* a new subscription on the same connection takes the rest */
    subscribe(f, 10);
    for (int i = 0; i < 10; i++) {
        consume(f, &d);
        assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
        kiln__broker_release(f->b, &d);
    }
    kiln__broker_close(f->b);
    assert_int_equal(wait_count(f->cfg.queue, 0), 0);
}

/* The optional ops a poll loop uses. */
static void test_poll_ops(void **state)
{
    fixture *f = *state;
    const kiln__broker_ops *ops = f->b->ops;
    struct pollfd p;
    kiln__delivery d;
    kiln_error err;

    /* The AMQP broker has them: the wrappers' defaults are not at work. */
    assert_non_null(ops->poll_fd);
    assert_non_null(ops->pending);
    assert_non_null(ops->tick);
    assert_int_equal(kiln__broker_poll_fd(f->b), -1);
    assert_false(kiln__broker_pending(f->b));
    connect_declare(f);
    subscribe(f, 10);
    p.fd = kiln__broker_poll_fd(f->b);
    p.events = POLLIN;
    assert_true(p.fd >= 0);
    assert_false(kiln__broker_pending(f->b));
    assert_int_equal(poll(&p, 1, 100), 0);
    publish_one(f, "wake", NULL);
    if (!kiln__broker_pending(f->b))
        assert_int_equal(poll(&p, 1, 5000), 1);
    consume(f, &d);
    assert_body_is(&d, "wake");
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
    assert_int_equal(kiln__broker_tick(f->b, &err), KILN_OK);
}

/* Deliveries that arrive while a publish waits for its confirms are kept
 * for consume. */
static void test_publish_while_consuming(void **state)
{
    fixture *f = *state;
    static kiln__message m[300];
    kiln__delivery d;
    kiln_error err;
    size_t got = 0;

    connect_declare(f);
    subscribe(f, 50);
    for (size_t i = 0; i < 300; i++)
        m[i] = msg_to(&f->cfg, "loop");
    assert_int_equal(kiln__broker_publish(f->b, m, 300, NULL, &err), KILN_OK);
    assert_true(kiln__amqp_pending(f->b));
    while (got < 300) {
        consume(f, &d);
        assert_body_is(&d, "loop");
        assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
        kiln__broker_release(f->b, &d);
        got++;
    }
    assert_int_equal(kiln__broker_consume(f->b, &d, 100, &err), KILN_ETIMEDOUT);
}

static bool not_delivery_count(const char *key)
{
    return strcmp(key, "x-delivery-count") != 0;
}

/* Every header of `d` but x-delivery-count and `skip` is in `copy` with
 * the same type and value (the text form shows nested values too). */
static void assert_same_headers(const kiln__delivery *d,
                                const kiln__delivery *copy, const char *skip)
{
    for (size_t i = 0; i < d->n_headers; i++) {
        const kiln__hdr *a = &d->fields[i], *b;
        char ta[256], tb[256];
        size_t na, nb;
        if (strcmp(a->key, "x-delivery-count") == 0 ||
            strcmp(a->key, skip) == 0)
            continue;
        if ((b = kiln__hdrs_find(copy->fields, copy->n_headers, a->key)) ==
            NULL)
            fail_msg("header %s lost", a->key);
        if (b->value.type != a->value.type)
            fail_msg("header %s: type %d became %d", a->key, (int)a->value.type,
                     (int)b->value.type);
        na = kiln__hval_text(&a->value, NULL);
        nb = kiln__hval_text(&b->value, NULL);
        assert_true(na < sizeof(ta) && nb < sizeof(tb));
        assert_int_equal(kiln__hval_text(&a->value, ta), na);
        assert_int_equal(kiln__hval_text(&b->value, tb), nb);
        assert_int_equal(na, nb);
        assert_memory_equal(ta, tb, na);
    }
}

/* Headers of every AMQP type, as another client would send them; a copy
 * that inherits them republishes each with its type. */
static void test_header_types(void **state)
{
    fixture *f = *state;
    amqp_connection_state_t c;
    amqp_table_entry_t inner[2], e[18];
    amqp_field_value_t arr[2];
    amqp_basic_properties_t p;
    kiln__delivery d;
    kiln_error err;

    connect_declare(f);
    subscribe(f, 10);
    memset(e, 0, sizeof(e));
    e[0].key = amqp_cstring_bytes("i64");
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = -9007199254740993LL;
    e[1].key = amqp_cstring_bytes("bool");
    e[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e[1].value.value.boolean = 1;
    e[2].key = amqp_cstring_bytes("f64");
    e[2].value.kind = AMQP_FIELD_KIND_F64;
    e[2].value.value.f64 = 0.5;
    e[3].key = amqp_cstring_bytes("str");
    e[3].value.kind = AMQP_FIELD_KIND_UTF8;
    e[3].value.value.bytes = amqp_cstring_bytes("h\xc3\xa9llo");
    e[4].key = amqp_cstring_bytes("ts");
    e[4].value.kind = AMQP_FIELD_KIND_TIMESTAMP;
    e[4].value.value.u64 = 1700000000;
    e[5].key = amqp_cstring_bytes("dec");
    e[5].value.kind = AMQP_FIELD_KIND_DECIMAL;
    e[5].value.value.decimal.decimals = 3;
    e[5].value.value.decimal.value = 12345;
    e[6].key = amqp_cstring_bytes("u8");
    e[6].value.kind = AMQP_FIELD_KIND_U8;
    e[6].value.value.u8 = 200;
    inner[0].key = amqp_cstring_bytes("k");
    inner[0].value.kind = AMQP_FIELD_KIND_UTF8;
    inner[0].value.value.bytes = amqp_cstring_bytes("v\"q");
    inner[1].key = amqp_cstring_bytes("n");
    inner[1].value.kind = AMQP_FIELD_KIND_I32;
    inner[1].value.value.i32 = 7;
    e[7].key = amqp_cstring_bytes("table");
    e[7].value.kind = AMQP_FIELD_KIND_TABLE;
    e[7].value.value.table.num_entries = 2;
    e[7].value.value.table.entries = inner;
    arr[0].kind = AMQP_FIELD_KIND_BOOLEAN;
    arr[0].value.boolean = 0;
    arr[1].kind = AMQP_FIELD_KIND_TABLE;
    arr[1].value.table.num_entries = 0;
    arr[1].value.table.entries = NULL;
    e[8].key = amqp_cstring_bytes("array");
    e[8].value.kind = AMQP_FIELD_KIND_ARRAY;
    e[8].value.value.array.num_entries = 2;
    e[8].value.value.array.entries = arr;
    e[9].key = amqp_cstring_bytes("void");
    e[9].value.kind = AMQP_FIELD_KIND_VOID;
    e[10].key = amqp_cstring_bytes("x-delivery-count");
    e[10].value.kind = AMQP_FIELD_KIND_I64;
    e[10].value.value.i64 = 3;
    e[11].key = amqp_cstring_bytes("i8");
    e[11].value.kind = AMQP_FIELD_KIND_I8;
    e[11].value.value.i8 = -8;
    e[12].key = amqp_cstring_bytes("i16");
    e[12].value.kind = AMQP_FIELD_KIND_I16;
    e[12].value.value.i16 = -300;
    e[13].key = amqp_cstring_bytes("u16");
    e[13].value.kind = AMQP_FIELD_KIND_U16;
    e[13].value.value.u16 = 60000;
    e[14].key = amqp_cstring_bytes("u32");
    e[14].value.kind = AMQP_FIELD_KIND_U32;
    e[14].value.value.u32 = 4000000000u;
    e[15].key = amqp_cstring_bytes("u64");
    e[15].value.kind = AMQP_FIELD_KIND_U64;
    e[15].value.value.u64 = UINT64_MAX;
    e[16].key = amqp_cstring_bytes("f32");
    e[16].value.kind = AMQP_FIELD_KIND_F32;
    e[16].value.value.f32 = 0.25f;
    e[17].key = amqp_cstring_bytes("bytes");
    e[17].value.kind = AMQP_FIELD_KIND_BYTES;
    e[17].value.value.bytes = (amqp_bytes_t){3, (void *)"a\0b"};
    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_HEADERS_FLAG;
    p.headers.num_entries = 18;
    p.headers.entries = e;
    c = test_amqp_open();
    assert_int_equal(amqp_basic_publish(c, 1,
                                        amqp_cstring_bytes(f->cfg.exchange),
                                        amqp_cstring_bytes("task"), 0, 0, &p,
                                        amqp_cstring_bytes("")),
                     AMQP_STATUS_OK);
    test_amqp_close(c);
    consume(f, &d);
    assert_int_equal(d.body_len, 0);
    assert_body_is(&d, "");
    assert_string_equal(d.message_id, "");
    assert_int_equal(d.n_headers, 18);
    assert_int_equal(d.fields[0].value.type, KILN__HV_I64);
    assert_int_equal(d.fields[1].value.type, KILN__HV_BOOL);
    assert_int_equal(d.fields[7].value.type, KILN__HV_TABLE);
    assert_int_equal(d.fields[15].value.type, KILN__HV_U64);
    assert_int_equal(d.fields[17].value.type, KILN__HV_BYTES);
    assert_ptr_equal(d.headers[3].key, d.fields[3].key);
    assert_string_equal(kiln__delivery_header(&d, "i64"), "-9007199254740993");
    assert_string_equal(kiln__delivery_header(&d, "bool"), "true");
    assert_string_equal(kiln__delivery_header(&d, "f64"), "0.5");
    assert_string_equal(kiln__delivery_header(&d, "str"), "h\xc3\xa9llo");
    assert_string_equal(kiln__delivery_header(&d, "ts"), "1700000000");
    assert_string_equal(kiln__delivery_header(&d, "dec"), "12.345");
    assert_string_equal(kiln__delivery_header(&d, "u8"), "200");
    assert_string_equal(kiln__delivery_header(&d, "table"),
                        "{\"k\":\"v\\\"q\",\"n\":7}");
    assert_string_equal(kiln__delivery_header(&d, "array"), "[false,{}]");
    assert_string_equal(kiln__delivery_header(&d, "void"), "");
    assert_string_equal(kiln__delivery_header(&d, "u64"),
                        "18446744073709551615");
    assert_int_equal(d.delivery_count, 3);

    /* republished through the broker, every kind as it came; what the
     * copy adds replaces the same name */
    {
        kiln__message m = msg_to(&f->cfg, "copy");
        kiln__hdr own = kiln__hdr_int("i8", KILN__HV_I64, 99);
        kiln__delivery copy;
        m.inherit = &d;
        m.keep = not_delivery_count;
        m.fields = &own;
        m.n_fields = 1;
        assert_int_equal(kiln__broker_publish(f->b, &m, 1, NULL, &err),
                         KILN_OK);
        consume(f, &copy);
        assert_int_equal(copy.n_headers, 17);
        assert_same_headers(&d, &copy, "i8");
        assert_int_equal(kiln__hdrs_find(copy.fields, 17, "i8")->value.type,
                         KILN__HV_I64);
        assert_null(kiln__delivery_header(&copy, "x-delivery-count"));
        assert_int_equal(kiln__broker_ack(f->b, copy.tag, false, &err),
                         KILN_OK);
        kiln__broker_release(f->b, &copy);
    }
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
}

/* ---- flow control ----------------------------------------------------- */

static int rabbitmqctl(const char *args)
{
    const char *script = getenv("KILN_TEST_RABBITMQ");
    const char *dir = getenv("KILN_TEST_RABBITMQ_DIR");
    char cmd[2048];

    if (script == NULL || dir == NULL)
        return -1;
    (void)snprintf(cmd, sizeof(cmd), "'%s' ctl '%s' %s >/dev/null 2>&1", script,
                   dir, args);
    return system(cmd);
}

/* A memory alarm blocks publishers (connection.blocked); confirms stop,
 * so the publish times out rather than hanging. */
static void test_blocked_publish_times_out(void **state)
{
    fixture *f = *state;
    kiln__message m = msg_to(&f->cfg, "blocked");
    kiln_err st;
    kiln_error err;
    int64_t t0;

    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        print_message("broker given from outside: no alarm test\n");
        return;
    }
    f->cfg.publish_timeout_ms = 1500;
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, NULL);
    connect_declare(f);
    assert_int_equal(rabbitmqctl("set_vm_memory_high_watermark 0.0000001"), 0);
    t0 = now_ms();
    assert_int_equal(kiln__broker_publish(f->b, &m, 1, &st, &err),
                     KILN_ETIMEDOUT);
    print_message("blocked: %s (%lld ms)\n", err.message,
                  (long long)(now_ms() - t0));
    assert_int_equal(st, KILN_ETIMEDOUT);
    assert_in_range(now_ms() - t0, 1400, 4000);
    assert_true(kiln__amqp_blocked(f->b));
    /* known blocked: nothing more is written, the wait is the timeout */
    t0 = now_ms();
    assert_int_equal(kiln__broker_publish(f->b, &m, 1, &st, &err),
                     KILN_ETIMEDOUT);
    print_message("still blocked: %s\n", err.message);
    assert_int_equal(st, KILN_ETIMEDOUT);
    assert_non_null(strstr(err.message, "not sent"));
    assert_in_range(now_ms() - t0, 1400, 4000);
    assert_int_equal(rabbitmqctl("set_vm_memory_high_watermark 0.4"), 0);
    /* once unblocked, the next publish goes through */
    f->cfg.publish_timeout_ms = 10000;
    m.body = "free";
    m.body_len = 4;
    assert_int_equal(kiln__broker_publish(f->b, &m, 1, &st, &err), KILN_OK);
    assert_false(kiln__amqp_blocked(f->b));
}

/* ---- a peer that stops answering ------------------------------------- */

/* A one-connection TCP relay to the broker that can freeze: it then stops
 * reading both sides without closing anything, as a crashed host or a
 * dropped route would. It can also cut the connection at a chosen point
 * of the broker's stream, as a broker or a middlebox that goes away
 * would. Its thread never asserts. */
typedef struct relay {
    int lfd, port, broker_port;
    atomic_bool frozen, stop;
    atomic_int cut_at;  /* > 0: drop the connection once the broker has
                           sent this many bytes more (cut_after_chunk) */
    atomic_int hold_at; /* > 0: forward only this many bytes more of the
                           client's; the rest waits for the cut */
    pthread_t thread;
} relay;

/* Forwards what `from` has, at most `max` bytes; their number in *moved
 * (may be NULL). */
static bool pump_bytes(int from, int to, size_t max, ssize_t *moved)
{
    char buf[16384];
    ssize_t n = read(from, buf, max < sizeof(buf) ? max : sizeof(buf));

    for (ssize_t off = 0; n > 0 && off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w <= 0)
            return false;
        off += w;
    }
    if (moved != NULL)
        *moved = n > 0 ? n : 0;
    return n > 0;
}

/* The broker's side goes away right after the bytes just forwarded to
 * the client: the client reads them, then end of file. What it still
 * writes is read and dropped, so its sends never block. */
static void cut_after_chunk(relay *r, int c, int u)
{
    char buf[16384];
    struct pollfd p = {c, POLLIN, 0};

    (void)close(u);
    (void)shutdown(c, SHUT_WR);
    while (!atomic_load(&r->stop))
        if (poll(&p, 1, 50) > 0 && read(c, buf, sizeof(buf)) <= 0)
            break;
}

/* Moves what is waiting each way once; false when a side has ended (or
 * was cut). */
static bool relay_step(relay *r, int c, int *u)
{
    struct pollfd p[2];
    int hold = atomic_load(&r->hold_at), cut = atomic_load(&r->cut_at);
    ssize_t n = 0;

    /* a client held back is not read at all: its sends block */
    p[0] = (struct pollfd){hold < 0 ? -1 : c, POLLIN, 0};
    p[1] = (struct pollfd){*u, POLLIN, 0};
    if (poll(p, 2, 50) <= 0)
        return true;
    if (p[0].revents & (POLLIN | POLLHUP)) {
        if (!pump_bytes(c, *u, hold > 0 ? (size_t)hold : SIZE_MAX, &n))
            return false;
        if (hold > 0)
            atomic_store(&r->hold_at, n < hold ? hold - (int)n : -1);
    }
    if (p[1].revents & (POLLIN | POLLHUP)) {
        if (!pump_bytes(*u, c, SIZE_MAX, &n))
            return false;
        if (cut > 0 && n >= cut) {
            cut_after_chunk(r, c, *u);
            *u = -1;
            return false;
        }
        if (cut > 0)
            atomic_store(&r->cut_at, cut - (int)n);
    }
    return true;
}

static void *relay_run(void *arg)
{
    relay *r = arg;
    struct sockaddr_in up = {0};
    struct pollfd p;
    int c, u;

    p.fd = r->lfd;
    p.events = POLLIN;
    while (!atomic_load(&r->stop) && poll(&p, 1, 50) == 0)
        ;
    if (atomic_load(&r->stop) || (c = accept(r->lfd, NULL, NULL)) < 0)
        return NULL;
    u = socket(AF_INET, SOCK_STREAM, 0);
    up.sin_family = AF_INET;
    up.sin_port = htons((uint16_t)r->broker_port);
    up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (u >= 0 && connect(u, (struct sockaddr *)&up, sizeof(up)) == 0) {
        while (!atomic_load(&r->stop)) {
            if (atomic_load(&r->frozen))
                usleep(10000);
            else if (!relay_step(r, c, &u))
                break;
        }
    }
    if (u >= 0)
        (void)close(u);
    (void)close(c);
    return NULL;
}

static void relay_start(relay *r)
{
    struct sockaddr_in a = {0};
    socklen_t len = sizeof(a);
    const char *colon = strrchr(test_amqp_url(), ':');

    assert_non_null(colon);
    r->broker_port = atoi(colon + 1);
    atomic_init(&r->frozen, false);
    atomic_init(&r->stop, false);
    atomic_init(&r->cut_at, 0);
    atomic_init(&r->hold_at, 0);
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(r->lfd >= 0);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(r->lfd, 1), 0);
    assert_int_equal(getsockname(r->lfd, (struct sockaddr *)&a, &len), 0);
    r->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&r->thread, NULL, relay_run, r), 0);
}

static void relay_stop(relay *r)
{
    atomic_store(&r->stop, true);
    assert_int_equal(pthread_join(r->thread, NULL), 0);
    (void)close(r->lfd);
}

static void through_relay_hb(fixture *f, const relay *r, unsigned heartbeat_s)
{
    (void)snprintf(f->cfg.broker_url, sizeof(f->cfg.broker_url),
                   "amqp://guest:guest@127.0.0.1:%d/", r->port);
    f->cfg.heartbeat_s = heartbeat_s;
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, NULL);
    assert_non_null(f->b);
    connect_declare(f);
    kiln__strlcpy(f->cfg.broker_url, test_amqp_url(),
                  sizeof(f->cfg.broker_url));
}

static void through_relay(fixture *f, const relay *r)
{
    through_relay_hb(f, r, 1);
}

/* Missed heartbeats end a consume that waits on a silent peer; every op
 * then fails at once. */
static void test_dead_peer_while_consuming(void **state)
{
    fixture *f = *state;
    kiln__message m = msg_to(&f->cfg, "x");
    kiln__delivery d;
    kiln_error err;
    relay r;
    int64_t t0;

    relay_start(&r);
    through_relay(f, &r);
    subscribe(f, 10);
    atomic_store(&r.frozen, true);
    t0 = now_ms();
    assert_int_equal(kiln__broker_consume(f->b, &d, 20000, &err), KILN_EBROKER);
    print_message("dead peer: %s (%lld ms)\n", err.message,
                  (long long)(now_ms() - t0));
    assert_in_range(now_ms() - t0, 1000, 4000);
    assert_non_null(strstr(err.message, "heartbeat"));
    t0 = now_ms();
    assert_int_equal(kiln__broker_publish(f->b, &m, 1, NULL, &err),
                     KILN_EBROKER);
    assert_int_equal(kiln__broker_ack(f->b, 1, false, &err), KILN_EBROKER);
    assert_int_equal(kiln__amqp_tick(f->b, &err), KILN_EBROKER);
    kiln__broker_close(f->b);
    assert_true(now_ms() - t0 < 100);
    relay_stop(&r);
}

/* A publish waiting for confirms from a silent peer ends with the
 * heartbeat, long before its own timeout; close does not hang either. */
static void test_dead_peer_while_publishing(void **state)
{
    fixture *f = *state;
    kiln__message m = msg_to(&f->cfg, "x");
    kiln_err st;
    kiln_error err;
    relay r;
    int64_t t0;

    f->cfg.publish_timeout_ms = 30000;
    relay_start(&r);
    through_relay(f, &r);
    atomic_store(&r.frozen, true);
    t0 = now_ms();
    assert_int_equal(kiln__broker_publish(f->b, &m, 1, &st, &err),
                     KILN_EBROKER);
    print_message("dead peer publish: %s (%lld ms)\n", err.message,
                  (long long)(now_ms() - t0));
    assert_int_equal(st, KILN_EBROKER);
    assert_true(now_ms() - t0 < 4000);
    relay_stop(&r);

    /* close on a silent peer not yet known dead: bounded by 2 s */
    relay_start(&r);
    through_relay(f, &r);
    atomic_store(&r.frozen, true);
    t0 = now_ms();
    kiln__broker_close(f->b);
    print_message("close on a silent peer: %lld ms\n",
                  (long long)(now_ms() - t0));
    assert_true(now_ms() - t0 < 3000);
    relay_stop(&r);
}

#define CUT_BATCH 5000

/* Polls until `queue` holds at least `least` messages or 5 s pass. */
static long wait_at_least(const char *queue, long least)
{
    long n = -1;

    for (int i = 0; i < 100 && (n = test_amqp_count(queue)) < least; i++)
        usleep(50000);
    return n;
}

/* The connection drops in the middle of a batch, right after the broker
 * confirmed its first messages: those are settled (publish_lost false),
 * every other one is lost and goes again on a new connection, so the
 * queue ends with every message at least once. */
static void test_publish_lost_connection_cut(void **state)
{
    fixture *f = *state;
    static kiln__message m[CUT_BATCH], again[CUT_BATCH];
    static kiln_err st[CUT_BATCH];
    size_t ok = 0, lost = 0;
    kiln_error err;
    relay r;
    long n;

    relay_start(&r);
    through_relay_hb(f, &r, 60); /* no heartbeat in the broker's first bytes */
    for (size_t i = 0; i < CUT_BATCH; i++)
        m[i] = msg_to(&f->cfg, "cut");
    /* The broker gets the first 64 KiB of the batch (some hundred
     * messages), and the connection drops once it has confirmed one or
     * more of them: after a whole basic.ack frame (21 bytes), the only
     * thing it sends now. */
    atomic_store(&r.hold_at, 65536);
    atomic_store(&r.cut_at, 21);
    assert_int_equal(kiln__broker_publish(f->b, m, CUT_BATCH, st, &err),
                     KILN_EBROKER);
    print_message("connection cut: %s\n", err.message);
    for (size_t i = 0; i < CUT_BATCH; i++) {
        bool is_lost = kiln__broker_publish_lost(f->b, i);
        if (st[i] == KILN_OK) {
            assert_false(is_lost);
            ok++;
        } else {
            assert_int_equal(st[i], KILN_EBROKER);
            assert_true(is_lost);
            again[lost++] = m[i];
        }
    }
    print_message("confirmed before the cut: %zu, lost: %zu\n", ok, lost);
    assert_true(ok > 0);
    assert_true(lost > 0);
    relay_stop(&r);

    /* the publisher's way: a new connection, declare, the lost ones again */
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, &err);
    assert_non_null(f->b);
    connect_declare(f);
    assert_int_equal(kiln__broker_publish(f->b, again, lost, st, &err),
                     KILN_OK);
    for (size_t i = 0; i < lost; i++)
        assert_false(kiln__broker_publish_lost(f->b, i));
    /* at least once: the broker may have taken some lost ones too */
    n = wait_at_least(f->cfg.queue, CUT_BATCH);
    assert_in_range(n, CUT_BATCH, CUT_BATCH + (long)lost);
}

/* The broker closes the connection (rabbitmqctl close_all_connections)
 * between two batches: the next batch is written into a connection the
 * broker has already given up, so none of it is settled and all of it is
 * lost; a batch after that finds the connection unusable before it
 * starts, lost too. The first batch stays confirmed. */
static void test_publish_lost_forced_close(void **state)
{
    fixture *f = *state;
    kiln__message m[10];
    kiln_err st[10];
    kiln_error err;
    struct pollfd p;

    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        print_message("broker given from outside: no forced close test\n");
        return;
    }
    connect_declare(f);
    for (size_t i = 0; i < 10; i++)
        m[i] = msg_to(&f->cfg, "forced");
    assert_int_equal(kiln__broker_publish(f->b, m, 10, st, &err), KILN_OK);
    for (size_t i = 0; i < 10; i++)
        assert_false(kiln__broker_publish_lost(f->b, i));
    assert_int_equal(rabbitmqctl("close_all_connections kiln-test"), 0);
    /* wait until connection.close has arrived, unread */
    p.fd = kiln__amqp_fd(f->b);
    p.events = POLLIN;
    assert_int_equal(poll(&p, 1, 5000), 1);

    assert_int_equal(kiln__broker_publish(f->b, m, 10, st, &err), KILN_EBROKER);
    print_message("forced close: %s\n", err.message);
    assert_non_null(strstr(err.message, "CONNECTION_FORCED"));
    for (size_t i = 0; i < 10; i++) {
        assert_int_equal(st[i], KILN_EBROKER);
        assert_true(kiln__broker_publish_lost(f->b, i));
    }
    /* unusable before it starts: nothing written, all lost */
    assert_int_equal(kiln__broker_publish(f->b, m, 3, st, &err), KILN_EBROKER);
    for (size_t i = 0; i < 3; i++)
        assert_true(kiln__broker_publish_lost(f->b, i));
    assert_false(kiln__broker_publish_lost(f->b, 3));
    /* a refused batch is not lost: nothing to send again */
    m[0].routing_key = NULL;
    assert_int_equal(kiln__broker_publish(f->b, m, 1, st, &err), KILN_EINVAL);
    assert_false(kiln__broker_publish_lost(f->b, 0));
    m[0].routing_key = f->cfg.binding_key;

    kiln__broker_close(f->b);
    connect_declare(f);
    assert_int_equal(kiln__broker_publish(f->b, m, 10, st, &err), KILN_OK);
    /* the broker discarded the batch sent after its close */
    assert_int_equal(wait_count(f->cfg.queue, 20), 20);
}

/* ---- pipelined publishing ------------------------------------------- */

/* What wait_settled reported, by sequence number. */
#define PIPE_N 5000

typedef struct tally {
    unsigned char seen[PIPE_N + 1]; /* 1 OK, 2 failed; by seq */
    size_t ok, bad, twice;
    char why[64];
} tally;

static void on_tally(void *ctx, uint64_t first, uint64_t last, kiln_err status,
                     const char *why)
{
    tally *t = ctx;

    for (uint64_t s = first; s <= last && s <= PIPE_N; s++) {
        t->twice += t->seen[s] != 0;
        t->seen[s] = status == KILN_OK ? 1 : 2;
        if (status == KILN_OK) {
            t->ok++;
        } else {
            t->bad++;
            kiln__strlcpy(t->why, why, sizeof(t->why));
        }
    }
}

/* 5,000 messages written 250 at a time, never more than 1,000 of them
 * unsettled, every 100th unroutable (two alike in a row among them):
 * each is reported exactly once, the unroutable ones as returned, the
 * others confirmed, while later ones are being written. */
static void test_pipelined_window(void **state)
{
    fixture *f = *state;
    static kiln__message m[PIPE_N];
    static uint64_t seq[PIPE_N];
    static kiln_err st[PIPE_N];
    static tally t;
    static char ids[PIPE_N][24];
    size_t sent = 0, max_out = 0, reported_while_writing = 0;
    kiln_error err;

    memset(&t, 0, sizeof(t));
    connect_declare(f);
    for (size_t i = 0; i < PIPE_N; i++) {
        (void)snprintf(ids[i], sizeof(ids[i]), "id-%zu",
                       i % 100 == 1 ? i - 1 : i);
        m[i] = msg_to(&f->cfg, "pipelined");
        m[i].message_id = ids[i];
        if (i % 100 <= 1)
            m[i].routing_key = "no-such-binding";
    }
    while (t.ok + t.bad < PIPE_N) {
        size_t out = sent - (t.ok + t.bad), done = 0, n;
        n = PIPE_N - sent < 250 ? PIPE_N - sent : 250;
        if (n > 0 && out + n <= 1000) {
            assert_int_equal(kiln__broker_publish_async(f->b, m + sent, n,
                                                        seq + sent, st + sent,
                                                        &done, &err),
                             KILN_OK);
            assert_int_equal(done, n);
            for (size_t i = sent; i < sent + n; i++)
                assert_int_equal(seq[i], i + 1);
            sent += n;
            max_out = out + n > max_out ? out + n : max_out;
            reported_while_writing += t.ok + t.bad > 0 && sent < PIPE_N;
            continue;
        }
        assert_int_equal(kiln__broker_wait_settled(
                             f->b, kiln__monotonic_ns() + 10000000000LL, -1,
                             on_tally, &t, &err),
                         KILN_OK);
    }
    print_message("pipelined: %zu confirmed, %zu returned, at most %zu "
                  "unsettled\n",
                  t.ok, t.bad, max_out);
    assert_int_equal(t.twice, 0);
    assert_int_equal(t.bad, 2 * PIPE_N / 100);
    for (size_t i = 0; i < PIPE_N; i++)
        assert_int_equal(t.seen[i + 1], i % 100 <= 1 ? 2 : 1);
    assert_non_null(strstr(t.why, "NO_ROUTE"));
    assert_true(reported_while_writing > 0);
    assert_int_equal(wait_count(f->cfg.queue, PIPE_N - 2 * PIPE_N / 100),
                     PIPE_N - 2 * PIPE_N / 100);
    /* nothing more to report: the wait ends at its deadline */
    assert_int_equal(kiln__broker_wait_settled(f->b,
                                               kiln__monotonic_ns() + 50000000,
                                               -1, on_tally, &t, &err),
                     KILN_ETIMEDOUT);
}

static atomic_int kicks;

static void *kick_later(void *arg)
{
    uint64_t one = 1;

    usleep(100000);
    atomic_fetch_add(&kicks, 1);
    if (write(*(int *)arg, &one, sizeof(one)) != (ssize_t)sizeof(one))
        atomic_fetch_add(&kicks, 100);
    return NULL;
}

/* A wake fd written by another thread ends the wait early, and is read. */
static void test_pipelined_wake(void **state)
{
    fixture *f = *state;
    static tally t;
    int fd = eventfd(0, EFD_NONBLOCK);
    kiln_error err;
    pthread_t th;
    uint64_t v;
    int64_t t0;

    assert_true(fd >= 0);
    connect_declare(f);
    assert_int_equal(pthread_create(&th, NULL, kick_later, &fd), 0);
    t0 = now_ms();
    assert_int_equal(
        kiln__broker_wait_settled(f->b, kiln__monotonic_ns() + 20000000000LL,
                                  fd, on_tally, &t, &err),
        KILN_OK);
    assert_true(now_ms() - t0 < 10000);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&kicks), 1);
    assert_true(read(fd, &v, sizeof(v)) < 0); /* cleared */
    close(fd);
}

/* The broker closes the connection: publish_async may still write into
 * it, but wait_settled then reports what was settled before and fails;
 * what was written after is never reported (it is the writer's to send
 * again). A new connection numbers from 1 again. */
static void test_pipelined_lost(void **state)
{
    fixture *f = *state;
    static tally t;
    kiln__message m[10];
    uint64_t seq[10];
    kiln_err st[10];
    kiln_error err;
    size_t done;
    struct pollfd p;
    kiln_err rc;

    memset(&t, 0, sizeof(t));
    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        print_message("broker given from outside: no forced close test\n");
        return;
    }
    connect_declare(f);
    for (size_t i = 0; i < 10; i++)
        m[i] = msg_to(&f->cfg, "pipelined-lost");
    assert_int_equal(
        kiln__broker_publish_async(f->b, m, 10, seq, st, &done, &err), KILN_OK);
    while (t.ok < 10)
        assert_int_equal(kiln__broker_wait_settled(
                             f->b, kiln__monotonic_ns() + 10000000000LL, -1,
                             on_tally, &t, &err),
                         KILN_OK);
    assert_int_equal(rabbitmqctl("close_all_connections kiln-test"), 0);
    p.fd = kiln__amqp_fd(f->b);
    p.events = POLLIN;
    assert_int_equal(poll(&p, 1, 5000), 1);
    rc = kiln__broker_publish_async(f->b, m, 10, seq, st, &done, &err);
    assert_true(rc == KILN_OK || rc == KILN_EBROKER);
    rc = kiln__broker_wait_settled(f->b, kiln__monotonic_ns() + 5000000000LL,
                                   -1, on_tally, &t, &err);
    print_message("lost: %s\n", err.message);
    assert_int_equal(rc, KILN_EBROKER);
    assert_non_null(strstr(err.message, "CONNECTION_FORCED"));
    assert_int_equal(t.ok, 10);
    assert_int_equal(t.twice, 0);
    f->b->ops->close(f->b);
    assert_int_equal(kiln__broker_wait_settled(f->b, kiln__monotonic_ns(), -1,
                                               on_tally, &t, &err),
                     KILN_ECLOSED);
    connect_declare(f);
    assert_int_equal(
        kiln__broker_publish_async(f->b, m, 2, seq, st, &done, &err), KILN_OK);
    assert_int_equal(seq[0], 1);
    assert_int_equal(seq[1], 2);
}

/* A memory alarm: once the broker says it blocks publishing, nothing is
 * written (publish_async consumes nothing) until it unblocks; then the
 * message held back goes out and everything is confirmed. */
static void test_pipelined_blocked(void **state)
{
    fixture *f = *state;
    static tally t;
    kiln__message m[2];
    uint64_t seq[2];
    kiln_err st[2];
    kiln_error err;
    size_t done = 0;
    int64_t until;

    memset(&t, 0, sizeof(t));
    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        print_message("broker given from outside: no alarm test\n");
        return;
    }
    connect_declare(f);
    m[0] = msg_to(&f->cfg, "before the alarm is known");
    m[1] = msg_to(&f->cfg, "held back");
    assert_int_equal(rabbitmqctl("set_vm_memory_high_watermark 0.0000001"), 0);
    assert_int_equal(
        kiln__broker_publish_async(f->b, m, 1, seq, st, &done, &err), KILN_OK);
    assert_int_equal(done, 1);
    until = kiln__monotonic_ns() + 10000000000LL;
    while (!kiln__amqp_blocked(f->b) && kiln__monotonic_ns() < until)
        (void)kiln__broker_wait_settled(f->b, until, -1, on_tally, &t, &err);
    assert_true(kiln__amqp_blocked(f->b));
    assert_int_equal(kiln__broker_publish_async(f->b, m + 1, 1, seq + 1, st + 1,
                                                &done, &err),
                     KILN_OK);
    assert_int_equal(done, 0);
    assert_int_equal(rabbitmqctl("set_vm_memory_high_watermark 0.4"), 0);
    until = kiln__monotonic_ns() + 10000000000LL;
    while (kiln__amqp_blocked(f->b) && kiln__monotonic_ns() < until)
        (void)kiln__broker_wait_settled(f->b, until, -1, on_tally, &t, &err);
    assert_false(kiln__amqp_blocked(f->b));
    assert_int_equal(kiln__broker_publish_async(f->b, m + 1, 1, seq + 1, st + 1,
                                                &done, &err),
                     KILN_OK);
    assert_int_equal(done, 1);
    while (t.ok < 2 && kiln__monotonic_ns() < until)
        (void)kiln__broker_wait_settled(f->b, until, -1, on_tally, &t, &err);
    assert_int_equal(t.ok, 2);
    assert_int_equal(t.twice, 0);
}

/* An idle publisher that ticks keeps its connection past several
 * heartbeat intervals; the server would drop one that stayed silent. */
static void test_tick_keeps_idle_connection(void **state)
{
    fixture *f = *state;
    kiln_error err;
    int64_t t0;

    f->cfg.heartbeat_s = 1;
    kiln__broker_destroy(f->b);
    f->b = kiln__amqp_broker_new(&f->cfg, NULL);
    connect_declare(f);
    assert_int_equal(kiln__amqp_heartbeat_ms(f->b), 1000);
    t0 = now_ms();
    while (now_ms() - t0 < 3500) {
        assert_int_equal(kiln__amqp_tick(f->b, &err), KILN_OK);
        usleep(200000);
    }
    publish_one(f, "still here", NULL);
    assert_int_equal(test_amqp_count(f->cfg.queue), 1);
}

/* The broker's application stops (a restart): consume reports the
 * server's close, and a new connection works once it is back. */
static void test_broker_restart(void **state)
{
    fixture *f = *state;
    kiln__delivery d;
    kiln_error err;
    int64_t t0;
    kiln_err rc = KILN_EBROKER;

    if (getenv("KILN_TEST_RABBITMQ") == NULL) {
        print_message("broker given from outside: no restart test\n");
        return;
    }
    connect_declare(f);
    publish_one(f, "survivor", "id-s");
    subscribe(f, 10);
    consume(f, &d);
    kiln__broker_release(f->b, &d); /* not acked: requeued by the close */
    assert_int_equal(rabbitmqctl("stop_app"), 0);
    assert_int_equal(kiln__broker_consume(f->b, &d, 10000, &err), KILN_EBROKER);
    print_message("restart: %s\n", err.message);
    assert_non_null(strstr(err.message, "320"));
    kiln__broker_close(f->b);
    assert_int_equal(rabbitmqctl("start_app"), 0);
    t0 = now_ms();
    while (now_ms() - t0 < 30000 &&
           (rc = kiln__broker_connect(f->b, &err)) != KILN_OK)
        usleep(200000);
    assert_int_equal(rc, KILN_OK);
    connect_declare(f);
    subscribe(f, 10);
    consume(f, &d);
    assert_body_is(&d, "survivor");
    assert_true(d.redelivered);
    assert_int_equal(kiln__broker_ack(f->b, d.tag, false, &err), KILN_OK);
    kiln__broker_release(f->b, &d);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_is_set),
        T(test_connect_declare_close_reconnect),
        T(test_ops_before_connect),
        T(test_bad_credentials),
        T(test_bad_port),
        T(test_bad_url),
        T(test_declare_twice),
        T(test_declare_conflict),
        T(test_quorum_queue),
        T(test_priority_queue),
        T(test_shared_settings),
        T(test_batch_of_1000),
        T(test_ack_multiple),
        T(test_nack_requeue),
        T(test_nack_dead_letters),
        T(test_unroutable_in_batch),
        T(test_publish_bad_message),
        T(test_publish_too_big_headers),
        T(test_publish_to_missing_exchange),
        T(test_publish_to_deleted_exchange),
        T(test_consume_timeout),
        T(test_queue_deleted_while_consuming),
        T(test_stale_tag_after_reconnect),
        T(test_double_ack),
        T(test_cancel_drains),
        T(test_poll_ops),
        T(test_publish_while_consuming),
        T(test_header_types),
        T(test_blocked_publish_times_out),
        T(test_dead_peer_while_consuming),
        T(test_dead_peer_while_publishing),
        T(test_publish_lost_connection_cut),
        T(test_publish_lost_forced_close),
        T(test_pipelined_window),
        T(test_pipelined_wake),
        T(test_pipelined_lost),
        T(test_pipelined_blocked),
        T(test_tick_keeps_idle_connection),
        T(test_broker_restart),
    };

    kiln_log_set_sink(capture_sink, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
