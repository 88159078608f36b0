/* What the benchmark programs share: clocks, the ~200-byte JSON argument
 * every task carries (a user record with its send time), latency records
 * and the key=value result files scripts/bench.sh reads. Header-only
 * (static inline) because the Makefile builds each bench/NAME.c into its
 * own program. Not part of the library. */
#ifndef KILN_BENCH_H
#define KILN_BENCH_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_PAYLOAD_LEN 200

/* Wall-clock nanoseconds: sender and worker are different processes on
 * one machine, so CLOCK_REALTIME is their shared origin. */
static inline int64_t bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void bench_sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Writes task i's argument into buf (BENCH_PAYLOAD_LEN + 1 bytes): a user
 * record with its send time, padded to exactly BENCH_PAYLOAD_LEN bytes. */
static inline size_t bench_payload(char *buf, long i, int64_t sent_ns)
{
    int n =
        snprintf(buf, BENCH_PAYLOAD_LEN + 1,
                 "{\"id\":\"%ld\",\"name\":\"user %ld\",\"email\":\"user%ld@"
                 "example.com\",\"sent_ns\":%lld,\"pad\":\"",
                 i, i, i, (long long)sent_ns);
    size_t len = n > 0 ? (size_t)n : 0;

    while (len < BENCH_PAYLOAD_LEN - 2)
        buf[len++] = 'x';
    memcpy(buf + len, "\"}", 3);
    return len + 2;
}

/* The send time carried in a payload, or 0 when there is none. The record
 * may sit escaped inside a task's JSON body (\"sent_ns\":...), so the
 * key's quotes and the colon are skipped whatever precedes them. */
static inline int64_t bench_payload_sent_ns(const char *p, size_t len)
{
    static const char key[] = "sent_ns";
    const char *end = p + len;

    for (; p + sizeof(key) - 1 < end; p++)
        if (*p == 's' && memcmp(p, key, sizeof(key) - 1) == 0) {
            int64_t v = 0;
            p += sizeof(key) - 1;
            while (p < end && (*p == '\\' || *p == '"' || *p == ':'))
                p++;
            for (; p < end && *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (*p - '0');
            return v;
        }
    return 0;
}

/* Appends printf-style text to the result file `path` ("-": stdout). */
static inline void bench_result(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void bench_result(const char *path, const char *fmt, ...)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "a");
    va_list ap;

    if (f == NULL) {
        perror(path);
        exit(1);
    }
    va_start(ap, fmt);
    (void)vfprintf(f, fmt, ap);
    va_end(ap);
    if (f != stdout)
        (void)fclose(f);
    else
        (void)fflush(f);
}

/* A latency histogram in fixed memory (a sorted array of every latency
 * would grow the worker's RSS by 8 bytes a task, which the benchmark
 * measures): log-linear buckets, 64 per power of two of nanoseconds, so a
 * percentile is exact to within 1/64 (1.6%). Safe to add to from several
 * threads at once. */
#define BENCH_HIST_SUB     64
#define BENCH_HIST_BUCKETS (64 * BENCH_HIST_SUB)

struct bench_hist {
    _Atomic unsigned long count[BENCH_HIST_BUCKETS];
};

static inline unsigned bench_hist_bucket(uint64_t ns)
{
    if (ns < BENCH_HIST_SUB)
        return (unsigned)ns;
    unsigned e = 63u - (unsigned)__builtin_clzll(ns); /* ns >= 2^e */
    unsigned sub = (unsigned)(ns >> (e - 6)) & (BENCH_HIST_SUB - 1);
    return (e - 5) * BENCH_HIST_SUB + sub;
}

/* The smallest latency that falls in bucket b. */
static inline uint64_t bench_hist_value(unsigned b)
{
    if (b < BENCH_HIST_SUB)
        return b;
    unsigned e = b / BENCH_HIST_SUB + 5, sub = b % BENCH_HIST_SUB;
    return ((uint64_t)BENCH_HIST_SUB + sub) << (e - 6);
}

static inline void bench_hist_add(struct bench_hist *h, int64_t ns)
{
    atomic_fetch_add_explicit(
        &h->count[bench_hist_bucket(ns > 0 ? (uint64_t)ns : 0)], 1,
        memory_order_relaxed);
}

/* Writes the percentiles (ms) of the latencies in `h` to `path`. */
static inline void bench_hist_result(const char *path, struct bench_hist *h)
{
    static const struct {
        const char *key;
        double q;
    } qs[] = {{"lat_p50_ms", 0.50},
              {"lat_p99_ms", 0.99},
              {"lat_p999_ms", 0.999},
              {"lat_max_ms", 1.0}};
    unsigned long total = 0;

    for (unsigned b = 0; b < BENCH_HIST_BUCKETS; b++)
        total += atomic_load(&h->count[b]);
    if (total == 0)
        return;
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        unsigned long rank = (unsigned long)(qs[i].q * (double)(total - 1)) + 1;
        unsigned long seen = 0;
        unsigned b = 0;
        for (; b < BENCH_HIST_BUCKETS - 1; b++)
            if ((seen += atomic_load(&h->count[b])) >= rank)
                break;
        bench_result(path, "%s=%.3f\n", qs[i].key,
                     (double)bench_hist_value(b) / 1e6);
    }
}

#endif /* KILN_BENCH_H */
