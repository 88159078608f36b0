#!/usr/bin/env bash
# make profile: where a worker's time goes, per task, as the table "Where a
# worker's time goes" in docs/performance.md shows it. A kiln worker
# (build/plain/bench/kiln_bench, concurrency 8, store off) drains a
# backlog under valgrind: callgrind counts its instructions, memcheck its
# heap allocations (every library's: kiln's, rabbitmq-c's, libc's). Each
# is run for N and for 2N tasks and the difference divided by N, so what
# a worker pays once (start, connect, stop) is left out.
#
#   scripts/profile-worker.sh [N]      N defaults to 10000
#
# Starts a private RabbitMQ on KILN_RMQ_PORT (default 17702) and stops it
# after, whatever happens. Prints the table on stdout; valgrind's files
# stay in build/profile/.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

n=${1:-10000}
export KILN_RMQ_PORT=${KILN_RMQ_PORT:-17702}
bin="$top/build/plain/bench/kiln_bench"
out="$top/build/profile"
rmq_dir="$top/build/rabbitmq-profile-$KILN_RMQ_PORT"
started=""

for tool in valgrind callgrind_annotate; do
    command -v "$tool" >/dev/null ||
        { echo "profile-worker: $tool is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -x "$bin" ] ||
    { echo "profile-worker: $bin is missing: make VARIANT=plain benches" >&2; exit 1; }

cleanup() { [ -n "$started" ] && "$top/scripts/rabbitmq.sh" stop "$rmq_dir" || true; }
trap cleanup EXIT
rm -rf "$out" "$rmq_dir"
mkdir -p "$out"
url=$("$top/scripts/rabbitmq.sh" start "$rmq_dir")
started=1
export KILN_BROKER_URL="$url" KILN_PREFETCH=128 KILN_LOG_LEVEL=warn
export KILN_STORE=none KILN_POOL_SIZE=4

# run TOOL COUNT: fills a fresh queue with COUNT tasks, then drains it in a
# worker under valgrind's TOOL.
run() {
    local tool=$1 count=$2 q="profile_${1}_$2"
    export KILN_EXCHANGE="$q" KILN_QUEUE="$q" KILN_BINDING_KEY="$q"
    echo "profile-worker: $tool, $count tasks" >&2
    "$bin" send "$count" "$out/send_$q.res" batch 100 4 >&2
    if [ "$tool" = callgrind ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out/$q.cg" \
            "$bin" work "$count" "$out/work_$q.res" 8 >&2 2>"$out/$q.log"
    else
        valgrind --tool=memcheck --leak-check=no \
            "$bin" work "$count" "$out/work_$q.res" 8 2>"$out/$q.log" >&2
    fi
}

# Inclusive instructions of function $2 in callgrind file $1 (0 when it
# never ran); "PROGRAM TOTALS" for the whole program.
ir() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
        awk -v f="$2" '
            f == "PROGRAM TOTALS" && $0 ~ /PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }
            index($0, " " f " ") || index($0, ":" f " ") || $NF == f || index($0, ":" f "'"'"'") {
                gsub(",", "", $1); print $1; exit }' | head -n 1
}

allocs() { sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p' "$1" | tr -d ,; }

per_task() { awk -v a="${1:-0}" -v b="${2:-0}" -v n="$n" 'BEGIN { printf "%.0f", (b - a) / n }'; }

n2=$((2 * n))
for c in $n $n2; do run callgrind "$c"; run memcheck "$c"; done

cg1="$out/profile_callgrind_$n.cg" cg2="$out/profile_callgrind_$n2.cg"
row() { # LABEL FUNCTION
    printf '| %s | %s |\n' "$1" "$(per_task "$(ir "$cg1" "$2")" "$(ir "$cg2" "$2")")"
}
total=$(per_task "$(ir "$cg1" "PROGRAM TOTALS")" "$(ir "$cg2" "PROGRAM TOTALS")")
heap=$(per_task "$(allocs "$out/profile_memcheck_$n.log")" \
    "$(allocs "$out/profile_memcheck_$n2.log")")

echo "A worker draining a backlog (concurrency 8, store off), per task,"
echo "from runs of $n and $n2 tasks:"
echo
echo "| step | instructions per task |"
echo "|---|---:|"
echo "| all of it | $total |"
row "decoding the body (\`kiln_signature_from_json\`)" kiln_signature_from_json
row "rabbitmq-c reading the delivery (\`amqp_consume_message\`)" amqp_consume_message
row "the task's run on its worker (\`kiln__dispatch_run\`)" kiln__dispatch_run
row "settling: acks and the consumer's bookkeeping (\`kiln__consumer_take_outcomes\`)" kiln__consumer_take_outcomes
echo
echo "Heap allocations per task (every library's, memcheck): $heap"
