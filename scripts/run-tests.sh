#!/usr/bin/env bash
# Runs cmocka test binaries one by one, each under a time limit, and adds up
# their summary lines.
#
#   run-tests.sh [--valgrind] [--summary-file F] BIN...   run, write "P F" to F
#   run-tests.sh --total F...                             print the grand total
#
# Each binary gets KILN_TEST_TIMEOUT seconds (default 120; 600 under
# valgrind); the time it took is printed after it. A binary built with
# ThreadSanitizer (VARIANT=tsan), and every program it starts, reads
# test/tsan.supp and writes each report to a file of its own in a scratch
# directory: a report from any of them, even a worker the test killed,
# fails the binary and is printed after it.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

valgrind=0
summary=""
if [ "${1:-}" = "--total" ]; then
    shift
    p=0 f=0
    for file in "$@"; do
        read -r a b <"$file" || { echo "missing summary $file" >&2; exit 1; }
        p=$((p + a)) f=$((f + b))
    done
    echo "tests: $p passed, $f failed"
    [ "$f" -eq 0 ]
    exit
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --valgrind) valgrind=1; shift ;;
        --summary-file) summary="$2"; shift 2 ;;
        *) break ;;
    esac
done

passed=0 failed=0 broken=()
for bin in "$@"; do
    name=$(basename "$bin")
    if [ "$valgrind" = 1 ]; then
        cmd=(timeout 600 valgrind -q --leak-check=full --show-leak-kinds=definite,indirect
             --errors-for-leak-kinds=definite,indirect --error-exitcode=99
             --suppressions=test/valgrind.supp "$bin")
        label="valgrind $name"
    else
        cmd=(timeout "${KILN_TEST_TIMEOUT:-120}" "$bin")
        label="$name"
    fi
    echo "=== $label"
    start=$SECONDS
    reports=$(mktemp -d)
    out=$(ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
          TSAN_OPTIONS="suppressions=$top/test/tsan.supp exitcode=66 second_deadlock_stack=1 log_path=$reports/tsan" \
          CMOCKA_MESSAGE_OUTPUT=stdout "${cmd[@]}" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    if [ -n "$(ls -A "$reports")" ]; then
        for r in "$reports"/*; do
            echo "--- ThreadSanitizer report ($(basename "$r"), pid of the process):"
            cat "$r"
        done
        [ "$rc" -ne 0 ] || rc=66
    fi
    rm -rf "$reports"
    echo "--- $label: $((SECONDS - start)) s"
    p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
    f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    if [ "$rc" -ne 0 ]; then
        broken+=("$label (exit $rc)")
        # A crash, a leak or a timeout counts as one failure more.
        [ -z "$f" ] || [ "$f" -eq 0 ] && failed=$((failed + 1))
    fi
done
[ -n "$summary" ] && { mkdir -p "$(dirname "$summary")"; echo "$passed $failed" >"$summary"; }
echo "run-tests: $passed passed, $failed failed"
if [ ${#broken[@]} -gt 0 ]; then
    printf 'failing: %s\n' "${broken[@]}"
    exit 1
fi
