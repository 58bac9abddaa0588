"""Weight server: answers chunk requests from the packages it holds.

Every object is addressed by its sha256: tensor blobs (a byte range of a package file) and
transfer manifests. Replicas subscribe through a shared subscription (``$share/...``) so the
broker spreads requests over them; ``refitd push`` runs one for its package while it waits.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from ..package import DEFAULT_MAX_PACKAGE_BYTES, PackageError, read_capped
from . import manifest as _manifest
from . import topics, wire
from .link import Link, LinkOptions

MAX_RANGE = 4 << 20


@dataclass
class _FileRange:
    path: str
    offset: int
    nbytes: int


class WeightServer:
    """Serves ``add``-ed packages (and, with ``directory``, every ``*.safetensors`` in it,
    rescanned every ``rescan`` seconds) over ``link``."""

    def __init__(self, link: Link, directory: Optional[str] = None, chunk_size: int = _manifest.DEFAULT_CHUNK,
                 shared: bool = True, rescan: float = 2.0, log=None, max_rate: float = 0.0,
                 serve: bool = True):
        self.link = link
        self.directory = directory
        self.chunk_size = chunk_size
        self.rescan = rescan
        self.log = log or (lambda msg: None)
        self.objects: Dict[str, Union[bytes, _FileRange]] = {}
        self.manifests: Dict[str, _manifest.Manifest] = {}  # by package sha256
        self._seen: Dict[str, Tuple[int, int]] = {}  # path -> (size, mtime_ns) indexed
        self.max_rate = max_rate  # bytes/s sent at most (0: no limit), to spare a thin uplink
        self._sent_t = time.monotonic()
        self._debt = 0.0
        self.served = 0
        self.served_bytes = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if serve:  # push --no-serve: the manifest is built, persistent servers answer
            link.subscribe(topics.weights_request_filter(shared), qos=0)

    def add(self, path: str, data: Optional[bytes] = None) -> _manifest.Manifest:
        """Indexes one package file; returns its transfer manifest."""
        if data is None:
            data = bytes(read_capped(path, DEFAULT_MAX_PACKAGE_BYTES))
        m = _manifest.build(data, self.effective_chunk())
        self.add_manifest(m, path)
        return m

    def add_manifest(self, m: _manifest.Manifest, path: str) -> None:
        """Serves ``m`` (its manifest bytes and the tensor ranges of the file at ``path``)."""
        for t in m.tensors:
            self.objects.setdefault(t.sha256, _FileRange(os.path.abspath(path), t.offset, t.nbytes))
        self.objects[m.sha256] = m.raw
        self.manifests[m.package_sha256] = m

    def effective_chunk(self) -> int:
        """The chunk size, lowered to fit the broker's MQTT 5 Maximum Packet Size."""
        mp = self.link.max_packet
        if mp:
            return max(_manifest.MIN_CHUNK, min(self.chunk_size, mp - wire.OVERHEAD))
        return self.chunk_size

    def scan(self) -> None:
        if not self.directory:
            return
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as e:
            self.log("cannot list %s: %s" % (self.directory, e.strerror))
            return
        for name in names:
            if not name.endswith(".safetensors") or name.startswith("."):
                continue
            p = os.path.join(self.directory, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self._seen.get(p) == key:
                continue
            self._seen[p] = key
            try:
                m = self.add(p)
                self.log("serving %s (package %s, %d bytes)" % (name, m.package_sha256[:12], m.package_size))
            except (PackageError, _manifest.ManifestError, OSError) as e:
                self.log("not serving %s: %s" % (name, e))

    def start(self) -> "WeightServer":
        self.scan()
        self._thread = threading.Thread(target=self.run, name="weight-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def run(self) -> None:
        next_scan = time.monotonic() + self.rescan
        while not self._stop.is_set():
            try:
                kind, msg = self.link.inbox.get(timeout=0.2)
            except queue.Empty:
                kind = msg = None
            if kind == "msg" and msg.topic.endswith("/weights/request"):
                self.answer(msg)
            if time.monotonic() >= next_scan:
                self.scan()
                next_scan = time.monotonic() + self.rescan

    def _read(self, obj: str, off: int, n: int) -> bytes:
        src = self.objects.get(obj)
        if src is None:
            raise KeyError("object %s is not served here" % obj[:12])
        size = len(src) if isinstance(src, bytes) else src.nbytes
        if off > size:
            raise KeyError("range starts at %d, object has %d bytes" % (off, size))
        n = min(n, size - off, MAX_RANGE)
        if isinstance(src, bytes):
            return src[off:off + n]
        with open(src.path, "rb") as f:
            return os.pread(f.fileno(), n, src.offset + off)

    def _pace(self, n: int) -> None:
        if self.max_rate <= 0:
            return
        now = time.monotonic()
        self._debt = max(0.0, self._debt - (now - self._sent_t) * self.max_rate) + n
        self._sent_t = now
        if self._debt > self.max_rate * 0.05:
            time.sleep((self._debt - self.max_rate * 0.05) / self.max_rate)

    def answer(self, msg: Any) -> None:
        try:
            req = wire.parse_request(msg.payload)
        except wire.WireError as e:
            self.log("bad request on %s: %s" % (msg.topic, e))
            return
        reply_to = msg.response_topic or req["reply_to"]
        try:
            data = self._read(req["obj"], req["off"], req["n"])
            body = wire.response(req["corr"], req["obj"], req["off"], data)
        except (KeyError, OSError) as e:
            # a replica that lacks the object stays silent: another may have it, and the
            # device's timeout moves it on; only a range error is answered
            if isinstance(e, KeyError) and "not served" in str(e):
                return
            body = wire.response(req["corr"], req["obj"], req["off"], err=str(e).strip("'\""))
            data = b""
        self._pace(len(body))
        self.link.publish(reply_to, body, qos=0, correlation=msg.correlation)
        self.served += 1
        self.served_bytes += len(data)
