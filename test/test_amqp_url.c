/*
 * The broker URL read twice: by the configuration's check (config/url.c)
 * and by rabbitmq-c's amqp_parse_url when a connection opens
 * (broker/amqp_conn.c). What the check accepts must parse to the parts
 * the user meant, %-decoded; what it refuses for a raw reserved
 * character rabbitmq-c cannot parse either, and the connection's error
 * then names the same problem. And the TLS files, read at connect. No
 * broker is contacted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "broker/amqp.h"

#include <stdio.h>
#include <string.h>

struct parts {
    const char *url, *user, *password, *host;
    int port;
    const char *vhost;
};

static void expect_valid(const char *url)
{
    kiln_config cfg;
    kiln_error err;

    kiln_config_init(&cfg);
    strcpy(cfg.broker_url, url);
    if (kiln_config_validate(&cfg, &err) != KILN_OK)
        fail_msg("%s refused: %s", url, err.message);
}

static void test_accepted_urls_parse_as_meant(void **state)
{
    static const struct parts cases[] = {
        /* No path and an empty one are both the default vhost "/". */
        {"amqp://mq", "guest", "guest", "mq", 5672, "/"},
        {"amqp://mq/", "guest", "guest", "mq", 5672, "/"},
        {"amqp://mq/%2F", "guest", "guest", "mq", 5672, "/"},
        {"amqp://mq/%2f", "guest", "guest", "mq", 5672, "/"},
        {"amqp://mq/orders", "guest", "guest", "mq", 5672, "orders"},
        {"amqps://mq:5673/%2Forders", "guest", "guest", "mq", 5673, "/orders"},
        {"amqp://app@mq/", "app", "guest", "mq", 5672, "/"},
        /* User and password are %-decoded. */
        {"amqp://app:p%40ss@mq/", "app", "p@ss", "mq", 5672, "/"},
        {"amqp://a%3Ab:%3A%2F%3F%23%5B%5D%25%40@mq/v%3Fx%23y", "a:b",
         ":/?#[]%@", "mq", 5672, "v?x#y"},
        {"amqp://app:p\xc3\xa4ss@[::1]:5672/", "app", "p\xc3\xa4ss", "::1",
         5672, "/"},
    };
    kiln__amqp_url u;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct parts *c = &cases[i];

        expect_valid(c->url);
        if (kiln__amqp_url_parts(c->url, &u, &err) != KILN_OK)
            fail_msg("%s: %s", c->url, err.message);
        if (strcmp(u.user, c->user) != 0 ||
            strcmp(u.password, c->password) != 0 ||
            strcmp(u.host, c->host) != 0 || u.port != c->port ||
            strcmp(u.vhost, c->vhost) != 0)
            fail_msg("%s: user '%s' password '%s' host '%s' port %d vhost "
                     "'%s'",
                     c->url, u.user, u.password, u.host, u.port, u.vhost);
        assert_int_equal(u.tls, strncmp(c->url, "amqps:", 6) == 0);
    }
}

/* rabbitmq-c refuses each of these; the check refuses them first, and a
 * connection given one anyway (a config never validated) says why in the
 * same words. */
static void test_refused_urls_name_the_problem(void **state)
{
    static const char *const cases[][2] = {
        {"amqp://app:Zq9@w@mq/", "a raw '@' in the password: write it as %40"},
        {"amqp://app:Zq9?w@mq/", "a raw '?' in the password: write it as %3F"},
        {"amqp://app:Zq9#w@mq/", "a raw '#' in the password: write it as %23"},
        {"amqp://app:Zq9/w@mq/", "a raw '/' in the password: write it as %2F"},
        {"amqp://app:Zq9:w@mq/", "a raw ':' in the password: write it as %3A"},
        {"amqp://a[p:Zq9@mq/", "a raw '[' in the user: write it as %5B"},
        {"amqp://mq/?heartbeat=5", "URL options (?name=value)"},
        {"amqp://mq/v#x", "a raw '#' in the vhost: write it as %23"},
        {"amqp://mq/v:x", "a raw ':' in the vhost: write it as %3A"},
        {"amqp://mq/a/b", "the vhost is one path segment"},
        {"amqp://app:Zq9%C3%A4@mq/", "%C3: rabbitmq-c decodes no %-escape"},
        {"amqp://app:Zq9%4@mq/", "malformed %-escape"},
    };
    kiln__amqp_url u;
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kiln_config_init(&cfg);
        strcpy(cfg.broker_url, cases[i][0]);
        assert_int_equal(kiln_config_validate(&cfg, &err), KILN_EINVAL);
        if (kiln__amqp_url_parts(cases[i][0], &u, &err) != KILN_EINVAL ||
            strstr(err.message, cases[i][1]) == NULL ||
            strstr(err.message, "Zq9") != NULL)
            fail_msg("%s: got '%s'", cases[i][0], err.message);
    }
}

/* TLS files are read when a connection opens, not when the configuration
 * is read: a configuration naming a missing file is valid (it may be
 * checked on a machine without the files), and each connect reads the
 * files again (a renewed certificate needs no restart). A file that
 * cannot be loaded fails the connect, before any socket is opened, with
 * the variable named. */
static void test_tls_files_read_at_connect(void **state)
{
    static const char *const cases[][3] = {
        {"/nonexistent/ca.pem", "", "KILN_TLS_CA"},
        {"", "/nonexistent/client.pem", "KILN_TLS_CERT"},
    };
    kiln__broker *b;
    kiln_config cfg;
    kiln_error err;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kiln_config_init(&cfg);
        /* Port 1: nothing listens there, and nothing is tried. */
        strcpy(cfg.broker_url, "amqps://127.0.0.1:1/");
        strcpy(cfg.tls_ca, cases[i][0]);
        strcpy(cfg.tls_cert, cases[i][1]);
        strcpy(cfg.tls_key, cases[i][1][0] != '\0' ? "/nonexistent/k.pem" : "");
        cfg.tls_verify = cases[i][0][0] != '\0';
        assert_int_equal(kiln_config_validate(&cfg, &err), KILN_OK);
        b = kiln__amqp_broker_new(&cfg, &err);
        assert_non_null(b);
        assert_int_equal(kiln__broker_connect(b, &err), KILN_EBROKER);
        if (strstr(err.message, cases[i][2]) == NULL ||
            strstr(err.message, "cannot load") == NULL)
            fail_msg("%s: got '%s'", cases[i][2], err.message);
        kiln__broker_destroy(b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted_urls_parse_as_meant),
        cmocka_unit_test(test_refused_urls_name_the_problem),
        cmocka_unit_test(test_tls_files_read_at_connect),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
