/*
 * Worker-pool integration tests that record task state (test_pool_*.c):
 * a fixture whose pools write to a database of their own on the private
 * FerretDB (scripts/with-ferretdb.sh sets KILN_TEST_MONGODB_URL), dropped
 * in teardown, and a wait for a task's final state. Builds on pool_it.h.
 */
#ifndef KILN_TEST_POOL_IT_STORE_H
#define KILN_TEST_POOL_IT_STORE_H

#include "test/support/pool_it.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#include <mongoc/mongoc.h>
#pragma GCC diagnostic pop

#include <kiln/store_mongo.h>

/* KILN_TEST_MONGODB_URL, which scripts/with-ferretdb.sh sets. */
const char *it_mongo_url(void);

/* it_setup, plus a store in database kiln_it_<the test's suffix>. */
int it_setup_store(void **state, const char *tag);

/* Drops the test's database, then it_teardown. The workers go first: a
 * database dropped under a writer has crashed FerretDB (SIGBUS in its
 * SQLite WAL). */
int it_teardown_store(void **state);

/* A store on the fixture's database; caller owns; kiln_store_free. */
kiln_store *it_open_store(const it_fix *f);

/* Waits up to 30 s for the task's final state and checks it, and that its
 * error mentions `error_part` (may be NULL). Returns the result; caller
 * owns; kiln_result_free. */
kiln_result *it_expect_final(kiln_store *st, const char *uuid,
                             kiln_task_state want, const char *error_part);

#endif /* KILN_TEST_POOL_IT_STORE_H */
