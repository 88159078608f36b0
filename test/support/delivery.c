#include "test/support/delivery.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>

void assert_body_is(const kiln__delivery *d, const char *want)
{
    size_t n = strlen(want);

    if (d->body_len != n || (n > 0 && memcmp(d->body, want, n) != 0))
        fail_msg("body is \"%.*s\" (%zu bytes), want \"%s\"",
                 (int)(d->body_len < 200 ? d->body_len : 200),
                 d->body != NULL ? d->body : "", d->body_len, want);
}

const char *body_text(const kiln__delivery *d, char *buf, size_t n)
{
    size_t k = d->body_len < n - 1 ? d->body_len : n - 1;

    if (k > 0)
        memcpy(buf, d->body, k);
    buf[k] = '\0';
    return buf;
}
