"""Faults on real processes and files: a hung engine (test-only fault, faults.py) and dead workers
stop the watchdog pings, and a supervisor with systemd's WatchdogSec= semantics over the real
sd_notify datagram protocol restarts the daemon, which comes back on the committed version; a
full disk while staging rejects the update with one line, serving continues, and the store
opens after a restart. The hung engine also under a real systemd: the shipped unit in a
systemd-nspawn container (tests/nspawn.py), since this machine's PID 1 is not systemd. The MQTT
broker unreachable, then killed: inference and the file drop go on."""
from __future__ import annotations

import json
import os
import sys

import pytest

from daemon_helpers import DaemonProc, base_config, env, seed_package, wait_until, write_config
from fs_faults import fill, tmpfs
from supervisor import Supervisor

from refitd.control import DaemonUnreachable, call


def _status(sock):
    try:
        st = call(sock, {"cmd": "status"}, timeout=2)
        return st if st.get("ok") else None
    except (DaemonUnreachable, OSError):
        return None


def _supervised(state, fault_var, watchdog_sec=2.0):
    """v1 applied and committed by a plain run first, then the supervised run with the fault."""
    cfg = base_config(state)
    path = write_config(state, cfg)
    d = DaemonProc(path, cfg["control"]["socket"]).start()
    try:
        fp = d.status()["serving"]["fingerprint"]
        assert d.cli("apply", seed_package(os.path.join(state, "v1"), 1, 1, fp)).returncode == 0
    finally:
        assert d.stop() == 0
    sup = Supervisor([sys.executable, "-m", "refitd", "run", "--config", path], env(), watchdog_sec,
                     os.path.join(state, "notify"), os.path.join(state, "log"),
                     first_env={fault_var: "50"})
    return sup.start(), cfg


@pytest.mark.parametrize("fault", ["REFITD_TEST_ONLY_HANG_ENGINE_AFTER",
                                   "REFITD_TEST_ONLY_KILL_WORKERS_AFTER"])
def test_wedged_or_dead_workers_stop_pings_and_the_supervisor_restarts(state, fault):
    sup, cfg = _supervised(state, fault)
    sock = cfg["control"]["socket"]
    try:
        wait_until(lambda: sup.count("watchdog-timeout") >= 1, timeout=60, what="the watchdog timeout")
        t_timeout = [e[0] for e in sup.events if e[1] == "watchdog-timeout"][0]
        alive = [e[0] for e in sup.events if e[1] in ("ready", "ping") and e[0] < t_timeout]
        assert t_timeout - alive[-1] > sup.watchdog_sec  # the pings stopped (not merely slowed)
        wait_until(lambda: sup.starts == 2 and sup.count("ready") >= 2, timeout=60, what="the restart")
        st = wait_until(lambda: _status(sock), timeout=30, what="status after restart")
        assert st["serving"]["version"] == 1 and st["degraded"] == []
        n = sup.count("ping")
        wait_until(lambda: sup.count("ping") >= n + 2, timeout=30, what="pings after restart")
        assert sup.count("watchdog-timeout") == 1 and sup.starts == 2
    finally:
        sup.stop()


def test_disk_full_while_staging(state):
    store_dir = os.path.join(state, "store")
    with tmpfs(store_dir, size="512k"):
        cfg = base_config(state)
        d = DaemonProc(write_config(state, cfg), cfg["control"]["socket"]).start()
        try:
            fp = d.status()["serving"]["fingerprint"]
            assert d.cli("apply", seed_package(os.path.join(state, "v1"), 1, 1, fp)).returncode == 0
            fill(store_dir)
            r = d.cli("apply", seed_package(os.path.join(state, "v2"), 2, 2, fp))
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert "No space left on device" in r.stderr and "internal" not in r.stderr, r.stderr
            last = d.status()["last_update"]
            assert last["stage"] == "store" and d.status()["serving"]["version"] == 1
        finally:
            assert d.stop() == 0
        d.start()  # the store opens on the full disk and serves what was committed
        try:
            assert d.status()["serving"]["version"] == 1
            os.unlink(os.path.join(store_dir, "filler"))
            assert d.cli("apply", seed_package(os.path.join(state, "v3"), 3, 3, fp)).returncode == 0
        finally:
            assert d.stop() == 0


def _inferences(d):
    return (d.status()["inference"] or {}).get("inferences_total", 0)


def _mqtt(d):
    return d.status()["channels"]["mqtt"]


def _drop(d, cfg, state, name, version, fp):
    path = seed_package(os.path.join(state, name), version, version, fp)
    watch = cfg["watch"]["path"]
    os.rename(path, os.path.join(watch, name))  # same filesystem: appears whole
    wait_until(lambda: d.status()["serving"]["version"] == version, 60,
               what="the file drop applying version %d" % version)


def test_broker_unreachable_then_killed_inference_and_file_drop_go_on(state):
    """MQTT on, its broker port with nothing listening from the start: inference runs, the
    file drop applies, status names the MQTT channel disconnected and why. The broker comes up
    -> the channel connects; SIGKILL to the broker -> disconnected with the reason, inference and
    the file drop unaffected; the broker back -> connected again."""
    from brokers import Mosquitto
    from fleet_helpers import cli
    broker = Mosquitto(os.path.join(state, "broker"))
    os.makedirs(broker.workdir)
    broker.write_config()  # its ports, nothing listening on them yet
    m = {"enabled": True, "broker": broker.url, "fleet": "flt", "client_id": "dev-f",
         "backoff_max": 1.0, "status_period": 1.0}
    # no keys on this box: signatures (required on mqtt by default) are not what is tested
    cfg = base_config(state, mqtt=m, source={"type": "synthetic", "fill": "ones", "rate": 50.0},
                      security={"require_signature": False})
    d = DaemonProc(write_config(state, cfg), cfg["control"]["socket"]).start()
    try:
        fp = d.status()["serving"]["fingerprint"]
        n = _inferences(d)
        wait_until(lambda: _inferences(d) > n + 20, 30, what="inference with no broker")
        mq = _mqtt(d)
        assert mq["connected"] is False and mq["connects"] == 0, mq
        assert "cannot connect to broker 127.0.0.1:%d" % broker.port in mq["error"], mq
        assert "Connection refused" in mq["error"] and "\n" not in mq["error"], mq
        r = d.cli("status")
        assert "mqtt         broker %s: DISCONNECTED: cannot connect" % broker.url in r.stdout, r.stdout
        _drop(d, cfg, state, "v1.safetensors", 1, fp)

        broker.start()
        wait_until(lambda: _mqtt(d)["connected"], 60, what="the channel connecting once the broker is up")
        rows = wait_until(lambda: (lambda r: r.returncode == 0 and json.loads(r.stdout)["devices"])(
            cli("fleet", "status", "--fleet", "flt", "--broker", broker.url, "--json", "--expect", "dev-f")),
            60, what="the device in fleet status")
        assert rows[0]["device"] == "dev-f" and rows[0]["serving"] == 1 and rows[0]["online"], rows

        broker.kill9()  # mid-run, no goodbye
        mq = wait_until(lambda: (lambda q: q if not q["connected"] else None)(_mqtt(d)), 60,
                        what="the channel noticing the broker is gone")
        assert mq["error"] and "\n" not in mq["error"] and "broker 127.0.0.1:%d" % broker.port in mq["error"], mq
        n = _inferences(d)
        wait_until(lambda: _inferences(d) > n + 20, 30, what="inference with the broker killed")
        _drop(d, cfg, state, "v2.safetensors", 2, fp)
        assert d.status()["inference"]["errors_total"] == 0

        connects = _mqtt(d)["connects"]
        broker.start()
        wait_until(lambda: _mqtt(d)["connected"] and _mqtt(d)["connects"] > connects, 60,
                   what="the channel reconnecting after the broker came back")
        assert _mqtt(d)["error"] is None
    finally:
        broker.stop()
        assert d.stop() == 0


def test_hung_engine_is_restarted_by_a_real_systemd_watchdog(state):
    """The shipped unit under a real systemd (PID 1 of a systemd-nspawn container booted from
    this machine's /usr, tests/nspawn.py), with a drop-in for the venv's python, WatchdogSec=3s
    and the hung-engine fault on the first start only: v1 is applied, then the engine hangs;
    systemd sees the pings stop, kills the service (Watchdog timeout), Restart=on-failure starts
    it again, and the new process pings on and serves the committed v1, not degraded."""
    import nspawn
    import yaml
    why = nspawn.available()
    assert why is None, why
    from daemon_helpers import fingerprint
    work = os.path.join(state, "nspawn")
    os.makedirs(work)
    v1 = seed_package(os.path.join(state, "v1.safetensors"), 1, 1, fingerprint())
    # 1000 inferences at 100/s: the observer's apply of v1 comes well before the hang
    dirs = nspawn.layout(work, "", 3.0, {"REFITD_TEST_ONLY_HANG_ENGINE_AFTER": "1000"}, settle=8, apply=v1)
    lib = "/var/lib/refitd"
    cfg = base_config(lib, store={"path": lib + "/store", "keep": 3}, watch={"path": lib + "/incoming"},
                      control={"socket": "/run/refitd/control.sock"},
                      security={"require_signature": False, "state_dir": lib + "/trust"})
    with open(os.path.join(dirs["etc-refitd"], "refitd.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    r = nspawn.boot(work, dirs)
    log = open(os.path.join(work, "boot.log"), errors="replace").read()[-4000:]
    journal = nspawn.read(dirs, "journal.txt")
    assert r.returncode == 0, log
    assert nspawn.read(dirs, "apply.txt").startswith("applied version 1"), (
        nspawn.read(dirs, "apply.txt"), journal[-3000:], log)
    show = nspawn.show(dirs)
    assert show.get("NRestarts") == "1" and show.get("ActiveState") == "active", (show, journal[:3000], log)
    assert show.get("WatchdogUSec") == "3s", show
    assert "Watchdog timeout" in journal and "runner.stalled" in journal, journal[-3000:]
    st = json.loads(nspawn.read(dirs, "status.json") or "null") or {}
    assert st.get("serving", {}).get("version") == 1 and st.get("degraded") == [], (
        st, nspawn.read(dirs, "status.err"), journal[-3000:])
