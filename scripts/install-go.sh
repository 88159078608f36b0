#!/usr/bin/env bash
# Prints the path of a Go toolchain at least as new as MIN (default 1.22,
# what the interop peer's go.mod needs; paota's own go.mod says 1.21.5;
# FerretDB needs 1.24), installing one when the machine has none that new.
# Every Go build of the project gets its Go here. Messages go to stderr;
# stdout is the path alone.
#
#   go=$(scripts/install-go.sh [MIN])      # MIN: 1.22, 1.24, ...
#
# In order:
#   1. `go` on PATH, when it is MIN or later;
#   2. the toolchain this script installed before, in
#      KILN_TOOLS_DIR (default build/tools)/go1.24.3;
#   3. otherwise it installs that toolchain. Debian 12's golang-go is Go 1.19,
#      too old for paota (its go.mod's three-part `go 1.21.5` line is an
#      error before Go 1.21), but it can fetch modules: the Go releases are
#      published on the module proxy as the module golang.org/toolchain, so
#      `go mod download` fetches go1.24.3 (the toolchain FerretDB's go.mod
#      names too, so the two share one download) and the script copies it
#      into the tools folder. Module zips keep no file modes, so the
#      programs are made executable again, as `go` itself does when it
#      switches toolchains.
set -euo pipefail
# The path is the result, written to fd 3; everything else goes to stderr.
exec 3>&1 1>&2

top=$(cd "$(dirname "$0")/.." && pwd)
tools=$(realpath -m "${KILN_TOOLS_DIR:-$top/build/tools}")
version=go1.24.3
min=${1:-1.22}
if ! [[ "$min" =~ ^1\.([0-9]+)$ ]] || [ "${BASH_REMATCH[1]}" -gt 24 ]; then
    echo "install-go.sh: MIN must be 1.N with N <= 24 (what $version gives), not '$min'" >&2
    exit 2
fi
want_minor=${BASH_REMATCH[1]}

# go_ok GO: true when GO runs and is Go MIN or later.
go_ok() {
    local v minor
    v=$("$1" env GOVERSION 2>/dev/null) || return 1
    [[ "$v" =~ ^go1\.([0-9]+) ]] || return 1
    minor=${BASH_REMATCH[1]}
    [ "$minor" -ge "$want_minor" ]
}

if command -v go >/dev/null 2>&1 && go_ok "$(command -v go)"; then
    command -v go >&3
    exit 0
fi
mine="$tools/$version/bin/go"
if [ -x "$mine" ] && go_ok "$mine"; then
    echo "$mine" >&3
    exit 0
fi

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "install-go.sh: no Go toolchain for $(uname -m)" >&2; exit 1 ;;
esac
if ! command -v go >/dev/null 2>&1; then
    "$top/scripts/install-deps.sh" golang-go >&2
fi
echo "install-go.sh: $(go env GOVERSION 2>/dev/null || echo 'go') is older" \
     "than go1.$want_minor; installing $version into $tools (once)" >&2
module="golang.org/toolchain@v0.0.1-$version.linux-$arch"
mkdir -p "$tools"
info=$(cd "$tools" && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod \
       go mod download -json "$module") || {
    echo "install-go.sh: go mod download $module failed:" >&2
    echo "$info" >&2
    exit 1
}
dir=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$dir" ] || [ ! -x "$dir/bin" ]; then
    echo "install-go.sh: no toolchain directory in: $info" >&2
    exit 1
fi
rm -rf "$tools/$version.tmp"
cp -r "$dir" "$tools/$version.tmp"
chmod -R u+w "$tools/$version.tmp"
chmod +x "$tools/$version.tmp"/bin/* "$tools/$version.tmp"/pkg/tool/*/*
rm -rf "${tools:?}/$version"
mv "$tools/$version.tmp" "$tools/$version"
if ! go_ok "$mine"; then
    echo "install-go.sh: $mine does not run" >&2
    exit 1
fi
echo "$mine" >&3
