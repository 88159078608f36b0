/*
 * The consumer loop's state, shared by its files: consumer.c (the loop,
 * the connection, the ack window, stopping), outcome.c (what a finished
 * delivery causes: its ack, a copy through the publisher, a lease before
 * the broker's consumer_timeout) and redeliver.c (deliveries this process
 * has seen before). Everything here belongs to the consumer thread.
 * Never installed; workerpool/consumer.c says how it all works.
 */
#ifndef KILN_CONSUMER_H
#define KILN_CONSUMER_H

#include "workerpool/pool.h"

#define MS_NS 1000000LL
/* A finished delivery's ack goes out within this, with others. */
#define KILN__ACK_DELAY_NS (2 * MS_NS)
/* A refused copy goes again after up to 100 ms, doubling to 10 s. */
#define KILN__RESEND_BASE_MS 100
#define KILN__RESEND_CAP_MS  10000
/* A redelivery of a task still running here waits this long in the delay
 * queues before it looks again (less when the consumer timeout is short). */
#define KILN__HOLD_MS 5000
/* Outcomes of tasks whose delivery was lost or leased are kept for as long
 * as a copy of it can stay away, and this much more. */
#define KILN__REMEMBER_EXTRA_NS (60 * 1000000000LL)

typedef enum kiln__recent_kind {
    KILN__RECENT_FREE = 0,
    KILN__RECENT_DONE,     /* finished here: ack its redelivery unrun */
    KILN__RECENT_UNSTARTED /* handed back unstarted by a lost connection */
} kiln__recent_kind;

typedef struct kiln__recent {
    char uuid[KILN_NAME_MAX];
    kiln__recent_kind kind;
    int64_t until_ns;
} kiln__recent;

typedef struct kiln__consumer {
    kiln_pool *p;
    kiln__broker *b;
    kiln__publisher *pub;
    bool connected;
    bool draining;
    unsigned attempt; /* reconnects since the last success */
    kiln__work **win; /* ring: live deliveries in tag order */
    size_t win_head, win_len;
    kiln__work **scratch; /* n_slots entries */
    kiln__work *free_list;
    size_t done_unacked; /* live entries in state DONE */
    size_t ack_batch;
    int64_t flush_due_ns; /* 0: nothing waits */
    size_t in_workers;    /* QUEUED entries not yet back: queued or running */
    size_t in_publisher;  /* copies the publisher has */
    size_t waiting;       /* WAITING entries */
    size_t parked;        /* PARKED entries */
    bool refusing;        /* the broker refuses copies: said once */
    int64_t lease_ns;     /* half the consumer timeout; 0: none */
    int64_t lease_check_ns;
    uint64_t hold_ms;
    int64_t remember_ns;
    kiln__recent *recents;
    size_t n_recents;
} kiln__consumer;

static inline kiln__work *kiln__consumer_win_at(kiln__consumer *c, size_t i)
{
    return c->win[(c->win_head + i) % c->p->n_slots];
}

/* ---- consumer.c ---------------------------------------------------------- */

/* Nothing is left to do for `w`: its slot is free once it is out of the
 * window (the window drops it at the next compaction), and copies parked
 * behind it go to the workers. */
void kiln__consumer_settled(kiln__consumer *c, kiln__work *w);

/* Flushes the acks that are due (all of them with `force`) and compacts
 * the window. */
void kiln__consumer_flush(kiln__consumer *c, bool force);

/* The connection is gone; see consumer.c. */
void kiln__consumer_lose(kiln__consumer *c, const kiln_error *why);

/* Hands the list head..tail of `n` ready jobs to the workers. */
void kiln__consumer_enqueue(kiln__consumer *c, kiln__work *head,
                            kiln__work *tail, size_t n);

/* ---- outcome.c ----------------------------------------------------------- */

/* What a task's outcome (or a verdict decided without a worker) does:
 * an ack, a nack, or a copy through the publisher and then the ack. */
void kiln__consumer_conclude(kiln__consumer *c, kiln__work *w);

/* Builds the copy the verdict of `w` asks for and sends it. */
void kiln__consumer_send_copy(kiln__consumer *c, kiln__work *w);

/* Settles what the workers finished, and the copies the publisher is done
 * with; sends again the refused copies whose backoff ended. */
void kiln__consumer_take_outcomes(kiln__consumer *c);
void kiln__consumer_take_sent(kiln__consumer *c);
void kiln__consumer_resend_due(kiln__consumer *c);

/* Keeps every delivery clear of the broker's consumer_timeout: hands back
 * those no worker took and leases those that run, from half of it on. */
void kiln__consumer_check_leases(kiln__consumer *c);

/* Sends a delivery no worker took back to the queue, counts unchanged
 * (`w` is out of the work queue; `why` is for the log). */
void kiln__consumer_hand_back(kiln__consumer *c, kiln__work *w,
                              const char *why);

/* ---- redeliver.c --------------------------------------------------------- */

typedef enum kiln__admission {
    KILN__ADMIT_RUN,     /* a worker takes it */
    KILN__ADMIT_DECIDED, /* its verdict is decided: conclude it */
    KILN__ADMIT_PARKED   /* it waits for a delivery here to be acked */
} kiln__admission;

/* Decodes a new delivery and decides what becomes of it. */
kiln__admission kiln__consumer_admit(kiln__consumer *c, kiln__work *w);

/* Hands the copies parked behind `w` on: `w` is settled. */
void kiln__consumer_unpark(kiln__consumer *c, const kiln__work *w);

/* Remembers the outcome (or the loss) of task `uuid` (may be NULL: no-op)
 * for its redeliveries, for a while. */
void kiln__consumer_remember(kiln__consumer *c, const char *uuid,
                             kiln__recent_kind kind);

#endif /* KILN_CONSUMER_H */
