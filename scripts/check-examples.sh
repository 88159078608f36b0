#!/usr/bin/env bash
# Runs the example programs the way the README documents their command
# lines and exit statuses, as far as that needs no server: a bad command
# line exits 2 with a usage line, a bad setting exits 1 naming the
# variable, and eager prints its sum and exits 0.
#
#   check-examples.sh DIR [SUMMARY]   DIR: the built examples
#                                     (build/asan/examples in make test)
set -uo pipefail
dir=${1:?usage: check-examples.sh DIR [SUMMARY]}
summary=${2:-}
passed=0 failed=0

# expect STATUS TEXT ENV... -- PROGRAM ARGS...: runs it with the KILN_*
# variables cleared and ENV set, and checks the exit status and that its
# output holds TEXT.
expect() {
    local want=$1 text=$2 env=() out rc
    shift 2
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    out=$(env $(env | sed -n 's/^\(KILN_[A-Z_]*\|PAOTA_[A-Z_]*\)=.*/-u \1/p') \
          "${env[@]}" timeout 30 "$dir/$@" 2>&1 </dev/null)
    rc=$?
    if [ "$rc" -eq "$want" ] && [[ "$out" == *"$text"* ]]; then
        echo "ok   ${env[*]:+${env[*]} }$*: exit $rc"
        passed=$((passed + 1))
    else
        echo "FAIL ${env[*]:+${env[*]} }$*: exit $rc (want $want and '$text'):"
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/    /'
        failed=$((failed + 1))
    fi
}

expect 2 "usage: publisher [N]" -- publisher abc
expect 2 "usage: publisher [N]" -- publisher 0
expect 2 "usage: publisher [N]" -- publisher -5
expect 2 "usage: publisher [N]" -- publisher 1 2
expect 1 "KILN_PREFETCH" KILN_PREFETCH=0 -- publisher 5
expect 2 "usage: consumer [N]" -- consumer 1x
expect 2 "usage: consumer [N]" -- consumer 1 2
expect 1 "KILN_PREFETCH" KILN_PREFETCH=0 -- consumer
expect 2 "usage: consumer_publisher" -- consumer_publisher 5
expect 1 "KILN_PREFETCH" KILN_PREFETCH=0 -- consumer_publisher
expect 2 "usage: status UUID [TIMEOUT_MS]" -- status
expect 2 "usage: status UUID [TIMEOUT_MS]" -- status task_x 5s
expect 1 "store is not mongodb" KILN_STORE=none -- status task_x
expect 0 "= 42" -- eager

[ -n "$summary" ] && { mkdir -p "$(dirname "$summary")"; echo "$passed $failed" >"$summary"; }
echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
