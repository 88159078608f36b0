/*
 * BSON for the MongoDB store: the filters and updates a state write sends,
 * results as machinery stores them, and a stored task document read back
 * into a kiln__task_record. No I/O, so all of it is testable without a
 * server. Used by store/mongo.c only. Never installed.
 *
 * The `tasks` document (machinery v2's TaskState plus kiln's fields):
 *
 *   _id          string  the task UUID
 *   task_name    string  from the first write that knew it ("" otherwise)
 *   state        string  PENDING RECEIVED STARTED RETRY SUCCESS FAILURE
 *   created_at   date    the first write (set on insert only)
 *   results      array   SUCCESS: [{type: "<Go type>", value: ...}]
 *   error        string  FAILURE and RETRY: why; "" after other writes
 *   delete_at    date    finished + results_expire_s; the TTL index key
 *   updated_at   date    the last applied write                  (kiln)
 *   worker       string  "host:pid" of the last non-PENDING writer (kiln)
 *   attempts     int32   how many times the task was STARTED      (kiln)
 *   started_at   date    the last STARTED                         (kiln)
 *   finished_at  date    SUCCESS or FAILURE                       (kiln)
 *   send_failed  bool    true on a producer's FAILURE for a send that
 *                        failed for certain (store.h rule 4); absent
 *                        otherwise                                (kiln)
 */
#ifndef KILN_STORE_MONGO_DOC_H
#define KILN_STORE_MONGO_DOC_H

#include "store/store.h"

/* libbson's inline functions do not pass -Wconversion. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#include <bson/bson.h>
#pragma GCC diagnostic pop

/* What a write needs besides the update itself. */
typedef struct kiln__mongo_write_ctx {
    int64_t now_ms;     /* realtime, milliseconds since the Unix epoch */
    const char *worker; /* "host:pid" */
    unsigned expire_s;  /* results_expire_s; 0 = no delete_at */
    bool unsent;        /* the write is a failed send's FAILURE (store.h
                           rule 4) */
} kiln__mongo_write_ctx;

#define KILN__MONGO_UNSENT "send_failed"

/* Which of store/store.h's rules a write follows. */
typedef enum kiln__mongo_rule {
    KILN__MONGO_RULE_STATE = 0, /* set_state: rules 1 to 3, and a failed
                                   send's FAILURE gives way (rule 4) */
    KILN__MONGO_RULE_UNSENT,    /* send_failed: over PENDING or a failed
                                   send's FAILURE only */
    KILN__MONGO_RULE_RESENT     /* a batch's PENDING for a task already
                                   known: over a failed send's FAILURE
                                   only (rule 2 leaves the rest) */
} kiln__mongo_rule;

/* kiln__mongo_filter fills `filter` (initialised by the caller) with the
 * condition under which `u` applies by `rule`: {_id, $or: [C, {send_failed:
 * true}]} where C is {state: "PENDING"} for PENDING and a failed send's
 * FAILURE, else {state: {$nin: [SUCCESS, FAILURE]}}; {_id, send_failed:
 * true} for RESENT. With upsert, a missing document is created; an
 * existing one that fails the condition makes the insert collide on _id,
 * which the caller takes as "ignored". */
void kiln__mongo_filter(bson_t *filter, const kiln__state_update *u,
                        kiln__mongo_rule rule);

/* kiln__mongo_applies: the same condition, for a document read back with
 * `state` ("" when it has none) and its send_failed mark `marked`. */
bool kiln__mongo_applies(const char *state, bool marked,
                         const kiln__state_update *u, kiln__mongo_rule rule);

/* kiln__mongo_update fills `update` (initialised by the caller) with the
 * $set/$setOnInsert/$inc/$unset document for `u`. KILN_ETOOBIG when the results
 * do not fit a BSON document; KILN_EINVAL for a value the store cannot
 * write. */
kiln_err kiln__mongo_update(bson_t *update, const kiln__state_update *u,
                            const kiln__mongo_write_ctx *ctx, kiln_error *err);

/* kiln__mongo_pending_doc fills `doc` (initialised by the caller) with the
 * whole document of a task first recorded as PENDING: the fields
 * kiln__mongo_update writes for PENDING, for an insert. */
void kiln__mongo_pending_doc(bson_t *doc, const kiln__state_update *u,
                             const kiln__mongo_write_ctx *ctx);

/* kiln__mongo_append_results appends `vals` under `key` as machinery's
 * [{type, value}] array. Integers keep all 64 bits: Go's encoding (int8,
 * int16, int32, uint8, uint16 and an `int` that fits as int32; int64,
 * uint, uint32, uint64 as int64), except that a uint64 above INT64_MAX,
 * which Go's driver refuses to write, is stored as its decimal string.
 * float32 and float64 are doubles; []byte and []uint8 are binary (subtype
 * 0); every other slice is an array, empty when the slice is. */
kiln_err kiln__mongo_append_results(bson_t *doc, const char *key,
                                    const kiln__values *vals, kiln_error *err);

/* kiln__mongo_read_results decodes the array at `iter` into `out` (which
 * the caller has zeroed), accepting what kiln and Go's driver write: any
 * BSON integer or integral double for integer types, null for an empty
 * slice, and machinery's {type: "json"} results as a string holding the
 * document's JSON. On failure `out` is cleared. */
kiln_err kiln__mongo_read_results(const bson_iter_t *iter, kiln__values *out,
                                  kiln_error *err);

/* kiln__mongo_read_str returns a copy of the UTF-8 string at `it` (caller
 * owns; kiln__free), or NULL when it is not a string, holds a NUL, or
 * allocation failed (*nomem tells which). */
char *kiln__mongo_read_str(const bson_iter_t *it, bool *nomem);

/* kiln__mongo_read_record fills *out from a stored `tasks` document.
 * KILN_ESTORE names the field that is missing or malformed; *out is
 * untouched on failure. */
kiln_err kiln__mongo_read_record(const bson_t *doc, kiln__task_record *out,
                                 kiln_error *err);

#endif /* KILN_STORE_MONGO_DOC_H */
