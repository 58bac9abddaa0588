"""The file-drop channel on a real engine, store and pipeline: complete files only, temp names
ignored, applied/ and rejected/ with reasons, a scan for files dropped while down, and a
rejected file never touching the store."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from daemon_helpers import DEMO_MODEL, seed_package, tree_hash, wait_until

from refitd.engine import Engine
from refitd.log import Events
from refitd.pipeline import Pipeline
from refitd.store import Store
from refitd.channels.watch import DropWatcher, takeable


class Setup:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.engine = Engine.open(DEMO_MODEL, backend="reference")
        self.store = Store(str(tmp_path / "store"), keep=5)
        self.log = io.StringIO()
        self.events = Events(fmt="json", stream=self.log)
        self.pipeline = Pipeline(self.engine, self.store, None, self.events)
        self.pipeline.start()
        self.fp = self.engine.fingerprint
        self.drop = str(tmp_path / "in")
        self.outcomes = []
        self.watcher = None

    def start(self):
        self.watcher = DropWatcher(self.drop, self.pipeline, self.events,
                                   on_outcome=lambda name, o: self.outcomes.append((name, o)))
        self.watcher.start()
        return self.watcher

    def y(self):
        return self.engine.infer({"x": np.ones((1, 1, 3, 3), np.float32)})

    def close(self):
        if self.watcher:
            self.watcher.stop()
        self.store.close()
        self.engine.close()


@pytest.fixture
def s(tmp_path):
    st = Setup(tmp_path)
    yield st
    st.close()


def _files(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_takeable_names():
    assert takeable("w.safetensors") and takeable("v3")
    for name in (".w.safetensors", "w.safetensors.part", "w.tmp", "w.safetensors.sig", "w.reason", ""):
        assert not takeable(name), name


def test_rename_in_is_applied(s, tmp_path):
    s.start()
    outside = str(tmp_path / "pkg.safetensors")
    seed_package(outside, 2, 1, s.fp)
    os.rename(outside, os.path.join(s.drop, "v1.safetensors"))
    # the .reason is written after the package moves: wait for it, not only for the package
    wait_until(lambda: "v1.safetensors.reason" in _files(os.path.join(s.drop, "applied")), what="applied")
    outs, v = s.y()
    assert v == 1 and outs["y"].item() == 18.0
    reason = open(os.path.join(s.drop, "applied", "v1.safetensors.reason")).read()
    assert reason.startswith("applied as version 1 in ")
    assert s.store.current() == 1
    assert _files(s.drop) == ["applied", "rejected"]


def test_file_taken_only_when_closed(s, tmp_path):
    s.start()
    src = str(tmp_path / "pkg.safetensors")
    seed_package(src, 3, 1, s.fp)
    data = open(src, "rb").read()
    dest = os.path.join(s.drop, "slow.safetensors")
    with open(dest, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.6)  # a slow writer: half a package sits there, open
        assert s.outcomes == [] and os.path.exists(dest)
        assert s.store.current() == 0
        f.write(data[len(data) // 2:])
    wait_until(lambda: s.outcomes, what="outcome")
    name, o = s.outcomes[0]
    assert name == "slow.safetensors" and o.ok, o
    assert s.y()[1] == 1


def test_temp_and_hidden_names_ignored_until_renamed(s, tmp_path):
    s.start()
    part = os.path.join(s.drop, "v1.safetensors.part")
    hidden = os.path.join(s.drop, ".v2.safetensors")
    seed_package(str(tmp_path / "a"), 1, 1, s.fp)
    seed_package(str(tmp_path / "b"), 2, 2, s.fp)
    os.rename(str(tmp_path / "a"), part)
    os.rename(str(tmp_path / "b"), hidden)
    time.sleep(0.5)
    assert s.outcomes == [] and os.path.exists(part) and os.path.exists(hidden)
    os.rename(part, os.path.join(s.drop, "v1.safetensors"))
    wait_until(lambda: len(s.outcomes) == 1, what="v1")
    os.rename(hidden, os.path.join(s.drop, "v2.safetensors"))
    wait_until(lambda: len(s.outcomes) == 2, what="v2")
    assert [o.ok for _, o in s.outcomes] == [True, True]
    assert s.y()[1] == 2


def test_rejected_file_never_touches_the_store(s, tmp_path):
    seed_package(str(tmp_path / "good"), 1, 1, s.fp)
    os.rename(str(tmp_path / "good"), os.path.join(tmp_path, "good.safetensors"))
    s.start()
    before = tree_hash(s.store.path)
    bad = {
        "garbage.safetensors": b"this is not a safetensors file",
        "empty.safetensors": b"",
        "truncated.safetensors": open(str(tmp_path / "good.safetensors"), "rb").read()[:40],
    }
    for name, data in bad.items():
        tmp = os.path.join(s.drop, "." + name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(s.drop, name))
    # wrong model fingerprint, NaN weights, and a version that is not newer
    seed_package(os.path.join(s.drop, "wrongmodel.safetensors"), 1, 5, "sha256:" + "0" * 64)
    from refitd.pack import write_package
    write_package(os.path.join(s.drop, "nan.safetensors"),
                  {"conv.weight": np.full((1, 1, 3, 3), np.nan, np.float32)}, version=6, model=s.fp)
    seed_package(os.path.join(s.drop, "old.safetensors"), 1, 0, s.fp)
    wait_until(lambda: len(s.outcomes) == 6, timeout=20, what="6 outcomes")
    assert all(not o.ok for _, o in s.outcomes), s.outcomes
    assert tree_hash(s.store.path) == before
    rej = os.path.join(s.drop, "rejected")
    reasons = {}
    for name in list(bad) + ["wrongmodel.safetensors", "nan.safetensors", "old.safetensors"]:
        assert os.path.exists(os.path.join(rej, name)), name
        reasons[name] = open(os.path.join(rej, name + ".reason")).read().strip()
        assert reasons[name].startswith("rejected at "), reasons[name]
    assert len(set(reasons.values())) == len(reasons)  # each its own specific reason
    assert s.y()[1] == 0 and s.store.current() == 0


def test_scan_on_start_takes_files_dropped_while_down(s):
    os.makedirs(s.drop)
    seed_package(os.path.join(s.drop, "a.safetensors"), 1, 1, s.fp)
    seed_package(os.path.join(s.drop, "b.safetensors"), 2, 2, s.fp)
    with open(os.path.join(s.drop, "c.part"), "wb") as f:
        f.write(b"half")
    s.start()
    wait_until(lambda: len(s.outcomes) == 2, what="2 outcomes")
    assert all(o.ok for _, o in s.outcomes)
    assert s.y()[1] == 2
    assert os.path.exists(os.path.join(s.drop, "c.part"))


def test_same_name_twice_keeps_both_in_applied(s, tmp_path):
    s.start()
    for v in (1, 2):
        seed_package(str(tmp_path / "p"), v, v, s.fp)
        os.rename(str(tmp_path / "p"), os.path.join(s.drop, "weights.safetensors"))
        wait_until(lambda v=v: len(s.outcomes) == v, what="outcome %d" % v)
    applied = _files(os.path.join(s.drop, "applied"))
    assert "weights.safetensors" in applied and "weights.safetensors.1" in applied
    assert s.y()[1] == 2


def test_signature_travels_with_its_package(s, tmp_path):
    s.start()
    sig = os.path.join(s.drop, "v1.safetensors.sig")
    with open(sig, "wb") as f:
        f.write(b"signature bytes")
    seed_package(str(tmp_path / "p"), 1, 1, s.fp)
    os.rename(str(tmp_path / "p"), os.path.join(s.drop, "v1.safetensors"))
    wait_until(lambda: s.outcomes, what="outcome")
    assert os.path.exists(os.path.join(s.drop, "applied", "v1.safetensors.sig"))
    assert not os.path.exists(sig)


def test_back_to_back_drops_are_taken_at_once(s, tmp_path):
    """Moving a taken file into applied/ must not hold back the next drop (an unmatched inotify
    move-out makes watchdog wait 0.5 s for its pair): each drop serves within 0.25 s."""
    s.start()
    delays = []
    for v in range(1, 6):
        outside = str(tmp_path / ("p%d.safetensors" % v))
        seed_package(outside, v, v, s.fp)
        t0 = time.monotonic()
        os.rename(outside, os.path.join(s.drop, "v%d.safetensors" % v))
        wait_until(lambda: s.engine.version == v, what="version %d serving" % v)
        delays.append(time.monotonic() - t0)
    assert max(delays) < 0.25, ["%.3f" % d for d in delays]
    want = sorted(n for v in range(1, 6) for n in ("v%d.safetensors" % v, "v%d.safetensors.reason" % v))
    wait_until(lambda: _files(os.path.join(s.drop, "applied")) == want, what="all five in applied/")


def test_taken_files_leave_by_link_and_a_cut_off_move_is_finished_on_start(s, tmp_path):
    """A handled file leaves the drop folder by link + unlink (no IN_MOVED_FROM for watchdog to
    hold back): applied/ has the same inode the drop had. A move cut off between the two (the
    file in both places, as after a kill -9) is finished at the next start, not taken again."""
    s.start()
    outside = str(tmp_path / "p1.safetensors")
    seed_package(outside, 2, 1, s.fp)
    ino = os.stat(outside).st_ino
    os.rename(outside, os.path.join(s.drop, "v1.safetensors"))
    wait_until(lambda: "v1.safetensors.reason" in _files(os.path.join(s.drop, "applied")), what="applied")
    assert os.stat(os.path.join(s.drop, "applied", "v1.safetensors")).st_ino == ino
    s.watcher.stop()
    os.link(os.path.join(s.drop, "applied", "v1.safetensors"), os.path.join(s.drop, "v1.safetensors"))
    n_outcomes = len(s.outcomes)
    s.start()
    assert "v1.safetensors" not in _files(s.drop)
    assert '"watch.cleaned"' in s.log.getvalue() and "in/v1.safetensors" in s.log.getvalue()
    time.sleep(0.3)  # nothing is offered: no second outcome, applied/ holds one copy
    assert len(s.outcomes) == n_outcomes
    assert _files(os.path.join(s.drop, "applied")) == ["v1.safetensors", "v1.safetensors.reason"]


def test_a_late_sig_is_paired_within_the_settle_time(s, tmp_path):
    """NAME.sig copied in after NAME (within watch.signature_settle) travels in NAME's delivery
    and moves with it; a package whose .sig never comes is delivered unsigned after the wait."""
    seen = []

    def verifier(data, signature, delivery):
        seen.append((os.path.basename(delivery.path), signature))
        if signature is None:
            raise ValueError("unsigned package")

    s.pipeline.verifier = verifier
    s.watcher = DropWatcher(s.drop, s.pipeline, s.events, settle=3.0,
                            on_outcome=lambda name, o: s.outcomes.append((name, o)))
    s.watcher.start()
    seed_package(str(tmp_path / "p1"), 2, 1, s.fp)
    os.rename(str(tmp_path / "p1"), os.path.join(s.drop, "v1.safetensors"))
    wait_until(lambda: s.watcher.taken == 1, what="package taken")
    time.sleep(0.2)  # the package is waiting for its signature
    assert s.outcomes == []
    with open(str(tmp_path / "sig"), "wb") as f:
        f.write(b"S" * 64)
    os.rename(str(tmp_path / "sig"), os.path.join(s.drop, "v1.safetensors.sig"))
    wait_until(lambda: s.outcomes, what="outcome")
    assert seen == [("v1.safetensors", b"S" * 64)] and s.outcomes[0][1].ok and s.y()[1] == 1
    assert _files(os.path.join(s.drop, "applied")) == [
        "v1.safetensors", "v1.safetensors.reason", "v1.safetensors.sig"]
    # no .sig within the settle time: delivered without one, refused by this verifier
    s.watcher.settle = 0.3
    seed_package(str(tmp_path / "p2"), 3, 2, s.fp)
    os.rename(str(tmp_path / "p2"), os.path.join(s.drop, "v2.safetensors"))
    wait_until(lambda: len(s.outcomes) == 2, what="second outcome")
    o = s.outcomes[1][1]
    assert (o.ok, o.stage, o.reason) == (False, "signature", "unsigned package")
    assert seen[-1] == ("v2.safetensors", None) and s.y()[1] == 1
    reason = open(os.path.join(s.drop, "rejected", "v2.safetensors.reason")).read()
    assert reason == "rejected at signature: unsigned package\n"


def test_serving_package_dropped_again_reason_event_and_doc_agree(s, tmp_path):
    """The serving package dropped a second time: nothing changes, and the .reason file, the
    event and docs/daemon.md say the same thing (the doc once said "rejected as not newer")."""
    s.start()
    pkg = str(tmp_path / "v1.safetensors")
    seed_package(pkg, 2, 1, s.fp)
    with open(pkg, "rb") as f:
        data = f.read()
    for name in ("first.safetensors", "again.safetensors"):
        with open(os.path.join(s.drop, name), "wb") as f:
            f.write(data)
        wait_until(lambda: name + ".reason" in _files(os.path.join(s.drop, "applied")), what=name + " applied")
    reason = open(os.path.join(s.drop, "applied", "again.safetensors.reason")).read().strip()
    assert reason == "already serving: this very package is version 1; nothing changed"
    events = [json.loads(line)["event"] for line in s.log.getvalue().splitlines()]
    assert events.count("update.applied") == 1 and events.count("update.already_applied") == 1
    assert s.store.versions() == [0, 1] and s.store.current() == 1
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "daemon.md").read_text().split())
    assert "`update.already_applied`" in doc
    assert reason.replace("version 1", "version 4") in doc
    assert "rejected as not newer" not in doc
