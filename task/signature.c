/* The signature object: creation, deep copy, release, and the accessors
 * and setters of its delivery options. Arguments are in args.c. */
#include "task/codec.h"

#include <stddef.h>
#include <string.h>

/* AMQP short strings (message-id, routing key) hold at most 255 bytes. */
#define SHORTSTR_MAX 255

/* Every owned string of the signature, so that alloc, copy and free
 * cannot forget one. */
static const size_t string_fields[] = {
    offsetof(struct kiln_signature, uuid),
    offsetof(struct kiln_signature, name),
    offsetof(struct kiln_signature, routing_key),
    offsetof(struct kiln_signature, group_uuid),
    offsetof(struct kiln_signature, broker_message_group_id),
    offsetof(struct kiln_signature, sqs_receipt_handle),
};

char kiln__no_text[1];

void kiln__text_free(char *s)
{
    if (s != kiln__no_text)
        kiln__free(s);
}

static char **string_slot(kiln_signature *sig, size_t i)
{
    return (char **)(void *)((char *)sig + string_fields[i]);
}

static const char *string_at(const kiln_signature *sig, size_t i)
{
    const char *s =
        *(char *const *)(const void *)((const char *)sig + string_fields[i]);

    return s != NULL ? s : "";
}

void kiln_signature_free(kiln_signature *sig)
{
    if (sig == NULL)
        return;
    for (size_t i = 0; i < KILN__ARRAY_LEN(string_fields); i++)
        kiln__text_free(*string_slot(sig, i));
    kiln__values_clear(&sig->args);
    kiln__free(sig->raw_args);
    cJSON_Delete(sig->headers);
    cJSON_Delete(sig->extra);
    kiln__free(sig);
}

/* The casts only fit the string literals to the struct's field types:
 * nothing writes through them. */
const kiln_signature kiln__signature_empty = {
    .uuid = (char *)"",
    .name = (char *)"",
    .routing_key = (char *)"",
    .group_uuid = (char *)"",
    .broker_message_group_id = (char *)"",
    .sqs_receipt_handle = (char *)"",
};

void kiln__signature_init(kiln_signature *sig)
{
    memset(sig, 0, sizeof(*sig));
    kiln__signature_fill(sig);
}

kiln_signature *kiln__signature_alloc(kiln_error *err)
{
    kiln_signature *sig = kiln__malloc(sizeof(*sig));

    if (sig == NULL) {
        (void)kiln__fail(err, KILN_ENOMEM, "allocating a signature");
        return NULL;
    }
    kiln__signature_init(sig);
    return sig;
}

void kiln__signature_fill(kiln_signature *sig)
{
    for (size_t i = 0; i < KILN__ARRAY_LEN(string_fields); i++)
        if (*string_slot(sig, i) == NULL)
            *string_slot(sig, i) = kiln__no_text;
}

/* A copy of `s` for a string field: kiln__no_text for "". */
static char *text_dup(const char *s)
{
    return s[0] == '\0' ? kiln__no_text : kiln__strdup(s);
}

kiln_err kiln__set_string(char **slot, const char *s, kiln_error *err)
{
    char *copy;

    if (slot == NULL || s == NULL)
        return kiln__fail(err, KILN_EINVAL, "string is required");
    if ((copy = text_dup(s)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "copying a string of %zu bytes",
                          strlen(s));
    kiln__text_free(*slot);
    *slot = copy;
    return KILN_OK;
}

kiln_signature *kiln_signature_new(const char *name, kiln_error *err)
{
    char uuid[KILN_UUID_LEN];
    kiln_signature *sig;

    if (name == NULL || name[0] == '\0') {
        (void)kiln__fail(err, KILN_EINVAL, "task name is required");
        return NULL;
    }
    if (!kiln__utf8_valid(name, strlen(name))) {
        (void)kiln__fail(err, KILN_EINVAL, "task name is not valid UTF-8");
        return NULL;
    }
    if (kiln_uuid_new(uuid, sizeof(uuid), err) != KILN_OK)
        return NULL;
    if ((sig = kiln__signature_alloc(err)) == NULL)
        return NULL;
    if (kiln__set_string(&sig->uuid, uuid, err) != KILN_OK ||
        kiln__set_string(&sig->name, name, err) != KILN_OK) {
        kiln_signature_free(sig);
        return NULL;
    }
    return sig;
}

/* Copies what the plain struct assignment in kiln_signature_copy only
 * shared: strings, arguments, the raw body and the JSON trees. */
static kiln_err copy_owned(kiln_signature *dst, const kiln_signature *src,
                           kiln_error *err)
{
    kiln_err rc;

    for (size_t i = 0; i < KILN__ARRAY_LEN(string_fields); i++)
        if ((*string_slot(dst, i) = text_dup(string_at(src, i))) == NULL)
            return kiln__fail(err, KILN_ENOMEM, "copying a signature");
    if ((rc = kiln__values_copy(&dst->args, &src->args, err)) != KILN_OK)
        return rc;
    if (src->raw_args != NULL) {
        dst->raw_args = kiln__strndup(src->raw_args, src->raw_args_len);
        if (dst->raw_args == NULL)
            return kiln__fail(err, KILN_ENOMEM, "copying the raw body");
    }
    /* Not cJSON_Duplicate: it would share the keys of the decoder's
     * one-allocation nodes (task/json_build.c). */
    if (src->headers != NULL &&
        (dst->headers = kiln__json_copy(src->headers)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "copying the headers");
    if (src->extra != NULL &&
        (dst->extra = kiln__json_copy(src->extra)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "copying the unknown keys");
    return KILN_OK;
}

kiln_signature *kiln_signature_copy(const kiln_signature *sig, kiln_error *err)
{
    kiln_signature *c;

    if (sig == NULL) {
        (void)kiln__fail(err, KILN_EINVAL, "signature is required");
        return NULL;
    }
    if ((c = kiln__calloc(1, sizeof(*c))) == NULL) {
        (void)kiln__fail(err, KILN_ENOMEM, "allocating a signature");
        return NULL;
    }
    /* Scalars come along; every pointer is cleared before it is copied,
     * so a half-made copy frees only what it owns. */
    *c = *sig;
    for (size_t i = 0; i < KILN__ARRAY_LEN(string_fields); i++)
        *string_slot(c, i) = NULL;
    memset(&c->args, 0, sizeof(c->args));
    c->raw_args = NULL;
    c->headers = NULL;
    c->extra = NULL;
    if (copy_owned(c, sig, err) != KILN_OK) {
        kiln_signature_free(c);
        return NULL;
    }
    return c;
}

/* ---- accessors ---------------------------------------------------------
 * A NULL signature reads as an empty one rather than crashing. */

const char *kiln_signature_uuid(const kiln_signature *sig)
{
    return sig != NULL && sig->uuid != NULL ? sig->uuid : "";
}

const char *kiln_signature_name(const kiln_signature *sig)
{
    return sig != NULL && sig->name != NULL ? sig->name : "";
}

const char *kiln_signature_routing_key(const kiln_signature *sig)
{
    return sig != NULL && sig->routing_key != NULL ? sig->routing_key : "";
}

const char *kiln_signature_group_uuid(const kiln_signature *sig)
{
    return sig != NULL && sig->group_uuid != NULL ? sig->group_uuid : "";
}

unsigned kiln_signature_priority(const kiln_signature *sig)
{
    return sig != NULL ? sig->priority : 0;
}

int kiln_signature_retry_count(const kiln_signature *sig)
{
    return sig != NULL ? sig->retry_count : 0;
}

int kiln_signature_retry_timeout(const kiln_signature *sig)
{
    return sig != NULL ? sig->retry_timeout : 0;
}

int kiln_signature_retries_done(const kiln_signature *sig)
{
    return sig != NULL ? sig->retries_done : 0;
}

int kiln_signature_task_timeout(const kiln_signature *sig)
{
    return sig != NULL ? sig->task_timeout : 0;
}

bool kiln_signature_ignore_unregistered(const kiln_signature *sig)
{
    return sig != NULL && sig->ignore_unregistered;
}

bool kiln_signature_eta(const kiln_signature *sig, int64_t *unix_ns)
{
    if (sig == NULL || !sig->has_eta)
        return false;
    if (unix_ns != NULL)
        *unix_ns = sig->eta.unix_ns;
    return true;
}

bool kiln_signature_created_at(const kiln_signature *sig, int64_t *unix_ns)
{
    if (sig == NULL || !sig->has_created_at)
        return false;
    if (unix_ns != NULL)
        *unix_ns = sig->created_at.unix_ns;
    return true;
}

/* ---- setters ----------------------------------------------------------- */

/* Checks `s` for a string field called `what` (at most `max` bytes, 0 =
 * no limit) and stores a copy of it in *slot. */
static kiln_err set_text(kiln_signature *sig, char **slot, const char *s,
                         const char *what, size_t max, kiln_error *err)
{
    size_t len;

    if (sig == NULL || s == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "%s: signature and value are "
                          "required",
                          what);
    len = strlen(s);
    if (max > 0 && len > max)
        return kiln__fail(err, KILN_EINVAL, "%s: %zu bytes, at most %zu", what,
                          len, max);
    if (!kiln__utf8_valid(s, len))
        return kiln__fail(err, KILN_EINVAL, "%s is not valid UTF-8", what);
    return kiln__set_string(slot, s, err);
}

kiln_err kiln_signature_set_uuid(kiln_signature *sig, const char *uuid,
                                 kiln_error *err)
{
    if (uuid != NULL && uuid[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "UUID must not be empty");
    return set_text(sig, sig != NULL ? &sig->uuid : NULL, uuid, "UUID",
                    SHORTSTR_MAX, err);
}

kiln_err kiln_signature_set_routing_key(kiln_signature *sig, const char *key,
                                        kiln_error *err)
{
    return set_text(sig, sig != NULL ? &sig->routing_key : NULL, key,
                    "routing key", SHORTSTR_MAX, err);
}

kiln_err kiln_signature_set_group(kiln_signature *sig, const char *group_uuid,
                                  int group_task_count, kiln_error *err)
{
    kiln_err rc;

    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature is required");
    if (group_task_count < 0)
        return kiln__fail(err, KILN_EINVAL, "group task count %d is negative",
                          group_task_count);
    rc = set_text(sig, &sig->group_uuid, group_uuid, "group UUID", 0, err);
    if (rc == KILN_OK)
        sig->group_task_count = group_task_count;
    return rc;
}

kiln_err kiln_signature_set_priority(kiln_signature *sig, unsigned priority,
                                     kiln_error *err)
{
    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature is required");
    if (priority > 255)
        return kiln__fail(err, KILN_EINVAL, "priority %u: 0..255 accepted",
                          priority);
    sig->priority = priority;
    return KILN_OK;
}

kiln_err kiln_signature_set_retry(kiln_signature *sig, int retry_count,
                                  int retry_timeout, kiln_error *err)
{
    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature is required");
    if (retry_count < 0 || retry_timeout < 0)
        return kiln__fail(err, KILN_EINVAL,
                          "retry count %d and timeout %d must not be negative",
                          retry_count, retry_timeout);
    sig->retry_count = retry_count;
    sig->retry_timeout = retry_timeout;
    return KILN_OK;
}

kiln_err kiln_signature_set_task_timeout(kiln_signature *sig,
                                         int task_timeout_s, kiln_error *err)
{
    if (sig == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature is required");
    if (task_timeout_s < 0)
        return kiln__fail(err, KILN_EINVAL, "task timeout %d is negative",
                          task_timeout_s);
    sig->task_timeout = task_timeout_s;
    return KILN_OK;
}

void kiln_signature_set_ignore_unregistered(kiln_signature *sig, bool ignore)
{
    if (sig != NULL)
        sig->ignore_unregistered = ignore;
}

void kiln_signature_set_eta(kiln_signature *sig, int64_t unix_ns)
{
    if (sig == NULL)
        return;
    sig->has_eta = true;
    sig->eta.unix_ns = unix_ns;
    sig->eta.offset_s = 0;
}

void kiln_signature_clear_eta(kiln_signature *sig)
{
    if (sig == NULL)
        return;
    sig->has_eta = false;
    memset(&sig->eta, 0, sizeof(sig->eta));
}

void kiln_signature_set_created_at(kiln_signature *sig, int64_t unix_ns)
{
    if (sig == NULL)
        return;
    sig->has_created_at = true;
    sig->created_at.unix_ns = unix_ns;
    sig->created_at.offset_s = 0;
}

void kiln_signature_clear_created_at(kiln_signature *sig)
{
    if (sig == NULL)
        return;
    sig->has_created_at = false;
    memset(&sig->created_at, 0, sizeof(sig->created_at));
}

/* ---- paota's raw body -------------------------------------------------- */

const char *kiln_signature_raw_body(const kiln_signature *sig, size_t *len)
{
    bool has = sig != NULL && sig->raw_args != NULL;

    if (len != NULL)
        *len = has ? sig->raw_args_len : 0;
    return has ? sig->raw_args : NULL;
}

/* Checked by the codec's own reader, as strictly as Go reads it (what
 * the encoder would refuse later is refused here, naming the byte), and
 * not by cJSON: cJSON's parser sets one process-wide error position, so
 * it must not run where any thread may call (cJSON_GetErrorPtr is a
 * race). The library parses nothing with cJSON. */
kiln_err kiln_signature_set_raw_body(kiln_signature *sig, const char *json,
                                     size_t len, kiln_error *err)
{
    char *copy;
    kiln_err rc;

    if (sig == NULL || json == NULL)
        return kiln__fail(err, KILN_EINVAL, "signature and body are required");
    if (!kiln__utf8_valid(json, len))
        return kiln__fail(err, KILN_ECODEC, "raw body is not valid UTF-8");
    if ((rc = kiln__json_validate(json, len, "raw body", err)) != KILN_OK)
        return rc;
    if ((copy = kiln__strndup(json, len)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "copying a raw body of %zu bytes",
                          len);
    kiln__free(sig->raw_args);
    sig->raw_args = copy;
    sig->raw_args_len = len;
    return KILN_OK;
}
