/* Publisher confirms, across calls: every message written on the channel
 * is tracked by its sequence number until the broker settles it. In
 * confirm mode the broker numbers the publishes of a channel 1, 2, 3 ...
 * and acks or nacks by that number, `multiple` covering every number up
 * to it (RabbitMQ "Publisher Confirms"); a basic.return carries no number
 * and is matched here to its message.
 *
 * What is settled goes to whoever wrote the message: the blocking publish
 * in progress (amqp_publish.c) at once, or, for pipelined publishing, the
 * outbox that wait_settled hands to its caller, so that a caller only ever
 * hears of sequence numbers some call of its has already returned. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "logger/logger.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A pipelined owner keeps its window far below this; past it the oldest
 * unsettled messages (ones their writer stopped waiting for long ago) are
 * forgotten, so a queue that never confirms cannot grow the ring without
 * bound. Messages of a blocking publish in progress are never forgotten. */
#define SENT_MAX   65536
#define SENT_FIRST 64

enum {
    SENT_LIVE = 1,     /* written, not yet acked or nacked */
    SENT_RETURNED = 2, /* basic.return came for it */
    SENT_REPORTED = 4, /* its outcome went to its writer */
    SENT_SYNC = 8      /* written by the blocking publish */
};

static kiln__amqp_sent *entry(const kiln__amqp *b, uint64_t seq)
{
    return &b->sent[seq & (b->sent_cap - 1)];
}

/* A basic.return names the exchange, the routing key and (in its
 * properties) the message id of what it returns; the ring keeps their
 * hash (FNV-1a, 64 bits) instead of the strings: two different messages
 * among those unsettled on one channel collide with odds of about one in
 * 2^64 / n^2. Lengths go in first, so ("ab", "c") is not ("a", "bc"). */
static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;

    for (size_t k = 0; k < sizeof(n); k++) {
        h ^= (unsigned char)(n >> (8 * k));
        h *= 1099511628211ULL;
    }
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t key_of(amqp_bytes_t exchange, amqp_bytes_t routing_key,
                       const amqp_bytes_t *id)
{
    uint64_t h = 14695981039346656037ULL;

    h = mix(h, exchange.bytes, exchange.len);
    h = mix(h, routing_key.bytes, routing_key.len);
    h = mix(h, id != NULL ? "1" : "0", 1);
    return id != NULL ? mix(h, id->bytes, id->len) : h;
}

uint64_t kiln__amqp_key(const kiln__message *m)
{
    amqp_bytes_t id =
        amqp_cstring_bytes(m->message_id != NULL ? m->message_id : "");

    return key_of(amqp_cstring_bytes(m->exchange != NULL ? m->exchange : ""),
                  amqp_cstring_bytes(m->routing_key),
                  m->message_id != NULL ? &id : NULL);
}

static bool grow(kiln__amqp *b, size_t cap)
{
    kiln__amqp_sent *n = kiln__calloc(cap, sizeof(*n));

    if (n == NULL)
        return false;
    for (uint64_t s = b->sent_low; s < b->next_seq && b->sent_cap > 0; s++)
        n[s & (cap - 1)] = *entry(b, s);
    kiln__free(b->sent);
    b->sent = n;
    b->sent_cap = cap;
    return true;
}

kiln_err kiln__amqp_track_room(kiln__amqp *b, kiln_error *err)
{
    uint64_t span = b->next_seq - b->sent_low;

    if (span < b->sent_cap)
        return KILN_OK;
    if (b->sent_cap < SENT_MAX || (entry(b, b->sent_low)->st & SENT_SYNC)) {
        if (grow(b, b->sent_cap > 0 ? b->sent_cap * 2 : SENT_FIRST))
            return KILN_OK;
        return kiln__fail(err, KILN_ENOMEM, "publish: confirm tracking");
    }
    /* Forget the oldest: its confirm, if it ever comes, is ignored. */
    kiln__log(KILN_LOG_DEBUG, "broker",
              "amqp: %llu messages unconfirmed; forgetting seq %llu",
              (unsigned long long)span, (unsigned long long)b->sent_low);
    b->sent_low++;
    return KILN_OK;
}

void kiln__amqp_track(kiln__amqp *b, uint64_t key, bool sync)
{
    kiln__amqp_sent *e = entry(b, b->next_seq);

    e->key = key;
    e->st = (unsigned char)(SENT_LIVE | (sync ? SENT_SYNC : 0));
    b->next_seq++;
}

void kiln__amqp_sent_reset(kiln__amqp *b)
{
    b->sent_low = b->ret_next = 1;
}

/* ---- the outbox ---------------------------------------------------------- */

static void outbox_add(kiln__amqp *b, uint64_t seq, kiln_err status,
                       const char *why)
{
    kiln__amqp_report *last = b->out_len > 0 ? &b->out[b->out_len - 1] : NULL;

    /* Runs of confirms (a `multiple` ack) take one entry. */
    if (last != NULL && status == KILN_OK && last->status == KILN_OK &&
        last->last + 1 == seq) {
        last->last = seq;
        return;
    }
    if (b->out_len == b->out_cap || b->out == NULL) {
        size_t cap = b->out_cap > 0 ? b->out_cap * 2 : 16;
        kiln__amqp_report *n = kiln__realloc(b->out, cap * sizeof(*n));
        if (n == NULL) {
            /* Unreported, the message counts as lost with the
             * connection: drop the connection, so that it does. */
            kiln__amqp_fail_status(b, AMQP_STATUS_NO_MEMORY, NULL,
                                   "confirm outbox");
            return;
        }
        b->out = n;
        b->out_cap = cap;
    }
    last = &b->out[b->out_len++];
    last->first = last->last = seq;
    last->status = status;
    kiln__strlcpy(last->why, why != NULL ? why : "", sizeof(last->why));
}

void kiln__amqp_outbox_clear(kiln__amqp *b)
{
    b->out_len = 0;
}

static bool report_all(kiln__amqp *b, kiln__settled_fn fn, void *ctx)
{
    size_t n = b->out_len;

    /* fn may not call into this object, so the outbox stays as it is
     * while it runs. */
    for (size_t i = 0; i < n; i++)
        fn(ctx, b->out[i].first, b->out[i].last, b->out[i].status,
           b->out[i].why);
    b->out_len = 0;
    return n > 0;
}

/* ---- frames -------------------------------------------------------------- */

static void settle_one(kiln__amqp *b, uint64_t seq, bool nacked)
{
    kiln__amqp_sent *e = entry(b, seq);

    if (!(e->st & SENT_LIVE))
        return;
    e->st &= (unsigned char)~SENT_LIVE;
    if (e->st & SENT_REPORTED)
        return; /* returned: that was its outcome */
    e->st |= SENT_REPORTED;
    if (e->st & SENT_SYNC)
        kiln__amqp_batch_report(b, seq, nacked ? KILN_EBROKER : KILN_OK,
                                nacked);
    else
        outbox_add(b, seq, nacked ? KILN_EBROKER : KILN_OK,
                   nacked ? "nacked by the broker" : NULL);
}

void kiln__amqp_settle(kiln__amqp *b, uint64_t seq, bool multiple, bool nacked)
{
    /* Numbers below sent_low are settled or forgotten; a number not yet
     * used would be the broker's mistake. */
    if (seq < b->sent_low || seq >= b->next_seq || b->sent_cap == 0)
        return;
    for (uint64_t s = multiple ? b->sent_low : seq; s <= seq; s++)
        settle_one(b, s, nacked);
    while (b->sent_low < b->next_seq &&
           !(entry(b, b->sent_low)->st & SENT_LIVE))
        b->sent_low++;
}

/* RabbitMQ sends a basic.return before the ack of the same message, and
 * returns come in publish order, so the message is the first unsettled,
 * unreturned one with the same exchange, routing key and message id.
 * Messages alike in all three route alike. */
void kiln__amqp_returned(kiln__amqp *b, const amqp_basic_return_t *r,
                         const amqp_message_t *msg)
{
    bool has_id = (msg->properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) != 0;
    uint64_t key = key_of(r->exchange, r->routing_key,
                          has_id ? &msg->properties.message_id : NULL);
    uint64_t from = b->ret_next > b->sent_low ? b->ret_next : b->sent_low;
    char why[48];

    for (uint64_t s = from; b->sent_cap > 0 && s < b->next_seq; s++) {
        kiln__amqp_sent *e = entry(b, s);
        if ((e->st & (SENT_LIVE | SENT_RETURNED)) != SENT_LIVE || e->key != key)
            continue;
        e->st |= SENT_RETURNED | SENT_REPORTED;
        b->ret_next = s + 1;
        (void)snprintf(why, sizeof(why), "unroutable: %u %.*s", r->reply_code,
                       KILN__AMQP_BYTES(r->reply_text));
        if (e->st & SENT_SYNC)
            kiln__amqp_batch_returned(b, s, why);
        else
            outbox_add(b, s, KILN_EBROKER, why);
        return;
    }
    kiln__log(KILN_LOG_WARN, "broker",
              "amqp message returned after its publish ended: exchange '%.*s' "
              "routing key '%.*s': %.*s",
              KILN__AMQP_BYTES(r->exchange), KILN__AMQP_BYTES(r->routing_key),
              KILN__AMQP_BYTES(r->reply_text));
}

/* ---- waiting ------------------------------------------------------------- */

/* Reads whatever has arrived, without waiting. */
static kiln_err read_ready(kiln__amqp *b, kiln_error *err)
{
    return kiln__amqp_read_some(b, err);
}

static int poll_ms(int64_t deadline_ns)
{
    int64_t left = deadline_ns - kiln__monotonic_ns();

    if (left <= 0)
        return 0;
    left = (left + 999999) / 1000000;
    return left > 60000 ? 60000 : (int)left;
}

static void clear_wake(int fd)
{
    uint64_t v;

    /* An eventfd: one read clears it; EAGAIN when another did. */
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        kiln__log(KILN_LOG_DEBUG, "broker", "amqp: wake fd read failed");
}

/* Frames already in rabbitmq-c's memory, which poll cannot see. */
static bool buffered(const kiln__amqp *b)
{
    return amqp_frames_enqueued(b->conn) || amqp_data_in_buffer(b->conn);
}

/* The wait of wait_settled, on a usable connection with nothing to
 * report: KILN_OK once frames were read or the wake fd fired,
 * KILN_ETIMEDOUT at the deadline, or the connection's failure. */
static kiln_err wait_frames(kiln__amqp *b, int64_t deadline_ns, int wake_fd,
                            kiln_error *err)
{
    struct pollfd p[2] = {{amqp_get_sockfd(b->conn), POLLIN, 0},
                          {wake_fd, POLLIN, 0}};
    int n;

    if (buffered(b))
        return read_ready(b, err);
    n = poll(p, wake_fd >= 0 ? 2 : 1, poll_ms(deadline_ns));
    if (n < 0 && errno != EINTR)
        return kiln__fail(err, KILN_EBROKER, "amqp: poll: %d", errno);
    if (n > 0 && wake_fd >= 0 && (p[1].revents & POLLIN))
        clear_wake(wake_fd);
    /* Also after a timeout: rabbitmq-c sends heartbeats and notices a
     * silent server only when it is asked to read. */
    if (read_ready(b, err) != KILN_OK)
        return KILN_EBROKER;
    return n == 0 ? KILN_ETIMEDOUT : KILN_OK;
}

kiln_err kiln__amqp_wait_settled(kiln__broker *base, int64_t deadline_ns,
                                 int wake_fd, kiln__settled_fn fn, void *ctx,
                                 kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    kiln_err rc;

    if (fn == NULL)
        return kiln__fail(err, KILN_EINVAL, "wait_settled: no callback");
    /* Frames that were read meanwhile, and what they settled. */
    rc = kiln__amqp_usable(b, err);
    if (rc == KILN_OK && buffered(b))
        rc = read_ready(b, err);
    if (report_all(b, fn, ctx) || rc != KILN_OK) {
        if (rc == KILN_OK)
            kiln__ok(err);
        return rc;
    }
    rc = wait_frames(b, deadline_ns, wake_fd, err);
    if (report_all(b, fn, ctx) && rc == KILN_ETIMEDOUT)
        rc = KILN_OK;
    if (rc == KILN_OK)
        kiln__ok(err);
    else if (rc == KILN_ETIMEDOUT)
        kiln__fail(err, rc, "amqp: nothing settled in time");
    return rc;
}
