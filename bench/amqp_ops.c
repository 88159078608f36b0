/* Throughput of the AMQP broker ops against a real RabbitMQ: persistent
 * 200-byte messages published in confirmed batches, and consumed with
 * prefetch 128 and an ack with `multiple` every 50 deliveries. Medians of
 * three runs. Not part of the library or the tests.
 *
 *   make                     (builds build/plain/bench/amqp_ops)
 *   scripts/with-rabbitmq.sh build/plain/bench/amqp_ops [messages]
 */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUNS 3
#define BODY 200

static void die(const char *what, const kiln_error *err)
{
    fprintf(stderr, "amqp_ops: %s: %s\n", what, err->message);
    exit(1);
}

static double seconds(void)
{
    return (double)kiln__monotonic_ns() / 1e9;
}

static double median(double *v)
{
    for (int i = 0; i < RUNS; i++)
        for (int j = i + 1; j < RUNS; j++)
            if (v[j] < v[i]) {
                double t = v[i];
                v[i] = v[j];
                v[j] = t;
            }
    return v[RUNS / 2];
}

static kiln__broker *open_broker(const kiln_config *cfg)
{
    kiln_error err;
    kiln__broker *b = kiln__amqp_broker_new(cfg, &err);

    if (b == NULL)
        die("new", &err);
    if (kiln__broker_connect(b, &err) != KILN_OK)
        die("connect", &err);
    return b;
}

/* Publishes n messages in batches of `batch`; returns messages/s. */
static double publish(kiln__broker *b, const kiln_config *cfg, size_t n,
                      size_t batch)
{
    static kiln__message m[1000];
    static char ids[1000][48];
    static const kiln_header hdr[] = {{"task_name", "bench"}};
    static char body[BODY];
    kiln_error err;
    double t0;

    memset(body, 'x', sizeof(body));
    for (size_t i = 0; i < batch; i++) {
        memset(&m[i], 0, sizeof(m[i]));
        m[i].exchange = cfg->exchange;
        m[i].routing_key = cfg->binding_key;
        m[i].body = body;
        m[i].body_len = BODY;
        m[i].headers = hdr;
        m[i].n_headers = 1;
        m[i].message_id = ids[i];
        m[i].persistent = true;
    }
    t0 = seconds();
    for (size_t done = 0; done < n; done += batch) {
        for (size_t i = 0; i < batch; i++)
            (void)snprintf(ids[i], sizeof(ids[i]), "task_%zu", done + i);
        if (kiln__broker_publish(b, m, batch, NULL, &err) != KILN_OK)
            die("publish", &err);
    }
    return (double)n / (seconds() - t0);
}

/* Consumes n messages, acking with `multiple` every 50; messages/s. */
static double consume(const kiln_config *cfg, size_t n)
{
    kiln__broker *b = open_broker(cfg);
    kiln__delivery d;
    kiln_error err;
    double t0, rate;

    if (kiln__broker_subscribe(b, cfg->queue, 128, &err) != KILN_OK)
        die("subscribe", &err);
    t0 = seconds();
    for (size_t i = 0; i < n; i++) {
        if (kiln__broker_consume(b, &d, 5000, &err) != KILN_OK)
            die("consume", &err);
        if (i % 50 == 49 || i == n - 1)
            if (kiln__broker_ack(b, d.tag, true, &err) != KILN_OK)
                die("ack", &err);
        kiln__broker_release(b, &d);
    }
    rate = (double)n / (seconds() - t0);
    kiln__broker_destroy(b);
    return rate;
}

/* The ops have no delete: reach under them for the bench's own queues. */
static void cleanup(kiln__amqp *a, const kiln_config *cfg)
{
    const char *q[] = {cfg->queue, cfg->dead_letter_queue};
    const char *x[] = {cfg->exchange, cfg->dead_letter_exchange};

    for (int i = 0; i < 2; i++) {
        (void)amqp_queue_delete(a->conn, KILN__AMQP_CHANNEL,
                                amqp_cstring_bytes(q[i]), 0, 0);
        (void)amqp_exchange_delete(a->conn, KILN__AMQP_CHANNEL,
                                   amqp_cstring_bytes(x[i]), 0);
    }
}

int main(int argc, char **argv)
{
    const char *url = getenv("KILN_TEST_AMQP_URL");
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000;
    double p100[RUNS], p1000[RUNS], c128[RUNS];
    kiln_config cfg;
    kiln__broker *b;
    kiln_error err;
    char base[64];

    if (url == NULL || n < 1000 || n % 1000 != 0) {
        fprintf(stderr, "usage: KILN_TEST_AMQP_URL=amqp://... amqp_ops "
                        "[messages, a multiple of 1000]\n");
        return 2;
    }
    kiln_log_set_level(KILN_LOG_WARN);
    kiln_config_init(&cfg);
    kiln__strlcpy(cfg.broker_url, url, sizeof(cfg.broker_url));
    (void)snprintf(base, sizeof(base), "kiln_bench.%ld",
                   (long)kiln__monotonic_ns());
    (void)snprintf(cfg.exchange, sizeof(cfg.exchange), "%s.x", base);
    (void)snprintf(cfg.queue, sizeof(cfg.queue), "%s.q", base);
    (void)snprintf(cfg.dead_letter_exchange, sizeof(cfg.dead_letter_exchange),
                   "%s.dlx", base);
    (void)snprintf(cfg.dead_letter_queue, sizeof(cfg.dead_letter_queue),
                   "%s.dlq", base);
    b = open_broker(&cfg);
    if (kiln__broker_declare(b, &cfg, &err) != KILN_OK)
        die("declare", &err);
    for (int r = 0; r < RUNS; r++) {
        p100[r] = publish(b, &cfg, n, 100);
        c128[r] = consume(&cfg, n);
        p1000[r] = publish(b, &cfg, n, 1000);
        (void)consume(&cfg, n);
    }
    printf("messages per run: %zu, %d-byte persistent bodies, median of %d\n",
           n, BODY, RUNS);
    printf("publish, batches of 100 confirmed:   %8.0f msg/s\n", median(p100));
    printf("publish, batches of 1000 confirmed:  %8.0f msg/s\n", median(p1000));
    printf("consume, prefetch 128, ack x50:      %8.0f msg/s\n", median(c128));
    cleanup((kiln__amqp *)b, &cfg);
    kiln__broker_destroy(b);
    return 0;
}
