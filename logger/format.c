/* Line building: escaping, secret masking, timestamps. */
#include "logger/format.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* TEXT: bytes that pass through as they are. */
static bool plain_byte(unsigned char c)
{
    return c >= 0x20 && c != 0x7F && c < 0x80;
}

/* TEXT: the escape of one byte that plain_byte refused and that does not
 * start a valid UTF-8 sequence. */
static void put_text_escape(kiln__buf *b, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";

    if (c >= 0x80)
        kiln__buf_puts(b, "\xEF\xBF\xBD"); /* U+FFFD */
    else if (c == '\n')
        kiln__buf_put(b, "\\n", 2);
    else if (c == '\r')
        kiln__buf_put(b, "\\r", 2);
    else if (c == '\t')
        kiln__buf_put(b, "\\t", 2);
    else
        kiln__buf_put(b, (const char[]){'\\', 'x', hex[c >> 4], hex[c & 15]},
                      4);
}

static void put_escaped(kiln__buf *b, const char *s, size_t n, kiln__esc esc)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0, k;

    if (esc == KILN__ESC_RAW) {
        kiln__buf_put(b, s, n);
        return;
    }
    if (esc == KILN__ESC_JSON) {
        kiln__buf_json_escape(b, s, n, KILN__JSON_DEL);
        return;
    }
    /* Copy runs of bytes that need nothing in one put. */
    while (i < n) {
        if (plain_byte(u[i])) {
            i++;
            continue;
        }
        if (u[i] >= 0x80 && (k = kiln__utf8_len(s + i, n - i)) > 0) {
            i += k;
            continue;
        }
        kiln__buf_put(b, s + run, i - run);
        put_text_escape(b, u[i]);
        run = ++i;
    }
    kiln__buf_put(b, s + run, i - run);
}

/* Moves a cut point back to the start of the UTF-8 character it is in. */
static size_t char_floor(const char *s, size_t at)
{
    for (int k = 0; k < 3 && at > 0; k++) {
        if (((unsigned char)s[at] & 0xC0) != 0x80)
            break;
        at--;
    }
    return at;
}

void kiln__log_put_field(kiln__buf *b, const char *s, size_t n, size_t limit,
                         bool cut, kiln__esc esc)
{
    size_t stop = limit < n ? char_floor(s, limit) : n;
    size_t pos = 0, start, end;

    while (pos < stop) {
        if (!kiln__secret_next(s, n, pos, cut ? KILN__SECRET_CUT : 0, &start,
                               &end) ||
            start >= stop) {
            put_escaped(b, s + pos, stop - pos, esc);
            break;
        }
        put_escaped(b, s + pos, start - pos, esc);
        kiln__buf_put(b, "***", 3);
        pos = end;
    }
    if (stop < n)
        kiln__buf_put(b, "...", 3);
}

size_t kiln__log_time(char *out, size_t n, int64_t unix_ns)
{
    time_t sec = (time_t)(unix_ns / 1000000000);
    int ms = (int)(unix_ns % 1000000000 / 1000000);
    struct tm tm;
    int w;

    if (ms < 0) {
        ms += 1000;
        sec--;
    }
    if (gmtime_r(&sec, &tm) == NULL)
        memset(&tm, 0, sizeof(tm));
    w = snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, ms);
    if (w < 0)
        return 0;
    return (size_t)w < n ? (size_t)w : n - 1;
}

char *kiln_log_redact_url(const char *url, char *out, size_t n)
{
    return kiln__redact(url, out, n, 0);
}
