/* A producer-broker-worker round trip in one test process (roundtrip.h). */
#include "test/support/roundtrip.h"

struct roundtrip {
    kiln_config cfg; /* a copy; dispatch.cfg points here */
    kiln__mock_server *srv;
    kiln__broker *producer; /* the producer side's connection */
    kiln__broker *consumer; /* the consumer side's connection */
    kiln__store *store;     /* NULL without with_store */
    kiln__dispatch dispatch;
};

static kiln_err open_conn(roundtrip *e, kiln__broker **out, const char *queue,
                          kiln_error *err)
{
    kiln_err rc;

    if ((*out = kiln__mock_broker_new(e->srv, err)) == NULL)
        return err != NULL ? err->code : KILN_ENOMEM;
    if ((rc = kiln__broker_connect(*out, err)) != KILN_OK)
        return rc;
    if ((rc = kiln__broker_declare(*out, &e->cfg, err)) != KILN_OK)
        return rc;
    if (queue != NULL)
        return kiln__broker_subscribe(*out, queue, e->cfg.prefetch, err);
    return KILN_OK;
}

roundtrip *roundtrip_new(const kiln_config *cfg, const kiln_registry *reg,
                         bool with_store, kiln_error *err)
{
    roundtrip *e;
    kiln_error local;

    if (err == NULL)
        err = &local;
    if (cfg == NULL || reg == NULL) {
        kiln__fail(err, KILN_EINVAL, "roundtrip: cfg and reg are required");
        return NULL;
    }
    if ((e = kiln__calloc(1, sizeof(*e))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "roundtrip");
        return NULL;
    }
    e->cfg = *cfg;
    if ((e->srv = kiln__mock_server_new(err)) == NULL ||
        (with_store && (e->store = kiln__mock_store_new(err)) == NULL))
        goto fail;
    if (open_conn(e, &e->producer, NULL, err) != KILN_OK ||
        open_conn(e, &e->consumer, e->cfg.queue, err) != KILN_OK)
        goto fail;
    e->dispatch =
        (kiln__dispatch){.cfg = &e->cfg, .reg = reg, .store = e->store};
    return e;
fail:
    roundtrip_free(e);
    return NULL;
}

void roundtrip_free(roundtrip *e)
{
    if (e == NULL)
        return;
    kiln__broker_destroy(e->consumer);
    kiln__broker_destroy(e->producer);
    kiln__store_destroy(e->store);
    kiln__mock_server_free(e->srv);
    kiln__free(e);
}

kiln_err roundtrip_send(roundtrip *e, const kiln_signature *const *sigs,
                        size_t n, kiln_err *status, kiln_error *err)
{
    return kiln__send_tasks(&e->cfg, e->producer, e->store, sigs, n, status,
                            err);
}

kiln_err roundtrip_run_once(roundtrip *e, int timeout_ms,
                            kiln__verdict *verdict, kiln_error *err)
{
    kiln__delivery dl;
    kiln_err rc;

    rc = kiln__broker_consume(e->consumer, &dl, timeout_ms, err);
    if (rc != KILN_OK)
        return rc;
    rc = kiln__dispatch_delivery(&e->dispatch, e->consumer, &dl, verdict, err);
    kiln__broker_release(e->consumer, &dl);
    return rc;
}

kiln_err roundtrip_drain(roundtrip *e, size_t max, size_t *handled,
                         kiln_error *err)
{
    size_t n = 0;
    kiln_err rc = KILN_OK;

    while (max == 0 || n < max) {
        rc = roundtrip_run_once(e, 0, NULL, err);
        if (rc != KILN_OK)
            break;
        n++;
    }
    if (handled != NULL)
        *handled = n;
    if (rc == KILN_ETIMEDOUT) {
        kiln__ok(err);
        return KILN_OK;
    }
    return rc;
}

kiln__mock_server *roundtrip_server(roundtrip *e)
{
    return e->srv;
}

kiln__store *roundtrip_store(roundtrip *e)
{
    return e->store;
}
