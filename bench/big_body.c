/* big_body: the memory a worker needs to turn away one body of ~16 MiB of
 * the smallest JSON values. It starts a kiln worker pool (prefetch 128
 * and the other settings from the KILN_* environment) in a child process,
 * publishes one such body to the task queue with rabbitmq-c, waits until
 * the worker has dead-lettered it, and reports the child's resident
 * memory before the body and its peak (VmHWM from /proc, exact rather
 * than sampled), with the dead letter's reason.
 *
 *   big_body SHAPE [BYTES]      SHAPE: verbatim  {"Future":[1,1,...]}, an
 *                                                unknown key kept as is
 *                                      headers   "Headers":{"t":[1,1,...]}
 *                                      args      Args [1,1,...]: an
 *                                                []int64 argument of an
 *                                                unregistered task
 *                                      invalid   the same args body with
 *                                                its last brace cut off
 *
 *   scripts/with-rabbitmq.sh build/plain/bench/big_body verbatim
 *
 * The broker URL is KILN_BROKER_URL, else the one scripts/with-rabbitmq.sh
 * exports. Results go to stdout as key=value lines. Not part of the
 * library. */
#include "bench.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <kiln.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define CH 1

static pid_t worker_pid;

static _Noreturn void die(const char *what, const char *detail)
{
    fprintf(stderr, "big_body: %s: %s\n", what, detail);
    if (worker_pid > 0) {
        (void)kill(worker_pid, SIGTERM);
        (void)waitpid(worker_pid, NULL, 0);
    }
    exit(1);
}

static kiln_err noop(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    return KILN_OK;
}

/* The child: a worker pool until SIGTERM. */
static _Noreturn void run_worker(const kiln_config *cfg)
{
    kiln_error err;
    kiln_pool *pool;

    worker_pid = 0;
    (void)prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the parent */
    if ((pool = kiln_pool_new(cfg, 0, "big_body", &err)) == NULL)
        die("worker", err.message);

    if (kiln_pool_register(pool, "noop", noop, NULL, NULL, &err) != KILN_OK ||
        kiln_pool_start(pool, &err) != KILN_OK)
        die("worker", err.message);
    kiln_pool_free(pool);
    _exit(0);
}

static void check_reply(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return;
    die(what, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                  ? amqp_error_string2(r.library_error)
                  : "the broker closed the channel");
}

static amqp_connection_state_t open_conn(const char *broker_url)
{
    char *url = strdup(broker_url);
    struct amqp_connection_info ci;
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);

    if (url == NULL || sock == NULL)
        die("connect", "out of memory");
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
        die("broker URL", "not an amqp:// URL");
    if (amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK)
        die("connect", ci.host);
    check_reply(amqp_login(conn, *ci.vhost != '\0' ? ci.vhost : "/", 0, 131072,
                           0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
                "login");
    amqp_channel_open(conn, CH);
    check_reply(amqp_get_rpc_reply(conn), "channel.open");
    free(url);
    return conn;
}

/* Messages and consumers of `queue`, or false while it does not exist
 * (a passive declare of a missing queue closes the channel: confirm the
 * close and open it again). */
static bool queue_counts(amqp_connection_state_t conn, const char *queue,
                         uint32_t *messages, uint32_t *consumers)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(
        conn, CH, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t r;

    if (ok == NULL) {
        r = amqp_get_rpc_reply(conn);
        if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION ||
            r.reply.id != AMQP_CHANNEL_CLOSE_METHOD)
            check_reply(r, "queue.declare");
        amqp_channel_close_ok_t close_ok = {0};
        if (amqp_send_method(conn, CH, AMQP_CHANNEL_CLOSE_OK_METHOD,
                             &close_ok) != AMQP_STATUS_OK)
            die("channel.close-ok", "failed");
        amqp_channel_open(conn, CH);
        check_reply(amqp_get_rpc_reply(conn), "channel.open");
        return false;
    }
    *messages = ok->message_count;
    *consumers = ok->consumer_count;
    return true;
}

/* A line of /proc/PID/status ("VmRSS", "VmHWM") in kB, or -1. */
static long proc_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    (void)snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':')
            kb = strtol(line + strlen(key) + 1, NULL, 10);
    (void)fclose(f);
    return kb;
}

/* head + item,item,... + tail, `size` bytes at most. */
static char *make_body(const char *head, const char *item, const char *tail,
                       size_t size, size_t *len)
{
    size_t h = strlen(head), i = strlen(item), t = strlen(tail), n = h;
    char *s = malloc(size + 1);

    if (s == NULL)
        die("body", "out of memory");
    memcpy(s, head, h);
    while (n + (n > h) + i + t <= size) {
        if (n > h)
            s[n++] = ',';
        memcpy(s + n, item, i);
        n += i;
    }
    memcpy(s + n, tail, t);
    *len = n + t;
    return s;
}

#define HEAD "{\"UUID\":\"task_big_body\",\"Name\":\"big\","

static char *shape_body(const char *shape, size_t size, size_t *len)
{
    if (strcmp(shape, "verbatim") == 0)
        return make_body(HEAD "\"Future\":[", "1", "]}", size, len);
    if (strcmp(shape, "headers") == 0)
        return make_body(HEAD "\"Headers\":{\"t\":[", "1", "]}}", size, len);
    if (strcmp(shape, "args") == 0 || strcmp(shape, "invalid") == 0) {
        char *s = make_body(HEAD "\"Args\":[{\"Type\":\"[]int64\",\"Value\":[",
                            "1", "]}]}", size, len);
        *len -= strcmp(shape, "invalid") == 0;
        return s;
    }
    die("shape", "want verbatim, headers, args or invalid");
}

/* Publishes the body to the task exchange, then waits (up to 10 minutes)
 * for the dead-letter queue to hold it; prints its reason. */
static double send_and_wait(amqp_connection_state_t conn,
                            const kiln_config *cfg, const char *body,
                            size_t len)
{
    amqp_basic_properties_t props = {0};
    amqp_bytes_t b = {len, (void *)body};
    int64_t t0 = bench_now_ns();
    uint32_t messages = 0, consumers;

    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = 2;
    props.content_type = amqp_cstring_bytes("application/json");
    if (amqp_basic_publish(conn, CH, amqp_cstring_bytes(cfg->exchange),
                           amqp_cstring_bytes(cfg->binding_key), 0, 0, &props,
                           b) != AMQP_STATUS_OK)
        die("publish", "failed");
    while (!queue_counts(conn, cfg->dead_letter_queue, &messages, &consumers) ||
           messages == 0) {
        if (bench_now_ns() - t0 > 600 * 1000000000LL)
            die("dead letter", "not there after 10 minutes");
        bench_sleep_ns(50 * 1000000);
    }
    return (double)(bench_now_ns() - t0) / 1e9;
}

static void print_reason(amqp_connection_state_t conn, const char *queue)
{
    amqp_rpc_reply_t r = amqp_basic_get(conn, CH, amqp_cstring_bytes(queue), 1);
    amqp_message_t msg;

    if (r.reply_type != AMQP_RESPONSE_NORMAL ||
        r.reply.id != AMQP_BASIC_GET_OK_METHOD ||
        amqp_read_message(conn, CH, &msg, 0).reply_type != AMQP_RESPONSE_NORMAL)
        return;
    for (int i = 0; i < msg.properties.headers.num_entries; i++) {
        const amqp_table_entry_t *e = &msg.properties.headers.entries[i];
        if (e->key.len == 13 &&
            memcmp(e->key.bytes, "x-kiln-reason", 13) == 0 &&
            e->value.kind == AMQP_FIELD_KIND_UTF8)
            printf("reason=%.*s\n", (int)e->value.value.bytes.len,
                   (const char *)e->value.value.bytes.bytes);
    }
    amqp_destroy_message(&msg);
}

int main(int argc, char **argv)
{
    const char *shape = argc > 1 ? argv[1] : "verbatim";
    size_t size = argc > 2 ? strtoul(argv[2], NULL, 10) : 16 * 1024 * 1024 - 64;
    const char *url = getenv("KILN_BROKER_URL");
    uint32_t messages, consumers = 0;
    amqp_connection_state_t conn;
    kiln_config cfg;
    kiln_error err;
    size_t len;
    char *body;
    pid_t pid;
    int status;

    if (url == NULL && (url = getenv("KILN_TEST_AMQP_URL")) != NULL)
        (void)setenv("KILN_BROKER_URL", url, 1);
    if (url == NULL)
        die("broker", "set KILN_BROKER_URL (or run under with-rabbitmq.sh)");
    kiln_config_init(&cfg);
    cfg.log_level = KILN_LOG_WARN;
    if (kiln_config_from_env(&cfg, &err) != KILN_OK)
        die("config", err.message);
    body = shape_body(shape, size, &len);
    if ((pid = fork()) < 0)
        die("fork", "failed");
    if (pid == 0)
        run_worker(&cfg);
    worker_pid = pid;
    conn = open_conn(url);
    /* The worker has declared everything once it consumes; what earlier
     * runs left behind goes first. */
    while (!queue_counts(conn, cfg.queue, &messages, &consumers) ||
           consumers == 0)
        bench_sleep_ns(50 * 1000000);
    amqp_queue_purge(conn, CH, amqp_cstring_bytes(cfg.dead_letter_queue));
    check_reply(amqp_get_rpc_reply(conn), "queue.purge");
    bench_sleep_ns(500 * 1000000);
    printf("shape=%s\nbody_bytes=%zu\nprefetch=%u\nidle_rss_kb=%ld\n", shape,
           len, cfg.prefetch, proc_kb(pid, "VmRSS"));
    double secs = send_and_wait(conn, &cfg, body, len);
    printf("peak_rss_kb=%ld\ndead_lettered_s=%.2f\n", proc_kb(pid, "VmHWM"),
           secs);
    print_reason(conn, cfg.dead_letter_queue);
    (void)kill(pid, SIGTERM);
    (void)waitpid(pid, &status, 0);
    (void)amqp_channel_close(conn, CH, AMQP_REPLY_SUCCESS);
    (void)amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    (void)amqp_destroy_connection(conn);
    free(body);
    return 0;
}
