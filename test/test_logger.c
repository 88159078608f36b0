/* Tests of logger/: levels, line formats, escaping, password masking,
 * long lines, allocation failure, the default sink and thread safety. */
#include "logger/logger.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINES 64

/* Keeps copies of the lines it receives. */
struct capture {
    pthread_mutex_t mu;
    char *lines[MAX_LINES];
    kiln_log_level levels[MAX_LINES];
    void *users[MAX_LINES];
    size_t n;
};

static struct capture cap = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void capture_sink(kiln_log_level level, const char *line, void *user)
{
    struct capture *c = user;

    pthread_mutex_lock(&c->mu);
    if (c->n < MAX_LINES) {
        c->lines[c->n] = strdup(line);
        c->levels[c->n] = level;
        c->users[c->n] = user;
        c->n++;
    }
    pthread_mutex_unlock(&c->mu);
}

static void capture_clear(void)
{
    pthread_mutex_lock(&cap.mu);
    for (size_t i = 0; i < cap.n; i++)
        free(cap.lines[i]);
    cap.n = 0;
    pthread_mutex_unlock(&cap.mu);
}

/* The last line captured; fails the test when there is none. */
static const char *last_line(void)
{
    assert_true(cap.n > 0);
    return cap.lines[cap.n - 1];
}

static int setup(void **state)
{
    (void)state;
    capture_clear();
    kiln_log_set_level(KILN_LOG_INFO);
    kiln_log_set_format(KILN_LOG_TEXT);
    kiln_log_set_sink(capture_sink, &cap);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kiln__alloc_fail_after(-1);
    kiln_log_set_sink(NULL, NULL);
    kiln_log_set_level(KILN_LOG_INFO);
    kiln_log_set_format(KILN_LOG_TEXT);
    capture_clear();
    return 0;
}

/* Checks that `t` starts with a "2026-11-23T05:17:00.123Z" time within a
 * minute of now. */
static void check_time(const char *t)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    struct tm tm = {0};

    for (size_t i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd')
            assert_in_range(t[i], '0', '9');
        else
            assert_int_equal(t[i], shape[i]);
    }
    assert_int_equal(sscanf(t, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon,
                            &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec),
                     6);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    assert_true(llabs((long long)(timegm(&tm) - time(NULL))) < 60);
}

/* Checks the "<time> LEVEL [module] " prefix of a text line and returns the
 * rest. */
static const char *text_rest(const char *line, const char *level,
                             const char *module)
{
    char prefix[128];
    size_t n;

    check_time(line);
    n = (size_t)snprintf(prefix, sizeof(prefix), " %s [%s] ", level, module);
    assert_int_equal(strncmp(line + 24, prefix, n), 0);
    return line + 24 + n;
}

static cJSON *json_line(const char *line)
{
    cJSON *obj = cJSON_Parse(line);

    assert_non_null(obj);
    assert_true(cJSON_IsObject(obj));
    return obj;
}

static const char *json_get(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void test_level_filtering(void **state)
{
    (void)state;
    assert_int_equal(kiln_log_get_level(), KILN_LOG_INFO);
    kiln_log_set_level(KILN_LOG_WARN);
    assert_int_equal(kiln_log_get_level(), KILN_LOG_WARN);
    for (int l = KILN_LOG_ERR; l <= KILN_LOG_DEBUG; l++)
        kiln_log((kiln_log_level)l, "t", "level %d", l);
    assert_int_equal(cap.n, 2);
    assert_int_equal(cap.levels[0], KILN_LOG_ERR);
    assert_int_equal(cap.levels[1], KILN_LOG_WARN);
    assert_ptr_equal(cap.users[0], &cap);
    assert_string_equal(text_rest(cap.lines[0], "ERROR", "t"), "level 3");
    assert_string_equal(text_rest(cap.lines[1], "WARN", "t"), "level 4");

    assert_true(kiln__log_enabled(KILN_LOG_WARN));
    assert_false(kiln__log_enabled(KILN_LOG_NOTICE));
    assert_false(kiln__log_enabled(KILN_LOG_OFF));
    kiln_log_set_level(KILN_LOG_OFF);
    assert_false(kiln__log_enabled(KILN_LOG_ERR));
    kiln_log(KILN_LOG_ERR, "t", "dropped");
    assert_int_equal(cap.n, 2);

    /* Out-of-range levels are clamped. */
    kiln_log_set_level((kiln_log_level)99);
    assert_int_equal(kiln_log_get_level(), KILN_LOG_DEBUG);
    kiln_log_set_level((kiln_log_level)-4);
    assert_int_equal(kiln_log_get_level(), KILN_LOG_OFF);
}

static atomic_int evaluations;

static int counted(int v)
{
    atomic_fetch_add(&evaluations, 1);
    return v;
}

/* Three independent proofs that a disabled level formats nothing: %n is
 * not written, a guarded argument is not evaluated, and a message too long
 * for the stack buffer does not allocate. */
static void test_disabled_level_formats_nothing(void **state)
{
    char big[3000];
    int pos = -1;

    (void)state;
    kiln_log(KILN_LOG_DEBUG, "t", "abc%n", &pos);
    assert_int_equal(pos, -1);
    kiln__log(KILN_LOG_INFO, "t", "abc%n", &pos);
    assert_int_equal(pos, 3);

    atomic_store(&evaluations, 0);
    if (kiln__log_enabled(KILN_LOG_DEBUG))
        kiln__log(KILN_LOG_DEBUG, "t", "%d", counted(1));
    assert_int_equal(atomic_load(&evaluations), 0);
    if (kiln__log_enabled(KILN_LOG_INFO))
        kiln__log(KILN_LOG_INFO, "t", "%d", counted(1));
    assert_int_equal(atomic_load(&evaluations), 1);

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    capture_clear();
    kiln__alloc_fail_after(0);
    kiln__log(KILN_LOG_DEBUG, "t", "%s", big);
    assert_false(kiln__alloc_failed());
    assert_int_equal(cap.n, 0);
    kiln__log(KILN_LOG_INFO, "t", "%s", big); /* now it must allocate */
    assert_true(kiln__alloc_failed());
    assert_int_equal(cap.n, 1);
}

static void test_text_line(void **state)
{
    void (*log_untyped)(kiln_log_level, const char *, const char *, ...) =
        kiln_log;

    (void)state;
    kiln_log(KILN_LOG_INFO, "broker", "connected to %s:%d", "h", 5672);
    assert_string_equal(text_rest(last_line(), "INFO", "broker"),
                        "connected to h:5672");
    kiln_log_set_level(KILN_LOG_DEBUG);
    kiln__log(KILN_LOG_NOTICE, "pool", "n");
    assert_string_equal(text_rest(last_line(), "NOTICE", "pool"), "n");
    kiln__log(KILN_LOG_DEBUG, "pool", "two lines\n\n");
    assert_string_equal(text_rest(last_line(), "DEBUG", "pool"), "two lines");
    /* The pointer drops the format attribute, so NULL can be passed. */
    log_untyped(KILN_LOG_INFO, NULL, NULL);
    assert_string_equal(text_rest(last_line(), "INFO", "(null)"), "(null)");
}

static void test_text_task_fields(void **state)
{
    (void)state;
    kiln__log_task(KILN_LOG_INFO, "pool", "task_1", "add", "done in %dms", 7);
    assert_string_equal(text_rest(last_line(), "INFO", "pool"),
                        "done in 7ms task_id=task_1 task=add");
    kiln__log_task(KILN_LOG_INFO, "pool", NULL, "add", "m");
    assert_string_equal(text_rest(last_line(), "INFO", "pool"), "m task=add");
    kiln__log_task(KILN_LOG_INFO, "pool", "task_2", NULL, "m");
    assert_string_equal(text_rest(last_line(), "INFO", "pool"),
                        "m task_id=task_2");
    kiln__log_task(KILN_LOG_INFO, "pool", NULL, NULL, "m");
    assert_string_equal(text_rest(last_line(), "INFO", "pool"), "m");
    /* Values with spaces, quotes or '=' are quoted. */
    kiln__log_task(KILN_LOG_INFO, "pool", "", "a \"b\"=c", "m");
    assert_string_equal(text_rest(last_line(), "INFO", "pool"),
                        "m task_id=\"\" task=\"a \\\"b\\\"=c\"");
}

static void test_text_escaping(void **state)
{
    (void)state;
    kiln_log(KILN_LOG_INFO, "t",
             "a\nb\rc\td\x01"
             "e\x7f"
             "f\\g \xc3\xa9 \xff!");
    assert_string_equal(text_rest(last_line(), "INFO", "t"),
                        "a\\nb\\rc\\td\\x01e\\x7ff\\g \xc3\xa9 \xef\xbf\xbd!");
    assert_null(strchr(last_line(), '\n'));
}

static void test_json_line(void **state)
{
    static const char *const names[] = {"error", "warn", "notice", "info",
                                        "debug"};
    cJSON *obj;

    (void)state;
    kiln_log_set_format(KILN_LOG_JSON);
    kiln_log_set_level(KILN_LOG_DEBUG);
    for (int l = KILN_LOG_ERR; l <= KILN_LOG_DEBUG; l++) {
        kiln_log((kiln_log_level)l, "broker", "m%d", l);
        obj = json_line(last_line());
        assert_string_equal(json_get(obj, "level"), names[l - KILN_LOG_ERR]);
        assert_string_equal(json_get(obj, "module"), "broker");
        assert_non_null(json_get(obj, "msg"));
        assert_int_equal(strlen(json_get(obj, "time")), 24);
        assert_null(cJSON_GetObjectItem(obj, "task_id"));
        assert_null(cJSON_GetObjectItem(obj, "task"));
        assert_int_equal(cJSON_GetArraySize(obj), 4);
        cJSON_Delete(obj);
    }
    assert_int_equal(strncmp(last_line(), "{\"time\":\"", 9), 0);
    obj = json_line(last_line());
    check_time(json_get(obj, "time"));
    cJSON_Delete(obj);

    kiln__log_task(KILN_LOG_INFO, "pool", "task_1", "add", "ok");
    obj = json_line(last_line());
    assert_string_equal(json_get(obj, "msg"), "ok");
    assert_string_equal(json_get(obj, "task_id"), "task_1");
    assert_string_equal(json_get(obj, "task"), "add");
    assert_int_equal(cJSON_GetArraySize(obj), 6);
    cJSON_Delete(obj);
    kiln__log_task(KILN_LOG_INFO, "pool", NULL, "add", "ok");
    obj = json_line(last_line());
    assert_null(cJSON_GetObjectItem(obj, "task_id"));
    assert_string_equal(json_get(obj, "task"), "add");
    cJSON_Delete(obj);

    /* An unknown format is ignored. */
    kiln_log_set_format((kiln_log_format)7);
    kiln_log(KILN_LOG_INFO, "m", "still json");
    assert_int_equal(last_line()[0], '{');
}

#define R "\xef\xbf\xbd" /* U+FFFD */

/* Every line must be valid UTF-8 without control bytes. */
static void check_clean(const char *line)
{
    assert_true(kiln__utf8_valid(line, strlen(line)));
    for (const char *p = line; *p != '\0'; p++)
        assert_false((unsigned char)*p < 0x20 || *p == 0x7F);
}

static void test_json_escaping(void **state)
{
    cJSON *obj;

    (void)state;
    kiln_log_set_format(KILN_LOG_JSON);
    kiln_log(KILN_LOG_INFO, "m\"x",
             "q\"b\\s/n\nr\rt\tb\bf\f\x01\x1f\x7f \xc3\xa9\xe2\x82\xac"
             "\xf0\x9f\x98\x80 bad:\xff \xc3 \xc0\xaf \xed\xa0\x80 "
             "\xf4\x90\x80\x80 end");
    check_clean(last_line());
    obj = json_line(last_line());
    assert_string_equal(json_get(obj, "module"), "m\"x");
    assert_string_equal(json_get(obj, "msg"),
                        "q\"b\\s/n\nr\rt\tb\bf\f\x01\x1f\x7f \xc3\xa9\xe2\x82"
                        "\xac\xf0\x9f\x98\x80 bad:" R " " R " " R R " " R R R
                        " " R R R R " end");
    cJSON_Delete(obj);

    /* An embedded NUL (from %c) is escaped, not a line end. */
    kiln_log(KILN_LOG_INFO, "m", "a%cb", 0);
    assert_non_null(strstr(last_line(), "\"msg\":\"a\\u0000b\""));
    kiln__log_task(KILN_LOG_INFO, "m", "id\n\xff", "n\"", "x");
    check_clean(last_line());
    obj = json_line(last_line());
    assert_string_equal(json_get(obj, "task_id"), "id\n" R);
    assert_string_equal(json_get(obj, "task"), "n\"");
    cJSON_Delete(obj);
}

struct redact_case {
    const char *in;
    const char *out;
};

static const struct redact_case redact_cases[] = {
    {"amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"},
    {"amqps://u:s3cr3t@rabbit.example.com/vhost",
     "amqps://u:***@rabbit.example.com/vhost"},
    {"amqp://u:pw@host", "amqp://u:***@host"},
    {"mongodb://user:pass@h1,h2/db", "mongodb://user:***@h1,h2/db"},
    {"mongodb://user:pass@h1:27017,h2:27018/db?replicaSet=rs0",
     "mongodb://user:***@h1:27017,h2:27018/db?replicaSet=rs0"},
    {"amqp://user:p@ss@host/", "amqp://user:***@host/"},
    {"amqp://user:p#ss?x:y@host/", "amqp://user:***@host/"},
    {"amqp://user:pa%40ss@host", "amqp://user:***@host"},
    {"amqp://:secret@host", "amqp://:***@host"},
    {"amqp://u:p@[::1]:5672/", "amqp://u:***@[::1]:5672/"},
    {"amqp://host:5672/", "amqp://host:5672/"},
    {"amqp://guest@host/", "amqp://guest@host/"},
    {"amqp://user:@host", "amqp://user:@host"},
    {"amqp://host", "amqp://host"},
    {"connect amqp://a:b@h1/ failed; retry amqp://c:d@h2/ now",
     "connect amqp://a:***@h1/ failed; retry amqp://c:***@h2/ now"},
    {"urls amqp://a:b@h1,mongodb://c:d@h2/db",
     "urls amqp://a:***@h1,mongodb://c:***@h2/db"},
    /* Quotes and angle brackets may be part of a password, so only
     * whitespace ends a URL in text: a later '@' before the next space is
     * taken as the password's end (hiding too much is the safe mistake). */
    {"'amqp://u:p@h' and <amqp://u:q@h> and \"amqp://u:r@h\"x@y",
     "'amqp://u:***@h' and <amqp://u:***@h> and \"amqp://u:***@y"},
    {"a://b://u:p@h", "a://b://u:***@h"},
    {"mail user@example.com at 10:30", "mail user@example.com at 10:30"},
    {"user:pass@host without a scheme", "user:pass@host without a scheme"},
    {"http://example.com/a:b@c", "http://example.com/a:b@c"},
    {"see http://example.com and x:y@z", "see http://example.com and x:y@z"},
    {"ratio 3:4 @ noon ://", "ratio 3:4 @ noon ://"},
    {"://:@", "://:@"},
    {"", ""},
};

/* Each case through kiln_log_redact_url, a text line and a JSON line. */
static void check_redacted(const struct redact_case *cases, size_t n)
{
    char out[256];
    cJSON *obj;

    for (size_t i = 0; i < n; i++) {
        const struct redact_case *c = &cases[i];

        assert_ptr_equal(kiln_log_redact_url(c->in, out, sizeof(out)), out);
        assert_string_equal(out, c->out);
        kiln_log_set_format(KILN_LOG_TEXT);
        kiln_log(KILN_LOG_INFO, "t", "%s", c->in);
        assert_string_equal(text_rest(last_line(), "INFO", "t"), c->out);
        kiln_log_set_format(KILN_LOG_JSON);
        kiln_log(KILN_LOG_INFO, "t", "%s", c->in);
        obj = json_line(last_line());
        assert_string_equal(json_get(obj, "msg"), c->out);
        cJSON_Delete(obj);
    }
    kiln_log_set_format(KILN_LOG_TEXT);
}

/* Passwords written as users write them, not as RFC 3986 wants them:
 * quotes, angle brackets, backticks, raw '@', '?', '#' and '/'. */
static const struct redact_case special_cases[] = {
    {"mongodb://u:p<a>s\"s`w@h:1/", "mongodb://u:***@h:1/"},
    {"amqp://u:<pw>@h/", "amqp://u:***@h/"},
    {"amqp://u:\"pw\"@h/v", "amqp://u:***@h/v"},
    {"amqp://u:`pw`@h", "amqp://u:***@h"},
    {"amqp://u:p>w@h", "amqp://u:***@h"},
    {"mongodb://u:p@s?s#w@h1,h2/db", "mongodb://u:***@h1,h2/db"},
    {"amqp://u:p/w@h/", "amqp://u:***@h/"},
    {"amqp://u:s3/cr@et@mq/", "amqp://u:***@mq/"},
    {"mongodb://john@example.com:pw@h/", "mongodb://john@example.com:***@h/"},
    {"store \"mongodb://u:p\"w@h/db\" failed",
     "store \"mongodb://u:***@h/db\" failed"},
    {"KILN_MONGODB_URL=\"mongodb://u:p<w>@h:0/\": bad port",
     "KILN_MONGODB_URL=\"mongodb://u:***@h:0/\": bad port"},
    {"<mongodb://u:p`w@h/> and <amqp://v:x>y@g/>",
     "<mongodb://u:***@h/> and <amqp://v:***@g/>"},
};

static void test_password_special_characters(void **state)
{
    (void)state;
    check_redacted(special_cases, KILN__ARRAY_LEN(special_cases));
}

/* MongoDB URI options that carry a secret, whatever the case of their
 * names; other options, and names that only look alike, are left alone. */
static const struct redact_case option_cases[] = {
    {"mongodb://h/?tlsCertificateKeyFilePassword=k3y&tls=true",
     "mongodb://h/?tlsCertificateKeyFilePassword=***&tls=true"},
    {"mongodb://h/?authMechanism=MONGODB-AWS"
     "&authMechanismProperties=AWS_SESSION_TOKEN:t0k",
     "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=***"},
    {"mongodb://h/?TLSCERTIFICATEKEYFILEPASSWORD=k3y",
     "mongodb://h/?TLSCERTIFICATEKEYFILEPASSWORD=***"},
    {"mongodb://h/?sslclientcertificatekeypassword=k3y&ssl=true",
     "mongodb://h/?sslclientcertificatekeypassword=***&ssl=true"},
    {"mongodb://h/?proxyHost=p&proxyPassword=k3y&proxyPort=1080",
     "mongodb://h/?proxyHost=p&proxyPassword=***&proxyPort=1080"},
    {"mongodb://u:pw@h/?tlsCertificateKeyFilePassword=k&3y#x&tls=1",
     "mongodb://u:***@h/?tlsCertificateKeyFilePassword=***&tls=1"},
    /* An '@' in the query (after a '/' after the user part) belongs to
     * an option, not to the password. */
    {"mongodb://u:p@h/?tlsCertificateKeyFilePassword=a@b&w=1",
     "mongodb://u:***@h/?tlsCertificateKeyFilePassword=***&w=1"},
    {"mongodb://u:p@h/db?appname=a@b", "mongodb://u:***@h/db?appname=a@b"},
    /* Without that '/' a '?' may be the password's. */
    {"mongodb://u:p@s?s@h/db?appname=a@b", "mongodb://u:***@h/db?appname=a@b"},
    {"uri mongodb://h/?authMechanismProperties=A:B failed",
     "uri mongodb://h/?authMechanismProperties=*** failed"},
    /* Left alone. */
    {"mongodb://h1:27017,h2/db?replicaSet=rs0&tls=true",
     "mongodb://h1:27017,h2/db?replicaSet=rs0&tls=true"},
    {"mongodb://h/?tlsCertificateKeyFile=/etc/k.pem",
     "mongodb://h/?tlsCertificateKeyFile=/etc/k.pem"},
    {"mongodb://h/?tlsCertificateKeyFilePassword=&tls=true",
     "mongodb://h/?tlsCertificateKeyFilePassword=&tls=true"},
    {"x_proxyPassword=1 notproxyPassword=2",
     "x_proxyPassword=1 notproxyPassword=2"},
    {"http://host:8080/path?q=1&r=a:b", "http://host:8080/path?q=1&r=a:b"},
};

static void test_secret_options(void **state)
{
    (void)state;
    check_redacted(option_cases, KILN__ARRAY_LEN(option_cases));
}

/* One configured URL (KILN__SECRET_WHOLE): a space or a control byte is
 * part of its password; and a text cut short by its producer
 * (KILN__SECRET_CUT) is masked to its end. */
static void test_redact_whole_and_cut(void **state)
{
    static const struct redact_case whole[] = {
        {"mongodb://u:p ss@h:1/", "mongodb://u:***@h:1/"},
        {"amqp://u:a\nb@h/", "amqp://u:***@h/"},
        {"install: done\namqp://guest:guest@127.0.0.1:17682/",
         "install: done\namqp://guest:***@127.0.0.1:17682/"},
        {"mongodb://h/?proxyPassword=a b&proxyPort=1",
         "mongodb://h/?proxyPassword=***&proxyPort=1"},
        {"a://b://u:p@h", "a://b:***@h"},
        {"mongodb://h1:27017,h2/db?w=1", "mongodb://h1:27017,h2/db?w=1"},
    };
    char out[128];
    size_t start, end;

    (void)state;
    for (size_t i = 0; i < KILN__ARRAY_LEN(whole); i++)
        assert_string_equal(
            kiln__redact(whole[i].in, out, sizeof(out), KILN__SECRET_WHOLE),
            whole[i].out);
    /* In text the space ends the URL: a value with one is masked whole
     * only by a caller that knows it is one URL. */
    assert_string_equal(
        kiln__redact("mongodb://u:p ss@h/", out, sizeof(out), 0),
        "mongodb://u:p ss@h/");
    assert_string_equal(
        kiln__redact("see amqp://u:s3cr", out, sizeof(out), KILN__SECRET_CUT),
        "see amqp://u:***");
    assert_string_equal(kiln__redact("x mongodb://h/?proxyPassword=s3", out,
                                     sizeof(out), KILN__SECRET_CUT),
                        "x mongodb://h/?proxyPassword=***");
    assert_true(kiln__secret_next("amqp://u:pw@h amqp://v:qq@g", 27, 12, 0,
                                  &start, &end));
    assert_int_equal(start, 23);
    assert_int_equal(end, 25);
    assert_false(kiln__secret_next("amqp://u:pw@h", 13, 11, 0, &start, &end));
}

static void test_password_masking(void **state)
{
    cJSON *obj;

    (void)state;
    check_redacted(redact_cases, KILN__ARRAY_LEN(redact_cases));

    /* Task fields are masked too. */
    kiln_log_set_format(KILN_LOG_JSON);
    kiln__log_task(KILN_LOG_INFO, "t", "amqp://u:pw@h", "mongodb://a:pw@h/d",
                   "m");
    obj = json_line(last_line());
    assert_string_equal(json_get(obj, "task_id"), "amqp://u:***@h");
    assert_string_equal(json_get(obj, "task"), "mongodb://a:***@h/d");
    cJSON_Delete(obj);
    kiln_log_set_format(KILN_LOG_TEXT);
    kiln__log_task(KILN_LOG_INFO, "t", "amqp://u:pw@h", "x y://a:pw@h", "m");
    assert_string_equal(text_rest(last_line(), "INFO", "t"),
                        "m task_id=amqp://u:***@h task=\"x y://a:***@h\"");
}

static void test_redact_url_small_buffers(void **state)
{
    static const char url[] = "amqp://guest:s3cr3t@127.0.0.1:5672/";
    static const char want[] = "amqp://guest:***@127.0.0.1:5672/";
    char out[64];

    (void)state;
    for (size_t n = 1; n < sizeof(want) + 4; n++) {
        size_t len = n - 1 < strlen(want) ? n - 1 : strlen(want);

        memset(out, 'Z', sizeof(out));
        assert_ptr_equal(kiln_log_redact_url(url, out, n), out);
        assert_int_equal(strlen(out), len);
        assert_memory_equal(out, want, len);
        assert_int_equal(out[n], 'Z'); /* nothing written past n */
    }
    memset(out, 'Z', sizeof(out));
    assert_ptr_equal(kiln_log_redact_url(url, out, 0), out);
    assert_int_equal(out[0], 'Z');
    assert_null(kiln_log_redact_url(url, NULL, 10));
    assert_string_equal(kiln_log_redact_url(NULL, out, sizeof(out)), "(null)");
}

static size_t count_char(const char *s, char c)
{
    size_t n = 0;

    while ((s = strchr(s, c)) != NULL) {
        n++;
        s++;
    }
    return n;
}

static void test_long_messages(void **state)
{
    static char big[20001], msg[17000], zs[101];
    char want[64];
    const char *rest;

    (void)state;
    memset(big, 'a', sizeof(big) - 1);
    kiln_log(KILN_LOG_INFO, "t", "%.5000s", big);
    rest = text_rest(last_line(), "INFO", "t");
    assert_int_equal(strlen(rest), 5000);

    kiln_log(KILN_LOG_INFO, "t", "%s", big);
    rest = text_rest(last_line(), "INFO", "t");
    assert_int_equal(strspn(rest, "a"), 16384);
    assert_string_equal(rest + 16384, "...[truncated from 20000 bytes]");

    /* A cut inside a password masks the rest of the authority. */
    memset(msg, 'a', 16370);
    memset(zs, 'Z', sizeof(zs) - 1);
    (void)snprintf(msg + 16370, sizeof(msg) - 16370, " amqp://user:%s@host/",
                   zs);
    kiln_log(KILN_LOG_INFO, "t", "%s", msg);
    assert_int_equal(count_char(last_line(), 'Z'), 1); /* the time's */
    (void)snprintf(want, sizeof(want),
                   "amqp://user:***...[truncated from %zu bytes]", strlen(msg));
    assert_non_null(strstr(last_line(), want));

    /* Module, task id and task name are limited to 256 bytes. */
    big[1000] = '\0';
    kiln__log_task(KILN_LOG_INFO, "t", NULL, big, "m");
    rest = text_rest(last_line(), "INFO", "t");
    assert_int_equal(strncmp(rest, "m task=", 7), 0);
    assert_int_equal(strspn(rest + 7, "a"), 256);
    assert_string_equal(rest + 7 + 256, "...");
}

static void test_out_of_memory(void **state)
{
    char text[3001], ctl[1000];
    const char *msg;
    cJSON *obj;

    (void)state;
    /* The heap message buffer fails: the stack copy is used, marked. */
    memset(text, 'b', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    kiln__alloc_fail_after(0);
    kiln_log(KILN_LOG_INFO, "t", "%s", text);
    assert_true(kiln__alloc_failed());
    msg = text_rest(last_line(), "INFO", "t");
    assert_int_equal(strspn(msg, "b"), 1023);
    assert_string_equal(msg + 1023, "...[truncated from 3000 bytes]");

    /* The line cannot grow: it is rebuilt, shorter, and stays valid JSON
     * with the password still masked. */
    kiln_log_set_format(KILN_LOG_JSON);
    memset(ctl, 1, sizeof(ctl) - 1);
    ctl[sizeof(ctl) - 1] = '\0';
    memcpy(ctl, "amqp://u:", 9);
    memset(ctl + 9, 'Z', 200);
    memcpy(ctl + 209, "@h ", 3);
    kiln__alloc_fail_after(0);
    kiln__log_task(KILN_LOG_ERR, "t", "task_1", "n", "%s", ctl);
    assert_true(kiln__alloc_failed());
    assert_int_equal(count_char(last_line(), 'Z'), 1); /* the time's */
    obj = json_line(last_line());
    assert_string_equal(json_get(obj, "msg"), "amqp://u:***...");
    assert_string_equal(json_get(obj, "task_id"), "task_1");
    assert_string_equal(json_get(obj, "level"), "error");
    cJSON_Delete(obj);

    memset(ctl, 1, sizeof(ctl) - 1);
    kiln__alloc_fail_after(0);
    kiln_log(KILN_LOG_INFO, "t", "%s", ctl);
    obj = json_line(last_line());
    msg = json_get(obj, "msg");
    assert_int_equal(strlen(msg), 128 + 3);
    assert_string_equal(msg + 128, "...");
    cJSON_Delete(obj);
    kiln__alloc_fail_after(-1);
}

/* The default sink writes each line and a '\n' to stderr (fd 2 is pointed
 * at a temporary file for the test). */
static void test_default_sink(void **state)
{
    char got[512] = {0};
    FILE *tmp = tmpfile();
    char *nl;
    int saved;
    size_t n;

    (void)state;
    assert_non_null(tmp);
    (void)fflush(stderr);
    saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), 2) >= 0);
    kiln_log_set_sink(NULL, &cap); /* user is ignored with NULL */
    kiln_log(KILN_LOG_INFO, "t", "one");
    kiln__log_task(KILN_LOG_WARN, "t", "task_1", NULL, "two");
    (void)fflush(stderr);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    rewind(tmp);
    n = fread(got, 1, sizeof(got) - 1, tmp);
    (void)fclose(tmp);
    assert_int_equal(cap.n, 0);
    /* Two lines, each ended by one '\n'. */
    assert_true(n > 0 && got[n - 1] == '\n');
    got[n - 1] = '\0';
    nl = strchr(got, '\n');
    assert_non_null(nl);
    *nl = '\0';
    assert_null(strchr(nl + 1, '\n'));
    assert_string_equal(text_rest(got, "INFO", "t"), "one");
    assert_string_equal(text_rest(nl + 1, "WARN", "t"), "two task_id=task_1");
}

static struct capture cap2 = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Replaces the sink and logs from inside a sink: no logger lock is held
 * while a sink runs. */
static void swapping_sink(kiln_log_level level, const char *line, void *user)
{
    capture_sink(level, line, user);
    kiln_log_set_sink(capture_sink, &cap2);
    kiln_log(KILN_LOG_ERR, "sink", "from the sink");
}

static void test_sink_replaced_from_sink(void **state)
{
    (void)state;
    kiln_log_set_sink(swapping_sink, &cap);
    kiln_log(KILN_LOG_INFO, "t", "first");
    assert_int_equal(cap.n, 1);
    assert_string_equal(text_rest(cap.lines[0], "INFO", "t"), "first");
    assert_int_equal(cap2.n, 1);
    assert_int_equal(cap2.levels[0], KILN_LOG_ERR);
    assert_ptr_equal(cap2.users[0], &cap2);
    assert_string_equal(text_rest(cap2.lines[0], "ERROR", "sink"),
                        "from the sink");
    free(cap2.lines[0]);
    cap2.n = 0;
}

/* ---- threads ------------------------------------------------------------
 * 8 threads log without pause, alternating ERR and INFO, while another
 * thread switches the sink between two counting sinks, the format between
 * text and JSON and the level between INFO and WARN, ROUNDS times. After
 * each switch it waits until a line in the new format has reached the new
 * sink (a real wait: the workers keep logging), so every switch is seen
 * to take effect while lines are being written. The workers stop after
 * the last round, or after WORKER_LINES lines each; then the rounds fall
 * short and the test fails. ERR lines are always on, so each worker's
 * count is exact; INFO lines may be dropped. Workers and sinks record, the
 * test thread asserts.
 */
#define WORKERS      8
#define ROUNDS       24
#define WORKER_LINES 200000

struct counter {
    char tag; /* 'A' or 'B': which sink function owns it */
    atomic_int lines;
    atomic_int by_format[2]; /* text, JSON */
};

static struct counter count_a = {.tag = 'A'}, count_b = {.tag = 'B'};
static atomic_int err_lines[WORKERS], logged_err[WORKERS], logged_info;
static atomic_int info_lines, bad_lines, rounds;
static atomic_int running; /* workers not yet done */
static atomic_bool stop_workers;
/* cJSON_Parse sets cJSON's one global error position, so the sinks,
 * called from every worker at once, parse one at a time. */
static pthread_mutex_t parse_mu = PTHREAD_MUTEX_INITIALIZER;

/* Parses "w=<worker> i=<line>" out of a text or JSON line. */
static void count_line(kiln_log_level level, const char *line)
{
    int w = -1, i = -1;
    const char *msg = NULL;
    cJSON *obj = NULL;

    if (line[0] == '{') {
        pthread_mutex_lock(&parse_mu);
        obj = cJSON_Parse(line);
        pthread_mutex_unlock(&parse_mu);
        msg = json_get(obj, "msg");
    } else if ((msg = strstr(line, "] ")) != NULL) {
        msg += 2;
    }
    if (msg == NULL || sscanf(msg, "w=%d i=%d", &w, &i) != 2 || w < 0 ||
        w >= WORKERS || i < 0 || i >= WORKER_LINES ||
        (i % 2 == 0) != (level == KILN_LOG_ERR))
        atomic_fetch_add(&bad_lines, 1);
    else if (level == KILN_LOG_ERR)
        atomic_fetch_add(&err_lines[w], 1);
    else
        atomic_fetch_add(&info_lines, 1);
    cJSON_Delete(obj);
}

static void count(struct counter *c, char tag, kiln_log_level level,
                  const char *line)
{
    if (c->tag != tag)
        atomic_fetch_add(&bad_lines, 1);
    count_line(level, line);
    atomic_fetch_add(&c->by_format[line[0] == '{'], 1);
    atomic_fetch_add(&c->lines, 1);
}

static void sink_a(kiln_log_level level, const char *line, void *user)
{
    count(user, 'A', level, line);
}

static void sink_b(kiln_log_level level, const char *line, void *user)
{
    count(user, 'B', level, line);
}

static void *worker(void *arg)
{
    int w = (int)(intptr_t)arg;

    for (int i = 0; i < WORKER_LINES && !atomic_load(&stop_workers); i++) {
        kiln__log(i % 2 == 0 ? KILN_LOG_ERR : KILN_LOG_INFO, "w", "w=%d i=%d",
                  w, i);
        atomic_fetch_add(i % 2 == 0 ? &logged_err[w] : &logged_info, 1);
    }
    atomic_fetch_sub(&running, 1);
    return NULL;
}

static void *switcher(void *arg)
{
    (void)arg;
    for (int k = 0; k < ROUNDS; k++) {
        struct counter *c = k % 2 ? &count_a : &count_b;
        int json = k % 3 == 0, before;

        kiln_log_set_level(k % 2 ? KILN_LOG_WARN : KILN_LOG_INFO);
        kiln_log_set_format(json ? KILN_LOG_JSON : KILN_LOG_TEXT);
        before = atomic_load(&c->by_format[json]);
        kiln_log_set_sink(k % 2 ? sink_a : sink_b, c);
        while (atomic_load(&c->by_format[json]) == before &&
               atomic_load(&running) > 0)
            sched_yield();
        if (atomic_load(&c->by_format[json]) == before)
            return NULL; /* the workers ran out of lines first */
        atomic_fetch_add(&rounds, 1);
    }
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t workers[WORKERS], sw;
    int err_total = 0;

    (void)state;
    kiln_log_set_sink(sink_a, &count_a);
    atomic_store(&running, WORKERS);
    for (int w = 0; w < WORKERS; w++)
        assert_int_equal(
            pthread_create(&workers[w], NULL, worker, (void *)(intptr_t)w), 0);
    assert_int_equal(pthread_create(&sw, NULL, switcher, NULL), 0);
    assert_int_equal(pthread_join(sw, NULL), 0);
    atomic_store(&stop_workers, true);
    for (int w = 0; w < WORKERS; w++)
        assert_int_equal(pthread_join(workers[w], NULL), 0);

    /* Every switch took effect while the workers were logging. */
    assert_int_equal(atomic_load(&rounds), ROUNDS);
    assert_int_equal(atomic_load(&bad_lines), 0);
    for (int w = 0; w < WORKERS; w++) {
        assert_int_equal(atomic_load(&err_lines[w]),
                         atomic_load(&logged_err[w]));
        err_total += atomic_load(&err_lines[w]);
    }
    assert_in_range(atomic_load(&info_lines), 0, atomic_load(&logged_info));
    assert_int_equal(atomic_load(&count_a.lines) + atomic_load(&count_b.lines),
                     err_total + atomic_load(&info_lines));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled_level_formats_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_task_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_masking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_special_characters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_secret_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redact_whole_and_cut, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redact_url_small_buffers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_long_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_sink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sink_replaced_from_sink, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
