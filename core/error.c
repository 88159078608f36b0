/* Error codes, their text, and the helpers that fill a kiln_error. */
#include "core/core.h"

#include <stdio.h>
#include <string.h>

/* Callers test `if (rc)` as often as `if (rc != KILN_OK)`: a fact of the
 * ABI, checked where it is compiled rather than by a test. */
_Static_assert(KILN_OK == 0, "KILN_OK must be 0");

const char *kiln_strerror(kiln_err code)
{
    switch (code) {
    case KILN_OK:
        return "success";
    case KILN_ENOMEM:
        return "out of memory";
    case KILN_EINVAL:
        return "invalid argument";
    case KILN_EBROKER:
        return "broker error";
    case KILN_ESTORE:
        return "store error";
    case KILN_ECODEC:
        return "invalid task message";
    case KILN_ECLOSED:
        return "closed";
    case KILN_ETIMEDOUT:
        return "timed out";
    case KILN_ENOHANDLER:
        return "no task registered under that name";
    case KILN_EEXIST:
        return "already exists";
    case KILN_ENOTFOUND:
        return "not found";
    case KILN_ETYPE:
        return "wrong type";
    case KILN_ERANGE:
        return "value out of range";
    case KILN_ETOOBIG:
        return "too big";
    case KILN_ETASK:
        return "task failed";
    case KILN_ERETRY:
        return "task asked to be retried";
    }
    return "unknown error";
}

kiln_err kiln__vfail(kiln_error *err, kiln_err code, const char *fmt,
                     va_list ap)
{
    if (err != NULL) {
        err->code = code;
        if (fmt == NULL ||
            vsnprintf(err->message, sizeof(err->message), fmt, ap) < 0)
            kiln__strlcpy(err->message, kiln_strerror(code),
                          sizeof(err->message));
    }
    return code;
}

kiln_err kiln__fail(kiln_error *err, kiln_err code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    (void)kiln__vfail(err, code, fmt, ap);
    va_end(ap);
    return code;
}

void kiln__ok(kiln_error *err)
{
    if (err != NULL) {
        err->code = KILN_OK;
        err->message[0] = '\0';
    }
}

void kiln__prefix(kiln_error *err, const char *fmt, ...)
{
    char old[sizeof(kiln_error)]; /* holds a whole message */
    va_list ap;
    int n;

    if (err == NULL)
        return;
    memcpy(old, err->message, sizeof(err->message));
    old[sizeof(err->message) - 1] = '\0';
    va_start(ap, fmt);
    n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    /* Truncation of the old detail is fine: the prefix matters more. */
    if ((size_t)n < sizeof(err->message) - 2) {
        memcpy(err->message + n, ": ", 2);
        kiln__strlcpy(err->message + n + 2, old,
                      sizeof(err->message) - (size_t)n - 2);
    }
}

const char *kiln_version_string(void)
{
#define KILN__STR2(x) #x
#define KILN__STR(x)  KILN__STR2(x)
    return KILN__STR(KILN_VERSION_MAJOR) "." KILN__STR(
        KILN_VERSION_MINOR) "." KILN__STR(KILN_VERSION_PATCH);
}
