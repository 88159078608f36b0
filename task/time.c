/* RFC 3339 times as Go's time.Time writes and reads them in JSON
 * (time.RFC3339Nano out, the strict RFC 3339 parser of Go 1.20 and later
 * in). The calendar arithmetic is done here, on proleptic Gregorian days,
 * so neither the C library's time zone nor timegm is involved. */
#include "task/task.h"

#include <stdio.h>
#include <string.h>

#define NS_PER_S  1000000000LL
#define S_PER_DAY 86400LL

/* Days from 1970-01-01 to y-m-d (after H. Hinnant, "chrono-compatible
 * low-level date algorithms"). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    int64_t era, doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;

    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static bool leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in(int m, int64_t y)
{
    static const int dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    return m == 2 && leap(y) ? 29 : dim[m - 1];
}

/* Go's RFC3339Nano: the fraction without trailing zeros (none at all
 * for whole seconds) and "Z" for a zero offset, whatever zone it was
 * parsed from ("+00:00" comes back as "Z" from Go too). */
size_t kiln__time_format(const kiln__time *t, char *out, size_t n)
{
    int64_t secs = floor_div(t->unix_ns, NS_PER_S);
    int64_t nsec = t->unix_ns % NS_PER_S;
    int64_t local = secs + t->offset_s, days = floor_div(local, S_PER_DAY);
    int64_t sod = local - days * S_PER_DAY, y;
    int m, d, k, off = t->offset_s < 0 ? -t->offset_s : t->offset_s;
    char frac[11] = "";

    if (nsec < 0)
        nsec += NS_PER_S;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999 || n < KILN__TIME_MAX)
        return 0;
    if (nsec != 0) {
        (void)snprintf(frac, sizeof(frac), ".%09lld", (long long)nsec);
        for (k = 9; frac[k] == '0'; k--)
            frac[k] = '\0';
    }
    k = snprintf(out, n, "%04lld-%02d-%02dT%02lld:%02lld:%02lld%s",
                 (long long)y, m, d, (long long)(sod / 3600),
                 (long long)(sod / 60 % 60), (long long)(sod % 60), frac);
    if (t->offset_s == 0)
        k += snprintf(out + k, n - (size_t)k, "Z");
    else
        k += snprintf(out + k, n - (size_t)k, "%c%02d:%02d",
                      t->offset_s < 0 ? '-' : '+', off / 3600, off / 60 % 60);
    return (size_t)k;
}

/* Reads `len` digits at s; -1 if any is not a digit. */
static int64_t digits(const char *s, size_t len)
{
    int64_t v = 0;

    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

typedef struct fields {
    int64_t year;
    int month, day, hour, min, sec;
    int64_t nsec;
    int offset_s;
} fields;

/* "2006-01-02T15:04:05": shape first, then each field's range, with
 * Go's words for the failures. */
static const char *parse_date_time(const char *s, fields *f)
{
    int64_t v[6];
    static const size_t at[6] = {0, 5, 8, 11, 14, 17};

    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':')
        return "not RFC 3339 (want 2006-01-02T15:04:05Z07:00)";
    for (int i = 0; i < 6; i++)
        if ((v[i] = digits(s + at[i], i == 0 ? 4 : 2)) < 0)
            return "not RFC 3339 (want 2006-01-02T15:04:05Z07:00)";
    f->year = v[0];
    f->month = (int)v[1];
    f->day = (int)v[2];
    f->hour = (int)v[3];
    f->min = (int)v[4];
    f->sec = (int)v[5];
    if (f->month < 1 || f->month > 12)
        return "month out of range";
    if (f->day < 1 || f->day > days_in(f->month, f->year))
        return "day out of range";
    if (f->hour > 23)
        return "hour out of range";
    if (f->min > 59)
        return "minute out of range";
    if (f->sec > 59) /* Go refuses leap seconds too */
        return "second out of range";
    return NULL;
}

/* ".123456789" (any number of digits, as Go: past nine they are
 * dropped) and then "Z" or "+hh:mm". */
static const char *parse_tail(const char *s, fields *f)
{
    int64_t hh, mm;
    size_t k = 0;

    f->nsec = 0;
    if (s[0] == '.') {
        for (k = 1; s[k] >= '0' && s[k] <= '9'; k++)
            if (k <= 9)
                f->nsec = f->nsec * 10 + (s[k] - '0');
        if (k == 1)
            return "not RFC 3339 (no digits after the decimal point)";
        for (size_t pad = k; pad <= 9; pad++)
            f->nsec *= 10;
        s += k;
    }
    f->offset_s = 0;
    if (strcmp(s, "Z") == 0)
        return NULL;
    if (strlen(s) != 6 || (s[0] != '+' && s[0] != '-') || s[3] != ':' ||
        (hh = digits(s + 1, 2)) < 0 || (mm = digits(s + 4, 2)) < 0)
        return "not RFC 3339 (want a zone of Z or +hh:mm)";
    if (hh > 23)
        return "timezone hour out of range";
    if (mm > 59)
        return "timezone minute out of range";
    f->offset_s = (int)((hh * 60 + mm) * 60) * (s[0] == '-' ? -1 : 1);
    return NULL;
}

kiln_err kiln__time_parse(const char *s, kiln__time *out, kiln_error *err)
{
    const char *why = NULL;
    int64_t secs, ns = 0;
    fields f;

    if (s == NULL || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "time and output are required");
    if (strlen(s) < 20)
        why = "not RFC 3339 (want 2006-01-02T15:04:05Z07:00)";
    if (why == NULL)
        why = parse_date_time(s, &f);
    if (why == NULL)
        why = parse_tail(s + 19, &f);
    if (why == NULL) {
        secs = days_from_civil(f.year, f.month, f.day) * S_PER_DAY +
               (int64_t)f.hour * 3600 + (int64_t)f.min * 60 + f.sec -
               f.offset_s;
        /* Before the epoch the fraction is added to the next second
         * down from it, so the first nanosecond int64 holds
         * (1677-09-21T00:12:43.145224192Z) is read without overflow. */
        if (secs < 0 && f.nsec > 0) {
            secs++;
            f.nsec -= NS_PER_S;
        }
        if (__builtin_mul_overflow(secs, NS_PER_S, &ns) ||
            __builtin_add_overflow(ns, f.nsec, &ns))
            why = "year out of range (1678 to 2261 fit in 64-bit "
                  "nanoseconds)";
    }
    if (why != NULL)
        return kiln__fail(err, KILN_ECODEC, "bad time \"%.48s\": %s", s, why);
    out->unix_ns = ns;
    out->offset_s = f.offset_s;
    return KILN_OK;
}
