#!/usr/bin/env bash
# make demo: the example consumer and publisher end to end through RabbitMQ.
# Starts a private broker on 127.0.0.1 unless KILN_BROKER_URL is set, runs
# the consumer, sends N tasks (default 10,000) with the publisher, waits
# until the consumer ran them all, prints a summary and stops what it
# started.
#
# With KILN_STORE=mongodb (make demo DEMO_STORE=mongodb) task states are
# recorded too: a private FerretDB is started on 127.0.0.1:17027 unless
# KILN_MONGODB_URL is set, and the last task's record is read back with
# examples/status at the end.
#
#   scripts/demo.sh [N]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-${KILN_DEMO_TASKS:-10000}}
bin="$top/build/plain/examples"
dir="$top/build/rabbitmq-demo"
# The demo's broker has its own ports, apart from the tests' node.
export KILN_RMQ_PORT=${KILN_DEMO_RMQ_PORT:-17682}
consumer_pid=""

store_dir="$top/build/ferretdb-demo"
store_started=""

cleanup() {
    [ -n "$consumer_pid" ] && kill "$consumer_pid" 2>/dev/null || true
    if [ -n "$store_started" ]; then
        "$top/scripts/ferretdb.sh" stop "$store_dir" || true
    fi
    if [ -z "${KILN_BROKER_URL_GIVEN:-}" ]; then
        "$top/scripts/rabbitmq.sh" stop "$dir" || true
    fi
}
trap cleanup EXIT

if [ -z "${KILN_BROKER_URL:-}" ]; then
    echo "demo: starting a private RabbitMQ on 127.0.0.1 (data in $dir)"
    rm -rf "$dir"
    KILN_BROKER_URL=$("$top/scripts/rabbitmq.sh" start "$dir")
else
    export KILN_BROKER_URL_GIVEN=1
fi
export KILN_BROKER_URL
if [ "${KILN_STORE:-none}" = mongodb ]; then
    if [ -z "${KILN_MONGODB_URL:-}" ]; then
        echo "demo: starting a private FerretDB on 127.0.0.1 (data in $store_dir)"
        "$top/scripts/ferretdb.sh" stop "$store_dir" >/dev/null 2>&1 || true
        rm -rf "$store_dir"
        store_started=1
        KILN_MONGODB_URL=$(KILN_FERRETDB_PORT=${KILN_DEMO_FERRETDB_PORT:-17027} \
            "$top/scripts/ferretdb.sh" start "$store_dir")
    fi
    export KILN_STORE KILN_MONGODB_URL
    export KILN_MONGODB_DATABASE=${KILN_MONGODB_DATABASE:-kiln_demo}
    echo "demo: task states in $(sed -E 's#(://[^:/@]*:)[^@]*@#\1***@#' <<<"$KILN_MONGODB_URL")$KILN_MONGODB_DATABASE"
fi
# The demo's own names, so it never mixes with a real application's tasks.
export KILN_EXCHANGE=${KILN_EXCHANGE:-kiln_demo} KILN_QUEUE=${KILN_QUEUE:-kiln_demo}
export KILN_BINDING_KEY=${KILN_BINDING_KEY:-kiln_demo}
export KILN_LOG_LEVEL=${KILN_LOG_LEVEL:-warn}

echo "demo: $n tasks through $(sed -E 's#(://[^:/@]*:)[^@]*@#\1***@#' <<<"$KILN_BROKER_URL")"
start=$(date +%s.%N)
"$bin/consumer" "$n" 2>"$top/build/demo-consumer.log" &
consumer_pid=$!
last=$("$bin/publisher" "$n")
# The consumer stops by itself once it ran n tasks.
deadline=$((SECONDS + 600))
while kill -0 "$consumer_pid" 2>/dev/null; do
    if [ "$SECONDS" -gt "$deadline" ]; then
        echo "demo: the consumer did not finish in 10 minutes" >&2
        exit 1
    fi
    sleep 0.1
done
wait "$consumer_pid" && rc=0 || rc=$?
consumer_pid=""
end=$(date +%s.%N)
ran=$(grep -o '[0-9]* tasks in' "$top/build/demo-consumer.log" | tail -n 1 | cut -d' ' -f1)
ran=${ran:-0}
if [ "${KILN_STORE:-none}" = mongodb ]; then
    echo "demo: the last task, as recorded:"
    "$bin/status" "$last" 10000 || rc=1
fi
awk -v n="$n" -v ran="$ran" -v s="$start" -v e="$end" -v rc="$rc" 'BEGIN {
    secs = e - s
    printf "demo: %d tasks sent, %d run, %d failures, %.2f s end to end, %.0f tasks/s\n",
        n, ran, n - ran, secs, (secs > 0 ? ran / secs : 0)
    exit (ran == n && rc == 0) ? 0 : 1
}'
