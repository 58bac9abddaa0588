#!/usr/bin/env bash
# One-time (idempotent) set-up on Debian/Ubuntu: system packages, then a venv with refitd
# installed editable (which builds librefit through scikit-build-core).
#   scripts/setup.sh          daemon + tests
# Honours PYTHON (default python3) and VENV (default .venv); SETUP_FORCE=1 redoes the pip part.
# When the venv already holds an installed refitd whose librefit loads and was built from the
# current sources (a stamp: the hash of pyproject.toml, this script and native/), it returns at
# once, so scripts/demo.sh and scripts/test.sh start in about a second on a set-up checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.refitd-setup-stamp"

# The hash of everything the venv's install depends on.
source_hash() {
  { cat pyproject.toml scripts/setup.sh
    find native -type f \( -name '*.c' -o -name '*.h' -o -name '*.cmake' -o -name CMakeLists.txt \) \
      -not -path '*/build/*' | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -d' ' -f1
}

need_apt=()
for pkg in cmake make gcc; do
  command -v "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# mosquitto lives in /usr/sbin, which a normal user's PATH may lack.
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
# The fleet tests also run the device side against RabbitMQ's MQTT plugin, and make their TLS
# certificates with openssl.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# systemd-analyze (verify, security --offline), systemd-sysusers/-tmpfiles: tests/test_systemd.py
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# the hung-engine test boots a real systemd in a container (tests/nspawn.py)
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
if ((${#need_apt[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setup: installing ${need_apt[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

want_stamp=$(source_hash)
if [ -z "${SETUP_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] \
   && "$VENV/bin/python" -c 'from refitd import engine; engine.library_version()' 2>/dev/null; then
  echo "setup: current ($VENV; SETUP_FORCE=1 scripts/setup.sh redoes it)" >&2
  exit 0
fi
rm -f "$STAMP"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
. toolchain/lib.sh  # with_progress

# pip_install WHAT ARGS... — pip install -q ARGS with a progress line every 20 s (a pip step can
# sit silent for minutes), its output filtered of the index-location warnings.
pip_install() {
  local what=$1 log="$VENV/setup-pip.log"
  shift
  echo "setup: $what" >&2
  PROGRESS_IGNORE="^WARNING: Location .* is ignored" with_progress "setup: ${what%% (*}" "$log" \
    "$VENV/bin/python" -m pip install -q "$@" || { cat "$log" >&2; return 1; }
  { grep -v "^WARNING: Location .* is ignored" "$log" || true; } >&2
}

"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
# Editable install: builds native/ with CMake and puts librefit.so inside the refitd package.
pip_install "pip install -e .[test] into $VENV (builds librefit; ~30-90 s)" -e ".[test]"
# PyTorch is optional (the torch.onnx.export test and .pt packing use it). Only a locally
# provided wheel is used: never pull several GB of CUDA packages from an index.
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  wheel_dir=$(mktemp -d)
  if "$VENV/bin/python" -m pip download -q --no-deps --no-index -d "$wheel_dir" torch==2.13.0 >/dev/null 2>&1; then
    pip_install "torch from a local wheel (~1-2 min)" "$wheel_dir"/torch-*.whl
  fi
  rm -rf "$wheel_dir"
fi
# torch's default (dynamo) ONNX exporter needs onnxscript.
if "$VENV/bin/python" -c 'import torch' 2>/dev/null && ! "$VENV/bin/python" -c 'import onnxscript' 2>/dev/null; then
  pip_install "onnxscript (torch's ONNX exporter needs it)" onnxscript
fi
echo "$want_stamp" >"$STAMP"
echo "setup: ready ($VENV). The CLI is $VENV/bin/refitd: put it on PATH with" >&2
echo "       export PATH=\"$(pwd)/$VENV/bin:\$PATH\"   (or: source $VENV/bin/activate)" >&2
