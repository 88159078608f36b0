/* The worker pool's lifecycle: new, register, start, stop, free, and the
 * signal handling of kiln_pool_start. */
#include "workerpool/pool.h"

#include "broker/amqp.h"
#include "logger/logger.h"
#include "store/plugin.h"
#include "workerpool/backoff.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static kiln__broker *amqp_factory(void *ctx, const kiln_config *cfg,
                                  kiln_error *err)
{
    (void)ctx;
    return kiln__amqp_broker_new(cfg, err);
}

/* Workers stop retrying a store write once the pool stops for good. */
static bool give_up(void *ctx)
{
    kiln_pool *p = ctx;

    return atomic_load(&p->stop_level) >= 2 || atomic_load(&p->abandon);
}

/* kiln_pool_wait_ready's deadlines are on the monotonic clock. */
static bool ready_cv_init(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    bool ok;

    if (pthread_condattr_init(&attr) != 0)
        return false;
    ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
         pthread_cond_init(cv, &attr) == 0;
    (void)pthread_condattr_destroy(&attr);
    return ok;
}

kiln_pool *kiln_pool_new(const kiln_config *cfg, unsigned concurrency,
                         const char *name, kiln_error *err)
{
    kiln_pool *p;

    if (cfg == NULL) {
        kiln__fail(err, KILN_EINVAL, "kiln_pool_new: cfg is required");
        return NULL;
    }
    if (kiln_config_validate(cfg, err) != KILN_OK)
        return NULL;
    if (concurrency > 1024) {
        kiln__fail(err, KILN_EINVAL,
                   "concurrency %u: expected 0 (the configured %u) to 1024",
                   concurrency, cfg->concurrency);
        return NULL;
    }
    if ((p = kiln__calloc(1, sizeof(*p))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "pool");
        return NULL;
    }
    p->cfg = *cfg;
    /* The logger is process-wide; the configuration names its level and
     * format, for producers as much as for workers. */
    kiln_log_set_level(cfg->log_level);
    kiln_log_set_format(cfg->log_format);
    p->concurrency = concurrency == 0 ? cfg->concurrency : concurrency;
    kiln__strlcpy(p->name, name != NULL && name[0] != '\0' ? name : "kiln",
                  sizeof(p->name));
    p->broker_new = amqp_factory;
    p->wake_fd = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_mutex_init(&p->pub_mu, NULL);
    pthread_mutex_init(&p->ready_mu, NULL);
    if (!ready_cv_init(&p->ready_cv)) {
        pthread_mutex_destroy(&p->ready_mu);
        pthread_mutex_destroy(&p->pub_mu);
        pthread_cond_destroy(&p->work_cv);
        pthread_mutex_destroy(&p->mu);
        kiln__free(p);
        kiln__fail(err, KILN_ENOMEM, "pool: condition variable");
        return NULL;
    }
    kiln__probe_cache_init(&p->probe);
    if ((p->reg = kiln_registry_new(err)) == NULL)
        goto fail;
    p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->wake_fd < 0) {
        kiln__fail(err, KILN_ENOMEM, "eventfd: errno %d", errno);
        goto fail;
    }
    if (cfg->store == KILN_STORE_MONGODB) {
        if ((p->store = kiln__store_open(&p->cfg, err)) == NULL)
            goto fail;
        p->own_store = true;
    }
    p->dispatch.cfg = &p->cfg;
    p->dispatch.reg = p->reg;
    p->dispatch.store = p->store;
    p->dispatch.give_up = give_up;
    p->dispatch.give_up_ctx = p;
    p->dispatch.outage = &p->store_outage;
    return p;
fail:
    kiln_pool_free(p);
    return NULL;
}

void kiln_pool_free(kiln_pool *pool)
{
    if (pool == NULL)
        return;
    /* After a timed-out drain the workers may still run tasks, or retry
     * a store write: tell them to stop retrying, and wait for them before
     * closing anything a task may still use (the publisher it sends
     * through, the store, the registry). */
    atomic_store(&pool->abandon, true);
    kiln__workers_join(pool);
    kiln__publisher_free(pool->pub);
    pool->pub = NULL;
    for (size_t i = 0; i < pool->n_slots; i++) {
        kiln__work *w = &pool->slots[i];
        if (w->state == KILN__WORK_FREE)
            continue;
        if (pool->leftover != NULL)
            kiln__broker_release(pool->leftover, &w->dl);
        kiln__settle_discard(&w->copy->settle);
        kiln__job_release(&w->job);
    }
    kiln__broker_destroy(pool->leftover);
    kiln__free(pool->slots);
    kiln__free(pool->copies);
    kiln_registry_free(pool->reg);
    if (pool->own_store)
        kiln__store_destroy(pool->store);
    if (pool->wake_fd >= 0)
        close(pool->wake_fd);
    pthread_mutex_destroy(&pool->pub_mu);
    pthread_cond_destroy(&pool->ready_cv);
    pthread_mutex_destroy(&pool->ready_mu);
    kiln__probe_cache_destroy(&pool->probe);
    pthread_cond_destroy(&pool->work_cv);
    pthread_mutex_destroy(&pool->mu);
    kiln__free(pool);
}

void kiln__pool_hold_acks(kiln_pool *p, bool hold)
{
    atomic_store(&p->hold_acks, hold);
}

unsigned long kiln__pool_consumer_decodes(kiln_pool *p)
{
    return atomic_load(&p->consumer_decodes);
}

void kiln__pool_set_broker_factory(kiln_pool *p, kiln__broker_factory f,
                                   void *ctx)
{
    p->broker_new = f;
    p->broker_ctx = ctx;
}

void kiln__pool_set_store(kiln_pool *p, kiln__store *store)
{
    if (p->own_store)
        kiln__store_destroy(p->store);
    p->own_store = false;
    p->store = store;
    p->dispatch.store = store;
}

static kiln_err registrable(kiln_pool *pool, kiln_error *err);

kiln_err kiln_pool_set_time_limit(kiln_pool *pool, const char *name,
                                  unsigned time_limit_ms, kiln_error *err)
{
    kiln_err rc = registrable(pool, err);

    if (rc != KILN_OK)
        return rc;
    return kiln_registry_set_time_limit(pool->reg, name, time_limit_ms, err);
}

static kiln_err registrable(kiln_pool *pool, kiln_error *err)
{
    if (pool == NULL)
        return kiln__fail(err, KILN_EINVAL, "pool is NULL");
    if (atomic_load(&pool->state) != KILN__POOL_NEW)
        return kiln__fail(err, KILN_ECLOSED,
                          "register tasks before kiln_pool_start");
    return KILN_OK;
}

kiln_err kiln_pool_register(kiln_pool *pool, const char *name, kiln_task_fn fn,
                            void *user, void (*user_free)(void *),
                            kiln_error *err)
{
    kiln_err rc = registrable(pool, err);

    if (rc != KILN_OK)
        return rc;
    return kiln_registry_add(pool->reg, name, fn, user, user_free, err);
}

kiln_err kiln_pool_register_table(kiln_pool *pool, const kiln_task_def *defs,
                                  size_t n, kiln_error *err)
{
    kiln_err rc = registrable(pool, err);

    if (rc != KILN_OK)
        return rc;
    return kiln_registry_add_table(pool->reg, defs, n, err);
}

void kiln__pool_wake(kiln_pool *p)
{
    uint64_t one = 1;
    int saved = errno; /* called from a signal handler too */

    if (p->wake_fd >= 0 && write(p->wake_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is already non-zero, the loop will wake. */
    }
    errno = saved;
}

void kiln__pool_ready(kiln_pool *p, bool ready, const kiln_error *why)
{
    pthread_mutex_lock(&p->ready_mu);
    p->ready = ready;
    if (ready)
        p->ready_why.code = KILN_OK;
    else if (why != NULL && why->code != KILN_OK)
        p->ready_why = *why;
    pthread_cond_broadcast(&p->ready_cv);
    pthread_mutex_unlock(&p->ready_mu);
}

/* Why a pool is not ready at its deadline. Caller holds ready_mu. */
static kiln_err not_ready(const kiln_pool *p, unsigned timeout_ms,
                          kiln_error *err)
{
    const char *why = p->ready_why.code != KILN_OK ? p->ready_why.message
                      : atomic_load(&p->state) == KILN__POOL_NEW
                          ? "kiln_pool_start has not been called"
                          : "still connecting";

    return kiln__fail(err, KILN_ETIMEDOUT,
                      "pool %s is not consuming queue %s after %u ms: %s",
                      p->name, p->cfg.queue, timeout_ms, why);
}

kiln_err kiln_pool_wait_ready(kiln_pool *pool, unsigned timeout_ms,
                              kiln_error *err)
{
    int64_t deadline, now;
    kiln_err rc;

    if (pool == NULL)
        return kiln__fail(err, KILN_EINVAL, "pool is NULL");
    deadline = kiln__monotonic_ns() + (int64_t)timeout_ms * 1000000;
    pthread_mutex_lock(&pool->ready_mu);
    for (;;) {
        /* kiln_pool_stop may come from a signal handler, which cannot
         * signal the condition variable: the stop level is looked at on
         * each wake-up, and a wait is never longer than 100 ms. */
        if (atomic_load(&pool->stop_level) > 0 ||
            atomic_load(&pool->state) == KILN__POOL_DONE) {
            rc = kiln__fail(err, KILN_ECLOSED, "pool %s is stopping",
                            pool->name);
            break;
        }
        if (pool->ready) {
            kiln__ok(err);
            rc = KILN_OK;
            break;
        }
        if ((now = kiln__monotonic_ns()) >= deadline) {
            rc = not_ready(pool, timeout_ms, err);
            break;
        }
        now = deadline - now < 100000000 ? deadline : now + 100000000;
        {
            struct timespec ts = {(time_t)(now / 1000000000),
                                  (long)(now % 1000000000)};
            (void)pthread_cond_timedwait(&pool->ready_cv, &pool->ready_mu, &ts);
        }
    }
    pthread_mutex_unlock(&pool->ready_mu);
    return rc;
}

void kiln_pool_stop(kiln_pool *pool)
{
    int level;

    if (pool == NULL)
        return;
    level = atomic_load(&pool->stop_level);
    while (level < 2 &&
           !atomic_compare_exchange_weak(&pool->stop_level, &level, level + 1))
        ;
    kiln__pool_wake(pool);
}

/* Signals. One pool at a time owns SIGINT and SIGTERM while it runs, unless
 * cfg.handle_signals leaves them to the program; the handler only touches
 * lock-free atomics and an eventfd, which are async-signal-safe. */
static _Atomic(kiln_pool *) signal_pool;

static void on_signal(int sig)
{
    kiln_pool *p = atomic_load(&signal_pool);

    (void)sig;
    if (p != NULL)
        kiln_pool_stop(p);
}

struct saved_signals {
    bool installed;
    struct sigaction old_int, old_term;
};

static void signals_install(kiln_pool *p, struct saved_signals *s)
{
    struct sigaction sa;
    kiln_pool *expected = NULL;

    memset(s, 0, sizeof(*s));
    if (!p->cfg.handle_signals)
        return;
    if (!atomic_compare_exchange_strong(&signal_pool, &expected, p)) {
        kiln__log(KILN_LOG_WARN, "pool",
                  "another pool handles SIGINT/SIGTERM; pool=%s stops only "
                  "by kiln_pool_stop",
                  p->name);
        return;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &s->old_int);
    sigaction(SIGTERM, &sa, &s->old_term);
    s->installed = true;
}

/* Puts back the handler saved at start, but only while kiln's own is still
 * installed: a handler the program set while the pool ran stays. (Between
 * the look and the change another thread could still set one; a program
 * that does that should turn handle_signals off.) */
static void restore_one(int sig, const struct sigaction *old)
{
    struct sigaction cur;

    if (sigaction(sig, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) == 0 &&
        cur.sa_handler == on_signal)
        sigaction(sig, old, NULL);
}

static void signals_restore(kiln_pool *p, struct saved_signals *s)
{
    if (!s->installed)
        return;
    restore_one(SIGINT, &s->old_int);
    restore_one(SIGTERM, &s->old_term);
    atomic_compare_exchange_strong(&signal_pool, &p, NULL);
}

static kiln_err alloc_slots(kiln_pool *p, kiln_error *err)
{
    /* At most `prefetch` unacked deliveries on the live channel, plus the
     * tasks still running from a lost one. */
    p->n_slots = (size_t)p->cfg.prefetch + p->concurrency;
    p->slots = kiln__calloc(p->n_slots, sizeof(*p->slots));
    p->copies = kiln__calloc(p->n_slots, sizeof(*p->copies));
    if (p->slots == NULL || p->copies == NULL)
        return kiln__fail(err, KILN_ENOMEM, "pool: %zu delivery slots",
                          p->n_slots);
    for (size_t i = 0; i < p->n_slots; i++)
        p->slots[i].copy = &p->copies[i];
    return KILN_OK;
}

kiln_err kiln_pool_start(kiln_pool *pool, kiln_error *err)
{
    int expected = KILN__POOL_NEW;
    struct saved_signals sigs;
    kiln_err rc;

    if (pool == NULL)
        return kiln__fail(err, KILN_EINVAL, "pool is NULL");
    if (kiln_registry_count(pool->reg) == 0)
        return kiln__fail(err, KILN_EINVAL,
                          "no task registered: call kiln_pool_register first");
    if (!atomic_compare_exchange_strong(&pool->state, &expected,
                                        KILN__POOL_RUNNING))
        return kiln__fail(err, KILN_ECLOSED,
                          "kiln_pool_start: already started");
    if ((rc = alloc_slots(pool, err)) != KILN_OK ||
        (rc = kiln__workers_start(pool, err)) != KILN_OK) {
        kiln__workers_join(pool);
        atomic_store(&pool->state, KILN__POOL_DONE);
        kiln__pool_ready(pool, false, NULL);
        return rc;
    }
    signals_install(pool, &sigs);
    kiln__log(KILN_LOG_NOTICE, "pool",
              "pool=%s started: queue=%s concurrency=%u prefetch=%u",
              pool->name, pool->cfg.queue, pool->concurrency,
              pool->cfg.prefetch);
    rc = kiln__consumer_run(pool, err);
    signals_restore(pool, &sigs);
    if (rc == KILN_OK)
        kiln__workers_join(pool);
    atomic_store(&pool->state, KILN__POOL_DONE);
    kiln__pool_ready(pool, false, NULL);
    kiln__log(rc == KILN_OK ? KILN_LOG_NOTICE : KILN_LOG_WARN, "pool",
              "pool=%s stopped: %s", pool->name,
              rc == KILN_OK ? "drained" : kiln_strerror(rc));
    return rc;
}
