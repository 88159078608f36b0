#!/usr/bin/env bash
# Installs what `make bench` needs beyond the build's own packages, when
# missing: gnuplot and Python's venv from Debian, Celery from PyPI into
# build/bench/venv (versions pinned in bench/peers/celery/requirements.txt),
# and the machinery v2 and paota peers (pinned in bench/peers/go/go.mod)
# built from the Go module proxy into build/bench/peers. Idempotent.
#
#   scripts/bench-deps.sh
#
# Go: scripts/install-go.sh (the machine's when new enough, else Go from
# the module proxy, as every Go build of the project); the Go module cache
# is build/gomod, so the benchmark never depends on (or
# disturbs) a cache shared with other builds.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/bench"
mkdir -p "$out/peers"

"$top/scripts/install-deps.sh" gnuplot-nox python3 python3-venv rabbitmq-server

# Celery in a venv of Debian's python3, rebuilt when the pins change.
venv="$out/venv"
req="$top/bench/peers/celery/requirements.txt"
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
    echo "bench-deps: installing Celery into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
fi

# machinery and paota, rebuilt when their sources or pins change.
go=$("$top/scripts/install-go.sh")
src="$top/bench/peers/go"
stamp=$(cat "$src/go.mod" "$src/go.sum" "$src"/*/*.go | sha256sum | cut -c1-16)
if [ "$(cat "$out/peers/build.stamp" 2>/dev/null)" != "$stamp" ] ||
   [ ! -x "$out/peers/machinery" ] || [ ! -x "$out/peers/paota" ]; then
    echo "bench-deps: building machinery and paota peers"
    # go.sum pins every module; -mod=readonly fails rather than resolving
    # anything new.
    (cd "$src" && GOMODCACHE="$top/build/gomod" GOWORK=off GOFLAGS=-mod=readonly \
        GOTOOLCHAIN=local "$go" build -trimpath -buildvcs=false \
        -o "$out/peers/" ./machinery ./paota)
    echo "$stamp" >"$out/peers/build.stamp"
fi
