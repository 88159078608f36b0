/*
 * A worker process for the worker-pool integration tests: a kiln pool
 * configured from the environment (KILN_* plus the KILN_IT_* variables of
 * pool_it_shared.h) that runs until SIGTERM or SIGINT and exits 0 when
 * kiln_pool_start reports a complete drain.
 *
 * Tasks:
 *   it.record    appends "F <uuid> <pid> <ms>" to the task log after
 *                sleeping KILN_IT_SLEEP_MS (and "S ..." before, with
 *                KILN_IT_LOG_STARTS=1), and counts how many run at once
 *                in the counters file;
 *   it.want_int  fails unless argument 0 is an int64;
 *   it.fail, it.results, it.flaky, it.crash, it.eta: see
 *                pool_it_shared.h.
 *
 * With KILN_IT_EXIT_ON_TIMEOUT=1, a drain that times out ends the process
 * with _exit(4) at once instead of waiting in kiln_pool_free for the
 * tasks still running.
 */
#include "test/support/pool_it_shared.h"

#include <kiln.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/prctl.h>
#include <unistd.h>

/* The test hook of workerpool/pool.h; this program links the static
 * library, which has it. */
void kiln__pool_hold_acks(kiln_pool *p, bool hold);

_Static_assert(ATOMIC_LONG_LOCK_FREE == 2,
               "the counters are shared between processes");

typedef struct worker {
    int log_fd; /* -1: no task log */
    bool log_starts;
    unsigned sleep_ms;
    it_counters *counters; /* NULL: not counting */
    atomic_long ran;
} worker;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* One line, one write: O_APPEND keeps lines of concurrent tasks whole.
 * `extra` (may be NULL) is appended after the time. */
static void log_line(const worker *w, char kind, const char *uuid,
                     const char *extra)
{
    char line[256];
    int n;

    if (w->log_fd < 0)
        return;
    n = snprintf(line, sizeof(line), "%c %s %ld %lld%s%s\n", kind, uuid,
                 (long)getpid(), now_ms(), extra != NULL ? " " : "",
                 extra != NULL ? extra : "");
    if (n > 0 && (size_t)n < sizeof(line) &&
        write(w->log_fd, line, (size_t)n) != (ssize_t)n)
        (void)fprintf(stderr, "prog_worker: task log write failed\n");
}

static void log_event(const worker *w, char kind, const char *uuid)
{
    log_line(w, kind, uuid, NULL);
}

static void count_in(it_counters *c)
{
    long now, max;

    if (c == NULL)
        return;
    now = atomic_fetch_add(&c->running, 1) + 1;
    atomic_fetch_add(&c->started, 1);
    max = atomic_load(&c->max_running);
    while (now > max &&
           !atomic_compare_exchange_weak(&c->max_running, &max, now))
        ;
}

static void count_out(it_counters *c)
{
    if (c == NULL)
        return;
    atomic_fetch_sub(&c->running, 1);
    atomic_fetch_add(&c->finished, 1);
}

static kiln_err task_record(kiln_task_ctx *ctx, void *user)
{
    worker *w = user;
    const char *uuid = kiln_task_uuid(ctx);

    if (w->log_starts)
        log_event(w, 'S', uuid);
    count_in(w->counters);
    if (w->sleep_ms > 0)
        sleep_ms(w->sleep_ms);
    count_out(w->counters);
    log_event(w, 'F', uuid);
    atomic_fetch_add(&w->ran, 1);
    return KILN_OK;
}

static kiln_err task_sleep(kiln_task_ctx *ctx, void *user)
{
    worker *w = user;
    const char *uuid = kiln_task_uuid(ctx);
    int64_t ms = 0;

    log_event(w, 'S', uuid);
    count_in(w->counters);
    if (kiln_signature_arg_int64(kiln_task_signature(ctx), 0, &ms, NULL) ==
            KILN_OK &&
        ms > 0)
        sleep_ms((unsigned)ms);
    count_out(w->counters);
    log_event(w, 'F', uuid);
    atomic_fetch_add(&w->ran, 1);
    return KILN_OK;
}

static kiln_err task_want_int(kiln_task_ctx *ctx, void *user)
{
    int64_t v;
    kiln_error err;

    (void)user;
    if (kiln_signature_arg_int64(kiln_task_signature(ctx), 0, &v, &err) !=
        KILN_OK)
        return kiln_task_fail(ctx, "it.want_int: argument 0: %s", err.message);
    return KILN_OK;
}

static kiln_err task_fail(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_fail(ctx, "it.fail: asked to fail");
}

/* One result of every scalar type, at the edges of each range. */
static kiln_err task_results(kiln_task_ctx *ctx, void *user)
{
    static const unsigned char bytes[] = {0, 1, 0x7f, 0x80, 0xff};
    kiln_error err;

    (void)user;
#define ADD(call)                                                      \
    do {                                                               \
        if ((call) != KILN_OK)                                         \
            return kiln_task_fail(ctx, "it.results: %s", err.message); \
    } while (0)
    ADD(kiln_task_add_result_bool(ctx, true, &err));
    ADD(kiln_task_add_result_int(ctx, KILN_TYPE_INT, IT_RESULT_INT, &err));
    ADD(kiln_task_add_result_int(ctx, KILN_TYPE_INT8, INT8_MIN, &err));
    ADD(kiln_task_add_result_int(ctx, KILN_TYPE_INT16, INT16_MIN, &err));
    ADD(kiln_task_add_result_int(ctx, KILN_TYPE_INT32, INT32_MIN, &err));
    ADD(kiln_task_add_result_int(ctx, KILN_TYPE_INT64, INT64_MIN, &err));
    ADD(kiln_task_add_result_uint(ctx, KILN_TYPE_UINT, IT_RESULT_UINT64, &err));
    ADD(kiln_task_add_result_uint(ctx, KILN_TYPE_UINT8, UINT8_MAX, &err));
    ADD(kiln_task_add_result_uint(ctx, KILN_TYPE_UINT16, UINT16_MAX, &err));
    ADD(kiln_task_add_result_uint(ctx, KILN_TYPE_UINT32, UINT32_MAX, &err));
    ADD(kiln_task_add_result_uint(ctx, KILN_TYPE_UINT64, IT_RESULT_UINT64,
                                  &err));
    ADD(kiln_task_add_result_float(ctx, KILN_TYPE_FLOAT32, IT_RESULT_FLOAT,
                                   &err));
    ADD(kiln_task_add_result_float(ctx, KILN_TYPE_FLOAT64, IT_RESULT_FLOAT,
                                   &err));
    ADD(kiln_task_add_result_string(ctx, IT_RESULT_STRING, &err));
    ADD(kiln_task_add_result_bytes(ctx, bytes, sizeof(bytes), &err));
#undef ADD
    return KILN_OK;
}

/* Runs of it.flaky per UUID in this process. */
#define FLAKY_MAX 64
static struct {
    char uuid[KILN_UUID_LEN];
    long runs;
} flaky_runs[FLAKY_MAX];
static pthread_mutex_t flaky_mu = PTHREAD_MUTEX_INITIALIZER;

static long flaky_count(const char *uuid)
{
    long runs = -1;

    pthread_mutex_lock(&flaky_mu);
    for (size_t i = 0; i < FLAKY_MAX && runs < 0; i++) {
        if (flaky_runs[i].uuid[0] == '\0')
            (void)snprintf(flaky_runs[i].uuid, sizeof(flaky_runs[i].uuid), "%s",
                           uuid);
        if (strcmp(flaky_runs[i].uuid, uuid) == 0)
            runs = ++flaky_runs[i].runs;
    }
    pthread_mutex_unlock(&flaky_mu);
    return runs;
}

static kiln_err task_flaky(kiln_task_ctx *ctx, void *user)
{
    worker *w = user;
    const kiln_signature *sig = kiln_task_signature(ctx);
    const char *uuid = kiln_task_uuid(ctx);
    int64_t fails = INT64_MAX;
    char counters[64];
    long run;

    (void)snprintf(counters, sizeof(counters), "%d %d %d %u",
                   kiln_signature_retry_count(sig),
                   kiln_signature_retry_timeout(sig),
                   kiln_signature_retries_done(sig), kiln_task_attempt(ctx));
    log_line(w, 'R', uuid, counters);
    if (kiln_signature_arg_count(sig) > 0 &&
        kiln_signature_arg_int64(sig, 0, &fails, NULL) != KILN_OK)
        return kiln_task_fail(ctx, "it.flaky: argument 0 is not an int64");
    if (w->sleep_ms > 0)
        sleep_ms(w->sleep_ms);
    run = flaky_count(uuid);
    if (run > fails)
        return KILN_OK;
    return kiln_task_fail(ctx, "it.flaky: run %ld of this process", run);
}

static kiln_err task_crash(kiln_task_ctx *ctx, void *user)
{
    log_event(user, 'K', kiln_task_uuid(ctx));
    (void)raise(SIGKILL);
    return KILN_OK; /* not reached */
}

static kiln_err task_eta(kiln_task_ctx *ctx, void *user)
{
    struct timespec ts;
    int64_t eta = 0, now;
    char late[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (!kiln_signature_eta(kiln_task_signature(ctx), &eta))
        eta = now;
    (void)snprintf(late, sizeof(late), "%lld", (long long)(now - eta) / 1000);
    log_line(user, 'E', kiln_task_uuid(ctx), late);
    return KILN_OK;
}

static unsigned env_uint(const char *name)
{
    const char *v = getenv(name); /* NOLINT(concurrency-mt-unsafe): main
                                     thread, before any other starts */

    return v != NULL ? (unsigned)strtoul(v, NULL, 10) : 0;
}

static const char *env_str(const char *name)
{
    const char *v = getenv(name); /* NOLINT(concurrency-mt-unsafe) */

    return v != NULL && v[0] != '\0' ? v : NULL;
}

static int setup(worker *w)
{
    const char *log = env_str(IT_ENV_LOG);
    const char *counters = env_str(IT_ENV_COUNTERS);

    w->log_fd = -1;
    w->log_starts = env_uint(IT_ENV_LOG_STARTS) == 1;
    w->sleep_ms = env_uint(IT_ENV_SLEEP_MS);
    if (log != NULL &&
        (w->log_fd =
             open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0) {
        (void)fprintf(stderr, "prog_worker: cannot open %s\n", log);
        return -1;
    }
    if (counters != NULL) {
        int fd = open(counters, O_RDWR | O_CLOEXEC);
        void *m;

        if (fd < 0) {
            (void)fprintf(stderr, "prog_worker: cannot open %s\n", counters);
            return -1;
        }
        m = mmap(NULL, sizeof(it_counters), PROT_READ | PROT_WRITE, MAP_SHARED,
                 fd, 0);
        close(fd);
        if (m == MAP_FAILED) {
            (void)fprintf(stderr, "prog_worker: cannot map %s\n", counters);
            return -1;
        }
        w->counters = m;
    }
    return 0;
}

static void cleanup(worker *w)
{
    if (w->counters != NULL)
        munmap(w->counters, sizeof(it_counters));
    if (w->log_fd >= 0)
        close(w->log_fd);
}

/* The test that started this process may be killed (a timeout): go with
 * it rather than stay behind. */
static int it_die_with_parent(void)
{
    const char *want =
        getenv(IT_ENV_PARENT); /* NOLINT(concurrency-mt-unsafe) */

    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return -1;
    if (want != NULL && strtol(want, NULL, 10) != (long)getppid())
        return -1; /* the parent is already gone */
    return 0;
}

int main(void)
{
    static worker w;
    const char *name = env_str(IT_ENV_NAME);
    kiln_config cfg;
    kiln_error err = {KILN_OK, ""};
    kiln_pool *pool = NULL;
    kiln_err rc = KILN_EINVAL;
    bool exit_on_timeout = false;
    const kiln_task_def tasks[] = {
        {IT_TASK_RECORD, task_record, &w, NULL},
        {IT_TASK_WANT_INT, task_want_int, NULL, NULL},
        {IT_TASK_FAIL, task_fail, NULL, NULL},
        {IT_TASK_RESULTS, task_results, NULL, NULL},
        {IT_TASK_FLAKY, task_flaky, &w, NULL},
        {IT_TASK_CRASH, task_crash, &w, NULL},
        {IT_TASK_ETA, task_eta, &w, NULL},
        {IT_TASK_SLEEP, task_sleep, &w, NULL},
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    if (it_die_with_parent() != 0)
        return 3;
    if (setup(&w) != 0)
        goto out;
    kiln_config_init(&cfg);
    if ((rc = kiln_config_from_env(&cfg, &err)) != KILN_OK)
        goto out;
    pool = kiln_pool_new(&cfg, 0, name != NULL ? name : "it-worker", &err);
    if (pool == NULL) {
        rc = err.code;
        goto out;
    }
    if ((rc = kiln_pool_register_table(
             pool, tasks, sizeof(tasks) / sizeof(tasks[0]), &err)) != KILN_OK)
        goto out;
    if (env_uint(IT_ENV_HOLD_ACKS) == 1)
        kiln__pool_hold_acks(pool, true);
    exit_on_timeout = env_uint(IT_ENV_EXIT_ON_TIMEOUT) == 1;
    printf("prog_worker %ld: starting on %s, concurrency %u, prefetch %u\n",
           (long)getpid(), cfg.queue, cfg.concurrency, cfg.prefetch);
    rc = kiln_pool_start(pool, &err); /* until SIGTERM or SIGINT */
    if (rc == KILN_ETIMEDOUT && exit_on_timeout) {
        /* A task outlived the drain: its delivery is back in the queue
         * already, so end here rather than wait in kiln_pool_free; _exit,
         * not exit, since that task's thread still runs. */
        printf("prog_worker %ld: %s; exiting without kiln_pool_free\n",
               (long)getpid(), err.message);
        (void)fflush(stdout);
        _exit(IT_EXIT_ABANDONED);
    }
out:
    printf("prog_worker %ld: %s%s%s; ran %ld tasks\n", (long)getpid(),
           rc == KILN_OK ? "drained" : kiln_strerror(rc),
           rc == KILN_OK ? "" : ": ", rc == KILN_OK ? "" : err.message,
           atomic_load(&w.ran));
    kiln_pool_free(pool);
    cleanup(&w);
    return rc == KILN_OK ? 0 : 1;
}
