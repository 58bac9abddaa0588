#!/bin/sh
# mm_compile_check.sh — the MagicMind backend's compile-only check: every source of
# native/backends/magicmind/ compiled (not linked) against the declaration header
# (native/tests/fake_neuware/include/mm_decl_compile_check.h, MagicMind + CNRT as public code calls
# them) with -Wall -Wextra -Werror. Proves the backend's calls match those signatures; nothing
# built here is kept or shipped.
#   toolchain/mm_compile_check.sh [CXX] [INCLUDE_DIR] [EXTRA_FLAGS...]
#   CXX          g++ (default) or aarch64-linux-gnu-g++ (or $TOOLCHAIN_ROOT/bin/aarch64-linux-gnu-g++)
#   INCLUDE_DIR  the declaration headers (default native/tests/fake_neuware/include); the tests
#                point it at a copy with one signature broken and expect this to fail
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cxx=${1:-g++}
inc=${2:-$here/native/tests/fake_neuware/include}
[ $# -gt 2 ] && shift 2 || set --
command -v "$cxx" >/dev/null 2>&1 || { echo "mm_compile_check: compiler '$cxx' not found" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for src in "$here"/native/backends/magicmind/*.cc; do
  "$cxx" -std=c++11 -fPIC -Wall -Wextra -Werror "$@" -I"$inc" -I"$here/native/src" -I"$here/native/include" \
    -c "$src" -o "$out/$(basename "$src").o"
done
echo "mm_compile_check: $(ls "$here"/native/backends/magicmind/*.cc | wc -l) sources compile with $cxx ($("$cxx" -dumpmachine)) $*"
