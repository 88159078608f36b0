/* The in-memory broker: a server of exchanges, bindings and queues shared
 * by any number of connections, each implementing broker/broker.h.
 *
 * Lock rule: srv->mu guards the whole server and every connection's
 * unacked list (closing a connection moves its deliveries back to their
 * queues). It is never held while calling out of this file. */
#include "mocks/mocks.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

/* A message in a queue or in a connection's unacked list. Its strings and
 * headers live in the same allocation, after the struct. */
struct msg {
    struct msg *next;
    size_t queue;        /* index in srv->queues */
    uint64_t tag;        /* while unacked */
    uint32_t deliveries; /* times delivered so far */
    uint8_t priority;
    bool persistent;
    char *exchange, *routing_key, *message_id, *content_type, *body;
    size_t body_len;
    kiln_header *headers;
    size_t n_headers;
};

struct queue {
    char *name;
    struct msg *head, *tail;
    size_t ready;
    uint64_t mark; /* routing: already chosen for the current message */
};

struct binding {
    char *exchange, *key;
    size_t queue;
};

struct kiln__mock_server {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* broadcast on enqueue, settle and shutdown */
    struct queue *queues;
    size_t nq, capq;
    struct binding *binds;
    size_t nb, capb;
    char *unroutable;
    unsigned fail_publish_at, fail_consume, fail_conn_at;
    size_t unacked, published;
    uint64_t stamp;
    bool shutdown;
};

struct conn {
    kiln__broker base;
    kiln__mock_server *srv;
    bool connected, subscribed;
    bool broken;      /* lost (fail_connection): ops fail until close */
    size_t lost_from; /* last publish: messages from here were lost */
    size_t queue;
    unsigned prefetch;
    uint64_t next_tag;
    struct msg *unacked, *unacked_tail; /* by tag; under srv->mu */
    size_t n_unacked;
};

/* ---- messages --------------------------------------------------------- */

static bool add_size(size_t *total, size_t n)
{
    if (n > SIZE_MAX - *total)
        return false;
    *total += n;
    return true;
}

static char *put(char **p, const char *s, size_t n)
{
    char *start = *p;

    if (n > 0)
        memcpy(start, s, n);
    start[n] = '\0';
    *p += n + 1;
    return start;
}

/* Copies `m` into one allocation. NULL on ENOMEM or overflow. */
static struct msg *msg_pack(const kiln__message *m)
{
    const char *mid = m->message_id ? m->message_id : "";
    const char *ct = m->content_type ? m->content_type : "application/json";
    size_t size = sizeof(struct msg), nh = m->n_headers;
    bool ok = nh < SIZE_MAX / sizeof(kiln_header) &&
              add_size(&size, nh * sizeof(kiln_header)) &&
              add_size(&size, strlen(m->exchange) + strlen(m->routing_key)) &&
              add_size(&size, strlen(mid) + strlen(ct) + 5) &&
              add_size(&size, m->body_len);
    struct msg *msg;
    char *p;

    for (size_t i = 0; ok && i < nh; i++) {
        const kiln_header *h = &m->headers[i];
        ok = add_size(&size, strlen(h->key ? h->key : "") + 1) &&
             add_size(&size, strlen(h->value ? h->value : "") + 1);
    }
    if (!ok || (msg = kiln__malloc(size)) == NULL)
        return NULL;
    memset(msg, 0, sizeof(*msg));
    msg->headers = nh > 0 ? (kiln_header *)(void *)(msg + 1) : NULL;
    msg->n_headers = nh;
    p = (char *)(msg + 1) + nh * sizeof(kiln_header);
    for (size_t i = 0; i < nh; i++) {
        const char *k = m->headers[i].key ? m->headers[i].key : "";
        const char *v = m->headers[i].value ? m->headers[i].value : "";
        msg->headers[i].key = put(&p, k, strlen(k));
        msg->headers[i].value = put(&p, v, strlen(v));
    }
    msg->exchange = put(&p, m->exchange, strlen(m->exchange));
    msg->routing_key = put(&p, m->routing_key, strlen(m->routing_key));
    msg->message_id = put(&p, mid, strlen(mid));
    msg->content_type = put(&p, ct, strlen(ct));
    msg->body = put(&p, m->body, m->body_len);
    msg->body_len = m->body_len;
    msg->priority = m->priority;
    msg->persistent = m->persistent;
    return msg;
}

static kiln__message msg_view(const struct msg *msg)
{
    return (kiln__message){.exchange = msg->exchange,
                           .routing_key = msg->routing_key,
                           .body = msg->body,
                           .body_len = msg->body_len,
                           .headers = msg->headers,
                           .n_headers = msg->n_headers,
                           .message_id = msg->message_id,
                           .content_type = msg->content_type,
                           .priority = msg->priority,
                           .persistent = msg->persistent};
}

static void queue_push_head(struct queue *q, struct msg *m)
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

static struct msg *queue_pop(struct queue *q)
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

static void deadline_after(struct timespec *ts, int timeout_ms)
{
    int64_t ns = kiln__monotonic_ns() + (int64_t)timeout_ms * 1000000;

    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

/* Waits on srv->cond; false once the deadline passed (timeout_ms < 0:
 * never). Caller holds srv->mu. */
static bool wait_until(kiln__mock_server *srv, const struct timespec *ts,
                       int timeout_ms)
{
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
    kiln__free(srv->queues);
    kiln__free(srv->binds);
    kiln__free(srv->unroutable);
    (void)pthread_mutex_destroy(&srv->mu);
    (void)pthread_cond_destroy(&srv->cond);
    kiln__free(srv);
}

void kiln__mock_server_shutdown(kiln__mock_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    srv->shutdown = true;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
}

static bool find_queue(const kiln__mock_server *srv, const char *name,
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

    if (find_queue(srv, name, idx))
        return KILN_OK;
    if (!grow((void **)&srv->queues, srv->nq, &srv->capq,
              sizeof(*srv->queues)) ||
        (copy = kiln__strdup(name)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "mock broker: queue '%s'", name);
    srv->queues[srv->nq] = (struct queue){.name = copy};
    *idx = srv->nq++;
    return KILN_OK;
}

static kiln_err bind_locked(kiln__mock_server *srv, const char *exchange,
                            const char *key, const char *queue, kiln_error *err)
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
    rc = bind_locked(srv, exchange, binding_key, queue, err);
    pthread_mutex_unlock(&srv->mu);
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
    if (find_queue(srv, queue, &idx))
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

    deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&srv->mu);
    while ((find_queue(srv, queue, &idx) && srv->queues[idx].ready > 0) ||
           srv->unacked > 0) {
        if (!wait_until(srv, &ts, timeout_ms)) {
            rc = KILN_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

/* ---- publish ------------------------------------------------------------ */

/* Marks every queue `m` routes to; returns how many. Caller holds srv->mu. */
static size_t mark_routes(kiln__mock_server *srv, const kiln__message *m)
{
    size_t n = 0, idx;

    srv->stamp++;
    if (m->exchange[0] == '\0') {
        if (!find_queue(srv, m->routing_key, &idx))
            return 0;
        srv->queues[idx].mark = srv->stamp;
        return 1;
    }
    for (size_t i = 0; i < srv->nb; i++) {
        const struct binding *b = &srv->binds[i];
        struct queue *q = &srv->queues[b->queue];
        if (q->mark == srv->stamp || strcmp(b->exchange, m->exchange) != 0)
            continue;
        if (strcmp(b->key, "#") == 0 || strcmp(b->key, m->routing_key) == 0) {
            q->mark = srv->stamp;
            n++;
        }
    }
    return n;
}

/* Puts a copy of `m` into each marked queue, all or none. */
static kiln_err enqueue_marked(kiln__mock_server *srv, const kiln__message *m,
                               size_t n, kiln_error *err)
{
    struct msg *copies = NULL, *c;

    for (size_t i = 0; i < n; i++) {
        if ((c = msg_pack(m)) == NULL) {
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
        queue_push_tail(&srv->queues[i], c);
    }
    return KILN_OK;
}

static kiln_err route_one(kiln__mock_server *srv, const kiln__message *m,
                          kiln_error *err)
{
    size_t n;
    kiln_err rc;

    if (m->exchange == NULL || m->routing_key == NULL ||
        (m->body == NULL && m->body_len > 0) ||
        (m->headers == NULL && m->n_headers > 0))
        return kiln__fail(err, KILN_EINVAL, "incomplete message");
    if (srv->shutdown)
        return kiln__fail(err, KILN_ECLOSED, "broker is shutting down");
    if (srv->fail_publish_at > 0 && --srv->fail_publish_at == 0)
        return kiln__fail(err, KILN_EBROKER,
                          "nacked by the broker "
                          "(injected)");
    n = mark_routes(srv, m);
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

/* Caller holds srv->mu. The message that breaks the connection
 * (fail_connection) reaches its queue, but its confirm is lost with the
 * connection; every later one is lost before the broker sees it. */
static kiln_err publish_one(struct conn *c, const kiln__message *m, size_t i,
                            kiln_error *err)
{
    if (!c->broken && c->srv->fail_conn_at > 0 && --c->srv->fail_conn_at == 0) {
        (void)route_one(c->srv, m, err);
        c->broken = true;
    }
    if (!c->broken)
        return route_one(c->srv, m, err);
    c->lost_from = i < c->lost_from ? i : c->lost_from;
    return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
}

static kiln_err conn_publish(kiln__broker *b, const kiln__message *msgs,
                             size_t n, kiln_err *status, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    kiln_err first = KILN_OK;

    c->lost_from = SIZE_MAX;
    if (!c->connected) {
        for (size_t i = 0; status != NULL && i < n; i++)
            status[i] = KILN_ECLOSED;
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    }
    pthread_mutex_lock(&c->srv->mu);
    for (size_t i = 0; i < n; i++) {
        kiln_error e;
        kiln_err rc = publish_one(c, &msgs[i], i, &e);
        if (status != NULL)
            status[i] = rc;
        if (rc != KILN_OK && first == KILN_OK)
            first = kiln__fail(err, rc, "publish %zu of %zu: %s", i + 1, n,
                               e.message);
    }
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    return first;
}

/* ---- connection --------------------------------------------------------- */

static kiln_err conn_connect(kiln__broker *b, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    bool down;

    if (c->broken)
        b->ops->close(b);
    pthread_mutex_lock(&c->srv->mu);
    down = c->srv->shutdown;
    pthread_mutex_unlock(&c->srv->mu);
    if (down)
        return kiln__fail(err, KILN_EBROKER,
                          "mock broker: connection "
                          "refused (shut down)");
    c->connected = true;
    return KILN_OK;
}

/* Returns every unacked delivery to the head of its queue, oldest first,
 * as the broker does when a channel closes. */
static void conn_close(kiln__broker *b)
{
    struct conn *c = (struct conn *)b;
    struct msg *rev = NULL;

    pthread_mutex_lock(&c->srv->mu);
    while (c->unacked != NULL) {
        struct msg *m = c->unacked;
        c->unacked = m->next;
        m->next = rev;
        rev = m;
    }
    while (rev != NULL) {
        struct msg *m = rev;
        rev = m->next;
        queue_push_head(&c->srv->queues[m->queue], m);
    }
    c->srv->unacked -= c->n_unacked;
    c->unacked_tail = NULL;
    c->n_unacked = 0;
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    c->connected = c->subscribed = c->broken = false;
    c->next_tag = 0;
}

static kiln_err conn_declare(kiln__broker *b, const kiln_config *cfg,
                             kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    const char *key = cfg->binding_key[0] ? cfg->binding_key : cfg->queue;
    kiln_err rc;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    if (c->broken)
        return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
    if ((rc = kiln__mock_server_bind(c->srv, cfg->exchange, key, cfg->queue,
                                     err)) != KILN_OK)
        return rc;
    if (cfg->dead_letter_queue[0] == '\0')
        return KILN_OK;
    return kiln__mock_server_bind(c->srv, cfg->dead_letter_exchange,
                                  cfg->dead_letter_queue,
                                  cfg->dead_letter_queue, err);
}

static kiln_err conn_subscribe(kiln__broker *b, const char *queue,
                               unsigned prefetch, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    bool found;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    if (c->subscribed)
        return kiln__fail(err, KILN_EINVAL, "mock broker: already consuming");
    pthread_mutex_lock(&c->srv->mu);
    found = find_queue(c->srv, queue, &c->queue);
    pthread_mutex_unlock(&c->srv->mu);
    if (!found)
        return kiln__fail(err, KILN_EBROKER, "404 NOT_FOUND - no queue '%s'",
                          queue);
    c->subscribed = true;
    c->prefetch = prefetch;
    return KILN_OK;
}

/* Waits for a deliverable message. Caller holds srv->mu. */
static kiln_err wait_message(struct conn *c, int timeout_ms, kiln_error *err)
{
    kiln__mock_server *srv = c->srv;
    struct timespec ts;

    deadline_after(&ts, timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        if (srv->shutdown)
            return kiln__fail(err, KILN_ECLOSED, "broker is shutting down");
        if (srv->fail_consume > 0) {
            srv->fail_consume--;
            return kiln__fail(err, KILN_EBROKER,
                              "connection lost "
                              "(injected)");
        }
        if (srv->queues[c->queue].head != NULL &&
            (c->prefetch == 0 || c->n_unacked < c->prefetch))
            return KILN_OK;
        if (timeout_ms == 0 || !wait_until(srv, &ts, timeout_ms))
            return kiln__fail(err, KILN_ETIMEDOUT, "no delivery");
    }
}

static kiln_err conn_consume(kiln__broker *b, kiln__delivery *out,
                             int timeout_ms, kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    struct msg *m, *copy;
    kiln__message view;
    kiln_err rc;

    if (!c->connected || !c->subscribed)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not consuming");
    pthread_mutex_lock(&c->srv->mu);
    if ((rc = wait_message(c, timeout_ms, err)) != KILN_OK)
        goto out;
    view = msg_view(c->srv->queues[c->queue].head);
    if ((copy = msg_pack(&view)) == NULL) {
        rc = kiln__fail(err, KILN_ENOMEM, "mock broker: delivery");
        goto out;
    }
    m = queue_pop(&c->srv->queues[c->queue]);
    m->tag = ++c->next_tag;
    if (c->unacked_tail != NULL)
        c->unacked_tail->next = m;
    else
        c->unacked = m;
    c->unacked_tail = m;
    c->n_unacked++;
    c->srv->unacked++;
    *out = (kiln__delivery){.tag = m->tag,
                            .exchange = copy->exchange,
                            .routing_key = copy->routing_key,
                            .body = copy->body,
                            .body_len = copy->body_len,
                            .headers = copy->headers,
                            .n_headers = copy->n_headers,
                            .message_id = copy->message_id,
                            .priority = m->priority,
                            .redelivered = m->deliveries > 0,
                            .delivery_count = m->deliveries,
                            .impl = copy};
    m->deliveries++;
out:
    pthread_mutex_unlock(&c->srv->mu);
    return rc;
}

/* Unlinks and returns the unacked delivery `tag`, or NULL. Caller holds
 * srv->mu. */
static struct msg *take_unacked(struct conn *c, uint64_t tag)
{
    struct msg *prev = NULL;

    for (struct msg *m = c->unacked; m != NULL; prev = m, m = m->next) {
        if (m->tag != tag)
            continue;
        if (prev != NULL)
            prev->next = m->next;
        else
            c->unacked = m->next;
        if (c->unacked_tail == m)
            c->unacked_tail = prev;
        m->next = NULL;
        c->n_unacked--;
        c->srv->unacked--;
        return m;
    }
    return NULL;
}

static kiln_err conn_ack(kiln__broker *b, uint64_t tag, bool multiple,
                         kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    kiln_err rc = KILN_OK;
    struct msg *m;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    pthread_mutex_lock(&c->srv->mu);
    if ((m = take_unacked(c, tag)) == NULL)
        rc = kiln__fail(err, KILN_EBROKER,
                        "406 PRECONDITION_FAILED - "
                        "unknown delivery tag %llu",
                        (unsigned long long)tag);
    kiln__free(m);
    /* Tags are handed out in order, so everything older is at the front. */
    while (rc == KILN_OK && multiple && c->unacked != NULL &&
           c->unacked->tag < tag)
        kiln__free(take_unacked(c, c->unacked->tag));
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    return rc;
}

static kiln_err conn_nack(kiln__broker *b, uint64_t tag, bool requeue,
                          kiln_error *err)
{
    struct conn *c = (struct conn *)b;
    kiln_err rc = KILN_OK;
    struct msg *m;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    pthread_mutex_lock(&c->srv->mu);
    if ((m = take_unacked(c, tag)) == NULL)
        rc = kiln__fail(err, KILN_EBROKER,
                        "406 PRECONDITION_FAILED - "
                        "unknown delivery tag %llu",
                        (unsigned long long)tag);
    else if (requeue)
        queue_push_head(&c->srv->queues[m->queue], m);
    else
        kiln__free(m);
    pthread_cond_broadcast(&c->srv->cond);
    pthread_mutex_unlock(&c->srv->mu);
    return rc;
}

static void conn_release(kiln__broker *b, kiln__delivery *d)
{
    (void)b;
    kiln__free(d->impl);
    memset(d, 0, sizeof(*d));
}

static void conn_destroy(kiln__broker *b)
{
    conn_close(b);
    kiln__free(b);
}

/* basic.cancel: no more deliveries; those already handed out stay
 * unacked until acked, nacked or the connection closes, as on RabbitMQ. */
static kiln_err conn_cancel(kiln__broker *b, kiln_error *err)
{
    struct conn *c = (struct conn *)b;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    c->subscribed = false;
    return KILN_OK;
}

/* The publisher's idle check, and how it tells a lost connection. */
static kiln_err conn_tick(kiln__broker *b, kiln_error *err)
{
    const struct conn *c = (const struct conn *)b;

    if (!c->connected)
        return kiln__fail(err, KILN_ECLOSED, "mock broker: not connected");
    if (c->broken)
        return kiln__fail(err, KILN_EBROKER, "connection lost (injected)");
    return KILN_OK;
}

static bool conn_publish_lost(kiln__broker *b, size_t i)
{
    return i >= ((const struct conn *)b)->lost_from;
}

static const kiln__broker_ops conn_ops = {
    .connect = conn_connect,
    .close = conn_close,
    .declare = conn_declare,
    .publish = conn_publish,
    .subscribe = conn_subscribe,
    .consume = conn_consume,
    .ack = conn_ack,
    .nack = conn_nack,
    .release = conn_release,
    .destroy = conn_destroy,
    .cancel = conn_cancel,
    .tick = conn_tick,
    .publish_lost = conn_publish_lost,
};

kiln__broker *kiln__mock_broker_new(kiln__mock_server *srv, kiln_error *err)
{
    struct conn *c;

    if (srv == NULL) {
        kiln__fail(err, KILN_EINVAL, "mock broker: no server");
        return NULL;
    }
    if ((c = kiln__calloc(1, sizeof(*c))) == NULL) {
        kiln__fail(err, KILN_ENOMEM, "mock broker: connection");
        return NULL;
    }
    c->base.ops = &conn_ops;
    c->srv = srv;
    return &c->base;
}
