/* Shared code of the worker-pool integration tests (pool_it.h). */
#include "test/support/pool_it.h"

extern char **environ;

const char *it_env_need(const char *name)
{
    const char *v = getenv(name);

    if (v == NULL || v[0] == '\0')
        fail_msg("%s is not set: run the integration tests with `make "
                 "check-integration` (or scripts/with-rabbitmq.sh), which "
                 "starts a private RabbitMQ node",
                 name);
    return v;
}

void it_path(char *out, size_t n, const char *dir, const char *file)
{
    if ((size_t)snprintf(out, n, "%s/%s", dir, file) >= n)
        fail_msg("path %s/%s too long", dir, file);
}

void it_closed_url(char *out, size_t n)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    (void)snprintf(out, n, "amqp://guest:guest@127.0.0.1:%u/",
                   (unsigned)ntohs(a.sin_port));
}

amqp_connection_state_t it_raw_open(void)
{
    char buf[KILN_URL_MAX];
    struct amqp_connection_info ci;
    amqp_connection_state_t c;
    amqp_socket_t *s;
    amqp_rpc_reply_t r;
    const char *url = getenv("KILN_TEST_AMQP_URL");

    if (url == NULL)
        return NULL;
    kiln__strlcpy(buf, url, sizeof(buf));
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK)
        return NULL;
    c = amqp_new_connection();
    if ((s = amqp_tcp_socket_new(c)) == NULL ||
        amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK) {
        (void)amqp_destroy_connection(c);
        return NULL;
    }
    r = amqp_login(c, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0,
                   AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL ||
        amqp_channel_open(c, 1) == NULL) {
        (void)amqp_destroy_connection(c);
        return NULL;
    }
    return c;
}

void it_raw_close(amqp_connection_state_t c)
{
    if (c == NULL)
        return;
    (void)amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    (void)amqp_destroy_connection(c);
}

bool it_queue_info(const char *queue, long *ready, long *consumers)
{
    amqp_connection_state_t c = it_raw_open();
    amqp_queue_declare_ok_t *ok;

    if (c == NULL)
        return false;
    ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0,
                            amqp_empty_table);
    if (ok == NULL) {
        (void)amqp_destroy_connection(c); /* the 404 closed the channel */
        return false;
    }
    if (ready != NULL)
        *ready = (long)ok->message_count;
    if (consumers != NULL)
        *consumers = (long)ok->consumer_count;
    it_raw_close(c);
    return true;
}

bool it_wait_consumers(const char *queue, long want, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;
    long n = -1;

    do {
        if (it_queue_info(queue, NULL, &n) && n == want)
            return true;
        it_sleep_ms(50);
    } while (it_ms() < end);
    return false;
}

long it_wait_ready(const char *queue, long want, int timeout_ms)
{
    long long end = it_ms() + timeout_ms;
    long n = -1;

    do {
        if (!it_queue_info(queue, &n, NULL))
            n = -1;
        if (n == want)
            break;
        it_sleep_ms(50);
    } while (it_ms() < end);
    return n;
}

void it_delete_topology(const kiln_config *cfg)
{
    amqp_connection_state_t c = it_raw_open();

    if (c == NULL) {
        printf("  (teardown: broker unreachable, %s not deleted)\n",
               cfg->queue);
        return;
    }
    test_amqp_delete_topology(c, cfg);
    it_raw_close(c);
}

int it_rabbitmq(const char *cmd)
{
    char line[PATH_MAX * 2 + 64];
    int rc;

    (void)snprintf(line, sizeof(line), "'%s' %s '%s' >/dev/null 2>&1",
                   it_env_need("KILN_TEST_RABBITMQ"), cmd,
                   it_env_need("KILN_TEST_RABBITMQ_DIR"));
    rc = system(line);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

int it_ctl(const char *args)
{
    char line[PATH_MAX * 2 + 1024];
    int rc;

    (void)snprintf(line, sizeof(line), "'%s' ctl '%s' %s >/dev/null 2>&1",
                   it_env_need("KILN_TEST_RABBITMQ"),
                   it_env_need("KILN_TEST_RABBITMQ_DIR"), args);
    rc = system(line);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

bool it_ctl_queue(const char *queue, long *ready, long *unacked,
                  long *consumers)
{
    char cmd[PATH_MAX * 2 + 160], line[512], name[KILN_NAME_MAX];
    bool found = false;
    FILE *p;

    (void)snprintf(cmd, sizeof(cmd),
                   "'%s' ctl '%s' list_queues -q --no-table-headers name "
                   "messages_ready messages_unacknowledged consumers "
                   "2>/dev/null",
                   it_env_need("KILN_TEST_RABBITMQ"),
                   it_env_need("KILN_TEST_RABBITMQ_DIR"));
    if ((p = popen(cmd, "r")) == NULL)
        return false;
    while (fgets(line, sizeof(line), p) != NULL) {
        long r, u, n;
        if (sscanf(line, "%255s %ld %ld %ld", name, &r, &u, &n) == 4 &&
            strcmp(name, queue) == 0) {
            *ready = r;
            *unacked = u;
            *consumers = n;
            found = true;
        }
    }
    (void)pclose(p);
    return found;
}

bool it_ctl_wait_settled(const char *queue, long ready, int timeout_ms, long *r,
                         long *u, long *n)
{
    long long end = it_ms() + timeout_ms;

    *r = *u = *n = -1;
    do {
        if (it_ctl_queue(queue, r, u, n) && *r == ready && *u == 0)
            return true;
        it_sleep_ms(100);
    } while (it_ms() < end);
    return false;
}

void it_env_add(it_env *e, const char *key, const char *fmt, ...)
{
    char val[KILN_PATH_MAX + 64], *kv;
    size_t klen = strlen(key);
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(val, sizeof(val), fmt, ap);
    va_end(ap);
    /* A later value replaces an earlier one of the same name. */
    for (size_t i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], key, klen) == 0 && e->v[i][klen] == '=') {
            free(e->v[i]);
            e->v[i] = e->v[--e->n];
            break;
        }
    }
    assert_true(e->n + 1 < IT_MAX_ENV);
    kv = malloc(klen + strlen(val) + 2);
    assert_non_null(kv);
    (void)sprintf(kv, "%s=%s", key, val);
    e->v[e->n++] = kv;
    e->v[e->n] = NULL;
}

void it_env_add_pairs(it_env *e, const char *const *pairs)
{
    for (size_t k = 0; pairs != NULL && pairs[k] != NULL; k++) {
        const char *eq = strchr(pairs[k], '=');
        char key[64];
        assert_non_null(eq);
        assert_true((size_t)(eq - pairs[k]) < sizeof(key));
        memcpy(key, pairs[k], (size_t)(eq - pairs[k]));
        key[eq - pairs[k]] = '\0';
        it_env_add(e, key, "%s", eq + 1);
    }
}

void it_env_free(it_env *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    e->n = 0;
}

void it_env_init(it_env *e, const it_fix *f)
{
    const kiln_config *c = &f->cfg;

    e->n = 0;
    e->v[0] = NULL;
    for (char **p = environ; *p != NULL && e->n + 1 < IT_MAX_ENV / 2; p++) {
        if (strncmp(*p, "KILN_", 5) == 0)
            continue;
        e->v[e->n] = strdup(*p);
        assert_non_null(e->v[e->n]);
        e->n++;
    }
    e->v[e->n] = NULL;
    it_env_add(e, "KILN_BROKER_URL", "%s", c->broker_url);
    it_env_add(e, "KILN_EXCHANGE", "%s", c->exchange);
    it_env_add(e, "KILN_EXCHANGE_TYPE", "%s", c->exchange_type);
    it_env_add(e, "KILN_QUEUE", "%s", c->queue);
    it_env_add(e, "KILN_BINDING_KEY", "%s", c->binding_key);
    it_env_add(e, "KILN_DEAD_LETTER_EXCHANGE", "%s", c->dead_letter_exchange);
    it_env_add(e, "KILN_DEAD_LETTER_QUEUE", "%s", c->dead_letter_queue);
    it_env_add(e, "KILN_DELAY_EXCHANGE", "%s", c->delay_exchange);
    it_env_add(e, "KILN_PREFETCH", "%u", c->prefetch);
    it_env_add(e, "KILN_CONCURRENCY", "%u", c->concurrency);
    it_env_add(e, "KILN_DRAIN_TIMEOUT_MS", "%u", c->drain_timeout_ms);
    it_env_add(e, "KILN_MAX_BODY_BYTES", "%zu", c->max_body_bytes);
    it_env_add(e, "KILN_CONNECT_TIMEOUT_MS", "%u", c->connect_timeout_ms);
    it_env_add(e, "KILN_PUBLISH_TIMEOUT_MS", "%u", c->publish_timeout_ms);
    it_env_add(e, "KILN_HEARTBEAT", "%u", c->heartbeat_s);
    it_env_add(e, "KILN_QUEUE_TYPE", "%s",
               c->queue_type == KILN_QUEUE_QUORUM ? "quorum" : "classic");
    it_env_add(e, "KILN_MAX_PRIORITY", "%u", c->max_priority);
    it_env_add(e, "KILN_DELAY_LEVELS", "%u", c->delay_levels);
    it_env_add(e, "KILN_DELAY_UNIT_MS", "%u", c->delay_unit_ms);
    it_env_add(e, "KILN_DELAY_QUEUE_TYPE", "%s",
               c->delay_queue_type == KILN_QUEUE_QUORUM ? "quorum" : "classic");
    it_env_add(e, "KILN_RETRY_POLICY", "%s",
               c->retry_policy == KILN_RETRY_EXPONENTIAL ? "exponential"
                                                         : "fibonacci");
    it_env_add(e, "KILN_RETRY_BASE_MS", "%u", c->retry_base_ms);
    it_env_add(e, "KILN_RETRY_MAX_MS", "%u", c->retry_max_ms);
    it_env_add(e, "KILN_MAX_DELIVERIES", "%u", c->max_deliveries);
    it_env_add(e, "KILN_UNREGISTERED", "%s",
               c->unregistered == KILN_UNREGISTERED_REQUEUE ? "requeue"
               : c->unregistered == KILN_UNREGISTERED_DROP  ? "drop"
                                                            : "deadletter");
    it_env_add(e, "KILN_EXPIRED", "%s",
               c->expired == KILN_EXPIRED_DROP ? "drop" : "deadletter");
    it_env_add(e, "KILN_TIME_LIMIT_MS", "%u", c->time_limit_ms);
    it_env_add(e, "KILN_CONSUMER_TIMEOUT_MS", "%u", c->consumer_timeout_ms);
    it_env_add(e, "KILN_DIALECT", "%s",
               c->dialect == KILN_DIALECT_PAOTA           ? "paota"
               : c->dialect == KILN_DIALECT_PAOTA_HEADERS ? "paota-headers"
                                                          : "machinery");
    it_env_add(e, "KILN_LOG_LEVEL", "debug");
    if (c->store == KILN_STORE_MONGODB) {
        it_env_add(e, "KILN_STORE", "mongodb");
        it_env_add(e, "KILN_MONGODB_URL", "%s", c->mongodb_url);
        it_env_add(e, "KILN_MONGODB_DATABASE", "%s", c->mongodb_database);
    }
    it_env_add(e, IT_ENV_PARENT, "%ld", (long)getpid());
}

void it_prog_path(const char *prog, char *out, size_t n)
{
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    char *slash;

    assert_true(len > 0);
    self[len] = '\0';
    slash = strrchr(self, '/');
    assert_non_null(slash);
    *slash = '\0';
    if ((size_t)snprintf(out, n, "%s/%s", self, prog) >= n)
        fail_msg("path of %s too long", prog);
    if (access(out, X_OK) != 0 &&
        (size_t)snprintf(out, n, "%s/../it/%s", self, prog) >= n)
        fail_msg("path of %s too long", prog);
    if (access(out, X_OK) != 0)
        fail_msg("%s is missing: build it with `make tests`", out);
}

size_t it_spawn(it_fix *f, const char *prog, const char *name, it_env *e)
{
    char path[PATH_MAX];
    posix_spawn_file_actions_t fa;
    it_proc *p;
    int rc;

    assert_true(f->n_procs < IT_MAX_PROCS);
    p = &f->procs[f->n_procs];
    memset(p, 0, sizeof(*p));
    kiln__strlcpy(p->name, name, sizeof(p->name));
    if ((size_t)snprintf(p->out, sizeof(p->out), "%s/%s-%zu.out", f->dir, name,
                         f->n_procs) >= sizeof(p->out))
        fail_msg("path of %s's output too long", name);
    it_prog_path(prog, path, sizeof(path));
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, p->out,
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    rc = posix_spawn(&p->pid, path, &fa, NULL, (char *const[]){path, NULL},
                     e->v);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        fail_msg("posix_spawn %s: %s", path, strerror(rc));
    return f->n_procs++;
}

bool it_wait_exit(it_fix *f, size_t i, int timeout_ms)
{
    it_proc *p = &f->procs[i];
    long long end = it_ms() + timeout_ms;

    while (p->pid > 0) {
        pid_t r = waitpid(p->pid, &p->status, WNOHANG);
        if (r == p->pid || (r < 0 && errno != EINTR)) {
            p->pid = 0;
            break;
        }
        if (it_ms() >= end)
            return false;
        it_sleep_ms(5);
    }
    return true;
}

bool it_alive(it_fix *f, size_t i)
{
    return !it_wait_exit(f, i, 0);
}

void it_signal(it_fix *f, size_t i, int sig)
{
    assert_true(f->procs[i].pid > 0);
    assert_int_equal(kill(f->procs[i].pid, sig), 0);
}

void it_tail(const char *path, int lines)
{
    FILE *fp = fopen(path, "r");
    static char buf[1 << 16];
    size_t n = 0, k, start = 0;
    long size;
    int seen = 0;

    if (fp == NULL)
        return;
    if (fseek(fp, 0, SEEK_END) == 0 && (size = ftell(fp)) > 0) {
        long from =
            size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0;
        if (fseek(fp, from, SEEK_SET) == 0)
            n = fread(buf, 1, sizeof(buf) - 1, fp);
    }
    (void)fclose(fp);
    buf[n] = '\0';
    k = n > 0 && buf[n - 1] == '\n' ? n - 1 : n;
    while (k-- > 0)
        if (buf[k] == '\n' && ++seen == lines) {
            start = k + 1;
            break;
        }
    printf("  ---- %s ----\n%s%s", path, buf + start,
           n > 0 && buf[n - 1] != '\n' ? "\n" : "");
}

long long it_expect_exit0(it_fix *f, size_t i, int timeout_ms)
{
    long long t0 = it_ms();
    it_proc *p = &f->procs[i];

    if (!it_wait_exit(f, i, timeout_ms)) {
        it_tail(p->out, 20);
        fail_msg("%s did not exit within %d ms", p->name, timeout_ms);
    }
    if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != 0) {
        it_tail(p->out, 20);
        fail_msg("%s: %s %d", p->name,
                 WIFEXITED(p->status) ? "exit status" : "killed by signal",
                 WIFEXITED(p->status) ? WEXITSTATUS(p->status)
                                      : WTERMSIG(p->status));
    }
    return it_ms() - t0;
}

size_t it_start_worker(it_fix *f, const char *name, const char *const *extra)
{
    it_env e;
    size_t i;

    it_env_init(&e, f);
    it_env_add(&e, IT_ENV_LOG, "%s", f->log);
    it_env_add(&e, IT_ENV_NAME, "%s", name);
    it_env_add_pairs(&e, extra);
    i = it_spawn(f, "prog_worker", name, &e);
    it_env_free(&e);
    return i;
}

int it_setup(void **state, const char *tag)
{
    it_fix *f = calloc(1, sizeof(*f));
    unsigned char r[6];
    char sfx[16];
    kiln_config *c;

    assert_non_null(f);
    c = &f->cfg;
    kiln_config_init(c);
    assert_int_equal(kiln__random(r, sizeof(r), NULL), KILN_OK);
    (void)snprintf(sfx, sizeof(sfx), "%02x%02x%02x%02x%02x%02x", r[0], r[1],
                   r[2], r[3], r[4], r[5]);
    kiln__strlcpy(c->broker_url, it_env_need("KILN_TEST_AMQP_URL"),
                  sizeof(c->broker_url));
    (void)it_env_need("KILN_TEST_RABBITMQ");
    (void)it_env_need("KILN_TEST_RABBITMQ_DIR");
    (void)snprintf(c->exchange, sizeof(c->exchange), "kiln_it.pool.%s.%s.x",
                   tag, sfx);
    (void)snprintf(c->queue, sizeof(c->queue), "kiln_it.pool.%s.%s.q", tag,
                   sfx);
    (void)snprintf(c->binding_key, sizeof(c->binding_key), "task.%s", sfx);
    (void)snprintf(c->dead_letter_exchange, sizeof(c->dead_letter_exchange),
                   "kiln_it.pool.%s.%s.dlx", tag, sfx);
    (void)snprintf(c->dead_letter_queue, sizeof(c->dead_letter_queue),
                   "kiln_it.pool.%s.%s.dlq", tag, sfx);
    (void)snprintf(c->delay_exchange, sizeof(c->delay_exchange),
                   "kiln_it.pool.%s.%s.delay", tag, sfx);
    c->connect_timeout_ms = 5000;
    c->publish_timeout_ms = 10000;
    c->drain_timeout_ms = 10000;
    c->log_level = KILN_LOG_NOTICE;
    (void)snprintf(f->dir, sizeof(f->dir), "/tmp/kiln-it-%s-XXXXXX", tag);
    assert_non_null(mkdtemp(f->dir));
    it_path(f->log, sizeof(f->log), f->dir, "tasks.log");
    *state = f;
    return 0;
}

void it_rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX * 2];

    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        (void)snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        (void)unlink(path);
    }
    (void)closedir(d);
    (void)rmdir(dir);
}

void it_kill_all(it_fix *f)
{
    for (size_t i = 0; i < f->n_procs; i++) {
        it_proc *p = &f->procs[i];
        if (p->pid > 0) {
            (void)kill(p->pid, SIGKILL);
            (void)waitpid(p->pid, &p->status, 0);
            p->pid = 0;
        }
    }
}

int it_teardown(void **state)
{
    it_fix *f = *state;

    it_kill_all(f);
    for (size_t i = 0; i < f->n_procs && !f->passed; i++)
        it_tail(f->procs[i].out, 30);
    kiln_pool_free(f->pool);
    if (f->broker_stopped && it_rabbitmq("start_app") != 0)
        printf("  (teardown: start_app failed)\n");
    it_delete_topology(&f->cfg);
    it_rm_dir(f->dir);
    free(f);
    return 0;
}

kiln_pool *it_pool(it_fix *f)
{
    kiln_error err;

    if (f->pool == NULL) {
        f->pool = kiln_pool_new(&f->cfg, 1, "it-driver", &err);
        if (f->pool == NULL)
            fail_msg("kiln_pool_new: %s", err.message);
    }
    return f->pool;
}

void it_send(it_fix *f, size_t n, size_t batch, it_uuid *uuids)
{
    kiln_signature **sigs = calloc(batch, sizeof(*sigs));
    kiln_err *st = calloc(batch, sizeof(*st));
    kiln_error err;

    assert_non_null(sigs);
    assert_non_null(st);
    for (size_t done = 0; done < n;) {
        size_t m = n - done < batch ? n - done : batch;
        kiln_err rc;
        for (size_t i = 0; i < m; i++) {
            sigs[i] = kiln_signature_new(IT_TASK_RECORD, &err);
            assert_non_null(sigs[i]);
            if (uuids != NULL)
                kiln__strlcpy(uuids[done + i], kiln_signature_uuid(sigs[i]),
                              sizeof(it_uuid));
        }
        rc = kiln_pool_send_tasks(
            it_pool(f), (const kiln_signature *const *)sigs, m, st, &err);
        for (size_t i = 0; i < m; i++)
            kiln_signature_free(sigs[i]);
        if (rc != KILN_OK)
            fail_msg("kiln_pool_send_tasks (tasks %zu..%zu): %s: %s", done,
                     done + m - 1, kiln_strerror(rc), err.message);
        done += m;
    }
    free(sigs);
    free(st);
}

kiln_signature *it_new_sig(const char *name, it_uuid uuid)
{
    kiln_error err;
    kiln_signature *sig = kiln_signature_new(name, &err);

    if (sig == NULL)
        fail_msg("kiln_signature_new: %s", err.message);
    if (uuid != NULL)
        kiln__strlcpy(uuid, kiln_signature_uuid(sig), sizeof(it_uuid));
    return sig;
}

void it_send_free(it_fix *f, kiln_signature **sigs, size_t n)
{
    kiln_error err;
    kiln_err rc = kiln_pool_send_tasks(
        it_pool(f), (const kiln_signature *const *)sigs, n, NULL, &err);

    for (size_t i = 0; i < n; i++)
        kiln_signature_free(sigs[i]);
    if (rc != KILN_OK)
        fail_msg("kiln_pool_send_tasks: %s: %s", kiln_strerror(rc),
                 err.message);
}
