#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/results_fixture.h"
#include "task/task.h"

#include <float.h>
#include <string.h>

/* The extremes of each element type, and values that are easy to get
 * wrong: zero bytes inside []byte, a uint64 above INT64_MAX (the store
 * writes it as a string), the smallest denormals, UTF-8 and "" strings. */
static const bool bools[] = {true, false, true};
static const int64_t ints[] = {INT64_MIN, -1, 0, 1, INT64_MAX};
static const int64_t int8s[] = {INT8_MIN, 0, INT8_MAX};
static const int64_t int16s[] = {INT16_MIN, 0, INT16_MAX};
static const int64_t int32s[] = {INT32_MIN, 0, INT32_MAX};
static const uint64_t uints[] = {0, 1, (uint64_t)INT64_MAX,
                                 (uint64_t)INT64_MAX + 1, UINT64_MAX};
static const uint8_t octets[] = {0, 1, 0x7f, 0x80, 0xff, 0};
static const uint64_t uint16s[] = {0, UINT16_MAX};
static const uint64_t uint32s[] = {0, UINT32_MAX};
static const double float32s[] = {FLT_MAX, -FLT_MAX, FLT_MIN, 0x1p-149, 0.5};
static const double float64s[] = {DBL_MAX,   -DBL_MAX, DBL_MIN,
                                  0x1p-1074, 0.1,      -2.5};
static const char *const strings[] = {"", "plain",
                                      "h\xc3\xa9llo \xf0\x9d\x84\x9e"};
static const uint8_t blob[] = {0, 0xff, 0, 0x10};

#define N(a) (sizeof(a) / sizeof((a)[0]))

typedef struct expect {
    kiln_type type;
    const void *v; /* the array slices_task passed, or NULL when empty */
    size_t n;
} expect;

/* In the order slices_task adds them: each slice type with values, in
 * enum order, []byte last; then each empty. */
static const expect with_values[] = {
    {KILN_TYPE_BOOL_SLICE, bools, N(bools)},
    {KILN_TYPE_INT_SLICE, ints, N(ints)},
    {KILN_TYPE_INT8_SLICE, int8s, N(int8s)},
    {KILN_TYPE_INT16_SLICE, int16s, N(int16s)},
    {KILN_TYPE_INT32_SLICE, int32s, N(int32s)},
    {KILN_TYPE_INT64_SLICE, ints, N(ints)},
    {KILN_TYPE_UINT_SLICE, uints, N(uints)},
    {KILN_TYPE_UINT8_SLICE, octets, N(octets)},
    {KILN_TYPE_UINT16_SLICE, uint16s, N(uint16s)},
    {KILN_TYPE_UINT32_SLICE, uint32s, N(uint32s)},
    {KILN_TYPE_UINT64_SLICE, uints, N(uints)},
    {KILN_TYPE_FLOAT32_SLICE, float32s, N(float32s)},
    {KILN_TYPE_FLOAT64_SLICE, float64s, N(float64s)},
    {KILN_TYPE_STRING_SLICE, strings, N(strings)},
    {KILN_TYPE_BYTES, blob, N(blob)},
};

_Static_assert(2 * N(with_values) == SLICE_RESULTS, "SLICE_RESULTS");

/* One result through the setter of its family. */
static kiln_err add_one(kiln_task_ctx *ctx, const expect *e, bool empty)
{
    const void *v = empty ? NULL : e->v;
    size_t n = empty ? 0 : e->n;

    switch (e->type) {
    case KILN_TYPE_BOOL_SLICE:
        return kiln_task_add_result_bool_slice(ctx, v, n, NULL);
    case KILN_TYPE_INT_SLICE:
    case KILN_TYPE_INT8_SLICE:
    case KILN_TYPE_INT16_SLICE:
    case KILN_TYPE_INT32_SLICE:
    case KILN_TYPE_INT64_SLICE:
        return kiln_task_add_result_int_slice(ctx, e->type, v, n, NULL);
    case KILN_TYPE_UINT8_SLICE:
        return kiln_task_add_result_uint8_slice(ctx, v, n, NULL);
    case KILN_TYPE_UINT_SLICE:
    case KILN_TYPE_UINT16_SLICE:
    case KILN_TYPE_UINT32_SLICE:
    case KILN_TYPE_UINT64_SLICE:
        return kiln_task_add_result_uint_slice(ctx, e->type, v, n, NULL);
    case KILN_TYPE_FLOAT32_SLICE:
    case KILN_TYPE_FLOAT64_SLICE:
        return kiln_task_add_result_float_slice(ctx, e->type, v, n, NULL);
    case KILN_TYPE_STRING_SLICE:
        return kiln_task_add_result_string_slice(ctx, v, n, NULL);
    default:
        return kiln_task_add_result_bytes(ctx, v, n, NULL);
    }
}

kiln_err slices_task(kiln_task_ctx *ctx, void *user)
{
    kiln_err rc;

    (void)user;
    for (int empty = 0; empty < 2; empty++)
        for (size_t i = 0; i < N(with_values); i++)
            if ((rc = add_one(ctx, &with_values[i], empty != 0)) != KILN_OK)
                return rc;
    return KILN_OK;
}

/* The elements of result `i` as the getter of its family gives them. */
static const void *read_one(const kiln_signature *res, size_t i, kiln_type t,
                            size_t *n)
{
    const void *p = NULL;
    kiln_err rc;

    if (t == KILN_TYPE_BOOL_SLICE)
        rc = kiln_signature_arg_bool_slice(res, i, (const bool **)&p, n, NULL);
    else if (t >= KILN_TYPE_INT_SLICE && t <= KILN_TYPE_INT64_SLICE)
        rc = kiln_signature_arg_int64_slice(res, i, (const int64_t **)&p, n,
                                            NULL);
    else if (t == KILN_TYPE_UINT8_SLICE || t == KILN_TYPE_BYTES)
        rc = kiln_signature_arg_bytes(res, i, (const uint8_t **)&p, n, NULL);
    else if (t >= KILN_TYPE_UINT_SLICE && t <= KILN_TYPE_UINT64_SLICE)
        rc = kiln_signature_arg_uint64_slice(res, i, (const uint64_t **)&p, n,
                                             NULL);
    else if (t == KILN_TYPE_FLOAT32_SLICE || t == KILN_TYPE_FLOAT64_SLICE)
        rc = kiln_signature_arg_double_slice(res, i, (const double **)&p, n,
                                             NULL);
    else
        rc = kiln_signature_arg_string_slice(res, i, (const char *const **)&p,
                                             n, NULL);
    assert_int_equal(rc, KILN_OK);
    return p;
}

void check_slice_results(const kiln_signature *res)
{
    assert_int_equal(kiln_signature_arg_count(res), SLICE_RESULTS);
    for (size_t i = 0; i < SLICE_RESULTS; i++) {
        const expect *e = &with_values[i % N(with_values)];
        size_t want = i < N(with_values) ? e->n : 0, n = SIZE_MAX;
        kiln_type t;
        const void *p;

        assert_int_equal(kiln_signature_arg_type(res, i, &t, NULL), KILN_OK);
        if (t != e->type)
            fail_msg("result %zu: type %s, want %s", i, kiln_type_name(t),
                     kiln_type_name(e->type));
        p = read_one(res, i, t, &n);
        if (n != want)
            fail_msg("result %zu (%s): %zu elements, want %zu", i,
                     kiln_type_name(t), n, want);
        if (t == KILN_TYPE_STRING_SLICE) {
            for (size_t k = 0; k < n; k++)
                assert_string_equal(((const char *const *)p)[k],
                                    ((const char *const *)e->v)[k]);
        } else if (n > 0 && memcmp(p, e->v, n * kiln__type_elem_size(t)) != 0) {
            /* Doubles bit for bit: memcmp tells -0.0 from 0.0. */
            fail_msg("result %zu (%s): elements differ", i, kiln_type_name(t));
        }
    }
}
