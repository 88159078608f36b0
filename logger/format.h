/*
 * Line building for the logger, on a kiln__buf (core/buf.h) that starts
 * on the stack: escaping for text and JSON lines, secret masking and
 * timestamps. Private to logger/; never installed.
 */
#ifndef KILN_LOGGER_FORMAT_H
#define KILN_LOGGER_FORMAT_H

#include "core/buf.h"

/* Escaping applied by kiln__log_put_field. Every mode except RAW writes
 * invalid UTF-8 bytes as U+FFFD, so lines are always valid UTF-8. */
typedef enum kiln__esc {
    KILN__ESC_RAW = 0, /* bytes as they are */
    KILN__ESC_TEXT,    /* control bytes as \n, \r, \t or \xHH */
    KILN__ESC_JSON     /* JSON string content: kiln__buf_json_escape
                          with KILN__JSON_DEL */
} kiln__esc;

/* kiln__log_put_field appends s[0..n) escaped per `esc`, with every
 * secret kiln__secret_next finds (URL passwords, secret MongoDB options)
 * replaced by "***". At most `limit` input bytes are written (cut back to
 * a character boundary, followed by "..."); secrets are found on the
 * whole input, so a limit never exposes part of one. `cut` says the text
 * was already truncated by its producer (KILN__SECRET_CUT). */
void kiln__log_put_field(kiln__buf *b, const char *s, size_t n, size_t limit,
                         bool cut, kiln__esc esc);

/* kiln__log_time writes `unix_ns` as "2026-11-23T05:17:00.123Z" into out
 * (n >= 32 bytes). Returns the length written. */
size_t kiln__log_time(char *out, size_t n, int64_t unix_ns);

#endif /* KILN_LOGGER_FORMAT_H */
