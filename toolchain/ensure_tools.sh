#!/usr/bin/env bash
# Install what a cross target needs, only if missing (idempotent, quiet when all is there).
#   toolchain/ensure_tools.sh qemu|gcc|mm|zig|linaro|debootstrap ...
# apt packages with sudo when not root; ziglang with pip into $VENV (created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. toolchain/lib.sh
VENV=${VENV:-.venv}
apt_items=(cmake:cmake file:file)   # every target configures with CMake; make cross runs file
for what in "$@"; do
  case $what in
    qemu)
      apt_items+=(qemu-aarch64-static:qemu-user-static)
      # -L root for qemu: the aarch64 dynamic loader and libc (Debian's cross libc).
      [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || apt_items+=(/nonexistent-ld-aarch64:libc6-arm64-cross)
      ;;
    gcc) apt_items+=(aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu) ;;
    # the MagicMind backend's compile check: g++ for the host and for aarch64 (make mm-compile-check)
    mm) apt_items+=(g++:g++ aarch64-linux-gnu-g++:g++-aarch64-linux-gnu) ;;
    debootstrap) apt_items+=(debootstrap:debootstrap) ;;
    zig)
      if ! "$VENV/bin/python" -c 'import ziglang' 2>/dev/null; then
        if [ ! -x "$VENV/bin/python" ]; then
          "${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null || ensure_apt /nonexistent-venv:python3-venv
          "${PYTHON:-python3}" -m venv "$VENV"
        fi
        echo "toolchain: pip install ziglang into $VENV" >&2
        "$VENV/bin/python" -m pip install -q ziglang
      fi
      ;;
    linaro)
      root=${TOOLCHAIN_ROOT:-/usr/local/gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu}
      [ -x "$root/bin/aarch64-linux-gnu-gcc" ] || {
        echo "toolchain: no vendor toolchain at $root; unpack gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu" \
             "there or export TOOLCHAIN_ROOT=<its directory>" >&2; exit 1; }
      ;;
    *) echo "ensure_tools: unknown tool '$what'" >&2; exit 2 ;;
  esac
done
ensure_apt "${apt_items[@]}"
exit 0
