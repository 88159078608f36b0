/* raw_amqp: the limit. A rabbitmq-c publisher and consumer that do nothing
 * but what kiln must do for a task, with the same guarantees: persistent
 * messages to a durable queue, published `mandatory` with publisher
 * confirms (pipelined, at most WINDOW unconfirmed), consumed with a
 * prefetch and acknowledged manually (one `multiple` ack per 50 deliveries
 * or whenever the read buffer runs dry). It does not use kiln.
 *
 *   raw_amqp publish N OUT [WINDOW=1000] [RATE=0 (as fast as possible)]
 *   raw_amqp consume N OUT [PREFETCH=128]
 *   raw_amqp delete QUEUE...
 *
 * The broker is BENCH_AMQP_URL; the queue BENCH_RAW_QUEUE (bench_raw),
 * declared durable unless BENCH_RAW_DECLARE=0.
 * Results go to OUT as key=value lines (scripts/bench.sh reads them).
 */
#include "bench.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>

#define CH 1

static const char *queue_name(void)
{
    const char *q = getenv("BENCH_RAW_QUEUE");

    return q != NULL && *q != '\0' ? q : "bench_raw";
}

static _Noreturn void die(const char *what, const char *detail)
{
    fprintf(stderr, "raw_amqp: %s: %s\n", what, detail);
    exit(1);
}

static void check_reply(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        die(what, amqp_error_string2(r.library_error));
    die(what, "broker closed the channel or connection");
}

static amqp_connection_state_t open_conn(void)
{
    const char *env = getenv("BENCH_AMQP_URL");
    char *url =
        strdup(env != NULL ? env : "amqp://guest:guest@127.0.0.1:5672/");
    struct amqp_connection_info ci;
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);

    if (url == NULL || sock == NULL)
        die("connect", "out of memory");
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
        die("BENCH_AMQP_URL", "not an amqp:// URL");
    if (amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK)
        die("connect", ci.host);
    /* "amqp://host/" parses to an empty vhost; the default is "/". */
    check_reply(amqp_login(conn, *ci.vhost != '\0' ? ci.vhost : "/", 0, 131072,
                           0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
                "login");
    amqp_channel_open(conn, CH);
    check_reply(amqp_get_rpc_reply(conn), "channel.open");
    free(url);
    return conn;
}

static void close_conn(amqp_connection_state_t conn)
{
    (void)amqp_channel_close(conn, CH, AMQP_REPLY_SUCCESS);
    (void)amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    (void)amqp_destroy_connection(conn);
}

static void declare_queue(amqp_connection_state_t conn)
{
    /* BENCH_RAW_DECLARE=0: consume a queue another client declared with
     * its own arguments (redeclaring it without them would fail). */
    const char *d = getenv("BENCH_RAW_DECLARE");

    if (d != NULL && strcmp(d, "0") == 0)
        return;
    amqp_queue_declare(conn, CH, amqp_cstring_bytes(queue_name()), 0, 1, 0, 0,
                       amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "queue.declare");
}

/* Reads one frame if there is one (or waits for one when `block`) and
 * counts confirms in *acked. Returns 0 when no frame was waiting. */
static int read_confirm(amqp_connection_state_t conn, int block,
                        uint64_t *acked)
{
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    int rc = block ? amqp_simple_wait_frame(conn, &f)
                   : amqp_simple_wait_frame_noblock(conn, &f, &zero);

    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK)
        die("read", amqp_error_string2(rc));
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 1;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = f.payload.method.decoded;
        *acked = a->multiple ? a->delivery_tag : *acked + 1;
        break;
    }
    case AMQP_BASIC_NACK_METHOD:
        die("publish", "nacked by the broker");
    case AMQP_BASIC_RETURN_METHOD:
        die("publish", "unroutable (returned)");
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD:
        die("publish", "broker closed the channel");
    default:
        break;
    }
    return 1;
}

static int publish(long n, const char *out, uint64_t window, double rate)
{
    amqp_connection_state_t conn = open_conn();
    amqp_basic_properties_t props;
    char buf[BENCH_PAYLOAD_LEN + 1];
    uint64_t acked = 0;
    int64_t t0;

    declare_queue(conn);
    amqp_confirm_select(conn, CH);
    check_reply(amqp_get_rpc_reply(conn), "confirm.select");
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        if (rate > 0) {
            int64_t due = t0 + (int64_t)((double)i * 1e9 / rate);
            int64_t now = bench_now_ns();
            while (now < due) {
                /* Read confirms while waiting for the next slot. */
                while (read_confirm(conn, 0, &acked))
                    ;
                bench_sleep_ns(due - now > 200000 ? 200000 : due - now);
                now = bench_now_ns();
            }
        }
        amqp_bytes_t body = {bench_payload(buf, i, bench_now_ns()), buf};
        int rc = amqp_basic_publish(conn, CH, amqp_empty_bytes,
                                    amqp_cstring_bytes(queue_name()), 1, 0,
                                    &props, body);
        if (rc != AMQP_STATUS_OK)
            die("publish", amqp_error_string2(rc));
        uint64_t published = (uint64_t)i + 1;
        if (published - acked >= window) {
            while (published - acked > window / 2)
                read_confirm(conn, 1, &acked);
            amqp_maybe_release_buffers(conn);
        } else if (i % 64 == 0) {
            while (read_confirm(conn, 0, &acked))
                ;
            amqp_maybe_release_buffers(conn);
        }
    }
    while (acked < (uint64_t)n)
        read_confirm(conn, 1, &acked);
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    close_conn(conn);
    bench_result(out, "sent=%ld\nsecs=%.3f\nrate=%.0f\nstart_ns=%lld\n", n,
                 secs, (double)n / secs, (long long)t0);
    return 0;
}

/* A frame that is not a delivery arrived: only a close matters. */
static void other_frame(amqp_connection_state_t conn)
{
    amqp_frame_t f;

    if (amqp_simple_wait_frame(conn, &f) != AMQP_STATUS_OK)
        die("consume", "connection lost");
    if (f.frame_type == AMQP_FRAME_METHOD &&
        (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
         f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
         f.payload.method.id == AMQP_BASIC_CANCEL_METHOD))
        die("consume", "broker closed the channel or cancelled");
}

static int consume(long n, const char *out, uint16_t prefetch)
{
    amqp_connection_state_t conn = open_conn();
    static struct bench_hist lat;
    int64_t first = 0, last = 0;
    uint64_t tag = 0;
    unsigned unacked = 0;

    declare_queue(conn);
    amqp_basic_qos(conn, CH, 0, prefetch, 0);
    check_reply(amqp_get_rpc_reply(conn), "basic.qos");
    amqp_basic_consume(conn, CH, amqp_cstring_bytes(queue_name()),
                       amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "basic.consume");
    for (long got = 0; got < n;) {
        amqp_envelope_t env;
        struct timeval tv = {120, 0};

        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            other_frame(conn);
            continue;
        }
        check_reply(r, "consume");
        last = bench_now_ns();
        if (got++ == 0)
            first = last;
        int64_t sent =
            bench_payload_sent_ns(env.message.body.bytes, env.message.body.len);
        if (sent > 0)
            bench_hist_add(&lat, last - sent);
        tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (++unacked >= 50 || !amqp_data_in_buffer(conn)) {
            if (amqp_basic_ack(conn, CH, tag, 1) != AMQP_STATUS_OK)
                die("ack", "failed");
            unacked = 0;
        }
    }
    if (unacked > 0 && amqp_basic_ack(conn, CH, tag, 1) != AMQP_STATUS_OK)
        die("ack", "failed");
    close_conn(conn);
    bench_result(out, "tasks=%ld\nfirst_ns=%lld\nlast_ns=%lld\n", n,
                 (long long)first, (long long)last);
    bench_hist_result(out, &lat);
    return 0;
}

static int delete_queues(int argc, char **argv)
{
    amqp_connection_state_t conn = open_conn();

    for (int i = 0; i < argc; i++) {
        /* A missing queue is fine: delete is idempotent in RabbitMQ 3. */
        amqp_queue_delete(conn, CH, amqp_cstring_bytes(argv[i]), 0, 0);
        check_reply(amqp_get_rpc_reply(conn), argv[i]);
    }
    close_conn(conn);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "delete") == 0)
        return delete_queues(argc - 2, argv + 2);
    if (argc < 4) {
        fprintf(stderr, "usage: raw_amqp publish N OUT [WINDOW] [RATE]\n"
                        "       raw_amqp consume N OUT [PREFETCH]\n"
                        "       raw_amqp delete QUEUE...\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    if (n <= 0)
        die("N", "must be a positive number");
    if (strcmp(argv[1], "publish") == 0)
        return publish(n, argv[3],
                       argc > 4 ? strtoull(argv[4], NULL, 10) : 1000,
                       argc > 5 ? strtod(argv[5], NULL) : 0.0);
    if (strcmp(argv[1], "consume") == 0)
        return consume(n, argv[3],
                       (uint16_t)(argc > 4 ? strtoul(argv[4], NULL, 10) : 128));
    die("mode", argv[1]);
    return 2;
}
