/* paota's header mode. When a paota Signature carries RawArgs, paota's
 * AMQP broker (Publish, prepareMessageBodyAndHeaders) sends RawArgs alone
 * as the body and the rest as AMQP headers (buildHeadersFromSignature);
 * its registrar (SignatureFromAmqpHeadersAndBody) rebuilds the signature
 * when a delivery has a task_name header. Without RawArgs (or with the
 * text "null") paota sends the whole Signature as JSON and no headers;
 * kiln_signature_to_raw does the same.
 *
 * The header names, their Go types in paota and the AMQP types they
 * travel as (amqp091-go writes a Go int as 'I'; paota's registrar reads
 * ints through utils.GetInt, which takes int32, int64 or float64):
 *   uuid, task_name              string   S
 *   retry_count, retry_timeout,
 *   timeout (TaskTimeOut), wait_time, retries_done   int   I
 *   ignore_if_unregistered       bool     t
 *   created_at, eta              int64    l   Unix seconds, only when set
 *                                (read saturated to 64-bit nanoseconds)
 * and, read by the registrar though its broker never writes them,
 *   routing_key (string, S) and priority (uint8). paota reads priority
 * through utils.GetUInt8, which takes a Go int or a float64, and no AMQP
 * type decodes to a Go int, so kiln writes it as a double (d).
 * kiln writes those two as well when they are set. Times travel in whole
 * seconds, so a round trip through headers drops the fraction.
 * kiln_signature_to_raw gives the same headers as strings (its public
 * shape); kiln__signature_to_raw_fields gives them typed, for the wire. */
#include "task/codec.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define NS_PER_S 1000000000LL

/* ---- encode ------------------------------------------------------------- */

typedef struct hdr {
    const char *key;
    kiln__htype type; /* how it travels */
    int64_t num;      /* the number of an integer, bool or double */
    char value[24];
    const char *text; /* value, or a string of the signature */
} hdr;

static int64_t unix_seconds(int64_t ns)
{
    int64_t s = ns / NS_PER_S;

    return (ns % NS_PER_S < 0) ? s - 1 : s; /* Go's Time.Unix floors */
}

static void add_int(hdr *h, size_t *n, const char *key, kiln__htype type,
                    int64_t v)
{
    h[*n].key = key;
    h[*n].type = type;
    h[*n].num = v;
    (void)snprintf(h[*n].value, sizeof(h[*n].value), "%" PRId64, v);
    h[*n].text = h[*n].value;
    (*n)++;
}

static void add_text(hdr *h, size_t *n, const char *key, const char *v)
{
    h[*n].key = key;
    h[*n].type = KILN__HV_UTF8;
    h[*n].text = v != NULL ? v : "";
    (*n)++;
}

static void add_bool(hdr *h, size_t *n, const char *key, bool v)
{
    h[*n].key = key;
    h[*n].type = KILN__HV_BOOL;
    h[*n].num = v;
    h[*n].text = v ? "true" : "false";
    (*n)++;
}

static size_t collect(const kiln_signature *sig, hdr *h)
{
    size_t n = 0;

    add_text(h, &n, "uuid", sig->uuid);
    add_text(h, &n, "task_name", sig->name);
    add_int(h, &n, "retry_count", KILN__HV_I32, sig->retry_count);
    add_int(h, &n, "retry_timeout", KILN__HV_I32, sig->retry_timeout);
    add_int(h, &n, "timeout", KILN__HV_I32, sig->task_timeout);
    add_int(h, &n, "wait_time", KILN__HV_I32, sig->wait_time);
    add_int(h, &n, "retries_done", KILN__HV_I32, sig->retries_done);
    add_bool(h, &n, "ignore_if_unregistered", sig->ignore_unregistered);
    if (sig->has_created_at)
        add_int(h, &n, "created_at", KILN__HV_I64,
                unix_seconds(sig->created_at.unix_ns));
    if (sig->has_eta)
        add_int(h, &n, "eta", KILN__HV_I64, unix_seconds(sig->eta.unix_ns));
    if (sig->routing_key != NULL && sig->routing_key[0] != '\0')
        add_text(h, &n, "routing_key", sig->routing_key);
    if (sig->priority != 0)
        add_int(h, &n, "priority", KILN__HV_F64, sig->priority);
    return n;
}

/* One allocation: the array, then each key and value. */
static kiln_header *pack(const hdr *h, size_t n)
{
    size_t size = n * sizeof(kiln_header), kl, vl;
    kiln_header *out;
    char *p;

    for (size_t i = 0; i < n; i++)
        size += strlen(h[i].key) + strlen(h[i].text) + 2;
    if ((out = kiln__malloc(size)) == NULL)
        return NULL;
    p = (char *)(out + n);
    for (size_t i = 0; i < n; i++) {
        kl = strlen(h[i].key) + 1;
        vl = strlen(h[i].text) + 1;
        memcpy(p, h[i].key, kl);
        out[i].key = p;
        p += kl;
        memcpy(p, h[i].text, vl);
        out[i].value = p;
        p += vl;
    }
    return out;
}

/* The same headers typed, in one allocation: the array, then each key
 * and string value. */
static kiln__hdr *pack_fields(const hdr *h, size_t n)
{
    kiln__bump b = {NULL, 0};
    kiln__hdr *out = NULL;

    for (int pass = 0; pass < 2; pass++) {
        out = kiln__bump_take(&b, n * sizeof(*out), _Alignof(kiln__hdr));
        for (size_t i = 0; i < n; i++) {
            size_t kl = strlen(h[i].key) + 1, tl = strlen(h[i].text);
            char *k = kiln__bump_take(&b, kl, 1);
            char *t = h[i].type == KILN__HV_UTF8
                          ? kiln__bump_take(&b, tl + 1, 1)
                          : NULL;
            if (out == NULL)
                continue;
            memcpy(k, h[i].key, kl);
            out[i] = kiln__hdr_int(k, h[i].type, h[i].num);
            if (h[i].type == KILN__HV_BOOL)
                out[i].value.v.b = h[i].num != 0;
            else if (h[i].type == KILN__HV_F64)
                out[i].value.v.f64 = (double)h[i].num;
            else if (t != NULL)
                out[i] = kiln__hdr_text(k, memcpy(t, h[i].text, tl + 1));
        }
        if (pass == 0 && (b.p = kiln__malloc(b.len)) == NULL)
            return NULL;
        b.len = 0;
    }
    return out;
}

static bool has_raw_body(const kiln_signature *sig)
{
    return sig->raw_args != NULL && sig->raw_args_len > 0 &&
           !(sig->raw_args_len == 4 && memcmp(sig->raw_args, "null", 4) == 0);
}

/* The body of a header-mode message and its headers (h[12]); *count 0
 * and a JSON body without a raw body. */
static kiln_err raw_parts(const kiln_signature *sig, char **body,
                          size_t *body_len, hdr *h, size_t *count,
                          kiln_error *err)
{
    *count = 0;
    if (!has_raw_body(sig))
        return kiln_signature_to_json(sig, KILN_DIALECT_PAOTA, body, body_len,
                                      err);
    if (sig->name == NULL || sig->name[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "task_name: empty");
    /* The body is the raw body alone (as paota sends it), and no reader
     * of header mode looks for Args: typed arguments would be lost. */
    if (sig->args.n > 0)
        return kiln__fail(err, KILN_EINVAL,
                          "header mode carries the raw body alone, and this "
                          "signature also has %zu typed argument(s) that "
                          "would be lost: send it with KILN_DIALECT=paota "
                          "(RawArgs and Args both travel in the JSON), or "
                          "put the arguments in the raw body",
                          sig->args.n);
    *count = collect(sig, h);
    if ((*body = kiln__strndup(sig->raw_args, sig->raw_args_len)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "copying a raw body");
    if (body_len != NULL)
        *body_len = sig->raw_args_len;
    return KILN_OK;
}

/* Both forms of header mode: the headers as strings, or typed. */
static kiln_err to_raw(const kiln_signature *sig, char **body, size_t *body_len,
                       void **headers, size_t *n, bool typed, kiln_error *err)
{
    hdr h[12];
    size_t count;
    kiln_err rc;

    *headers = NULL;
    *n = 0;
    if ((rc = raw_parts(sig, body, body_len, h, &count, err)) != KILN_OK)
        return rc;
    if (count > 0 && (*headers = typed ? (void *)pack_fields(h, count)
                                       : (void *)pack(h, count)) == NULL) {
        kiln__free(*body);
        *body = NULL;
        return kiln__fail(err, KILN_ENOMEM, "building %zu headers", count);
    }
    *n = count;
    return KILN_OK;
}

kiln_err kiln_signature_to_raw(const kiln_signature *sig, char **body,
                               size_t *body_len, kiln_header **headers,
                               size_t *n, kiln_error *err)
{
    void *out = NULL;
    kiln_err rc;

    if (sig == NULL || body == NULL || headers == NULL || n == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "signature, body, headers and n are required");
    rc = to_raw(sig, body, body_len, &out, n, false, err);
    *headers = out;
    return rc;
}

kiln_err kiln__signature_to_raw_fields(const kiln_signature *sig, char **body,
                                       size_t *body_len, kiln__hdr **fields,
                                       size_t *n, kiln_error *err)
{
    void *out = NULL;
    kiln_err rc;

    if (sig == NULL || body == NULL || fields == NULL || n == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "signature, body, fields and n are required");
    rc = to_raw(sig, body, body_len, &out, n, true, err);
    *fields = out;
    return rc;
}

/* ---- decode ------------------------------------------------------------- */

/* The value of the last header called `key`, or NULL. */
static const char *find(const kiln_header *h, size_t n, const char *key)
{
    const char *v = NULL;

    for (size_t i = 0; i < n; i++)
        if (h[i].key != NULL && strcmp(h[i].key, key) == 0)
            v = h[i].value != NULL ? h[i].value : "";
    return v;
}

static kiln_err bad(const char *key, const char *want, const char *v,
                    kiln_error *err)
{
    return kiln__fail(err, KILN_ECODEC, "headers: %s: want %s, got \"%.40s\"",
                      key, want, v);
}

static kiln_err get_int(const kiln_header *h, size_t n, const char *key,
                        int *out, kiln_error *err)
{
    const char *v = find(h, n, key);
    int64_t x;

    if (v == NULL)
        return KILN_OK;
    if (kiln__parse_int(v, &x) != KILN_OK || x < INT32_MIN || x > INT32_MAX)
        return bad(key, "int", v, err);
    *out = (int)x;
    return KILN_OK;
}

static kiln_err get_time(const kiln_header *h, size_t n, const char *key,
                         bool *has, kiln__time *t, kiln_error *err)
{
    const char *v = find(h, n, key);
    int64_t s;

    if (v == NULL)
        return KILN_OK;
    if (kiln__parse_int(v, &s) != KILN_OK)
        return bad(key, "Unix seconds", v, err);
    /* Any int64 is a time to paota; past what 64-bit nanoseconds hold it
     * is at least as far off as their ends, which is all kiln needs: such
     * an ETA is due now or too far for the delay queues. */
    t->unix_ns = kiln__sat_mul(s, NS_PER_S);
    t->offset_s = 0;
    *has = true;
    return KILN_OK;
}

static kiln_err get_text(const kiln_header *h, size_t n, const char *key,
                         char **slot, kiln_error *err)
{
    const char *v = find(h, n, key);

    if (v == NULL)
        return KILN_OK;
    if (!kiln__utf8_valid(v, strlen(v)))
        return kiln__fail(err, KILN_ECODEC, "headers: %s: invalid UTF-8", key);
    return kiln__set_string(slot, v, err);
}

static kiln_err get_flags(kiln_signature *sig, const kiln_header *h, size_t n,
                          kiln_error *err)
{
    const char *v = find(h, n, "ignore_if_unregistered");
    uint64_t p;

    if (v != NULL) {
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
            sig->ignore_unregistered = true;
        else if (strcmp(v, "false") != 0 && strcmp(v, "0") != 0)
            return bad("ignore_if_unregistered", "bool", v, err);
    }
    if ((v = find(h, n, "priority")) != NULL) {
        if (kiln__parse_uint(v, &p) != KILN_OK || p > 255)
            return bad("priority", "uint8", v, err);
        sig->priority = (unsigned)p;
    }
    return KILN_OK;
}

/* Every header paota reads. A missing uuid gets a fresh one, as paota's
 * SendTask does for an empty UUID. */
static kiln_err read_headers(kiln_signature *sig, const kiln_header *h,
                             size_t n, kiln_error *err)
{
    char uuid[KILN_UUID_LEN];
    kiln_err rc;

    if ((rc = get_text(h, n, "task_name", &sig->name, err)) != KILN_OK ||
        (rc = get_text(h, n, "uuid", &sig->uuid, err)) != KILN_OK ||
        (rc = get_text(h, n, "routing_key", &sig->routing_key, err)) ||
        (rc = get_int(h, n, "retry_count", &sig->retry_count, err)) ||
        (rc = get_int(h, n, "retry_timeout", &sig->retry_timeout, err)) ||
        (rc = get_int(h, n, "timeout", &sig->task_timeout, err)) ||
        (rc = get_int(h, n, "wait_time", &sig->wait_time, err)) ||
        (rc = get_int(h, n, "retries_done", &sig->retries_done, err)) ||
        (rc = get_flags(sig, h, n, err)) ||
        (rc = get_time(h, n, "created_at", &sig->has_created_at,
                       &sig->created_at, err)) ||
        (rc = get_time(h, n, "eta", &sig->has_eta, &sig->eta, err)))
        return rc;
    if (sig->name[0] == '\0')
        return kiln__fail(err, KILN_ECODEC, "headers: task_name: %s",
                          find(h, n, "task_name") ? "empty" : "missing");
    if (sig->uuid[0] != '\0')
        return KILN_OK;
    if ((rc = kiln_uuid_new(uuid, sizeof(uuid), err)) != KILN_OK)
        return rc;
    return kiln__set_string(&sig->uuid, uuid, err);
}

static kiln_err check_body(const char *body, size_t len, size_t max_len,
                           kiln_error *err)
{
    size_t limit = max_len == 0 ? KILN__DEFAULT_MAX_BODY : max_len, bad_at;

    if (len > limit)
        return kiln__fail(err, KILN_ETOOBIG,
                          "body: %zu bytes, more than the limit of %zu", len,
                          limit);
    if (len == 0) /* paota rejects empty deliveries too */
        return kiln__fail(err, KILN_ECODEC, "body: empty");
    if ((bad_at = kiln__utf8_error_at(body, len)) < len)
        return kiln__fail(err, KILN_ECODEC, "body: invalid UTF-8 at byte %zu",
                          bad_at);
    return kiln__json_validate(body, len, "body", err);
}

kiln_err kiln_signature_from_raw(const char *body, size_t len,
                                 const kiln_header *headers, size_t n,
                                 size_t max_len, kiln_signature **out,
                                 kiln_error *err)
{
    kiln_signature *sig;
    kiln_err rc;

    if ((body == NULL && len > 0) || (headers == NULL && n > 0) || out == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "body, headers and out are required");
    if ((rc = check_body(body, len, max_len, err)) != KILN_OK)
        return rc;
    if ((sig = kiln__signature_alloc(err)) == NULL)
        return KILN_ENOMEM;
    rc = read_headers(sig, headers, n, err);
    if (rc == KILN_OK && (sig->raw_args = kiln__strndup(body, len)) == NULL)
        rc = kiln__fail(err, KILN_ENOMEM, "copying a body of %zu bytes", len);
    if (rc != KILN_OK) {
        kiln_signature_free(sig);
        return rc;
    }
    sig->raw_args_len = len;
    sig->dialect = KILN_DIALECT_PAOTA_HEADERS;
    *out = sig;
    return KILN_OK;
}
