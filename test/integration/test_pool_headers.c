/* Headers on the wire, read with a raw rabbitmq-c client: what a worker
 * process republishes keeps every header's AMQP type and value.
 *
 * A task arrives with user headers of several types (bool, int32, int64,
 * a nested table, an array) and a real x-death trail (it is dead-lettered
 * once through a queue with a TTL of 0 first); the worker fails it and:
 *   - its dead letter carries them all as they came, kiln's own headers
 *     beside them (counters as integers);
 *   - its retry, read off the delay cascade's delivery exchange with a
 *     queue of the test's own, carries them too, less the old x-death;
 *   - with a header so big that the dead letter would not fit one frame,
 *     it is dead-lettered without that header, the reason says so, and
 *     the worker stays connected.
 * And paota's header mode goes out with paota's Go types, from a kiln
 * producer and from a worker's retry. Fixture: pool_it.h. */
#include "test/support/pool_it.h"

#include "broker/delay.h"

#define TYPED_FLAG  "flag"
#define BIG_HEADER  "x-big"
#define WAIT_MS     20000
#define I64_VALUE   9007199254740993LL
#define FRAME_PROPS (131072 - 20) /* properties a 128 KiB frame holds */

static int setup_hdr(void **state)
{
    return it_setup(state, "hdr");
}

/* The queues a test makes beside the fixture's: <queue>.ttl and
 * <queue>.spy. */
static void side_name(const it_fix *f, const char *what, char *out, size_t n)
{
    (void)snprintf(out, n, "%s.%s", f->cfg.queue, what);
}

static int teardown_hdr(void **state)
{
    it_fix *f = *state;
    amqp_connection_state_t c = it_raw_open();
    char q[KILN_NAME_MAX + 8];

    for (int i = 0; c != NULL && i < 2; i++) {
        side_name(f, i == 0 ? "ttl" : "spy", q, sizeof(q));
        (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
    }
    it_raw_close(c);
    return it_teardown(state);
}

/* ---- raw AMQP ----------------------------------------------------------- */

static amqp_field_value_t text_value(const char *s)
{
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_UTF8};

    v.value.bytes = amqp_cstring_bytes(s);
    return v;
}

static void declare(amqp_connection_state_t c, const char *queue,
                    amqp_table_t args)
{
    if (amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args) ==
        NULL)
        fail_msg("queue.declare %s failed", queue);
}

/* A queue whose messages expire at once into the task exchange, with the
 * task queue's key: what passes through it arrives with an x-death. */
static void declare_ttl_queue(amqp_connection_state_t c, const it_fix *f,
                              const char *name)
{
    amqp_table_entry_t a[3] = {
        {amqp_cstring_bytes("x-message-ttl"),
         {.kind = AMQP_FIELD_KIND_I32, .value = {.i32 = 0}}},
        {amqp_cstring_bytes("x-dead-letter-exchange"),
         text_value(f->cfg.exchange)},
        {amqp_cstring_bytes("x-dead-letter-routing-key"),
         text_value(f->cfg.binding_key)},
    };

    declare(c, name, (amqp_table_t){3, a});
}

/* A queue of the test's own, bound to the delay cascade's delivery
 * exchange as the task queue is: it gets a copy of every message leaving
 * the cascade for the task queue. */
static void declare_spy(amqp_connection_state_t c, const it_fix *f,
                        const char *name)
{
    char exchange[KILN_NAME_MAX], pattern[KILN_NAME_MAX];

    assert_int_equal(
        kiln__delay_delivery(&f->cfg, exchange, sizeof(exchange), NULL),
        KILN_OK);
    assert_int_equal(kiln__delay_dest_binding(&f->cfg, f->cfg.binding_key,
                                              pattern, sizeof(pattern), NULL),
                     KILN_OK);
    declare(c, name, amqp_empty_table);
    if (amqp_queue_bind(c, 1, amqp_cstring_bytes(name),
                        amqp_cstring_bytes(exchange),
                        amqp_cstring_bytes(pattern), amqp_empty_table) == NULL)
        fail_msg("queue.bind %s to %s failed", name, exchange);
}

/* The properties publish() sends: persistent JSON with an id and
 * headers. */
static amqp_basic_properties_t props(const char *id, amqp_table_t headers)
{
    amqp_basic_properties_t p;

    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.delivery_mode = 2;
    p.content_type = amqp_cstring_bytes("application/json");
    p.message_id = amqp_cstring_bytes(id);
    p.headers = headers;
    return p;
}

static void publish(amqp_connection_state_t c, const char *exchange,
                    const char *rk, const char *body, const char *id,
                    amqp_table_t headers)
{
    amqp_basic_properties_t p = props(id, headers);

    assert_int_equal(amqp_basic_publish(c, 1, amqp_cstring_bytes(exchange),
                                        amqp_cstring_bytes(rk), 0, 0, &p,
                                        amqp_cstring_bytes(body)),
                     AMQP_STATUS_OK);
}

/* Polls `queue` until a message arrives; false at the deadline. The
 * message owns its memory: amqp_destroy_message it. */
static bool get_one(amqp_connection_state_t c, const char *queue,
                    amqp_message_t *m, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;

    do {
        amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 1);
        assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id == AMQP_BASIC_GET_OK_METHOD) {
            r = amqp_read_message(c, 1, m, 0);
            assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
            return true;
        }
        it_sleep_ms(50);
    } while (it_ms() < end);
    return false;
}

static const amqp_field_value_t *find(const amqp_table_t *t, const char *key)
{
    for (int i = 0; i < t->num_entries; i++)
        if (t->entries[i].key.len == strlen(key) &&
            memcmp(t->entries[i].key.bytes, key, t->entries[i].key.len) == 0)
            return &t->entries[i].value;
    return NULL;
}

/* Header `key` of `t`, asserting its AMQP type. */
static const amqp_field_value_t *typed(const amqp_table_t *t, const char *key,
                                       uint8_t kind)
{
    const amqp_field_value_t *v = find(t, key);

    if (v == NULL)
        fail_msg("header %s missing", key);
    if (v->kind != kind)
        fail_msg("header %s: AMQP type '%c', want '%c'", key, v->kind, kind);
    return v;
}

static bool text_is(const amqp_field_value_t *v, const char *want)
{
    return v->value.bytes.len == strlen(want) &&
           memcmp(v->value.bytes.bytes, want, v->value.bytes.len) == 0;
}

static bool mentions(const amqp_field_value_t *v, const char *what)
{
    char text[2048];

    (void)snprintf(text, sizeof(text), "%.*s", (int)v->value.bytes.len,
                   (const char *)v->value.bytes.bytes);
    return strstr(text, what) != NULL;
}

/* ---- the task and its headers ------------------------------------------- */

typedef struct typed_headers {
    amqp_table_entry_t e[6], inner[2];
    amqp_field_value_t items[3];
} typed_headers;

/* bool, int32, int64, a nested table, an array (bool, int64, table) and,
 * when big > 0, BIG_HEADER: a string of `big` bytes. */
static amqp_table_t typed_table(typed_headers *h, const char *big, size_t n)
{
    h->inner[0] =
        (amqp_table_entry_t){amqp_cstring_bytes("k"), text_value("v")};
    h->inner[1] = (amqp_table_entry_t){
        amqp_cstring_bytes("n"),
        {.kind = AMQP_FIELD_KIND_I32, .value = {.i32 = 7}}};
    h->items[0] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BOOLEAN,
                                       .value = {.boolean = 0}};
    h->items[1] =
        (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value = {.i64 = -5}};
    h->items[2] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TABLE,
                                       .value = {.table = {2, h->inner}}};
    h->e[0] = (amqp_table_entry_t){
        amqp_cstring_bytes(TYPED_FLAG),
        {.kind = AMQP_FIELD_KIND_BOOLEAN, .value = {.boolean = 1}}};
    h->e[1] = (amqp_table_entry_t){
        amqp_cstring_bytes("i32"),
        {.kind = AMQP_FIELD_KIND_I32, .value = {.i32 = -7}}};
    h->e[2] = (amqp_table_entry_t){
        amqp_cstring_bytes("i64"),
        {.kind = AMQP_FIELD_KIND_I64, .value = {.i64 = I64_VALUE}}};
    h->e[3] = (amqp_table_entry_t){
        amqp_cstring_bytes("table"),
        {.kind = AMQP_FIELD_KIND_TABLE, .value = {.table = {2, h->inner}}}};
    h->e[4] = (amqp_table_entry_t){
        amqp_cstring_bytes("array"),
        {.kind = AMQP_FIELD_KIND_ARRAY, .value = {.array = {3, h->items}}}};
    h->e[5] = (amqp_table_entry_t){
        amqp_cstring_bytes(BIG_HEADER),
        {.kind = AMQP_FIELD_KIND_UTF8, .value = {.bytes = {n, (void *)big}}}};
    return (amqp_table_t){big != NULL ? 6 : 5, h->e};
}

/* The user headers of typed_table, each with its type and value. */
static void expect_user_headers(const amqp_table_t *t)
{
    const amqp_field_value_t *v;

    assert_true(typed(t, TYPED_FLAG, AMQP_FIELD_KIND_BOOLEAN)->value.boolean);
    assert_int_equal(typed(t, "i32", AMQP_FIELD_KIND_I32)->value.i32, -7);
    assert_true(typed(t, "i64", AMQP_FIELD_KIND_I64)->value.i64 == I64_VALUE);
    v = typed(t, "table", AMQP_FIELD_KIND_TABLE);
    assert_true(
        text_is(typed(&v->value.table, "k", AMQP_FIELD_KIND_UTF8), "v"));
    assert_int_equal(
        typed(&v->value.table, "n", AMQP_FIELD_KIND_I32)->value.i32, 7);
    v = typed(t, "array", AMQP_FIELD_KIND_ARRAY);
    assert_int_equal(v->value.array.num_entries, 3);
    assert_int_equal(v->value.array.entries[0].kind, AMQP_FIELD_KIND_BOOLEAN);
    assert_int_equal(v->value.array.entries[1].kind, AMQP_FIELD_KIND_I64);
    assert_true(v->value.array.entries[1].value.i64 == -5);
    assert_int_equal(v->value.array.entries[2].kind, AMQP_FIELD_KIND_TABLE);
    assert_int_equal(v->value.array.entries[2].value.table.num_entries, 2);
}

/* x-death as RabbitMQ writes it, one entry per queue passed: `queue` must
 * (or, with want false, must not) be among them, expired. */
static void expect_death(const amqp_table_t *t, const char *queue, bool want)
{
    const amqp_field_value_t *d = typed(t, "x-death", AMQP_FIELD_KIND_ARRAY);
    bool seen = false;

    for (int i = 0; i < d->value.array.num_entries; i++) {
        const amqp_field_value_t *e = &d->value.array.entries[i];
        const amqp_table_t *x;
        assert_int_equal(e->kind, AMQP_FIELD_KIND_TABLE);
        x = &e->value.table;
        assert_true(typed(x, "count", AMQP_FIELD_KIND_I64)->value.i64 >= 1);
        assert_true(
            text_is(typed(x, "reason", AMQP_FIELD_KIND_UTF8), "expired"));
        (void)typed(x, "time", AMQP_FIELD_KIND_TIMESTAMP);
        (void)typed(x, "exchange", AMQP_FIELD_KIND_UTF8);
        (void)typed(x, "routing-keys", AMQP_FIELD_KIND_ARRAY);
        seen |= text_is(typed(x, "queue", AMQP_FIELD_KIND_UTF8), queue);
    }
    assert_true(seen == want);
}

/* A machinery-dialect it.fail task allowed `retries` retries; its UUID
 * goes to uuid. Caller frees the body (kiln_free). */
static char *fail_task(unsigned retries, it_uuid uuid)
{
    kiln_signature *sig = it_new_sig(IT_TASK_FAIL, uuid);
    char *body = NULL;
    size_t len;

    assert_int_equal(kiln_signature_set_retry(sig, (int)retries, 0, NULL),
                     KILN_OK);
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &body, &len, NULL),
        KILN_OK);
    kiln_signature_free(sig);
    return body;
}

/* Sends an it.fail task with typed headers through the TTL queue, so it
 * reaches the task queue with an x-death. */
static void send_through_ttl(it_fix *f, unsigned retries, char *ttl, size_t n,
                             it_uuid uuid)
{
    amqp_connection_state_t c = it_raw_open();
    typed_headers h;
    char *body = fail_task(retries, uuid);

    assert_non_null(c);
    side_name(f, "ttl", ttl, n);
    declare_ttl_queue(c, f, ttl);
    publish(c, "", ttl, body, uuid, typed_table(&h, NULL, 0));
    it_raw_close(c);
    kiln_free(body);
}

static size_t start(it_fix *f, const char *const *extra)
{
    size_t w = it_start_worker(f, "worker", extra);

    assert_true(it_wait_consumers(f->cfg.queue, 1, WAIT_MS));
    return w;
}

static void stop(it_fix *f, size_t w)
{
    char *out;
    size_t len;

    assert_true(it_alive(f, w));
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
    out = it_slurp(f->procs[w].out, &len);
    assert_non_null(out);
    if (strstr(out, "lost its broker connection") != NULL)
        fail_msg("the worker lost its connection:\n%s", out);
    free(out);
}

/* ---- the tests ---------------------------------------------------------- */

static void test_dead_letter_keeps_types(void **state)
{
    it_fix *f = *state;
    char ttl[KILN_NAME_MAX + 8];
    amqp_connection_state_t c;
    amqp_message_t m;
    const amqp_table_t *t;
    it_uuid uuid;
    size_t w = start(f, NULL);

    send_through_ttl(f, 0, ttl, sizeof(ttl), uuid);
    c = it_raw_open();
    assert_non_null(c);
    if (!get_one(c, f->cfg.dead_letter_queue, &m, WAIT_MS))
        fail_msg("no dead letter within %d ms", WAIT_MS);
    t = &m.properties.headers;
    assert_true(m.properties._flags & AMQP_BASIC_HEADERS_FLAG);
    assert_true(text_is(
        &(amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                              .value = {.bytes = m.properties.message_id}},
        uuid));
    expect_user_headers(t);
    expect_death(t, ttl, true);
    assert_true(
        text_is(typed(t, "x-first-death-queue", AMQP_FIELD_KIND_UTF8), ttl));
    assert_true(mentions(typed(t, "x-kiln-reason", AMQP_FIELD_KIND_UTF8),
                         "it.fail: asked to fail"));
    assert_int_equal(
        typed(t, "x-kiln-attempts", AMQP_FIELD_KIND_I64)->value.i64, 1);
    (void)typed(t, "x-kiln-worker", AMQP_FIELD_KIND_UTF8);
    amqp_destroy_message(&m);
    it_raw_close(c);
    stop(f, w);
    f->passed = true;
}

static void test_retry_keeps_types(void **state)
{
    it_fix *f = *state;
    char ttl[KILN_NAME_MAX + 8], spy[KILN_NAME_MAX + 8];
    amqp_connection_state_t c;
    amqp_message_t m;
    const amqp_table_t *t;
    it_uuid uuid;
    size_t w = start(f, NULL);

    c = it_raw_open();
    assert_non_null(c);
    side_name(f, "spy", spy, sizeof(spy));
    declare_spy(c, f, spy); /* the worker declared the cascade */
    send_through_ttl(f, 1, ttl, sizeof(ttl), uuid);
    if (!get_one(c, spy, &m, WAIT_MS))
        fail_msg("no retry out of the delay queues within %d ms", WAIT_MS);
    t = &m.properties.headers;
    expect_user_headers(t);
    /* x-death now tells of the delay queues only: the trail of the TTL
     * queue was left out, as RabbitMQ adds to it on every level */
    expect_death(t, ttl, false);
    assert_false(
        text_is(typed(t, "x-first-death-queue", AMQP_FIELD_KIND_UTF8), ttl));
    assert_int_equal(typed(t, "x-kiln-retries", AMQP_FIELD_KIND_I64)->value.i64,
                     1);
    assert_int_equal(
        typed(t, "x-kiln-deliveries", AMQP_FIELD_KIND_I64)->value.i64, 0);
    amqp_destroy_message(&m);
    /* it fails again and is dead-lettered, its headers typed */
    if (!get_one(c, f->cfg.dead_letter_queue, &m, WAIT_MS))
        fail_msg("no dead letter within %d ms", WAIT_MS);
    expect_user_headers(&m.properties.headers);
    amqp_destroy_message(&m);
    it_raw_close(c);
    stop(f, w);
    f->passed = true;
}

/* The bytes of the properties publish() writes for headers `t` and
 * message id `id`, as rabbitmq-c encodes them. */
static size_t props_of(const amqp_table_t *t, const char *id)
{
    amqp_basic_properties_t p = props(id, *t);
    char buf[4096];
    int n;

    n = amqp_encode_properties(AMQP_BASIC_CLASS, &p,
                               (amqp_bytes_t){sizeof(buf), buf});
    assert_true(n > 0);
    return (size_t)n;
}

/* A task whose headers fill its frame but for 100 bytes: its dead letter,
 * with kiln's headers added, would not fit. It goes without BIG_HEADER,
 * the reason says so, and the worker keeps its connection and goes on. */
static void test_oversized_dead_letter(void **state)
{
    it_fix *f = *state;
    amqp_connection_state_t c;
    typed_headers h;
    amqp_table_t t;
    amqp_message_t m;
    it_uuid uuid, next;
    char *body = fail_task(0, uuid), *big;
    size_t n, w = start(f, NULL);
    long left = -1;

    t = typed_table(&h, "", 0);
    n = FRAME_PROPS - 100 - props_of(&t, uuid);
    big = malloc(n);
    assert_non_null(big);
    memset(big, 'b', n);
    t = typed_table(&h, big, n);
    c = it_raw_open();
    assert_non_null(c);
    publish(c, f->cfg.exchange, f->cfg.binding_key, body, uuid, t);
    if (!get_one(c, f->cfg.dead_letter_queue, &m, WAIT_MS))
        fail_msg("no dead letter within %d ms", WAIT_MS);
    assert_null(find(&m.properties.headers, BIG_HEADER));
    expect_user_headers(&m.properties.headers);
    {
        const amqp_field_value_t *r =
            typed(&m.properties.headers, "x-kiln-reason", AMQP_FIELD_KIND_UTF8);
        print_message("reason: %.*s\n", (int)r->value.bytes.len,
                      (const char *)r->value.bytes.bytes);
        assert_true(mentions(r, "it.fail: asked to fail"));
        assert_true(mentions(r, "too large for one frame"));
        assert_true(mentions(r, BIG_HEADER " ("));
    }
    amqp_destroy_message(&m);
    it_raw_close(c);
    /* delivered once, settled, and the worker goes on */
    it_send(f, 1, 1, &next);
    assert_int_equal(it_wait_count(f->log, 'F', 1, WAIT_MS), 1);
    assert_int_equal(it_wait_ready(f->cfg.queue, 0, WAIT_MS), 0);
    assert_true(it_queue_info(f->cfg.dead_letter_queue, &left, NULL));
    assert_int_equal(left, 0);
    stop(f, w);
    free(big);
    kiln_free(body);
    f->passed = true;
}

/* paota's registrar asserts Go types: int counters (I), bool, int64
 * times (l), strings. */
static void expect_paota_types(const amqp_table_t *t, int retries_done)
{
    (void)typed(t, "uuid", AMQP_FIELD_KIND_UTF8);
    assert_true(
        text_is(typed(t, "task_name", AMQP_FIELD_KIND_UTF8), IT_TASK_FAIL));
    assert_int_equal(typed(t, "retry_count", AMQP_FIELD_KIND_I32)->value.i32,
                     1);
    (void)typed(t, "retry_timeout", AMQP_FIELD_KIND_I32);
    assert_int_equal(typed(t, "timeout", AMQP_FIELD_KIND_I32)->value.i32, 0);
    assert_int_equal(typed(t, "wait_time", AMQP_FIELD_KIND_I32)->value.i32, 0);
    assert_int_equal(typed(t, "retries_done", AMQP_FIELD_KIND_I32)->value.i32,
                     retries_done);
    assert_false(typed(t, "ignore_if_unregistered", AMQP_FIELD_KIND_BOOLEAN)
                     ->value.boolean);
}

static kiln_signature *raw_task(it_uuid uuid)
{
    kiln_signature *sig = it_new_sig(IT_TASK_FAIL, uuid);

    assert_int_equal(kiln_signature_set_raw_body(sig, "{\"n\":1}", 7, NULL),
                     KILN_OK);
    assert_int_equal(kiln_signature_set_retry(sig, 1, 0, NULL), KILN_OK);
    return sig;
}

static void test_paota_headers_typed(void **state)
{
    it_fix *f = *state;
    const char *extra[] = {"KILN_DIALECT=paota-headers", NULL};
    char spy[KILN_NAME_MAX + 8];
    amqp_connection_state_t c;
    kiln_signature *sig;
    amqp_message_t m;
    it_uuid uuid;
    size_t w;

    f->cfg.dialect = KILN_DIALECT_PAOTA_HEADERS;
    /* as a kiln producer sends it: read before any worker runs */
    sig = raw_task(uuid);
    it_send_free(f, &sig, 1);
    c = it_raw_open();
    assert_non_null(c);
    if (!get_one(c, f->cfg.queue, &m, WAIT_MS))
        fail_msg("the task did not arrive");
    expect_paota_types(&m.properties.headers, 0);
    assert_null(find(&m.properties.headers, "eta"));
    amqp_destroy_message(&m);

    /* as a worker's retry re-encodes it */
    w = start(f, extra);
    side_name(f, "spy", spy, sizeof(spy));
    declare_spy(c, f, spy);
    sig = raw_task(uuid);
    it_send_free(f, &sig, 1);
    if (!get_one(c, spy, &m, WAIT_MS))
        fail_msg("no retry out of the delay queues within %d ms", WAIT_MS);
    expect_paota_types(&m.properties.headers, 1);
    (void)typed(&m.properties.headers, "eta", AMQP_FIELD_KIND_I64);
    amqp_destroy_message(&m);
    it_raw_close(c);
    stop(f, w);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_hdr, teardown_hdr)
        T(test_dead_letter_keeps_types),
        T(test_retry_keeps_types),
        T(test_oversized_dead_letter),
        T(test_paota_headers_typed),
#undef T
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
