#!/usr/bin/env bash
# Checks the rule that keeps captured script output clean: a script whose
# stdout some caller captures with $(...) (url=$(scripts/rabbitmq.sh start))
# writes its result, and nothing else, there. Such a script starts with
#
#   exec 3>&1 1>&2      # the result goes to fd 3, everything else to stderr
#
# (or `exec 1>&2` when it prints no result at all), so no progress line,
# no installer and no tool it runs can ever reach the caller's variable.
# This finds every script of scripts/ that the project captures anywhere
# (scripts, Makefile, CI, tests, benchmarks) and fails naming any that
# does not redirect that way. Run by `make lint`.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

files=$(git ls-files 2>/dev/null || find . -type f -not -path './build/*')
# shellcheck disable=SC2086
captured=$(grep -ohE '\$\$?\([^)]*scripts/[a-z0-9_-]+\.sh' $files 2>/dev/null |
           grep -oE 'scripts/[a-z0-9_-]+\.sh' | sort -u)
# A script that captures another's output often calls it plainly too:
# install-deps.sh runs inside rabbitmq.sh start, whose stdout is captured.
called_by_captured=$(for s in $captured; do
    grep -vE '^[[:space:]]*#' "$s" | grep -ohE '"\$top/scripts/[a-z0-9_-]+\.sh' |
        grep -oE 'scripts/[a-z0-9_-]+\.sh' || true
done | sort -u)
bad=0
for s in $(printf '%s\n' $captured $called_by_captured | sort -u); do
    [ -f "$s" ] || continue
    [ "$s" = scripts/check-scripts.sh ] && continue
    if ! grep -qE '^exec (3>&1 )?1>&2' "$s"; then
        echo "check-scripts: $s is captured with \$(...) (or called by a script that is) but does not start with 'exec 3>&1 1>&2' or 'exec 1>&2'" >&2
        bad=1
    fi
done
[ "$bad" -eq 0 ] && echo "check-scripts: $(printf '%s\n' $captured $called_by_captured | sort -u | wc -l) captured scripts send everything but their result to stderr" >&2
exit "$bad"
