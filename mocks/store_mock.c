/* The in-memory store: a hash map from task UUID to its record, under one
 * mutex, with a condition variable so a test can wait for a task to
 * finish. It enforces the state rules of store/store.h. */
#include "mocks/mocks.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

struct entry {
    struct entry *next;
    uint64_t hash;
    kiln__task_record rec;
    bool unsent; /* rec is a producer's FAILURE for a failed send */
};

struct mock_store {
    kiln__store base;
    pthread_mutex_t mu;  /* guards everything below */
    pthread_cond_t cond; /* broadcast on every applied write */
    struct entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t per_state[KILN__STATE_LAST + 1];
    unsigned fail_writes;
    bool down; /* every write fails */
    unsigned failed_while_down;
    char fail_uuid[KILN_NAME_MAX]; /* writes of this task fail; "" none */
    bool hold;                     /* set_states waits while set */
    unsigned held;                 /* set_states calls waiting */
    size_t bulks, bulk_max;        /* set_states calls, largest n */
};

static struct entry *lookup(const struct mock_store *ms, const char *uuid,
                            uint64_t h)
{
    struct entry *e = ms->buckets[h & (ms->nbuckets - 1)];

    for (; e != NULL; e = e->next)
        if (e->hash == h && strcmp(e->rec.uuid, uuid) == 0)
            return e;
    return NULL;
}

/* Doubles the table when it is full; a failed grow only costs speed. */
static void maybe_grow(struct mock_store *ms)
{
    size_t n = ms->nbuckets * 2;
    struct entry **b;

    if (ms->count < ms->nbuckets ||
        (b = kiln__calloc(n, sizeof(struct entry *))) == NULL)
        return;
    for (size_t i = 0; i < ms->nbuckets; i++) {
        struct entry *e = ms->buckets[i];
        while (e != NULL) {
            struct entry *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    kiln__free(ms->buckets);
    ms->buckets = b;
    ms->nbuckets = n;
}

/* The rules of store/store.h: may `u` (a failed send's FAILURE when
 * `unsent`) change the entry `e` (NULL: none)? */
static bool applies(const struct entry *e, const kiln__state_update *u,
                    bool unsent)
{
    if (e == NULL || e->unsent)
        return true;
    if (kiln__state_finished(e->rec.state))
        return false;
    return (u->state != KILN_STATE_PENDING && !unsent) ||
           e->rec.state == KILN_STATE_PENDING;
}

/* Builds the new contents of a record before touching the old one, so a
 * failed copy leaves the store unchanged. */
static kiln_err fill(kiln__task_record *r, const kiln__state_update *u,
                     kiln_error *err)
{
    const char *name = u->task_name ? u->task_name : "";

    memset(r, 0, sizeof(*r));
    r->state = u->state;
    r->updated_ns = kiln__realtime_ns();
    if ((r->uuid = kiln__strdup(u->uuid)) == NULL ||
        (r->task_name = kiln__strdup(name)) == NULL ||
        (r->error = kiln__strdup(u->error ? u->error : "")) == NULL) {
        kiln__task_record_release(r);
        return kiln__fail(err, KILN_ENOMEM, "mock store: record");
    }
    if (u->results != NULL) {
        kiln_err rc = kiln__values_copy(&r->results, u->results, err);
        if (rc != KILN_OK) {
            kiln__task_record_release(r);
            return rc;
        }
    }
    return KILN_OK;
}

/* Applies `u` to the map. Caller holds ms->mu. */
static kiln_err apply(struct mock_store *ms, const kiln__state_update *u,
                      bool unsent, kiln_error *err)
{
    uint64_t h = kiln__hash_str(u->uuid);
    struct entry *e = lookup(ms, u->uuid, h);
    bool started = u->state == KILN_STATE_STARTED || u->started;
    kiln__task_record rec;
    kiln_err rc;

    if (!applies(e, u, unsent))
        return KILN_OK;
    if ((rc = fill(&rec, u, err)) != KILN_OK)
        return rc;
    if (e == NULL) {
        if ((e = kiln__calloc(1, sizeof(*e))) == NULL) {
            kiln__task_record_release(&rec);
            return kiln__fail(err, KILN_ENOMEM, "mock store: entry");
        }
        e->hash = h;
        e->next = ms->buckets[h & (ms->nbuckets - 1)];
        ms->buckets[h & (ms->nbuckets - 1)] = e;
        ms->count++;
        rec.created_ns = rec.updated_ns;
        rec.attempts = started ? 1 : 0;
        rec.started_ns = started ? rec.updated_ns : 0;
        maybe_grow(ms);
    } else {
        /* A later write without a name keeps the one already known. */
        if (rec.task_name != NULL && rec.task_name[0] == '\0') {
            kiln__free(rec.task_name);
            rec.task_name = e->rec.task_name;
            e->rec.task_name = NULL;
        }
        rec.created_ns = e->rec.created_ns;
        rec.attempts = e->rec.attempts + (started ? 1 : 0);
        rec.started_ns = started ? rec.updated_ns : e->rec.started_ns;
        ms->per_state[e->rec.state]--;
        kiln__task_record_release(&e->rec);
    }
    /* The mock keeps documents for ever (no delete_at) and knows no
     * worker identity. */
    if (kiln__state_finished(rec.state))
        rec.finished_ns = rec.updated_ns;
    e->rec = rec;
    e->unsent = unsent;
    ms->per_state[rec.state]++;
    pthread_cond_broadcast(&ms->cond);
    return KILN_OK;
}

static kiln_err write(kiln__store *s, const kiln__state_update *u, bool unsent,
                      kiln_error *err)
{
    struct mock_store *ms = (struct mock_store *)s;
    kiln_err rc;

    if (u == NULL || u->uuid == NULL || u->uuid[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "mock store: task UUID required");
    if ((unsigned)u->state > KILN__STATE_LAST)
        return kiln__fail(err, KILN_EINVAL, "mock store: state %d",
                          (int)u->state);
    pthread_mutex_lock(&ms->mu);
    if (ms->down) {
        ms->failed_while_down++;
        rc = kiln__fail(err, KILN_ESTORE, "mock store: server down (injected)");
    } else if (ms->fail_uuid[0] != '\0' &&
               strcmp(ms->fail_uuid, u->uuid) == 0) {
        rc = kiln__fail(err, KILN_ESTORE,
                        "mock store: write of %s failed (injected)", u->uuid);
    } else if (ms->fail_writes > 0) {
        ms->fail_writes--;
        rc = kiln__fail(err, KILN_ESTORE,
                        "mock store: write failed "
                        "(injected)");
    } else {
        rc = apply(ms, u, unsent, err);
    }
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static kiln_err ms_set_state(kiln__store *s, const kiln__state_update *u,
                             kiln_error *err)
{
    return write(s, u, false, err);
}

static kiln_err ms_send_failed(kiln__store *s, const kiln__state_update *u,
                               kiln_error *err)
{
    if (u != NULL && u->state != KILN_STATE_FAILURE)
        return kiln__fail(err, KILN_EINVAL, "mock store: send_failed: FAILURE");
    return write(s, u, true, err);
}

static kiln_err ms_get_state(kiln__store *s, const char *uuid,
                             kiln__task_record *out, kiln_error *err)
{
    struct mock_store *ms = (struct mock_store *)s;
    kiln__state_update u = {0};
    struct entry *e;
    kiln_err rc;

    if (uuid == NULL || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "mock store: uuid and out");
    pthread_mutex_lock(&ms->mu);
    if ((e = lookup(ms, uuid, kiln__hash_str(uuid))) == NULL) {
        rc = kiln__fail(err, KILN_ENOTFOUND, "no task '%s'", uuid);
    } else {
        kiln__task_record r;
        u = (kiln__state_update){.uuid = e->rec.uuid,
                                 .task_name = e->rec.task_name,
                                 .state = e->rec.state,
                                 .results = &e->rec.results,
                                 .error = e->rec.error};
        if ((rc = fill(&r, &u, err)) == KILN_OK) {
            r.created_ns = e->rec.created_ns;
            r.updated_ns = e->rec.updated_ns;
            r.attempts = e->rec.attempts;
            r.started_ns = e->rec.started_ns;
            r.finished_ns = e->rec.finished_ns;
            *out = r;
        }
    }
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static void ms_destroy(kiln__store *s)
{
    struct mock_store *ms = (struct mock_store *)s;

    for (size_t i = 0; i < ms->nbuckets; i++) {
        struct entry *e = ms->buckets[i];
        while (e != NULL) {
            struct entry *next = e->next;
            kiln__task_record_release(&e->rec);
            kiln__free(e);
            e = next;
        }
    }
    kiln__free(ms->buckets);
    (void)pthread_mutex_destroy(&ms->mu);
    (void)pthread_cond_destroy(&ms->cond);
    kiln__free(ms);
}

/* One bulk: each document as set_state, after any hold (a test keeps a
 * bulk in flight with it). */
static kiln_err ms_set_states(kiln__store *s, const kiln__state_update *u,
                              size_t n, kiln_err *status, kiln_error *err)
{
    struct mock_store *ms = (struct mock_store *)s;
    kiln_err first = KILN_OK;
    kiln_error e;

    pthread_mutex_lock(&ms->mu);
    ms->held++;
    pthread_cond_broadcast(&ms->cond);
    while (ms->hold)
        pthread_cond_wait(&ms->cond, &ms->mu);
    ms->held--;
    ms->bulks++;
    if (n > ms->bulk_max)
        ms->bulk_max = n;
    pthread_mutex_unlock(&ms->mu);
    for (size_t i = 0; i < n; i++) {
        status[i] = write(s, &u[i], false, &e);
        if (status[i] != KILN_OK && first == KILN_OK) {
            first = status[i];
            if (err != NULL)
                *err = e;
        }
    }
    return first;
}

static const kiln__store_ops ms_ops = {.set_state = ms_set_state,
                                       .get_state = ms_get_state,
                                       .destroy = ms_destroy,
                                       .send_failed = ms_send_failed,
                                       .set_states = ms_set_states};

void kiln__mock_store_fail_uuid(kiln__store *s, const char *uuid)
{
    struct mock_store *ms = (struct mock_store *)s;

    pthread_mutex_lock(&ms->mu);
    kiln__strlcpy(ms->fail_uuid, uuid != NULL ? uuid : "",
                  sizeof(ms->fail_uuid));
    pthread_mutex_unlock(&ms->mu);
}

void kiln__mock_store_hold(kiln__store *s, bool hold)
{
    struct mock_store *ms = (struct mock_store *)s;

    pthread_mutex_lock(&ms->mu);
    ms->hold = hold;
    pthread_cond_broadcast(&ms->cond);
    pthread_mutex_unlock(&ms->mu);
}

bool kiln__mock_store_wait_held(kiln__store *s, int timeout_ms)
{
    struct mock_store *ms = (struct mock_store *)s;
    int64_t ns = kiln__monotonic_ns() + (int64_t)timeout_ms * 1000000;
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    bool held;

    pthread_mutex_lock(&ms->mu);
    while (ms->held == 0 &&
           pthread_cond_timedwait(&ms->cond, &ms->mu, &ts) == 0)
        ;
    held = ms->held > 0;
    pthread_mutex_unlock(&ms->mu);
    return held;
}

void kiln__mock_store_bulks(kiln__store *s, size_t *calls, size_t *largest)
{
    struct mock_store *ms = (struct mock_store *)s;

    pthread_mutex_lock(&ms->mu);
    *calls = ms->bulks;
    *largest = ms->bulk_max;
    pthread_mutex_unlock(&ms->mu);
}

kiln__store *kiln__mock_store_new(kiln_error *err)
{
    struct mock_store *ms = kiln__calloc(1, sizeof(*ms));
    pthread_condattr_t attr;
    bool cond_ok = false;

    if (ms == NULL || (ms->buckets = kiln__calloc(16, sizeof(void *))) == NULL)
        goto nomem;
    ms->nbuckets = 16;
    if (pthread_condattr_init(&attr) == 0) {
        cond_ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
                  pthread_cond_init(&ms->cond, &attr) == 0;
        (void)pthread_condattr_destroy(&attr);
    }
    if (!cond_ok)
        goto nomem;
    if (pthread_mutex_init(&ms->mu, NULL) != 0) {
        (void)pthread_cond_destroy(&ms->cond);
        goto nomem;
    }
    ms->base.ops = &ms_ops;
    return &ms->base;
nomem:
    if (ms != NULL)
        kiln__free(ms->buckets);
    kiln__free(ms);
    kiln__fail(err, KILN_ENOMEM, "mock store");
    return NULL;
}

size_t kiln__mock_store_count(kiln__store *s, int state)
{
    struct mock_store *ms = (struct mock_store *)s;
    size_t n = 0;

    pthread_mutex_lock(&ms->mu);
    if (state < 0)
        n = ms->count;
    else if (state <= KILN__STATE_LAST)
        n = ms->per_state[state];
    pthread_mutex_unlock(&ms->mu);
    return n;
}

void kiln__mock_store_fail_writes(kiln__store *s, unsigned count)
{
    struct mock_store *ms = (struct mock_store *)s;

    pthread_mutex_lock(&ms->mu);
    ms->fail_writes = count;
    pthread_mutex_unlock(&ms->mu);
}

kiln_err kiln__mock_store_wait_finished(kiln__store *s, const char *uuid,
                                        int timeout_ms)
{
    struct mock_store *ms = (struct mock_store *)s;
    uint64_t h = kiln__hash_str(uuid);
    int64_t ns = kiln__monotonic_ns() + (int64_t)timeout_ms * 1000000;
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    kiln_err rc = KILN_OK;
    struct entry *e;

    pthread_mutex_lock(&ms->mu);
    while ((e = lookup(ms, uuid, h)) == NULL ||
           !kiln__state_finished(e->rec.state)) {
        if (pthread_cond_timedwait(&ms->cond, &ms->mu, &ts) != 0) {
            rc = KILN_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

void kiln__mock_store_set_down(kiln__store *s, bool down)
{
    struct mock_store *ms = (struct mock_store *)s;

    pthread_mutex_lock(&ms->mu);
    ms->down = down;
    pthread_mutex_unlock(&ms->mu);
}

unsigned kiln__mock_store_failed_while_down(kiln__store *s)
{
    struct mock_store *ms = (struct mock_store *)s;
    unsigned n;

    pthread_mutex_lock(&ms->mu);
    n = ms->failed_while_down;
    pthread_mutex_unlock(&ms->mu);
    return n;
}
