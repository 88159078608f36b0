#!/usr/bin/env bash
# Runs a command beside a private FerretDB server (scripts/ferretdb.sh) and
# stops the server after, whatever the command's outcome. The command sees
# the server's URL in KILN_TEST_MONGODB_URL, and shell commands that stop
# and start the same server on the same data in KILN_TEST_MONGODB_STOP and
# KILN_TEST_MONGODB_START (for tests of a store outage).
#
# When KILN_TEST_MONGODB_URL is already set, a server was given from outside
# (a real MongoDB, say): the command runs against it and nothing is started.
#
#   scripts/with-ferretdb.sh COMMAND [ARG...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# One directory per port, as in with-rabbitmq.sh.
dir="$top/build/ferretdb-test-${KILN_FERRETDB_PORT:-17017}"

if [ -n "${KILN_TEST_MONGODB_URL:-}" ]; then
    exec "$@"
fi
stop() { "$top/scripts/ferretdb.sh" stop "$dir" || true; }
trap stop EXIT
"$top/scripts/ferretdb.sh" stop "$dir" || true
rm -rf "$dir"
url=$("$top/scripts/ferretdb.sh" start "$dir")
export KILN_TEST_MONGODB_URL="$url"
export KILN_TEST_MONGODB_STOP="'$top/scripts/ferretdb.sh' stop '$dir'"
export KILN_TEST_MONGODB_START="'$top/scripts/ferretdb.sh' start '$dir' >/dev/null"
"$@"
