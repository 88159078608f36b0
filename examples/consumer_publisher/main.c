/*
 * consumer_publisher: a worker whose task sends another task. "Print"
 * tasks are run; each one sends a follow-up "Audit" task with the user's
 * id through the same pool, and "Audit" tasks are run here too.
 *
 *   consumer_publisher     run until SIGINT or SIGTERM; no arguments; broker
 *                          settings from KILN_*
 *
 * Exit status: 0 after a complete drain, 1 for a bad setting or when the
 * pool stopped otherwise (a drain cut short by KILN_DRAIN_TIMEOUT_MS or a
 * second signal), 2 for a bad command line.
 *
 * Build: cc main.c $(pkg-config --cflags --libs kiln)
 */
#include <kiln.h>

#include <stdio.h>
#include <string.h>

static kiln_err print(kiln_task_ctx *ctx, void *user)
{
    kiln_pool *pool = user;
    const char *record;
    kiln_signature *audit;
    kiln_error err;
    kiln_err rc;

    if (kiln_signature_arg_string(kiln_task_signature(ctx), 0, &record, &err) !=
        KILN_OK)
        return kiln_task_fail(ctx, "want a user record: %s", err.message);
    kiln_task_log(ctx, KILN_LOG_INFO, "user record %s", record);
    /* Sending from inside a task is safe; it waits for the confirm, so
     * the follow-up is on the broker before this task is acked. */
    if ((audit = kiln_signature_new("Audit", &err)) == NULL)
        return kiln_task_fail(ctx, "%s", err.message);
    rc = kiln_signature_add_arg_string(audit, "printed_by", kiln_task_uuid(ctx),
                                       &err);
    if (rc == KILN_OK)
        rc = kiln_pool_send_task(pool, audit, &err);
    kiln_signature_free(audit);
    return rc == KILN_OK ? KILN_OK
                         : kiln_task_fail(ctx, "audit: %s", err.message);
}

static kiln_err audit(kiln_task_ctx *ctx, void *user)
{
    const char *by;

    (void)user;
    if (kiln_signature_arg_string(kiln_task_signature(ctx), 0, &by, NULL) !=
        KILN_OK)
        return kiln_task_fail(ctx, "want the printing task's id");
    kiln_task_log(ctx, KILN_LOG_INFO, "audited print by %s", by);
    return KILN_OK;
}

int main(int argc, char **argv)
{
    kiln_config cfg;
    kiln_error err;
    kiln_pool *pool = NULL;
    kiln_err rc = KILN_EINVAL;

    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: consumer_publisher   (no arguments)\n");
        return 2;
    }
    kiln_config_init(&cfg);
    if (kiln_config_from_env(&cfg, &err) == KILN_OK &&
        (pool = kiln_pool_new(&cfg, 0, "consumer_publisher", &err)) != NULL) {
        const kiln_task_def tasks[] = {{"Print", print, pool, NULL},
                                       {"Audit", audit, NULL, NULL}};
        rc = kiln_pool_register_table(pool, tasks, 2, &err);
        if (rc == KILN_OK)
            rc = kiln_pool_start(pool, &err);
    }
    if (rc != KILN_OK)
        fprintf(stderr, "consumer_publisher: %s\n", err.message);
    kiln_pool_free(pool);
    return rc == KILN_OK ? 0 : 1;
}
