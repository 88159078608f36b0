/* Decoding a signature from the JSON of either dialect, in one pass of
 * the strict reader over the body (the way hiredis's reader builds its
 * caller's objects): every field kiln models is decoded straight from the
 * text into the signature, with no tree in between.
 *
 * Keys are matched as Go's encoding/json matches them (exact, else
 * case-insensitive) and handled in document order, so of duplicate keys
 * the last wins, as in Go. null leaves a field as it is, except for the
 * ones Go holds as pointers, slices or maps (ETA, CreatedAt, Args,
 * Headers, RawArgs, callbacks), which it clears. Go's errors for a value
 * of the wrong kind are kept: a string for an int, 1.5 for an int, 256
 * for the uint8 Priority. The callbacks and every unknown key are kept
 * verbatim in sig->extra as cJSON trees (Go drops unknown keys; kiln
 * sends them on), and Headers in sig->headers; those trees may take at
 * most 8 x the body + 1 MiB between them (VERBATIM_BUDGET), checked
 * before each is built, so a hostile body cannot make a worker hold tens
 * of times its size.
 *
 * A body fails at its first fault in document order. When that fault is
 * a value rather than the text, the whole body is checked as JSON before
 * the error is reported, so a body that is not JSON anywhere says so, as
 * it did when the check came first. */
#include "task/codec.h"

#include <stddef.h>
#include <string.h>

#define MIB ((size_t)1024 * 1024)

enum { CB_SUCCESS, CB_ERROR, CB_CHORD, CB_N };

static const char *const cb_keys[CB_N] = {"OnSuccess", "OnError",
                                          "ChordCallback"};

typedef struct decoder {
    kiln__reader rd;
    kiln_signature *sig;
    size_t budget; /* bytes verbatim trees may still take */
    bool paota;    /* the first dialect's own key was paota's */
    bool decided;  /* a key only one dialect defines was seen */
    bool have_name;
    bool have_uuid;
    cJSON *cb[CB_N]; /* callbacks, under the field's own key */
    cJSON *unknown;  /* unknown members, in order, duplicates included */
} decoder;

static void *slot(kiln_signature *sig, size_t off)
{
    return (char *)sig + off;
}

static unsigned char peek(const decoder *d)
{
    return d->rd.s[d->rd.pos];
}

static kiln_err syntax(const decoder *d, kiln_error *err)
{
    return kiln__rd_fail(&d->rd, "body", err);
}

static kiln_err want(const kiln__field *f, const char *type, unsigned char c,
                     kiln_error *err)
{
    return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %s", f->key, type,
                      kiln__json_kind_at(c));
}

/* ---- scalar fields ------------------------------------------------------ */

static kiln_err set_text(decoder *d, const kiln__field *f, kiln_error *err)
{
    const char *raw = (const char *)d->rd.s + d->rd.pos + 1;
    char **dst = slot(d->sig, f->off);
    size_t len;
    bool esc;
    char *s;

    if (peek(d) != '"')
        return want(f, "string", peek(d), err);
    if (!kiln__rd_string(&d->rd, &len, &esc))
        return syntax(d, err);
    /* An empty string (machinery writes every field) allocates nothing. */
    if (len == 0)
        s = kiln__no_text;
    else if ((s = kiln__json_strdup(raw, len, esc, NULL)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "%s: %zu bytes", f->key, len);
    kiln__text_free(*dst);
    *dst = s;
    d->have_name |= f->off == offsetof(struct kiln_signature, name);
    d->have_uuid |= f->off == offsetof(struct kiln_signature, uuid);
    return KILN_OK;
}

/* A number token at r->pos into tok[KILN__JSON_NUMBER_MAX + 1]. */
static bool number_token(kiln__reader *r, char *tok)
{
    size_t start = r->pos;

    if (!kiln__rd_number(r))
        return false;
    memcpy(tok, r->s + start, r->pos - start);
    tok[r->pos - start] = '\0';
    return true;
}

static bool starts_number(unsigned char c)
{
    return c == '-' || (c >= '0' && c <= '9');
}

static const char *number_why(kiln_err rc)
{
    return rc == KILN_ETYPE    ? "not an integer"
           : rc == KILN_EINVAL ? "negative"
                               : "out of range";
}

/* Go's int is 64 bits; kiln's counters are C ints, so a value past
 * INT_MAX is refused rather than cut. Priority is Go's uint8. */
static kiln_err set_number(decoder *d, const kiln__field *f, kiln_error *err)
{
    bool prio = f->kind == KILN__F_PRIORITY;
    const char *type = prio ? "uint8" : "int";
    char tok[KILN__JSON_NUMBER_MAX + 1];
    int64_t v = 0;
    uint64_t u = 0;
    kiln_err rc;

    if (!starts_number(peek(d)))
        return want(f, type, peek(d), err);
    if (!number_token(&d->rd, tok))
        return syntax(d, err);
    if (prio) {
        rc = kiln__parse_uint(tok, &u);
        if (rc == KILN_OK && u > 255)
            rc = KILN_ERANGE;
    } else {
        rc = kiln__parse_int(tok, &v);
        if (rc == KILN_OK && (v < INT32_MIN || v > INT32_MAX))
            rc = KILN_ERANGE;
    }
    if (rc != KILN_OK)
        return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %.40s (%s)",
                          f->key, type, tok, number_why(rc));
    if (prio)
        *(unsigned *)slot(d->sig, f->off) = (unsigned)u;
    else
        *(int *)slot(d->sig, f->off) = (int)v;
    return KILN_OK;
}

static kiln_err set_bool(decoder *d, const kiln__field *f, kiln_error *err)
{
    bool v = peek(d) == 't';

    if (peek(d) != 't' && peek(d) != 'f')
        return want(f, "bool", peek(d), err);
    if (!kiln__rd_literal(&d->rd, v ? "true" : "false"))
        return syntax(d, err);
    *(bool *)slot(d->sig, f->off) = v;
    return KILN_OK;
}

static kiln_err set_time(decoder *d, const kiln__field *f, kiln_error *err)
{
    const char *raw = (const char *)d->rd.s + d->rd.pos + 1;
    char small[64], *text = small;
    kiln__time t;
    size_t len;
    bool esc;
    kiln_err rc;

    if (peek(d) != '"')
        return want(f, "RFC 3339 time", peek(d), err);
    if (!kiln__rd_string(&d->rd, &len, &esc))
        return syntax(d, err);
    if (len >= sizeof(small) &&
        (text = kiln__json_strdup(raw, len, esc, NULL)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "%s: %zu bytes", f->key, len);
    if (text == small)
        (void)kiln__json_unescape(raw, len, esc, small, sizeof(small));
    if ((rc = kiln__time_parse(text, &t, err)) == KILN_OK) {
        *(bool *)slot(d->sig, f->off) = true;
        *(kiln__time *)slot(d->sig, f->off2) = t;
    } else {
        kiln__prefix(err, "%s", f->key);
    }
    if (text != small)
        kiln__free(text);
    return rc;
}

/* Go's json.RawMessage keeps the text; Go writes it back compacted, so
 * it is stored compacted (the bytes of the member's value). */
static kiln_err set_raw(decoder *d, kiln_error *err)
{
    kiln__buf b = {0};
    kiln__extent x;
    kiln_err rc;
    char *text;
    size_t n;

    if (!kiln__rd_skip(&d->rd, 1, &x))
        return syntax(d, err);
    kiln__json_compact(&b, (const char *)d->rd.s + x.off, x.len);
    if ((rc = kiln__buf_finish(&b, &text, &n, err)) != KILN_OK)
        return rc;
    kiln__free(d->sig->raw_args);
    d->sig->raw_args = text;
    d->sig->raw_args_len = n;
    return KILN_OK;
}

/* ---- values kept verbatim ----------------------------------------------- */

/* Passes over the value at the reader, charges what its tree will cost
 * against the budget, and builds it with the key `key` (`name` names it in
 * messages). */
static kiln_err keep(decoder *d, const char *name, const char *key,
                     size_t key_len, bool key_esc, cJSON **out, kiln_error *err)
{
    kiln__reader sub;
    size_t cost;
    kiln__extent x;

    if (!kiln__rd_skip(&d->rd, 1, &x))
        return syntax(d, err);
    cost = key_len + x.len;
    if (x.values > (SIZE_MAX - cost) / KILN__JSON_NODE_COST ||
        (cost += x.values * KILN__JSON_NODE_COST) > d->budget)
        return kiln__fail(err, KILN_ETOOBIG,
                          "%.40s: %zu values kept verbatim would take about "
                          "%zu bytes, more than is left of the %zu a body of "
                          "%zu bytes may keep (8 times its size + 1 MiB)",
                          name, x.values, cost,
                          d->rd.n <= (SIZE_MAX - MIB) / 8 ? 8 * d->rd.n + MIB
                                                          : SIZE_MAX,
                          d->rd.n);
    d->budget -= cost;
    sub = (kiln__reader){d->rd.s, x.off + x.len, x.off, NULL};
    return kiln__json_build(&sub, key, key_len, key_esc, out, err);
}

static int cb_index(const kiln__field *f)
{
    for (int i = 0; i < CB_N; i++)
        if (strcmp(f->key, cb_keys[i]) == 0)
            return i;
    return 0;
}

/* Go decodes OnSuccess and OnError as []*Signature, ChordCallback as a
 * *Signature; kiln checks that much and keeps the rest as it came, under
 * Go's field name whatever case it was sent in. */
static kiln_err take_callback(decoder *d, const kiln__field *f, kiln_error *err)
{
    int i = cb_index(f);
    bool list = i != CB_CHORD;
    cJSON *it;
    kiln_err rc;

    if (peek(d) != (list ? '[' : '{'))
        return want(f, list ? "array" : "object", peek(d), err);
    if ((rc = keep(d, f->key, f->key, strlen(f->key), false, &it, err)) !=
        KILN_OK)
        return rc;
    cJSON_Delete(d->cb[i]);
    d->cb[i] = it;
    return KILN_OK;
}

/* A second Headers object is merged into the first, as Go decodes into
 * an existing map; duplicates go at the end, in one pass. */
static kiln_err take_headers(decoder *d, const kiln__field *f, kiln_error *err)
{
    cJSON *it, *c;
    kiln_err rc;

    if (peek(d) != '{')
        return want(f, "object", peek(d), err);
    if ((rc = keep(d, f->key, NULL, 0, false, &it, err)) != KILN_OK)
        return rc;
    if (d->sig->headers == NULL) {
        d->sig->headers = it;
        return KILN_OK;
    }
    while ((c = it->child) != NULL)
        cJSON_AddItemToArray(d->sig->headers,
                             cJSON_DetachItemViaPointer(it, c));
    cJSON_Delete(it);
    return KILN_OK;
}

static kiln_err keep_unknown(decoder *d, const kiln__key *k, kiln_error *err)
{
    cJSON *it;
    kiln_err rc;

    if ((rc = keep(d, k->text[0] != '\0' ? k->text : "a long key", k->raw,
                   k->raw_len, k->esc, &it, err)) != KILN_OK)
        return rc;
    if (d->unknown == NULL && (d->unknown = cJSON_CreateObject()) == NULL) {
        cJSON_Delete(it);
        return kiln__fail(err, KILN_ENOMEM, "keeping unknown keys");
    }
    cJSON_AddItemToArray(d->unknown, it);
    return KILN_OK;
}

/* ---- one member --------------------------------------------------------- */

/* null: Go clears pointers, slices and maps and leaves the rest. */
static void clear_field(decoder *d, const kiln__field *f)
{
    switch (f->kind) {
    case KILN__F_TIME:
        *(bool *)slot(d->sig, f->off) = false;
        break;
    case KILN__F_ARGS:
        kiln__values_clear(&d->sig->args);
        break;
    case KILN__F_HEADERS:
        cJSON_Delete(d->sig->headers);
        d->sig->headers = NULL;
        break;
    case KILN__F_EXTRA:
        cJSON_Delete(d->cb[cb_index(f)]);
        d->cb[cb_index(f)] = NULL;
        break;
    case KILN__F_RAW:
        kiln__free(d->sig->raw_args);
        d->sig->raw_args = NULL;
        d->sig->raw_args_len = 0;
        break;
    default:
        break;
    }
}

static kiln_err decode_member(decoder *d, const kiln__key *k, kiln_error *err)
{
    int i = k->text[0] != '\0' ? kiln__field_find(k->text) : -1;
    const kiln__field *f;

    if (i < 0)
        return keep_unknown(d, k, err);
    f = &kiln__fields[i];
    /* The first key only one dialect defines tells which: Go writes the
     * struct's own fields first, and kiln writes the other dialect's
     * fields it carries after its own, so a machinery body that carries
     * TaskTimeOut and CreatedAt at its end stays machinery. */
    if (!d->decided && (f->paota_only || f->machinery_only)) {
        d->paota = f->paota_only;
        d->decided = true;
    }
    if (peek(d) == 'n') {
        if (!kiln__rd_literal(&d->rd, "null"))
            return syntax(d, err);
        clear_field(d, f);
        return KILN_OK;
    }
    switch (f->kind) {
    case KILN__F_STRING:
        return set_text(d, f, err);
    case KILN__F_INT:
    case KILN__F_PRIORITY:
        return set_number(d, f, err);
    case KILN__F_BOOL:
        return set_bool(d, f, err);
    case KILN__F_TIME:
        return set_time(d, f, err);
    case KILN__F_ARGS:
        if (peek(d) != '[')
            return want(f, "array", peek(d), err);
        return kiln__decode_args(d->sig, &d->rd, err);
    case KILN__F_HEADERS:
        return take_headers(d, f, err);
    case KILN__F_EXTRA:
        return take_callback(d, f, err);
    default:
        return set_raw(d, err);
    }
}

/* ---- the whole body ----------------------------------------------------- */

static kiln_err decode_body(decoder *d, kiln_error *err)
{
    kiln__reader *r = &d->rd;
    kiln__key k;
    kiln_err rc;
    unsigned char c = '}';

    kiln__rd_ws(r);
    if (r->pos >= r->n)
        return syntax(d, err);
    if (peek(d) != '{')
        return kiln__fail(err, KILN_ECODEC, "body: want object, got %s",
                          kiln__json_kind_at(peek(d)));
    r->pos++;
    kiln__rd_ws(r);
    if (r->pos < r->n && peek(d) == '}')
        r->pos++;
    else
        c = ',';
    while (c == ',') {
        kiln__rd_ws(r);
        if (!kiln__rd_key(r, &k))
            return syntax(d, err);
        if ((rc = decode_member(d, &k, err)) != KILN_OK)
            return rc;
        kiln__rd_ws(r);
        if (r->pos >= r->n || (peek(d) != ',' && peek(d) != '}'))
            return syntax(d, err);
        c = r->s[r->pos++];
    }
    kiln__rd_ws(r);
    if (r->pos != r->n)
        return syntax(d, err);
    return KILN_OK;
}

/* Moves what was kept into sig->extra: unknown keys in arrival order
 * (of duplicates the last), then the callbacks. */
static kiln_err finish_extra(decoder *d, kiln_error *err)
{
    kiln_err rc;

    for (int i = 0; i < CB_N; i++) {
        if (d->cb[i] == NULL)
            continue;
        if (d->unknown == NULL && (d->unknown = cJSON_CreateObject()) == NULL)
            return kiln__fail(err, KILN_ENOMEM, "keeping callbacks");
        cJSON_AddItemToArray(d->unknown, d->cb[i]);
        d->cb[i] = NULL;
    }
    if (d->unknown != NULL &&
        (rc = kiln__json_dedupe(d->unknown, false, err)) != KILN_OK)
        return rc;
    d->sig->extra = d->unknown;
    d->unknown = NULL;
    if (d->sig->headers != NULL)
        return kiln__json_dedupe(d->sig->headers, true, err);
    return KILN_OK;
}

static kiln_err check_required(const decoder *d, kiln_error *err)
{
    if (!d->have_name)
        return kiln__fail(err, KILN_ECODEC, "Name: missing");
    if (d->sig->name[0] == '\0')
        return kiln__fail(err, KILN_ECODEC, "Name: empty");
    if (!d->have_uuid)
        return kiln__fail(err, KILN_ECODEC, "UUID: missing");
    if (d->sig->uuid[0] == '\0')
        return kiln__fail(err, KILN_ECODEC, "UUID: empty");
    return KILN_OK;
}

static kiln_err check_size(const char *json, size_t len, size_t max_len,
                           kiln_error *err)
{
    size_t limit = max_len == 0 ? KILN__DEFAULT_MAX_BODY : max_len, bad;

    if (len > limit)
        return kiln__fail(err, KILN_ETOOBIG,
                          "body: %zu bytes, more than the limit of %zu", len,
                          limit);
    if (len == 0)
        return kiln__fail(err, KILN_ECODEC, "body: empty");
    if ((bad = kiln__utf8_error_at(json, len)) < len)
        return kiln__fail(err, KILN_ECODEC, "body: invalid UTF-8 at byte %zu",
                          bad);
    return KILN_OK;
}

static kiln_err decode(decoder *d, kiln_error *err)
{
    kiln_err rc;

    if ((d->sig = kiln__calloc(1, sizeof(*d->sig))) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "allocating a signature");
    if ((rc = decode_body(d, err)) == KILN_OK &&
        (rc = finish_extra(d, err)) == KILN_OK &&
        (rc = check_required(d, err)) == KILN_OK)
        kiln__signature_fill(d->sig);
    d->sig->dialect = d->paota ? KILN_DIALECT_PAOTA : KILN_DIALECT_MACHINERY;
    for (int i = 0; i < CB_N; i++)
        cJSON_Delete(d->cb[i]);
    cJSON_Delete(d->unknown);
    return rc;
}

kiln_err kiln_signature_from_json(const char *json, size_t len, size_t max_len,
                                  kiln_signature **out, kiln_error *err)
{
    decoder d;
    kiln_error scan;
    kiln_err rc;

    if ((json == NULL && len > 0) || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "body and out are required");
    if ((rc = check_size(json, len, max_len, err)) != KILN_OK)
        return rc;
    memset(&d, 0, sizeof(d));
    d.rd = (kiln__reader){(const unsigned char *)json, len, 0, NULL};
    d.budget = len <= (SIZE_MAX - MIB) / 8 ? 8 * len + MIB : SIZE_MAX;
    rc = decode(&d, err);
    /* A fault in the text outranks one in a value, wherever it is. */
    if (rc != KILN_OK && rc != KILN_ENOMEM &&
        kiln__json_validate(json, len, "body", &scan) != KILN_OK) {
        rc = scan.code;
        if (err != NULL)
            *err = scan;
    }
    if (rc != KILN_OK) {
        kiln_signature_free(d.sig);
        return rc;
    }
    *out = d.sig;
    return KILN_OK;
}

/* ---- a body that did not decode ----------------------------------------- */

/* One top-level member for kiln__json_salvage_ids: copies a string UUID
 * or Name not seen yet, passes over anything else. */
static bool salvage_member(kiln__reader *r, const kiln__key *k, char *uuid,
                           char *name, size_t n)
{
    const char *raw = (const char *)r->s + r->pos + 1;
    char *dst = strcmp(k->text, "UUID") == 0   ? uuid
                : strcmp(k->text, "Name") == 0 ? name
                                               : NULL;
    size_t len;
    bool esc;

    if (dst == NULL || dst[0] != '\0' || r->s[r->pos] != '"')
        return kiln__rd_skip(r, 1, NULL);
    if (!kiln__rd_string(r, &len, &esc))
        return false;
    (void)kiln__json_unescape(raw, len, esc, dst, n);
    return true;
}

void kiln__json_salvage_ids(const char *body, size_t len, char *uuid,
                            char *name, size_t n)
{
    kiln__reader r = {(const unsigned char *)body, len, 0, NULL};
    unsigned char c = ',';
    kiln__key k;

    uuid[0] = name[0] = '\0';
    if (n == 0 || kiln__utf8_error_at(body, len) < len)
        return;
    kiln__rd_ws(&r);
    if (r.pos >= len || r.s[r.pos++] != '{')
        return;
    kiln__rd_ws(&r);
    if (r.pos < len && r.s[r.pos] == '}')
        c = r.s[r.pos++];
    while (c == ',') {
        kiln__rd_ws(&r);
        if (!kiln__rd_key(&r, &k) || !salvage_member(&r, &k, uuid, name, n))
            break;
        kiln__rd_ws(&r);
        c = r.pos < len ? r.s[r.pos++] : '\0';
    }
    kiln__rd_ws(&r);
    if (c != '}' || r.pos != len)
        uuid[0] = name[0] = '\0';
}
