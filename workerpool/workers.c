/* Worker threads: take a job from the work queue, decode it when it came
 * raw, run its task, put the outcome on the done list and wake the
 * consumer. */
#include "workerpool/pool.h"

#include "logger/logger.h"

void kiln__work_set_key(kiln__work *w)
{
    const char *key = "";

    if (w->dl.message_id != NULL && w->dl.message_id[0] != '\0')
        key = w->dl.message_id;
    else if (w->job.sig != NULL)
        key = w->job.sig->uuid;
    else if (w->job.failed_uuid[0] != '\0')
        key = w->job.failed_uuid;
    atomic_store_explicit(&w->key, key, memory_order_release);
}

static kiln__work *take_job(kiln_pool *p)
{
    kiln__work *w;

    pthread_mutex_lock(&p->mu);
    while (p->queue_head == NULL && !p->closing)
        pthread_cond_wait(&p->work_cv, &p->mu);
    w = p->queue_head;
    if (w != NULL) {
        p->queue_head = w->next;
        if (p->queue_head == NULL)
            p->queue_tail = NULL;
        w->next = NULL;
        w->started = true; /* the consumer reads it under p->mu */
        if (++p->running > p->max_running)
            p->max_running = p->running;
    }
    pthread_mutex_unlock(&p->mu);
    return w;
}

static void *worker_main(void *arg)
{
    kiln_pool *p = arg;
    kiln__work *w;

    while ((w = take_job(p)) != NULL) {
        bool wr, run = true;

        /* No lock is held while the task runs, nor while decoding. */
        if (w->raw) {
            run = kiln__dispatch_prepare(&p->dispatch, &w->dl, &w->job);
            if (kiln__work_key(w) == NULL)
                kiln__work_set_key(w);
        }
        if (run)
            kiln__dispatch_run(&p->dispatch, &w->job);
        pthread_mutex_lock(&p->mu);
        p->running--;
        wr = w->wr_start || w->wr_start_owed || w->job.write;
        pthread_mutex_unlock(&p->mu);
        if (wr)
            kiln__writer_put(p, w); /* acked once its state is written */
        else
            kiln__pool_done(p, w, w);
    }
    return NULL;
}

void kiln__pool_done(kiln_pool *p, kiln__work *head, kiln__work *tail)
{
    bool was_empty;

    pthread_mutex_lock(&p->mu);
    was_empty = p->done_head == NULL;
    if (p->done_tail != NULL)
        p->done_tail->next = head;
    else
        p->done_head = head;
    p->done_tail = tail;
    pthread_mutex_unlock(&p->mu);
    /* The consumer takes the whole list when it wakes, so one wake-up
     * per non-empty list is enough: fewer syscalls per task. */
    if (was_empty)
        kiln__pool_wake(p);
}

kiln_err kiln__workers_start(kiln_pool *p, kiln_error *err)
{
    int rc;

    kiln_err rc0 = kiln__writer_start(p, err);

    if (rc0 != KILN_OK)
        return rc0;
    p->workers = kiln__calloc(p->concurrency, sizeof(*p->workers));
    if (p->workers == NULL)
        return kiln__fail(err, KILN_ENOMEM, "pool: %u worker threads",
                          p->concurrency);
    for (unsigned i = 0; i < p->concurrency; i++) {
        rc = pthread_create(&p->workers[i], NULL, worker_main, p);
        if (rc != 0)
            return kiln__fail(err, KILN_ENOMEM,
                              "pool: starting worker thread %u: error %d", i,
                              rc);
        p->n_workers++;
    }
    return KILN_OK;
}

void kiln__workers_join(kiln_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->closing = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->n_workers; i++)
        pthread_join(p->workers[i], NULL);
    p->n_workers = 0;
    kiln__free(p->workers);
    p->workers = NULL;
    kiln__writer_stop(p);
}
