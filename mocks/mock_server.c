/* The in-memory broker's server: exchanges, bindings and queues shared by
 * any number of connections (mocks/broker_mock.c), routing, failure
 * injection and inspection. The lock rule is in mocks/mock_internal.h. */
#include "mocks/mock_internal.h"

#include <string.h>

/* ---- messages --------------------------------------------------------- */

/* Sizes (b->p NULL) or fills one message block: the struct, the typed
 * headers, their text, the strings and the body. */
static struct msg *pack(kiln__bump *b, const kiln__message *m)
{
    const char *mid = m->message_id ? m->message_id : "";
    const char *ct = m->content_type ? m->content_type : "application/json";
    size_t n = m->fields != NULL ? m->n_fields : 0;
    struct msg *msg = kiln__bump_take(b, sizeof(*msg), _Alignof(struct msg));
    struct msg tmp;
    kiln_header *h;

    memset(&tmp, 0, sizeof(tmp));
    tmp.fields = kiln__hdrs_copy(b, m->fields, n);
    h = kiln__bump_take(b, n * sizeof(*h), _Alignof(kiln_header));
    for (size_t i = 0; i < n; i++) {
        char *at = kiln__bump_take(b, 0, 1);
        b->len += kiln__hval_text(&m->fields[i].value, at);
        (void)kiln__bump_str(b, "", 0);
        if (h != NULL) {
            h[i].key = tmp.fields[i].key;
            h[i].value = at;
        }
    }
    tmp.headers = n > 0 ? h : NULL;
    tmp.fields = n > 0 ? tmp.fields : NULL;
    tmp.n_headers = n;
    tmp.exchange = kiln__bump_str(b, m->exchange, strlen(m->exchange));
    tmp.routing_key = kiln__bump_str(b, m->routing_key, strlen(m->routing_key));
    tmp.message_id = kiln__bump_str(b, mid, strlen(mid));
    tmp.content_type = kiln__bump_str(b, ct, strlen(ct));
    tmp.body = kiln__bump_str(b, m->body, m->body_len);
    tmp.body_len = m->body_len;
    tmp.priority = m->priority;
    tmp.persistent = m->persistent;
    if (msg != NULL)
        *msg = tmp;
    return msg;
}

struct msg *kiln__mock_msg_pack(const kiln__message *m)
{
    kiln__bump b = {NULL, 0};

    (void)pack(&b, m);
    if ((b.p = kiln__malloc(b.len)) == NULL)
        return NULL;
    b.len = 0;
    return pack(&b, m);
}

kiln__message kiln__mock_msg_view(const struct msg *msg)
{
    return (kiln__message){.exchange = msg->exchange,
                           .routing_key = msg->routing_key,
                           .body = msg->body,
                           .body_len = msg->body_len,
                           .fields = msg->fields,
                           .n_fields = msg->n_headers,
                           .message_id = msg->message_id,
                           .content_type = msg->content_type,
                           .priority = msg->priority,
                           .persistent = msg->persistent};
}

void kiln__mock_queue_push_head(struct queue *q, struct msg *m)
{
    m->next = q->head;
    q->head = m;
    if (q->tail == NULL)
        q->tail = m;
    q->ready++;
}

static void queue_push_tail(struct queue *q, struct msg *m)
{
    m->next = NULL;
    if (q->tail != NULL)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->ready++;
}

struct msg *kiln__mock_queue_pop(struct queue *q)
{
    struct msg *m = q->head;

    if (m != NULL) {
        q->head = m->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->ready--;
        m->next = NULL;
    }
    return m;
}

static void free_list(struct msg *m)
{
    while (m != NULL) {
        struct msg *next = m->next;
        kiln__free(m);
        m = next;
    }
}

/* ---- server ----------------------------------------------------------- */

void kiln__mock_deadline_after(struct timespec *ts, int timeout_ms)
{
    int64_t ns = kiln__monotonic_ns() + (int64_t)timeout_ms * 1000000;

    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

/* Waits on srv->cond; false once the deadline passed (timeout_ms < 0:
 * never). Caller holds srv->mu. */
bool kiln__mock_wait_until(kiln__mock_server *srv, const struct timespec *ts,
                           int timeout_ms)
{
    struct timespec due;

    if (kiln__mock_next_due(srv, &due) &&
        (timeout_ms < 0 || due.tv_sec < ts->tv_sec ||
         (due.tv_sec == ts->tv_sec && due.tv_nsec < ts->tv_nsec))) {
        (void)pthread_cond_timedwait(&srv->cond, &srv->mu, &due);
        return true;
    }
    if (timeout_ms < 0)
        return pthread_cond_wait(&srv->cond, &srv->mu) == 0;
    return pthread_cond_timedwait(&srv->cond, &srv->mu, ts) == 0;
}

kiln__mock_server *kiln__mock_server_new(kiln_error *err)
{
    kiln__mock_server *srv = kiln__calloc(1, sizeof(*srv));
    pthread_condattr_t attr;
    bool cond_ok = false;

    if (srv == NULL) {
        kiln__fail(err, KILN_ENOMEM, "mock broker");
        return NULL;
    }
    if (pthread_condattr_init(&attr) == 0) {
        cond_ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
                  pthread_cond_init(&srv->cond, &attr) == 0;
        (void)pthread_condattr_destroy(&attr);
    }
    if (!cond_ok) {
        kiln__free(srv);
        kiln__fail(err, KILN_ENOMEM, "mock broker: condition variable");
        return NULL;
    }
    if (pthread_mutex_init(&srv->mu, NULL) != 0) {
        (void)pthread_cond_destroy(&srv->cond);
        kiln__free(srv);
        kiln__fail(err, KILN_ENOMEM, "mock broker: mutex");
        return NULL;
    }
    return srv;
}

void kiln__mock_server_free(kiln__mock_server *srv)
{
    if (srv == NULL)
        return;
    for (size_t i = 0; i < srv->nq; i++) {
        free_list(srv->queues[i].head);
        kiln__free(srv->queues[i].name);
    }
    for (size_t i = 0; i < srv->nb; i++) {
        kiln__free(srv->binds[i].exchange);
        kiln__free(srv->binds[i].key);
    }
    for (size_t i = 0; i < srv->nalt; i++) {
        kiln__free(srv->alts[i].exchange);
        kiln__free(srv->alts[i].alternate);
    }
    kiln__free(srv->alts);
    free_list(srv->held);
    kiln__free(srv->cascades);
    kiln__free(srv->queues);
    kiln__free(srv->binds);
    kiln__free(srv->unroutable);
    (void)pthread_mutex_destroy(&srv->mu);
    (void)pthread_cond_destroy(&srv->cond);
    kiln__free(srv);
}

void kiln__mock_server_refuse_connections(kiln__mock_server *srv, bool refuse)
{
    pthread_mutex_lock(&srv->mu);
    srv->refuse_connects = refuse;
    pthread_mutex_unlock(&srv->mu);
}

unsigned kiln__mock_server_connects(kiln__mock_server *srv)
{
    unsigned n;

    pthread_mutex_lock(&srv->mu);
    n = srv->connects;
    pthread_mutex_unlock(&srv->mu);
    return n;
}

void kiln__mock_server_shutdown(kiln__mock_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    srv->shutdown = true;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
}

bool kiln__mock_find_queue(const kiln__mock_server *srv, const char *name,
                           size_t *idx)
{
    for (size_t i = 0; i < srv->nq; i++)
        if (strcmp(srv->queues[i].name, name) == 0) {
            *idx = i;
            return true;
        }
    return false;
}

/* Grows *arr (of `size`-byte items) to hold one more. */
static bool grow(void **arr, size_t n, size_t *cap, size_t size)
{
    size_t ncap = *cap ? *cap * 2 : 8;
    void *p;

    if (n < *cap)
        return true;
    if ((p = kiln__realloc(*arr, ncap * size)) == NULL)
        return false;
    *arr = p;
    *cap = ncap;
    return true;
}

static kiln_err declare_queue(kiln__mock_server *srv, const char *name,
                              size_t *idx, kiln_error *err)
{
    char *copy;

    if (kiln__mock_find_queue(srv, name, idx))
        return KILN_OK;
    if (!grow((void **)&srv->queues, srv->nq, &srv->capq,
              sizeof(*srv->queues)) ||
        (copy = kiln__strdup(name)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mock broker: queue '%s'", name);
    srv->queues[srv->nq] = (struct queue){.name = copy};
    *idx = srv->nq++;
    return KILN_OK;
}

kiln_err kiln__mock_bind_locked(kiln__mock_server *srv, const char *exchange,
                                const char *key, const char *queue,
                                kiln_error *err)
{
    struct binding *b;
    size_t q = 0;
    kiln_err rc;

    if ((rc = declare_queue(srv, queue, &q, err)) != KILN_OK)
        return rc;
    for (size_t i = 0; i < srv->nb; i++) {
        b = &srv->binds[i];
        if (b->queue == q && strcmp(b->exchange, exchange) == 0 &&
            strcmp(b->key, key) == 0)
            return KILN_OK;
    }
    if (!grow((void **)&srv->binds, srv->nb, &srv->capb, sizeof(*b)))
        return kiln__fail(err, KILN_ENOMEM, "mock broker: binding");
    b = &srv->binds[srv->nb];
    b->exchange = kiln__strdup(exchange);
    b->key = kiln__strdup(key);
    b->queue = q;
    if (b->exchange == NULL || b->key == NULL) {
        kiln__free(b->exchange);
        kiln__free(b->key);
        return kiln__fail(err, KILN_ENOMEM, "mock broker: binding");
    }
    srv->nb++;
    return KILN_OK;
}

kiln_err kiln__mock_server_bind(kiln__mock_server *srv, const char *exchange,
                                const char *binding_key, const char *queue,
                                kiln_error *err)
{
    kiln_err rc;

    if (srv == NULL || exchange == NULL || binding_key == NULL ||
        queue == NULL || queue[0] == '\0')
        return kiln__fail(err, KILN_EINVAL, "mock broker: bind arguments");
    pthread_mutex_lock(&srv->mu);
    rc = kiln__mock_bind_locked(srv, exchange, binding_key, queue, err);
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

kiln_err kiln__mock_set_alternate(kiln__mock_server *srv, const char *exchange,
                                  const char *alternate, kiln_error *err)
{
    struct alternate *a;

    for (size_t i = 0; i < srv->nalt; i++)
        if (strcmp(srv->alts[i].exchange, exchange) == 0)
            return KILN_OK;
    if (!grow((void **)&srv->alts, srv->nalt, &srv->capalt, sizeof(*a)))
        return kiln__fail(err, KILN_ENOMEM, "mock broker: alternate exchange");
    a = &srv->alts[srv->nalt];
    a->exchange = kiln__strdup(exchange);
    a->alternate = kiln__strdup(alternate);
    if (a->exchange == NULL || a->alternate == NULL) {
        kiln__free(a->exchange);
        kiln__free(a->alternate);
        return kiln__fail(err, KILN_ENOMEM, "mock broker: alternate exchange");
    }
    srv->nalt++;
    return KILN_OK;
}

kiln_err kiln__mock_make_sink(kiln__mock_server *srv, const char *queue,
                              kiln_error *err)
{
    size_t q;
    kiln_err rc = declare_queue(srv, queue, &q, err);

    if (rc == KILN_OK)
        srv->queues[q].sink = true;
    return rc;
}

/* ---- failure injection and inspection ---------------------------------- */

void kiln__mock_server_fail_publish(kiln__mock_server *srv, unsigned nth)
{
    pthread_mutex_lock(&srv->mu);
    srv->fail_publish_at = nth;
    pthread_mutex_unlock(&srv->mu);
}

void kiln__mock_server_fail_connection(kiln__mock_server *srv, unsigned nth)
{
    pthread_mutex_lock(&srv->mu);
    srv->fail_conn_at = nth;
    pthread_mutex_unlock(&srv->mu);
}

void kiln__mock_server_fail_consume(kiln__mock_server *srv, unsigned count)
{
    pthread_mutex_lock(&srv->mu);
    srv->fail_consume = count;
    pthread_mutex_unlock(&srv->mu);
}

kiln_err kiln__mock_server_set_unroutable(kiln__mock_server *srv,
                                          const char *key, kiln_error *err)
{
    char *copy = NULL;

    if (key != NULL && (copy = kiln__strdup(key)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mock broker: unroutable key");
    pthread_mutex_lock(&srv->mu);
    kiln__free(srv->unroutable);
    srv->unroutable = copy;
    pthread_mutex_unlock(&srv->mu);
    return KILN_OK;
}

size_t kiln__mock_server_ready(kiln__mock_server *srv, const char *queue)
{
    size_t idx, n = 0;

    pthread_mutex_lock(&srv->mu);
    kiln__mock_release_due(srv);
    if (kiln__mock_find_queue(srv, queue, &idx))
        n = srv->queues[idx].ready;
    pthread_mutex_unlock(&srv->mu);
    return n;
}

size_t kiln__mock_server_unacked(kiln__mock_server *srv)
{
    size_t n;

    pthread_mutex_lock(&srv->mu);
    n = srv->unacked;
    pthread_mutex_unlock(&srv->mu);
    return n;
}

size_t kiln__mock_server_publish_calls(kiln__mock_server *srv)
{
    size_t n;

    pthread_mutex_lock(&srv->mu);
    n = srv->publish_calls;
    pthread_mutex_unlock(&srv->mu);
    return n;
}

void kiln__mock_server_set_confirm_delay(kiln__mock_server *srv, unsigned ms)
{
    pthread_mutex_lock(&srv->mu);
    srv->confirm_delay_ms = ms;
    pthread_mutex_unlock(&srv->mu);
}

void kiln__mock_server_block_publishing(kiln__mock_server *srv, bool blocked)
{
    pthread_mutex_lock(&srv->mu);
    srv->blocked = blocked;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
}

size_t kiln__mock_server_published(kiln__mock_server *srv)
{
    size_t n;

    pthread_mutex_lock(&srv->mu);
    n = srv->published;
    pthread_mutex_unlock(&srv->mu);
    return n;
}

kiln_err kiln__mock_server_wait_idle(kiln__mock_server *srv, const char *queue,
                                     int timeout_ms)
{
    struct timespec ts;
    size_t idx;
    kiln_err rc = KILN_OK;

    kiln__mock_deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&srv->mu);
    for (;;) {
        kiln__mock_release_due(srv);
        if ((!kiln__mock_find_queue(srv, queue, &idx) ||
             srv->queues[idx].ready == 0) &&
            srv->unacked == 0)
            break;
        if (!kiln__mock_wait_until(srv, &ts, timeout_ms)) {
            rc = KILN_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

/* ---- routing ------------------------------------------------------------ */

static const char *alternate_of(const kiln__mock_server *srv,
                                const char *exchange)
{
    for (size_t i = 0; i < srv->nalt; i++)
        if (strcmp(srv->alts[i].exchange, exchange) == 0)
            return srv->alts[i].alternate;
    return NULL;
}

/* Marks the queues `exchange` itself routes `key` to; returns how many. */
static size_t mark_from(kiln__mock_server *srv, const char *exchange,
                        const char *key)
{
    size_t n = 0, idx;

    if (exchange[0] == '\0') {
        if (!kiln__mock_find_queue(srv, key, &idx))
            return 0;
        srv->queues[idx].mark = srv->stamp;
        return 1;
    }
    for (size_t i = 0; i < srv->nb; i++) {
        const struct binding *b = &srv->binds[i];
        struct queue *q = &srv->queues[b->queue];
        if (q->mark == srv->stamp || strcmp(b->exchange, exchange) != 0)
            continue;
        if (strcmp(b->key, "#") == 0 || strcmp(b->key, key) == 0) {
            q->mark = srv->stamp;
            n++;
        }
    }
    return n;
}

/* Marks every queue a message to `exchange` with `key` routes to,
 * following alternate exchanges (a few deep, a guard against loops)
 * while none matches; returns how many. Caller holds srv->mu. */
static size_t mark_routes(kiln__mock_server *srv, const char *exchange,
                          const char *key)
{
    size_t n = 0;

    srv->stamp++;
    for (unsigned depth = 0; exchange != NULL && n == 0 && depth < 4; depth++) {
        n = mark_from(srv, exchange, key);
        exchange = alternate_of(srv, exchange);
    }
    return n;
}

/* Puts a copy of `m` into each marked queue, all or none. */
static kiln_err enqueue_marked(kiln__mock_server *srv, const kiln__message *m,
                               size_t n, kiln_error *err)
{
    struct msg *copies = NULL, *c;

    for (size_t i = 0; i < n; i++) {
        if ((c = kiln__mock_msg_pack(m)) == NULL) {
            free_list(copies);
            return kiln__fail(err, KILN_ENOMEM, "mock broker: message copy");
        }
        c->next = copies;
        copies = c;
    }
    for (size_t i = 0; i < srv->nq && copies != NULL; i++) {
        if (srv->queues[i].mark != srv->stamp)
            continue;
        c = copies;
        copies = c->next;
        c->queue = i;
        if (srv->queues[i].sink)
            kiln__free(c);
        else
            queue_push_tail(&srv->queues[i], c);
    }
    return KILN_OK;
}

kiln_err kiln__mock_deliver(kiln__mock_server *srv, const char *exchange,
                            const char *key, const kiln__message *m, size_t *n,
                            kiln_error *err)
{
    kiln_err rc;

    *n = mark_routes(srv, exchange, key);
    if (*n > 0 && (rc = enqueue_marked(srv, m, *n, err)) != KILN_OK) {
        *n = 0;
        return rc;
    }
    return KILN_OK;
}

kiln_err kiln__mock_route(kiln__mock_server *srv, const kiln__message *m,
                          kiln_error *err)
{
    bool delayed;
    size_t n;
    kiln_err rc;

    if (m->exchange == NULL || m->routing_key == NULL ||
        (m->body == NULL && m->body_len > 0) ||
        (m->fields == NULL && m->n_fields > 0) || m->n_headers > 0 ||
        m->inherit != NULL)
        return kiln__fail(err, KILN_EINVAL, "incomplete message");
    if (srv->shutdown)
        return kiln__fail(err, KILN_ECLOSED, "broker is shutting down");
    if (srv->fail_publish_at > 0 && --srv->fail_publish_at == 0)
        return kiln__fail(err, KILN_EBROKER,
                          "nacked by the broker "
                          "(injected)");
    /* Held messages first, so none is overtaken by a later one. */
    kiln__mock_release_due(srv);
    rc = kiln__mock_route_delay(srv, m, &delayed, err);
    if (delayed) {
        srv->published += rc == KILN_OK;
        return rc;
    }
    n = mark_routes(srv, m->exchange, m->routing_key);
    if (n == 0 || (srv->unroutable != NULL &&
                   strcmp(srv->unroutable, m->routing_key) == 0))
        return kiln__fail(err, KILN_EBROKER,
                          "returned: 312 NO_ROUTE "
                          "(exchange '%s', routing key '%s')",
                          m->exchange, m->routing_key);
    if ((rc = enqueue_marked(srv, m, n, err)) != KILN_OK)
        return rc;
    srv->published++;
    return KILN_OK;
}
