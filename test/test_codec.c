/* The JSON codec against Go: golden vectors written by Go's encoding/json
 * (test/data/gen), every argument type in both dialects, and the keys Go
 * matches and kiln keeps. Numbers, times, base64 and paota's header mode
 * are in test_codec_units.c. */
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

static kiln_signature *decode_ok(const char *json, size_t len)
{
    kiln_signature *sig = NULL;
    kiln_error err = {0};

    if (kiln_signature_from_json(json, len, 0, &sig, &err) != KILN_OK)
        fail_msg("decode: %s", err.message);
    return sig;
}

static char *encode_ok(const kiln_signature *sig, kiln_dialect d, size_t *len)
{
    kiln_error err = {0};
    char *out = NULL;

    if (kiln_signature_to_json(sig, d, &out, len, &err) != KILN_OK)
        fail_msg("encode: %s", err.message);
    return out;
}

/* Decodes the golden file, runs `check` on it, and re-encodes it in its
 * own dialect: the bytes must be the file's. */
static void golden(const char *name, kiln_dialect want,
                   void (*check)(const kiln_signature *))
{
    char path[256];
    size_t len, out_len;
    char *text, *out;
    kiln_signature *sig;

    (void)snprintf(path, sizeof(path), "test/data/golden/%s", name);
    text = test_slurp(path, &len, true);
    sig = decode_ok(text, len);
    assert_int_equal(sig->dialect, want);
    check(sig);
    out = encode_ok(sig, want, &out_len);
    assert_string_equal(out, text);
    assert_int_equal(out_len, len);
    kiln_free(out);
    kiln_signature_free(sig);
    free(text);
}

static const kiln__value *arg(const kiln_signature *sig, size_t i, kiln_type t)
{
    assert_true(i < sig->args.n);
    assert_int_equal(sig->args.items[i].type, t);
    return &sig->args.items[i];
}

static const char *extra_json(const kiln_signature *sig, const char *key,
                              char *buf, size_t n)
{
    kiln__buf b = {0};
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(sig->extra, key);
    char *s;

    assert_non_null(it);
    assert_int_equal(kiln__json_tree(&b, it, false, NULL), KILN_OK);
    assert_int_equal(kiln__buf_finish(&b, &s, NULL, NULL), KILN_OK);
    (void)snprintf(buf, n, "%s", s);
    kiln_free(s);
    return buf;
}

/* ---- golden vectors ----------------------------------------------------- */

static void check_add(const kiln_signature *sig)
{
    assert_string_equal(sig->uuid, "task_0f4e3c2a-7b1d-4e8f-9a6b-2c5d8e1f3a70");
    assert_string_equal(sig->name, "add");
    assert_int_equal(sig->args.n, 2);
    assert_int_equal(arg(sig, 0, KILN_TYPE_INT64)->v.i, 1);
    assert_int_equal(arg(sig, 1, KILN_TYPE_INT64)->v.i, 1);
    assert_null(sig->args.items[0].name);
    assert_false(sig->has_eta);
    assert_null(sig->headers);
    assert_null(sig->extra);
}

static void test_golden_machinery_add(void **state)
{
    (void)state;
    golden("machinery_add.json", KILN_DIALECT_MACHINERY, check_add);
}

static void check_all_types(const kiln_signature *sig)
{
    const kiln__value *v;

    assert_int_equal(sig->args.n, 30);
    assert_true(arg(sig, 0, KILN_TYPE_BOOL)->v.b);
    assert_string_equal(sig->args.items[0].name, "b");
    assert_true(arg(sig, 1, KILN_TYPE_INT)->v.i == INT64_MIN);
    assert_int_equal(arg(sig, 2, KILN_TYPE_INT8)->v.i, -128);
    assert_int_equal(arg(sig, 3, KILN_TYPE_INT16)->v.i, 32767);
    assert_int_equal(arg(sig, 4, KILN_TYPE_INT32)->v.i, INT32_MIN);
    assert_true(arg(sig, 5, KILN_TYPE_INT64)->v.i == INT64_MAX);
    assert_true(arg(sig, 6, KILN_TYPE_UINT)->v.u == UINT64_MAX);
    assert_int_equal(arg(sig, 7, KILN_TYPE_UINT8)->v.u, 255);
    assert_int_equal(arg(sig, 8, KILN_TYPE_UINT16)->v.u, 65535);
    assert_int_equal(arg(sig, 9, KILN_TYPE_UINT32)->v.u, UINT32_MAX);
    assert_true(arg(sig, 10, KILN_TYPE_UINT64)->v.u == UINT64_MAX);
    assert_true(arg(sig, 11, KILN_TYPE_FLOAT32)->v.f == (double)0.1f);
    assert_true(arg(sig, 12, KILN_TYPE_FLOAT64)->v.f == 0.1);
    assert_string_equal(arg(sig, 13, KILN_TYPE_STRING)->v.s,
                        "h\xc3\xa9llo <b>&</b> \"q\" \\ \n\t\xe2\x80\xa8 "
                        "\xf0\x9f\x98\x80");
    v = arg(sig, 21, KILN_TYPE_UINT8_SLICE);
    assert_int_equal(v->v.arr.n, 4);
    assert_memory_equal(v->v.arr.ptr, "\x00\x01\xfe\xff", 4);
    v = arg(sig, 24, KILN_TYPE_UINT64_SLICE);
    assert_true(((uint64_t *)v->v.arr.ptr)[1] == UINT64_MAX);
    v = arg(sig, 25, KILN_TYPE_FLOAT32_SLICE);
    assert_true(((double *)v->v.arr.ptr)[0] == (double)FLT_MAX);
    v = arg(sig, 26, KILN_TYPE_FLOAT64_SLICE);
    assert_true(((double *)v->v.arr.ptr)[1] == 5e-324);
    v = arg(sig, 27, KILN_TYPE_STRING_SLICE);
    assert_string_equal(((char **)v->v.arr.ptr)[2], "<&>");
    v = arg(sig, 28, KILN_TYPE_BYTES);
    assert_memory_equal(v->v.arr.ptr, "kiln\x00\xff", 6);
    assert_int_equal(arg(sig, 29, KILN_TYPE_INT64_SLICE)->v.arr.n, 0);
}

static void test_golden_machinery_all_types(void **state)
{
    (void)state;
    golden("machinery_all_types.json", KILN_DIALECT_MACHINERY, check_all_types);
}

static void check_full(const kiln_signature *sig)
{
    char buf[2048];
    const cJSON *h;

    assert_string_equal(sig->routing_key, "images");
    assert_true(sig->has_eta);
    /* 2031-07-14T09:26:53.589793-04:30 */
    assert_true(sig->eta.unix_ns == INT64_C(1941803813589793000));
    assert_int_equal(sig->eta.offset_s, -(4 * 3600 + 30 * 60));
    assert_string_equal(sig->group_uuid, "group_1234");
    assert_int_equal(sig->group_task_count, 3);
    assert_int_equal(arg(sig, 1, KILN_TYPE_UINT16)->v.u, 640);
    assert_string_equal(sig->args.items[1].name, "width");
    assert_int_equal(sig->priority, 9);
    assert_true(sig->immutable);
    assert_int_equal(sig->retry_count, 3);
    assert_int_equal(sig->retry_timeout, 10);
    assert_string_equal(sig->broker_message_group_id, "grp");
    assert_string_equal(sig->sqs_receipt_handle, "rh");
    assert_true(sig->stop_task_deletion_on_error);
    assert_true(sig->ignore_unregistered);
    h = cJSON_GetObjectItemCaseSensitive(sig->headers, "big");
    assert_true(cJSON_IsRaw(h));
    assert_string_equal(h->valuestring, "18446744073709551615");
    h = cJSON_GetObjectItemCaseSensitive(sig->headers, "uber-trace-id");
    assert_string_equal(h->valuestring, "abc:def:0:1");
    assert_string_equal(
        extra_json(sig, "XTrace", buf, sizeof(buf)),
        "{\"id\":123456789012345678901234567890,\"deep\":"
        "{\"list\":[1e400,-0.0,{\"k\":null}],\"s\":\"\\u003c\"},"
        "\"n\":-1.5E-10}");
    assert_non_null(strstr(extra_json(sig, "OnSuccess", buf, sizeof(buf)),
                           "\"Name\":\"on_ok\""));
    assert_non_null(strstr(extra_json(sig, "ChordCallback", buf, sizeof(buf)),
                           "\"Immutable\":true"));
}

static void test_golden_machinery_full(void **state)
{
    (void)state;
    golden("machinery_full.json", KILN_DIALECT_MACHINERY, check_full);
}

static void check_paota_simple(const kiln_signature *sig)
{
    assert_string_equal(sig->name, "Print");
    assert_int_equal(sig->retry_count, 10);
    assert_true(sig->ignore_unregistered);
    assert_true(sig->has_created_at);
    assert_true(sig->created_at.unix_ns == INT64_C(1740830400) * 1000000000);
    assert_false(sig->has_eta);
    assert_null(sig->raw_args);
    assert_string_equal(arg(sig, 0, KILN_TYPE_STRING)->v.s,
                        "{\"id\":\"1\",\"name\":\"John Doe\",\"email\":"
                        "\"john.doe@example.com\"}");
}

static void test_golden_paota_simple(void **state)
{
    (void)state;
    golden("paota_simple.json", KILN_DIALECT_PAOTA, check_paota_simple);
}

static void check_paota_raw(const kiln_signature *sig)
{
    assert_int_equal(sig->args.n, 0);
    assert_string_equal(sig->raw_args,
                        "{\"event\":\"USER_CREATED\",\"data\":{\"user_id\":42,"
                        "\"name\":\"Ann \\u003cadmin\\u003e\",\"score\":"
                        "12345678901234567890}}");
    assert_int_equal(sig->raw_args_len, strlen(sig->raw_args));
    assert_string_equal(sig->routing_key, "users");
    assert_int_equal(sig->priority, 2);
    assert_int_equal(sig->retry_count, 5);
    assert_int_equal(sig->retry_timeout, 3);
    assert_int_equal(sig->wait_time, 1);
    assert_int_equal(sig->retries_done, 2);
    assert_int_equal(sig->task_timeout, 30);
    assert_true(sig->created_at.unix_ns ==
                INT64_C(1740830400) * 1000000000 + 123456789);
    assert_true(sig->eta.unix_ns == INT64_C(1740830405) * 1000000000);
}

static void test_golden_paota_rawargs(void **state)
{
    (void)state;
    golden("paota_rawargs.json", KILN_DIALECT_PAOTA, check_paota_raw);
}

/* ---- every type, both dialects ------------------------------------------ */

static kiln_signature *every_type(void)
{
    static const int64_t i64[] = {INT64_MIN, -1, 0, INT64_MAX};
    static const int64_t i8[] = {-128, 127};
    static const uint64_t u64[] = {0, UINT64_MAX};
    static const uint64_t u16[] = {0, 65535};
    static const uint8_t u8[] = {0, 1, 255};
    static const double f64[] = {0.1, 1e21, 5e-324, DBL_MAX, -0.0, 1e-7};
    static const double f32[] = {0.1, FLT_MAX, 1e-45, 16777216, -2.5};
    static const bool bools[] = {true, false, true};
    static const char *const strs[] = {"", "\xe2\x80\xa8<x>", "\"q\\"};
    kiln_signature *sig = kiln_signature_new("every", NULL);

    assert_non_null(sig);
    assert_int_equal(kiln_signature_add_arg_bool(sig, "b", true, NULL), 0);
    for (kiln_type t = KILN_TYPE_INT; t <= KILN_TYPE_INT64; t++)
        assert_int_equal(
            kiln_signature_add_arg_int(sig, NULL, t,
                                       t == KILN_TYPE_INT8    ? -128
                                       : t == KILN_TYPE_INT16 ? INT16_MIN
                                       : t == KILN_TYPE_INT32 ? INT32_MAX
                                                              : INT64_MIN,
                                       NULL),
            0);
    for (kiln_type t = KILN_TYPE_UINT; t <= KILN_TYPE_UINT64; t++)
        assert_int_equal(
            kiln_signature_add_arg_uint(sig, NULL, t,
                                        t == KILN_TYPE_UINT8    ? 255
                                        : t == KILN_TYPE_UINT16 ? 65535
                                        : t == KILN_TYPE_UINT32 ? UINT32_MAX
                                                                : UINT64_MAX,
                                        NULL),
            0);
    assert_int_equal(kiln_signature_add_arg_float(sig, NULL, KILN_TYPE_FLOAT32,
                                                  FLT_MAX, NULL),
                     0);
    assert_int_equal(kiln_signature_add_arg_float(sig, NULL, KILN_TYPE_FLOAT64,
                                                  5e-324, NULL),
                     0);
    assert_int_equal(kiln_signature_add_arg_string(sig, "s", "h\xc3\xa9", NULL),
                     0);
    assert_int_equal(
        kiln_signature_add_arg_bool_slice(sig, NULL, bools, 3, NULL), 0);
    for (kiln_type t = KILN_TYPE_INT_SLICE; t <= KILN_TYPE_INT64_SLICE; t++)
        assert_int_equal(
            kiln_signature_add_arg_int_slice(
                sig, NULL, t,
                t == KILN_TYPE_INT_SLICE || t == KILN_TYPE_INT64_SLICE ? i64
                                                                       : i8,
                t == KILN_TYPE_INT_SLICE || t == KILN_TYPE_INT64_SLICE ? 4 : 2,
                NULL),
            0);
    assert_int_equal(kiln_signature_add_arg_uint_slice(
                         sig, NULL, KILN_TYPE_UINT_SLICE, u64, 2, NULL),
                     0);
    assert_int_equal(kiln_signature_add_arg_uint8_slice(sig, NULL, u8, 3, NULL),
                     0);
    for (kiln_type t = KILN_TYPE_UINT16_SLICE; t <= KILN_TYPE_UINT64_SLICE; t++)
        assert_int_equal(
            kiln_signature_add_arg_uint_slice(
                sig, NULL, t, t == KILN_TYPE_UINT64_SLICE ? u64 : u16, 2, NULL),
            0);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT32_SLICE, f32, 5, NULL),
                     0);
    assert_int_equal(kiln_signature_add_arg_float_slice(
                         sig, NULL, KILN_TYPE_FLOAT64_SLICE, f64, 6, NULL),
                     0);
    assert_int_equal(
        kiln_signature_add_arg_string_slice(sig, NULL, strs, 3, NULL), 0);
    assert_int_equal(
        kiln_signature_add_arg_bytes(sig, "raw", "\0\xff", 2, NULL), 0);
    assert_int_equal(kiln_signature_add_arg_bytes(sig, NULL, NULL, 0, NULL), 0);
    return sig;
}

static size_t elem_bytes(kiln_type t)
{
    if (t == KILN_TYPE_BYTES || t == KILN_TYPE_UINT8_SLICE)
        return 1;
    if (t == KILN_TYPE_BOOL_SLICE)
        return sizeof(bool);
    return 8;
}

static void assert_same_value(const kiln__value *a, const kiln__value *b)
{
    assert_int_equal(a->type, b->type);
    assert_string_equal(a->name != NULL ? a->name : "",
                        b->name != NULL ? b->name : "");
    if (a->type == KILN_TYPE_STRING) {
        assert_string_equal(a->v.s, b->v.s);
    } else if (a->type == KILN_TYPE_STRING_SLICE) {
        assert_int_equal(a->v.arr.n, b->v.arr.n);
        for (size_t i = 0; i < a->v.arr.n; i++)
            assert_string_equal(((char **)a->v.arr.ptr)[i],
                                ((char **)b->v.arr.ptr)[i]);
    } else if (a->type >= KILN_TYPE_BOOL_SLICE) {
        assert_int_equal(a->v.arr.n, b->v.arr.n);
        if (a->v.arr.n > 0) /* bit-exact, so -0.0 and 0.0 differ */
            assert_memory_equal(a->v.arr.ptr, b->v.arr.ptr,
                                a->v.arr.n * elem_bytes(a->type));
    } else {
        assert_memory_equal(&a->v, &b->v, sizeof(a->v.u));
    }
}

static void test_every_type_both_dialects(void **state)
{
    kiln_dialect ds[] = {KILN_DIALECT_MACHINERY, KILN_DIALECT_PAOTA};
    kiln_signature *sig = every_type(), *back;
    size_t len, len2;
    char *a, *b;

    (void)state;
    assert_int_equal(sig->args.n, 30);
    for (size_t d = 0; d < 2; d++) {
        a = encode_ok(sig, ds[d], &len);
        back = decode_ok(a, len);
        assert_int_equal(back->dialect, ds[d]);
        assert_int_equal(back->args.n, sig->args.n);
        for (size_t i = 0; i < sig->args.n; i++)
            assert_same_value(&sig->args.items[i], &back->args.items[i]);
        b = encode_ok(back, ds[d], &len2);
        assert_string_equal(a, b);
        kiln_free(a);
        kiln_free(b);
        kiln_signature_free(back);
    }
    a = encode_ok(sig, KILN_DIALECT_MACHINERY, NULL);
    assert_non_null(strstr(a, "{\"Name\":\"\",\"Type\":\"int\",\"Value\":"
                              "-9223372036854775808}"));
    assert_non_null(strstr(a, "\"Type\":\"uint64\",\"Value\":"
                              "18446744073709551615}"));
    assert_non_null(strstr(a, "\"Type\":\"float32\",\"Value\":"
                              "3.4028235e+38}"));
    assert_non_null(strstr(a, "\"Value\":[0.1,1e+21,5e-324,"
                              "1.7976931348623157e+308,-0,1e-7]"));
    assert_non_null(strstr(a, "\"Value\":[0.1,3.4028235e+38,1e-45,16777216,"
                              "-2.5]"));
    assert_non_null(strstr(a, "\"Type\":\"[]uint8\",\"Value\":\"AAH/\""));
    assert_non_null(strstr(a, "{\"Name\":\"raw\",\"Type\":\"[]byte\","
                              "\"Value\":\"AP8=\"}"));
    assert_non_null(strstr(a, "\"Type\":\"[]byte\",\"Value\":\"\"}"));
    assert_non_null(strstr(a, "[\"\",\"\\u2028\\u003cx\\u003e\","
                              "\"\\\"q\\\\\"]"));
    kiln_free(a);
    kiln_signature_free(sig);
}

/* Fields of the other dialect travel at the end and come back. */
static void test_cross_dialect_fields_kept(void **state)
{
    char *text, *m, *p, *x, want[4096];
    size_t len;
    kiln_signature *sig, *back;

    (void)state;
    text = test_slurp("test/data/golden/machinery_full.json", &len, true);
    sig = decode_ok(text, len);
    sig->wait_time = 4;
    p = encode_ok(sig, KILN_DIALECT_PAOTA, &len);
    assert_non_null(strstr(p, "\"ETA\":\"2031-07-14T09:26:53.589793-04:30\","
                              "\"GroupUUID\":\"group_1234\""));
    back = decode_ok(p, len);
    assert_int_equal(back->dialect, KILN_DIALECT_PAOTA);
    m = encode_ok(back, KILN_DIALECT_MACHINERY, NULL);
    /* The golden bytes with paota's field that is set before the unknown
     * key, which stays last. */
    x = strstr(text, ",\"XTrace\"");
    assert_non_null(x);
    (void)snprintf(want, sizeof(want), "%.*s,\"WaitTime\":4%s", (int)(x - text),
                   text, x);
    assert_string_equal(m, want);
    kiln_free(m);
    kiln_free(p);
    kiln_signature_free(back);
    kiln_signature_free(sig);
    free(text);
}

/* ---- keys Go matches, keys kiln keeps ----------------------------------- */

static void test_unknown_keys_kept(void **state)
{
    const char *in =
        "{\"Zeta\":{\"b\":[1,2,{\"c\":null}],\"a\":1},\"UUID\":\"task_1\","
        "\"Big\":123456789012345678901234567890123456789,"
        "\"Name\":\"n\",\"Dup\":1,\"F\":-0.0e-0,\"Dup\":\"last\"}";
    const char *tail = ",\"Zeta\":{\"b\":[1,2,{\"c\":null}],\"a\":1},"
                       "\"Big\":123456789012345678901234567890123456789,"
                       "\"F\":-0.0e-0,\"Dup\":\"last\"}";
    kiln_dialect ds[] = {KILN_DIALECT_MACHINERY, KILN_DIALECT_PAOTA};
    kiln_signature *sig = decode_ok(in, strlen(in)), *copy;
    char *out;

    (void)state;
    copy = kiln_signature_copy(sig, NULL);
    for (size_t d = 0; d < 2; d++) {
        out = encode_ok(copy, ds[d], NULL);
        assert_true(strlen(out) > strlen(tail));
        assert_string_equal(out + strlen(out) - strlen(tail), tail);
        kiln_free(out);
    }
    kiln_signature_free(copy);
    kiln_signature_free(sig);
}

/* machinery's json-tagged variant (lower-case keys) decodes, because Go
 * matches keys case-insensitively. */
static void test_compat_json_tags(void **state)
{
    size_t len;
    char *text =
        test_slurp("test/data/compat/machinery_json_tags.json", &len, true);
    kiln_signature *sig = decode_ok(text, len);

    (void)state;
    assert_string_equal(sig->name, "add");
    assert_string_equal(sig->routing_key, "math");
    assert_int_equal(sig->retry_count, 2);
    assert_true(sig->ignore_unregistered);
    assert_int_equal(sig->eta.offset_s, 3600);
    assert_int_equal(arg(sig, 1, KILN_TYPE_INT64)->v.i, 3);
    assert_string_equal(sig->args.items[1].name, "y");
    assert_null(sig->extra);
    kiln_signature_free(sig);
    free(text);
}

static void test_compat_uint8_arrays(void **state)
{
    size_t len;
    char *text =
             test_slurp("test/data/compat/uint8_number_array.json", &len, true),
         *out;
    kiln_signature *sig = decode_ok(text, len);

    (void)state;
    assert_memory_equal(arg(sig, 0, KILN_TYPE_UINT8_SLICE)->v.arr.ptr, "kiln",
                        4);
    assert_memory_equal(arg(sig, 1, KILN_TYPE_BYTES)->v.arr.ptr, "\0\xff", 2);
    assert_int_equal(arg(sig, 2, KILN_TYPE_BYTES)->v.arr.n, 0);
    assert_int_equal(arg(sig, 3, KILN_TYPE_UINT16_SLICE)->v.arr.n, 0);
    out = encode_ok(sig, KILN_DIALECT_MACHINERY, NULL);
    assert_non_null(strstr(out, "\"Type\":\"[]uint8\",\"Value\":\"a2lsbg==\""));
    kiln_free(out);
    kiln_signature_free(sig);
    free(text);
}

static void test_key_matching(void **state)
{
    /* U+212A KELVIN SIGN folds to k, U+017F LONG S to s, as in Go. */
    const char *in = "{\"uuid\":\"task_1\",\"NAME\":\"n\",\"RoutingKey\":\"x\","
                     "\"routing\xe2\x84\xaa"
                     "ey\":\"k\",\"\xc5\xbfqsreceipthandle\":"
                     "\"r\",\"onsuccess\":[],\"Name\":\"last\"}";
    kiln_signature *sig = decode_ok(in, strlen(in));
    char *out;

    (void)state;
    assert_string_equal(sig->uuid, "task_1");
    assert_string_equal(sig->name, "last");
    assert_string_equal(sig->routing_key, "k");
    assert_string_equal(sig->sqs_receipt_handle, "r");
    out = encode_ok(sig, KILN_DIALECT_MACHINERY, NULL);
    assert_non_null(strstr(out, ",\"OnSuccess\":[],"));
    kiln_free(out);
    kiln_signature_free(sig);
}

static void test_duplicates_and_nulls(void **state)
{
    const char *in =
        "{\"UUID\":\"task_1\",\"Name\":\"n\",\"Priority\":3,\"Priority\":null,"
        "\"Args\":[{\"Type\":\"bool\",\"Value\":true}],\"Args\":null,"
        "\"ETA\":\"2024-01-01T00:00:00Z\",\"ETA\":null,"
        "\"Headers\":{\"b\":1,\"a\":{\"y\":1,\"x\":2,\"y\":3}},"
        "\"Headers\":{\"c\":true,\"b\":2},\"OnError\":[1],\"OnError\":null,"
        "\"RetryCount\":null,\"Immutable\":true,\"Immutable\":null}";
    kiln_signature *sig = decode_ok(in, strlen(in));
    char *out;

    (void)state;
    assert_int_equal(sig->priority, 3); /* null leaves a Go uint8 alone */
    assert_int_equal(sig->args.n, 0);   /* and clears a slice */
    assert_false(sig->has_eta);         /* and a pointer */
    assert_true(sig->immutable);
    assert_null(sig->extra);
    out = encode_ok(sig, KILN_DIALECT_MACHINERY, NULL);
    /* Headers merge like a Go map, last value wins, keys sorted. */
    assert_non_null(strstr(out, "\"Args\":null,\"Headers\":{\"a\":{\"x\":2,"
                                "\"y\":3},\"b\":2,\"c\":true},"));
    assert_non_null(strstr(out, "\"OnError\":null"));
    kiln_free(out);
    kiln_signature_free(sig);
}

static void test_dialect_detection(void **state)
{
    const char *m = "{\"UUID\":\"task_1\",\"Name\":\"n\",\"GroupUUID\":\"g\"}";
    const char *p = "{\"UUID\":\"task_1\",\"Name\":\"n\",\"RetriesDone\":null}";
    kiln_signature *a = decode_ok(m, strlen(m)), *b = decode_ok(p, strlen(p));

    (void)state;
    assert_int_equal(a->dialect, KILN_DIALECT_MACHINERY);
    assert_int_equal(b->dialect, KILN_DIALECT_PAOTA);
    kiln_signature_free(a);
    kiln_signature_free(b);
    /* The first key only one dialect has decides: a machinery body that
     * carries paota's TaskTimeOut and CreatedAt after its own keys, as a
     * kiln producer writes it, stays machinery; a paota body that carries
     * machinery's GroupUUID after its own stays paota. */
    {
        const char *mt = "{\"UUID\":\"task_1\",\"Name\":\"n\",\"GroupUUID\":"
                         "\"\",\"RetryCount\":2,\"TaskTimeOut\":5,"
                         "\"CreatedAt\":\"2025-03-01T12:00:00Z\"}";
        const char *pt = "{\"UUID\":\"task_1\",\"Name\":\"n\",\"RawArgs\":null,"
                         "\"RetriesDone\":1,\"GroupUUID\":\"g\"}";

        a = decode_ok(mt, strlen(mt));
        b = decode_ok(pt, strlen(pt));
        assert_int_equal(a->dialect, KILN_DIALECT_MACHINERY);
        assert_int_equal(a->task_timeout, 5);
        assert_true(a->has_created_at);
        assert_int_equal(b->dialect, KILN_DIALECT_PAOTA);
        kiln_signature_free(a);
        kiln_signature_free(b);
    }
}

static void test_encode_refuses(void **state)
{
    kiln_signature *sig = kiln_signature_new("x", NULL);
    kiln_error err = {0};
    char *out = NULL;

    (void)state;
    assert_int_equal(kiln_signature_to_json(sig, KILN_DIALECT_PAOTA_HEADERS,
                                            &out, NULL, &err),
                     KILN_EINVAL);
    assert_int_equal(
        kiln_signature_to_json(NULL, KILN_DIALECT_PAOTA, &out, NULL, &err),
        KILN_EINVAL);
    sig->name[0] = '\0';
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &out, NULL, &err),
        KILN_EINVAL);
    assert_string_equal(err.message, "Name: empty");
    assert_null(out);
    kiln_signature_free(sig);
}

/* Go's json.RawMessage is compacted and HTML-escaped on the way out. */
static void test_raw_args_compacted(void **state)
{
    const char *body = " { \"a\" : [ 1 , \"<&>\\u00e9\xe2\x80\xa8\" ] } ";
    kiln_signature *sig = kiln_signature_new("raw", NULL), *back;
    kiln_error err;
    char *out;
    size_t len;

    (void)state;
    assert_int_equal(kiln_signature_set_raw_body(sig, body, strlen(body), NULL),
                     KILN_OK);
    out = encode_ok(sig, KILN_DIALECT_PAOTA, &len);
    assert_non_null(strstr(out, "\"RawArgs\":{\"a\":[1,\"\\u003c\\u0026"
                                "\\u003e\\u00e9\\u2028\"]},"));
    back = decode_ok(out, len);
    assert_string_equal(back->raw_args, "{\"a\":[1,\"\\u003c\\u0026\\u003e"
                                        "\\u00e9\\u2028\"]}");
    kiln_free(out);
    kiln_signature_free(back);
    /* A raw body Go would not read (a number with a leading zero) is
     * refused when it is set, naming where, and the last good one stays. */
    assert_int_equal(kiln_signature_set_raw_body(sig, "[01]", 4, &err),
                     KILN_ECODEC);
    assert_string_equal(err.message, "raw body: not JSON (error near byte 2)");
    assert_string_equal(kiln_signature_raw_body(sig, NULL), body);
    kiln_signature_free(sig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_machinery_add),
        cmocka_unit_test(test_golden_machinery_all_types),
        cmocka_unit_test(test_golden_machinery_full),
        cmocka_unit_test(test_golden_paota_simple),
        cmocka_unit_test(test_golden_paota_rawargs),
        cmocka_unit_test(test_every_type_both_dialects),
        cmocka_unit_test(test_cross_dialect_fields_kept),
        cmocka_unit_test(test_unknown_keys_kept),
        cmocka_unit_test(test_compat_json_tags),
        cmocka_unit_test(test_compat_uint8_arrays),
        cmocka_unit_test(test_key_matching),
        cmocka_unit_test(test_duplicates_and_nulls),
        cmocka_unit_test(test_dialect_detection),
        cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_raw_args_compacted),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
