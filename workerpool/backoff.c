/* Backoff delays. */
#include "workerpool/backoff.h"

uint64_t kiln__backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms)
{
    uint64_t ceiling = base_ms, r = 0;

    for (unsigned i = 0; i < attempt && ceiling < cap_ms; i++)
        ceiling *= 2;
    if (ceiling > cap_ms)
        ceiling = cap_ms;
    if (ceiling == 0)
        return 1;
    /* The kernel's random source; a failure just means no jitter. */
    if (kiln__random(&r, sizeof(r), NULL) != KILN_OK)
        return ceiling;
    r %= ceiling + 1;
    return r == 0 ? 1 : r;
}
