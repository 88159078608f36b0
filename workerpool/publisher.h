/*
 * The publisher's internals, private to workerpool/publisher*.c. Never
 * installed. See publisher.c for the design.
 */
#ifndef KILN_PUBLISHER_H
#define KILN_PUBLISHER_H

#include "workerpool/pool.h"

/* The window: at most this many messages of a connection written and not
 * yet settled by the broker (counted as the span of their sequence
 * numbers), as the bare rabbitmq-c client keeps up to 1,000. Enough to
 * keep a broker busy for tens of milliseconds, small enough that a lost
 * connection costs little to send again. */
#define KILN__PUB_WINDOW      1024
#define KILN__PUB_BATCH_CAP   KILN__PUB_WINDOW /* messages per write */
#define KILN__PUB_SCRATCH_MIN 64
#define KILN__PUB_SPILL       256 /* messages: a home this busy may be left */

/* Statuses no publish gives, for a message not final yet.
 * PENDING: never written to a connection, so the broker cannot have it.
 * INFLIGHT: written on the current connection, its outcome not yet come.
 * LOST: written on a connection that was lost before the broker settled
 * it: the broker may have it.
 * PENDING and LOST are (re)sent. At the deadline PENDING is KILN_EBROKER
 * ("not sent"), the others KILN_ETIMEDOUT. */
#define KILN__PUB_PENDING  KILN_ERETRY
#define KILN__PUB_LOST     KILN_ETASK
#define KILN__PUB_INFLIGHT KILN_EEXIST

static inline bool kiln__pub_unsettled(kiln_err s)
{
    return s == KILN__PUB_PENDING || s == KILN__PUB_LOST;
}

/* Message i of request r: in the batch being written, or in flight under
 * its sequence number (r NULL: nobody waits for it any more). */
typedef struct kiln__pub_slot {
    kiln__pub_req *r;
    size_t i;
} kiln__pub_slot;

typedef struct kiln__pub_conn {
    kiln__publisher *pub;
    unsigned id;
    kiln__broker *b;
    pthread_t thread;
    bool started, sync_ok;

    /* Lock rule: `mu` guards the queue (q_*), `stopping`, `sleeping`,
     * `users` and every request's `done`. The owner thread never holds
     * it while it calls the broker; callers never touch the broker. The
     * rest of a request belongs to the owner until `done` is set, and the
     * caller reads it only after seeing `done` under `mu`. */
    pthread_mutex_t mu;
    pthread_cond_t idle_cv;         /* free waits: the last caller left */
    int wake_fd;                    /* eventfd: wakes the owner's wait */
    bool sleeping;                  /* the owner waits (or is about to): the
                                       caller that clears it writes wake_fd */
    kiln__pub_req *q_head, *q_tail; /* queued, not yet taken */
    size_t q_len;
    bool stopping;
    unsigned users;     /* callers inside kiln__publisher_send */
    atomic_size_t load; /* messages queued or being sent; a hint */

    /* The owner thread's own. */
    kiln__pub_req *act_head, *act_tail; /* taken, not done */
    bool connected;
    bool blocked;         /* the broker blocks publishing (resource alarm):
                             the last write stopped early */
    bool poked;           /* blocked, but the broker said something since:
                             try writing again */
    bool redeclare;       /* the broker refused a message: declare again
                             before writing more */
    bool closing;         /* stopping seen: nothing more is written */
    unsigned attempt;     /* connection failures in a row */
    int64_t retry_at_ns;  /* no connect before */
    int64_t io_ns;        /* last write, settle or tick */
    kiln_error last;      /* last connection failure; code 0 when none */
    kiln__pub_slot *ring; /* in flight, by seq & (ring_cap - 1) */
    size_t ring_cap;      /* a power of 2, at most KILN__PUB_WINDOW */
    uint64_t low, next;   /* in flight: seqs [low, next); low == next when
                             none; slot r is NULL for those settled or
                             given up, and never at low */
    size_t inflight;      /* slots with a request */
    kiln__message *bmsgs; /* batch scratch: bcap of each */
    kiln__pub_slot *bslot;
    uint64_t *bseq;
    kiln_err *bst;
    size_t bcap;
} kiln__pub_conn;

struct kiln__publisher {
    kiln_config cfg;
    char name[128];
    kiln__pub_conn *conns;
    unsigned n_conns;
    atomic_uint rr;
    int64_t tick_ns; /* idle housekeeping interval */
};

/* Makes `r`'s message i final with status `s`; `why` (may be NULL) is the
 * reason when it is the request's lowest failure. Whoever holds the
 * request: its owner thread, or its caller before or after that. */
void kiln__pub_finish(kiln__pub_req *r, size_t i, kiln_err s, const char *why);

/* Ends every message of `r` still pending with `code`. */
void kiln__pub_finish_rest(kiln__pub_req *r, kiln_err code, const char *why);

/* Makes room in the batch scratch for up to `want` (at most
 * KILN__PUB_BATCH_CAP) messages; returns the capacity, which stays as it was
 * when memory is short. Owner only, or before the owner started. */
size_t kiln__pub_scratch(kiln__pub_conn *c, size_t want);

/* The owner thread of connection `arg` (publisher_owner.c). */
void *kiln__pub_owner_main(void *arg);

/* Wakes the owner of `c` if it sleeps. c->mu held; returns true when the
 * caller must then write c->wake_fd (kiln__pub_kick), after unlocking. */
bool kiln__pub_wake_locked(kiln__pub_conn *c);
void kiln__pub_kick(kiln__pub_conn *c);

#endif /* KILN_PUBLISHER_H */
