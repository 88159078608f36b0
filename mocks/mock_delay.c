/* The in-memory broker's delay cascade: a message published to one of a
 * declared cascade's exchanges (broker/delay.h) is held until its delay
 * has passed on the mock clock, then routed by its destination routing
 * key to the queues bound on the cascade's delivery exchange, as the
 * levels of TTL queues on RabbitMQ would pass it down. The mock keeps one
 * list sorted by due time instead of the levels; broker/delay.c and
 * test/test_delay.c check the levels themselves. The probe and the
 * unroutable queue are modelled as declared: the probe queue is a sink
 * bound with each destination key, the unroutable queue the delivery
 * exchange's alternate exchange's. The lock rule is in
 * mocks/mock_internal.h. */
#include "mocks/mock_internal.h"

#include "broker/delay.h"

#include <string.h>

static int64_t mock_now_ms(const kiln__mock_server *srv)
{
    return kiln__monotonic_ns() / 1000000 + srv->offset_ms;
}

static bool same_cascade(const kiln_config *a, const kiln_config *b)
{
    return strcmp(a->delay_exchange, b->delay_exchange) == 0 &&
           a->delay_queue_type == b->delay_queue_type &&
           a->delay_levels == b->delay_levels;
}

/* Caller holds srv->mu. */
static kiln_err add_cascade(kiln__mock_server *srv, const kiln_config *cfg,
                            kiln_error *err)
{
    struct cascade *c;

    for (size_t i = 0; i < srv->ncasc; i++) {
        c = &srv->cascades[i];
        if (!same_cascade(&c->cfg, cfg))
            continue;
        if (c->cfg.delay_unit_ms != cfg->delay_unit_ms)
            return kiln__fail(err, KILN_EBROKER,
                              "406 PRECONDITION_FAILED - inequivalent arg "
                              "'x-message-ttl' for the delay queues '%s' "
                              "(KILN_DELAY_UNIT_MS=%u sets it, they have %u)",
                              cfg->delay_exchange, cfg->delay_unit_ms,
                              c->cfg.delay_unit_ms);
        return KILN_OK;
    }
    if (srv->ncasc == srv->capcasc) {
        size_t cap = srv->capcasc ? srv->capcasc * 2 : 2;
        void *p = kiln__realloc(srv->cascades, cap * sizeof(*c));
        if (p == NULL)
            return kiln__fail(err, KILN_ENOMEM, "mock broker: delay queues");
        srv->cascades = p;
        srv->capcasc = cap;
    }
    c = &srv->cascades[srv->ncasc];
    c->cfg = *cfg;
    if (kiln__delay_delivery(cfg, c->delivery, sizeof(c->delivery), err) !=
        KILN_OK)
        return err != NULL ? err->code : KILN_EINVAL;
    srv->ncasc++;
    return KILN_OK;
}

/* The unroutable queue as the delivery exchange's alternate, the
 * destination binding and the probe's, in the AMQP declare's order. The
 * mock matches keys exactly, so the bindings hold the bare destination
 * key and routing strips the delay words first. Caller holds srv->mu. */
static kiln_err declare_ends(kiln__mock_server *srv, const kiln_config *cfg,
                             const char *delivery, kiln_error *err)
{
    char probe[KILN_NAME_MAX], unroutable[KILN_NAME_MAX];
    const char *key = kiln__delay_dest_key(cfg);
    kiln_err rc;

    if ((rc = kiln__delay_probe(cfg, probe, sizeof(probe), err)) != KILN_OK ||
        (rc = kiln__delay_unroutable(cfg, unroutable, sizeof(unroutable),
                                     err)) != KILN_OK ||
        (rc = kiln__mock_bind_locked(srv, unroutable, "#", unroutable, err)) !=
            KILN_OK ||
        (rc = kiln__mock_set_alternate(srv, delivery, unroutable, err)) !=
            KILN_OK ||
        (rc = kiln__mock_make_sink(srv, probe, err)) != KILN_OK ||
        (rc = kiln__mock_bind_locked(srv, delivery, key, cfg->queue, err)) !=
            KILN_OK)
        return rc;
    return kiln__mock_bind_locked(srv, probe, key, probe, err);
}

kiln_err kiln__mock_server_declare_delay(kiln__mock_server *srv,
                                         const kiln_config *cfg,
                                         kiln_error *err)
{
    char delivery[KILN_NAME_MAX], key[KILN_NAME_MAX];
    kiln_err rc;

    if (srv == NULL || cfg == NULL)
        return kiln__fail(err, KILN_EINVAL, "mock broker: declare arguments");
    /* The same checks the AMQP declare makes, so a key too long for the
     * levels fails here too. */
    if ((rc = kiln__delay_delivery(cfg, delivery, sizeof(delivery), err)) !=
            KILN_OK ||
        (rc = kiln__delay_dest_binding(cfg, kiln__delay_dest_key(cfg), key,
                                       sizeof(key), err)) != KILN_OK)
        return rc;
    pthread_mutex_lock(&srv->mu);
    rc = add_cascade(srv, cfg, err);
    if (rc == KILN_OK)
        rc = declare_ends(srv, cfg, delivery, err);
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

/* Inserts `m` after every held message due no later, so equal delays
 * keep their order. */
static void hold(kiln__mock_server *srv, struct msg *m)
{
    struct msg **p = &srv->held;

    while (*p != NULL && (*p)->due_ms <= m->due_ms)
        p = &(*p)->next;
    m->next = *p;
    *p = m;
    srv->n_held++;
}

static kiln_err no_route(const kiln__message *m, kiln_error *err)
{
    return kiln__fail(err, KILN_EBROKER,
                      "returned: 312 NO_ROUTE (exchange '%s', routing key "
                      "'%s')",
                      m->exchange, m->routing_key);
}

/* Held or delivered message `m` of cascade `ci`, waiting `units` more. */
static kiln_err take(kiln__mock_server *srv, size_t ci, const kiln__message *m,
                     uint64_t units, const char *dest, kiln_error *err)
{
    const struct cascade *c = &srv->cascades[ci];
    kiln__message view = *m;
    kiln__delay_level lv;
    struct msg *copy;
    size_t n = 0;
    kiln_err rc;
    unsigned low = 0;

    if (units == 0) {
        /* Routed: to the unroutable queue when no destination is bound. */
        if ((rc = kiln__mock_deliver(srv, c->delivery, dest, &view, &n, err)) !=
            KILN_OK)
            return rc;
        return n > 0 ? KILN_OK : no_route(m, err);
    }
    /* A consumer sees the exchange the last level it waited in (that of
     * the lowest set bit) dead-lettered it to, as on RabbitMQ. */
    while (((units >> low) & 1u) == 0)
        low++;
    if ((rc = kiln__delay_level_get(&c->cfg, low, &lv, err)) != KILN_OK)
        return rc;
    view.exchange = lv.next;
    if ((copy = kiln__mock_msg_pack(&view)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mock broker: delayed message");
    copy->queue = ci;
    copy->due_ms = mock_now_ms(srv) + (int64_t)(units * c->cfg.delay_unit_ms);
    hold(srv, copy);
    return KILN_OK;
}

kiln_err kiln__mock_route_delay(kiln__mock_server *srv, const kiln__message *m,
                                bool *taken, kiln_error *err)
{
    *taken = false;
    for (size_t i = 0; i < srv->ncasc; i++) {
        const kiln_config *cfg = &srv->cascades[i].cfg;
        const char *dest;
        uint64_t units;
        int level;

        kiln__delay_level lv;

        /* Only this cascade's type: the other type's levels are other
         * exchanges, which need a declare of their own. */
        if (!kiln__delay_exchange_level(cfg, m->exchange, &level) ||
            (level >= 0 && (kiln__delay_level_get(cfg, (unsigned)level, &lv,
                                                  NULL) != KILN_OK ||
                            strcmp(lv.name, m->exchange) != 0)))
            continue;
        *taken = true;
        /* A key that does not spell a delay matches no level binding. */
        if (kiln__delay_parse(cfg, m->routing_key, &units, &dest, NULL) !=
            KILN_OK)
            return no_route(m, err);
        /* Level k's exchange routes on bits 0..k only. */
        units &= level < 0 ? 0 : (2ull << level) - 1;
        return take(srv, i, m, units, dest, err);
    }
    return KILN_OK;
}

void kiln__mock_release_due(kiln__mock_server *srv)
{
    int64_t now = mock_now_ms(srv);
    bool moved = false;

    while (srv->held != NULL && srv->held->due_ms <= now) {
        struct msg *h = srv->held;
        const struct cascade *c = &srv->cascades[h->queue];
        kiln__message view = kiln__mock_msg_view(h);
        const char *dest = "";
        size_t n;

        (void)kiln__delay_parse(&c->cfg, h->routing_key, NULL, &dest, NULL);
        /* Out of memory: keep it held and try again on the next call. */
        if (kiln__mock_deliver(srv, c->delivery, dest, &view, &n, NULL) !=
            KILN_OK)
            break;
        srv->held = h->next;
        srv->n_held--;
        kiln__free(h);
        moved = true;
    }
    if (moved)
        pthread_cond_broadcast(&srv->cond);
}

bool kiln__mock_next_due(const kiln__mock_server *srv, struct timespec *ts)
{
    int64_t ns;

    if (srv->held == NULL)
        return false;
    ns = (srv->held->due_ms - srv->offset_ms) * 1000000;
    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
    return true;
}

void kiln__mock_server_advance(kiln__mock_server *srv, int64_t ms)
{
    pthread_mutex_lock(&srv->mu);
    srv->offset_ms += ms > 0 ? ms : 0;
    kiln__mock_release_due(srv);
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
}

size_t kiln__mock_server_delayed(kiln__mock_server *srv)
{
    size_t n;

    pthread_mutex_lock(&srv->mu);
    kiln__mock_release_due(srv);
    n = srv->n_held;
    pthread_mutex_unlock(&srv->mu);
    return n;
}
