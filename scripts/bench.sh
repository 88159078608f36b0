#!/usr/bin/env bash
# make bench: kiln beside raw rabbitmq-c, Celery, machinery and paota, in one
# run, on one private RabbitMQ (and a private FerretDB for the store runs).
# Every client sends the same task (one ~200-byte JSON string argument,
# bench/bench.h) with the same guarantees: persistent messages on a durable
# queue, publisher confirms, ack after the task, prefetch 128.
#
#   scripts/bench.sh              the full run (about 15 minutes)
#   BENCH_QUICK=1 scripts/bench.sh   a smoke run with small counts (~4 min)
#
# Settings (environment):
#   BENCH_QUICK=1        small counts
#   BENCH_STORE=0        skip the store-on runs (default: run them beside a
#                        private FerretDB)
#   BENCH_PEERS=0        skip Celery, machinery and paota
#   KILN_BENCH_RMQ_PORT  the broker's port (else KILN_RMQ_PORT, else 17692);
#                        KILN_FERRETDB_PORT likewise (default 17037)
#
# Writes bench/results/results.md (the tables), results.json (every figure)
# and chart.png (gnuplot, from throughput.dat and latency.dat), and keeps
# each program's raw key=value output in build/bench/run/. Stops what it started, whatever
# happens.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

export KILN_RMQ_PORT=${KILN_BENCH_RMQ_PORT:-${KILN_RMQ_PORT:-17692}}
export KILN_FERRETDB_PORT=${KILN_FERRETDB_PORT:-17037}
quick=${BENCH_QUICK:-0}
do_store=${BENCH_STORE:-1}
do_peers=${BENCH_PEERS:-1}

# Counts: the issue's full sizes, or a smoke run.
if [ "$quick" = 1 ]; then
    n_backlog=20000 n_e2e=20000 n_single1=1000 n_single8=10000
    n_single32=10000 n_peer=4000 n_celery_send=1000 lat_secs=3 n_store=500
    n_peer_e2e=2000 n_celery_e2e=1000
else
    n_backlog=200000 n_e2e=100000 n_single1=5000 n_single8=50000
    n_single32=50000 n_peer=20000 n_celery_send=5000 lat_secs=10
    n_store=2000 n_peer_e2e=10000 n_celery_e2e=5000
fi
concurrencies=(1 2 8 32)

bin="$top/build/plain/bench"
peers="$top/build/bench/peers"
venv="$top/build/bench/venv"
run="$top/build/bench/run"
rmq_dir="$top/build/rabbitmq-bench"
fdb_dir="$top/build/ferretdb-bench"
results="$top/bench/results"
started_rmq="" started_fdb=""
bg_pids=()

cleanup() {
    for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$started_fdb" ] && "$top/scripts/ferretdb.sh" stop "$fdb_dir" || true
    [ -n "$started_rmq" ] && "$top/scripts/rabbitmq.sh" stop "$rmq_dir" || true
}
trap cleanup EXIT

# Progress on stderr; each step's 1-minute load average goes to loads.txt,
# so the report can say how busy the machine was while it measured.
say() {
    printf 'bench: %s\n' "$*" >&2
    [ -d "$run" ] && printf '%s\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" "$*" >>"$run/loads.txt"
    return 0
}

# key=value from a result file.
val() { sed -n "s/^$2=//p" "$1" | head -n 1; }

rm -rf "$run"
mkdir -p "$run" "$results"

say "starting a private RabbitMQ on 127.0.0.1:$KILN_RMQ_PORT (data in $rmq_dir)"
rm -rf "$rmq_dir"
url=$("$top/scripts/rabbitmq.sh" start "$rmq_dir")
started_rmq=1
export BENCH_AMQP_URL="$url" KILN_BROKER_URL="$url" BENCH_PREFETCH=128
export KILN_EXCHANGE=bench_kiln KILN_QUEUE=bench_kiln KILN_BINDING_KEY=bench_kiln
export KILN_PREFETCH=128 KILN_LOG_LEVEL=warn KILN_STORE=none KILN_POOL_SIZE=4
export PYTHONDONTWRITEBYTECODE=1

# Deletes every queue the clients use, so each run starts empty.
clean_queues() {
    "$bin/raw_amqp" delete bench_raw bench_kiln bench_kiln.dead celery_bench \
        machinery_tasks paota_tasks paota_delay >/dev/null
}

# worker NAME SECS CMD...: runs a worker under procmon (NAME.mon) with a
# time limit, in the background; its pid is in $worker_pid.
worker() {
    local name=$1 secs=$2
    shift 2
    timeout -s TERM "$secs" "$bin/procmon" "$run/$name.mon" "$@" \
        >"$run/$name.log" 2>&1 &
    worker_pid=$!
    bg_pids+=("$worker_pid")
}

# Waits for the worker started last; a failure names the run and its log.
wait_worker() {
    local name=$1
    if ! wait "$worker_pid"; then
        say "$name failed; last lines of $run/$name.log:"
        tail -n 15 "$run/$name.log" >&2
        return 1
    fi
}

# Gives a worker time to connect and declare its queue before a sender
# starts, so end-to-end runs measure the steady state.
settle() { sleep "${1:-1}"; }

machine_facts() {
    {
        echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
        echo "cores=$(nproc)"
        echo "mem_gb=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
        echo "kernel=$(uname -r)"
        echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
        echo "rabbitmq=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null)"
        echo "erlang=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null)"
        echo "rabbitmq_c=$(dpkg-query -W -f='${Version}' librabbitmq-dev 2>/dev/null)"
        echo "celery=$("$venv/bin/python" -c 'import celery; print(celery.__version__)' 2>/dev/null)"
        echo "go_peers=$(grep -E 'machinery/v2 |paota ' "$top/bench/peers/go/go.mod" | awk '{print $1 "@" $2}' | tr '\n' ' ')"
        echo "kiln=$(git -C "$top" describe --always --dirty 2>/dev/null)"
        echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
        echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "quick=$quick"
    } >"$run/machine.txt"
}

machine_facts

# ---- the limit: raw rabbitmq-c ------------------------------------------
say "raw rabbitmq-c: publish and drain $n_backlog, end to end $n_e2e"
clean_queues
"$bin/raw_amqp" publish "$n_backlog" "$run/raw_send.res"
worker raw_drain 600 "$bin/raw_amqp" consume "$n_backlog" "$run/raw_drain.res"
wait_worker raw_drain
clean_queues
worker raw_e2e 600 "$bin/raw_amqp" consume "$n_e2e" "$run/raw_e2e.res"
settle
"$bin/raw_amqp" publish "$n_e2e" "$run/raw_e2e_send.res"
wait_worker raw_e2e
# The bare publisher with at most 8 unconfirmed (refilled at 4): the
# reference for 8 threads each waiting for its own confirm, which no
# client can beat by more than the confirms a broker's disk sync shares.
say "raw rabbitmq-c: publish $n_single8 with a window of 8"
clean_queues
"$bin/raw_amqp" publish "$n_single8" "$run/raw_send_w8.res" 8
raw_max=$(awk -v n="$n_e2e" -v s="$(val "$run/raw_e2e_send.res" start_ns)" \
    -v e="$(val "$run/raw_e2e.res" last_ns)" 'BEGIN {printf "%.0f", n / ((e - s) / 1e9)}')
for pct in 50 90; do
    rate=$((raw_max * pct / 100))
    n=$((rate * lat_secs))
    say "raw rabbitmq-c: latency at $pct% ($rate/s, $n tasks)"
    clean_queues
    worker "raw_lat$pct" 600 "$bin/raw_amqp" consume "$n" "$run/raw_lat$pct.res"
    settle
    "$bin/raw_amqp" publish "$n" "$run/raw_lat${pct}_send.res" 1000 "$rate"
    wait_worker "raw_lat$pct"
done

# ---- kiln ---------------------------------------------------------------
# kiln_runs PREFIX N_BACKLOG N_E2E: fill and drain a backlog at every
# concurrency, then run end to end at every concurrency. Each fill is the
# shape of the bare publisher: one thread, kiln_pool_send_tasks with
# batches of 1,000 (its connection keeps writing while earlier confirms
# are outstanding, as the bare client keeps up to 1,000 unconfirmed); the
# end-to-end sender does the same.
kiln_runs() {
    local p=$1 nb=$2 ne=$3 c
    for c in "${concurrencies[@]}"; do
        say "kiln$p: batch-send $nb, drain at concurrency $c"
        clean_queues
        "$bin/kiln_bench" send "$nb" "$run/kiln${p}_send_batch_c$c.res" batch 1000 1
        worker "kiln${p}_drain_c$c" 900 "$bin/kiln_bench" work "$nb" \
            "$run/kiln${p}_drain_c$c.res" "$c"
        wait_worker "kiln${p}_drain_c$c"
    done
    for c in "${concurrencies[@]}"; do
        say "kiln$p: end to end $ne at concurrency $c"
        clean_queues
        worker "kiln${p}_e2e_c$c" 900 "$bin/kiln_bench" work "$ne" \
            "$run/kiln${p}_e2e_c$c.res" "$c"
        settle
        "$bin/kiln_bench" send "$ne" "$run/kiln${p}_e2e_send_c$c.res" batch 1000 1
        wait_worker "kiln${p}_e2e_c$c"
    done
}

# Synchronous kiln_pool_send_task calls: each waits for its own confirm,
# so the rate is the calls in flight over a confirm's round trip.
say "kiln: single sends ($n_single1 from 1 thread, $n_single8 from 8, $n_single32 from 32)"
clean_queues
"$bin/kiln_bench" send "$n_single1" "$run/kiln_send_single1.res" single 1
clean_queues
"$bin/kiln_bench" send "$n_single8" "$run/kiln_send_single8.res" single 8
clean_queues
"$bin/kiln_bench" send "$n_single32" "$run/kiln_send_single32.res" single 32
kiln_runs "" "$n_backlog" "$n_e2e"

# Latency at 50% and 90% of kiln's best end-to-end rate, concurrency 8.
kiln_max=0
for c in "${concurrencies[@]}"; do
    r=$(awk -v n="$n_e2e" -v s="$(val "$run/kiln_e2e_send_c$c.res" start_ns)" \
        -v e="$(val "$run/kiln_e2e_c$c.res" last_ns)" 'BEGIN {printf "%.0f", n / ((e - s) / 1e9)}')
    [ "$r" -gt "$kiln_max" ] && kiln_max=$r
done
for pct in 50 90; do
    rate=$((kiln_max * pct / 100))
    n=$((rate * lat_secs))
    say "kiln: latency at $pct% of $kiln_max/s ($rate/s, $n tasks, concurrency 8)"
    clean_queues
    worker "kiln_lat$pct" 600 "$bin/kiln_bench" work "$n" "$run/kiln_lat$pct.res" 8
    settle
    "$bin/kiln_bench" send "$n" "$run/kiln_lat${pct}_send.res" paced "$rate"
    wait_worker "kiln_lat$pct"
done

# ---- kiln with the store on (task states in FerretDB) -----------------
if [ "$do_store" = 1 ]; then
    say "starting a private FerretDB on 127.0.0.1:$KILN_FERRETDB_PORT (data in $fdb_dir)"
    rm -rf "$fdb_dir"
    mongo_url=$("$top/scripts/ferretdb.sh" start "$fdb_dir")
    started_fdb=1
    export KILN_STORE=mongodb KILN_MONGODB_URL="$mongo_url" KILN_MONGODB_DATABASE=kiln_bench
    # A kiln without the store in its pool refuses KILN_STORE=mongodb: the
    # rest of the run goes on, and the report says why these rows are
    # missing.
    set +e
    (
        set -e
        trap 'for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
        kiln_runs _store "$n_store" "$n_store"
    ) 2> >(tee "$run/store.err" >&2)
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        reason=$(cat "$run/store.err" "$run"/kiln_store_*.log 2>/dev/null |
                 grep 'kiln_bench:' | tail -n 1 || true)
        echo "${reason:-the store-on runs failed (exit $rc)}" >"$run/store_skipped.txt"
        say "store-on runs not run: $(cat "$run/store_skipped.txt")"
    fi
    export KILN_STORE=none
    "$top/scripts/ferretdb.sh" stop "$fdb_dir"
    started_fdb=""
fi

# ---- the peers ----------------------------------------------------------
if [ "$do_peers" = 1 ]; then
    say "Celery: $n_celery_send confirmed sends"
    clean_queues
    "$venv/bin/python" bench/peers/celery/bench_celery.py send "$n_celery_send" \
        "$run/celery_send.res"
    for pool in prefork threads solo; do
        c=2
        [ "$pool" = solo ] && c=1
        celery_worker() { # NAME N
            BENCH_N=$2 BENCH_OUT="$run/$1.res" BENCH_CONCURRENCY=$c \
                worker "$1" 600 "$venv/bin/celery" --workdir bench/peers/celery \
                -A bench_celery worker -P "$pool" -c "$c" --without-gossip \
                --without-mingle --without-heartbeat -l warning -Q celery_bench
        }
        say "Celery: fill $n_peer (without confirms), drain with -P $pool -c $c"
        clean_queues
        BENCH_CONFIRM=0 "$venv/bin/python" bench/peers/celery/bench_celery.py \
            send "$n_peer" "$run/celery_fill_$pool.res"
        celery_worker "celery_drain_$pool" "$n_peer"
        wait_worker "celery_drain_$pool"
        say "Celery: end to end $n_celery_e2e with -P $pool -c $c"
        clean_queues
        celery_worker "celery_e2e_$pool" "$n_celery_e2e"
        settle 3
        "$venv/bin/python" bench/peers/celery/bench_celery.py send \
            "$n_celery_e2e" "$run/celery_e2e_send_$pool.res"
        wait_worker "celery_e2e_$pool"
    done
    for peer in machinery paota; do
        g=16
        [ "$peer" = paota ] && g=10
        say "$peer: send $n_peer from $g goroutines, drain at concurrency 8"
        clean_queues
        "$peers/$peer" send -n "$n_peer" -g "$g" -o "$run/${peer}_send.res"
        worker "${peer}_drain" 600 "$peers/$peer" work -n "$n_peer" -c 8 \
            -o "$run/${peer}_drain.res"
        wait_worker "${peer}_drain"
        say "$peer: end to end $n_peer_e2e at concurrency 8"
        clean_queues
        worker "${peer}_e2e" 600 "$peers/$peer" work -n "$n_peer_e2e" -c 8 \
            -o "$run/${peer}_e2e.res"
        settle
        "$peers/$peer" send -n "$n_peer_e2e" -g "$g" -o "$run/${peer}_e2e_send.res"
        wait_worker "${peer}_e2e"
    done
fi
clean_queues
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$run/machine.txt"

say "writing $results"
python3 "$top/bench/report.py" "$run" "$results"
if command -v gnuplot >/dev/null 2>&1; then
    (cd "$results" && gnuplot "$top/bench/chart.gp")
else
    say "no gnuplot: no chart (scripts/bench-deps.sh installs it)"
fi
cat "$results/results.md"
