/* Keys and string values of the strict reader (task/json_scan.c): a
 * member's key with its colon, and the decoding of a string's escapes
 * into UTF-8, for text the reader has already checked. */
#include "task/codec.h"

#include <string.h>

bool kiln__rd_key(kiln__reader *r, kiln__key *k)
{
    size_t len;

    if (!kiln__rd_string(r, &len, &k->esc))
        return false;
    k->raw = (const char *)r->s + r->pos - len - 1;
    k->raw_len = len;
    if (len >= sizeof(k->text)) {
        k->text[0] = '\0';
    } else if (!k->esc) {
        memcpy(k->text, k->raw, len);
        k->text[len] = '\0';
    } else {
        (void)kiln__json_unescape(k->raw, len, true, k->text, sizeof(k->text));
    }
    kiln__rd_ws(r);
    if (r->pos >= r->n || r->s[r->pos] != ':')
        return false;
    r->pos++;
    kiln__rd_ws(r);
    return r->pos < r->n;
}

/* Writes code point u as UTF-8; returns the bytes written. */
static size_t put_utf8(unsigned long u, char *out)
{
    if (u < 0x80) {
        out[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        out[0] = (char)(0xC0 | (u >> 6));
        out[1] = (char)(0x80 | (u & 0x3F));
        return 2;
    }
    if (u < 0x10000) {
        out[0] = (char)(0xE0 | (u >> 12));
        out[1] = (char)(0x80 | ((u >> 6) & 0x3F));
        out[2] = (char)(0x80 | (u & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (u >> 18));
    out[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((u >> 6) & 0x3F));
    out[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* The 4 hex digits at p, which the reader has checked. */
static unsigned long hex4_at(const char *p)
{
    unsigned long v = 0;

    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v = v * 16 + (unsigned long)(c <= '9'   ? c - '0'
                                     : c <= 'F' ? c - 'A' + 10
                                                : c - 'a' + 10);
    }
    return v;
}

/* One escape at raw[*i] (the backslash): its UTF-8 into e[4], the length
 * returned, *i moved past it. The text was checked, so the escape is
 * well formed and a high surrogate has its low one. */
static size_t unescape_one(const char *raw, size_t *i, char *e)
{
    char c = raw[*i + 1];
    unsigned long u;

    *i += 2;
    switch (c) {
    case 'b':
        e[0] = '\b';
        return 1;
    case 'f':
        e[0] = '\f';
        return 1;
    case 'n':
        e[0] = '\n';
        return 1;
    case 'r':
        e[0] = '\r';
        return 1;
    case 't':
        e[0] = '\t';
        return 1;
    case 'u':
        u = hex4_at(raw + *i);
        *i += 4;
        if (u >= 0xD800 && u <= 0xDBFF) {
            u = 0x10000 + ((u - 0xD800) << 10) +
                (hex4_at(raw + *i + 2) - 0xDC00);
            *i += 6;
        }
        return put_utf8(u, e);
    default: /* " \ / */
        e[0] = c;
        return 1;
    }
}

size_t kiln__json_unescape(const char *raw, size_t len, bool escaped, char *out,
                           size_t cap)
{
    size_t i = 0, o = 0, k;
    char e[4];

    if (cap == 0)
        return 0;
    if (!escaped) {
        o = len < cap - 1 ? len : cap - 1;
        memcpy(out, raw, o);
        out[o] = '\0';
        return o;
    }
    while (i < len) {
        const char *bs = memchr(raw + i, '\\', len - i);
        size_t run = (bs != NULL ? (size_t)(bs - raw) : len) - i;

        if (run > cap - 1 - o)
            run = cap - 1 - o;
        memcpy(out + o, raw + i, run);
        o += run;
        i += run;
        if (i >= len || o == cap - 1)
            break;
        k = unescape_one(raw, &i, e);
        if (k > cap - 1 - o)
            break;
        memcpy(out + o, e, k);
        o += k;
    }
    out[o] = '\0';
    return o;
}

char *kiln__json_strdup(const char *raw, size_t len, bool escaped,
                        size_t *out_len)
{
    char *s = kiln__malloc(len + 1);
    size_t n;

    if (s == NULL)
        return NULL;
    n = kiln__json_unescape(raw, len, escaped, s, len + 1);
    if (out_len != NULL)
        *out_len = n;
    return s;
}
