/* Test data files. */
#ifndef KILN_TEST_FILES_H
#define KILN_TEST_FILES_H

#include <stdbool.h>
#include <stddef.h>

/* Reads the whole file at `path` (relative to the repository root, where
 * tests run) and fails the test when it cannot. With `trim_newlines`
 * trailing newlines are dropped (golden vectors end with one; malformed
 * inputs are kept byte for byte). NUL-terminated; caller frees. */
char *test_slurp(const char *path, size_t *len, bool trim_newlines);

#endif
