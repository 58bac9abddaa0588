"""The device's resumable, content-addressed download of one package.

Only tensors whose blobs the store lacks are fetched, chunk by chunk, each chunk verified
against its sha256 in the manifest and written (temp + rename, so idempotent) into a partial
area that survives restarts: ``<partial>/manifests/<sha>.json`` and
``<partial>/chunks/<blob sha>.<chunk size>.<index>``. A restart or reconnect re-reads what is
there and requests only the rest. ``rebuild`` then writes the package byte for byte (header
from the manifest, blobs from the store, chunks from the partial area) and checks its sha256.

No network here: ``send(obj, off, n, corr)`` is given, responses come in through
``on_response``; ``pump`` sends what the in-flight bound allows and retries what timed out.
"""
from __future__ import annotations

import collections
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..atomic import TMP_PREFIX, write_atomic
from . import manifest as _manifest
from .link import backoff


class TransferError(Exception):
    """The package cannot be rebuilt as the manifest says; one line."""


@dataclass
class _Want:
    obj: str  # blob sha256, or the manifest's
    index: int  # chunk index (0 for the manifest)
    off: int  # of this request inside the object
    n: int
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class Counters:
    received: int = 0  # payload bytes of every response that arrived (the honest count)
    rejected: int = 0  # chunks whose bytes did not match their hash
    timeouts: int = 0
    requests: int = 0


class Transfer:
    def __init__(self, partial: str, store: Any, desired: Dict[str, Any],
                 send: Callable[[str, int, int, str], None], piece: int, max_in_flight: int = 8,
                 timeout: float = 10.0, on_reject: Optional[Callable[[str], None]] = None,
                 layout: Optional[Dict[str, Any]] = None):
        """``layout``: the signed package's (the envelope's ``layout`` claim); the manifest must
        match it, so every tensor hash checked here is a signed one."""
        self.partial = partial
        self.layout = layout
        self.store = store
        self.desired = desired
        self.package_sha = desired["package"]["sha256"]
        self.manifest_sha = desired["manifest"]["sha256"]
        self.send = send
        self.piece = piece
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.on_reject = on_reject or (lambda why: None)
        self.counters = Counters()
        self.manifest: Optional[_manifest.Manifest] = None
        self.queue: Deque[_Want] = collections.deque()
        self.in_flight: Dict[str, Tuple[_Want, float]] = {}
        self._bufs: Dict[Tuple[str, int], Dict[int, bytes]] = {}
        self._missing: Dict[str, set] = {}  # blob sha256 -> chunk indices not yet on disk
        self._last_answer = 0.0
        self.total = 0  # bytes this box must fetch (blobs it lacks)
        self.done_bytes = 0
        for d in ("manifests", "chunks"):
            os.makedirs(os.path.join(partial, d), exist_ok=True)
            for name in os.listdir(os.path.join(partial, d)):
                if name.startswith(TMP_PREFIX):  # a write a kill interrupted
                    _unlink(os.path.join(partial, d, name))
        self._load_manifest()

    # ---- plan ---------------------------------------------------------------------------

    def _manifest_path(self) -> str:
        return os.path.join(self.partial, "manifests", self.manifest_sha + ".json")

    def _load_manifest(self) -> None:
        try:
            with open(self._manifest_path(), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = None
        if raw is not None and hashlib.sha256(raw).hexdigest() == self.manifest_sha:
            self._accept_manifest(raw)
            return
        size = self.desired["manifest"]["size"]
        self._plan_object(self.manifest_sha, 0, size)

    def _accept_manifest(self, raw: bytes) -> None:
        m = _manifest.parse(raw)  # ManifestError propagates: the caller rejects the update
        if m.package_sha256 != self.package_sha or m.package_size != self.desired["package"]["size"]:
            raise _manifest.ManifestError(
                "manifest is for package %s (%d bytes), desired names %s (%d bytes)"
                % (m.package_sha256[:12], m.package_size, self.package_sha[:12],
                   self.desired["package"]["size"]))
        if self.layout is not None:
            _manifest.check_layout(m, self.layout)
        self.manifest = m
        seen = set()
        for t in m.tensors:
            if t.sha256 in seen or self.store.has_blob(t.sha256, t.nbytes):
                continue
            seen.add(t.sha256)
            self.total += t.nbytes
            missing = self._missing[t.sha256] = set()
            for i, want in enumerate(t.chunks):
                r = m.chunk_range(t, i)
                if self._chunk_ok(t.sha256, i, want):
                    self.done_bytes += len(r)
                else:
                    missing.add(i)
                    self._plan_object(t.sha256, i, len(r), base=r.start)
            if not missing:
                self._check_tensor(t)

    def _plan_object(self, obj: str, index: int, n: int, base: int = 0) -> None:
        for o in range(0, max(n, 1), self.piece):
            self.queue.append(_Want(obj, index, base + o, min(self.piece, n - o)))

    def chunk_path(self, obj: str, index: int) -> str:
        cs = self.manifest.chunk_size if self.manifest else 0
        return os.path.join(self.partial, "chunks", "%s.%d.%d" % (obj, cs, index))

    def _chunk_ok(self, obj: str, index: int, want: str) -> bool:
        """A chunk file from before a restart counts only if its bytes still hash right."""
        p = self.chunk_path(obj, index)
        try:
            with open(p, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() == want:
                    return True
        except FileNotFoundError:
            return False
        os.unlink(p)
        return False

    # ---- progress -----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.manifest is not None and not self.queue and not self.in_flight

    def progress(self) -> Dict[str, int]:
        return {"bytes_done": self.done_bytes, "bytes_total": self.total,
                "received": self.counters.received, "rejected_chunks": self.counters.rejected}

    # ---- network side -------------------------------------------------------------------

    def pump(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        for corr, (w, sent) in list(self.in_flight.items()):
            # while answers keep coming, requests queued behind them at a busy (or rate-limited)
            # server are not late: time out only when nothing arrived for ``timeout``
            if now - max(sent, self._last_answer) > self.timeout:
                del self.in_flight[corr]
                self.counters.timeouts += 1
                self._retry(w, now)
        skipped: List[_Want] = []
        while self.queue and len(self.in_flight) < self.max_in_flight:
            w = self.queue.popleft()
            if w.not_before > now:
                skipped.append(w)
                continue
            corr = uuid.uuid4().hex
            self.in_flight[corr] = (w, now)
            self.counters.requests += 1
            self.send(w.obj, w.off, w.n, corr)
        self.queue.extendleft(reversed(skipped))

    def _retry(self, w: _Want, now: float) -> None:
        w.attempts += 1
        w.not_before = now + backoff(w.attempts, 0.2, 10.0)
        self.queue.append(w)

    def reset_in_flight(self) -> None:
        """After a reconnect: what was in flight may never be answered; ask again now."""
        for w, _ in self.in_flight.values():
            self.queue.appendleft(w)
        self.in_flight.clear()

    def on_response(self, head: Dict[str, Any], data: memoryview) -> None:
        self.counters.received += len(data)
        self._last_answer = time.monotonic()
        entry = self.in_flight.pop(head.get("corr"), None)
        w = entry[0] if entry is not None else self._still_wanted(head, len(data))
        if w is None:
            return  # a late answer to something already received
        if "err" in head or head.get("obj") != w.obj or head.get("off") != w.off or len(data) != w.n:
            self._reject(w, "weight server answered %s@%d with %s" % (
                w.obj[:12], w.off, head.get("err") or "a different range"))
            return
        key = (w.obj, w.index)
        pieces = self._bufs.setdefault(key, {})
        pieces[w.off] = bytes(data)
        if w.obj == self.manifest_sha:
            self._finish_manifest(pieces)
        else:
            self._finish_chunk(w, pieces)

    def _still_wanted(self, head: Dict[str, Any], n: int) -> Optional[_Want]:
        """A late answer (to a request retried since, or sent before a restart) still counts
        if that range is still wanted: the bytes are verified like any others."""
        key = (head.get("obj"), head.get("off"), n)
        for corr, (w, _t) in list(self.in_flight.items()):
            if (w.obj, w.off, w.n) == key:
                del self.in_flight[corr]
                return w
        for w in list(self.queue):
            if (w.obj, w.off, w.n) == key:
                self.queue.remove(w)
                return w
        return None

    def _reject(self, w: _Want, why: str) -> None:
        self.counters.rejected += 1
        self.on_reject(why)
        self._retry(w, time.monotonic())

    def _assembled(self, pieces: Dict[int, bytes], lo: int, n: int) -> Optional[bytes]:
        got = sum(len(p) for p in pieces.values())
        if got < n:
            return None
        return b"".join(pieces[o] for o in sorted(pieces))

    def _finish_manifest(self, pieces: Dict[int, bytes]) -> None:
        raw = self._assembled(pieces, 0, self.desired["manifest"]["size"])
        if raw is None:
            return
        del self._bufs[(self.manifest_sha, 0)]
        if hashlib.sha256(raw).hexdigest() != self.manifest_sha:
            self.counters.rejected += 1
            self.on_reject("manifest bytes do not match its sha256 %s" % self.manifest_sha[:12])
            self._plan_object(self.manifest_sha, 0, self.desired["manifest"]["size"])
            return
        self._write(self._manifest_path(), raw)
        self._accept_manifest(raw)

    def _finish_chunk(self, w: _Want, pieces: Dict[int, bytes]) -> None:
        t = next(t for t in self.manifest.tensors if t.sha256 == w.obj)
        r = self.manifest.chunk_range(t, w.index)
        data = self._assembled(pieces, r.start, len(r))
        if data is None:
            return
        del self._bufs[(w.obj, w.index)]
        if hashlib.sha256(data).hexdigest() != t.chunks[w.index]:
            self.counters.rejected += 1
            self.on_reject("chunk %d of tensor %s failed its sha256 check; fetching it again"
                           % (w.index, t.name))
            self._plan_object(w.obj, w.index, len(r), base=r.start)
            return
        self._write(self.chunk_path(w.obj, w.index), data)
        self.done_bytes += len(data)
        missing = self._missing[t.sha256]
        missing.discard(w.index)
        if not missing:
            self._check_tensor(t)

    def _check_tensor(self, t: _manifest.Tensor) -> None:
        """Once a tensor's chunks are all in: its bytes against its sha256 (a signed one when the
        manifest matched the signed layout), before any rebuild. Chunks that each matched the
        manifest's chunk hashes but not the tensor's (a manifest lying about chunks) are
        dropped and fetched again."""
        h = hashlib.sha256()
        for i in range(len(t.chunks)):
            with open(self.chunk_path(t.sha256, i), "rb") as f:
                h.update(f.read())
        if h.hexdigest() == t.sha256:
            return
        self.counters.rejected += 1
        self.on_reject("tensor %s: its chunks do not make its sha256 %s; fetching it again"
                       % (t.name, t.sha256[:12]))
        for i in range(len(t.chunks)):
            _unlink(self.chunk_path(t.sha256, i))
            r = self.manifest.chunk_range(t, i)
            self.done_bytes -= len(r)
            self._missing[t.sha256].add(i)
            self._plan_object(t.sha256, i, len(r), base=r.start)

    def _write(self, path: str, data: bytes) -> None:
        # a chunk whose rename is lost in a power cut is just fetched again: no directory fsync
        write_atomic(path, [data], sync_dir=False)

    # ---- rebuild ------------------------------------------------------------------------

    def rebuild(self) -> str:
        """Writes the package from the store's blobs and the partial area; returns its path.
        Raises ``TransferError`` when its sha256 is not the manifest's."""
        m = self.manifest
        out = os.path.join(self.partial, "%s.safetensors" % m.package_sha256)
        h = hashlib.sha256()

        def pieces():
            yield m.header
            for t in m.tensors:
                if self.store.has_blob(t.sha256, t.nbytes):
                    yield self.store.blob_bytes(t.sha256, "tensor %s" % t.name)
                    continue
                for i in range(len(t.chunks)):
                    with open(self.chunk_path(t.sha256, i), "rb") as c:
                        yield c.read()

        def hashed():
            for b in pieces():
                h.update(b)
                yield b
        write_atomic(out, hashed(), sync_dir=False)  # what the pipeline reads is whole
        got = h.hexdigest()
        if got != m.package_sha256:
            self.cleanup()
            raise TransferError("rebuilt package sha256 %s does not match the manifest's %s"
                                % (got[:12], m.package_sha256[:12]))
        return out

    def cleanup(self) -> None:
        """Removes this transfer's chunks, manifest and rebuilt package."""
        if self.manifest is not None:
            for t in self.manifest.tensors:
                for i in range(len(t.chunks)):
                    _unlink(self.chunk_path(t.sha256, i))
            _unlink(os.path.join(self.partial, "%s.safetensors" % self.manifest.package_sha256))
        _unlink(self._manifest_path())


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
