/* What publish writes for one message (see outgoing.h). */
#include "broker/outgoing.h"

#include "logger/logger.h"

#include <stdarg.h>
#include <stdio.h>

#define SHORTSTR_MAX 255

static const char *or_empty(const char *s)
{
    return s != NULL ? s : "";
}

static size_t n_inherited(const kiln__message *m)
{
    const kiln__delivery *d = m->inherit;

    return d != NULL && (d->fields != NULL || d->headers != NULL) ? d->n_headers
                                                                  : 0;
}

static size_t n_entries(const kiln__message *m)
{
    return n_inherited(m) + m->n_fields + m->n_headers;
}

static size_t add_sat(size_t a, size_t b)
{
    return b > SIZE_MAX - a ? SIZE_MAX : a + b;
}

/* ---- checks ------------------------------------------------------------- */

static kiln_err short_ok(const char *what, const char *s, kiln_error *err)
{
    size_t n = s != NULL ? strlen(s) : 0;

    if (n <= SHORTSTR_MAX)
        return KILN_OK;
    return kiln__fail(err, KILN_EINVAL,
                      "%s of %zu bytes: an AMQP short string holds %d", what, n,
                      SHORTSTR_MAX);
}

kiln_err kiln__message_valid(const kiln__message *m, kiln_error *err)
{
    kiln_err rc;

    if (m->routing_key == NULL)
        return kiln__fail(err, KILN_EINVAL, "no routing key");
    if (m->body == NULL && m->body_len > 0)
        return kiln__fail(err, KILN_EINVAL, "body of %zu bytes missing",
                          m->body_len);
    if ((m->headers == NULL && m->n_headers > 0) ||
        (m->fields == NULL && m->n_fields > 0))
        return kiln__fail(err, KILN_EINVAL, "headers missing");
    if (m->n_fields > INT32_MAX || m->n_headers > INT32_MAX ||
        n_entries(m) > INT32_MAX)
        return kiln__fail(err, KILN_EINVAL, "more than %d headers", INT32_MAX);
    if ((rc = short_ok("exchange", m->exchange, err)) != KILN_OK ||
        (rc = short_ok("routing key", m->routing_key, err)) != KILN_OK ||
        (rc = short_ok("message id", m->message_id, err)) != KILN_OK ||
        (rc = short_ok("content type", m->content_type, err)) != KILN_OK)
        return rc;
    for (size_t i = 0; i < m->n_fields; i++)
        if ((rc = short_ok("a header name", m->fields[i].key, err)) != KILN_OK)
            return rc;
    for (size_t i = 0; i < m->n_headers; i++)
        if ((rc = short_ok("a header name", m->headers[i].key, err)) != KILN_OK)
            return rc;
    return KILN_OK;
}

/* ---- the merged table --------------------------------------------------- */

/* Whether fields[f..] or headers[h..] of `m` name `key`. */
static bool shadowed(const kiln__message *m, size_t f, size_t h,
                     const char *key)
{
    for (; f < m->n_fields; f++)
        if (strcmp(or_empty(m->fields[f].key), key) == 0)
            return true;
    for (; h < m->n_headers; h++)
        if (strcmp(or_empty(m->headers[h].key), key) == 0)
            return true;
    return false;
}

/* Entry i of the sequence inherited, fields, headers into *out, unless a
 * later own entry replaces it (or `keep` drops an inherited one). */
static bool entry(const kiln__message *m, size_t i, kiln__hdr *out,
                  bool *inherited)
{
    size_t ni = n_inherited(m);
    const char *k;

    *inherited = i < ni;
    if (i < ni && m->inherit->fields == NULL) {
        /* A delivery built without typed headers: its strings, as text. */
        k = or_empty(m->inherit->headers[i].key);
        *out = kiln__hdr_text(k, or_empty(m->inherit->headers[i].value));
        return (m->keep == NULL || m->keep(k)) && !shadowed(m, 0, 0, k);
    }
    if (i < ni) {
        *out = m->inherit->fields[i];
        k = out->key = or_empty(out->key);
        return (m->keep == NULL || m->keep(k)) && !shadowed(m, 0, 0, k);
    }
    if ((i -= ni) < m->n_fields) {
        *out = m->fields[i];
        k = out->key = or_empty(out->key);
        return !shadowed(m, i + 1, 0, k);
    }
    i -= m->n_fields;
    k = or_empty(m->headers[i].key);
    *out = kiln__hdr_text(k, or_empty(m->headers[i].value));
    return !shadowed(m, m->n_fields, i + 1, k);
}

/* Walks the merged table of `m`: its entries go to t (may be NULL), *n
 * and *n_inh count them and the inherited ones among them (which come
 * first), *table gets their wire size. KILN_EINVAL when an own header
 * cannot be encoded; an inherited one that cannot makes *table SIZE_MAX,
 * too big for any frame. */
static kiln_err merge(const kiln__message *m, kiln__hdr *t, size_t *n,
                      size_t *n_inh, size_t *table, kiln_error *err)
{
    size_t total = n_entries(m), size;
    kiln__hdr f;
    bool inh;

    *n = *n_inh = *table = 0;
    for (size_t i = 0; i < total; i++) {
        if (!entry(m, i, &f, &inh))
            continue;
        if ((size = kiln__hdrs_wire_size(&f, 1)) == SIZE_MAX && !inh)
            return kiln__fail(err, KILN_EINVAL,
                              "header '%.64s' cannot be encoded: nested "
                              "deeper than %d levels, or a string over 4 GiB",
                              f.key, KILN__HVAL_MAX_DEPTH);
        *table = add_sat(*table, size);
        if (t != NULL)
            t[*n] = f;
        (*n)++;
        *n_inh += inh;
    }
    return KILN_OK;
}

/* Properties as rabbitmq-c encodes them for publish: flags, content type,
 * headers (when there are any), delivery mode, priority, message id. */
static size_t props_of(const kiln__message *m, size_t table, size_t n)
{
    size_t p = 2 + 1 + strlen(or_empty(m->content_type)) + 1;

    if (m->content_type == NULL)
        p += strlen("application/json");
    if (m->priority > 0)
        p += 1;
    if (m->message_id != NULL)
        p += 1 + strlen(m->message_id);
    return n > 0 ? add_sat(p, add_sat(4, table)) : p;
}

static kiln_err too_big(size_t props, size_t max_props, kiln_error *err)
{
    if (props == SIZE_MAX)
        return kiln__fail(err, KILN_ETOOBIG,
                          "an inherited header cannot be encoded (nested "
                          "deeper than %d levels)",
                          KILN__HVAL_MAX_DEPTH);
    return kiln__fail(err, KILN_ETOOBIG,
                      "properties of %zu bytes, headers included, do not fit "
                      "one frame: frame_max %zu leaves %zu",
                      props, max_props + KILN__FRAME_OVERHEAD, max_props);
}

kiln_err kiln__message_check(const kiln__message *m, size_t max_props,
                             size_t *props, kiln_error *err)
{
    size_t n, n_inh, table, p;
    kiln_err rc;

    if (props != NULL)
        *props = 0;
    if ((rc = kiln__message_valid(m, err)) != KILN_OK ||
        (rc = merge(m, NULL, &n, &n_inh, &table, err)) != KILN_OK)
        return rc;
    p = props_of(m, table, n);
    if (props != NULL)
        *props = p;
    if (max_props > 0 && p > max_props)
        return too_big(p, max_props, err);
    return KILN_OK;
}

/* ---- what goes out ------------------------------------------------------ */

size_t kiln__outgoing_cap(const kiln__message *m)
{
    size_t n = n_entries(m), o = m->oversize ? n_entries(m->oversize) : 0;

    return (n > o ? n : o) + 1; /* + a reason a trim adds */
}

/* `m` with its table in t[cap]; *n_inh: the inherited entries. */
static kiln_err prepare_one(const kiln__message *m, size_t max_props,
                            kiln__hdr *t, size_t cap, kiln__outgoing *out,
                            size_t *n_inh, kiln_error *err)
{
    size_t table;
    kiln_err rc;

    if ((rc = kiln__message_valid(m, err)) != KILN_OK)
        return rc;
    if (n_entries(m) >= cap)
        return kiln__fail(err, KILN_EINVAL, "%zu headers: no room for them",
                          n_entries(m));
    out->msg = m;
    out->table = t;
    if ((rc = merge(m, t, &out->n, n_inh, &table, err)) != KILN_OK)
        return rc;
    out->props = props_of(m, table, out->n);
    if (max_props > 0 && out->props > max_props)
        return too_big(out->props, max_props, err);
    return KILN_OK;
}

/* Appends to note[len] at *used; a full note ends with "...". */
static void note_add(char *note, size_t len, size_t *used, const char *fmt, ...)
    KILN_PRINTF(4, 5);

static void note_add(char *note, size_t len, size_t *used, const char *fmt, ...)
{
    va_list ap;
    int k;

    if (*used + 1 >= len)
        return;
    va_start(ap, fmt);
    k = vsnprintf(note + *used, len - *used, fmt, ap);
    va_end(ap);
    if (k >= 0 && (size_t)k < len - *used) {
        *used += (size_t)k;
        return;
    }
    *used = len - 1;
    if (len > 4)
        memcpy(note + len - 4, "...", 4);
}

/* The index of the own x-kiln-reason of the table, adding an empty one
 * when there is none; SIZE_MAX when there is no room. */
static size_t reason_at(kiln__outgoing *o, size_t n_inh, size_t cap)
{
    for (size_t i = n_inh; i < o->n; i++)
        if (strcmp(o->table[i].key, KILN__HDR_REASON) == 0)
            return i;
    if (o->n >= cap)
        return SIZE_MAX;
    o->table[o->n] = kiln__hdr_text(KILN__HDR_REASON, "");
    return o->n++;
}

/* The largest of the first n_inh entries. */
static size_t largest(const kiln__hdr *t, size_t n_inh, size_t *size)
{
    size_t at = 0;

    *size = 0;
    for (size_t i = 0; i < n_inh; i++) {
        size_t s = kiln__hdrs_wire_size(&t[i], 1);
        if (s >= *size) {
            *size = s;
            at = i;
        }
    }
    return at;
}

/* Leaves out inherited entries, the largest first, until the properties
 * fit; the reason says which. */
static kiln_err trim(kiln__outgoing *o, size_t n_inh, size_t max_props,
                     size_t cap, char *note, size_t note_len, kiln_error *err)
{
    size_t r = reason_at(o, n_inh, cap), used = 0, size, at;
    const kiln__hval *was;

    if (r == SIZE_MAX || note_len < 2)
        return kiln__fail(err, KILN_EINVAL, "no room to trim headers");
    was = &o->table[r].value;
    if (was->type == KILN__HV_UTF8 && was->v.str.len > 0)
        note_add(note, note_len, &used, "%.*s; ",
                 (int)(was->v.str.len < 4096 ? was->v.str.len : 4096),
                 was->v.str.p);
    note_add(note, note_len, &used,
             "left out headers too large for one frame (frame_max %zu "
             "leaves %zu bytes of properties):",
             max_props + KILN__FRAME_OVERHEAD, max_props);
    while (o->props > max_props) {
        if (n_inh == 0)
            return kiln__fail(err, KILN_ETOOBIG,
                              "properties of %zu bytes do not fit one frame "
                              "(frame_max %zu) even without the %zu inherited "
                              "headers",
                              o->props, max_props + KILN__FRAME_OVERHEAD,
                              o->trimmed);
        at = largest(o->table, n_inh, &size);
        note_add(note, note_len, &used, "%s %.64s (%zu bytes)",
                 o->trimmed > 0 ? "," : "", o->table[at].key, size);
        memmove(&o->table[at], &o->table[at + 1],
                (o->n - at - 1) * sizeof(*o->table));
        o->n--;
        n_inh--;
        r--; /* own entries come after the inherited ones */
        o->trimmed++;
        o->table[r] = kiln__hdr_text(KILN__HDR_REASON, note);
        o->props = props_of(o->msg, kiln__hdrs_wire_size(o->table, o->n), o->n);
    }
    return KILN_OK;
}

static void log_outgoing(const kiln__message *m, const kiln__outgoing *o,
                         const kiln_error *why)
{
    if (o->replaced)
        kiln__log(KILN_LOG_WARN, "broker",
                  "message to '%s' key '%s' (id %s): %s; published to '%s' "
                  "key '%s' instead%s",
                  or_empty(m->exchange), m->routing_key,
                  or_empty(m->message_id), why->message,
                  or_empty(o->msg->exchange), o->msg->routing_key,
                  o->trimmed > 0 ? ", without its largest headers" : "");
    else
        kiln__log(KILN_LOG_WARN, "broker",
                  "message to '%s' key '%s' (id %s): %s; sent without its "
                  "%zu largest inherited headers",
                  or_empty(m->exchange), m->routing_key,
                  or_empty(m->message_id), why->message, o->trimmed);
}

kiln_err kiln__outgoing_prepare(const kiln__message *m, size_t max_props,
                                kiln__hdr *scratch, size_t cap, char *note,
                                size_t note_len, kiln__outgoing *out,
                                kiln_error *err)
{
    kiln_error why, e2;
    size_t n_inh = 0;
    kiln_err rc;

    memset(out, 0, sizeof(*out));
    rc = prepare_one(m, max_props, scratch, cap, out, &n_inh, &why);
    if (rc == KILN_OK || rc != KILN_ETOOBIG ||
        (m->oversize == NULL && !m->trim)) {
        if (rc != KILN_OK && err != NULL)
            *err = why;
        return rc;
    }
    if (m->oversize != NULL) {
        memset(out, 0, sizeof(*out));
        rc =
            prepare_one(m->oversize, max_props, scratch, cap, out, &n_inh, &e2);
        out->replaced = true;
        if (rc == KILN_ETOOBIG && m->oversize->trim)
            rc = trim(out, n_inh, max_props, cap, note, note_len, &e2);
        if (rc != KILN_OK)
            return kiln__fail(err, rc, "%s; its replacement: %s", why.message,
                              e2.message);
    } else if ((rc = trim(out, n_inh, max_props, cap, note, note_len, &e2)) !=
               KILN_OK) {
        return kiln__fail(err, rc, "%s", e2.message);
    }
    log_outgoing(m, out, &why);
    return KILN_OK;
}
