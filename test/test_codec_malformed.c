/* Bad input never crashes, leaks or passes: every file in
 * test/data/malformed/ with the exact error, generated monsters (huge,
 * deep, long), and an allocation-failure walk over decode and encode. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/files.h"

#include "task/codec.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* File name (without .json) and the whole message it must produce. Every
 * one is KILN_ECODEC. */
static const struct {
    const char *file;
    const char *message;
} cases[] = {
    {"arg_name_number", "Args[0].Name: want string, got number"},
    {"arg_not_object", "Args[0]: want object, got number"},
    {"arg_null", "Args[0]: want object, got null"},
    {"arg_type_missing", "Args[0].Type: missing"},
    {"arg_type_number", "Args[0].Type: want string, got number"},
    {"arg_type_unknown", "Args[0].Type: unknown type \"int128\""},
    {"arg_value_missing", "Args[0].Value: missing (want int64)"},
    {"arg_value_null_scalar", "Args[0].Value: want string, got null"},
    {"args_object", "Args: want array, got object"},
    {"args_string", "Args: want array, got string"},
    {"bare_key", "body: not JSON (error near byte 1)"},
    {"base64_data_after_padding",
     "Args[0].Value: want []byte, got invalid base64 (illegal base64 data at "
     "input byte 4)"},
    {"base64_invalid_char", "Args[0].Value: want []byte, got invalid base64 "
                            "(illegal base64 data at input byte 1)"},
    {"base64_no_padding", "Args[0].Value: want []byte, got invalid base64 "
                          "(illegal base64 data at input byte 2)"},
    {"base64_short_padding", "Args[0].Value: want []uint8, got invalid base64 "
                             "(illegal base64 data at input byte 3)"},
    {"bom", "body: not JSON (error near byte 0)"},
    {"chord_callback_array", "ChordCallback: want object, got array"},
    {"comment", "body: not JSON (error near byte 17)"},
    {"control_char_in_string",
     "body: not JSON (control character in a string, at byte 26)"},
    {"created_at_words", "CreatedAt: bad time \"yesterday\": not RFC 3339 "
                         "(want 2006-01-02T15:04:05Z07:00)"},
    {"duplicate_name_last_empty", "Name: empty"},
    {"empty", "body: empty"},
    {"escape_lone_high_surrogate",
     "body: not JSON (unpaired UTF-16 surrogate, at byte 31)"},
    {"escape_lone_low_surrogate",
     "body: not JSON (unpaired UTF-16 surrogate, at byte 31)"},
    {"escape_nul",
     "body: not JSON (\\u0000 in a string is not supported, at byte 32)"},
    {"escape_short_unicode", "body: not JSON (error near byte 27)"},
    {"escape_unknown", "body: not JSON (error near byte 27)"},
    {"eta_date_only", "ETA: bad time \"2024-13-01\": not RFC 3339 (want "
                      "2006-01-02T15:04:05Z07:00)"},
    {"eta_day_feb_29_non_leap",
     "ETA: bad time \"2023-02-29T00:00:00Z\": day out of range"},
    {"eta_day_feb_30",
     "ETA: bad time \"2024-02-30T00:00:00Z\": day out of range"},
    {"eta_empty_fraction", "ETA: bad time \"2024-01-01T00:00:00.Z\": not RFC "
                           "3339 (no digits after the decimal point)"},
    {"eta_hour_24",
     "ETA: bad time \"2024-01-01T24:00:00Z\": hour out of range"},
    {"eta_leap_second",
     "ETA: bad time \"2016-12-31T23:59:60Z\": second out of range"},
    {"eta_lowercase_t", "ETA: bad time \"2024-01-01t00:00:00Z\": not RFC 3339 "
                        "(want 2006-01-02T15:04:05Z07:00)"},
    {"eta_month_13",
     "ETA: bad time \"2024-13-01T00:00:00Z\": month out of range"},
    {"eta_no_zone", "ETA: bad time \"2024-01-01T00:00:00\": not RFC 3339 (want "
                    "2006-01-02T15:04:05Z07:00)"},
    {"eta_number", "ETA: want RFC 3339 time, got number"},
    {"eta_space_separator", "ETA: bad time \"2024-01-01 00:00:00Z\": not RFC "
                            "3339 (want 2006-01-02T15:04:05Z07:00)"},
    {"eta_year_9999", "ETA: bad time \"9999-01-01T00:00:00Z\": year out of "
                      "range (1678 to 2261 fit in 64-bit nanoseconds)"},
    {"eta_zone_hour_24",
     "ETA: bad time \"2024-01-01T00:00:00+24:00\": timezone hour out of range"},
    {"float32_overflow",
     "Args[0].Value: want float32, got 1e39 (out of range)"},
    {"float64_huge_exponent",
     "Args[0].Value: want float64, got 1e400 (out of range)"},
    {"float_slice_overflow",
     "Args[0].Value[1]: want float64, got -2e308 (out of range)"},
    {"headers_array", "Headers: want object, got array"},
    {"ignore_number", "IgnoreWhenTaskNotRegistered: want bool, got number"},
    {"immutable_string", "Immutable: want bool, got string"},
    {"int16_32768", "Args[0].Value: want int16, got 32768 (out of range)"},
    {"int32_2147483648",
     "Args[0].Value: want int32, got 2147483648 (out of range)"},
    {"int64_overflow",
     "Args[0].Value: want int64, got 9223372036854775808 (out of range)"},
    {"int64_underflow",
     "Args[0].Value: want int64, got -9223372036854775809 (out of range)"},
    {"int8_300", "Args[2].Value: want int8, got 300 (out of range)"},
    {"int8_minus_129", "Args[0].Value: want int8, got -129 (out of range)"},
    {"int_exponent", "Args[0].Value: want int64, got 1e3 (not an integer)"},
    {"int_float", "Args[0].Value: want int64, got 1.5 (not an integer)"},
    {"int_one_point_zero",
     "Args[0].Value: want int32, got 1.0 (not an integer)"},
    {"int_overflow",
     "Args[0].Value: want int, got 99999999999999999999 (out of range)"},
    {"int_slice_elem_range",
     "Args[0].Value[1]: want int16, got -40000 (out of range)"},
    {"missing_colon", "body: not JSON (error near byte 8)"},
    {"name_empty", "Name: empty"},
    {"name_missing", "Name: missing"},
    {"name_null", "Name: missing"},
    {"name_number", "Name: want string, got number"},
    {"name_object", "Name: want string, got object"},
    {"not_object_array", "body: want object, got array"},
    {"not_object_null", "body: want object, got null"},
    {"not_object_number", "body: want object, got number"},
    {"not_object_string", "body: want object, got string"},
    {"nul_after_object",
     "body: not JSON (data after the JSON value, at byte 30)"},
    {"nul_between_tokens", "body: not JSON (error near byte 17)"},
    {"nul_in_string",
     "body: not JSON (control character in a string, at byte 26)"},
    {"number_hex", "body: not JSON (error near byte 73)"},
    {"number_infinity", "body: not JSON (error near byte 74)"},
    {"number_leading_dot", "body: not JSON (error near byte 74)"},
    {"number_leading_zero", "body: not JSON (error near byte 73)"},
    {"number_minus_infinity", "body: not JSON (error near byte 75)"},
    {"number_nan", "body: not JSON (error near byte 74)"},
    {"number_plus_sign", "body: not JSON (error near byte 72)"},
    {"number_too_long",
     "body: not JSON (number longer than 63 characters, at byte 74)"},
    {"number_trailing_dot", "body: not JSON (error near byte 76)"},
    {"on_success_object", "OnSuccess: want array, got object"},
    {"priority_256", "Priority: want uint8, got 256 (out of range)"},
    {"priority_negative", "Priority: want uint8, got -1 (negative)"},
    {"priority_string", "Priority: want uint8, got string"},
    {"retry_count_float", "RetryCount: want int, got 2.5 (not an integer)"},
    {"retry_count_huge", "RetryCount: want int, got 3000000000 (out of range)"},
    {"retry_count_string", "RetryCount: want int, got string"},
    {"retry_timeout_bool", "RetryTimeout: want int, got bool"},
    {"single_quotes", "body: not JSON (error near byte 1)"},
    {"tab_in_string",
     "body: not JSON (control character in a string, at byte 26)"},
    {"task_timeout_string", "TaskTimeOut: want int, got string"},
    {"trailing_comma", "body: not JSON (error near byte 30)"},
    {"trailing_garbage",
     "body: not JSON (data after the JSON value, at byte 44)"},
    {"trailing_second_object",
     "body: not JSON (data after the JSON value, at byte 43)"},
    {"trunc_after_colon", "body: not JSON (error near byte 8)"},
    {"trunc_before_close", "body: not JSON (error near byte 42)"},
    {"trunc_in_args", "body: not JSON (error near byte 74)"},
    {"trunc_in_escape", "body: not JSON (error near byte 28)"},
    {"trunc_in_key", "body: not JSON (error near byte 4)"},
    {"trunc_in_literal", "body: not JSON (error near byte 42)"},
    {"trunc_in_number", "body: not JSON (error near byte 63)"},
    {"trunc_in_string", "body: not JSON (error near byte 15)"},
    {"trunc_open_brace", "body: not JSON (error near byte 1)"},
    {"uint16_65536", "Args[0].Value: want uint16, got 65536 (out of range)"},
    {"uint32_4294967296",
     "Args[0].Value: want uint32, got 4294967296 (out of range)"},
    {"uint64_negative_zero", "Args[0].Value: want uint64, got -0 (negative)"},
    {"uint64_overflow",
     "Args[0].Value: want uint64, got 18446744073709551616 (out of range)"},
    {"uint8_256", "Args[0].Value: want uint8, got 256 (out of range)"},
    {"uint8_array_256", "Args[0].Value[1]: want uint8, got 256 (out of range)"},
    {"uint8_array_negative", "Args[0].Value[0]: want uint8, got -1 (negative)"},
    {"uint_negative", "Args[0].Value: want uint, got -1 (negative)"},
    {"utf8_above_max", "body: invalid UTF-8 at byte 25"},
    {"utf8_invalid_byte_ff", "body: invalid UTF-8 at byte 25"},
    {"utf8_lone_continuation", "body: invalid UTF-8 at byte 25"},
    {"utf8_overlong", "body: invalid UTF-8 at byte 26"},
    {"utf8_surrogate", "body: invalid UTF-8 at byte 26"},
    {"utf8_truncated", "body: invalid UTF-8 at byte 26"},
    {"uuid_bool", "UUID: want string, got bool"},
    {"uuid_empty", "UUID: empty"},
    {"uuid_missing", "UUID: missing"},
    {"value_bool_slice_elem_null", "Args[0].Value[1]: want bool, got null"},
    {"value_bool_string", "Args[0].Value: want bool, got string"},
    {"value_float_string", "Args[0].Value: want float64, got string"},
    {"value_int_string", "Args[0].Value: want int64, got string"},
    {"value_slice_elem_wrong", "Args[0].Value[1]: want string, got number"},
    {"value_slice_number", "Args[0].Value: want []string, got number"},
    {"value_slice_object", "Args[0].Value: want []int64, got object"},
    {"value_string_number", "Args[0].Value: want string, got number"},
    {"value_uint_bool", "Args[0].Value: want uint32, got bool"},
    {"vertical_tab_as_space", "body: not JSON (error near byte 17)"},
    {"whitespace_only", "body: not JSON (error near byte 4)"},
};

static void expect(const char *json, size_t len, size_t max_len, kiln_err code,
                   const char *message)
{
    kiln_signature *sig = (kiln_signature *)&sig; /* must stay untouched */
    kiln_error err = {0};

    assert_int_equal(kiln_signature_from_json(json, len, max_len, &sig, &err),
                     code);
    assert_int_equal(err.code, code);
    assert_true(sig == (kiln_signature *)&sig);
    if (strstr(err.message, message) == NULL)
        fail_msg("want \"%s\", got \"%s\"", message, err.message);
}

static void test_malformed_files(void **state)
{
    char path[256];
    size_t len;
    char *text;

    (void)state;
    assert_true(KILN__ARRAY_LEN(cases) >= 40);
    for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
        (void)snprintf(path, sizeof(path), "test/data/malformed/%s.json",
                       cases[i].file);
        text = test_slurp(path, &len, false);
        print_message("%s\n", cases[i].file);
        expect(text, len, 0, KILN_ECODEC, cases[i].message);
        free(text);
    }
}

/* No file in the folder goes untested. */
static void test_every_file_listed(void **state)
{
    DIR *dir = opendir("test/data/malformed");
    struct dirent *e;
    size_t seen = 0;
    bool found;

    (void)state;
    assert_non_null(dir);
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        found = false;
        for (size_t i = 0; i < KILN__ARRAY_LEN(cases) && !found; i++)
            found =
                strncmp(e->d_name, cases[i].file, strlen(cases[i].file)) == 0 &&
                strcmp(e->d_name + strlen(cases[i].file), ".json") == 0;
        if (!found)
            fail_msg("%s has no expected error", e->d_name);
        seen++;
    }
    closedir(dir);
    assert_int_equal(seen, KILN__ARRAY_LEN(cases));
}

/* ---- generated inputs --------------------------------------------------- */

/* {"UUID":"task_1","Name":"n","Args":[{"Type":"string","Value":"xxx..."}]}
 * with a string of n bytes. */
static char *with_long_string(size_t n, size_t *len)
{
    const char *head =
        "{\"UUID\":\"task_1\",\"Name\":\"n\",\"Args\":[{\"Type\":"
        "\"string\",\"Value\":\"";
    const char *tail = "\"}]}";
    size_t h = strlen(head), t = strlen(tail);
    char *s = malloc(h + n + t + 1);

    assert_non_null(s);
    memcpy(s, head, h);
    memset(s + h, 'x', n);
    memcpy(s + h + n, tail, t + 1);
    *len = h + n + t;
    return s;
}

static void test_too_big(void **state)
{
    size_t len;
    char *s = with_long_string(10 * 1024 * 1024, &len);

    (void)state;
    expect(s, len, 8 * 1024 * 1024, KILN_ETOOBIG,
           "body: 10485826 bytes, "
           "more than the limit of 8388608");
    free(s);
    s = with_long_string(KILN__DEFAULT_MAX_BODY, &len);
    expect(s, len, 0, KILN_ETOOBIG, "more than the limit of 16777216");
    free(s);
}

/* A 10 MB string under the default limit decodes, and comes back out. */
static void test_long_string_ok(void **state)
{
    size_t len, out_len;
    char *s = with_long_string(10 * 1024 * 1024, &len), *out;
    kiln_signature *sig = NULL;

    (void)state;
    assert_int_equal(kiln_signature_from_json(s, len, 0, &sig, NULL), KILN_OK);
    assert_int_equal(strlen(sig->args.items[0].v.s), 10 * 1024 * 1024);
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_PAOTA, &out, &out_len, NULL),
        KILN_OK);
    assert_true(out_len > len);
    kiln_free(out);
    kiln_signature_free(sig);
    free(s);
}

/* {"UUID":"task_1","Name":"n","X":[[[...1...]]]} with `depth` levels in
 * all (the object counts as one). */
static char *nested(size_t depth, size_t *len)
{
    const char *head = "{\"UUID\":\"task_1\",\"Name\":\"n\",\"X\":";
    size_t h = strlen(head), k = depth - 1;
    char *s = malloc(h + 2 * k + 3);

    assert_non_null(s);
    memcpy(s, head, h);
    memset(s + h, '[', k);
    s[h + k] = '1';
    memset(s + h + k + 1, ']', k);
    memcpy(s + h + 2 * k + 1, "}", 2);
    *len = h + 2 * k + 2;
    return s;
}

static void test_deep_nesting(void **state)
{
    kiln_signature *sig = NULL;
    size_t len, out_len;
    char *s, *out;

    (void)state;
    s = nested(100000, &len);
    expect(s, len, 0, KILN_ECODEC,
           "body: not JSON (nested deeper than 128 "
           "levels, at byte 159)");
    free(s);
    s = nested(129, &len);
    expect(s, len, 0, KILN_ECODEC, "nested deeper than 128 levels");
    free(s);
    s = nested(128, &len);
    assert_int_equal(kiln_signature_from_json(s, len, 0, &sig, NULL), KILN_OK);
    assert_int_equal(kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &out,
                                            &out_len, NULL),
                     KILN_OK);
    assert_non_null(strstr(out, strchr(s, '[')));
    kiln_free(out);
    kiln_signature_free(sig);
    free(s);
    /* A deep top-level array, and a deep run of objects. */
    s = malloc(200001);
    assert_non_null(s);
    memset(s, '[', 100000);
    memset(s + 100000, ']', 100000);
    expect(s, 200000, 0, KILN_ECODEC, "nested deeper than 128 levels");
    for (size_t i = 0; i < 40000; i++)
        memcpy(s + 5 * i, "{\"a\":", 5);
    expect(s, 200000, 0, KILN_ECODEC, "nested deeper than 128 levels");
    free(s);
}

/* Many keys: duplicates are dropped by sorting, not by searching. */
static void test_many_keys(void **state)
{
    size_t n = 200000, len = 0;
    char *s = malloc(n * 16 + 64), *out;
    kiln_signature *sig = NULL;

    (void)state;
    assert_non_null(s);
    len += (size_t)sprintf(s, "{\"UUID\":\"task_1\",\"Name\":\"n\"");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(s + len, ",\"k%zu\":%zu", i % (n / 2), i);
    s[len++] = '}';
    assert_int_equal(kiln_signature_from_json(s, len, 0, &sig, NULL), KILN_OK);
    assert_int_equal(cJSON_GetArraySize(sig->extra), (int)(n / 2));
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_PAOTA, &out, NULL, NULL),
        KILN_OK);
    assert_non_null(strstr(out, ",\"k0\":100000,"));
    kiln_free(out);
    kiln_signature_free(sig);
    free(s);
}

static void test_bad_arguments(void **state)
{
    kiln_signature *sig = NULL;
    kiln_error err = {0};

    (void)state;
    assert_int_equal(kiln_signature_from_json(NULL, 3, 0, &sig, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_from_json("{}", 2, 0, NULL, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_from_json(NULL, 0, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message, "body: empty");
    assert_int_equal(kiln_signature_from_raw(NULL, 1, NULL, 0, 0, &sig, &err),
                     KILN_EINVAL);
    assert_int_equal(kiln_signature_from_raw("{}", 2, NULL, 1, 0, &sig, &err),
                     KILN_EINVAL);
    assert_null(sig);
}

static void test_raw_malformed(void **state)
{
    kiln_header h[] = {{"task_name", "t"},
                       {"retry_count", "1.5"},
                       {"priority", "256"},
                       {"ignore_if_unregistered", "yes"},
                       {"task_name", "\xff"}};
    kiln_signature *sig = NULL;
    kiln_error err = {0};

    (void)state;
    assert_int_equal(
        kiln_signature_from_raw("\"\xc0\xaf\"", 4, h, 1, 0, &sig, &err),
        KILN_ECODEC);
    assert_string_equal(err.message, "body: invalid UTF-8 at byte 1");
    assert_int_equal(kiln_signature_from_raw("[1,]", 4, h, 1, 0, &sig, &err),
                     KILN_ECODEC);
    assert_int_equal(kiln_signature_from_raw("1", 1, h, 2, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message,
                        "headers: retry_count: want int, got \"1.5\"");
    h[1] = h[2];
    assert_int_equal(kiln_signature_from_raw("1", 1, h, 2, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message,
                        "headers: priority: want uint8, got \"256\"");
    h[1] = h[3];
    assert_int_equal(kiln_signature_from_raw("1", 1, h, 2, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message,
                        "headers: ignore_if_unregistered: want bool, got "
                        "\"yes\"");
    assert_int_equal(kiln_signature_from_raw("1", 1, h + 4, 1, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message, "headers: task_name: invalid UTF-8");
    assert_null(sig);
}

/* ---- allocation failures ------------------------------------------------ */

typedef struct input {
    char *text;
    size_t len;
    kiln_signature *sig; /* decoded text, for the encoders */
    kiln_header h[16];
    size_t n;
} input;

typedef kiln_err (*op_fn)(const input *in);

/* Fails the 1st, 2nd, ... allocation of `op` until a run needs no more:
 * each run must end in KILN_ENOMEM (or succeed when the failure did not
 * matter), never a crash or a leak (ASan and valgrind check that). cJSON
 * allocates through its own hooks, which the walk does not reach. */
static void walk(op_fn op, const input *in)
{
    long n = 0;
    kiln_err rc;

    for (;; n++) {
        kiln__alloc_fail_after(n);
        rc = op(in);
        if (!kiln__alloc_failed())
            break;
        kiln__alloc_fail_after(-1);
        if (rc != KILN_OK && rc != KILN_ENOMEM)
            fail_msg("allocation %ld: code %d", n, rc);
    }
    kiln__alloc_fail_after(-1);
    assert_int_equal(rc, KILN_OK);
    assert_true(n > 0); /* at least one allocation was made to fail */
}

static kiln_err op_decode(const input *in)
{
    kiln_signature *sig = NULL;
    kiln_err rc = kiln_signature_from_json(in->text, in->len, 0, &sig, NULL);

    kiln_signature_free(sig);
    return rc;
}

static kiln_err op_encode(const input *in)
{
    char *a = NULL, *b = NULL;
    kiln_err rc;

    rc =
        kiln_signature_to_json(in->sig, KILN_DIALECT_MACHINERY, &a, NULL, NULL);
    if (rc == KILN_OK)
        rc =
            kiln_signature_to_json(in->sig, KILN_DIALECT_PAOTA, &b, NULL, NULL);
    kiln_free(a);
    kiln_free(b);
    return rc;
}

static kiln_err op_raw(const input *in)
{
    kiln_signature *sig = NULL;
    kiln_header *h = NULL;
    size_t n = 0, len = 0;
    char *body = NULL;
    kiln_err rc;

    rc =
        kiln_signature_from_raw(in->text, in->len, in->h, in->n, 0, &sig, NULL);
    if (rc == KILN_OK)
        rc = kiln_signature_to_raw(sig, &body, &len, &h, &n, NULL);
    kiln_free(body);
    kiln_free(h);
    kiln_signature_free(sig);
    return rc;
}

static void load(input *in, const char *path)
{
    memset(in, 0, sizeof(*in));
    in->text = test_slurp(path, &in->len, false);
    while (in->len > 0 && in->text[in->len - 1] == '\n')
        in->len--;
}

static void test_alloc_failures_json(void **state)
{
    const char *files[] = {"test/data/golden/machinery_full.json",
                           "test/data/golden/machinery_all_types.json",
                           "test/data/golden/paota_rawargs.json"};
    input in;

    (void)state;
    for (size_t i = 0; i < KILN__ARRAY_LEN(files); i++) {
        load(&in, files[i]);
        walk(op_decode, &in);
        assert_int_equal(
            kiln_signature_from_json(in.text, in.len, 0, &in.sig, NULL),
            KILN_OK);
        walk(op_encode, &in);
        kiln_signature_free(in.sig);
        free(in.text);
    }
}

static void test_alloc_failures_raw(void **state)
{
    static const char *const kv[][2] = {{"task_name", "t"},
                                        {"retry_count", "2"},
                                        {"eta", "1700000000"},
                                        {"created_at", "1700000000"},
                                        {"routing_key", "rk"}};
    input in;

    (void)state;
    memset(&in, 0, sizeof(in));
    in.text = strdup("{\"event\":\"x\",\"n\":[1,2,3]}");
    assert_non_null(in.text);
    in.len = strlen(in.text);
    for (size_t i = 0; i < KILN__ARRAY_LEN(kv); i++) {
        in.h[i].key = kv[i][0];
        in.h[i].value = kv[i][1];
    }
    in.n = KILN__ARRAY_LEN(kv);
    walk(op_raw, &in);
    free(in.text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_every_file_listed),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_long_string_ok),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_raw_malformed),
        cmocka_unit_test(test_alloc_failures_json),
        cmocka_unit_test(test_alloc_failures_raw),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
