/* Encoding a signature as the JSON Go's encoding/json writes for
 * machinery's or paota's Signature.
 *
 * Go writes struct fields in declaration order, every field (the structs
 * have no json tags, so no omitempty), nil pointers, slices and maps as
 * null. The orders below are copied from machinery v2 tasks/signature.go
 * and paota schema/task.go. Keys kiln keeps that the chosen dialect does
 * not define follow at the end: first the other dialect's fields that
 * are set (a Go peer ignores them; a kiln peer reads them back), then
 * unknown keys from a decoded message, in arrival order. */
#include "task/codec.h"

#include <stddef.h>
#include <string.h>

/* Bytes a body buffer starts with: the benchmark's body is 644. */
#define ENCODE_FIRST 1024
#define OFF(f)       offsetof(struct kiln_signature, f)

/* Machinery's struct order, then paota's own fields. */
const kiln__field kiln__fields[] = {
    {"UUID", KILN__F_STRING, false, false, OFF(uuid), 0},
    {"Name", KILN__F_STRING, false, false, OFF(name), 0},
    {"RoutingKey", KILN__F_STRING, false, false, OFF(routing_key), 0},
    {"ETA", KILN__F_TIME, false, false, OFF(has_eta), OFF(eta)},
    {"GroupUUID", KILN__F_STRING, false, true, OFF(group_uuid), 0},
    {"GroupTaskCount", KILN__F_INT, false, true, OFF(group_task_count), 0},
    {"Args", KILN__F_ARGS, false, false, OFF(args), 0},
    {"Headers", KILN__F_HEADERS, false, true, OFF(headers), 0},
    {"Priority", KILN__F_PRIORITY, false, false, OFF(priority), 0},
    {"Immutable", KILN__F_BOOL, false, true, OFF(immutable), 0},
    {"RetryCount", KILN__F_INT, false, false, OFF(retry_count), 0},
    {"RetryTimeout", KILN__F_INT, false, false, OFF(retry_timeout), 0},
    {"OnSuccess", KILN__F_EXTRA, false, true, 0, 0},
    {"OnError", KILN__F_EXTRA, false, true, 0, 0},
    {"ChordCallback", KILN__F_EXTRA, false, true, 0, 0},
    {"BrokerMessageGroupId", KILN__F_STRING, false, true,
     OFF(broker_message_group_id), 0},
    {"SQSReceiptHandle", KILN__F_STRING, false, true, OFF(sqs_receipt_handle),
     0},
    {"StopTaskDeletionOnError", KILN__F_BOOL, false, true,
     OFF(stop_task_deletion_on_error), 0},
    {"IgnoreWhenTaskNotRegistered", KILN__F_BOOL, false, false,
     OFF(ignore_unregistered), 0},
    {"RawArgs", KILN__F_RAW, true, false, OFF(raw_args), 0},
    {"WaitTime", KILN__F_INT, true, false, OFF(wait_time), 0},
    {"RetriesDone", KILN__F_INT, true, false, OFF(retries_done), 0},
    {"TaskTimeOut", KILN__F_INT, true, false, OFF(task_timeout), 0},
    {"CreatedAt", KILN__F_TIME, true, false, OFF(has_created_at),
     OFF(created_at)},
};

const size_t kiln__n_fields = KILN__ARRAY_LEN(kiln__fields);

enum {
    UUID_,
    NAME_,
    ROUTING_KEY_,
    ETA_,
    GROUP_UUID_,
    GROUP_TASK_COUNT_,
    ARGS_,
    HEADERS_,
    PRIORITY_,
    IMMUTABLE_,
    RETRY_COUNT_,
    RETRY_TIMEOUT_,
    ON_SUCCESS_,
    ON_ERROR_,
    CHORD_CALLBACK_,
    BROKER_MESSAGE_GROUP_ID_,
    SQS_RECEIPT_HANDLE_,
    STOP_TASK_DELETION_,
    IGNORE_UNREGISTERED_,
    RAW_ARGS_,
    WAIT_TIME_,
    RETRIES_DONE_,
    TASK_TIMEOUT_,
    CREATED_AT_
};

/* paota schema.Signature; RawArgs sits after Args, where paota's
 * registrar lists it when it rebuilds a signature from headers. */
static const int paota_order[] = {
    UUID_,        NAME_,         ARGS_,         RAW_ARGS_,
    ROUTING_KEY_, PRIORITY_,     RETRY_COUNT_,  RETRY_TIMEOUT_,
    WAIT_TIME_,   RETRIES_DONE_, TASK_TIMEOUT_, IGNORE_UNREGISTERED_,
    CREATED_AT_,  ETA_,
};

/* The fields whose key starts with `c`, ended by -1: the exact match runs
 * for every key of every body, so it looks at those alone. */
static const int *by_first_letter(char c)
{
    static const int a[] = {ARGS_, -1}, b[] = {BROKER_MESSAGE_GROUP_ID_, -1},
                     c_[] = {CHORD_CALLBACK_, CREATED_AT_, -1},
                     e[] = {ETA_, -1},
                     g[] = {GROUP_UUID_, GROUP_TASK_COUNT_, -1},
                     h[] = {HEADERS_, -1},
                     i[] = {IMMUTABLE_, IGNORE_UNREGISTERED_, -1},
                     n[] = {NAME_, -1}, o[] = {ON_SUCCESS_, ON_ERROR_, -1},
                     p[] = {PRIORITY_, -1},
                     r[] = {ROUTING_KEY_, RETRY_COUNT_,  RETRY_TIMEOUT_,
                            RAW_ARGS_,    RETRIES_DONE_, -1},
                     s_[] = {SQS_RECEIPT_HANDLE_, STOP_TASK_DELETION_, -1},
                     t[] = {TASK_TIMEOUT_, -1}, u[] = {UUID_, -1},
                     w[] = {WAIT_TIME_, -1}, none[] = {-1};

    switch (c) {
    case 'A':
        return a;
    case 'B':
        return b;
    case 'C':
        return c_;
    case 'E':
        return e;
    case 'G':
        return g;
    case 'H':
        return h;
    case 'I':
        return i;
    case 'N':
        return n;
    case 'O':
        return o;
    case 'P':
        return p;
    case 'R':
        return r;
    case 'S':
        return s_;
    case 'T':
        return t;
    case 'U':
        return u;
    case 'W':
        return w;
    default:
        return none;
    }
}

int kiln__field_find(const char *key)
{
    for (const int *c = by_first_letter(key[0]); *c >= 0; c++)
        if (strcmp(key, kiln__fields[*c].key) == 0)
            return *c;
    for (size_t i = 0; i < kiln__n_fields; i++)
        if (kiln__key_match(key, kiln__fields[i].key))
            return (int)i;
    return -1;
}

/* ---- one field ---------------------------------------------------------- */

static const void *at(const kiln_signature *sig, size_t off)
{
    return (const char *)sig + off;
}

static const char *str_at(const kiln_signature *sig, size_t off)
{
    const char *s = *(const char *const *)at(sig, off);

    return s != NULL ? s : "";
}

static const cJSON *extra_item(const kiln_signature *sig, const char *key)
{
    return sig->extra != NULL
               ? cJSON_GetObjectItemCaseSensitive(sig->extra, key)
               : NULL;
}

/* Whether a field holds its zero value (what Go would leave unset). */
static bool is_default(const kiln_signature *sig, const kiln__field *f)
{
    switch (f->kind) {
    case KILN__F_STRING:
        return str_at(sig, f->off)[0] == '\0';
    case KILN__F_INT:
        return *(const int *)at(sig, f->off) == 0;
    case KILN__F_PRIORITY:
        return *(const unsigned *)at(sig, f->off) == 0;
    case KILN__F_BOOL:
    case KILN__F_TIME:
        return !*(const bool *)at(sig, f->off);
    case KILN__F_ARGS:
        return sig->args.n == 0;
    case KILN__F_HEADERS:
        return sig->headers == NULL;
    case KILN__F_EXTRA:
        return extra_item(sig, f->key) == NULL;
    case KILN__F_RAW:
        return sig->raw_args == NULL;
    }
    return true;
}

static kiln_err put_time(kiln__buf *b, const kiln__time *t, const char *key,
                         kiln_error *err)
{
    char text[KILN__TIME_MAX];
    size_t n = kiln__time_format(t, text, sizeof(text));

    if (n == 0)
        return kiln__fail(err, KILN_ECODEC, "%s: time outside years 0-9999",
                          key);
    kiln__json_string(b, text, n);
    return KILN_OK;
}

/* Go marshals a json.RawMessage through json.Compact, which also checks
 * it; the raw body may have come from anywhere, so it is checked too. */
static kiln_err put_raw(kiln__buf *b, const kiln_signature *sig,
                        kiln_error *err)
{
    kiln_err rc;

    if (sig->raw_args == NULL) {
        kiln__buf_puts(b, "null");
        return KILN_OK;
    }
    rc = kiln__json_validate(sig->raw_args, sig->raw_args_len, "RawArgs", err);
    if (rc == KILN_OK)
        kiln__json_compact(b, sig->raw_args, sig->raw_args_len);
    return rc;
}

/* ---- Args: [{"Name":"","Type":"int64","Value":4}] ---------------------- */

static void put_scalar(kiln__buf *b, kiln_type t, const void *p)
{
    const char *s;

    if (t == KILN_TYPE_BOOL) {
        kiln__buf_puts(b, *(const bool *)p ? "true" : "false");
    } else if (t >= KILN_TYPE_INT && t <= KILN_TYPE_INT64) {
        kiln__json_int(b, *(const int64_t *)p);
    } else if (t >= KILN_TYPE_UINT && t <= KILN_TYPE_UINT64) {
        kiln__json_uint(b, *(const uint64_t *)p);
    } else if (t == KILN_TYPE_FLOAT32 || t == KILN_TYPE_FLOAT64) {
        kiln__json_float(b, *(const double *)p,
                         t == KILN_TYPE_FLOAT32 ? 32 : 64);
    } else {
        s = *(const char *const *)p;
        kiln__json_string(b, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
    }
}

/* Go writes []byte (and so []uint8, the same type) as base64. */
static kiln_err put_value(kiln__buf *b, const kiln__value *v, kiln_error *err)
{
    kiln_type et;
    const char *p;
    char *text;

    if (v->type == KILN_TYPE_BYTES || v->type == KILN_TYPE_UINT8_SLICE) {
        text = kiln__base64_encode(v->v.arr.ptr, v->v.arr.n);
        if (text == NULL)
            return kiln__fail(err, KILN_ENOMEM, "base64 of %zu bytes",
                              v->v.arr.n);
        kiln__json_string(b, text, strlen(text));
        kiln__free(text);
        return KILN_OK;
    }
    if (v->type < KILN_TYPE_BOOL_SLICE) {
        put_scalar(b, v->type, &v->v);
        return KILN_OK;
    }
    et = (kiln_type)(v->type - KILN_TYPE_BOOL_SLICE);
    p = v->v.arr.ptr;
    kiln__buf_put(b, "[", 1);
    for (size_t i = 0; i < v->v.arr.n; i++) {
        if (i > 0)
            kiln__buf_put(b, ",", 1);
        put_scalar(b, et, p + i * kiln__type_elem_size(et));
    }
    kiln__buf_put(b, "]", 1);
    return KILN_OK;
}

static kiln_err encode_args(kiln__buf *b, const kiln__values *args,
                            kiln_error *err)
{
    const char *name, *type;
    kiln_err rc;

    kiln__buf_put(b, "[", 1);
    for (size_t i = 0; i < args->n; i++) {
        const kiln__value *v = &args->items[i];

        if ((type = kiln_type_name(v->type)) == NULL)
            return kiln__fail(err, KILN_ECODEC, "Args[%zu]: unknown type %d", i,
                              (int)v->type);
        name = v->name != NULL ? v->name : "";
        kiln__buf_puts(b, i > 0 ? ",{\"Name\":" : "{\"Name\":");
        kiln__json_string(b, name, strlen(name));
        kiln__buf_puts(b, ",\"Type\":");
        kiln__json_string(b, type, strlen(type));
        kiln__buf_puts(b, ",\"Value\":");
        if ((rc = put_value(b, v, err)) != KILN_OK)
            return rc;
        kiln__buf_put(b, "}", 1);
    }
    kiln__buf_put(b, "]", 1);
    return KILN_OK;
}

static kiln_err put_field(kiln__buf *b, const kiln_signature *sig,
                          const kiln__field *f, kiln_error *err)
{
    const char *s;

    kiln__json_string(b, f->key, strlen(f->key));
    kiln__buf_put(b, ":", 1);
    switch (f->kind) {
    case KILN__F_STRING:
        s = str_at(sig, f->off);
        kiln__json_string(b, s, strlen(s));
        return KILN_OK;
    case KILN__F_INT:
        kiln__json_int(b, *(const int *)at(sig, f->off));
        return KILN_OK;
    case KILN__F_PRIORITY:
        kiln__json_uint(b, *(const unsigned *)at(sig, f->off));
        return KILN_OK;
    case KILN__F_BOOL:
        kiln__buf_puts(b, *(const bool *)at(sig, f->off) ? "true" : "false");
        return KILN_OK;
    case KILN__F_TIME:
        if (!*(const bool *)at(sig, f->off)) {
            kiln__buf_puts(b, "null");
            return KILN_OK;
        }
        return put_time(b, at(sig, f->off2), f->key, err);
    case KILN__F_ARGS:
        if (sig->args.n == 0) { /* a nil []Arg, as Go's NewSignature */
            kiln__buf_puts(b, "null");
            return KILN_OK;
        }
        return encode_args(b, &sig->args, err);
    case KILN__F_HEADERS: /* a Go map: sorted keys */
        return kiln__json_tree(b, sig->headers, true, err);
    case KILN__F_EXTRA:
        return kiln__json_tree(b, extra_item(sig, f->key), false, err);
    case KILN__F_RAW:
        return put_raw(b, sig, err);
    }
    return KILN_OK;
}

/* ---- the whole object --------------------------------------------------- */

static bool in_dialect(const kiln__field *f, kiln_dialect d)
{
    return d == KILN_DIALECT_MACHINERY ? !f->paota_only : !f->machinery_only;
}

/* The other dialect's fields that are set, then unknown keys. */
static kiln_err put_tail(kiln__buf *b, const kiln_signature *sig,
                         kiln_dialect d, kiln_error *err)
{
    kiln_err rc;

    for (size_t i = 0; i < kiln__n_fields; i++) {
        const kiln__field *f = &kiln__fields[i];

        if (in_dialect(f, d) || is_default(sig, f))
            continue;
        kiln__buf_put(b, ",", 1);
        if ((rc = put_field(b, sig, f, err)) != KILN_OK)
            return rc;
    }
    for (const cJSON *c = sig->extra != NULL ? sig->extra->child : NULL;
         c != NULL; c = c->next) {
        if (c->string == NULL || kiln__field_find(c->string) >= 0)
            continue; /* callbacks, written in their place above */
        kiln__buf_put(b, ",", 1);
        kiln__json_string(b, c->string, strlen(c->string));
        kiln__buf_put(b, ":", 1);
        if ((rc = kiln__json_tree(b, c, false, err)) != KILN_OK)
            return rc;
    }
    return KILN_OK;
}

static kiln_err encode(const kiln_signature *sig, kiln_dialect dialect,
                       kiln__buf *b, kiln_error *err)
{
    size_t n = dialect == KILN_DIALECT_PAOTA ? KILN__ARRAY_LEN(paota_order)
                                             : (size_t)RAW_ARGS_;
    kiln_err rc;

    kiln__buf_put(b, "{", 1);
    for (size_t i = 0; i < n; i++) {
        int k = dialect == KILN_DIALECT_PAOTA ? paota_order[i] : (int)i;

        if (i > 0)
            kiln__buf_put(b, ",", 1);
        if ((rc = put_field(b, sig, &kiln__fields[k], err)) != KILN_OK)
            return rc;
    }
    if ((rc = put_tail(b, sig, dialect, err)) != KILN_OK)
        return rc;
    kiln__buf_put(b, "}", 1);
    return KILN_OK;
}

kiln_err kiln_signature_to_json(const kiln_signature *sig, kiln_dialect dialect,
                                char **out, size_t *len, kiln_error *err)
{
    kiln__buf b = {0};
    kiln_err rc;

    if (sig == NULL || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature and out are required");
    if (dialect != KILN_DIALECT_MACHINERY && dialect != KILN_DIALECT_PAOTA)
        return kiln__fail(err, KILN_EINVAL,
                          "dialect %d has no JSON body of "
                          "its own; use kiln_signature_to_raw",
                          (int)dialect);
    /* What the decoder refuses is not written either. */
    if (sig->name == NULL || sig->name[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "Name: empty");
    if (sig->uuid == NULL || sig->uuid[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "UUID: empty");
    /* Room for a typical body at once: growing from the buffer's smallest
     * block cost three reallocs per task. */
    (void)kiln__buf_reserve(&b, ENCODE_FIRST);
    if ((rc = encode(sig, dialect, &b, err)) != KILN_OK) {
        kiln__buf_release(&b);
        return rc;
    }
    return kiln__buf_finish(&b, out, len, err);
}
