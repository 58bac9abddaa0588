#!/usr/bin/env bash
# Install a bundle for *this* machine's architecture into a scratch prefix, offline, and run the
# seeds' multi-thread demo with it (the x86_64 counterpart of edge_test.sh, without a chroot):
#
#   toolchain/bundle_smoke.sh dist/refitd-<version>-linux-x86_64.tar.gz
#
# Offline: as root the install runs in `unshare -n` (no network at all), otherwise pip's
# --no-index is what keeps it off the network. PIP_* settings of the build machine are dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
. toolchain/lib.sh
BUNDLE=$(readlink -f "${1:?usage: toolchain/bundle_smoke.sh BUNDLE.tar.gz}")
S=$(readlink -f build/bundle-smoke)
rm -rf "$S" && mkdir -p "$S"
tar -xzf "$BUNDLE" -C "$S"
B=$S/$(basename "$BUNDLE" .tar.gz)
isolate=(); [ "$(id -u)" = 0 ] && isolate=(unshare -n --)
clean_env=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u VIRTUAL_ENV)
args=(--no-user --prefix "$S/opt/refitd" --confdir "$S/etc/refitd" --statedir "$S/var/lib/refitd"
      --unitdir "$S/etc/systemd/system")
t0=$(now)
"${isolate[@]}" "${clean_env[@]}" bash "$B/install.sh" "${args[@]}"
t_install=$(elapsed "$t0")
t1=$(now)
"${isolate[@]}" "${clean_env[@]}" bash "$B/install.sh" "${args[@]}"   # idempotent re-run
t_rerun=$(elapsed "$t1")
"$S/opt/refitd/bin/refitd" check-config "$S/etc/refitd/refitd.yaml"
t2=$(now)
out=$("$S/opt/refitd/bin/python" examples/seed_multithread.py --step 0.2 --threads 2 --quiet)
t_demo=$(elapsed "$t2")
echo "$out"
grep -q "torn 0, out of order 0, outputs seen 0, 9, 18, 27, 36, 45, 54, 63, 72, 81" <<<"$out"
arch=$(uname -m)
cat >"dist/bundle-smoke-$arch.json" <<JSON
{"bundle": "$(basename "$BUNDLE")", "python": "$("$S/opt/refitd/bin/python" -c 'import sys; print(sys.version.split()[0])')",
 "install_s": $t_install, "install_rerun_s": $t_rerun, "seed_multithread_s": $t_demo, "offline": "${isolate[*]:-pip --no-index}"}
JSON
echo "bundle-smoke: ok ($(cat "dist/bundle-smoke-$arch.json" | tr -d '\n'))" >&2
