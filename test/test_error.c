/* Error codes, their text, the kiln_error helpers and the version string.
 * Walks every code like rabbitmq-c's test_status_enum.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"

static void test_strerror_every_code(void **state)
{
    (void)state;
    for (int c = KILN_OK; c <= KILN_ERR_LAST; c++) {
        const char *s = kiln_strerror((kiln_err)c);

        assert_non_null(s);
        assert_true(s[0] != '\0');
        assert_string_not_equal(s, "unknown error");
        for (int d = KILN_OK; d < c; d++)
            assert_string_not_equal(s, kiln_strerror((kiln_err)d));
    }
}

static void test_strerror_unknown(void **state)
{
    static const int bad[] = {KILN_ERR_LAST + 1, KILN_ERR_LAST + 100, -1,
                              1000000, INT32_MIN};

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_string_equal(kiln_strerror((kiln_err)bad[i]), "unknown error");
}

/* The Makefile names the files it builds after its VERSION (libkiln.so.X.Y.Z,
 * the SONAME's major, kiln.pc's Version) and hands it to the tests; the
 * library reports the header's. The two must be the same release. */
#ifndef KILN_TEST_MAKE_VERSION
#error "the Makefile passes KILN_TEST_MAKE_VERSION (its VERSION)"
#endif

static void test_version_string(void **state)
{
    char header[32];

    (void)state;
    assert_string_equal(kiln_version_string(), KILN_TEST_MAKE_VERSION);
    (void)snprintf(header, sizeof(header), "%d.%d.%d", KILN_VERSION_MAJOR,
                   KILN_VERSION_MINOR, KILN_VERSION_PATCH);
    assert_string_equal(header, KILN_TEST_MAKE_VERSION);
}

static void test_fail_fills_error(void **state)
{
    kiln_error err;

    (void)state;
    memset(&err, 'x', sizeof(err));
    assert_int_equal(kiln__fail(&err, KILN_ERANGE, "arg %d: %s", 2, "big"),
                     KILN_ERANGE);
    assert_int_equal(err.code, KILN_ERANGE);
    assert_string_equal(err.message, "arg 2: big");
    /* A NULL error is allowed and the code still comes back. */
    assert_int_equal(kiln__fail(NULL, KILN_EINVAL, "ignored"), KILN_EINVAL);
}

static void test_fail_truncates(void **state)
{
    char long_text[1000];
    kiln_error err;

    (void)state;
    memset(long_text, 'a', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    (void)kiln__fail(&err, KILN_ETOOBIG, "%s", long_text);
    assert_int_equal(strlen(err.message), sizeof(err.message) - 1);
    assert_int_equal(err.code, KILN_ETOOBIG);
}

static void test_ok_and_prefix(void **state)
{
    kiln_error err;

    (void)state;
    (void)kiln__fail(&err, KILN_ECODEC, "want int64, got string");
    kiln__prefix(&err, "Args[%d].Value", 3);
    assert_string_equal(err.message, "Args[3].Value: want int64, got string");
    assert_int_equal(err.code, KILN_ECODEC);
    kiln__prefix(NULL, "nothing happens");
    kiln__ok(&err);
    assert_int_equal(err.code, KILN_OK);
    assert_string_equal(err.message, "");
    kiln__ok(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_every_code),
        cmocka_unit_test(test_strerror_unknown),
        cmocka_unit_test(test_version_string),
        cmocka_unit_test(test_fail_fills_error),
        cmocka_unit_test(test_fail_truncates),
        cmocka_unit_test(test_ok_and_prefix),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
