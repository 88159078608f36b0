/* Line building: buffers, escaping, secret masking, timestamps. */
#include "logger/format.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void kiln__lbuf_init(kiln__lbuf *b, char *stack, size_t cap, bool fixed)
{
    b->p = stack;
    b->stack = stack;
    b->len = 0;
    b->cap = cap;
    b->fixed = fixed;
    b->failed = false;
    stack[0] = '\0';
}

/* Frees a heap buffer; `b` must be initialised again before reuse. */
void kiln__lbuf_release(kiln__lbuf *b)
{
    if (b->p != b->stack)
        kiln__free(b->p);
    b->p = b->stack;
    b->len = 0;
}

static bool lbuf_grow(kiln__lbuf *b, size_t n)
{
    size_t want, cap;
    char *p;

    if (b->fixed || n > SIZE_MAX / 4 - b->len)
        return false;
    want = b->len + n + 2;
    cap = b->cap * 2 > want ? b->cap * 2 : want;
    if (b->p == b->stack) {
        if ((p = kiln__malloc(cap)) != NULL)
            memcpy(p, b->p, b->len + 1);
    } else {
        p = kiln__realloc(b->p, cap);
    }
    if (p == NULL)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

void kiln__lbuf_put(kiln__lbuf *b, const char *s, size_t n)
{
    if (b->failed || n == 0)
        return;
    /* Invariant: cap - len >= 2, room for a '\n' and the NUL. */
    if (n > b->cap - b->len - 2 && !lbuf_grow(b, n)) {
        b->failed = true;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void kiln__lbuf_puts(kiln__lbuf *b, const char *s)
{
    kiln__lbuf_put(b, s, strlen(s));
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629, section 4), or
 * 0 when the bytes there are not one. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    size_t need;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* overlong */
        hi = c == 0xED ? 0x9F : 0xBF; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        lo = c == 0xF0 ? 0x90 : 0x80; /* overlong */
        hi = c == 0xF4 ? 0x8F : 0xBF; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (avail <= need || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k <= need; k++)
        if ((p[k] & 0xC0) != 0x80)
            return 0;
    return need + 1;
}

static bool plain_byte(unsigned char c, kiln__esc esc)
{
    if (c < 0x20 || c == 0x7F || c >= 0x80)
        return false;
    return esc != KILN__ESC_JSON || (c != '"' && c != '\\');
}

/* Writes the escape for one byte that plain_byte refused and that does not
 * start a valid UTF-8 sequence. */
static void put_escape(kiln__lbuf *b, unsigned char c, kiln__esc esc)
{
    static const char hex[] = "0123456789abcdef";
    bool json = esc == KILN__ESC_JSON;
    char e[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], '\0'};

    if (c >= 0x80)
        kiln__lbuf_puts(b, json ? "\\ufffd" : "\xEF\xBF\xBD");
    else if (c == '"' || c == '\\')
        kiln__lbuf_put(b, (const char[]){'\\', (char)c}, 2);
    else if (c == '\n')
        kiln__lbuf_put(b, "\\n", 2);
    else if (c == '\r')
        kiln__lbuf_put(b, "\\r", 2);
    else if (c == '\t')
        kiln__lbuf_put(b, "\\t", 2);
    else if (json)
        kiln__lbuf_put(b, e, 6);
    else
        kiln__lbuf_put(b, (const char[]){'\\', 'x', e[4], e[5]}, 4);
}

static void put_escaped(kiln__lbuf *b, const char *s, size_t n, kiln__esc esc)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0, k;

    if (esc == KILN__ESC_RAW) {
        kiln__lbuf_put(b, s, n);
        return;
    }
    /* Copy runs of bytes that need nothing in one put. */
    while (i < n) {
        if (plain_byte(u[i], esc)) {
            i++;
            continue;
        }
        if (u[i] >= 0x80 && (k = utf8_len(u + i, n - i)) > 0) {
            i += k;
            continue;
        }
        kiln__lbuf_put(b, s + run, i - run);
        put_escape(b, u[i], esc);
        run = ++i;
    }
    kiln__lbuf_put(b, s + run, i - run);
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

void kiln__lbuf_put_field(kiln__lbuf *b, const char *s, size_t n, size_t limit,
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
        kiln__lbuf_put(b, "***", 3);
        pos = end;
    }
    if (stop < n)
        kiln__lbuf_put(b, "...", 3);
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
