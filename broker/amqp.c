/* The AMQP broker object: its ops table, life cycle, error mapping and the
 * handling of frames that arrive between RPCs. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "logger/logger.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* connection.close on shutdown waits at most this long for close-ok. */
#define CLOSE_WAIT_MS 2000

static void amqp_close(kiln__broker *base);
static void amqp_destroy(kiln__broker *base);

static const kiln__broker_ops amqp_ops = {
    .connect = kiln__amqp_connect,
    .close = amqp_close,
    .declare = kiln__amqp_declare,
    .publish = kiln__amqp_publish,
    .subscribe = kiln__amqp_subscribe,
    .consume = kiln__amqp_consume,
    .ack = kiln__amqp_ack,
    .nack = kiln__amqp_nack,
    .release = kiln__amqp_release,
    .destroy = amqp_destroy,
    .poll_fd = kiln__amqp_fd,
    .pending = kiln__amqp_pending,
    .tick = kiln__amqp_tick,
    .cancel = kiln__amqp_cancel,
    .publish_lost = kiln__amqp_publish_lost,
    .publish_async = kiln__amqp_publish_async,
    .wait_settled = kiln__amqp_wait_settled,
};

static kiln__amqp *as_amqp(const kiln__broker *base)
{
    return base != NULL && base->ops == &amqp_ops ? (kiln__amqp *)base : NULL;
}

kiln__broker *kiln__amqp_broker_new(const kiln_config *cfg, kiln_error *err)
{
    kiln__amqp *b;
    char host[64] = "";

    if (cfg == NULL) {
        (void)kiln__fail(err, KILN_EINVAL, "amqp broker: config is required");
        return NULL;
    }
    if (kiln_config_validate(cfg, err) != KILN_OK)
        return NULL;
    if ((b = kiln__calloc(1, sizeof(*b))) == NULL) {
        (void)kiln__fail(err, KILN_ENOMEM, "amqp broker");
        return NULL;
    }
    b->base.ops = &amqp_ops;
    b->cfg = *cfg;
    b->next_seq = 1;
    kiln__amqp_sent_reset(b);
    init_amqp_pool(&b->pool, 4096);
    if (gethostname(host, sizeof(host)) != 0)
        host[0] = '\0';
    host[sizeof(host) - 1] = '\0';
    (void)snprintf(b->name, sizeof(b->name), "kiln %s pid %ld", host,
                   (long)getpid());
    kiln__ok(err);
    return &b->base;
}

void kiln__amqp_set_name(kiln__broker *base, const char *name)
{
    kiln__amqp *b = as_amqp(base);

    if (b != NULL && name != NULL)
        kiln__strlcpy(b->name, name, sizeof(b->name));
}

int kiln__amqp_fd(kiln__broker *base)
{
    const kiln__amqp *b = as_amqp(base);

    if (b == NULL || b->conn == NULL || b->lost)
        return -1;
    return amqp_get_sockfd(b->conn);
}

bool kiln__amqp_pending(kiln__broker *base)
{
    const kiln__amqp *b = as_amqp(base);

    if (b == NULL || b->conn == NULL)
        return false;
    return b->stash_len > 0 || amqp_frames_enqueued(b->conn) ||
           amqp_data_in_buffer(b->conn);
}

unsigned kiln__amqp_heartbeat_ms(const kiln__broker *base)
{
    const kiln__amqp *b = as_amqp(base);

    if (b == NULL || b->conn == NULL)
        return 0;
    return (unsigned)amqp_get_heartbeat(b->conn) * 1000u;
}

bool kiln__amqp_blocked(const kiln__broker *base)
{
    const kiln__amqp *b = as_amqp(base);

    return b != NULL && b->conn != NULL && b->blocked;
}

static bool never_done(const kiln__amqp *b)
{
    (void)b;
    return false;
}

kiln_err kiln__amqp_tick(kiln__broker *base, kiln_error *err)
{
    kiln__amqp *b = as_amqp(base);
    kiln_err rc;

    if (b == NULL)
        return kiln__fail(err, KILN_EINVAL, "amqp tick: not an AMQP broker");
    rc = kiln__amqp_pump(b, kiln__monotonic_ns(), never_done, err);
    if (rc != KILN_ETIMEDOUT)
        return rc;
    if (b->sub == KILN__SUB_GONE && b->stash_len == 0)
        return kiln__fail(err, KILN_EBROKER, "%s", b->cancel_why);
    kiln__ok(err);
    return KILN_OK;
}

/* Shutdown: connection.close closes every channel with it (AMQP 0-9-1,
 * connection.close), so no channel.close round trip first. The broker
 * requeues every delivery not acknowledged. A lost connection gets no
 * handshake at all; the RPC timeout bounds the wait on a silent peer. */
static void amqp_close(kiln__broker *base)
{
    kiln__amqp *b = (kiln__amqp *)base;

    if (b->conn == NULL)
        return;
    if (!b->lost) {
        unsigned ms = b->cfg.connect_timeout_ms < CLOSE_WAIT_MS
                          ? b->cfg.connect_timeout_ms
                          : CLOSE_WAIT_MS;
        struct timeval tv = {(time_t)(ms / 1000),
                             (suseconds_t)(ms % 1000) * 1000};
        (void)amqp_set_rpc_timeout(b->conn, &tv);
        (void)amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
    }
    kiln__amqp_drop_channel(b, "connection closed");
    (void)amqp_destroy_connection(b->conn);
    b->conn = NULL;
    b->sock = NULL;
    b->up = b->lost = b->blocked = false;
    b->sub = KILN__SUB_NONE;
    b->lost_why[0] = b->cancel_why[0] = '\0';
    kiln__log(KILN_LOG_DEBUG, "broker", "amqp connection closed name=\"%s\"",
              b->name);
}

static void amqp_destroy(kiln__broker *base)
{
    kiln__amqp *b = (kiln__amqp *)base;

    amqp_close(base);
    kiln__free(b->stash);
    kiln__free(b->pub_state);
    kiln__free(b->pub_order);
    kiln__free(b->sent);
    kiln__free(b->out);
    kiln__free(b->hdr);
    kiln__free(b->fhdr);
    kiln__free(b->props_buf);
    empty_amqp_pool(&b->pool);
    kiln__free(b);
}

kiln_err kiln__amqp_usable(kiln__amqp *b, kiln_error *err)
{
    if (b->conn == NULL)
        return kiln__fail(err, KILN_ECLOSED, "amqp: not connected");
    if (b->lost)
        return kiln__fail(err, KILN_EBROKER, "amqp connection lost: %s",
                          b->lost_why);
    return KILN_OK;
}

kiln_err kiln__amqp_ready(kiln__amqp *b, kiln_error *err)
{
    kiln_err rc = kiln__amqp_usable(b, err);

    if (rc == KILN_OK && !b->chan_open)
        rc = kiln__amqp_open_channel(b, err);
    return rc;
}

void kiln__amqp_drop_channel(kiln__amqp *b, const char *why)
{
    if (b->sub == KILN__SUB_ACTIVE) {
        b->sub = KILN__SUB_GONE;
        (void)snprintf(b->cancel_why, sizeof(b->cancel_why),
                       "consumer gone: %s", why);
    }
    b->chan_open = false;
    b->next_seq = 1;
    kiln__amqp_sent_reset(b);
    /* Tags of the next channel start above every tag handed out so far. */
    b->tag_base = b->max_tag;
    kiln__amqp_stash_clear(b);
    kiln__amqp_batch_abort(b, why);
}

static void mark_lost(kiln__amqp *b, const char *why)
{
    if (b->lost)
        return;
    b->lost = true;
    kiln__strlcpy(b->lost_why, why, sizeof(b->lost_why));
    kiln__amqp_drop_channel(b, why);
    if (b->up)
        kiln__log(KILN_LOG_WARN, "broker",
                  "amqp connection lost: %s name=\"%s\"", why, b->name);
}

kiln_err kiln__amqp_fail_status(kiln__amqp *b, int status, kiln_error *err,
                                const char *what)
{
    int e = errno; /* of the send or recv that failed, for socket errors */
    char why[200], sys[80];

    /* rabbitmq-c says only "a socket error occurred"; errno says which. */
    if (status != AMQP_STATUS_SOCKET_ERROR || e == 0 || e == EAGAIN ||
        e == EINPROGRESS || strerror_r(e, sys, sizeof(sys)) != 0)
        (void)snprintf(why, sizeof(why), "%s: %s", what,
                       amqp_error_string2(status));
    else
        (void)snprintf(why, sizeof(why), "%s: %s (%s)", what,
                       amqp_error_string2(status), sys);
    mark_lost(b, why);
    return kiln__fail(err, KILN_EBROKER, "%s", why);
}

kiln_err kiln__amqp_check_reply(kiln__amqp *b, amqp_rpc_reply_t r,
                                kiln_error *err, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return KILN_OK;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        return kiln__amqp_server_close(b, &r.reply, err, what);
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return kiln__amqp_fail_status(b, r.library_error, err, what);
    case AMQP_RESPONSE_NONE:
        break;
    }
    return kiln__amqp_fail_status(b, AMQP_STATUS_UNEXPECTED_STATE, err, what);
}

kiln_err kiln__amqp_server_close(kiln__amqp *b, const amqp_method_t *m,
                                 kiln_error *err, const char *what)
{
    char why[200];

    if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *c = m->decoded;
        amqp_channel_close_ok_t ok = {0};
        (void)snprintf(why, sizeof(why), "%u %.*s", c->reply_code,
                       KILN__AMQP_BYTES(c->reply_text));
        kiln__amqp_drop_channel(b, why);
        kiln__log(KILN_LOG_DEBUG, "broker",
                  "amqp channel closed by the broker: %s name=\"%s\"", why,
                  b->name);
        if (amqp_send_method(b->conn, KILN__AMQP_CHANNEL,
                             AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) < 0)
            mark_lost(b, "channel.close-ok: send failed");
    } else if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *c = m->decoded;
        amqp_connection_close_ok_t ok = {0};
        (void)snprintf(why, sizeof(why), "%u %.*s", c->reply_code,
                       KILN__AMQP_BYTES(c->reply_text));
        /* Best effort: the server closes the socket after close-ok. */
        (void)amqp_send_method(b->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD,
                               &ok);
        mark_lost(b, why);
    } else {
        (void)snprintf(why, sizeof(why), "unexpected method 0x%08x",
                       (unsigned)m->id);
        mark_lost(b, why);
    }
    return kiln__fail(err, KILN_EBROKER, "%s: %s", what, why);
}

static kiln_err read_return(kiln__amqp *b, const amqp_basic_return_t *r,
                            kiln_error *err)
{
    amqp_message_t msg;
    amqp_rpc_reply_t rep;

    /* The returned content follows the method; `r` lives in the channel's
     * pool, which nothing recycles before the next frame read. */
    rep = amqp_read_message(b->conn, KILN__AMQP_CHANNEL, &msg, 0);
    if (rep.reply_type != AMQP_RESPONSE_NORMAL)
        return kiln__amqp_check_reply(b, rep, err, "basic.return");
    kiln__amqp_returned(b, r, &msg);
    amqp_destroy_message(&msg);
    return KILN_OK;
}

static kiln_err connection_method(kiln__amqp *b, const amqp_method_t *m,
                                  kiln_error *err)
{
    switch (m->id) {
    case AMQP_CONNECTION_CLOSE_METHOD:
        return kiln__amqp_server_close(b, m, err,
                                       "connection closed by the broker");
    case AMQP_CONNECTION_BLOCKED_METHOD: {
        const amqp_connection_blocked_t *bl = m->decoded;
        b->blocked = true;
        kiln__log(KILN_LOG_WARN, "broker",
                  "amqp broker blocks publishing: %.*s name=\"%s\"",
                  KILN__AMQP_BYTES(bl->reason), b->name);
        return KILN_OK;
    }
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        b->blocked = false;
        kiln__log(KILN_LOG_NOTICE, "broker",
                  "amqp broker unblocked publishing name=\"%s\"", b->name);
        return KILN_OK;
    default:
        return KILN_OK;
    }
}

kiln_err kiln__amqp_frame(kiln__amqp *b, const amqp_frame_t *f, kiln_error *err)
{
    const amqp_method_t *m = &f->payload.method;

    if (f->frame_type != AMQP_FRAME_METHOD)
        return KILN_OK; /* stray content of something already failed */
    if (f->channel == 0)
        return connection_method(b, m, err);
    if (f->channel != KILN__AMQP_CHANNEL)
        return KILN_OK;
    switch (m->id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = m->decoded;
        kiln__amqp_settle(b, a->delivery_tag, a->multiple, false);
        return KILN_OK;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *a = m->decoded;
        kiln__amqp_settle(b, a->delivery_tag, a->multiple, true);
        return KILN_OK;
    }
    case AMQP_BASIC_RETURN_METHOD:
        return read_return(b, m->decoded, err);
    case AMQP_BASIC_DELIVER_METHOD:
        return kiln__amqp_stash_delivery(b, m->decoded, err);
    case AMQP_BASIC_CANCEL_METHOD:
        /* Sent because we announce consumer_cancel_notify: the queue was
         * deleted, or its leader moved away. No reply is expected. Only
         * the consumer ends: deliveries already received stay valid on
         * the channel and may still be acknowledged. */
        if (b->sub == KILN__SUB_ACTIVE) {
            b->sub = KILN__SUB_GONE;
            (void)snprintf(b->cancel_why, sizeof(b->cancel_why),
                           "consumer of '%s' cancelled by the broker (queue "
                           "deleted, or its node unavailable)",
                           b->queue);
            kiln__log(KILN_LOG_WARN, "broker", "amqp %s name=\"%s\"",
                      b->cancel_why, b->name);
        }
        return KILN_OK;
    case AMQP_CHANNEL_CLOSE_METHOD:
        return kiln__amqp_server_close(b, m, err,
                                       "channel closed by the broker");
    default:
        return KILN_OK;
    }
}

struct timeval *kiln__amqp_timeout(kiln__amqp *b, int64_t deadline_ns,
                                   struct timeval *tv)
{
    int64_t now, left;

    if (deadline_ns < 0)
        return NULL;
    now = kiln__monotonic_ns();
    left = deadline_ns > now ? deadline_ns - now : 0;
    tv->tv_sec = (time_t)(left / 1000000000);
    tv->tv_usec = (suseconds_t)(left % 1000000000 / 1000);
    /* rabbitmq-c treats a zero timeout as "immediate" and then never
     * notices a missed server heartbeat. One microsecond takes the path
     * that does (and costs a 1 ms poll when idle), so do it once a
     * second. */
    if (tv->tv_sec == 0 && tv->tv_usec == 0 && now >= b->hb_check_ns) {
        tv->tv_usec = 1;
        b->hb_check_ns = now + 1000000000;
    }
    return tv;
}

kiln_err kiln__amqp_pump(kiln__amqp *b, int64_t deadline_ns,
                         bool (*done)(const kiln__amqp *b), kiln_error *err)
{
    kiln_err rc;

    while (!done(b)) {
        amqp_frame_t f;
        struct timeval tv;
        int s;

        if ((rc = kiln__amqp_usable(b, err)) != KILN_OK)
            return rc;
        amqp_maybe_release_buffers(b->conn);
        s = amqp_simple_wait_frame_noblock(
            b->conn, &f, kiln__amqp_timeout(b, deadline_ns, &tv));
        if (s == AMQP_STATUS_TIMEOUT)
            return kiln__fail(err, KILN_ETIMEDOUT, "amqp: timed out");
        if (s != AMQP_STATUS_OK)
            return kiln__amqp_fail_status(b, s, err, "amqp read");
        if ((rc = kiln__amqp_frame(b, &f, err)) != KILN_OK)
            return rc;
    }
    return KILN_OK;
}

kiln_err kiln__amqp_read_some(kiln__amqp *b, kiln_error *err)
{
    bool first = true;
    kiln_err rc;

    for (;;) {
        amqp_frame_t f;
        struct timeval tv;
        int s;

        if ((rc = kiln__amqp_usable(b, err)) != KILN_OK)
            return rc;
        /* One recv takes all the socket holds (up to rabbitmq-c's 128
         * KiB buffer); another would only say EAGAIN. */
        if (!first && !amqp_frames_enqueued(b->conn) &&
            !amqp_data_in_buffer(b->conn))
            return KILN_OK;
        first = false;
        amqp_maybe_release_buffers(b->conn);
        s = amqp_simple_wait_frame_noblock(
            b->conn, &f, kiln__amqp_timeout(b, kiln__monotonic_ns(), &tv));
        if (s == AMQP_STATUS_TIMEOUT)
            return KILN_OK;
        if (s != AMQP_STATUS_OK)
            return kiln__amqp_fail_status(b, s, err, "amqp read");
        if ((rc = kiln__amqp_frame(b, &f, err)) != KILN_OK)
            return rc;
    }
}
