"""Survival on real faults (issue 12, "does not"): a read-only store, a full drop folder,
unbounded growth of applied/, rejected/ and the results file, dead workers and the watchdog,
and the offline store check. Real daemons, the real CLI, real mounts (tests/fs_faults.py)."""
from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from daemon_helpers import (DaemonProc, base_config, run_cli, seed_package, tree_hash, wait_until,
                            write_config)
from fs_faults import fill, set_read_only, tmpfs

from refitd import config as C
from refitd.engine import Engine
from refitd.log import Events
from refitd.runner import JsonlSink, Result, Runner
from refitd.store import Store


def _daemon(state, **sections):
    cfg = base_config(state, **sections)
    path = write_config(state, cfg)
    return DaemonProc(path, cfg["control"]["socket"]), cfg


def _started_with_versions(state, *versions):
    """A started daemon that has applied ``versions`` by the CLI; returns (daemon, fingerprint)."""
    d, _cfg = _daemon(state)
    d.start()
    fp = d.status()["serving"]["fingerprint"]
    for v in versions:
        assert d.cli("apply", seed_package(os.path.join(state, "v%d" % v), v, v, fp)).returncode == 0
    return d, fp


def _one_line_error(r) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


# ---- read-only store ---------------------------------------------------------------------

def test_read_only_store_at_start_serves_committed_version_and_refuses_writes(state):
    store_dir = os.path.join(state, "store")
    with tmpfs(store_dir):
        d, fp = _started_with_versions(state, 1, 2)
        assert d.stop() == 0
        set_read_only(store_dir)
        before = tree_hash(store_dir)
        d.start()  # today: "cannot open the store: ... Read-only file system: .../lock"
        try:
            st = d.status()
            assert st["serving"]["version"] == 2 and st["store"]["current"] == 2
            assert len(st["degraded"]) == 1 and "read-only" in st["degraded"][0], st["degraded"]
            assert any(e.get("event") == "store.read_only" for e in d.events())
            err = _one_line_error(d.cli("apply", seed_package(os.path.join(state, "v3"), 3, 3, fp)))
            assert "store" in err and "read-only" in err, err
            last = d.status()["last_update"]
            assert last["ok"] is False and last["stage"] == "store" and "read-only" in last["reason"]
            err = _one_line_error(d.cli("pin", "2"))
            assert "cannot pin version 2" in err and "read-only" in err, err
            err = _one_line_error(d.cli("rollback", "--to", "1"))
            assert "read-only" in err, err
            assert d.status()["serving"]["version"] == 2
            r = d.cli("versions", "--json")
            assert r.returncode == 0 and json.loads(r.stdout)["current"] == 2
        finally:
            assert d.stop() == 0
        assert tree_hash(store_dir) == before


def test_store_turning_read_only_under_a_running_daemon(state):
    store_dir = os.path.join(state, "store")
    with tmpfs(store_dir):
        d, fp = _started_with_versions(state, 1)
        try:
            set_read_only(store_dir)
            before = tree_hash(store_dir)
            # today: "internal error: OSError: [Errno 30] ... versions/2.json"
            err = _one_line_error(d.cli("apply", seed_package(os.path.join(state, "v2"), 2, 2, fp)))
            assert "cannot write version 2 to the store" in err, err
            assert d.status()["last_update"]["stage"] == "store"
            err = _one_line_error(d.cli("pin", "1"))  # today: "internal error in pin"
            assert "cannot pin version 1" in err, err
            assert d.status()["serving"]["version"] == 1
            assert tree_hash(store_dir) == before
            set_read_only(store_dir, False)
            assert d.cli("apply", seed_package(os.path.join(state, "v3"), 3, 3, fp)).returncode == 0
        finally:
            set_read_only(store_dir, False)
            assert d.stop() == 0


# ---- full drop folder ----------------------------------------------------------------------

def test_full_watch_directory_leaves_no_part_file_and_records_the_outcome(state):
    watch = os.path.join(state, "in")
    with tmpfs(watch, size="256k"):
        os.makedirs(os.path.join(watch, "applied"))
        stale = os.path.join(watch, "applied", ".old.reason.part")  # left by an earlier crash
        open(stale, "w").close()
        d, cfg = _daemon(state)
        d.start()
        try:
            assert not os.path.exists(stale)
            fp = d.status()["serving"]["fingerprint"]
            seed_package(os.path.join(watch, ".v1.part"), 1, 1, fp)
            fill(watch)
            os.rename(os.path.join(watch, ".v1.part"), os.path.join(watch, "v1"))
            wait_until(lambda: os.path.basename((d.status()["last_update"] or {}).get("file") or "") == "v1",
                       what="v1 recorded")
            last = d.status()["last_update"]
            assert last["ok"] is True and last["version"] == 1 and last["source"] == "file"
            wait_until(lambda: any(e.get("event") == "watch.error" and "reason" in e.get("error", "")
                                   for e in d.events()), what="the reason-file error event")
            applied = os.listdir(os.path.join(watch, "applied"))
            assert "v1" in applied and not [n for n in applied if n.endswith(".part")], applied
        finally:
            assert d.stop() == 0


# ---- retention of applied/ and rejected/ ---------------------------------------------------

def _setup_watch(tmp_path, **kw):
    from test_watch import Setup
    s = Setup(tmp_path)
    from refitd.channels.watch import DropWatcher
    s.watcher = DropWatcher(s.drop, s.pipeline, s.events,
                            on_outcome=lambda name, o: s.outcomes.append((name, o)), **kw)
    s.watcher.start()
    return s


def _drop(s, tmp_path, name, version):
    src = str(tmp_path / ("." + name))
    seed_package(src, float(version), version, s.fp)
    os.rename(src, os.path.join(s.drop, name))


def _files(drop, sub):
    return sorted(os.listdir(os.path.join(drop, sub)))


def test_drop_folder_retention_by_count(tmp_path):
    s = _setup_watch(tmp_path, keep=3, keep_bytes=1 << 30)
    try:
        for v in range(1, 7):
            _drop(s, tmp_path, "p%d" % v, v)
            wait_until(lambda v=v: len(s.outcomes) == v, what="drop %d taken" % v)
        for v in range(1, 4):  # versions below the highest: rejected
            _drop(s, tmp_path, "old%d" % v, v)
            wait_until(lambda v=v: len(s.outcomes) == 6 + v, what="old drop %d taken" % v)
        _drop(s, tmp_path, "old4", 1)
        wait_until(lambda: len(s.outcomes) == 10, what="old drop 4 taken")
        # the outcome is recorded before the file moves aside: wait for the last move
        want_a = ["p4", "p4.reason", "p5", "p5.reason", "p6", "p6.reason"]
        want_r = ["old2", "old2.reason", "old3", "old3.reason", "old4", "old4.reason"]
        wait_until(lambda: _files(s.drop, "rejected") == want_r, what="rejected/ pruned to 3")
        assert _files(s.drop, "applied") == want_a
    finally:
        s.close()


def test_drop_folder_retention_by_bytes_keeps_the_newest(tmp_path):
    s = _setup_watch(tmp_path, keep=100, keep_bytes=700)  # a package is ~300 bytes + reason
    try:
        for v in range(1, 5):
            _drop(s, tmp_path, "p%d" % v, v)
            wait_until(lambda v=v: len(s.outcomes) == v, what="drop %d taken" % v)
        wait_until(lambda: [n for n in _files(s.drop, "applied") if "." not in n] == ["p3", "p4"],
                   what="applied/ pruned to 700 bytes")
        total = sum(os.path.getsize(os.path.join(s.drop, "applied", n))
                    for n in os.listdir(os.path.join(s.drop, "applied")))
        assert total <= 700
    finally:
        s.close()


def test_drop_folder_retention_config_keys(tmp_path):
    cfg = C.parse_config(base_config(str(tmp_path), watch={"path": str(tmp_path / "in"), "keep": 7,
                                                            "keep_bytes": 1000}))
    assert (cfg.watch.keep, cfg.watch.keep_bytes) == (7, 1000)
    with pytest.raises(C.ConfigError) as e:
        C.parse_config(base_config(str(tmp_path), watch={"path": str(tmp_path / "in"), "keep": -1}))
    assert "watch.keep" in e.value.report()


# ---- the jsonl results sink ------------------------------------------------------------------

def _result(i):
    return Result({"y": np.full((1, 1, 1, 1), float(i), np.float32)}, 1, 0.001, 0, time.time(), None, None)


def test_jsonl_sink_is_capped_with_one_older_generation(tmp_path):
    path = str(tmp_path / "r.jsonl")
    cfg = C.parse_config(base_config(str(tmp_path), sink={"type": "jsonl", "path": path,
                                                           "max_bytes": 4096})).sink
    sink = JsonlSink(cfg, Events(stream=io.StringIO()))
    for i in range(1000):
        sink.put(_result(i))
    sink.close()
    assert os.path.getsize(path) <= 4096 and os.path.getsize(path + ".1") <= 4096
    last = [json.loads(line) for line in open(path)]
    assert last[-1]["outputs"]["y"] == [[[[999.0]]]]  # whole lines, the newest in the live file
    assert all(json.loads(line) for line in open(path + ".1"))
    assert not os.path.exists(path + ".2")


def test_jsonl_sink_reopened_on_sighup_after_logrotate(state):
    d, cfg = _daemon(state)
    results = cfg["sink"]["path"]
    d.start()
    try:
        wait_until(lambda: os.path.exists(results) and os.path.getsize(results) > 0, what="results")
        os.rename(results, results + ".rotated")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(results) and os.path.getsize(results) > 0, timeout=20,
                   what="a new results file after SIGHUP")
        size = os.path.getsize(results + ".rotated")
        time.sleep(0.5)
        assert os.path.getsize(results + ".rotated") == size  # the old file is no longer written
        assert any(e.get("event") == "sink.reopened" for e in d.events())
    finally:
        assert d.stop() == 0


# ---- dead workers ------------------------------------------------------------------------------

def test_dead_workers_count_as_stalled(tmp_path):
    engine = Engine.open(base_config(str(tmp_path))["model"]["path"], backend="reference")
    cfg = C.parse_config(base_config(str(tmp_path), source={"type": "synthetic", "fill": "ones",
                                                            "rate": 0}))
    r = Runner.from_config(cfg, engine, Events(stream=io.StringIO()))

    def die(res):  # escapes the loop's `except Exception`, as a real bug's BaseException would
        raise SystemExit("worker killed by the test")
    r.add_observer(die)
    threading.excepthook, old = (lambda args: None), threading.excepthook
    try:
        r.start()
        wait_until(lambda: not any(t.is_alive() for t in r._workers), what="both workers dead")
        assert r.dead() == [0, 1]
        assert r.stalled(3600.0) == [0, 1]  # today: [] (dead threads were skipped)
        r.stop()
        assert r.dead() == []  # stopped on purpose: not a fault
    finally:
        threading.excepthook = old
        engine.close()


# ---- refitd verify-store -----------------------------------------------------------------------

def test_verify_store_reports_each_problem_and_changes_nothing(tmp_path):
    sdir = str(tmp_path / "store")
    w = lambda k: {"conv.weight": np.full((1, 1, 3, 3), k, np.float32)}  # noqa: E731
    with Store(sdir) as st:
        for v in (1, 2, 3):
            st.put(v, w(float(v)), meta={"model": "m"})
            st.commit(v)
        blobs = {v: st.manifest(v)["tensors"]["conv.weight"]["sha256"] for v in (1, 2, 3)}
    r = run_cli("verify-store", "--store", sdir)
    assert r.returncode == 0 and "0 problems" in r.stdout, r.stdout + r.stderr
    p1 = os.path.join(sdir, "blobs", blobs[1][:2], blobs[1])
    with open(p1, "r+b") as f:  # one flipped byte
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    os.unlink(os.path.join(sdir, "blobs", blobs[2][:2], blobs[2]))
    open(os.path.join(sdir, "versions", ".tmp-9.json.1.1"), "w").close()
    before = tree_hash(sdir, skip=())
    r = run_cli("verify-store", "--store", sdir)
    assert r.returncode == 1, r.stdout + r.stderr
    problems = [l for l in r.stdout.splitlines() if l.startswith("problem: ")]
    assert len(problems) == 2, r.stdout
    assert any("version 1" in l and "corrupt" in l for l in problems), problems
    assert any("version 2" in l and "missing" in l for l in problems), problems
    assert any(l.startswith("note: ") and "interrupted" in l for l in r.stdout.splitlines())
    assert tree_hash(sdir, skip=()) == before  # nothing repaired, removed or locked
    r = run_cli("verify-store", "--store", sdir, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["ok"] is False and len(out["problems"]) == 2, r.stdout
    assert out["current"] == 3 and len(out["notes"]) == 1 and out["store"] == sdir
    r = run_cli("verify-store", "--store", str(tmp_path / "nope"))
    assert r.returncode == 1 and "not a refitd store" in r.stderr
