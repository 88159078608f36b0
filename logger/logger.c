/*
 * Leveled logging: level and format switches, the sink, and the assembly of
 * one text or JSON line per call.
 *
 * Memory: a message is formatted into a stack buffer and the line is built
 * in another, so a short line allocates nothing. A longer message is
 * formatted again into a heap buffer, up to MSG_MAX bytes; beyond that it is
 * cut and the line says "[truncated from N bytes]". If the heap is out of
 * memory the stack copy is used, cut the same way, and a line that cannot
 * grow is rebuilt in the stack buffer with shorter field limits, so every
 * call still writes one well-formed line.
 */
#include "logger/logger.h"
#include "logger/format.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define MSG_STACK  1024  /* formatted message on the stack */
#define MSG_MAX    16384 /* longest message written whole */
#define LINE_STACK 2048  /* finished line on the stack */
#define FIELD_MAX  256   /* longest module, task id or task name */
/* Limits of the out-of-memory line. JSON needs at most 6 bytes per input
 * byte ("\u001f"), plus a fixed frame, so this line fits LINE_STACK. */
#define FALLBACK_MSG   128
#define FALLBACK_FIELD 32
_Static_assert(6 * (FALLBACK_MSG + 3 * FALLBACK_FIELD) + 256 < LINE_STACK,
               "the fallback line must fit the stack line buffer");

static atomic_int active_level = KILN_LOG_INFO;
static atomic_int active_format = KILN_LOG_TEXT;

/* sink_mu makes (sink_fn, sink_user) change together. It is held only while
 * the pair is read or written, never while a sink runs, so a sink may log
 * or replace the sink without deadlock. The price: a line being written as
 * the sink changes may still reach the previous sink (kiln.h says so). */
static pthread_mutex_t sink_mu = PTHREAD_MUTEX_INITIALIZER;
static kiln_log_fn sink_fn; /* NULL: one fwrite to stderr per line */
static void *sink_user;

/* One line's parts, gathered before it is built. */
struct line {
    kiln_log_level level;
    const char *module;
    const char *uuid; /* NULL: not about a task, or id unknown */
    const char *name; /* NULL: task name unknown */
    const char *msg;
    size_t msg_len;
    size_t msg_full; /* length before any cut; > msg_len when cut */
    char time[32];
    size_t time_len;
};

static const char *level_name(kiln_log_level level, bool json)
{
    static const char *const upper[] = {"EMERG", "ALERT",  "CRIT", "ERROR",
                                        "WARN",  "NOTICE", "INFO", "DEBUG"};
    static const char *const lower[] = {"emerg", "alert",  "crit", "error",
                                        "warn",  "notice", "info", "debug"};
    unsigned i = (unsigned)level;

    if (i >= KILN__ARRAY_LEN(upper))
        i = KILN_LOG_DEBUG;
    return json ? lower[i] : upper[i];
}

bool kiln__log_enabled(kiln_log_level level)
{
    int l = (int)level;

    return l > KILN_LOG_OFF &&
           l <= atomic_load_explicit(&active_level, memory_order_relaxed);
}

void kiln_log_set_level(kiln_log_level level)
{
    int l = (int)level;

    if (l < KILN_LOG_OFF)
        l = KILN_LOG_OFF;
    else if (l > KILN_LOG_DEBUG)
        l = KILN_LOG_DEBUG;
    atomic_store_explicit(&active_level, l, memory_order_relaxed);
}

kiln_log_level kiln_log_get_level(void)
{
    return (kiln_log_level)atomic_load_explicit(&active_level,
                                                memory_order_relaxed);
}

/* Values outside the enum are ignored: the format stays as it was. */
void kiln_log_set_format(kiln_log_format format)
{
    if (format == KILN_LOG_TEXT || format == KILN_LOG_JSON)
        atomic_store_explicit(&active_format, (int)format,
                              memory_order_relaxed);
}

void kiln_log_set_sink(kiln_log_fn fn, void *user)
{
    (void)pthread_mutex_lock(&sink_mu);
    sink_fn = fn;
    sink_user = fn != NULL ? user : NULL;
    (void)pthread_mutex_unlock(&sink_mu);
}

/* Formats into `stack` (MSG_STACK bytes) or, for a longer message, into
 * *heap (caller frees). Trailing newlines are dropped: the sink ends lines. */
__attribute__((format(printf, 2, 0))) static const char *
format_message(char *stack, const char *fmt, va_list ap, char **heap,
               size_t *len, size_t *full)
{
    static const char null_fmt[] = "(null)", bad_fmt[] = "(format error)";
    const char *msg = stack;
    va_list again;
    int n;

    *heap = NULL;
    if (fmt == NULL) {
        *len = *full = sizeof(null_fmt) - 1;
        return null_fmt;
    }
    va_copy(again, ap);
    n = vsnprintf(stack, MSG_STACK, fmt, again);
    va_end(again);
    if (n < 0) {
        *len = *full = sizeof(bad_fmt) - 1;
        return bad_fmt;
    }
    *full = (size_t)n;
    *len = *full < MSG_STACK ? *full : MSG_STACK - 1;
    if (*full >= MSG_STACK) {
        size_t want = *full < MSG_MAX ? *full : MSG_MAX;

        *heap = kiln__malloc(want + 1);
        if (*heap != NULL && vsnprintf(*heap, want + 1, fmt, ap) >= 0) {
            msg = *heap;
            *len = want;
        }
    }
    while (*len == *full && *len > 0 &&
           (msg[*len - 1] == '\n' || msg[*len - 1] == '\r'))
        *full = --*len;
    return msg;
}

static void put_string(kiln__buf *b, const char *s, size_t limit, kiln__esc esc)
{
    kiln__log_put_field(b, s, strlen(s), limit, false, esc);
}

static void put_message(kiln__buf *b, const struct line *ln, size_t limit,
                        kiln__esc esc)
{
    char mark[64];
    int n;

    kiln__log_put_field(b, ln->msg, ln->msg_len, limit,
                        ln->msg_len < ln->msg_full, esc);
    if (ln->msg_len < ln->msg_full) {
        n = snprintf(mark, sizeof(mark), "...[truncated from %zu bytes]",
                     ln->msg_full);
        if (n > 0 && (size_t)n < sizeof(mark))
            kiln__buf_put(b, mark, (size_t)n);
    }
}

/* A text-line value is quoted, logfmt style, when it is empty or holds a
 * space, a control byte, '"' or '='. */
static void put_text_value(kiln__buf *b, const char *s, size_t limit)
{
    bool quote = *s == '\0';

    for (const char *c = s; *c != '\0' && !quote; c++)
        quote =
            (unsigned char)*c <= 0x20 || *c == 0x7F || *c == '"' || *c == '=';
    if (!quote) {
        put_string(b, s, limit, KILN__ESC_TEXT);
        return;
    }
    kiln__buf_put(b, "\"", 1);
    put_string(b, s, limit, KILN__ESC_JSON);
    kiln__buf_put(b, "\"", 1);
}

static void build_text(kiln__buf *b, const struct line *ln, size_t msg_lim,
                       size_t field_lim)
{
    kiln__buf_put(b, ln->time, ln->time_len);
    kiln__buf_put(b, " ", 1);
    kiln__buf_puts(b, level_name(ln->level, false));
    kiln__buf_put(b, " [", 2);
    put_string(b, ln->module, field_lim, KILN__ESC_TEXT);
    kiln__buf_put(b, "] ", 2);
    put_message(b, ln, msg_lim, KILN__ESC_TEXT);
    if (ln->uuid != NULL) {
        kiln__buf_puts(b, " task_id=");
        put_text_value(b, ln->uuid, field_lim);
    }
    if (ln->name != NULL) {
        kiln__buf_puts(b, " task=");
        put_text_value(b, ln->name, field_lim);
    }
}

static void build_json(kiln__buf *b, const struct line *ln, size_t msg_lim,
                       size_t field_lim)
{
    kiln__buf_puts(b, "{\"time\":\"");
    kiln__buf_put(b, ln->time, ln->time_len);
    kiln__buf_puts(b, "\",\"level\":\"");
    kiln__buf_puts(b, level_name(ln->level, true));
    kiln__buf_puts(b, "\",\"module\":\"");
    put_string(b, ln->module, field_lim, KILN__ESC_JSON);
    kiln__buf_puts(b, "\",\"msg\":\"");
    put_message(b, ln, msg_lim, KILN__ESC_JSON);
    kiln__buf_put(b, "\"", 1);
    if (ln->uuid != NULL) {
        kiln__buf_puts(b, ",\"task_id\":\"");
        put_string(b, ln->uuid, field_lim, KILN__ESC_JSON);
        kiln__buf_put(b, "\"", 1);
    }
    if (ln->name != NULL) {
        kiln__buf_puts(b, ",\"task\":\"");
        put_string(b, ln->name, field_lim, KILN__ESC_JSON);
        kiln__buf_put(b, "\"", 1);
    }
    kiln__buf_put(b, "}", 1);
}

/* Builds the line in b (the stack buffer first; with field limits that
 * fit it when the heap fails) and hands it to the sink, or writes it to
 * stderr with its '\n' in one call, so lines from several threads never
 * interleave. The sink is read first: a line being written as the sink
 * changes may still reach the previous one (kiln.h says so). */
static void emit(kiln__buf *b, const struct line *ln, bool json,
                 kiln_log_level level)
{
    void (*build)(kiln__buf *, const struct line *, size_t, size_t) =
        json ? build_json : build_text;
    const char *text;
    kiln_log_fn fn;
    void *user;

    (void)pthread_mutex_lock(&sink_mu);
    fn = sink_fn;
    user = sink_user;
    (void)pthread_mutex_unlock(&sink_mu);
    build(b, ln, SIZE_MAX, FIELD_MAX);
    if (fn == NULL)
        kiln__buf_put(b, "\n", 1);
    if ((text = kiln__buf_cstr(b)) == NULL) {
        kiln__buf_release(b);
        kiln__buf_init(b, b->first, b->first_cap, true);
        build(b, ln, FALLBACK_MSG, FALLBACK_FIELD);
        if (fn == NULL)
            kiln__buf_put(b, "\n", 1);
        if ((text = kiln__buf_cstr(b)) == NULL)
            return; /* cannot happen: the limits fit (FALLBACK_MSG) */
    }
    if (fn != NULL)
        fn(level, text, user);
    else
        (void)fwrite(text, 1, b->n, stderr);
}

void kiln__vlog_task(kiln_log_level level, const char *module, const char *uuid,
                     const char *name, const char *fmt, va_list ap)
{
    char msg_stack[MSG_STACK], line_stack[LINE_STACK], *heap;
    struct line ln;
    kiln__buf b;
    bool json;

    if (!kiln__log_enabled(level))
        return;
    ln.level = level;
    ln.module = module != NULL ? module : "(null)";
    ln.uuid = uuid;
    ln.name = name;
    ln.time_len = kiln__log_time(ln.time, sizeof(ln.time), kiln__realtime_ns());
    ln.msg =
        format_message(msg_stack, fmt, ap, &heap, &ln.msg_len, &ln.msg_full);
    json = atomic_load_explicit(&active_format, memory_order_relaxed) ==
           KILN_LOG_JSON;

    kiln__buf_init(&b, line_stack, sizeof(line_stack), false);
    emit(&b, &ln, json, level);
    kiln__buf_release(&b);
    kiln__free(heap);
}

void kiln__log_task(kiln_log_level level, const char *module, const char *uuid,
                    const char *name, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kiln__vlog_task(level, module, uuid, name, fmt, ap);
    va_end(ap);
}

void kiln__log(kiln_log_level level, const char *module, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kiln__vlog_task(level, module, NULL, NULL, fmt, ap);
    va_end(ap);
}

void kiln_log(kiln_log_level level, const char *module, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kiln__vlog_task(level, module, NULL, NULL, fmt, ap);
    va_end(ap);
}
