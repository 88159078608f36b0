/* The in-memory store: its state rules, many tasks, waiting for a task to
 * finish, and every allocation failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/mock_fixture.h"

#include <pthread.h>
#include <stdio.h>
#include <time.h>

static kiln_err set_state(kiln__store *s, const char *uuid, const char *name,
                          kiln_task_state state, const kiln__values *res,
                          const char *error)
{
    kiln__state_update u = {uuid, name, state, res, error, false};

    return kiln__store_set(s, &u, NULL);
}

static void test_store_transitions(void **state)
{
    kiln__store *s = kiln__mock_store_new(NULL);
    kiln__value v = {.type = KILN_TYPE_INT64, .v.i = 7};
    kiln__values res = {0};
    kiln__task_record r;
    kiln_error err;

    (void)state;
    assert_int_equal(kiln__values_add(&res, &v, NULL), KILN_OK);
    assert_int_equal(set_state(s, "u1", "add", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_PENDING);
    assert_string_equal(r.task_name, "add");
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "u1", NULL, KILN_STATE_RECEIVED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(set_state(s, "u1", NULL, KILN_STATE_STARTED, NULL, NULL),
                     KILN_OK);
    /* A producer's PENDING that arrives late does not undo RECEIVED. */
    assert_int_equal(set_state(s, "u1", "add", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_STARTED);
    assert_string_equal(r.task_name, "add"); /* kept from the first write */
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "u1", "add", KILN_STATE_SUCCESS, &res, NULL),
                     KILN_OK);
    /* A late RECEIVED (a duplicate delivery) after SUCCESS is ignored. */
    assert_int_equal(set_state(s, "u1", "add", KILN_STATE_RECEIVED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(
        set_state(s, "u1", "add", KILN_STATE_FAILURE, NULL, "late"), KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_SUCCESS);
    assert_int_equal(r.results.n, 1);
    assert_int_equal(r.results.items[0].v.i, 7);
    assert_string_equal(r.error, "");
    assert_true(r.created_ns > 0 && r.updated_ns >= r.created_ns);
    kiln__task_record_release(&r);

    /* A retried task goes round again; FAILURE keeps its error. */
    assert_int_equal(set_state(s, "u2", "f", KILN_STATE_RETRY, NULL, "again"),
                     KILN_OK);
    assert_int_equal(set_state(s, "u2", "f", KILN_STATE_RECEIVED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(set_state(s, "u2", "f", KILN_STATE_FAILURE, NULL, "boom"),
                     KILN_OK);
    assert_int_equal(get_state(s, "u2", &r), KILN_STATE_FAILURE);
    assert_string_equal(r.error, "boom");
    kiln__task_record_release(&r);

    assert_int_equal(kiln__store_get(s, "u3", &r, &err), KILN_ENOTFOUND);
    assert_int_equal(set_state(s, "", "x", KILN_STATE_PENDING, NULL, NULL),
                     KILN_EINVAL);
    assert_int_equal(set_state(s, NULL, "x", KILN_STATE_PENDING, NULL, NULL),
                     KILN_EINVAL);
    assert_int_equal(set_state(s, "u3", "x", (kiln_task_state)99, NULL, NULL),
                     KILN_EINVAL);
    kiln__mock_store_fail_writes(s, 1);
    assert_int_equal(set_state(s, "u3", "x", KILN_STATE_PENDING, NULL, NULL),
                     KILN_ESTORE);
    assert_int_equal(set_state(s, "u3", "x", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(kiln__mock_store_count(s, -1), 3);
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_SUCCESS), 1);
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_FAILURE), 1);
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_PENDING), 1);
    assert_string_equal(kiln__state_name(KILN_STATE_RETRY), "RETRY");
    assert_string_equal(kiln__state_name((kiln_task_state)42), "UNKNOWN");
    kiln__values_clear(&res);
    kiln__store_destroy(s);
    kiln__store_destroy(NULL);
}

static kiln_err send_failed(kiln__store *s, const char *uuid, const char *why)
{
    kiln__state_update u = {.uuid = uuid,
                            .task_name = "sent",
                            .state = KILN_STATE_FAILURE,
                            .error = why};

    return kiln__store_send_failed(s, &u, NULL);
}

/* Rule 4: a failed send's FAILURE applies over PENDING only, and any
 * later write replaces it: a new send's PENDING, a worker's state. */
static void test_store_send_failed(void **state)
{
    kiln__store *s = kiln__mock_store_new(NULL);
    kiln__state_update started = {.uuid = "u1", .state = KILN_STATE_STARTED};
    kiln__task_record r;

    (void)state;
    assert_int_equal(set_state(s, "u1", "sent", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(send_failed(s, "u1", "not sent: unroutable"), KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_FAILURE);
    assert_string_equal(r.error, "not sent: unroutable");
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "u1", "sent", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_PENDING);
    assert_string_equal(r.error, "");
    kiln__task_record_release(&r);
    assert_int_equal(send_failed(s, "u1", "not sent: nacked"), KILN_OK);
    assert_int_equal(kiln__store_set(s, &started, NULL), KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_STARTED);
    assert_string_equal(r.task_name, "sent");
    assert_int_equal(r.attempts, 1);
    kiln__task_record_release(&r);
    /* Never over a worker's state; once finished by a worker, final. */
    assert_int_equal(send_failed(s, "u1", "late"), KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_STARTED);
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "u1", NULL, KILN_STATE_SUCCESS, NULL, NULL),
                     KILN_OK);
    assert_int_equal(send_failed(s, "u1", "late"), KILN_OK);
    assert_int_equal(set_state(s, "u1", "sent", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "u1", &r), KILN_STATE_SUCCESS);
    kiln__task_record_release(&r);
    started.state = KILN_STATE_RETRY;
    assert_int_equal(kiln__store_send_failed(s, &started, NULL), KILN_EINVAL);
    kiln__store_destroy(s);
}

/* The times the mock records: the last start, the finish; no worker and
 * no expiry (it keeps documents for ever). */
static void test_store_times(void **state)
{
    kiln__store *s = kiln__mock_store_new(NULL);
    kiln__task_record r;
    int64_t first;

    (void)state;
    assert_int_equal(set_state(s, "t", "x", KILN_STATE_PENDING, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "t", &r), KILN_STATE_PENDING);
    assert_true(r.started_ns == 0 && r.finished_ns == 0 && r.delete_ns == 0);
    assert_null(r.worker);
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "t", "x", KILN_STATE_STARTED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "t", &r), KILN_STATE_STARTED);
    first = r.started_ns;
    assert_true(first >= r.created_ns && r.finished_ns == 0);
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "t", "x", KILN_STATE_RETRY, NULL, "again"),
                     KILN_OK);
    assert_int_equal(get_state(s, "t", &r), KILN_STATE_RETRY);
    assert_true(r.started_ns == first); /* kept across other writes */
    kiln__task_record_release(&r);
    assert_int_equal(set_state(s, "t", "x", KILN_STATE_STARTED, NULL, NULL),
                     KILN_OK);
    assert_int_equal(set_state(s, "t", "x", KILN_STATE_SUCCESS, NULL, NULL),
                     KILN_OK);
    assert_int_equal(get_state(s, "t", &r), KILN_STATE_SUCCESS);
    assert_int_equal(r.attempts, 2);
    assert_true(r.started_ns >= first);
    assert_true(r.finished_ns >= r.started_ns);
    assert_true(r.finished_ns == r.updated_ns);
    assert_true(r.delete_ns == 0);
    kiln__task_record_release(&r);
    kiln__store_destroy(s);
}

static void test_store_many(void **state)
{
    kiln__store *s = kiln__mock_store_new(NULL);
    kiln__task_record r;
    char uuid[32];

    (void)state;
    for (int i = 0; i < 3000; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_%d", i);
        assert_int_equal(
            set_state(s, uuid, "n",
                      i % 2 ? KILN_STATE_SUCCESS : KILN_STATE_STARTED, NULL,
                      NULL),
            KILN_OK);
    }
    for (int i = 0; i < 3000; i++) {
        (void)snprintf(uuid, sizeof(uuid), "task_%d", i);
        assert_int_equal(get_state(s, uuid, &r),
                         i % 2 ? KILN_STATE_SUCCESS : KILN_STATE_STARTED);
        assert_string_equal(r.uuid, uuid);
        kiln__task_record_release(&r);
    }
    assert_int_equal(kiln__mock_store_count(s, KILN_STATE_SUCCESS), 1500);
    kiln__store_destroy(s);
}

struct late_writer {
    pthread_t tid;
    kiln__store *s;
};

static void *late_writer_main(void *arg)
{
    struct late_writer *w = arg;
    struct timespec pause = {0, 20000000};

    (void)nanosleep(&pause, NULL);
    (void)set_state(w->s, "slow", "n", KILN_STATE_SUCCESS, NULL, NULL);
    return NULL;
}

static void test_store_wait(void **state)
{
    struct late_writer w = {.s = kiln__mock_store_new(NULL)};

    (void)state;
    assert_int_equal(kiln__mock_store_wait_finished(w.s, "slow", 10),
                     KILN_ETIMEDOUT);
    assert_int_equal(pthread_create(&w.tid, NULL, late_writer_main, &w), 0);
    assert_int_equal(kiln__mock_store_wait_finished(w.s, "slow", 5000),
                     KILN_OK);
    assert_int_equal(pthread_join(w.tid, NULL), 0);
    assert_int_equal(kiln__mock_store_wait_finished(w.s, "slow", 0), KILN_OK);
    kiln__store_destroy(w.s);
}

static void test_store_alloc_failures(void **state)
{
    kiln__value v = {.type = KILN_TYPE_STRING, .v.s = (char *)"result"};
    kiln__values res = {0};
    bool fired = true;

    (void)state;
    assert_int_equal(kiln__values_add(&res, &v, NULL), KILN_OK);
    for (long n = 0; fired; n++) {
        kiln__store *s;
        kiln__task_record r = {0};
        kiln_err rc = KILN_ENOMEM, got = KILN_ENOMEM;

        kiln__alloc_fail_after(n);
        if ((s = kiln__mock_store_new(NULL)) != NULL &&
            (rc = set_state(s, "u", "n", KILN_STATE_SUCCESS, &res, NULL)) ==
                KILN_OK)
            got = kiln__store_get(s, "u", &r, NULL);
        fired = kiln__alloc_failed();
        kiln__alloc_fail_after(-1);
        assert_true(rc == KILN_OK || rc == KILN_ENOMEM);
        assert_true(got == KILN_OK || got == KILN_ENOMEM);
        if (got == KILN_OK)
            assert_string_equal(r.results.items[0].v.s, "result");
        kiln__task_record_release(&r);
        kiln__store_destroy(s);
    }
    kiln__values_clear(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_transitions),
        cmocka_unit_test(test_store_send_failed),
        cmocka_unit_test(test_store_times),
        cmocka_unit_test(test_store_many),
        cmocka_unit_test(test_store_wait),
        cmocka_unit_test(test_store_alloc_failures),
    };

    kiln_log_set_level(KILN_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
