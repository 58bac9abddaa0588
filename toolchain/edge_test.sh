#!/usr/bin/env bash
# The arm64 proof: install an aarch64 bundle into the emulated Debian root (make edge-root), with
# no network at all, then run inside it: the cross-built C engine tests, the Python engine tests
# against the installed package, the seeds' multi-thread demo (0 torn results), and a real daemon
# with `refitd pack` + `refitd apply` + `refitd infer`. Step timings -> dist/edge-timings.json.
#
#   toolchain/edge_test.sh dist/refitd-<version>-linux-aarch64.tar.gz
#
# Env: EDGE_ROOT (.cache/edge-root/bullseye-arm64), CROSS_BUILD (build/cross-aarch64: the
#      C tests from `make cross`), EDGE_SEED_STEP (1.0 s between the demo's refits),
#      EDGE_TIMINGS (dist/edge-timings.json), VENV (.venv, for fetching the test-only wheels).
#
# Everything after the test wheels are fetched runs in `unshare -m -n`: a private mount namespace
# (the /proc and /dev mounts inside the root vanish with it) and a network namespace with only
# loopback, so the install cannot reach any index even if it tried.
set -euo pipefail
cd "$(dirname "$0")/.."
. toolchain/lib.sh
BUNDLE=$(readlink -f "${1:?usage: toolchain/edge_test.sh BUNDLE.tar.gz}")
ROOT=$(readlink -f "${EDGE_ROOT:-.cache/edge-root/bullseye-arm64}")
CROSS_BUILD=${CROSS_BUILD:-build/cross-aarch64}
TIMINGS=${EDGE_TIMINGS:-dist/edge-timings.json}
VENV=${VENV:-.venv}
SEED_STEP=${EDGE_SEED_STEP:-1.0}
LOGDIR=${EDGE_LOGDIR:-build/edge-test}
W=/tmp/refitd-edge            # work dir inside the root

if [ -z "${REFITD_EDGE_INNER:-}" ]; then
  [ "$(id -u)" = 0 ] || { echo "edge-test: needs root (chroot, namespaces); run with sudo" >&2; exit 1; }
  [ -f "$ROOT/.refitd-edge-root-complete" ] || { echo "edge-test: no arm64 root at $ROOT (make edge-root)" >&2; exit 1; }
  ensure_binfmt_aarch64
  mkdir -p "$LOGDIR" "$(dirname "$TIMINGS")"
  # Test-only wheels (pytest, onnx: the engine tests build their models with onnx) for the root's
  # Python, fetched now while there is network. Never part of the bundle. pip evaluates
  # dependency markers for the host Python, so the <3.11 backports are named explicitly.
  pyv=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  TW=.cache/edge-root/testwheels-$pyv
  t0=$(now)
  mkdir -p "$TW"
  "$VENV/bin/python" -m pip download -q --only-binary=:all: --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 --python-version "$pyv" --implementation cp -d "$TW" \
    pytest onnx exceptiongroup tomli typing_extensions 2> >(grep -v 'is ignored' >&2)
  ls "$TW"/pytest-*.whl "$TW"/onnx-*.whl "$TW"/exceptiongroup-*.whl >/dev/null
  echo "{\"test_wheels_s\": $(elapsed "$t0")}" >"$LOGDIR/pre.json"
  export REFITD_EDGE_INNER=1 EDGE_TW=$(readlink -f "$TW") EDGE_PYV=$pyv
  exec unshare -m -n --propagation private -- "$0" "$@"
fi

# ---------------------------------------------------------------- inside the namespaces ----
ip link set lo up 2>/dev/null || true
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
mount -t tmpfs tmpfs "$ROOT/run"
mount -t tmpfs tmpfs "$ROOT/tmp"
# Never leave a daemon behind, whatever failed.
trap 'if [ -f "$LOGDIR/daemon.pid" ]; then kill "$(cat "$LOGDIR/daemon.pid")" 2>/dev/null || true; rm -f "$LOGDIR/daemon.pid"; fi' EXIT
inroot() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

reap_daemon() {
  local pid i
  [ -f "$LOGDIR/daemon.pid" ] || return 0
  pid=$(cat "$LOGDIR/daemon.pid"); rm -f "$LOGDIR/daemon.pid"
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}

declare -A T
results=()
failed=()
step() {  # step NAME CMD... : time it, log it, keep going on failure
  local name=$1; shift
  local t0; t0=$(now)
  echo "edge-test: [$name]" >&2
  local rc
  set +e
  ( set -e; "$@" ) >"$LOGDIR/$name.log" 2>&1   # not in an `if`: set -e stays on inside
  rc=$?
  set -e
  reap_daemon   # a step that failed half-way must not leave its daemon to the next one
  if [ $rc = 0 ]; then
    T[$name]=$(elapsed "$t0"); results+=("$name:pass")
    echo "edge-test: [$name] ok (${T[$name]}s)" >&2
  else
    T[$name]=$(elapsed "$t0"); results+=("$name:FAIL"); failed+=("$name")
    echo "edge-test: [$name] FAILED (${T[$name]}s); last lines of $LOGDIR/$name.log:" >&2
    tail -25 "$LOGDIR/$name.log" >&2
  fi
}

check_offline() {
  # No route out: an index request must fail here (this is what install.sh runs under).
  if inroot /usr/bin/python3 -c 'import socket; socket.create_connection(("151.101.0.223", 443), timeout=3)' 2>/dev/null; then
    echo "network reachable inside the namespace" >&2; return 1
  fi
  echo "no network: ok"
}

fresh_state() {
  # A fresh box: no previous install (the root itself is cached and reused).
  rm -rf "$ROOT/opt/refitd" "$ROOT/etc/refitd" "$ROOT/var/lib/refitd" "$ROOT/usr/local/bin/refitd" \
         "$ROOT/etc/systemd/system/refitd.service" "$ROOT/etc/systemd/system/multi-user.target.wants/refitd.service"
  mkdir -p "$ROOT$W/src"
  tar -xzf "$BUNDLE" -C "$ROOT$W"
  cp -r tests examples pyproject.toml "$ROOT$W/src/"
  mkdir -p "$ROOT$W/src/native" && cp -r native/include native/tests "$ROOT$W/src/native/"
  mkdir -p "$ROOT$W/ctests" && cp "$CROSS_BUILD"/test_* "$ROOT$W/ctests/"
  # test_strategies loads the TEST-ONLY plugin backends from its own directory
  cp "$CROSS_BUILD"/librefit_backend_testplug*.so "$ROOT$W/ctests/"
  mkdir -p "$ROOT$W/testwheels" && cp "$EDGE_TW"/*.whl "$ROOT$W/testwheels/"
  rm -f "$ROOT$W"/testwheels/numpy-*.whl   # numpy comes from the installed refitd venv
  ls "$ROOT$W"
}

BDIR=$W/$(basename "$BUNDLE" .tar.gz)
install_fresh() {
  inroot /bin/bash "$BDIR/install.sh"
  inroot /usr/bin/getent passwd refitd
  inroot /bin/ls -ld /opt/refitd /etc/refitd /var/lib/refitd /etc/refitd/refitd.yaml \
    /etc/systemd/system/refitd.service /etc/systemd/system/multi-user.target.wants/refitd.service
  inroot /opt/refitd/bin/python - <<'EOF'
import hashlib, pathlib, refitd, refitd.engine as e
lib = pathlib.Path(refitd.__file__).parent / "librefit.so"
print("refitd from", refitd.__file__)
print("librefit", lib, hashlib.sha256(lib.read_bytes()).hexdigest()[:16], "version", e.library_version(), "backends", e.backends())
assert str(lib).startswith("/opt/refitd/"), lib
EOF
  inroot /usr/local/bin/refitd --help | sed -n 1p
  inroot /usr/bin/ldd --version | sed -n 1p
  inroot /bin/uname -m
  inroot /opt/refitd/bin/python -m pip list --format=freeze --disable-pip-version-check
}

install_rerun() {
  # Upgrade in place over a live state: the weight store (version 1 from daemon_pack_apply) and an
  # edited config must survive, and the daemon must come back serving version 1.
  echo "# edited on the box" >>"$ROOT/etc/refitd/refitd.yaml"
  local conf_before store_before
  conf_before=$(sha256sum "$ROOT/etc/refitd/refitd.yaml" | cut -d' ' -f1)
  store_before=$(cd "$ROOT/var/lib/refitd/store" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum)
  inroot /bin/bash "$BDIR/install.sh"
  [ "$(sha256sum "$ROOT/etc/refitd/refitd.yaml" | cut -d' ' -f1)" = "$conf_before" ]
  [ "$(cd "$ROOT/var/lib/refitd/store" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum)" = "$store_before" ]
  grep -q fresh_venv=0 "$ROOT/opt/refitd/INSTALLED"
  echo "config and weight store unchanged, venv upgraded in place"
  start_daemon
  inroot /opt/refitd/bin/refitd status --json >"$LOGDIR/status-after-upgrade.json"
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); assert s['serving']['version'] == 1, s['serving']; print('after upgrade + restart: serving', s['serving'])" "$LOGDIR/status-after-upgrade.json"
  stop_daemon
}

c_tests() {
  local t rc=0
  for t in "$ROOT$W"/ctests/test_*; do
    echo "== $(basename "$t")"
    (cd "$ROOT$W/src/native/tests" && chroot "$ROOT" /bin/sh -c "cd $W/src/native/tests && $W/ctests/$(basename "$t")") || rc=1
  done
  return $rc
}

engine_tests() {
  inroot /bin/sh -c "/opt/refitd/bin/python -m pip install -q --no-index --no-deps --target $W/site $W/testwheels/*.whl"
  # test_cdef_matches_header runs `cc -E` on refit.h: a source-tree check, and there is no compiler
  # on an edge box. Everything else runs against the installed package.
  inroot /bin/sh -c "cd $W/src && PYTHONPATH=$W/site /opt/refitd/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_engine.py tests/test_engine_abi.py -k 'not cdef_matches_header'"
}

seed_demo() {
  inroot /bin/sh -c "cd $W/src && /opt/refitd/bin/python examples/seed_multithread.py --step $SEED_STEP --threads 2 --quiet"
}

DAEMON_PID=
start_daemon() {
  # Like systemd would: /run/refitd for the refitd user, the daemon as refitd.
  mkdir -p "$ROOT/run/refitd"
  inroot /bin/chown refitd:refitd /run/refitd
  rm -f "$ROOT/run/refitd/control.sock"
  chroot --userspec=refitd:refitd "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/var/lib/refitd \
    /opt/refitd/bin/refitd run --config /etc/refitd/refitd.yaml >>"$LOGDIR/daemon.log" 2>&1 &
  DAEMON_PID=$!
  echo $DAEMON_PID >"$LOGDIR/daemon.pid"   # for the EXIT trap: steps run in subshells
  local i
  for i in $(seq 1 240); do
    [ -S "$ROOT/run/refitd/control.sock" ] && inroot /opt/refitd/bin/refitd status >/dev/null 2>&1 && return 0
    kill -0 $DAEMON_PID 2>/dev/null || { echo "daemon exited:"; tail -20 "$LOGDIR/daemon.log"; return 1; }
    sleep 0.5
  done
  echo "daemon not ready after 120 s"; return 1
}
stop_daemon() {
  local i
  kill -TERM $DAEMON_PID
  for i in $(seq 1 60); do kill -0 $DAEMON_PID 2>/dev/null || break; sleep 0.5; done
  if kill -0 $DAEMON_PID 2>/dev/null; then echo "daemon did not stop on SIGTERM"; kill -KILL $DAEMON_PID; return 1; fi
  rm -f "$LOGDIR/daemon.pid"
  wait $DAEMON_PID || { echo "daemon exit status $?"; return 1; }
  echo "daemon stopped cleanly"
}

daemon_pack_apply() {
  : >"$LOGDIR/daemon.log"
  start_daemon
  trap 'kill $DAEMON_PID 2>/dev/null || true' RETURN
  inroot /opt/refitd/bin/refitd status
  inroot /opt/refitd/bin/python -c "
import numpy as np
np.savez('$W/w.npz', **{'conv.weight': np.ones((1, 1, 3, 3), np.float32)})
np.save('$W/x.npy', np.ones((1, 1, 3, 3), np.float32))"
  inroot /opt/refitd/bin/refitd pack --model /var/lib/refitd/model.onnx --from "$W/w.npz" --version 1 \
    -o "$W/v1.safetensors" --note "edge-test"
  echo "package mode: $(stat -c '%a %U' "$ROOT$W/v1.safetensors") (the daemon runs as refitd and must read it)"
  inroot /opt/refitd/bin/refitd apply "$W/v1.safetensors" --json | tee "$LOGDIR/apply.json"
  inroot /opt/refitd/bin/refitd status --json >"$LOGDIR/status.json"
  inroot /opt/refitd/bin/refitd infer "$W/x.npy" --json | tee "$LOGDIR/infer.json"
  python3 - "$LOGDIR/apply.json" "$LOGDIR/status.json" "$LOGDIR/infer.json" <<'EOF'
import json, sys
apply, status, infer = (json.load(open(p)) for p in sys.argv[1:4])
print("apply:", apply)
print("serving:", status["serving"], "store:", status["store"])
assert apply.get("ok") is True and apply.get("version") == 1, apply
assert status["serving"]["version"] == 1 and status["store"]["current"] == 1, status
values = [v for out in infer["outputs"].values() for v in json.dumps(out["values"]).replace("[", "").replace("]", "").split(",")]
assert infer["version"] == 1 and values and all(float(v) == 9.0 for v in values), infer
print("daemon serves version 1 and computes 9 with it")
EOF
  stop_daemon
  tail -5 "$LOGDIR/daemon.log"
}

t_all=$(now)
step offline_check check_offline
step unpack fresh_state
step install_fresh install_fresh
step c_tests c_tests
step engine_tests engine_tests
step seed_multithread seed_demo
step daemon_pack_apply daemon_pack_apply
step install_rerun install_rerun
total=$(elapsed "$t_all")

# ---- timings + results ------------------------------------------------------------------
steps_json=$(for k in "${!T[@]}"; do printf '"%s_s": %s\n' "$k" "${T[$k]}"; done | paste -sd, -)
python3 - "$TIMINGS" "$LOGDIR" "$total" "${#failed[@]}" "$steps_json" "${results[*]}" "$BUNDLE" "$ROOT" <<'EOF'
import json, os, re, sys, platform, datetime
out, logdir, total, nfail, steps, results, bundle, root = sys.argv[1:9]
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
doc = {
    "result": "pass" if nfail == "0" else "fail",
    "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
    "bundle": os.path.basename(bundle),
    "steps": dict(sorted(json.loads("{" + steps + "}").items())),
    "results": dict(r.split(":") for r in results.split()),
    "edge_test_total_s": float(total),
    "test_wheels": load(os.path.join(logdir, "pre.json")),
    "edge_root": dict(load(root + ".timings.json") or {}, path=os.path.relpath(root),
                      os=open(os.path.join(root, "etc/debian_version")).read().strip()),
    "bundle_build": load("dist/bundle-aarch64-timings.json"),
}
try:
    text = open(os.path.join(logdir, "seed_multithread.log")).read()
    m = re.search(r"inferences (\d+), torn (\d+), out of order (\d+), outputs seen (.*)", text)
    if m:
        doc["seed_multithread"] = {"inferences": int(m[1]), "torn": int(m[2]), "out_of_order": int(m[3]),
                                   "outputs_seen": m[4].strip()}
    text = open(os.path.join(logdir, "engine_tests.log")).read()
    m = re.findall(r"^=*\s*(\d+ passed.*?)\s*=*$", text, re.M)
    doc["engine_tests"] = m[-1] if m else None
    text = open(os.path.join(logdir, "c_tests.log")).read()
    doc["c_tests"] = [l for l in text.splitlines() if re.search(r"passed|torn", l)]
except OSError:
    pass
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
print(json.dumps(doc, indent=1))
EOF
if ((${#failed[@]})); then
  echo "edge-test: FAILED: ${failed[*]} (logs in $LOGDIR)" >&2
  exit 1
fi
echo "edge-test: all steps passed in ${total}s (timings in $TIMINGS)" >&2
