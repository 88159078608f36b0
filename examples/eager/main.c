/*
 * The task model without a broker: build a task, encode it as machinery
 * does, decode it, and run it in-process through a registry. This is the
 * program shown in the README's API overview.
 *
 * Build: cc main.c $(pkg-config --cflags --libs kiln)
 */
#include <kiln.h>
#include <stdio.h>

/* A task: adds its two int64 arguments and returns the sum. */
static kiln_err add(kiln_task_ctx *ctx, void *user)
{
    const kiln_signature *sig = kiln_task_signature(ctx);
    int64_t a, b;
    kiln_error err;

    (void)user;
    if (kiln_signature_arg_int64(sig, 0, &a, &err) != KILN_OK ||
        kiln_signature_arg_int64(sig, 1, &b, &err) != KILN_OK)
        return kiln_task_fail(ctx, "bad arguments: %s", err.message);
    kiln_task_log(ctx, KILN_LOG_INFO, "adding %lld and %lld", (long long)a,
                  (long long)b);
    return kiln_task_add_result_int(ctx, KILN_TYPE_INT64, a + b, NULL);
}

int main(void)
{
    kiln_error err;
    kiln_registry *reg = kiln_registry_new(&err);
    kiln_signature *sig = kiln_signature_new("add", &err), *back = NULL;
    kiln_signature *results = NULL;
    char *json = NULL;
    size_t len;
    int64_t sum;

    if (reg == NULL || sig == NULL ||
        kiln_registry_add(reg, "add", add, NULL, NULL, &err) != KILN_OK ||
        kiln_signature_add_arg_int64(sig, "a", 2, &err) != KILN_OK ||
        kiln_signature_add_arg_int64(sig, "b", 40, &err) != KILN_OK ||
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &json, &len,
                               &err) != KILN_OK ||
        kiln_signature_from_json(json, len, 0, &back, &err) != KILN_OK ||
        kiln_registry_run(reg, back, &results, &err) != KILN_OK ||
        kiln_signature_arg_int64(results, 0, &sum, &err) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", kiln_strerror(err.code), err.message);
        return 1;
    }
    printf("%s\n%s = %lld\n", json, kiln_signature_uuid(back), (long long)sum);
    kiln_free(json);
    kiln_signature_free(results);
    kiln_signature_free(back);
    kiln_signature_free(sig);
    kiln_registry_free(reg);
    return 0;
}
