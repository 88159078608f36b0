/* kiln_pool_send_task(s): encode on the calling thread (so callers encode
 * in parallel), probe the destinations of delayed tasks not probed
 * lately, record PENDING when the pool has a store, then hand the
 * messages to the pool's publisher and wait once for their confirms. */
#include "workerpool/pool.h"

#include <string.h>

/* Up to this many tasks are staged on the stack: a single send_task
 * allocates nothing here beyond its encoded body. */
#define SMALL 8

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
    kiln__message *msgs;
    size_t *map;
    kiln_err *pst;
    void *heap;
    kiln__staged s_out[SMALL];
    kiln__message s_msgs[SMALL];
    size_t s_map[SMALL];
    kiln_err s_pst[SMALL];
} stage_buf;

static bool stage_buf_init(stage_buf *sb, size_t n)
{
    memset(sb->s_out, 0, sizeof(sb->s_out));
    sb->heap = NULL;
    if (n <= SMALL) {
        sb->out = sb->s_out;
        sb->msgs = sb->s_msgs;
        sb->map = sb->s_map;
        sb->pst = sb->s_pst;
        return true;
    }
    /* Alignments decrease along the block. */
    sb->heap = kiln__calloc(n, sizeof(*sb->out) + sizeof(*sb->msgs) +
                                   sizeof(*sb->map) + sizeof(*sb->pst));
    if (sb->heap == NULL)
        return false;
    sb->out = sb->heap;
    sb->msgs = (kiln__message *)(void *)(sb->out + n);
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
    m = kiln__stage_tasks(&pool->cfg, pool->store, &probe, sigs, n, sb.out,
                          sb.msgs, sb.map, &first, err);
    publish(pub, pool->store, sigs, &sb, m, &first, err);
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
