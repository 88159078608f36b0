/* The task and send logs read back, and the clock the tests wait by
 * (pool_it_log.h). */
#include "test/support/pool_it_log.h"

long long it_ms(void)
{
    return (long long)(kiln__monotonic_ns() / 1000000);
}

void it_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

char *it_slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "r");
    char *buf = NULL;
    long size;

    *len = 0;
    if (fp == NULL)
        return NULL;
    if (fseek(fp, 0, SEEK_END) == 0 && (size = ftell(fp)) >= 0 &&
        fseek(fp, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)size + 1)) != NULL) {
        *len = fread(buf, 1, (size_t)size, fp);
        buf[*len] = '\0';
    }
    (void)fclose(fp);
    return buf;
}

bool it_file_contains(const char *path, const char *text)
{
    size_t len;
    char *buf = it_slurp(path, &len);
    bool yes = buf != NULL && strstr(buf, text) != NULL;

    free(buf);
    return yes;
}

size_t it_count(const char *path, char kind)
{
    size_t len, n = 0;
    char *buf = it_slurp(path, &len);
    const char *p = buf;

    if (buf == NULL)
        return 0;
    while (p < buf + len) {
        const char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        if (nl == NULL)
            break;
        if (*p == kind)
            n++;
        p = nl + 1;
    }
    free(buf);
    return n;
}

size_t it_wait_count(const char *path, char kind, size_t want, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;
    size_t n;

    while ((n = it_count(path, kind)) < want && it_ms() < end)
        it_sleep_ms(20);
    return n;
}

void it_read_events(const char *path, it_events *out)
{
    size_t len, cap = 1024;
    char *buf = it_slurp(path, &len), *p = buf;

    out->n = 0;
    out->v = malloc(cap * sizeof(*out->v));
    assert_non_null(out->v);
    while (buf != NULL && p < buf + len) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        it_event *ev;
        char uuid[64];
        if (nl == NULL)
            break;
        *nl = '\0';
        if (out->n == cap) {
            cap *= 2;
            out->v = realloc(out->v, cap * sizeof(*out->v));
            assert_non_null(out->v);
        }
        ev = &out->v[out->n];
        if (sscanf(p, "%c %63s %ld %lld", &ev->kind, uuid, &ev->pid, &ev->ms) !=
                4 ||
            strlen(uuid) >= sizeof(it_uuid))
            fail_msg("%s: malformed line '%s'", path, p);
        kiln__strlcpy(ev->uuid, uuid, sizeof(ev->uuid));
        out->n++;
        p = nl + 1;
    }
    free(buf);
}

size_t it_read_xlines(const char *log, char kind, const char *uuid,
                      it_xline *out, size_t max)
{
    size_t len, n = 0;
    char *buf = it_slurp(log, &len), *p = buf;

    while (buf != NULL && p < buf + len) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        it_xline x;
        char id[64];
        if (nl == NULL)
            break;
        *nl = '\0';
        memset(&x, 0, sizeof(x));
        if (sscanf(p, "%c %63s %ld %lld %lld %lld %lld %lld", &x.kind, id,
                   &x.pid, &x.ms, &x.v[0], &x.v[1], &x.v[2], &x.v[3]) >= 4 &&
            x.kind == kind && (uuid == NULL || strcmp(id, uuid) == 0)) {
            kiln__strlcpy(x.uuid, id, sizeof(x.uuid));
            if (n < max)
                out[n] = x;
            n++;
        }
        p = nl + 1;
    }
    free(buf);
    return n;
}

void it_events_free(it_events *e)
{
    free(e->v);
    e->v = NULL;
    e->n = 0;
}

static int it_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

it_tally it_tally_of(const it_events *ev, char kind, it_uuid *want, size_t n)
{
    it_tally t = {0};
    const char **got = malloc((ev->n + 1) * sizeof(*got));
    size_t m = 0, covered = 0;

    assert_non_null(got);
    for (size_t i = 0; i < ev->n; i++)
        if (ev->v[i].kind == kind)
            got[m++] = ev->v[i].uuid;
    qsort(got, m, sizeof(*got), it_cmp_str);
    t.events = m;
    for (size_t i = 0; i < n; i++) {
        size_t lo = 0, hi = m, c = 0;
        while (lo < hi) { /* first entry >= want[i] */
            size_t mid = lo + (hi - lo) / 2;
            if (strcmp(got[mid], want[i]) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        while (lo + c < m && strcmp(got[lo + c], want[i]) == 0)
            c++;
        if (c == 0 && t.missing++ == 0)
            t.first_missing = want[i];
        if (c > 1) {
            t.dup_tasks++;
            t.dup_runs += c - 1;
        }
        covered += c;
    }
    t.unknown = m - covered;
    free(got);
    return t;
}

it_uuid *it_uuids_of(const it_events *ev, char kind, size_t *n)
{
    it_uuid *out = calloc(ev->n + 1, sizeof(*out));
    const char **all = malloc((ev->n + 1) * sizeof(*all));
    size_t m = 0;

    assert_non_null(out);
    assert_non_null(all);
    for (size_t i = 0; i < ev->n; i++)
        if (ev->v[i].kind == kind)
            all[m++] = ev->v[i].uuid;
    qsort(all, m, sizeof(*all), it_cmp_str);
    *n = 0;
    for (size_t i = 0; i < m; i++)
        if (i == 0 || strcmp(all[i], all[i - 1]) != 0)
            kiln__strlcpy(out[(*n)++], all[i], sizeof(it_uuid));
    free(all);
    return out;
}
