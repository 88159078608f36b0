/*
 * Internals of the JSON codec, shared by task/codec_json.c (encode),
 * task/decode_json.c and task/decode_args.c (decode), task/codec_raw.c
 * (paota's header mode) and their helpers: json_out.c (writing),
 * json_scan.c, json_string.c and json_number.c (the reader), json_build.c
 * and json_tree.c (the cJSON trees of values kept verbatim). Never
 * installed; only the codec, its tests and the fuzzer include it.
 *
 * The codec writes what Go's encoding/json writes for machinery's and
 * paota's Signature, byte for byte, and reads what Go reads, with the
 * departures listed in the README (codec section).
 */
#ifndef KILN_TASK_CODEC_H
#define KILN_TASK_CODEC_H

#include "core/buf.h"
#include "task/task.h"

/* Deepest nesting of arrays and objects accepted in a body. machinery's
 * callbacks nest two levels per link, so this allows long chains while
 * keeping every walk of a tree on a small fixed stack. */
#define KILN__JSON_MAX_DEPTH 128

/* Longest number token accepted. cJSON copies a number into a 64-byte
 * buffer before strtod and fails on anything longer. */
#define KILN__JSON_NUMBER_MAX 63

/* ---- JSON output as Go writes it ---------------------------------------- */

/* A JSON string, quotes included, with Go's escaping
 * (kiln__buf_json_escape with KILN__JSON_GO): \" \\ \b \f \n \r \t, other
 * control bytes as \u00xx, <, > and & as \u003c \u003e \u0026,
 * U+2028/2029 as \u2028/\u2029, invalid UTF-8 as \ufffd. */
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
 * A body is checked for its size and for UTF-8 first, then read once by a
 * strict RFC 8259 reader (task/json_scan.c) that fills the signature as it
 * goes: what kiln models is decoded straight from the text, and only the
 * values kept verbatim (unknown keys, Headers, machinery's callbacks)
 * become cJSON trees (task/json_build.c), within a budget. */

/* A position in a text being read. `s[0..n)` is borrowed; `why` names the
 * reason of the last failure when it is more than "not JSON". */
typedef struct kiln__reader {
    const unsigned char *s;
    size_t n;
    size_t pos;
    const char *why;
} kiln__reader;

/* What kiln__rd_skip saw of the value it passed over. */
typedef struct kiln__extent {
    size_t off, len; /* the value's text */
    size_t elems;    /* elements (array) or members (object) directly in it */
    size_t values;   /* every value in it, itself included */
    size_t text;     /* bytes between the quotes of the strings directly in
                        it, escapes as written (at least their decoded size) */
    bool esc;        /* some string in it holds an escape */
} kiln__extent;

/* A member's key as read: its text between the quotes (borrowed from the
 * reader's text, escapes as written) and, when shorter than `text`, the
 * key unescaped and NUL-terminated (else ""; no field name is that long). */
typedef struct kiln__key {
    const char *raw;
    size_t raw_len;
    bool esc; /* raw holds a backslash */
    char text[256];
} kiln__key;

/* The pieces of the reader. Each starts at r->pos and on success leaves
 * r->pos after what it read; on failure r->pos is where the text went
 * wrong, for kiln__rd_fail.
 * ws: moves over JSON whitespace.
 * string: a string at its opening quote; *len gets the bytes between the
 *   quotes, *escaped whether they hold an escape.
 * number: a number token (at most KILN__JSON_NUMBER_MAX bytes).
 * literal: exactly `word` (true, false, null).
 * key: a member's key, the colon and the whitespace around it; false also
 *   when the text ends after it.
 * skip: any value, nested at most KILN__JSON_MAX_DEPTH levels counting the
 *   `depth` levels it sits in; fills *x (may be NULL). */
static inline void kiln__rd_ws(kiln__reader *r)
{
    while (r->pos < r->n && (r->s[r->pos] == ' ' || r->s[r->pos] == '\n' ||
                             r->s[r->pos] == '\r' || r->s[r->pos] == '\t'))
        r->pos++;
}
bool kiln__rd_string(kiln__reader *r, size_t *len, bool *escaped);
bool kiln__rd_number(kiln__reader *r);
bool kiln__rd_literal(kiln__reader *r, const char *word);
bool kiln__rd_key(kiln__reader *r, kiln__key *k);
bool kiln__rd_skip(kiln__reader *r, size_t depth, kiln__extent *x);

/* "body: not JSON (error near byte 42)", or with r->why; KILN_ECODEC.
 * `what` names the text ("body"). */
kiln_err kiln__rd_fail(const kiln__reader *r, const char *what,
                       kiln_error *err);

/* The kind of the value whose first byte is `c`: "object", "array",
 * "string", "bool", "null" or (anything else) "number". */
const char *kiln__json_kind_at(unsigned char c);

/* Checks that s[0..n) is one strict JSON value and nothing else (UTF-8 is
 * checked apart). Errors are KILN_ECODEC ("body: not JSON (error near
 * byte 42)"); `what` names the text in messages. */
kiln_err kiln__json_validate(const char *s, size_t n, const char *what,
                             kiln_error *err);

/* The byte offset of the first invalid UTF-8 sequence, or n. */
size_t kiln__utf8_error_at(const char *s, size_t n);

/* String content as kiln__rd_string found it (`len` bytes, `escaped` as it
 * said) decoded into out[cap]: at most cap - 1 bytes, whole characters
 * only, then a NUL. Returns the bytes written. The decoded text is never
 * longer than `len`. */
size_t kiln__json_unescape(const char *raw, size_t len, bool escaped, char *out,
                           size_t cap);

/* The same into a new buffer of len + 1 bytes (caller owns; kiln__free);
 * *out_len (may be NULL) gets the decoded length. NULL on ENOMEM. */
char *kiln__json_strdup(const char *raw, size_t len, bool escaped,
                        size_t *out_len);

/* What one value kept verbatim is counted as against a decode's budget,
 * besides its text: a cJSON node and the allocator's share. */
#define KILN__JSON_NODE_COST (sizeof(cJSON) + 32)

/* Builds the value at r->pos, which kiln__rd_skip has already passed over
 * (so the text is known to be good), as a cJSON tree: numbers as cJSON_Raw
 * items holding their exact text, strings decoded. The root gets the key
 * `key` (key_len bytes, escapes as written when `key_esc`; NULL: none).
 * Each node is one allocation holding its key and text (cJSON_Delete
 * frees it; copy such trees with kiln__json_copy, not cJSON_Duplicate,
 * which would share their keys). On success *out is the caller's and
 * r->pos is after the value; KILN_ENOMEM otherwise. */
kiln_err kiln__json_build(kiln__reader *r, const char *key, size_t key_len,
                          bool key_esc, cJSON **out, kiln_error *err);

/* A deep copy of `item` (not of its siblings) in the same one-allocation
 * nodes; NULL on ENOMEM. Caller owns (cJSON_Delete). */
cJSON *kiln__json_copy(const cJSON *item);

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
/* The same on a token of `len` bytes that need not end in a NUL. */
kiln_err kiln__parse_int_n(const char *tok, size_t len, int64_t *out);
kiln_err kiln__parse_uint_n(const char *tok, size_t len, uint64_t *out);
kiln_err kiln__parse_float_n(const char *tok, size_t len, double *out);

/* Decodes machinery's Args array at r->pos (its '[', at depth 1 of the
 * body) into sig->args, replacing them; r->pos is after it on success.
 * Errors name the argument ("Args[2].Value: want int8, got 300 (out of
 * range)"); a fault in the text is reported as kiln__rd_fail does. */
kiln_err kiln__decode_args(kiln_signature *sig, kiln__reader *r,
                           kiln_error *err);

#endif /* KILN_TASK_CODEC_H */
