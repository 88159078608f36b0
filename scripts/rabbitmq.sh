#!/usr/bin/env bash
# A private RabbitMQ node for tests, benchmarks and the demo: listens on
# 127.0.0.1 only, with its own node name, ports, epmd and data directory,
# so it never meets a broker another process runs.
#
#   scripts/rabbitmq.sh start [DIR]   start (installing rabbitmq-server when
#                                     missing); prints the AMQP URL
#   scripts/rabbitmq.sh stop  [DIR]   stop the node and the epmd it started
#   scripts/rabbitmq.sh stop_app|start_app [DIR]   broker restart in place
#   scripts/rabbitmq.sh url   [DIR]   print the AMQP URL
#
# Ports: KILN_RMQ_PORT (default 17672) for AMQP, +1 for epmd, +2 for Erlang
# distribution, +3 for AMQP over TLS; all below the kernel's ephemeral
# range (32768+), so no client socket can be holding them. One node per
# DIR (default build/rabbitmq).
#
# TLS: with KILN_RMQ_TLS_DIR set to a directory holding ca.pem, server.pem
# and server.key (scripts/tls-certs.sh makes them), start also opens a TLS
# listener on 127.0.0.1:port+3 (amqps://guest:guest@localhost:17675/ by
# default). It asks clients for a certificate and checks one against
# ca.pem when given, but accepts clients without one.
set -euo pipefail
# Callers capture stdout (url=$(scripts/rabbitmq.sh start DIR)): it carries
# the result alone, written to fd 3; everything else, the tools' own output
# included, goes to stderr. Servers started in the background close fd 3,
# or the caller's $(...) would wait for them to exit.
exec 3>&1 1>&2

top=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
dir=$(realpath -m "${2:-$top/build/rabbitmq}")
port=${KILN_RMQ_PORT:-17672}
dist_port=$((port + 2))
epmd_port=$((port + 1))
tls_port=$((port + 3))
tls_dir=${KILN_RMQ_TLS_DIR:-}
node="kiln-$port@localhost"
bin=/usr/lib/rabbitmq/bin

setup_env() {
    export HOME="$dir"  # the Erlang cookie lives here, shared with rabbitmqctl
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_DIST_PORT="$dist_port"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT="$epmd_port"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"   # .conf is appended
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    "$top/scripts/install-deps.sh" rabbitmq-server
    mkdir -p "$dir/mnesia" "$dir/log"
    setup_env
    if port_open "$port"; then
        if [ -f "$dir/rabbitmq.pid" ] && kill -0 "$(cat "$dir/rabbitmq.pid")" 2>/dev/null; then
            echo "amqp://guest:guest@127.0.0.1:$port/" >&3
            return 0
        fi
        echo "rabbitmq.sh: port $port is held by another process; set KILN_RMQ_PORT" >&2
        return 1
    fi
    ports=("$epmd_port" "$dist_port")
    if [ -n "$tls_dir" ]; then
        tls_dir=$(realpath "$tls_dir")
        for f in ca.pem server.pem server.key; do
            if [ ! -r "$tls_dir/$f" ]; then
                echo "rabbitmq.sh: KILN_RMQ_TLS_DIR has no readable $f (make them with scripts/tls-certs.sh)" >&2
                return 1
            fi
        done
        ports+=("$tls_port")
    fi
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            echo "rabbitmq.sh: port $p is held by another process; set KILN_RMQ_PORT" >&2
            return 1
        fi
    done
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users = none
disk_free_limit.absolute = 50MB
log.file.level = warning
CONF
    if [ -n "$tls_dir" ]; then
        cat >>"$dir/rabbitmq.conf" <<CONF
listeners.ssl.1 = 127.0.0.1:$tls_port
ssl_options.cacertfile = $tls_dir/ca.pem
ssl_options.certfile = $tls_dir/server.pem
ssl_options.keyfile = $tls_dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
    fi
    echo "[]." >"$dir/enabled_plugins"
    # A quorum delay level whose messages fall due while the node boots
    # can find its dead-letter exchange not yet recovered; RabbitMQ then
    # retries them only after this timeout (180 s by default). 5 s keeps
    # a restart from delaying tasks by minutes (README, "Delayed tasks").
    echo "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}]." \
        >"$dir/advanced.config"
    [ -f "$dir/.erlang.cookie" ] || { head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/.erlang.cookie"; chmod 400 "$dir/.erlang.cookie"; }
    # Our own epmd, bound to loopback on its own port; stop kills it by pid.
    if ! port_open "$epmd_port"; then
        epmd -address 127.0.0.1 -port "$epmd_port" >"$dir/log/epmd.log" 2>&1 3>&- &
        echo $! >"$dir/epmd.pid"
    fi
    "$bin/rabbitmq-server" >"$dir/log/console.log" 2>&1 3>&- &
    echo $! >"$dir/server.pid"
    # A busy machine (a CI run beside other builds) can take well over
    # the usual 5-7 s: wait by the clock, not by a count of polls.
    local deadline=$((SECONDS + ${KILN_START_TIMEOUT_S:-120}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if port_open "$port" && { [ -z "$tls_dir" ] || port_open "$tls_port"; }; then
            echo "amqp://guest:guest@127.0.0.1:$port/" >&3
            return 0
        fi
        if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
            echo "rabbitmq.sh: the broker exited; last lines of its log:" >&2
            tail -n 30 "$dir/log/console.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "rabbitmq.sh: no AMQP listener on 127.0.0.1:$port${tls_dir:+ and $tls_port (TLS)} after ${KILN_START_TIMEOUT_S:-120} s" >&2
    return 1
}

stop() {
    setup_env
    # rabbitmqctl would start an epmd of its own when ours is gone, so it
    # only runs while the node we started is alive.
    if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
        "$bin/rabbitmqctl" -n "$node" stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/server.pid" ]; then
        pid=$(cat "$dir/server.pid")
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        [ -f "$dir/rabbitmq.pid" ] && kill -9 "$(cat "$dir/rabbitmq.pid")" 2>/dev/null || true
        rm -f "$dir/server.pid" "$dir/rabbitmq.pid"
    fi
    if [ -f "$dir/epmd.pid" ]; then
        kill "$(cat "$dir/epmd.pid")" 2>/dev/null || true
        rm -f "$dir/epmd.pid"
    fi
    # An Erlang tool that finds our epmd gone starts `epmd -daemon` on the
    # same port, which then outlives us and holds the port. It inherited
    # our HOME (the data directory), so it is ours to stop. /proc, not
    # pgrep: a minimal Debian has no procps. (No grep -q: with pipefail,
    # tr's SIGPIPE would fail the test.)
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = epmd ] || continue
        if tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -x "HOME=$dir" >/dev/null; then
            kill "${d#/proc/}" 2>/dev/null || true
        fi
    done
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    stop_app|start_app)
        setup_env
        "$bin/rabbitmqctl" -n "$node" "$cmd" >/dev/null ;;
    ctl)
        setup_env
        shift 2
        "$bin/rabbitmqctl" -n "$node" "$@" >&3 ;;
    url) echo "amqp://guest:guest@127.0.0.1:$port/" >&3 ;;
    *) echo "usage: $0 start|stop|stop_app|start_app|url|ctl [DIR] [args]" >&2; exit 2 ;;
esac
