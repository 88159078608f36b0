/*
 * A pool run on a thread of its own, as a unit test drives one: start it,
 * act on it from the test thread, stop it and join.
 */
#ifndef KILN_TEST_POOL_RUNNER_H
#define KILN_TEST_POOL_RUNNER_H

#include "kiln.h"

#include <pthread.h>
#include <stdbool.h>

typedef struct pool_runner {
    kiln_pool *pool; /* borrowed */
    pthread_t thread;
    bool started;   /* the thread runs kiln_pool_start, not joined yet */
    kiln_err rc;    /* what kiln_pool_start returned, once joined */
    kiln_error err; /* and its reason */
} pool_runner;

/* Runs kiln_pool_start(pool) on a new thread. Asserts the thread began. */
void pool_runner_start(pool_runner *r, kiln_pool *pool);

/* Joins the thread (asserting one was started) and returns what
 * kiln_pool_start returned; r->err holds its reason. */
kiln_err pool_runner_join(pool_runner *r);

/* For a teardown: stops and joins a pool a failed test left running.
 * A no-op when none runs. */
void pool_runner_cleanup(pool_runner *r);

#endif /* KILN_TEST_POOL_RUNNER_H */
