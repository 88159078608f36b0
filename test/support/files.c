/* Test data files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test/support/files.h"

#include <stdio.h>
#include <stdlib.h>

char *test_slurp(const char *path, size_t *len, bool trim_newlines)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    while (trim_newlines && n > 0 && buf[n - 1] == '\n')
        n--;
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}
