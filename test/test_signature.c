/* The task model: signatures, the 29 argument types, their checks and
 * getters, copies, UUIDs, and every allocation failure on the way. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "task/task.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EURO  "\xe2\x82\xac"
#define CLEF  "\xf0\x9d\x84\x9e"
#define UTF8S "h\xc3\xa9llo " EURO " " CLEF

static int setup(void **state)
{
    *state = kiln_signature_new("add", NULL);
    return *state == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    kiln__alloc_fail_after(-1);
    kiln_signature_free(*state);
    return 0;
}

static void assert_same_double(double a, double b)
{
    assert_memory_equal(&a, &b, sizeof(a)); /* tells -0.0 from 0.0 */
}

/* ---- comparing two signatures field by field --------------------------- */

static void assert_value_equal(const kiln__value *a, const kiln__value *b)
{
    size_t n = a->v.arr.n;

    assert_int_equal(a->type, b->type);
    assert_string_equal(a->name != NULL ? a->name : "",
                        b->name != NULL ? b->name : "");
    switch (a->type) {
    case KILN_TYPE_BOOL:
        assert_int_equal(a->v.b, b->v.b);
        return;
    case KILN_TYPE_FLOAT32:
    case KILN_TYPE_FLOAT64:
        assert_same_double(a->v.f, b->v.f);
        return;
    case KILN_TYPE_STRING:
        assert_ptr_not_equal(a->v.s, b->v.s);
        assert_string_equal(a->v.s, b->v.s);
        return;
    default:
        break;
    }
    if (a->type < KILN_TYPE_BOOL_SLICE) {
        assert_memory_equal(&a->v, &b->v, sizeof(a->v.i));
        return;
    }
    assert_int_equal(n, b->v.arr.n);
    if (n == 0)
        return;
    assert_ptr_not_equal(a->v.arr.ptr, b->v.arr.ptr);
    if (a->type == KILN_TYPE_STRING_SLICE) {
        for (size_t i = 0; i < n; i++)
            assert_string_equal(((char **)a->v.arr.ptr)[i],
                                ((char **)b->v.arr.ptr)[i]);
        return;
    }
    if (a->type == KILN_TYPE_BOOL_SLICE)
        n *= sizeof(bool);
    else if (a->type != KILN_TYPE_BYTES && a->type != KILN_TYPE_UINT8_SLICE)
        n *= 8; /* int64_t, uint64_t and double elements */
    assert_memory_equal(a->v.arr.ptr, b->v.arr.ptr, n);
}

static void assert_json_equal(const cJSON *a, const cJSON *b)
{
    assert_int_equal(a == NULL, b == NULL);
    if (a != NULL) {
        assert_ptr_not_equal(a, b);
        assert_true(cJSON_Compare(a, b, 1));
    }
}

static void assert_sig_equal(const kiln_signature *a, const kiln_signature *b)
{
    assert_string_equal(a->uuid, b->uuid);
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->routing_key, b->routing_key);
    assert_string_equal(a->group_uuid, b->group_uuid);
    assert_string_equal(a->broker_message_group_id, b->broker_message_group_id);
    assert_string_equal(a->sqs_receipt_handle, b->sqs_receipt_handle);
    assert_ptr_not_equal(a->uuid, b->uuid);
    assert_ptr_not_equal(a->sqs_receipt_handle, b->sqs_receipt_handle);
    assert_int_equal(a->group_task_count, b->group_task_count);
    assert_int_equal(a->priority, b->priority);
    assert_int_equal(a->retry_count, b->retry_count);
    assert_int_equal(a->retry_timeout, b->retry_timeout);
    assert_int_equal(a->retries_done, b->retries_done);
    assert_int_equal(a->task_timeout, b->task_timeout);
    assert_int_equal(a->wait_time, b->wait_time);
    assert_int_equal(a->immutable, b->immutable);
    assert_int_equal(a->ignore_unregistered, b->ignore_unregistered);
    assert_int_equal(a->stop_task_deletion_on_error,
                     b->stop_task_deletion_on_error);
    assert_int_equal(a->has_eta, b->has_eta);
    assert_int_equal(a->eta.unix_ns, b->eta.unix_ns);
    assert_int_equal(a->eta.offset_s, b->eta.offset_s);
    assert_int_equal(a->has_created_at, b->has_created_at);
    assert_int_equal(a->created_at.unix_ns, b->created_at.unix_ns);
    assert_int_equal(a->created_at.offset_s, b->created_at.offset_s);
    assert_int_equal(a->dialect, b->dialect);
    assert_int_equal(a->args.n, b->args.n);
    for (size_t i = 0; i < a->args.n; i++)
        assert_value_equal(&a->args.items[i], &b->args.items[i]);
    assert_int_equal(a->raw_args == NULL, b->raw_args == NULL);
    assert_int_equal(a->raw_args_len, b->raw_args_len);
    if (a->raw_args != NULL) {
        assert_ptr_not_equal(a->raw_args, b->raw_args);
        assert_memory_equal(a->raw_args, b->raw_args, a->raw_args_len + 1);
    }
    assert_json_equal(a->headers, b->headers);
    assert_json_equal(a->extra, b->extra);
}

/* ---- one argument of each of the 29 types, in enum order --------------- */

static const bool bools[] = {true, false, true};
static const int64_t ints[] = {-3, 0, 7};
static const uint64_t uints[] = {0, 9, 65535};
static const uint8_t octets[] = {0, 1, 0x80, 0xff, 0};
static const double floats[] = {0.5, -0.0, 1e30};
static const char *const strings[] = {"", "a", UTF8S};

/* Each add must leave the count alone on failure (checked here, since the
 * allocation walk calls this with failures injected). */
#define ADD(call)                                                    \
    do {                                                             \
        size_t before = kiln_signature_arg_count(sig);               \
        kiln_err rc_ = (call);                                       \
        if (rc_ != KILN_OK) {                                        \
            assert_int_equal(kiln_signature_arg_count(sig), before); \
            assert_int_equal(err->code, rc_);                        \
            return rc_;                                              \
        }                                                            \
        assert_int_equal(kiln_signature_arg_count(sig), before + 1); \
    } while (0)

static kiln_err add_every_type(kiln_signature *sig, const char *name,
                               kiln_error *err)
{
    ADD(kiln_signature_add_arg_bool(sig, name, true, err));
    for (int t = KILN_TYPE_INT; t <= KILN_TYPE_INT64; t++)
        ADD(kiln_signature_add_arg_int(sig, name, (kiln_type)t, 7, err));
    for (int t = KILN_TYPE_UINT; t <= KILN_TYPE_UINT64; t++)
        ADD(kiln_signature_add_arg_uint(sig, name, (kiln_type)t, 8, err));
    ADD(kiln_signature_add_arg_float(sig, name, KILN_TYPE_FLOAT32, 0.1, err));
    ADD(kiln_signature_add_arg_float64(sig, name, 0.1, err));
    ADD(kiln_signature_add_arg_string(sig, name, UTF8S, err));
    ADD(kiln_signature_add_arg_bool_slice(sig, name, bools, 3, err));
    for (int t = KILN_TYPE_INT_SLICE; t <= KILN_TYPE_INT64_SLICE; t++)
        ADD(kiln_signature_add_arg_int_slice(sig, name, (kiln_type)t, ints, 3,
                                             err));
    ADD(kiln_signature_add_arg_uint_slice(sig, name, KILN_TYPE_UINT_SLICE,
                                          uints, 3, err));
    ADD(kiln_signature_add_arg_uint8_slice(sig, name, octets, 5, err));
    for (int t = KILN_TYPE_UINT16_SLICE; t <= KILN_TYPE_UINT64_SLICE; t++)
        ADD(kiln_signature_add_arg_uint_slice(sig, name, (kiln_type)t, uints, 3,
                                              err));
    ADD(kiln_signature_add_arg_float_slice(sig, name, KILN_TYPE_FLOAT32_SLICE,
                                           floats, 3, err));
    ADD(kiln_signature_add_arg_float_slice(sig, name, KILN_TYPE_FLOAT64_SLICE,
                                           floats, 3, err));
    ADD(kiln_signature_add_arg_string_slice(sig, name, strings, 3, err));
    ADD(kiln_signature_add_arg_bytes(sig, name, octets, 5, err));
    return KILN_OK;
}

static void test_every_type_in_order(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    kiln_type t;

    assert_int_equal(add_every_type(sig, "x", &err), KILN_OK);
    assert_int_equal(kiln_signature_arg_count(sig), KILN_TYPE_LAST + 1);
    for (size_t i = 0; i <= KILN_TYPE_LAST; i++) {
        assert_int_equal(kiln_signature_arg_type(sig, i, &t, &err), KILN_OK);
        assert_int_equal(t, i);
        assert_string_equal(kiln_signature_arg_name(sig, i), "x");
    }
}

/* ---- getters: which getter reads which type ---------------------------- */

enum getter {
    G_BOOL,
    G_INT64,
    G_UINT64,
    G_DOUBLE,
    G_STRING,
    G_BYTES,
    G_BOOL_SLICE,
    G_INT64_SLICE,
    G_UINT64_SLICE,
    G_DOUBLE_SLICE,
    G_STRING_SLICE,
    G_COUNT
};

static kiln_err get(const kiln_signature *sig, enum getter g, size_t i,
                    kiln_error *err)
{
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double f;
        const char *s;
        const void *p;
    } o;
    size_t n;

    switch (g) {
    case G_BOOL:
        return kiln_signature_arg_bool(sig, i, &o.b, err);
    case G_INT64:
        return kiln_signature_arg_int64(sig, i, &o.i, err);
    case G_UINT64:
        return kiln_signature_arg_uint64(sig, i, &o.u, err);
    case G_DOUBLE:
        return kiln_signature_arg_double(sig, i, &o.f, err);
    case G_STRING:
        return kiln_signature_arg_string(sig, i, &o.s, err);
    case G_BYTES:
        return kiln_signature_arg_bytes(sig, i, (const uint8_t **)&o.p, &n,
                                        err);
    case G_BOOL_SLICE:
        return kiln_signature_arg_bool_slice(sig, i, (const bool **)&o.p, &n,
                                             err);
    case G_INT64_SLICE:
        return kiln_signature_arg_int64_slice(sig, i, (const int64_t **)&o.p,
                                              &n, err);
    case G_UINT64_SLICE:
        return kiln_signature_arg_uint64_slice(sig, i, (const uint64_t **)&o.p,
                                               &n, err);
    case G_DOUBLE_SLICE:
        return kiln_signature_arg_double_slice(sig, i, (const double **)&o.p,
                                               &n, err);
    default:
        return kiln_signature_arg_string_slice(
            sig, i, (const char *const **)&o.p, &n, err);
    }
}

static bool accepts(enum getter g, kiln_type t)
{
    switch (g) {
    case G_BOOL:
        return t == KILN_TYPE_BOOL;
    case G_INT64:
    case G_UINT64:
        return t >= KILN_TYPE_INT && t <= KILN_TYPE_UINT64;
    case G_DOUBLE:
        return t == KILN_TYPE_FLOAT32 || t == KILN_TYPE_FLOAT64;
    case G_STRING:
        return t == KILN_TYPE_STRING;
    case G_BYTES:
        return t == KILN_TYPE_BYTES || t == KILN_TYPE_UINT8_SLICE;
    case G_BOOL_SLICE:
        return t == KILN_TYPE_BOOL_SLICE;
    case G_INT64_SLICE:
        return t >= KILN_TYPE_INT_SLICE && t <= KILN_TYPE_INT64_SLICE;
    case G_UINT64_SLICE:
        return t >= KILN_TYPE_UINT_SLICE && t <= KILN_TYPE_UINT64_SLICE &&
               t != KILN_TYPE_UINT8_SLICE;
    case G_DOUBLE_SLICE:
        return t == KILN_TYPE_FLOAT32_SLICE || t == KILN_TYPE_FLOAT64_SLICE;
    default:
        return t == KILN_TYPE_STRING_SLICE;
    }
}

static void test_getter_families(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    char want[96];

    assert_int_equal(add_every_type(sig, NULL, &err), KILN_OK);
    for (int g = 0; g < G_COUNT; g++) {
        for (size_t i = 0; i <= KILN_TYPE_LAST; i++) {
            kiln_err rc = get(sig, (enum getter)g, i, &err);

            if (accepts((enum getter)g, (kiln_type)i)) {
                assert_int_equal(rc, KILN_OK);
                continue;
            }
            assert_int_equal(rc, KILN_ETYPE);
            assert_int_equal(err.code, KILN_ETYPE);
            (void)snprintf(want, sizeof(want), "arg %zu: ", i);
            assert_memory_equal(err.message, want, strlen(want));
            assert_non_null(strstr(err.message, kiln_type_name((kiln_type)i)));
        }
        assert_int_equal(get(sig, (enum getter)g, KILN_TYPE_LAST + 1, &err),
                         KILN_ENOTFOUND);
        assert_non_null(strstr(err.message, "arg 29"));
    }
}

static void test_getter_messages(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    int64_t i64 = 42;
    uint64_t u64 = 42;
    const char *s = "keep";
    kiln_type t = KILN_TYPE_BOOL;

    assert_int_equal(kiln_signature_add_arg_bool(sig, NULL, true, &err), 0);
    assert_int_equal(kiln_signature_add_arg_int64(sig, NULL, -1, &err), 0);
    assert_int_equal(kiln_signature_add_arg_string(sig, NULL, "s", &err), 0);
    assert_int_equal(kiln_signature_add_arg_uint64(sig, NULL, UINT64_MAX, &err),
                     0);
    assert_int_equal(kiln_signature_arg_int64(sig, 2, &i64, &err), KILN_ETYPE);
    assert_string_equal(err.message, "arg 2: want int64, have string");
    assert_int_equal(i64, 42); /* untouched on failure */
    assert_int_equal(kiln_signature_arg_uint64(sig, 1, &u64, &err),
                     KILN_ERANGE);
    assert_string_equal(err.message,
                        "arg 1: want uint64, have int64 -1 (out of range)");
    assert_int_equal(u64, 42);
    assert_int_equal(kiln_signature_arg_int64(sig, 3, &i64, &err), KILN_ERANGE);
    assert_non_null(strstr(err.message, "want int64, have uint64"));
    assert_int_equal(i64, 42);
    assert_int_equal(kiln_signature_arg_string(sig, 9, &s, &err),
                     KILN_ENOTFOUND);
    assert_string_equal(err.message, "arg 9: no such argument (4 in all)");
    assert_string_equal(s, "keep");
    assert_int_equal(kiln_signature_arg_type(sig, 4, &t, &err), KILN_ENOTFOUND);
    assert_int_equal(t, KILN_TYPE_BOOL);
    assert_null(kiln_signature_arg_name(sig, 4));
    assert_string_equal(kiln_signature_arg_name(sig, 0), "");
    assert_int_equal(kiln_signature_arg_int64(sig, 0, NULL, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_int64(NULL, 0, &i64, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_bytes(sig, 0, NULL, NULL, NULL),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_count(NULL), 0);
}

/* ---- scalars ----------------------------------------------------------- */

static void test_bool(void **state)
{
    kiln_signature *sig = *state;
    bool b = false;

    assert_int_equal(kiln_signature_add_arg_bool(sig, "t", true, NULL), 0);
    assert_int_equal(kiln_signature_add_arg_bool(sig, "f", false, NULL), 0);
    assert_int_equal(kiln_signature_arg_bool(sig, 0, &b, NULL), KILN_OK);
    assert_true(b);
    assert_int_equal(kiln_signature_arg_bool(sig, 1, &b, NULL), KILN_OK);
    assert_false(b);
    assert_string_equal(kiln_signature_arg_name(sig, 1), "f");
}

static const struct {
    kiln_type type;
    int64_t lo, hi;
} int_limits[] = {
    {KILN_TYPE_INT, INT64_MIN, INT64_MAX},
    {KILN_TYPE_INT8, INT8_MIN, INT8_MAX},
    {KILN_TYPE_INT16, INT16_MIN, INT16_MAX},
    {KILN_TYPE_INT32, INT32_MIN, INT32_MAX},
    {KILN_TYPE_INT64, INT64_MIN, INT64_MAX},
};

static const struct {
    kiln_type type;
    uint64_t hi;
} uint_limits[] = {
    {KILN_TYPE_UINT, UINT64_MAX},   {KILN_TYPE_UINT8, UINT8_MAX},
    {KILN_TYPE_UINT16, UINT16_MAX}, {KILN_TYPE_UINT32, UINT32_MAX},
    {KILN_TYPE_UINT64, UINT64_MAX},
};

static void test_signed_ranges(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    int64_t got;
    uint64_t u;

    for (size_t k = 0; k < KILN__ARRAY_LEN(int_limits); k++) {
        kiln_type t = int_limits[k].type;
        int64_t vals[] = {int_limits[k].lo, 0, int_limits[k].hi};
        size_t base = kiln_signature_arg_count(sig);

        for (size_t j = 0; j < 3; j++) {
            kiln_type have;

            assert_int_equal(
                kiln_signature_add_arg_int(sig, "n", t, vals[j], &err), 0);
            assert_int_equal(
                kiln_signature_arg_int64(sig, base + j, &got, &err), 0);
            assert_int_equal(got, vals[j]);
            assert_int_equal(
                kiln_signature_arg_type(sig, base + j, &have, &err), 0);
            assert_int_equal(have, t);
        }
        assert_int_equal(kiln_signature_arg_uint64(sig, base + 2, &u, &err), 0);
        assert_int_equal(u, (uint64_t)int_limits[k].hi);
        assert_int_equal(kiln_signature_arg_uint64(sig, base, &u, &err),
                         KILN_ERANGE);
        if (int_limits[k].hi == INT64_MAX)
            continue;
        assert_int_equal(kiln_signature_add_arg_int(sig, NULL, t,
                                                    int_limits[k].hi + 1, &err),
                         KILN_ERANGE);
        assert_non_null(strstr(err.message, "out of range"));
        assert_int_equal(kiln_signature_add_arg_int(sig, NULL, t,
                                                    int_limits[k].lo - 1, &err),
                         KILN_ERANGE);
        assert_int_equal(kiln_signature_arg_count(sig), base + 3);
    }
    assert_int_equal(
        kiln_signature_add_arg_int(sig, NULL, KILN_TYPE_INT8, 200, &err),
        KILN_ERANGE);
    assert_string_equal(err.message,
                        "arg 15: int8 value 200 out of range [-128, 127]");
}

static void test_unsigned_ranges(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    uint64_t got;
    int64_t s;

    for (size_t k = 0; k < KILN__ARRAY_LEN(uint_limits); k++) {
        kiln_type t = uint_limits[k].type;
        size_t base = kiln_signature_arg_count(sig);

        assert_int_equal(kiln_signature_add_arg_uint(sig, NULL, t, 0, &err), 0);
        assert_int_equal(
            kiln_signature_add_arg_uint(sig, NULL, t, uint_limits[k].hi, &err),
            0);
        assert_int_equal(kiln_signature_arg_uint64(sig, base, &got, &err), 0);
        assert_int_equal(got, 0);
        assert_int_equal(kiln_signature_arg_uint64(sig, base + 1, &got, &err),
                         0);
        assert_int_equal(got, uint_limits[k].hi);
        assert_int_equal(kiln_signature_arg_int64(sig, base + 1, &s, &err),
                         uint_limits[k].hi > INT64_MAX ? KILN_ERANGE : 0);
        if (uint_limits[k].hi == UINT64_MAX)
            continue;
        assert_int_equal(kiln_signature_add_arg_uint(
                             sig, NULL, t, uint_limits[k].hi + 1, &err),
                         KILN_ERANGE);
        assert_int_equal(kiln_signature_arg_count(sig), base + 2);
    }
    assert_int_equal(kiln_signature_add_arg_uint64(sig, NULL, 5, &err), 0);
    assert_int_equal(kiln_signature_arg_int64(sig, 10, &s, &err), 0);
    assert_int_equal(s, 5);
}

static void test_family_errors(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    const int64_t i1[] = {1};
    const uint64_t u1[] = {1};
    const double d1[] = {1};

    assert_int_equal(
        kiln_signature_add_arg_int(sig, NULL, KILN_TYPE_UINT8, 1, &err),
        KILN_EINVAL);
    assert_non_null(strstr(err.message, "uint8"));
    assert_int_equal(
        kiln_signature_add_arg_int(sig, NULL, (kiln_type)99, 1, &err),
        KILN_EINVAL);
    assert_int_equal(
        kiln_signature_add_arg_int(sig, NULL, KILN_TYPE_INT_SLICE, 1, &err),
        KILN_EINVAL);
    assert_int_equal(
        kiln_signature_add_arg_uint(sig, NULL, KILN_TYPE_INT64, 1, &err),
        KILN_EINVAL);
    assert_int_equal(
        kiln_signature_add_arg_float(sig, NULL, KILN_TYPE_INT, 1, &err),
        KILN_EINVAL);
    assert_int_equal(kiln_signature_add_arg_int_slice(
                         sig, NULL, KILN_TYPE_INT64, i1, 1, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_add_arg_uint_slice(
                         sig, NULL, KILN_TYPE_UINT8_SLICE, u1, 1, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_add_arg_uint_slice(
                         sig, NULL, KILN_TYPE_INT_SLICE, u1, 1, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT64, d1, 1, &err),
                     KILN_EINVAL);
    /* The family check comes first even when the value is also bad. */
    assert_int_equal(
        kiln_signature_add_arg_int(sig, NULL, KILN_TYPE_UINT8, -5, &err),
        KILN_EINVAL);
    assert_int_equal(kiln_signature_add_arg_bool(NULL, NULL, true, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_count(sig), 0);
}

/* ---- floats ------------------------------------------------------------ */

static void test_float32(void **state)
{
    static const struct {
        double in, want;
    } cases[] = {
        {FLT_MAX, FLT_MAX},
        {-FLT_MAX, -FLT_MAX},
        {FLT_MIN, FLT_MIN},
        {FLT_TRUE_MIN, FLT_TRUE_MIN},
        {-FLT_TRUE_MIN, -FLT_TRUE_MIN},
        {-0.0, -0.0},
        {0.0, 0.0},
        {0.1, (double)0.1f},
        {16777217.0, 16777216.0}, /* ties round to even */
        {3.4028235e38, FLT_MAX},  /* Go's text for FLT_MAX */
        {0x1.fffffefffffffp+127, FLT_MAX},
        {1e-46, 0.0}, /* underflows to zero */
    };
    static const struct {
        double in;
        kiln_err rc;
    } bad[] = {
        {1e39, KILN_ERANGE},      {-1e39, KILN_ERANGE},
        {DBL_MAX, KILN_ERANGE},   {0x1.ffffffp+127, KILN_ERANGE},
        {NAN, KILN_EINVAL},       {INFINITY, KILN_EINVAL},
        {-INFINITY, KILN_EINVAL},
    };
    kiln_signature *sig = *state;
    kiln_error err;
    double got;

    for (size_t k = 0; k < KILN__ARRAY_LEN(cases); k++) {
        assert_int_equal(kiln_signature_add_arg_float(
                             sig, NULL, KILN_TYPE_FLOAT32, cases[k].in, &err),
                         KILN_OK);
        assert_int_equal(kiln_signature_arg_double(sig, k, &got, &err), 0);
        assert_same_double(got, cases[k].want);
    }
    for (size_t k = 0; k < KILN__ARRAY_LEN(bad); k++) {
        assert_int_equal(kiln_signature_add_arg_float(
                             sig, NULL, KILN_TYPE_FLOAT32, bad[k].in, &err),
                         bad[k].rc);
        assert_int_equal(err.code, bad[k].rc);
    }
    assert_int_equal(kiln_signature_arg_count(sig), KILN__ARRAY_LEN(cases));
}

static void test_float64(void **state)
{
    static const double good[] = {DBL_MAX,      -DBL_MAX, DBL_MIN,
                                  DBL_TRUE_MIN, -0.0,     0.1,
                                  1e308,        -1e-300,  FLT_MAX * 2.0};
    static const double bad[] = {NAN, INFINITY, -INFINITY};
    kiln_signature *sig = *state;
    kiln_error err;
    double got;

    for (size_t k = 0; k < KILN__ARRAY_LEN(good); k++) {
        assert_int_equal(kiln_signature_add_arg_float64(sig, "", good[k], &err),
                         KILN_OK);
        assert_int_equal(kiln_signature_arg_double(sig, k, &got, &err), 0);
        assert_same_double(got, good[k]);
    }
    for (size_t k = 0; k < KILN__ARRAY_LEN(bad); k++) {
        assert_int_equal(kiln_signature_add_arg_float(
                             sig, NULL, KILN_TYPE_FLOAT64, bad[k], &err),
                         KILN_EINVAL);
        assert_non_null(strstr(err.message, "NaN or infinity"));
    }
    assert_int_equal(kiln_signature_arg_count(sig), KILN__ARRAY_LEN(good));
}

/* ---- strings and bytes ------------------------------------------------- */

static void test_strings(void **state)
{
    static const char *const good[] = {"", "plain", UTF8S, EURO, CLEF};
    static const char *const bad[] = {
        "\xff",         "\xc0\xaf",         /* overlong '/' */
        "\xed\xa0\x80", "\xf4\x90\x80\x80", /* surrogate, above U+10FFFF */
        "ok\xe2\x82",                       /* cut short */
    };
    kiln_signature *sig = *state;
    kiln_error err;
    const char *got;
    char mine[] = "mutable";

    for (size_t k = 0; k < KILN__ARRAY_LEN(good); k++) {
        assert_int_equal(
            kiln_signature_add_arg_string(sig, good[k], good[k], &err), 0);
        assert_int_equal(kiln_signature_arg_string(sig, k, &got, &err), 0);
        assert_string_equal(got, good[k]);
        assert_string_equal(kiln_signature_arg_name(sig, k), good[k]);
    }
    for (size_t k = 0; k < KILN__ARRAY_LEN(bad); k++) {
        assert_int_equal(kiln_signature_add_arg_string(sig, NULL, bad[k], &err),
                         KILN_EINVAL);
        assert_non_null(strstr(err.message, "UTF-8"));
        assert_int_equal(kiln_signature_add_arg_bool(sig, bad[k], true, &err),
                         KILN_EINVAL);
    }
    assert_int_equal(kiln_signature_add_arg_string(sig, NULL, NULL, &err),
                     KILN_EINVAL);
    /* The value is copied, not borrowed. */
    assert_int_equal(kiln_signature_add_arg_string(sig, NULL, mine, &err), 0);
    mine[0] = 'X';
    assert_int_equal(kiln_signature_arg_string(sig, 5, &got, &err), 0);
    assert_string_equal(got, "mutable");
    assert_int_equal(kiln_signature_arg_count(sig), 6);
}

static void test_bytes(void **state)
{
    static const uint8_t data[] = {0, 1, 0x7f, 0x80, 0xff, 0};
    kiln_signature *sig = *state;
    kiln_error err;
    const uint8_t *got;
    size_t n;
    kiln_type t;

    assert_int_equal(kiln_signature_add_arg_bytes(sig, "b", data, 6, &err), 0);
    assert_int_equal(kiln_signature_add_arg_bytes(sig, NULL, NULL, 0, &err), 0);
    assert_int_equal(kiln_signature_add_arg_bytes(sig, NULL, data, 0, &err), 0);
    assert_int_equal(
        kiln_signature_add_arg_uint8_slice(sig, NULL, data, 6, &err), 0);
    assert_int_equal(kiln_signature_add_arg_bytes(sig, NULL, NULL, 3, &err),
                     KILN_EINVAL);
    assert_int_equal(
        kiln_signature_add_arg_uint8_slice(sig, NULL, NULL, 1, &err),
        KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_count(sig), 4);
    assert_int_equal(kiln_signature_arg_bytes(sig, 0, &got, &n, &err), 0);
    assert_int_equal(n, 6);
    assert_ptr_not_equal(got, data);
    assert_memory_equal(got, data, 6);
    for (size_t i = 1; i <= 2; i++) {
        assert_int_equal(kiln_signature_arg_bytes(sig, i, &got, &n, &err), 0);
        assert_int_equal(n, 0);
    }
    assert_int_equal(kiln_signature_arg_bytes(sig, 3, &got, &n, &err), 0);
    assert_memory_equal(got, data, 6);
    assert_int_equal(kiln_signature_arg_type(sig, 0, &t, &err), 0);
    assert_int_equal(t, KILN_TYPE_BYTES);
    assert_int_equal(kiln_signature_arg_type(sig, 3, &t, &err), 0);
    assert_int_equal(t, KILN_TYPE_UINT8_SLICE);
}

/* ---- slices ------------------------------------------------------------ */

static void test_int_slices(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    const int64_t *got;
    size_t n;

    for (size_t k = 0; k < KILN__ARRAY_LEN(int_limits); k++) {
        kiln_type t = (kiln_type)(int_limits[k].type + KILN_TYPE_BOOL_SLICE);
        int64_t v[] = {int_limits[k].lo, 0, int_limits[k].hi};
        size_t i = kiln_signature_arg_count(sig);

        assert_int_equal(
            kiln_signature_add_arg_int_slice(sig, NULL, t, v, 3, &err), 0);
        assert_int_equal(
            kiln_signature_add_arg_int_slice(sig, NULL, t, NULL, 0, &err), 0);
        assert_int_equal(kiln_signature_arg_int64_slice(sig, i, &got, &n, &err),
                         0);
        assert_int_equal(n, 3);
        assert_memory_equal(got, v, sizeof(v));
        assert_int_equal(
            kiln_signature_arg_int64_slice(sig, i + 1, &got, &n, &err), 0);
        assert_int_equal(n, 0);
        if (int_limits[k].hi == INT64_MAX)
            continue;
        v[1] = int_limits[k].hi + 1;
        assert_int_equal(
            kiln_signature_add_arg_int_slice(sig, NULL, t, v, 3, &err),
            KILN_ERANGE);
        assert_non_null(strstr(err.message, "[1] value"));
        assert_int_equal(kiln_signature_arg_count(sig), i + 2);
    }
    assert_int_equal(kiln_signature_add_arg_int_slice(
                         sig, NULL, KILN_TYPE_INT_SLICE, NULL, 2, &err),
                     KILN_EINVAL);
}

static void test_uint_slices(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    const uint64_t *got;
    size_t n;

    for (size_t k = 0; k < KILN__ARRAY_LEN(uint_limits); k++) {
        kiln_type t = (kiln_type)(uint_limits[k].type + KILN_TYPE_BOOL_SLICE);
        uint64_t v[] = {0, 1, uint_limits[k].hi};
        size_t i = kiln_signature_arg_count(sig);

        if (t == KILN_TYPE_UINT8_SLICE)
            continue; /* bytes: see test_bytes */
        assert_int_equal(
            kiln_signature_add_arg_uint_slice(sig, NULL, t, v, 3, &err), 0);
        assert_int_equal(
            kiln_signature_arg_uint64_slice(sig, i, &got, &n, &err), 0);
        assert_int_equal(n, 3);
        assert_memory_equal(got, v, sizeof(v));
        if (uint_limits[k].hi == UINT64_MAX)
            continue;
        v[0] = uint_limits[k].hi + 1;
        assert_int_equal(
            kiln_signature_add_arg_uint_slice(sig, NULL, t, v, 3, &err),
            KILN_ERANGE);
        assert_non_null(strstr(err.message, "[0] value"));
        assert_int_equal(kiln_signature_arg_count(sig), i + 1);
    }
    assert_int_equal(kiln_signature_arg_count(sig), 4);
}

static void test_float_slices(void **state)
{
    static const double in32[] = {FLT_MAX, 0.1, -0.0, FLT_TRUE_MIN,
                                  3.4028235e38};
    static const double in64[] = {DBL_MAX, DBL_TRUE_MIN, -0.0, 0.1};
    const double bad_nan[] = {1, NAN};
    const double bad_big[] = {1e39};
    double want32[] = {FLT_MAX, (double)0.1f, -0.0, FLT_TRUE_MIN, FLT_MAX};
    kiln_signature *sig = *state;
    kiln_error err;
    const double *got;
    size_t n;

    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT32_SLICE, in32, 5, &err),
                     0);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT64_SLICE, in64, 4, &err),
                     0);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT32_SLICE, NULL, 0, &err),
                     0);
    assert_int_equal(kiln_signature_arg_double_slice(sig, 0, &got, &n, &err),
                     0);
    assert_int_equal(n, 5);
    assert_memory_equal(got, want32, sizeof(want32));
    assert_int_equal(kiln_signature_arg_double_slice(sig, 1, &got, &n, &err),
                     0);
    assert_memory_equal(got, in64, sizeof(in64));
    assert_int_equal(kiln_signature_arg_double_slice(sig, 2, &got, &n, &err),
                     0);
    assert_int_equal(n, 0);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT64_SLICE, bad_nan, 2, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT32_SLICE, bad_big, 1, &err),
                     KILN_ERANGE);
    assert_int_equal(kiln_signature_arg_count(sig), 3);
}

static void test_bool_and_string_slices(void **state)
{
    static const char *const bad_utf8[] = {"ok", "\xff"};
    static const char *const bad_null[] = {"ok", NULL};
    kiln_signature *sig = *state;
    kiln_error err;
    const bool *b;
    const char *const *s;
    size_t n;

    assert_int_equal(
        kiln_signature_add_arg_bool_slice(sig, "b", bools, 3, &err), 0);
    assert_int_equal(
        kiln_signature_add_arg_bool_slice(sig, NULL, NULL, 0, &err), 0);
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, "s", strings, 3, &err), 0);
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, NULL, NULL, 0, &err), 0);
    assert_int_equal(kiln_signature_arg_bool_slice(sig, 0, &b, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(b, bools, sizeof(bools));
    assert_int_equal(kiln_signature_arg_bool_slice(sig, 1, &b, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(kiln_signature_arg_string_slice(sig, 2, &s, &n, &err), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_ptr_not_equal(s[i], strings[i]);
        assert_string_equal(s[i], strings[i]);
    }
    assert_int_equal(kiln_signature_arg_string_slice(sig, 3, &s, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, NULL, bad_utf8, 2, &err),
        KILN_EINVAL);
    assert_string_equal(err.message, "arg 4: []string[1] is not valid UTF-8");
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, NULL, bad_null, 2, &err),
        KILN_EINVAL);
    assert_int_equal(kiln_signature_arg_count(sig), 4);
}

/* ---- the signature and its options ------------------------------------- */

static void assert_task_uuid(const char *s)
{
    const char *u = s + 5;

    assert_int_equal(strlen(s), 41);
    assert_memory_equal(s, "task_", 5);
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(u[i], '-');
        else
            assert_non_null(memchr("0123456789abcdef", u[i], 16));
    }
    assert_int_equal(u[14], '4');              /* version 4 */
    assert_non_null(memchr("89ab", u[19], 4)); /* RFC 4122 variant */
}

static void test_new_defaults(void **state)
{
    kiln_signature *sig = *state;
    int64_t ns = 7;

    assert_task_uuid(kiln_signature_uuid(sig));
    assert_string_equal(kiln_signature_name(sig), "add");
    assert_string_equal(kiln_signature_routing_key(sig), "");
    assert_string_equal(kiln_signature_group_uuid(sig), "");
    assert_non_null(sig->broker_message_group_id);
    assert_non_null(sig->sqs_receipt_handle);
    assert_int_equal(kiln_signature_priority(sig), 0);
    assert_int_equal(kiln_signature_retry_count(sig), 0);
    assert_int_equal(kiln_signature_retry_timeout(sig), 0);
    assert_int_equal(kiln_signature_retries_done(sig), 0);
    assert_int_equal(kiln_signature_task_timeout(sig), 0);
    assert_false(kiln_signature_ignore_unregistered(sig));
    assert_false(kiln_signature_eta(sig, &ns));
    assert_false(kiln_signature_created_at(sig, &ns));
    assert_int_equal(ns, 7);
    assert_int_equal(kiln_signature_arg_count(sig), 0);
    assert_null(kiln_signature_raw_body(sig, NULL));
    assert_null(sig->headers);
    assert_null(sig->extra);
}

static void test_new_rejects(void **state)
{
    kiln_error err;

    (void)state;
    assert_null(kiln_signature_new(NULL, &err));
    assert_int_equal(err.code, KILN_EINVAL);
    assert_null(kiln_signature_new("", &err));
    assert_int_equal(err.code, KILN_EINVAL);
    assert_null(kiln_signature_new("bad\xff", &err));
    assert_int_equal(err.code, KILN_EINVAL);
    assert_null(kiln_signature_new("", NULL));
    assert_null(kiln_signature_copy(NULL, &err));
    assert_int_equal(err.code, KILN_EINVAL);
    kiln_signature_free(NULL);
    /* Reading a NULL signature gives the empty values. */
    assert_string_equal(kiln_signature_uuid(NULL), "");
    assert_string_equal(kiln_signature_name(NULL), "");
    assert_int_equal(kiln_signature_priority(NULL), 0);
    assert_false(kiln_signature_eta(NULL, NULL));
    assert_null(kiln_signature_raw_body(NULL, NULL));
}

static void test_string_options(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    char long_text[300];

    memset(long_text, 'k', sizeof(long_text));
    long_text[255] = '\0';
    assert_int_equal(kiln_signature_set_uuid(sig, "task_x", &err), 0);
    assert_string_equal(kiln_signature_uuid(sig), "task_x");
    assert_int_equal(kiln_signature_set_uuid(sig, long_text, &err), 0);
    assert_int_equal(kiln_signature_set_routing_key(sig, long_text, &err), 0);
    assert_int_equal(kiln_signature_set_routing_key(sig, "", &err), 0);
    assert_int_equal(kiln_signature_set_routing_key(sig, "q" EURO, &err), 0);
    long_text[255] = 'k';
    long_text[256] = '\0';
    assert_int_equal(kiln_signature_set_uuid(sig, long_text, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.message, "256 bytes"));
    assert_int_equal(kiln_signature_set_routing_key(sig, long_text, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_set_uuid(sig, "", &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_uuid(sig, NULL, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_uuid(sig, "\xc0\x80", &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_set_uuid(NULL, "x", &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_routing_key(sig, NULL, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_set_routing_key(sig, "\xff", &err),
                     KILN_EINVAL);
    assert_int_equal(strlen(kiln_signature_uuid(sig)), 255);
    assert_string_equal(kiln_signature_routing_key(sig), "q" EURO);
    assert_int_equal(kiln_signature_set_group(sig, "group_1", 3, &err), 0);
    assert_string_equal(kiln_signature_group_uuid(sig), "group_1");
    assert_int_equal(sig->group_task_count, 3);
    assert_int_equal(kiln_signature_set_group(sig, "g2", -1, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_set_group(sig, NULL, 4, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_group(sig, "\xff", 4, &err),
                     KILN_EINVAL);
    assert_string_equal(kiln_signature_group_uuid(sig), "group_1");
    assert_int_equal(sig->group_task_count, 3);
}

static void test_number_options(void **state)
{
    kiln_signature *sig = *state;
    kiln_error err;
    int64_t ns = 0;

    assert_int_equal(kiln_signature_set_priority(sig, 255, &err), 0);
    assert_int_equal(kiln_signature_set_priority(sig, 256, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_priority(sig), 255);
    assert_int_equal(kiln_signature_set_retry(sig, 3, 10, &err), 0);
    assert_int_equal(kiln_signature_set_retry(sig, -1, 10, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_retry(sig, 1, -1, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_retry_count(sig), 3);
    assert_int_equal(kiln_signature_retry_timeout(sig), 10);
    assert_int_equal(kiln_signature_set_task_timeout(sig, 30, &err), 0);
    assert_int_equal(kiln_signature_set_task_timeout(sig, -5, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_task_timeout(sig), 30);
    assert_int_equal(kiln_signature_set_priority(NULL, 1, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_retry(NULL, 1, 1, &err), KILN_EINVAL);
    assert_int_equal(kiln_signature_set_task_timeout(NULL, 1, &err),
                     KILN_EINVAL);
    kiln_signature_set_ignore_unregistered(sig, true);
    assert_true(kiln_signature_ignore_unregistered(sig));
    kiln_signature_set_eta(sig, INT64_MIN);
    assert_true(kiln_signature_eta(sig, &ns));
    assert_int_equal(ns, INT64_MIN);
    kiln_signature_set_eta(sig, 1700000000123456789);
    assert_true(kiln_signature_eta(sig, &ns));
    assert_int_equal(ns, 1700000000123456789);
    assert_int_equal(sig->eta.offset_s, 0);
    kiln_signature_clear_eta(sig);
    assert_false(kiln_signature_eta(sig, &ns));
    sig->has_created_at = true;
    sig->created_at.unix_ns = 42;
    assert_true(kiln_signature_created_at(sig, &ns));
    assert_int_equal(ns, 42);
    kiln_signature_set_ignore_unregistered(NULL, true);
    kiln_signature_set_eta(NULL, 1);
    kiln_signature_clear_eta(NULL);
}

static void test_raw_body(void **state)
{
    static const char *const bad[] = {
        "",    "{",    "{\"a\":",  "{} x",       "[1,]",
        "nul", "{}{}", "\"\xff\"", "{\"a\":1}}",
    };
    char buf[] = "{\"a\":[1,2,\"" EURO "\"]}GARBAGE";
    size_t json_len = strlen(buf) - strlen("GARBAGE");
    kiln_signature *sig = *state;
    kiln_error err;
    const char *got;
    size_t n = 99;

    assert_int_equal(kiln_signature_set_raw_body(sig, buf, json_len, &err), 0);
    got = kiln_signature_raw_body(sig, &n);
    assert_int_equal(n, json_len);
    assert_memory_equal(got, buf, json_len);
    assert_int_equal(got[n], '\0');
    for (size_t k = 0; k < KILN__ARRAY_LEN(bad); k++) {
        assert_int_equal(
            kiln_signature_set_raw_body(sig, bad[k], strlen(bad[k]), &err),
            KILN_ECODEC);
        assert_int_equal(err.code, KILN_ECODEC);
    }
    /* An embedded NUL ends cJSON's parse early: refused. */
    assert_int_equal(kiln_signature_set_raw_body(sig, "{}\0 ", 4, &err),
                     KILN_ECODEC);
    assert_int_equal(kiln_signature_set_raw_body(sig, NULL, 0, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_set_raw_body(NULL, "1", 1, &err),
                     KILN_EINVAL);
    assert_ptr_equal(kiln_signature_raw_body(sig, &n), got); /* unchanged */
    assert_int_equal(kiln_signature_set_raw_body(sig, " 42 \n", 5, &err), 0);
    assert_string_equal(kiln_signature_raw_body(sig, &n), " 42 \n");
    assert_int_equal(n, 5);
}

/* ---- UUIDs and type names ---------------------------------------------- */

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_uuid(void **state)
{
    enum { COUNT = 10000 };
    char(*ids)[KILN_UUID_LEN] = malloc(COUNT * sizeof(*ids));
    char **sorted = malloc(COUNT * sizeof(*sorted));
    char small[KILN_UUID_LEN - 1];
    kiln_error err;

    (void)state;
    assert_non_null(ids);
    assert_non_null(sorted);
    for (size_t i = 0; i < COUNT; i++) {
        assert_int_equal(kiln_uuid_new(ids[i], KILN_UUID_LEN, &err), 0);
        assert_task_uuid(ids[i]);
        sorted[i] = ids[i];
    }
    qsort(sorted, COUNT, sizeof(*sorted), compare_strings);
    for (size_t i = 1; i < COUNT; i++)
        assert_string_not_equal(sorted[i - 1], sorted[i]);
    free(sorted);
    free(ids);
    assert_int_equal(kiln_uuid_new(small, sizeof(small), &err), KILN_EINVAL);
    assert_int_equal(kiln_uuid_new(NULL, KILN_UUID_LEN, &err), KILN_EINVAL);
}

static void test_type_names(void **state)
{
    static const char *const bad[] = {"",       "Int",     "[]",   "[]Byte",
                                      "int128", "[]int65", "byte", "[][]int",
                                      "float",  "int64 "};
    kiln_type t;

    (void)state;
    for (int i = 0; i <= KILN_TYPE_LAST; i++) {
        const char *name = kiln_type_name((kiln_type)i);

        assert_non_null(name);
        assert_int_equal(kiln_type_from_name(name, &t), KILN_OK);
        assert_int_equal(t, i);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(name, kiln_type_name((kiln_type)j));
    }
    assert_string_equal(kiln_type_name(KILN_TYPE_UINT8_SLICE), "[]uint8");
    assert_string_equal(kiln_type_name(KILN_TYPE_BYTES), "[]byte");
    assert_string_equal(kiln_type_name(KILN_TYPE_FLOAT64_SLICE), "[]float64");
    assert_null(kiln_type_name((kiln_type)(KILN_TYPE_LAST + 1)));
    assert_null(kiln_type_name((kiln_type)-1));
    t = KILN_TYPE_BOOL;
    for (size_t k = 0; k < KILN__ARRAY_LEN(bad); k++)
        assert_int_equal(kiln_type_from_name(bad[k], &t), KILN_ETYPE);
    assert_int_equal(kiln_type_from_name(NULL, &t), KILN_ETYPE);
    assert_int_equal(kiln_type_from_name("int", NULL), KILN_ETYPE);
    assert_int_equal(t, KILN_TYPE_BOOL);
}

/* ---- copies ------------------------------------------------------------ */

#define RAW "[1,{\"k\":null}]"

/* Fills every field, through the API where there is one and directly for
 * what only the decoder sets. Stops at the first failure. */
static kiln_err fill(kiln_signature *sig, kiln_error *err)
{
    kiln_err rc;

    if ((rc = add_every_type(sig, "first", err)) != KILN_OK ||
        (rc = add_every_type(sig, NULL, err)) != KILN_OK ||
        (rc = kiln_signature_set_routing_key(sig, "tasks", err)) != KILN_OK ||
        (rc = kiln_signature_set_group(sig, "group_x", 2, err)) != KILN_OK ||
        (rc = kiln_signature_set_priority(sig, 9, err)) != KILN_OK ||
        (rc = kiln_signature_set_retry(sig, 3, 5, err)) != KILN_OK ||
        (rc = kiln_signature_set_task_timeout(sig, 60, err)) != KILN_OK ||
        (rc = kiln__set_string(&sig->broker_message_group_id, "bmg", err)) !=
            KILN_OK ||
        (rc = kiln__set_string(&sig->sqs_receipt_handle, "rh", err)) !=
            KILN_OK ||
        (rc = kiln_signature_set_raw_body(sig, RAW, strlen(RAW), err)) !=
            KILN_OK)
        return rc;
    kiln_signature_set_ignore_unregistered(sig, true);
    kiln_signature_set_eta(sig, 1700000000000000001);
    sig->eta.offset_s = -3600;
    sig->has_created_at = true;
    sig->created_at.unix_ns = 1600000000000000000;
    sig->created_at.offset_s = 19800;
    sig->retries_done = 1;
    sig->wait_time = 4;
    sig->immutable = true;
    sig->stop_task_deletion_on_error = true;
    sig->dialect = KILN_DIALECT_PAOTA;
    return KILN_OK;
}

static void test_copy(void **state)
{
    kiln_signature *sig = *state;
    kiln_signature *copy;
    kiln_error err;
    const char *s;

    assert_int_equal(fill(sig, &err), KILN_OK);
    sig->headers = cJSON_Parse("{\"trace\":\"abc\",\"n\":[1,2]}");
    sig->extra = cJSON_Parse("{\"Future\":{\"x\":true}}");
    assert_non_null(sig->headers);
    assert_non_null(sig->extra);
    copy = kiln_signature_copy(sig, &err);
    assert_non_null(copy);
    assert_sig_equal(sig, copy);
    /* The copy owns everything: it outlives the original. */
    kiln_signature_free(sig);
    *state = NULL;
    assert_int_equal(kiln_signature_arg_string(copy, 13, &s, &err), 0);
    assert_string_equal(s, UTF8S);
    assert_string_equal(kiln_signature_raw_body(copy, NULL), RAW);
    *state = copy;
}

static void test_copy_empty(void **state)
{
    kiln_signature *sig = *state;
    kiln_signature *copy = kiln_signature_copy(sig, NULL);

    assert_non_null(copy);
    assert_sig_equal(sig, copy);
    assert_null(copy->args.items);
    kiln_signature_free(copy);
}

/* ---- the internal value list ------------------------------------------- */

static void test_values_owned(void **state)
{
    kiln__values list = {0};
    kiln__value v = {.type = KILN_TYPE_STRING_SLICE};
    char **arr = kiln__calloc(2, sizeof(char *));
    kiln_error err;

    (void)state;
    assert_non_null(arr);
    arr[0] = kiln__strdup("one");
    arr[1] = kiln__strdup(EURO);
    v.name = kiln__strdup("n");
    v.v.arr.ptr = arr;
    v.v.arr.n = 2;
    assert_int_equal(kiln__values_add_owned(&list, &v, &err), KILN_OK);
    assert_null(v.v.arr.ptr); /* moved */
    assert_ptr_equal(list.items[0].v.arr.ptr, arr);

    /* On failure the owned pointers are freed (a leak fails the run). */
    arr = kiln__calloc(2, sizeof(char *));
    assert_non_null(arr);
    arr[0] = kiln__strdup("fine");
    arr[1] = kiln__strdup("bad\xff");
    v = (kiln__value){.type = KILN_TYPE_STRING_SLICE, .name = NULL};
    v.v.arr.ptr = arr;
    v.v.arr.n = 2;
    assert_int_equal(kiln__values_add_owned(&list, &v, &err), KILN_EINVAL);
    assert_null(v.v.arr.ptr);
    v = (kiln__value){.type = (kiln_type)99, .name = kiln__strdup("x")};
    assert_int_equal(kiln__values_add_owned(&list, &v, &err), KILN_EINVAL);
    v = (kiln__value){.type = KILN_TYPE_STRING, .name = NULL};
    v.v.s = kiln__strdup("lost list");
    assert_int_equal(kiln__values_add_owned(NULL, &v, &err), KILN_EINVAL);
    assert_int_equal(kiln__values_add_owned(&list, NULL, &err), KILN_EINVAL);

    /* FLOAT32 is rounded to the nearest float on the way in. */
    v = (kiln__value){.type = KILN_TYPE_FLOAT32, .name = NULL};
    v.v.f = 0.1;
    assert_int_equal(kiln__values_add_owned(&list, &v, &err), KILN_OK);
    assert_same_double(list.items[1].v.f, (double)0.1f);
    assert_int_equal(list.n, 2);
    kiln__values_clear(&list);
    kiln__values_clear(&list);
    kiln__values_clear(NULL);
    kiln__value_release(NULL);
    assert_int_equal(list.n, 0);
}

static void test_values_add_checks(void **state)
{
    kiln__values list = {0};
    kiln__value v = {.type = (kiln_type)-1};
    kiln_error err;

    (void)state;
    assert_int_equal(kiln__values_add(&list, &v, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "unknown value type"));
    v.type = (kiln_type)(KILN_TYPE_LAST + 1);
    assert_int_equal(kiln__values_add(&list, &v, &err), KILN_EINVAL);
    v.type = KILN_TYPE_BYTES;
    v.v.arr.n = 3;
    assert_int_equal(kiln__values_add(&list, &v, &err), KILN_EINVAL);
    v.type = KILN_TYPE_INT64_SLICE;
    v.v.arr.ptr = &v;
    v.v.arr.n = SIZE_MAX / 4;
    assert_int_equal(kiln__values_add(&list, &v, &err), KILN_ENOMEM);
    v = (kiln__value){.type = KILN_TYPE_UINT16};
    v.v.u = 65536;
    assert_int_equal(kiln__values_add(&list, &v, &err), KILN_ERANGE);
    assert_string_equal(err.message,
                        "uint16 value 65536 out of range [0, 65535]");
    assert_int_equal(kiln__values_add(NULL, &v, &err), KILN_EINVAL);
    assert_int_equal(kiln__values_add(&list, NULL, &err), KILN_EINVAL);
    assert_int_equal(list.n, 0);
    assert_null(list.items);
}

static void test_values_copy(void **state)
{
    kiln_signature *sig = *state;
    kiln__values dst = {0};
    kiln_error err;

    assert_int_equal(add_every_type(sig, "a", &err), KILN_OK);
    assert_int_equal(kiln__values_copy(&dst, &sig->args, &err), KILN_OK);
    /* Copying over a full list replaces it; a failed copy keeps it. */
    assert_int_equal(kiln__values_copy(&dst, &sig->args, &err), KILN_OK);
    for (long n = 0;; n++) {
        kiln_err rc;

        kiln__alloc_fail_after(n);
        rc = kiln__values_copy(&dst, &sig->args, &err);
        kiln__alloc_fail_after(-1);
        assert_int_equal(dst.n, sig->args.n);
        for (size_t i = 0; i < dst.n; i++)
            assert_value_equal(&dst.items[i], &sig->args.items[i]);
        if (rc == KILN_OK)
            break;
        assert_int_equal(rc, KILN_ENOMEM);
    }
    assert_int_equal(kiln__values_copy(NULL, &dst, &err), KILN_EINVAL);
    kiln__values_clear(&dst);
}

static void test_internal_alloc_and_set(void **state)
{
    kiln_signature *sig = kiln__signature_alloc(NULL);
    char *slot = NULL;

    (void)state;
    assert_non_null(sig);
    assert_string_equal(sig->uuid, "");
    assert_string_equal(sig->name, "");
    assert_string_equal(sig->sqs_receipt_handle, "");
    assert_int_equal(sig->dialect, KILN_DIALECT_MACHINERY);
    assert_int_equal(kiln__set_string(&sig->name, "n", NULL), KILN_OK);
    assert_string_equal(kiln_signature_name(sig), "n");
    assert_int_equal(kiln__set_string(&sig->name, NULL, NULL), KILN_EINVAL);
    assert_int_equal(kiln__set_string(NULL, "x", NULL), KILN_EINVAL);
    assert_int_equal(kiln__set_string(&slot, "fresh", NULL), KILN_OK);
    assert_string_equal(slot, "fresh");
    kiln__free(slot);
    kiln_signature_free(sig);
}

/* ---- allocation failures ----------------------------------------------- */

/* Fails each allocation of "build a full signature and copy it" in turn:
 * every step either succeeds or reports KILN_ENOMEM, and the sanitizers
 * (or valgrind) see no leak, until a run passes with no failure left. */
static void test_alloc_failures(void **state)
{
    long n;

    (void)state;
    for (n = 0; n < 100000; n++) {
        kiln_error err = {KILN_OK, ""};
        kiln_signature *sig, *copy = NULL;
        kiln_err rc;
        bool fired;

        kiln__alloc_fail_after(n);
        sig = kiln_signature_new("walk", &err);
        rc = sig == NULL ? err.code : fill(sig, &err);
        if (rc == KILN_OK && (copy = kiln_signature_copy(sig, &err)) == NULL)
            rc = err.code;
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        if (fired) {
            assert_int_equal(rc, KILN_ENOMEM);
            assert_int_equal(err.code, KILN_ENOMEM);
            assert_true(err.message[0] != '\0');
            assert_null(copy);
        } else {
            assert_int_equal(rc, KILN_OK);
            assert_sig_equal(sig, copy);
        }
        kiln_signature_free(copy);
        kiln_signature_free(sig);
        if (!fired)
            break;
    }
    assert_true(n > 100); /* the walk did reach the copies */
    assert_true(n < 100000);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_every_type_in_order),
        T(test_getter_families),
        T(test_getter_messages),
        T(test_bool),
        T(test_signed_ranges),
        T(test_unsigned_ranges),
        T(test_family_errors),
        T(test_float32),
        T(test_float64),
        T(test_strings),
        T(test_bytes),
        T(test_int_slices),
        T(test_uint_slices),
        T(test_float_slices),
        T(test_bool_and_string_slices),
        T(test_new_defaults),
        T(test_new_rejects),
        T(test_string_options),
        T(test_number_options),
        T(test_raw_body),
        T(test_uuid),
        T(test_type_names),
        T(test_copy),
        T(test_copy_empty),
        T(test_values_owned),
        T(test_values_add_checks),
        T(test_values_copy),
        T(test_internal_alloc_and_set),
        T(test_alloc_failures),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
