"""Continuous inference: N worker threads take inputs from a source, run them through the engine
(one native context per thread, kept by the engine) and give every result, with the weight
version that produced it, to a sink.

Sources (plugins.py: each class declared once with its config, ``@plugin("source", type, Config)``):
  synthetic  fixed (ones / zeros / a number) or random tensors, at a set total rate or flat out
  npy-dir    a folder polled for ``.npy`` (single-input models) / ``.npz`` (named inputs) files
  socket     a Unix socket: local clients send tensors and get the result back (protocol below)

Sinks (``@plugin("sink", ...)``): stdout (a line at most every ``every`` seconds), jsonl (a file),
mqtt (the fleet channel's results topic).

Live counters (``Stats``): inferences total and per second, errors, latency p50/p99 over the
last few seconds (a ring buffer), and a cumulative latency histogram for Prometheus.

Socket protocol (the local inference API; ``socket_infer()`` is a client):
  every message, both ways, is one frame:  4-byte big-endian length N, then N bytes of JSON
  header, then the raw C-order bytes of each tensor the header lists, in order.
  request header:  {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 1, 3, 3]}]}
  reply header:    {"ok": true, "version": 3, "seconds": 0.0001,
                    "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 1, 1, 1]}]}
                or {"ok": false, "error": "one-line reason"}      (no tensor bytes follow)
  A connection may carry any number of requests, answered in order.
"""
from __future__ import annotations

import abc
import bisect
import collections
import json
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .dropfolder import Claims, complete_name, move_aside
from .faults import worker_fault
from .plugins import plugin, plugins
from .schema import (_BAD, section, _did_you_mean, _f, _is_int, _show, k_choice, k_float, k_int, k_mode,
                     k_path, k_socket_path)
from .tensorwire import ProtocolError, encode_frame, frame_header, read_frame

__all__ = ["Item", "Result", "Stats", "Runner", "socket_infer", "encode_frame", "read_frame",
           "LATENCY_BUCKETS", "SyntheticSourceConfig", "NpyDirSourceConfig", "SocketSourceConfig",
           "StdoutSinkConfig", "JsonlSinkConfig", "MqttSinkConfig"]


@dataclass
class Item:
    """One unit of work from a source. ``reply`` (if any) is called with the Result."""
    inputs: Dict[str, np.ndarray]
    tag: Optional[str] = None
    reply: Optional[Callable[["Result"], None]] = None


@dataclass
class Result:
    outputs: Optional[Dict[str, np.ndarray]]
    version: Optional[int]
    seconds: float
    worker: int
    t: float
    tag: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


# Latency histogram bucket upper bounds, seconds (Prometheus `le` labels).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class Stats:
    """Thread-safe live counters. ``window`` seconds of recent latencies give rate and
    percentiles; the histogram and totals are cumulative since start."""

    def __init__(self, window: float = 5.0, ring: int = 8192):
        self.window = window
        self._lock = threading.Lock()
        self._ring: "collections.deque[Tuple[float, float]]" = collections.deque(maxlen=ring)
        self.total = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # last: +Inf
        self.by_version: Dict[int, int] = {}
        self.last_version: Optional[int] = None
        self.started = time.monotonic()

    def record(self, seconds: float, ok: bool, version: Optional[int]) -> None:
        now = time.monotonic()
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self.total += 1
            if not ok:
                self.errors += 1
                return
            self._ring.append((now, seconds))
            self.latency_sum += seconds
            self.buckets[i] += 1
            if version is not None:
                self.by_version[version] = self.by_version.get(version, 0) + 1
                self.last_version = version

    def snapshot(self) -> Dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            recent = [lat for (t, lat) in self._ring if now - t <= self.window]
            oldest = None
            for (t, _lat) in self._ring:
                if now - t <= self.window:
                    oldest = t
                    break
            snap = {
                "inferences_total": self.total,
                "errors_total": self.errors,
                "latency_sum": self.latency_sum,
                "buckets": list(self.buckets),
                "last_version": self.last_version,
            }
        if recent:
            span = max(now - oldest, 1e-3) if len(recent) == self._ring.maxlen else \
                min(self.window, max(now - self.started, 1e-3))
            recent.sort()
            snap["per_second"] = len(recent) / span
            snap["p50_ms"] = recent[int(0.50 * (len(recent) - 1))] * 1e3
            snap["p99_ms"] = recent[int(0.99 * (len(recent) - 1))] * 1e3
        else:
            snap["per_second"] = 0.0
            snap["p50_ms"] = None
            snap["p99_ms"] = None
        return snap


# ---- plugin configs (one declaration per plugin: plugins.py) -----------------------------------

def _k_fill(v, path, ctx):
    if v in ("ones", "zeros", "random") or _is_int(v) or isinstance(v, float):
        return v
    ctx.add(path, 'must be "ones", "zeros", "random" or a number, got %s%s'
            % (_show(v), _did_you_mean(v, ("ones", "zeros", "random"))))
    return _BAD


@section
class SyntheticSourceConfig:
    fill: Any = _f("ones", _k_fill, 'input values: "ones", "zeros", "random", or a number')
    rate: float = _f(0.0, k_float(0.0), "inferences per second over all workers; 0 = flat out")
    seed: Optional[int] = _f(None, k_int(0), "random seed for fill: random", nullable=True)
    type: str = "synthetic"


@section
class NpyDirSourceConfig:
    path: str = _f(kind=k_path, doc="folder the .npy (one input) / .npz (named inputs) files arrive in")
    poll: float = _f(0.2, k_float(0.0, exclusive_min=True), "seconds between scans of the folder")
    done: str = _f("move", k_choice("move", "delete"), "what happens to a file once inferred: move to done/ or delete")
    type: str = "npy-dir"


@section
class SocketSourceConfig:
    path: str = _f(kind=k_socket_path, doc="Unix socket local clients connect to")
    mode: int = _f(0o660, k_mode, "permissions of the socket file")
    max_bytes: int = _f(64 << 20, k_int(1), "largest request accepted")
    type: str = "socket"


@section
class StdoutSinkConfig:
    every: float = _f(0.2, k_float(0.0), "print at most one result line per this many seconds; 0 = every result")
    type: str = "stdout"


@section
class JsonlSinkConfig:
    path: str = _f(kind=k_path, doc="file results are appended to, one JSON object per line")
    every: float = _f(0.0, k_float(0.0), "write at most one result per this many seconds; 0 = every result")
    max_bytes: int = _f(64 << 20, k_int(0), "at this size the file becomes <path>.1 (one older kept); 0 = no cap")
    type: str = "jsonl"


@section
class MqttSinkConfig:
    """Results go to the fleet channel (rate: mqtt.results_rate); needs mqtt.enabled."""
    type: str = "mqtt"


def _fill_tensor(fill: Any, shape, dtype, rng) -> np.ndarray:
    if fill == "ones":
        return np.ones(shape, dtype=dtype)
    if fill == "zeros":
        return np.zeros(shape, dtype=dtype)
    if fill == "random":
        return rng.standard_normal(shape).astype(dtype)
    return np.full(shape, float(fill), dtype=dtype)


class Source(abc.ABC):
    """Base: ``get(timeout)`` returns the next Item or None (nothing yet, or stopped)."""
    kind = "?"

    def __init__(self, cfg, engine, events):
        self.cfg = cfg
        self.engine = engine
        self.events = events
        self._stop = threading.Event()

    def start(self) -> None:
        pass

    @abc.abstractmethod
    def get(self, timeout: float) -> Optional[Item]:
        """The next item, or None."""

    def stop(self) -> None:
        """Stop producing new items; ``get`` still hands out items already accepted."""
        self._stop.set()

    def drained(self) -> bool:
        """True once stopped and nothing accepted is left for the workers."""
        return self._stop.is_set()

    def describe(self) -> Dict[str, Any]:
        return {"type": self.kind}


class QueuedSource(Source):
    """A source whose items are produced by its own thread(s) into a bounded queue."""

    def __init__(self, cfg, engine, events, maxsize: int):
        super().__init__(cfg, engine, events)
        self._q: "queue.Queue[Item]" = queue.Queue(maxsize=maxsize)

    def get(self, timeout: float) -> Optional[Item]:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def drained(self) -> bool:
        return self._stop.is_set() and self._q.empty()


@plugin("source", "synthetic", SyntheticSourceConfig)
class SyntheticSource(Source):
    """The same tensors every time (ones / zeros / a number) or fresh random ones, paced to
    ``rate`` inferences per second over all workers (0 = flat out)."""

    def __init__(self, cfg, engine, events):
        super().__init__(cfg, engine, events)
        self._rng = np.random.default_rng(cfg.seed)
        self._specs = engine.inputs()
        self._fixed = None
        if cfg.fill != "random":
            self._fixed = {s.name: _fill_tensor(cfg.fill, s.shape, s.dtype, None) for s in self._specs}
        self._period = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def get(self, timeout: float) -> Optional[Item]:
        if self._stop.is_set():
            return None
        if self._period:
            with self._lock:
                now = time.monotonic()
                # Never bank more than one period of credit (no bursts after a stall).
                slot = max(self._next, now - self._period)
                claim = slot - now <= timeout
                if claim:
                    self._next = slot + self._period
            if not claim:  # the next slot is further off than `timeout`: come back later
                self._stop.wait(timeout)
                return None
            wait = slot - time.monotonic()
            if wait > 0 and self._stop.wait(wait):  # wakes at once on stop()
                return None
        if self._fixed is not None:
            return Item(self._fixed)
        with self._lock:
            inputs = {s.name: _fill_tensor("random", s.shape, s.dtype, self._rng) for s in self._specs}
        return Item(inputs)

    def describe(self):
        return {"type": self.kind, "fill": self.cfg.fill, "rate": self.cfg.rate}


@plugin("source", "npy-dir", NpyDirSourceConfig)
class NpyDirSource(QueuedSource):
    """Polls a folder for ``*.npy`` / ``*.npz`` (temp names ``*.part``, ``.*`` ignored; write
    then rename in). Each file is inferred once, then moved to ``done/`` (or deleted); a file
    that cannot be read is moved to ``failed/`` with a ``.reason`` beside it. A file is taken
    only once two scans in a row see the same size and mtime, so a writer that does not
    rename (``np.save`` straight into the folder) is not caught half-written."""

    def __init__(self, cfg, engine, events):
        super().__init__(cfg, engine, events, maxsize=256)
        self._seen = Claims()  # queued for inference and not finished yet
        self._settling: Dict[str, tuple] = {}  # name -> (size, mtime_ns) at the last scan
        self._thread: Optional[threading.Thread] = None
        self._specs = engine.inputs()

    def start(self) -> None:
        os.makedirs(self.cfg.path, exist_ok=True)
        self._thread = threading.Thread(target=self._scan_loop, name="refitd-npy-dir", daemon=True)
        self._thread.start()

    def _finish(self, path: str, name: str, error: Optional[str]) -> None:
        try:
            if error is not None:
                move_aside(self.cfg.path, "failed", name, error)
            elif self.cfg.done == "delete":
                os.unlink(path)
            else:
                move_aside(self.cfg.path, "done", name)
        except OSError as e:
            self.events.emit("runner.error", source="npy-dir", file=name, error=str(e))
        finally:
            self._seen.release(name)

    def _load(self, path: str) -> Dict[str, np.ndarray]:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        arr = np.load(path, allow_pickle=False)
        if len(self._specs) != 1:
            raise ValueError("the model has %d inputs: use a .npz with named arrays" % len(self._specs))
        return {self._specs[0].name: arr}

    def _settled(self, entries) -> list:
        """The candidate files whose size and mtime did not change since the last scan."""
        ready, now = [], {}
        for e in entries:
            if not e.is_file() or not complete_name(e.name) or not e.name.endswith((".npy", ".npz")):
                continue
            try:
                st = e.stat()
            except OSError:  # gone between scandir and stat
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._settling.get(e.name) == sig:
                ready.append((st.st_mtime_ns, e))
            else:
                now[e.name] = sig
        self._settling = now
        return [e for _, e in sorted(ready, key=lambda t: t[0])]

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                entries = self._settled(os.scandir(self.cfg.path))
            except OSError:
                entries = []
            for e in entries:
                if self._stop.is_set():
                    break
                name = e.name
                if not self._seen.claim(name):
                    continue
                path = e.path
                try:
                    inputs = self._load(path)
                except Exception as exc:  # bad file: report, move aside, go on
                    reason = "cannot read %s: %s" % (name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    self.events.emit("runner.error", source="npy-dir", file=name, error=reason)
                    self._finish(path, name, reason)
                    continue

                def reply(res: Result, path=path, name=name) -> None:
                    self._finish(path, name, None)

                while not self._stop.is_set():
                    try:
                        self._q.put(Item(inputs, tag=name, reply=reply), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                else:
                    self._seen.release(name)
            self._stop.wait(self.cfg.poll)



    def describe(self):
        return {"type": self.kind, "path": self.cfg.path}


# ---- socket protocol ---------------------------------------------------------------------------

def socket_infer(path: str, inputs: Dict[str, np.ndarray], timeout: float = 30.0,
                 sock: Optional[socket.socket] = None) -> Tuple[Dict[str, np.ndarray], int]:
    """Client of the socket source: sends ``inputs``, returns (outputs, version). Raises
    RuntimeError with the server's one-line reason on failure."""
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
    try:
        header, arrs = frame_header("inputs", inputs)
        sock.sendall(encode_frame(header, arrs))
        reply, outputs = read_frame(sock, "outputs", 1 << 31)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error") or "inference failed")
        return outputs, int(reply["version"])
    finally:
        if own:
            sock.close()


@plugin("source", "socket", SocketSourceConfig)
class SocketSource(QueuedSource):
    """The local inference API: a Unix socket (mode from config) where each connection sends
    requests and gets replies in order (see the module docstring for the frame format)."""

    def __init__(self, cfg, engine, events):
        super().__init__(cfg, engine, events, maxsize=1024)
        self._server: Optional[socket.socket] = None
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._accept_thread: Optional[threading.Thread] = None

    def start(self) -> None:
        path = self.cfg.path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        from .control import bind_unix_socket  # shared: atomic bind with the right mode
        self._server = bind_unix_socket(path, self.cfg.mode)
        self._server.settimeout(0.5)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="refitd-infer-socket", daemon=True)
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        from .control import accept_loop  # shared: survives running out of descriptors
        accept_loop(self._server, self._stop, self._adopt, self.events, "runner.error")

    def _adopt(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)
        threading.Thread(target=self._serve, args=(conn,), name="refitd-infer-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                try:
                    _header, inputs = read_frame(conn, "inputs", self.cfg.max_bytes)
                except EOFError:
                    return
                except ProtocolError as e:
                    conn.sendall(encode_frame({"ok": False, "error": str(e)}))
                    return
                done = threading.Event()
                box: List[Result] = []

                def reply(res: Result) -> None:
                    box.append(res)
                    done.set()

                try:
                    self._q.put(Item(inputs, tag="socket", reply=reply), timeout=5.0)
                except queue.Full:
                    conn.sendall(encode_frame({"ok": False, "error": "busy: too many requests queued"}))
                    continue
                while not done.wait(0.5):
                    if self._stop.is_set() and self._q.empty() and not done.is_set():
                        # stopping: workers drain the queue first, so give them a moment
                        done.wait(5.0)
                        break
                if not box:
                    conn.sendall(encode_frame({"ok": False, "error": "daemon stopping"}))
                    return
                res = box[0]
                if res.error is not None:
                    conn.sendall(encode_frame({"ok": False, "error": res.error}))
                    continue
                header, arrs = frame_header("outputs", res.outputs)
                header.update(ok=True, version=res.version, seconds=round(res.seconds, 6))
                conn.sendall(encode_frame(header, arrs))
        except OSError:
            return
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            conn.close()


    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            try:
                self._server.close()
            except OSError:
                pass
            try:
                os.unlink(self.cfg.path)
            except OSError:
                pass


    def describe(self):
        return {"type": self.kind, "path": self.cfg.path}


# ---- sinks -----------------------------------------------------------------------------------

def _summary(outputs: Dict[str, np.ndarray], limit: int = 8) -> str:
    parts = []
    for name, a in outputs.items():
        flat = a.reshape(-1)
        if flat.size <= limit:
            vals = " ".join("%.6g" % v for v in flat)
            parts.append("%s=%s" % (name, vals if flat.size == 1 else "[" + vals + "]"))
        else:
            parts.append("%s=<%s mean=%.6g>" % (name, "x".join(map(str, a.shape)), float(flat.mean())))
    return " ".join(parts)


def _jsonable(outputs: Dict[str, np.ndarray]) -> Dict[str, Any]:
    return {k: v.tolist() for k, v in outputs.items()}


class Sink(abc.ABC):
    kind = "?"

    def __init__(self, cfg, events):
        self.cfg = cfg
        self.events = events
        self._lock = threading.Lock()
        self._last = 0.0
        self._last_version = None

    def _due(self, res: Result) -> bool:
        every = getattr(self.cfg, "every", 0.0)
        if not every or res.tag is not None:  # tagged results (files, clients) always go out
            return True
        with self._lock:
            # The first result of every weight version goes out, so a throttled sink still shows
            # each version that served.
            if res.t - self._last >= every or res.version != self._last_version:
                self._last, self._last_version = res.t, res.version
                return True
        return False

    @abc.abstractmethod
    def put(self, res: Result) -> None:
        """Delivers one result."""

    def close(self) -> None:
        pass


@plugin("sink", "stdout", StdoutSinkConfig)
class StdoutSink(Sink):
    def __init__(self, cfg, events, stream=None):
        super().__init__(cfg, events)
        self.stream = stream

    def put(self, res: Result) -> None:
        if not self._due(res):
            return
        stream = self.stream or sys.stdout
        if res.error is not None:
            line = "error worker=%d %s%s" % (res.worker, res.error, " file=%s" % res.tag if res.tag else "")
        else:
            line = "v%d %s  (worker %d, %.3f ms%s)" % (res.version, _summary(res.outputs), res.worker,
                                                       res.seconds * 1e3, ", " + res.tag if res.tag else "")
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass


def _record(res: Result) -> Dict[str, Any]:
    """A result as the jsonl and mqtt sinks write it."""
    rec: Dict[str, Any] = {"t": round(res.t, 6), "version": res.version, "worker": res.worker,
                           "seconds": round(res.seconds, 9)}
    if res.tag is not None:
        rec["tag"] = res.tag
    if res.error is not None:
        rec["error"] = res.error
    else:
        rec["outputs"] = _jsonable(res.outputs)
    return rec


@plugin("sink", "jsonl", JsonlSinkConfig)
class JsonlSink(Sink):
    """Appends one JSON object per result: {"t", "version", "worker", "seconds", "outputs"
    (nested lists) or "error", "tag"}."""

    def __init__(self, cfg, events):
        super().__init__(cfg, events)
        os.makedirs(os.path.dirname(cfg.path) or ".", exist_ok=True)
        #: at this size the file becomes ``<path>.1`` (one older generation kept), so an
        #: unattended box cannot fill its disk with results; 0 = no cap (logrotate's job)
        self.max_bytes = int(getattr(cfg, "max_bytes", 0) or 0)
        self._wlock = threading.Lock()
        self._f = self._open()

    def _open(self):
        f = open(self.cfg.path, "a", encoding="utf-8", buffering=1)
        self._size = f.tell()
        return f

    def reopen(self) -> None:
        """Closes and reopens the file by its path (SIGHUP): after logrotate renamed it, the
        results go to a new file rather than on into the renamed one."""
        with self._wlock:
            if self._f is not None:
                self._f.close()
                self._f = None
                self._f = self._open()

    def _rotate(self) -> None:
        self._f.close()
        self._f = None
        os.replace(self.cfg.path, self.cfg.path + ".1")
        self._f = self._open()

    def put(self, res: Result) -> None:
        if not self._due(res):
            return
        line = json.dumps(_record(res), separators=(",", ":"))
        with self._wlock:
            if self._f is None:
                return
            if self.max_bytes and self._size + len(line) + 1 > self.max_bytes and self._size:
                self._rotate()
            self._f.write(line + "\n")
            self._size += len(line) + 1  # ASCII: json.dumps escapes the rest

    def close(self) -> None:
        with self._wlock:
            if self._f is not None:
                self._f.close()
                self._f = None


@plugin("sink", "mqtt", MqttSinkConfig)
class MqttSink(Sink):
    """Results to the fleet channel's ``.../results`` topic. The channel (``target``, set by the
    daemon once it runs) rate-limits to ``mqtt.results_rate`` and drops while offline, so a
    worker never waits on the network."""

    target = None

    def put(self, res: Result) -> None:
        t = self.target
        if t is not None:
            t.publish_result(_record(res))


# ---- the runner ------------------------------------------------------------------------------

Observer = Callable[[Result], None]


class Runner:
    """Owns the worker threads. ``start()``; ``stop(drain=True)`` stops the source, lets the
    workers finish what was already accepted, joins them and closes the sink."""

    def __init__(self, engine, source: Source, sink: Sink, threads: int, events, stats: Optional[Stats] = None):
        self.engine = engine
        self.source = source
        self.sink = sink
        self.threads = threads
        self.events = events
        self.stats = stats or Stats()
        self._observers: List[Observer] = []
        self._workers: List[threading.Thread] = []
        self._beats: List[float] = [time.monotonic()] * threads  # last loop turn per worker
        self._halt = threading.Event()
        self._err_lock = threading.Lock()
        self._last_err_report = 0.0
        self._errs_unreported = 0

    @classmethod
    def from_config(cls, cfg, engine, events, sink_stream=None) -> "Runner":
        source = plugins("source")[cfg.source.type](cfg.source, engine, events)
        sink_cls = plugins("sink")[cfg.sink.type]
        sink = sink_cls(cfg.sink, events, sink_stream) if sink_cls is StdoutSink else sink_cls(cfg.sink, events)
        return cls(engine, source, sink, cfg.workers.threads, events)

    def add_observer(self, fn: Observer) -> None:
        """``fn(result)`` is called in the worker thread after every inference (keep it cheap:
        the post-swap watch window uses this)."""
        self._observers.append(fn)

    def start(self) -> None:
        self.source.start()
        for i in range(self.threads):
            t = threading.Thread(target=self._work, args=(i,), name="refitd-worker-%d" % i, daemon=True)
            t.start()
            self._workers.append(t)

    def _report_error(self, worker: int, message: str) -> None:
        # First error at once, then at most one summary every 10 s: a broken input must not
        # flood the log.
        now = time.monotonic()
        with self._err_lock:
            self._errs_unreported += 1
            if now - self._last_err_report < 10.0 and self._last_err_report:
                return
            n, self._errs_unreported = self._errs_unreported, 0
            self._last_err_report = now
        self.events.emit("runner.error", worker=worker, error=message, count=n)

    def _work(self, index: int) -> None:
        engine, source, sink, stats = self.engine, self.source, self.sink, self.stats
        beats = self._beats
        fault = worker_fault()  # None unless a REFITD_TEST_ONLY_ variable is set (faults.py)
        while not self._halt.is_set():
            beats[index] = time.monotonic()
            item = source.get(0.2)
            if item is None:
                if source.drained():
                    break
                continue
            t0 = time.perf_counter()
            if fault is not None:
                fault()
            try:
                outputs, version = engine.infer(item.inputs)
                error = None
            except Exception as e:  # EngineError and friends: one line, keep serving
                outputs, version, error = None, None, (str(e).splitlines() or [type(e).__name__])[0]
            dt = time.perf_counter() - t0
            stats.record(dt, error is None, version)
            res = Result(outputs, version, dt, index, time.time(), item.tag, error)
            if error is not None:
                self._report_error(index, error)
            for fn in self._observers:
                try:
                    fn(res)
                except Exception as e:
                    self._report_error(index, "observer failed: %s" % e)
            if item.reply is not None:
                try:
                    item.reply(res)
                except Exception as e:
                    self._report_error(index, "reply failed: %s" % e)
            try:
                sink.put(res)
            except Exception as e:
                self._report_error(index, "sink failed: %s" % e)

    def stalled(self, max_age: float) -> List[int]:
        """Workers that have not come round their loop for ``max_age`` seconds (stuck inside an
        inference). The daemon stops its systemd watchdog pings while any is stalled, so
        systemd restarts a wedged process. An idle source does not count: ``get`` returns
        every 0.2 s."""
        now = time.monotonic()
        stuck = [i for i, (t, b) in enumerate(zip(self._workers, self._beats))
                 if t.is_alive() and now - b > max_age]
        # A dead worker serves nothing either: a daemon whose workers all died must not keep
        # telling systemd it is fine.
        return sorted(set(stuck) | set(self.dead()))

    def dead(self) -> List[int]:
        """Workers whose thread ended although nobody stopped the runner or its source (an
        exception escaped the loop's own handling)."""
        if self._halt.is_set() or self.source.drained():
            return []
        return [i for i, t in enumerate(self._workers) if not t.is_alive()]

    def stop(self, drain: bool = True, timeout: float = 10.0) -> bool:
        """Returns True if every worker finished within ``timeout``."""
        self.source.stop()
        if not drain:
            self._halt.set()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = any(t.is_alive() for t in self._workers)
        if alive:
            self._halt.set()
            for t in self._workers:
                t.join(1.0)
            alive = any(t.is_alive() for t in self._workers)
        try:
            self.sink.close()
        except Exception:
            pass
        return not alive

    def status(self) -> Dict[str, Any]:
        snap = self.stats.snapshot()
        snap["threads"] = self.threads
        snap["source"] = self.source.describe()
        snap["sink"] = self.sink.kind
        return snap
