/* A plain rabbitmq-c connection for integration tests' set-up checks and
 * clean-up, independent of the code under test. */
#ifndef KILN_TEST_AMQP_RAW_H
#define KILN_TEST_AMQP_RAW_H

#include <kiln.h>

#include <amqp.h>

/* KILN_TEST_AMQP_URL; fails the test, with how to run it, when unset. */
const char *test_amqp_url(void);

/* A connection with channel 1 open; fails the test when it cannot. */
amqp_connection_state_t test_amqp_open(void);
void test_amqp_close(amqp_connection_state_t c);

/* Messages ready in `queue` (passive declare), or -1 when it is missing. */
long test_amqp_count(const char *queue);

/* Deletes what a kiln broker or pool declares for `cfg` through `c`: the
 * task queue and exchange, the dead-letter pair, and the delay cascade
 * named after cfg->delay_exchange (each level's queue and exchange, the
 * delivery exchange, and the probe and unroutable queues and exchanges). A name
 * that does not exist costs the channel, which is opened again; nothing here
 * fails the test, so a teardown may call it after a failure. */
void test_amqp_delete_topology(amqp_connection_state_t c,
                               const kiln_config *cfg);

#endif
