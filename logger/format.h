/*
 * Line building for the logger: a growable line buffer, escaping for text
 * and JSON lines, secret masking and timestamps. Private to logger/;
 * never installed.
 */
#ifndef KILN_LOGGER_FORMAT_H
#define KILN_LOGGER_FORMAT_H

#include "core/core.h"

/* A line under construction. It starts in a caller's (stack) buffer and
 * moves to the heap only when a line outgrows it. Two bytes are always kept
 * free past `len`, so the finished line can take a '\n' and a NUL in place.
 * Once a write fails (no memory, or a fixed buffer is full) every later
 * write is dropped and `failed` stays set, so a line is whole or flagged. */
typedef struct kiln__lbuf {
    char *p;     /* the stack buffer or a kiln__malloc'd one */
    char *stack; /* the caller's buffer; never freed */
    size_t len;  /* bytes written; p[len] is NUL */
    size_t cap;  /* bytes at p */
    bool fixed;  /* never moves to the heap */
    bool failed; /* a write was dropped */
} kiln__lbuf;

/* Escaping applied by kiln__lbuf_put_field. Every mode except RAW writes
 * invalid UTF-8 bytes as U+FFFD, so lines are always valid UTF-8. */
typedef enum kiln__esc {
    KILN__ESC_RAW = 0, /* bytes as they are */
    KILN__ESC_TEXT,    /* control bytes as \n, \r, \t or \xHH */
    KILN__ESC_JSON     /* JSON string body (RFC 8259, section 7) */
} kiln__esc;

/* `stack` must hold at least 3 bytes. */
void kiln__lbuf_init(kiln__lbuf *b, char *stack, size_t cap, bool fixed);
void kiln__lbuf_release(kiln__lbuf *b);
void kiln__lbuf_put(kiln__lbuf *b, const char *s, size_t n);
void kiln__lbuf_puts(kiln__lbuf *b, const char *s);

/* kiln__lbuf_put_field appends s[0..n) escaped per `esc`, with every
 * secret kiln__secret_next finds (URL passwords, secret MongoDB options)
 * replaced by "***". At most `limit` input bytes are written (cut back to
 * a character boundary, followed by "..."); secrets are found on the
 * whole input, so a limit never exposes part of one. `cut` says the text
 * was already truncated by its producer (KILN__SECRET_CUT). */
void kiln__lbuf_put_field(kiln__lbuf *b, const char *s, size_t n, size_t limit,
                          bool cut, kiln__esc esc);

/* kiln__log_time writes `unix_ns` as "2026-11-23T05:17:00.123Z" into out
 * (n >= 32 bytes). Returns the length written. */
size_t kiln__log_time(char *out, size_t n, int64_t unix_ns);

#endif /* KILN_LOGGER_FORMAT_H */
