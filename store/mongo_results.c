/* The public reading side of the MongoDB store (include/kiln/store_mongo.h):
 * a kiln_store wraps the kiln__store of store/mongo.c, and a kiln_result
 * is a kiln__task_record whose results are moved into a signature, so the
 * argument getters read them. */
#include "kiln/store_mongo.h"

#include "store/plugin.h"

#include <string.h>
#include <time.h>

#define WAIT_FIRST_MS 5
#define WAIT_MAX_MS   200

struct kiln_store {
    kiln__store *s;
};

struct kiln_result {
    kiln__task_record rec;  /* results moved out into `values` */
    kiln_signature *values; /* argument-shaped view of the results */
};

const char *kiln_task_state_name(kiln_task_state state)
{
    return kiln__state_name(state);
}

kiln_store *kiln_store_new(const kiln_config *cfg, kiln_error *err)
{
    kiln_store *st;

    if (cfg == NULL || cfg->store != KILN_STORE_MONGODB) {
        kiln__fail(err, KILN_EINVAL,
                   "kiln_store_new: the config's store "
                   "is not mongodb");
        return NULL;
    }
    if ((st = kiln__calloc(1, sizeof(*st))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "kiln_store_new");
        return NULL;
    }
    if ((st->s = kiln__store_open(cfg, err)) == NULL) {
        kiln__free(st);
        return NULL;
    }
    return st;
}

void kiln_store_free(kiln_store *st)
{
    if (st == NULL)
        return;
    kiln__store_destroy(st->s);
    kiln__free(st);
}

/* Takes everything in *rec, also on failure. */
static kiln_err wrap(kiln__task_record *rec, kiln_result **out, kiln_error *err)
{
    kiln_result *res = kiln__calloc(1, sizeof(*res));

    if (res == NULL || (res->values = kiln__signature_alloc(err)) == NULL) {
        kiln__free(res);
        kiln__task_record_release(rec);
        return kiln__fail(err, KILN_ENOMEM, "task result");
    }
    res->values->args = rec->results;
    rec->results = (kiln__values){0};
    res->rec = *rec;
    *rec = (kiln__task_record){0};
    *out = res;
    return KILN_OK;
}

kiln_err kiln_store_get_result(kiln_store *st, const char *uuid,
                               kiln_result **out, kiln_error *err)
{
    kiln__task_record rec = {0};
    kiln_err rc;

    if (out != NULL)
        *out = NULL;
    if (st == NULL || out == NULL)
        return kiln__fail(err, KILN_EINVAL, "store and out are required");
    if ((rc = kiln__store_get(st->s, uuid, &rec, err)) != KILN_OK)
        return rc;
    return wrap(&rec, out, err);
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) != 0)
        continue; /* EINTR: sleep what is left */
}

kiln_err kiln_store_wait_result(kiln_store *st, const char *uuid,
                                unsigned timeout_ms, kiln_result **out,
                                kiln_error *err)
{
    int64_t deadline = kiln__monotonic_ns() / 1000000 + timeout_ms;
    int64_t pause = WAIT_FIRST_MS, left;
    const char *last = "nothing recorded";
    kiln_result *res;
    kiln_err rc;

    if (out != NULL)
        *out = NULL;
    if (st == NULL || out == NULL || uuid == NULL || uuid[0] == '\0')
        return kiln__fail(err, KILN_EINVAL,
                          "store, uuid and out are "
                          "required");
    for (;;) {
        rc = kiln_store_get_result(st, uuid, &res, err);
        if (rc == KILN_OK && kiln_result_finished(res)) {
            *out = res;
            return KILN_OK;
        }
        if (rc == KILN_OK) {
            last = kiln_task_state_name(kiln_result_state(res));
            kiln_result_free(res);
        } else if (rc != KILN_ENOTFOUND && rc != KILN_ESTORE) {
            return rc;
        }
        left = deadline - kiln__monotonic_ns() / 1000000;
        if (left <= 0)
            break;
        sleep_ms(pause < left ? pause : left);
        pause = pause * 2 < WAIT_MAX_MS ? pause * 2 : WAIT_MAX_MS;
    }
    if (rc == KILN_ESTORE)
        return rc; /* err holds the store's reason */
    return kiln__fail(err, KILN_ETIMEDOUT,
                      "task '%.80s' not finished after %u ms (last seen: %s)",
                      uuid, timeout_ms, last);
}

void kiln_result_free(kiln_result *res)
{
    if (res == NULL)
        return;
    kiln__task_record_release(&res->rec);
    kiln_signature_free(res->values);
    kiln__free(res);
}

kiln_task_state kiln_result_state(const kiln_result *res)
{
    return res != NULL ? res->rec.state : KILN_STATE_PENDING;
}

bool kiln_result_finished(const kiln_result *res)
{
    return res != NULL && kiln__state_finished(res->rec.state);
}

const char *kiln_result_uuid(const kiln_result *res)
{
    return res != NULL ? res->rec.uuid : "";
}

const char *kiln_result_task_name(const kiln_result *res)
{
    return res != NULL ? res->rec.task_name : "";
}

const char *kiln_result_error(const kiln_result *res)
{
    return res != NULL ? res->rec.error : "";
}

int64_t kiln_result_created_at(const kiln_result *res)
{
    return res != NULL ? res->rec.created_ns : 0;
}

int64_t kiln_result_updated_at(const kiln_result *res)
{
    return res != NULL ? res->rec.updated_ns : 0;
}

unsigned kiln_result_attempts(const kiln_result *res)
{
    return res != NULL ? res->rec.attempts : 0;
}

const char *kiln_result_worker(const kiln_result *res)
{
    return res != NULL && res->rec.worker != NULL ? res->rec.worker : "";
}

int64_t kiln_result_started_at(const kiln_result *res)
{
    return res != NULL ? res->rec.started_ns : 0;
}

int64_t kiln_result_finished_at(const kiln_result *res)
{
    return res != NULL ? res->rec.finished_ns : 0;
}

int64_t kiln_result_delete_at(const kiln_result *res)
{
    return res != NULL ? res->rec.delete_ns : 0;
}

const kiln_signature *kiln_result_values(const kiln_result *res)
{
    return res != NULL ? res->values : &kiln__signature_empty;
}
