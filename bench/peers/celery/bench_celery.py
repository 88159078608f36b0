"""Celery's side of `make bench`: the same no-op task with the same guarantees.

    python bench_celery.py send N OUT
    celery -A bench_celery worker -P prefork|threads|solo -c C ...  (BENCH_N, BENCH_OUT)

Settings for at-least-once delivery as Celery's documentation recommends:
persistent messages on a durable queue, publisher confirms
(broker_transport_options confirm_publish), acks after the task
(task_acks_late), no result backend (kiln runs without a store). The prefetch
is the one every client in the benchmark uses: BENCH_PREFETCH (default 128)
in total, so worker_prefetch_multiplier = BENCH_PREFETCH / concurrency.

The worker stops itself after BENCH_N tasks: a counter in shared memory
(created before prefork forks its children) records the first and last task
times, and the last task writes BENCH_OUT and sends the main process SIGTERM
(Celery's warm shutdown, which still acks what ran).
"""
import multiprocessing
import os
import signal
import sys
import time

from celery import Celery

URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PREFETCH = int(os.environ.get("BENCH_PREFETCH", "128"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "1"))
QUEUE = "celery_bench"

app = Celery("bench_celery", broker=URL)
app.conf.update(
    # BENCH_CONFIRM=0 only to fill a backlog quickly: the drain it feeds is
    # measured, the fill is not.
    broker_transport_options={
        "confirm_publish": os.environ.get("BENCH_CONFIRM", "1") != "0"},
    task_acks_late=True,
    task_default_delivery_mode="persistent",
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=max(1, PREFETCH // max(1, CONCURRENCY)),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_MAIN_PID = os.getpid()
_EXPECT = int(os.environ.get("BENCH_N", "0"))
_OUT = os.environ.get("BENCH_OUT", "-")
_done = multiprocessing.Value("q", 0)
_first = multiprocessing.Value("q", 0, lock=False)


def payload(i):
    """Task i's argument: the 200-byte user record every client sends."""
    s = ('{"id":"%d","name":"user %d","email":"user%d@example.com",'
         '"sent_ns":%d,"pad":"' % (i, i, i, time.time_ns()))
    return s + "x" * max(0, 198 - len(s)) + '"}'


def _finish(now):
    text = "tasks=%d\nfirst_ns=%d\nlast_ns=%d\n" % (_EXPECT, _first.value, now)
    if _OUT == "-":
        sys.stdout.write(text)
    else:
        with open(_OUT, "w") as f:
            f.write(text)
    os.kill(_MAIN_PID, signal.SIGTERM)


@app.task(name="noop")
def noop(rec):
    now = time.time_ns()
    with _done.get_lock():
        _done.value += 1
        n = _done.value
        if n == 1:
            _first.value = now
    if n == _EXPECT:
        _finish(now)


def send(n, out):
    t0 = time.time_ns()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            noop.apply_async((payload(i),), producer=producer)
    secs = (time.time_ns() - t0) / 1e9
    with open(out, "w") if out != "-" else sys.stdout as f:
        f.write("sent=%d\nsecs=%.3f\nrate=%.0f\nstart_ns=%d\n"
                % (n, secs, n / secs, t0))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "send":
        sys.exit("usage: bench_celery.py send N OUT")
    send(int(sys.argv[2]), sys.argv[3])
