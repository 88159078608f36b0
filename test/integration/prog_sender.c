/*
 * A producer process for the worker-pool integration tests: sends
 * it.record tasks with kiln_pool_send_tasks in batches of KILN_IT_BATCH,
 * pausing KILN_IT_PAUSE_MS between batches, and writes the fate of each
 * task to the send log (pool_it_shared.h): "C" when the broker confirmed
 * it, "X" when the call reported a failure. A failed batch is not resent
 * (its tasks may or may not run); the next batch has new tasks.
 *
 * It keeps one pool, and so one set of publishing connections, for its
 * whole life: a broker restart must be survived by the library, not by
 * starting a new process. It stops after KILN_IT_TOTAL confirmed tasks,
 * at SIGTERM or SIGINT (after the batch in progress), or after
 * KILN_IT_SECONDS, and exits 0 when it stopped for one of the first two
 * reasons.
 */
#include "test/support/pool_it_shared.h"

#include <kiln.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <unistd.h>

#define MAX_BATCH 1000

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};

    (void)nanosleep(&ts, NULL); /* a signal cuts it short: fine */
}

static unsigned env_uint(const char *name, unsigned dflt)
{
    const char *v = getenv(name); /* NOLINT(concurrency-mt-unsafe): main
                                     thread, before any other starts */

    return v != NULL && v[0] != '\0' ? (unsigned)strtoul(v, NULL, 10) : dflt;
}

typedef struct sender {
    kiln_pool *pool;
    int sent_fd;
    unsigned batch;
    long confirmed, failed, calls_failed;
    long long first_fail_ms, last_fail_ms, first_ok_after_fail_ms;
    char last_error[300];
} sender;

/* Writes the batch's outcome to the send log in one write. */
static void record(sender *s, kiln_signature *const *sigs, const kiln_err *st,
                   size_t n)
{
    static char buf[MAX_BATCH * 80];
    long long t = now_ms();
    size_t len = 0;

    for (size_t i = 0; i < n; i++) {
        int k = snprintf(buf + len, sizeof(buf) - len, "%c %s %ld %lld\n",
                         st[i] == KILN_OK ? 'C' : 'X',
                         kiln_signature_uuid(sigs[i]), (long)getpid(), t);
        if (k < 0 || (size_t)k >= sizeof(buf) - len)
            break;
        len += (size_t)k;
        if (st[i] == KILN_OK) {
            s->confirmed++;
            if (s->last_fail_ms != 0 && s->first_ok_after_fail_ms == 0)
                s->first_ok_after_fail_ms = t;
        } else {
            s->failed++;
        }
    }
    if (len > 0 && write(s->sent_fd, buf, len) != (ssize_t)len)
        (void)fprintf(stderr, "prog_sender: send log write failed\n");
}

/* One batch: new signatures, one send call, the log. */
static int send_batch(sender *s)
{
    static kiln_signature *sigs[MAX_BATCH];
    static kiln_err st[MAX_BATCH];
    kiln_error err;
    kiln_err rc;
    int ret = 0;

    for (size_t i = 0; i < s->batch; i++) {
        if ((sigs[i] = kiln_signature_new(IT_TASK_RECORD, &err)) == NULL) {
            (void)fprintf(stderr, "prog_sender: %s\n", err.message);
            for (size_t j = 0; j < i; j++)
                kiln_signature_free(sigs[j]);
            return -1;
        }
    }
    rc = kiln_pool_send_tasks(s->pool, (const kiln_signature *const *)sigs,
                              s->batch, st, &err);
    if (rc != KILN_OK) {
        long long t = now_ms();
        s->calls_failed++;
        if (s->first_fail_ms == 0)
            s->first_fail_ms = t;
        s->last_fail_ms = t;
        s->first_ok_after_fail_ms = 0;
        (void)snprintf(s->last_error, sizeof(s->last_error), "%s: %s",
                       kiln_strerror(rc), err.message);
        ret = 1;
    }
    record(s, sigs, st, s->batch);
    for (size_t i = 0; i < s->batch; i++)
        kiln_signature_free(sigs[i]);
    return ret;
}

/* The test that started this process may be killed (a timeout): go with
 * it rather than stay behind. */
static int it_die_with_parent(void)
{
    const char *want =
        getenv(IT_ENV_PARENT); /* NOLINT(concurrency-mt-unsafe) */

    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return -1;
    if (want != NULL && strtol(want, NULL, 10) != (long)getppid())
        return -1; /* the parent is already gone */
    return 0;
}

int main(void)
{
    static sender s;
    const char *sent = getenv(IT_ENV_SENT); /* NOLINT(concurrency-mt-unsafe) */
    unsigned total = env_uint(IT_ENV_TOTAL, 0);
    unsigned pause = env_uint(IT_ENV_PAUSE_MS, 10);
    unsigned seconds = env_uint(IT_ENV_SECONDS, 120);
    long long t0 = now_ms(), end = t0 + (long long)seconds * 1000;
    struct sigaction sa;
    kiln_config cfg;
    kiln_error err;
    int status = 0;

    (void)setvbuf(stdout, NULL, _IOLBF, 0);
    if (it_die_with_parent() != 0)
        return 3;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    s.batch = env_uint(IT_ENV_BATCH, 50);
    if (s.batch == 0 || s.batch > MAX_BATCH || sent == NULL) {
        (void)fprintf(stderr, "prog_sender: set %s (1..%d) and %s\n",
                      IT_ENV_BATCH, MAX_BATCH, IT_ENV_SENT);
        return 2;
    }
    s.sent_fd = open(sent, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    kiln_config_init(&cfg);
    if (s.sent_fd < 0 || kiln_config_from_env(&cfg, &err) != KILN_OK ||
        (s.pool = kiln_pool_new(&cfg, 1, "it-sender", &err)) == NULL) {
        (void)fprintf(stderr, "prog_sender: %s\n",
                      s.sent_fd < 0 ? "cannot open the send log" : err.message);
        return 2;
    }
    while (!stop_requested && (total == 0 || s.confirmed < (long)total)) {
        if (now_ms() >= end) {
            status = 1;
            (void)fprintf(stderr, "prog_sender: gave up after %u s\n", seconds);
            break;
        }
        if (send_batch(&s) < 0) {
            status = 1;
            break;
        }
        /* After a failure, wait a little longer: the broker may be down. */
        sleep_ms(s.last_fail_ms != 0 && s.first_ok_after_fail_ms == 0 ? 100
                                                                      : pause);
    }
    printf("prog_sender %ld: %ld confirmed, %ld failed (%ld calls) in %lld "
           "ms%s%s\n",
           (long)getpid(), s.confirmed, s.failed, s.calls_failed, now_ms() - t0,
           s.calls_failed > 0 ? "; last error: " : "", s.last_error);
    kiln_pool_free(s.pool);
    close(s.sent_fd);
    return status;
}
