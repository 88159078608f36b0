#!/usr/bin/env bash
# A private MongoDB-compatible server for tests and the demo: FerretDB
# (github.com/FerretDB/FerretDB) with its SQLite backend, listening on
# 127.0.0.1 only, with its own port, data directory and state directory,
# telemetry disabled and no debug/metrics listener.
#
#   scripts/ferretdb.sh start   [DIR]  start (installing FerretDB when
#                                      missing); prints the MongoDB URL
#   scripts/ferretdb.sh stop    [DIR]  stop the server this DIR started
#   scripts/ferretdb.sh url     [DIR]  print the MongoDB URL
#   scripts/ferretdb.sh install        build the binary into build/tools
#
# Port: KILN_FERRETDB_PORT (default 17017), below the kernel's ephemeral
# range (32768+), so no client socket can be holding it. One server per DIR
# (default build/ferretdb); the data survives stop/start on the same DIR.
# Its log is DIR/log/ferretdb.log, at KILN_FERRETDB_LOG_LEVEL (default
# error; debug shows every command and SQL statement).
#
# SQLite settings: WAL (FerretDB's default) with synchronous(normal), so a
# commit survives the process being stopped or killed without an fsync per
# write (not a power cut: this is a test server); _txlock=immediate, so a
# write transaction takes the write lock when it begins and concurrent
# writers queue on the busy timeout instead of failing to upgrade a lock.
#
# Install. The binary is built once from the Go module proxy and cached in
# build/tools/ferretdb (KILN_TOOLS_DIR moves the cache, e.g. out of a work
# tree that CI clones afresh); later runs reuse it. Two things keep the plain
# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` from working:
# `go install pkg@version` first asks the proxy for the module's version
# list (to check for deprecation), and a proxy that refuses list requests
# fails the install; and the module as published lacks the generated
# build/version/version.txt, so a binary built from it panics at start. So
# the script downloads exactly that module version (`go mod download`,
# which needs no list), copies its source into build/tools, writes
# version.txt and builds cmd/ferretdb there against the module's own
# go.sum. FerretDB 1.24 needs Go 1.24 or later: scripts/install-go.sh 1.24
# gives the machine's `go` when it is that new, else installs Go 1.24.3
# from the module proxy (Debian 12's golang-go is Go 1.19).
#
# One line of FerretDB is changed before the build. Its SQLite backend
# indexes _id as `_ferretdb_sjson->"_id"` but looks documents up by
# `_ferretdb_sjson->'$._id'`; SQLite uses an expression index only for the
# same expression, so every find, update and delete by _id scanned the
# whole collection (EXPLAIN QUERY PLAN: SCAN, against SEARCH ... USING INDEX
# for the indexed form), and a store write took time in proportion to the
# number of tasks. The patch makes the lookups use the indexed expression;
# both extract the same value, so only the query plan changes.
set -euo pipefail
# Callers capture stdout (url=$(scripts/ferretdb.sh start DIR)): it carries
# the result alone, written to fd 3; everything else, Go's output included,
# goes to stderr. The server started in the background closes fd 3, or
# the caller's $(...) would wait for it to exit.
exec 3>&1 1>&2

top=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
dir=$(realpath -m "${2:-$top/build/ferretdb}")
port=${KILN_FERRETDB_PORT:-17017}
version=v1.24.2
module=github.com/FerretDB/FerretDB
tools=$(realpath -m "${KILN_TOOLS_DIR:-$top/build/tools}")
bin="$tools/ferretdb"
stamp="$tools/ferretdb.build"   # what the cached binary was built from
build_id="$version id-index-patch 1"
url="mongodb://127.0.0.1:$port/"

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

have_binary() {
    local out
    [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$build_id" ] || return 1
    # Captured first: with pipefail, `--version | grep -q` fails whenever
    # grep exits before the binary finishes writing (SIGPIPE).
    out=$("$bin" --version 2>/dev/null) || return 1
    grep -qx "version: $version" <<<"$out"
}

# See the header: look documents up by the expression the _id index has.
patch_id_lookup() {
    local f="$1/internal/backends/sqlite/metadata/metadata.go" text
    local from="IDColumn = DefaultColumn + \"->'\$._id'\""
    local to='IDColumn = DefaultColumn + "->\"_id\""'
    text=$(cat "$f")
    [[ "$text" == *"$from"* ]] || { echo "ferretdb.sh: no '$from' in $f" >&2; return 1; }
    printf '%s\n' "${text//"$from"/"$to"}" >"$f"
}

install() {
    have_binary && return 0
    local t0 src info moddir go
    go=$("$top/scripts/install-go.sh" 1.24) || return 1
    t0=$(date +%s)
    echo "ferretdb.sh: building FerretDB $version into $tools (once)" >&2
    mkdir -p "$tools"
    info=$(cd "$tools" && GOWORK=off GOTOOLCHAIN=local "$go" mod download -json "$module@$version") || {
        echo "ferretdb.sh: go mod download $module@$version failed:" >&2
        echo "$info" >&2
        return 1
    }
    moddir=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    if [ -z "$moddir" ] || [ ! -d "$moddir" ]; then
        echo "ferretdb.sh: no source directory in: $info" >&2
        return 1
    fi
    src="$tools/src/ferretdb-$version"
    rm -rf "$src"
    mkdir -p "$tools/src"
    cp -r "$moddir" "$src"
    chmod -R u+w "$src"
    echo "$version" >"$src/build/version/version.txt"
    patch_id_lookup "$src"
    # -buildvcs=false: the copy sits inside kiln's work tree, whose git
    # state says nothing about FerretDB.
    (cd "$src" && GOFLAGS=-mod=mod GOBIN="$tools" GOTOOLCHAIN=local GOWORK=off \
        "$go" install -buildvcs=false -trimpath ./cmd/ferretdb) >&2 || {
        echo "ferretdb.sh: building $module/cmd/ferretdb@$version with" \
             "$("$go" version) failed" >&2
        return 1
    }
    rm -rf "$tools/src"
    echo "$build_id" >"$stamp"
    have_binary || { echo "ferretdb.sh: $bin does not report $version" >&2; return 1; }
    echo "ferretdb.sh: built in $(( $(date +%s) - t0 )) s" >&2
}

ours_running() {
    [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null
}

start() {
    install
    mkdir -p "$dir/data" "$dir/state" "$dir/log"
    if port_open "$port"; then
        if ours_running; then
            echo "$url" >&3
            return 0
        fi
        echo "ferretdb.sh: port $port is held by another process; set KILN_FERRETDB_PORT" >&2
        return 1
    fi
    local sqlite="file:$dir/data/?_pragma=synchronous(normal)&_txlock=immediate"
    # The variables FerretDB reads would override the flags; clear them.
    env -u FERRETDB_DEBUG_ADDR -u FERRETDB_LISTEN_UNIX -u FERRETDB_LISTEN_TLS \
        -u FERRETDB_OTEL_TRACES_URL -u FERRETDB_TELEMETRY \
        "$bin" --handler=sqlite --sqlite-url="$sqlite" \
        --listen-addr="127.0.0.1:$port" --listen-unix="" --listen-tls="" \
        --debug-addr=- --state-dir="$dir/state" --telemetry=disable \
        --log-level="${KILN_FERRETDB_LOG_LEVEL:-error}" --log-format=text \
        >>"$dir/log/ferretdb.log" 2>&1 3>&- &
    echo $! >"$dir/server.pid"
    # A busy machine (a CI run beside other builds) can take well over
    # the usual 5-7 s: wait by the clock, not by a count of polls.
    local deadline=$((SECONDS + ${KILN_START_TIMEOUT_S:-120}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if port_open "$port"; then
            echo "$url" >&3
            return 0
        fi
        if ! ours_running; then
            echo "ferretdb.sh: the server exited; last lines of its log:" >&2
            tail -n 30 "$dir/log/ferretdb.log" >&2
            rm -f "$dir/server.pid"
            return 1
        fi
        sleep 0.1
    done
    echo "ferretdb.sh: no listener on 127.0.0.1:$port after ${KILN_START_TIMEOUT_S:-120} s" >&2
    return 1
}

stop() {
    [ -f "$dir/server.pid" ] || return 0
    local pid
    pid=$(cat "$dir/server.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/server.pid"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    url) echo "$url" >&3 ;;
    install) install ;;
    *) echo "usage: $0 start|stop|url|install [DIR]" >&2; exit 2 ;;
esac
