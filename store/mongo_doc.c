/* The task document of the MongoDB store in BSON (see store/mongo_doc.h
 * for the schema): the filter and update a state write sends, and a
 * stored document read back. Results are in store/mongo_values.c. */
#include "store/mongo_doc.h"

#include <stddef.h>
#include <string.h>

/* ---- filters and updates ---------------------------------------------- */

void kiln__mongo_filter(bson_t *filter, const kiln__state_update *u,
                        kiln__mongo_rule rule)
{
    bson_t or, alt, st, nin;

    BSON_APPEND_UTF8(filter, "_id", u->uuid);
    if (rule == KILN__MONGO_RULE_RESENT) {
        BSON_APPEND_BOOL(filter, KILN__MONGO_UNSENT, true);
        return;
    }
    BSON_APPEND_ARRAY_BEGIN(filter, "$or", & or);
    BSON_APPEND_DOCUMENT_BEGIN(& or, "0", &alt);
    if (u->state == KILN_STATE_PENDING || rule == KILN__MONGO_RULE_UNSENT) {
        BSON_APPEND_UTF8(&alt, "state", kiln__state_name(KILN_STATE_PENDING));
    } else {
        BSON_APPEND_DOCUMENT_BEGIN(&alt, "state", &st);
        BSON_APPEND_ARRAY_BEGIN(&st, "$nin", &nin);
        BSON_APPEND_UTF8(&nin, "0", kiln__state_name(KILN_STATE_SUCCESS));
        BSON_APPEND_UTF8(&nin, "1", kiln__state_name(KILN_STATE_FAILURE));
        bson_append_array_end(&st, &nin);
        bson_append_document_end(&alt, &st);
    }
    bson_append_document_end(& or, &alt);
    /* Rule 4: a producer's FAILURE for a failed send gives way to any
     * later write. */
    BSON_APPEND_DOCUMENT_BEGIN(& or, "1", &alt);
    BSON_APPEND_BOOL(&alt, KILN__MONGO_UNSENT, true);
    bson_append_document_end(& or, &alt);
    bson_append_array_end(filter, & or);
}

bool kiln__mongo_applies(const char *state, bool marked,
                         const kiln__state_update *u, kiln__mongo_rule rule)
{
    bool pending = strcmp(state, kiln__state_name(KILN_STATE_PENDING)) == 0;

    if (marked || rule == KILN__MONGO_RULE_RESENT)
        return marked;
    if (u->state == KILN_STATE_PENDING || rule == KILN__MONGO_RULE_UNSENT)
        return pending;
    return strcmp(state, kiln__state_name(KILN_STATE_SUCCESS)) != 0 &&
           strcmp(state, kiln__state_name(KILN_STATE_FAILURE)) != 0;
}

/* Only fields a write knows go into $set; created_at, and the task name
 * and attempt count of a document the write creates, go into $setOnInsert
 * (MongoDB refuses one path in two operators, hence the conditions). */
kiln_err kiln__mongo_update(bson_t *update, const kiln__state_update *u,
                            const kiln__mongo_write_ctx *ctx, kiln_error *err)
{
    bool named = u->task_name != NULL && u->task_name[0] != '\0';
    bool started = u->state == KILN_STATE_STARTED || u->started;
    bool finished = kiln__state_finished(u->state);
    bool unsent = ctx->unsent;
    kiln_err rc = KILN_OK;
    bson_t set, ins, inc, unset;

    BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
    BSON_APPEND_UTF8(&set, "state", kiln__state_name(u->state));
    BSON_APPEND_UTF8(&set, "error", u->error != NULL ? u->error : "");
    BSON_APPEND_DATE_TIME(&set, "updated_at", ctx->now_ms);
    if (named)
        BSON_APPEND_UTF8(&set, "task_name", u->task_name);
    if (u->state != KILN_STATE_PENDING && !unsent)
        BSON_APPEND_UTF8(&set, "worker", ctx->worker);
    if (started)
        BSON_APPEND_DATE_TIME(&set, "started_at", ctx->now_ms);
    if (finished) {
        BSON_APPEND_DATE_TIME(&set, "finished_at", ctx->now_ms);
        if (ctx->expire_s > 0)
            BSON_APPEND_DATE_TIME(&set, "delete_at",
                                  ctx->now_ms + (int64_t)ctx->expire_s * 1000);
    }
    if (unsent)
        BSON_APPEND_BOOL(&set, KILN__MONGO_UNSENT, true);
    if (u->results != NULL)
        rc = kiln__mongo_append_results(&set, "results", u->results, err);
    bson_append_document_end(update, &set);
    /* A write that replaces a failed send's FAILURE (rule 4) takes away
     * its mark, and, when unfinished, its expiry. */
    if (!unsent) {
        BSON_APPEND_DOCUMENT_BEGIN(update, "$unset", &unset);
        BSON_APPEND_UTF8(&unset, KILN__MONGO_UNSENT, "");
        if (!finished) {
            BSON_APPEND_UTF8(&unset, "finished_at", "");
            BSON_APPEND_UTF8(&unset, "delete_at", "");
        }
        bson_append_document_end(update, &unset);
    }
    BSON_APPEND_DOCUMENT_BEGIN(update, "$setOnInsert", &ins);
    BSON_APPEND_DATE_TIME(&ins, "created_at", ctx->now_ms);
    if (!named)
        BSON_APPEND_UTF8(&ins, "task_name", "");
    if (!started)
        BSON_APPEND_INT32(&ins, "attempts", 0);
    bson_append_document_end(update, &ins);
    if (started) {
        BSON_APPEND_DOCUMENT_BEGIN(update, "$inc", &inc);
        BSON_APPEND_INT32(&inc, "attempts", 1);
        bson_append_document_end(update, &inc);
    }
    return rc;
}

void kiln__mongo_pending_doc(bson_t *doc, const kiln__state_update *u,
                             const kiln__mongo_write_ctx *ctx)
{
    BSON_APPEND_UTF8(doc, "_id", u->uuid);
    BSON_APPEND_UTF8(doc, "state", kiln__state_name(KILN_STATE_PENDING));
    BSON_APPEND_UTF8(doc, "error", "");
    BSON_APPEND_DATE_TIME(doc, "updated_at", ctx->now_ms);
    BSON_APPEND_UTF8(doc, "task_name",
                     u->task_name != NULL ? u->task_name : "");
    BSON_APPEND_DATE_TIME(doc, "created_at", ctx->now_ms);
    BSON_APPEND_INT32(doc, "attempts", 0);
}

/* ---- the whole document ----------------------------------------------- */

static kiln_err read_state(const bson_iter_t *it, kiln__task_record *r,
                           bool *has_state, kiln_error *err)
{
    const char *s = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, NULL) : "";

    for (int i = 0; i <= KILN__STATE_LAST; i++) {
        if (strcmp(s, kiln__state_name((kiln_task_state)i)) == 0) {
            r->state = (kiln_task_state)i;
            *has_state = true;
            return KILN_OK;
        }
    }
    return kiln__fail(err, KILN_ESTORE, "state '%s' is unknown", s);
}

/* The record's slot for the date field `k` (nanoseconds), or NULL. */
static int64_t *date_slot(kiln__task_record *r, const char *k)
{
    static const struct {
        const char *key;
        size_t off;
    } dates[] = {
        {"created_at", offsetof(kiln__task_record, created_ns)},
        {"updated_at", offsetof(kiln__task_record, updated_ns)},
        {"started_at", offsetof(kiln__task_record, started_ns)},
        {"finished_at", offsetof(kiln__task_record, finished_ns)},
        {"delete_at", offsetof(kiln__task_record, delete_ns)},
    };

    for (size_t i = 0; i < KILN__ARRAY_LEN(dates); i++)
        if (strcmp(k, dates[i].key) == 0)
            return (int64_t *)(void *)((char *)r + dates[i].off);
    return NULL;
}

static kiln_err read_field(const bson_iter_t *it, kiln__task_record *r,
                           bool *has_state, kiln_error *err)
{
    const char *k = bson_iter_key(it);
    char **slot = NULL;
    int64_t *date;
    bool nomem;

    if (strcmp(k, "_id") == 0)
        slot = &r->uuid;
    else if (strcmp(k, "task_name") == 0)
        slot = &r->task_name;
    else if (strcmp(k, "error") == 0)
        slot = &r->error;
    else if (strcmp(k, "worker") == 0)
        slot = &r->worker;
    else if (strcmp(k, "state") == 0)
        return read_state(it, r, has_state, err);
    else if ((date = date_slot(r, k)) != NULL && BSON_ITER_HOLDS_DATE_TIME(it))
        *date = kiln__sat_mul(bson_iter_date_time(it), 1000000);
    else if (strcmp(k, "results") == 0)
        return kiln__mongo_read_results(it, &r->results, err);
    else if (strcmp(k, "attempts") == 0 && BSON_ITER_HOLDS_INT(it))
        r->attempts = bson_iter_as_int64(it) > 0 &&
                              bson_iter_as_int64(it) <= (int64_t)UINT32_MAX
                          ? (unsigned)bson_iter_as_int64(it)
                          : 0;
    if (slot == NULL || BSON_ITER_HOLDS_NULL(it))
        return KILN_OK;
    kiln__free(*slot);
    if ((*slot = kiln__mongo_read_str(it, &nomem)) == NULL)
        return kiln__fail(err, nomem ? KILN_ENOMEM : KILN_ESTORE,
                          "field '%s' is not a string", k);
    return KILN_OK;
}

kiln_err kiln__mongo_read_record(const bson_t *doc, kiln__task_record *out,
                                 kiln_error *err)
{
    kiln__task_record r = {0};
    bool has_state = false;
    bson_iter_t it;
    kiln_err rc = KILN_OK;

    if (!bson_iter_init(&it, doc))
        return kiln__fail(err, KILN_ESTORE, "task document is malformed");
    while (rc == KILN_OK && bson_iter_next(&it))
        rc = read_field(&it, &r, &has_state, err);
    if (rc == KILN_OK && (r.uuid == NULL || !has_state))
        rc = kiln__fail(err, KILN_ESTORE, "task document without %s",
                        r.uuid == NULL ? "a string _id" : "a state");
    if (rc == KILN_OK && r.task_name == NULL &&
        (r.task_name = kiln__strdup("")) == NULL)
        rc = kiln__fail(err, KILN_ENOMEM, "task record");
    if (rc == KILN_OK && r.error == NULL &&
        (r.error = kiln__strdup("")) == NULL)
        rc = kiln__fail(err, KILN_ENOMEM, "task record");
    if (rc != KILN_OK) {
        kiln__task_record_release(&r);
        return rc;
    }
    if (r.updated_ns == 0)
        r.updated_ns = r.created_ns;
    *out = r;
    return KILN_OK;
}
