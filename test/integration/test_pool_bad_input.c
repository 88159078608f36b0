/* Bad messages on the wire, published raw with rabbitmq-c between good
 * ones, to a running worker process: each bad one lands in the dead-letter
 * queue with its reason in the x-kiln-reason header, an unregistered task
 * that asks to be ignored is acked and gone, every good one runs, and the
 * worker is still up afterwards. Fixture and conventions: pool_it.h. */
#include "test/support/pool_it.h"

#include <strings.h>

#define MAX_BODY 2048 /* KILN_MAX_BODY_BYTES of the worker */
#define N_BAD    9

typedef struct bad_msg {
    const char *what;
    char *body; /* malloc'd */
    size_t len;
    const char *expect[2]; /* the reason must mention these (case aside) */
    bool dead;             /* expected in the dead-letter queue */
    bool uuid_logged;      /* the worker's log names its UUID */
    it_uuid uuid;
    char reason[512]; /* as read from the dead-letter queue */
    int found;        /* times seen in the dead-letter queue */
} bad_msg;

static int setup_bad(void **state)
{
    return it_setup(state, "bad");
}

static char *dup_printf(size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static char *dup_printf(size_t *len, const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    s = malloc((size_t)n + 1);
    assert_non_null(s);
    va_start(ap, fmt);
    (void)vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    *len = (size_t)n;
    return s;
}

static void new_uuid(it_uuid out)
{
    kiln_error err;

    assert_int_equal(kiln_uuid_new(out, sizeof(it_uuid), &err), KILN_OK);
}

static void entry(bad_msg *b, const char *what, const char *e0, const char *e1)
{
    memset(b, 0, sizeof(*b));
    b->what = what;
    b->expect[0] = e0;
    b->expect[1] = e1;
    b->dead = true;
    new_uuid(b->uuid);
}

/* The corpus. Every body but the empty one carries its own UUID. */
static void make_corpus(bad_msg *b)
{
    static const char filler[] = "0123456789abcdef";
    char big[MAX_BODY + 512];

    for (size_t i = 0; i < sizeof(big) - 1; i++)
        big[i] = filler[i % 16];
    big[sizeof(big) - 1] = '\0';
    entry(&b[0], "invalid JSON", "not JSON", NULL);
    b[0].body =
        dup_printf(&b[0].len, "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[",
                   b[0].uuid, IT_TASK_RECORD);
    entry(&b[1], "no Name", "Name", "missing");
    b[1].body =
        dup_printf(&b[1].len, "{\"UUID\":\"%s\",\"Args\":[]}", b[1].uuid);
    entry(&b[2], "wrong arg type", "Args[0]", "int64");
    b[2].body = dup_printf(&b[2].len,
                           "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[{"
                           "\"Name\":\"\",\"Type\":\"int64\",\"Value\":"
                           "\"seven\"}]}",
                           b[2].uuid, IT_TASK_RECORD);
    entry(&b[3], "oversized body", "limit", "2048");
    b[3].body = dup_printf(&b[3].len,
                           "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[{"
                           "\"Name\":\"\",\"Type\":\"string\",\"Value\":"
                           "\"%s\"}]}",
                           b[3].uuid, IT_TASK_RECORD, big);
    entry(&b[4], "unregistered", "unregistered", "it.nobody");
    b[4].body = dup_printf(&b[4].len,
                           "{\"UUID\":\"%s\",\"Name\":\"it.nobody\","
                           "\"Args\":[]}",
                           b[4].uuid);
    entry(&b[5], "unregistered, ignored", NULL, NULL);
    b[5].dead = false;
    b[5].body = dup_printf(&b[5].len,
                           "{\"UUID\":\"%s\",\"Name\":\"it.nobody\","
                           "\"Args\":[],\"IgnoreWhenTaskNotRegistered\":true}",
                           b[5].uuid);
    entry(&b[6], "invalid UTF-8", "UTF-8", NULL);
    b[6].body = dup_printf(&b[6].len,
                           "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[{"
                           "\"Name\":\"\",\"Type\":\"string\",\"Value\":"
                           "\"caf\xc3(\"}]}",
                           b[6].uuid, IT_TASK_RECORD);
    entry(&b[7], "empty body", "empty", NULL);
    b[7].body = dup_printf(&b[7].len, "%s", "");
    entry(&b[8], "task refuses its argument", IT_TASK_WANT_INT, "argument 0");
    b[8].body = dup_printf(&b[8].len,
                           "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[{"
                           "\"Name\":\"\",\"Type\":\"string\",\"Value\":"
                           "\"seven\"}]}",
                           b[8].uuid, IT_TASK_WANT_INT);
    /* Decoded far enough to name the task: the log line carries the UUID. */
    b[1].uuid_logged = b[2].uuid_logged = true;
    b[4].uuid_logged = b[8].uuid_logged = true;
    assert_true(b[3].len > MAX_BODY);
}

static void publish_raw(amqp_connection_state_t c, const kiln_config *cfg,
                        const void *body, size_t len)
{
    amqp_basic_properties_t props;
    amqp_bytes_t bytes = {len, (void *)(uintptr_t)body};

    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = 2;
    props.content_type = amqp_cstring_bytes("application/json");
    assert_int_equal(amqp_basic_publish(c, 1, amqp_cstring_bytes(cfg->exchange),
                                        amqp_cstring_bytes(cfg->binding_key), 0,
                                        0, &props, bytes),
                     AMQP_STATUS_OK);
}

/* A good task as a kiln producer would encode it. */
static void publish_good(amqp_connection_state_t c, const kiln_config *cfg,
                         it_uuid uuid)
{
    kiln_error err;
    kiln_signature *sig = kiln_signature_new(IT_TASK_RECORD, &err);
    char *body = NULL;
    size_t len = 0;

    assert_non_null(sig);
    assert_int_equal(
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &body, &len, &err),
        KILN_OK);
    kiln__strlcpy(uuid, kiln_signature_uuid(sig), sizeof(it_uuid));
    publish_raw(c, cfg, body, len);
    kiln_free(body);
    kiln_signature_free(sig);
}

/* Takes one message off `queue`: false when it is empty. The body goes to
 * *body (malloc'd), the x-kiln-reason header to `reason`. */
static bool get_one(amqp_connection_state_t c, const char *queue, char **body,
                    size_t *len, char *reason, size_t rn)
{
    amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 1);
    amqp_message_t msg;
    amqp_table_t *h;

    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
        return false;
    r = amqp_read_message(c, 1, &msg, 0);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    *len = msg.body.len;
    *body = malloc(msg.body.len + 1);
    assert_non_null(*body);
    if (msg.body.len > 0)
        memcpy(*body, msg.body.bytes, msg.body.len);
    (*body)[msg.body.len] = '\0';
    reason[0] = '\0';
    h = &msg.properties.headers;
    for (int i = 0; (msg.properties._flags & AMQP_BASIC_HEADERS_FLAG) &&
                    i < h->num_entries;
         i++) {
        amqp_table_entry_t *e = &h->entries[i];
        if (e->key.len == strlen("x-kiln-reason") &&
            memcmp(e->key.bytes, "x-kiln-reason", e->key.len) == 0 &&
            (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
             e->value.kind == AMQP_FIELD_KIND_BYTES))
            (void)snprintf(reason, rn, "%.*s", (int)e->value.value.bytes.len,
                           (const char *)e->value.value.bytes.bytes);
    }
    amqp_destroy_message(&msg);
    return true;
}

static bool mentions(const char *text, const char *word)
{
    size_t n = strlen(word);

    for (const char *p = text; *p != '\0'; p++)
        if (strncasecmp(p, word, n) == 0)
            return true;
    return false;
}

/* Reads the whole dead-letter queue and matches each message to the
 * corpus by its body. */
static void read_dead_letters(const kiln_config *cfg, bad_msg *b)
{
    amqp_connection_state_t c = it_raw_open();
    char *body, reason[512];
    size_t len;

    assert_non_null(c);
    while (get_one(c, cfg->dead_letter_queue, &body, &len, reason,
                   sizeof(reason))) {
        int hit = -1;
        for (int i = 0; i < N_BAD && hit < 0; i++)
            if (b[i].len == len && memcmp(b[i].body, body, len) == 0)
                hit = i;
        if (hit < 0)
            fail_msg("unexpected dead letter (%zu bytes): %.80s", len, body);
        b[hit].found++;
        kiln__strlcpy(b[hit].reason, reason, sizeof(b[hit].reason));
        free(body);
    }
    it_raw_close(c);
}

static void test_bad_messages_are_dead_lettered(void **state)
{
    it_fix *f = *state;
    bad_msg b[N_BAD];
    it_uuid good[N_BAD + 2];
    amqp_connection_state_t c;
    size_t w, out_len;
    char *out;
    it_events ev;
    it_tally t;
    long r, u, n;

    memset(b, 0, sizeof(b));
    f->cfg.max_body_bytes = MAX_BODY;
    f->cfg.concurrency = 2;
    w = it_start_worker(f, "worker", NULL);
    assert_true(it_wait_consumers(f->cfg.queue, 1, 20000));
    make_corpus(b);

    /* good, bad, good, bad, ..., good */
    c = it_raw_open();
    assert_non_null(c);
    for (int i = 0; i < N_BAD; i++) {
        publish_good(c, &f->cfg, good[i]);
        publish_raw(c, &f->cfg, b[i].body, b[i].len);
    }
    publish_good(c, &f->cfg, good[N_BAD]);
    it_raw_close(c);

    /* Every good one runs; the dead-letter queue fills. */
    assert_int_equal(it_wait_count(f->log, 'F', N_BAD + 1, 20000), N_BAD + 1);
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, N_BAD - 1, 10000),
                     N_BAD - 1);
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 10000, &r, &u, &n))
        fail_msg("task queue not settled: ready %ld unacked %ld", r, u);

    read_dead_letters(&f->cfg, b);
    out = it_slurp(f->procs[w].out, &out_len);
    assert_non_null(out);
    for (int i = 0; i < N_BAD; i++) {
        printf("  %-26s -> %s%s\n", b[i].what,
               b[i].found ? "dead letter: " : "gone (acked)",
               b[i].found ? b[i].reason : "");
        assert_int_equal(b[i].found, b[i].dead ? 1 : 0);
        for (int k = 0; k < 2 && b[i].dead; k++)
            if (b[i].expect[k] != NULL &&
                !mentions(b[i].reason, b[i].expect[k]))
                fail_msg("%s: reason '%s' does not mention '%s'", b[i].what,
                         b[i].reason, b[i].expect[k]);
        if (b[i].uuid_logged && strstr(out, b[i].uuid) == NULL)
            fail_msg("%s: no log line names %s", b[i].what, b[i].uuid);
    }
    free(out);

    /* The worker is still up and still runs tasks. */
    assert_true(it_alive(f, w));
    it_send(f, 1, 1, &good[N_BAD + 1]);
    assert_int_equal(it_wait_count(f->log, 'F', N_BAD + 2, 10000), N_BAD + 2);
    it_read_events(f->log, &ev);
    t = it_tally_of(&ev, 'F', good, N_BAD + 2);
    assert_int_equal(t.missing, 0);
    assert_int_equal(t.dup_runs, 0);
    assert_int_equal(t.unknown, 0); /* no bad one ran, not even the ignored */
    if (!it_ctl_wait_settled(f->cfg.queue, 0, 10000, &r, &u, &n))
        fail_msg("task queue not settled: ready %ld unacked %ld", r, u);
    assert_true(it_queue_info(f->cfg.dead_letter_queue, &r, NULL));
    assert_int_equal(r, 0); /* all read above */
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
    it_events_free(&ev);
    for (int i = 0; i < N_BAD; i++)
        free(b[i].body);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_messages_are_dead_lettered,
                                        setup_bad, it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
