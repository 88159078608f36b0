/* What a decode costs in memory, on bodies of up to the 16 MiB limit made
 * of the smallest values JSON has. Every byte kiln and cJSON allocate during
 * kiln_signature_from_json is counted (core/alloc.c's counter, with
 * cJSON's hooks pointed at it), and the highest count is held to:
 *
 *   - at most 4 x the body + 64 KiB for what kiln decodes into the
 *     signature ([]int64 of one-digit numbers, the densest shape, is 4x
 *     and a few hundred bytes; []string of "" and runs of tiny arguments
 *     are under that), with one exception: a RawArgs made of <, > and &
 *     takes up to 6x, as Go's escaping writes it back;
 *   - at most 8 x the body + 1 MiB when it also keeps values verbatim
 *     (unknown keys, Headers, callbacks); a body whose verbatim values
 *     would cost more is refused with KILN_ETOOBIG, before their tree is
 *     built, so the refusal itself costs almost nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "task/task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB       ((size_t)1024 * 1024)
#define BODY_SIZE (16 * MIB - 4096)   /* under the default limit */
#define SLACK     ((size_t)64 * 1024) /* the signature, its strings, ... */
#define SMALLER   (4 * MIB) /* the same shapes, where size does not matter */

typedef struct body {
    char *s;
    size_t n;
    size_t cap;
} body;

static void put(body *b, const char *s)
{
    size_t len = strlen(s);

    if (b->n + len + 1 > b->cap) {
        b->cap = b->cap * 2 + len + 64;
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
    memcpy(b->s + b->n, s, len + 1);
    b->n += len;
}

/* head, then `item` repeated (comma-separated) while the whole stays under
 * `size`, then tail; *count gets the repetitions. */
static body make(const char *head, const char *item, const char *tail,
                 size_t size, size_t *count)
{
    size_t h = strlen(head), i = strlen(item), t = strlen(tail);
    size_t k = (size - h - t + 1) / (i + 1), n = h;
    body b = {malloc(size + 1), 0, size + 1};

    assert_non_null(b.s);
    memcpy(b.s, head, h);
    for (size_t j = 0; j < k; j++) {
        if (j > 0)
            b.s[n++] = ',';
        memcpy(b.s + n, item, i);
        n += i;
    }
    memcpy(b.s + n, tail, t + 1);
    b.n = n + t;
    *count = k;
    return b;
}

/* Decodes `b` while counting; returns the peak and the result code. */
static size_t decode_counted(const body *b, kiln_signature **sig,
                             kiln_error *err, kiln_err *rc)
{
    static const cJSON_Hooks counted = {kiln__malloc, kiln__free};
    size_t peak;

    cJSON_InitHooks((cJSON_Hooks *)&counted);
    kiln__alloc_count_start();
    *rc = kiln_signature_from_json(b->s, b->n, 0, sig, err);
    peak = kiln__alloc_count_stop();
    cJSON_InitHooks(NULL);
    print_message("body %zu bytes: peak %zu bytes (%.2fx), %s\n", b->n, peak,
                  (double)peak / (double)b->n,
                  *rc == KILN_OK ? "decoded" : err->message);
    return peak;
}

static void expect_within(const char *head, const char *item, const char *tail,
                          size_t size, double factor, kiln_type type,
                          size_t *count)
{
    body b = make(head, item, tail, size, count);
    kiln_signature *sig = NULL;
    kiln_error err = {0};
    kiln_err rc;
    size_t peak = decode_counted(&b, &sig, &err, &rc);

    assert_int_equal(rc, KILN_OK);
    assert_true(peak <= (size_t)(factor * (double)b.n) + SLACK);
    kiln_type got;

    assert_int_equal(kiln_signature_arg_count(sig),
                     type == KILN_TYPE_BOOL ? *count : 1);
    assert_int_equal(kiln_signature_arg_type(sig, 0, &got, NULL), KILN_OK);
    assert_int_equal(got, type);
    kiln_signature_free(sig);
    free(b.s);
}

#define HEAD "{\"UUID\":\"task_m1\",\"Name\":\"n\","

/* One []int64 of 8 million 1s: 2 bytes of text each, 8 bytes decoded. */
static void test_int64_slice(void **state)
{
    body b;
    size_t n;
    kiln_signature *sig = NULL;
    const int64_t *v;
    size_t got;
    kiln_err rc;
    kiln_error err = {0};

    (void)state;
    b = make(HEAD "\"Args\":[{\"Name\":\"xs\",\"Type\":\"[]int64\",\"Value\":[",
             "1", "]}]}", BODY_SIZE, &n);
    assert_true(decode_counted(&b, &sig, &err, &rc) <= 4 * b.n + SLACK);
    assert_int_equal(rc, KILN_OK);
    assert_int_equal(kiln_signature_arg_int64_slice(sig, 0, &v, &got, NULL),
                     KILN_OK);
    assert_int_equal(got, n);
    assert_true(v[0] == 1 && v[n - 1] == 1);
    kiln_signature_free(sig);
    free(b.s);
}

static void test_other_dense_shapes(void **state)
{
    size_t n;

    (void)state;
    expect_within(HEAD "\"Args\":[{\"Type\":\"[]float64\",\"Value\":[", "0",
                  "]}]}", SMALLER, 4, KILN_TYPE_FLOAT64_SLICE, &n);
    expect_within(HEAD "\"Args\":[{\"Type\":\"[]string\",\"Value\":[", "\"\"",
                  "]}]}", SMALLER, 4, KILN_TYPE_STRING_SLICE, &n);
    expect_within(HEAD "\"Args\":[{\"Type\":\"[]bool\",\"Value\":[", "true",
                  "]}]}", SMALLER, 4, KILN_TYPE_BOOL_SLICE, &n);
    expect_within(HEAD "\"Args\":[", "{\"Type\":\"bool\",\"Value\":true}", "]}",
                  SMALLER, 4, KILN_TYPE_BOOL, &n);
    expect_within(HEAD "\"Args\":[{\"Type\":\"[]uint8\",\"Value\":[", "7",
                  "]}]}", SMALLER, 4, KILN_TYPE_UINT8_SLICE, &n);
}

/* paota's RawArgs is kept as text, compacted as Go writes it back: its
 * own size, except that Go's HTML escaping writes each <, > and & as
 * \u003c and so on, six bytes for one. */
static void test_raw_args(void **state)
{
    static const struct {
        const char *head, *item, *tail;
        double factor;
    } shapes[] = {
        {HEAD "\"RawArgs\":[", "1", "]}", 1},
        {HEAD "\"RawArgs\":\"",
         "<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<",
         "\"}", 6},
    };

    (void)state;
    for (size_t i = 0; i < KILN__ARRAY_LEN(shapes); i++) {
        size_t n, len;
        body b =
            make(shapes[i].head, shapes[i].item, shapes[i].tail, SMALLER, &n);
        kiln_signature *sig = NULL;
        kiln_error err = {0};
        kiln_err rc;
        size_t peak = decode_counted(&b, &sig, &err, &rc);

        assert_int_equal(rc, KILN_OK);
        assert_true(peak <= (size_t)(shapes[i].factor * (double)b.n) + SLACK);
        assert_non_null(kiln_signature_raw_body(sig, &len));
        kiln_signature_free(sig);
        free(b.s);
    }
}

/* The same 1s kept verbatim: an unknown key, Headers, a callback list.
 * Each would be a cJSON tree of some 40 x the body; each is refused
 * before it is built. */
static void test_verbatim_refused(void **state)
{
    static const char *const heads[] = {
        HEAD "\"Future\":[", HEAD "\"Headers\":{\"trace\":[",
        HEAD "\"OnSuccess\":[[", HEAD "\"Args\":null,\"X\":{\"a\":["};
    static const char *const tails[] = {"]}", "]}}", "]]}", "]}}"};

    (void)state;
    for (size_t i = 0; i < KILN__ARRAY_LEN(heads); i++) {
        size_t n;
        body b =
            make(heads[i], "1", tails[i], i == 0 ? BODY_SIZE : SMALLER, &n);
        kiln_signature *sig = NULL;
        kiln_error err = {0};
        kiln_err rc;
        size_t peak = decode_counted(&b, &sig, &err, &rc);

        assert_int_equal(rc, KILN_ETOOBIG);
        assert_null(sig);
        if (strstr(err.message, "kept verbatim") == NULL)
            fail_msg("message: %s", err.message);
        assert_true(peak <= b.n / 8);
        free(b.s);
    }
}

/* Verbatim values of a more usual size are kept, within 8 x + 1 MiB:
 * 200,000 unknown keys of 16 bytes each. */
static void test_verbatim_kept(void **state)
{
    body b = {NULL, 0, 0};
    kiln_signature *sig = NULL;
    kiln_error err = {0};
    char item[64];
    kiln_err rc;
    size_t peak;

    (void)state;
    put(&b, "{\"UUID\":\"task_m1\",\"Name\":\"n\"");
    for (int i = 0; i < 200000; i++) {
        (void)snprintf(item, sizeof(item), ",\"k%d\":%d", i, i);
        put(&b, item);
    }
    put(&b,
        ",\"Headers\":{\"trace\":\"00-4bf92f3577b34da6-00f067aa0ba902b7\"}}");
    peak = decode_counted(&b, &sig, &err, &rc);
    assert_int_equal(rc, KILN_OK);
    assert_true(peak <= 8 * b.n + MIB);
    assert_int_equal(cJSON_GetArraySize(sig->extra), 200000);
    kiln_signature_free(sig);
    free(b.s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int64_slice),
        cmocka_unit_test(test_other_dense_shapes),
        cmocka_unit_test(test_raw_args),
        cmocka_unit_test(test_verbatim_refused),
        cmocka_unit_test(test_verbatim_kept),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
