/*
 * kiln_config_validate: every field alone, then the rules between fields.
 * A message names the variable of the field that has to change.
 */
#include "config/config.h"

#include <stdio.h>
#include <string.h>

#define IDX(m) kiln__cfg_index(offsetof(kiln_config, m))

/* Fills err with `VAR="value": reason` for row i. */
static kiln_err bad_field(const kiln_config *cfg, const char *const *used,
                          size_t i, const char *reason, kiln_error *err)
{
    char text[KILN_URL_MAX];

    kiln__cfg_text(&kiln__cfg_fields[i], cfg, text, sizeof(text));
    return kiln__cfg_bad(err, kiln__cfg_name(used, i), text, "%s", reason);
}

/* Quorum queues have no x-max-priority: RabbitMQ refuses the declare. */
static kiln_err check_queue(const kiln_config *cfg, const char *const *used,
                            kiln_error *err)
{
    char why[160];

    if (cfg->queue_type == KILN_QUEUE_QUORUM && cfg->max_priority > 0) {
        (void)snprintf(why, sizeof(why),
                       "a quorum queue (%s) has no priorities; use 0 or a "
                       "classic queue",
                       kiln__cfg_name(used, IDX(queue_type)));
        return bad_field(cfg, used, IDX(max_priority), why, err);
    }
    return KILN_OK;
}

/* kiln hands a delivery back, or leases it, at half the broker's
 * consumer_timeout; below a second that would be most of the time. */
static kiln_err check_consumer_timeout(const kiln_config *cfg,
                                       const char *const *used, kiln_error *err)
{
    if (cfg->consumer_timeout_ms > 0 && cfg->consumer_timeout_ms < 1000)
        return bad_field(cfg, used, IDX(consumer_timeout_ms),
                         "expected 0 (the broker has no consumer_timeout) or "
                         "1000 to 2592000000 ms",
                         err);
    return KILN_OK;
}

/* TLS files only make sense on amqps://, and a client certificate and its
 * key only as a pair. */
static kiln_err check_tls(const kiln_config *cfg, const char *const *used,
                          kiln_error *err)
{
    const size_t rows[] = {IDX(tls_ca), IDX(tls_cert), IDX(tls_key)};
    bool tls = strncmp(cfg->broker_url, "amqps://", 8) == 0;
    char why[160];

    for (size_t k = 0; k < KILN__ARRAY_LEN(rows); k++) {
        const char *v = (const char *)cfg + kiln__cfg_fields[rows[k]].offset;
        if (v[0] != '\0' && !tls) {
            (void)snprintf(why, sizeof(why), "TLS files need an amqps:// %s",
                           kiln__cfg_name(used, IDX(broker_url)));
            return bad_field(cfg, used, rows[k], why, err);
        }
    }
    if (cfg->tls_key[0] != '\0' && cfg->tls_cert[0] == '\0') {
        (void)snprintf(why, sizeof(why), "a client key needs %s as well",
                       kiln__cfg_name(used, IDX(tls_cert)));
        return bad_field(cfg, used, IDX(tls_key), why, err);
    }
    if (cfg->tls_cert[0] != '\0' && cfg->tls_key[0] == '\0') {
        (void)snprintf(why, sizeof(why),
                       "a client certificate needs %s as well",
                       kiln__cfg_name(used, IDX(tls_key)));
        return bad_field(cfg, used, IDX(tls_cert), why, err);
    }
    return KILN_OK;
}

/* A retry waits in the delay queues, so the longest retry delay must fit
 * in what the cascade can hold: unit * (2^levels - 1). */
static kiln_err check_retry(const kiln_config *cfg, const char *const *used,
                            kiln_error *err)
{
    uint64_t levels = cfg->delay_levels > 32 ? 32 : cfg->delay_levels;
    uint64_t longest = (uint64_t)cfg->delay_unit_ms * ((1ull << levels) - 1);
    char why[200];

    if (cfg->retry_base_ms > cfg->retry_max_ms) {
        (void)snprintf(why, sizeof(why), "is more than %s (%u)",
                       kiln__cfg_name(used, IDX(retry_max_ms)),
                       cfg->retry_max_ms);
        return bad_field(cfg, used, IDX(retry_base_ms), why, err);
    }
    if (cfg->retry_max_ms > longest) {
        (void)snprintf(why, sizeof(why),
                       "is longer than the delay queues hold: %s x (2^%s - 1) "
                       "= %llu ms",
                       kiln__cfg_name(used, IDX(delay_unit_ms)),
                       kiln__cfg_name(used, IDX(delay_levels)),
                       (unsigned long long)longest);
        return bad_field(cfg, used, IDX(retry_max_ms), why, err);
    }
    return KILN_OK;
}

/* The dead-letter and delay exchanges route by their own rules; sharing a
 * name with the task exchange (or a queue with the dead-letter queue)
 * would loop messages back to the workers. */
static kiln_err check_names(const kiln_config *cfg, const char *const *used,
                            kiln_error *err)
{
    static const struct {
        size_t a, b; /* offsets: field a must differ from field b */
    } pairs[] = {
        {offsetof(kiln_config, dead_letter_exchange),
         offsetof(kiln_config, exchange)},
        {offsetof(kiln_config, delay_exchange),
         offsetof(kiln_config, exchange)},
        {offsetof(kiln_config, delay_exchange),
         offsetof(kiln_config, dead_letter_exchange)},
        {offsetof(kiln_config, dead_letter_queue),
         offsetof(kiln_config, queue)},
    };
    char why[160];

    for (size_t k = 0; k < KILN__ARRAY_LEN(pairs); k++) {
        const char *a = (const char *)cfg + pairs[k].a;
        const char *b = (const char *)cfg + pairs[k].b;

        if (strcmp(a, b) == 0) {
            (void)snprintf(why, sizeof(why), "must differ from %s",
                           kiln__cfg_name(used, kiln__cfg_index(pairs[k].b)));
            return bad_field(cfg, used, kiln__cfg_index(pairs[k].a), why, err);
        }
    }
    return KILN_OK;
}

kiln_err kiln__cfg_validate(const kiln_config *cfg, const char *const *used,
                            kiln_error *err)
{
    kiln_err rc;

    for (size_t i = 0; i < KILN__CFG_NFIELDS; i++) {
        rc = kiln__cfg_check(&kiln__cfg_fields[i], kiln__cfg_name(used, i), cfg,
                             err);
        if (rc != KILN_OK)
            return rc;
    }
    if ((rc = check_queue(cfg, used, err)) != KILN_OK ||
        (rc = check_consumer_timeout(cfg, used, err)) != KILN_OK ||
        (rc = check_tls(cfg, used, err)) != KILN_OK ||
        (rc = check_retry(cfg, used, err)) != KILN_OK ||
        (rc = check_names(cfg, used, err)) != KILN_OK)
        return rc;
    kiln__ok(err);
    return KILN_OK;
}

kiln_err kiln_config_validate(const kiln_config *cfg, kiln_error *err)
{
    if (cfg == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "kiln_config_validate: cfg is NULL");
    return kiln__cfg_validate(cfg, NULL, err);
}
