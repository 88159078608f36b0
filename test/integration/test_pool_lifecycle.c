/* The life of a task on a real RabbitMQ, with worker processes
 * (prog_worker) and a private FerretDB where a test reads task states:
 *
 * - priority: a backlog of mixed priorities is consumed highest first
 *   (KILN_MAX_PRIORITY, prefetch 1, one worker thread);
 * - retries: each dialect's counters and kiln_task_attempt on every
 *   retry copy, the delays of both policies, a task that succeeds on a
 *   retry, and exhausted retries in FAILURE and the dead-letter queue
 *   with x-kiln-reason, x-kiln-attempts and x-kiln-worker;
 * - a retry copy the broker refuses leaves the original unacked: it is
 *   redelivered and retried, not lost;
 * - ETA: a task due in 1 s sent after one due in 1 h runs after about
 *   1 s; short ETAs never run early;
 * - expiry (paota's TaskTimeOut from CreatedAt): not run, FAILURE
 *   "expired", dead-lettered or, with KILN_EXPIRED=drop, acked and logged;
 *   a C producer's task, in each dialect, carries the CreatedAt that lets
 *   it expire;
 * - time limit: FAILURE "time limit", dead-lettered, never started twice;
 * - poison: on a quorum and on a classic queue, a task that kills its
 *   worker is dead-lettered after KILN_MAX_DELIVERIES deliveries;
 * - unregistered tasks with KILN_UNREGISTERED=requeue wait in the delay
 *   queues (the worker stays under 5% CPU) and end in the dead-letter
 *   queue; IgnoreWhenTaskNotRegistered is still honoured.
 *
 * Fixture and conventions: pool_it.h, pool_it_store.h. */
#include "test/support/pool_it_store.h"

#include "broker/delay.h"

/* ETA lateness allowed (the README's promise) and the earliness the
 * worker tolerates (RabbitMQ counts TTLs in whole milliseconds). */
#define LATE_MAX_US  1000000LL
#define EARLY_MAX_US 1000LL

#define MAX_DEAD 16

static int setup_plain(void **state)
{
    return it_setup(state, "life");
}

static int setup_store(void **state)
{
    return it_setup_store(state, "life-st");
}

/* ---- sending ------------------------------------------------------------ */

static void send_one(it_fix *f, kiln_signature *sig)
{
    it_send_free(f, &sig, 1);
}

static int64_t now_real_ns(void)
{
    return kiln__realtime_ns();
}

/* Starts a worker with `extra` variables and waits until it consumes. */
static size_t start_worker(it_fix *f, const char *name,
                           const char *const *extra)
{
    size_t w = it_start_worker(f, name, extra);

    if (!it_wait_consumers(f->cfg.queue, 1, 30000))
        fail_msg("%s is not consuming %s after 30 s", name, f->cfg.queue);
    return w;
}

static void stop_worker(it_fix *f, size_t w)
{
    it_signal(f, w, SIGTERM);
    (void)it_expect_exit0(f, w, (int)f->cfg.drain_timeout_ms + 5000);
}

/* ---- the task log's extra lines ------------------------------------------ */

static size_t count_lines(const char *log, char kind, const char *uuid)
{
    return it_read_xlines(log, kind, uuid, NULL, 0);
}

/* Polls until the log has `want` lines of `kind` about `uuid`. */
static size_t wait_lines(const char *log, char kind, const char *uuid,
                         size_t want, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;
    size_t n;

    while ((n = count_lines(log, kind, uuid)) < want && it_ms() < end)
        it_sleep_ms(20);
    return n;
}

/* ---- the dead-letter queue ----------------------------------------------- */

typedef struct dead_msg {
    char *body; /* malloc'd, NUL-terminated */
    char reason[512];
    char attempts[32];
    char worker[320];
} dead_msg;

/* Header `key` as text: a string as it is, a 64-bit integer (the type
 * kiln writes its counters with) in decimal. */
static void header_str(const amqp_basic_properties_t *props, const char *key,
                       char *out, size_t n)
{
    const amqp_table_t *h = &props->headers;

    out[0] = '\0';
    if (!(props->_flags & AMQP_BASIC_HEADERS_FLAG))
        return;
    for (int i = 0; i < h->num_entries; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        if (e->key.len != strlen(key) ||
            memcmp(e->key.bytes, key, e->key.len) != 0)
            continue;
        if (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
            e->value.kind == AMQP_FIELD_KIND_BYTES)
            (void)snprintf(out, n, "%.*s", (int)e->value.value.bytes.len,
                           (const char *)e->value.value.bytes.bytes);
        else if (e->value.kind == AMQP_FIELD_KIND_I64)
            (void)snprintf(out, n, "%lld", (long long)e->value.value.i64);
    }
}

/* Takes every message off the dead-letter queue into out[max]; returns
 * how many there were (the test fails above `max`). */
static size_t take_dead(const kiln_config *cfg, dead_msg *out, size_t max)
{
    amqp_connection_state_t c = it_raw_open();
    size_t n = 0;

    assert_non_null(c);
    for (;;) {
        amqp_rpc_reply_t r =
            amqp_basic_get(c, 1, amqp_cstring_bytes(cfg->dead_letter_queue), 1);
        amqp_message_t msg;
        dead_msg *d;

        assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
            break;
        r = amqp_read_message(c, 1, &msg, 0);
        assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (n == max)
            fail_msg("more than %zu dead letters", max);
        d = &out[n++];
        d->body = malloc(msg.body.len + 1);
        assert_non_null(d->body);
        if (msg.body.len > 0)
            memcpy(d->body, msg.body.bytes, msg.body.len);
        d->body[msg.body.len] = '\0';
        header_str(&msg.properties, "x-kiln-reason", d->reason,
                   sizeof(d->reason));
        header_str(&msg.properties, "x-kiln-attempts", d->attempts,
                   sizeof(d->attempts));
        header_str(&msg.properties, "x-kiln-worker", d->worker,
                   sizeof(d->worker));
        amqp_destroy_message(&msg);
    }
    it_raw_close(c);
    return n;
}

static void free_dead(dead_msg *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(d[i].body);
}

/* The dead letter whose body names `uuid`, or NULL. */
static const dead_msg *dead_of(const dead_msg *d, size_t n, const char *uuid)
{
    for (size_t i = 0; i < n; i++)
        if (strstr(d[i].body, uuid) != NULL)
            return &d[i];
    return NULL;
}

/* Waits until the dead-letter queue holds `want` messages. */
static void wait_dead(const it_fix *f, long want, int timeout_ms)
{
    long n = it_wait_ready(f->cfg.dead_letter_queue, want, timeout_ms);

    if (n != want)
        fail_msg("dead-letter queue holds %ld messages, want %ld", n, want);
}

/* "host:pid" of worker process `w`, as x-kiln-worker names it. */
static void worker_id(const it_fix *f, size_t w, char *out, size_t n)
{
    char host[256] = "";

    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
    (void)snprintf(out, n, "%s:%ld", host, (long)f->procs[w].pid);
}

/* Waits until the task queue has no ready and no unacked message. */
static void expect_settled(const it_fix *f)
{
    long r, u, n;

    if (!it_ctl_wait_settled(f->cfg.queue, 0, 15000, &r, &u, &n))
        fail_msg("task queue not settled: ready %ld unacked %ld", r, u);
}

/* Whether the output of process `w` has a line with both `a` and `b`. */
static bool output_has(const it_fix *f, size_t w, const char *a, const char *b)
{
    size_t len;
    char *out = it_slurp(f->procs[w].out, &len), *line, *save = NULL;
    bool found = false;

    for (line = out != NULL ? strtok_r(out, "\n", &save) : NULL;
         line != NULL && !found; line = strtok_r(NULL, "\n", &save))
        found = strstr(line, a) != NULL && (b == NULL || strstr(line, b));
    free(out);
    return found;
}

static size_t output_count(const it_fix *f, size_t w, const char *a,
                           const char *b)
{
    size_t len, n = 0;
    char *out = it_slurp(f->procs[w].out, &len), *line, *save = NULL;

    for (line = out != NULL ? strtok_r(out, "\n", &save) : NULL; line != NULL;
         line = strtok_r(NULL, "\n", &save))
        if (strstr(line, a) != NULL && (b == NULL || strstr(line, b)))
            n++;
    free(out);
    return n;
}

/* ---- priority ----------------------------------------------------------- */

#define PRIO_TASKS 40

static void test_priority_highest_first(void **state)
{
    it_fix *f = *state;
    kiln_signature *sigs[PRIO_TASKS];
    it_uuid uuids[PRIO_TASKS];
    unsigned prio[PRIO_TASKS], last = 10, inversions = 0;
    it_xline *fin = calloc(PRIO_TASKS, sizeof(*fin));
    kiln_error err;
    size_t w;

    assert_non_null(fin);
    f->cfg.max_priority = 9;
    f->cfg.prefetch = 1;
    f->cfg.concurrency = 1;
    /* 0..9 four times each, mixed; the backlog waits for the worker. */
    for (size_t i = 0; i < PRIO_TASKS; i++) {
        prio[i] = (unsigned)((i * 7 + 3) % 10);
        sigs[i] = it_new_sig(IT_TASK_RECORD, uuids[i]);
        assert_int_equal(kiln_signature_set_priority(sigs[i], prio[i], &err),
                         KILN_OK);
    }
    it_send_free(f, sigs, PRIO_TASKS);
    assert_int_equal(it_wait_ready(f->cfg.queue, PRIO_TASKS, 10000),
                     PRIO_TASKS);

    w = start_worker(f, "worker", NULL);
    assert_int_equal(wait_lines(f->log, 'F', NULL, PRIO_TASKS, 30000),
                     PRIO_TASKS);
    assert_int_equal(it_read_xlines(f->log, 'F', NULL, fin, PRIO_TASKS),
                     PRIO_TASKS);
    printf("  priorities in the order run:");
    for (size_t i = 0; i < PRIO_TASKS; i++) {
        unsigned p = 99;
        for (size_t k = 0; k < PRIO_TASKS; k++)
            if (strcmp(fin[i].uuid, uuids[k]) == 0)
                p = prio[k];
        assert_true(p != 99);
        printf(" %u", p);
        if (p > last)
            inversions++;
        last = p;
    }
    printf("\n");
    assert_int_equal(inversions, 0);
    stop_worker(f, w);
    free(fin);
    f->passed = true;
}

/* ---- retries ------------------------------------------------------------ */

/* The first Fibonacci number (1, 2, 3, 5 ...) above n. */
static long long fib_after(long long n)
{
    long long a = 1, b = 2;

    while (a <= n) {
        long long c = a + b;
        a = b;
        b = c;
    }
    return a;
}

/* One always-failing task (retry count `retries`) and one that fails
 * `fails_then_ok` times, sent in `dialect` to a worker with `policy`.
 * Checks the counters each run saw, the dead letter of the first and,
 * with a store, both final states. */
static void retry_case(it_fix *f, kiln_dialect dialect,
                       kiln_retry_policy policy, int retries,
                       int64_t fails_then_ok)
{
    bool paota = dialect != KILN_DIALECT_MACHINERY;
    size_t runs_bad = (size_t)retries + 1, runs_ok = (size_t)fails_then_ok + 1;
    it_xline r[16];
    it_uuid bad, ok;
    kiln_signature *sigs[2];
    dead_msg dead[MAX_DEAD];
    const dead_msg *d;
    char wid[320], want[64];
    long long fib = 0;
    kiln_error err;
    size_t w, n;

    f->cfg.dialect = dialect;
    f->cfg.retry_policy = policy;
    f->cfg.retry_base_ms = 100;
    f->cfg.retry_max_ms = 2000;
    w = start_worker(f, "worker", NULL);
    sigs[0] = it_new_sig(IT_TASK_FLAKY, bad);
    sigs[1] = it_new_sig(IT_TASK_FLAKY, ok);
    assert_int_equal(kiln_signature_set_retry(sigs[0], retries, 0, &err),
                     KILN_OK);
    assert_int_equal(kiln_signature_set_retry(sigs[1], retries, 0, &err),
                     KILN_OK);
    assert_int_equal(
        kiln_signature_add_arg_int64(sigs[1], "fails", fails_then_ok, &err),
        KILN_OK);
    it_send_free(f, sigs, 2);

    wait_dead(f, 1, 30000);
    assert_int_equal(wait_lines(f->log, 'R', ok, runs_ok, 10000), runs_ok);
    expect_settled(f);
    n = it_read_xlines(f->log, 'R', bad, r, 16);
    assert_int_equal(n, runs_bad);
    printf("  %s, %s: runs of the failing task (RetryCount RetryTimeout "
           "RetriesDone kiln_task_attempt, ms since the first):",
           paota ? (dialect == KILN_DIALECT_PAOTA ? "paota" : "paota-headers")
                 : "machinery",
           policy == KILN_RETRY_FIBONACCI ? "fibonacci" : "exponential");
    for (size_t i = 0; i < n; i++) {
        printf(" [%lld %lld %lld %lld, %lld]", r[i].v[0], r[i].v[1], r[i].v[2],
               r[i].v[3], r[i].ms - r[0].ms);
        /* machinery: RetryCount is what is left; paota: the total, with
         * RetriesDone counting up. The attempt counts up in both. */
        assert_int_equal(r[i].v[0], paota ? retries : retries - (int)i);
        assert_int_equal(r[i].v[2], paota ? (long long)i : 0);
        assert_int_equal(r[i].v[3], (long long)i + 1);
        if (policy == KILN_RETRY_FIBONACCI) {
            /* RetryTimeout 0, 1, 2, 3, 5 ... (machinery's FibonacciNext
             * of the one before): the seconds waited before this run. */
            fib = i == 0 ? 0 : fib_after(fib);
            assert_int_equal(r[i].v[1], fib);
            if (i > 0 && r[i].ms - r[i - 1].ms < fib * 1000)
                fail_msg("run %zu came %lld ms after run %zu, before its "
                         "%lld s delay",
                         i + 1, r[i].ms - r[i - 1].ms, i, fib);
        }
        if (i > 0 && r[i].ms - r[i - 1].ms > 2000 + 2000)
            fail_msg("run %zu came %lld ms after run %zu (cap 2000 ms)", i + 1,
                     r[i].ms - r[i - 1].ms, i);
    }
    printf("\n");
    assert_int_equal(count_lines(f->log, 'R', ok), runs_ok);

    /* Only the exhausted one is dead, with the three headers. */
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 1);
    assert_non_null(d = dead_of(dead, n, bad));
    worker_id(f, w, wid, sizeof(wid));
    (void)snprintf(want, sizeof(want), "it.flaky: run %zu", runs_bad);
    printf("  dead letter: x-kiln-reason \"%s\", x-kiln-attempts %s, "
           "x-kiln-worker %s\n",
           d->reason, d->attempts, d->worker);
    if (strstr(d->reason, want) == NULL)
        fail_msg("x-kiln-reason \"%s\" is not the last error (%s)", d->reason,
                 want);
    assert_int_equal(strtol(d->attempts, NULL, 10), (long)runs_bad);
    assert_string_equal(d->worker, wid);
    free_dead(dead, n);

    if (f->cfg.store == KILN_STORE_MONGODB) {
        kiln_store *st = it_open_store(f);
        kiln_result_free(it_expect_final(st, bad, KILN_STATE_FAILURE, want));
        kiln_result_free(it_expect_final(st, ok, KILN_STATE_SUCCESS, NULL));
        kiln_store_free(st);
    }
    stop_worker(f, w);
    f->passed = true;
}

static void test_retry_machinery(void **state)
{
    retry_case(*state, KILN_DIALECT_MACHINERY, KILN_RETRY_FIBONACCI, 2, 1);
}

static void test_retry_paota(void **state)
{
    retry_case(*state, KILN_DIALECT_PAOTA, KILN_RETRY_EXPONENTIAL, 3, 2);
}

static void test_retry_paota_headers(void **state)
{
    retry_case(*state, KILN_DIALECT_PAOTA_HEADERS, KILN_RETRY_EXPONENTIAL, 2,
               1);
}

/* The level a delay of `ms` enters the cascade at: its highest set bit. */
static unsigned entry_level(const kiln_config *cfg, uint64_t ms)
{
    uint64_t units = (ms + cfg->delay_unit_ms - 1) / cfg->delay_unit_ms;
    unsigned k = 0;

    while (units >>= 1)
        k++;
    return k;
}

/* While the task runs, the delay queue its retry copy must enter is
 * deleted: the broker returns the copy as unroutable. The original must
 * not be acked, and the connection must not be dropped: the publisher
 * declares the topology again and sends the copy again, and the retry
 * then runs once, with the counters of a first retry. */
static void test_retry_confirmed_before_ack(void **state)
{
    it_fix *f = *state;
    const char *extra[] = {IT_ENV_SLEEP_MS "=800", NULL};
    kiln__delay_level lv;
    kiln_signature *sig;
    dead_msg dead[MAX_DEAD];
    it_xline r[8];
    it_uuid uuid;
    kiln_error err;
    amqp_connection_state_t c;
    size_t w, n;

    w = start_worker(f, "worker", extra);
    /* A first dead letter opens the worker's publishing connection (its
     * declare would make the level queue again). */
    send_one(f, it_new_sig(IT_TASK_FAIL, NULL));
    wait_dead(f, 1, 30000);
    free_dead(dead, take_dead(&f->cfg, dead, MAX_DEAD));
    sig = it_new_sig(IT_TASK_FLAKY, uuid);
    assert_int_equal(kiln_signature_set_retry(sig, 1, 0, &err), KILN_OK);
    send_one(f, sig);
    assert_int_equal(wait_lines(f->log, 'R', uuid, 1, 10000), 1);
    /* The first retry waits 1 s (Fibonacci after RetryTimeout 0). */
    assert_int_equal(
        kiln__delay_level_get(&f->cfg, entry_level(&f->cfg, 1000), &lv, &err),
        KILN_OK);
    c = it_raw_open();
    assert_non_null(c);
    assert_non_null(amqp_queue_delete(c, 1, amqp_cstring_bytes(lv.name), 0, 0));
    it_raw_close(c);

    wait_dead(f, 1, 30000);
    n = it_read_xlines(f->log, 'R', uuid, r, 8);
    printf("  runs (RetryCount, ms since the first):");
    for (size_t i = 0; i < n && i < 8; i++)
        printf(" [%lld, %lld]", r[i].v[0], r[i].ms - r[0].ms);
    printf("\n");
    /* Run 1 failed but its retry copy was refused (no route: its delay
     * level was gone). The delivery stayed unacked, the worker connected;
     * the copy went again once the topology was declared again, and run
     * 2 is the retry. The task did not run twice for one attempt. */
    assert_int_equal(n, 2);
    assert_int_equal(r[0].v[0], 1);
    assert_int_equal(r[1].v[0], 0);
    assert_true(it_alive(f, w));
    if (!output_has(f, w, "delay queues", NULL))
        fail_msg("the worker did not log the refused retry copy");
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 1);
    assert_non_null(dead_of(dead, n, uuid));
    assert_int_equal(strtol(dead[0].attempts, NULL, 10), 2);
    free_dead(dead, n);
    expect_settled(f);
    stop_worker(f, w);
    f->passed = true;
}

/* ---- ETA ---------------------------------------------------------------- */

#define ETA_SHORT 10

static kiln_signature *eta_sig(int64_t due_ms, it_uuid uuid)
{
    kiln_signature *sig = it_new_sig(IT_TASK_ETA, uuid);

    kiln_signature_set_eta(sig, now_real_ns() + due_ms * 1000000);
    return sig;
}

/* Messages waiting in the fixture's delay queues. */
static long cascade_depth(const kiln_config *cfg)
{
    long total = 0, n;
    kiln__delay_level lv;

    for (unsigned k = 0; k < cfg->delay_levels; k++)
        if (kiln__delay_level_get(cfg, k, &lv, NULL) == KILN_OK &&
            it_queue_info(lv.name, &n, NULL))
            total += n;
    return total;
}

static void test_eta_short_not_behind_long(void **state)
{
    it_fix *f = *state;
    static const int64_t due[ETA_SHORT] = {200,  500,  700,  1000, 1300,
                                           1700, 2000, 2400, 2700, 3000};
    kiln_signature *sigs[ETA_SHORT];
    it_uuid hour, second, shorts[ETA_SHORT];
    long long late_min = LLONG_MAX, late_max = LLONG_MIN;
    it_xline e;
    size_t w;

    w = start_worker(f, "worker", NULL);
    send_one(f, eta_sig(3600 * 1000, hour));
    send_one(f, eta_sig(1000, second));
    for (size_t i = 0; i < ETA_SHORT; i++)
        sigs[i] = eta_sig(due[i], shorts[i]);
    it_send_free(f, sigs, ETA_SHORT);

    assert_int_equal(wait_lines(f->log, 'E', NULL, ETA_SHORT + 1, 15000),
                     ETA_SHORT + 1);
    assert_int_equal(it_read_xlines(f->log, 'E', second, &e, 1), 1);
    printf("  due in 1 s, sent after one due in 1 h: started %.1f ms after "
           "its ETA\n",
           (double)e.v[0] / 1000.0);
    assert_true(e.v[0] >= -EARLY_MAX_US && e.v[0] <= LATE_MAX_US);
    for (size_t i = 0; i < ETA_SHORT; i++) {
        assert_int_equal(it_read_xlines(f->log, 'E', shorts[i], &e, 1), 1);
        if (e.v[0] < -EARLY_MAX_US || e.v[0] > LATE_MAX_US)
            fail_msg("task due in %lld ms started %lld us after its ETA",
                     (long long)due[i], e.v[0]);
        late_min = e.v[0] < late_min ? e.v[0] : late_min;
        late_max = e.v[0] > late_max ? e.v[0] : late_max;
    }
    printf("  %d ETAs 0.2-3 s: lateness %.1f to %.1f ms\n", ETA_SHORT,
           (double)late_min / 1000.0, (double)late_max / 1000.0);
    /* The 1 h task did not run; it waits in the delay queues. */
    assert_int_equal(count_lines(f->log, 'E', hour), 0);
    assert_int_equal(cascade_depth(&f->cfg), 1);
    stop_worker(f, w);
    f->passed = true;
}

/* ---- expiry ------------------------------------------------------------- */

/* A paota task with TaskTimeOut `timeout_s` created `age_s` ago. */
static kiln_signature *paota_sig(int timeout_s, int age_s, it_uuid uuid)
{
    char json[512], created[32];
    time_t t = time(NULL) - age_s;
    struct tm tm;
    kiln_signature *sig = NULL;
    kiln_error err;

    assert_int_equal(kiln_uuid_new(uuid, sizeof(it_uuid), &err), KILN_OK);
    assert_non_null(gmtime_r(&t, &tm));
    assert_true(strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm) >
                0);
    (void)snprintf(json, sizeof(json),
                   "{\"UUID\":\"%s\",\"Name\":\"%s\",\"Args\":[],"
                   "\"RawArgs\":null,\"RoutingKey\":\"\",\"Priority\":0,"
                   "\"RetryCount\":0,\"RetryTimeout\":0,\"WaitTime\":0,"
                   "\"RetriesDone\":0,\"TaskTimeOut\":%d,"
                   "\"IgnoreWhenTaskNotRegistered\":false,"
                   "\"CreatedAt\":\"%s\",\"ETA\":null}",
                   uuid, IT_TASK_RECORD, timeout_s, created);
    if (kiln_signature_from_json(json, strlen(json), 0, &sig, &err) != KILN_OK)
        fail_msg("decode %s: %s", json, err.message);
    return sig;
}

static void test_expired(void **state)
{
    it_fix *f = *state;
    const char *drop[] = {"KILN_EXPIRED=drop", NULL};
    it_uuid old1, old2, fresh;
    dead_msg dead[MAX_DEAD];
    kiln_store *st;
    size_t w, n;

    /* Dead-lettered (the default). */
    f->cfg.dialect = KILN_DIALECT_PAOTA;
    w = start_worker(f, "worker-dl", NULL);
    send_one(f, paota_sig(5, 60, old1));
    send_one(f, paota_sig(5, 0, fresh));
    assert_int_equal(wait_lines(f->log, 'F', fresh, 1, 10000), 1);
    wait_dead(f, 1, 10000);
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 1);
    assert_non_null(dead_of(dead, n, old1));
    printf("  expired, dead-lettered: \"%s\"\n", dead[0].reason);
    assert_non_null(strstr(dead[0].reason, "expired"));
    free_dead(dead, n);
    expect_settled(f);
    stop_worker(f, w);

    /* Dropped: acked and logged. */
    w = start_worker(f, "worker-drop", drop);
    send_one(f, paota_sig(5, 60, old2));
    expect_settled(f);
    for (int i = 0; i < 100 && !output_has(f, w, "dropped: expired", old2); i++)
        it_sleep_ms(50);
    if (!output_has(f, w, "dropped: expired", old2))
        fail_msg("no log line says %s was dropped as expired", old2);
    assert_int_equal(it_wait_ready(f->cfg.dead_letter_queue, 0, 0), 0);
    assert_int_equal(count_lines(f->log, 'F', old1), 0);
    assert_int_equal(count_lines(f->log, 'F', old2), 0);

    /* FAILURE "expired" either way. */
    st = it_open_store(f);
    kiln_result_free(it_expect_final(st, old1, KILN_STATE_FAILURE, "expired"));
    kiln_result_free(it_expect_final(st, old2, KILN_STATE_FAILURE, "expired"));
    kiln_result_free(it_expect_final(st, fresh, KILN_STATE_SUCCESS, NULL));
    kiln_store_free(st);
    stop_worker(f, w);
    f->passed = true;
}

/* A C producer's task with a TaskTimeOut and no CreatedAt carries the
 * time it was sent, in each dialect: left in the queue past its
 * TaskTimeOut it is FAILURE "expired" and dead-lettered, while one still
 * within its own runs. */
static void test_expired_c_producer(void **state)
{
    it_fix *f = *state;
    static const kiln_dialect ds[] = {KILN_DIALECT_MACHINERY,
                                      KILN_DIALECT_PAOTA,
                                      KILN_DIALECT_PAOTA_HEADERS};
    it_uuid late[3], fresh[3];
    dead_msg dead[MAX_DEAD];
    kiln_store *st;
    kiln_error err;
    size_t w, n;

    for (size_t i = 0; i < 3; i++) {
        kiln_signature *sigs[2] = {it_new_sig(IT_TASK_RECORD, late[i]),
                                   it_new_sig(IT_TASK_RECORD, fresh[i])};

        /* A pool sends in the dialect of its configuration. */
        kiln_pool_free(f->pool);
        f->pool = NULL;
        f->cfg.dialect = ds[i];
        for (size_t j = 0; j < 2; j++) {
            assert_int_equal(kiln_signature_set_task_timeout(
                                 sigs[j], j == 0 ? 1 : 600, &err),
                             KILN_OK);
            if (ds[i] == KILN_DIALECT_PAOTA_HEADERS)
                assert_int_equal(
                    kiln_signature_set_raw_body(sigs[j], "{}", 2, &err),
                    KILN_OK);
        }
        it_send_free(f, sigs, 2);
    }
    /* Nothing consumes yet: let a TaskTimeOut of 1 s pass (header mode
     * keeps whole seconds of CreatedAt, so it may pass sooner). */
    it_sleep_ms(2100);
    w = start_worker(f, "worker", NULL);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(wait_lines(f->log, 'F', fresh[i], 1, 10000), 1);
    wait_dead(f, 3, 10000);
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++) {
        /* A header-mode body is the raw body alone: no UUID in it. */
        if (ds[i] != KILN_DIALECT_PAOTA_HEADERS &&
            dead_of(dead, n, late[i]) == NULL)
            fail_msg("dialect %d: %s is not dead-lettered", (int)ds[i],
                     late[i]);
        assert_non_null(strstr(dead[i].reason, "expired"));
        assert_int_equal(count_lines(f->log, 'F', late[i]), 0);
    }
    printf("  C producer, expired, dead-lettered: \"%s\"\n", dead[0].reason);
    free_dead(dead, n);
    expect_settled(f);
    st = it_open_store(f);
    for (size_t i = 0; i < 3; i++) {
        kiln_result_free(
            it_expect_final(st, late[i], KILN_STATE_FAILURE, "expired"));
        kiln_result_free(
            it_expect_final(st, fresh[i], KILN_STATE_SUCCESS, NULL));
    }
    kiln_store_free(st);
    stop_worker(f, w);
    f->passed = true;
}

/* ---- time limit --------------------------------------------------------- */

static void test_time_limit(void **state)
{
    it_fix *f = *state;
    /* Long enough for rabbitmqctl (about 1 s, 3 s on a busy machine) to
     * look while it runs. */
    const char *extra[] = {IT_ENV_SLEEP_MS "=6000", IT_ENV_LOG_STARTS "=1",
                           NULL};
    dead_msg dead[MAX_DEAD];
    it_uuid uuid;
    kiln_store *st;
    long r, u, n_c;
    size_t w, n;

    f->cfg.time_limit_ms = 300;
    f->cfg.concurrency = 2;
    w = start_worker(f, "worker", extra);
    send_one(f, it_new_sig(IT_TASK_RECORD, uuid));
    assert_int_equal(wait_lines(f->log, 'S', uuid, 1, 10000), 1);
    /* Past its limit the run still holds its thread and its delivery. */
    it_sleep_ms(400);
    assert_true(it_ctl_queue(f->cfg.queue, &r, &u, &n_c));
    printf("  past the limit, while it runs: ready %ld, unacked %ld\n", r, u);
    if (count_lines(f->log, 'F', uuid) > 0)
        fail_msg("rabbitmqctl took longer than the task's 6 s run: the "
                 "machine is too busy for this check");
    assert_int_equal(r, 0);
    assert_int_equal(u, 1);

    wait_dead(f, 1, 10000);
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 1);
    printf("  dead letter: \"%s\"\n", dead[0].reason);
    assert_non_null(strstr(dead[0].reason, "time limit"));
    free_dead(dead, n);
    st = it_open_store(f);
    kiln_result_free(
        it_expect_final(st, uuid, KILN_STATE_FAILURE, "time limit"));
    kiln_store_free(st);
    expect_settled(f);
    it_sleep_ms(500);
    assert_int_equal(count_lines(f->log, 'S', uuid), 1); /* never twice */
    stop_worker(f, w);
    f->passed = true;
}

/* ---- poison ------------------------------------------------------------- */

#define POISON_MAX 3

/* A task that kills every worker that takes it. A quorum queue counts
 * the deliveries; a classic one only flags a redelivery, and the worker
 * carries the count in x-kiln-deliveries. */
static void poison_case(it_fix *f, kiln_queue_type type)
{
    dead_msg dead[MAX_DEAD];
    it_uuid uuid;
    char want[64];
    size_t w, n;

    f->cfg.queue_type = type;
    f->cfg.max_deliveries = POISON_MAX;
    send_one(f, it_new_sig(IT_TASK_CRASH, uuid));
    /* Each delivery kills the worker that takes it; start another. */
    for (size_t i = 1; i <= POISON_MAX; i++) {
        w = it_start_worker(f, "worker", NULL);
        if (!it_wait_exit(f, w, 30000))
            fail_msg("worker %zu did not crash on delivery %zu", w, i);
        assert_true(WIFSIGNALED(f->procs[w].status));
        assert_int_equal(count_lines(f->log, 'K', uuid), i);
    }
    w = start_worker(f, "worker", NULL);
    wait_dead(f, 1, 20000);
    assert_true(it_alive(f, w));
    assert_int_equal(count_lines(f->log, 'K', uuid), POISON_MAX);
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 1);
    printf("  %s queue: crashed %d workers, then dead-lettered: \"%s\"\n",
           type == KILN_QUEUE_QUORUM ? "quorum" : "classic", POISON_MAX,
           dead[0].reason);
    (void)snprintf(want, sizeof(want), "delivered %d times", POISON_MAX + 1);
    assert_non_null(strstr(dead[0].reason, want));
    free_dead(dead, n);
    expect_settled(f);
    stop_worker(f, w);
    f->passed = true;
}

static void test_poison_quorum(void **state)
{
    poison_case(*state, KILN_QUEUE_QUORUM);
}

static void test_poison_classic(void **state)
{
    poison_case(*state, KILN_QUEUE_CLASSIC);
}

/* ---- unregistered ------------------------------------------------------- */

/* utime + stime of `pid`, in ms (/proc/<pid>/stat fields 14 and 15). */
static long long cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long long ut, st;
    const char *p;
    size_t len;
    FILE *fp;

    (void)snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    fp = fopen(path, "r");
    assert_non_null(fp);
    len = fread(buf, 1, sizeof(buf) - 1, fp);
    (void)fclose(fp);
    buf[len] = '\0';
    /* The command name may hold spaces: count fields after its ')'. */
    p = strrchr(buf, ')');
    assert_non_null(p);
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        fail_msg("cannot read %s", path);
    return (long long)(ut + st) * 1000 / sysconf(_SC_CLK_TCK);
}

#define UNREG_MAX 5

static void test_unregistered_requeue(void **state)
{
    it_fix *f = *state;
    const char *info[] = {"KILN_LOG_LEVEL=info", NULL}; /* the ignored one */
    kiln_signature *ign;
    dead_msg dead[MAX_DEAD];
    it_uuid bounce, ignored;
    long long cpu0, t0, cpu, ms;
    char want[64];
    double pct;
    size_t w, n;

    f->cfg.unregistered = KILN_UNREGISTERED_REQUEUE;
    f->cfg.max_deliveries = UNREG_MAX;
    f->cfg.retry_max_ms = 2000; /* waits of 1, 2, 2, 2, 2 s */
    w = start_worker(f, "worker", info);
    ign = it_new_sig("it.nobody", ignored);
    kiln_signature_set_ignore_unregistered(ign, true);
    send_one(f, ign);
    t0 = it_ms();
    cpu0 = cpu_ms(f->procs[w].pid);
    send_one(f, it_new_sig("it.nobody", bounce));
    wait_dead(f, 1, 30000);
    cpu = cpu_ms(f->procs[w].pid) - cpu0;
    ms = it_ms() - t0;
    pct = 100.0 * (double)cpu / (double)ms;
    printf("  unregistered task bounced %d times in %.1f s; worker CPU %lld "
           "ms, %.2f%% of one core\n",
           UNREG_MAX, (double)ms / 1000.0, cpu, pct);
    assert_true(ms >= 8000); /* 1 + 2 + 2 + 2 + 2 s of waiting */
    assert_true(pct < 5.0);
    n = take_dead(&f->cfg, dead, MAX_DEAD);
    assert_int_equal(n, 1);
    assert_non_null(dead_of(dead, n, bounce));
    printf("  dead letter: \"%s\"\n", dead[0].reason);
    (void)snprintf(want, sizeof(want), "delivered %d times", UNREG_MAX + 1);
    assert_non_null(strstr(dead[0].reason, want));
    free_dead(dead, n);
    assert_int_equal(output_count(f, w, "requeued in", bounce), UNREG_MAX);
    assert_true(output_has(f, w, "IgnoreWhenTaskNotRegistered", ignored));
    assert_int_equal(output_count(f, w, "requeued in", ignored), 0);
    expect_settled(f);
    stop_worker(f, w);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_priority_highest_first,
                                        setup_plain, it_teardown),
        cmocka_unit_test_setup_teardown(test_retry_machinery, setup_store,
                                        it_teardown_store),
        cmocka_unit_test_setup_teardown(test_retry_paota, setup_plain,
                                        it_teardown),
        cmocka_unit_test_setup_teardown(test_retry_paota_headers, setup_plain,
                                        it_teardown),
        cmocka_unit_test_setup_teardown(test_retry_confirmed_before_ack,
                                        setup_plain, it_teardown),
        cmocka_unit_test_setup_teardown(test_eta_short_not_behind_long,
                                        setup_plain, it_teardown),
        cmocka_unit_test_setup_teardown(test_expired_c_producer, setup_store,
                                        it_teardown_store),
        cmocka_unit_test_setup_teardown(test_expired, setup_store,
                                        it_teardown_store),
        cmocka_unit_test_setup_teardown(test_time_limit, setup_store,
                                        it_teardown_store),
        cmocka_unit_test_setup_teardown(test_poison_quorum, setup_plain,
                                        it_teardown),
        cmocka_unit_test_setup_teardown(test_poison_classic, setup_plain,
                                        it_teardown),
        cmocka_unit_test_setup_teardown(test_unregistered_requeue, setup_plain,
                                        it_teardown),
    };

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    /* KILN_IT_FILTER=test_time_limit runs one test (cmocka's pattern). */
    if (getenv("KILN_IT_FILTER") != NULL)
        cmocka_set_test_filter(getenv("KILN_IT_FILTER"));
    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
