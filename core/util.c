/* Strings, UTF-8, clocks and randomness. */
#include "core/core.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

size_t kiln__strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strlen(src);

    if (n > 0) {
        size_t c = len < n - 1 ? len : n - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return len;
}

/* A table-free reader after RFC 3629, section 4. */
size_t kiln__utf8_len(const char *s, size_t avail)
{
    const unsigned char *p = (const unsigned char *)s;
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

bool kiln__utf8_valid(const char *s, size_t n)
{
    size_t i = 0, len;

    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        if ((len = kiln__utf8_len(s + i, n - i)) == 0)
            return false;
        i += len;
    }
    return true;
}

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;

    if (clock_gettime(id, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t kiln__realtime_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

int64_t kiln__monotonic_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

void kiln__sleep_ns(int64_t ns)
{
    struct timespec ts;

    if (ns <= 0)
        return;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

kiln_err kiln__random(void *buf, size_t n, kiln_error *err)
{
    unsigned char *p = buf;

    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return kiln__fail(err, KILN_EINVAL, "getrandom: errno %d", errno);
        }
        p += got;
        n -= (size_t)got;
    }
    return KILN_OK;
}

uint64_t kiln__hash_str(const char *s)
{
    uint64_t h = 14695981039346656037ULL;

    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}
