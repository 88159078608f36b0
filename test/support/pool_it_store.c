/* Worker-pool integration tests with a store (pool_it_store.h). */
#include "test/support/pool_it_store.h"

const char *it_mongo_url(void)
{
    return it_env_need("KILN_TEST_MONGODB_URL");
}

int it_setup_store(void **state, const char *tag)
{
    it_fix *f;
    char *sfx;

    it_setup(state, tag);
    f = *state;
    f->cfg.store = KILN_STORE_MONGODB;
    kiln__strlcpy(f->cfg.mongodb_url, it_mongo_url(),
                  sizeof(f->cfg.mongodb_url));
    /* The queue name ends with this test's random suffix: reuse it. */
    sfx = strrchr(f->cfg.binding_key, '.');
    assert_non_null(sfx);
    (void)snprintf(f->cfg.mongodb_database, sizeof(f->cfg.mongodb_database),
                   "kiln_it_%s", sfx + 1);
    return 0;
}

int it_teardown_store(void **state)
{
    it_fix *f = *state;
    mongoc_client_t *c;

    it_kill_all(f);
    c = mongoc_client_new(it_mongo_url());

    if (c != NULL) {
        mongoc_database_t *db =
            mongoc_client_get_database(c, f->cfg.mongodb_database);
        (void)mongoc_database_drop(db, NULL);
        mongoc_database_destroy(db);
        mongoc_client_destroy(c);
    }
    return it_teardown(state);
}

kiln_store *it_open_store(const it_fix *f)
{
    kiln_error err;
    kiln_store *st = kiln_store_new(&f->cfg, &err);

    if (st == NULL)
        fail_msg("kiln_store_new: %s", err.message);
    return st;
}

kiln_result *it_expect_final(kiln_store *st, const char *uuid,
                             kiln_task_state want, const char *error_part)
{
    kiln_result *res = NULL;
    kiln_error err;
    kiln_err rc = kiln_store_wait_result(st, uuid, 30000, &res, &err);

    if (rc != KILN_OK)
        fail_msg("wait_result %s: %s: %s", uuid, kiln_strerror(rc),
                 err.message);
    if (kiln_result_state(res) != want)
        fail_msg("task %s: state %s, want %s (error \"%s\")", uuid,
                 kiln_task_state_name(kiln_result_state(res)),
                 kiln_task_state_name(want), kiln_result_error(res));
    if (error_part != NULL &&
        strstr(kiln_result_error(res), error_part) == NULL)
        fail_msg("task %s: error \"%s\" does not mention \"%s\"", uuid,
                 kiln_result_error(res), error_part);
    return res;
}
