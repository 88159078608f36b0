/*
 * The AMQP 0-9-1 broker: broker/broker.h implemented on rabbitmq-c 0.11.
 * Never installed.
 *
 * One object is one TCP (or TLS) connection with one channel in confirm
 * mode, owned by one thread (broker.h). The object survives its
 * connection: after close, or after a failure, connect opens a new one.
 *
 * Failure model. A socket error, a missed heartbeat, an RPC timeout or a
 * connection.close from the server marks the connection lost: every later
 * op except close, destroy and release returns KILN_EBROKER at once with
 * the first reason, until the owner calls close (or connect, which closes
 * first). A channel.close from the server (a 404 on publish, a 406 on
 * declare) costs only the channel: the next declare or publish opens a new
 * one, but a subscription dies with it and consume reports KILN_EBROKER.
 * Neither kind of loss declares anything again: a publish to an exchange
 * deleted meanwhile meets the same 404 on every new channel until the
 * owner calls declare. After either kind of loss, publish_lost is true
 * for the messages of the last publish that were left unsettled (or
 * never written), and false for those confirmed, nacked or returned.
 *
 * Deliveries. Each is one allocation that release frees without touching
 * the connection, so release (only release) may run on any thread. ack
 * and nack only write: a mistake the broker notices (a tag acknowledged
 * twice) closes the channel, and the next consume reports it. Deliveries
 * not acknowledged when the connection or channel ends go back to their
 * queue with the redelivered flag (a quorum queue also counts them in
 * x-delivery-count); nothing is lost, and nothing is acknowledged twice.
 *
 * Delivery tags. The tags consume hands out keep growing across channels
 * and connections of one object. A tag from an earlier channel can no
 * longer be acknowledged (the broker requeued that delivery when the
 * channel closed): ack and nack refuse it with KILN_ECLOSED instead of
 * acknowledging an unrelated delivery of the new channel.
 *
 * Publishing on a consuming connection is fine: deliveries that arrive
 * while publish waits for confirms are kept for the next consume.
 *
 * Driving the connection from a poll loop (the pool's consumer thread),
 * with the optional ops of broker.h, all implemented here:
 *
 *   for (;;) {
 *       if (!kiln__broker_pending(b))
 *           poll({kiln__broker_poll_fd(b), POLLIN} + the pool's wakeup fd,
 *                timeout = min(next ack flush, heartbeat_ms / 2));
 *       while (kiln__broker_consume(b, &d, 0, &err) == KILN_OK)
 *           hand d to a worker;
 *       // KILN_ETIMEDOUT here just means "nothing more right now"
 *       flush coalesced acks; publish retries;
 *   }
 *
 * rabbitmq-c reads ahead into its own buffer, so the socket can be quiet
 * while whole frames wait in memory: always ask pending before blocking
 * in poll. consume and tick send heartbeats when due and notice a silent
 * server (two missed heartbeats: KILN_EBROKER); rabbitmq-c does neither
 * unless called, so call one of them at least every heartbeat_ms / 2,
 * also when idle, or the server drops the connection.
 *
 * Draining on shutdown: kiln__broker_cancel sends basic.cancel; consume then
 * hands out the deliveries the broker had already sent and reports KILN_ECLOSED
 * once there are none; settle them, then close.
 */
#ifndef KILN_BROKER_AMQP_H
#define KILN_BROKER_AMQP_H

#include "broker/broker.h"

/* kiln__amqp_broker_new makes an unconnected AMQP broker for the broker
 * settings of `cfg` (URL, TLS files, heartbeat, timeouts; copied). The
 * configuration is validated first: KILN_EINVAL names the bad variable.
 * Caller owns; free with kiln__broker_destroy. NULL with `err` on
 * failure. Safe from any thread; the object then belongs to one. */
kiln__broker *kiln__amqp_broker_new(const kiln_config *cfg, kiln_error *err);

/* kiln__amqp_set_name sets the connection name shown in the management UI
 * and `rabbitmqctl list_connections` from the next connect on (e.g.
 * "kiln consumer orders"; copied, cut at 127 bytes). The default is
 * "kiln <hostname> pid <pid>". */
void kiln__amqp_set_name(kiln__broker *b, const char *name);

/* A broker URL as a connection reads it: rabbitmq-c's amqp_parse_url,
 * which %-decodes user, password and vhost, and an empty vhost
 * ("amqp://host/") read as "/", as Go's amqp091 reads it. */
typedef struct kiln__amqp_url {
    char user[KILN_URL_MAX];
    char password[KILN_URL_MAX];
    char host[KILN_URL_MAX];
    char vhost[KILN_URL_MAX];
    int port;
    bool tls;
} kiln__amqp_url;

/* kiln__amqp_url_parts parses `text` into *out as kiln__amqp_connect does
 * (without connecting). KILN_EINVAL names the problem when rabbitmq-c
 * cannot parse it. Thread-safe. */
kiln_err kiln__amqp_url_parts(const char *text, kiln__amqp_url *out,
                              kiln_error *err);

/* The optional ops, also callable directly. kiln__amqp_fd returns the
 * socket to poll for reading, or -1 when not connected; valid until the
 * next close or connect. Poll it only when kiln__amqp_pending is false. */
int kiln__amqp_fd(kiln__broker *b);

/* kiln__amqp_pending is true when frames or a delivery already wait in
 * memory, so that consume(b, .., 0, ..) or kiln__amqp_tick makes progress
 * without reading the socket. */
bool kiln__amqp_pending(kiln__broker *b);

/* kiln__amqp_heartbeat_ms returns the negotiated heartbeat interval in
 * milliseconds, 0 when heartbeats are off or not connected. */
unsigned kiln__amqp_heartbeat_ms(const kiln__broker *b);

/* kiln__amqp_tick does the connection's housekeeping without waiting:
 * sends a heartbeat when one is due, reads whatever the server has sent
 * (connection.blocked, a channel.close, late confirms) and keeps any
 * delivery for the next consume. KILN_OK, or the same errors as consume
 * (KILN_ECLOSED when not connected, KILN_EBROKER when the connection or a
 * subscription is lost). */
kiln_err kiln__amqp_tick(kiln__broker *b, kiln_error *err);

/* kiln__amqp_blocked is true while the server has blocked publishing on
 * this connection (a memory or disk alarm; connection.blocked). publish
 * then waits for connection.unblocked within its timeout. */
bool kiln__amqp_blocked(const kiln__broker *b);

/* ------------------------------------------------------------------------
 * Private to broker/amqp*.c.
 * ------------------------------------------------------------------------ */
#ifdef KILN__AMQP_INTERNAL

#include <amqp.h>
#include <amqp_framing.h>
#include <sys/time.h>

#define KILN__AMQP_CHANNEL 1

typedef struct kiln__amqp_batch kiln__amqp_batch; /* amqp_publish.c */

/* A message written on the channel, until the broker settles it. */
typedef struct kiln__amqp_sent {
    uint64_t key;     /* kiln__amqp_key of what went out */
    unsigned char st; /* amqp_confirm.c's SENT_* */
} kiln__amqp_sent;

/* Settled messages (a run first..last of one outcome), not yet handed to
 * the caller of wait_settled. */
typedef struct kiln__amqp_report {
    uint64_t first, last;
    kiln_err status;
    char why[48];
} kiln__amqp_report;

typedef enum kiln__amqp_sub {
    KILN__SUB_NONE = 0, /* never subscribed on this connection */
    KILN__SUB_ACTIVE,   /* basic.consume done */
    KILN__SUB_STOPPED,  /* we sent basic.cancel: consume drains, then
                           reports KILN_ECLOSED */
    KILN__SUB_GONE      /* the broker cancelled it or the channel died:
                           consume reports KILN_EBROKER with cancel_why */
} kiln__amqp_sub;

typedef struct kiln__amqp {
    kiln__broker base;            /* first: a kiln__broker * is this */
    kiln_config cfg;              /* copy of the caller's */
    char name[128];               /* connection_name client property */
    amqp_connection_state_t conn; /* NULL when not connected */
    amqp_socket_t *sock;          /* owned by conn */
    bool up;                      /* login done: failures get logged */
    bool chan_open;               /* channel KILN__AMQP_CHANNEL is usable */
    bool lost;                    /* connection failed: lost_why */
    bool blocked;                 /* connection.blocked received */
    kiln__amqp_sub sub;           /* the subscription's state */
    char lost_why[200];           /* first reason, kept until close */
    char cancel_why[KILN_NAME_MAX + 96];
    char queue[KILN_NAME_MAX];        /* the subscribed queue */
    char consumer_tag[KILN_NAME_MAX]; /* from basic.consume-ok */
    uint64_t next_seq;                /* publish sequence number of the next
                                         basic.publish on this channel */
    uint64_t tag_base;     /* added to this channel's delivery tags */
    uint64_t max_tag;      /* highest tag handed out by consume */
    kiln__delivery *stash; /* ring of deliveries read while doing
                              something else (publish, tick) */
    size_t stash_head, stash_len, stash_cap;
    unsigned char *pub_state; /* per-message state of a publish */
    size_t pub_cap;
    size_t pub_n;      /* messages of the last publish */
    size_t pub_sent;   /* of those, written to the socket */
    bool pub_lost;     /* the connection or channel of the last publish went
                          away before it ended, or was unusable before it
                          began: what it left unsettled may be sent again */
    bool pub_checked;  /* pub_state describes the last publish (false when
                          it failed before looking at its messages) */
    size_t *pub_order; /* publish: written ordinal -> message index */
    amqp_table_entry_t *hdr; /* scratch headers table for publish */
    kiln__hdr *fhdr;         /* the same, typed, as outgoing.c merges it */
    size_t hdr_cap;          /* entries of hdr and of fhdr */
    amqp_pool_t pool;        /* nested header values of one publish */
    char note[1024];         /* x-kiln-reason of a trimmed message */
    char *props_buf;         /* frame_max bytes: checks the encoding of
                                properties near the limit */
    kiln__amqp_batch *batch; /* publish waiting for confirms, or NULL */
    kiln__amqp_sent *sent;   /* ring of what was written on the channel,
                                by seq; sent_cap entries (a power of 2) */
    size_t sent_cap;
    uint64_t sent_low;      /* every seq below it is settled or forgotten */
    uint64_t ret_next;      /* a basic.return matches from this seq on */
    kiln__amqp_report *out; /* pipelined: settled, not yet reported */
    size_t out_len, out_cap;
    int64_t hb_check_ns; /* next zero-wait read that lets
                            rabbitmq-c check the heartbeat */
} kiln__amqp;

/* amqp_conn.c */
kiln_err kiln__amqp_connect(kiln__broker *base, kiln_error *err);
kiln_err kiln__amqp_open_channel(kiln__amqp *b, kiln_error *err);

/* amqp.c: state checks and error mapping. */

/* KILN_ECLOSED when not connected, KILN_EBROKER when lost, else KILN_OK. */
kiln_err kiln__amqp_usable(kiln__amqp *b, kiln_error *err);

/* Usable and with an open channel (opening a new one when the server
 * closed the last). */
kiln_err kiln__amqp_ready(kiln__amqp *b, kiln_error *err);

/* Marks the connection lost because of rabbitmq-c `status`; fills err
 * with "<what>: <rabbitmq-c text>" and returns KILN_EBROKER. */
kiln_err kiln__amqp_fail_status(kiln__amqp *b, int status, kiln_error *err,
                                const char *what);

/* Maps an RPC reply: KILN_OK for a normal reply, else KILN_EBROKER with
 * "<what>: <reason>" (the server's code and text for a close, whose
 * close-ok it sends). */
kiln_err kiln__amqp_check_reply(kiln__amqp *b, amqp_rpc_reply_t r,
                                kiln_error *err, const char *what);

/* Handles a channel.close or connection.close method from the server:
 * answers with close-ok, records the reason and drops the channel (and
 * for connection.close the connection). Returns KILN_EBROKER with
 * "<what>: <code> <text>". */
kiln_err kiln__amqp_server_close(kiln__amqp *b, const amqp_method_t *m,
                                 kiln_error *err, const char *what);

/* Forgets everything tied to the channel: stashed deliveries, the
 * subscription (which is gone, with `why`), confirms of the
 * publish in progress. */
void kiln__amqp_drop_channel(kiln__amqp *b, const char *why);

/* Handles one frame read outside of an RPC: confirms and returns for the
 * publish in progress, deliveries (stashed), cancels and closes. */
kiln_err kiln__amqp_frame(kiln__amqp *b, const amqp_frame_t *f,
                          kiln_error *err);

/* Reads and handles frames until `done(b)` holds or the monotonic clock
 * passes `deadline_ns` (negative: no limit; now: only what is there).
 * KILN_OK once done, KILN_ETIMEDOUT when time ran out first, KILN_EBROKER
 * (or KILN_ECLOSED) when the connection or channel went away. */
kiln_err kiln__amqp_pump(kiln__amqp *b, int64_t deadline_ns,
                         bool (*done)(const kiln__amqp *b), kiln_error *err);

/* Reads what has arrived without waiting, with one recv when the socket
 * has something, and handles the frames it brought: KILN_OK, or the
 * connection's failure as kiln__amqp_pump says it. */
kiln_err kiln__amqp_read_some(kiln__amqp *b, kiln_error *err);

/* The timeout for a rabbitmq-c read that must end by `deadline_ns`
 * (negative: NULL, no limit). */
struct timeval *kiln__amqp_timeout(kiln__amqp *b, int64_t deadline_ns,
                                   struct timeval *tv);

/* amqp_confirm.c: the messages written on the channel until settled.
 * kiln__amqp_key hashes what a basic.return names of a message.
 * kiln__amqp_track_room makes room to track one more (KILN_ENOMEM when it
 * cannot: write nothing then); kiln__amqp_track records the message just
 * written as b->next_seq and advances it; kiln__amqp_sent_reset forgets
 * them all (a new channel numbers from 1 again). kiln__amqp_settle and
 * kiln__amqp_returned handle basic.ack / basic.nack and basic.return:
 * what they settle goes to the blocking publish in progress
 * (kiln__amqp_batch_report and _returned) or to the outbox of
 * wait_settled, which kiln__amqp_outbox_clear empties. */
uint64_t kiln__amqp_key(const kiln__message *m);
kiln_err kiln__amqp_track_room(kiln__amqp *b, kiln_error *err);
void kiln__amqp_track(kiln__amqp *b, uint64_t key, bool sync);
void kiln__amqp_sent_reset(kiln__amqp *b);
void kiln__amqp_outbox_clear(kiln__amqp *b);
void kiln__amqp_settle(kiln__amqp *b, uint64_t seq, bool multiple, bool nacked);
void kiln__amqp_returned(kiln__amqp *b, const amqp_basic_return_t *r,
                         const amqp_message_t *msg);
kiln_err kiln__amqp_wait_settled(kiln__broker *base, int64_t deadline_ns,
                                 int wake_fd, kiln__settled_fn fn, void *ctx,
                                 kiln_error *err);

/* amqp_publish.c. The blocking publish's side of amqp_confirm.c: message
 * `seq` was acked (KILN_OK) or nacked, or returned with `why`. */
void kiln__amqp_batch_report(kiln__amqp *b, uint64_t seq, kiln_err status,
                             bool nacked);
void kiln__amqp_batch_returned(kiln__amqp *b, uint64_t seq, const char *why);
/* The channel went away: the publish in progress stops with `why`. */
void kiln__amqp_batch_abort(kiln__amqp *b, const char *why);
kiln_err kiln__amqp_publish(kiln__broker *base, const kiln__message *msgs,
                            size_t n, kiln_err *status, kiln_error *err);
kiln_err kiln__amqp_publish_async(kiln__broker *base, const kiln__message *msgs,
                                  size_t n, uint64_t *seq, kiln_err *status,
                                  size_t *done, kiln_error *err);
/* The publish_lost op of broker.h. */
bool kiln__amqp_publish_lost(kiln__broker *base, size_t i);

/* amqp_delivery.c: converts what rabbitmq-c received into *out (tag from
 * the channel's numbering to the object's). On ENOMEM the delivery is
 * rejected back to its queue. */
typedef struct kiln__amqp_content {
    uint64_t tag; /* the channel's delivery tag */
    bool redelivered;
    amqp_bytes_t exchange, routing_key;
    amqp_message_t *msg; /* its body is taken: see amqp_delivery.c */
} kiln__amqp_content;

kiln_err kiln__amqp_build(kiln__amqp *b, const kiln__amqp_content *c,
                          kiln__delivery *out, kiln_error *err);

/* amqp_fields.c. kiln__amqp_fields_in copies table `t` as typed headers
 * into `b` (see core/headers.h; counts when b->p is NULL) and returns the
 * copy. kiln__amqp_fields_out writes the `n` entries of `f` into out[n],
 * nested tables and arrays allocated from `pool`; every string is
 * borrowed from `f`. KILN_ENOMEM when the pool runs out. */
kiln__hdr *kiln__amqp_fields_in(kiln__bump *b, const amqp_table_t *t);
kiln_err kiln__amqp_fields_out(amqp_pool_t *pool, const kiln__hdr *f, size_t n,
                               amqp_table_entry_t *out, kiln_error *err);
void kiln__amqp_release(kiln__broker *base, kiln__delivery *d);

/* amqp_consume.c */
kiln_err kiln__amqp_subscribe(kiln__broker *base, const char *queue,
                              unsigned prefetch, kiln_error *err);
kiln_err kiln__amqp_consume(kiln__broker *base, kiln__delivery *out,
                            int timeout_ms, kiln_error *err);
kiln_err kiln__amqp_ack(kiln__broker *base, uint64_t tag, bool multiple,
                        kiln_error *err);
kiln_err kiln__amqp_nack(kiln__broker *base, uint64_t tag, bool requeue,
                         kiln_error *err);
kiln_err kiln__amqp_cancel(kiln__broker *base, kiln_error *err);
/* Reads the content of a basic.deliver just received and stashes it. */
kiln_err kiln__amqp_stash_delivery(kiln__amqp *b, const amqp_basic_deliver_t *m,
                                   kiln_error *err);
void kiln__amqp_stash_clear(kiln__amqp *b);

/* amqp_topology.c */
kiln_err kiln__amqp_declare(kiln__broker *base, const kiln_config *cfg,
                            kiln_error *err);

/* amqp_delay.c: declares the delay cascade of `cfg` (broker/delay.h),
 * binds cfg->queue to its delivery exchange and the probe queue with the
 * same key; the last step of declare. KILN_EBROKER naming the setting that
 * differs on a 406 (for a delivery exchange without the alternate
 * exchange: delete it once). */
kiln_err kiln__amqp_declare_delay(kiln__amqp *b, const kiln_config *cfg,
                                  kiln_error *err);

/* "%.*s" arguments for an amqp_bytes_t. */
#define KILN__AMQP_BYTES(x) \
    (int)(x).len, (x).bytes != NULL ? (const char *)(x).bytes : ""

#endif /* KILN__AMQP_INTERNAL */

#endif /* KILN_BROKER_AMQP_H */
