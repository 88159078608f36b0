/*
 * publisher: sends N "Print" tasks, each with a user record as a JSON
 * string argument, and waits until the broker has confirmed every one.
 *
 *   publisher [N]          N (at least 1) defaults to 10; broker settings
 *                          from KILN_*; prints the last task's UUID
 *
 * Exit status: 0 once the broker confirmed every task, 1 for a bad
 * setting or a task not confirmed, 2 for a bad command line.
 *
 * Build: cc main.c $(pkg-config --cflags --libs kiln)
 */
#include <kiln.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 500 /* tasks per kiln_pool_send_tasks call */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One "Print" task whose argument is a user record, as in paota's example. */
static kiln_signature *print_task(long i, kiln_error *err)
{
    char user[160];
    kiln_signature *sig = kiln_signature_new("Print", err);

    snprintf(user, sizeof(user),
             "{\"id\":\"%ld\",\"name\":\"user %ld\",\"email\":"
             "\"user%ld@example.com\"}",
             i, i, i);
    if (sig != NULL &&
        kiln_signature_add_arg_string(sig, "user", user, err) != KILN_OK) {
        kiln_signature_free(sig);
        return NULL;
    }
    return sig;
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
    long n = 10, sent = 0;
    kiln_signature *batch[BATCH];
    char last[KILN_UUID_LEN] = "";
    kiln_config cfg;
    kiln_error err;
    kiln_pool *pool;
    double t0 = now_s();

    if (argc > 2 || (argc == 2 && (!parse_count(argv[1], &n) || n == 0))) {
        fprintf(stderr, "usage: publisher [N]   (N: tasks to send, at least 1; "
                        "10 when left out)\n");
        return 2;
    }
    kiln_config_init(&cfg);
    if (kiln_config_from_env(&cfg, &err) != KILN_OK ||
        (pool = kiln_pool_new(&cfg, 0, "publisher", &err)) == NULL) {
        fprintf(stderr, "publisher: %s\n", err.message);
        return 1;
    }
    while (sent < n) {
        size_t k = 0;
        while (k < BATCH && sent + (long)k < n &&
               (batch[k] = print_task(sent + (long)k, &err)) != NULL)
            k++;
        kiln_err rc = k == 0 ? err.code
                             : kiln_pool_send_tasks(
                                   pool, (const kiln_signature *const *)batch,
                                   k, NULL, &err);
        if (k > 0)
            snprintf(last, sizeof(last), "%s",
                     kiln_signature_uuid(batch[k - 1]));
        for (size_t j = 0; j < k; j++)
            kiln_signature_free(batch[j]);
        if (rc != KILN_OK) {
            fprintf(stderr, "\npublisher: %s: %s\n", kiln_strerror(rc),
                    err.message);
            kiln_pool_free(pool);
            return 1;
        }
        sent += (long)k;
        fprintf(stderr, "\rpublisher: %ld/%ld sent and confirmed", sent, n);
    }
    double secs = now_s() - t0;
    fprintf(stderr, "\npublisher: %ld tasks in %.2f s, %.0f tasks/s\n", sent,
            secs, secs > 0 ? (double)sent / secs : 0.0);
    /* The last task's UUID, for `status` (examples/status) to look up. */
    printf("%s\n", last);
    kiln_pool_free(pool);
    return 0;
}
