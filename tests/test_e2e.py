"""End to end: real ``refitd run --config`` processes driven through the real CLI, real file
drops, signals, sd_notify, and SIGKILL at random moments during applies."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time

import numpy as np
import pytest

from daemon_helpers import (DaemonProc, base_config, chain_model, chain_package, env, rmtree,
                            run_cli, seed_package, short_dir, verify_store_on_disk, wait_until,
                            write_config)

from refitd.control import DaemonUnreachable, call
from refitd.channels.watch import takeable


@pytest.fixture
def state():
    d = short_dir()
    yield d
    rmtree(d)


def _start(state, **sections):
    cfg = base_config(state, **sections)
    path = write_config(state, cfg)
    return DaemonProc(path, cfg["control"]["socket"]).start(), cfg


def _y(daemon):
    x = np.ones((1, 1, 3, 3), np.float32)
    from refitd.tensorwire import to_json as encode_tensor
    r = daemon.request({"cmd": "infer", "inputs": {"x": encode_tensor(x)}})
    assert r["ok"], r
    import base64
    y = np.frombuffer(base64.b64decode(r["outputs"]["y"]["data"]), np.float32)
    return float(y[0]), r["version"]


def test_apply_cli_and_file_drop_versions_rollback_restart(state):
    d, cfg = _start(state)
    try:
        fp = d.status()["serving"]["fingerprint"]
        assert d.status()["serving"]["version"] == 0
        p1 = seed_package(os.path.join(state, "v1.safetensors"), 1, 1, fp)
        r = d.cli("apply", p1)
        assert r.returncode == 0, r.stderr
        assert _y(d) == (9.0, 1)
        # file drop: written elsewhere, renamed in
        seed_package(os.path.join(state, ".v2"), 2, 2, fp)
        os.rename(os.path.join(state, ".v2"), os.path.join(cfg["watch"]["path"], "v2.safetensors"))
        wait_until(lambda: d.status()["serving"]["version"] == 2, what="v2 via file drop")
        assert _y(d) == (18.0, 2)
        # the file moves aside after it serves (and after the listeners ran)
        wait_until(lambda: os.path.exists(os.path.join(cfg["watch"]["path"], "applied", "v2.safetensors.reason")),
                   what="v2's reason file in applied/")
        vs = json.loads(d.cli("versions", "--json").stdout)
        assert [v["version"] for v in vs["versions"]] == [0, 1, 2]
        assert vs["current"] == 2
        r = d.cli("rollback", "--to", "1")
        assert r.returncode == 0, r.stderr
        assert _y(d) == (9.0, 1)
        st = d.status()
        assert st["last_update"]["action"] == "rollback"
        # results in the jsonl sink carry the version that produced them, never torn
        time.sleep(0.2)
    finally:
        assert d.stop() == 0
    rows = [json.loads(line) for line in open(cfg["sink"]["path"])]
    assert rows and all(r["outputs"]["y"][0][0][0][0] == 9.0 * r["version"] for r in rows)
    assert {r["version"] for r in rows} >= {0, 1, 2}
    kinds = [e["event"] for e in d.events()]
    for k in ("daemon.started", "update.received", "update.applied", "update.rolled_back",
              "daemon.stopping", "daemon.stopped"):
        assert k in kinds, (k, kinds)
    assert not os.path.exists(cfg["control"]["socket"])
    # a restart serves the same (committed) version
    d2 = DaemonProc(d.config_path, cfg["control"]["socket"]).start()
    try:
        assert _y(d2) == (9.0, 1)
        assert d2.status()["store"]["current"] == 1
    finally:
        assert d2.stop() == 0


def test_pinned_version_survives_retention(state):
    d, cfg = _start(state, store={"path": os.path.join(state, "store"), "keep": 2})
    try:
        fp = d.status()["serving"]["fingerprint"]
        for v in range(1, 7):
            p = seed_package(os.path.join(state, "p%d" % v), v, v, fp)
            assert d.cli("apply", p).returncode == 0
            if v == 2:
                assert d.cli("pin", "2").returncode == 0
        vs = json.loads(d.cli("versions", "--json").stdout)
        kept = [v["version"] for v in vs["versions"]]
        assert kept == [2, 5, 6], kept
        assert [v["version"] for v in vs["versions"] if v["pinned"]] == [2]
        r = d.cli("rollback", "--to", "2")
        assert r.returncode == 0, r.stderr
        assert _y(d) == (18.0, 2)
        r = d.cli("rollback", "--to", "3")
        assert r.returncode == 1 and "3 is not in the store" in r.stderr
    finally:
        assert d.stop() == 0


def test_shadow_check_failure_is_never_served(state):
    d, cfg = _start(state, health={"checks": [{"type": "range", "min": 0, "max": 50}]},
                    sink={"type": "jsonl", "path": os.path.join(state, "r.jsonl"), "every": 0},
                    source={"type": "synthetic", "fill": "ones", "rate": 0})
    try:
        fp = d.status()["serving"]["fingerprint"]
        assert d.cli("apply", seed_package(os.path.join(state, "a"), 5, 1, fp)).returncode == 0
        r = d.cli("apply", seed_package(os.path.join(state, "b"), 6, 2, fp))  # y = 54 > 50
        assert r.returncode == 1 and "range" in r.stderr, r.stderr
        time.sleep(0.3)
        assert _y(d) == (45.0, 1)
    finally:
        assert d.stop() == 0
    versions = {json.loads(line)["version"] for line in open(os.path.join(state, "r.jsonl"))}
    assert 2 not in versions and 1 in versions


def test_sighup_reloads_what_is_safe(state):
    d, cfg = _start(state)
    try:
        new = dict(cfg)
        new["store"] = dict(cfg["store"], keep=7)
        new["workers"] = {"threads": 3}
        new["log"] = {"format": "json", "level": "debug"}
        write_config(state, new)
        d.proc.send_signal(signal.SIGHUP)
        ev = wait_until(lambda: [e for e in d.events() if e["event"].startswith("daemon.reload")],
                        what="reload event")[0]
        assert ev["event"] == "daemon.reload_partial"
        assert set(ev["changed"].split(",")) == {"store.keep", "log.level"}
        assert ev["needs_restart"] == "workers"
        st = d.status()
        assert st["store"]["keep"] == 7 and st["inference"]["threads"] == 2
        # a broken config is reported and changes nothing; the daemon keeps serving
        with open(d.config_path, "a") as f:
            f.write("bogus: 1\n")
        d.proc.send_signal(signal.SIGHUP)
        ev = wait_until(lambda: [e for e in d.events() if e["event"] == "config.error"], what="config.error")[0]
        assert 'bogus: unknown section' in ev["detail"]
        assert d.status()["store"]["keep"] == 7
    finally:
        assert d.stop() == 0


def test_startup_failures(state):
    # config error: exit 2, every problem on stderr
    cfg = base_config(state)
    cfg["store"]["keep"] = "three"
    cfg["workers"]["threads"] = 0
    path = write_config(state, cfg, "bad.yaml")
    r = run_cli("run", "--config", path, timeout=60)
    assert r.returncode == 2
    assert 'store.keep: must be an integer >= 1, got "three"' in r.stderr
    assert "workers.threads: must be an integer from 1 to 256, got 0" in r.stderr
    # a model that does not exist: exit 1, one line
    cfg = base_config(state)
    cfg["model"]["path"] = os.path.join(state, "missing.onnx")
    path = write_config(state, cfg, "nomodel.yaml")
    r = run_cli("run", "--config", path, timeout=60)
    assert r.returncode == 1
    assert "refitd: cannot open the model %s" % cfg["model"]["path"] in r.stderr
    # a sink that cannot be opened: exit 1, one line naming it
    cfg = base_config(state, sink={"type": "jsonl", "path": "/proc/refitd-no-such-dir/r.jsonl"})
    path = write_config(state, cfg, "nosink.yaml")
    r = run_cli("run", "--config", path, timeout=60)
    assert r.returncode == 1
    assert "refitd: cannot open the jsonl sink: " in r.stderr, r.stderr
    # a second daemon on the same store/socket refuses to start, the first keeps serving
    d, cfg = _start(state)
    try:
        r = run_cli("run", "--config", d.config_path, timeout=60)
        assert r.returncode == 1
        assert "in use by another refitd" in r.stderr or "another refitd" in r.stderr, r.stderr
        assert d.status()["ok"]
    finally:
        assert d.stop() == 0


def test_sd_notify_ready_watchdog_stopping(state):
    nsock_path = os.path.join(state, "notify")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(nsock_path)
    ns.settimeout(30)
    cfg = base_config(state)
    path = write_config(state, cfg)
    import subprocess, sys
    e = env()
    e["NOTIFY_SOCKET"] = nsock_path
    e["WATCHDOG_USEC"] = "400000"  # ping every 0.2 s
    log = open(os.path.join(state, "log"), "wb")
    p = subprocess.Popen([sys.executable, "-m", "refitd", "run", "--config", path], env=e,
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        msgs = []
        while not any("READY=1" in m for m in msgs):
            msgs.append(ns.recv(4096).decode())
        ready = [m for m in msgs if "READY=1" in m][0]
        assert "MAINPID=%d" % p.pid in ready and "STATUS=serving version 0" in ready
        # the daemon answers by the time it says READY
        assert call(cfg["control"]["socket"], {"cmd": "ping"})["pid"] == p.pid
        pings = 0
        t0 = time.monotonic()
        while pings < 3 and time.monotonic() - t0 < 10:
            if ns.recv(4096).decode() == "WATCHDOG=1":
                pings += 1
        assert pings == 3
        p.send_signal(signal.SIGTERM)
        while True:
            m = ns.recv(4096).decode()
            if m.startswith("STOPPING=1"):
                break
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
        ns.close()


def test_socket_source_local_inference_api(state):
    from refitd.runner import socket_infer
    isock = os.path.join(state, "i.sock")
    d, cfg = _start(state, source={"type": "socket", "path": isock})
    try:
        outs, v = socket_infer(isock, {"x": np.full((1, 1, 3, 3), 2.0, np.float32)})
        assert v == 0 and outs["y"].item() == 0.0
        fp = d.status()["serving"]["fingerprint"]
        assert d.cli("apply", seed_package(os.path.join(state, "a"), 1, 1, fp)).returncode == 0
        outs, v = socket_infer(isock, {"x": np.full((1, 1, 3, 3), 2.0, np.float32)})
        assert v == 1 and outs["y"].item() == 18.0
    finally:
        assert d.stop() == 0
    assert not os.path.exists(isock)


# ---- SIGKILL during apply ------------------------------------------------------------------

N, SIZE = 4, 1 << 18  # four 1 MiB weights: an apply takes long enough to be hit


def _kill_trials(state: str, trials: int, seed: int) -> dict:
    """Each trial: start the daemon, check it serves exactly the store's committed version
    (blobs re-hashed independently, output consistent with that version), start an apply (via
    the control socket or a file drop), SIGKILL it after a random delay."""
    rng = random.Random(seed)
    model = chain_model(os.path.join(state, "chain.onnx"), N, SIZE)
    cfg = base_config(state, model=model, workers={"threads": 1},
                      source={"type": "synthetic", "fill": "ones", "rate": 20.0},
                      sink={"type": "jsonl", "path": os.path.join(state, "r.jsonl"), "every": 1.0},
                      store={"path": os.path.join(state, "store"), "keep": 3},
                      health={"checks": [{"type": "finite"}]}, log={"format": "json", "level": "info"})
    path = write_config(state, cfg)
    sock, store, drop = cfg["control"]["socket"], cfg["store"]["path"], cfg["watch"]["path"]
    pkgs = os.path.join(state, "pkgs")
    os.makedirs(pkgs)
    from daemon_helpers import fingerprint
    fp = fingerprint(model)
    stats = {"old": 0, "new": 0, "trials": 0, "mid_apply": 0}
    prev_committed = None
    pending_version = None  # the version the previous (killed) trial was applying
    durations = [0.1]  # how long applies take here: the kill delays are drawn to cover them
    for trial in range(trials + 1):
        if prev_committed is not None or os.path.exists(os.path.join(store, "current")):
            on_disk = verify_store_on_disk(store)
        else:
            on_disk = None
        log = os.path.join(state, "daemon-%d.log" % trial)
        if trial:
            # the killed daemon's log: was the kill inside the apply (received, not yet applied)?
            kinds = [json.loads(line).get("event") for line in open(os.path.join(state, "daemon-%d.log" % (trial - 1)))
                     if line.startswith("{")]
            if "update.received" in kinds and "update.applied" not in kinds:
                stats["mid_apply"] += 1
            for line in open(os.path.join(state, "daemon-%d.log" % (trial - 1))):
                if '"update.applied"' in line:
                    durations.append(json.loads(line)["seconds"])
        d = DaemonProc(path, sock, log).start(timeout=90)
        try:
            # leftovers of the killed trial in the drop dir are handled first
            wait_until(lambda: not [n for n in os.listdir(drop) if takeable(n) and
                                    os.path.isfile(os.path.join(drop, n))], timeout=60, what="drop dir drained")
            wait_until(lambda: d.request({"cmd": "ping"})["ok"], what="ping")
            committed = verify_store_on_disk(store)
            st = d.status()
            assert st["serving"]["version"] == committed, (st["serving"], committed)
            y, v = _y_chain(d)
            assert v == committed and np.all(y == 1.0 + N * committed), (v, y[:4], committed)
            if on_disk is not None and prev_committed is not None:
                # what a killed apply leaves is either the old or the new version, nothing else
                assert on_disk in (prev_committed, pending_version), (on_disk, prev_committed, pending_version)
                stats["new" if on_disk == pending_version else "old"] += 1
                stats["trials"] += 1
            if trial == trials:
                break
            pending_version = (st["store"]["versions"][-1] if st["store"]["versions"] else 0) + 1
            pending_version = max(pending_version, committed + 1)
            pkg = chain_package(os.path.join(pkgs, "v%d.safetensors" % pending_version), pending_version, fp, N, SIZE)
            prev_committed = committed
            if trial % 2 == 0:
                threading.Thread(target=_apply_quietly, args=(sock, pkg), daemon=True).start()
            else:
                os.rename(pkg, os.path.join(drop, "v%d.safetensors" % pending_version))
            # from "just sent" to a little past a typical apply (file drops also wait for inotify)
            typical = sorted(durations)[len(durations) // 2]
            time.sleep(rng.uniform(0.0, 1.5 * typical + (0.03 if trial % 2 == 0 else 0.06)))
        finally:
            d.kill9()
    return stats


def _apply_quietly(sock, pkg):
    try:
        call(sock, {"cmd": "apply", "path": pkg}, timeout=60)
    except DaemonUnreachable:
        pass  # killed under us: expected


def _y_chain(d):
    from refitd.tensorwire import to_json as encode_tensor
    import base64
    r = d.request({"cmd": "infer", "inputs": {"x": encode_tensor(np.ones((SIZE,), np.float32))}})
    assert r["ok"], r
    return np.frombuffer(base64.b64decode(r["outputs"]["y"]["data"]), np.float32), r["version"]


def test_kill9_during_apply_always_restarts_on_a_committed_version(state):
    stats = _kill_trials(state, trials=20, seed=1234)
    assert stats["trials"] == 20
    assert stats["mid_apply"] >= 1, stats  # some kills did land inside an apply
    print("kill -9 trials: %(trials)d, old version kept %(old)d, new version committed %(new)d, "
          "killed between update.received and update.applied %(mid_apply)d" % stats)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("REFITD_LONG"), reason="long mode: set REFITD_LONG=1")
def test_kill9_during_apply_long(state):
    stats = _kill_trials(state, trials=200, seed=int(time.time()))
    assert stats["trials"] == 200
    assert stats["mid_apply"] >= 10, stats
    print("kill -9 trials: %(trials)d, old version kept %(old)d, new version committed %(new)d, "
          "killed between update.received and update.applied %(mid_apply)d" % stats)


def test_demo_command_runs_the_real_daemon(state):
    """`refitd demo`: outputs climb to 81 through file drops, the rollback brings 27 back, the
    daemon exits cleanly."""
    r = run_cli("demo", "--state-dir", os.path.join(state, "demo"), "--interval", "0.7", timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for k in range(0, 10):
        assert "v%d y=%d " % (k, 9 * k) in out, k
    after = out[out.index("$ refitd rollback --to 3"):]
    assert "rolled back to version 3" in after and "v3 y=27 " in after
    assert "current,pinned" in after  # `refitd versions`: 3 kept by its pin although keep is 5
    assert "serving      version 3" in after  # `refitd status`
    assert "demo: daemon exited with status 0" in out
    # every result line is consistent: y == 9 * version (no torn or mislabelled result)
    import re
    for m in re.finditer(r"^v(\d+) y=(\S+) ", out, re.M):
        assert float(m.group(2)) == 9.0 * int(m.group(1)), m.group(0)
    applied = os.listdir(os.path.join(state, "demo", "incoming", "applied"))
    assert len([a for a in applied if a.endswith(".safetensors")]) == 9


def test_run_without_config_uses_the_demo_config(state):
    import subprocess, sys
    e = env()
    e["XDG_STATE_HOME"] = state
    e["HOME"] = state  # no /etc/refitd on a test box; the CLI falls back to the demo socket
    log = open(os.path.join(state, "log"), "wb")
    p = subprocess.Popen([sys.executable, "-m", "refitd", "run", "--log-format", "json"], env=e, stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        sock = os.path.join(state, "refitd", "control.sock")
        wait_until(lambda: os.path.exists(sock), timeout=60, what="demo control socket")
        r = subprocess.run([sys.executable, "-m", "refitd", "status", "--json"], env=e, capture_output=True,
                           text=True, timeout=60)
        if os.path.exists("/etc/refitd/refitd.yaml"):
            pytest.skip("/etc/refitd/refitd.yaml exists here: the CLI would use it")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["serving"]["model"].endswith("seed_conv.onnx") and st["config"] is None
        assert st["store"]["path"] == os.path.join(state, "refitd", "store")
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        log.close()
    text = open(os.path.join(state, "log")).read()
    assert "running the built-in demo configuration" in text
    started = [json.loads(line) for line in text.splitlines() if line.startswith('{"ts"')]
    assert [e["event"] for e in started if e["event"].startswith("daemon.")] == \
        ["daemon.starting", "daemon.started", "daemon.stopping", "daemon.stopped"]
