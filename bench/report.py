#!/usr/bin/env python3
"""Turns one `make bench` run into bench/results: results.md (the tables, with
the ratios kiln/raw and kiln/peer from the same run), results.json (every
figure) and the data files bench/chart.gp plots.

    bench/report.py RUN_DIR RESULTS_DIR

RUN_DIR holds the key=value files scripts/bench.sh collected: NAME.res from
the programs, NAME.mon from procmon (the worker's CPU and memory timeline),
machine.txt. Standard library only.
"""
import json
import os
import sys

RUN, OUT = sys.argv[1], sys.argv[2]
CONC = [1, 2, 8, 32]


def load(name):
    """key=value lines of RUN/name, or {} when the run did not happen."""
    path = os.path.join(RUN, name)
    kv, samples = {}, []
    if not os.path.exists(path):
        return kv
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key == "sample":
                t, cpu, rss = value.split()
                samples.append((int(t), float(cpu), int(rss)))
            elif key and key not in kv:
                kv[key] = value
    if samples:
        kv["samples"] = samples
    return kv


def num(kv, key):
    try:
        return float(kv[key])
    except (KeyError, ValueError):
        return None


def cpu_at(samples, t):
    """CPU seconds used by time t, interpolated between procmon samples."""
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if not before:
        return samples[0][1]
    if not after:
        return samples[-1][1]
    (t0, c0, _), (t1, c1, _) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)


def worker_run(name, start_key=None):
    """Rate, latency and cost of one worker run: NAME.res and NAME.mon.

    The rate counts from the first task's start to the last one's, or from
    the sender's start (start_key: the sender's NAME) for end-to-end runs.
    CPU per 1,000 tasks is the CPU the worker used in that same window.
    """
    res, mon = load(name + ".res"), load(name + ".mon")
    tasks, first, last = num(res, "tasks"), num(res, "first_ns"), num(res, "last_ns")
    if not tasks or not first or not last:
        return None
    start = first
    if start_key:
        start = num(load(start_key + ".res"), "start_ns") or first
    secs = (last - start) / 1e9
    out = {"tasks": int(tasks), "secs": round(secs, 3),
           "rate": round(tasks / secs) if secs > 0 else None}
    for k in ("lat_p50_ms", "lat_p99_ms", "lat_p999_ms", "lat_max_ms"):
        if num(res, k) is not None:
            out[k] = num(res, k)
    if "store_state" in res:
        out["store_state"] = res["store_state"]
    if mon:
        out["peak_rss_mb"] = round(num(mon, "peak_rss_kb") / 1024, 1)
        out["cpu_total_s"] = num(mon, "cpu_s")
        samples = mon.get("samples", [])
        if samples and last - first > 0.5e9:
            cpu = cpu_at(samples, last) - cpu_at(samples, first)
            out["cpu_s_per_1000"] = round(cpu / tasks * 1000, 3)
        elif out["cpu_total_s"] is not None:
            # Too short a window for 100 ms samples: the whole life.
            out["cpu_s_per_1000"] = round(out["cpu_total_s"] / tasks * 1000, 3)
    return out


def send_run(name):
    kv = load(name + ".res")
    return round(num(kv, "rate")) if num(kv, "rate") else None


def median(xs):
    xs = sorted(x for x in xs if x)
    return xs[len(xs) // 2] if xs else None


def machine():
    kv = load("machine.txt")
    out = {k: v for k, v in kv.items() if k != "samples"}
    try:
        with open(os.path.join(RUN, "loads.txt")) as f:
            loads = [float(line.split("\t")[0]) for line in f if line.strip()]
        out["load_min"], out["load_max"] = min(loads), max(loads)
    except (OSError, ValueError):
        pass
    return out


R = {"machine": machine(), "raw": {}, "kiln": {}, "kiln_store": {}, "peers": {}}
raw, kiln, store, peers = R["raw"], R["kiln"], R["kiln_store"], R["peers"]

raw["send"] = send_run("raw_send")
raw["send_w8"] = send_run("raw_send_w8")
raw["drain"] = worker_run("raw_drain")
raw["e2e"] = worker_run("raw_e2e", "raw_e2e_send")
for pct in (50, 90):
    raw["lat%d" % pct] = worker_run("raw_lat%d" % pct)
    if raw["lat%d" % pct]:
        raw["lat%d" % pct]["sent_rate"] = send_run("raw_lat%d_send" % pct)

kiln["send_single1"] = send_run("kiln_send_single1")
kiln["send_single8"] = send_run("kiln_send_single8")
kiln["send_single32"] = send_run("kiln_send_single32")
for prefix, d in (("kiln", kiln), ("kiln_store", store)):
    d["send_batch"] = median([send_run("%s_send_batch_c%d" % (prefix, c)) for c in CONC])
    for c in CONC:
        d["drain_c%d" % c] = worker_run("%s_drain_c%d" % (prefix, c))
        d["e2e_c%d" % c] = worker_run("%s_e2e_c%d" % (prefix, c), "%s_e2e_send_c%d" % (prefix, c))
for pct in (50, 90):
    kiln["lat%d" % pct] = worker_run("kiln_lat%d" % pct)
    if kiln["lat%d" % pct]:
        kiln["lat%d" % pct]["sent_rate"] = send_run("kiln_lat%d_send" % pct)

peers["celery_send_confirmed"] = send_run("celery_send")
peers["celery_send_unconfirmed"] = median(
    [send_run("celery_fill_" + p) for p in ("prefork", "threads", "solo")])
for p in ("prefork", "threads", "solo"):
    peers["celery_" + p] = worker_run("celery_drain_" + p)
    peers["celery_%s_e2e" % p] = worker_run("celery_e2e_" + p, "celery_e2e_send_" + p)
for p in ("machinery", "paota"):
    peers[p + "_send"] = send_run(p + "_send")
    peers[p] = worker_run(p + "_drain")
    peers[p + "_e2e"] = worker_run(p + "_e2e", p + "_e2e_send")

with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(R, f, indent=1, sort_keys=True)


# ---- markdown --------------------------------------------------------------
def fmt(x, digits=0):
    if x is None:
        return "not run"
    return "{:,.{d}f}".format(x, d=digits)


def ratio(a, b):
    return "%.2f" % (a / b) if a and b else "n/a"


def times(a, b):
    return "%.2fx" % (a / b) if a and b else "n/a"


def rate(run):
    return run["rate"] if run else None


def get(run, key):
    return run.get(key) if run else None


best_e2e = max([rate(kiln["e2e_c%d" % c]) or 0 for c in CONC]) or None
best_e2e_c = next((c for c in CONC if rate(kiln["e2e_c%d" % c]) == best_e2e), None)
m = R["machine"]
lines = []
w = lines.append
w("# kiln benchmark results")
w("")
w("%s run of %s, kiln %s. Machine: %s, %s cores, %s GB RAM, %s, kernel %s; "
  "RabbitMQ %s (Erlang %s) on the same machine, rabbitmq-c %s, Celery %s, %s. "
  "Load average before / after: %s / %s; 1-minute load at the steps of the "
  "run: %s to %s (2 = both cores busy, so more means other work shared them)."
  % ("Smoke (BENCH_QUICK=1)" if m.get("quick") == "1" else "Full", m.get("date"),
     m.get("kiln"), m.get("cpu"), m.get("cores"), m.get("mem_gb"), m.get("os"),
     m.get("kernel"), m.get("rabbitmq"), m.get("erlang"), m.get("rabbitmq_c"),
     m.get("celery"), m.get("go_peers", "").strip(), m.get("load_before"),
     m.get("load_after"), m.get("load_min", "?"), m.get("load_max", "?")))
w("")
w("Every client sends the same task (one ~200-byte JSON string argument) with "
  "the same guarantees: persistent messages on a durable queue, publisher "
  "confirms, manual ack after the task, prefetch 128. Rates are tasks per "
  "second; a drain runs from the first task's start to the last one's, end to "
  "end from the sender's start to the last task's start. CPU is the worker "
  "process's (and its children's) user+system time in that window.")
w("")
w("## Targets")
w("")
w("| target | measured | met |")
w("|---|---|---|")


def target(name, value, ok):
    w("| %s | %s | %s |" % (name, value, "n/a" if ok is None else ("yes" if ok else "no")))


raw_e2e = rate(raw["e2e"])
best_drain = max([rate(kiln["drain_c%d" % c]) or 0 for c in CONC]) or None
worst_e2e = min([rate(kiln["e2e_c%d" % c]) for c in CONC if rate(kiln["e2e_c%d" % c])] or [0]) or None
target("kiln_pool_send_tasks from 1 thread >= 0.9x the bare publisher",
       "%s vs %s/s (%s)" % (fmt(kiln["send_batch"]), fmt(raw["send"]),
                            times(kiln["send_batch"], raw["send"])),
       kiln["send_batch"] >= 0.9 * raw["send"] if kiln["send_batch"] and raw["send"] else None)
target("kiln_pool_send_task from 8 threads >= 8,000/s together",
       "%s/s (the bare publisher with a window of 8: %s/s, %s)" % (
           fmt(kiln["send_single8"]), fmt(raw["send_w8"]),
           times(kiln["send_single8"], raw["send_w8"])),
       kiln["send_single8"] >= 8000 if kiln["send_single8"] else None)
target("kiln end to end >= 0.95x the bare client, at every concurrency",
       "%s to %s vs %s/s (%s to %s; best at concurrency %s)" % (
           fmt(worst_e2e), fmt(best_e2e), fmt(raw_e2e), times(worst_e2e, raw_e2e),
           times(best_e2e, raw_e2e), best_e2e_c),
       worst_e2e >= 0.95 * raw_e2e if worst_e2e and raw_e2e else None)
target("kiln draining a backlog >= 1.0x the bare consumer (best concurrency)",
       "%s vs %s/s (%s)" % (fmt(best_drain), fmt(rate(raw["drain"])),
                            times(best_drain, rate(raw["drain"]))),
       best_drain >= rate(raw["drain"]) if best_drain and rate(raw["drain"]) else None)
# Peers: kiln's best end to end against each peer's best end to end, and
# kiln's best drain against each peer's best drain.
celery_pools = ("prefork", "threads", "solo")
celery_e2e = max([rate(peers["celery_%s_e2e" % p]) or 0 for p in celery_pools]) or None
celery_drain = max([rate(peers["celery_" + p]) or 0 for p in celery_pools]) or None
for name, factor, e2e, drain in (
        ("Celery's best pool", 3, celery_e2e, celery_drain),
        ("machinery", 2, rate(peers["machinery_e2e"]), rate(peers["machinery"])),
        ("paota", 2, rate(peers["paota_e2e"]), rate(peers["paota"]))):
    target(">= %dx %s, end to end" % (factor, name),
           "%s (%s vs %s/s)" % (times(best_e2e, e2e), fmt(best_e2e), fmt(e2e)),
           best_e2e >= factor * e2e if best_e2e and e2e else None)
    target(">= %dx %s, draining a backlog" % (factor, name),
           "%s (%s vs %s/s)" % (times(best_drain, drain), fmt(best_drain), fmt(drain)),
           best_drain >= factor * drain if best_drain and drain else None)
p99 = get(kiln["lat50"], "lat_p99_ms")
target("p99 send-to-start <= 5 ms at 50% load",
       "%s ms (p50 %s, p99.9 %s)" % (fmt(p99, 2), fmt(get(kiln["lat50"], "lat_p50_ms"), 2),
                                     fmt(get(kiln["lat50"], "lat_p999_ms"), 2)),
       p99 <= 5 if p99 is not None else None)
rss8 = get(kiln["drain_c8"], "peak_rss_mb")
target("worker at concurrency 8 under 10 MB RSS", "%s MB" % fmt(rss8, 1),
       rss8 < 10 if rss8 is not None else None)
w("")
w("## kiln against the limit (raw rabbitmq-c)")
w("")
w("| measure | raw rabbitmq-c | kiln | kiln/raw |")
w("|---|---:|---:|---:|")
w("| send, confirmed, 1 thread: raw a window of 1,000; kiln_pool_send_tasks, batches of 1,000 | %s | %s | %s |" % (
    fmt(raw["send"]), fmt(kiln["send_batch"]), ratio(kiln["send_batch"], raw["send"])))
w("| send, kiln_pool_send_task (one confirm each), 1 thread | | %s | |" % fmt(kiln["send_single1"]))
w("| send, kiln_pool_send_task (one confirm each), 8 threads; raw a window of 8 | %s | %s | %s |" % (
    fmt(raw["send_w8"]), fmt(kiln["send_single8"]), ratio(kiln["send_single8"], raw["send_w8"])))
w("| send, kiln_pool_send_task (one confirm each), 32 threads | | %s | |" % fmt(kiln["send_single32"]))
ntask = (kiln["drain_c1"] or raw["drain"] or {}).get("tasks", 0)
for c in CONC:
    k = rate(kiln["drain_c%d" % c])
    w("| drain a %s backlog, concurrency %d | %s | %s | %s |" % (
        fmt(ntask), c, fmt(rate(raw["drain"])), fmt(k), ratio(k, rate(raw["drain"]))))
for c in CONC:
    k = rate(kiln["e2e_c%d" % c])
    w("| end to end, concurrency %d | %s | %s | %s |" % (c, fmt(raw_e2e), fmt(k), ratio(k, raw_e2e)))
w("")
w("Raw rabbitmq-c has no worker threads; its column repeats its one figure.")
w("")
w("## Latency from send to task start")
w("")
w("A paced sender at a fixed share of the best end-to-end rate (kiln: "
  "batches of the tasks due each millisecond; concurrency 8). Milliseconds.")
w("")
w("| load | client | rate sent | p50 | p99 | p99.9 | max |")
w("|---|---|---:|---:|---:|---:|---:|")
for pct in (50, 90):
    for who, d in (("raw rabbitmq-c", raw), ("kiln", kiln)):
        r = d["lat%d" % pct]
        w("| %d%% | %s | %s | %s | %s | %s | %s |" % (
            pct, who, fmt(get(r, "sent_rate")), fmt(get(r, "lat_p50_ms"), 2),
            fmt(get(r, "lat_p99_ms"), 2), fmt(get(r, "lat_p999_ms"), 2),
            fmt(get(r, "lat_max_ms"), 2)))
w("")
w("## Store off and on (task states in FerretDB)")
w("")
if not any(store.get("drain_c%d" % c) for c in CONC):
    why = "BENCH_STORE=0"
    if os.path.exists(os.path.join(RUN, "store_skipped.txt")):
        with open(os.path.join(RUN, "store_skipped.txt")) as f:
            why = f.read().strip()
    R["kiln_store"]["not_run"] = why
    w("Not run: %s" % why)
else:
    w("| measure | store off | store on | on/off | state of the last task |")
    w("|---|---:|---:|---:|---|")
    w("| send, batches of 1,000 from 1 thread | %s | %s | %s | |" % (
        fmt(kiln["send_batch"]), fmt(store["send_batch"]), ratio(store["send_batch"], kiln["send_batch"])))
    for kind in ("drain", "e2e"):
        for c in CONC:
            off, on = kiln["%s_c%d" % (kind, c)], store["%s_c%d" % (kind, c)]
            w("| %s, concurrency %d | %s | %s | %s | %s |" % (
                "drain" if kind == "drain" else "end to end", c, fmt(rate(off)),
                fmt(rate(on)), ratio(rate(on), rate(off)), get(on, "store_state") or ""))
    w("")
    w("The store-on runs use %s tasks each (the store-off rows %s)." % (
        fmt((store["drain_c1"] or {}).get("tasks")), fmt(ntask)))
w("")
w("## kiln against the peers")
w("")
w("Each peer's worker drains a backlog its own sender filled, then runs "
  "end to end beside its sender; kiln/peer divides kiln's figure at the "
  "same concurrency by the peer's. Memory and CPU are the draining "
  "worker's.")
w("")
w("| client | send/s (confirmed) | drain/s | kiln/peer | end to end/s | kiln/peer | worker peak RSS (MB) | CPU s per 1,000 tasks |")
w("|---|---:|---:|---:|---:|---:|---:|---:|")
rows = [("raw rabbitmq-c", raw["send"], raw["drain"], raw["e2e"], None)]
for c in CONC:
    rows.append(("kiln, concurrency %d" % c, kiln["send_batch"] if c == 1 else None,
                 kiln["drain_c%d" % c], kiln["e2e_c%d" % c], None))
for c in CONC:
    if store.get("drain_c%d" % c):
        rows.append(("kiln + store, concurrency %d" % c, store["send_batch"] if c == 1 else None,
                     store["drain_c%d" % c], store["e2e_c%d" % c], None))
rows += [
    ("Celery prefork, concurrency 2", peers["celery_send_confirmed"], peers["celery_prefork"],
     peers["celery_prefork_e2e"], 2),
    ("Celery threads, concurrency 2", None, peers["celery_threads"], peers["celery_threads_e2e"], 2),
    ("Celery solo", None, peers["celery_solo"], peers["celery_solo_e2e"], 1),
    ("machinery v2, concurrency 8", peers["machinery_send"], peers["machinery"],
     peers["machinery_e2e"], 8),
    ("paota, concurrency 8", peers["paota_send"], peers["paota"], peers["paota_e2e"], 8),
]
for name, send, run, e2e, c in rows:
    kd = ratio(rate(kiln["drain_c%d" % c]), rate(run)) if c else ""
    ke = ratio(rate(kiln["e2e_c%d" % c]), rate(e2e)) if c else ""
    w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        name, fmt(send) if send else "", fmt(rate(run)), kd, fmt(rate(e2e)), ke,
        fmt(get(run, "peak_rss_mb"), 1), fmt(get(run, "cpu_s_per_1000"), 3)))
w("")
w("Senders: kiln with kiln_pool_send_tasks (batches of 1,000 from 1 thread); "
  "Celery one "
  "apply_async per task with confirm_publish (without confirms it sent %s/s); "
  "machinery SendTask from 16 goroutines; paota SendTaskWithContext from 10 "
  "goroutines (its connection pool's size)." % fmt(peers["celery_send_unconfirmed"]))
w("")
w("![throughput and latency](chart.png)")

with open(os.path.join(OUT, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")

# ---- chart data --------------------------------------------------------------
with open(os.path.join(OUT, "throughput.dat"), "w") as f:
    f.write("# client drain e2e\n")
    f.write('"raw\\nrabbitmq-c" %s %s\n' % (rate(raw["drain"]) or 0, raw_e2e or 0))
    for c in CONC:
        f.write('"kiln\\nc=%d" %s %s\n' % (c, rate(kiln["drain_c%d" % c]) or 0,
                                           rate(kiln["e2e_c%d" % c]) or 0))
    for c in CONC:
        if store.get("drain_c%d" % c):
            f.write('"+store\\nc=%d" %s %s\n' % (c, rate(store["drain_c%d" % c]) or 0,
                                                     rate(store["e2e_c%d" % c]) or 0))
    for label, key in (("Celery\\nprefork", "celery_prefork"), ("Celery\\nthreads", "celery_threads"),
                       ("Celery\\nsolo", "celery_solo"), ("machinery\\nc=8", "machinery"),
                       ("paota\\nc=8", "paota")):
        f.write('"%s" %s %s\n' % (label, rate(peers[key]) or 0, rate(peers[key + "_e2e"]) or 0))
with open(os.path.join(OUT, "latency.dat"), "w") as f:
    f.write("# run p50 p99 p999\n")
    for pct in (50, 90):
        for who, d in (("raw", raw), ("kiln", kiln)):
            r = d["lat%d" % pct] or {}
            f.write('"%s\\n%d%% load" %s %s %s\n' % (
                who, pct, r.get("lat_p50_ms", 0), r.get("lat_p99_ms", 0), r.get("lat_p999_ms", 0)))

# ---- the README's summary table ---------------------------------------------
def best(runs):
    """(run, label) of the fastest of {label: run}."""
    items = [(rate(r) or 0, label, r) for label, r in runs.items()]
    top = max(items, key=lambda x: x[0]) if items else (0, None, None)
    return (top[2], top[1]) if top[0] else (None, None)


k_e2e, k_e2e_c = best({"c=%d" % c: kiln["e2e_c%d" % c] for c in CONC})
k_drain, k_drain_c = best({"c=%d" % c: kiln["drain_c%d" % c] for c in CONC})
c_e2e, c_e2e_p = best({p: peers["celery_%s_e2e" % p] for p in celery_pools})
c_drain, c_drain_p = best({p: peers["celery_" + p] for p in celery_pools})
cols = [
    ("raw rabbitmq-c", raw["e2e"], raw["drain"], raw["send"], raw["drain"], raw["lat50"]),
    ("kiln", k_e2e, k_drain, kiln["send_batch"], kiln["drain_c8"], kiln["lat50"]),
    ("Celery", c_e2e, c_drain, peers["celery_send_confirmed"], c_drain, None),
    ("machinery", peers["machinery_e2e"], peers["machinery"], peers["machinery_send"],
     peers["machinery"], None),
    ("paota", peers["paota_e2e"], peers["paota"], peers["paota_send"], peers["paota"], None),
]
s = []
s.append("| | " + " | ".join(c[0] for c in cols) + " |")
s.append("|---|" + "---:|" * len(cols))
s.append("| end to end, tasks/s | " + " | ".join(fmt(rate(c[1])) for c in cols) + " |")
s.append("| kiln's end to end / this | " + " | ".join(times(rate(k_e2e), rate(c[1])) for c in cols) + " |")
s.append("| drain a backlog, tasks/s | " + " | ".join(fmt(rate(c[2])) for c in cols) + " |")
s.append("| send, confirmed, tasks/s | " + " | ".join(fmt(c[3]) for c in cols) + " |")
s.append("| worker peak RSS, MB | " + " | ".join(fmt(get(c[4], "peak_rss_mb"), 1) for c in cols) + " |")
s.append("| worker CPU s per 1,000 tasks | " + " | ".join(fmt(get(c[4], "cpu_s_per_1000"), 3) for c in cols) + " |")
s.append("| send to start at 50% load, p50 / p99 / p99.9 ms | " + " | ".join(
    "%s / %s / %s" % (fmt(get(c[5], "lat_p50_ms"), 1), fmt(get(c[5], "lat_p99_ms"), 1),
                      fmt(get(c[5], "lat_p999_ms"), 1)) if c[5] else ""
    for c in cols) + " |")
s.append("")
s.append("| kiln's sends beside the bare publisher | bare rabbitmq-c | kiln | kiln/bare |")
s.append("|---|---:|---:|---:|")
s.append("| 1 thread: bare a window of 1,000; kiln_pool_send_tasks, 1,000 a call | %s | %s | %s |" % (
    fmt(raw["send"]), fmt(kiln["send_batch"]), times(kiln["send_batch"], raw["send"])))
s.append("| 8 threads of kiln_pool_send_task (one confirm each); bare a window of 8 | %s | %s | %s |" % (
    fmt(raw["send_w8"]), fmt(kiln["send_single8"]), times(kiln["send_single8"], raw["send_w8"])))
s.append("")
s.append("kiln's best end to end was at concurrency %s and its best drain at %s; "
         "Celery's best end to end with %s, its best drain with %s; machinery and "
         "paota at concurrency 8. Memory and CPU: kiln at concurrency 8, Celery "
         "in its best draining pool." % (
             (k_e2e_c or "n/a").replace("c=", ""), (k_drain_c or "n/a").replace("c=", ""),
             c_e2e_p or "n/a", c_drain_p or "n/a"))
with open(os.path.join(OUT, "summary.md"), "w") as f:
    f.write("\n".join(s) + "\n")
