#!/usr/bin/env bash
# One-time (idempotent) set-up on Debian/Ubuntu: system packages, then a venv with refitd
# installed editable (which builds librefit through scikit-build-core).
#   scripts/setup.sh          daemon + tests
# Honours PYTHON (default python3) and VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
for pkg in cmake make gcc; do
  command -v "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# mosquitto lives in /usr/sbin, which a normal user's PATH may lack.
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# systemd-analyze (verify, security --offline), systemd-sysusers/-tmpfiles: tests/test_systemd.py
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if ((${#need_apt[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setup: installing ${need_apt[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
# Editable install: builds native/ with CMake and puts librefit.so inside the refitd package.
"$VENV/bin/python" -m pip install -q -e ".[test]" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; } >&2
# PyTorch is optional (the torch.onnx.export test and .pt packing use it). Only a locally
# provided wheel is used: never pull several GB of CUDA packages from an index.
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  wheel_dir=$(mktemp -d)
  if "$VENV/bin/python" -m pip download -q --no-deps --no-index -d "$wheel_dir" torch==2.13.0 >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "$wheel_dir"/torch-*.whl 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; } >&2 \
      && echo "setup: torch installed from a local wheel" >&2
  fi
  rm -rf "$wheel_dir"
fi
# torch's default (dynamo) ONNX exporter needs onnxscript.
if "$VENV/bin/python" -c 'import torch' 2>/dev/null && ! "$VENV/bin/python" -c 'import onnxscript' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q onnxscript 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; } >&2
fi
echo "setup: ready ($VENV)" >&2
