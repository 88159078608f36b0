/* The context a task function runs with: read access to its signature, a
 * failure message, a retry request and typed results.
 *
 * The results signature is allocated on the first result, so a task that
 * sets none costs no allocation. Results reuse the argument model
 * (kiln__values), so the same getters read them and the same checks apply
 * as for arguments. */
#include "logger/logger.h"
#include "task/task.h"

#include <limits.h>
#include <string.h>

kiln_err kiln__task_ctx_init(kiln_task_ctx *ctx, const kiln_signature *sig,
                             kiln_error *err)
{
    if (ctx == NULL || sig == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "task context: ctx and sig are "
                          "required");
    memset(ctx, 0, sizeof(*ctx));
    kiln__signature_init(&ctx->results);
    ctx->sig = sig;
    ctx->attempt = kiln__signature_retries(sig, 0) + 1;
    return KILN_OK;
}

unsigned kiln__signature_retries(const kiln_signature *sig, unsigned counted)
{
    unsigned done =
        sig->dialect != KILN_DIALECT_MACHINERY && sig->retries_done > 0
            ? (unsigned)sig->retries_done
            : 0;
    unsigned n = counted > done ? counted : done;

    return n < UINT_MAX ? n : UINT_MAX - 1; /* room for this run */
}

unsigned kiln_task_attempt(const kiln_task_ctx *ctx)
{
    return ctx != NULL ? ctx->attempt : 0;
}

void kiln__task_ctx_release(kiln_task_ctx *ctx)
{
    if (ctx == NULL)
        return;
    kiln__values_clear(&ctx->results.args);
    memset(ctx, 0, sizeof(*ctx));
}

const char *kiln_task_uuid(const kiln_task_ctx *ctx)
{
    return ctx != NULL && ctx->sig != NULL ? ctx->sig->uuid : "";
}

const char *kiln_task_name(const kiln_task_ctx *ctx)
{
    return ctx != NULL && ctx->sig != NULL ? ctx->sig->name : "";
}

const kiln_signature *kiln_task_signature(const kiln_task_ctx *ctx)
{
    return ctx != NULL ? ctx->sig : NULL;
}

kiln_err kiln_task_fail(kiln_task_ctx *ctx, const char *fmt, ...)
{
    va_list ap;

    if (ctx == NULL)
        return KILN_ETASK;
    va_start(ap, fmt);
    (void)kiln__vfail(&ctx->failure, KILN_ETASK, fmt, ap);
    va_end(ap);
    return KILN_ETASK;
}

int64_t kiln_task_time_left_ms(const kiln_task_ctx *ctx)
{
    int64_t left;

    if (ctx == NULL || ctx->deadline_ns == 0)
        return INT64_MAX;
    left = (ctx->deadline_ns - kiln__monotonic_ns()) / 1000000;
    return left > 0 ? left : 0;
}

bool kiln_task_expired(const kiln_task_ctx *ctx)
{
    return ctx != NULL && ctx->deadline_ns != 0 &&
           kiln__monotonic_ns() >= ctx->deadline_ns;
}

kiln_err kiln_task_retry(kiln_task_ctx *ctx, uint64_t delay_ms)
{
    if (ctx != NULL) {
        ctx->retry_requested = true;
        ctx->retry_delay_ms = delay_ms;
    }
    return KILN_ERETRY;
}

/* Appends a copy of `v` to the results (not for a value of the wrong
 * family). The same checks as for arguments. */
static kiln_err add_result(kiln_task_ctx *ctx, const kiln__value *v,
                           kiln__family fam, kiln_error *err)
{
    kiln_err rc;

    if (ctx == NULL)
        return kiln__fail(err, KILN_EINVAL, "task context is required");
    rc = kiln__family_check("result", ctx->results.args.n, v->type, fam, err);
    if (rc != KILN_OK)
        return rc;
    return kiln__values_put(&ctx->results.args, "result", v, fam, err);
}

/* A slice result borrowing `ptr` (copied by kiln__values_add). */
static kiln_err add_slice(kiln_task_ctx *ctx, kiln_type type, kiln__family fam,
                          const void *ptr, size_t n, kiln_error *err)
{
    kiln__value val = {.type = type};

    val.v.arr.ptr = (void *)ptr;
    val.v.arr.n = n;
    return add_result(ctx, &val, fam, err);
}

kiln_err kiln_task_add_result_bool(kiln_task_ctx *ctx, bool v, kiln_error *err)
{
    kiln__value val = {.type = KILN_TYPE_BOOL, .v.b = v};

    return add_result(ctx, &val, KILN__FAMILY_OF(KILN_TYPE_BOOL), err);
}

kiln_err kiln_task_add_result_int(kiln_task_ctx *ctx, kiln_type type, int64_t v,
                                  kiln_error *err)
{
    kiln__value val = {.type = type, .v.i = v};

    return add_result(ctx, &val, KILN__FAMILY_INT, err);
}

kiln_err kiln_task_add_result_uint(kiln_task_ctx *ctx, kiln_type type,
                                   uint64_t v, kiln_error *err)
{
    kiln__value val = {.type = type, .v.u = v};

    return add_result(ctx, &val, KILN__FAMILY_UINT, err);
}

kiln_err kiln_task_add_result_float(kiln_task_ctx *ctx, kiln_type type,
                                    double v, kiln_error *err)
{
    kiln__value val = {.type = type, .v.f = v};

    return add_result(ctx, &val, KILN__FAMILY_FLOAT, err);
}

kiln_err kiln_task_add_result_string(kiln_task_ctx *ctx, const char *v,
                                     kiln_error *err)
{
    /* kiln__values_add copies the string; the cast only fits the union. */
    kiln__value val = {.type = KILN_TYPE_STRING, .v.s = (char *)v};

    return add_result(ctx, &val, KILN__FAMILY_OF(KILN_TYPE_STRING), err);
}

kiln_err kiln_task_add_result_bytes(kiln_task_ctx *ctx, const void *data,
                                    size_t n, kiln_error *err)
{
    return add_slice(ctx, KILN_TYPE_BYTES, KILN__FAMILY_OF(KILN_TYPE_BYTES),
                     data, n, err);
}

kiln_err kiln_task_add_result_bool_slice(kiln_task_ctx *ctx, const bool *v,
                                         size_t n, kiln_error *err)
{
    return add_slice(ctx, KILN_TYPE_BOOL_SLICE,
                     KILN__FAMILY_OF(KILN_TYPE_BOOL_SLICE), v, n, err);
}

kiln_err kiln_task_add_result_int_slice(kiln_task_ctx *ctx, kiln_type type,
                                        const int64_t *v, size_t n,
                                        kiln_error *err)
{
    return add_slice(ctx, type, KILN__FAMILY_INT_SLICE, v, n, err);
}

kiln_err kiln_task_add_result_uint_slice(kiln_task_ctx *ctx, kiln_type type,
                                         const uint64_t *v, size_t n,
                                         kiln_error *err)
{
    return add_slice(ctx, type, KILN__FAMILY_UINT_SLICE, v, n, err);
}

kiln_err kiln_task_add_result_uint8_slice(kiln_task_ctx *ctx, const uint8_t *v,
                                          size_t n, kiln_error *err)
{
    return add_slice(ctx, KILN_TYPE_UINT8_SLICE,
                     KILN__FAMILY_OF(KILN_TYPE_UINT8_SLICE), v, n, err);
}

kiln_err kiln_task_add_result_float_slice(kiln_task_ctx *ctx, kiln_type type,
                                          const double *v, size_t n,
                                          kiln_error *err)
{
    return add_slice(ctx, type, KILN__FAMILY_FLOAT_SLICE, v, n, err);
}

kiln_err kiln_task_add_result_string_slice(kiln_task_ctx *ctx,
                                           const char *const *v, size_t n,
                                           kiln_error *err)
{
    return add_slice(ctx, KILN_TYPE_STRING_SLICE,
                     KILN__FAMILY_OF(KILN_TYPE_STRING_SLICE), v, n, err);
}

/* Before the first result: the empty signature, so callers need no NULL
 * check and nothing is allocated. */
const kiln_signature *kiln_task_results(const kiln_task_ctx *ctx)
{
    return ctx != NULL && ctx->sig != NULL ? &ctx->results
                                           : &kiln__signature_empty;
}

void kiln_task_log(const kiln_task_ctx *ctx, kiln_log_level level,
                   const char *fmt, ...)
{
    va_list ap;

    if (!kiln__log_enabled(level))
        return;
    va_start(ap, fmt);
    kiln__vlog_task(level, "task", kiln_task_uuid(ctx), kiln_task_name(ctx),
                    fmt, ap);
    va_end(ap);
}
