/* The one finder of secrets in text kiln prints: the password of a
 * `scheme://user:password@host` URL and the value of a MongoDB URI option
 * that carries a secret. The logger, kiln_log_redact_url, configuration
 * errors and the MongoDB store all mask with it, so every URL kiln prints
 * follows the same rules. Hiding too much is the safe mistake. */
#include "core/core.h"

#include <string.h>

/* MongoDB URI options whose value is a secret (the connection string spec
 * and libmongoc's mongoc-uri.h). Option names are case-insensitive. */
static const char *const secret_options[] = {
    "tlsCertificateKeyFilePassword",
    "sslClientCertificateKeyPassword", /* libmongoc's older name for it */
    "authMechanismProperties",         /* may hold AWS_SESSION_TOKEN */
    "proxyPassword",
};

static bool is_space(unsigned char c)
{
    return c <= 0x20 || c == 0x7F;
}

static bool is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
}

static bool is_url_start(const char *s, size_t n, size_t i)
{
    return i + 2 < n && s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/';
}

/* Reads the URL whose "://" is at s[i] as kiln__url_userinfo describes:
 * *colon is its first ':', *at the last '@' before its path ends the
 * authority or its query starts (SIZE_MAX: none). Returns where the
 * reading stopped (n when the URL runs to the end of s). */
static size_t scan_userinfo(const char *s, size_t n, size_t i, unsigned flags,
                            size_t *colon, size_t *at)
{
    bool whole = (flags & KILN__SECRET_WHOLE) != 0;
    bool path = false;
    size_t e;

    *colon = SIZE_MAX;
    *at = SIZE_MAX;
    for (e = i + 3; e < n; e++) {
        unsigned char c = (unsigned char)s[e];

        if (!whole && (is_space(c) || is_url_start(s, n, e)))
            break;
        if (c == '@') {
            *at = e;
        } else if (c == ':') {
            if (*colon == SIZE_MAX)
                *colon = e;
        } else if (c == '/') {
            /* Before any ':' or '@' a '/' starts the path: no user. */
            if (*colon == SIZE_MAX && *at == SIZE_MAX)
                break;
            path = path || *at != SIZE_MAX;
        } else if (c == '?' && path) {
            break; /* the query, whose values may hold '@' */
        }
    }
    return e;
}

bool kiln__url_userinfo(const char *s, size_t n, size_t i, unsigned flags,
                        size_t *colon, size_t *at)
{
    (void)scan_userinfo(s, n, i, flags, colon, at);
    /* A ':' after the last '@' is the host's port. */
    if (*colon != SIZE_MAX && (*at == SIZE_MAX || *colon > *at))
        *colon = SIZE_MAX;
    return *at != SIZE_MAX;
}

/* The password of the URL whose "://" is at s[i]; an empty one is not a
 * secret. */
static bool url_password(const char *s, size_t n, size_t i, unsigned flags,
                         size_t *start, size_t *end)
{
    size_t colon, at, e = scan_userinfo(s, n, i, flags, &colon, &at);

    /* The text after a cut is unknown: mask all it might hold. */
    if ((flags & KILN__SECRET_CUT) != 0 && e == n && colon != SIZE_MAX &&
        colon + 1 < n) {
        *start = colon + 1;
        *end = n;
        return true;
    }
    if (colon == SIZE_MAX || at == SIZE_MAX || at <= colon + 1)
        return false;
    *start = colon + 1;
    *end = at;
    return true;
}

static bool next_url_password(const char *s, size_t n, size_t from,
                              unsigned flags, size_t *start, size_t *end)
{
    for (size_t i = from; i + 3 <= n; i++) {
        const char *c = memchr(s + i, ':', n - i);

        if (c == NULL)
            return false;
        i = (size_t)(c - s);
        if (is_url_start(s, n, i) && url_password(s, n, i, flags, start, end))
            return true;
    }
    return false;
}

static bool is_secret_option(const char *name, size_t len)
{
    for (size_t k = 0; k < KILN__ARRAY_LEN(secret_options); k++) {
        const char *o = secret_options[k];
        size_t j = 0;

        if (strlen(o) != len)
            continue;
        while (j < len && (name[j] | 0x20) == (o[j] | 0x20))
            j++;
        if (j == len)
            return true;
    }
    return false;
}

/* "name=" at s[k]: where the next option of a query starts. */
static bool starts_option(const char *s, size_t n, size_t k)
{
    size_t j = k;

    while (j < n && is_word((unsigned char)s[j]))
        j++;
    return j > k && j < n && s[j] == '=';
}

/* A value ends where the next option starts ('&' then "name="), and in
 * text at whitespace too; a raw '&' inside a value is kept in it. */
static size_t option_end(const char *s, size_t n, size_t v, unsigned flags)
{
    for (size_t e = v; e < n; e++) {
        unsigned char c = (unsigned char)s[e];

        if ((flags & KILN__SECRET_WHOLE) == 0 && is_space(c))
            return e;
        if (c == '&' && starts_option(s, n, e + 1))
            return e;
    }
    return n;
}

/* The first non-empty value of a secret option whose '=' is at or after
 * `from`. The name must stand alone: "xproxyPassword=" is another one. */
static bool next_option(const char *s, size_t n, size_t from, unsigned flags,
                        size_t *start, size_t *end)
{
    for (size_t i = from; i < n; i++) {
        const char *eq = memchr(s + i, '=', n - i);
        size_t b, e;

        if (eq == NULL)
            return false;
        i = (size_t)(eq - s);
        for (b = i; b > 0 && is_word((unsigned char)s[b - 1]); b--)
            ;
        if (!is_secret_option(s + b, i - b))
            continue;
        e = option_end(s, n, i + 1, flags);
        if (e > i + 1) {
            *start = i + 1;
            *end = e;
            return true;
        }
    }
    return false;
}

bool kiln__secret_next(const char *s, size_t n, size_t from, unsigned flags,
                       size_t *start, size_t *end)
{
    size_t us, ue, os, oe;
    bool url = next_url_password(s, n, from, flags, &us, &ue);
    bool opt = next_option(s, n, from, flags, &os, &oe);

    if (!url && !opt)
        return false;
    if (!url || (opt && os < us)) {
        us = os;
        ue = oe;
    }
    /* A secret option whose value starts inside the span (a password
     * that runs to an '@' within it) extends the span to its own end. */
    for (size_t k = us; next_option(s, n, k, flags, &os, &oe) && os <= ue;
         k = os) {
        if (oe > ue)
            ue = oe;
    }
    *start = us;
    *end = ue;
    return true;
}

/* Appends s[0..k) to out[*o..n-1), dropping what does not fit. */
static void copy_clipped(char *out, size_t n, size_t *o, const char *s,
                         size_t k)
{
    size_t room = n - 1 - *o;

    if (k > room)
        k = room;
    memcpy(out + *o, s, k);
    *o += k;
}

char *kiln__redact(const char *s, char *out, size_t n, unsigned flags)
{
    size_t len, pos = 0, o = 0, start, end;

    if (out == NULL || n == 0)
        return out;
    if (s == NULL)
        s = "(null)";
    len = strlen(s);
    /* Masking happens before clipping, so a short `out` never holds the
     * first bytes of a secret. */
    while (pos < len) {
        if (!kiln__secret_next(s, len, pos, flags, &start, &end)) {
            copy_clipped(out, n, &o, s + pos, len - pos);
            break;
        }
        copy_clipped(out, n, &o, s + pos, start - pos);
        copy_clipped(out, n, &o, "***", 3);
        pos = end;
    }
    out[o] = '\0';
    return out;
}
