/*
 * Typed header values: the model of an AMQP 0-9-1 field table (every
 * value kind rabbitmq-c 0.11 knows), free of any client library, so that
 * the codec can give paota's headers the Go types paota reads, a broker
 * can republish a delivery's headers with the types they came with, and
 * the in-memory broker can keep them too. Never installed.
 *
 * A table is an array of kiln__hdr; a nested table or array points to
 * an array of its own. Every pointer in a value is borrowed from whoever
 * built it (a delivery, a codec's block, a caller's stack).
 *
 * Nesting. The functions here walk values with an explicit stack of
 * KILN__HVAL_MAX_DEPTH levels (the top-level table is the first), never
 * by recursion, so a hostile header cannot exhaust the C stack. A copy
 * keeps what lies deeper as void; a size is SIZE_MAX (no broker can take
 * it). RabbitMQ's own deepest header, x-death, uses four levels.
 *
 * Thread-safety: every function here only reads its arguments and writes
 * the caller's buffers; safe from any thread.
 */
#ifndef KILN_CORE_HEADERS_H
#define KILN_CORE_HEADERS_H

#include "core/core.h"

#include <string.h>

#define KILN__HVAL_MAX_DEPTH 16

/* The kinds of AMQP 0-9-1 field values, as RabbitMQ spells them on the
 * wire (the letter in each comment). */
typedef enum kiln__htype {
    KILN__HV_VOID = 0,  /* V  no value */
    KILN__HV_BOOL,      /* t */
    KILN__HV_I8,        /* b */
    KILN__HV_U8,        /* B */
    KILN__HV_I16,       /* s */
    KILN__HV_U16,       /* u */
    KILN__HV_I32,       /* I */
    KILN__HV_U32,       /* i */
    KILN__HV_I64,       /* l */
    KILN__HV_U64,       /* L  rabbitmq-c only: RabbitMQ has no such type,
                           so brokers send it as l when it fits */
    KILN__HV_F32,       /* f */
    KILN__HV_F64,       /* d */
    KILN__HV_DECIMAL,   /* D  value x 10^-decimals */
    KILN__HV_TIMESTAMP, /* T  seconds since the epoch */
    KILN__HV_UTF8,      /* S  long string */
    KILN__HV_BYTES,     /* x  byte array */
    KILN__HV_TABLE,     /* F */
    KILN__HV_ARRAY      /* A */
} kiln__htype;

typedef struct kiln__hdr kiln__hdr;

typedef struct kiln__hval {
    kiln__htype type;
    union {
        bool b;
        int64_t i;  /* I8, I16, I32, I64 */
        uint64_t u; /* U8, U16, U32, U64, TIMESTAMP */
        float f32;
        double f64;
        struct {
            uint8_t decimals;
            uint32_t value;
        } dec;
        struct {
            const char *p; /* len bytes, not NUL-terminated in general */
            size_t len;
        } str; /* UTF8, BYTES */
        struct {
            const kiln__hdr *items;
            size_t n;
        } table;
        struct {
            const struct kiln__hval *items;
            size_t n;
        } array;
    } v;
} kiln__hval;

/* One entry of a table. AMQP names hold at most 255 bytes. */
struct kiln__hdr {
    const char *key; /* NUL-terminated */
    kiln__hval value;
};

/* Convenience constructors for flat headers. Strings are borrowed. */
static inline kiln__hdr kiln__hdr_text(const char *key, const char *s)
{
    kiln__hdr f = {key, {KILN__HV_UTF8, {.str = {s, 0}}}};

    f.value.v.str.len = s != NULL ? strlen(s) : 0;
    return f;
}

static inline kiln__hdr kiln__hdr_int(const char *key, kiln__htype type,
                                      int64_t v)
{
    kiln__hdr f = {key, {type, {.i = v}}};

    return f;
}

/* A bump allocator over one block: with p == NULL it only counts, so one
 * function can size a block and then fill it. */
typedef struct kiln__bump {
    char *p;
    size_t len;
} kiln__bump;

/* Takes `n` bytes aligned to `align` (a power of two); returns where they
 * are, or NULL when counting. */
static inline void *kiln__bump_take(kiln__bump *b, size_t n, size_t align)
{
    void *at;

    b->len = (b->len + align - 1) & ~(align - 1);
    at = b->p != NULL ? b->p + b->len : NULL;
    b->len += n;
    return at;
}

/* Copies `n` bytes of `s` and a NUL into `b`; returns the copy (NULL when
 * counting). */
static inline char *kiln__bump_str(kiln__bump *b, const void *s, size_t n)
{
    char *at = kiln__bump_take(b, n + 1, 1);

    if (at != NULL) {
        if (n > 0 && s != NULL)
            memcpy(at, s, n);
        at[n] = '\0';
    }
    return at;
}

/* kiln__hdrs_wire_size returns the bytes the `n` entries take in an
 * AMQP field table (names, type octets, values; not the table's own
 * 4-byte length), or SIZE_MAX when they cannot be encoded at all: a name
 * over 255 bytes, a string over 4 GiB, or nesting deeper than
 * KILN__HVAL_MAX_DEPTH. */
size_t kiln__hdrs_wire_size(const kiln__hdr *f, size_t n);

/* kiln__hdrs_copy copies the `n` entries of `src`, their names, strings
 * and nested values into `b`; returns the copy (NULL when `b` counts).
 * Strings get a NUL after their bytes. Values nested deeper than
 * KILN__HVAL_MAX_DEPTH become void. */
kiln__hdr *kiln__hdrs_copy(kiln__bump *b, const kiln__hdr *src, size_t n);

/* kiln__hval_text writes `v` as text into out (NULL: only counts) and
 * returns its length; no NUL is added. Numbers in decimal (floats with
 * the digits that round-trip, a decimal as "12.34", a timestamp as its
 * seconds), booleans as true/false, strings and byte arrays as they are,
 * tables and arrays as JSON (bytes that are not UTF-8 read as Latin-1;
 * void, NaN and infinities as null). This is the string view of a
 * delivery's headers. */
size_t kiln__hval_text(const kiln__hval *v, char *out);

/* kiln__hdrs_find returns the entry named `key` in table `f` of `n`
 * entries (the last one, when there are several), or NULL. */
const kiln__hdr *kiln__hdrs_find(const kiln__hdr *f, size_t n, const char *key);

#endif /* KILN_CORE_HEADERS_H */
