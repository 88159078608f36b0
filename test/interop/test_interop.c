/*
 * kiln beside the real Go libraries: machinery v2 and paota, built from the
 * module proxy (test/interop/go.mod), on the private RabbitMQ and FerretDB
 * that `make check-interop` starts. Each test starts the Go peer
 * (peer/, one mode per process) and the kiln worker (prog_iop_worker) as
 * processes on names of its own, and reads what they did from their event
 * files (iop.h).
 *
 * Both sides take the same settings: the Go peer maps the KILN_* variables
 * onto machinery's and paota's configuration. What a mixed deployment
 * needs is in the README, "Working with machinery and paota":
 * KILN_QUEUE_DLX_ARG=false, and for machinery a binding key equal to the
 * queue's name.
 */
#include "test/support/pool_it.h"
#include "test/interop/iop.h"

#include <kiln/store_mongo.h>

#define PEER "../../interop/bin/peer" /* from build/<variant>/interop */

typedef struct iop_event {
    char kind[16], task[64], uuid[KILN_UUID_LEN + 8];
    long long ms, eta_ms;
    int retry_count, retry_timeout, retries_done;
    char verdict[512];
} iop_event;

typedef struct iop_fix {
    it_fix *it;
    char go_out[PATH_MAX];   /* the Go peer's events */
    char kiln_out[PATH_MAX]; /* the kiln worker's events */
    char delayed[KILN_NAME_MAX];
    char mongo_db[64];
    const char *mongo_url;
} iop_fix;

/* ---- fixture ------------------------------------------------------------ */

static int setup(void **state)
{
    iop_fix *x = calloc(1, sizeof(*x));
    kiln_config *c;

    assert_non_null(x);
    it_setup((void **)&x->it, "iop");
    c = &x->it->cfg;
    /* machinery's producer declares a queue named after the routing key, so
     * with a direct exchange the binding key is the queue's name. */
    kiln__strlcpy(c->binding_key, c->queue, sizeof(c->binding_key));
    c->queue_dlx_arg = false;
    it_path(x->go_out, sizeof(x->go_out), x->it->dir, "go.events");
    it_path(x->kiln_out, sizeof(x->kiln_out), x->it->dir, "kiln.events");
    (void)snprintf(x->delayed, sizeof(x->delayed), "%.200s.delayed", c->queue);
    /* kiln_it.pool.iop.<sfx>.q: the random part names the database. */
    (void)snprintf(x->mongo_db, sizeof(x->mongo_db), "iop_%.12s",
                   strstr(c->queue, ".iop.") + 5);
    x->mongo_url = getenv("KILN_TEST_MONGODB_URL");
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    iop_fix *x = *state;
    amqp_connection_state_t c = it_raw_open();

    if (c != NULL) {
        (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(x->delayed), 0, 0);
        it_raw_close(c);
    }
    if (!x->it->passed) {
        it_tail(x->go_out, 20);
        it_tail(x->kiln_out, 20);
    }
    it_teardown((void **)&x->it);
    free(x);
    return 0;
}

static const char *mongo_url(const iop_fix *x)
{
    if (x->mongo_url == NULL || x->mongo_url[0] == '\0')
        fail_msg("KILN_TEST_MONGODB_URL is not set: run with `make "
                 "check-interop` (scripts/with-ferretdb.sh starts FerretDB)");
    return x->mongo_url;
}

/* ---- processes ---------------------------------------------------------- */

/* Starts the Go peer in `mode` with the fixture's KILN_* settings and
 * `extra` ("KEY=VALUE", NULL-terminated; may be NULL). */
static size_t start_peer(iop_fix *x, const char *mode, bool mongo,
                         const char *const *extra)
{
    it_env e;
    size_t i;

    it_env_init(&e, x->it);
    it_env_add(&e, "IOP_MODE", "%s", mode);
    it_env_add(&e, IOP_ENV_OUT, "%s", x->go_out);
    it_env_add(&e, "IOP_PAOTA_DELAYED_QUEUE", "%s", x->delayed);
    if (mongo) {
        it_env_add(&e, "KILN_MONGODB_URL", "%s", mongo_url(x));
        it_env_add(&e, "KILN_MONGODB_DATABASE", "%s", x->mongo_db);
    }
    it_env_add_pairs(&e, extra);
    i = it_spawn(x->it, PEER, mode, &e);
    it_env_free(&e);
    return i;
}

/* Starts prog_iop_worker; with `mongo` it records task states in the
 * test's database. Returns once it consumes the queue. */
static size_t start_kiln_worker(iop_fix *x, bool mongo, const char *raw_body,
                                long long raw_created)
{
    it_env e;
    size_t i;

    it_env_init(&e, x->it);
    it_env_add(&e, "KILN_QUEUE_DLX_ARG", "false");
    it_env_add(&e, IOP_ENV_OUT, "%s", x->kiln_out);
    if (raw_body != NULL) {
        it_env_add(&e, IOP_ENV_RAW_BODY, "%s", raw_body);
        it_env_add(&e, IOP_ENV_RAW_CREATED, "%lld", raw_created);
    }
    if (mongo) {
        it_env_add(&e, "KILN_STORE", "mongodb");
        it_env_add(&e, "KILN_MONGODB_URL", "%s", mongo_url(x));
        it_env_add(&e, "KILN_MONGODB_DATABASE", "%s", x->mongo_db);
    }
    i = it_spawn(x->it, "prog_iop_worker", "kiln-worker", &e);
    it_env_free(&e);
    if (!it_wait_consumers(x->it->cfg.queue, 1, 20000))
        fail_msg("the kiln worker does not consume %s", x->it->cfg.queue);
    return i;
}

static void wait_go_consumer(iop_fix *x)
{
    if (!it_wait_consumers(x->it->cfg.queue, 1, 30000))
        fail_msg("the Go worker does not consume %s", x->it->cfg.queue);
}

/* ---- events ------------------------------------------------------------- */

static bool parse_event(const char *line, iop_event *ev)
{
    int used = 0;

    memset(ev, 0, sizeof(*ev));
    ev->eta_ms = -1;
    if (sscanf(line, "%15s %63s %49s %lld%n", ev->kind, ev->task, ev->uuid,
               &ev->ms, &used) != 4)
        return false;
    line += used;
    if (strcmp(ev->kind, "RUN") == 0) {
        if (sscanf(line, " %d %d %d %lld %n", &ev->retry_count,
                   &ev->retry_timeout, &ev->retries_done, &ev->eta_ms,
                   &used) != 4)
            return false;
        line += used;
    }
    while (*line == ' ')
        line++;
    kiln__strlcpy(ev->verdict, line, sizeof(ev->verdict));
    ev->verdict[strcspn(ev->verdict, "\n")] = '\0';
    return true;
}

/* The first event of `kind` for `task` (and `uuid` unless NULL) in `path`. */
static bool find_event(const char *path, const char *kind, const char *task,
                       const char *uuid, iop_event *ev)
{
    char line[1200];
    bool found = false;
    FILE *fp = fopen(path, "r");

    if (fp == NULL)
        return false;
    while (!found && fgets(line, sizeof(line), fp) != NULL)
        found = parse_event(line, ev) && strcmp(ev->kind, kind) == 0 &&
                strcmp(ev->task, task) == 0 &&
                (uuid == NULL || strcmp(ev->uuid, uuid) == 0);
    (void)fclose(fp);
    return found;
}

static iop_event wait_event(const char *path, const char *kind,
                            const char *task, const char *uuid, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;
    iop_event ev;

    while (!find_event(path, kind, task, uuid, &ev)) {
        if (it_ms() >= end)
            fail_msg("no %s %s %s in %s after %d ms", kind, task,
                     uuid != NULL ? uuid : "", path, timeout_ms);
        it_sleep_ms(20);
    }
    return ev;
}

static void assert_ok(const iop_event *ev)
{
    if (strcmp(ev->verdict, "ok") != 0)
        fail_msg("%s %s %s: %s", ev->kind, ev->task, ev->uuid, ev->verdict);
}

/* ---- sending from the test ---------------------------------------------- */

/* Sends `sig` through a kiln pool speaking `dialect`. */
static void kiln_send(iop_fix *x, kiln_dialect dialect, kiln_signature *sig)
{
    kiln_error err;

    x->it->cfg.dialect = dialect;
    if (kiln_pool_send_task(it_pool(x->it), sig, &err) != KILN_OK)
        fail_msg("kiln_pool_send_task: %s", err.message);
}

static kiln_signature *all_types_signature(void)
{
    kiln_error err;
    kiln_signature *sig = kiln_signature_new(IOP_TASK_ALL_TYPES, &err);

    assert_non_null(sig);
    if (iop_add_all(sig, &err) != KILN_OK)
        fail_msg("iop_add_all: %s", err.message);
    return sig;
}

/* ---- the task queue's arguments ----------------------------------------- */

/* machinery and paota declare the task queue without arguments, and
 * RabbitMQ refuses a second declaration that differs (406). With kiln's
 * default (KILN_QUEUE_DLX_ARG=true) a Go service cannot declare the queue
 * kiln declared, and kiln's error says which setting to change. */
static void test_default_dlx_arg_conflicts(void **state)
{
    iop_fix *x = *state;
    kiln_config cfg = x->it->cfg;
    kiln_error err;
    kiln_signature *sig;
    kiln_pool *p;
    size_t go;

    /* paota first: kiln's declaration is refused, naming the setting. */
    it_expect_exit0(x->it, start_peer(x, "paota-send", false, NULL), 30000);
    cfg.queue_dlx_arg = true;
    cfg.publish_timeout_ms = 1000; /* the send retries until then */
    p = kiln_pool_new(&cfg, 1, "iop-default", &err);
    assert_non_null(p);
    sig = kiln_signature_new(IOP_TASK_ETA, &err);
    assert_non_null(sig);
    assert_int_not_equal(kiln_pool_send_task(p, sig, &err), KILN_OK);
    kiln_signature_free(sig);
    kiln_pool_free(p);
    if (strstr(err.message, "x-dead-letter-exchange") == NULL ||
        strstr(err.message, "KILN_QUEUE_DLX_ARG=false") == NULL)
        fail_msg("kiln's 406 does not name the setting: %s", err.message);
    /* kiln first: machinery's declaration is refused. */
    it_delete_topology(&cfg);
    p = kiln_pool_new(&cfg, 1, "iop-default", &err);
    assert_non_null(p);
    sig = kiln_signature_new(IOP_TASK_ETA, &err);
    assert_non_null(sig);
    assert_int_equal(kiln_pool_send_task(p, sig, &err), KILN_OK);
    kiln_signature_free(sig);
    kiln_pool_free(p);
    go = start_peer(x, "machinery-send", false, NULL);
    assert_true(it_wait_exit(x->it, go, 30000));
    assert_true(WIFEXITED(x->it->procs[go].status));
    assert_int_equal(WEXITSTATUS(x->it->procs[go].status), 1);
    x->it->passed = true;
}

/* ---- machinery ---------------------------------------------------------- */

/* A machinery producer's task reaches a kiln worker with every argument
 * exact. */
static void test_machinery_producer_kiln_worker(void **state)
{
    iop_fix *x = *state;
    iop_event sent, run;

    (void)start_kiln_worker(x, false, NULL, 0);
    it_expect_exit0(x->it, start_peer(x, "machinery-send", false, NULL), 30000);
    sent = wait_event(x->go_out, "SENT", IOP_TASK_ALL_TYPES, NULL, 1000);
    run = wait_event(x->kiln_out, "RUN", IOP_TASK_ALL_TYPES, sent.uuid, 10000);
    assert_ok(&run);
    x->it->passed = true;
}

/* The store part: kiln's worker records SUCCESS and typed results in
 * MongoDB, and the machinery producer reads them through machinery's own
 * result backend (AsyncResult.GetWithTimeout). */
static void test_machinery_backend_reads_kiln_results(void **state)
{
    iop_fix *x = *state;
    const char *const wait[] = {"IOP_WAIT_RESULTS=1", NULL};
    kiln_config probe = x->it->cfg;
    kiln_error err;
    kiln_pool *p;
    iop_event sent, res;

    probe.store = KILN_STORE_MONGODB;
    kiln__strlcpy(probe.mongodb_url, mongo_url(x), sizeof(probe.mongodb_url));
    if ((p = kiln_pool_new(&probe, 1, "iop-probe", &err)) == NULL) {
        printf("  skipped: this build's kiln_pool_new refuses KILN_STORE="
               "mongodb (%s)\n",
               err.message);
        x->it->passed = true;
        skip();
    }
    kiln_pool_free(p);
    (void)start_kiln_worker(x, true, NULL, 0);
    it_expect_exit0(x->it, start_peer(x, "machinery-send", true, wait), 45000);
    sent = wait_event(x->go_out, "SENT", IOP_TASK_ALL_TYPES, NULL, 1000);
    res = wait_event(x->kiln_out, "RUN", IOP_TASK_ALL_TYPES, sent.uuid, 1000);
    assert_ok(&res);
    res = wait_event(x->go_out, "RESULTS", IOP_TASK_ALL_TYPES, sent.uuid, 1000);
    assert_ok(&res);
    x->it->passed = true;
}

/* Reads the Go worker's results for `uuid` from MongoDB through kiln's
 * store API: SUCCESS and goResults() of peer/values.go, typed. */
static void assert_go_results(iop_fix *x, const char *uuid)
{
    kiln_config cfg = x->it->cfg;
    kiln_error err;
    kiln_store *st;
    kiln_result *res = NULL;
    const kiln_signature *v;
    int64_t i;
    uint64_t u;
    double f;
    const char *s;
    bool b;

    cfg.store = KILN_STORE_MONGODB;
    kiln__strlcpy(cfg.mongodb_url, mongo_url(x), sizeof(cfg.mongodb_url));
    kiln__strlcpy(cfg.mongodb_database, x->mongo_db,
                  sizeof(cfg.mongodb_database));
    st = kiln_store_new(&cfg, &err);
    assert_non_null(st);
    if (kiln_store_wait_result(st, uuid, 20000, &res, &err) != KILN_OK) {
        kiln_store_free(st);
        fail_msg("kiln_store_wait_result %s: %s", uuid, err.message);
    }
    assert_int_equal(kiln_result_state(res), KILN_STATE_SUCCESS);
    /* No task_name: machinery's worker writes states only, and its
     * producer writes the name with PENDING; a kiln producer without a
     * store writes no PENDING. */
    v = kiln_result_values(res);
    assert_int_equal(kiln_signature_arg_count(v), 5);
    assert_int_equal(kiln_signature_arg_int64(v, 0, &i, &err), KILN_OK);
    assert_true(i == IOP_GO_RESULT_INT);
    assert_int_equal(kiln_signature_arg_uint64(v, 1, &u, &err), KILN_OK);
    assert_true(u == IOP_GO_RESULT_UINT);
    assert_int_equal(kiln_signature_arg_double(v, 2, &f, &err), KILN_OK);
    assert_true(iop_same(f, IOP_GO_RESULT_FLOAT));
    assert_int_equal(kiln_signature_arg_string(v, 3, &s, &err), KILN_OK);
    assert_string_equal(s, IOP_UTF8);
    assert_int_equal(kiln_signature_arg_bool(v, 4, &b, &err), KILN_OK);
    assert_true(b == IOP_GO_RESULT_BOOL);
    kiln_result_free(res);
    kiln_store_free(st);
}

/* kiln sends every argument type to a machinery worker, whose typed task
 * function checks each value; kiln then reads the worker's SUCCESS and
 * results from machinery's MongoDB backend. */
static void test_kiln_producer_machinery_worker(void **state)
{
    iop_fix *x = *state;
    kiln_signature *sig;
    iop_event run;

    (void)start_peer(x, "machinery-worker", true, NULL);
    wait_go_consumer(x);
    sig = all_types_signature();
    kiln_send(x, KILN_DIALECT_MACHINERY, sig);
    run = wait_event(x->go_out, "RUN", IOP_TASK_ALL_TYPES,
                     kiln_signature_uuid(sig), 15000);
    assert_ok(&run);
    assert_go_results(x, kiln_signature_uuid(sig));
    kiln_signature_free(sig);
    x->it->passed = true;
}

/* Sends iop.retry (RetryCount 3) to a Go worker that fails it once and
 * quits after sending the retry; then a kiln worker takes the retry.
 * Returns the kiln worker's RUN event; *first gets the Go worker's. */
static iop_event retry_through_go(iop_fix *x, const char *mode,
                                  kiln_dialect dialect, iop_event *first)
{
    const char *const quit[] = {"IOP_QUIT_AFTER_RETRY=1", NULL};
    kiln_error err;
    kiln_signature *sig = kiln_signature_new(IOP_TASK_RETRY, &err);
    char uuid[KILN_UUID_LEN];
    size_t go;

    assert_non_null(sig);
    assert_int_equal(kiln_signature_set_retry(sig, 3, 0, &err), KILN_OK);
    kiln__strlcpy(uuid, kiln_signature_uuid(sig), sizeof(uuid));
    go = start_peer(x, mode, false, quit);
    wait_go_consumer(x);
    kiln_send(x, dialect, sig);
    kiln_signature_free(sig);
    it_expect_exit0(x->it, go, 30000);
    *first = wait_event(x->go_out, "RUN", IOP_TASK_RETRY, uuid, 1000);
    (void)start_kiln_worker(x, false, NULL, 0);
    return wait_event(x->kiln_out, "RUN", IOP_TASK_RETRY, uuid, 15000);
}

/* machinery's retry: RetryCount counts down, RetryTimeout grows as
 * Fibonacci (0 -> 1 s), the ETA is now + RetryTimeout, and machinery's
 * delay queue holds it until then. */
static void test_machinery_retry_reaches_kiln(void **state)
{
    iop_fix *x = *state;
    iop_event first, run = retry_through_go(x, "machinery-worker",
                                            KILN_DIALECT_MACHINERY, &first);

    assert_int_equal(first.retry_count, 3);
    assert_int_equal(first.retry_timeout, 0);
    assert_int_equal(run.retry_count, 2);
    assert_int_equal(run.retry_timeout, 1);
    assert_int_equal(run.retries_done, 0);
    assert_true(run.eta_ms >= first.ms + 1000);
    assert_true(run.eta_ms <= first.ms + 3000);
    if (run.ms < run.eta_ms - 50)
        fail_msg("the retry ran at %lld, %lld ms before its ETA", run.ms,
                 run.eta_ms - run.ms);
    assert_ok(&run);
    x->it->passed = true;
}

/* ---- paota -------------------------------------------------------------- */

/* A paota producer's task (JSON body) reaches a kiln worker exactly. */
static void test_paota_producer_kiln_worker(void **state)
{
    iop_fix *x = *state;
    iop_event sent, run;

    (void)start_kiln_worker(x, false, NULL, 0);
    it_expect_exit0(x->it, start_peer(x, "paota-send", false, NULL), 30000);
    sent = wait_event(x->go_out, "SENT", IOP_TASK_ALL_TYPES, NULL, 1000);
    run = wait_event(x->kiln_out, "RUN", IOP_TASK_ALL_TYPES, sent.uuid, 10000);
    assert_ok(&run);
    x->it->passed = true;
}

/* kiln sends in paota's dialect to a paota worker, which checks every
 * argument as encoding/json decoded it. */
static void test_kiln_producer_paota_worker(void **state)
{
    iop_fix *x = *state;
    kiln_signature *sig;
    iop_event run;

    (void)start_peer(x, "paota-worker", false, NULL);
    wait_go_consumer(x);
    sig = all_types_signature();
    kiln_send(x, KILN_DIALECT_PAOTA, sig);
    run = wait_event(x->go_out, "RUN", IOP_TASK_ALL_TYPES,
                     kiln_signature_uuid(sig), 15000);
    assert_ok(&run);
    kiln_signature_free(sig);
    x->it->passed = true;
}

/* paota's header mode: the raw body as it is, the metadata in AMQP headers
 * of the Go types paota gives them. */
static void test_paota_header_mode_kiln_worker(void **state)
{
    iop_fix *x = *state;
    const char *body = "{\"order\":42,\"items\":[\"a\",\"\\u00e9\"],\"n\":1e3}";
    long long created = iop_unix_ms() / 1000;
    char body_env[128], created_env[64];
    const char *const extra[] = {body_env, created_env,
                                 "IOP_RAW_TASK=" IOP_TASK_RAW,
                                 "IOP_RAW_RETRY_COUNT=3", NULL};
    iop_event sent, run;

    (void)snprintf(body_env, sizeof(body_env), "%s=%s", IOP_ENV_RAW_BODY, body);
    (void)snprintf(created_env, sizeof(created_env), "%s=%lld",
                   IOP_ENV_RAW_CREATED, created);
    (void)start_kiln_worker(x, false, body, created);
    it_expect_exit0(
        x->it,
        start_peer(x, "paota-raw-send", false, (const char *const *)extra),
        30000);
    sent = wait_event(x->go_out, "SENT", IOP_TASK_RAW, NULL, 1000);
    run = wait_event(x->kiln_out, "RUN", IOP_TASK_RAW, sent.uuid, 10000);
    assert_ok(&run);
    assert_int_equal(run.retry_count, 3);
    assert_int_equal(run.retries_done, 1);
    assert_int_equal(run.eta_ms, -1);
    x->it->passed = true;
}

/* paota's retry: RetryCount stays the total, RetriesDone counts up, the ETA
 * is now + Fibonacci(RetriesDone) s, and paota's delayed queue (a TTL on
 * the message) holds it until then. */
static void test_paota_retry_reaches_kiln(void **state)
{
    iop_fix *x = *state;
    iop_event first,
        run = retry_through_go(x, "paota-worker", KILN_DIALECT_PAOTA, &first);

    assert_int_equal(first.retry_count, 3);
    assert_int_equal(first.retries_done, 0);
    assert_int_equal(run.retry_count, 3);
    assert_int_equal(run.retries_done, 1);
    assert_true(run.eta_ms >= first.ms + 1000);
    assert_true(run.eta_ms <= first.ms + 3000);
    if (run.ms < run.eta_ms - 50)
        fail_msg("the retry ran at %lld, %lld ms before its ETA", run.ms,
                 run.eta_ms - run.ms);
    assert_ok(&run);
    x->it->passed = true;
}

/* ---- kiln's delayed tasks on Go workers --------------------------------- */

/* kiln sends iop.eta due in 3 s; the Go worker, which runs what it gets at
 * once, must run it at its ETA: kiln's delay cascade holds it until then. */
static void eta_on_go_worker(iop_fix *x, const char *mode, kiln_dialect dialect)
{
    const long long delay_ms = 3000;
    kiln_error err;
    kiln_signature *sig = kiln_signature_new(IOP_TASK_ETA, &err);
    long long eta_ms = iop_unix_ms() + delay_ms;
    iop_event run;

    assert_non_null(sig);
    kiln_signature_set_eta(sig, (int64_t)eta_ms * 1000000);
    (void)start_peer(x, mode, false, NULL);
    wait_go_consumer(x);
    kiln_send(x, dialect, sig);
    run = wait_event(x->go_out, "RUN", IOP_TASK_ETA, kiln_signature_uuid(sig),
                     (int)delay_ms + 15000);
    kiln_signature_free(sig);
    assert_int_equal(run.eta_ms, eta_ms);
    if (run.ms < eta_ms - (long long)x->it->cfg.delay_unit_ms)
        fail_msg("%s ran the task %lld ms before its ETA", mode,
                 eta_ms - run.ms);
    printf("  %s ran the task %lld ms after its ETA\n", mode, run.ms - eta_ms);
    if (run.ms > eta_ms + 2000)
        fail_msg("%s ran the task %lld ms after its ETA", mode,
                 run.ms - eta_ms);
    x->it->passed = true;
}

static void test_kiln_eta_machinery_worker(void **state)
{
    eta_on_go_worker(*state, "machinery-worker", KILN_DIALECT_MACHINERY);
}

static void test_kiln_eta_paota_worker(void **state)
{
    eta_on_go_worker(*state, "paota-worker", KILN_DIALECT_PAOTA);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_default_dlx_arg_conflicts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_machinery_producer_kiln_worker,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_machinery_backend_reads_kiln_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kiln_producer_machinery_worker,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_machinery_retry_reaches_kiln,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_paota_producer_kiln_worker, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kiln_producer_paota_worker, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_paota_header_mode_kiln_worker,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_paota_retry_reaches_kiln, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kiln_eta_machinery_worker, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kiln_eta_paota_worker, setup,
                                        teardown),
    };

    kiln_log_set_level(KILN_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
