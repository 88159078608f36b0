#!/usr/bin/env bash
# Compiles every C snippet of the documentation against the library, and
# runs the complete programs among them, so that no example a user copies
# is wrong.
#
#   check-snippets.sh LIB [SUMMARY]   LIB: the libkiln.a to link with (the
#                                     ASan build in `make test`); SUMMARY:
#                                     a file that gets "passed failed"
#
# Where the snippets are, and how each is marked:
#
# - README.md and docs/*.md: every fenced block that opens with ```c (text
#   that is not C takes another fence: ```sh, ``` ...). The line just
#   before the fence (blank lines between are allowed) may be an HTML
#   comment, which a reader of the rendered page does not see:
#       <!-- given: kiln_config cfg, kiln_error err -->
#       <!-- compile-only: it needs a broker -->
# - include/kiln.h and include/kiln/*.h: inside a comment, a line
#       Example:                            or
#       Example (given: kiln_config cfg, const char *uuid):
#   followed by the code, indented four spaces past the comment's text
#   (blank comment lines may sit inside it); the block ends at the first
#   line indented less, or at the end of the comment.
#
# How each is built (cc as a user runs it, with -Wall -Wextra -Werror -O1,
# the -O1 letting the compiler see uninitialised variables):
#
# - A snippet that defines main() is a complete program: compiled as it
#   is, linked against LIB and run; it must exit 0 (under ASan and UBSan
#   when LIB is the ASan build). `compile-only` skips the run, for a
#   program that needs RabbitMQ or MongoDB.
# - Any other snippet is a fragment: its #include lines go to the top and
#   the rest becomes the body of `int snippet(GIVEN)`, a function whose
#   parameters are the `given:` declarations (the context the fragment
#   takes for granted: a config, a pool, a task function ...), after
#   <kiln.h>, <kiln/store_mongo.h> and the usual standard headers. A
#   fragment may `return 0;` or `return 1;`. Fragments are compiled only.
#
# Compiler messages point at the documentation's own file and line.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
lib=${1:?usage: check-snippets.sh LIB [SUMMARY]}
summary=${2:-}
cc=${CC:-cc}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

case "$lib" in
    */asan/*) san=(-fsanitize=address,undefined -fno-omit-frame-pointer
                   -fno-sanitize-recover=all) ;;
    *) san=() ;;
esac
# shellcheck disable=SC2207
deps=($(pkg-config --libs libcjson librabbitmq))
cflags=(-Wall -Wextra -Werror -O1 -g -Iinclude)

# Each snippet becomes $dir/sN.body, with one line in $dir/index:
# id, file, first line, given, compile-only (separated by \037: an empty
# field stays a field).
for md in README.md docs/*.md; do
    [ -f "$md" ] || continue
    awk -v dir="$dir" -v src="$md" '
        function flush() { close(body) }
        BEGIN { n = 0; while ((getline l < (dir "/count")) > 0) n = l }
        !inb && /^[ \t]*```c[ \t]*$/ {
            match($0, /^[ \t]*/); ind = RLENGTH
            n++; body = dir "/s" n ".body"; printf "" > body
            printf "s%d\037%s\037%d\037%s\037%s\n", n, src, NR + 1, given, co >> (dir "/index")
            inb = 1; given = ""; co = ""; next
        }
        inb && /^[ \t]*```[ \t]*$/ { inb = 0; flush(); next }
        inb { print substr($0, ind + 1) > body; next }
        /^<!-- given: .* -->[ \t]*$/ {
            given = $0; sub(/^<!-- given: /, "", given); sub(/ -->[ \t]*$/, "", given)
            next
        }
        /^<!-- compile-only: .* -->[ \t]*$/ { co = "yes"; next }
        /^[ \t]*$/ { next }
        { given = ""; co = "" }
        END { print n > (dir "/count") }
    ' "$md"
done
for h in include/kiln.h include/kiln/*.h; do
    [ -f "$h" ] || continue
    awk -v dir="$dir" -v src="$h" '
        BEGIN { n = 0; while ((getline l < (dir "/count")) > 0) n = l }
        # Text of a comment line without its leading " * ".
        function text(s) { sub(/^[ \t]*\*/, "", s); return s }
        state == 0 && /^[ \t]*\*?[ \t]*Example( \(given: .*\))?:[ \t]*$/ {
            given = $0
            if (given ~ /\(given: /) {
                sub(/^.*\(given: /, "", given); sub(/\):[ \t]*$/, "", given)
            } else given = ""
            state = 1; pend = 0; next
        }
        state >= 1 && /\*\// { state = 0; close(body); next }
        state >= 1 {
            t = text($0)
            if (t ~ /^[ \t]*$/) { if (state == 2) pend++; next }
            if (t !~ /^     /) { state = 0; close(body); next }
            if (state == 1) {
                n++; body = dir "/s" n ".body"; printf "" > body
                printf "s%d\037%s\037%d\037%s\037\n", n, src, NR, given >> (dir "/index")
                state = 2
            }
            for (; pend > 0; pend--) print "" > body
            print substr(t, 6) > body
        }
        END { print n > (dir "/count") }
    ' "$h"
done
[ -f "$dir/index" ] || { echo "check-snippets: no snippet found" >&2; exit 1; }

passed=0 failed=0
while IFS=$'\037' read -r id src line given co; do
    body="$dir/$id.body"
    c="$dir/$id.c"
    where="$src:$line"
    if grep -qE '^[[:space:]]*int[[:space:]]+main[[:space:]]*\(' "$body"; then
        kind=program
        { echo "#line $line \"$src\""; cat "$body"; } >"$c"
    else
        kind=fragment
        {
            printf '#include <kiln.h>\n#include <kiln/store_mongo.h>\n'
            printf '#include <inttypes.h>\n#include <stdbool.h>\n#include <stdint.h>\n'
            printf '#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
            printf '#include <time.h>\n'
            grep -E '^[[:space:]]*#[[:space:]]*include' "$body"
            # A fragment may leave its context, or a typedef it shows, unused.
            printf '#pragma GCC diagnostic ignored "-Wunused-parameter"\n'
            printf '#pragma GCC diagnostic ignored "-Wunused-local-typedefs"\n'
            printf 'int snippet(%s);\nint snippet(%s)\n{\n' "${given:-void}" "${given:-void}"
            echo "#line $line \"$src\""
            sed -E 's/^[[:space:]]*#[[:space:]]*include.*$//' "$body"
            printf '#line 1 "(end of snippet)"\n    return 0;\n}\n'
        } >"$c"
    fi
    if [ "$kind" = program ]; then
        out=$("$cc" "${cflags[@]}" "${san[@]}" "$c" -o "$dir/$id" "$lib" \
                  "${deps[@]}" -pthread -lm 2>&1)
    else
        out=$("$cc" "${cflags[@]}" "${san[@]}" -c "$c" -o "$dir/$id.o" 2>&1)
    fi
    if [ $? -ne 0 ]; then
        echo "FAIL $where: the $kind does not compile:"
        printf '%s\n' "$out" | sed 's/^/    /'
        failed=$((failed + 1))
        continue
    fi
    if [ "$kind" = program ] && [ -z "$co" ]; then
        out=$(cd "$dir" && ASAN_OPTIONS=detect_leaks=1 \
              UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
              timeout 60 "./$id" 2>&1 </dev/null)
        rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "FAIL $where: the program exited $rc:"
            printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'
            failed=$((failed + 1))
            continue
        fi
        echo "ok   $where: program, compiled and ran"
    elif [ "$kind" = program ]; then
        echo "ok   $where: program, compiled (compile-only)"
    else
        echo "ok   $where: fragment${given:+ (given: $given)}, compiled"
    fi
    passed=$((passed + 1))
done <"$dir/index"
[ -n "$summary" ] && { mkdir -p "$(dirname "$summary")"; echo "$passed $failed" >"$summary"; }
echo "snippets: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
