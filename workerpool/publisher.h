/*
 * The publisher's internals, private to workerpool/publisher*.c. Never
 * installed. See publisher.c for the design.
 */
#ifndef KILN_PUBLISHER_H
#define KILN_PUBLISHER_H

#include "workerpool/pool.h"

#define KILN__PUB_BATCH_CAP   4096 /* messages per publish call */
#define KILN__PUB_SCRATCH_MIN 64
#define KILN__PUB_SPILL       256 /* messages: a home this busy may be left */

/* Statuses no publish gives, for a message still to be (re)sent.
 * PENDING: never written to a connection, so the broker cannot have it.
 * LOST: written on a connection that was lost before the broker settled
 * it: the broker may have it. At the deadline the first is KILN_EBROKER
 * ("not sent"), the second KILN_ETIMEDOUT. */
#define KILN__PUB_PENDING KILN_ERETRY
#define KILN__PUB_LOST    KILN_ETASK

static inline bool kiln__pub_unsettled(kiln_err s)
{
    return s == KILN__PUB_PENDING || s == KILN__PUB_LOST;
}

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

    /* Lock rule: `mu` guards the queue (q_*), `stopping`, `users` and
     * every request's `done`. The owner thread never holds it while it
     * calls the broker; callers never touch the broker. The rest of a
     * request belongs to the owner until `done` is set, and the caller
     * reads it only after seeing `done` under `mu`. */
    pthread_mutex_t mu;
    pthread_cond_t cv;              /* the owner waits: work, or stop */
    pthread_cond_t idle_cv;         /* free waits: the last caller left */
    kiln__pub_req *q_head, *q_tail; /* queued, not yet taken */
    size_t q_len;
    bool stopping;
    unsigned users;     /* callers inside kiln__publisher_send */
    atomic_size_t load; /* messages queued or being sent; a hint */

    /* The owner thread's own. */
    kiln__pub_req *act_head, *act_tail; /* taken, not done */
    bool connected;
    bool redeclare;       /* the broker refused a message: declare again
                             before the next batch */
    unsigned attempt;     /* connection failures in a row */
    int64_t retry_at_ns;  /* no connect before */
    int64_t io_ns;        /* last publish or tick */
    int64_t linger_until; /* see linger() */
    size_t woken;         /* callers the last complete() woke */
    kiln_error last;      /* last connection failure; code 0 when none */
    kiln__message *bmsgs; /* batch scratch: bcap of each */
    kiln__pub_slot *bslot;
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

#endif /* KILN_PUBLISHER_H */
