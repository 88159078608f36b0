/*
 * Shared code of the worker-pool integration tests (test_pool_*.c): a fixture
 * with topology names of its own, worker and sender processes started with
 * posix_spawn and always reaped in teardown, queue depths read through a
 * raw rabbitmq-c connection and rabbitmqctl, and the task logs of
 * pool_it_shared.h parsed and tallied.
 *
 * The tests run beside the node `make check-integration` starts: its URL is
 * in KILN_TEST_AMQP_URL, its control script in KILN_TEST_RABBITMQ and its
 * directory in KILN_TEST_RABBITMQ_DIR. The programs (prog_worker,
 * prog_sender) are built next to the test binaries.
 *
 * Every wait is a poll with a deadline. Asserts run on the test thread
 * only (there is no other). Compiled once (pool_it.c) and, as all of
 * test/support/, linked into every test program; the headers it includes
 * are the ones the test files use.
 */
#ifndef KILN_TEST_POOL_IT_H
#define KILN_TEST_POOL_IT_H

#include "core/core.h"
#include "test/support/amqp_raw.h"
#include "test/support/pool_it_log.h"
#include "test/support/pool_it_shared.h"

#include <kiln.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IT_MAX_PROCS 8
#define IT_MAX_ENV   256

typedef struct it_proc {
    pid_t pid; /* 0 once reaped */
    int status;
    char name[32];
    char out[PATH_MAX]; /* its stdout and stderr */
} it_proc;

typedef struct it_fix {
    kiln_config cfg;    /* this test's names and settings; the children get
                           them as KILN_* variables */
    char dir[PATH_MAX]; /* scratch directory of this test */
    char log[PATH_MAX]; /* task log */
    it_proc procs[IT_MAX_PROCS];
    size_t n_procs;
    kiln_pool *pool;     /* in-process sending; NULL until used */
    bool passed;         /* set at the end of a test: teardown is quiet */
    bool broker_stopped; /* stop_app without start_app yet */
} it_fix;

/* ---- environment -------------------------------------------------------- */

/* The value of the environment variable `name`; fails the test, naming
 * how to run it, when it is unset or empty. */
const char *it_env_need(const char *name);

/* `dir`/`file` into out[n]. */
void it_path(char *out, size_t n, const char *dir, const char *file);

/* An AMQP URL on 127.0.0.1 where nothing listens (a port the kernel just
 * handed out and took back): connections to it are refused at once. */
void it_closed_url(char *out, size_t n);

/* ---- raw AMQP: depths and clean-up, independent of the code under test -- */

/* NULL when the broker cannot be reached (teardown must not assert). */
amqp_connection_state_t it_raw_open(void);

/* Closes what it_raw_open opened; NULL is a no-op. */
void it_raw_close(amqp_connection_state_t c);

/* A passive queue.declare: ready messages and consumers. False when the
 * queue does not exist or the broker is unreachable. */
bool it_queue_info(const char *queue, long *ready, long *consumers);

/* Polls until `queue` exists with `want` consumers. */
bool it_wait_consumers(const char *queue, long want, int timeout_ms);

/* Polls until `queue` holds `want` ready messages; returns the last count
 * (-1 when the queue could not be read). */
long it_wait_ready(const char *queue, long want, int timeout_ms);

/* Deletes the fixture's queues and exchanges, the delay cascade its
 * pools declared included. */
void it_delete_topology(const kiln_config *cfg);

/* ---- the control script: rabbitmqctl and broker restarts ---------------- */

/* Runs `$KILN_TEST_RABBITMQ <cmd> $KILN_TEST_RABBITMQ_DIR`; its exit code. */
int it_rabbitmq(const char *cmd);

/* Runs `$KILN_TEST_RABBITMQ ctl $KILN_TEST_RABBITMQ_DIR <args>` (rabbitmqctl
 * on the test node; `args` is shell text); its exit code. */
int it_ctl(const char *args);

/* rabbitmqctl list_queues: ready, unacknowledged and consumers of `queue`
 * as the queue process itself counts them (~0.5 s per call). */
bool it_ctl_queue(const char *queue, long *ready, long *unacked,
                  long *consumers);

/* Polls rabbitmqctl until `queue` has `ready` ready and no unacked
 * messages; the last figures stay in *r, *u, *n. */
bool it_ctl_wait_settled(const char *queue, long ready, int timeout_ms, long *r,
                         long *u, long *n);

/* ---- processes ----------------------------------------------------------- */

typedef struct it_env {
    char *v[IT_MAX_ENV];
    size_t n;
} it_env;

/* Adds KEY=<formatted value>; a later value replaces an earlier one of
 * the same name. */
void it_env_add(it_env *e, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Adds each "KEY=VALUE" of the NULL-terminated `pairs` (may be NULL). */
void it_env_add_pairs(it_env *e, const char *const *pairs);

/* Frees the strings of `e`; it is empty afterwards. */
void it_env_free(it_env *e);

/* The parent's environment without any KILN_ variable, plus the fixture's
 * configuration as KILN_* variables. */
void it_env_init(it_env *e, const it_fix *f);

/* The path of program `prog`, built in the directory of this binary, or
 * in ../it beside it (for tests built elsewhere, such as test/long). */
void it_prog_path(const char *prog, char *out, size_t n);

/* Starts `prog` with environment `e`, its output in the scratch directory.
 * Returns the index of the process in the fixture. */
size_t it_spawn(it_fix *f, const char *prog, const char *name, it_env *e);

/* Waits up to `timeout_ms` for process `i` to end. True when it did. */
bool it_wait_exit(it_fix *f, size_t i, int timeout_ms);

/* Process `i` still runs (it is reaped when it does not). */
bool it_alive(it_fix *f, size_t i);

/* Sends `sig` to process `i`, which must still run. */
void it_signal(it_fix *f, size_t i, int sig);

/* Prints the last `lines` lines of a file. */
void it_tail(const char *path, int lines);

/* Asserts that process `i` exits with status 0 within `timeout_ms`; the
 * time it took is returned. */
long long it_expect_exit0(it_fix *f, size_t i, int timeout_ms);

/* Starts prog_worker on the fixture's queue with the task log and the
 * extra variables in `extra` ("KEY=VALUE", NULL-terminated; may be NULL). */
size_t it_start_worker(it_fix *f, const char *name, const char *const *extra);

/* ---- fixture ------------------------------------------------------------ */

/* Names of their own for one test: exchange, queue and dead-letter pair
 * under kiln_it.pool.<tag>.<random>. */
int it_setup(void **state, const char *tag);

/* Removes `dir` and the files in it (not deeper). */
void it_rm_dir(const char *dir);

/* Kills and reaps every process of the fixture still running. */
void it_kill_all(it_fix *f);

/* Kills and reaps every process still running, brings the broker back if
 * a test left it stopped, deletes the topology and the scratch files.
 * After a failure it prints the output of each process first. */
int it_teardown(void **state);

/* ---- sending from the test process -------------------------------------- */

/* The fixture's sending pool (one worker, never started), made on first
 * use; freed by it_teardown. */
kiln_pool *it_pool(it_fix *f);

/* Sends `n` it.record tasks in batches of `batch` with
 * kiln_pool_send_tasks, asserting each is confirmed; their UUIDs go to
 * `uuids` (may be NULL). */
void it_send(it_fix *f, size_t n, size_t batch, it_uuid *uuids);

/* A new signature named `name`; its UUID goes to `uuid` (may be NULL).
 * Caller owns; kiln_signature_free, or hand it to it_send_free. */
kiln_signature *it_new_sig(const char *name, it_uuid uuid);

/* Sends `n` signatures in one kiln_pool_send_tasks call, asserting that
 * all are confirmed, and frees them. */
void it_send_free(it_fix *f, kiln_signature **sigs, size_t n);

#endif /* KILN_TEST_POOL_IT_H */
