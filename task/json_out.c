/* JSON text as Go's encoding/json writes it: strings, integers, shortest
 * floats and the compaction of a json.RawMessage. */
#include "task/codec.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- strings ------------------------------------------------------------ */

void kiln__json_string(kiln__buf *b, const char *s, size_t n)
{
    kiln__buf_put(b, "\"", 1);
    kiln__buf_json_escape(b, s, n, KILN__JSON_GO);
    kiln__buf_put(b, "\"", 1);
}

/* ---- numbers ------------------------------------------------------------ */

/* The digits of v, written backwards from the end of t[24]; returns the
 * first. By hand: snprintf cost more than the rest of a small body. */
static char *digits(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return end;
}

void kiln__json_int(kiln__buf *b, int64_t v)
{
    char t[24], *end = t + sizeof(t);
    /* The magnitude as unsigned: -INT64_MIN does not fit an int64_t. */
    char *s = digits(end, v < 0 ? 0 - (uint64_t)v : (uint64_t)v);

    if (v < 0)
        *--s = '-';
    kiln__buf_put(b, s, (size_t)(end - s));
}

void kiln__json_uint(kiln__buf *b, uint64_t v)
{
    char t[24], *end = t + sizeof(t);
    char *s = digits(end, v);

    kiln__buf_put(b, s, (size_t)(end - s));
}

/* A decimal with `p` significant digits: mantissa m (10^(p-1) <= m <
 * 10^p) times 10^(e - p + 1), so `e` is the exponent of the first digit. */
typedef struct decimal {
    uint64_t m;
    int p;
    int e;
} decimal;

static uint64_t pow10u(int p)
{
    uint64_t r = 1;

    while (p-- > 0)
        r *= 10;
    return r;
}

/* Reads d back as a float of `bits`; *above tells whether d > v. */
static bool reads_back(const decimal *d, double v, int bits, bool *above)
{
    char t[48];
    double r;

    (void)snprintf(t, sizeof(t), "%" PRIu64 "e%d", d->m, d->e - d->p + 1);
    r = bits == 32 ? (double)strtof(t, NULL) : strtod(t, NULL);
    if (above != NULL)
        *above = r > v; /* rounding is monotonic: r > v only if d > v */
    return r == v;
}

/* The p-digit decimal nearest to v (v > 0), from printf's exact rounding. */
static decimal nearest(double v, int p)
{
    char t[48];
    decimal d = {0, p, 0};
    const char *c;

    (void)snprintf(t, sizeof(t), "%.*e", p - 1, v);
    for (c = t; *c != 'e'; c++)
        if (*c >= '0' && *c <= '9')
            d.m = d.m * 10 + (uint64_t)(*c - '0');
    d.e = atoi(c + 1);
    return d;
}

/* The next p-digit decimal above (up) or below d. */
static decimal neighbour(decimal d, bool up)
{
    if (up && ++d.m == pow10u(d.p)) {
        d.m = pow10u(d.p - 1);
        d.e++;
    } else if (!up && d.m-- == pow10u(d.p - 1)) {
        d.m = pow10u(d.p) - 1;
        d.e--;
    }
    return d;
}

/* Go's strconv (Dragonbox since Go 1.26) rounds to nearest with ties to
 * even, like printf, except for powers of two (its "shorter interval"
 * case), where an exact tie rounds up unless the binary exponent is -77.
 * True when d is the lower half of such a tie. */
static bool tie_goes_up(double v, int bits, const decimal *d)
{
    char big[800];
    uint64_t trunc = 0;
    int e2, i;
    const char *c;

    if (frexp(v, &e2) != 0.5 || v < (bits == 32 ? FLT_MIN : DBL_MIN) ||
        e2 - 1 - (bits == 32 ? 23 : 52) == -77)
        return false;
    /* glibc prints the exact binary value; a double has at most 767
     * significant decimal digits. */
    (void)snprintf(big, sizeof(big), "%.780e", v);
    for (c = big, i = 0; *c != 'e'; c++) {
        if (*c < '0' || *c > '9') /* the locale's decimal point */
            continue;
        if (i < d->p)
            trunc = trunc * 10 + (uint64_t)(*c - '0');
        else if (*c != (i == d->p ? '5' : '0'))
            return false;
        i++;
    }
    return trunc == d->m && atoi(c + 1) == d->e;
}

/* Shortest round-tripping digits, and among those the nearest to v, as
 * Go's strconv picks them. If the nearest p-digit decimal does not read
 * back, the only other candidate of that length is its neighbour on the
 * far side of v (the set that reads back is an interval around v). */
static decimal shortest(double v, int bits)
{
    int maxp = bits == 32 ? 9 : 17;
    decimal d = {0, 1, 0}, o;
    bool above = false;

    for (int p = 1; p <= maxp; p++) {
        d = nearest(v, p);
        if (reads_back(&d, v, bits, &above)) {
            o = neighbour(d, true);
            if (tie_goes_up(v, bits, &d) && reads_back(&o, v, bits, NULL))
                d = o;
            break;
        }
        o = neighbour(d, !above);
        if (reads_back(&o, v, bits, NULL)) {
            d = o;
            break;
        }
    }
    while (d.p > 1 && d.m % 10 == 0) {
        d.m /= 10;
        d.p--;
    }
    return d;
}

static size_t put_digits(char *out, uint64_t m, int p)
{
    for (int i = p - 1; i >= 0; i--) {
        out[i] = (char)('0' + m % 10);
        m /= 10;
    }
    return (size_t)p;
}

/* Go's 'e' layout: d[.ddd]e+XX, with "e-0X" shortened to "e-X". */
static size_t layout_exp(char *out, const decimal *d)
{
    char dig[24] = {0};
    size_t k = 0;

    put_digits(dig, d->m, d->p);
    out[k++] = dig[0];
    if (d->p > 1) {
        out[k++] = '.';
        memcpy(out + k, dig + 1, (size_t)d->p - 1);
        k += (size_t)d->p - 1;
    }
    k += (size_t)snprintf(out + k, 8, d->e < 0 ? "e-%d" : "e+%02d",
                          d->e < 0 ? -d->e : d->e);
    return k;
}

/* Go's 'f' layout with the shortest digits: no exponent, no trailing
 * ".0". Only used for 1e-6 <= |v| < 1e21, so at most 27 characters. */
static size_t layout_fixed(char *out, const decimal *d)
{
    char dig[24] = {0};
    int point = d->e + 1; /* digits before the decimal point */
    size_t k = 0;

    put_digits(dig, d->m, d->p);
    if (point <= 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = point; i < 0; i++)
            out[k++] = '0';
        for (int i = 0; i < d->p; i++)
            out[k++] = dig[i];
        return k;
    }
    if (point >= d->p) {
        memcpy(out, dig, (size_t)d->p);
        k = (size_t)d->p;
        for (int i = d->p; i < point; i++)
            out[k++] = '0';
        return k;
    }
    memcpy(out, dig, (size_t)point);
    out[point] = '.';
    memcpy(out + point + 1, dig + point, (size_t)(d->p - point));
    return (size_t)d->p + 1;
}

size_t kiln__format_float(double v, int bits, char *out)
{
    double a = fabs(v);
    size_t k = 0;
    bool exp_form;
    decimal d;

    if (signbit(v))
        out[k++] = '-';
    if (a == 0 || !isfinite(a)) {
        out[k++] = '0'; /* callers never pass NaN or infinities */
        out[k] = '\0';
        return k;
    }
    if (bits == 32)
        exp_form = (float)a < 1e-6f || (float)a >= 1e21f;
    else
        exp_form = a < 1e-6 || a >= 1e21;
    d = shortest(a, bits);
    k += exp_form ? layout_exp(out + k, &d) : layout_fixed(out + k, &d);
    out[k] = '\0';
    return k;
}

void kiln__json_float(kiln__buf *b, double v, int bits)
{
    char t[KILN__FLOAT_MAX];

    kiln__buf_put(b, t, kiln__format_float(v, bits, t));
}

/* ---- compaction of raw JSON --------------------------------------------- */

static const char hex[] = "0123456789abcdef";

/* One pass of the compaction; on a counting buffer it only counts the
 * bytes it would write, so the real one can be sized once. */
static void compact(kiln__buf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    bool in_string = false;
    size_t start = 0;
    char u[6];

    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        const char *esc = NULL;

        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
            else if (c == '<' || c == '>' || c == '&')
                esc = "";
            else if (c == 0xE2 && i + 2 < n && p[i + 1] == 0x80 &&
                     (p[i + 2] == 0xA8 || p[i + 2] == 0xA9))
                esc = p[i + 2] == 0xA8 ? "\\u2028" : "\\u2029";
            if (esc == NULL)
                continue;
            kiln__buf_put(b, s + start, i - start);
            if (esc[0] == '\0') {
                u[0] = '\\';
                u[1] = 'u';
                u[2] = u[3] = '0';
                u[4] = hex[c >> 4];
                u[5] = hex[c & 0xF];
                kiln__buf_put(b, u, 6);
            } else {
                kiln__buf_put(b, esc, 6);
                i += 2;
            }
            start = i + 1;
        } else if (c == '"') {
            in_string = true;
        } else if (c <= ' ') {
            kiln__buf_put(b, s + start, i - start);
            start = i + 1;
        }
    }
    kiln__buf_put(b, s + start, n - start);
}

void kiln__json_compact(kiln__buf *b, const char *s, size_t n)
{
    /* Sized first: a decoded RawArgs is compacted into a buffer of
     * exactly its length, not into one grown by doubling. */
    kiln__buf size;

    kiln__buf_init_count(&size);
    compact(&size, s, n);
    if (kiln__buf_reserve(b, size.n))
        compact(b, s, n);
}
