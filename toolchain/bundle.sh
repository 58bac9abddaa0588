#!/usr/bin/env bash
# Build the offline install bundle for one architecture:
#
#   toolchain/bundle.sh aarch64|x86_64     ->  dist/refitd-<version>-linux-<arch>.tar.gz
#
# Route (see docs/edge.md): pip builds the refitd wheel through scikit-build-core as usual, but
# CMake is handed toolchain/zig-<arch>.cmake, so librefit inside is built by zig cc for
# <arch>-linux-gnu.2.17. scikit-build-core still names the wheel after the host, so
# toolchain/retag_wheel.py checks the library (ELF machine, glibc <= GLIBC_MAX) and retags it
# py3-none-manylinux_2_17_<arch>.manylinux2014_<arch>. The runtime dependencies are fetched as
# binary wheels for that platform and each Python in BUNDLE_PYTHONS (pip resolves per version, so
# e.g. numpy differs between 3.9 and 3.12).
#
# Env: VENV (.venv, must have ziglang: make bundle ensures it), GLIBC_MAX (2.17),
#      BUNDLE_PYTHONS ("3.9 3.10 3.11 3.12"), JOBS (2),
#      MM_PLUGIN (a librefit_backend_magicmind.so built for ARCH with the vendor toolchain,
#      docs/magicmind.md; the bundle then carries it and install.sh opens the unit to the MLU).
set -euo pipefail
cd "$(dirname "$0")/.."
. toolchain/lib.sh
ARCH=${1:?usage: toolchain/bundle.sh aarch64|x86_64}
case $ARCH in aarch64|x86_64) ;; *) echo "bundle: ARCH must be aarch64 or x86_64" >&2; exit 2 ;; esac
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
GLIBC_MAX=${GLIBC_MAX:-2.17}
PYTHONS=${BUNDLE_PYTHONS:-3.9 3.10 3.11 3.12}
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
NAME=refitd-$VERSION-linux-$ARCH
WORK=build/bundle-$ARCH
STAGE=$WORK/$NAME
OUT=dist/$NAME.tar.gz
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
export REFIT_ZIG_PYTHON=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")

rm -rf "$STAGE" "$WORK/wheel"
mkdir -p "$STAGE/wheels" "$WORK/wheel" dist

# 1. the refitd wheel, librefit cross-built by zig (glibc floor GLIBC_MAX)
t0=$(now)
echo "bundle: building the refitd wheel ($ARCH, zig cc, glibc $GLIBC_MAX)" >&2
# From a snapshot of the sources (others may be editing the tree while this runs).
SRC=$WORK/src
rm -rf "$SRC" && mkdir -p "$SRC"
tar -cf - --exclude=./build --exclude=./dist --exclude=./.cache --exclude=./.venv --exclude=./.git \
  --exclude='__pycache__' --exclude='*.so' . | tar -xf - -C "$SRC"
[ -f "$SRC/README.md" ] || echo "# refitd" >"$SRC/README.md"   # pyproject's readme, if not written yet
REFIT_GLIBC=$GLIBC_MAX "$PY" -m pip wheel "$SRC" --no-deps -q -w "$WORK/wheel" \
  -C cmake.define.CMAKE_TOOLCHAIN_FILE="$PWD/toolchain/zig-$ARCH.cmake" \
  -C cmake.define.REFIT_BUILD_TESTS=OFF \
  -C build-dir="$PWD/build/wheel-$ARCH"
host_wheel=$(ls -t "$WORK"/wheel/refitd-"$VERSION"-*.whl | head -1)
refitd_wheel=$("$PY" toolchain/retag_wheel.py "$host_wheel" --arch "$ARCH" --glibc "$GLIBC_MAX" -o "$STAGE/wheels")
cp -f "$refitd_wheel" dist/
t_wheel=$(elapsed "$t0")

# 2. dependency wheels for each Python version (binary only, for this platform and glibc floor)
t1=$(now)
floor_minor=${GLIBC_MAX#2.}
plats=()
for ((m = floor_minor; m >= 17; m--)); do plats+=(--platform "manylinux_2_${m}_$ARCH"); done
plats+=(--platform "manylinux2014_$ARCH")
if [ "$ARCH" = x86_64 ]; then
  plats+=(--platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
          --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
fi
for pyv in $PYTHONS; do
  echo "bundle: dependency wheels for Python $pyv ($ARCH)" >&2
  "$PY" -m pip download -q --only-binary=:all: "${plats[@]}" \
    --python-version "$pyv" --implementation cp -d "$STAGE/wheels" "$refitd_wheel" pip
done
t_deps=$(elapsed "$t1")

# 3. every shared object in every wheel must load on the glibc floor ...
t2=$(now)
python3 toolchain/check_glibc.py --max "$GLIBC_MAX" "$STAGE"/wheels/*.whl >"$WORK/glibc-check.txt" \
  || { grep -v ' ok' "$WORK/glibc-check.txt" >&2; exit 1; }
tail -1 "$WORK/glibc-check.txt" >&2
# ... and refitd's dependency tree must resolve from wheels/ alone on every target Python
# (markers and Requires-Python evaluated for the target, not for the Python running pip).
"$PY" toolchain/check_bundle.py "$STAGE/wheels" --arch "$ARCH" --pythons "$PYTHONS" >"$WORK/deps-check.txt"
cat "$WORK/deps-check.txt" >&2
t_check=$(elapsed "$t2")

# 4. the rest: installer, unit, config, docs, manifest
install -m 0755 toolchain/install.sh "$STAGE/install.sh"
mkdir -p "$STAGE/systemd" "$STAGE/config" "$STAGE/doc"
install -m 0644 systemd/*.service systemd/*.conf "$STAGE/systemd/"
if [ -f config/refitd.yaml ]; then
  install -m 0644 config/refitd.yaml "$STAGE/config/refitd.yaml"
else
  rmdir "$STAGE/config"   # install.sh then writes the daemon's demo config with the box's paths
fi
[ -f docs/edge.md ] && install -m 0644 docs/edge.md "$STAGE/doc/"
# The MagicMind plugin, only when one was built (it needs the vendor SDK); never the test fakes.
mm_line=""
if [ -n "${MM_PLUGIN:-}" ]; then
  [ -f "$MM_PLUGIN" ] || { echo "bundle: MM_PLUGIN=$MM_PLUGIN: no such file" >&2; exit 1; }
  want=$([ "$ARCH" = aarch64 ] && echo AArch64 || echo X86-64)
  readelf -h "$MM_PLUGIN" | grep -q "Machine:.*$want" \
    || { echo "bundle: MM_PLUGIN=$MM_PLUGIN is not built for $ARCH" >&2; exit 1; }
  if readelf -d "$MM_PLUGIN" | grep -q "fake-neuware"; then
    echo "bundle: MM_PLUGIN=$MM_PLUGIN was linked against the test-only fake Neuware; build it with the SDK" >&2
    exit 1
  fi
  mkdir -p "$STAGE/plugins"
  install -m 0755 "$MM_PLUGIN" "$STAGE/plugins/librefit_backend_magicmind.so"
  [ -f docs/magicmind.md ] && install -m 0644 docs/magicmind.md "$STAGE/doc/"
  mm_line="magicmind_plugin=plugins/librefit_backend_magicmind.so"
fi
{
  echo "version=$VERSION"
  echo "arch=$ARCH"
  echo "pythons=$PYTHONS"
  echo "glibc_max=$GLIBC_MAX"
  echo "refitd_wheel=$(basename "$refitd_wheel")"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git describe --always --dirty 2>/dev/null || echo unknown)"   # -dirty: built from uncommitted edits
  [ -z "$mm_line" ] || echo "$mm_line"
} >"$STAGE/BUNDLE"
(cd "$STAGE" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)

t3=$(now)
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$WORK" -czf "$OUT.tmp" "$NAME"
mv -f "$OUT.tmp" "$OUT"
t_tar=$(elapsed "$t3")
nwheels=$(ls "$STAGE"/wheels/*.whl | wc -l)
size=$(du -m "$OUT" | cut -f1)
cat >"dist/bundle-$ARCH-timings.json" <<EOF
{"arch": "$ARCH", "wheel_build_s": $t_wheel, "dependency_download_s": $t_deps,
 "glibc_check_s": $t_check, "tar_s": $t_tar, "wheels": $nwheels, "size_mb": $size}
EOF
echo "bundle: $OUT ($nwheels wheels, ${size} MB; wheel ${t_wheel}s, deps ${t_deps}s)" >&2
