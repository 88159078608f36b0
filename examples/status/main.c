/*
 * status: what became of a task, read from the MongoDB task store that
 * producers and workers write (KILN_STORE=mongodb).
 *
 *   status UUID [TIMEOUT_MS]   waits up to TIMEOUT_MS (default 5000) for
 *                              the task to finish, then prints its record;
 *                              store settings from KILN_*
 *
 * Exit status: 0 for SUCCESS, 1 for FAILURE or any error, 2 for a bad
 * command line, 3 when the task was not finished at the deadline.
 *
 * Build: cc main.c $(pkg-config --cflags --libs kiln)
 */
#include <kiln.h>
#include <kiln/store_mongo.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

static void print_results(const kiln_signature *v)
{
    size_t n = kiln_signature_arg_count(v);

    for (size_t i = 0; i < n; i++) {
        kiln_type t;
        const char *s;
        int64_t i64;

        if (kiln_signature_arg_type(v, i, &t, NULL) != KILN_OK)
            continue;
        if (kiln_signature_arg_string(v, i, &s, NULL) == KILN_OK)
            printf("  result %zu: %s \"%s\"\n", i, kiln_type_name(t), s);
        else if (kiln_signature_arg_int64(v, i, &i64, NULL) == KILN_OK)
            printf("  result %zu: %s %lld\n", i, kiln_type_name(t),
                   (long long)i64);
        else
            printf("  result %zu: %s\n", i, kiln_type_name(t));
    }
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
    long timeout = 5000;
    kiln_config cfg;
    kiln_error err;
    kiln_store *st;
    kiln_result *res;
    kiln_err rc;
    int status;

    if (argc < 2 || argc > 3 || argv[1][0] == '\0' ||
        (argc == 3 && !parse_count(argv[2], &timeout))) {
        fprintf(stderr, "usage: status UUID [TIMEOUT_MS]   (TIMEOUT_MS: "
                        "5000 when left out)\n");
        return 2;
    }
    kiln_config_init(&cfg);
    if (kiln_config_from_env(&cfg, &err) != KILN_OK ||
        (st = kiln_store_new(&cfg, &err)) == NULL) {
        fprintf(stderr, "status: %s\n", err.message);
        return 1;
    }
    rc = kiln_store_wait_result(st, argv[1], (unsigned)timeout, &res, &err);
    if (rc == KILN_ETIMEDOUT || rc != KILN_OK) {
        fprintf(stderr, "status: %s: %s\n", kiln_strerror(rc), err.message);
        kiln_store_free(st);
        return rc == KILN_ETIMEDOUT ? 3 : 1;
    }
    printf("%s %s: %s%s%s\n", kiln_result_uuid(res), kiln_result_task_name(res),
           kiln_task_state_name(kiln_result_state(res)),
           kiln_result_error(res)[0] != '\0' ? ": " : "",
           kiln_result_error(res));
    print_results(kiln_result_values(res));
    status = kiln_result_state(res) == KILN_STATE_SUCCESS ? 0 : 1;
    kiln_result_free(res);
    kiln_store_free(st);
    return status;
}
