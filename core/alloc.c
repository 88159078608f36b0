/* Allocation wrappers. The failure hook lets tests walk every allocation
 * of an operation and check that each failure is reported and leaks
 * nothing (the approach of curl's torture tests). */
#include "core/core.h"

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

void *kiln__malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n == 0 ? 1 : n);
}

void *kiln__calloc(size_t count, size_t size)
{
    if (should_fail())
        return NULL;
    return calloc(count == 0 ? 1 : count, size == 0 ? 1 : size);
}

void *kiln__realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n == 0 ? 1 : n);
}

void kiln__free(void *p)
{
    free(p);
}

void kiln_free(void *ptr)
{
    free(ptr);
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
