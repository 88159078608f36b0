/*
 * The kiln worker of the interop tests: a kiln_pool configured from KILN_*
 * (the same settings the Go peer reads) that runs
 *
 *   iop.all_types  checks its 29 arguments exactly against iop.h's table,
 *                  then stores kiln's typed results;
 *   iop.retry      records the counters the task arrived with;
 *   iop.raw        a paota header-mode task: checks the raw body and the
 *                  metadata that came in AMQP headers;
 *   iop.eta        records when it ran;
 *
 * and appends a RUN line (iop.h) to IOP_OUT for each. Runs until SIGTERM.
 */
#include "test/support/pool_it_shared.h"
#include "test/interop/iop.h"

#include <kiln.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static const char *out_path;

static void record_run(const kiln_task_ctx *ctx, const char *verdict)
{
    const kiln_signature *sig = kiln_task_signature(ctx);
    int64_t eta_ns;
    long long eta_ms = -1;

    if (kiln_signature_eta(sig, &eta_ns))
        eta_ms = (long long)(eta_ns / 1000000);
    iop_record(out_path, "RUN %s %s %lld %d %d %d %lld %s", kiln_task_name(ctx),
               kiln_task_uuid(ctx), iop_unix_ms(),
               kiln_signature_retry_count(sig),
               kiln_signature_retry_timeout(sig),
               kiln_signature_retries_done(sig), eta_ms, verdict);
}

static kiln_err task_all_types(kiln_task_ctx *ctx, void *user)
{
    char why[512], verdict[600];
    kiln_error err = {0};

    (void)user;
    if (!iop_check_all(kiln_task_signature(ctx), why, sizeof(why))) {
        (void)snprintf(verdict, sizeof(verdict), "bad: %s", why);
        record_run(ctx, verdict);
        return kiln_task_fail(ctx, "%s", why);
    }
    record_run(ctx, "ok");
    if (kiln_task_add_result_int(ctx, KILN_TYPE_INT64, IOP_KILN_RESULT_INT,
                                 &err) != KILN_OK ||
        kiln_task_add_result_float(ctx, KILN_TYPE_FLOAT64,
                                   IOP_KILN_RESULT_FLOAT, &err) != KILN_OK ||
        kiln_task_add_result_string(ctx, IOP_UTF8, &err) != KILN_OK ||
        kiln_task_add_result_bool(ctx, IOP_KILN_RESULT_BOOL, &err) != KILN_OK)
        return kiln_task_fail(ctx, "results: %s", err.message);
    return KILN_OK;
}

static kiln_err task_record(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    record_run(ctx, "ok");
    return KILN_OK;
}

/* What paota's header-mode sender put in (peer/paota.go, paotaRawSend). */
static kiln_err task_raw(kiln_task_ctx *ctx, void *user)
{
    const kiln_signature *sig = kiln_task_signature(ctx);
    const char *want = getenv(IOP_ENV_RAW_BODY);       /* NOLINT */
    const char *created = getenv(IOP_ENV_RAW_CREATED); /* NOLINT */
    const char *body;
    char verdict[256] = "ok";
    int64_t created_ns = 0;
    size_t len = 0;

    (void)user;
    body = kiln_signature_raw_body(sig, &len);
    if (want == NULL || body == NULL || len != strlen(want) ||
        memcmp(body, want, len) != 0)
        (void)snprintf(verdict, sizeof(verdict), "bad: raw body %.*s",
                       body != NULL ? (int)len : 4,
                       body != NULL ? body : "none");
    else if (kiln_signature_task_timeout(sig) != IOP_RAW_TIMEOUT_S)
        (void)snprintf(verdict, sizeof(verdict), "bad: timeout %d",
                       kiln_signature_task_timeout(sig));
    else if (created == NULL || !kiln_signature_created_at(sig, &created_ns) ||
             created_ns != strtoll(created, NULL, 10) * 1000000000)
        (void)snprintf(verdict, sizeof(verdict), "bad: created_at %lld ns",
                       (long long)created_ns);
    record_run(ctx, verdict);
    return KILN_OK;
}

/* Go with the test that started this process rather than stay behind. */
static int die_with_parent(void)
{
    const char *want = getenv(IT_ENV_PARENT); /* NOLINT */

    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return -1;
    if (want != NULL && strtol(want, NULL, 10) != (long)getppid())
        return -1;
    return 0;
}

int main(void)
{
    const kiln_task_def tasks[] = {
        {IOP_TASK_ALL_TYPES, task_all_types, NULL, NULL},
        {IOP_TASK_RETRY, task_record, NULL, NULL},
        {IOP_TASK_ETA, task_record, NULL, NULL},
        {IOP_TASK_RAW, task_raw, NULL, NULL},
    };
    kiln_error err = {KILN_OK, ""};
    kiln_pool *pool = NULL;
    kiln_config cfg;
    kiln_err rc;

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    if (die_with_parent() != 0)
        return 3;
    if ((out_path = getenv(IOP_ENV_OUT)) == NULL) { /* NOLINT */
        (void)fprintf(stderr, "prog_iop_worker: %s is not set\n", IOP_ENV_OUT);
        return 2;
    }
    kiln_config_init(&cfg);
    if ((rc = kiln_config_from_env(&cfg, &err)) == KILN_OK &&
        (pool = kiln_pool_new(&cfg, 2, "iop-worker", &err)) == NULL)
        rc = err.code;
    if (rc == KILN_OK)
        rc = kiln_pool_register_table(pool, tasks,
                                      sizeof(tasks) / sizeof(tasks[0]), &err);
    if (rc == KILN_OK) {
        printf("prog_iop_worker %ld: consuming %s\n", (long)getpid(),
               cfg.queue);
        rc = kiln_pool_start(pool, &err); /* until SIGTERM */
    }
    printf("prog_iop_worker %ld: %s%s%s\n", (long)getpid(),
           rc == KILN_OK ? "drained" : kiln_strerror(rc),
           rc == KILN_OK ? "" : ": ", rc == KILN_OK ? "" : err.message);
    kiln_pool_free(pool);
    return rc == KILN_OK ? 0 : 1;
}
