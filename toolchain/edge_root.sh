#!/usr/bin/env bash
# Build (once) an arm64 Debian root that stands in for an older aarch64 edge box, cached under
# .cache/edge-root/. Re-running reuses it (the marker file .refitd-edge-root-complete).
#
#   toolchain/edge_root.sh [ROOT]        default .cache/edge-root/bullseye-arm64
#
# Env: EDGE_SUITE (bullseye), EDGE_MIRROR (http://deb.debian.org/debian),
#      EDGE_TIMINGS (file to write step timings to, JSON; default ROOT.timings.json)
#
# Steps: debootstrap --foreign (host side, downloads the .debs), copy qemu-aarch64-static in,
# chroot ROOT /debootstrap/debootstrap --second-stage (runs arm64 binaries through binfmt/qemu).
# python3 + python3-venv come in through --include so the second stage installs them: no apt or
# DNS needed inside the chroot. binfmt_misc is mounted and qemu-aarch64 registered if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. toolchain/lib.sh

SUITE=${EDGE_SUITE:-bullseye}
MIRROR=${EDGE_MIRROR:-http://deb.debian.org/debian}
ROOT=${1:-${EDGE_ROOT:-.cache/edge-root/$SUITE-arm64}}
TIMINGS=${EDGE_TIMINGS:-$ROOT.timings.json}
MARK="$ROOT/.refitd-edge-root-complete"

if [ -f "$MARK" ]; then
  echo "edge-root: cached at $ROOT ($(cat "$MARK"))" >&2
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "edge-root: needs root (debootstrap, chroot); run with sudo" >&2; exit 1; }

t0=$(now)
ensure_apt debootstrap:debootstrap qemu-aarch64-static:qemu-user-static
ensure_binfmt_aarch64
t_tools=$(elapsed "$t0")

mkdir -p "$(dirname "$ROOT")"
if [ -d "$ROOT" ]; then
  echo "edge-root: removing incomplete root $ROOT" >&2
  rm -rf --one-file-system "$ROOT"
fi
t1=$(now)
echo "edge-root: debootstrap --foreign $SUITE arm64 -> $ROOT (downloads the .debs, ~1 min)" >&2
with_progress "edge-root: first stage" "$ROOT.debootstrap1.log" \
  debootstrap --arch=arm64 --foreign --variant=minbase \
  --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
  || { tail -20 "$ROOT.debootstrap1.log" >&2; exit 1; }
t_first=$(elapsed "$t1")

install -m 0755 "$(command -v qemu-aarch64-static)" "$ROOT/usr/bin/qemu-aarch64-static"
t2=$(now)
# Every arm64 binary of the install runs under qemu: ~2.5 min on 2 quiet cores, 6 min and more
# on busy ones (docs/edge.md). The ticker says how long so far and what debootstrap is at (its
# log's last line).
echo "edge-root: second stage (unpacks and configures every package, arm64 under qemu; ~2.5 min on 2 quiet cores, 6+ busy)" >&2
# Its own log says only "Unpacking the base system..." for minutes; dpkg's lines are in the root's.
PROGRESS_DETAIL="$ROOT/debootstrap/debootstrap.log" with_progress "edge-root: second stage" "$ROOT.debootstrap2.log" \
  chroot "$ROOT" /debootstrap/debootstrap --second-stage \
  || { tail -20 "$ROOT.debootstrap2.log" >&2; tail -30 "$ROOT/debootstrap/debootstrap.log" >&2 || true; exit 1; }
t_second=$(elapsed "$t2")

t3=$(now)
chroot "$ROOT" /usr/bin/python3 -c 'import sys, venv, ensurepip; print(sys.version)' >&2
chroot "$ROOT" /usr/bin/ldd --version | sed -n 1p >&2
t_check=$(elapsed "$t3")
# apt caches are not needed any more; keep the root small.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb

cat >"$TIMINGS" <<EOF
{"suite": "$SUITE", "tools_s": $t_tools, "debootstrap_first_stage_s": $t_first,
 "debootstrap_second_stage_s": $t_second, "python_check_s": $t_check}
EOF
echo "$SUITE arm64, built $(date -u +%FT%TZ)" >"$MARK"
echo "edge-root: ready at $ROOT (first stage ${t_first}s, second stage ${t_second}s)" >&2
