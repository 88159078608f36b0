/* Allocation wrappers. The failure hook lets tests walk every allocation
 * of an operation and check that each failure is reported and leaks
 * nothing (the approach of curl's torture tests). */
#include "core/core.h"

#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* -1: hook off. >= 0: allocations left before the one that fails. */
static atomic_long fail_countdown = -1;
static atomic_bool fail_fired = false;

void kiln__alloc_fail_after(long n)
{
    atomic_store(&fail_fired, false);
    atomic_store(&fail_countdown, n < 0 ? -1 : n);
}

bool kiln__alloc_failed(void)
{
    return atomic_load(&fail_fired);
}

static bool should_fail(void)
{
    long left = atomic_load_explicit(&fail_countdown, memory_order_relaxed);

    if (left < 0)
        return false;
    left = atomic_fetch_sub(&fail_countdown, 1);
    if (left == 0) {
        atomic_store(&fail_fired, true);
        return true;
    }
    if (left < 0)
        atomic_store(&fail_countdown, -1);
    return false;
}

/* Byte accounting for tests: the usable size of every block, so what is
 * counted is what the allocator really handed out (rounding included). */
static atomic_bool counting = false;
static atomic_llong live_bytes, peak_bytes, calls;

static void count_block(void *p, bool add)
{
    long long n, peak;

    if (p == NULL || !atomic_load_explicit(&counting, memory_order_relaxed))
        return;
    n = (long long)malloc_usable_size(p);
    if (!add) {
        atomic_fetch_sub(&live_bytes, n);
        return;
    }
    atomic_fetch_add(&calls, 1);
    n += atomic_fetch_add(&live_bytes, n);
    peak = atomic_load(&peak_bytes);
    while (n > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, n))
        ;
}

void kiln__alloc_count_start(void)
{
    atomic_store(&live_bytes, 0);
    atomic_store(&peak_bytes, 0);
    atomic_store(&calls, 0);
    atomic_store(&counting, true);
}

size_t kiln__alloc_count_calls(void)
{
    return (size_t)atomic_load(&calls);
}

size_t kiln__alloc_count_stop(void)
{
    atomic_store(&counting, false);
    return (size_t)atomic_load(&peak_bytes);
}

void *kiln__malloc(size_t n)
{
    void *p = should_fail() ? NULL : malloc(n == 0 ? 1 : n);

    count_block(p, true);
    return p;
}

void *kiln__calloc(size_t count, size_t size)
{
    void *p;

    if (should_fail())
        return NULL;
    p = calloc(count == 0 ? 1 : count, size == 0 ? 1 : size);
    count_block(p, true);
    return p;
}

void *kiln__realloc(void *p, size_t n)
{
    bool count = atomic_load_explicit(&counting, memory_order_relaxed);
    size_t old = count && p != NULL ? malloc_usable_size(p) : 0;
    void *q;

    if (should_fail())
        return NULL;
    if ((q = realloc(p, n == 0 ? 1 : n)) == NULL)
        return NULL;
    if (count) {
        /* Counted as a new block and then the old one gone: a moving
         * realloc holds both for a moment. */
        count_block(q, true);
        atomic_fetch_sub(&live_bytes, (long long)old);
    }
    return q;
}

void kiln__free(void *p)
{
    count_block(p, false);
    free(p);
}

void kiln_free(void *ptr)
{
    kiln__free(ptr);
}

char *kiln__strndup(const char *s, size_t n)
{
    char *d;

    if (s == NULL || n == SIZE_MAX || (d = kiln__malloc(n + 1)) == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *kiln__strdup(const char *s)
{
    return s == NULL ? NULL : kiln__strndup(s, strlen(s));
}
