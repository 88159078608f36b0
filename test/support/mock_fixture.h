/*
 * What test_broker_mock.c, test_store_mock.c and test_dispatch.c share:
 * opening a connection to a mock server, building a text message, and
 * reading a task's state from a store.
 */
#ifndef KILN_TEST_MOCK_FIXTURE_H
#define KILN_TEST_MOCK_FIXTURE_H

#include "mocks/mocks.h"

/* Connects a new connection to `srv` and, unless `queue` is NULL,
 * subscribes it to `queue` with `prefetch`. Asserts each step. Caller
 * owns; free with kiln__broker_destroy. */
kiln__broker *open_conn(kiln__mock_server *srv, const char *queue,
                        unsigned prefetch);

/* A persistent message whose body is the string `body` (borrowed). */
kiln__message text_msg(const char *exchange, const char *rk, const char *body);

/* Reads task `uuid` into *rec, asserting it exists, and returns its state.
 * Release *rec with kiln__task_record_release. */
kiln_task_state get_state(kiln__store *s, const char *uuid,
                          kiln__task_record *rec);

#endif /* KILN_TEST_MOCK_FIXTURE_H */
