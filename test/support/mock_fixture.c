#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/mock_fixture.h"

#include <string.h>

kiln__broker *open_conn(kiln__mock_server *srv, const char *queue,
                        unsigned prefetch)
{
    kiln_error err;
    kiln__broker *b = kiln__mock_broker_new(srv, &err);

    assert_non_null(b);
    assert_int_equal(kiln__broker_connect(b, &err), KILN_OK);
    if (queue != NULL)
        assert_int_equal(kiln__broker_subscribe(b, queue, prefetch, &err),
                         KILN_OK);
    return b;
}

kiln__message text_msg(const char *exchange, const char *rk, const char *body)
{
    return (kiln__message){.exchange = exchange,
                           .routing_key = rk,
                           .body = body,
                           .body_len = strlen(body),
                           .persistent = true};
}

kiln_task_state get_state(kiln__store *s, const char *uuid,
                          kiln__task_record *rec)
{
    assert_int_equal(kiln__store_get(s, uuid, rec, NULL), KILN_OK);
    return rec->state;
}
