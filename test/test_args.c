/* Task arguments: the setters and getters of all 29 types, which getter
 * reads which type, range and family checks, floats, UTF-8, bytes, slices
 * and the type names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/signature_fixture.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

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
        kiln_signature_add_arg_bool_slice(sig, "b", sample_bools, 3, &err), 0);
    assert_int_equal(
        kiln_signature_add_arg_bool_slice(sig, NULL, NULL, 0, &err), 0);
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, "s", sample_strings, 3, &err),
        0);
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, NULL, NULL, 0, &err), 0);
    assert_int_equal(kiln_signature_arg_bool_slice(sig, 0, &b, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(b, sample_bools, sizeof(sample_bools));
    assert_int_equal(kiln_signature_arg_bool_slice(sig, 1, &b, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(kiln_signature_arg_string_slice(sig, 2, &s, &n, &err), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_ptr_not_equal(s[i], sample_strings[i]);
        assert_string_equal(s[i], sample_strings[i]);
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

/* ---- type names -------------------------------------------------------- */

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

#define T(fn) cmocka_unit_test_setup_teardown(fn, sig_setup, sig_teardown)

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
        T(test_type_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
