/* The growable byte buffer and the JSON string escaper (core/buf.h). */
#include "core/buf.h"

#include <string.h>

#define FIRST_HEAP 256 /* the smallest heap block a buffer starts with */

void kiln__buf_init(kiln__buf *b, char *first, size_t cap, bool fixed)
{
    cap = first != NULL ? cap : 0;
    *b = (kiln__buf){.p = first,
                     .cap = cap,
                     .first = first,
                     .first_cap = cap,
                     .fixed = fixed};
}

void kiln__buf_init_count(kiln__buf *b)
{
    *b = (kiln__buf){.count = true};
}

bool kiln__buf_reserve(kiln__buf *b, size_t more)
{
    size_t need, cap;
    char *p;

    if (b->count)
        return true;
    if (b->failed)
        return false;
    if (more < b->cap - b->n) /* b->n < b->cap whenever cap > 0 */
        return true;
    if (b->fixed || more > SIZE_MAX / 2 - b->n) {
        b->failed = true;
        return false;
    }
    need = b->n + more + 1;
    cap = b->cap * 2 > need ? b->cap * 2 : need;
    if (cap < FIRST_HEAP)
        cap = FIRST_HEAP;
    if (b->p != NULL && b->p == b->first) {
        if ((p = kiln__malloc(cap)) != NULL)
            memcpy(p, b->p, b->n);
    } else {
        p = kiln__realloc(b->p, cap);
    }
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void kiln__buf_put_slow(kiln__buf *b, const void *s, size_t n)
{
    if (n == 0 || !kiln__buf_reserve(b, n))
        return;
    if (!b->count)
        memcpy(b->p + b->n, s, n);
    b->n += n;
}

void kiln__buf_puts(kiln__buf *b, const char *s)
{
    kiln__buf_put(b, s, strlen(s));
}

const char *kiln__buf_cstr(kiln__buf *b)
{
    if (b->count)
        return "";
    if (!kiln__buf_reserve(b, 0))
        return NULL;
    b->p[b->n] = '\0';
    return b->p;
}

kiln_err kiln__buf_finish(kiln__buf *b, char **out, size_t *len,
                          kiln_error *err)
{
    char *text = NULL;

    if (kiln__buf_cstr(b) != NULL && !b->count)
        text = b->p != b->first ? b->p : kiln__strndup(b->p, b->n);
    if (text == NULL) {
        (void)kiln__fail(err, KILN_ENOMEM, "building a text of %zu bytes",
                         b->n);
        kiln__buf_release(b);
        return KILN_ENOMEM;
    }
    if (len != NULL)
        *len = b->n;
    *out = text;
    if (text == b->p)
        b->p = NULL; /* handed over: not freed below */
    kiln__buf_release(b);
    return KILN_OK;
}

void kiln__buf_release(kiln__buf *b)
{
    if (b->p != b->first)
        kiln__free(b->p);
    kiln__buf_init(b, b->first, b->first_cap, b->fixed);
}

/* ---- JSON string content ------------------------------------------------ */

static const char hex[] = "0123456789abcdef";

static void put_u00(kiln__buf *b, unsigned char c)
{
    char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xF]};

    kiln__buf_put(b, e, sizeof(e));
}

/* 1 for the bytes that may need more than a copy under some flag: the
 * control bytes, '"', '\\', '<', '>', '&', DEL and every byte of 0x80 and
 * above; a run of the others is copied as it is without a closer look. */
/* clang-format off: a row per 16 bytes */
static const unsigned char maybe_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};
/* clang-format on */

/* The escape of an ASCII byte that needs one, or NULL when it needs none. */
static const char *ascii_escape(unsigned char c, unsigned flags)
{
    switch (c) {
    case '"':
        return "\\\"";
    case '\\':
        return "\\\\";
    case '\b':
        return "\\b";
    case '\f':
        return "\\f";
    case '\n':
        return "\\n";
    case '\r':
        return "\\r";
    case '\t':
        return "\\t";
    case '<':
    case '>':
    case '&':
        return flags & KILN__JSON_GO ? "" : NULL;
    case 0x7f:
        return flags & KILN__JSON_DEL ? "" : NULL;
    default:
        return c < 0x20 ? "" : NULL; /* "": as \u00xx */
    }
}

/* U+2028 LINE SEPARATOR or U+2029 PARAGRAPH SEPARATOR at p (3 bytes). */
static bool line_sep(const unsigned char *p)
{
    return p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9);
}

void kiln__buf_json_escape(kiln__buf *b, const char *s, size_t n,
                           unsigned flags)
{
    const unsigned char *p = (const unsigned char *)s;
    bool latin1 = (flags & KILN__JSON_LATIN1) && !kiln__utf8_valid(s, n);
    size_t i = 0, start = 0;

    while (i < n) {
        unsigned char c;
        const char *esc = NULL;
        size_t len = 1;

        while (i < n && !maybe_special[p[i]])
            i++;
        if (i == n)
            break;
        c = p[i];
        if (c < 0x80) {
            if ((esc = ascii_escape(c, flags)) == NULL) {
                i++;
                continue;
            }
        } else if (!latin1) {
            len = kiln__utf8_len(s + i, n - i);
            if (len > 0 &&
                !(len == 3 && (flags & KILN__JSON_GO) && line_sep(p + i))) {
                i += len; /* valid UTF-8 goes out as it is */
                continue;
            }
        }
        kiln__buf_put(b, s + start, i - start);
        if (esc != NULL && esc[0] != '\0') {
            kiln__buf_puts(b, esc);
        } else if (esc != NULL || latin1) {
            put_u00(b, c);
        } else if (len == 0) {
            kiln__buf_put(b, "\\ufffd", 6); /* Go: utf8.RuneError */
            len = 1;
        } else {
            kiln__buf_put(b, p[i + 2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
        }
        i += len;
        start = i;
    }
    kiln__buf_put(b, s + start, i - start);
}
