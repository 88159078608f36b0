/* Declaring the binary delay cascade (broker/delay.h) on connect: the
 * unroutable pair, the delivery exchange (with the unroutable exchange as
 * its alternate exchange), the probe pair, every level's exchange, queue
 * and two bindings, the task queue's binding on the delivery exchange and
 * the probe queue's binding for the same key.
 *
 * That is 4 x KILN_DELAY_LEVELS + 8 methods on every connect of every
 * connection. They go out with nowait, one after the other, and only the
 * last (the probe binding) waits for its reply: RabbitMQ runs a
 * channel's methods in order, so that reply means every one before it
 * was applied, and a refused one closes the channel instead, with a
 * message naming the queue or exchange at fault. One round trip instead
 * of 130. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "broker/delay.h"
#include "logger/logger.h"

#include <stdio.h>
#include <string.h>

static amqp_table_entry_t word_arg(const char *key, const char *value)
{
    amqp_table_entry_t e;

    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(value);
    return e;
}

static kiln_err send(kiln__amqp *b, amqp_method_number_t id, void *method,
                     kiln_error *err)
{
    int s = amqp_send_method(b->conn, KILN__AMQP_CHANNEL, id, method);

    if (s != AMQP_STATUS_OK)
        return kiln__amqp_fail_status(b, s, err, "declare delay queues");
    return KILN_OK;
}

static kiln_err send_exchange_args(kiln__amqp *b, const char *name,
                                   const char *type, amqp_table_t args,
                                   kiln_error *err)
{
    amqp_exchange_declare_t m = {0};

    m.exchange = amqp_cstring_bytes(name);
    m.type = amqp_cstring_bytes(type);
    m.durable = 1;
    m.nowait = 1;
    m.arguments = args;
    return send(b, AMQP_EXCHANGE_DECLARE_METHOD, &m, err);
}

static kiln_err send_exchange(kiln__amqp *b, const char *name, kiln_error *err)
{
    return send_exchange_args(b, name, "topic", amqp_empty_table, err);
}

static kiln_err send_bind(kiln__amqp *b, const char *queue,
                          const char *exchange, const char *key,
                          kiln_error *err)
{
    amqp_queue_bind_t qb = {0};

    qb.queue = amqp_cstring_bytes(queue);
    qb.exchange = amqp_cstring_bytes(exchange);
    qb.routing_key = amqp_cstring_bytes(key);
    qb.nowait = 1;
    qb.arguments = amqp_empty_table;
    return send(b, AMQP_QUEUE_BIND_METHOD, &qb, err);
}

/* A durable classic queue named like its exchange, bound to it with
 * `key`. The type is said explicitly: these queues are shared by classic
 * and quorum cascades, so every declare must ask for the same. */
static kiln_err send_classic_pair(kiln__amqp *b, const char *name,
                                  const char *type, amqp_table_entry_t *args,
                                  int n_args, const char *key, kiln_error *err)
{
    amqp_queue_declare_t m = {0};
    kiln_err rc;

    if ((rc = send_exchange_args(b, name, type, amqp_empty_table, err)) !=
        KILN_OK)
        return rc;
    args[n_args++] = word_arg("x-queue-type", "classic");
    m.queue = amqp_cstring_bytes(name);
    m.durable = 1;
    m.nowait = 1;
    m.arguments = (amqp_table_t){n_args, args};
    if ((rc = send(b, AMQP_QUEUE_DECLARE_METHOD, &m, err)) != KILN_OK)
        return rc;
    return key != NULL ? send_bind(b, name, name, key, err) : KILN_OK;
}

/* The unroutable pair, then the delivery exchange with it as alternate
 * exchange (as it is, when an earlier kiln made it without: `plain`),
 * then the probe pair (its binding for cfg->queue comes last, with the
 * delivery binding). */
static kiln_err send_ends(kiln__amqp *b, const char *delivery,
                          const char *probe, const char *unroutable, bool plain,
                          kiln_error *err)
{
    amqp_table_entry_t args[3], ae = word_arg("alternate-exchange", unroutable);
    amqp_table_t ends = plain ? amqp_empty_table : (amqp_table_t){1, &ae};
    kiln_err rc;

    if ((rc = send_classic_pair(b, unroutable, "fanout", args, 0, "", err)) !=
            KILN_OK ||
        (rc = send_exchange_args(b, delivery, "topic", ends, err)) != KILN_OK)
        return rc;
    /* Keeps nothing: a message routed here is dropped at once, and still
     * confirmed as routed (reject-publish would nack it). */
    args[0].key = amqp_cstring_bytes("x-max-length");
    args[0].value.kind = AMQP_FIELD_KIND_I64;
    args[0].value.value.i64 = 0;
    args[1] = word_arg("x-overflow", "drop-head");
    return send_classic_pair(b, probe, "topic", args, 2, NULL, err);
}

/* A classic level dead-letters at most once, like every classic queue: a
 * message whose step falls due as the broker stops can be lost. A quorum
 * level dead-letters at least once (RabbitMQ 3.10+): it keeps a message
 * until the next level (or the task queue) confirmed it, which needs
 * reject-publish overflow. A message the delivery exchange cannot route
 * then stays in its last level (RabbitMQ logs it) instead of being
 * dropped. */
static kiln_err send_queue(kiln__amqp *b, const kiln_config *cfg,
                           const kiln__delay_level *lv, kiln_error *err)
{
    amqp_queue_declare_t m = {0};
    amqp_table_entry_t args[5];
    size_t n = 0;

    args[n].key = amqp_cstring_bytes("x-message-ttl");
    args[n].value.kind = AMQP_FIELD_KIND_I64;
    args[n++].value.value.i64 = (int64_t)lv->ttl_ms;
    args[n++] = word_arg("x-dead-letter-exchange", lv->next);
    if (cfg->delay_queue_type == KILN_QUEUE_QUORUM) {
        args[n++] = word_arg("x-queue-type", "quorum");
        args[n++] = word_arg("x-dead-letter-strategy", "at-least-once");
        args[n++] = word_arg("x-overflow", "reject-publish");
    }
    m.queue = amqp_cstring_bytes(lv->name);
    m.durable = 1;
    m.nowait = 1;
    m.arguments = (amqp_table_t){(int)n, args};
    return send(b, AMQP_QUEUE_DECLARE_METHOD, &m, err);
}

static kiln_err send_level(kiln__amqp *b, const kiln_config *cfg,
                           const kiln__delay_level *lv, kiln_error *err)
{
    amqp_exchange_bind_t xb = {0};
    kiln_err rc;

    if ((rc = send_exchange(b, lv->name, err)) != KILN_OK ||
        (rc = send_queue(b, cfg, lv, err)) != KILN_OK ||
        (rc = send_bind(b, lv->name, lv->name, lv->queue_key, err)) != KILN_OK)
        return rc;
    xb.destination = amqp_cstring_bytes(lv->next);
    xb.source = amqp_cstring_bytes(lv->name);
    xb.routing_key = amqp_cstring_bytes(lv->next_key);
    xb.nowait = 1;
    xb.arguments = amqp_empty_table;
    return send(b, AMQP_EXCHANGE_BIND_METHOD, &xb, err);
}

/* The setting behind a refused argument, in the config's words. */
static void hint_for(const char *arg, const kiln_config *cfg, char *out,
                     size_t n)
{
    if (strcmp(arg, "x-message-ttl") == 0)
        (void)snprintf(out, n,
                       "KILN_DELAY_UNIT_MS=%u sets it; delete the old delay "
                       "queues or set another KILN_DELAY_EXCHANGE%s",
                       cfg->delay_unit_ms,
                       cfg->delay_queue_type == KILN_QUEUE_QUORUM
                           ? "; quorum levels need RabbitMQ 3.10 or later, "
                             "else KILN_DELAY_QUEUE_TYPE=classic"
                           : "");
    else if (strcmp(arg, "alternate-exchange") == 0)
        (void)snprintf(out, n,
                       "from an earlier kiln: delete it once, or set another "
                       "KILN_DELAY_EXCHANGE");
    else if (strcmp(arg, "x-dead-letter-exchange") == 0)
        (void)snprintf(out, n, "KILN_DELAY_EXCHANGE=%s sets it",
                       cfg->delay_exchange);
    else if (strncmp(arg, "x-", 2) == 0)
        (void)snprintf(out, n,
                       "KILN_DELAY_QUEUE_TYPE=%s sets it; quorum levels need "
                       "RabbitMQ 3.10 or later, else set classic",
                       cfg->delay_queue_type == KILN_QUEUE_QUORUM ? "quorum"
                                                                  : "classic");
    else
        (void)snprintf(out, n,
                       "kiln declares delay exchanges topic and durable; set "
                       "another KILN_DELAY_EXCHANGE");
}

/* RabbitMQ says "... arg 'A' for queue 'Q' in vhost 'V': received ...".
 * Put the hint in place of the vhost, before the long detail, so that a
 * cut at the end of err->message keeps it. */
static void explain(kiln_error *err, const kiln_config *cfg)
{
    char arg[64], hint[KILN_NAME_MAX + 96];
    char msg[sizeof(err->message) + sizeof(hint) + 4];
    const char *a, *q, *v, *rest;

    if (err == NULL || (a = strstr(err->message, " arg '")) == NULL)
        return;
    a += strlen(" arg '");
    if ((q = strchr(a, '\'')) == NULL || (size_t)(q - a) >= sizeof(arg))
        return;
    (void)snprintf(arg, sizeof(arg), "%.*s", (int)(q - a), a);
    hint_for(arg, cfg, hint, sizeof(hint));
    v = strstr(q, " in vhost '");
    rest = v != NULL ? strchr(v + strlen(" in vhost '"), '\'') : NULL;
    if (v == NULL || rest == NULL)
        (void)snprintf(msg, sizeof(msg), "%s (%s)", err->message, hint);
    else
        (void)snprintf(msg, sizeof(msg), "%.*s (%s)%s", (int)(v - err->message),
                       err->message, hint, rest + 1);
    kiln__strlcpy(err->message, msg, sizeof(err->message));
}

/* The names of a cascade's entities, as broker/delay.h makes them. */
typedef struct names {
    char delivery[KILN_NAME_MAX], probe[KILN_NAME_MAX],
        unroutable[KILN_NAME_MAX], key[KILN_NAME_MAX];
} names;

/* The whole cascade in one round trip (see the top of the file). */
static kiln_err declare_once(kiln__amqp *b, const kiln_config *cfg,
                             const names *nm, bool plain, kiln_error *err)
{
    char what[KILN_NAME_MAX + 32];
    kiln__delay_level lv;
    kiln_err rc;

    if ((rc = send_ends(b, nm->delivery, nm->probe, nm->unroutable, plain,
                        err)) != KILN_OK)
        return rc;
    for (unsigned k = 0; k < cfg->delay_levels; k++)
        if ((rc = kiln__delay_level_get(cfg, k, &lv, err)) != KILN_OK ||
            (rc = send_level(b, cfg, &lv, err)) != KILN_OK)
            return rc;
    /* The probe binding last: a producer whose probe finds the key finds
     * the delivery binding in place, since a channel's methods apply in
     * order and a refused one stops the rest. */
    if ((rc = send_bind(b, cfg->queue, nm->delivery, nm->key, err)) != KILN_OK)
        return rc;
    (void)amqp_queue_bind(
        b->conn, KILN__AMQP_CHANNEL, amqp_cstring_bytes(nm->probe),
        amqp_cstring_bytes(nm->probe),
        amqp_cstring_bytes(kiln__delay_dest_key(cfg)), amqp_empty_table);
    (void)snprintf(what, sizeof(what), "declare delay queues '%s'",
                   cfg->delay_exchange);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err, what);
    if (rc == KILN_OK)
        return KILN_OK;
    explain(err, cfg);
    /* A refused declare costs the channel: open the next one now, so the
     * object is ready again, as amqp_topology.c does. */
    if (!b->lost && !b->chan_open)
        (void)kiln__amqp_open_channel(b, NULL);
    return rc;
}

kiln_err kiln__amqp_declare_delay(kiln__amqp *b, const kiln_config *cfg,
                                  kiln_error *err)
{
    names nm;
    kiln_err rc;

    if ((rc = kiln__delay_check(cfg, err)) != KILN_OK ||
        (rc = kiln__delay_delivery(cfg, nm.delivery, sizeof(nm.delivery),
                                   err)) != KILN_OK ||
        (rc = kiln__delay_probe(cfg, nm.probe, sizeof(nm.probe), err)) !=
            KILN_OK ||
        (rc = kiln__delay_unroutable(cfg, nm.unroutable, sizeof(nm.unroutable),
                                     err)) != KILN_OK ||
        (rc = kiln__delay_dest_binding(cfg, kiln__delay_dest_key(cfg), nm.key,
                                       sizeof(nm.key), err)) != KILN_OK)
        return rc;
    rc = declare_once(b, cfg, &nm, false, err);
    if (rc != KILN_OK && !b->lost && b->chan_open && err != NULL &&
        strstr(err->message, "'alternate-exchange'") != NULL) {
        /* An earlier kiln made the delivery exchange without an alternate
         * exchange, and RabbitMQ refuses to add one. Work with it as it
         * is: everything but the unroutable queue works. Every connect
         * tries again, so deleting it once is enough. */
        kiln__log(KILN_LOG_WARN, "broker",
                  "delay queues: the delivery exchange '%s' was made by an "
                  "earlier kiln without an alternate exchange; a delayed task "
                  "whose queue is deleted while it waits can hold back its "
                  "delay level until it is deleted once (see the README, "
                  "\"Delayed tasks\")",
                  nm.delivery);
        rc = declare_once(b, cfg, &nm, true, err);
    }
    return rc;
}
