/* JSON number tokens (checked by the reader) to C numbers, exactly and
 * whatever the C locale, with Go's strconv rules (see codec.h). */
#include "task/codec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static bool magnitude(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n; i++) {
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

kiln_err kiln__parse_int_n(const char *tok, size_t len, int64_t *out)
{
    bool neg = len > 0 && tok[0] == '-';
    uint64_t m;

    if (!all_digits(tok + neg, len - neg))
        return KILN_ETYPE;
    if (!magnitude(tok + neg, len - neg, &m) ||
        m > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return KILN_ERANGE;
    *out = neg ? (int64_t)(0 - m) : (int64_t)m;
    return KILN_OK;
}

kiln_err kiln__parse_uint_n(const char *tok, size_t len, uint64_t *out)
{
    bool neg = len > 0 && tok[0] == '-';

    if (!all_digits(tok + neg, len - neg))
        return KILN_ETYPE;
    if (neg)
        return KILN_EINVAL;
    return magnitude(tok, len, out) ? KILN_OK : KILN_ERANGE;
}

/* strtod reads the decimal point of the C locale, so the token is
 * rewritten as digits and a power of ten first: "-12.5e3" -> "-125e2". */
kiln_err kiln__parse_float_n(const char *tok, size_t len, double *out)
{
    char buf[KILN__JSON_NUMBER_MAX + 16];
    const char *p = tok, *end = tok + len;
    size_t k = 0;
    long exp = 0, frac = 0, e = 0;
    bool e_neg = false;
    double v;

    if (p < end && *p == '-')
        buf[k++] = *p++;
    for (; p < end && ((*p >= '0' && *p <= '9') || *p == '.'); p++) {
        if (*p == '.')
            frac = 1;
        else if (k < KILN__JSON_NUMBER_MAX) {
            buf[k++] = *p;
            exp -= frac;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        if (++p < end && (*p == '+' || *p == '-'))
            e_neg = *p++ == '-';
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (e <= 100000) /* clamped: past it every double is 0 or inf */
                e = e * 10 + (*p - '0');
        exp += e_neg ? -(e > 100000 ? 100000 : e) : (e > 100000 ? 100000 : e);
    }
    (void)snprintf(buf + k, sizeof(buf) - k, "e%ld", exp);
    v = strtod(buf, NULL);
    if (isinf(v))
        return KILN_ERANGE;
    *out = v;
    return KILN_OK;
}

kiln_err kiln__parse_int(const char *tok, int64_t *out)
{
    return kiln__parse_int_n(tok, strlen(tok), out);
}

kiln_err kiln__parse_uint(const char *tok, uint64_t *out)
{
    return kiln__parse_uint_n(tok, strlen(tok), out);
}

kiln_err kiln__parse_float(const char *tok, double *out)
{
    return kiln__parse_float_n(tok, strlen(tok), out);
}
