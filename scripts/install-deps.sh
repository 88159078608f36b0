#!/usr/bin/env bash
# Installs the Debian packages kiln's build and tests need, when missing.
# Idempotent and quiet when everything is present. Usage:
#   scripts/install-deps.sh [extra-package ...]
#
# Its messages go to stderr and it prints nothing on stdout: other scripts
# call it on their way to printing a result that callers capture with
# $(...) (scripts/rabbitmq.sh start prints the broker URL).
set -euo pipefail
exec 1>&2

pkgs=(build-essential pkg-config librabbitmq-dev libmongoc-dev libbson-dev
      libcjson-dev libcmocka-dev clang libclang-rt-14-dev valgrind
      cppcheck clang-tidy clang-format "$@")

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# One update per machine is enough; retry it if the lists are stale.
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/kiln-apt.log 2>&1; then
    $sudo apt-get update -q >>/tmp/kiln-apt.log 2>&1
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/kiln-apt.log 2>&1 || {
        echo "install-deps: apt-get failed; see /tmp/kiln-apt.log" >&2
        tail -n 20 /tmp/kiln-apt.log >&2
        exit 1
    }
fi
