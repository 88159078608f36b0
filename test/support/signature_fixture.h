/*
 * What test_signature.c and test_args.c share: sample text, the fixture
 * that gives each test a fresh signature, and a builder that adds one
 * argument of each of the 29 types.
 */
#ifndef KILN_TEST_SIGNATURE_FIXTURE_H
#define KILN_TEST_SIGNATURE_FIXTURE_H

#include "task/task.h"

#define EURO  "\xe2\x82\xac"
#define CLEF  "\xf0\x9d\x84\x9e"
#define UTF8S "h\xc3\xa9llo " EURO " " CLEF

/* The slices add_every_type adds. */
extern const bool sample_bools[3];
extern const char *const sample_strings[3];

/* cmocka setup and teardown: *state is a new signature named "add";
 * teardown turns allocation failures off and frees *state (may be NULL). */
int sig_setup(void **state);
int sig_teardown(void **state);

/* Asserts that a and b have the same bits, so -0.0 differs from 0.0. */
void assert_same_double(double a, double b);

/* Adds one argument of each type, in enum order, all named `name` (may be
 * NULL). Each add must leave the count alone on failure; the first failure
 * is returned with `err` set. */
kiln_err add_every_type(kiln_signature *sig, const char *name, kiln_error *err);

#endif /* KILN_TEST_SIGNATURE_FIXTURE_H */
