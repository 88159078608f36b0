/*
 * Internals of the JSON codec, shared by task/codec_json.c (encode),
 * task/decode_json.c and task/decode_args.c (decode), task/codec_raw.c
 * (paota's header mode) and their helpers json_out.c, json_scan.c and
 * json_tree.c. Never installed; nothing outside the codec includes it.
 *
 * The codec writes what Go's encoding/json writes for machinery's and
 * paota's Signature, byte for byte, and reads what Go reads, with the
 * departures listed in the README (codec section).
 */
#ifndef KILN_TASK_CODEC_H
#define KILN_TASK_CODEC_H

#include "task/task.h"

/* Deepest nesting of arrays and objects accepted in a body. machinery's
 * callbacks nest two levels per link, so this allows long chains while
 * keeping every walk of a tree on a small fixed stack. */
#define KILN__JSON_MAX_DEPTH 128

/* Longest number token accepted. cJSON copies a number into a 64-byte
 * buffer before strtod and fails on anything longer. */
#define KILN__JSON_NUMBER_MAX 63

/* ---- output buffer ------------------------------------------------------
 * A growable string. Appends never fail visibly: the first failed
 * allocation sets `oom` and later appends do nothing, so encoders check
 * once, in kiln__buf_finish. */
typedef struct kiln__buf {
    char *p;
    size_t n;
    size_t cap;
    bool oom;
} kiln__buf;

void kiln__buf_put(kiln__buf *b, const char *s, size_t n);
void kiln__buf_puts(kiln__buf *b, const char *s);
void kiln__buf_free(kiln__buf *b);
/* Hands the NUL-terminated text to *out (caller owns; kiln_free) or
 * returns KILN_ENOMEM; the buffer is empty afterwards either way. */
kiln_err kiln__buf_finish(kiln__buf *b, char **out, size_t *len,
                          kiln_error *err);

/* ---- JSON output as Go writes it ---------------------------------------- */

/* A JSON string with Go's escaping: \" \\ \b \f \n \r \t, other control
 * bytes as \u00xx, <, > and & as \u003c \u003e \u0026, U+2028/2029 as
 * \u2028/\u2029, invalid UTF-8 as \ufffd. */
void kiln__json_string(kiln__buf *b, const char *s, size_t n);
void kiln__json_int(kiln__buf *b, int64_t v);
void kiln__json_uint(kiln__buf *b, uint64_t v);
/* The shortest text that reads back as `v` as a float of `bits` (32 or
 * 64), in Go's layout: exponent form below 1e-6 and from 1e21 on.
 * `out` needs KILN__FLOAT_MAX bytes; returns the length. */
#define KILN__FLOAT_MAX 32
size_t kiln__format_float(double v, int bits, char *out);
void kiln__json_float(kiln__buf *b, double v, int bits);
/* Go's json.Compact with HTML escaping, as Go applies it to a
 * json.RawMessage: drops whitespace outside strings and escapes <, >, &
 * and U+2028/2029 inside them. `s` must be valid JSON. */
void kiln__json_compact(kiln__buf *b, const char *s, size_t n);

/* Writes any cJSON tree. Numbers must be cJSON_Raw items (their text is
 * written as it is). With `sort_keys`, objects are written with their
 * keys in byte order and duplicates dropped, last one winning, as Go
 * writes a map. KILN_ECODEC if the tree is deeper than the limit. */
kiln_err kiln__json_tree(kiln__buf *b, const cJSON *item, bool sort_keys,
                         kiln_error *err);

/* ---- input ---------------------------------------------------------------
 * Bodies are checked in this order: size limit, UTF-8, a strict RFC 8259
 * scan (cJSON alone accepts control bytes, leading zeros, any byte up to
 * space as whitespace and trailing data), then cJSON builds the tree. */

/* Where the value of each member of a top-level object lies in the text,
 * in document order (one entry per member, duplicates included). */
typedef struct kiln__span {
    size_t off;
    size_t len;
} kiln__span;

typedef struct kiln__spans {
    kiln__span *v;
    size_t n;
    size_t cap;
} kiln__spans;

void kiln__spans_free(kiln__spans *sp);

/* Checks that s[0..n) is one strict JSON value and nothing else. When
 * `members` is not NULL and the value is an object, fills it. Errors are
 * KILN_ECODEC ("body: not JSON (error near byte 42)") or KILN_ENOMEM;
 * `what` names the text in messages ("body"). */
kiln_err kiln__json_validate(const char *s, size_t n, const char *what,
                             kiln__spans *members, kiln_error *err);

/* Size limit (0 = KILN__DEFAULT_MAX_BODY), UTF-8, strict scan, cJSON
 * parse, then every number becomes a cJSON_Raw item holding its exact
 * text, so 64-bit integers and unknown numbers survive. On success
 * *root is the caller's (cJSON_Delete). */
kiln_err kiln__json_parse(const char *s, size_t n, size_t max_len,
                          const char *what, kiln__spans *members, cJSON **root,
                          kiln_error *err);

/* The byte offset of the first invalid UTF-8 sequence, or n. */
size_t kiln__utf8_error_at(const char *s, size_t n);

/* Replaces every cJSON_Number in `root` by a cJSON_Raw holding the token
 * text taken from `text`, walking both in document order. */
kiln_err kiln__json_raw_numbers(cJSON *root, const char *text, size_t n,
                                kiln_error *err);

/* Drops duplicate keys from `obj`, the last one winning (Go's map
 * semantics); with `deep`, from every object below it too. */
kiln_err kiln__json_dedupe(cJSON *obj, bool deep, kiln_error *err);

/* "null", "bool", "number", "string", "array" or "object". */
const char *kiln__json_kind(const cJSON *item);

/* Go's encoding/json key matching: exact, else ASCII case-insensitive,
 * with U+212A KELVIN SIGN matching k and U+017F LONG S matching s. */
bool kiln__key_match(const char *key, const char *field);

/* ---- the Signature fields ----------------------------------------------- */

typedef enum kiln__field_kind {
    KILN__F_STRING,   /* char * at off */
    KILN__F_INT,      /* int at off (Go int; kiln keeps 32 bits) */
    KILN__F_PRIORITY, /* unsigned at off, 0..255 (Go uint8) */
    KILN__F_BOOL,     /* bool at off */
    KILN__F_TIME,     /* bool has at off, kiln__time at off2 (Go *time.Time) */
    KILN__F_ARGS,     /* args (Go []Arg) */
    KILN__F_HEADERS,  /* headers (Go map[string]interface{}) */
    KILN__F_EXTRA,    /* kept verbatim in extra (machinery callbacks) */
    KILN__F_RAW       /* raw_args (Go json.RawMessage) */
} kiln__field_kind;

typedef struct kiln__field {
    const char *key;
    kiln__field_kind kind;
    bool paota_only;
    bool machinery_only;
    size_t off;
    size_t off2;
} kiln__field;

/* Every key either dialect defines, machinery's first in its struct
 * order, then paota's own. */
extern const kiln__field kiln__fields[];
extern const size_t kiln__n_fields;

/* Index into kiln__fields of `key` (Go's matching), or -1. */
int kiln__field_find(const char *key);

/* ---- pieces of the decoder ---------------------------------------------- */

/* JSON number tokens (already checked by the scan) to C numbers, exactly,
 * whatever the C locale. Integers follow Go's strconv.ParseInt and
 * ParseUint, which json.Number.Int64 and machinery use: "1.0" and "1e3"
 * are not integers (KILN_ETYPE), and an unsigned type refuses any minus
 * sign, "-0" included (KILN_EINVAL). Too large: KILN_ERANGE. Floats
 * follow strconv.ParseFloat: overflow is KILN_ERANGE, underflow rounds
 * to zero or a subnormal without error. */
kiln_err kiln__parse_int(const char *tok, int64_t *out);
kiln_err kiln__parse_uint(const char *tok, uint64_t *out);
kiln_err kiln__parse_float(const char *tok, double *out);

/* Decodes machinery's Args array into sig->args (replacing them). */
kiln_err kiln__decode_args(kiln_signature *sig, const cJSON *args,
                           kiln_error *err);

#endif /* KILN_TASK_CODEC_H */
