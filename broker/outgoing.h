/*
 * What publish writes for one kiln__message, the same for every broker
 * implementation (broker/amqp_publish.c and the mock of mocks/): the
 * checks a message must pass before any of it is written, its header
 * table merged as broker.h says, and what goes out when its content
 * header does not fit one frame. No I/O but a log line when a message is
 * replaced or trimmed. Never installed.
 *
 * Thread-safety: every function here only reads its arguments and writes
 * the caller's buffers; safe from any thread.
 */
#ifndef KILN_BROKER_OUTGOING_H
#define KILN_BROKER_OUTGOING_H

#include "broker/broker.h"

/* The bytes of a content-header frame that are not properties: type,
 * channel, size and end octet (8), class, weight and body size (12). The
 * properties of a message may take frame_max minus this. */
#define KILN__FRAME_OVERHEAD 20

/* The frame_max kiln asks for (rabbitmq-c's AMQP_DEFAULT_FRAME_SIZE), and
 * RabbitMQ's default: no connection of kiln has larger frames. */
#define KILN__FRAME_MAX 131072

/* The most properties a message can have on any connection of kiln. */
#define KILN__MAX_PROPS (KILN__FRAME_MAX - KILN__FRAME_OVERHEAD)

/* kiln__message_valid checks the fields of `m` that need no walk of its
 * headers: KILN_EINVAL, naming the field, as kiln__message_check. Cheap
 * enough for every message of a batch. */
kiln_err kiln__message_valid(const kiln__message *m, kiln_error *err);

/* kiln__message_check checks `m` alone (not m->oversize): KILN_EINVAL
 * naming the field when no broker can take it (no routing key, missing
 * body or headers, an exchange, routing key, message id, content type or
 * header name over the 255 bytes of an AMQP short string, more than
 * INT32_MAX headers); KILN_ETOOBIG, naming both sizes, when its
 * properties (headers merged as broker.h says) take more than
 * `max_props` bytes (0: no limit). *props (may be NULL) gets their size
 * (SIZE_MAX when a header cannot be encoded at all). */
kiln_err kiln__message_check(const kiln__message *m, size_t max_props,
                             size_t *props, kiln_error *err);

/* What goes out for one message. */
typedef struct kiln__outgoing {
    const kiln__message *msg; /* the message, or its `oversize` */
    kiln__hdr *table;         /* its header table, in the caller's scratch;
                                   strings of `headers` become UTF-8 fields */
    size_t n;                 /* entries of table */
    size_t props;             /* bytes of its properties */
    bool replaced;            /* msg is the message's `oversize` */
    size_t trimmed;           /* inherited headers left out */
} kiln__outgoing;

/* kiln__outgoing_cap returns the entries of scratch that
 * kiln__outgoing_prepare may need for `m`. */
size_t kiln__outgoing_cap(const kiln__message *m);

/* kiln__outgoing_prepare decides what to write for `m` on a connection
 * whose frames hold `max_props` bytes of properties, as broker.h's Size
 * says, and fills *out. `scratch` holds `cap` entries (at least
 * kiln__outgoing_cap(m)); note[note_len] holds the x-kiln-reason of a
 * trimmed message (its end is cut with "..." when it is too short). Both
 * must outlive the use of *out. Returns KILN_OK, or KILN_EINVAL /
 * KILN_ETOOBIG from kiln__message_check when `m` must be refused (of its
 * `oversize`, when that was what failed, with "too big; its replacement:"
 * before the reason). Logs a warning when it replaces or trims. */
kiln_err kiln__outgoing_prepare(const kiln__message *m, size_t max_props,
                                kiln__hdr *scratch, size_t cap, char *note,
                                size_t note_len, kiln__outgoing *out,
                                kiln_error *err);

#endif /* KILN_BROKER_OUTGOING_H */
