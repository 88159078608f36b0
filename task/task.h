/*
 * Internal view of the task model, shared by task/, the codec, the worker
 * pool and the mocks. Never installed.
 */
#ifndef KILN_TASK_H
#define KILN_TASK_H

#include "core/core.h"
#include "core/headers.h"

#include <cjson/cJSON.h>

/* A point in time as Go's time.Time writes it in JSON (RFC 3339 with up to
 * nine fraction digits and a zone offset). The offset is kept so that a
 * decoded time is written back exactly as it came. */
typedef struct kiln__time {
    int64_t unix_ns;  /* instant, nanoseconds since the Unix epoch (UTC) */
    int32_t offset_s; /* zone offset east of UTC, seconds; 0 = "Z" */
} kiln__time;

/* One typed value: an argument or a result. */
typedef struct kiln__value {
    kiln_type type;
    char *name; /* owned; NULL means "" */
    union {
        bool b;     /* BOOL */
        int64_t i;  /* INT..INT64 */
        uint64_t u; /* UINT..UINT64 */
        double f;   /* FLOAT32 (exactly representable as float), FLOAT64 */
        char *s;    /* STRING, owned, valid UTF-8 */
        struct {
            void *ptr; /* owned: bool[], int64_t[], uint64_t[], double[],
                          uint8_t[] for BYTES and UINT8_SLICE, or for
                          STRING_SLICE one block from kiln__strings_alloc
                          (the char *[] with the strings after it) */
            size_t n;  /* element count */
        } arr;
    } v;
} kiln__value;

/* kiln__type_is_slice: one of the "[]..." types, "[]byte" included. */
static inline bool kiln__type_is_slice(kiln_type t)
{
    return t >= KILN_TYPE_BOOL_SLICE && t <= KILN_TYPE_LAST;
}

/* kiln__type_elem: the scalar type of one element (the enum lists the
 * slices in the order of the scalars; "[]byte" holds uint8s); a scalar
 * type is its own. */
static inline kiln_type kiln__type_elem(kiln_type t)
{
    if (t == KILN_TYPE_BYTES)
        return KILN_TYPE_UINT8;
    if (kiln__type_is_slice(t))
        return (kiln_type)(t - KILN_TYPE_BOOL_SLICE);
    return t;
}

/* kiln__type_elem_size: the bytes of one stored element of a slice of
 * type `t` (see kiln__value: bool, uint8_t for "[]byte" and "[]uint8",
 * double for floats, char * for strings, else int64_t or uint64_t). */
static inline size_t kiln__type_elem_size(kiln_type t)
{
    switch (kiln__type_elem(t)) {
    case KILN_TYPE_BOOL:
        return sizeof(bool);
    case KILN_TYPE_UINT8:
        return sizeof(uint8_t);
    case KILN_TYPE_FLOAT32:
    case KILN_TYPE_FLOAT64:
        return sizeof(double);
    case KILN_TYPE_STRING:
        return sizeof(char *);
    default:
        return sizeof(int64_t); /* int64_t and uint64_t alike */
    }
}

/* A growable list of values. Zero-initialised is an empty list. */
typedef struct kiln__values {
    kiln__value *items;
    size_t n;
    size_t cap;
} kiln__values;

/* Appends a deep copy of `v` (checked: type in range, integers fit their
 * type, floats finite, strings valid UTF-8). The list is unchanged on
 * failure. */
kiln_err kiln__values_add(kiln__values *list, const kiln__value *v,
                          kiln_error *err);
/* Appends `v` and takes ownership of its pointers (no copy), after the same
 * checks; on failure `v`'s pointers are freed. */
kiln_err kiln__values_add_owned(kiln__values *list, kiln__value *v,
                                kiln_error *err);
/* Appends `v` and takes its pointers, with no checks: for the decoder,
 * whose values are checked as they are read. On failure (KILN_ENOMEM)
 * v's pointers are freed. */
kiln_err kiln__values_push(kiln__values *list, kiln__value *v, kiln_error *err);
kiln_err kiln__values_copy(kiln__values *dst, const kiln__values *src,
                           kiln_error *err);

/* The one block a "[]string" of `n` strings lives in: the char *[n], then
 * room for `bytes` bytes of text and the n NULs; *text gets where the text
 * starts. Caller owns (kiln__free, once). NULL on ENOMEM. */
char **kiln__strings_alloc(size_t n, size_t bytes, char **text);
void kiln__values_clear(kiln__values *list); /* frees items, keeps nothing */
void kiln__value_release(kiln__value *v);    /* frees v's pointers */

/* ---- the setters of arguments and results ------------------------------
 * kiln_signature_add_arg_* (task/args.c) and kiln_task_add_result_*
 * (task/context.c) take the same values with the same checks. Each public
 * setter takes one family of types: lo..hi less `except`. */
typedef struct kiln__family {
    kiln_type lo, hi;
    kiln_type except; /* KILN__TYPE_NONE when the range has no hole */
} kiln__family;

#define KILN__TYPE_NONE           ((kiln_type)(KILN_TYPE_LAST + 1))
#define KILN__FAMILY(lo, hi, exc) ((kiln__family){(lo), (hi), (exc)})
#define KILN__FAMILY_OF(t)        KILN__FAMILY(t, t, KILN__TYPE_NONE)
#define KILN__FAMILY_INT \
    KILN__FAMILY(KILN_TYPE_INT, KILN_TYPE_INT64, KILN__TYPE_NONE)
#define KILN__FAMILY_UINT \
    KILN__FAMILY(KILN_TYPE_UINT, KILN_TYPE_UINT64, KILN__TYPE_NONE)
#define KILN__FAMILY_FLOAT \
    KILN__FAMILY(KILN_TYPE_FLOAT32, KILN_TYPE_FLOAT64, KILN__TYPE_NONE)
#define KILN__FAMILY_INT_SLICE \
    KILN__FAMILY(KILN_TYPE_INT_SLICE, KILN_TYPE_INT64_SLICE, KILN__TYPE_NONE)
/* []uint8 is stored as bytes, so it has a setter of its own. */
#define KILN__FAMILY_UINT_SLICE                                \
    KILN__FAMILY(KILN_TYPE_UINT_SLICE, KILN_TYPE_UINT64_SLICE, \
                 KILN_TYPE_UINT8_SLICE)
#define KILN__FAMILY_FLOAT_SLICE                                   \
    KILN__FAMILY(KILN_TYPE_FLOAT32_SLICE, KILN_TYPE_FLOAT64_SLICE, \
                 KILN__TYPE_NONE)

/* kiln__family_check: KILN_OK when `t` belongs to `fam`, else KILN_EINVAL
 * naming the value "<what> <index>" ("arg 2: type int8 is not one of
 * []int ... []int64"). */
kiln_err kiln__family_check(const char *what, size_t index, kiln_type t,
                            kiln__family fam, kiln_error *err);

/* kiln__values_put appends a copy of `v` (its pointers borrowed) for a
 * setter of family `fam`: kiln__family_check, then kiln__values_add, with
 * "<what> <index>: " before any message. The list is unchanged on
 * failure. */
kiln_err kiln__values_put(kiln__values *list, const char *what,
                          const kiln__value *v, kiln__family fam,
                          kiln_error *err);

/* The signature. Strings are owned and never NULL once created ("" when
 * absent, allocated). Fields the codec does not model are kept in `extra`
 * (an object of key -> value, in arrival order) and written back. */
struct kiln_signature {
    char *uuid;
    char *name;
    char *routing_key;
    char *group_uuid;
    int group_task_count;
    unsigned priority; /* 0..255 */
    int retry_count;   /* machinery: remaining; paota: total */
    int retry_timeout; /* seconds */
    int retries_done;  /* paota */
    int task_timeout;  /* paota TaskTimeOut, seconds */
    int wait_time;     /* paota WaitTime */
    bool immutable;
    bool ignore_unregistered;
    bool stop_task_deletion_on_error;
    bool has_eta;
    kiln__time eta;
    bool has_created_at;
    kiln__time created_at;
    char *broker_message_group_id;
    char *sqs_receipt_handle;
    kiln__values args;
    char *raw_args; /* paota RawArgs / header-mode body; NULL = none */
    size_t raw_args_len;
    cJSON *headers;       /* machinery Headers object, or NULL */
    cJSON *extra;         /* unknown and unmodelled keys, or NULL */
    kiln_dialect dialect; /* the dialect it was decoded from */
};

/* A read-only signature with nothing in it, every string "" (static):
 * what an accessor returns instead of NULL (kiln_task_results of no
 * context, kiln_result_values of a NULL result). Never freed. */
extern const kiln_signature kiln__signature_empty;

/* The "" every empty string field of a signature points to, so that an
 * empty field costs no allocation: never written, never freed
 * (kiln__text_free knows it). */
extern char kiln__no_text[1];

/* Frees a signature's string field, unless it is kiln__no_text. */
void kiln__text_free(char *s);

/* Creates an empty signature: every string kiln__no_text, no UUID
 * generated. Used by the decoder. */
kiln_signature *kiln__signature_alloc(kiln_error *err);

/* Points every string field still NULL at kiln__no_text, so a signature
 * built field by field (the decoder's) keeps the rule above. */
void kiln__signature_fill(kiln_signature *sig);

/* Sets `sig` (caller's memory) to an empty signature, as
 * kiln__signature_alloc makes one; kiln__values_clear(&sig->args)
 * releases what it gathers. */
void kiln__signature_init(kiln_signature *sig);

/* For a JSON body that did not decode: copies the string values of its
 * top-level "UUID" and "Name" keys (the first of each; exact keys) into
 * uuid[n] and name[n], cut to fit, when the whole body is JSON; both are
 * "" otherwise. Allocates nothing and builds no tree, so it costs a pass
 * over the body whatever the body holds. Thread-safe. */
void kiln__json_salvage_ids(const char *body, size_t len, char *uuid,
                            char *name, size_t n);

/* Replaces the signature string *slot with a copy of `s` (kiln__no_text
 * for ""). */
kiln_err kiln__set_string(char **slot, const char *s, kiln_error *err);

/* Default body limit when the caller passes 0. */
#define KILN__DEFAULT_MAX_BODY ((size_t)16 * 1024 * 1024)

/* RFC 3339 (Go's time.RFC3339Nano) formatting and parsing. `out` needs
 * KILN__TIME_MAX bytes. Parse errors name the reason in `err`. */
#define KILN__TIME_MAX 40
size_t kiln__time_format(const kiln__time *t, char *out, size_t n);
kiln_err kiln__time_parse(const char *s, kiln__time *out, kiln_error *err);

/* Standard base64 with padding, as Go's encoding/json writes []byte.
 * encode: caller owns the NUL-terminated result (kiln__free).
 * decode: accepts padded standard base64 only; caller owns *out. */
char *kiln__base64_encode(const uint8_t *data, size_t n);
kiln_err kiln__base64_decode(const char *s, size_t len, uint8_t **out,
                             size_t *n, kiln_error *err);

/* kiln__signature_to_raw_fields is kiln_signature_to_raw with the headers
 * typed as paota writes them, so that a Go reader finds the types it
 * asserts (task/codec_raw.c lists them). *fields: one block with its
 * names and strings, caller owns; free it with kiln__free. Without a raw
 * body the whole signature is the body, as JSON, and there are no
 * headers (*fields NULL, *n 0). Thread-safety: safe from any thread. */
kiln_err kiln__signature_to_raw_fields(const kiln_signature *sig, char **body,
                                       size_t *body_len, kiln__hdr **fields,
                                       size_t *n, kiln_error *err);

/* The task context a function runs with. */
struct kiln_task_ctx {
    const kiln_signature *sig; /* borrowed */
    kiln_signature results;    /* its args are the results; the strings
                                  are empty (kiln__signature_init) */
    kiln_error failure;        /* set by kiln_task_fail */
    uint64_t retry_delay_ms;   /* set by kiln_task_retry */
    bool retry_requested;
    int64_t deadline_ns; /* monotonic; 0 = none */
    unsigned attempt;    /* kiln_task_attempt: 1 + the retries before */
};

/* kiln__signature_retries: the retries a task had before this run, from
 * `counted` (kiln's x-kiln-retries, 0 when there is none) and what the
 * message itself carries: paota's RetriesDone, which a paota worker's
 * retry advances without kiln's header. machinery's RetryCount counts
 * down from a total the message does not carry, so it tells nothing. */
unsigned kiln__signature_retries(const kiln_signature *sig, unsigned counted);

/* kiln_registry_lookup that also gives the task's own soft time limit
 * (0 when none was set), in one look-up. Thread-safe. */
kiln_err kiln__registry_find(const kiln_registry *reg, const char *name,
                             kiln_task_fn *fn, void **user,
                             unsigned *time_limit_ms);

/* Prepares and releases a context for `sig` (borrowed). The context's
 * attempt is 1 + kiln__signature_retries(sig, 0); the worker sets it
 * from the delivery's count as well. */
kiln_err kiln__task_ctx_init(kiln_task_ctx *ctx, const kiln_signature *sig,
                             kiln_error *err);
void kiln__task_ctx_release(kiln_task_ctx *ctx);

#endif /* KILN_TASK_H */
