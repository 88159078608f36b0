/* The registry: task name -> function, user data and its destructor.
 *
 * An open-addressing hash table (linear probing, power-of-two capacity,
 * load at most one half) under a read-write lock. A look-up is on every
 * task's path: it hashes the name once, takes the read lock and allocates
 * nothing. Names are never removed, so a function and its user pointer,
 * once looked up, stay valid until the registry is freed; the task runs
 * with no registry lock held. */
#ifdef __linux__
#define _GNU_SOURCE  /* pthread_rwlockattr_setkind_np: writers must not starve \
                      */
#endif

#include "logger/logger.h"
#include "task/task.h"

#include <pthread.h>
#include <string.h>

struct slot {
    char *name; /* owned; NULL = empty slot */
    uint64_t hash;
    kiln_task_fn fn;
    void *user;
    void (*user_free)(void *);
    unsigned time_limit_ms; /* 0: the pool's default */
};

struct kiln_registry {
    pthread_rwlock_t lock; /* readers: look-ups; writer: add, grow */
    struct slot *slots;
    size_t cap; /* 0 or a power of two */
    size_t count;
};

#define MIN_CAP 16

/* The slot holding `name`, or the empty slot where it would go. The table
 * is never full (load <= 1/2), so the probe ends. */
static struct slot *probe(struct slot *slots, size_t cap, const char *name,
                          uint64_t h)
{
    size_t mask = cap - 1;

    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct slot *s = &slots[i];
        if (s->name == NULL || (s->hash == h && strcmp(s->name, name) == 0))
            return s;
    }
}

static const struct slot *find(const kiln_registry *reg, const char *name)
{
    const struct slot *s;

    if (reg->cap == 0)
        return NULL;
    s = probe(reg->slots, reg->cap, name, kiln__hash_str(name));
    return s->name != NULL ? s : NULL;
}

/* Makes room for `extra` more names. Caller holds the write lock. */
static kiln_err reserve(kiln_registry *reg, size_t extra, kiln_error *err)
{
    size_t need = reg->count + extra, cap = reg->cap ? reg->cap : MIN_CAP;
    struct slot *slots;

    if (need > SIZE_MAX / 4)
        return kiln__fail(err, KILN_ENOMEM, "registry: too many names");
    while (cap < need * 2)
        cap *= 2;
    if (cap == reg->cap)
        return KILN_OK;
    if ((slots = kiln__calloc(cap, sizeof(*slots))) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "registry: %zu slots", cap);
    for (size_t i = 0; i < reg->cap; i++) {
        const struct slot *old = &reg->slots[i];
        if (old->name != NULL)
            *probe(slots, cap, old->name, old->hash) = *old;
    }
    kiln__free(reg->slots);
    reg->slots = slots;
    reg->cap = cap;
    return KILN_OK;
}

kiln_registry *kiln_registry_new(kiln_error *err)
{
    kiln_registry *reg;
    pthread_rwlockattr_t attr;
    int rc;

    if ((reg = kiln__calloc(1, sizeof(*reg))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "registry");
        return NULL;
    }
    if (pthread_rwlockattr_init(&attr) != 0) {
        kiln__free(reg);
        kiln__fail(err, KILN_ENOMEM, "registry: lock attributes");
        return NULL;
    }
#ifdef __GLIBC__
    (void)pthread_rwlockattr_setkind_np(
        &attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    rc = pthread_rwlock_init(&reg->lock, &attr);
    (void)pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
        kiln__free(reg);
        kiln__fail(err, KILN_ENOMEM, "registry: lock (error %d)", rc);
        return NULL;
    }
    return reg;
}

void kiln_registry_free(kiln_registry *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = 0; i < reg->cap; i++) {
        struct slot *s = &reg->slots[i];
        if (s->name == NULL)
            continue;
        if (s->user_free != NULL)
            s->user_free(s->user);
        kiln__free(s->name);
    }
    kiln__free(reg->slots);
    (void)pthread_rwlock_destroy(&reg->lock);
    kiln__free(reg);
}

/* Checks row `i` against the registry and the rows before it. Caller holds
 * the write lock. */
static kiln_err check_row(const kiln_registry *reg, const kiln_task_def *defs,
                          size_t i, kiln_error *err)
{
    const kiln_task_def *d = &defs[i];

    if (d->name == NULL || d->name[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "task %zu: empty name", i);
    if (d->fn == NULL)
        return kiln__fail(err, KILN_EINVAL, "task '%s': no function", d->name);
    if (find(reg, d->name) != NULL)
        return kiln__fail(err, KILN_EEXIST, "task '%s' is already registered",
                          d->name);
    for (size_t j = 0; j < i; j++)
        if (strcmp(defs[j].name, d->name) == 0)
            return kiln__fail(err, KILN_EEXIST, "task '%s' appears twice",
                              d->name);
    return KILN_OK;
}

/* Validates, copies and inserts every row, or changes nothing. Caller holds
 * the write lock. Growing the table first means no insert can fail once the
 * names are copied. */
static kiln_err add_locked(kiln_registry *reg, const kiln_task_def *defs,
                           size_t n, kiln_error *err)
{
    char **names;
    kiln_err rc;
    size_t i;

    for (i = 0; i < n; i++)
        if ((rc = check_row(reg, defs, i, err)) != KILN_OK)
            return rc;
    if ((names = kiln__calloc(n, sizeof(*names))) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "registry: %zu names", n);
    for (i = 0; i < n; i++)
        if ((names[i] = kiln__strdup(defs[i].name)) == NULL)
            break;
    if (i < n || (rc = reserve(reg, n, err)) != KILN_OK) {
        for (size_t j = 0; j < i; j++)
            kiln__free(names[j]);
        kiln__free(names);
        return i < n ? kiln__fail(err, KILN_ENOMEM, "registry: name copy") : rc;
    }
    for (i = 0; i < n; i++) {
        uint64_t h = kiln__hash_str(names[i]);
        *probe(reg->slots, reg->cap, names[i], h) = (struct slot){
            names[i], h, defs[i].fn, defs[i].user, defs[i].user_free, 0};
    }
    reg->count += n;
    kiln__free(names);
    return KILN_OK;
}

kiln_err kiln_registry_add_table(kiln_registry *reg, const kiln_task_def *defs,
                                 size_t n, kiln_error *err)
{
    kiln_err rc;

    if (reg == NULL || (defs == NULL && n > 0))
        return kiln__fail(err, KILN_EINVAL, "registry and defs are required");
    if (n == 0)
        return KILN_OK;
    if (pthread_rwlock_wrlock(&reg->lock) != 0)
        return kiln__fail(err, KILN_EINVAL, "registry: lock failed");
    rc = add_locked(reg, defs, n, err);
    (void)pthread_rwlock_unlock(&reg->lock);
    if (rc == KILN_OK)
        for (size_t i = 0; i < n; i++)
            kiln__log(KILN_LOG_DEBUG, "registry", "registered task=%s",
                      defs[i].name);
    return rc;
}

kiln_err kiln_registry_add(kiln_registry *reg, const char *name,
                           kiln_task_fn fn, void *user,
                           void (*user_free)(void *), kiln_error *err)
{
    kiln_task_def def = {name, fn, user, user_free};

    return kiln_registry_add_table(reg, &def, 1, err);
}

kiln_err kiln__registry_find(const kiln_registry *reg, const char *name,
                             kiln_task_fn *fn, void **user,
                             unsigned *time_limit_ms)
{
    kiln_registry *r =
        (kiln_registry *)reg; /* the lock is not logically state */
    const struct slot *s;

    if (reg == NULL || name == NULL)
        return KILN_ENOHANDLER;
    if (pthread_rwlock_rdlock(&r->lock) != 0)
        return KILN_ENOHANDLER;
    if ((s = find(reg, name)) != NULL) {
        if (fn != NULL)
            *fn = s->fn;
        if (user != NULL)
            *user = s->user;
        if (time_limit_ms != NULL)
            *time_limit_ms = s->time_limit_ms;
    }
    (void)pthread_rwlock_unlock(&r->lock);
    return s != NULL ? KILN_OK : KILN_ENOHANDLER;
}

kiln_err kiln_registry_lookup(const kiln_registry *reg, const char *name,
                              kiln_task_fn *fn, void **user)
{
    return kiln__registry_find(reg, name, fn, user, NULL);
}

kiln_err kiln_registry_set_time_limit(kiln_registry *reg, const char *name,
                                      unsigned time_limit_ms, kiln_error *err)
{
    struct slot *s;

    if (reg == NULL || name == NULL)
        return kiln__fail(err, KILN_EINVAL, "registry and name are required");
    if (pthread_rwlock_wrlock(&reg->lock) != 0)
        return kiln__fail(err, KILN_EINVAL, "registry lock");
    s = (struct slot *)find(reg, name);
    if (s != NULL)
        s->time_limit_ms = time_limit_ms;
    (void)pthread_rwlock_unlock(&reg->lock);
    if (s == NULL)
        return kiln__fail(err, KILN_ENOHANDLER,
                          "no task registered under '%.200s'", name);
    return KILN_OK;
}

size_t kiln_registry_count(const kiln_registry *reg)
{
    kiln_registry *r = (kiln_registry *)reg;
    size_t n;

    if (reg == NULL || pthread_rwlock_rdlock(&r->lock) != 0)
        return 0;
    n = reg->count;
    (void)pthread_rwlock_unlock(&r->lock);
    return n;
}

/* Turns a finished context into the caller's outputs. */
static kiln_err finish_run(kiln_task_ctx *ctx, kiln_err rc,
                           kiln_signature **results, kiln_error *err)
{
    if (rc == KILN_ETASK)
        return kiln__fail(err, KILN_ETASK, "%s",
                          ctx->failure.code == KILN_ETASK
                              ? ctx->failure.message
                              : kiln_strerror(KILN_ETASK));
    if (rc == KILN_ERETRY)
        return kiln__fail(err, KILN_ERETRY,
                          "task asked to be retried in %llu ms",
                          (unsigned long long)ctx->retry_delay_ms);
    if (rc != KILN_OK)
        return kiln__fail(err, rc, "task returned: %s", kiln_strerror(rc));
    if (results != NULL) {
        if ((*results = kiln__signature_alloc(err)) == NULL)
            return KILN_ENOMEM;
        /* The values move; the context keeps none. */
        (*results)->args = ctx->results.args;
        memset(&ctx->results.args, 0, sizeof(ctx->results.args));
    }
    kiln__ok(err);
    return KILN_OK;
}

kiln_err kiln_registry_run(const kiln_registry *reg, const kiln_signature *sig,
                           kiln_signature **results, kiln_error *err)
{
    kiln_task_ctx ctx;
    kiln_task_fn fn;
    void *user;
    kiln_err rc;

    if (results != NULL)
        *results = NULL;
    if (reg == NULL || sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "registry and sig are required");
    if (kiln_registry_lookup(reg, sig->name, &fn, &user) != KILN_OK)
        return kiln__fail(err, KILN_ENOHANDLER, "no task registered under '%s'",
                          sig->name);
    if ((rc = kiln__task_ctx_init(&ctx, sig, err)) != KILN_OK)
        return rc;
    rc = finish_run(&ctx, fn(&ctx, user), results, err);
    kiln__task_ctx_release(&ctx);
    return rc;
}
