/* The task signature: creation and its defaults, the string and number
 * options, the raw body, UUIDs, copies, the internal value list, and every
 * allocation failure on the way. The arguments are in test_args.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/signature_fixture.h"

#include <stdlib.h>
#include <string.h>

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
    /* Each owns its strings; an empty one is the shared kiln__no_text. */
    assert_true(a->uuid != b->uuid || a->uuid == kiln__no_text);
    assert_true(a->sqs_receipt_handle != b->sqs_receipt_handle ||
                a->sqs_receipt_handle == kiln__no_text);
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
    /* A NUL after the value is more than one value: refused. */
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

/* ---- UUIDs ------------------------------------------------------------- */

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

/* A "[]string" block (kiln__strings_alloc) holding `a` and `b`. */
static char **two_strings(const char *a, const char *b)
{
    char *text, **arr = kiln__strings_alloc(2, strlen(a) + strlen(b), &text);

    assert_non_null(arr);
    arr[0] = strcpy(text, a);
    arr[1] = strcpy(text + strlen(a) + 1, b);
    return arr;
}

static void test_values_owned(void **state)
{
    kiln__values list = {0};
    kiln__value v = {.type = KILN_TYPE_STRING_SLICE};
    char **arr = two_strings("one", EURO);
    kiln_error err;

    (void)state;
    v.name = kiln__strdup("n");
    v.v.arr.ptr = arr;
    v.v.arr.n = 2;
    assert_int_equal(kiln__values_add_owned(&list, &v, &err), KILN_OK);
    assert_null(v.v.arr.ptr); /* moved */
    assert_ptr_equal(list.items[0].v.arr.ptr, arr);

    /* On failure the owned pointers are freed (a leak fails the run). */
    arr = two_strings("fine", "bad\xff");
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

/* An empty string field costs no allocation: a new signature holds its
 * UUID and name, a decoded one the strings it has, and machinery's empty
 * fields ("RoutingKey":"" and the others) share one "". */
static void test_empty_fields_allocate_nothing(void **state)
{
    static const char body[] =
        "{\"UUID\":\"task_1\",\"Name\":\"add\",\"RoutingKey\":\"\","
        "\"GroupUUID\":\"\",\"GroupTaskCount\":0,\"Args\":[],"
        "\"BrokerMessageGroupId\":\"\",\"SQSReceiptHandle\":\"\"}";
    kiln_signature *sig, *copy;
    size_t calls;

    (void)state;
    kiln__alloc_count_start();
    sig = kiln_signature_new("add", NULL);
    calls = kiln__alloc_count_calls();
    (void)kiln__alloc_count_stop();
    assert_non_null(sig);
    assert_int_equal(calls, 3); /* the signature, its UUID, its name */
    assert_ptr_equal(sig->routing_key, kiln__no_text);
    kiln__alloc_count_start();
    copy = kiln_signature_copy(sig, NULL);
    calls = kiln__alloc_count_calls();
    (void)kiln__alloc_count_stop();
    assert_int_equal(calls, 3);
    kiln_signature_free(copy);
    kiln_signature_free(sig);

    kiln__alloc_count_start();
    assert_int_equal(
        kiln_signature_from_json(body, sizeof(body) - 1, 0, &sig, NULL),
        KILN_OK);
    calls = kiln__alloc_count_calls();
    (void)kiln__alloc_count_stop();
    assert_int_equal(calls, 3);
    assert_string_equal(kiln_signature_routing_key(sig), "");
    assert_ptr_equal(sig->group_uuid, kiln__no_text);
    assert_ptr_equal(sig->sqs_receipt_handle, kiln__no_text);
    /* Set and cleared again, the shared "" is never freed. */
    assert_int_equal(kiln_signature_set_routing_key(sig, "q", NULL), KILN_OK);
    assert_int_equal(kiln_signature_set_routing_key(sig, "", NULL), KILN_OK);
    assert_ptr_equal(sig->routing_key, kiln__no_text);
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

#define T(fn) cmocka_unit_test_setup_teardown(fn, sig_setup, sig_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* the signature and its options */
        T(test_new_defaults),
        T(test_new_rejects),
        T(test_string_options),
        T(test_number_options),
        T(test_raw_body),
        T(test_uuid),
        /* copies and the value list */
        T(test_copy),
        T(test_copy_empty),
        T(test_values_owned),
        T(test_values_add_checks),
        T(test_values_copy),
        T(test_internal_alloc_and_set),
        T(test_empty_fields_allocate_nothing),
        T(test_alloc_failures),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
