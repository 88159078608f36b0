/* Declaring the topology a kiln service needs: the task exchange, the task
 * queue and its binding, and a dead-letter exchange and queue.
 *
 * The dead-letter exchange is a fanout: whatever routing key a message
 * carries when it is rejected (RabbitMQ keeps the original one), or when a
 * worker sends bad input there itself, it lands in the dead-letter queue,
 * and the original keys stay readable in the x-death header. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"

#include <stdio.h>
#include <string.h>

/* What kiln asked for, to explain a 406 in the config's own words. */
typedef struct want {
    const kiln_config *cfg;
    bool dead_letter; /* declaring the dead-letter exchange or queue */
} want;

static amqp_table_entry_t text_arg(const char *key, const char *value)
{
    amqp_table_entry_t e;

    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(value);
    return e;
}

/* The setting behind argument `arg`, e.g. "from KILN_QUEUE_TYPE=quorum". */
static void hint_for(const char *arg, const want *w, char *out, size_t n)
{
    const kiln_config *c = w->cfg;
    bool quorum = c->queue_type == KILN_QUEUE_QUORUM;

    if (strcmp(arg, "type") == 0 && w->dead_letter)
        (void)snprintf(out, n, "kiln declares dead-letter exchanges fanout");
    else if (strcmp(arg, "type") == 0)
        (void)snprintf(out, n, "from KILN_EXCHANGE_TYPE=%s", c->exchange_type);
    else if (strcmp(arg, "durable") == 0)
        (void)snprintf(out, n, "kiln declares it durable");
    else if (strcmp(arg, "x-queue-type") == 0)
        (void)snprintf(out, n, "from KILN_QUEUE_TYPE=%s",
                       quorum ? "quorum" : "classic");
    else if (strcmp(arg, "x-max-priority") == 0 && !w->dead_letter)
        (void)snprintf(out, n, "from KILN_MAX_PRIORITY=%u", c->max_priority);
    else if (strcmp(arg, "x-dead-letter-exchange") == 0 && !w->dead_letter)
        (void)snprintf(out, n, "from KILN_DEAD_LETTER_EXCHANGE=%s",
                       c->dead_letter_exchange);
    else
        (void)snprintf(out, n, "kiln does not set it here");
}

/* RabbitMQ's 406 text is "inequivalent arg 'A' for queue 'Q' in vhost 'V':
 * received ... but current is ...". The message already names the queue,
 * so drop " for ... in vhost 'V'" to make room for the setting to change. */
static void explain(kiln_error *err, const want *w)
{
    char arg[64], hint[KILN_NAME_MAX + 64];
    char msg[sizeof(err->message) * 2 + sizeof(hint)];
    const char *p, *q, *rest;
    size_t len;

    if (err == NULL || (p = strstr(err->message, "inequivalent arg '")) == NULL)
        return;
    p += strlen("inequivalent arg '");
    if ((q = strchr(p, '\'')) == NULL || (size_t)(q - p) >= sizeof(arg))
        return;
    len = (size_t)(q - p);
    memcpy(arg, p, len);
    arg[len] = '\0';
    hint_for(arg, w, hint, sizeof(hint));
    rest = strstr(q, " in vhost '");
    rest = rest != NULL ? strstr(rest + strlen(" in vhost '"), "'") : NULL;
    rest = rest != NULL ? rest + 1 : q + 1;
    (void)snprintf(msg, sizeof(msg), "%.*s%s (%s)", (int)(q + 1 - err->message),
                   err->message, rest, hint);
    kiln__strlcpy(err->message, msg, sizeof(err->message));
}

/* Every failed declare closes the channel (a 406 or a 404 is a channel
 * error): open the next one now, so the object is ready again. */
static kiln_err check(kiln__amqp *b, const char *method, const char *name,
                      const want *w, kiln_error *err)
{
    char what[KILN_NAME_MAX + 32];
    kiln_err rc;

    (void)snprintf(what, sizeof(what), "%s '%s'", method, name);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err, what);
    if (rc == KILN_OK)
        return KILN_OK;
    explain(err, w);
    if (!b->lost && !b->chan_open)
        (void)kiln__amqp_open_channel(b, NULL);
    return rc;
}

static kiln_err exchange(kiln__amqp *b, const char *name, const char *type,
                         const want *w, kiln_error *err)
{
    (void)amqp_exchange_declare(
        b->conn, KILN__AMQP_CHANNEL, amqp_cstring_bytes(name),
        amqp_cstring_bytes(type), 0 /* passive */, 1 /* durable */,
        0 /* auto-delete */, 0 /* internal */, amqp_empty_table);
    return check(b, "exchange.declare", name, w, err);
}

static kiln_err queue(kiln__amqp *b, const char *name, const want *w,
                      kiln_error *err)
{
    const kiln_config *c = w->cfg;
    amqp_table_entry_t args[3];
    amqp_table_t table = {0, args};

    /* A classic queue is declared without x-queue-type, as machinery and
     * paota declare theirs. */
    if (c->queue_type == KILN_QUEUE_QUORUM)
        args[table.num_entries++] = text_arg("x-queue-type", "quorum");
    if (!w->dead_letter && c->max_priority > 0) {
        amqp_table_entry_t *e = &args[table.num_entries++];
        e->key = amqp_cstring_bytes("x-max-priority");
        e->value.kind = AMQP_FIELD_KIND_I32;
        e->value.value.i32 = (int32_t)c->max_priority;
    }
    if (!w->dead_letter && c->dead_letter_exchange[0] != '\0')
        args[table.num_entries++] =
            text_arg("x-dead-letter-exchange", c->dead_letter_exchange);
    (void)amqp_queue_declare(
        b->conn, KILN__AMQP_CHANNEL, amqp_cstring_bytes(name), 0 /* passive */,
        1 /* durable */, 0 /* exclusive */, 0 /* auto-delete */, table);
    return check(b, "queue.declare", name, w, err);
}

static kiln_err bind(kiln__amqp *b, const char *q, const char *x,
                     const char *key, const want *w, kiln_error *err)
{
    (void)amqp_queue_bind(b->conn, KILN__AMQP_CHANNEL, amqp_cstring_bytes(q),
                          amqp_cstring_bytes(x), amqp_cstring_bytes(key),
                          amqp_empty_table);
    return check(b, "queue.bind", q, w, err);
}

static kiln_err check_config(const kiln_config *c, kiln_error *err)
{
    if (c->queue[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "declare: KILN_QUEUE is empty");
    if (c->exchange[0] != '\0' && c->exchange_type[0] == '\0')
        return kiln__fail(err, KILN_EINVAL,
                          "declare: KILN_EXCHANGE_TYPE is empty");
    if (c->max_priority > 255)
        return kiln__fail(err, KILN_EINVAL,
                          "declare: KILN_MAX_PRIORITY=%u: want 0..255",
                          c->max_priority);
    /* RabbitMQ 3.10 would refuse it too (406 "invalid arg 'x-max-priority'
     * ... of queue type rabbit_quorum_queue"), but only after the dead-letter
     * queue is declared. */
    if (c->queue_type == KILN_QUEUE_QUORUM && c->max_priority > 0)
        return kiln__fail(
            err, KILN_EINVAL,
            "declare: KILN_MAX_PRIORITY=%u needs a classic queue, but "
            "KILN_QUEUE_TYPE=quorum (quorum queues have no priorities)",
            c->max_priority);
    return KILN_OK;
}

static kiln_err dead_letter(kiln__amqp *b, const kiln_config *c,
                            kiln_error *err)
{
    const want w = {c, true};
    const char *dlx = c->dead_letter_exchange, *dlq = c->dead_letter_queue;
    kiln_err rc;

    if (dlx[0] == '\0')
        return KILN_OK;
    if ((rc = exchange(b, dlx, "fanout", &w, err)) != KILN_OK)
        return rc;
    if (dlq[0] == '\0')
        return KILN_OK;
    if ((rc = queue(b, dlq, &w, err)) != KILN_OK)
        return rc;
    return bind(b, dlq, dlx, "", &w, err);
}

kiln_err kiln__amqp_declare(kiln__broker *base, const kiln_config *cfg,
                            kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    const want w = {cfg, false};
    kiln_err rc;

    if (cfg == NULL)
        return kiln__fail(err, KILN_EINVAL, "declare: config is required");
    if ((rc = check_config(cfg, err)) != KILN_OK ||
        (rc = kiln__amqp_ready(b, err)) != KILN_OK)
        return rc;
    /* The dead-letter exchange first, so the queue's x-dead-letter-exchange
     * names something that exists. */
    if ((rc = dead_letter(b, cfg, err)) != KILN_OK ||
        (rc = queue(b, cfg->queue, &w, err)) != KILN_OK)
        return rc;
    /* No exchange: the default exchange routes by queue name. An empty
     * binding key binds with the queue's name. */
    if (cfg->exchange[0] != '\0') {
        const char *key =
            cfg->binding_key[0] != '\0' ? cfg->binding_key : cfg->queue;
        if ((rc = exchange(b, cfg->exchange, cfg->exchange_type, &w, err)) !=
                KILN_OK ||
            (rc = bind(b, cfg->queue, cfg->exchange, key, &w, err)) != KILN_OK)
            return rc;
    }
    if ((rc = kiln__amqp_declare_delay(b, cfg, err)) != KILN_OK)
        return rc;
    kiln__ok(err);
    return KILN_OK;
}
