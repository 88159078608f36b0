/*
 * The task and send logs of pool_it_shared.h, read back by the worker-pool
 * integration tests: counted while a test polls, parsed into events, and
 * tallied against the UUIDs a test sent (missing, duplicated, unknown).
 * Also the clock the tests wait by. pool_it.h includes it.
 */
#ifndef KILN_TEST_POOL_IT_LOG_H
#define KILN_TEST_POOL_IT_LOG_H

#include "core/core.h"

#include <kiln.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef char it_uuid[KILN_UUID_LEN];

/* ---- time --------------------------------------------------------------- */

/* CLOCK_MONOTONIC in milliseconds, the clock of the task logs. */
long long it_ms(void);

/* Sleeps `ms` milliseconds, resuming after a signal. */
void it_sleep_ms(unsigned ms);

/* ---- logs --------------------------------------------------------------- */

typedef struct it_event {
    char kind;
    it_uuid uuid;
    long pid;
    long long ms;
} it_event;

typedef struct it_events {
    it_event *v;
    size_t n;
} it_events;

/* Reads a whole file; NULL (and *len 0) when it does not exist yet. */
char *it_slurp(const char *path, size_t *len);

/* True when the file at `path` holds `text`. */
bool it_file_contains(const char *path, const char *text);

/* Lines of `kind` in a log (a line still being written is not counted). */
size_t it_count(const char *path, char kind);

/* Polls until the log has `want` lines of `kind`; returns the last count. */
size_t it_wait_count(const char *path, char kind, size_t want, int timeout_ms);

/* Parses every complete line; asserts each is well formed. */
void it_read_events(const char *path, it_events *out);

/* A line of the task log with up to three numbers after the time. */
typedef struct it_xline {
    char kind;
    it_uuid uuid;
    long pid;
    long long ms;
    long long v[4];
} it_xline;

/* The lines of `kind` about `uuid` (NULL: any), in the order written, into
 * out[max]; returns how many there are (may exceed max). */
size_t it_read_xlines(const char *log, char kind, const char *uuid,
                      it_xline *out, size_t max);

/* Frees what it_read_events filled; *e is empty afterwards. */
void it_events_free(it_events *e);

/* How the events of `kind` cover `want` (n UUIDs): how many of them never
 * appear, how many appear more than once and how many extra times in all,
 * and how many events name a UUID not in `want`. */
typedef struct it_tally {
    size_t events, missing, dup_tasks, dup_runs, unknown;
    const char *first_missing; /* borrowed from `want` */
} it_tally;

it_tally it_tally_of(const it_events *ev, char kind, it_uuid *want, size_t n);

/* The UUIDs of the events of `kind` (each once) into a new array. */
it_uuid *it_uuids_of(const it_events *ev, char kind, size_t *n);

#endif /* KILN_TEST_POOL_IT_LOG_H */
