/* See pool_runner.h. */
#include "test/support/pool_runner.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

static void *runner_main(void *arg)
{
    pool_runner *r = arg;

    r->rc = kiln_pool_start(r->pool, &r->err);
    return NULL;
}

void pool_runner_start(pool_runner *r, kiln_pool *pool)
{
    r->pool = pool;
    assert_int_equal(pthread_create(&r->thread, NULL, runner_main, r), 0);
    r->started = true;
}

kiln_err pool_runner_join(pool_runner *r)
{
    assert_true(r->started);
    pthread_join(r->thread, NULL);
    r->started = false;
    return r->rc;
}

void pool_runner_cleanup(pool_runner *r)
{
    if (!r->started)
        return;
    kiln_pool_stop(r->pool);
    pthread_join(r->thread, NULL);
    r->started = false;
}
