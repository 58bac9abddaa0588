"""refitd.store: manifests, dedup, retention, verification, crash safety and recovery."""
import json
import os

import numpy as np
import pytest

from conftest import fail_replace, store_digest
from refitd.store import Store, StoreError, tensor_sha256


def chain(n=10, size=64, fill=0.0):
    return {"w%d" % i: np.full(size, fill + i, np.float32) for i in range(n)}


def commit(s, v, tensors, base=None, **meta):
    s.write(s.prepare(v, tensors, base=base, meta=meta or None))
    s.commit(v)


def test_put_commit_load_and_full_manifest_after_partial(tmp_path):
    with Store(tmp_path / "s", keep=5) as s:
        assert s.current() is None and s.versions() == []
        commit(s, 0, chain(4))
        commit(s, 1, {"w2": np.full(64, 9.0, np.float32)}, model="sha256:m")
        assert s.current() == 1 and s.highest() == 1 and s.versions() == [0, 1]
        man = s.manifest(1)
        assert sorted(man["tensors"]) == ["w0", "w1", "w2", "w3"]  # full map, not just the delta
        assert man["changed"] == ["w2"] and man["base"] == 0 and man["model"] == "sha256:m"
        assert man["tensors"]["w2"] == {"sha256": tensor_sha256(np.full(64, 9.0, np.float32)),
                                        "dtype": "float32", "shape": [64], "nbytes": 256}
        got = s.load(1)
        np.testing.assert_array_equal(got["w2"], np.full(64, 9.0))
        np.testing.assert_array_equal(got["w3"], np.full(64, 3.0))
        assert [e["event"] for e in s.history] == ["applied", "applied"]


def test_blob_layout_is_content_addressed(tmp_path):
    with Store(tmp_path / "s") as s:
        a = np.arange(16, dtype=np.float32)
        commit(s, 0, {"a": a, "b": a.copy()})  # same bytes: one blob
        sha = tensor_sha256(a)
        path = tmp_path / "s" / "blobs" / sha[:2] / sha
        assert path.read_bytes() == a.tobytes()
        assert s.disk_usage()["blobs"] == 1


def test_ten_versions_each_changing_ten_percent_cost_one_copy_plus_nine_tenths(tmp_path):
    size = 1024
    with Store(tmp_path / "s", keep=10) as s:
        commit(s, 1, chain(10, size))
        for v in range(2, 11):  # each version changes one of ten equal tensors
            commit(s, v, {"w%d" % (v - 1): np.full(size, 100.0 + v, np.float32)})
        full = 10 * size * 4
        assert s.disk_usage()["blob_bytes"] == full + 9 * full // 10
        assert len(s.versions()) == 10


def test_retention_keeps_newest_pinned_and_current_and_collects_blobs(tmp_path):
    with Store(tmp_path / "s", keep=2) as s:
        for v in range(6):
            commit(s, v, {"w": np.full(8, float(v), np.float32)})
        s.pin(1)
        s.commit(0, event="rolled_back")  # current is an old version now
        r = s.gc()
        assert r["pruned"] == [2, 3] and s.versions() == [0, 1, 4, 5]
        assert s.disk_usage()["blobs"] == 4  # the blobs of 2 and 3 are gone
        assert s.history[-1]["event"] == "pruned" and s.history[-1]["versions"] == [2, 3]
        s.unpin(1)
        s.commit(5, event="rolled_back")
        assert s.gc()["pruned"] == [0, 1] and s.versions() == [4, 5]
        assert s.highest() == 5


def test_pin_errors(tmp_path):
    with Store(tmp_path / "s") as s:
        commit(s, 1, {"w": np.ones(2, np.float32)})
        with pytest.raises(StoreError, match=r"^version 7 is not in the store \(stored: 1\)$"):
            s.pin(7)
        with pytest.raises(StoreError, match=r"^version 7 is not in the store \(stored: 1\)$"):
            s.unpin(7)


def test_pin_and_unpin_are_equally_idempotent(tmp_path):
    with Store(tmp_path / "s") as s:
        commit(s, 1, {"w": np.ones(2, np.float32)})
        assert s.unpin(1) is False and s.pins() == []   # was: "version 1 is not pinned"
        assert s.pin(1) is True and s.pin(1) is False and s.pins() == [1]
        assert s.unpin(1) is True and s.unpin(1) is False and s.pins() == []
        assert [h["event"] for h in s.history if h["event"] in ("pinned", "unpinned")] == ["pinned", "unpinned"]


def test_prepare_errors(tmp_path):
    with Store(tmp_path / "s") as s:
        commit(s, 1, {"w": np.ones(2, np.float32)})
        with pytest.raises(StoreError, match="^version 1 is already in the store$"):
            s.prepare(1, {"w": np.ones(2, np.float32)})
        with pytest.raises(StoreError, match=r"^base version 0 is not in the store \(stored: 1\)$"):
            s.prepare(2, {"w": np.ones(2, np.float32)}, base=0)


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(StoreError, match="keep must be an integer >= 1, got 0"):
        Store(tmp_path / "s", keep=0)


def test_one_process_owns_the_store(tmp_path):
    with Store(tmp_path / "s"):
        with pytest.raises(StoreError, match="is in use by another refitd process"):
            Store(tmp_path / "s")
    Store(tmp_path / "s").close()  # released on close


# ---- verification ------------------------------------------------------------------------


def test_corrupt_blob_is_a_clear_error_on_load(tmp_path):
    with Store(tmp_path / "s") as s:
        w = np.arange(8, dtype=np.float32)
        commit(s, 1, {"w": w})
        sha = tensor_sha256(w)
        p = tmp_path / "s" / "blobs" / sha[:2] / sha
        data = bytearray(p.read_bytes())
        data[3] ^= 0x40  # one flipped bit, same size: only the hash can tell
        p.write_bytes(bytes(data))
        with pytest.raises(StoreError) as ei:
            s.load(1)
        assert str(ei.value).startswith('blob %s of tensor "w" of version 1 is corrupt: its sha256 is '
                                        % sha[:12])


def test_missing_blob_on_load(tmp_path):
    with Store(tmp_path / "s") as s:
        w = np.arange(8, dtype=np.float32)
        commit(s, 1, {"w": w})
        sha = tensor_sha256(w)
        os.unlink(tmp_path / "s" / "blobs" / sha[:2] / sha)
        with pytest.raises(StoreError, match=r'^blob %s of tensor "w" of version 1 is missing$' % sha[:12]):
            s.load(1)


# ---- recovery on open --------------------------------------------------------------------


def test_open_discards_leftovers_of_an_interrupted_update(tmp_path):
    root = tmp_path / "s"
    with Store(root) as s:
        commit(s, 1, chain(2))
        before = store_digest(root)
        # what a crash in the middle of writing version 2 can leave behind:
        p2 = s.prepare(2, {"w0": np.full(64, 7.0, np.float32)})
        s.write(p2)  # blobs + manifest written, current not moved
    (root / "versions" / ".tmp-3.json.1.1").write_text("{")  # a temp manifest
    (root / ".tmp-current.1.1").write_text("{")  # a temp pointer
    sha = next(iter(p2.new_blobs))
    assert (root / "blobs" / sha[:2] / sha).exists()
    with Store(root) as s:
        assert s.versions() == [1] and s.current() == 1
        assert any("discarded version 2: written but never committed" in n for n in s.recovered)
        assert any("removed 1 unreferenced blobs" in n for n in s.recovered)
        assert not (root / "blobs" / sha[:2] / sha).exists()
        # the same version can now arrive again and be applied normally
        commit(s, 2, {"w0": np.full(64, 7.0, np.float32)})
    assert before != store_digest(root)


def test_open_discards_manifest_whose_blobs_are_missing_and_falls_back(tmp_path):
    root = tmp_path / "s"
    with Store(root) as s:
        commit(s, 1, {"w": np.zeros(4, np.float32)})
        commit(s, 2, {"w": np.ones(4, np.float32)})
    sha = tensor_sha256(np.ones(4, np.float32))
    os.unlink(root / "blobs" / sha[:2] / sha)
    with Store(root) as s:
        assert s.versions() == [1] and s.current() == 1 and s.highest() == 2
        assert "current version 2 is unusable; serving version 1 instead" in s.recovered
        assert s.history[-1]["event"] == "recovered"


def test_open_drops_torn_history_line(tmp_path):
    root = tmp_path / "s"
    with Store(root) as s:
        commit(s, 1, {"w": np.zeros(4, np.float32)})
    with open(root / "history.jsonl", "ab") as f:
        f.write(b'{"event": "appl')
    with Store(root) as s:
        assert [e["event"] for e in s.history] == ["applied"]
        assert (root / "history.jsonl").read_bytes().endswith(b"\n")


def test_unreadable_current_is_refused_not_guessed(tmp_path):
    root = tmp_path / "s"
    with Store(root) as s:
        commit(s, 1, {"w": np.zeros(4, np.float32)})
    (root / "current").write_text("garbage")
    with pytest.raises(StoreError, match="the current pointer is unreadable"):
        Store(root)


# ---- crash safety: the write discipline --------------------------------------------------


class Trace:
    """Records open/fsync/replace on the store's files, in order."""

    def __init__(self, monkeypatch, root):
        self.ops = []
        self.fds = {}
        root = str(root)
        real_open, real_fsync, real_replace, real_close = os.open, os.fsync, os.replace, os.close

        def t_open(path, flags, *a, **k):
            fd = real_open(path, flags, *a, **k)
            self.fds[fd] = os.path.abspath(os.fspath(path))
            return fd

        def t_close(fd):
            self.fds.pop(fd, None)
            return real_close(fd)

        def t_fsync(fd):
            real_fsync(fd)
            path = self.fds.get(fd if isinstance(fd, int) else fd.fileno())
            if path and path.startswith(root):
                self.ops.append(("fsync", os.path.relpath(path, root)))

        def t_replace(src, dst):
            real_replace(src, dst)
            if os.path.abspath(dst).startswith(root):
                self.ops.append(("rename", os.path.relpath(os.fspath(src), root),
                                 os.path.relpath(os.fspath(dst), root)))

        monkeypatch.setattr(os, "open", t_open)
        monkeypatch.setattr(os, "close", t_close)
        monkeypatch.setattr(os, "fsync", t_fsync)
        monkeypatch.setattr(os, "replace", t_replace)

    def index(self, op):
        return self.ops.index(op)


def test_every_write_is_temp_fsync_rename_fsync_dir_in_commit_order(tmp_path, monkeypatch):
    root = tmp_path / "s"
    with Store(root) as s:
        commit(s, 1, chain(3, 4))
        tr = Trace(monkeypatch, root)
        p = s.prepare(2, {"w0": np.full(4, 50.0, np.float32), "w1": np.full(4, 51.0, np.float32)})
        s.write(p)
        s.commit(2)
    ops = tr.ops
    renames = [o for o in ops if o[0] == "rename"]
    blob_renames = [o for o in renames if o[2].startswith("blobs")]
    assert len(blob_renames) == 2
    man = next(o for o in renames if o[2] == os.path.join("versions", "2.json"))
    cur = next(o for o in renames if o[2] == "current")
    for r in renames:
        # the temp file lives in the destination's directory and was fsynced before the rename
        assert os.path.dirname(r[1]) == os.path.dirname(r[2]) and os.path.basename(r[1]).startswith(".tmp-")
        assert ops.index(("fsync", r[1])) < ops.index(r), r
    for r in blob_renames:  # each blob directory fsynced after its rename, before the manifest
        d = os.path.dirname(r[2])
        j = max(i for i, o in enumerate(ops) if o == ("fsync", d))
        assert ops.index(r) < j < ops.index(man)
    k = max(i for i, o in enumerate(ops) if o == ("fsync", "versions"))
    assert ops.index(man) < k < ops.index(cur)  # manifest durable before the commit point
    assert ops.index(cur) < max(i for i, o in enumerate(ops) if o == ("fsync", "."))
    assert ("fsync", "history.jsonl") in ops[ops.index(cur):]


def _crash_child(root, nth_replace):
    """In a forked child: apply version 2 and die (os._exit, no cleanup) at the n-th rename."""
    pid = os.fork()
    if pid == 0:
        try:
            count = [0]
            real = os.replace

            def dying_replace(src, dst):
                count[0] += 1
                if count[0] == nth_replace:
                    os._exit(77)  # power cut before this rename
                real(src, dst)

            os.replace = dying_replace
            s = Store(root, lock=False)
            s.write(s.prepare(2, {"w0": np.full(64, 2.0, np.float32),
                                  "w1": np.full(64, 3.0, np.float32)}))
            s.commit(2)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def test_crash_at_every_rename_leaves_old_or_new_never_half(tmp_path):
    outcomes = set()
    for nth in range(1, 6):  # blob, blob, manifest, current, (none: completes)
        root = tmp_path / ("s%d" % nth)
        with Store(root) as s:
            commit(s, 1, chain(3, 64))
        code = _crash_child(root, nth)
        assert code in (0, 77)
        with Store(root) as s:
            assert s.current() in (1, 2)
            outcomes.add((code, s.current()))
            if s.current() == 1:
                assert s.versions() == [1], "an uncommitted version is visible after a crash"
            for v in s.versions():
                s.load(v)  # every stored version verifies
            for dirpath, _, files in os.walk(root):
                assert not [f for f in files if f.startswith(".tmp-")]
            usage = s.disk_usage()
            referenced = {t["sha256"] for v in s.versions() for t in s.manifest(v)["tensors"].values()}
            assert usage["blobs"] == len(referenced)  # no orphan blobs either
    assert (77, 1) in outcomes and (0, 2) in outcomes


def test_history_is_append_only(tmp_path):
    root = tmp_path / "s"
    with Store(root) as s:
        commit(s, 1, {"w": np.zeros(2, np.float32)})
        first = (root / "history.jsonl").read_bytes()
        s.pin(1)
        s.record("note", text="x")
        after = (root / "history.jsonl").read_bytes()
    assert after.startswith(first)
    assert [json.loads(l)["event"] for l in after.splitlines()] == ["applied", "pinned", "note"]


def test_history_is_rotated_at_its_cap_keeping_one_older_generation(tmp_path, monkeypatch):
    """An unattended box must not fill its disk with the log: at HISTORY_MAX the live file
    becomes history.1.jsonl (replacing the older one) and reading spans both."""
    monkeypatch.setattr(Store, "HISTORY_MAX", 600)
    root = tmp_path / "s"
    with Store(root) as s:
        for i in range(40):
            s.record("note", n=i)
        live = (root / "history.jsonl").stat().st_size
        old = (root / "history.1.jsonl").stat().st_size
        assert live < 600 + 100 and 600 <= old < 600 + 100
        ns = [e["n"] for e in s.history]
        assert ns == list(range(40 - len(ns), 40)) and 0 not in ns  # oldest dropped, order kept
        assert len(ns) >= 600 // 60
    assert sorted(os.listdir(root)) == ["blobs", "history.1.jsonl", "history.jsonl", "lock", "versions"]


def test_commit_failure_before_the_rename_changes_nothing(tmp_path, monkeypatch):
    with Store(tmp_path / "s") as s:
        commit(s, 1, {"w": np.zeros(2, np.float32)})
        s.write(s.prepare(2, {"w": np.ones(2, np.float32)}))
        fail_replace(monkeypatch, "current")
        with pytest.raises(StoreError, match="^cannot move current to version 2: No space left on device$"):
            s.commit(2)
        monkeypatch.undo()
        assert s.current() == 1 and s.highest() == 1
        s.discard(2)
        assert s.versions() == [1]


def test_history_failure_after_the_commit_point_does_not_undo_it(tmp_path, monkeypatch):
    with Store(tmp_path / "s") as s:
        commit(s, 1, {"w": np.zeros(2, np.float32)})
        s.write(s.prepare(2, {"w": np.ones(2, np.float32)}))
        monkeypatch.setattr(s, "_append_history", lambda rec: (_ for _ in ()).throw(OSError(5, "I/O error")))
        s.commit(2)
        assert s.current() == 2 and s.warnings == ["history line for version 2 not written: I/O error"]
    with Store(tmp_path / "s") as s:
        assert s.current() == 2
