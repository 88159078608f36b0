/* The scanner's fast paths (eight bytes at a time over ASCII and over the
 * plain bytes of strings, quote-to-quote jumps when numbers are matched to
 * their text) agree with the byte-wise rules at every offset: a control
 * byte, an escape, a multi-byte character or an escaped quote before a
 * number, placed at each position of a long string. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <kiln.h>

#include <stdio.h>
#include <string.h>

#define PAD 40

/* A body whose one string argument is `pre` + `mid` + `post` (raw JSON
 * string content), followed by an int64 argument. */
static kiln_err decode(const char *pre, const char *mid, const char *post,
                       kiln_signature **out, kiln_error *err)
{
    char body[512];

    snprintf(body, sizeof(body),
             "{\"UUID\":\"task_1\",\"Name\":\"t\",\"Args\":[{\"Name\":\"\","
             "\"Type\":\"string\",\"Value\":\"%s%s%s\"},{\"Name\":\"\","
             "\"Type\":\"int64\",\"Value\":9007199254740993}]}",
             pre, mid, post);
    return kiln_signature_from_json(body, strlen(body), 0, out, err);
}

static void check_at_every_offset(const char *mid, kiln_err want,
                                  const char *want_value)
{
    char pre[PAD + 1], post[PAD + 1];

    for (int i = 0; i <= PAD; i++) {
        kiln_signature *sig = NULL;
        kiln_error err;
        const char *s;
        int64_t v;

        memset(pre, 'a', (size_t)i);
        pre[i] = '\0';
        memset(post, 'b', (size_t)(PAD - i));
        post[PAD - i] = '\0';
        assert_int_equal(decode(pre, mid, post, &sig, &err), want);
        if (want != KILN_OK)
            continue;
        assert_int_equal(kiln_signature_arg_string(sig, 0, &s, NULL), KILN_OK);
        assert_int_equal(strlen(s), (size_t)PAD + strlen(want_value));
        assert_memory_equal(s + i, want_value, strlen(want_value));
        assert_int_equal(kiln_signature_arg_int64(sig, 1, &v, NULL), KILN_OK);
        assert_true(v == 9007199254740993LL);
        kiln_signature_free(sig);
    }
}

static void test_plain_and_escapes(void **state)
{
    (void)state;
    check_at_every_offset("", KILN_OK, "");
    check_at_every_offset("\\\"", KILN_OK, "\"");
    check_at_every_offset("\\\\", KILN_OK, "\\");
    check_at_every_offset("\\\\\\\"", KILN_OK, "\\\"");
    check_at_every_offset("\\u00e9", KILN_OK, "\xc3\xa9");
    check_at_every_offset("\xc3\xa9\xe2\x82\xac", KILN_OK,
                          "\xc3\xa9\xe2\x82\xac");
    check_at_every_offset("\x7f", KILN_OK, "\x7f");
}

static void test_bad_bytes(void **state)
{
    (void)state;
    check_at_every_offset("\x01", KILN_ECODEC, NULL);
    check_at_every_offset("\x1f", KILN_ECODEC, NULL);
    check_at_every_offset("\t", KILN_ECODEC, NULL);
    check_at_every_offset("\xc3", KILN_ECODEC, NULL);         /* truncated */
    check_at_every_offset("\xed\xa0\x80", KILN_ECODEC, NULL); /* surrogate */
    check_at_every_offset("\xff", KILN_ECODEC, NULL);
    check_at_every_offset("\\x", KILN_ECODEC, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_and_escapes),
        cmocka_unit_test(test_bad_bytes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
