#!/usr/bin/env bash
# Installs kiln into a scratch prefix and builds a small user program with
# pkg-config, once against the shared library and once statically, then
# runs both. Proves `make install` and kiln.pc work for a user.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

make -s -C "$top" install PREFIX="$dir/prefix" >/dev/null
export PKG_CONFIG_PATH="$dir/prefix/lib/pkgconfig"
cc -Wall -Wextra -Werror -o "$dir/app" "$top/test/install/app.c" \
    $(pkg-config --cflags --libs kiln)
LD_LIBRARY_PATH="$dir/prefix/lib" "$dir/app"
cc -Wall -Wextra -Werror -o "$dir/app-static" "$top/test/install/app.c" \
    $(pkg-config --cflags kiln) "$dir/prefix/lib/libkiln.a" \
    $(pkg-config --libs --static kiln | sed 's/-lkiln//')
"$dir/app-static"
# The README's API example, exactly as a user would build it.
cc -Wall -Wextra -Werror -o "$dir/eager" "$top/examples/eager/main.c" \
    $(pkg-config --cflags --libs kiln)
LD_LIBRARY_PATH="$dir/prefix/lib" "$dir/eager" | tail -n 1 | grep -q '= 42$' || {
    echo "install-check: examples/eager did not print the sum" >&2; exit 1; }
echo "install-check: pkg-config builds against the installed library work"
