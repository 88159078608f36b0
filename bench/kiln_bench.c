/* kiln_bench: kiln's side of `make bench`, through the public API only.
 *
 *   kiln_bench send N OUT single THREADS   kiln_pool_send_task from THREADS
 *                                          threads at once
 *   kiln_bench send N OUT batch SIZE [T]   kiln_pool_send_tasks, SIZE a call,
 *                                          from T threads (default 1)
 *   kiln_bench send N OUT paced RATE       RATE tasks/s from 4 threads: every
 *                                          1 ms each sends the tasks due as
 *                                          one batch
 *   kiln_bench work N OUT CONCURRENCY      a worker pool that runs N "noop"
 *                                          tasks, then drains and exits
 *
 * Every task is "noop" with one string argument: the ~200-byte user record
 * of bench.h, which carries its send time; the task reads it when it starts
 * and the worker writes the send-to-start latency percentiles. Settings
 * (broker, queue, prefetch, store) come from the KILN_* environment.
 * Results go to OUT as key=value lines. Not part of the library.
 */
#include "bench.h"

#include <kiln.h>
#include <kiln/store_mongo.h>
#include <pthread.h>
#include <stdatomic.h>

struct sender {
    kiln_pool *pool;
    long n;
    long batch; /* tasks per kiln_pool_send_tasks call; 0: single calls */
    atomic_long next;
};

struct worker {
    kiln_pool *pool;
    long n;
    atomic_long done;
    atomic_llong first_ns, last_ns;
    struct bench_hist lat;         /* send-to-start latency */
    char last_uuid[KILN_UUID_LEN]; /* of the n-th task, for the store check */
};

static _Noreturn void die(const char *what, const kiln_error *err)
{
    fprintf(stderr, "kiln_bench: %s: %s\n", what, err->message);
    exit(1);
}

static kiln_signature *make_task(long i, int64_t sent_ns)
{
    char buf[BENCH_PAYLOAD_LEN + 1];
    kiln_error err;
    kiln_signature *sig = kiln_signature_new("noop", &err);

    (void)bench_payload(buf, i, sent_ns);
    if (sig == NULL ||
        kiln_signature_add_arg_string(sig, "user", buf, &err) != KILN_OK)
        die("signature", &err);
    return sig;
}

static kiln_pool *open_pool(kiln_config *cfg, unsigned concurrency,
                            const char *name)
{
    kiln_error err;
    kiln_pool *pool;

    kiln_config_init(cfg);
    if (kiln_config_from_env(cfg, &err) != KILN_OK ||
        (pool = kiln_pool_new(cfg, concurrency, name, &err)) == NULL)
        die("pool", &err);
    return pool;
}

/* Sends `count` (at most 1000) tasks numbered from `first` as one
 * kiln_pool_send_tasks call. */
static void send_batch(kiln_pool *pool, long first, long count)
{
    kiln_signature *sigs[1000] = {NULL};
    kiln_error err;
    size_t k = 0;

    for (long i = first; i < first + count; i++)
        sigs[k++] = make_task(i, bench_now_ns());
    if (kiln_pool_send_tasks(pool, (const kiln_signature *const *)sigs, k, NULL,
                             &err) != KILN_OK)
        die("send batch", &err);
    for (size_t j = 0; j < k; j++)
        kiln_signature_free(sigs[j]);
}

/* One sending thread: takes the next task (or batch) until n are sent. */
static void *send_loop(void *arg)
{
    struct sender *s = arg;
    long step = s->batch > 0 ? s->batch : 1, i;
    kiln_error err;

    while ((i = atomic_fetch_add(&s->next, step)) < s->n) {
        long k = i + step <= s->n ? step : s->n - i;
        if (s->batch > 0) {
            send_batch(s->pool, i, k);
            continue;
        }
        kiln_signature *sig = make_task(i, bench_now_ns());
        if (kiln_pool_send_task(s->pool, sig, &err) != KILN_OK)
            die("send", &err);
        kiln_signature_free(sig);
    }
    return NULL;
}

/* Runs `threads` send_loop threads. */
static int send_threads(struct sender *s, size_t threads)
{
    pthread_t t[64];

    threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    for (size_t i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, send_loop, s) != 0)
            return 1;
    for (size_t i = 0; i < threads; i++)
        (void)pthread_join(t[i], NULL);
    return 0;
}

/* The paced sender: PACERS threads, each sending its share of the rate
 * as one batch of the tasks due every millisecond, so a sender waiting for
 * its confirms never holds the others back (as in a service where many
 * threads send). */
#define PACERS 4

struct pacer {
    kiln_pool *pool;
    int id;
    double rate; /* tasks/s of this thread */
    int64_t t0;
    long n;
    pthread_t thread;
};

static void *paced(void *arg)
{
    struct pacer *p = arg;

    for (long sent = 0; sent < p->n;) {
        long due = (long)((double)(bench_now_ns() - p->t0) * p->rate / 1e9) + 1;
        due = due < p->n ? due : p->n;
        if (due - sent > 1000)
            due = sent + 1000;
        if (due > sent) {
            send_batch(p->pool, sent * PACERS + p->id, due - sent);
            sent = due;
        } else {
            bench_sleep_ns(1000000);
        }
    }
    return NULL;
}

static int send_main(long n, const char *out, const char *mode, double arg,
                     size_t threads)
{
    kiln_config cfg;
    struct sender s = {.pool = open_pool(&cfg, 1, "bench-sender"), .n = n};
    int64_t t0 = bench_now_ns();

    if (strcmp(mode, "single") == 0) {
        if (send_threads(&s, arg >= 1 ? (size_t)arg : 1) != 0)
            return 1;
    } else if (strcmp(mode, "batch") == 0) {
        s.batch = arg >= 1 && arg <= 1000 ? (long)arg : 500;
        if (send_threads(&s, threads) != 0)
            return 1;
    } else if (strcmp(mode, "paced") == 0 && arg > 0) {
        struct pacer p[PACERS];
        for (int j = 0; j < PACERS; j++) {
            p[j] = (struct pacer){
                s.pool, j, arg / PACERS, t0, n / PACERS + (j < n % PACERS), 0};
            if (pthread_create(&p[j].thread, NULL, paced, &p[j]) != 0)
                return 1;
        }
        for (int j = 0; j < PACERS; j++)
            (void)pthread_join(p[j].thread, NULL);
    } else {
        fprintf(stderr, "kiln_bench: send mode must be single, batch or "
                        "paced RATE>0\n");
        return 2;
    }
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    kiln_pool_free(s.pool);
    bench_result(out, "sent=%ld\nsecs=%.3f\nrate=%.0f\nstart_ns=%lld\n", n,
                 secs, (double)n / secs, (long long)t0);
    return 0;
}

/* The benchmark task: note the start time and the send time it carries. */
static kiln_err noop(kiln_task_ctx *ctx, void *user)
{
    struct worker *w = user;
    int64_t now = bench_now_ns(), sent = 0;
    const char *rec;
    long long zero = 0;

    if (kiln_signature_arg_string(kiln_task_signature(ctx), 0, &rec, NULL) ==
        KILN_OK)
        sent = bench_payload_sent_ns(rec, strlen(rec));
    long k = atomic_fetch_add(&w->done, 1);
    (void)atomic_compare_exchange_strong(&w->first_ns, &zero, now);
    if (sent > 0)
        bench_hist_add(&w->lat, now - sent);
    if (k + 1 == w->n) {
        (void)snprintf(w->last_uuid, sizeof(w->last_uuid), "%s",
                       kiln_task_uuid(ctx));
        atomic_store(&w->last_ns, now);
        kiln_pool_stop(w->pool); /* drains: the last acks still go out */
    }
    return KILN_OK;
}

/* With the store on, the state recorded for the last task proves the
 * store was written (a pool that ignored KILN_STORE leaves nothing). */
static void store_check(const kiln_config *cfg, const char *uuid,
                        const char *out)
{
    kiln_error err;
    kiln_result *res = NULL;
    kiln_store *st = kiln_store_new(cfg, &err);

    if (st != NULL &&
        kiln_store_wait_result(st, uuid, 5000, &res, &err) == KILN_OK)
        bench_result(out, "store_state=%s\n",
                     kiln_task_state_name(kiln_result_state(res)));
    else
        bench_result(out, "store_state=none (%s)\n", err.message);
    kiln_result_free(res);
    kiln_store_free(st);
}

static int work_main(long n, const char *out, unsigned concurrency)
{
    static struct worker w;
    kiln_config cfg;
    kiln_error err;

    w.n = n;
    w.pool = open_pool(&cfg, concurrency, "bench-worker");
    if (kiln_pool_register(w.pool, "noop", noop, &w, NULL, &err) != KILN_OK ||
        kiln_pool_start(w.pool, &err) != KILN_OK)
        die("worker", &err);
    kiln_pool_free(w.pool);
    /* Tasks that started while the pool drained after the n-th count in
     * `runs`, not in the rate. */
    bench_result(out, "tasks=%ld\nruns=%ld\nfirst_ns=%lld\nlast_ns=%lld\n", n,
                 atomic_load(&w.done), atomic_load(&w.first_ns),
                 atomic_load(&w.last_ns));
    bench_hist_result(out, &w.lat);
    if (cfg.store == KILN_STORE_MONGODB)
        store_check(&cfg, w.last_uuid, out);
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 0;

    if (argc >= 5 && n > 0 && strcmp(argv[1], "work") == 0)
        return work_main(n, argv[3], (unsigned)strtoul(argv[4], NULL, 10));
    if (argc >= 5 && n > 0 && strcmp(argv[1], "send") == 0)
        return send_main(n, argv[3], argv[4],
                         argc > 5 ? strtod(argv[5], NULL) : 0.0,
                         argc > 6 ? strtoul(argv[6], NULL, 10) : 1);
    fprintf(stderr, "usage: kiln_bench send N OUT single THREADS\n"
                    "       kiln_bench send N OUT batch SIZE [THREADS]\n"
                    "       kiln_bench send N OUT paced RATE\n"
                    "       kiln_bench work N OUT CONCURRENCY\n");
    return 2;
}
