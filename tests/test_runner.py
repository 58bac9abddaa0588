"""Workers, sources, sinks and counters on a real engine (the seeds' conv model)."""
from __future__ import annotations

import io
import json
import os
import socket
import threading
import time

import numpy as np
import pytest

from daemon_helpers import DEMO_MODEL, base_config, rmtree, short_dir, wait_until

from refitd import config as C
from refitd.engine import Engine
from refitd.log import Events
from refitd.runner import LATENCY_BUCKETS, Runner, Stats, StdoutSink, socket_infer


@pytest.fixture
def engine():
    e = Engine.open(DEMO_MODEL, backend="reference")
    yield e
    e.close()


@pytest.fixture
def events():
    return Events(stream=io.StringIO())


def _cfg(state, **sections):
    return C.parse_config(base_config(state, **sections))


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_synthetic_flat_out_with_concurrent_refits_never_torn(tmp_path, engine, events):
    """Every result carries the version that produced it: y == 9 * version, always, while a
    refit thread walks the kernel through 1..9 (the seeds' multi-thread demo as a test)."""
    cfg = _cfg(str(tmp_path), workers={"threads": 3},
               source={"type": "synthetic", "fill": "ones", "rate": 0},
               sink={"type": "jsonl", "path": str(tmp_path / "r.jsonl"), "every": 0})
    r = Runner.from_config(cfg, engine, events)
    seen = []
    r.add_observer(lambda res: seen.append((res.version, float(res.outputs["y"].reshape(-1)[0]))))
    r.start()
    wait_until(lambda: seen, what="a result at version 0")
    for k in range(1, 10):
        time.sleep(0.03)
        engine.refit({"conv.weight": np.full((1, 1, 3, 3), float(k), np.float32)}, k)
    wait_until(lambda: any(v == 9 for v, _ in seen[-50:]), what="a result at version 9")
    wait_until(lambda: len(seen) > 100, what="100 results")
    assert r.stop(drain=True)
    torn = [(v, y) for v, y in seen if y != 9.0 * v]
    assert torn == []
    versions = {v for v, _ in seen}
    assert 0 in versions and 9 in versions
    rows = _jsonl(tmp_path / "r.jsonl")
    assert len(rows) == len(seen)  # every=0: every result written
    assert all(row["outputs"]["y"][0][0][0][0] == 9.0 * row["version"] for row in rows)
    snap = r.stats.snapshot()
    assert snap["inferences_total"] == len(seen) and snap["errors_total"] == 0
    assert snap["p50_ms"] is not None and snap["p99_ms"] >= snap["p50_ms"]


def test_synthetic_rate_is_respected(tmp_path, engine, events):
    cfg = _cfg(str(tmp_path), source={"type": "synthetic", "fill": 2.0, "rate": 50.0})
    r = Runner.from_config(cfg, engine, events)
    n = []
    r.add_observer(lambda res: n.append(res))
    t0 = time.monotonic()
    r.start()
    time.sleep(1.0)
    r.stop()
    took = time.monotonic() - t0  # a loaded box oversleeps: bound by the time that really passed
    # 50/s over 2 workers: about 50 per second (scheduling on a loaded box: generous bounds)
    assert 20 <= len(n) <= 50 * took * 1.2 + 2, (len(n), took)
    assert all(res.outputs["y"].item() == 0.0 for res in n)  # kernel zeros, x all 2


def test_random_fill_and_seed(tmp_path, engine, events):
    engine.refit({"conv.weight": np.ones((1, 1, 3, 3), np.float32)}, 1)
    cfg = _cfg(str(tmp_path), workers={"threads": 1},
               source={"type": "synthetic", "fill": "random", "rate": 0, "seed": 7})
    r = Runner.from_config(cfg, engine, events)
    ys = []
    r.add_observer(lambda res: ys.append(res.outputs["y"].item()))
    r.start()
    wait_until(lambda: len(ys) > 50, what="50 results")
    r.stop()
    assert len(set(ys)) > 10  # fresh random inputs each time


def test_stdout_sink_throttles_and_formats(tmp_path, engine, events):
    out = io.StringIO()
    cfg = _cfg(str(tmp_path), source={"type": "synthetic", "fill": "ones", "rate": 0},
               sink={"type": "stdout", "every": 0.1})
    r = Runner(engine, Runner.from_config(cfg, engine, events).source, StdoutSink(cfg.sink, events, out),
               2, events)
    r.start()
    time.sleep(0.55)
    r.stop()
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 8, lines  # about one per 0.1 s although thousands ran
    assert lines[0].startswith("v0 y=0  (worker ")
    assert r.stats.snapshot()["inferences_total"] > len(lines)


def test_stats_percentiles_and_histogram():
    s = Stats(window=60)
    for i in range(1, 101):
        s.record(i / 1000.0, True, 3)  # 1..100 ms
    s.record(0.5, False, None)
    snap = s.snapshot()
    assert snap["inferences_total"] == 101 and snap["errors_total"] == 1
    assert 49 <= snap["p50_ms"] <= 51 and 98 <= snap["p99_ms"] <= 100
    assert sum(snap["buckets"]) == 100
    assert len(snap["buckets"]) == len(LATENCY_BUCKETS) + 1
    assert s.by_version == {3: 100}


def _npy_dir_runner(tmp_path, engine, events, poll):
    """A started runner on an npy-dir source in tmp_path/inputs (kernel all ones, version 4)."""
    engine.refit({"conv.weight": np.ones((1, 1, 3, 3), np.float32)}, 4)
    inputs = tmp_path / "inputs"
    cfg = _cfg(str(tmp_path), source={"type": "npy-dir", "path": str(inputs), "poll": poll},
               sink={"type": "jsonl", "path": str(tmp_path / "r.jsonl")})
    r = Runner.from_config(cfg, engine, events)
    r.start()
    return r, inputs


def test_npy_dir_source(tmp_path, engine, events):
    r, inputs = _npy_dir_runner(tmp_path, engine, events, poll=0.05)
    try:
        def drop(name, write):  # the documented contract: write a temp name, rename in
            with open(str(inputs / (name + ".part")), "wb") as f:
                write(f)
            os.replace(str(inputs / (name + ".part")), str(inputs / name))
        drop("a.npy", lambda f: np.save(f, np.full((1, 1, 3, 3), 2.0, np.float32)))
        drop("b.npz", lambda f: np.savez(f, x=np.full((1, 1, 3, 3), 3.0, np.float32)))
        with open(str(inputs / "c.npy.part"), "wb") as f:  # a temp name: never taken
            np.save(f, np.ones((1, 1, 3, 3), np.float32))
        drop("bad.npy", lambda f: f.write(b"not numpy"))
        drop("shape.npy", lambda f: np.save(f, np.ones((2, 2), np.float32)))  # wrong shape

        def done():
            d = inputs / "done"
            return d.exists() and {"a.npy", "b.npz", "shape.npy"} <= set(os.listdir(d))
        wait_until(done, what="a.npy, b.npz and shape.npy in done/")
    finally:
        r.stop()
    rows = {row["tag"]: row for row in _jsonl(tmp_path / "r.jsonl")}
    assert rows["a.npy"]["outputs"]["y"][0][0][0][0] == 18.0 and rows["a.npy"]["version"] == 4
    assert rows["b.npz"]["outputs"]["y"][0][0][0][0] == 27.0
    assert "shape" in rows["shape.npy"]["error"]
    assert (inputs / "c.npy.part").exists()  # temp names are never taken
    assert (inputs / "failed" / "bad.npy").exists()
    assert "cannot read bad.npy" in (inputs / "failed" / "bad.npy.reason").read_text()


def test_npy_dir_waits_for_a_writer_that_does_not_rename(tmp_path, engine, events):
    """np.save straight into the folder writes the header and the data separately; a scan
    between the two must not take the half-written file (it would land in failed/). The
    scans are driven by hand here (no thread), so no timing decides the outcome."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cfg = _cfg(str(tmp_path), source={"type": "npy-dir", "path": str(inputs), "poll": 0.1})
    src = Runner.from_config(cfg, engine, events).source  # not started: scans by hand

    def scan():
        return [e.name for e in src._settled(os.scandir(str(inputs)))]
    arr = np.full((1, 1, 3, 3), 2.0, np.float32)
    with open(str(inputs / "slow.npy"), "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
        f.flush()
        assert scan() == []  # first sight of the header alone: not taken
        f.write(arr.tobytes())
        f.flush()
    assert scan() == []  # it grew since: still settling
    np.save(str(inputs / "fresh.npy"), arr)
    (inputs / "x.npy.part").write_bytes(b"partial")
    assert scan() == ["slow.npy"]  # unchanged across two scans; fresh.npy seen once
    assert scan() == ["fresh.npy"]  # a taken name starts settling again (the source skips it)
    assert np.load(str(inputs / "slow.npy")).tolist() == arr.tolist()


def test_socket_source_round_trip_errors_and_drain(engine, events):
    d = short_dir()
    try:
        engine.refit({"conv.weight": np.full((1, 1, 3, 3), 2.0, np.float32)}, 2)
        path = os.path.join(d, "i.sock")
        cfg = _cfg(d, source={"type": "socket", "path": path, "mode": "0600"})
        r = Runner.from_config(cfg, engine, events)
        r.start()
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        outs, version = socket_infer(path, {"x": np.ones((1, 1, 3, 3), np.float32)})
        assert version == 2 and outs["y"].item() == 18.0
        # several requests on one connection, an engine error in between keeps the connection
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        outs, _ = socket_infer(path, {"x": np.full((1, 1, 3, 3), 0.5, np.float32)}, sock=s)
        assert outs["y"].item() == 9.0
        with pytest.raises(RuntimeError, match="shape"):
            socket_infer(path, {"x": np.ones((3,), np.float32)}, sock=s)
        outs, _ = socket_infer(path, {"x": np.ones((1, 1, 3, 3), np.float32)}, sock=s)
        assert outs["y"].item() == 18.0
        s.close()
        # a malformed frame gets a one-line error
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"\x00\x00\x00\x05hello")
        from refitd.runner import read_frame
        hdr, _ = read_frame(s, "outputs", 1 << 20)
        assert hdr["ok"] is False and "header is not JSON" in hdr["error"]
        s.close()
        # concurrent clients
        errs = []

        def client(i):
            try:
                for _ in range(20):
                    o, v = socket_infer(path, {"x": np.full((1, 1, 3, 3), float(i), np.float32)})
                    assert o["y"].item() == 18.0 * i and v == 2
            except Exception as e:  # asserted below
                errs.append(e)
        ts = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errs == []
        assert r.stop()
        assert not os.path.exists(path)
    finally:
        rmtree(d)


def test_observer_and_sink_failures_do_not_stop_workers(tmp_path, engine):
    buf = io.StringIO()
    events = Events(fmt="json", stream=buf)
    cfg = _cfg(str(tmp_path), source={"type": "synthetic", "fill": "ones", "rate": 0})
    r = Runner.from_config(cfg, engine, events)
    r.add_observer(lambda res: 1 / 0)
    r.start()
    wait_until(lambda: r.stats.snapshot()["inferences_total"] > 10, what="10 inferences")
    time.sleep(0.2)
    assert r.stop()
    errs = [json.loads(line) for line in buf.getvalue().splitlines()]
    # rate-limited: the first error at once, not one line per inference
    assert 1 <= len(errs) <= 3 and errs[0]["event"] == "runner.error"
    assert "observer failed" in errs[0]["error"]


def test_stalled_worker_is_detected(tmp_path, engine, events):
    """A worker that does not come round its loop (here: held inside an observer, as it would
    be inside a hung inference) is reported by stalled(); an idle source is not a stall."""
    cfg = _cfg(str(tmp_path), workers={"threads": 1}, source={"type": "synthetic", "fill": "ones", "rate": 1.0})
    r = Runner.from_config(cfg, engine, events)
    hold = threading.Event()
    release = threading.Event()

    def observer(res):
        if hold.is_set():
            release.wait(10)
    r.add_observer(observer)
    r.start()
    try:
        time.sleep(1.5)  # mostly idle at 1/s: waiting in get() is not a stall
        assert r.stalled(0.5) == []
        hold.set()
        time.sleep(2.5)
        assert r.stalled(0.5) == [0]
        release.set()
        time.sleep(0.5)
        assert r.stalled(0.5) == []
    finally:
        release.set()
        r.stop()
