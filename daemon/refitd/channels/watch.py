"""The file-drop channel: a watched directory where weight packages arrive.

A file is taken only once it is complete: when the process writing it closes it (inotify
IN_CLOSE_WRITE) or when it is renamed into the directory (the safe way: write ``x.part`` or
``.x``, then rename). Names starting with ``.`` and ending in ``.part`` / ``.tmp`` are never
taken (dropfolder.py); ``NAME.sig`` is the detached signature of ``NAME``: it travels in the
package's ``Delivery``. A ``.sig`` that arrives after its package is still paired when it comes
within ``settle`` seconds (``watch.signature_settle``): a package without one waits that long
for it. On start the directory is scanned for files dropped while the daemon was down.

Each taken file is one ``Delivery.of_path`` through the channel base (one at a time, in arrival
order); ``report`` then moves it to ``applied/`` or ``rejected/`` with ``<name>.reason`` beside
it (and its ``.sig``). The pipeline checks everything before it writes to the store, so a
rejected file never touches it.

Linux (inotify) is the supported platform; watchdog's other observers see renames but may not
report "closed after writing".
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Optional

from watchdog.events import FileSystemEventHandler

from ..delivery import Delivery, read_signature
from ..dropfolder import Claims, complete_name, finish_moves, move_aside, prune, remove_leftovers
from ..package import SIGNATURE_SUFFIX, PackageError
from ..pipeline import ALREADY_SERVING_STAGE, already_serving_text
from .base import Channel, register

# watchdog logs through `logging`; refitd reports through its own event lines. Without a handler
# Python would print its shutdown chatter ("queue_events() called when the thread is inactive")
# on stderr.
_wd_log = logging.getLogger("watchdog")
_wd_log.addHandler(logging.NullHandler())
_wd_log.propagate = False

__all__ = ["DropWatcher", "takeable"]

APPLIED = "applied"
REJECTED = "rejected"


def takeable(name: str) -> bool:
    """Whether a file name in the drop directory is a candidate package."""
    return complete_name(name) and not name.endswith((SIGNATURE_SUFFIX, ".reason"))


def _fs(p: Any) -> str:
    return os.fsdecode(p)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "DropWatcher"):
        super().__init__()
        self.w = watcher

    def _offer(self, path: Any) -> None:
        path = _fs(path)
        if os.path.dirname(path) == self.w.path:
            self.w.offer(os.path.basename(path))

    def on_closed(self, event) -> None:  # IN_CLOSE_WRITE: the writer is done with it
        if not event.is_directory:
            self._offer(event.src_path)

    def on_moved(self, event) -> None:  # renamed into the directory (or within it)
        if not event.is_directory and event.dest_path:
            self._offer(event.dest_path)


def _make_observer():
    """inotify with "full events": a rename into the directory from elsewhere is reported as a
    move (with an empty source), not as a creation, so it can be told apart from a file that is
    still being written (which is taken at IN_CLOSE_WRITE)."""
    try:
        from watchdog.observers.inotify import InotifyObserver
        return InotifyObserver(generate_full_events=True)
    except (ImportError, TypeError):  # not Linux, or a watchdog without full events
        from watchdog.observers import Observer
        return Observer()


@register("watch")
class DropWatcher(Channel):
    source = "file"
    order = 10

    def __init__(self, path: str, pipeline, events, on_outcome: Optional[Callable] = None,
                 settle: float = 0.0, gate=None, keep: int = 100, keep_bytes: int = 1 << 30):
        super().__init__(pipeline, events, gate)
        self.path = os.path.abspath(path)
        #: retention of applied/ and rejected/ (each): at most ``keep`` packages holding at
        #: most ``keep_bytes``, the oldest removed first (dropfolder.prune)
        self.keep, self.keep_bytes = keep, keep_bytes
        self.on_outcome = on_outcome
        self.settle = float(settle)
        self._q: "queue.Queue[Optional[str]]" = queue.Queue()
        self._pending = Claims()  # offered and not yet handled
        self._observer = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.taken = 0

    @classmethod
    def from_config(cls, cfg: Any, ctx) -> Optional["DropWatcher"]:
        if not cfg.watch.path:
            return None
        return cls(cfg.watch.path, ctx.pipeline, ctx.events, settle=cfg.watch.signature_settle,
                   gate=ctx.gate, keep=cfg.watch.keep, keep_bytes=cfg.watch.keep_bytes)

    def describe(self) -> str:
        return "watch %s" % self.path

    def start(self) -> None:
        for d in (self.path, os.path.join(self.path, APPLIED), os.path.join(self.path, REJECTED)):
            os.makedirs(d, exist_ok=True)
            for leftover in remove_leftovers(d):  # a crash while writing a .reason
                self.events.emit("watch.cleaned", path=leftover)
        for name in finish_moves(self.path, (APPLIED, REJECTED)):  # a crash while moving aside
            self.events.emit("watch.cleaned", path=os.path.join(self.path, name))
        self._observer = _make_observer()
        # Only the top level: a taken file leaves it by link + unlink (dropfolder), so no
        # "moved out" event stalls watchdog's queue, and applied/ and rejected/ are not watched.
        self._observer.schedule(_Handler(self), self.path, recursive=False)
        self._observer.daemon = True
        self._observer.start()
        # Files dropped while we were down (after the observer is up, so nothing falls between).
        self.scan()
        self._thread = threading.Thread(target=self._loop, name="refitd-watch", daemon=True)
        self._thread.start()

    def scan(self) -> int:
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: (e.stat().st_mtime, e.name))
        except OSError as e:
            self.events.emit("watch.error", path=self.path, error=e.strerror or str(e))
            return 0
        n = 0
        for e in entries:
            if e.is_file(follow_symlinks=False):
                n += self.offer(e.name)
        return n

    def offer(self, name: str) -> int:
        if not takeable(name):
            return 0
        if not self._pending.claim(name):
            return 0
        self._q.put(name)
        return 1

    def _loop(self) -> None:
        while True:
            name = self._q.get()
            if name is None or self._stop.is_set():
                return
            try:
                self._take(name)
            except Exception as e:  # never let one file stop the channel
                self.events.emit("watch.error", file=name, error="%s: %s" % (type(e).__name__, e))
            finally:
                self._pending.release(name)

    def _take(self, name: str) -> None:
        path = os.path.join(self.path, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return  # renamed away or already handled
        import stat as _stat
        if not _stat.S_ISREG(st.st_mode):
            self._finish(name, False, "not a regular file")
            return
        self.taken += 1
        try:
            signature = self._signature(name)
        except PackageError as e:  # a .sig that cannot be read: the package is refused
            d = Delivery.of_path(path, self.origin(where=path))
            self.report(d, self.pipeline.refuse(d, "signature", e.reason))
            return
        self.deliver(Delivery.of_path(path, self.origin(where=path), signature))

    def _signature(self, name: str) -> Optional[bytes]:
        """``NAME.sig``'s bytes, waiting up to ``settle`` seconds for one that is late."""
        sig = os.path.join(self.path, name + SIGNATURE_SUFFIX)
        deadline = time.monotonic() + self.settle
        while not os.path.isfile(sig):
            if time.monotonic() >= deadline or self._stop.wait(min(0.02, self.settle)):
                return None
        return read_signature(sig)

    def report(self, delivery: Delivery, outcome: Any) -> None:
        name = os.path.basename(delivery.path)
        if outcome.ok and outcome.stage == ALREADY_SERVING_STAGE:
            text = already_serving_text(outcome.version)
        elif outcome.ok:
            text = "applied as version %s in %.3f s" % (outcome.version, outcome.seconds)
        else:
            text = "rejected%s: %s" % (" at %s" % outcome.stage if outcome.stage else "", outcome.reason)
        # status.last_update already has the outcome (a pipeline listener); moving the file
        # aside cannot fail in a way that loses it (_finish reports a full disk and goes on)
        self._finish(name, bool(outcome.ok), text)
        if self.on_outcome is not None:
            self.on_outcome(name, outcome)

    def _finish(self, name: str, ok: bool, text: str) -> None:
        sub = APPLIED if ok else REJECTED
        try:
            move_aside(self.path, sub, name, text, companions=(SIGNATURE_SUFFIX,))
        except OSError as e:  # the .reason on a full disk: its temp file is already gone
            self.events.emit("watch.error", file=name, error="cannot write the reason of %s: %s"
                             % (name, e.strerror or e))
        for gone in prune(os.path.join(self.path, sub), self.keep, self.keep_bytes):
            self.events.emit("watch.pruned", file=gone, folder=sub)

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(2.0)
        self._q.put(None)
        if self._thread is not None:
            # An apply in progress is allowed to finish (it is serialised by the pipeline lock).
            self._thread.join(30.0)
