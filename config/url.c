/*
 * URL checks and the text of error messages. The URL checks catch the
 * mistakes a user makes in a variable (wrong scheme, no host, bad port,
 * options rabbitmq-c would read as part of the vhost) before a connection
 * is tried; the client libraries still parse the URL themselves.
 */
#include "config/config.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define SHOW_MAX 64 /* bytes of a value quoted in a message */

static bool has_space_or_control(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

static bool escapes_ok(const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s != '%')
            continue;
        if (!isxdigit((unsigned char)s[1]) || !isxdigit((unsigned char)s[2]))
            return false;
        s += 2;
    }
    return true;
}

/* The '@' that ends the user part of a whole URL whose "://" is at
 * url[i], or NULL: the rule the masking of secrets follows, so that what
 * a message calls the password is what it masks. */
static const char *userinfo_end(const char *url, size_t i)
{
    size_t colon, at;

    if (!kiln__url_userinfo(url, strlen(url), i, KILN__SECRET_WHOLE, &colon,
                            &at))
        return NULL;
    return url + at;
}

static bool port_ok(const char *p, const char *end)
{
    unsigned v = 0;

    if (p == end || end - p > 5)
        return false;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    return v >= 1 && v <= 65535;
}

/* Checks `host[:port]` or `[v6]:port` in [p, end). */
static const char *host_problem(const char *p, const char *end,
                                bool port_allowed)
{
    const char *q;

    if (p < end && *p == '[') {
        q = memchr(p, ']', (size_t)(end - p));
        if (q == NULL || q == p + 1)
            return "malformed [IPv6] host";
        q++;
    } else {
        q = memchr(p, ':', (size_t)(end - p));
        if (q == NULL)
            q = end;
        if (q == p)
            return "no host";
    }
    if (q == end)
        return NULL;
    if (*q != ':')
        return "malformed host";
    if (!port_allowed)
        return "a port is not allowed here";
    if (!port_ok(q + 1, end))
        return "the port must be 1 to 65535";
    return NULL;
}

/* The characters rabbitmq-c's amqp_parse_url splits a URL at: inside a
 * user, a password or a vhost each must be %-escaped. */
static const char *reserved_in(const char *p, const char *end, const char *set)
{
    for (; p < end; p++)
        if (strchr(set, *p) != NULL)
            return p;
    return NULL;
}

/* `parts` names what the URL's scheme %-decodes. */
static const char *raw_char(char *buf, size_t n, char c, const char *part,
                            const char *parts)
{
    (void)snprintf(buf, n, "a raw '%c' in the %s: write it as %%%02X (%s)", c,
                   part, (unsigned)(unsigned char)c, parts);
    return buf;
}

#define AMQP_DECODED  "user, password and vhost are %-decoded"
#define MONGO_DECODED "user and password are %-decoded"

static int hex(char c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* rabbitmq-c decodes %XX only up to %7F, and a %00 would cut the text
 * short; a character above 0x7f goes through unencoded. */
static const char *escape_problem(const char *s, char *buf, size_t n)
{
    for (; *s != '\0'; s++) {
        unsigned v;

        if (*s != '%')
            continue;
        if (!isxdigit((unsigned char)s[1]) || !isxdigit((unsigned char)s[2]))
            return "malformed %-escape (a '%' itself is written %25)";
        v = (unsigned)(hex(s[1]) << 4 | hex(s[2]));
        if (v == 0)
            return "%00 is not allowed";
        if (v > 0x7f) {
            (void)snprintf(buf, n,
                           "%%%.2s: rabbitmq-c decodes no %%-escape above "
                           "%%7F; write that character unencoded",
                           s + 1);
            return buf;
        }
        s += 2;
    }
    return NULL;
}

/* The URL as the user means it: scheme://[user[:password]@]host[:port]
 * [/vhost], the user part found by kiln__url_userinfo (as the log's
 * masking finds it). Each reason names the part and the character to escape, so
 * that a password holding '@', '?' or '#' is not reported as anything
 * else; what passes here amqp_parse_url parses the same way. */
const char *kiln__cfg_amqp_url_problem(const char *url, char *buf, size_t n)
{
    const char *p, *at, *end, *c, *colon, *why;

    if (strncmp(url, "amqp://", 7) == 0)
        p = url + 7;
    else if (strncmp(url, "amqps://", 8) == 0)
        p = url + 8;
    else
        return *url == '\0' ? "empty" : "unknown scheme";
    if (has_space_or_control(url))
        return "contains a space or control character";
    if ((why = escape_problem(url, buf, n)) != NULL)
        return why;
    if ((at = userinfo_end(url, (size_t)(p - url) - 3)) != NULL) {
        colon = memchr(p, ':', (size_t)(at - p));
        end = colon != NULL ? colon : at;
        if ((c = reserved_in(p, end, "@/?#[]")) != NULL)
            return raw_char(buf, n, *c, "user", AMQP_DECODED);
        if (colon != NULL &&
            (c = reserved_in(colon + 1, at, ":@/?#[]")) != NULL)
            return raw_char(buf, n, *c, "password", AMQP_DECODED);
        p = at + 1;
    }
    end = p + strcspn(p, "/?#");
    if ((why = host_problem(p, end, true)) != NULL)
        return why;
    if (*end == '\0')
        return NULL;
    if (*end == '/')
        end++;
    if ((c = reserved_in(end, end + strlen(end), "/?#:[]")) == NULL)
        return NULL;
    if (*c == '?')
        return "URL options (?name=value) are not supported: use the KILN_* "
               "variables (a '?' in the vhost is written %3F)";
    if (*c == '/')
        return "the vhost is one path segment (write '/' in it as %2F)";
    return raw_char(buf, n, *c, "vhost", AMQP_DECODED);
}

/* As libmongoc reads it: the user part ends at the first '@' (a raw one in
 * the password would silently become part of the host), and a raw ':' or
 * '/' in the user or the password is refused; '?' and '#' may stay raw.
 * The user part is found as the masking finds it, so a raw '@' or '/' in
 * the password is named as such rather than as a bad host or port. */
const char *kiln__cfg_mongo_url_problem(const char *url, char *buf, size_t n)
{
    const char *p, *end, *at, *why, *colon, *c;
    bool srv = false;

    if (strncmp(url, "mongodb://", 10) == 0) {
        p = url + 10;
    } else if (strncmp(url, "mongodb+srv://", 14) == 0) {
        p = url + 14;
        srv = true;
    } else {
        return *url == '\0' ? "empty" : "unknown scheme";
    }
    if (has_space_or_control(url))
        return "contains a space or control character";
    if ((at = userinfo_end(url, (size_t)(p - url) - 3)) != NULL) {
        colon = memchr(p, ':', (size_t)(at - p));
        end = colon != NULL ? colon : at;
        if ((c = reserved_in(p, end, "@/")) != NULL)
            return raw_char(buf, n, *c, "user", MONGO_DECODED);
        if (colon != NULL && (c = reserved_in(colon + 1, at, ":@/")) != NULL)
            return raw_char(buf, n, *c, "password", MONGO_DECODED);
        p = at + 1;
    }
    end = p + strcspn(p, "/?");
    if (srv && memchr(p, ',', (size_t)(end - p)) != NULL)
        return "mongodb+srv:// takes one host name";
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *host_end = comma != NULL ? comma : end;

        /* An SRV record supplies the ports. */
        if ((why = host_problem(p, host_end, !srv)) != NULL)
            return why;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if (!escapes_ok(url))
        return "malformed %-escape";
    return NULL;
}

/* Shows about SHOW_MAX bytes, escapes control characters (and every byte
 * above 0x7f when the value is not UTF-8) so that a message is one line of
 * valid UTF-8, and masks every secret: the value is one whole URL, so a
 * space or a control character does not end its password. */
char *kiln__cfg_show(const char *value, char *out, size_t n)
{
    const char *s;
    size_t o = 0, count = 0, vlen = strlen(value), pw = SIZE_MAX, pw_end = 0;
    bool utf8 = kiln__utf8_valid(value, vlen);

    if (n == 0)
        return out;
    if (!kiln__secret_next(value, vlen, 0, KILN__SECRET_WHOLE, &pw, &pw_end))
        pw = SIZE_MAX;
    for (s = value; *s != '\0'; s++) {
        char piece[8];
        unsigned char c = (unsigned char)*s;
        bool inside = utf8 && (c & 0xc0) == 0x80; /* a continuation byte */
        size_t len;

        if ((size_t)(s - value) == pw) {
            memcpy(piece, "***", 4);
            s = value + pw_end - 1;
            if (!kiln__secret_next(value, vlen, pw_end, KILN__SECRET_WHOLE, &pw,
                                   &pw_end))
                pw = SIZE_MAX;
        } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) {
            (void)snprintf(piece, sizeof(piece), "\\x%02x", c);
        } else if (c == '"' || c == '\\') {
            piece[0] = '\\';
            piece[1] = (char)c;
            piece[2] = '\0';
        } else {
            piece[0] = (char)c;
            piece[1] = '\0';
        }
        len = strlen(piece);
        /* Cut between characters, never inside one. */
        if ((count >= SHOW_MAX && !inside) || o + len + 4 > n) {
            kiln__strlcpy(out + o, "...", n - o);
            return out;
        }
        memcpy(out + o, piece, len);
        o += len;
        count++;
    }
    out[o] = '\0';
    return out;
}

kiln_err kiln__cfg_bad(kiln_error *err, const char *var, const char *value,
                       const char *fmt, ...)
{
    char shown[SHOW_MAX * 4 + 8];
    char reason[sizeof(err->message)];
    va_list ap;

    va_start(ap, fmt);
    if (vsnprintf(reason, sizeof(reason), fmt, ap) < 0)
        reason[0] = '\0';
    va_end(ap);
    kiln__cfg_show(value, shown, sizeof(shown));
    return kiln__fail(err, KILN_EINVAL, "%s=\"%s\": %s", var, shown, reason);
}
