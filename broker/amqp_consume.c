/* Consuming: subscribe, receive with a timeout, the queue of deliveries
 * read while doing something else, ack and reject. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static bool stash_pop(kiln__amqp *b, kiln__delivery *out)
{
    if (b->stash_len == 0)
        return false;
    *out = b->stash[b->stash_head];
    b->stash_head = (b->stash_head + 1) % b->stash_cap;
    b->stash_len--;
    return true;
}

static kiln_err stash_push(kiln__amqp *b, const kiln__delivery *d,
                           kiln_error *err)
{
    if (b->stash_len == b->stash_cap) {
        size_t cap = b->stash_cap > 0 ? b->stash_cap * 2 : 16;
        kiln__delivery *n = kiln__malloc(cap * sizeof(*n));
        if (n == NULL)
            return kiln__fail(err, KILN_ENOMEM, "delivery queue");
        for (size_t i = 0; i < b->stash_len; i++)
            n[i] = b->stash[(b->stash_head + i) % b->stash_cap];
        kiln__free(b->stash);
        b->stash = n;
        b->stash_cap = cap;
        b->stash_head = 0;
    }
    b->stash[(b->stash_head + b->stash_len) % b->stash_cap] = *d;
    b->stash_len++;
    return KILN_OK;
}

void kiln__amqp_stash_clear(kiln__amqp *b)
{
    kiln__delivery d;

    while (stash_pop(b, &d))
        kiln__amqp_release(&b->base, &d);
    b->stash_head = 0;
}

kiln_err kiln__amqp_stash_delivery(kiln__amqp *b, const amqp_basic_deliver_t *m,
                                   kiln_error *err)
{
    amqp_message_t msg;
    amqp_rpc_reply_t r;
    kiln__delivery d;
    kiln_err rc;

    /* `m` lives in the channel's pool, untouched while the content is
     * read (nothing recycles it before the next frame read). */
    r = amqp_read_message(b->conn, KILN__AMQP_CHANNEL, &msg, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return kiln__amqp_check_reply(b, r, err, "basic.deliver");
    {
        const kiln__amqp_content c = {m->delivery_tag, m->redelivered,
                                      m->exchange, m->routing_key, &msg};
        rc = kiln__amqp_build(b, &c, &d, err);
    }
    amqp_destroy_message(&msg);
    if (rc == KILN_OK && (rc = stash_push(b, &d, err)) != KILN_OK) {
        (void)amqp_basic_reject(b->conn, KILN__AMQP_CHANNEL,
                                d.tag - b->tag_base, 1);
        kiln__amqp_release(&b->base, &d);
    }
    return rc;
}

kiln_err kiln__amqp_subscribe(kiln__broker *base, const char *queue,
                              unsigned prefetch, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    amqp_basic_consume_ok_t *ok;
    char what[KILN_NAME_MAX + 32];
    kiln_err rc;

    if (queue == NULL || queue[0] == '\0' || strlen(queue) > 255)
        return kiln__fail(err, KILN_EINVAL,
                          "subscribe: want a queue name of 1..255 bytes");
    /* basic.qos prefetch-count is a 16-bit field. */
    if (prefetch > UINT16_MAX)
        return kiln__fail(
            err, KILN_EINVAL,
            "subscribe: prefetch %u is above the AMQP limit of 65535",
            prefetch);
    if ((rc = kiln__amqp_ready(b, err)) != KILN_OK)
        return rc;
    if (b->sub == KILN__SUB_ACTIVE)
        return kiln__fail(err, KILN_EINVAL,
                          "subscribe '%s': this connection already consumes",
                          queue);
    (void)amqp_basic_qos(b->conn, KILN__AMQP_CHANNEL, 0, (uint16_t)prefetch, 0);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err,
                                "basic.qos");
    if (rc != KILN_OK)
        return rc;
    ok = amqp_basic_consume(b->conn, KILN__AMQP_CHANNEL,
                            amqp_cstring_bytes(queue), amqp_empty_bytes,
                            0 /* no-local */, 0 /* no-ack */, 0 /* exclusive */,
                            amqp_empty_table);
    (void)snprintf(what, sizeof(what), "basic.consume '%s'", queue);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err, what);
    if (rc != KILN_OK)
        return rc;
    (void)snprintf(b->consumer_tag, sizeof(b->consumer_tag), "%.*s",
                   KILN__AMQP_BYTES(ok->consumer_tag));
    kiln__strlcpy(b->queue, queue, sizeof(b->queue));
    b->cancel_why[0] = '\0';
    b->sub = KILN__SUB_ACTIVE;
    kiln__ok(err);
    return KILN_OK;
}

/* One read: a delivery (KILN_OK), nothing in time (KILN_ETIMEDOUT), or
 * another frame, handled, with *again set. */
static kiln_err read_one(kiln__amqp *b, kiln__delivery *out, int64_t deadline,
                         bool *again, kiln_error *err)
{
    amqp_envelope_t env;
    amqp_rpc_reply_t r;
    amqp_frame_t f;
    struct timeval tv;
    kiln_err rc;
    int s;

    *again = false;
    amqp_maybe_release_buffers(b->conn); /* else its pools only grow */
    r = amqp_consume_message(b->conn, &env,
                             kiln__amqp_timeout(b, deadline, &tv), 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        const kiln__amqp_content c = {env.delivery_tag, env.redelivered,
                                      env.exchange, env.routing_key,
                                      &env.message};
        rc = kiln__amqp_build(b, &c, out, err);
        amqp_destroy_envelope(&env);
        return rc;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_TIMEOUT)
        return kiln__fail(err, KILN_ETIMEDOUT, "consume: no delivery in time");
    if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION ||
        r.library_error != AMQP_STATUS_UNEXPECTED_STATE)
        return kiln__amqp_check_reply(b, r, err, "consume");
    /* Not a delivery: a cancel, a close, a confirm or a return waits,
     * put back by amqp_consume_message (RABBITMQ.md). */
    if ((s = amqp_simple_wait_frame(b->conn, &f)) != AMQP_STATUS_OK)
        return kiln__amqp_fail_status(b, s, err, "consume");
    *again = true;
    return kiln__amqp_frame(b, &f, err);
}

kiln_err kiln__amqp_consume(kiln__broker *base, kiln__delivery *out,
                            int timeout_ms, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    int64_t deadline =
        timeout_ms < 0 ? -1
                       : kiln__monotonic_ns() + (int64_t)timeout_ms * 1000000;
    bool again = true;
    kiln_err rc = KILN_OK;

    if (out == NULL)
        return kiln__fail(err, KILN_EINVAL, "consume: out is NULL");
    while (again) {
        if (stash_pop(b, out)) {
            kiln__ok(err);
            return KILN_OK;
        }
        if ((rc = kiln__amqp_usable(b, err)) != KILN_OK)
            return rc;
        switch (b->sub) {
        case KILN__SUB_NONE:
            return kiln__fail(err, KILN_EINVAL, "consume: not subscribed");
        case KILN__SUB_GONE:
            return kiln__fail(err, KILN_EBROKER, "%s", b->cancel_why);
        case KILN__SUB_STOPPED:
            /* Hand out what arrived before cancel-ok, then say so. */
            if (!amqp_frames_enqueued(b->conn) && !amqp_data_in_buffer(b->conn))
                return kiln__fail(err, KILN_ECLOSED,
                                  "consume: subscription cancelled");
            deadline = kiln__monotonic_ns();
            break;
        case KILN__SUB_ACTIVE:
            break;
        }
        if ((rc = read_one(b, out, deadline, &again, err)) != KILN_OK)
            return rc;
    }
    kiln__ok(err);
    return rc;
}

/* basic.cancel is an RPC: deliveries sent before cancel-ok are queued
 * while it waits, and consume still hands them out. */
kiln_err kiln__amqp_cancel(kiln__broker *base, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    char what[KILN_NAME_MAX + 32];
    kiln_err rc;

    if ((rc = kiln__amqp_usable(b, err)) != KILN_OK)
        return rc;
    if (b->sub != KILN__SUB_ACTIVE) {
        if (b->sub == KILN__SUB_GONE)
            b->sub = KILN__SUB_STOPPED; /* nothing left to stop */
        kiln__ok(err);
        return KILN_OK;
    }
    (void)amqp_basic_cancel(b->conn, KILN__AMQP_CHANNEL,
                            amqp_cstring_bytes(b->consumer_tag));
    (void)snprintf(what, sizeof(what), "basic.cancel '%s'", b->queue);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err, what);
    if (rc != KILN_OK)
        return rc;
    b->sub = KILN__SUB_STOPPED;
    kiln__ok(err);
    return KILN_OK;
}

/* The channel's tag for `tag`, refusing tags of an earlier channel. */
static kiln_err wire_tag(const kiln__amqp *b, uint64_t tag, uint64_t *out,
                         kiln_error *err, const char *what)
{
    if (tag > b->max_tag || tag == 0)
        return kiln__fail(err, KILN_EINVAL, "%s: unknown delivery tag %" PRIu64,
                          what, tag);
    if (tag <= b->tag_base)
        return kiln__fail(err, KILN_ECLOSED,
                          "%s: delivery tag %" PRIu64
                          " belongs to a closed channel; the broker has "
                          "requeued that delivery",
                          what, tag);
    *out = tag - b->tag_base;
    return KILN_OK;
}

kiln_err kiln__amqp_ack(kiln__broker *base, uint64_t tag, bool multiple,
                        kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    uint64_t t = 0;
    kiln_err rc;
    int s;

    if ((rc = kiln__amqp_usable(b, err)) != KILN_OK ||
        (rc = wire_tag(b, tag, &t, err, "basic.ack")) != KILN_OK)
        return rc;
    if ((s = amqp_basic_ack(b->conn, KILN__AMQP_CHANNEL, t, multiple)) != 0)
        return kiln__amqp_fail_status(b, s, err, "basic.ack");
    kiln__ok(err);
    return KILN_OK;
}

/* basic.reject: the same as a single basic.nack, and part of AMQP 0-9-1
 * itself rather than a RabbitMQ extension. */
kiln_err kiln__amqp_nack(kiln__broker *base, uint64_t tag, bool requeue,
                         kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    uint64_t t = 0;
    kiln_err rc;
    int s;

    if ((rc = kiln__amqp_usable(b, err)) != KILN_OK ||
        (rc = wire_tag(b, tag, &t, err, "basic.reject")) != KILN_OK)
        return rc;
    s = amqp_basic_reject(b->conn, KILN__AMQP_CHANNEL, t, requeue);
    if (s != 0)
        return kiln__amqp_fail_status(b, s, err, "basic.reject");
    kiln__ok(err);
    return KILN_OK;
}
