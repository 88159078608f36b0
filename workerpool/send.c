/* kiln_pool_send_task(s): encode on the calling thread (so callers encode
 * in parallel), probe the destinations of delayed tasks not probed
 * lately, record PENDING when the pool has a store, then hand the
 * messages to the pool's publisher and wait once for their confirms. A
 * large send does this a part at a time and waits once at the end, so
 * its first part is on its way while the rest is encoded. */
#include "workerpool/pool.h"

#include <limits.h>
#include <string.h>

/* Up to this many tasks are staged on the stack: a single send_task
 * allocates nothing here beyond its encoded body. */
#define SMALL 8

/* A larger send is staged and handed to the publisher in parts of this
 * many tasks, so the broker takes the first part while the caller encodes
 * the next, as the bare client writes while it builds, instead of idling
 * while the whole batch is encoded. Small enough that the first write
 * comes soon, large enough that a part costs the publisher little. */
#define PART 128

kiln__publisher *kiln__pool_publisher(kiln_pool *pool, kiln_error *err)
{
    kiln__publisher *pub;

    /* pool->pub_mu guards pool->pub; it is never held while sending. */
    pthread_mutex_lock(&pool->pub_mu);
    if (pool->pub == NULL)
        pool->pub =
            kiln__publisher_new(&pool->cfg, pool->broker_new, pool->broker_ctx,
                                pool->cfg.pool_size, pool->name, err);
    pub = pool->pub;
    pthread_mutex_unlock(&pool->pub_mu);
    return pub;
}

/* Probes of delayed tasks go through the publisher like the tasks. */
static kiln_err publisher_send(void *ctx, const kiln__message *msgs, size_t n,
                               kiln_err *status, kiln_error *err)
{
    return kiln__publisher_send(ctx, msgs, n, status, err);
}

static kiln_err fail_all(kiln_err *status, size_t n, kiln_err code)
{
    for (size_t i = 0; status != NULL && i < n; i++)
        status[i] = code;
    return code;
}

/* Staging arrays: on the stack for a few tasks, else one heap block. */
typedef struct stage_buf {
    kiln__staged *out;
    kiln__pub_req *reqs; /* one per part when n > PART, else NULL */
    kiln__message *msgs;
    size_t *map;
    kiln_err *pst;
    void *heap;
    kiln__staged s_out[SMALL];
    kiln__message s_msgs[SMALL];
    size_t s_map[SMALL];
    kiln_err s_pst[SMALL];
} stage_buf;

static size_t n_parts(size_t n)
{
    return n > PART ? (n + PART - 1) / PART : 0;
}

static bool stage_buf_init(stage_buf *sb, size_t n)
{
    size_t np = n_parts(n);

    memset(sb->s_out, 0, sizeof(sb->s_out));
    sb->heap = NULL;
    sb->reqs = NULL;
    if (n <= SMALL) {
        sb->out = sb->s_out;
        sb->msgs = sb->s_msgs;
        sb->map = sb->s_map;
        sb->pst = sb->s_pst;
        return true;
    }
    /* Alignments decrease along the block. */
    sb->heap = kiln__calloc(1, n * (sizeof(*sb->out) + sizeof(*sb->msgs) +
                                    sizeof(*sb->map) + sizeof(*sb->pst)) +
                                   np * sizeof(*sb->reqs));
    if (sb->heap == NULL)
        return false;
    sb->out = sb->heap;
    sb->reqs = (kiln__pub_req *)(void *)(sb->out + n);
    sb->msgs = (kiln__message *)(void *)(sb->reqs + np);
    if (np == 0)
        sb->reqs = NULL;
    sb->map = (size_t *)(void *)(sb->msgs + n);
    sb->pst = (kiln_err *)(void *)(sb->map + n);
    return true;
}

/* Publishes the `m` staged messages and folds their statuses into `out`;
 * *first (the lowest failed index so far) and `err` follow the lowest
 * failure. A task the broker certainly did not take is recorded FAILURE
 * in `store` (may be NULL) over the PENDING staging wrote. */
static void publish(kiln__publisher *pub, kiln__store *store,
                    const kiln_signature *const *sigs, stage_buf *sb, size_t m,
                    size_t *first, kiln_error *err)
{
    size_t why_j = m;
    kiln_error e;

    if (m == 0 ||
        kiln__publisher_send(pub, sb->msgs, m, sb->pst, &e) == KILN_OK)
        return;
    for (size_t j = 0; j < m; j++) {
        size_t i = sb->map[j];
        sb->out[i].rc = sb->pst[j];
        /* map grows with j, so only the first failure can be the lowest,
         * and e describes exactly that one. */
        if (sb->pst[j] != KILN_OK && why_j == m)
            why_j = j;
        if (sb->pst[j] != KILN_OK && i < *first) {
            *first = i;
            kiln__fail(err, sb->pst[j], "task %zu (%s): %s", i,
                       kiln_signature_name(sigs[i]), e.message);
        }
    }
    /* The publisher never leaves a message it may have written as
     * anything but KILN_ETIMEDOUT or KILN_ECLOSED. */
    kiln__stage_unsent(store, sigs, sb->map, sb->pst, NULL, m, why_j,
                       e.message);
}

/* The parts of one send on their way. */
typedef struct parts {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t left; /* submitted, not yet final */
} parts;

/* The publisher's owner thread, with the connection's lock held. */
static void part_done(kiln__pub_req *r, void *ctx)
{
    parts *w = ctx;

    (void)r;
    pthread_mutex_lock(&w->mu);
    if (--w->left == 0)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Folds the statuses of the part `r` into sb->out, as publish() does for
 * a whole batch. */
static void part_fold(kiln__store *store, const kiln_signature *const *sigs,
                      stage_buf *sb, const kiln__pub_req *r, size_t *first,
                      kiln_error *err)
{
    size_t base = (size_t)(r->msgs - sb->msgs);
    const size_t *map = sb->map + base;
    const kiln_err *pst = sb->pst + base;

    if (r->bad == r->n)
        return;
    for (size_t j = 0; j < r->n; j++) {
        size_t i = map[j];
        sb->out[i].rc = pst[j];
        /* map grows with j: the part's first failure is r->bad, the one
         * r->err describes. */
        if (pst[j] != KILN_OK && i < *first) {
            *first = i;
            kiln__fail(err, pst[j], "task %zu (%s): %s", i,
                       kiln_signature_name(sigs[i]), r->err.message);
        }
    }
    kiln__stage_unsent(store, sigs, map, pst, NULL, r->n, r->bad,
                       r->err.message);
}

/* Stages and submits `n` (> PART) tasks a part at a time, all on one
 * publishing connection (in order, sharing confirm round trips), then
 * waits for every part. False, having done nothing, when it cannot. */
static bool send_parts(kiln_pool *pool, kiln__publisher *pub,
                       const kiln__prober *probe,
                       const kiln_signature *const *sigs, size_t n,
                       stage_buf *sb, size_t *first, kiln_error *err)
{
    unsigned conn = UINT_MAX;
    size_t mt = 0, nreq = 0;
    parts w = {.left = 0};

    if (pthread_mutex_init(&w.mu, NULL) != 0)
        return false;
    if (pthread_cond_init(&w.cv, NULL) != 0) {
        pthread_mutex_destroy(&w.mu);
        return false;
    }
    for (size_t from = 0; from < n; from += PART) {
        size_t to = n - from > PART ? from + PART : n;
        size_t m =
            kiln__stage_range(&pool->cfg, pool->store, probe, sigs, from, to,
                              sb->out, sb->msgs + mt, sb->map + mt, first, err);
        kiln__pub_req *r = &sb->reqs[nreq];
        kiln_err rc;

        if (m == 0)
            continue;
        pthread_mutex_lock(&w.mu);
        w.left++;
        pthread_mutex_unlock(&w.mu);
        rc = kiln__publisher_submit_to(pub, &conn, r, sb->msgs + mt, m,
                                       sb->pst + mt, part_done, &w);
        if (rc != KILN_OK) { /* closing: nothing queued, no notify */
            pthread_mutex_lock(&w.mu);
            w.left--;
            pthread_mutex_unlock(&w.mu);
            *r = (kiln__pub_req){.msgs = sb->msgs + mt, .n = m, .bad = 0};
            for (size_t j = 0; j < m; j++)
                sb->pst[mt + j] = rc;
            kiln__fail(&r->err, rc, "the publisher is closing");
        }
        nreq++;
        mt += m;
    }
    pthread_mutex_lock(&w.mu);
    while (w.left > 0)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    for (size_t k = 0; k < nreq; k++)
        part_fold(pool->store, sigs, sb, &sb->reqs[k], first, err);
    return true;
}

kiln_err kiln_pool_send_tasks(kiln_pool *pool,
                              const kiln_signature *const *sigs, size_t n,
                              kiln_err *status, kiln_error *err)
{
    kiln__publisher *pub;
    kiln__prober probe;
    kiln_error e;
    stage_buf sb;
    size_t first = n, m;
    kiln_err rc = KILN_OK;

    if (pool == NULL || (sigs == NULL && n > 0)) {
        (void)fail_all(status, n, KILN_EINVAL);
        return kiln__fail(err, KILN_EINVAL, "send: pool and sigs required");
    }
    if (n == 0) {
        kiln__ok(err);
        return KILN_OK;
    }
    if ((pub = kiln__pool_publisher(pool, &e)) == NULL) {
        if (err != NULL)
            *err = e;
        return fail_all(status, n, e.code);
    }
    if (!stage_buf_init(&sb, n)) {
        (void)fail_all(status, n, KILN_ENOMEM);
        return kiln__fail(err, KILN_ENOMEM, "send: %zu tasks", n);
    }
    probe = (kiln__prober){
        .publish = publisher_send, .ctx = pub, .cache = &pool->probe};
    if (sb.reqs == NULL ||
        !send_parts(pool, pub, &probe, sigs, n, &sb, &first, err)) {
        m = kiln__stage_tasks(&pool->cfg, pool->store, &probe, sigs, n, sb.out,
                              sb.msgs, sb.map, &first, err);
        publish(pub, pool->store, sigs, &sb, m, &first, err);
    }
    for (size_t i = 0; status != NULL && i < n; i++)
        status[i] = sb.out[i].rc;
    if (first < n)
        rc = sb.out[first].rc;
    else
        kiln__ok(err);
    kiln__staged_release(sb.out, n);
    kiln__free(sb.heap);
    return rc;
}

kiln_err kiln_pool_send_task(kiln_pool *pool, const kiln_signature *sig,
                             kiln_error *err)
{
    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "send: sig is required");
    return kiln_pool_send_tasks(pool, &sig, 1, NULL, err);
}
