/* The context a task function runs with: read access to its signature, a
 * failure message, a retry request and typed results.
 *
 * The results signature is allocated on the first result, so a task that
 * sets none costs no allocation. Results reuse the argument model
 * (kiln__values), so the same getters read them and the same checks apply
 * as for arguments. */
#include "logger/logger.h"
#include "task/task.h"

#include <string.h>

kiln_err kiln__task_ctx_init(kiln_task_ctx *ctx, const kiln_signature *sig,
                             kiln_error *err)
{
    if (ctx == NULL || sig == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "task context: ctx and sig are "
                          "required");
    memset(ctx, 0, sizeof(*ctx));
    ctx->sig = sig;
    return KILN_OK;
}

void kiln__task_ctx_release(kiln_task_ctx *ctx)
{
    if (ctx == NULL)
        return;
    kiln_signature_free(ctx->results);
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

/* Appends a copy of `v` to the results, creating them on first use. */
static kiln_err add_result(kiln_task_ctx *ctx, const kiln__value *v,
                           kiln_error *err)
{
    if (ctx == NULL)
        return kiln__fail(err, KILN_EINVAL, "task context is required");
    if (ctx->results == NULL &&
        (ctx->results = kiln__signature_alloc(err)) == NULL)
        return KILN_ENOMEM;
    return kiln__values_add(&ctx->results->args, v, err);
}

static const char *type_name(kiln_type t)
{
    const char *s = kiln_type_name(t);

    return s != NULL ? s : "unknown type";
}

static bool in_family(kiln_type t, kiln_type first, kiln_type last)
{
    return t >= first && t <= last;
}

kiln_err kiln_task_add_result_bool(kiln_task_ctx *ctx, bool v, kiln_error *err)
{
    kiln__value val = {.type = KILN_TYPE_BOOL, .v.b = v};

    return add_result(ctx, &val, err);
}

kiln_err kiln_task_add_result_int(kiln_task_ctx *ctx, kiln_type type, int64_t v,
                                  kiln_error *err)
{
    kiln__value val = {.type = type, .v.i = v};

    if (!in_family(type, KILN_TYPE_INT, KILN_TYPE_INT64))
        return kiln__fail(err, KILN_EINVAL,
                          "result: %s is not a signed "
                          "integer type",
                          type_name(type));
    return add_result(ctx, &val, err);
}

kiln_err kiln_task_add_result_uint(kiln_task_ctx *ctx, kiln_type type,
                                   uint64_t v, kiln_error *err)
{
    kiln__value val = {.type = type, .v.u = v};

    if (!in_family(type, KILN_TYPE_UINT, KILN_TYPE_UINT64))
        return kiln__fail(err, KILN_EINVAL,
                          "result: %s is not an unsigned "
                          "integer type",
                          type_name(type));
    return add_result(ctx, &val, err);
}

kiln_err kiln_task_add_result_float(kiln_task_ctx *ctx, kiln_type type,
                                    double v, kiln_error *err)
{
    kiln__value val = {.type = type, .v.f = v};

    if (!in_family(type, KILN_TYPE_FLOAT32, KILN_TYPE_FLOAT64))
        return kiln__fail(err, KILN_EINVAL, "result: %s is not a float type",
                          type_name(type));
    return add_result(ctx, &val, err);
}

kiln_err kiln_task_add_result_string(kiln_task_ctx *ctx, const char *v,
                                     kiln_error *err)
{
    /* kiln__values_add copies the string; the cast only fits the union. */
    kiln__value val = {.type = KILN_TYPE_STRING, .v.s = (char *)v};

    if (v == NULL)
        return kiln__fail(err, KILN_EINVAL, "result: NULL string");
    return add_result(ctx, &val, err);
}

kiln_err kiln_task_add_result_bytes(kiln_task_ctx *ctx, const void *data,
                                    size_t n, kiln_error *err)
{
    kiln__value val = {.type = KILN_TYPE_BYTES};

    if (data == NULL && n > 0)
        return kiln__fail(err, KILN_EINVAL, "result: NULL bytes");
    val.v.arr.ptr = (void *)data; /* copied by kiln__values_add */
    val.v.arr.n = n;
    return add_result(ctx, &val, err);
}

/* What kiln_task_results shows before the first result: a read-only empty
 * signature, so callers need no NULL check and nothing is allocated. The
 * casts only fit the string literals to the struct's field types. */
static const kiln_signature no_results = {
    .uuid = (char *)"",
    .name = (char *)"",
    .routing_key = (char *)"",
    .group_uuid = (char *)"",
    .broker_message_group_id = (char *)"",
    .sqs_receipt_handle = (char *)"",
};

const kiln_signature *kiln_task_results(const kiln_task_ctx *ctx)
{
    return ctx != NULL && ctx->results != NULL ? ctx->results : &no_results;
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
