/*
 * The configuration table and the defaults. Each row ties a kiln_config
 * field to its KILN_* variable, paota's name for the same setting
 * (github.com/surendratiwari3/paota, package config, read by caarlos0/env with
 * the prefix PAOTA_) and the values it accepts.
 */
#include "config/config.h"

#include <string.h>

/* Enum fields are read and written as int. */
_Static_assert(sizeof(kiln_queue_type) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_store_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_dialect) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_retry_policy) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_unregistered_policy) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_expired_policy) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(kiln_log_format) == sizeof(int), "enum size");

/* The values RabbitMQ itself knows; plugin types (x-...) are left out
 * because the topology kiln declares relies on direct routing semantics. */
static const kiln__cfg_word exchange_types[] = {
    {"direct", 0}, {"fanout", 1}, {"topic", 2}, {"headers", 3}, {NULL, 0}};

static const kiln__cfg_word queue_types[] = {
    {"classic", KILN_QUEUE_CLASSIC}, {"quorum", KILN_QUEUE_QUORUM}, {NULL, 0}};

static const kiln__cfg_word retry_policies[] = {
    {"fibonacci", KILN_RETRY_FIBONACCI},
    {"exponential", KILN_RETRY_EXPONENTIAL},
    {NULL, 0}};

static const kiln__cfg_word expired_policies[] = {
    {"deadletter", KILN_EXPIRED_DEADLETTER},
    {"dead-letter", KILN_EXPIRED_DEADLETTER},
    {"drop", KILN_EXPIRED_DROP},
    {NULL, 0}};

static const kiln__cfg_word unregistered_policies[] = {
    {"deadletter", KILN_UNREGISTERED_DEADLETTER},
    {"dead-letter", KILN_UNREGISTERED_DEADLETTER},
    {"requeue", KILN_UNREGISTERED_REQUEUE},
    {"drop", KILN_UNREGISTERED_DROP},
    {NULL, 0}};

static const kiln__cfg_word dialects[] = {
    {"machinery", KILN_DIALECT_MACHINERY},
    {"paota", KILN_DIALECT_PAOTA},
    {"paota-headers", KILN_DIALECT_PAOTA_HEADERS},
    {"paota_headers", KILN_DIALECT_PAOTA_HEADERS},
    {NULL, 0}};

/* "null" is paota's name for its no-op store. */
static const kiln__cfg_word stores[] = {{"none", KILN_STORE_NONE},
                                        {"mongodb", KILN_STORE_MONGODB},
                                        {"null", KILN_STORE_NONE},
                                        {NULL, 0}};

static const kiln__cfg_word log_levels[] = {{"off", KILN_LOG_OFF},
                                            {"err", KILN_LOG_ERR},
                                            {"error", KILN_LOG_ERR},
                                            {"warn", KILN_LOG_WARN},
                                            {"warning", KILN_LOG_WARN},
                                            {"notice", KILN_LOG_NOTICE},
                                            {"info", KILN_LOG_INFO},
                                            {"debug", KILN_LOG_DEBUG},
                                            {NULL, 0}};

static const kiln__cfg_word log_formats[] = {
    {"text", KILN_LOG_TEXT}, {"json", KILN_LOG_JSON}, {NULL, 0}};

#define F(m)           offsetof(kiln_config, m), sizeof(((kiln_config *)0)->m)
#define NAME_MAX_BYTES (KILN_NAME_MAX - 1)
#define URL_MAX_BYTES  (KILN_URL_MAX - 1)
#define PATH_MAX_BYTES (KILN_PATH_MAX - 1)
#define HOUR_MS        3600000u
#define MONTH_MS       2592000000u /* 30 days: the cap on long durations */

const kiln__cfg_field kiln__cfg_fields[] = {
    /* broker */
    {"KILN_BROKER_URL", "PAOTA_AMQP_URL", KILN__CFG_AMQP_URL, 0, F(broker_url),
     1, URL_MAX_BYTES, NULL, NULL},
    {"KILN_EXCHANGE", "PAOTA_AMQP_EXCHANGE", KILN__CFG_NAME, KILN__CFG_ENTITY,
     F(exchange), 1, NAME_MAX_BYTES, NULL, NULL},
    {"KILN_EXCHANGE_TYPE", "PAOTA_AMQP_EXCHANGE_TYPE", KILN__CFG_WORD, 0,
     F(exchange_type), 0, 0, exchange_types,
     "direct, fanout, topic or headers"},
    {"KILN_QUEUE", "PAOTA_QUEUE_NAME", KILN__CFG_NAME, KILN__CFG_ENTITY,
     F(queue), 1, NAME_MAX_BYTES, NULL, NULL},
    {"KILN_BINDING_KEY", "PAOTA_AMQP_BINDING_KEY", KILN__CFG_NAME, 0,
     F(binding_key), 1, NAME_MAX_BYTES, NULL, NULL},
    {"KILN_QUEUE_TYPE", NULL, KILN__CFG_ENUM, 0, F(queue_type), 0, 0,
     queue_types, "classic or quorum"},
    {"KILN_MAX_PRIORITY", NULL, KILN__CFG_UINT, 0, F(max_priority), 0, 255,
     NULL, NULL},
    {"KILN_PREFETCH", "PAOTA_AMQP_PREFETCH_COUNT", KILN__CFG_UINT, 0,
     F(prefetch), 1, 65535, NULL, NULL},
    {"KILN_POOL_SIZE", "PAOTA_AMQP_CONNECTION_POOL_SIZE", KILN__CFG_UINT, 0,
     F(pool_size), 1, 64, NULL, NULL},
    {"KILN_HEARTBEAT", "PAOTA_AMQP_HEARTBEAT_INTERVAL", KILN__CFG_UINT, 0,
     F(heartbeat_s), 0, 65535, NULL, NULL},
    {"KILN_CONNECT_TIMEOUT_MS", NULL, KILN__CFG_UINT, 0, F(connect_timeout_ms),
     1, HOUR_MS, NULL, NULL},
    {"KILN_PUBLISH_TIMEOUT_MS", NULL, KILN__CFG_UINT, 0, F(publish_timeout_ms),
     1, HOUR_MS, NULL, NULL},
    {"KILN_DEAD_LETTER_EXCHANGE", NULL, KILN__CFG_NAME, KILN__CFG_ENTITY,
     F(dead_letter_exchange), 1, NAME_MAX_BYTES, NULL, NULL},
    {"KILN_DEAD_LETTER_QUEUE", "PAOTA_AMQP_FAILED_QUEUE", KILN__CFG_NAME,
     KILN__CFG_ENTITY, F(dead_letter_queue), 1, NAME_MAX_BYTES, NULL, NULL},
    /* machinery and paota declare the task queue without arguments; a
     * second declaration with other arguments is refused (406). */
    {"KILN_QUEUE_DLX_ARG", NULL, KILN__CFG_BOOL, 0, F(queue_dlx_arg), 0, 1,
     NULL, NULL},
    {"KILN_DELAY_EXCHANGE", NULL, KILN__CFG_NAME, KILN__CFG_ENTITY,
     F(delay_exchange), 1, NAME_MAX_BYTES, NULL, NULL},
    {"KILN_DELAY_LEVELS", NULL, KILN__CFG_UINT, 0, F(delay_levels), 1, 32, NULL,
     NULL},
    {"KILN_DELAY_UNIT_MS", NULL, KILN__CFG_UINT, 0, F(delay_unit_ms), 1,
     HOUR_MS, NULL, NULL},
    {"KILN_DELAY_QUEUE_TYPE", NULL, KILN__CFG_ENUM, 0, F(delay_queue_type), 0,
     0, queue_types, "classic or quorum"},
    {"KILN_TLS_CA", NULL, KILN__CFG_PATH, 0, F(tls_ca), 0, PATH_MAX_BYTES, NULL,
     NULL},
    {"KILN_TLS_CERT", NULL, KILN__CFG_PATH, 0, F(tls_cert), 0, PATH_MAX_BYTES,
     NULL, NULL},
    {"KILN_TLS_KEY", NULL, KILN__CFG_PATH, 0, F(tls_key), 0, PATH_MAX_BYTES,
     NULL, NULL},
    {"KILN_TLS_VERIFY", NULL, KILN__CFG_BOOL, 0, F(tls_verify), 0, 1, NULL,
     NULL},
    /* workers */
    {"KILN_CONCURRENCY", "PAOTA_CONCURRENCY", KILN__CFG_UINT, 0, F(concurrency),
     1, 1024, NULL, NULL},
    {"KILN_DRAIN_TIMEOUT_MS", NULL, KILN__CFG_UINT, 0, F(drain_timeout_ms), 0,
     MONTH_MS, NULL, NULL},
    /* RabbitMQ refuses messages above 512 MiB whatever its settings. */
    {"KILN_MAX_BODY_BYTES", NULL, KILN__CFG_SIZE, 0, F(max_body_bytes), 1024,
     536870912u, NULL, NULL},
    {"KILN_RETRY_POLICY", NULL, KILN__CFG_ENUM, 0, F(retry_policy), 0, 0,
     retry_policies, "fibonacci or exponential"},
    {"KILN_RETRY_BASE_MS", NULL, KILN__CFG_UINT, 0, F(retry_base_ms), 1,
     HOUR_MS, NULL, NULL},
    {"KILN_RETRY_MAX_MS", NULL, KILN__CFG_UINT, 0, F(retry_max_ms), 1, MONTH_MS,
     NULL, NULL},
    {"KILN_MAX_DELIVERIES", NULL, KILN__CFG_UINT, 0, F(max_deliveries), 1,
     1000000, NULL, NULL},
    {"KILN_UNREGISTERED", NULL, KILN__CFG_ENUM, 0, F(unregistered), 0, 0,
     unregistered_policies, "deadletter, requeue or drop"},
    {"KILN_EXPIRED", NULL, KILN__CFG_ENUM, 0, F(expired), 0, 0,
     expired_policies, "deadletter or drop"},
    {"KILN_TIME_LIMIT_MS", NULL, KILN__CFG_UINT, 0, F(time_limit_ms), 0,
     MONTH_MS, NULL, NULL},
    /* 0 or at least 1000 (validate.c). */
    {"KILN_CONSUMER_TIMEOUT_MS", NULL, KILN__CFG_UINT, 0,
     F(consumer_timeout_ms), 0, MONTH_MS, NULL, NULL},
    {"KILN_HANDLE_SIGNALS", NULL, KILN__CFG_BOOL, 0, F(handle_signals), 0, 1,
     NULL, NULL},
    /* wire */
    {"KILN_DIALECT", NULL, KILN__CFG_ENUM, 0, F(dialect), 0, 0, dialects,
     "machinery, paota or paota-headers"},
    /* store */
    {"KILN_STORE", "PAOTA_STORE", KILN__CFG_ENUM, 0, F(store), 0, 0, stores,
     "none or mongodb"},
    {"KILN_MONGODB_URL", "PAOTA_MONGO_URI", KILN__CFG_MONGO_URL, 0,
     F(mongodb_url), 1, URL_MAX_BYTES, NULL, NULL},
    /* MongoDB caps database names at 63 bytes. */
    {"KILN_MONGODB_DATABASE", "PAOTA_MONGO_DB_NAME", KILN__CFG_NAME,
     KILN__CFG_MONGO_DB, F(mongodb_database), 1, 63, NULL, NULL},
    /* A TTL index's expireAfterSeconds is a 32-bit signed integer. */
    {"KILN_RESULTS_EXPIRE", NULL, KILN__CFG_UINT, 0, F(results_expire_s), 0,
     2147483647u, NULL, NULL},
    {"KILN_STORE_PLUGIN", NULL, KILN__CFG_PATH, 0, F(store_plugin), 0,
     PATH_MAX_BYTES, NULL, NULL},
    /* logging */
    {"KILN_LOG_LEVEL", NULL, KILN__CFG_ENUM, 0, F(log_level), 0, 0, log_levels,
     "err, warn, notice, info, debug or off"},
    {"KILN_LOG_FORMAT", NULL, KILN__CFG_ENUM, 0, F(log_format), 0, 0,
     log_formats, "text or json"},
};

_Static_assert(KILN__ARRAY_LEN(kiln__cfg_fields) == KILN__CFG_NFIELDS,
               "one row per kiln_config field");

size_t kiln__cfg_index(size_t offset)
{
    size_t i;

    for (i = 0; i < KILN__CFG_NFIELDS; i++)
        if (kiln__cfg_fields[i].offset == offset)
            break;
    return i;
}

const char *kiln__cfg_name(const char *const *used, size_t i)
{
    if (i >= KILN__CFG_NFIELDS)
        return "?";
    if (used != NULL && used[i] != NULL)
        return used[i];
    return kiln__cfg_fields[i].var;
}

/* The defaults aim at a production worker: durable, confirmed, bounded.
 * Concurrency is a fixed 8 rather than the CPU count so that one
 * configuration behaves the same on every host (containers often report
 * the host's CPUs, not their quota), and because tasks are mostly I/O
 * bound. The dead-letter and delay names are the queue's and exchange's
 * with a suffix; kiln_config_from_env keeps them following a renamed
 * queue or exchange. */
void kiln_config_init(kiln_config *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    kiln__strlcpy(cfg->broker_url, "amqp://guest:guest@127.0.0.1:5672/",
                  sizeof(cfg->broker_url));
    kiln__strlcpy(cfg->exchange, "kiln_tasks", sizeof(cfg->exchange));
    kiln__strlcpy(cfg->exchange_type, "direct", sizeof(cfg->exchange_type));
    kiln__strlcpy(cfg->queue, "kiln_tasks", sizeof(cfg->queue));
    kiln__strlcpy(cfg->binding_key, "kiln_task", sizeof(cfg->binding_key));
    cfg->queue_type = KILN_QUEUE_CLASSIC;
    cfg->max_priority = 0;
    cfg->prefetch = 128;
    cfg->pool_size = 2;
    cfg->heartbeat_s = 30;
    cfg->connect_timeout_ms = 10000;
    cfg->publish_timeout_ms = 10000;
    kiln__strlcpy(cfg->dead_letter_exchange, "kiln_tasks.dlx",
                  sizeof(cfg->dead_letter_exchange));
    kiln__strlcpy(cfg->dead_letter_queue, "kiln_tasks.dead",
                  sizeof(cfg->dead_letter_queue));
    cfg->queue_dlx_arg = true;
    kiln__strlcpy(cfg->delay_exchange, "kiln_tasks.delay",
                  sizeof(cfg->delay_exchange));
    /* Delays are rounded up to whole units, so a task never starts early
     * and at most one unit late (plus a few ms per level it waits in):
     * 50 ms keeps that well inside a tenth of a second, and 32 levels of
     * it still reach 50 ms x (2^32 - 1), about 6.8 years (kombu's 28
     * levels of 1 s reach 8.5 years but are up to a second late). */
    cfg->delay_levels = 32;
    cfg->delay_unit_ms = 50;
    /* A classic queue dead-letters at most once: a message whose step
     * falls due as the broker stops can be lost between two levels. A
     * quorum level keeps it until the next level has confirmed it. */
    cfg->delay_queue_type = KILN_QUEUE_QUORUM;
    cfg->tls_verify = true;
    cfg->concurrency = 8;
    cfg->drain_timeout_ms = 30000;
    cfg->max_body_bytes = (size_t)16 * 1024 * 1024;
    cfg->retry_policy = KILN_RETRY_FIBONACCI;
    cfg->retry_base_ms = 1000;
    cfg->retry_max_ms = HOUR_MS;
    cfg->max_deliveries = 10;
    cfg->unregistered = KILN_UNREGISTERED_DEADLETTER;
    cfg->expired = KILN_EXPIRED_DEADLETTER;
    cfg->time_limit_ms = 0;
    /* RabbitMQ's default consumer_timeout (3.8.15 and later). */
    cfg->consumer_timeout_ms = 1800000;
    cfg->handle_signals = true;
    cfg->dialect = KILN_DIALECT_MACHINERY;
    cfg->store = KILN_STORE_NONE;
    kiln__strlcpy(cfg->mongodb_url, "mongodb://127.0.0.1:27017",
                  sizeof(cfg->mongodb_url));
    kiln__strlcpy(cfg->mongodb_database, "kiln", sizeof(cfg->mongodb_database));
    cfg->results_expire_s = 3600;
    cfg->log_level = KILN_LOG_INFO;
    cfg->log_format = KILN_LOG_TEXT;
}
