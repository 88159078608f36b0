/*
 * consumer: runs "Print" tasks on a pool of worker threads until SIGINT or
 * SIGTERM (or, with an expected count, until that many tasks ran), then
 * drains.
 *
 *   consumer [N]           stop after N tasks; 0 or none: run until a signal;
 *                          broker settings from KILN_*
 *
 * Exit status: 0 after a complete drain, 1 for a bad setting or when the
 * pool stopped otherwise (a drain cut short by KILN_DRAIN_TIMEOUT_MS or a
 * second signal), 2 for a bad command line.
 *
 * Build: cc main.c $(pkg-config --cflags --libs kiln)
 */
#include <kiln.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct stats {
    atomic_long done;
    long expect;
    double t0;
    kiln_pool *pool;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The task: its one argument is a user record as JSON text. */
static kiln_err print(kiln_task_ctx *ctx, void *user)
{
    struct stats *st = user;
    const char *record;
    kiln_error err;
    long n;

    if (kiln_signature_arg_string(kiln_task_signature(ctx), 0, &record, &err) !=
        KILN_OK)
        return kiln_task_fail(ctx, "want a user record: %s", err.message);
    kiln_task_log(ctx, KILN_LOG_DEBUG, "user record %s", record);
    /* A typed result, recorded when a store is configured. */
    if (kiln_task_add_result_int(ctx, KILN_TYPE_INT64, (int64_t)strlen(record),
                                 &err) != KILN_OK)
        return kiln_task_fail(ctx, "result: %s", err.message);
    n = atomic_fetch_add(&st->done, 1) + 1;
    if (n == 1)
        st->t0 = now_s();
    if (n % 1000 == 0 || n == st->expect)
        fprintf(stderr, "\rconsumer: %ld tasks run", n);
    if (n == st->expect)
        kiln_pool_stop(st->pool); /* safe from inside a task */
    return KILN_OK;
}

/* A count: decimal digits only, at most 10^9. */
static bool parse_count(const char *s, long *out)
{
    long v = 0;

    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > 100000000)
            return false;
        v = v * 10 + (*s - '0');
    }
    if (v > 1000000000)
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    struct stats st = {.expect = 0};
    kiln_config cfg;
    kiln_error err;
    kiln_err rc;

    if (argc > 2 || (argc == 2 && !parse_count(argv[1], &st.expect))) {
        fprintf(stderr, "usage: consumer [N]   (N: tasks to run, 0 or none: "
                        "until SIGINT or SIGTERM)\n");
        return 2;
    }
    kiln_config_init(&cfg);
    if (kiln_config_from_env(&cfg, &err) != KILN_OK ||
        (st.pool = kiln_pool_new(&cfg, 0, "consumer", &err)) == NULL ||
        kiln_pool_register(st.pool, "Print", print, &st, NULL, &err) !=
            KILN_OK) {
        fprintf(stderr, "consumer: %s\n", err.message);
        kiln_pool_free(st.pool);
        return 1;
    }
    rc = kiln_pool_start(st.pool, &err); /* blocks until stopped */
    long done = atomic_load(&st.done);
    double secs = done > 0 ? now_s() - st.t0 : 0.0;
    fprintf(stderr, "\nconsumer: %ld tasks in %.2f s, %.0f tasks/s\n", done,
            secs, secs > 0 ? (double)done / secs : 0.0);
    if (rc != KILN_OK)
        fprintf(stderr, "consumer: %s: %s\n", kiln_strerror(rc), err.message);
    kiln_pool_free(st.pool);
    return rc == KILN_OK ? 0 : 1;
}
