/* procmon: runs a command and records what it costs: the peak resident
 * memory of the process and its descendants (sampled every 100 ms from
 * /proc, summed over the tree, since a Celery prefork worker is several
 * processes) and their CPU time, as a timeline, so the CPU spent in any
 * window (the benchmark's first to last task) can be read off later.
 * SIGINT and SIGTERM are passed on to the command.
 *
 *   procmon OUT COMMAND [ARG...]
 *
 * OUT gets key=value lines: exit, wall_s, cpu_s and peak_rss_kb (from
 * wait4's rusage and the samples), then one `sample=T_NS CPU_S RSS_KB`
 * line per sample. Not part of the library.
 */
#include "bench.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SAMPLES 100000

struct sample {
    int64_t t_ns;
    double cpu_s;
    long rss_kb;
};

static volatile sig_atomic_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0)
        (void)kill((pid_t)child_pid, sig);
}

/* Adds `pid`'s CPU (its own and its reaped children's) and RSS to the
 * totals, then recurses into its children. */
static void add_tree(long pid, double *cpu_s, long *rss_kb, int depth)
{
    static long tck, page_kb;
    char path[64], buf[1024];
    FILE *f;

    if (tck == 0) {
        tck = sysconf(_SC_CLK_TCK);
        page_kb = sysconf(_SC_PAGESIZE) / 1024;
    }
    (void)snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    if ((f = fopen(path, "r")) == NULL)
        return;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    (void)fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long ut, st;
    long cut, cst, rss;
    if (p == NULL || sscanf(p + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                            "%lu %lu %ld %ld %*d %*d %*d %*d %*u %*u %ld",
                            &ut, &st, &cut, &cst, &rss) != 5)
        return;
    *cpu_s += (double)(ut + st + (unsigned long)cut + (unsigned long)cst) /
              (double)tck;
    *rss_kb += rss * page_kb;
    if (depth > 8)
        return;
    (void)snprintf(path, sizeof(path), "/proc/%ld/task/%ld/children", pid, pid);
    if ((f = fopen(path, "r")) == NULL)
        return;
    long kid;
    while (fscanf(f, "%ld", &kid) == 1)
        add_tree(kid, cpu_s, rss_kb, depth + 1);
    (void)fclose(f);
}

int main(int argc, char **argv)
{
    static struct sample s[MAX_SAMPLES];
    size_t ns = 0;
    long peak_kb = 0;
    struct rusage ru;
    struct sigaction sa;
    int status = 0;
    int64_t t0 = bench_now_ns();

    if (argc < 3) {
        fprintf(stderr, "usage: procmon OUT COMMAND [ARG...]\n");
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = forward;
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    child_pid = pid;
    for (;;) {
        pid_t r = wait4(pid, &status, WNOHANG, &ru);
        if (r == pid)
            break;
        if (r < 0) {
            perror("wait4");
            return 1;
        }
        double cpu = 0;
        long rss = 0;
        add_tree((long)pid, &cpu, &rss, 0);
        if (ns < MAX_SAMPLES)
            s[ns++] = (struct sample){bench_now_ns(), cpu, rss};
        if (rss > peak_kb)
            peak_kb = rss;
        bench_sleep_ns(100000000);
    }
    double cpu = (double)ru.ru_utime.tv_sec +
                 (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    if (ru.ru_maxrss > peak_kb)
        peak_kb = ru.ru_maxrss;
    /* The final sample: all CPU, at the moment the command ended. */
    if (ns < MAX_SAMPLES)
        s[ns++] = (struct sample){bench_now_ns(), cpu, 0};
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    bench_result(argv[1], "exit=%d\nwall_s=%.3f\ncpu_s=%.3f\npeak_rss_kb=%ld\n",
                 code, (double)(bench_now_ns() - t0) / 1e9, cpu, peak_kb);
    for (size_t i = 0; i < ns; i++)
        bench_result(argv[1], "sample=%lld %.3f %ld\n", (long long)s[i].t_ns,
                     s[i].cpu_s, s[i].rss_kb);
    return code;
}
