"""Event lines: one line per event, human-readable by default, JSON for journald/log shippers.

    events = Events(fmt="text", level="info")
    events.emit("update.applied", version=3, source="file", seconds=0.012)

text:  2026-11-21T12:00:00.123Z info  update.applied version=3 source=file seconds=0.012
json:  {"ts": "2026-11-21T12:00:00.123Z", "level": "info", "event": "update.applied", "version": 3, ...}

Event kinds (docs/daemon.md lists them all): daemon.starting, daemon.started, daemon.stopping,
daemon.stopped, daemon.reloaded, update.received, update.rejected, update.applied,
update.rolled_back, update.rollback_failed, store.recovered, watch.taken, watch.error,
runner.error, control.error, config.error. A kind's level is looked up in LEVELS (warning for
rejections and errors) unless given with ``level=``.

Listeners (``events.subscribe(fn)``) see every emitted event as (kind, fields) — the metrics
endpoint counts updates by outcome this way and `status` remembers the last update result.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, TextIO

LEVEL_NUM = {"debug": 10, "info": 20, "warning": 30, "error": 40}

LEVELS: Dict[str, str] = {
    "update.rejected": "warning",
    "update.rollback_failed": "error",
    "update.watch_failed": "warning",
    "store.error": "error",
    "store.recovered": "warning",
    "watch.error": "error",
    "runner.error": "warning",
    "runner.stalled": "error",
    "control.error": "warning",
    "config.error": "error",
    "daemon.failed": "error",
    "daemon.reload_partial": "warning",
}

Listener = Callable[[str, Dict[str, Any]], None]


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def _text_value(v: Any) -> str:
    if isinstance(v, float):
        s = "%.6g" % v
    elif isinstance(v, (dict, list, tuple)):
        s = json.dumps(v, default=str, separators=(",", ":"))
    else:
        s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        s = json.dumps(s)  # quoted, escapes newlines: one event stays one line
    return s


class Events:
    """Thread-safe event writer. ``fmt`` is "text" or "json"; ``level`` the lowest written."""

    def __init__(self, fmt: str = "text", level: str = "info", stream: Optional[TextIO] = None):
        self.fmt = fmt
        self.level = level
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._listeners: List[Listener] = []

    @property
    def level(self) -> str:
        return self._level

    @level.setter
    def level(self, value: str) -> None:
        if value not in LEVEL_NUM:
            raise ValueError("unknown log level %r" % value)
        self._level = value
        self._min = LEVEL_NUM[value]

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def emit(self, kind: str, level: Optional[str] = None, **fields: Any) -> None:
        lvl = level or LEVELS.get(kind, "info")
        for fn in list(self._listeners):
            try:
                fn(kind, fields)
            except Exception:  # a listener must never break the event path
                pass
        if LEVEL_NUM.get(lvl, 20) < self._min:
            return
        now = time.time()
        if self.fmt == "json":
            rec: Dict[str, Any] = {"ts": _ts(now), "level": lvl, "event": kind}
            for k, v in fields.items():
                rec[k] = v
            line = json.dumps(rec, default=str, separators=(", ", ": "))
        else:
            parts = [_ts(now), "%-7s" % lvl, kind]
            parts += ["%s=%s" % (k, _text_value(v)) for k, v in fields.items() if v is not None]
            line = " ".join(parts)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone (closed terminal): keep serving

    # Convenience wrappers
    def debug(self, kind: str, **fields: Any) -> None:
        self.emit(kind, level="debug", **fields)

    def warning(self, kind: str, **fields: Any) -> None:
        self.emit(kind, level="warning", **fields)

    def error(self, kind: str, **fields: Any) -> None:
        self.emit(kind, level="error", **fields)
