/*
 * What the interop driver (test_interop.c), the kiln worker it starts
 * (prog_iop_worker.c) and the Go peer (peer/, machinery and paota) agree
 * on: the task names, the arguments of iop.all_types with the exact values
 * each side checks, the results each side returns, and the event lines
 * every program appends to its IOP_OUT file:
 *
 *   SENT <task> <uuid> <unix ms>
 *   RUN <task> <uuid> <unix ms> <RetryCount> <RetryTimeout> <RetriesDone>
 *       <ETA unix ms, or -1> <verdict>
 *   RESULTS <task> <uuid> <unix ms> <verdict>
 *
 * (one line each; the verdict is "ok" or "bad: <why>"). Each line is one
 * write(2) to a descriptor opened with O_APPEND.
 *
 * The argument table must stay equal to allTypes in peer/values.go.
 * Functions are static inline so each program uses what it needs.
 */
#ifndef KILN_IOP_H
#define KILN_IOP_H

#include <kiln.h>

#include <fcntl.h>
#include <float.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define IOP_TASK_ALL_TYPES "iop.all_types"
#define IOP_TASK_RETRY     "iop.retry"
#define IOP_TASK_ETA       "iop.eta"
#define IOP_TASK_RAW       "iop.raw" /* paota's header mode */

/* Environment beyond KILN_*, read by the programs. */
#define IOP_ENV_OUT       "IOP_OUT"      /* event file of this program */
#define IOP_ENV_RAW_BODY  "IOP_RAW_BODY" /* header mode: the raw body */
#define IOP_ENV_RAW_TASK  "IOP_RAW_TASK"
#define IOP_ENV_RAW_RETRY "IOP_RAW_RETRY_COUNT"

/* What paota's header-mode sender puts in its headers besides the counts
 * (peer/paota.go, paotaRawSend). */
#define IOP_RAW_TIMEOUT_S 30
/* created_at, Unix seconds: recent, since kiln expires a paota task not
 * started within TaskTimeOut of CreatedAt. */
#define IOP_ENV_RAW_CREATED "IOP_RAW_CREATED_AT"

#define IOP_UTF8 "h\xc3\xa9llo" /* "héllo" */
/* With U+2028 and U+1F600, which JSON encoders treat specially. */
#define IOP_STRING \
    IOP_UTF8 " <b>&</b> \"q\" \\ \n\t\xe2\x80\xa8 \xf0\x9f\x98\x80"

/* One argument of iop.all_types: its name, its Go type and its value in
 * the member its family uses (slices: `v` and `n`). */
typedef struct iop_arg {
    const char *name;
    kiln_type type;
    bool b;
    int64_t i;
    uint64_t u;
    double f;
    const char *s;
    const void *v;
    size_t n;
} iop_arg;

#define IOP_NARGS 29

/* The table, in the order of peer/values.go. */
static inline const iop_arg *iop_args(void)
{
    static const bool bools[] = {true, false, true};
    static const int64_t is[] = {-1, 0, 1}, i8s[] = {-128, 127},
                         i16s[] = {-32768, 32767},
                         i32s[] = {INT32_MIN, INT32_MAX},
                         i64s[] = {INT64_MIN, INT64_MAX};
    static const uint64_t us[] = {0, UINT64_MAX}, u16s[] = {0, 65535},
                          u32s[] = {0, UINT32_MAX}, u64s[] = {0, UINT64_MAX};
    static const uint8_t u8s[] = {0, 1, 254, 255};
    /* float32 values as doubles: FLT_MAX, the least float32 denormal. */
    static const double f32s[] = {FLT_MAX, 0x1p-149, -0.5};
    static const double f64s[] = {1e21, 0x1p-1074, DBL_MAX, 1e-7};
    static const char *const ss[] = {"", "a", "<&>"};
    static const uint8_t by[] = {'k', 'i', 'l', 'n', 0x00, 0xff};
    static const iop_arg t[IOP_NARGS] = {
        {"b", KILN_TYPE_BOOL, .b = true},
        {"i", KILN_TYPE_INT, .i = INT64_MIN},
        {"i8", KILN_TYPE_INT8, .i = -128},
        {"i16", KILN_TYPE_INT16, .i = 32767},
        {"i32", KILN_TYPE_INT32, .i = INT32_MIN},
        {"i64", KILN_TYPE_INT64, .i = INT64_MAX},
        {"u", KILN_TYPE_UINT, .u = UINT64_MAX},
        {"u8", KILN_TYPE_UINT8, .u = 255},
        {"u16", KILN_TYPE_UINT16, .u = 65535},
        {"u32", KILN_TYPE_UINT32, .u = UINT32_MAX},
        {"u64", KILN_TYPE_UINT64, .u = 12345678901234567890u},
        {"f32", KILN_TYPE_FLOAT32, .f = (double)0.1f},
        {"f64", KILN_TYPE_FLOAT64, .f = 0.1},
        {"s", KILN_TYPE_STRING, .s = IOP_STRING},
        {"bs", KILN_TYPE_BOOL_SLICE, .v = bools, .n = 3},
        {"is", KILN_TYPE_INT_SLICE, .v = is, .n = 3},
        {"i8s", KILN_TYPE_INT8_SLICE, .v = i8s, .n = 2},
        {"i16s", KILN_TYPE_INT16_SLICE, .v = i16s, .n = 2},
        {"i32s", KILN_TYPE_INT32_SLICE, .v = i32s, .n = 2},
        {"i64s", KILN_TYPE_INT64_SLICE, .v = i64s, .n = 2},
        {"us", KILN_TYPE_UINT_SLICE, .v = us, .n = 2},
        {"u8s", KILN_TYPE_UINT8_SLICE, .v = u8s, .n = 4},
        {"u16s", KILN_TYPE_UINT16_SLICE, .v = u16s, .n = 2},
        {"u32s", KILN_TYPE_UINT32_SLICE, .v = u32s, .n = 2},
        {"u64s", KILN_TYPE_UINT64_SLICE, .v = u64s, .n = 2},
        {"f32s", KILN_TYPE_FLOAT32_SLICE, .v = f32s, .n = 3},
        {"f64s", KILN_TYPE_FLOAT64_SLICE, .v = f64s, .n = 4},
        {"ss", KILN_TYPE_STRING_SLICE, .v = ss, .n = 3},
        {"by", KILN_TYPE_BYTES, .v = by, .n = 6},
    };
    return t;
}

static inline kiln_err iop_add_arg(kiln_signature *sig, const iop_arg *a,
                                   kiln_error *err)
{
    kiln_type t = a->type;

    if (t == KILN_TYPE_BOOL)
        return kiln_signature_add_arg_bool(sig, a->name, a->b, err);
    if (t >= KILN_TYPE_INT && t <= KILN_TYPE_INT64)
        return kiln_signature_add_arg_int(sig, a->name, t, a->i, err);
    if (t >= KILN_TYPE_UINT && t <= KILN_TYPE_UINT64)
        return kiln_signature_add_arg_uint(sig, a->name, t, a->u, err);
    if (t == KILN_TYPE_FLOAT32 || t == KILN_TYPE_FLOAT64)
        return kiln_signature_add_arg_float(sig, a->name, t, a->f, err);
    if (t == KILN_TYPE_STRING)
        return kiln_signature_add_arg_string(sig, a->name, a->s, err);
    if (t == KILN_TYPE_BOOL_SLICE)
        return kiln_signature_add_arg_bool_slice(sig, a->name, a->v, a->n, err);
    if (t >= KILN_TYPE_INT_SLICE && t <= KILN_TYPE_INT64_SLICE)
        return kiln_signature_add_arg_int_slice(sig, a->name, t, a->v, a->n,
                                                err);
    if (t == KILN_TYPE_UINT8_SLICE)
        return kiln_signature_add_arg_uint8_slice(sig, a->name, a->v, a->n,
                                                  err);
    if (t >= KILN_TYPE_UINT_SLICE && t <= KILN_TYPE_UINT64_SLICE)
        return kiln_signature_add_arg_uint_slice(sig, a->name, t, a->v, a->n,
                                                 err);
    if (t == KILN_TYPE_FLOAT32_SLICE || t == KILN_TYPE_FLOAT64_SLICE)
        return kiln_signature_add_arg_float_slice(sig, a->name, t, a->v, a->n,
                                                  err);
    if (t == KILN_TYPE_STRING_SLICE)
        return kiln_signature_add_arg_string_slice(sig, a->name, a->v, a->n,
                                                   err);
    return kiln_signature_add_arg_bytes(sig, a->name, a->v, a->n, err);
}

/* Adds the 29 arguments of iop.all_types to `sig`. */
static inline kiln_err iop_add_all(kiln_signature *sig, kiln_error *err)
{
    const iop_arg *t = iop_args();
    kiln_err rc = KILN_OK;

    for (size_t i = 0; i < IOP_NARGS && rc == KILN_OK; i++)
        rc = iop_add_arg(sig, &t[i], err);
    return rc;
}

/* Same bits, so 0.1f widened and 0.1 differ, as they must. */
static inline bool iop_same(double a, double b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

/* Reads argument i as its family's getter returns it and compares it with
 * the table exactly. False with the reason in why[n]. */
static inline bool iop_check_value(const kiln_signature *sig, size_t i,
                                   const iop_arg *a, char *why, size_t n)
{
    kiln_type t = a->type;
    kiln_error e = {0};
    const void *v = NULL;
    bool ok = false;
    size_t len = 0;

    if (t == KILN_TYPE_BOOL) {
        bool b;
        ok = kiln_signature_arg_bool(sig, i, &b, &e) == KILN_OK && b == a->b;
    } else if (t >= KILN_TYPE_INT && t <= KILN_TYPE_INT64) {
        int64_t x;
        ok = kiln_signature_arg_int64(sig, i, &x, &e) == KILN_OK && x == a->i;
    } else if (t >= KILN_TYPE_UINT && t <= KILN_TYPE_UINT64) {
        uint64_t x;
        ok = kiln_signature_arg_uint64(sig, i, &x, &e) == KILN_OK && x == a->u;
    } else if (t == KILN_TYPE_FLOAT32 || t == KILN_TYPE_FLOAT64) {
        double x;
        ok = kiln_signature_arg_double(sig, i, &x, &e) == KILN_OK &&
             iop_same(x, a->f);
    } else if (t == KILN_TYPE_STRING) {
        const char *s;
        ok = kiln_signature_arg_string(sig, i, &s, &e) == KILN_OK &&
             strcmp(s, a->s) == 0;
    } else if (t == KILN_TYPE_BYTES || t == KILN_TYPE_UINT8_SLICE) {
        const uint8_t *p;
        ok = kiln_signature_arg_bytes(sig, i, &p, &len, &e) == KILN_OK &&
             len == a->n && memcmp(p, a->v, len) == 0;
    } else {
        kiln_err rc;
        size_t es;
        if (t == KILN_TYPE_BOOL_SLICE) {
            rc = kiln_signature_arg_bool_slice(sig, i, (const bool **)&v, &len,
                                               &e);
            es = sizeof(bool);
        } else if (t >= KILN_TYPE_INT_SLICE && t <= KILN_TYPE_INT64_SLICE) {
            rc = kiln_signature_arg_int64_slice(sig, i, (const int64_t **)&v,
                                                &len, &e);
            es = sizeof(int64_t);
        } else if (t >= KILN_TYPE_UINT_SLICE && t <= KILN_TYPE_UINT64_SLICE) {
            rc = kiln_signature_arg_uint64_slice(sig, i, (const uint64_t **)&v,
                                                 &len, &e);
            es = sizeof(uint64_t);
        } else if (t == KILN_TYPE_STRING_SLICE) {
            const char *const *ss = NULL;
            rc = kiln_signature_arg_string_slice(sig, i, &ss, &len, &e);
            ok = rc == KILN_OK && len == a->n;
            for (size_t k = 0; ok && k < len; k++)
                ok = strcmp(ss[k], ((const char *const *)a->v)[k]) == 0;
            goto done;
        } else {
            rc = kiln_signature_arg_double_slice(sig, i, (const double **)&v,
                                                 &len, &e);
            es = sizeof(double);
        }
        ok = rc == KILN_OK && len == a->n &&
             (len == 0 || memcmp(v, a->v, len * es) == 0);
    }
done:
    if (!ok)
        (void)snprintf(why, n, "Args[%zu] (%s): %s", i, kiln_type_name(t),
                       e.code != KILN_OK ? e.message : "value differs");
    return ok;
}

/* Checks the arguments of an iop.all_types signature: count, names, types
 * and every value. False with the first difference in why[n]. */
static inline bool iop_check_all(const kiln_signature *sig, char *why, size_t n)
{
    const iop_arg *t = iop_args();

    if (kiln_signature_arg_count(sig) != IOP_NARGS) {
        (void)snprintf(why, n, "%zu arguments, want %d",
                       kiln_signature_arg_count(sig), IOP_NARGS);
        return false;
    }
    for (size_t i = 0; i < IOP_NARGS; i++) {
        kiln_type got = KILN_TYPE_BOOL;
        const char *name = kiln_signature_arg_name(sig, i);
        if (kiln_signature_arg_type(sig, i, &got, NULL) != KILN_OK ||
            got != t[i].type || name == NULL || strcmp(name, t[i].name) != 0) {
            (void)snprintf(why, n, "Args[%zu]: %s %s, want %s %s", i,
                           name != NULL ? name : "?", kiln_type_name(got),
                           t[i].name, kiln_type_name(t[i].type));
            return false;
        }
        if (!iop_check_value(sig, i, &t[i], why, n))
            return false;
    }
    return true;
}

/* The results kiln's iop.all_types stores (what machinery's MongoDB
 * backend reads back: see kilnResults in peer/values.go). */
#define IOP_KILN_RESULT_INT   INT64_MIN
#define IOP_KILN_RESULT_FLOAT 0.1
#define IOP_KILN_RESULT_BOOL  true

/* The results the Go workers return (goResults in peer/values.go):
 * int64, uint64, float64, string, bool. */
#define IOP_GO_RESULT_INT   INT64_MAX
#define IOP_GO_RESULT_UINT  42u
#define IOP_GO_RESULT_FLOAT 0.1
#define IOP_GO_RESULT_BOOL  true

/* Wall-clock milliseconds since the Unix epoch, as Go's UnixMilli. */
static inline long long iop_unix_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Appends one event line to `path` with a single write. */
static inline void iop_record(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline void iop_record(const char *path, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n, fd;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    if ((fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644)) < 0)
        return;
    (void)!write(fd, line, (size_t)n);
    (void)close(fd);
}

#endif /* KILN_IOP_H */
