"""refitd.pipeline on a real engine: apply, partial packages, rollback, restart, the shadow
check under concurrent inference, the watch window, failure paths and kill -9 during apply."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import ONES, ROOT, RecordingEvents, fail_replace, kernel, store_digest, write_pkg, y_of
from refitd.engine import Engine
from refitd.health import HealthError, ShadowCheck, WatchWindow
from refitd.pipeline import Outcome, Pipeline
from refitd.store import Store, StoreError

GOLDEN = [{"type": "golden", "inputs": {"x": 1.0}, "expect": {"y": 45.0}, "atol": 45.5, "rtol": 0.0}]


def pkg(tmp_path, engine, k, version, **kw):
    return write_pkg(tmp_path / ("k%s-v%d.safetensors" % (k, version)), kernel(k), version,
                     engine.fingerprint, **kw)


def test_start_seeds_an_empty_store_with_the_model_weights(engine, store, events):
    p = Pipeline(engine, store, None, events)
    assert p.start() == 0
    assert store.current() == 0 and store.versions() == [0]
    man = store.manifest(0)
    assert man["model"] == engine.fingerprint and man["source"] == "model"
    np.testing.assert_array_equal(store.load(0)["conv.weight"], np.zeros((1, 1, 3, 3)))
    assert store.history[-1]["event"] == "initial"


def test_apply_makes_the_package_serve_and_commits_it(pipeline, engine, store, events, tmp_path):
    out = pipeline.apply(pkg(tmp_path, engine, 1, 1), source="test")
    assert isinstance(out, Outcome)
    assert (out.ok, out.version, out.reason, out.stage, out.previous) == (True, 1, None, "done", 0)
    assert out.seconds > 0
    assert y_of(engine) == (9.0, 1)
    assert store.current() == 1 and store.versions() == [0, 1]
    assert events.kinds()[-2:] == ["update.received", "update.applied"]
    ev = events.last("update.applied")
    assert ev["version"] == 1 and ev["previous"] == 0 and ev["source"] == "test"
    assert store.manifest(1)["package_sha256"] == ev.get("package_sha256", store.manifest(1)["package_sha256"])
    h = store.history[-1]
    assert h["event"] == "applied" and h["version"] == 1 and h["previous"] == 0 and h["source"] == "test"


def test_outputs_walk_0_9_to_81_like_the_seed_demo(pipeline, engine, tmp_path):
    seen = []
    for k in range(1, 10):
        assert pipeline.apply(pkg(tmp_path, engine, k, k)).ok
        seen.append(y_of(engine))
    assert seen == [(9.0 * k, k) for k in range(1, 10)]


def test_the_serving_package_delivered_again_is_already_applied(pipeline, engine, store, tmp_path):
    """A file re-taken after a crash between commit and moving it (or a QoS 1 duplicate) is a
    no-op success; a different package with the serving version number is still refused."""
    path = pkg(tmp_path, engine, 1, 1)
    assert pipeline.apply(path).ok
    before = store_digest(store.path)
    again = pipeline.apply(path)
    assert (again.ok, again.version, again.reason, again.stage) == (True, 1, None, "already-applied")
    assert store_digest(store.path) == before and y_of(engine) == (9.0, 1)
    other = pipeline.apply(pkg(tmp_path, engine, 2, 1))
    assert not other.ok and other.reason == "package version 1 equals the serving version 1"


def test_float16_package_serves(pipeline, engine, store, tmp_path):
    path = write_pkg(tmp_path / "h.safetensors", kernel(0.5, np.float16), 1, engine.fingerprint)
    assert pipeline.apply(path).ok
    assert y_of(engine) == (4.5, 1)
    assert store.manifest(1)["tensors"]["conv.weight"]["dtype"] == "float16"


def test_restart_serves_the_committed_current(conv_model_path, tmp_path):
    root = tmp_path / "store"
    with Engine.open(conv_model_path) as eng, Store(root) as s:
        p = Pipeline(eng, s, None, None)
        p.start()
        for k in (1, 2, 3):
            assert p.apply(pkg(tmp_path, eng, k, k)).ok
        assert p.rollback(to=2).ok
    with Engine.open(conv_model_path) as eng, Store(root) as s:
        assert y_of(eng) == (0.0, 0)  # the model file's weights until start()
        assert Pipeline(eng, s, None, None).start() == 2
        assert y_of(eng) == (18.0, 2)


def test_restart_falls_back_when_current_blobs_are_corrupt(conv_model_path, tmp_path):
    root = tmp_path / "store"
    with Engine.open(conv_model_path) as eng, Store(root) as s:
        p = Pipeline(eng, s, None, None)
        p.start()
        assert p.apply(pkg(tmp_path, eng, 1, 1)).ok
        assert p.apply(pkg(tmp_path, eng, 2, 2)).ok
        sha = s.manifest(2)["tensors"]["conv.weight"]["sha256"]
    blob = root / "blobs" / sha[:2] / sha
    data = bytearray(blob.read_bytes())
    data[0] ^= 1
    blob.write_bytes(bytes(data))
    ev = RecordingEvents()
    with Engine.open(conv_model_path) as eng, Store(root) as s:
        assert Pipeline(eng, s, None, ev).start() == 1
        assert y_of(eng) == (9.0, 1) and s.current() == 1
        rec = ev.last("store.recovered")
        assert rec["lost"] == 2 and "is corrupt" in rec["reason"]


def test_store_of_another_model_is_refused(conv_model_path, chain_model_path, tmp_path):
    root = tmp_path / "store"
    with Engine.open(conv_model_path) as eng, Store(root) as s:
        Pipeline(eng, s, None, None).start()
    with Engine.open(chain_model_path) as eng, Store(root) as s:
        with pytest.raises(StoreError, match="holds weights for model sha256:.*but the engine serves model"):
            Pipeline(eng, s, None, None).start()


# ---- partial packages ---------------------------------------------------------------------


def _chain_y(eng):
    out, v = eng.infer({"x": np.zeros(8, np.float32)})
    return out["y"], v


def test_partial_packages_change_only_their_tensors(chain_engine, tmp_path):
    eng = chain_engine
    with Store(tmp_path / "store") as s:
        p = Pipeline(eng, s, None, None)
        p.start()
        f = write_pkg(tmp_path / "a.safetensors", {"w1": np.full(8, 1.0, np.float32)}, 1, eng.fingerprint)
        assert p.apply(f).ok
        f = write_pkg(tmp_path / "b.safetensors", {"w2": np.full(8, 10.0, np.float32)}, 2, eng.fingerprint)
        assert p.apply(f).ok
        y, v = _chain_y(eng)
        np.testing.assert_array_equal(y, np.full(8, 11.0)) and v == 2
        man = s.manifest(2)
        assert sorted(man["tensors"]) == ["w0", "w1", "w2", "w3"] and man["changed"] == ["w2"]
        # a partial package computed against version 1 (not the current 2): w2 comes from base 1
        f = write_pkg(tmp_path / "c.safetensors", {"w3": np.full(8, 100.0, np.float32)}, 3,
                      eng.fingerprint, base=1)
        out = p.apply(f)
        assert out.ok, out
        y, v = _chain_y(eng)
        assert v == 3
        np.testing.assert_array_equal(y, np.full(8, 101.0))  # w1=1 (base 1), w2=0 (base 1), w3=100
        for name, t in s.manifest(3)["tensors"].items():  # engine == manifest, tensor by tensor
            np.testing.assert_array_equal(eng.read_weight(name), s.load(3)[name])
        # rollback to 2 restages w2 and w3 from the store
        assert p.rollback(to=2).ok
        np.testing.assert_array_equal(_chain_y(eng)[0], np.full(8, 11.0))


def test_same_weights_under_a_new_version(pipeline, engine, store, tmp_path):
    assert pipeline.apply(pkg(tmp_path, engine, 1, 1)).ok
    out = pipeline.apply(write_pkg(tmp_path / "same.safetensors", kernel(1), 2, engine.fingerprint))
    assert out.ok and y_of(engine) == (9.0, 2) and store.manifest(2)["changed"] == []


# ---- rollback ----------------------------------------------------------------------------


def test_rollback_default_and_to_and_errors(pipeline, engine, store, events, tmp_path):
    for k in (1, 2, 3):
        assert pipeline.apply(pkg(tmp_path, engine, k, k)).ok
    out = pipeline.rollback(source="cli")
    assert (out.ok, out.version, out.previous) == (True, 2, 3) and y_of(engine) == (18.0, 2)
    assert store.current() == 2 and store.highest() == 3
    ev = events.last("update.rolled_back")
    assert ev["version"] == 2 and ev["previous"] == 3
    assert store.history[-1]["event"] == "rolled_back"
    out = pipeline.rollback(to=0)
    assert out.ok and y_of(engine) == (0.0, 0)
    out = pipeline.rollback(to=3)  # forward again to a stored version
    assert out.ok and y_of(engine) == (27.0, 3)
    bad = [(pipeline.rollback(to=3), "version 3 is already serving"),
           (pipeline.rollback(to=9), "version 9 is not in the store (stored: 0, 1, 2, 3)")]
    pipeline.rollback(to=0)
    bad.append((pipeline.rollback(), "no stored version older than 0 to roll back to"))
    for out, reason in bad:
        assert (out.ok, out.stage, out.reason) == (False, "lookup", reason)
    assert events.last("update.rollback_failed")["reason"] == "no stored version older than 0 to roll back to"


def test_rollback_runs_the_shadow_check_too(engine, store, tmp_path):
    p = Pipeline(engine, store, None, None)
    p.start()
    assert p.apply(pkg(tmp_path, engine, 20, 1)).ok  # no checks configured yet
    assert p.apply(pkg(tmp_path, engine, 1, 2)).ok
    strict = Pipeline(engine, store, None, None, checks=GOLDEN)
    out = strict.rollback(to=1)
    assert not out.ok and out.stage == "health" and y_of(engine) == (9.0, 2)


def test_rollback_of_a_corrupt_version_is_refused(pipeline, engine, store, tmp_path):
    assert pipeline.apply(pkg(tmp_path, engine, 1, 1)).ok
    assert pipeline.apply(pkg(tmp_path, engine, 2, 2)).ok
    sha = store.manifest(1)["tensors"]["conv.weight"]["sha256"]
    blob = os.path.join(store.path, "blobs", sha[:2], sha)
    with open(blob, "r+b") as f:
        f.write(b"\x01")
    out = pipeline.rollback(to=1)
    assert (out.ok, out.stage) == (False, "load") and "is corrupt" in out.reason
    assert y_of(engine) == (18.0, 2) and store.current() == 2


# ---- the shadow check --------------------------------------------------------------------


def test_shadow_check_spec_errors(engine):
    with pytest.raises(HealthError, match=r'health check 1 \(golden\): "z" is not an input of the model'):
        ShadowCheck([{"type": "golden", "inputs": {"z": 1.0}, "expect": {"y": 1.0}}], engine)
    with pytest.raises(HealthError, match=r'health check 1 \(golden\): "q" is not an output'):
        ShadowCheck([{"type": "golden", "expect": {"q": 1.0}}], engine)
    with pytest.raises(HealthError, match=r"input \"x\": shape \[2\], the model's is \[1, 1, 3, 3\]"):
        ShadowCheck([{"type": "finite", "inputs": {"x": [1.0, 2.0]}}], engine)
    with pytest.raises(HealthError, match=r"health check 1 \(range\): a range check needs min, max or both"):
        ShadowCheck([{"type": "range"}], engine)
    # A spec given as a mapping is validated as the config file's checks are (health.check_config),
    # with the config's messages.
    with pytest.raises(HealthError, match=r'health check 1 \(vibes\): type: must be one of golden, finite, range, got "vibes"'):
        ShadowCheck([{"type": "vibes"}], engine)


def test_shadow_check_with_npy_golden_files(engine, store, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 1, 3, 3), np.float32))
    np.save(tmp_path / "y.npy", np.full((1, 1, 1, 1), 18.0, np.float32))
    checks = [{"type": "golden", "inputs": {"x": str(tmp_path / "x.npy")},
               "expect": {"y": str(tmp_path / "y.npy")}, "rtol": 0.01, "atol": 0.0}]
    p = Pipeline(engine, store, None, None, checks=checks)
    p.start()
    out = p.apply(pkg(tmp_path, engine, 1, 1))
    assert (out.ok, out.stage) == (False, "health")
    assert out.reason == ('health check 1 (golden): output "y" differs from golden at flat index 0: '
                          'got 9, expected 18 (1 of 1 values off; rtol 0.01, atol 0)')
    assert p.apply(pkg(tmp_path, engine, 2, 2)).ok


@pytest.mark.parametrize("checks, k, reason", [
    ([{"type": "finite"}], None, 'health check 1 (finite): output "y" has 1 non-finite values'),
    ([{"type": "range", "min": 0.0, "max": 100.0}], -1.0,
     'health check 1 (range): output "y" has 1 values below min 0 (first -9 at flat index 0)'),
    ([{"type": "range", "max": 100.0}], 20.0,
     'health check 1 (range): output "y" has 1 values above max 100 (first 180 at flat index 0)'),
])
def test_finite_and_range_checks(conv_model_path, tmp_path, checks, k, reason):
    # NaN weights need an engine and pipeline that allow non-finite values, so the shadow check
    # is what stops them
    with Engine.open(conv_model_path, allow_nonfinite=True) as eng, Store(tmp_path / "s") as s:
        p = Pipeline(eng, s, None, None, checks=checks, allow_nonfinite=True)
        p.start()
        w = kernel(np.nan if k is None else k)
        out = p.apply(write_pkg(tmp_path / "p.safetensors", w, 1, eng.fingerprint))
        assert (out.ok, out.stage) == (False, "health")
        assert out.reason.startswith(reason), out.reason
        assert y_of(eng) == (0.0, 0)


def test_failing_package_is_never_served_under_concurrent_inference(engine, store, tmp_path):
    """The shadow check is proven: while 3 threads infer non-stop, good packages (k = 1..8) and
    packages failing the golden check (k = 20..27) arrive interleaved; no result ever carries a
    bad version, and every result is 9 x k of the version it reports (no torn weights)."""
    p = Pipeline(engine, store, None, None, checks=GOLDEN)
    p.start()
    good = {0: 0.0}
    files = []
    for i in range(1, 9):
        files.append((write_pkg(tmp_path / ("g%d.safetensors" % i), kernel(i), 2 * i - 1,
                                engine.fingerprint), True))
        good[2 * i - 1] = 9.0 * i
        files.append((write_pkg(tmp_path / ("b%d.safetensors" % i), kernel(19 + i), 2 * i,
                                engine.fingerprint), False))
    stop = threading.Event()
    seen = []
    versions_seen = set()

    def infer():
        local = []
        while not stop.is_set():
            out, v = engine.infer(ONES)
            local.append((v, float(out["y"].ravel()[0])))
            versions_seen.add(v)
        seen.extend(local)

    threads = [threading.Thread(target=infer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert _wait(lambda: 0 in versions_seen)
        for path, ok in files:
            out = p.apply(path)
            assert out.ok == ok, out
            if ok:  # every good version is seen serving before the next package arrives
                assert _wait(lambda: out.version in versions_seen)
            else:
                assert out.stage == "health" and "differs from golden" in out.reason
    finally:
        stop.set()
        for t in threads:
            t.join()
    versions = {v for v, _ in seen}
    assert versions <= set(good), "a version that failed the shadow check was served: %s" % (
        sorted(versions - set(good)))
    assert all(y == good[v] for v, y in seen)
    assert versions == set(good)  # all good versions served, no bad one
    assert store.versions()[-1] == 15 and all(v % 2 == 1 or v == 0 for v in store.versions())


# ---- the watch window --------------------------------------------------------------------


class _Res:
    def __init__(self, outputs, version):
        self.outputs, self.version, self.error = outputs, version, None


def _feed(engine, p, stop):
    while not stop.is_set():
        out, v = engine.infer(ONES)
        p.observe(_Res(out, v))
        time.sleep(0.001)


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_watch_window_rolls_back_bad_outputs(engine, store, tmp_path):
    events = RecordingEvents()
    window = {"seconds": 5.0, "max_bad_share": 0.2, "min_results": 10, "range_max": 50.0}
    p = Pipeline(engine, store, None, events, window=window)
    p.start()
    assert p.apply(pkg(tmp_path, engine, 1, 1)).ok
    stop = threading.Event()
    t = threading.Thread(target=_feed, args=(engine, p, stop))
    t.start()
    try:
        assert p.apply(pkg(tmp_path, engine, 7, 2)).ok  # y = 63 > 50: bad in the window
        assert _wait(lambda: store.current() == 1 and engine.version == 1)
    finally:
        stop.set()
        t.join()
    assert y_of(engine) == (9.0, 1)
    failed = events.last("update.watch_failed")
    assert failed["version"] == 2 and "were bad" in failed["reason"] and "above 50" in failed["reason"]
    rb = events.last("update.rolled_back")
    assert rb["version"] == 1 and rb["previous"] == 2 and rb["source"] == "watch"
    assert store.history[-1]["event"] == "rolled_back" and store.history[-1]["source"] == "watch"


def test_watch_window_passes_good_outputs(engine, store, tmp_path):
    events = RecordingEvents()
    p = Pipeline(engine, store, None, events,
                 window={"seconds": 0.3, "max_bad_share": 0.0, "min_results": 1, "range_max": 50.0})
    p.start()
    stop = threading.Event()
    t = threading.Thread(target=_feed, args=(engine, p, stop))
    t.start()
    try:
        assert p.apply(pkg(tmp_path, engine, 2, 1)).ok
        assert _wait(lambda: p.window.last is not None)
    finally:
        stop.set()
        t.join()
    assert p.window.last == (1, True, None) and engine.version == 1
    assert "update.watch_failed" not in events.kinds()


def test_watch_hook_failure_rolls_back(engine, store, tmp_path):
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\n[ "$1" = "2" ] && { echo "accuracy dropped" >&2; exit 3; }\nexit 0\n')
    hook.chmod(0o755)
    events = RecordingEvents()
    p = Pipeline(engine, store, None, events, window={"seconds": 0.2, "hook": str(hook)})
    p.start()
    assert p.apply(pkg(tmp_path, engine, 1, 1)).ok
    assert _wait(lambda: p.window.last == (1, True, None))
    assert p.apply(pkg(tmp_path, engine, 2, 2)).ok
    assert _wait(lambda: store.current() == 1 and engine.version == 1)
    assert events.last("update.watch_failed")["reason"] == (
        "watch hook %s exited with 3 for version 2: accuracy dropped" % hook)


def test_window_rollback_is_skipped_if_a_newer_update_won(engine, store, tmp_path):
    p = Pipeline(engine, store, None, None)
    p.start()
    for k in (1, 2, 3):
        assert p.apply(pkg(tmp_path, engine, k, k)).ok
    p._window_failed(2, 1, "late verdict on version 2")  # version 3 serves meanwhile
    assert store.current() == 3 and engine.version == 3
    assert p.last.stage == "lookup" and "no longer serves" in p.last.reason


def test_watch_window_unit_clock_and_ignores_other_versions():
    fired = []
    w = WatchWindow(seconds=60, max_bad_share=0.5, min_results=4,
                    on_fail=lambda v, prev, why: fired.append((v, prev, why)))
    w.arm(5, 4)
    nan = {"y": np.array([np.nan], np.float32)}
    ok = {"y": np.array([1.0], np.float32)}
    for _ in range(10):
        w.observe(_Res(nan, 4))  # the old version's results do not count
    w.observe(_Res(ok, 5))
    w.observe(_Res(nan, 5))
    w.observe(_Res(ok, 5))
    assert not fired and w.armed == 5
    w.observe(_Res(nan, 5))  # 2 of 4 = 50%: not above the threshold
    assert not fired
    w.observe(_Res(nan, 5))  # 3 of 5
    assert _wait(lambda: fired)
    assert fired[0][:2] == (5, 4) and "3 of 5 results with version 5 were bad" in fired[0][2]
    assert w.armed is None
    w.disarm()


# ---- failure paths leave everything as it was --------------------------------------------


def test_publish_failure_reverts_the_commit(pipeline, engine, store, events, tmp_path, monkeypatch):
    assert pipeline.apply(pkg(tmp_path, engine, 1, 1)).ok

    def boom(staged):
        raise RuntimeError("simulated publish failure")

    monkeypatch.setattr(engine, "publish", boom)
    out = pipeline.apply(pkg(tmp_path, engine, 2, 2))
    assert (out.ok, out.stage, out.reason) == (False, "publish", "simulated publish failure")
    assert store.current() == 1 and store.highest() == 1 and store.versions() == [0, 1]
    assert y_of(engine) == (9.0, 1)
    assert store.history[-1]["event"] == "reverted"
    monkeypatch.undo()
    assert pipeline.apply(pkg(tmp_path, engine, 2, 2)).ok  # the same version may come again


def test_store_write_failure_leaves_store_unchanged(pipeline, engine, store, tmp_path, monkeypatch):
    assert pipeline.apply(pkg(tmp_path, engine, 1, 1)).ok
    before = store_digest(store.path)
    calls = fail_replace(monkeypatch, ".json")
    out = pipeline.apply(pkg(tmp_path, engine, 2, 2))
    monkeypatch.undo()
    assert (out.ok, out.stage) == (False, "store")
    assert out.reason == "cannot write version 2 to the store: No space left on device"
    assert calls and store_digest(store.path) == before
    assert y_of(engine) == (9.0, 1) and store.current() == 1


def test_internal_error_is_an_outcome_not_an_exception(pipeline, engine, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.store, "prepare", lambda *a, **k: 1 / 0)
    out = pipeline.apply(pkg(tmp_path, engine, 1, 1))
    assert (out.ok, out.stage) == (False, "internal")
    assert out.reason == "internal error: ZeroDivisionError: division by zero"


def test_signature_hook_can_refuse(engine, store, tmp_path):
    # The hook runs on the raw bytes before parsing (test_delivery.py proves the order); a path
    # delivery through apply() carries the .sig beside the package as its signature.
    seen = []

    def verifier(data, sig, delivery):
        seen.append(sig)
        if sig is None:
            raise ValueError("package %s has no signature" % os.path.basename(delivery.name))

    p = Pipeline(engine, store, None, None, verifier=verifier)
    p.start()
    f = pkg(tmp_path, engine, 1, 1)
    out = p.apply(f)
    assert (out.ok, out.stage, out.reason) == (False, "signature", "package %s has no signature"
                                               % os.path.basename(f))
    with open(f + ".sig", "wb") as fh:
        fh.write(b"x")
    assert p.apply(f).ok and seen[-1] == b"x"


def test_updates_are_serialised(pipeline, engine, store, tmp_path):
    files = [pkg(tmp_path, engine, k, k) for k in range(1, 9)]
    outs = []
    ts = [threading.Thread(target=lambda f=f: outs.append(pipeline.apply(f))) for f in files]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    # whatever the order, versions only went up: the accepted ones form an increasing sequence
    ok = [o for o in outs if o.ok]
    assert ok and all(o.stage == "version" for o in outs if not o.ok)
    applied = [e["version"] for e in store.history if e["event"] == "applied"]
    assert applied == sorted(applied) and applied[-1] == store.current() == engine.version
    assert y_of(engine) == (9.0 * store.current(), store.current())


def test_config_object_sections(engine, store, tmp_path):
    cfg = {"store": {"path": store.path, "keep": 2, "max_package_bytes": 100},
           "health": {"checks": GOLDEN, "window": {"seconds": 0.0}},
           "model": {"options": {"allow_nonfinite": False}}}
    p = Pipeline(engine, store, cfg, None)
    p.start()
    assert p.max_package_bytes == 100 and len(p.health) == 1 and not p.window.enabled
    out = p.apply(pkg(tmp_path, engine, 1, 1))
    assert (out.ok, out.stage) == (False, "size") and out.reason.endswith("bytes, limit 100")


def test_real_config_dataclass(engine, store, tmp_path):
    config = pytest.importorskip("refitd.config")
    cfg = config.demo_config(str(tmp_path / "state"))
    p = Pipeline(engine, store, cfg, None)
    p.start()
    assert p.max_package_bytes == cfg.store.max_package_bytes and len(p.health) == 2
    out = p.apply(pkg(tmp_path, engine, 200, 1))  # y = 1800: outside the demo's range check
    assert (out.ok, out.stage) == (False, "health") and "above max 1000" in out.reason
    assert p.apply(pkg(tmp_path, engine, 2, 2)).ok


# ---- kill -9 during apply ----------------------------------------------------------------

# A child process with a pipeline on the store at %(store)r (its start-up version in v).
_CHILD_HEAD = """
    import os, sys, time, numpy as np
    sys.path.insert(0, %(daemon)r)
    from refitd.engine import Engine
    from refitd.store import Store
    from refitd.pipeline import Pipeline
    from refitd.pack import write_package
    eng = Engine.open(%(model)r)
    s = Store(%(store)r)
    p = Pipeline(eng, s, None, None)
    v = p.start()
"""

_CHILD = textwrap.dedent(_CHILD_HEAD + """
    print("ready", v, flush=True)
    while True:
        v += 1
        f = %(tmp)r + "/p%%d.safetensors" %% v
        write_package(f, {"conv.weight": np.full((1, 1, 3, 3), float(v %% 7), np.float32)}, v,
                      eng.fingerprint)
        out = p.apply(f)
        assert out.ok, out
""")


def test_kill_9_during_apply_restarts_on_a_committed_verified_version(conv_model_path, tmp_path):
    trials = int(os.environ.get("REFITD_KILL_TRIALS", "12"))
    root = str(tmp_path / "store")
    script = _CHILD % {"daemon": str(ROOT / "daemon"), "model": str(conv_model_path),
                       "store": root, "tmp": str(tmp_path)}
    rng = random.Random(1234)
    served = []
    for _ in range(trials):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=dict(os.environ))
        line = child.stdout.readline().decode()
        assert line.startswith("ready"), child.stderr.read().decode()
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        with Engine.open(conv_model_path) as eng, Store(root) as s:
            v = Pipeline(eng, s, None, None).start()
            assert v == s.current() and eng.version == v
            for stored in s.versions():
                s.load(stored)  # every blob of every stored version verifies
            y, yv = y_of(eng)
            assert yv == v and y == 9.0 * (v % 7 if v else 0)
            for dirpath, _, files in os.walk(root):
                assert not [f for f in files if f.startswith(".tmp-")]
            served.append(v)
    assert served == sorted(served) and served[-1] > 0


# The store write runs beside the engine stage and the shadow check (docs/design.md, "Pipeline
# timing"): kill -9 at a known point inside that window, where blobs (or the whole manifest) of
# the new version are on disk but current has not moved.
_WINDOW_CHILD = textwrap.dedent(_CHILD_HEAD + """
    write_package(%(tmp)r + "/w1.safetensors", {"conv.weight": np.full((1, 1, 3, 3), 1.0, np.float32)}, 1,
                  eng.fingerprint)
    assert p.apply(%(tmp)r + "/w1.safetensors").ok
    def hold(where):
        print(where, flush=True)
        time.sleep(60)
    if %(point)r == "spooled":  # blob temp files written and fsynced, nothing placed
        write = s.write
        s.write = lambda *a, **k: (hold("spooled"), write(*a, **k))[1]
    else:  # blobs placed and the manifest written (uncommitted) while the stage is still on
        stage = eng.stage
        def staged_then_hold(*a, **k):
            st = stage(*a, **k)
            while not os.path.exists(os.path.join(%(store)r, "versions", "2.json")):
                time.sleep(0.001)
            hold("written")
        eng.stage = staged_then_hold
    write_package(%(tmp)r + "/w2.safetensors", {"conv.weight": np.full((1, 1, 3, 3), 2.0, np.float32)}, 2,
                  eng.fingerprint)
    p.apply(%(tmp)r + "/w2.safetensors")
""")


@pytest.mark.parametrize("point", ["spooled", "written"])
def test_kill_9_inside_the_overlapped_store_write_leaves_the_committed_version(conv_model_path, tmp_path, point):
    root = str(tmp_path / "store")
    script = _WINDOW_CHILD % {"daemon": str(ROOT / "daemon"), "model": str(conv_model_path),
                              "store": root, "tmp": str(tmp_path), "point": point}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        line = child.stdout.readline().decode().strip()
        assert line == point, child.stderr.read().decode()
        leftovers = [f for _, _, files in os.walk(root) for f in files if f.startswith(".tmp-")]
        assert bool(leftovers) == (point == "spooled")  # the window is the one we meant
        assert os.path.exists(os.path.join(root, "versions", "2.json")) == (point == "written")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with Engine.open(conv_model_path) as eng, Store(root) as s:
        assert Pipeline(eng, s, None, None).start() == 1
        assert s.current() == 1 and s.versions() == [0, 1] and y_of(eng) == (9.0, 1)
        for v in s.versions():
            s.load(v)  # every blob of every stored version verifies
        assert not [f for _, _, files in os.walk(root) for f in files if f.startswith(".tmp-")]
        assert any("interrupted" in note for note in s.recovered)
        assert s.disk_usage()["blobs"] == 2  # version 2's blob went with its manifest


def test_reconfigure_swaps_checks_cap_and_window(engine, store, tmp_path):
    p = Pipeline(engine, store, None, None)
    p.start()
    with pytest.raises(HealthError):
        p.reconfigure({"health": {"checks": [{"type": "range"}]}})  # bad: nothing changes
    assert len(p.health) == 0
    p.reconfigure({"store": {"max_package_bytes": 1 << 20}, "health": {
        "checks": GOLDEN, "window": {"seconds": 1.0, "rollback": False}}})
    assert len(p.health) == 1 and p.window.enabled and not p._auto_rollback
    assert p.max_package_bytes == 1 << 20
    out = p.apply(pkg(tmp_path, engine, 20, 1))
    assert (out.ok, out.stage) == (False, "health")


def test_after_a_rollback_versions_still_only_go_up(pipeline, engine, store, tmp_path):
    for k in (1, 2, 3):
        assert pipeline.apply(pkg(tmp_path, engine, k, k)).ok
    assert pipeline.rollback(to=1).ok
    before = store_digest(store.path)
    out = pipeline.apply(pkg(tmp_path, engine, 5, 2))
    assert (out.ok, out.stage) == (False, "version")
    assert out.reason == ("package version 2 is not newer than version 3, the highest applied "
                          "(serving 1; use rollback for older versions)")
    assert store_digest(store.path) == before and y_of(engine) == (9.0, 1)
    assert pipeline.apply(pkg(tmp_path, engine, 4, 4)).ok and y_of(engine) == (36.0, 4)


def test_commit_failure_leaves_store_and_engine_unchanged(pipeline, engine, store, tmp_path, monkeypatch):
    assert pipeline.apply(pkg(tmp_path, engine, 1, 1)).ok
    before = store_digest(store.path)
    fail_replace(monkeypatch, "current")
    out = pipeline.apply(pkg(tmp_path, engine, 2, 2))
    monkeypatch.undo()
    assert (out.ok, out.stage) == (False, "commit")
    assert out.reason == "cannot commit version 2: cannot move current to version 2: No space left on device"
    assert store_digest(store.path) == before and store.versions() == [0, 1]
    assert y_of(engine) == (9.0, 1)
    assert pipeline.apply(pkg(tmp_path, engine, 2, 2)).ok


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("REFITD_LONG"), reason="long mode: set REFITD_LONG=1")
def test_kill_9_during_apply_long(conv_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("REFITD_KILL_TRIALS", "200")
    test_kill_9_during_apply_restarts_on_a_committed_verified_version(conv_model_path, tmp_path)
