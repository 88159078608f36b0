/* Registry and task context: registration rules, concurrent look-ups,
 * kiln_registry_run, the context accessors and allocation failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "logger/logger.h"
#include "task/task.h"
#include "test/support/results_fixture.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

static int frees[8]; /* user_free calls per user slot */

static void count_free(void *user)
{
    frees[*(int *)user]++;
}

static kiln_err noop_task(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    return KILN_OK;
}

static kiln_err other_task(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    return KILN_OK;
}

static int setup(void **state)
{
    (void)state;
    memset(frees, 0, sizeof(frees));
    kiln__alloc_fail_after(-1);
    return 0;
}

static kiln_registry *new_registry(void)
{
    kiln_error err;
    kiln_registry *reg = kiln_registry_new(&err);

    assert_non_null(reg);
    return reg;
}

/* ---- registration ------------------------------------------------------- */

static void test_add_and_lookup(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_task_fn fn = NULL;
    void *user = NULL;
    int tag = 0;
    char name[16] = "resize";
    kiln_error err;

    (void)state;
    assert_int_equal(kiln_registry_count(reg), 0);
    assert_int_equal(kiln_registry_add(reg, name, noop_task, &tag, NULL, &err),
                     KILN_OK);
    strcpy(name, "xxxxxx"); /* the registry keeps its own copy */
    assert_int_equal(kiln_registry_lookup(reg, "resize", &fn, &user), KILN_OK);
    assert_ptr_equal(fn, noop_task);
    assert_ptr_equal(user, &tag);
    assert_int_equal(kiln_registry_lookup(reg, "resize", NULL, NULL), KILN_OK);
    assert_int_equal(kiln_registry_lookup(reg, "xxxxxx", &fn, &user),
                     KILN_ENOHANDLER);
    assert_int_equal(kiln_registry_lookup(reg, "resiz", NULL, NULL),
                     KILN_ENOHANDLER);
    assert_int_equal(kiln_registry_lookup(reg, NULL, NULL, NULL),
                     KILN_ENOHANDLER);
    assert_int_equal(kiln_registry_count(reg), 1);
    kiln_registry_free(reg);
    kiln_registry_free(NULL);
}

static void test_add_errors(void **state)
{
    kiln_registry *reg = new_registry();
    int slot0 = 0, slot1 = 1;
    kiln_error err;

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "a", noop_task, &slot0, count_free, &err),
        KILN_OK);
    assert_int_equal(
        kiln_registry_add(reg, "a", other_task, &slot1, count_free, &err),
        KILN_EEXIST);
    assert_int_equal(err.code, KILN_EEXIST);
    assert_non_null(strstr(err.message, "'a'"));
    assert_int_equal(
        kiln_registry_add(reg, "", noop_task, &slot1, count_free, &err),
        KILN_EINVAL);
    assert_int_equal(
        kiln_registry_add(reg, NULL, noop_task, &slot1, count_free, &err),
        KILN_EINVAL);
    assert_int_equal(
        kiln_registry_add(reg, "b", NULL, &slot1, count_free, &err),
        KILN_EINVAL);
    assert_int_equal(kiln_registry_add(NULL, "b", noop_task, NULL, NULL, NULL),
                     KILN_EINVAL);
    assert_int_equal(kiln_registry_count(reg), 1);
    assert_int_equal(frees[1], 0); /* the caller kept the refused pointers */
    kiln_registry_free(reg);
    assert_int_equal(frees[0], 1);
    assert_int_equal(frees[1], 0);
}

static void test_table_all_or_none(void **state)
{
    kiln_registry *reg = new_registry();
    int s[6] = {0, 1, 2, 3, 4, 5};
    kiln_task_def bad_dup[] = {
        {"t1", noop_task, &s[1], count_free},
        {"t2", noop_task, &s[2], count_free},
        {"old", noop_task, &s[3], count_free}, /* taken: fails in the middle */
        {"t4", noop_task, &s[4], count_free},
    };
    kiln_task_def bad_twice[] = {
        {"t1", noop_task, &s[1], count_free},
        {"t1", noop_task, &s[2], count_free},
    };
    kiln_task_def bad_fn[] = {
        {"t1", noop_task, &s[1], count_free},
        {"t2", NULL, &s[2], count_free},
        {"t3", noop_task, &s[3], count_free},
    };
    kiln_task_def good[] = {
        {"t1", noop_task, &s[1], count_free},
        {"t2", other_task, &s[2], count_free},
        {"t3", noop_task, NULL, NULL},
    };
    kiln_task_fn fn;
    kiln_error err;

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "old", noop_task, &s[0], count_free, &err),
        KILN_OK);
    assert_int_equal(kiln_registry_add_table(reg, bad_dup, 4, &err),
                     KILN_EEXIST);
    assert_int_equal(kiln_registry_add_table(reg, bad_twice, 2, &err),
                     KILN_EEXIST);
    assert_int_equal(kiln_registry_add_table(reg, bad_fn, 3, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_registry_count(reg), 1);
    assert_int_equal(kiln_registry_lookup(reg, "t1", NULL, NULL),
                     KILN_ENOHANDLER);
    assert_int_equal(kiln_registry_lookup(reg, "t2", NULL, NULL),
                     KILN_ENOHANDLER);
    for (int i = 0; i < 6; i++)
        assert_int_equal(frees[i], 0);
    assert_int_equal(kiln_registry_add_table(reg, good, 3, &err), KILN_OK);
    assert_int_equal(kiln_registry_add_table(reg, NULL, 0, &err), KILN_OK);
    assert_int_equal(kiln_registry_count(reg), 4);
    assert_int_equal(kiln_registry_lookup(reg, "t2", &fn, NULL), KILN_OK);
    assert_ptr_equal(fn, other_task);
    kiln_registry_free(reg);
    for (int i = 0; i < 3; i++)
        assert_int_equal(frees[i], 1); /* once each, at free */
    assert_int_equal(frees[3], 0);
    assert_int_equal(frees[4], 0);
}

static void test_many_names(void **state)
{
    kiln_registry *reg = new_registry();
    char name[32];
    void *user;

    (void)state;
    for (uintptr_t i = 0; i < 5000; i++) {
        (void)snprintf(name, sizeof(name), "task.%lu", (unsigned long)i);
        assert_int_equal(
            kiln_registry_add(reg, name, noop_task, (void *)i, NULL, NULL),
            KILN_OK);
    }
    assert_int_equal(kiln_registry_count(reg), 5000);
    for (uintptr_t i = 0; i < 5000; i++) {
        (void)snprintf(name, sizeof(name), "task.%lu", (unsigned long)i);
        assert_int_equal(kiln_registry_lookup(reg, name, NULL, &user), KILN_OK);
        assert_true((uintptr_t)user == i);
    }
    kiln_registry_free(reg);
}

/* ---- concurrency --------------------------------------------------------- */

#define READERS 8
#define LOOKUPS 100000
#define STABLE  64
#define ADDED   2000

struct reader {
    pthread_t tid;
    const kiln_registry *reg;
    unsigned seed;
    long misses; /* stable names not found: must stay 0 */
    long wrong;  /* wrong user pointer returned: must stay 0 */
    long found_new;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    char name[32];
    void *user;

    for (long i = 0; i < LOOKUPS; i++) {
        unsigned k = (r->seed = r->seed * 1103515245u + 12345u) >> 8;
        bool stable = (i & 1) == 0;
        uintptr_t idx = stable ? k % STABLE : k % ADDED;
        (void)snprintf(name, sizeof(name), "%s.%lu",
                       stable ? "stable" : "added", (unsigned long)idx);
        if (kiln_registry_lookup(r->reg, name, NULL, &user) == KILN_OK) {
            if ((uintptr_t)user != idx)
                r->wrong++;
            else if (!stable)
                r->found_new++;
        } else if (stable) {
            r->misses++;
        }
    }
    return NULL;
}

static void *writer_main(void *arg)
{
    kiln_registry *reg = arg;
    char name[32];
    long failed = 0;

    for (uintptr_t i = 0; i < ADDED; i++) {
        (void)snprintf(name, sizeof(name), "added.%lu", (unsigned long)i);
        if (kiln_registry_add(reg, name, noop_task, (void *)i, NULL, NULL) !=
            KILN_OK)
            failed++;
    }
    return (void *)(intptr_t)failed;
}

static void test_concurrent_lookups(void **state)
{
    kiln_registry *reg = new_registry();
    struct reader r[READERS];
    pthread_t writer;
    void *failed;
    char name[32];

    (void)state;
    for (uintptr_t i = 0; i < STABLE; i++) {
        (void)snprintf(name, sizeof(name), "stable.%lu", (unsigned long)i);
        assert_int_equal(
            kiln_registry_add(reg, name, noop_task, (void *)i, NULL, NULL),
            KILN_OK);
    }
    for (int i = 0; i < READERS; i++) {
        r[i] = (struct reader){.reg = reg, .seed = (unsigned)i * 7919u + 1};
        assert_int_equal(pthread_create(&r[i].tid, NULL, reader_main, &r[i]),
                         0);
    }
    assert_int_equal(pthread_create(&writer, NULL, writer_main, reg), 0);
    assert_int_equal(pthread_join(writer, &failed), 0);
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_join(r[i].tid, NULL), 0);
    assert_true(failed == NULL);
    for (int i = 0; i < READERS; i++) {
        assert_int_equal(r[i].misses, 0);
        assert_int_equal(r[i].wrong, 0);
    }
    assert_int_equal(kiln_registry_count(reg), STABLE + ADDED);
    kiln_registry_free(reg);
}

/* ---- kiln_registry_run and the context ----------------------------------- */

struct seen {
    char uuid[KILN_UUID_LEN];
    char name[64];
    const kiln_signature *sig;
    size_t results_before;
    kiln_err bad_int, bad_uint, bad_float, nan_float, null_string;
    int64_t a;
    char s[32];
    int calls;
};

static kiln_err results_task(kiln_task_ctx *ctx, void *user)
{
    struct seen *w = user;
    const kiln_signature *sig = kiln_task_signature(ctx);
    const char *s = NULL;
    char out[40];
    const uint8_t bytes[3] = {0, 1, 255};
    kiln_err rc;

    w->calls++;
    (void)snprintf(w->uuid, sizeof(w->uuid), "%s", kiln_task_uuid(ctx));
    (void)snprintf(w->name, sizeof(w->name), "%s", kiln_task_name(ctx));
    w->sig = sig;
    w->results_before = kiln_signature_arg_count(kiln_task_results(ctx));
    if ((rc = kiln_signature_arg_int64(sig, 0, &w->a, NULL)) != KILN_OK ||
        (rc = kiln_signature_arg_string(sig, 1, &s, NULL)) != KILN_OK)
        return rc;
    (void)snprintf(w->s, sizeof(w->s), "%s", s);
    w->bad_int = kiln_task_add_result_int(ctx, KILN_TYPE_UINT8, 1, NULL);
    w->bad_uint = kiln_task_add_result_uint(ctx, KILN_TYPE_INT, 1, NULL);
    w->bad_float = kiln_task_add_result_float(ctx, KILN_TYPE_STRING, 1, NULL);
    w->nan_float =
        kiln_task_add_result_float(ctx, KILN_TYPE_FLOAT64, NAN, NULL);
    w->null_string = kiln_task_add_result_string(ctx, NULL, NULL);
    (void)snprintf(out, sizeof(out), "%s!", s);
    if ((rc = kiln_task_add_result_bool(ctx, true, NULL)) != KILN_OK ||
        (rc = kiln_task_add_result_int(ctx, KILN_TYPE_INT8, -5, NULL)) ||
        (rc = kiln_task_add_result_int(ctx, KILN_TYPE_INT64, w->a * 2, NULL)) ||
        (rc = kiln_task_add_result_uint(ctx, KILN_TYPE_UINT64, UINT64_MAX,
                                        NULL)) ||
        (rc = kiln_task_add_result_float(ctx, KILN_TYPE_FLOAT32, 1.5, NULL)) ||
        (rc = kiln_task_add_result_float(ctx, KILN_TYPE_FLOAT64, 2.25, NULL)) ||
        (rc = kiln_task_add_result_string(ctx, out, NULL)) ||
        (rc = kiln_task_add_result_bytes(ctx, bytes, 3, NULL)))
        return rc;
    return KILN_OK;
}

static kiln_err fail_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    (void)kiln_task_add_result_bool(ctx, true, NULL); /* dropped on failure */
    return kiln_task_fail(ctx, "no user %d", 42);
}

static kiln_err plain_fail_task(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    return KILN_ETASK;
}

static kiln_err retry_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    return kiln_task_retry(ctx, 1500);
}

static kiln_err einval_task(kiln_task_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    return KILN_EINVAL;
}

static kiln_err log_task(kiln_task_ctx *ctx, void *user)
{
    (void)user;
    kiln_task_log(ctx, KILN_LOG_INFO, "hello %d", 7);
    kiln_task_log(ctx, KILN_LOG_DEBUG, "not shown");
    return KILN_OK;
}

static kiln_signature *make_sig(const char *name, int64_t a, const char *s)
{
    kiln_signature *sig = kiln_signature_new(name, NULL);

    assert_non_null(sig);
    assert_int_equal(kiln_signature_add_arg_int64(sig, "a", a, NULL), KILN_OK);
    assert_int_equal(kiln_signature_add_arg_string(sig, "s", s, NULL), KILN_OK);
    return sig;
}

static void check_results(const kiln_signature *res, int64_t a)
{
    bool b;
    int64_t i;
    uint64_t u;
    double f;
    const char *s;
    const uint8_t *bytes;
    size_t n;
    kiln_type t;

    assert_int_equal(kiln_signature_arg_count(res), 8);
    assert_int_equal(kiln_signature_arg_bool(res, 0, &b, NULL), KILN_OK);
    assert_true(b);
    assert_int_equal(kiln_signature_arg_type(res, 1, &t, NULL), KILN_OK);
    assert_int_equal(t, KILN_TYPE_INT8);
    assert_int_equal(kiln_signature_arg_int64(res, 1, &i, NULL), KILN_OK);
    assert_int_equal(i, -5);
    assert_int_equal(kiln_signature_arg_int64(res, 2, &i, NULL), KILN_OK);
    assert_int_equal(i, a * 2);
    assert_int_equal(kiln_signature_arg_uint64(res, 3, &u, NULL), KILN_OK);
    assert_true(u == UINT64_MAX);
    assert_int_equal(kiln_signature_arg_type(res, 4, &t, NULL), KILN_OK);
    assert_int_equal(t, KILN_TYPE_FLOAT32);
    assert_int_equal(kiln_signature_arg_double(res, 5, &f, NULL), KILN_OK);
    assert_true(f == 2.25);
    assert_int_equal(kiln_signature_arg_string(res, 6, &s, NULL), KILN_OK);
    assert_string_equal(s, "hi!");
    assert_int_equal(kiln_signature_arg_bytes(res, 7, &bytes, &n, NULL),
                     KILN_OK);
    assert_int_equal(n, 3);
    assert_int_equal(bytes[2], 255);
}

static void test_run_success(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_signature *sig = make_sig("work", 21, "hi"), *res = NULL;
    struct seen w = {0};
    kiln_error err;

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "work", results_task, &w, NULL, NULL), KILN_OK);
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_OK);
    assert_int_equal(w.calls, 1);
    assert_string_equal(w.uuid, kiln_signature_uuid(sig));
    assert_string_equal(w.name, "work");
    assert_ptr_equal(w.sig, sig);
    assert_int_equal(w.results_before, 0);
    assert_int_equal(w.a, 21);
    assert_string_equal(w.s, "hi");
    assert_int_equal(w.bad_int, KILN_EINVAL);
    assert_int_equal(w.bad_uint, KILN_EINVAL);
    assert_int_equal(w.bad_float, KILN_EINVAL);
    assert_int_not_equal(w.nan_float, KILN_OK);
    assert_int_equal(w.null_string, KILN_EINVAL);
    assert_non_null(res);
    check_results(res, 21);
    kiln_signature_free(res);
    /* Without an out pointer the results are simply dropped. */
    assert_int_equal(kiln_registry_run(reg, sig, NULL, NULL), KILN_OK);
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

static void test_run_no_results(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_signature *sig = make_sig("noop", 1, "x"), *res = NULL;

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "noop", noop_task, NULL, NULL, NULL), KILN_OK);
    assert_int_equal(kiln_registry_run(reg, sig, &res, NULL), KILN_OK);
    assert_non_null(res);
    assert_int_equal(kiln_signature_arg_count(res), 0);
    kiln_signature_free(res);
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

static void test_run_failures(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_task_def defs[] = {
        {"fail", fail_task, NULL, NULL},
        {"plain", plain_fail_task, NULL, NULL},
        {"retry", retry_task, NULL, NULL},
        {"einval", einval_task, NULL, NULL},
    };
    kiln_signature *sig, *res = (kiln_signature *)&res;
    kiln_error err;

    (void)state;
    assert_int_equal(kiln_registry_add_table(reg, defs, 4, NULL), KILN_OK);
    sig = make_sig("fail", 1, "x");
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_ETASK);
    assert_null(res);
    assert_int_equal(err.code, KILN_ETASK);
    assert_string_equal(err.message, "no user 42");
    kiln_signature_free(sig);

    sig = make_sig("plain", 1, "x");
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_ETASK);
    assert_string_equal(err.message, kiln_strerror(KILN_ETASK));
    kiln_signature_free(sig);

    sig = make_sig("retry", 1, "x");
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_ERETRY);
    assert_null(res);
    assert_non_null(strstr(err.message, "1500 ms"));
    kiln_signature_free(sig);

    sig = make_sig("einval", 1, "x");
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, kiln_strerror(KILN_EINVAL)));
    kiln_signature_free(sig);

    sig = make_sig("missing", 1, "x");
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_ENOHANDLER);
    assert_non_null(strstr(err.message, "missing"));
    assert_int_equal(kiln_registry_run(NULL, sig, &res, &err), KILN_EINVAL);
    assert_int_equal(kiln_registry_run(reg, NULL, &res, &err), KILN_EINVAL);
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

/* Slice results in eager mode: every slice type comes back exactly, also
 * when allocations fail along the way (then the run fails whole). */
static void test_run_slice_results(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_signature *sig = make_sig("slices", 1, "x"), *res = NULL;
    bool fired = true;
    kiln_error err;
    long n;

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "slices", slices_task, NULL, NULL, NULL),
        KILN_OK);
    assert_int_equal(kiln_registry_run(reg, sig, &res, &err), KILN_OK);
    check_slice_results(res);
    kiln_signature_free(res);
    for (n = 0; fired; n++) {
        kiln_err rc;

        res = NULL;
        kiln__alloc_fail_after(n);
        rc = kiln_registry_run(reg, sig, &res, &err);
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        assert_true(rc == KILN_OK || fired);
        if (rc == KILN_OK)
            check_slice_results(res);
        else
            assert_null(res);
        kiln_signature_free(res);
    }
    assert_true(n > SLICE_RESULTS / 2); /* each slice with values allocates */
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

/* The slice setters refuse what the argument setters refuse, name the
 * result, and leave the results as they were; a refused type allocates
 * nothing. */
static void test_result_slice_errors(void **state)
{
    kiln_signature *sig = make_sig("t", 1, "x");
    const int64_t wide[] = {1, 300};
    const uint64_t big[] = {70000};
    const double nan[] = {0.0, NAN};
    const char *const bad_utf8[] = {"ok", "\xc3("};
    const char *const null_str[] = {"ok", NULL};
    const uint64_t ok[] = {1, 2};
    kiln_task_ctx ctx;
    kiln_error err;

    (void)state;
    assert_int_equal(kiln__task_ctx_init(&ctx, sig, NULL), KILN_OK);
    /* Types outside the setter's family. */
    assert_int_equal(
        kiln_task_add_result_int_slice(&ctx, KILN_TYPE_INT, wide, 1, &err),
        KILN_EINVAL);
    assert_string_equal(err.message,
                        "result 0: type int is not one of []int ... []int64");
    assert_int_equal(kiln_task_add_result_uint_slice(
                         &ctx, KILN_TYPE_UINT8_SLICE, ok, 2, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "except []uint8"));
    assert_int_equal(kiln_task_add_result_float_slice(
                         &ctx, KILN_TYPE_INT64_SLICE, nan, 1, &err),
                     KILN_EINVAL);
    /* nothing kept (or allocated) for a refused type */
    assert_int_equal(ctx.results.args.n, 0);
    assert_null(ctx.results.args.items);
    assert_int_equal(kiln_task_add_result_uint_slice(
                         &ctx, KILN_TYPE_UINT16_SLICE, ok, 2, &err),
                     KILN_OK);
    /* Values: range, finiteness, UTF-8, NULL data. */
    assert_int_equal(kiln_task_add_result_int_slice(&ctx, KILN_TYPE_INT8_SLICE,
                                                    wide, 2, &err),
                     KILN_ERANGE);
    assert_non_null(strstr(err.message, "result 1: []int8[1] value 300"));
    assert_int_equal(kiln_task_add_result_uint_slice(
                         &ctx, KILN_TYPE_UINT16_SLICE, big, 1, &err),
                     KILN_ERANGE);
    assert_int_equal(kiln_task_add_result_float_slice(
                         &ctx, KILN_TYPE_FLOAT64_SLICE, nan, 2, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_task_add_result_string_slice(&ctx, bad_utf8, 2, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "UTF-8"));
    assert_int_equal(kiln_task_add_result_string_slice(&ctx, null_str, 2, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_task_add_result_bool_slice(&ctx, NULL, 3, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_task_add_result_uint8_slice(&ctx, NULL, 1, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_count(kiln_task_results(&ctx)), 1);
    assert_int_equal(kiln_task_add_result_bool_slice(NULL, NULL, 0, &err),
                     KILN_EINVAL);
    kiln__task_ctx_release(&ctx);
    kiln_signature_free(sig);
}

/* Results are plain values in the context: the first costs one
 * allocation (the list), not a signature with its strings. */
static void test_results_allocate_values_only(void **state)
{
    kiln_signature *sig = make_sig("t", 1, "x");
    kiln_task_ctx ctx;
    size_t calls;
    int64_t v = 0;

    (void)state;
    assert_int_equal(kiln__task_ctx_init(&ctx, sig, NULL), KILN_OK);
    kiln__alloc_count_start();
    assert_int_equal(kiln_task_add_result_int(&ctx, KILN_TYPE_INT64, 42, NULL),
                     KILN_OK);
    calls = kiln__alloc_count_calls();
    (void)kiln__alloc_count_stop();
    assert_int_equal(calls, 1);
    assert_int_equal(
        kiln_signature_arg_int64(kiln_task_results(&ctx), 0, &v, NULL),
        KILN_OK);
    assert_int_equal(v, 42);
    assert_string_equal(kiln_signature_name(kiln_task_results(&ctx)), "");
    kiln__task_ctx_release(&ctx);
    kiln_signature_free(sig);
}

/* The retry delay as the worker reads it: from the context itself. */
static void test_context_retry_and_fail(void **state)
{
    kiln_signature *sig = make_sig("t", 1, "x");
    kiln_task_ctx ctx;

    (void)state;
    assert_int_equal(kiln__task_ctx_init(&ctx, sig, NULL), KILN_OK);
    assert_int_equal(retry_task(&ctx, NULL), KILN_ERETRY);
    assert_true(ctx.retry_requested);
    assert_true(ctx.retry_delay_ms == 1500);
    assert_null(
        ctx.results.args.items); /* nothing allocated without a result */
    assert_int_equal(fail_task(&ctx, NULL), KILN_ETASK);
    assert_string_equal(ctx.failure.message, "no user 42");
    assert_int_equal(kiln_signature_arg_count(kiln_task_results(&ctx)), 1);
    kiln__task_ctx_release(&ctx);
    assert_null(ctx.results.args.items);
    kiln__task_ctx_release(&ctx); /* twice is harmless */
    assert_int_equal(kiln__task_ctx_init(&ctx, NULL, NULL), KILN_EINVAL);
    /* NULL contexts do not crash the accessors. */
    assert_string_equal(kiln_task_uuid(NULL), "");
    assert_string_equal(kiln_task_name(NULL), "");
    assert_null(kiln_task_signature(NULL));
    assert_int_equal(kiln_signature_arg_count(kiln_task_results(NULL)), 0);
    assert_int_equal(kiln_task_fail(NULL, "x"), KILN_ETASK);
    assert_int_equal(kiln_task_retry(NULL, 1), KILN_ERETRY);
    kiln_signature_free(sig);
}

struct capture {
    char line[512];
    int lines;
};

static void capture_sink(kiln_log_level level, const char *line, void *user)
{
    struct capture *c = user;

    (void)level;
    (void)snprintf(c->line, sizeof(c->line), "%s", line);
    c->lines++;
}

static void test_task_log(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_signature *sig = make_sig("logger", 1, "x");
    struct capture cap = {{0}, 0};

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "logger", log_task, NULL, NULL, NULL), KILN_OK);
    kiln_log_set_sink(capture_sink, &cap);
    kiln_log_set_level(KILN_LOG_INFO);
    assert_int_equal(kiln_registry_run(reg, sig, NULL, NULL), KILN_OK);
    kiln_log_set_level(KILN_LOG_OFF);
    kiln_log_set_sink(NULL, NULL);
    assert_int_equal(cap.lines, 1);
    assert_non_null(strstr(cap.line, "hello 7"));
    assert_non_null(strstr(cap.line, kiln_signature_uuid(sig)));
    assert_non_null(strstr(cap.line, "logger"));
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

/* ---- allocation failures ------------------------------------------------- */

static void test_alloc_fail_add(void **state)
{
    int s[3] = {0, 1, 2};
    kiln_task_def defs[] = {
        {"one", noop_task, &s[0], count_free},
        {"two", noop_task, &s[1], count_free},
        {"three", noop_task, &s[2], count_free},
    };
    bool fired = true;

    (void)state;
    for (long n = 0; fired; n++) {
        kiln_error err;
        kiln_registry *reg;
        kiln_err rc = KILN_OK;

        memset(frees, 0, sizeof(frees));
        kiln__alloc_fail_after(n);
        if ((reg = kiln_registry_new(&err)) != NULL)
            rc = kiln_registry_add_table(reg, defs, 3, &err);
        else
            rc = err.code;
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        assert_true(rc == KILN_OK || fired);
        assert_int_equal(kiln_registry_count(reg), rc == KILN_OK ? 3 : 0);
        kiln_registry_free(reg);
        for (int i = 0; i < 3; i++)
            assert_int_equal(frees[i], rc == KILN_OK ? 1 : 0);
    }
}

static void test_alloc_fail_run(void **state)
{
    kiln_registry *reg = new_registry();
    kiln_signature *sig = make_sig("work", 4, "hi");
    struct seen w = {0};
    bool fired = true;
    long n;

    (void)state;
    assert_int_equal(
        kiln_registry_add(reg, "work", results_task, &w, NULL, NULL), KILN_OK);
    for (n = 0; fired; n++) {
        kiln_signature *res = NULL;
        kiln_error err;
        kiln_err rc;

        kiln__alloc_fail_after(n);
        rc = kiln_registry_run(reg, sig, &res, &err);
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        assert_true(rc == KILN_OK || fired);
        if (rc == KILN_OK)
            check_results(res, 4);
        else
            assert_null(res);
        kiln_signature_free(res);
    }
    assert_true(n > 2);
    kiln_signature_free(sig);
    kiln_registry_free(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_add_and_lookup, setup),
        cmocka_unit_test_setup(test_add_errors, setup),
        cmocka_unit_test_setup(test_table_all_or_none, setup),
        cmocka_unit_test_setup(test_many_names, setup),
        cmocka_unit_test_setup(test_concurrent_lookups, setup),
        cmocka_unit_test_setup(test_run_success, setup),
        cmocka_unit_test_setup(test_run_no_results, setup),
        cmocka_unit_test_setup(test_run_failures, setup),
        cmocka_unit_test_setup(test_run_slice_results, setup),
        cmocka_unit_test_setup(test_result_slice_errors, setup),
        cmocka_unit_test_setup(test_results_allocate_values_only, setup),
        cmocka_unit_test_setup(test_context_retry_and_fail, setup),
        cmocka_unit_test_setup(test_task_log, setup),
        cmocka_unit_test_setup(test_alloc_fail_add, setup),
        cmocka_unit_test_setup(test_alloc_fail_run, setup),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
