/* Checks on a received kiln__delivery for tests: its body is body_len
 * bytes and not NUL-terminated (broker.h), so it is compared by length. */
#ifndef KILN_TEST_DELIVERY_H
#define KILN_TEST_DELIVERY_H

#include "broker/broker.h"

/* Fails the test unless the body of `d` is exactly the string `want`. */
void assert_body_is(const kiln__delivery *d, const char *want);

/* The body of `d` as a NUL-terminated string in buf[n] (cut to fit). */
const char *body_text(const kiln__delivery *d, char *buf, size_t n);

#endif
