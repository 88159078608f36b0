/* Opening the AMQP connection: URL, TCP or TLS socket, login with client
 * capabilities, channel in confirm mode. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"
#include "config/config.h"
#include "logger/logger.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STR2(x) #x
#define STR(x)  STR2(x)
#define KILN_VERSION_TEXT   \
    STR(KILN_VERSION_MAJOR) \
    "." STR(KILN_VERSION_MINOR) "." STR(KILN_VERSION_PATCH)

/* A parsed broker URL; the strings point into buf. */
typedef struct url {
    char buf[KILN_URL_MAX];
    struct amqp_connection_info ci;
    const char *vhost;
    char where[300]; /* "host:port", for messages (no credentials) */
} url;

static struct timeval ms_tv(unsigned ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static kiln_err parse_url(const char *text, url *u, kiln_error *err)
{
    char why[160];
    const char *problem;

    if (kiln__strlcpy(u->buf, text, sizeof(u->buf)) >= sizeof(u->buf))
        return kiln__fail(err, KILN_EINVAL,
                          "KILN_BROKER_URL is longer than %d bytes",
                          KILN_URL_MAX - 1);
    /* amqp_parse_url writes into its argument: this is our copy. A URL
     * that passed kiln_config_validate always parses; for any other the
     * configuration's check says what is wrong. */
    if (amqp_parse_url(u->buf, &u->ci) != AMQP_STATUS_OK) {
        problem = kiln__cfg_amqp_url_problem(text, why, sizeof(why));
        return kiln__fail(err, KILN_EINVAL, "KILN_BROKER_URL is not usable: %s",
                          problem != NULL ? problem
                                          : "rabbitmq-c cannot parse it");
    }
    /* "amqp://host/" parses to the vhost "", which RabbitMQ cannot have
     * (the AMQP URI spec's reading); Go's amqp091, which kiln shares
     * queues with, reads it as the default vhost "/", and so does kiln.
     * Spell other vhosts out, "/" itself as %2F. */
    u->vhost = u->ci.vhost[0] == '\0' ? "/" : u->ci.vhost;
    (void)snprintf(u->where, sizeof(u->where),
                   strchr(u->ci.host, ':') != NULL ? "[%s]:%d" : "%s:%d",
                   u->ci.host, u->ci.port);
    return KILN_OK;
}

kiln_err kiln__amqp_url_parts(const char *text, kiln__amqp_url *out,
                              kiln_error *err)
{
    url u;
    kiln_err rc;

    memset(out, 0, sizeof(*out));
    if ((rc = parse_url(text, &u, err)) != KILN_OK)
        return rc;
    kiln__strlcpy(out->user, u.ci.user, sizeof(out->user));
    kiln__strlcpy(out->password, u.ci.password, sizeof(out->password));
    kiln__strlcpy(out->host, u.ci.host, sizeof(out->host));
    kiln__strlcpy(out->vhost, u.vhost, sizeof(out->vhost));
    out->port = u.ci.port;
    out->tls = u.ci.ssl != 0;
    kiln__ok(err);
    return KILN_OK;
}

/* rabbitmq-c 0.11 does not load OpenSSL's default verify paths and does
 * not export its SSL_CTX, so "empty KILN_TLS_CA = the system's CAs" means
 * loading the distribution's bundle file. */
static const char *system_ca(void)
{
    static const char *const paths[] = {
        "/etc/ssl/certs/ca-certificates.crt", /* Debian, Ubuntu, Alpine */
        "/etc/pki/tls/certs/ca-bundle.crt",   /* Fedora, RHEL */
        "/etc/ssl/cert.pem",                  /* BSDs, macOS */
    };

    for (size_t i = 0; i < KILN__ARRAY_LEN(paths); i++)
        if (access(paths[i], R_OK) == 0)
            return paths[i];
    return NULL;
}

static kiln_err make_tls_socket(kiln__amqp *b, kiln_error *err)
{
    const kiln_config *c = &b->cfg;
    const char *ca = c->tls_ca[0] != '\0' ? c->tls_ca : system_ca();

    if ((b->sock = amqp_ssl_socket_new(b->conn)) == NULL)
        return kiln__fail(err, KILN_EBROKER, "amqps: TLS set-up failed");
    amqp_ssl_socket_set_verify_peer(b->sock, c->tls_verify);
    amqp_ssl_socket_set_verify_hostname(b->sock, c->tls_verify);
    if (ca == NULL && c->tls_verify)
        return kiln__fail(err, KILN_EBROKER,
                          "amqps: no system CA bundle found; set KILN_TLS_CA");
    if (ca != NULL && amqp_ssl_socket_set_cacert(b->sock, ca) != 0)
        return kiln__fail(err, KILN_EBROKER,
                          "amqps: cannot load the CA bundle '%s' (KILN_TLS_CA)",
                          ca);
    if (c->tls_cert[0] == '\0')
        return KILN_OK;
    /* An empty passphrase makes OpenSSL fail on an encrypted key instead
     * of prompting on the terminal. */
    amqp_ssl_socket_set_key_passwd(b->sock, "");
    if (amqp_ssl_socket_set_key(b->sock, c->tls_cert, c->tls_key) != 0)
        return kiln__fail(
            err, KILN_EBROKER,
            "amqps: cannot load the client certificate '%s' and key '%s' "
            "(KILN_TLS_CERT, KILN_TLS_KEY; keys must not be encrypted)",
            c->tls_cert, c->tls_key);
    return KILN_OK;
}

static amqp_table_entry_t flag(const char *key)
{
    amqp_table_entry_t e;

    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e.value.value.boolean = 1;
    return e;
}

static amqp_table_entry_t text(const char *key, const char *value)
{
    amqp_table_entry_t e;

    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(value);
    return e;
}

/* rabbitmq-c 0.11 announces only two capabilities. Without
 * consumer_cancel_notify the broker never tells a consumer that its queue
 * went away, and without connection.blocked a publisher cannot tell that
 * it is throttled (RABBITMQ.md). */
static kiln_err log_in(kiln__amqp *b, const url *u, kiln_error *err)
{
    amqp_table_entry_t caps[] = {
        flag("publisher_confirms"),
        flag("consumer_cancel_notify"),
        flag("connection.blocked"),
        flag("basic.nack"),
        flag("exchange_exchange_bindings"),
        flag("authentication_failure_close"),
    };
    amqp_table_entry_t props[5];
    amqp_table_t caps_table = {(int)KILN__ARRAY_LEN(caps), caps};
    amqp_table_t props_table = {(int)KILN__ARRAY_LEN(props), props};
    amqp_rpc_reply_t r;
    char what[400];

    props[0] = text("product", "kiln");
    props[1] = text("version", KILN_VERSION_TEXT);
    props[2] = text("platform", "C11, rabbitmq-c " AMQP_VERSION_STRING);
    props[3] = text("connection_name", b->name);
    props[4].key = amqp_cstring_bytes("capabilities");
    props[4].value.kind = AMQP_FIELD_KIND_TABLE;
    props[4].value.value.table = caps_table;
    r = amqp_login_with_properties(
        b->conn, u->vhost, AMQP_DEFAULT_MAX_CHANNELS, AMQP_DEFAULT_FRAME_SIZE,
        (int)b->cfg.heartbeat_s, &props_table, AMQP_SASL_METHOD_PLAIN,
        u->ci.user, u->ci.password);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return KILN_OK;
    (void)snprintf(what, sizeof(what), "amqp login to %s vhost '%s' as '%s'",
                   u->where, u->vhost, u->ci.user);
    return kiln__amqp_check_reply(b, r, err, what);
}

kiln_err kiln__amqp_open_channel(kiln__amqp *b, kiln_error *err)
{
    kiln_err rc;

    (void)amqp_channel_open(b->conn, KILN__AMQP_CHANNEL);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err,
                                "channel.open");
    if (rc != KILN_OK)
        return rc;
    (void)amqp_confirm_select(b->conn, KILN__AMQP_CHANNEL);
    rc = kiln__amqp_check_reply(b, amqp_get_rpc_reply(b->conn), err,
                                "confirm.select");
    if (rc != KILN_OK)
        return rc;
    b->chan_open = true;
    b->next_seq = 1; /* confirm.select starts the numbering (spec: confirm) */
    /* What the last channel settled was reported or is stale now: its
     * numbers mean other messages on this one. */
    kiln__amqp_sent_reset(b);
    kiln__amqp_outbox_clear(b);
    return KILN_OK;
}

/* rabbitmq-c reports every failed connect as "a socket error occurred",
 * with errno left at EINPROGRESS. One more attempt says which error it
 * is ("Connection refused"); 0 when that attempt works or says nothing. */
static int connect_errno(const char *host, int port, int ms)
{
    struct addrinfo hint, *list = NULL;
    char service[16];
    int e = 0;

    memset(&hint, 0, sizeof(hint));
    hint.ai_socktype = SOCK_STREAM;
    (void)snprintf(service, sizeof(service), "%d", port);
    if (getaddrinfo(host, service, &hint, &list) != 0)
        return 0;
    for (struct addrinfo *a = list; a != NULL; a = a->ai_next) {
        struct pollfd p = {-1, POLLOUT, 0};
        socklen_t len = sizeof(e);
        p.fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK,
                      a->ai_protocol);
        if (p.fd < 0)
            continue;
        e = connect(p.fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
        if (e == EINPROGRESS)
            e = poll(&p, 1, ms) != 1 ||
                        getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0
                    ? ETIMEDOUT
                    : e;
        (void)close(p.fd);
        if (e == 0)
            break;
    }
    freeaddrinfo(list);
    return e;
}

static kiln_err connect_failed(const kiln__amqp *b, const url *u, int s,
                               kiln_error *err)
{
    char text[128];
    int e;

    if (s == AMQP_STATUS_TIMEOUT)
        return kiln__fail(err, KILN_EBROKER,
                          "amqp connect to %s: no answer within %u ms "
                          "(KILN_CONNECT_TIMEOUT_MS)",
                          u->where, b->cfg.connect_timeout_ms);
    if (s == AMQP_STATUS_SOCKET_ERROR &&
        (e = connect_errno(u->ci.host, u->ci.port, 1000)) != 0 &&
        strerror_r(e, text, sizeof(text)) == 0)
        return kiln__fail(err, KILN_EBROKER, "amqp connect to %s: %s", u->where,
                          text);
    return kiln__fail(err, KILN_EBROKER, "amqp connect to %s: %s", u->where,
                      amqp_error_string2(s));
}

static kiln_err open_socket(kiln__amqp *b, const url *u, kiln_error *err)
{
    struct timeval tv = ms_tv(b->cfg.connect_timeout_ms);
    kiln_err rc;
    int s;

    if (u->ci.ssl)
        rc = make_tls_socket(b, err);
    else if ((b->sock = amqp_tcp_socket_new(b->conn)) == NULL)
        rc = kiln__fail(err, KILN_ENOMEM, "amqp: TCP socket");
    else
        rc = KILN_OK;
    if (rc != KILN_OK)
        return rc;
    s = amqp_socket_open_noblock(b->sock, u->ci.host, u->ci.port, &tv);
    if (s != AMQP_STATUS_OK)
        return connect_failed(b, u, s, err);
    /* Bounds login, and every RPC after it (a dead peer closes nothing). */
    (void)amqp_set_handshake_timeout(b->conn, &tv);
    (void)amqp_set_rpc_timeout(b->conn, &tv);
    return KILN_OK;
}

kiln_err kiln__amqp_connect(kiln__broker *base, kiln_error *err)
{
    kiln__amqp *b = (kiln__amqp *)base;
    url u;
    kiln_err rc;

    if (b->conn != NULL && !b->lost) {
        kiln__ok(err);
        return KILN_OK;
    }
    if (b->conn != NULL)
        kiln__broker_close(base);
    if ((rc = parse_url(b->cfg.broker_url, &u, err)) != KILN_OK)
        return rc;
    if ((b->conn = amqp_new_connection()) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "amqp: connection state");
    if ((rc = open_socket(b, &u, err)) != KILN_OK ||
        (rc = log_in(b, &u, err)) != KILN_OK ||
        (rc = kiln__amqp_open_channel(b, err)) != KILN_OK)
        goto fail;
    b->up = true;
    kiln__log(KILN_LOG_INFO, "broker",
              "amqp connected to %s vhost '%s' heartbeat=%ds name=\"%s\"",
              u.where, u.vhost, amqp_get_heartbeat(b->conn), b->name);
    kiln__ok(err);
    return KILN_OK;
fail:
    b->lost = true; /* no closing handshake on a half-open connection */
    kiln__broker_close(base);
    return rc;
}
