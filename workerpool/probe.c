/* Before a delayed task is sent: is its destination bound on the delay
 * cascade? A delayed message is confirmed into a level queue whether or
 * not any queue will ever receive it, so the producer asks the cascade's
 * probe first (broker/delay.h), once per destination key and batch, and
 * remembers the keys found bound for a while. See dispatch.h. */
#include "broker/delay.h"
#include "workerpool/dispatch.h"

#include <string.h>

void kiln__probe_cache_init(kiln__probe_cache *c)
{
    memset(c->e, 0, sizeof(c->e));
    pthread_mutex_init(&c->mu, NULL);
}

void kiln__probe_cache_destroy(kiln__probe_cache *c)
{
    (void)pthread_mutex_destroy(&c->mu);
}

static bool cache_hit(kiln__probe_cache *c, const char *key, int64_t now)
{
    bool hit = false;

    if (c == NULL)
        return false;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < KILN__PROBE_CACHE && !hit; i++)
        hit = c->e[i].until_ns > now && strcmp(c->e[i].key, key) == 0;
    pthread_mutex_unlock(&c->mu);
    return hit;
}

/* Takes the key's own entry, else the one that expires first. */
static void cache_put(kiln__probe_cache *c, const char *key, int64_t now)
{
    size_t pick = 0;

    if (c == NULL || strlen(key) >= sizeof(c->e[0].key))
        return;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < KILN__PROBE_CACHE; i++) {
        if (strcmp(c->e[i].key, key) == 0) {
            pick = i;
            break;
        }
        if (c->e[i].until_ns < c->e[pick].until_ns)
            pick = i;
    }
    kiln__strlcpy(c->e[pick].key, key, sizeof(c->e[pick].key));
    c->e[pick].until_ns = now + (int64_t)KILN__PROBE_TTL_MS * 1000000;
    pthread_mutex_unlock(&c->mu);
}

/* The destination key of staged signature `o` when it goes through the
 * cascade (borrowed from its routing key), else NULL. */
static const char *delayed_dest(const kiln_config *cfg, const kiln__staged *o)
{
    const char *dest;

    if (o->rc != KILN_OK || o->exchange[0] == '\0' ||
        kiln__delay_parse(cfg, o->routing_key, NULL, &dest, NULL) != KILN_OK)
        return NULL;
    return dest;
}

/* The probe of `key` among probes[0..n), or n. */
static size_t find(const kiln__message *probes, size_t n, const char *key)
{
    for (size_t p = 0; p < n; p++)
        if (strcmp(probes[p].routing_key, key) == 0)
            return p;
    return n;
}

/* Signature i's probe `st` failed: why, for `err`. `why` is the reason of
 * the publish's lowest failure, which is this probe's: a lower failed
 * probe would have failed a lower signature. */
static void describe(const kiln_config *cfg, const kiln_signature *sig,
                     size_t i, const char *key, kiln_err st, const char *why,
                     kiln_error *err)
{
    if (st == KILN_EBROKER && strstr(why, "NO_ROUTE") != NULL)
        (void)kiln__fail(err, st,
                         "task %zu (%s): no queue is bound for routing key "
                         "'%s' on the delay queues '%s', so a task with an "
                         "ETA would never arrive: declare the queue first (a "
                         "kiln worker for it does)",
                         i, kiln_signature_name(sig), key, cfg->delay_exchange);
    else
        (void)kiln__fail(err, st,
                         "task %zu (%s): checking that routing key '%s' is "
                         "bound on the delay queues: %s",
                         i, kiln_signature_name(sig), key, why);
}

/* Publishes the `np` probes and fails the signatures whose probe failed. */
static void settle(const kiln_config *cfg, const kiln__prober *pr,
                   const kiln_signature *const *sigs, size_t from, size_t n,
                   kiln__staged *out, const kiln__message *probes, kiln_err *st,
                   size_t np, size_t *first, kiln_error *err)
{
    int64_t now = kiln__monotonic_ns();
    kiln_error e;

    for (size_t p = 0; p < np; p++)
        st[p] = KILN_ETIMEDOUT; /* what a probe nobody settled is */
    e.message[0] = '\0';
    if (pr->publish(pr->ctx, probes, np, st, &e) == KILN_OK)
        e.message[0] = '\0';
    for (size_t p = 0; p < np; p++)
        if (st[p] == KILN_OK)
            cache_put(pr->cache, probes[p].routing_key, now);
    for (size_t i = from; i < n; i++) {
        const char *dest = delayed_dest(cfg, &out[i]);
        size_t p = dest != NULL ? find(probes, np, dest) : np;
        if (p == np || st[p] == KILN_OK)
            continue;
        out[i].rc = st[p];
        if (i < *first) {
            describe(cfg, sigs[i], i, dest, st[p], e.message, err);
            *first = i;
        }
    }
}

void kiln__probe_staged(const kiln_config *cfg, const kiln__prober *pr,
                        const kiln_signature *const *sigs, size_t from,
                        size_t n, kiln__staged *out, size_t *first,
                        kiln_error *err)
{
    char exchange[KILN_NAME_MAX];
    kiln__message *probes = NULL;
    kiln_err *st;
    int64_t now = kiln__monotonic_ns();
    size_t np = 0;

    /* It cannot fail where routing into the cascade succeeded. */
    if (kiln__delay_probe(cfg, exchange, sizeof(exchange), NULL) != KILN_OK)
        return;
    for (size_t i = from; i < n; i++) {
        const char *dest = delayed_dest(cfg, &out[i]);
        if (dest == NULL || cache_hit(pr->cache, dest, now))
            continue;
        if (probes == NULL &&
            (probes = kiln__calloc(n - i, sizeof(*probes) + sizeof(*st))) ==
                NULL) {
            /* Not checked is not sent. */
            out[i].rc = KILN_ENOMEM;
            if (i < *first) {
                (void)kiln__fail(err, KILN_ENOMEM,
                                 "task %zu (%s): probing the delay queues", i,
                                 kiln_signature_name(sigs[i]));
                *first = i;
            }
            continue;
        }
        if (find(probes, np, dest) < np)
            continue;
        /* Empty and transient: a probe is never kept or delivered. */
        probes[np++] = (kiln__message){
            .exchange = exchange, .routing_key = dest, .persistent = false};
    }
    if (np == 0) {
        kiln__free(probes);
        return;
    }
    /* One block: probes first, then their statuses (alignments decrease). */
    st = (kiln_err *)(void *)(probes + np);
    settle(cfg, pr, sigs, from, n, out, probes, st, np, first, err);
    kiln__free(probes);
}
