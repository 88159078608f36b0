#!/usr/bin/env bash
# Proves `make install` and kiln.pc work for a user, from a scratch prefix:
#
# 1. runs the README's install recipe word for word (the ```sh block after
#    the "<!-- install-check: ... -->" line of "Build and install"), with
#    HOME a fresh directory and the clone seen through a directory of
#    links, so its `make install PREFIX=$HOME/...` and the program it
#    builds land in the scratch space; the program must print the sum;
# 2. checks that every public header and kiln.pc are where the README's
#    table says;
# 3. builds test/install/app.c against that prefix with pkg-config, once
#    against the shared library and once statically, and runs both;
# 4. likewise test/install/store_app.c, which makes a MongoDB store: both
#    builds must load the installed libkiln-mongo.so (from beside
#    libkiln.so, and from the LIBDIR libkiln.a was built for), and neither
#    the programs nor `pkg-config --static --libs kiln` may name libmongoc.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

recipe=$(awk '/^<!-- install-check:/ { want = 1; next }
              want && /^```sh[ \t]*$/ { inb = 1; next }
              inb && /^```[ \t]*$/ { exit }
              inb { print }' "$top/README.md")
if [ -z "$recipe" ]; then
    echo "install-check: no install recipe after '<!-- install-check:' in README.md" >&2
    exit 1
fi
mkdir -p "$dir/home" "$dir/src"
for f in "$top"/*; do ln -s "$f" "$dir/src/"; done
if ! out=$(cd "$dir/src" && env -u PKG_CONFIG_PATH HOME="$dir/home" \
               bash -euo pipefail -c "$recipe" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "install-check: the README's install recipe failed" >&2
    exit 1
fi
if ! printf '%s\n' "$out" | tail -n 1 | grep -q '= 42$'; then
    printf '%s\n' "$out" >&2
    echo "install-check: the README's install recipe did not print the sum" >&2
    exit 1
fi
prefix="$dir/home/.local/kiln"
for f in lib/libkiln.a lib/libkiln.so lib/libkiln.so.0 lib/libkiln-mongo.so.0 \
         lib/pkgconfig/kiln.pc \
         include/kiln.h $(cd "$top" && ls include/kiln/*.h); do
    [ -e "$prefix/$f" ] || { echo "install-check: $prefix/$f not installed" >&2; exit 1; }
done

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc -Wall -Wextra -Werror -o "$dir/app" "$top/test/install/app.c" \
    $(pkg-config --cflags --libs kiln)
LD_LIBRARY_PATH="$prefix/lib" "$dir/app"
cc -Wall -Wextra -Werror -o "$dir/app-static" "$top/test/install/app.c" \
    $(pkg-config --cflags kiln) "$prefix/lib/libkiln.a" \
    $(pkg-config --libs --static kiln | sed 's/-lkiln//')
"$dir/app-static"
if pkg-config --static --libs kiln | grep -q mongoc; then
    echo "install-check: pkg-config --static --libs kiln names libmongoc" >&2
    exit 1
fi
cc -Wall -Wextra -Werror -o "$dir/store_app" "$top/test/install/store_app.c" \
    $(pkg-config --cflags --libs kiln) \
    -Wl,-rpath,"$(pkg-config --variable=libdir kiln)"
cc -Wall -Wextra -Werror -o "$dir/store_app-static" \
    "$top/test/install/store_app.c" $(pkg-config --cflags kiln) \
    "$prefix/lib/libkiln.a" $(pkg-config --static --libs kiln | sed 's/-lkiln//')
for p in store_app store_app-static; do
    if readelf -d "$dir/$p" | grep NEEDED | grep -q -e mongoc -e bson; then
        echo "install-check: $p links libmongoc" >&2
        exit 1
    fi
    env -u LD_LIBRARY_PATH -u KILN_STORE_PLUGIN "$dir/$p"
done
echo "install-check: the README's recipe and pkg-config builds against the installed library work"
