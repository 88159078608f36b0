/*
 * What the worker-pool integration tests (test_pool_*.c) and the programs
 * they start (prog_worker.c, prog_sender.c) agree on: the environment
 * variables beyond KILN_*, the lines of the task and send logs, and the
 * counters file.
 *
 * Task log (KILN_IT_LOG), one line per event, each written with a single
 * write(2) to a descriptor opened with O_APPEND, so a SIGKILL loses
 * nothing already written and lines of concurrent tasks never mix:
 *
 *   S <uuid> <pid> <monotonic ms>    a task started (KILN_IT_LOG_STARTS=1)
 *   F <uuid> <pid> <monotonic ms>    a task finished and returned KILN_OK
 *   R <uuid> <pid> <monotonic ms> <RetryCount> <RetryTimeout> <RetriesDone>
 *                                    it.flaky started, with the counters
 *                                    its signature arrived with
 *   E <uuid> <pid> <monotonic ms> <late us>
 *                                    it.eta started this long after its
 *                                    ETA (negative: early), by the
 *                                    worker's real-time clock
 *   K <uuid> <pid> <monotonic ms>    it.crash is about to kill its process
 *
 * Send log (KILN_IT_SENT), written by prog_sender after each batch:
 *
 *   C <uuid> <pid> <monotonic ms>    kiln_pool_send_tasks confirmed it
 *   X <uuid> <pid> <monotonic ms>    its send failed (it may still run)
 *
 * CLOCK_MONOTONIC is shared by every process of the machine, so the
 * drivers compare these times with their own.
 */
#ifndef KILN_POOL_IT_SHARED_H
#define KILN_POOL_IT_SHARED_H

#include <stdatomic.h>

/* Both programs: the pid of the test that started them; they die with it. */
#define IT_ENV_PARENT "KILN_IT_PARENT"

/* prog_worker */
#define IT_ENV_LOG        "KILN_IT_LOG"        /* task log path */
#define IT_ENV_LOG_STARTS "KILN_IT_LOG_STARTS" /* 1: log S lines too */
#define IT_ENV_SLEEP_MS   "KILN_IT_SLEEP_MS"   /* each task sleeps this */
#define IT_ENV_COUNTERS   "KILN_IT_COUNTERS"   /* counters file path */
#define IT_ENV_NAME       "KILN_IT_NAME"       /* pool name */
/* 1: the pool sends no acks (kiln__pool_hold_acks), so a test can kill it
 * after tasks finished and before their acks went out. */
#define IT_ENV_HOLD_ACKS "KILN_IT_HOLD_ACKS"
/* 1: when kiln_pool_start returns KILN_ETIMEDOUT (a task outlived the
 * drain), end the process with _exit(IT_EXIT_ABANDONED) instead of
 * waiting in kiln_pool_free, as the README says a program may. */
#define IT_ENV_EXIT_ON_TIMEOUT "KILN_IT_EXIT_ON_TIMEOUT"
#define IT_EXIT_ABANDONED      4

/* prog_sender */
#define IT_ENV_SENT     "KILN_IT_SENT"     /* send log path */
#define IT_ENV_BATCH    "KILN_IT_BATCH"    /* signatures per send call */
#define IT_ENV_PAUSE_MS "KILN_IT_PAUSE_MS" /* pause between calls */
#define IT_ENV_TOTAL                                             \
    "KILN_IT_TOTAL"                      /* stop after this many \
                                            confirmed; 0: at SIGTERM */
#define IT_ENV_SECONDS "KILN_IT_SECONDS" /* give up after this long */

/* The task every test sends: logs, counts, sleeps KILN_IT_SLEEP_MS. */
#define IT_TASK_RECORD "it.record"
/* Fails unless argument 0 is an int64: a task-level bad argument. */
#define IT_TASK_WANT_INT "it.want_int"

/* Fails with the message "it.fail: asked to fail". */
#define IT_TASK_FAIL "it.fail"
/* Succeeds with one result of every scalar type: IT_RESULT_* below. */
#define IT_TASK_RESULTS  "it.results"
#define IT_RESULT_INT    (-9007199254740993LL) /* not a double */
#define IT_RESULT_UINT64 18446744073709551615ULL
#define IT_RESULT_STRING "h\xc3\xa9llo \xe2\x9c\x93 \"q\" \\ end"
#define IT_RESULT_FLOAT  0.1

/* Logs an R line, sleeps KILN_IT_SLEEP_MS, then fails with the message
 * "it.flaky: run N of this process" (N counts its runs of this UUID), or
 * succeeds once it failed as many times as its int64 argument 0 says
 * (no argument: it always fails). */
#define IT_TASK_FLAKY "it.flaky"
/* Logs a K line, then kills its own process with SIGKILL. */
#define IT_TASK_CRASH "it.crash"
/* Logs an E line and succeeds. */
#define IT_TASK_ETA "it.eta"
/* Logs an S line, sleeps as many ms as its int64 argument 0 says, logs an
 * F line and succeeds. */
#define IT_TASK_SLEEP "it.sleep"

/* The counters file (KILN_IT_COUNTERS): prog_worker maps it shared and
 * the driver maps it too. The file must be at least this big. */
typedef struct it_counters {
    atomic_long running;     /* tasks inside the task function now */
    atomic_long max_running; /* highest `running` seen */
    atomic_long started;
    atomic_long finished;
} it_counters;

#endif /* KILN_POOL_IT_SHARED_H */
