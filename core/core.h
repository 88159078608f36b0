/*
 * Internal helpers shared by every module: error filling, allocation (with
 * a failure-injection hook for tests), time, strings and UTF-8.
 * Never installed. Depends on nothing but libc and include/kiln.h.
 */
#ifndef KILN_CORE_H
#define KILN_CORE_H

#include "kiln.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* kiln__fail fills `err` (may be NULL) with `code` and a formatted message
 * and returns `code`, so error returns stay on one line. */
kiln_err kiln__fail(kiln_error *err, kiln_err code, const char *fmt, ...)
    KILN_PRINTF(3, 4);
kiln_err kiln__vfail(kiln_error *err, kiln_err code, const char *fmt,
                     va_list ap) KILN_PRINTF(3, 0);

/* kiln__ok sets `err` (may be NULL) to KILN_OK with an empty message. */
void kiln__ok(kiln_error *err);

/* kiln__prefix prepends "<prefix>: " to err->message (keeps the code). */
void kiln__prefix(kiln_error *err, const char *fmt, ...) KILN_PRINTF(2, 3);

/* Every allocation in the library goes through these, so a test can make
 * the Nth one fail (curl's torture mode). kiln__free(NULL) is a no-op. */
void *kiln__malloc(size_t n);
void *kiln__calloc(size_t count, size_t size);
void *kiln__realloc(void *p, size_t n);
void kiln__free(void *p);
char *kiln__strdup(const char *s);
char *kiln__strndup(const char *s, size_t n); /* copies n bytes, adds NUL */

/* kiln__alloc_fail_after makes the allocation `n` calls from now fail
 * (n = 0: the next one) and every later one succeed; a negative n turns the
 * hook off. kiln__alloc_failed reports whether the hook fired since it was
 * armed. For tests only; not thread-aware beyond being atomic. */
void kiln__alloc_fail_after(long n);
bool kiln__alloc_failed(void);

/* kiln__alloc_count_start counts, from now on, the bytes held in blocks
 * from kiln__malloc, calloc and realloc (their usable size) less those
 * given back to kiln__free; kiln__alloc_count_stop stops counting and
 * returns the highest count seen. A block allocated before the start and
 * freed during the count lowers it. For tests only (a test points cJSON's
 * hooks here to count its nodes too); atomic, so any thread may allocate
 * meanwhile. */
void kiln__alloc_count_start(void);
size_t kiln__alloc_count_stop(void);
/* The allocations (kiln__malloc, calloc and realloc calls) since
 * kiln__alloc_count_start, while counting. */
size_t kiln__alloc_count_calls(void);

/* kiln__strlcpy copies at most n-1 bytes and always terminates (n > 0).
 * Returns strlen(src), so a result >= n means truncation. */
size_t kiln__strlcpy(char *dst, const char *src, size_t n);

/* kiln__utf8_valid: true when s[0..n) is well-formed UTF-8 (no overlongs,
 * no surrogates, nothing above U+10FFFF). */
bool kiln__utf8_valid(const char *s, size_t n);

/* kiln__utf8_len: the length (1..4) of the well-formed UTF-8 character
 * at s, of which `avail` (> 0) bytes may be read, or 0 when the bytes
 * there do not start one. */
size_t kiln__utf8_len(const char *s, size_t avail);

/* kiln__hash_str: FNV-1a, 64 bits, of a NUL-terminated string: for hash
 * tables keyed by short strings (task names, task UUIDs); no allocation.
 * Not for anything an attacker must not be able to collide. */
uint64_t kiln__hash_str(const char *s);

/* Clocks, in nanoseconds. */
int64_t kiln__realtime_ns(void);  /* since the Unix epoch */
int64_t kiln__monotonic_ns(void); /* since an arbitrary point */

/* Saturating arithmetic on nanosecond instants and intervals. Times reach
 * kiln from producers (ETA and CreatedAt from 1678 to 2262, paota's Unix
 * seconds anywhere in int64) and from tasks (any retry delay), so every
 * sum, difference or unit change on them clamps to [INT64_MIN, INT64_MAX]
 * instead of overflowing: an instant far in the past stays far in the
 * past, a far-future one stays too far for any delay. Thread-safe. */
static inline int64_t kiln__sat_add(int64_t a, int64_t b)
{
    int64_t r;

    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static inline int64_t kiln__sat_sub(int64_t a, int64_t b)
{
    int64_t r;

    if (__builtin_sub_overflow(a, b, &r))
        return b < 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static inline int64_t kiln__sat_mul(int64_t a, int64_t b)
{
    int64_t r;

    if (__builtin_mul_overflow(a, b, &r))
        return (a < 0) != (b < 0) ? INT64_MIN : INT64_MAX;
    return r;
}

/* Milliseconds to nanoseconds, saturating at INT64_MAX. */
static inline int64_t kiln__ms_to_ns(uint64_t ms)
{
    return ms > (uint64_t)INT64_MAX / 1000000 ? INT64_MAX
                                              : (int64_t)ms * 1000000;
}

/* A nanosecond interval in whole milliseconds, rounded up (so a wait is
 * never shorter than asked); 0 for an interval <= 0. */
static inline uint64_t kiln__ns_to_ms_ceil(int64_t ns)
{
    if (ns <= 0)
        return 0;
    return (uint64_t)ns / 1000000 + ((uint64_t)ns % 1000000 != 0);
}

/* kiln__sleep_ns sleeps `ns` nanoseconds (<= 0: returns at once), resuming
 * after a signal. Thread-safe. */
void kiln__sleep_ns(int64_t ns);

/* kiln__random fills buf with n bytes from the kernel (getrandom).
 * Returns KILN_OK or KILN_EINVAL with the errno text in err. */
kiln_err kiln__random(void *buf, size_t n, kiln_error *err);

/* Secrets in text kiln prints (core/secret.c): the password of a
 * `scheme://user:password@host` URL as kiln__url_userinfo finds it, and
 * the value of a MongoDB URI option that carries a secret
 * (tlsCertificateKeyFilePassword,
 * sslClientCertificateKeyPassword, authMechanismProperties,
 * proxyPassword; any case), up to the next "&name=". In text a URL or a
 * value ends at whitespace, and a URL where another "://" starts. */
#define KILN__SECRET_CUT                            \
    1u /* the text was cut short by its producer: a \
          URL running into the end is masked from   \
          its first ':' on */
#define KILN__SECRET_WHOLE                          \
    2u /* the text is one value (a configured URL): \
          whitespace ends nothing */

/* kiln__url_userinfo finds the user part of the URL whose "://" is at
 * s[i] (of s[0..n)), the one rule for where a URL's password is, which
 * both the configuration's URL checks and the masking of secrets follow.
 * Users do not %-encode, so a password may hold raw '@', '?', '#', '/',
 * quotes, angle brackets and backticks: the user part runs to the last
 * '@' before the query, which starts at a '?' after a '/' after an '@'
 * (MongoDB option values may hold '@'); the password from the first ':'
 * to that '@'. A '/' before any ':' or '@' starts the path: no user part.
 * With `flags` 0 the URL ends at whitespace or where another "://"
 * starts; KILN__SECRET_WHOLE: at n. Returns true and sets *at (the '@')
 * and *colon (the ':' before the password, SIZE_MAX when there is none),
 * or returns false (no user part) with *at = SIZE_MAX. Thread-safe;
 * allocates nothing. */
bool kiln__url_userinfo(const char *s, size_t n, size_t i, unsigned flags,
                        size_t *colon, size_t *at);

/* kiln__secret_next finds the first secret in s[0..n) found from `from`
 * on: sets s[*start..*end) and returns true, or returns false. Spans that
 * overlap are joined. Thread-safe; allocates nothing. */
bool kiln__secret_next(const char *s, size_t n, size_t from, unsigned flags,
                       size_t *start, size_t *end);

/* kiln__redact copies `s` (NULL reads as "(null)") into out[n] with every
 * secret replaced by "***", masking before it clips, so a short `out`
 * never holds part of one. Always NUL-terminates when n > 0; `out` must
 * not overlap `s`. Returns `out`. Thread-safe. */
char *kiln__redact(const char *s, char *out, size_t n, unsigned flags);

#define KILN__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif /* KILN_CORE_H */
