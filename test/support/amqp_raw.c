/* A plain rabbitmq-c connection for integration tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test/support/amqp_raw.h"

#include "broker/delay.h"
#include "core/core.h"

#include <amqp_tcp_socket.h>
#include <stdlib.h>

const char *test_amqp_url(void)
{
    const char *url = getenv("KILN_TEST_AMQP_URL");

    if (url == NULL || url[0] == '\0')
        fail_msg("KILN_TEST_AMQP_URL is not set: run the integration tests "
                 "with `make check-integration` (or scripts/with-rabbitmq.sh)"
                 ", which starts a private RabbitMQ node");
    return url;
}

amqp_connection_state_t test_amqp_open(void)
{
    char buf[KILN_URL_MAX];
    struct amqp_connection_info ci;
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    amqp_rpc_reply_t r;

    kiln__strlcpy(buf, test_amqp_url(), sizeof(buf));
    assert_int_equal(amqp_parse_url(buf, &ci), AMQP_STATUS_OK);
    assert_int_equal(amqp_socket_open(s, ci.host, ci.port), AMQP_STATUS_OK);
    r = amqp_login(c, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0,
                   AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    (void)amqp_channel_open(c, 1);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    return c;
}

void test_amqp_close(amqp_connection_state_t c)
{
    (void)amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    (void)amqp_destroy_connection(c);
}

long test_amqp_count(const char *queue)
{
    amqp_connection_state_t c = test_amqp_open();
    amqp_queue_declare_ok_t *ok;
    long n;

    ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0,
                            amqp_empty_table);
    n = ok != NULL ? (long)ok->message_count : -1;
    if (ok == NULL)
        (void)amqp_destroy_connection(c); /* channel closed by the 404 */
    else
        test_amqp_close(c);
    return n;
}

/* A missing name closes the channel (404): open it again. */
static void delete_one(amqp_connection_state_t c, const char *name, bool queue)
{
    if (queue)
        (void)amqp_queue_delete(c, 1, amqp_cstring_bytes(name), 0, 0);
    else
        (void)amqp_exchange_delete(c, 1, amqp_cstring_bytes(name), 0);
    if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_channel_close_ok_t ok = {0};
        (void)amqp_send_method(c, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        (void)amqp_channel_open(c, 1);
        (void)amqp_get_rpc_reply(c);
    }
}

void test_amqp_delete_topology(amqp_connection_state_t c,
                               const kiln_config *cfg)
{
    char delivery[KILN_NAME_MAX];
    kiln__delay_level lv;

    delete_one(c, cfg->queue, true);
    delete_one(c, cfg->dead_letter_queue, true);
    delete_one(c, cfg->exchange, false);
    delete_one(c, cfg->dead_letter_exchange, false);
    for (unsigned k = 0; k < cfg->delay_levels; k++) {
        if (kiln__delay_level_get(cfg, k, &lv, NULL) != KILN_OK)
            continue;
        delete_one(c, lv.name, true);
        delete_one(c, lv.name, false);
    }
    if (kiln__delay_delivery(cfg, delivery, sizeof(delivery), NULL) == KILN_OK)
        delete_one(c, delivery, false);
    if (kiln__delay_probe(cfg, delivery, sizeof(delivery), NULL) == KILN_OK) {
        delete_one(c, delivery, true);
        delete_one(c, delivery, false);
    }
    if (kiln__delay_unroutable(cfg, delivery, sizeof(delivery), NULL) ==
        KILN_OK) {
        delete_one(c, delivery, true);
        delete_one(c, delivery, false);
    }
}
