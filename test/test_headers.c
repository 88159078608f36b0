/* Typed headers (core/headers.h) and their AMQP form: every kind
 * rabbitmq-c 0.11 has converts both ways unchanged, the sizes
 * broker/outgoing.c computes are the bytes rabbitmq-c encodes, the text
 * form is the string view deliveries always had, and nesting past the
 * limit is cut, not recursed into. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "broker/outgoing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kiln__hdr inner[] = {
    {"k", {.type = KILN__HV_UTF8, .v = {.str = {"v\"q", 3}}}},
    {"n", {.type = KILN__HV_I32, .v = {.i = 7}}},
};
static const kiln__hval items[] = {
    {.type = KILN__HV_BOOL, .v = {.b = false}},
    {.type = KILN__HV_TABLE, .v = {.table = {NULL, 0}}},
    {.type = KILN__HV_ARRAY, .v = {.array = {NULL, 0}}},
    {.type = KILN__HV_UTF8, .v = {.str = {"\xff", 1}}},
};

/* One header of every kind. */
static const kiln__hdr all[] = {
    {"void", {.type = KILN__HV_VOID}},
    {"bool", {.type = KILN__HV_BOOL, .v = {.b = true}}},
    {"i8", {.type = KILN__HV_I8, .v = {.i = -8}}},
    {"u8", {.type = KILN__HV_U8, .v = {.u = 200}}},
    {"i16", {.type = KILN__HV_I16, .v = {.i = -16000}}},
    {"u16", {.type = KILN__HV_U16, .v = {.u = 60000}}},
    {"i32", {.type = KILN__HV_I32, .v = {.i = -2000000000}}},
    {"u32", {.type = KILN__HV_U32, .v = {.u = 4000000000u}}},
    {"i64", {.type = KILN__HV_I64, .v = {.i = -9007199254740993LL}}},
    {"u64", {.type = KILN__HV_U64, .v = {.u = 18446744073709551615ULL}}},
    {"f32", {.type = KILN__HV_F32, .v = {.f32 = 0.1f}}},
    {"f64", {.type = KILN__HV_F64, .v = {.f64 = 0.1}}},
    {"dec", {.type = KILN__HV_DECIMAL, .v = {.dec = {3, 12345}}}},
    {"ts", {.type = KILN__HV_TIMESTAMP, .v = {.u = 1700000000}}},
    {"utf8", {.type = KILN__HV_UTF8, .v = {.str = {"h\xc3\xa9llo", 6}}}},
    {"bytes", {.type = KILN__HV_BYTES, .v = {.str = {"a\0b", 3}}}},
    {"table", {.type = KILN__HV_TABLE, .v = {.table = {inner, 2}}}},
    {"array", {.type = KILN__HV_ARRAY, .v = {.array = {items, 4}}}},
};
#define N_ALL (sizeof(all) / sizeof(all[0]))

static bool same_value(const kiln__hval *a, const kiln__hval *b);

static bool same_table(const kiln__hdr *a, const kiln__hdr *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(a[i].key, b[i].key) != 0 ||
            !same_value(&a[i].value, &b[i].value))
            return false;
    return true;
}

/* Test code: the values here nest three levels at most. */
static bool same_value(const kiln__hval *a, const kiln__hval *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case KILN__HV_VOID:
        return true;
    case KILN__HV_BOOL:
        return a->v.b == b->v.b;
    case KILN__HV_I8:
    case KILN__HV_I16:
    case KILN__HV_I32:
    case KILN__HV_I64:
        return a->v.i == b->v.i;
    case KILN__HV_F32:
        return memcmp(&a->v.f32, &b->v.f32, sizeof(float)) == 0;
    case KILN__HV_F64:
        return memcmp(&a->v.f64, &b->v.f64, sizeof(double)) == 0;
    case KILN__HV_DECIMAL:
        return a->v.dec.decimals == b->v.dec.decimals &&
               a->v.dec.value == b->v.dec.value;
    case KILN__HV_UTF8:
    case KILN__HV_BYTES:
        return a->v.str.len == b->v.str.len &&
               memcmp(a->v.str.p, b->v.str.p, a->v.str.len) == 0;
    case KILN__HV_TABLE:
        return a->v.table.n == b->v.table.n &&
               same_table(a->v.table.items, b->v.table.items, a->v.table.n);
    case KILN__HV_ARRAY:
        for (size_t i = 0; a->v.array.n == b->v.array.n && i < a->v.array.n;
             i++)
            if (!same_value(&a->v.array.items[i], &b->v.array.items[i]))
                return false;
        return a->v.array.n == b->v.array.n;
    default:
        return a->v.u == b->v.u;
    }
}

/* kiln -> rabbitmq-c -> kiln gives back every kind and value. */
static void test_amqp_round_trip(void **state)
{
    amqp_table_entry_t out[N_ALL];
    amqp_pool_t pool;
    amqp_table_t t;
    kiln__bump b = {NULL, 0};
    kiln__hdr *back;

    (void)state;
    init_amqp_pool(&pool, 512);
    assert_int_equal(kiln__amqp_fields_out(&pool, all, N_ALL, out, NULL),
                     KILN_OK);
    assert_int_equal(out[1].value.kind, AMQP_FIELD_KIND_BOOLEAN);
    assert_int_equal(out[9].value.kind, AMQP_FIELD_KIND_U64);
    assert_int_equal(out[12].value.kind, AMQP_FIELD_KIND_DECIMAL);
    assert_int_equal(out[13].value.kind, AMQP_FIELD_KIND_TIMESTAMP);
    assert_int_equal(out[15].value.kind, AMQP_FIELD_KIND_BYTES);
    assert_int_equal(out[16].value.kind, AMQP_FIELD_KIND_TABLE);
    assert_int_equal(out[17].value.kind, AMQP_FIELD_KIND_ARRAY);
    t.num_entries = (int)N_ALL;
    t.entries = out;
    (void)kiln__amqp_fields_in(&b, &t);
    assert_non_null(b.p = malloc(b.len));
    b.len = 0;
    back = kiln__amqp_fields_in(&b, &t);
    assert_true(same_table(all, back, N_ALL));
    free(b.p);
    empty_amqp_pool(&pool);
}

/* The properties outgoing.c sizes are the bytes rabbitmq-c encodes. */
static void test_sizes_are_rabbitmq_c_s(void **state)
{
    kiln__message m = {.exchange = "x",
                       .routing_key = "rk",
                       .fields = all,
                       .n_fields = N_ALL,
                       .message_id = "task_1",
                       .priority = 3,
                       .persistent = true};
    amqp_table_entry_t out[N_ALL];
    amqp_basic_properties_t p;
    amqp_pool_t pool;
    char buf[4096];
    size_t props;
    int n;

    (void)state;
    init_amqp_pool(&pool, 512);
    for (size_t k = 0; k <= N_ALL; k++) {
        m.n_fields = k;
        assert_int_equal(kiln__message_check(&m, 0, &props, NULL), KILN_OK);
        assert_int_equal(kiln__amqp_fields_out(&pool, all, k, out, NULL),
                         KILN_OK);
        memset(&p, 0, sizeof(p));
        p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG |
                   AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_PRIORITY_FLAG |
                   AMQP_BASIC_MESSAGE_ID_FLAG |
                   (k > 0 ? AMQP_BASIC_HEADERS_FLAG : 0);
        p.content_type = amqp_cstring_bytes("application/json");
        p.delivery_mode = 2;
        p.priority = 3;
        p.message_id = amqp_cstring_bytes("task_1");
        p.headers.num_entries = (int)k;
        p.headers.entries = out;
        n = amqp_encode_properties(AMQP_BASIC_CLASS, &p,
                                   (amqp_bytes_t){sizeof(buf), buf});
        assert_true(n > 0);
        assert_int_equal(props, (size_t)n);
        assert_int_equal(kiln__message_check(&m, props, NULL, NULL), KILN_OK);
        assert_int_equal(kiln__message_check(&m, props - 1, NULL, NULL),
                         KILN_ETOOBIG);
    }
    empty_amqp_pool(&pool);
}

static void text_is(const char *key, const char *want)
{
    const kiln__hdr *h = kiln__hdrs_find(all, N_ALL, key);
    char out[256];
    size_t n;

    assert_non_null(h);
    n = kiln__hval_text(&h->value, NULL);
    assert_true(n < sizeof(out));
    assert_int_equal(kiln__hval_text(&h->value, out), n);
    out[n] = '\0';
    assert_memory_equal(out, want, n + 1);
}

static void test_text(void **state)
{
    (void)state;
    text_is("void", "");
    text_is("bool", "true");
    text_is("i8", "-8");
    text_is("u16", "60000");
    text_is("u64", "18446744073709551615");
    text_is("f32", "0.100000001");
    text_is("f64", "0.10000000000000001");
    text_is("dec", "12.345");
    text_is("ts", "1700000000");
    text_is("utf8", "h\xc3\xa9llo");
    text_is("table", "{\"k\":\"v\\\"q\",\"n\":7}");
    text_is("array", "[false,{},[],\"\\u00ff\"]");
}

/* A deep copy owns everything; nesting past the limit becomes void, and
 * no size is given for it. */
static void test_copy_and_depth(void **state)
{
    kiln__hval chain[KILN__HVAL_MAX_DEPTH + 2];
    kiln__hdr top = {"deep", {.type = KILN__HV_ARRAY}}, *copy;
    kiln__bump b = {NULL, 0};
    const kiln__hval *v;
    int depth = 0;

    (void)state;
    (void)kiln__hdrs_copy(&b, all, N_ALL);
    assert_non_null(b.p = malloc(b.len));
    b.len = 0;
    copy = kiln__hdrs_copy(&b, all, N_ALL);
    assert_true(same_table(all, copy, N_ALL));
    assert_ptr_not_equal(copy[16].value.v.table.items, inner);
    free(b.p);

    for (size_t i = 0; i < KILN__HVAL_MAX_DEPTH + 1; i++)
        chain[i] = (kiln__hval){.type = KILN__HV_ARRAY,
                                .v = {.array = {&chain[i + 1], 1}}};
    chain[KILN__HVAL_MAX_DEPTH + 1] = (kiln__hval){.type = KILN__HV_BOOL};
    top.value = chain[0];
    assert_int_equal(kiln__hdrs_wire_size(&top, 1), SIZE_MAX);
    b = (kiln__bump){NULL, 0};
    (void)kiln__hdrs_copy(&b, &top, 1);
    assert_non_null(b.p = malloc(b.len));
    b.len = 0;
    copy = kiln__hdrs_copy(&b, &top, 1);
    for (v = &copy->value; v->type == KILN__HV_ARRAY; v = v->v.array.items)
        depth++;
    assert_int_equal(v->type, KILN__HV_VOID);
    assert_int_equal(depth, KILN__HVAL_MAX_DEPTH - 1);
    assert_int_not_equal(kiln__hdrs_wire_size(copy, 1), SIZE_MAX);
    free(b.p);
}

/* The table a message goes out with: inherited headers that `keep`
 * accepts, then its own, which replace same-named ones. */
static bool no_x(const char *key)
{
    return strncmp(key, "x-", 2) != 0;
}

static void test_merge(void **state)
{
    kiln__hdr got[4] = {
        {"a", {.type = KILN__HV_I32, .v = {.i = 1}}},
        {"x-death", {.type = KILN__HV_VOID}},
        {"b", {.type = KILN__HV_I32, .v = {.i = 2}}},
        {"c", {.type = KILN__HV_I32, .v = {.i = 3}}},
    };
    kiln__hdr own[2] = {
        {"b", {.type = KILN__HV_I64, .v = {.i = 20}}},
        {"c", {.type = KILN__HV_I64, .v = {.i = 30}}},
    };
    kiln_header str[1] = {{"c", "thirty"}};
    kiln__delivery d = {.fields = got, .n_headers = 4};
    kiln__message m = {.exchange = "",
                       .routing_key = "rk",
                       .inherit = &d,
                       .keep = no_x,
                       .fields = own,
                       .n_fields = 2,
                       .headers = str,
                       .n_headers = 1};
    kiln__hdr scratch[8];
    kiln__outgoing o;
    char note[64];

    (void)state;
    assert_int_equal(kiln__outgoing_cap(&m), 8);
    assert_int_equal(
        kiln__outgoing_prepare(&m, 0, scratch, 8, note, sizeof(note), &o, NULL),
        KILN_OK);
    assert_int_equal(o.n, 3);
    assert_string_equal(o.table[0].key, "a");
    assert_string_equal(o.table[1].key, "b");
    assert_int_equal(o.table[1].value.type, KILN__HV_I64);
    assert_string_equal(o.table[2].key, "c");
    assert_int_equal(o.table[2].value.type, KILN__HV_UTF8);

    /* a delivery built with string headers only passes them on as text */
    {
        kiln_header plain[2] = {{"p", "1"}, {"x-death", "[]"}};
        kiln__delivery text_only = {.headers = plain, .n_headers = 2};
        m.inherit = &text_only;
        assert_int_equal(kiln__outgoing_prepare(&m, 0, scratch, 8, note,
                                                sizeof(note), &o, NULL),
                         KILN_OK);
        assert_int_equal(o.n, 3);
        assert_string_equal(o.table[0].key, "p");
        assert_int_equal(o.table[0].value.type, KILN__HV_UTF8);
        assert_int_equal(o.table[0].value.v.str.len, 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_amqp_round_trip),
        cmocka_unit_test(test_sizes_are_rabbitmq_c_s),
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_copy_and_depth),
        cmocka_unit_test(test_merge),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
