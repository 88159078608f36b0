/* Pieces of the codec on their own: shortest floats against Go's output,
 * exact number parsing, RFC 3339 times, base64, and paota's header mode
 * (golden message and round trips). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/files.h"

#include "task/codec.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

static char *encode_ok(const kiln_signature *sig, kiln_dialect d, size_t *len)
{
    kiln_error err = {0};
    char *out = NULL;

    if (kiln_signature_to_json(sig, d, &out, len, &err) != KILN_OK)
        fail_msg("encode: %s", err.message);
    return out;
}

/* ---- numbers ------------------------------------------------------------ */

static void assert_float_text(double v, int bits, const char *want)
{
    char out[KILN__FLOAT_MAX];

    kiln__format_float(v, bits, out);
    assert_string_equal(out, want);
}

static void test_float_shortest(void **state)
{
    (void)state;
    assert_float_text(0.1, 64, "0.1");
    assert_float_text(1e21, 64, "1e+21");
    assert_float_text(1e20, 64, "100000000000000000000");
    assert_float_text(5e-324, 64, "5e-324");
    assert_float_text(1e-6, 64, "0.000001");
    assert_float_text(1e-7, 64, "1e-7");
    assert_float_text(1.5e-10, 64, "1.5e-10");
    assert_float_text(-0.0, 64, "-0");
    assert_float_text(0, 64, "0");
    assert_float_text(123456789012345678.0, 64, "123456789012345680");
    assert_float_text(DBL_MAX, 64, "1.7976931348623157e+308");
    assert_float_text(0.3, 64, "0.3");
    assert_float_text((double)0.1f, 32, "0.1");
    assert_float_text((double)FLT_MAX, 32, "3.4028235e+38");
    assert_float_text((double)1e-45f, 32, "1e-45");
    assert_float_text((double)1e-6f, 32, "0.000001");
    assert_float_text((double)16777216.0f, 32, "16777216");
    /* An exact tie at a power of two: Go 1.26 rounds it up. */
    assert_float_text(ldexp(1, -12), 32, "0.00024414063");
}

/* test/data/floats.txt holds what Go's encoding/json writes for random
 * bit patterns, decimal-looking values and every power of two. */
static void test_float_matches_go(void **state)
{
    FILE *f = fopen("test/data/floats.txt", "r");
    char line[128], want[64], out[KILN__FLOAT_MAX];
    unsigned long long bits_hex;
    int bits, count = 0;
    double v, back;

    (void)state;
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        assert_int_equal(sscanf(line, "%d %llx %63s", &bits, &bits_hex, want),
                         3);
        if (bits == 64) {
            uint64_t u = bits_hex;
            memcpy(&v, &u, sizeof(v));
        } else {
            uint32_t u = (uint32_t)bits_hex;
            float fl;
            memcpy(&fl, &u, sizeof(fl));
            v = fl;
        }
        kiln__format_float(v, bits, out);
        if (strcmp(out, want) != 0)
            fail_msg("%d-bit %llx: want %s, got %s", bits, bits_hex, want, out);
        assert_int_equal(kiln__parse_float(want, &back), KILN_OK);
        assert_true(bits == 64 ? back == v : (float)back == (float)v);
        count++;
    }
    fclose(f);
    assert_true(count > 3000);
}

static void test_parse_numbers(void **state)
{
    int64_t i;
    uint64_t u;
    double d;

    (void)state;
    assert_int_equal(kiln__parse_int("-9223372036854775808", &i), KILN_OK);
    assert_true(i == INT64_MIN);
    assert_int_equal(kiln__parse_int("-9223372036854775809", &i), KILN_ERANGE);
    assert_int_equal(kiln__parse_int("9223372036854775808", &i), KILN_ERANGE);
    assert_int_equal(kiln__parse_int("-0", &i), KILN_OK);
    assert_int_equal(kiln__parse_int("1.0", &i), KILN_ETYPE);
    assert_int_equal(kiln__parse_int("1e3", &i), KILN_ETYPE);
    assert_int_equal(kiln__parse_uint("18446744073709551615", &u), KILN_OK);
    assert_true(u == UINT64_MAX);
    assert_int_equal(kiln__parse_uint("18446744073709551616", &u), KILN_ERANGE);
    assert_int_equal(kiln__parse_uint("-0", &u), KILN_EINVAL);
    assert_int_equal(kiln__parse_float("-12.5e3", &d), KILN_OK);
    assert_true(d == -12500.0);
    assert_int_equal(kiln__parse_float("1e-400", &d), KILN_OK); /* as Go */
    assert_true(d == 0);
    assert_int_equal(kiln__parse_float("1e309", &d), KILN_ERANGE);
    assert_int_equal(kiln__parse_float("0.30000000000000004", &d), KILN_OK);
    assert_true(d == 0.1 + 0.2);
}

/* ---- time and base64 ---------------------------------------------------- */

static void assert_time(const char *in, const char *out)
{
    char text[KILN__TIME_MAX];
    kiln_error err = {0};
    kiln__time t;

    if (kiln__time_parse(in, &t, &err) != KILN_OK)
        fail_msg("%s: %s", in, err.message);
    assert_true(kiln__time_format(&t, text, sizeof(text)) > 0);
    assert_string_equal(text, out);
}

static void assert_bad_time(const char *in, const char *why)
{
    kiln_error err = {0};
    kiln__time t;

    assert_int_equal(kiln__time_parse(in, &t, &err), KILN_ECODEC);
    if (strstr(err.message, why) == NULL)
        fail_msg("%s: %s", in, err.message);
}

static void test_time(void **state)
{
    kiln__time t = {INT64_MIN, 0};
    char text[KILN__TIME_MAX];

    (void)state;
    assert_time("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z");
    assert_time("2024-01-02T03:04:05.120000000Z", "2024-01-02T03:04:05.12Z");
    assert_time("2024-01-02T03:04:05.1234567891Z",
                "2024-01-02T03:04:05.123456789Z");
    assert_time("2024-01-02T03:04:05+00:00", "2024-01-02T03:04:05Z");
    assert_time("2024-01-02T03:04:05-00:00", "2024-01-02T03:04:05Z");
    assert_time("2024-02-29T23:59:59.5+05:45", "2024-02-29T23:59:59.5+05:45");
    assert_time("1970-01-01T00:00:00.000000001-23:59",
                "1970-01-01T00:00:00.000000001-23:59");
    assert_time("1969-12-31T23:59:59.999999999Z",
                "1969-12-31T23:59:59.999999999Z");
    assert_time("2000-02-29T12:00:00Z", "2000-02-29T12:00:00Z");
    assert_time("1678-01-01T00:00:00Z", "1678-01-01T00:00:00Z");
    assert_time("2262-04-11T23:47:16.854775807Z",
                "2262-04-11T23:47:16.854775807Z");
    assert_bad_time("2262-04-11T23:47:16.854775808Z", "year out of range");
    assert_bad_time("1900-02-29T00:00:00Z", "day out of range");
    assert_bad_time("2024-04-31T00:00:00Z", "day out of range");
    assert_bad_time("2024-00-01T00:00:00Z", "month out of range");
    assert_bad_time("2024-01-01T00:60:00Z", "minute out of range");
    assert_bad_time("2024-01-01T00:00:00+01:60", "timezone minute");
    assert_bad_time("2024-01-01T00:00:00+0100", "not RFC 3339");
    assert_bad_time("2024-01-01T00:00:00Zjunk", "not RFC 3339");
    assert_bad_time("2024-1-01T00:00:00Z", "not RFC 3339");
    assert_bad_time("", "not RFC 3339");
    assert_true(kiln__time_format(&t, text, sizeof(text)) > 0);
    assert_string_equal(text, "1677-09-21T00:12:43.145224192Z");
    assert_int_equal(kiln__time_format(&t, text, 10), 0);
}

static void assert_b64(const char *in, const char *want, size_t want_n)
{
    kiln_error err = {0};
    uint8_t *out;
    size_t n;

    if (kiln__base64_decode(in, strlen(in), &out, &n, &err) != KILN_OK)
        fail_msg("%s: %s", in, err.message);
    assert_int_equal(n, want_n);
    if (n > 0)
        assert_memory_equal(out, want, n);
    kiln__free(out);
}

static void test_base64(void **state)
{
    const char *vec[][2] = {{"", ""},
                            {"f", "Zg=="},
                            {"fo", "Zm8="},
                            {"foo", "Zm9v"},
                            {"foob", "Zm9vYg=="},
                            {"fooba", "Zm9vYmE="},
                            {"foobar", "Zm9vYmFy"}};
    const char *bad[] = {"Zg", "Zg=", "Z===", "Zg==Zg==", "Zm9v!", "Zm9=v"};
    char *enc;
    uint8_t *out;
    size_t n;

    (void)state;
    for (size_t i = 0; i < KILN__ARRAY_LEN(vec); i++) {
        enc =
            kiln__base64_encode((const uint8_t *)vec[i][0], strlen(vec[i][0]));
        assert_string_equal(enc, vec[i][1]);
        kiln__free(enc);
        assert_b64(vec[i][1], vec[i][0], strlen(vec[i][0]));
    }
    assert_b64("Zm9v\r\nYmFy\n", "foobar", 6); /* Go skips \r and \n */
    assert_b64("Zh==", "f", 1);                /* and loose trailing bits */
    for (size_t i = 0; i < KILN__ARRAY_LEN(bad); i++)
        assert_int_equal(
            kiln__base64_decode(bad[i], strlen(bad[i]), &out, &n, NULL),
            KILN_ECODEC);
}

/* ---- paota's header mode ------------------------------------------------ */

/* "key: value" lines, a blank line, then the body. */
static size_t parse_headers(char *text, kiln_header *h, size_t max,
                            const char **body)
{
    size_t n = 0;
    char *line = text, *nl, *sep;

    while ((nl = strchr(line, '\n')) != NULL && nl != line) {
        *nl = '\0';
        sep = strstr(line, ": ");
        assert_non_null(sep);
        *sep = '\0';
        assert_true(n < max);
        h[n].key = line;
        h[n++].value = sep + 2;
        line = nl + 1;
    }
    assert_non_null(nl);
    *body = nl + 1;
    return n;
}

static const char *header(const kiln_header *h, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(h[i].key, key) == 0)
            return h[i].value;
    return NULL;
}

static void test_golden_paota_headers(void **state)
{
    kiln_header in[16], *out = NULL;
    kiln_signature *sig = NULL;
    kiln_error err = {0};
    size_t len, n, out_n = 0, body_len = 0;
    const char *body;
    char *text = test_slurp("test/data/golden/paota_headers.txt", &len, true),
         *raw;

    (void)state;
    n = parse_headers(text, in, 16, &body);
    assert_int_equal(
        kiln_signature_from_raw(body, strlen(body), in, n, 0, &sig, &err),
        KILN_OK);
    assert_int_equal(sig->dialect, KILN_DIALECT_PAOTA_HEADERS);
    assert_string_equal(sig->name, "USER_UPDATED");
    assert_string_equal(sig->uuid, "task_1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d");
    assert_int_equal(sig->retry_count, 3);
    assert_int_equal(sig->task_timeout, 60);
    assert_int_equal(sig->retries_done, 1);
    assert_true(sig->ignore_unregistered);
    assert_true(sig->created_at.unix_ns == INT64_C(1740830400) * 1000000000);
    assert_true(sig->eta.unix_ns == INT64_C(1740830405) * 1000000000);
    assert_string_equal(kiln_signature_raw_body(sig, NULL), body);
    /* Back out: the same headers (a Go map: order is free) and body. */
    assert_int_equal(
        kiln_signature_to_raw(sig, &raw, &body_len, &out, &out_n, &err),
        KILN_OK);
    assert_string_equal(raw, body);
    assert_int_equal(body_len, strlen(body));
    assert_int_equal(out_n, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(header(out, out_n, in[i].key), in[i].value);
    kiln_free(raw);
    kiln_free(out);
    kiln_signature_free(sig);
    free(text);
}

static void test_raw_round_trip(void **state)
{
    kiln_signature *sig = kiln_signature_new("report", NULL), *back = NULL;
    kiln_header *h = NULL;
    kiln_error err = {0};
    size_t n = 0, len = 0;
    char *body = NULL;

    (void)state;
    assert_int_equal(
        kiln_signature_set_raw_body(sig, "[1, {\"a\":2}]", 12, NULL), KILN_OK);
    kiln_signature_set_eta(sig, INT64_C(1700000000123456789));
    sig->has_created_at = true;
    sig->created_at.unix_ns = -1; /* floors to -1 s, as Go's Unix() */
    assert_int_equal(kiln_signature_set_retry(sig, 4, 2, NULL), KILN_OK);
    assert_int_equal(kiln_signature_set_priority(sig, 7, NULL), KILN_OK);
    assert_int_equal(kiln_signature_set_routing_key(sig, "rk", NULL), KILN_OK);
    sig->retries_done = 1;
    sig->wait_time = 5;
    assert_int_equal(kiln_signature_to_raw(sig, &body, &len, &h, &n, &err),
                     KILN_OK);
    assert_string_equal(body, "[1, {\"a\":2}]");
    assert_string_equal(header(h, n, "eta"), "1700000000");
    assert_string_equal(header(h, n, "created_at"), "-1");
    assert_string_equal(header(h, n, "priority"), "7");
    assert_int_equal(kiln_signature_from_raw(body, len, h, n, 0, &back, &err),
                     KILN_OK);
    assert_string_equal(back->uuid, sig->uuid);
    assert_string_equal(back->name, "report");
    assert_string_equal(back->routing_key, "rk");
    assert_int_equal(back->retry_count, 4);
    assert_int_equal(back->retry_timeout, 2);
    assert_int_equal(back->retries_done, 1);
    assert_int_equal(back->wait_time, 5);
    assert_int_equal(back->priority, 7);
    assert_true(back->eta.unix_ns == INT64_C(1700000000) * 1000000000);
    assert_true(back->created_at.unix_ns == -1000000000);
    assert_string_equal(back->raw_args, "[1, {\"a\":2}]");
    kiln_free(body);
    kiln_free(h);
    kiln_signature_free(back);
    kiln_signature_free(sig);
}

/* Without RawArgs paota publishes the whole Signature as JSON. */
static void test_raw_without_body_is_json(void **state)
{
    kiln_signature *sig = kiln_signature_new("plain", NULL);
    kiln_header *h = (kiln_header *)1;
    size_t n = 99, len;
    char *body, *json;

    (void)state;
    assert_int_equal(kiln_signature_to_raw(sig, &body, &len, &h, &n, NULL),
                     KILN_OK);
    assert_null(h);
    assert_int_equal(n, 0);
    json = encode_ok(sig, KILN_DIALECT_PAOTA, NULL);
    assert_string_equal(body, json);
    kiln_free(json);
    kiln_free(body);
    assert_int_equal(kiln_signature_set_raw_body(sig, "null", 4, NULL),
                     KILN_OK);
    assert_int_equal(kiln_signature_to_raw(sig, &body, &len, &h, &n, NULL),
                     KILN_OK);
    assert_int_equal(n, 0);
    assert_non_null(strstr(body, "\"RawArgs\":null"));
    kiln_free(body);
    kiln_signature_free(sig);
}

/* A raw body with typed arguments beside it: header mode would carry the
 * body alone and lose the arguments, so it is refused, naming them; the
 * arguments alone go as paota's JSON, typed. */
static void test_raw_with_typed_args_refused(void **state)
{
    kiln_signature *sig = kiln_signature_new("both", NULL);
    kiln_header *h = NULL;
    kiln_error err = {0};
    size_t n = 0, len;
    char *body = NULL;

    (void)state;
    assert_int_equal(kiln_signature_add_arg_int64(sig, "a", 7, NULL), KILN_OK);
    assert_int_equal(kiln_signature_to_raw(sig, &body, &len, &h, &n, &err),
                     KILN_OK);
    assert_int_equal(n, 0);
    assert_non_null(strstr(body, "\"Args\":[{\"Name\":\"a\",\"Type\":"
                                 "\"int64\",\"Value\":7}]"));
    kiln_free(body);
    body = NULL;
    assert_int_equal(kiln_signature_set_raw_body(sig, "[1]", 3, NULL), KILN_OK);
    assert_int_equal(kiln_signature_to_raw(sig, &body, &len, &h, &n, &err),
                     KILN_EINVAL);
    assert_null(body);
    assert_null(h);
    assert_non_null(strstr(err.message, "1 typed argument(s)"));
    assert_non_null(strstr(err.message, "KILN_DIALECT=paota"));
    kiln_signature_free(sig);
}

static void test_raw_header_errors(void **state)
{
    kiln_header h[] = {{"uuid", "task_1"}, {"retry_count", "x"}};
    kiln_header ok[] = {{"task_name", "t"}, {"eta", "1700000000"}};
    kiln_header badtime[] = {{"task_name", "t"}, {"eta", "1.7e9"}};
    kiln_signature *sig = NULL;
    kiln_error err = {0};

    (void)state;
    assert_int_equal(kiln_signature_from_raw("{}", 2, h, 1, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message, "headers: task_name: missing");
    h[0].key = "task_name";
    assert_int_equal(kiln_signature_from_raw("{}", 2, h, 2, 0, &sig, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message,
                        "headers: retry_count: want int, got \"x\"");
    assert_int_equal(
        kiln_signature_from_raw("{}", 2, badtime, 2, 0, &sig, &err),
        KILN_ECODEC);
    assert_non_null(strstr(err.message, "headers: eta:"));
    assert_int_equal(kiln_signature_from_raw("{x}", 3, ok, 2, 0, &sig, &err),
                     KILN_ECODEC);
    assert_non_null(strstr(err.message, "body: not JSON"));
    assert_int_equal(kiln_signature_from_raw("{}", 2, ok, 2, 1, &sig, &err),
                     KILN_ETOOBIG);
    assert_int_equal(kiln_signature_from_raw("", 0, ok, 2, 0, &sig, &err),
                     KILN_ECODEC);
    /* uuid absent: a fresh one, as paota's SendTask makes. */
    assert_int_equal(kiln_signature_from_raw("{}", 2, ok, 2, 0, &sig, &err),
                     KILN_OK);
    assert_int_equal(strncmp(sig->uuid, "task_", 5), 0);
    assert_int_equal(strlen(sig->uuid), 41);
    kiln_signature_free(sig);
}

/* Every field's own key finds it, and so do Go's case-folded forms. */
static void test_field_keys(void **state)
{
    char lower[64];

    (void)state;
    for (size_t i = 0; i < kiln__n_fields; i++) {
        const char *key = kiln__fields[i].key;
        size_t k = 0;

        assert_int_equal(kiln__field_find(key), (int)i);
        for (; key[k] != '\0' && k + 1 < sizeof(lower); k++)
            lower[k] =
                (char)(key[k] >= 'A' && key[k] <= 'Z' ? key[k] + 32 : key[k]);
        lower[k] = '\0';
        assert_int_equal(kiln__field_find(lower), (int)i);
    }
    assert_int_equal(kiln__field_find(""), -1);
    assert_int_equal(kiln__field_find("Future"), -1);
    assert_int_equal(kiln__field_find("Rawargs"), kiln__field_find("RawArgs"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float_shortest),
        cmocka_unit_test(test_float_matches_go),
        cmocka_unit_test(test_parse_numbers),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_golden_paota_headers),
        cmocka_unit_test(test_raw_round_trip),
        cmocka_unit_test(test_raw_without_body_is_json),
        cmocka_unit_test(test_raw_with_typed_args_refused),
        cmocka_unit_test(test_raw_header_errors),
        cmocka_unit_test(test_field_keys),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
