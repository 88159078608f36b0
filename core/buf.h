/*
 * The library's one growable byte buffer, and the one writer of JSON
 * string content on it. The codec builds bodies in it, the logger builds
 * lines in it (starting on the stack), and the header model sizes and
 * writes the text of typed headers with it. Never installed.
 *
 * A buffer is one of three kinds:
 * - growing (the zero value, or kiln__buf_init with first storage of the
 *   caller's: the bytes stay there until they outgrow it, then move to
 *   the heap);
 * - fixed (kiln__buf_init with `fixed`): never allocates, a write that
 *   does not fit fails;
 * - counting (kiln__buf_init_count): stores nothing, only adds up what
 *   would be written, so one function can size a block and then fill it.
 *
 * Writes never fail visibly: the first one that cannot be done (out of
 * memory, or a fixed buffer full) sets `failed`, and every later write
 * does nothing, so a caller checks once at the end. The text is not
 * NUL-terminated until kiln__buf_cstr or kiln__buf_finish asks for it.
 *
 * Thread-safety: a buffer belongs to one thread; the functions keep no
 * state of their own.
 */
#ifndef KILN_CORE_BUF_H
#define KILN_CORE_BUF_H

#include "core/core.h"

#include <string.h>

typedef struct kiln__buf {
    char *p;     /* the bytes; NULL while empty or counting */
    size_t n;    /* bytes written (or counted) */
    size_t cap;  /* bytes at p */
    char *first; /* the caller's first storage; never freed */
    size_t first_cap;
    bool fixed;  /* never moves to the heap */
    bool count;  /* stores nothing; n counts */
    bool failed; /* a write was dropped; later writes do nothing */
} kiln__buf;

/* kiln__buf_init starts an empty buffer in `first` (cap bytes, borrowed;
 * may be NULL with cap 0: the heap from the first write). With `fixed` it
 * never leaves `first`. A zeroed kiln__buf is the same as
 * kiln__buf_init(b, NULL, 0, false). */
void kiln__buf_init(kiln__buf *b, char *first, size_t cap, bool fixed);

/* kiln__buf_init_count starts a counting buffer. */
void kiln__buf_init_count(kiln__buf *b);

/* kiln__buf_reserve makes room for `more` bytes beyond those written, and
 * one more for a NUL; a growing buffer that moves to the heap for it takes
 * exactly that much the first time when that is more than its usual
 * start (a body of known size is not grown by doubling). False (and
 * `failed` set) when it cannot. Always true when counting. */
bool kiln__buf_reserve(kiln__buf *b, size_t more);

/* kiln__buf_put appends s[0..n); kiln__buf_put_slow is its path when the
 * piece does not fit (or the buffer counts or has failed). */
void kiln__buf_put_slow(kiln__buf *b, const void *s, size_t n);
static inline void kiln__buf_put(kiln__buf *b, const void *s, size_t n)
{
    /* Inline while it fits: the encoders append many short pieces. */
    if (!b->count && !b->failed && n < b->cap - b->n) {
        memcpy(b->p + b->n, s, n);
        b->n += n;
        return;
    }
    kiln__buf_put_slow(b, s, n);
}
void kiln__buf_puts(kiln__buf *b, const char *s);

/* kiln__buf_cstr puts a NUL after the text (not counted in n) and returns
 * the text, borrowed until the next write; NULL when a write failed, and
 * "" when counting. */
const char *kiln__buf_cstr(kiln__buf *b);

/* kiln__buf_finish hands the NUL-terminated text to *out (caller owns;
 * kiln__free) and its length to *len (may be NULL), copying it off the
 * caller's first storage when it is still there; KILN_ENOMEM when a write
 * failed. The buffer is released either way. Not for counting buffers. */
kiln_err kiln__buf_finish(kiln__buf *b, char **out, size_t *len,
                          kiln_error *err);

/* kiln__buf_release frees the heap storage, if any, and empties the
 * buffer; it may then be used again as it was first set up. */
void kiln__buf_release(kiln__buf *b);

/* ---- JSON string content -------------------------------------------------
 * kiln__buf_json_escape appends s[0..n) as the content of a JSON string
 * (RFC 8259, section 7; the quotes are the caller's): '"' and '\\'
 * backslashed; \b \f \n \r \t in their short form and the other control
 * bytes as \u00xx; valid UTF-8 as it is; each byte of an invalid UTF-8
 * sequence as \ufffd (Go's utf8.RuneError), so the output is valid UTF-8
 * and valid JSON whatever the input. The flags add: */
#define KILN__JSON_GO                                                 \
    1u /* Go's encoding/json: <, > and & as \u003c \u003e \u0026, and \
          U+2028/U+2029 as \u2028/\u2029 */
#define KILN__JSON_LATIN1                                           \
    2u /* when s[0..n) is not valid UTF-8 as a whole, every byte of \
          0x80 and above is read as Latin-1 (\u00xx) instead */
#define KILN__JSON_DEL \
    4u /* DEL (0x7f) as \u007f, so a log line holds no control byte */
void kiln__buf_json_escape(kiln__buf *b, const char *s, size_t n,
                           unsigned flags);

#endif /* KILN_CORE_BUF_H */
