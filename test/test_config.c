/*
 * Tests of config/: defaults, reading every KILN_* variable and its paota
 * alias, rejection of bad values with the variable named and the config
 * untouched, derived names, rules between fields, and kiln_config_validate
 * on structs built by hand. One table lists every variable; most tests walk
 * it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

extern char **environ;

enum rule {
    R_ENTITY, /* exchange or queue name */
    R_KEY,    /* binding key */
    R_DB,     /* MongoDB database name */
    R_PATH,
    R_AMQP,
    R_MONGO,
    R_WORD, /* exchange type: a string field */
    R_ENUM,
    R_UINT,
    R_SIZE,
    R_BOOL
};

struct var {
    const char *name;
    const char *alias;
    enum rule rule;
    size_t off, size;
    unsigned long long min, max; /* R_UINT and R_SIZE */
    const char *def;             /* the default, as field_text writes it */
    const char *good;            /* a value to set */
    const char *stored;          /* what the field holds then; NULL: good */
    const char *with1, *with2;   /* NAME=VALUE pairs the good value needs */
};

#define O(m)  offsetof(kiln_config, m), sizeof(((kiln_config *)0)->m)
#define AMQPS "KILN_BROKER_URL=amqps://mq.example/"

static const struct var vars[] = {
    {"KILN_BROKER_URL", "PAOTA_AMQP_URL", R_AMQP, O(broker_url), 0, 0,
     "amqp://guest:guest@127.0.0.1:5672/",
     "amqps://u:p@rabbit.example:5671/prod", NULL, NULL, NULL},
    {"KILN_EXCHANGE", "PAOTA_AMQP_EXCHANGE", R_ENTITY, O(exchange), 0, 0,
     "kiln_tasks", "orders_x", NULL, NULL, NULL},
    {"KILN_EXCHANGE_TYPE", "PAOTA_AMQP_EXCHANGE_TYPE", R_WORD, O(exchange_type),
     0, 0, "direct", "Topic", "topic", NULL, NULL},
    {"KILN_QUEUE", "PAOTA_QUEUE_NAME", R_ENTITY, O(queue), 0, 0, "kiln_tasks",
     "orders", NULL, NULL, NULL},
    {"KILN_BINDING_KEY", "PAOTA_AMQP_BINDING_KEY", R_KEY, O(binding_key), 0, 0,
     "kiln_task", "orders.#", NULL, NULL, NULL},
    {"KILN_QUEUE_TYPE", NULL, R_ENUM, O(queue_type), 0, 0, "0", "QUORUM", "1",
     NULL, NULL},
    {"KILN_MAX_PRIORITY", NULL, R_UINT, O(max_priority), 0, 255, "0", "10",
     NULL, NULL, NULL},
    {"KILN_PREFETCH", "PAOTA_AMQP_PREFETCH_COUNT", R_UINT, O(prefetch), 1,
     65535, "128", "1", NULL, NULL, NULL},
    {"KILN_POOL_SIZE", "PAOTA_AMQP_CONNECTION_POOL_SIZE", R_UINT, O(pool_size),
     1, 64, "2", "64", NULL, NULL, NULL},
    {"KILN_HEARTBEAT", "PAOTA_AMQP_HEARTBEAT_INTERVAL", R_UINT, O(heartbeat_s),
     0, 65535, "30", "0", NULL, NULL, NULL},
    {"KILN_CONNECT_TIMEOUT_MS", NULL, R_UINT, O(connect_timeout_ms), 1, 3600000,
     "10000", "3600000", NULL, NULL, NULL},
    {"KILN_PUBLISH_TIMEOUT_MS", NULL, R_UINT, O(publish_timeout_ms), 1, 3600000,
     "10000", "250", NULL, NULL, NULL},
    {"KILN_DEAD_LETTER_EXCHANGE", NULL, R_ENTITY, O(dead_letter_exchange), 0, 0,
     "kiln_tasks.dlx", "dlx", NULL, NULL, NULL},
    {"KILN_DEAD_LETTER_QUEUE", "PAOTA_AMQP_FAILED_QUEUE", R_ENTITY,
     O(dead_letter_queue), 0, 0, "kiln_tasks.dead", "failed", NULL, NULL, NULL},
    {"KILN_QUEUE_DLX_ARG", NULL, R_BOOL, O(queue_dlx_arg), 0, 0, "1", "no", "0",
     NULL, NULL},
    {"KILN_DELAY_EXCHANGE", NULL, R_ENTITY, O(delay_exchange), 0, 0,
     "kiln_tasks.delay", "delays", NULL, NULL, NULL},
    {"KILN_DELAY_LEVELS", NULL, R_UINT, O(delay_levels), 1, 32, "32", "28",
     NULL, NULL, NULL},
    {"KILN_DELAY_UNIT_MS", NULL, R_UINT, O(delay_unit_ms), 1, 3600000, "50",
     "10", NULL, NULL, NULL},
    {"KILN_DELAY_QUEUE_TYPE", NULL, R_ENUM, O(delay_queue_type), 0, 0, "1",
     "Classic", "0", NULL, NULL},
    {"KILN_TLS_CA", NULL, R_PATH, O(tls_ca), 0, 0, "", "/etc/ssl/ca.pem", NULL,
     AMQPS, NULL},
    {"KILN_TLS_CERT", NULL, R_PATH, O(tls_cert), 0, 0, "", "/c.pem", NULL,
     AMQPS, "KILN_TLS_KEY=/k.pem"},
    {"KILN_TLS_KEY", NULL, R_PATH, O(tls_key), 0, 0, "", "/k.pem", NULL, AMQPS,
     "KILN_TLS_CERT=/c.pem"},
    {"KILN_TLS_VERIFY", NULL, R_BOOL, O(tls_verify), 0, 0, "1", "off", "0",
     NULL, NULL},
    {"KILN_CONCURRENCY", "PAOTA_CONCURRENCY", R_UINT, O(concurrency), 1, 1024,
     "8", "1024", NULL, NULL, NULL},
    {"KILN_DRAIN_TIMEOUT_MS", NULL, R_UINT, O(drain_timeout_ms), 0, 2592000000u,
     "30000", "0", NULL, NULL, NULL},
    {"KILN_MAX_BODY_BYTES", NULL, R_SIZE, O(max_body_bytes), 1024, 536870912,
     "16777216", "1024", NULL, NULL, NULL},
    {"KILN_RETRY_POLICY", NULL, R_ENUM, O(retry_policy), 0, 0, "0",
     "exponential", "1", NULL, NULL},
    {"KILN_RETRY_BASE_MS", NULL, R_UINT, O(retry_base_ms), 1, 3600000, "1000",
     "3600000", NULL, NULL, NULL},
    {"KILN_RETRY_MAX_MS", NULL, R_UINT, O(retry_max_ms), 1, 2592000000u,
     "3600000", "2592000000", NULL, NULL, NULL},
    {"KILN_MAX_DELIVERIES", NULL, R_UINT, O(max_deliveries), 1, 1000000, "10",
     "1000000", NULL, NULL, NULL},
    {"KILN_UNREGISTERED", NULL, R_ENUM, O(unregistered), 0, 0, "0", "Drop", "2",
     NULL, NULL},
    {"KILN_TIME_LIMIT_MS", NULL, R_UINT, O(time_limit_ms), 0, 2592000000u, "0",
     "60000", NULL, NULL, NULL},
    {"KILN_CONSUMER_TIMEOUT_MS", NULL, R_UINT, O(consumer_timeout_ms), 0,
     2592000000u, "1800000", "4000", NULL, NULL, NULL},
    {"KILN_HANDLE_SIGNALS", NULL, R_BOOL, O(handle_signals), 0, 0, "1", "off",
     "0", NULL, NULL},
    {"KILN_DIALECT", NULL, R_ENUM, O(dialect), 0, 0, "0", "paota-headers", "2",
     NULL, NULL},
    {"KILN_STORE", "PAOTA_STORE", R_ENUM, O(store), 0, 0, "0", "mongodb", "1",
     NULL, NULL},
    {"KILN_MONGODB_URL", "PAOTA_MONGO_URI", R_MONGO, O(mongodb_url), 0, 0,
     "mongodb://127.0.0.1:27017",
     "mongodb+srv://cluster0.example.net/kiln?retryWrites=true", NULL, NULL,
     NULL},
    {"KILN_MONGODB_DATABASE", "PAOTA_MONGO_DB_NAME", R_DB, O(mongodb_database),
     0, 0, "kiln", "kiln_results", NULL, NULL, NULL},
    {"KILN_RESULTS_EXPIRE", NULL, R_UINT, O(results_expire_s), 0, 2147483647,
     "3600", "2147483647", NULL, NULL, NULL},
    {"KILN_STORE_PLUGIN", NULL, R_PATH, O(store_plugin), 0, 0, "",
     "/opt/kiln/lib/libkiln-mongo.so.0", NULL, NULL, NULL},
    {"KILN_LOG_LEVEL", NULL, R_ENUM, O(log_level), 0, 0, "6", "warning", "4",
     NULL, NULL},
    {"KILN_LOG_FORMAT", NULL, R_ENUM, O(log_format), 0, 0, "0", "JSON", "1",
     NULL, NULL},
};

#define NVARS (sizeof(vars) / sizeof(vars[0]))

/* Bad values by rule; "*" stands for a value too long for the field. */
// clang-format off
static const char *const bad_uint[] = {
    "", "abc", "-1", "+5", " 5", "5 ", "0x10", "1e3", "12abc", "1.5",
    "99999999999999999999999", "18446744073709551616", NULL};
static const char *const bad_entity[] = {
    "", "*", " x", "x ", "a\tb", "a\nb", "amq.tasks", "\xff\xfe", NULL};
static const char *const bad_key[] = {"", "*", " x", "a\nb", "\xc3", NULL};
static const char *const bad_db[] = {"", "*", "a.b", "a b", "a/b", "a$", NULL};
static const char *const bad_path[] = {"*", " /x", "/x\n", NULL};
static const char *const bad_amqp[] = {
    "", "*", "http://h/", "AMQP://h/", "amqp://", "amqp://u:p@/",
    "amqp://h:0/", "amqp://h:65536/", "amqp://h:x/", "amqp://h:/",
    "amqp://h/v?heartbeat=5", "amqp://h/a/b", "amqp://h/%zz", "amqp://[]/",
    "amqp://h /", " amqp://h/", NULL};
static const char *const bad_mongo[] = {
    "", "*", "mysql://h", "mongodb://", "mongodb://h:0", "mongodb://a,,b",
    "mongodb+srv://h:27017", "mongodb+srv://a,b", "mongodb://h x", NULL};
static const char *const bad_word[] = {"", "bogus", "1", " direct", NULL};
static const char *const bad_enum[] = {"", "bogus", "99", "-1", NULL};
static const char *const bad_bool[] = {"", "maybe", "2", "tru", " true", NULL};
// clang-format on

static const char *const *bad_values(enum rule r)
{
    static const char *const *const by_rule[] = {
        bad_entity, bad_key,  bad_db,   bad_path, bad_amqp, bad_mongo,
        bad_word,   bad_enum, bad_uint, bad_uint, bad_bool};
    return by_rule[r];
}

static void clear_env(void)
{
    for (;;) {
        char name[256] = "";

        for (char **e = environ; *e != NULL; e++) {
            size_t n = strcspn(*e, "=");
            if ((strncmp(*e, "KILN_", 5) == 0 ||
                 strncmp(*e, "PAOTA_", 6) == 0) &&
                n < sizeof(name)) {
                memcpy(name, *e, n);
                name[n] = '\0';
                break;
            }
        }
        if (name[0] == '\0')
            return;
        unsetenv(name);
    }
}

static int setup(void **state)
{
    (void)state;
    clear_env();
    return 0;
}

static void set_pair(const char *pair)
{
    char name[64];
    size_t n = strcspn(pair, "=");

    assert_true(n < sizeof(name));
    memcpy(name, pair, n);
    name[n] = '\0';
    assert_int_equal(setenv(name, pair + n + 1, 1), 0);
}

static void field_text(const kiln_config *cfg, const struct var *v, char *out,
                       size_t n)
{
    const char *p = (const char *)cfg + v->off;
    unsigned u;
    size_t z;
    bool b;
    int e;

    switch (v->rule) {
    case R_UINT:
        memcpy(&u, p, sizeof(u));
        snprintf(out, n, "%u", u);
        break;
    case R_SIZE:
        memcpy(&z, p, sizeof(z));
        snprintf(out, n, "%zu", z);
        break;
    case R_BOOL:
        memcpy(&b, p, sizeof(b));
        snprintf(out, n, "%d", b ? 1 : 0);
        break;
    case R_ENUM:
        memcpy(&e, p, sizeof(e));
        snprintf(out, n, "%d", e);
        break;
    default:
        snprintf(out, n, "%s", p);
        break;
    }
}

/* Expands "*" to a value one byte longer than the field allows. */
static const char *expand(const struct var *v, const char *bad, char *buf)
{
    size_t limit = v->rule == R_DB ? 63 : v->size - 1;
    size_t at = 0;

    if (strcmp(bad, "*") != 0)
        return bad;
    if (v->rule == R_AMQP)
        at = (size_t)sprintf(buf, "amqp://h/");
    else if (v->rule == R_MONGO)
        at = (size_t)sprintf(buf, "mongodb://h/");
    memset(buf + at, 'a', limit + 1 - at);
    buf[limit + 1] = '\0';
    return buf;
}

/* Reads the environment into a default config and expects KILN_EINVAL
 * with `name` in the message and the config unchanged. */
static void expect_rejected(const char *name, const char *value,
                            const char *also)
{
    kiln_config cfg, before;
    kiln_error err = {KILN_OK, ""};
    kiln_err rc;

    kiln_config_init(&cfg);
    before = cfg;
    rc = kiln_config_from_env(&cfg, &err);
    if (rc != KILN_EINVAL || err.code != KILN_EINVAL ||
        strstr(err.message, name) == NULL ||
        (also != NULL && strstr(err.message, also) == NULL))
        fail_msg("%s=\"%s\": rc %d, message '%s'", name, value, rc,
                 err.message);
    if (memcmp(&cfg, &before, sizeof(cfg)) != 0)
        fail_msg("%s=\"%s\": config changed on error", name, value);
}

static void test_defaults(void **state)
{
    kiln_config cfg;
    kiln_error err;
    char text[KILN_URL_MAX];

    (void)state;
    memset(&cfg, 0x5a, sizeof(cfg));
    kiln_config_init(&cfg);
    for (size_t i = 0; i < NVARS; i++) {
        field_text(&cfg, &vars[i], text, sizeof(text));
        if (strcmp(text, vars[i].def) != 0)
            fail_msg("%s default '%s', expected '%s'", vars[i].name, text,
                     vars[i].def);
    }
    assert_int_equal(kiln_config_validate(&cfg, &err), KILN_OK);
    assert_int_equal(err.code, KILN_OK);
    kiln_config_init(NULL);
}

static void test_no_env_keeps_defaults(void **state)
{
    kiln_config cfg, want;
    kiln_error err = {KILN_EINVAL, "stale"};

    (void)state;
    kiln_config_init(&cfg);
    want = cfg;
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_OK);
    assert_int_equal(err.code, KILN_OK);
    assert_string_equal(err.message, "");
    assert_memory_equal(&cfg, &want, sizeof(cfg));
}

/* Each variable's good value lands in its field; `use_alias` sets paota's
 * name instead. */
static void check_good(bool use_alias)
{
    for (size_t i = 0; i < NVARS; i++) {
        const struct var *v = &vars[i];
        const char *want = v->stored != NULL ? v->stored : v->good;
        kiln_config cfg;
        kiln_error err;
        char text[KILN_URL_MAX];

        if (use_alias && v->alias == NULL)
            continue;
        clear_env();
        if (v->with1 != NULL)
            set_pair(v->with1);
        if (v->with2 != NULL)
            set_pair(v->with2);
        setenv(use_alias ? v->alias : v->name, v->good, 1);
        kiln_config_init(&cfg);
        if (kiln_config_from_env(&cfg, &err) != KILN_OK)
            fail_msg("%s=\"%s\": %s", use_alias ? v->alias : v->name, v->good,
                     err.message);
        field_text(&cfg, v, text, sizeof(text));
        if (strcmp(text, want) != 0)
            fail_msg("%s: field '%s', expected '%s'", v->name, text, want);
    }
}

static void test_good_values(void **state)
{
    (void)state;
    check_good(false);
}

static void test_aliases(void **state)
{
    (void)state;
    check_good(true);
}

/* A KILN_* variable wins over its alias, which is then not even parsed. */
static void test_alias_precedence(void **state)
{
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < NVARS; i++) {
        const struct var *v = &vars[i];
        const char *want = v->stored != NULL ? v->stored : v->good;
        char text[KILN_URL_MAX];

        if (v->alias == NULL)
            continue;
        clear_env();
        setenv(v->alias, "", 1);
        setenv(v->name, v->good, 1);
        kiln_config_init(&cfg);
        if (kiln_config_from_env(&cfg, &err) != KILN_OK)
            fail_msg("%s over %s: %s", v->name, v->alias, err.message);
        field_text(&cfg, v, text, sizeof(text));
        assert_string_equal(text, want);
    }
    /* Set but empty still wins, and is an error. */
    clear_env();
    setenv("PAOTA_AMQP_PREFETCH_COUNT", "7", 1);
    setenv("KILN_PREFETCH", "", 1);
    expect_rejected("KILN_PREFETCH", "", NULL);
    /* A bad alias value is reported under the alias's name. */
    clear_env();
    setenv("PAOTA_AMQP_PREFETCH_COUNT", "0", 1);
    expect_rejected("PAOTA_AMQP_PREFETCH_COUNT", "0", "1 to 65535");
}

static void test_bad_values(void **state)
{
    char buf[KILN_URL_MAX + 8];
    char num[32];

    (void)state;
    for (size_t i = 0; i < NVARS; i++) {
        const struct var *v = &vars[i];
        const char *const *bad = bad_values(v->rule);

        for (size_t k = 0; bad[k] != NULL; k++) {
            const char *value = expand(v, bad[k], buf);
            clear_env();
            setenv(v->name, value, 1);
            expect_rejected(v->name, value, NULL);
        }
        if (v->rule != R_UINT && v->rule != R_SIZE)
            continue;
        /* Just outside the range on both sides. */
        if (v->min > 0) {
            snprintf(num, sizeof(num), "%llu", v->min - 1);
            setenv(v->name, num, 1);
            expect_rejected(v->name, num, "expected");
        }
        snprintf(num, sizeof(num), "%llu", v->max + 1);
        setenv(v->name, num, 1);
        expect_rejected(v->name, num, "expected");
    }
}

/* There are two store kinds: no process-wide in-memory store exists (a
 * worker's states are read by other processes), so "memory" is refused
 * from the environment and in a config built in code, naming the
 * accepted kinds. */
static void test_store_kinds(void **state)
{
    kiln_config cfg;
    kiln_error err;

    (void)state;
    setenv("KILN_STORE", "memory", 1);
    expect_rejected("KILN_STORE", "memory", "expected none or mongodb");
    clear_env();
    kiln_config_init(&cfg);
    cfg.store = (kiln_store_kind)(KILN_STORE_MONGODB + 1);
    assert_int_equal(kiln_config_validate(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_STORE"));
    assert_non_null(strstr(err.message, "expected none or mongodb"));
}

static void test_message_text(void **state)
{
    kiln_config cfg;
    kiln_error err;

    (void)state;
    setenv("KILN_PREFETCH", "0", 1);
    kiln_config_init(&cfg);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_EINVAL);
    assert_string_equal(err.message,
                        "KILN_PREFETCH=\"0\": expected an integer from 1 to "
                        "65535");
    clear_env();
    setenv("KILN_QUEUE_TYPE", "fifo", 1);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_EINVAL);
    assert_string_equal(err.message,
                        "KILN_QUEUE_TYPE=\"fifo\": expected classic or quorum");
    /* Control characters are escaped, so a message is one line. */
    clear_env();
    setenv("KILN_QUEUE", "a\nb", 1);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "a\\x0ab"));
    /* A long value is cut short and the reason still fits. */
    clear_env();
    setenv("KILN_EXCHANGE", expand(&vars[1], "*", (char[300]){0}), 1);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "...\": is 256 bytes; expected at"));
    /* No error text with a NULL err, and NULL configs are refused. */
    assert_int_equal(kiln_config_from_env(&cfg, NULL), KILN_EINVAL);
    assert_int_equal(kiln_config_from_env(NULL, &err), KILN_EINVAL);
    assert_int_equal(kiln_config_validate(NULL, &err), KILN_EINVAL);
}

static void test_password_masked(void **state)
{
    static const char *const cases[][2] = {
        {"KILN_BROKER_URL", "amqp://user:s3cret@mq:99999/"},
        {"KILN_BROKER_URL", "amqps://user:s3cret@mq/v?x=1"},
        {"KILN_BROKER_URL", "amqp://u:s3/cr@et@mq:0/"},
        {"PAOTA_AMQP_URL", "amqp://user:s3cret@/"},
        {"KILN_MONGODB_URL", "mongodb://admin:s3cret@db:0/"},
        {"KILN_QUEUE", "amqp://user:s3cret@mq/ "},
    };
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clear_env();
        setenv(cases[i][0], cases[i][1], 1);
        expect_rejected(cases[i][0], cases[i][1], ":***@");
        kiln_config_init(&cfg);
        (void)kiln_config_from_env(&cfg, &err);
        if (strstr(err.message, "s3") != NULL)
            fail_msg("password shown: %s", err.message);
    }
    /* The same from kiln_config_validate on a struct built by hand. */
    kiln_config_init(&cfg);
    strcpy(cfg.broker_url, "amqp://user:s3cret@mq:0/");
    assert_int_equal(kiln_config_validate(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_BROKER_URL=\"amqp://user:***@"));
    assert_null(strstr(err.message, "s3cret"));
}

/* Secrets as users write them: quotes, angle brackets, backticks, raw
 * '@', '?', '#' and spaces in a password, and the MongoDB options that
 * carry a secret. The message shows none of "Zq9". */
static void test_secrets_masked(void **state)
{
    static const char *const cases[][3] = {
        {"KILN_MONGODB_URL", "mongodb://admin:Zq9<a>\"s`w@db:0/", ":***@"},
        {"KILN_BROKER_URL", "amqp://user:Zq9<a>\"s`w@mq:0/", ":***@"},
        {"KILN_BROKER_URL", "amqp://user:Zq9 w@mq/", ":***@"},
        {"KILN_MONGODB_URL", "mongodb://u:Zq9@s#w@db:0/", ":***@"},
        {"KILN_BROKER_URL", "amqp://u:Zq9@s?s#w@mq/", ":***@"},
        {"KILN_MONGODB_URL", "mongodb://u:Zq9 w@db/x\n", ":***@"},
        {"KILN_MONGODB_URL",
         "mongodb://db:0/?tlsCertificateKeyFilePassword=Zq9",
         "tlsCertificateKeyFilePassword=***"},
        {"KILN_MONGODB_URL",
         "mongodb://db:0/?authMechanismProperties=AWS_SESSION_TOKEN:Zq9",
         "authMechanismProperties=***"},
        {"PAOTA_MONGO_URI", "mongodb://db:0/?proxyPassword=Zq9&proxyPort=1",
         "proxyPassword=***&"},
        {"KILN_MONGODB_URL",
         "mongodb://u:Zq9`@db:0/?SSLCLIENTCERTIFICATEKEYPASSWORD=Zq9",
         "PASSWORD=***"},
    };
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clear_env();
        setenv(cases[i][0], cases[i][1], 1);
        expect_rejected(cases[i][0], cases[i][1], cases[i][2]);
        kiln_config_init(&cfg);
        (void)kiln_config_from_env(&cfg, &err);
        if (strstr(err.message, "Zq9") != NULL)
            fail_msg("secret shown: %s", err.message);
    }
    /* The same from kiln_config_validate on a struct built by hand. */
    kiln_config_init(&cfg);
    strcpy(cfg.mongodb_url,
           "mongodb://u:Zq9\"<>@db:0/?tlsCertificateKeyFilePassword=Zq9");
    assert_int_equal(kiln_config_validate(&cfg, &err), KILN_EINVAL);
    assert_non_null(strstr(err.message, "KILN_MONGODB_URL=\"mongodb://u:***@"));
    assert_null(strstr(err.message, "Zq9"));
}

/* libmongoc takes a MongoDB URL's user part to its first '@' and refuses a
 * raw ':' or '/' in it: a raw '@' in a password would make the rest of it
 * a host name. The check finds the user part as the masking does (to the
 * last '@' before the query) and names the character to escape; '@' in an
 * option value, and raw '?' or '#' in a password, are accepted, as
 * libmongoc accepts them. The password is never shown. */
static void test_mongodb_url_messages(void **state)
{
    static const char *const bad[][2] = {
        {"mongodb://u:Zq9@w@db/", "a raw '@' in the password: write it as %40"},
        {"mongodb://u:Zq9/w@db/x",
         "a raw '/' in the password: write it as %2F"},
        {"mongodb://u:Zq9:w@db/", "a raw ':' in the password: write it as %3A"},
        {"mongodb://a@b:Zq9@db/", "a raw '@' in the user: write it as %40"},
        {"mongodb+srv://u:Zq9@w@db/", "a raw '@' in the password"},
        {"mongodb://u:Zq9@db:0/?appname=a@b", "the port must be 1 to 65535"},
    };
    static const char *const good[] = {
        "mongodb://u:Zq9@db/?appname=a@b&authMechanismProperties=X:c@d",
        "mongodb://u@db/?appname=a@b",
        "mongodb://u:Zq9?s#w@db/x",
        "mongodb://u:Zq9%40w%2F%3A@db1,db2:27018/x?replicaSet=rs0",
        "mongodb://db/?appname=a@b",
    };
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kiln_config_init(&cfg);
        strcpy(cfg.mongodb_url, bad[i][0]);
        if (kiln_config_validate(&cfg, &err) != KILN_EINVAL ||
            strstr(err.message, bad[i][1]) == NULL ||
            strstr(err.message, "Zq9") != NULL)
            fail_msg("%s: got '%s'", bad[i][0], err.message);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        kiln_config_init(&cfg);
        strcpy(cfg.mongodb_url, good[i]);
        if (kiln_config_validate(&cfg, &err) != KILN_OK)
            fail_msg("%s: %s", good[i], err.message);
    }
}

/* A reserved character in the user, the password or the vhost is named,
 * with the escape to write instead; the password itself is never shown.
 * A '?' or '#' in a password used to read as "URL options". */
static void test_broker_url_messages(void **state)
{
    static const char *const cases[][2] = {
        {"amqp://app:Zq9@w@mq/", "a raw '@' in the password: write it as %40"},
        {"amqp://app:Zq9?w@mq/", "a raw '?' in the password: write it as %3F"},
        {"amqp://app:Zq9#w@mq/", "a raw '#' in the password: write it as %23"},
        {"amqps://app:Zq9/w@mq/", "a raw '/' in the password: write it as %2F"},
        {"amqp://app:Zq9:w@mq/", "a raw ':' in the password: write it as %3A"},
        {"amqp://app:Zq9]w@mq/", "a raw ']' in the password: write it as %5D"},
        {"amqp://a[p:Zq9@mq/", "a raw '[' in the user: write it as %5B"},
        {"amqp://a?p:Zq9@mq/", "a raw '?' in the user: write it as %3F"},
        {"amqp://a@p:Zq9@mq/", "a raw '@' in the user: write it as %40"},
        {"amqp://mq/?heartbeat=5", "URL options (?name=value) are not "
                                   "supported: use the KILN_* variables"},
        {"amqp://mq?heartbeat=5", "URL options (?name=value)"},
        {"amqp://mq/v#x", "a raw '#' in the vhost: write it as %23"},
        {"amqp://mq/v:x", "a raw ':' in the vhost: write it as %3A"},
        {"amqp://mq/a/b", "the vhost is one path segment (write '/' in it "
                          "as %2F)"},
        {"amqp://app:Zq9%C3%A4@mq/", "%C3: rabbitmq-c decodes no %-escape "
                                     "above %7F; write that character "
                                     "unencoded"},
        {"amqp://app:Zq9%@mq/", "malformed %-escape (a '%' itself is "
                                "written %25)"},
        {"amqp://app:Zq9%00@mq/", "%00 is not allowed"},
    };
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clear_env();
        setenv("KILN_BROKER_URL", cases[i][0], 1);
        kiln_config_init(&cfg);
        if (kiln_config_from_env(&cfg, &err) != KILN_EINVAL ||
            strstr(err.message, cases[i][1]) == NULL ||
            strstr(err.message, "Zq9") != NULL)
            fail_msg("%s: got '%s'", cases[i][0], err.message);
        /* kiln_config_validate says the same of a struct built by hand. */
        kiln_config_init(&cfg);
        strcpy(cfg.broker_url, cases[i][0]);
        assert_int_equal(kiln_config_validate(&cfg, &err), KILN_EINVAL);
        assert_non_null(strstr(err.message, cases[i][1]));
    }
}

static void test_accepted_forms(void **state)
{
    // clang-format off
    static const char *const good[][2] = {
        {"KILN_BROKER_URL", "amqp://h"}, {"KILN_BROKER_URL", "amqp://u@h/"},
        {"KILN_BROKER_URL", "amqp://u:p%40x@h:1/v"},
        {"KILN_BROKER_URL", "amqps://[::1]:5671/%2F"},
        {"KILN_BROKER_URL", "amqp://u:p%40ss@h:65535"},
        {"KILN_BROKER_URL", "amqp://u%3Ax:p%3A%2F%3F%23%5B%5D%25@h/v%3Fx"},
        {"KILN_BROKER_URL", "amqp://u:p\xc3\xa4ss@h/"},
        {"KILN_BROKER_URL", "amqp://h/"}, {"KILN_BROKER_URL", "amqp://:p@h"},
        {"KILN_MONGODB_URL", "mongodb://a:27017,b:27018/db?replicaSet=rs0"},
        {"KILN_MONGODB_URL", "mongodb://u:p@h/"},
        {"KILN_MONGODB_URL", "mongodb://%2Ftmp%2Fmongodb-27017.sock"},
        {"KILN_TLS_VERIFY", "TRUE"}, {"KILN_TLS_VERIFY", "Yes"},
        {"KILN_TLS_VERIFY", "on"}, {"KILN_TLS_VERIFY", "1"},
        {"KILN_TLS_VERIFY", "No"}, {"KILN_TLS_VERIFY", "0"},
        {"KILN_LOG_LEVEL", "ERROR"}, {"KILN_LOG_LEVEL", "err"},
        {"KILN_LOG_LEVEL", "warn"}, {"KILN_LOG_LEVEL", "Notice"},
        {"KILN_LOG_LEVEL", "debug"}, {"KILN_LOG_LEVEL", "off"},
        {"KILN_STORE", "null"}, {"KILN_STORE", "MongoDB"},
        {"KILN_UNREGISTERED", "requeue"}, {"KILN_EXCHANGE_TYPE", "FANOUT"},
        {"KILN_TLS_CA", ""}, {"KILN_QUEUE", "\xc3\xa9t\xc3\xa9"},
        {"KILN_MAX_PRIORITY", "007"},
    };
    // clang-format on
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        clear_env();
        setenv(good[i][0], good[i][1], 1);
        kiln_config_init(&cfg);
        if (kiln_config_from_env(&cfg, &err) != KILN_OK)
            fail_msg("%s=\"%s\": %s", good[i][0], good[i][1], err.message);
    }
    assert_int_equal(cfg.max_priority, 7);
    clear_env();
    setenv("KILN_LOG_LEVEL", "warning", 1);
    setenv("KILN_EXCHANGE_TYPE", "Headers", 1);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_OK);
    assert_int_equal(cfg.log_level, KILN_LOG_WARN);
    assert_string_equal(cfg.exchange_type, "headers");
}

/* The dead-letter and delay names follow a renamed queue or exchange. */
static void test_derived_names(void **state)
{
    kiln_config cfg;
    kiln_error err;
    char longq[300];

    (void)state;
    kiln_config_init(&cfg);
    setenv("KILN_QUEUE", "orders", 1);
    setenv("KILN_EXCHANGE", "shop", 1);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_OK);
    assert_string_equal(cfg.dead_letter_exchange, "orders.dlx");
    assert_string_equal(cfg.dead_letter_queue, "orders.dead");
    assert_string_equal(cfg.delay_exchange, "shop.delay");
    /* Reading the same environment again changes nothing. */
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_OK);
    assert_string_equal(cfg.dead_letter_exchange, "orders.dlx");

    /* An explicit variable, or a name the program set, is kept. */
    clear_env();
    kiln_config_init(&cfg);
    strcpy(cfg.dead_letter_exchange, "custom");
    setenv("PAOTA_QUEUE_NAME", "paota_tasks", 1);
    setenv("PAOTA_AMQP_FAILED_QUEUE", "paota_task_failed_queue", 1);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_OK);
    assert_string_equal(cfg.queue, "paota_tasks");
    assert_string_equal(cfg.dead_letter_exchange, "custom");
    assert_string_equal(cfg.dead_letter_queue, "paota_task_failed_queue");
    assert_string_equal(cfg.delay_exchange, "kiln_tasks.delay");

    /* A derived name that would not fit is an error naming it. */
    clear_env();
    memset(longq, 'q', 252);
    longq[252] = '\0';
    setenv("KILN_QUEUE", longq, 1);
    expect_rejected("KILN_DEAD_LETTER_EXCHANGE", longq, "KILN_QUEUE");
    setenv("KILN_DEAD_LETTER_EXCHANGE", "dlx", 1);
    expect_rejected("KILN_DEAD_LETTER_QUEUE", longq, "at most 255");
    setenv("KILN_DEAD_LETTER_QUEUE", "dead", 1);
    kiln_config_init(&cfg);
    assert_int_equal(kiln_config_from_env(&cfg, &err), KILN_OK);
}

/* Rules between fields, from the environment. */
static void test_cross_field(void **state)
{
    static const char *const cases[][4] = {
        /* env 1, env 2, the variable named, another word in the message */
        {"KILN_QUEUE_TYPE=quorum", "KILN_MAX_PRIORITY=5", "KILN_MAX_PRIORITY",
         "KILN_QUEUE_TYPE"},
        {"KILN_TLS_CA=/ca.pem", NULL, "KILN_TLS_CA", "amqps://"},
        {"KILN_TLS_KEY=/k.pem", AMQPS, "KILN_TLS_KEY", "KILN_TLS_CERT"},
        {"KILN_TLS_CERT=/c.pem", AMQPS, "KILN_TLS_CERT", "KILN_TLS_KEY"},
        {"KILN_RETRY_BASE_MS=5000", "KILN_RETRY_MAX_MS=4000",
         "KILN_RETRY_BASE_MS", "KILN_RETRY_MAX_MS"},
        {"KILN_DELAY_LEVELS=1", NULL, "KILN_RETRY_MAX_MS", "= 50 ms"},
        {"KILN_DEAD_LETTER_EXCHANGE=kiln_tasks", NULL,
         "KILN_DEAD_LETTER_EXCHANGE", "KILN_EXCHANGE"},
        {"KILN_DELAY_EXCHANGE=kiln_tasks", NULL, "KILN_DELAY_EXCHANGE",
         "KILN_EXCHANGE"},
        {"KILN_DELAY_EXCHANGE=kiln_tasks.dlx", NULL, "KILN_DELAY_EXCHANGE",
         "KILN_DEAD_LETTER_EXCHANGE"},
        {"PAOTA_AMQP_FAILED_QUEUE=kiln_tasks", NULL, "PAOTA_AMQP_FAILED_QUEUE",
         "KILN_QUEUE"},
        {"KILN_CONSUMER_TIMEOUT_MS=999", NULL, "KILN_CONSUMER_TIMEOUT_MS",
         "1000 to 2592000000"},
        /* Good values of several variables do not save a bad one. */
        {"KILN_QUEUE=orders", "KILN_PREFETCH=0", "KILN_PREFETCH", NULL},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clear_env();
        set_pair(cases[i][0]);
        if (cases[i][1] != NULL)
            set_pair(cases[i][1]);
        expect_rejected(cases[i][2], cases[i][0], cases[i][3]);
    }
}

static void expect_invalid(const kiln_config *cfg, const char *name)
{
    kiln_error err = {KILN_OK, ""};

    if (kiln_config_validate(cfg, &err) != KILN_EINVAL ||
        strstr(err.message, name) == NULL)
        fail_msg("validate: expected an error about %s, got '%s'", name,
                 err.message);
}

/* Breaks one field of a default config the way a program might. */
static void test_validate_fields(void **state)
{
    static const int bad_enums[] = {99, -1};
    kiln_config cfg;

    (void)state;
    for (size_t i = 0; i < NVARS; i++) {
        const struct var *v = &vars[i];
        char *p;

        kiln_config_init(&cfg);
        p = (char *)&cfg + v->off;
        switch (v->rule) {
        case R_UINT:
        case R_SIZE:
            for (int side = 0; side < 2; side++) {
                unsigned long long x = side ? v->max + 1 : v->min - 1;
                unsigned u = (unsigned)x;
                size_t z = (size_t)x;

                if (side == 0 && v->min == 0)
                    continue;
                kiln_config_init(&cfg);
                if (v->rule == R_UINT)
                    memcpy(p, &u, sizeof(u));
                else
                    memcpy(p, &z, sizeof(z));
                expect_invalid(&cfg, v->name);
            }
            break;
        case R_ENUM:
            for (size_t k = 0; k < 2; k++) {
                memcpy(p, &bad_enums[k], sizeof(int));
                expect_invalid(&cfg, v->name);
            }
            break;
        case R_BOOL:
            break;
        default:
            memset(p, 'a', v->size); /* no NUL */
            expect_invalid(&cfg, v->name);
            strcpy(p, v->rule == R_PATH ? "/a\n" : "");
            expect_invalid(&cfg, v->name);
            break;
        }
    }
}

static void test_validate_strings(void **state)
{
    static const struct {
        size_t off;
        const char *value;
        const char *name;
    } cases[] = {
        {offsetof(kiln_config, exchange_type), "Direct", "KILN_EXCHANGE_TYPE"},
        {offsetof(kiln_config, exchange_type), "x-delayed",
         "KILN_EXCHANGE_TYPE"},
        {offsetof(kiln_config, exchange), "amq.direct", "KILN_EXCHANGE"},
        {offsetof(kiln_config, queue), " orders", "KILN_QUEUE"},
        {offsetof(kiln_config, broker_url), "http://mq/", "KILN_BROKER_URL"},
        {offsetof(kiln_config, mongodb_url), "mongodb://", "KILN_MONGODB_URL"},
        {offsetof(kiln_config, mongodb_database), "a.b",
         "KILN_MONGODB_DATABASE"},
        {offsetof(kiln_config, tls_cert), "/c.pem", "KILN_TLS_CERT"},
        {offsetof(kiln_config, dead_letter_queue), "kiln_tasks",
         "KILN_DEAD_LETTER_QUEUE"},
    };
    kiln_config cfg;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kiln_config_init(&cfg);
        strcpy((char *)&cfg + cases[i].off, cases[i].value);
        expect_invalid(&cfg, cases[i].name);
    }
    kiln_config_init(&cfg);
    cfg.queue_type = KILN_QUEUE_QUORUM;
    cfg.max_priority = 3;
    expect_invalid(&cfg, "KILN_MAX_PRIORITY");
    kiln_config_init(&cfg);
    cfg.retry_base_ms = cfg.retry_max_ms + 1;
    expect_invalid(&cfg, "KILN_RETRY_BASE_MS");
    kiln_config_init(&cfg);
    strcpy(cfg.broker_url, "amqps://mq/");
    strcpy(cfg.tls_key, "/k.pem");
    expect_invalid(&cfg, "KILN_TLS_KEY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_no_env_keeps_defaults, setup),
        cmocka_unit_test_setup(test_good_values, setup),
        cmocka_unit_test_setup(test_aliases, setup),
        cmocka_unit_test_setup(test_alias_precedence, setup),
        cmocka_unit_test_setup(test_bad_values, setup),
        cmocka_unit_test_setup(test_store_kinds, setup),
        cmocka_unit_test_setup(test_message_text, setup),
        cmocka_unit_test_setup(test_password_masked, setup),
        cmocka_unit_test_setup(test_secrets_masked, setup),
        cmocka_unit_test_setup(test_broker_url_messages, setup),
        cmocka_unit_test_setup(test_mongodb_url_messages, setup),
        cmocka_unit_test_setup(test_accepted_forms, setup),
        cmocka_unit_test_setup(test_derived_names, setup),
        cmocka_unit_test_setup(test_cross_field, setup),
        cmocka_unit_test_setup(test_validate_fields, setup),
        cmocka_unit_test_setup(test_validate_strings, setup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
