/* The binary delay cascade's names, keys and patterns (broker/delay.h):
 * arithmetic on the configuration, no I/O. */
#include "broker/delay.h"

#include <stdio.h>
#include <string.h>

/* AMQP short strings (exchange names, routing and binding keys). */
#define SHORTSTR_MAX 255

#define DELIVERY_SUFFIX   ".delivery"
#define PROBE_SUFFIX      ".probe"
#define UNROUTABLE_SUFFIX ".unroutable"
/* The longest suffix a name of the cascade gets: ".unroutable" (a level's
 * is at most ".quorum.31"). */
#define SUFFIX_MAX 11

static unsigned levels_of(const kiln_config *cfg)
{
    return cfg->delay_levels > KILN__DELAY_MAX_LEVELS ? KILN__DELAY_MAX_LEVELS
                                                      : cfg->delay_levels;
}

kiln_err kiln__delay_check(const kiln_config *cfg, kiln_error *err)
{
    size_t len;

    if (cfg == NULL)
        return kiln__fail(err, KILN_EINVAL, "delay: config is required");
    if (cfg->delay_levels < 1 || cfg->delay_levels > KILN__DELAY_MAX_LEVELS)
        return kiln__fail(err, KILN_EINVAL,
                          "KILN_DELAY_LEVELS=%u: expected 1 to %d",
                          cfg->delay_levels, KILN__DELAY_MAX_LEVELS);
    if (cfg->delay_unit_ms < 1)
        return kiln__fail(err, KILN_EINVAL,
                          "KILN_DELAY_UNIT_MS=0: expected at least 1");
    len = strnlen(cfg->delay_exchange, sizeof(cfg->delay_exchange));
    if (len == 0 || len == sizeof(cfg->delay_exchange))
        return kiln__fail(err, KILN_EINVAL,
                          "KILN_DELAY_EXCHANGE: expected a name of 1 to %d "
                          "bytes",
                          SHORTSTR_MAX - SUFFIX_MAX);
    if (len > SHORTSTR_MAX - SUFFIX_MAX)
        return kiln__fail(err, KILN_EINVAL,
                          "KILN_DELAY_EXCHANGE is %zu bytes; expected at most "
                          "%d, since the delay queues append up to %d "
                          "(\"" UNROUTABLE_SUFFIX "\")",
                          len, SHORTSTR_MAX - SUFFIX_MAX, SUFFIX_MAX);
    return KILN_OK;
}

uint64_t kiln__delay_max_ms(const kiln_config *cfg)
{
    return (uint64_t)cfg->delay_unit_ms * ((1ull << levels_of(cfg)) - 1);
}

kiln_err kiln__delay_units(const kiln_config *cfg, uint64_t delay_ms,
                           uint64_t *units, kiln_error *err)
{
    kiln_err rc;
    uint64_t u;

    if ((rc = kiln__delay_check(cfg, err)) != KILN_OK)
        return rc;
    /* Rounded up, so the wait is never shorter than asked for. */
    u = delay_ms / cfg->delay_unit_ms + (delay_ms % cfg->delay_unit_ms != 0);
    if (u > (1ull << cfg->delay_levels) - 1)
        return kiln__fail(
            err, KILN_EINVAL,
            "delay of %llu ms is longer than the delay queues hold: "
            "KILN_DELAY_UNIT_MS=%u x (2^KILN_DELAY_LEVELS=%u - 1) = %llu ms",
            (unsigned long long)delay_ms, cfg->delay_unit_ms, cfg->delay_levels,
            (unsigned long long)kiln__delay_max_ms(cfg));
    *units = u;
    return KILN_OK;
}

/* Writes "<KILN_DELAY_EXCHANGE>.<k>" (or ".quorum.<k>"). */
static kiln_err level_name(const kiln_config *cfg, unsigned k, char *out,
                           size_t n, kiln_error *err)
{
    int len = snprintf(
        out, n, "%s%s.%u", cfg->delay_exchange,
        cfg->delay_queue_type == KILN_QUEUE_QUORUM ? ".quorum" : "", k);

    if (len < 0 || (size_t)len >= n)
        return kiln__fail(err, KILN_EINVAL, "delay level %u: buffer of %zu", k,
                          n);
    return KILN_OK;
}

/* Writes "<KILN_DELAY_EXCHANGE><suffix>". */
static kiln_err suffixed(const kiln_config *cfg, const char *suffix, char *out,
                         size_t n, kiln_error *err)
{
    kiln_err rc;
    int len;

    if ((rc = kiln__delay_check(cfg, err)) != KILN_OK)
        return rc;
    len = snprintf(out, n, "%s%s", cfg->delay_exchange, suffix);
    if (len < 0 || (size_t)len >= n)
        return kiln__fail(err, KILN_EINVAL,
                          "delay queues '%s%s': buffer of %zu",
                          cfg->delay_exchange, suffix, n);
    return KILN_OK;
}

kiln_err kiln__delay_delivery(const kiln_config *cfg, char *out, size_t n,
                              kiln_error *err)
{
    return suffixed(cfg, DELIVERY_SUFFIX, out, n, err);
}

kiln_err kiln__delay_probe(const kiln_config *cfg, char *out, size_t n,
                           kiln_error *err)
{
    return suffixed(cfg, PROBE_SUFFIX, out, n, err);
}

kiln_err kiln__delay_unroutable(const kiln_config *cfg, char *out, size_t n,
                                kiln_error *err)
{
    return suffixed(cfg, UNROUTABLE_SUFFIX, out, n, err);
}

/* Writes `words` words "*." and then `tail` into out[n]. */
static kiln_err pattern(unsigned words, const char *tail, char *out, size_t n,
                        kiln_error *err)
{
    size_t tail_len = strlen(tail);

    if (2 * (size_t)words + tail_len >= n)
        return kiln__fail(err, KILN_EINVAL, "delay pattern: buffer of %zu", n);
    for (size_t i = 0; i < words; i++) {
        out[2 * i] = '*';
        out[2 * i + 1] = '.';
    }
    memcpy(out + 2 * (size_t)words, tail, tail_len + 1);
    return KILN_OK;
}

kiln_err kiln__delay_level_get(const kiln_config *cfg, unsigned k,
                               kiln__delay_level *out, kiln_error *err)
{
    kiln_err rc;

    if ((rc = kiln__delay_check(cfg, err)) != KILN_OK)
        return rc;
    if (k >= cfg->delay_levels)
        return kiln__fail(err, KILN_EINVAL,
                          "delay level %u: KILN_DELAY_LEVELS=%u has 0 to %u", k,
                          cfg->delay_levels, cfg->delay_levels - 1);
    memset(out, 0, sizeof(*out));
    out->level = k;
    out->ttl_ms = (uint64_t)cfg->delay_unit_ms << k;
    if ((rc = level_name(cfg, k, out->name, sizeof(out->name), err)) !=
            KILN_OK ||
        (rc = k > 0 ? level_name(cfg, k - 1, out->next, sizeof(out->next), err)
                    : kiln__delay_delivery(cfg, out->next, sizeof(out->next),
                                           err)) != KILN_OK ||
        (rc = pattern(k, "1.#", out->queue_key, sizeof(out->queue_key), err)) !=
            KILN_OK)
        return rc;
    return pattern(k, "0.#", out->next_key, sizeof(out->next_key), err);
}

const char *kiln__delay_dest_key(const kiln_config *cfg)
{
    if (cfg->exchange[0] == '\0' || cfg->binding_key[0] == '\0')
        return cfg->queue;
    return cfg->binding_key;
}

kiln_err kiln__delay_dest_binding(const kiln_config *cfg,
                                  const char *binding_key, char *out, size_t n,
                                  kiln_error *err)
{
    kiln_err rc;
    size_t len;

    if ((rc = kiln__delay_check(cfg, err)) != KILN_OK)
        return rc;
    len = strlen(binding_key);
    if (2 * (size_t)cfg->delay_levels + len > SHORTSTR_MAX)
        return kiln__fail(err, KILN_EINVAL,
                          "delay binding of '%.64s%s' (%zu bytes): with "
                          "KILN_DELAY_LEVELS=%u the binding key may have at "
                          "most %u bytes (set a shorter KILN_BINDING_KEY or "
                          "fewer KILN_DELAY_LEVELS)",
                          binding_key, len > 64 ? "..." : "", len,
                          cfg->delay_levels,
                          SHORTSTR_MAX - 2 * cfg->delay_levels);
    return pattern(cfg->delay_levels, binding_key, out, n, err);
}

kiln_err kiln__delay_route(const kiln_config *cfg, uint64_t delay_ms,
                           const char *dest_rk, char *exch, size_t exch_len,
                           char *rk, size_t rk_len, kiln_error *err)
{
    unsigned top = 0, n;
    uint64_t units = 0;
    size_t len;
    kiln_err rc;

    if (dest_rk == NULL || exch == NULL || rk == NULL)
        return kiln__fail(err, KILN_EINVAL, "delay route: arguments missing");
    if ((rc = kiln__delay_units(cfg, delay_ms, &units, err)) != KILN_OK)
        return rc;
    n = cfg->delay_levels;
    len = strlen(dest_rk);
    if (len == 0)
        return kiln__fail(err, KILN_EINVAL,
                          "delay route: the destination routing key is empty "
                          "(use the queue's binding key)");
    if (2 * (size_t)n + len > SHORTSTR_MAX)
        return kiln__fail(err, KILN_EINVAL,
                          "delay route: routing key '%.64s%s' (%zu bytes) is "
                          "too long for KILN_DELAY_LEVELS=%u: at most %u bytes",
                          dest_rk, len > 64 ? "..." : "", len, n,
                          SHORTSTR_MAX - 2 * n);
    if (2 * (size_t)n + len >= rk_len)
        return kiln__fail(err, KILN_EINVAL, "delay route: buffer of %zu",
                          rk_len);
    for (size_t k = 0; k < n; k++) {
        bool set = (units >> k) & 1u;
        rk[2 * k] = set ? '1' : '0';
        rk[2 * k + 1] = '.';
        top = set ? (unsigned)k : top;
    }
    memcpy(rk + 2 * (size_t)n, dest_rk, len + 1);
    /* Straight into the highest level the message waits in: the levels
     * above it would only pass it down. */
    if (units == 0)
        return kiln__delay_delivery(cfg, exch, exch_len, err);
    return level_name(cfg, top, exch, exch_len, err);
}

kiln_err kiln__delay_parse(const kiln_config *cfg, const char *rk,
                           uint64_t *units, const char **dest, kiln_error *err)
{
    uint64_t u = 0;
    kiln_err rc;

    if ((rc = kiln__delay_check(cfg, err)) != KILN_OK)
        return rc;
    if (rk == NULL)
        return kiln__fail(err, KILN_EINVAL, "delay parse: no routing key");
    for (unsigned k = 0; k < cfg->delay_levels; k++) {
        char bit = rk[2 * (size_t)k];
        if ((bit != '0' && bit != '1') || rk[2 * (size_t)k + 1] != '.')
            return kiln__fail(err, KILN_EINVAL,
                              "routing key '%.64s' does not start with "
                              "KILN_DELAY_LEVELS=%u words 0 or 1",
                              rk, cfg->delay_levels);
        u |= (uint64_t)(bit == '1') << k;
    }
    if (units != NULL)
        *units = u;
    if (dest != NULL)
        *dest = rk + 2 * (size_t)cfg->delay_levels;
    return KILN_OK;
}

bool kiln__delay_exchange_level(const kiln_config *cfg, const char *exchange,
                                int *level)
{
    char name[KILN_NAME_MAX];

    if (cfg == NULL || exchange == NULL ||
        kiln__delay_delivery(cfg, name, sizeof(name), NULL) != KILN_OK ||
        strncmp(exchange, cfg->delay_exchange, strlen(cfg->delay_exchange)) !=
            0)
        return false;
    if (strcmp(exchange, name) == 0) {
        *level = -1;
        return true;
    }
    /* Either type's levels: a consumer need not share the producer's
     * KILN_DELAY_QUEUE_TYPE. */
    for (int quorum = 0; quorum < 2; quorum++) {
        kiln_config c = *cfg;
        c.delay_queue_type = quorum ? KILN_QUEUE_QUORUM : KILN_QUEUE_CLASSIC;
        for (unsigned k = 0; k < cfg->delay_levels; k++) {
            if (level_name(&c, k, name, sizeof(name), NULL) == KILN_OK &&
                strcmp(exchange, name) == 0) {
                *level = (int)k;
                return true;
            }
        }
    }
    return false;
}

bool kiln__delay_keep_header(const char *key)
{
    return strcmp(key, "x-death") != 0 &&
           strncmp(key, "x-first-death-", 14) != 0 &&
           strncmp(key, "x-last-death-", 13) != 0;
}
