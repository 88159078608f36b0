#!/usr/bin/env bash
# Runs a command beside a private RabbitMQ node and stops the node after,
# whatever the command's outcome. The command sees the node's URL in
# KILN_TEST_AMQP_URL and the helper script in KILN_TEST_RABBITMQ (for
# tests that restart the broker).
#
#   scripts/with-rabbitmq.sh COMMAND [ARG...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# One directory per port: two runs in one tree on different
# KILN_RMQ_PORTs must not wipe each other's node.
dir="$top/build/rabbitmq-test-${KILN_RMQ_PORT:-17672}"

if [ -n "${KILN_TEST_AMQP_URL:-}" ]; then
    exec "$@"   # a broker was given from outside: use it, start nothing
fi
stop() { "$top/scripts/rabbitmq.sh" stop "$dir" || true; }
trap stop EXIT
rm -rf "$dir"
url=$("$top/scripts/rabbitmq.sh" start "$dir")
export KILN_TEST_AMQP_URL="$url"
export KILN_TEST_RABBITMQ="$top/scripts/rabbitmq.sh"
export KILN_TEST_RABBITMQ_DIR="$dir"
"$@"
