/* Decoding a signature from the JSON of either dialect.
 *
 * Keys are matched as Go's encoding/json matches them (exact, else
 * case-insensitive) and handled in document order, so of duplicate keys
 * the last wins, as in Go. null leaves a field as it is, except for the
 * ones Go holds as pointers, slices or maps (ETA, CreatedAt, Args,
 * Headers, RawArgs, callbacks), which it clears. Go's errors for a value
 * of the wrong kind are kept: a string for an int, 1.5 for an int, 256
 * for the uint8 Priority. The callbacks and every unknown key are kept
 * verbatim in sig->extra (Go drops unknown keys; kiln sends them on). */
#include "task/codec.h"

#include <stddef.h>
#include <string.h>

typedef struct decoder {
    kiln_signature *sig;
    const char *text;
    bool paota;   /* the first dialect's own key was paota's */
    bool decided; /* a key only one dialect defines was seen */
    bool have_name;
    bool have_uuid;
} decoder;

static void *slot(kiln_signature *sig, size_t off)
{
    return (char *)sig + off;
}

static kiln_err want(const kiln__field *f, const char *type, const cJSON *it,
                     const char *why, kiln_error *err)
{
    if (why != NULL)
        return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %.40s (%s)",
                          f->key, type, it->valuestring, why);
    return kiln__fail(err, KILN_ECODEC, "%s: want %s, got %s", f->key, type,
                      kiln__json_kind(it));
}

static kiln_err set_text(decoder *d, const kiln__field *f, const cJSON *it,
                         kiln_error *err)
{
    if (!cJSON_IsString(it))
        return want(f, "string", it, NULL, err);
    if (f->off == offsetof(struct kiln_signature, name))
        d->have_name = true;
    if (f->off == offsetof(struct kiln_signature, uuid))
        d->have_uuid = true;
    return kiln__set_string(slot(d->sig, f->off), it->valuestring, err);
}

/* Go's int is 64 bits; kiln's counters are C ints, so a value past
 * INT_MAX is refused rather than cut. */
static kiln_err set_int(decoder *d, const kiln__field *f, const cJSON *it,
                        kiln_error *err)
{
    int64_t v;
    kiln_err rc;

    if (!cJSON_IsRaw(it))
        return want(f, "int", it, NULL, err);
    if ((rc = kiln__parse_int(it->valuestring, &v)) == KILN_ETYPE)
        return want(f, "int", it, "not an integer", err);
    if (rc != KILN_OK || v < INT32_MIN || v > INT32_MAX)
        return want(f, "int", it, "out of range", err);
    *(int *)slot(d->sig, f->off) = (int)v;
    return KILN_OK;
}

static kiln_err set_priority(decoder *d, const kiln__field *f, const cJSON *it,
                             kiln_error *err)
{
    uint64_t v;
    kiln_err rc;

    if (!cJSON_IsRaw(it))
        return want(f, "uint8", it, NULL, err);
    rc = kiln__parse_uint(it->valuestring, &v);
    if (rc == KILN_OK && v > 255)
        rc = KILN_ERANGE;
    if (rc != KILN_OK)
        return want(f, "uint8", it,
                    rc == KILN_ETYPE    ? "not an integer"
                    : rc == KILN_EINVAL ? "negative"
                                        : "out of range",
                    err);
    *(unsigned *)slot(d->sig, f->off) = (unsigned)v;
    return KILN_OK;
}

static kiln_err set_time(decoder *d, const kiln__field *f, const cJSON *it,
                         kiln_error *err)
{
    kiln__time t;
    kiln_err rc;

    if (!cJSON_IsString(it))
        return want(f, "RFC 3339 time", it, NULL, err);
    if ((rc = kiln__time_parse(it->valuestring, &t, err)) != KILN_OK) {
        kiln__prefix(err, "%s", f->key);
        return rc;
    }
    *(bool *)slot(d->sig, f->off) = true;
    *(kiln__time *)slot(d->sig, f->off2) = t;
    return KILN_OK;
}

/* Go's json.RawMessage keeps the text; Go writes it back compacted, so
 * it is stored compacted (the bytes of the member's value). */
static kiln_err set_raw(decoder *d, const kiln__span *sp, kiln_error *err)
{
    kiln__buf b = {0};
    kiln_err rc;
    char *text;
    size_t n;

    kiln__json_compact(&b, d->text + sp->off, sp->len);
    if ((rc = kiln__buf_finish(&b, &text, &n, err)) != KILN_OK)
        return rc;
    kiln__free(d->sig->raw_args);
    d->sig->raw_args = text;
    d->sig->raw_args_len = n;
    return KILN_OK;
}

/* ---- members that hand over their cJSON subtree ------------------------ */

enum { CB_SUCCESS, CB_ERROR, CB_CHORD, CB_N };

static const char *const cb_keys[CB_N] = {"OnSuccess", "OnError",
                                          "ChordCallback"};

typedef struct kept {
    cJSON *cb[CB_N]; /* callbacks, by the field's own key */
    cJSON *unknown;  /* unknown members, in order, duplicates included */
} kept;

/* Gives `it` the key `key`, so a callback sent as "onsuccess" is kept
 * (and written back) under Go's field name. */
static kiln_err rename_item(cJSON *it, const char *key, kiln_error *err)
{
    size_t n = strlen(key) + 1;
    char *k;

    if (it->string != NULL && strcmp(it->string, key) == 0)
        return KILN_OK;
    if ((k = cJSON_malloc(n)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "copying key %s", key);
    memcpy(k, key, n);
    if (!(it->type & cJSON_StringIsConst))
        cJSON_free(it->string);
    it->type &= ~cJSON_StringIsConst;
    it->string = k;
    return KILN_OK;
}

static int cb_index(const kiln__field *f)
{
    for (int i = 0; i < CB_N; i++)
        if (strcmp(f->key, cb_keys[i]) == 0)
            return i;
    return 0;
}

/* Go decodes OnSuccess and OnError as []*Signature, ChordCallback as a
 * *Signature; kiln checks that much and keeps the rest as it came. */
static kiln_err take_callback(kept *k, const kiln__field *f, cJSON *it,
                              kiln_error *err)
{
    int i = cb_index(f);
    bool list = i != CB_CHORD;
    kiln_err rc;

    if (list ? !cJSON_IsArray(it) : !cJSON_IsObject(it)) {
        rc = want(f, list ? "array" : "object", it, NULL, err);
        cJSON_Delete(it);
        return rc;
    }
    if ((rc = rename_item(it, f->key, err)) != KILN_OK) {
        cJSON_Delete(it);
        return rc;
    }
    cJSON_Delete(k->cb[i]);
    k->cb[i] = it;
    return KILN_OK;
}

/* A second Headers object is merged into the first, as Go decodes into
 * an existing map; duplicates go at the end, in one pass. */
static kiln_err take_headers(decoder *d, const kiln__field *f, cJSON *it,
                             kiln_error *err)
{
    cJSON *c;

    if (!cJSON_IsObject(it)) {
        kiln_err rc = want(f, "object", it, NULL, err);
        cJSON_Delete(it);
        return rc;
    }
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

static kiln_err keep_unknown(kept *k, cJSON *it, kiln_error *err)
{
    if (k->unknown == NULL && (k->unknown = cJSON_CreateObject()) == NULL) {
        cJSON_Delete(it);
        return kiln__fail(err, KILN_ENOMEM, "keeping unknown keys");
    }
    cJSON_AddItemToArray(k->unknown, it);
    return KILN_OK;
}

/* ---- one member --------------------------------------------------------- */

/* null: Go clears pointers, slices and maps and leaves the rest. */
static void clear_field(decoder *d, kept *k, const kiln__field *f)
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
        cJSON_Delete(k->cb[cb_index(f)]);
        k->cb[cb_index(f)] = NULL;
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

static kiln_err set_scalar(decoder *d, const kiln__field *f, const cJSON *it,
                           kiln_error *err)
{
    switch (f->kind) {
    case KILN__F_STRING:
        return set_text(d, f, it, err);
    case KILN__F_INT:
        return set_int(d, f, it, err);
    case KILN__F_PRIORITY:
        return set_priority(d, f, it, err);
    case KILN__F_BOOL:
        if (!cJSON_IsBool(it))
            return want(f, "bool", it, NULL, err);
        *(bool *)slot(d->sig, f->off) = cJSON_IsTrue(it);
        return KILN_OK;
    case KILN__F_TIME:
        return set_time(d, f, it, err);
    case KILN__F_ARGS:
        if (!cJSON_IsArray(it))
            return want(f, "array", it, NULL, err);
        return kiln__decode_args(d->sig, it, err);
    default:
        return KILN_OK;
    }
}

static kiln_err decode_member(decoder *d, kept *k, cJSON *root, cJSON *it,
                              const kiln__span *sp, kiln_error *err)
{
    int i = kiln__field_find(it->string != NULL ? it->string : "");
    const kiln__field *f;

    if (i < 0)
        return keep_unknown(k, cJSON_DetachItemViaPointer(root, it), err);
    f = &kiln__fields[i];
    /* The first key only one dialect defines tells which: Go writes the
     * struct's own fields first, and kiln writes the other dialect's
     * fields it carries after its own, so a machinery body that carries
     * TaskTimeOut and CreatedAt at its end stays machinery. */
    if (!d->decided && (f->paota_only || f->machinery_only)) {
        d->paota = f->paota_only;
        d->decided = true;
    }
    if (cJSON_IsNull(it)) {
        clear_field(d, k, f);
        return KILN_OK;
    }
    if (f->kind == KILN__F_HEADERS)
        return take_headers(d, f, cJSON_DetachItemViaPointer(root, it), err);
    if (f->kind == KILN__F_EXTRA)
        return take_callback(k, f, cJSON_DetachItemViaPointer(root, it), err);
    if (f->kind == KILN__F_RAW)
        return set_raw(d, sp, err);
    return set_scalar(d, f, it, err);
}

/* ---- the whole body ----------------------------------------------------- */

/* Moves what was kept into sig->extra: unknown keys in arrival order
 * (of duplicates the last), then the callbacks. */
static kiln_err finish_extra(decoder *d, kept *k, kiln_error *err)
{
    kiln_err rc;

    for (int i = 0; i < CB_N; i++) {
        if (k->cb[i] == NULL)
            continue;
        if (k->unknown == NULL && (k->unknown = cJSON_CreateObject()) == NULL)
            return kiln__fail(err, KILN_ENOMEM, "keeping callbacks");
        cJSON_AddItemToArray(k->unknown, k->cb[i]);
        k->cb[i] = NULL;
    }
    if (k->unknown != NULL &&
        (rc = kiln__json_dedupe(k->unknown, false, err)) != KILN_OK)
        return rc;
    d->sig->extra = k->unknown;
    k->unknown = NULL;
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

static kiln_err decode_root(decoder *d, cJSON *root, const kiln__spans *sp,
                            kiln_error *err)
{
    kept k = {{NULL}, NULL};
    cJSON *it = root->child, *next;
    size_t i = 0;
    kiln_err rc = KILN_OK;

    for (; it != NULL && rc == KILN_OK; it = next, i++) {
        next = it->next;
        if (i >= sp->n)
            rc = kiln__fail(err, KILN_ECODEC, "body: members out of step");
        else
            rc = decode_member(d, &k, root, it, &sp->v[i], err);
    }
    if (rc == KILN_OK)
        rc = finish_extra(d, &k, err);
    for (int j = 0; j < CB_N; j++)
        cJSON_Delete(k.cb[j]);
    cJSON_Delete(k.unknown);
    if (rc == KILN_OK)
        rc = check_required(d, err);
    d->sig->dialect = d->paota ? KILN_DIALECT_PAOTA : KILN_DIALECT_MACHINERY;
    return rc;
}

kiln_err kiln_signature_from_json(const char *json, size_t len, size_t max_len,
                                  kiln_signature **out, kiln_error *err)
{
    kiln__spans members = {0};
    decoder d = {0};
    cJSON *root = NULL;
    kiln_err rc;

    if ((json == NULL && len > 0) || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "body and out are required");
    rc = kiln__json_parse(json != NULL ? json : "", len, max_len, "body",
                          &members, &root, err);
    if (rc == KILN_OK && !cJSON_IsObject(root))
        rc = kiln__fail(err, KILN_ECODEC, "body: want object, got %s",
                        kiln__json_kind(root));
    if (rc == KILN_OK && (d.sig = kiln__signature_alloc(err)) == NULL)
        rc = KILN_ENOMEM;
    d.text = json;
    if (rc == KILN_OK)
        rc = decode_root(&d, root, &members, err);
    cJSON_Delete(root);
    kiln__spans_free(&members);
    if (rc != KILN_OK) {
        kiln_signature_free(d.sig);
        return rc;
    }
    *out = d.sig;
    return KILN_OK;
}
