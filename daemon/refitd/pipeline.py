"""The one refit pipeline. Every channel (control socket / CLI, file drop, MQTT) hands it a
``Delivery`` (delivery.py) through ``Pipeline.deliver``; one lock serialises them. ``apply(path)``
and ``rollback(to)`` are deliveries too.

A package delivery: size cap (before reading) -> read, hashed as it is read (the package
identity) -> signature check on the raw bytes (the verifier hook; nothing has parsed them yet)
-> parse -> model fingerprint, names, dtypes, shapes -> version policy -> stage in the engine
(the one copy; finite values checked in it) -> shadow check on the staged set, while the store
write (blob hashes | blob files written and fsynced, then the manifest) runs beside both ->
commit (``current`` moves) once both succeeded -> ``engine.publish`` -> event. Rollback, pin and
unpin are command deliveries: the same lock, verifier and event/``Outcome`` reporting.
``timings`` holds the last package delivery's steps (bench/pipeline.py prints them).

Ordering, and why (docs/store.md has the long form):

* Nothing a rejection could leave behind is committed: the store write that overlaps stage and
  shadow check makes an uncommitted version (invisible after a restart, discarded on open), and
  a rejection there waits for it and discards it, so a rejected package leaves the store
  byte-for-byte unchanged (and the engine serving what it served).
* The store commit comes *before* the engine publish. A restarted daemon serves the store's
  committed ``current``. Committing first means every version that ever produced a result is
  durable and is what a restart serves: a crash between commit and publish just completes the
  update on restart (its weights passed every check, shadow check included). The other order
  would let results carry a version that a crash then silently takes back. If publish itself
  fails (it cannot, short of a bug: we hold the lock and are the only refitter), the commit is
  reverted before the failure is reported.
* The engine stage is built on the serving weights and carries only the tensors whose blob differs
  from the current manifest (a partial package on an older base brings the base's differing
  tensors along), so the staged set equals the manifest the store will commit.

``Outcome(ok, version, reason, stage, seconds)``: ``version`` is the version the request was about
(the package's, or the rollback target; None if it could not be read), ``stage`` the step that
decided (``done`` on success), ``reason`` one line on failure, ``seconds`` from the call to the
new weights serving (success; retention runs after that) or to the rejection.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .health import HealthError, ShadowCheck, WatchWindow, _get
from .delivery import (APPLY, PIN, ROLLBACK, Delivery, Origin, Verifier, no_verifier,
                       read_signature)
from .package import (DEFAULT_MAX_PACKAGE_BYTES, Package, PackageError, ReadBuffer,
                      check_against_model, check_finite, parse_package_bytes, signature_path)
from .store import Store, StoreError

__all__ = ["Pipeline", "Outcome", "NullEvents", "ALREADY_SERVING_STAGE", "UNCHANGED_STAGE",
           "already_serving_text"]

_SEEN_IDS = 256  # delivery ids remembered for idempotence (MQTT QoS 1 redelivers)
ALREADY_SERVING_STAGE = "already-applied"  # Outcome.stage of the serving package delivered again
UNCHANGED_STAGE = "unchanged"  # Outcome.stage of a pin of a pinned / unpin of an unpinned version


def already_serving_text(version) -> str:
    """What the .reason file and `refitd apply` say for the serving package delivered again
    (event update.already_applied; docs/daemon.md, "File drop", says the same)."""
    return "already serving: this very package is version %s; nothing changed" % version


@dataclass
class Outcome:
    ok: bool
    version: Optional[int]
    reason: Optional[str]
    stage: str
    seconds: float
    previous: Optional[int] = None  # the version serving before (success) / still serving (failure)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class NullEvents:
    def emit(self, kind: str, **fields: Any) -> None:
        pass


class _Reject(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage, self.reason = stage, reason


def _as_reject(e: BaseException) -> "_Reject":
    """A bug must not take the channel down: any other exception is an ``internal`` rejection."""
    if isinstance(e, _Reject):
        return e
    return _Reject("internal", "internal error: %s: %s" % (type(e).__name__, _one_line(e)))


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class _Laps:
    """``lap(name)`` records the seconds since the previous lap into ``timings`` (cleared)."""

    def __init__(self, timings: Dict[str, float]):
        timings.clear()
        self.timings, self.t = timings, time.perf_counter()

    def __call__(self, name: str) -> None:
        t = time.perf_counter()
        self.timings[name] = t - self.t
        self.t = t


def _short(fp: str) -> str:
    return fp[:23] + "..." if len(fp) > 26 else fp


class Pipeline:
    """``Pipeline(engine, store, config, events)``.

    ``config``: the daemon ``Config`` (uses ``store.max_package_bytes``, ``health.checks``,
    ``health.window``, ``model.options.allow_nonfinite``), a mapping of the same shape, or None.
    Keyword arguments override it (so the pipeline works without a config object):
    ``max_package_bytes``, ``checks`` (health check specs), ``window`` (a ``WatchWindow`` or its
    config), ``allow_nonfinite``, ``verifier``.

    ``verifier(data, signature, delivery)`` (``delivery.Verifier``): the hook the security issue
    fills in, called on the raw bytes after the size cap and before any parser; it may raise to
    refuse (stage ``signature``). None (the default, ``no_verifier``) verifies nothing.
    """

    def __init__(self, engine: Any, store: Store, config: Any = None, events: Any = None, *,
                 max_package_bytes: Optional[int] = None, checks: Optional[List[Any]] = None,
                 window: Any = None, allow_nonfinite: Optional[bool] = None,
                 verifier: Optional[Verifier] = None,
                 base_dir: Optional[str] = None):
        self.engine = engine
        self.store = store
        self.events = events if events is not None else NullEvents()
        store_cfg = _get(config, "store") if config is not None else None
        health_cfg = _get(config, "health") if config is not None else None
        model_cfg = _get(config, "model") if config is not None else None
        if max_package_bytes is None:
            max_package_bytes = _get(store_cfg, "max_package_bytes") if store_cfg is not None else None
        self.max_package_bytes = int(max_package_bytes or DEFAULT_MAX_PACKAGE_BYTES)
        if checks is None and health_cfg is not None:
            checks = _get(health_cfg, "checks")
        if base_dir is None and config is not None and _get(config, "origin"):
            origin = _get(config, "origin")
            base_dir = os.path.dirname(os.path.abspath(origin)) if os.path.exists(origin) else None
        self.health = ShadowCheck(checks or [], engine, base_dir)
        if window is None and health_cfg is not None:
            window = _get(health_cfg, "window")
        if isinstance(window, WatchWindow):
            self.window = window
            if self.window.on_fail is None:
                self.window.on_fail = self._window_failed
        else:
            self.window = WatchWindow.from_config(window or {}, on_fail=self._window_failed)
        self._auto_rollback = bool(_get(window, "rollback", True)) if window is not None else True
        if allow_nonfinite is None:
            opts = _get(model_cfg, "options") if model_cfg is not None else None
            allow_nonfinite = bool(_get(opts, "allow_nonfinite", False)) if opts is not None else False
        self.allow_nonfinite = allow_nonfinite
        self.verifier: Verifier = verifier or no_verifier
        #: the persisted version floor (trust.Trust.floor_value): a package at or below it is
        #: refused on every channel, even when the store was recovered or re-seeded below it
        self.floor: Callable[[], Optional[int]] = lambda: None
        self._lock = threading.Lock()
        self._writer: Optional[ThreadPoolExecutor] = None  # the store write beside the stage
        self._buffer = ReadBuffer()  # packages are read into it (no page faults per delivery)
        #: the last package delivery's steps, in order: name -> seconds (``Timings``)
        self.timings: Dict[str, float] = {}
        self._lap = _Laps({})
        self._seen: Dict[Any, Outcome] = {}  # (channel, delivery id) -> its outcome, oldest first
        #: ``fn(delivery, outcome)`` after every delivery, under the lock (the daemon's status)
        self.listeners: List[Callable[[Delivery, Outcome], None]] = []
        self._served_at = 0.0
        self._names = [w.name for w in engine.weights()]
        #: the last Outcome of apply/rollback (for ``status``)
        self.last: Optional[Outcome] = None

    def reconfigure(self, config: Any, base_dir: Optional[str] = None) -> None:
        """Takes the new config's shadow checks, watch window, size cap and non-finite policy
        (SIGHUP), between updates. The checks are built first: a bad one raises
        ``HealthError`` and nothing changes."""
        store_cfg = _get(config, "store")
        health_cfg = _get(config, "health")
        model_cfg = _get(config, "model")
        if base_dir is None and _get(config, "origin") and os.path.exists(_get(config, "origin")):
            base_dir = os.path.dirname(os.path.abspath(_get(config, "origin")))
        health = ShadowCheck((_get(health_cfg, "checks") if health_cfg is not None else None) or [],
                             self.engine, base_dir)
        wcfg = _get(health_cfg, "window") if health_cfg is not None else None
        window = WatchWindow.from_config(wcfg or {}, on_fail=self._window_failed)
        with self._lock:
            self.window.disarm()
            self.health = health
            self.window = window
            self._auto_rollback = bool(_get(wcfg, "rollback", True)) if wcfg is not None else True
            cap = _get(store_cfg, "max_package_bytes") if store_cfg is not None else None
            self.max_package_bytes = int(cap or DEFAULT_MAX_PACKAGE_BYTES)
            opts = _get(model_cfg, "options") if model_cfg is not None else None
            self.allow_nonfinite = bool(_get(opts, "allow_nonfinite", False)) if opts is not None else False

    # ---- start-up ------------------------------------------------------------------------

    def start(self) -> int:
        """Makes the engine serve the store's committed ``current`` and returns that version.

        An empty store is seeded with the weights the engine serves (the model file's, as
        version ``engine.version``). A current version whose blobs do not verify is replaced by
        the newest older version that does (``store.recovered`` event). Raises ``StoreError`` if
        the store holds weights for another model, or nothing loadable."""
        with self._lock:
            for note in self.store.recovered:
                self.events.emit("store.recovered", note=note)
            fp = self.engine.fingerprint
            cur = self.store.current()
            if cur is None:
                v = int(self.engine.version)
                tensors = {n: self.engine.read_weight(n) for n in self._names}
                self.store.put(v, tensors, meta={"model": fp, "source": "model",
                                                 "note": "weights of the model file"})
                self.store.commit(v, event="initial", source="model")
                return v
            model = self.store.manifest(cur).get("model")
            if model != fp:
                raise StoreError(
                    "store %s holds weights for model %s, but the engine serves model %s; "
                    "point store.path at another directory for this model"
                    % (self.store.path, _short(str(model)), _short(fp)))
            candidates = [cur] + [v for v in reversed(self.store.versions()) if v < cur]
            errors = []
            for v in candidates:
                try:
                    tensors = self.store.load(v)
                    if self.store.manifest(v).get("model") != fp:
                        raise StoreError("version %d is for another model" % v)
                    self.engine.refit(tensors, v)
                except Exception as e:  # StoreError (corrupt blob), RefitError
                    errors.append(_one_line(e))
                    continue
                if v != cur and not self.store.read_only:  # read-only: serve it, record nothing
                    self.store.commit(v, event="recovered", source="start", lost=cur,
                                      reason=errors[0])
                    self.events.emit("store.recovered", version=v, lost=cur, reason=errors[0])
                return v
            raise StoreError("no stored version can be served: " + "; ".join(errors))

    # ---- deliveries ----------------------------------------------------------------------

    def deliver(self, d: Delivery) -> Outcome:
        """Runs one delivery (a package, or a rollback / pin / unpin command) under the one
        lock, with the same event and ``Outcome`` reporting for every kind. A delivery id seen
        before is answered with the outcome it got then (a redelivery changes nothing)."""
        key = (d.origin.channel, d.origin.id) if d.origin.id is not None else None
        with self._lock:
            if key is not None and key in self._seen:
                out = self._seen[key]
                self.events.emit("update.duplicate", id=d.origin.id, source=d.source,
                                 version=out.version, ok=out.ok)
                return out
            out = self._run(d)
            for listener in list(self.listeners):
                try:
                    listener(d, out)
                except Exception as e:  # bookkeeping must not undo an update
                    self.events.emit("pipeline.error", error="listener: " + _one_line(e))
            if key is not None:
                self._seen[key] = out
                while len(self._seen) > _SEEN_IDS:
                    self._seen.pop(next(iter(self._seen)))
            return out

    def refuse(self, d: Delivery, stage: str, reason: str) -> Outcome:
        """Reports a delivery its channel could not hand over whole (a signature file too large
        or unreadable) like any rejection: one event, the listeners (status), the same Outcome."""
        with self._lock:
            out = Outcome(False, None, reason, stage, 0.0, self.store.current())
            self.events.emit("update.rejected", version=None, source=d.source, path=d.name,
                             stage=stage, reason=reason, seconds=0.0)
            for listener in list(self.listeners):
                try:
                    listener(d, out)
                except Exception as e:
                    self.events.emit("pipeline.error", error="listener: " + _one_line(e))
            self.last = out
            return out

    def _run(self, d: Delivery) -> Outcome:
        if d.command == APPLY:
            return self._deliver_package(d)
        if d.command == ROLLBACK:
            return self._deliver_rollback(d)
        return self._deliver_pin(d)

    def apply(self, path: str, source: str = "cli", fd: Optional[int] = None) -> Outcome:
        """A package file through every check (``deliver`` of a path delivery, with the
        ``.sig`` beside it as its signature); with ``fd`` it is read from that open descriptor
        (the caller keeps owning it) and ``path`` only names it."""
        path = os.fspath(path)
        origin = Origin(source, where=path)
        if fd is not None:
            return self.deliver(Delivery.of_fd(fd, origin))
        sig = signature_path(path)
        return self.deliver(Delivery.of_path(path, origin, read_signature(sig) if os.path.isfile(sig) else None))

    def _verify(self, d: Delivery, data: Any) -> None:
        try:
            self.verifier(data, d.signature, d)
        except Exception as e:
            raise _Reject("signature", _one_line(e)) from None

    def _deliver_package(self, d: Delivery) -> Outcome:
        t0 = time.perf_counter()
        source, path = d.source, d.name
        self.events.emit("update.received", path=path, source=source)
        self.window.disarm()
        previous = self.store.current()
        version: Optional[int] = None
        try:
            version, info = self._apply_locked(d)
            if info.get("already_applied"):  # the serving package again: nothing changed
                out = Outcome(True, version, None, ALREADY_SERVING_STAGE, time.perf_counter() - t0, previous)
                self.events.emit("update.already_applied", version=version, source=source, path=path)
                self.last = out
                return out
            # seconds: delivery -> serving (publish returned); retention ran after that
            out = Outcome(True, version, None, "done", self._served_at - t0, previous)
            self.events.emit("update.applied", version=version, previous=previous,
                             source=source, path=path, seconds=round(out.seconds, 6),
                             total_seconds=round(time.perf_counter() - t0, 6), **info)
            self.window.arm(version, previous)
        except (_Reject, Exception) as r:
            r = _as_reject(r)
            version = getattr(r, "version", None)
            out = Outcome(False, version, r.reason, r.stage, time.perf_counter() - t0,
                          self.store.current())
            self.events.emit("update.rejected", version=version, source=source, path=path,
                             stage=r.stage, reason=r.reason, seconds=round(out.seconds, 6))
        self.last = out
        return out

    def _apply_locked(self, d: Delivery):
        # size cap (checked on the open file before reading) -> signature over the raw bytes
        # -> parse: no parser sees a byte the verifier has not passed
        lap = self._lap = _Laps(self.timings)
        identity = hashlib.sha256()  # the package identity: once, over the raw bytes, as read
        try:
            data = d.read(self.max_package_bytes, into=self._buffer, hasher=identity)
        except PackageError as e:
            raise _Reject(e.stage, e.reason) from None
        d.sha256 = identity.hexdigest()
        lap("read | sha256")
        self._verify(d, data)
        lap("verify")
        try:
            pkg = parse_package_bytes(data, path=d.path or d.origin.where, sha256=d.sha256)
        except PackageError as e:
            raise _Reject(e.stage, e.reason) from None
        lap("parse")
        try:
            return self._apply_package(pkg, d.source)
        except _Reject as r:
            r.version = pkg.version  # type: ignore[attr-defined]
            raise

    def _apply_package(self, pkg: Package, source: str):
        engine, store = self.engine, self.store
        try:
            check_against_model(pkg, engine)
            if not self.allow_nonfinite and not self._stage_checks_finite():
                check_finite(pkg.tensors)
        except PackageError as e:
            raise _Reject(e.stage, e.reason) from None
        # version policy: strictly newer than every version ever committed
        cur, high = store.current(), store.highest()
        if pkg.version == cur and store.manifest(cur).get("package_sha256") == pkg.sha256:
            # The very package already serving, delivered again (a file re-taken after a crash
            # between commit and moving it to applied/, a QoS 1 duplicate): nothing to do.
            return pkg.version, {"already_applied": True}
        if high is not None and pkg.version <= high:
            if pkg.version == cur:
                why = "package version %d equals the serving version %d" % (pkg.version, cur)
            elif high == cur:
                why = "package version %d is older than the serving version %d" % (pkg.version, cur)
            else:
                why = ("package version %d is not newer than version %d, the highest applied "
                       "(serving %s; use rollback for older versions)" % (pkg.version, high, cur))
            raise _Reject("version", why)
        floor = self.floor()
        if floor is not None and pkg.version <= floor:
            raise _Reject("version", "package version %d is not above the version floor %d (the "
                          "highest ever accepted; older versions come back only by rollback)"
                          % (pkg.version, floor))
        if pkg.base is not None and not store.has(pkg.base):
            raise _Reject("version", "package base version %d is not in the store (stored: %s)"
                          % (pkg.base, ", ".join(map(str, store.versions())) or "none"))
        meta = {"model": pkg.model, "package_sha256": pkg.sha256, "created": pkg.created,
                "note": pkg.note, "source": source,
                "package": os.path.basename(pkg.path) if pkg.path else None,
                "package_base": pkg.base}
        base = pkg.base if pkg.base is not None else cur
        target = store.manifest(base)["tensors"] if base is not None else {}
        names = set(target) | set(pkg.tensors)
        if names != set(self._names):
            missing = sorted(set(self._names) - names)
            raise _Reject("model", "package leaves weight %s without a value (no base holds it)"
                          % json.dumps(missing[0]) if missing else "package and model weights differ")
        delta = self._delta(target, pkg.tensors)
        self._lap("check")
        # The store write (blob hashes, blob files written and fsynced, manifest) runs in the
        # background while the engine stages and shadow-checks: hashlib, file writes, the copy
        # and the inference all release the GIL. Only the commit waits for both.
        pending = self._writing().submit(self._store_write, pkg.version, pkg.tensors, pkg.base, meta)
        written = self._stage_check_commit(pkg.version, delta, cur, pending=pending,
                                           event="applied", fields={"source": source,
                                                                    "package_sha256": pkg.sha256})
        gc = self._gc()
        return pkg.version, {"tensors": len(pkg.tensors), "changed": len(written.changed),
                             "bytes": pkg.nbytes, "new_blob_bytes": written.new_bytes,
                             "pruned": gc}

    def _writing(self) -> ThreadPoolExecutor:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="refitd-store")
        return self._writer

    def _store_write(self, version: int, tensors: Dict[str, np.ndarray], base: Optional[int],
                     meta: Dict[str, Any]) -> Any:
        """The background half of an apply: the version written (not committed). Its own
        steps go to ``timings`` as ``store.*`` (they overlap stage and shadow check)."""
        t0 = time.perf_counter()
        pending, spooled = self.store.spool(version, tensors, base=base, meta=meta)
        t1 = time.perf_counter()
        self.store.write(pending, spooled)
        self.timings["store.blobs (hash | write+fsync)"] = t1 - t0
        self.timings["store.place+manifest"] = time.perf_counter() - t1
        return pending

    def _stage_checks_finite(self) -> bool:
        """Whether ``engine.stage`` refuses non-finite values itself: librefit checks them in
        the stage copy, the one pass it makes over the bytes anyway (docs/design.md)."""
        return getattr(self.engine, "allow_nonfinite", True) is False

    def _delta(self, target: Dict[str, Any], given: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The tensors to stage on the serving set: every tensor ``given`` (the package: staged
        whether or not it differs, so no hash is needed first), and each other tensor of
        ``target`` (manifest entries) that differs from the serving version's, read (verified)
        from the store. Never empty: the version must move even with the same weights."""
        cur = self.store.current()
        serving = self.store.manifest(cur)["tensors"] if cur is not None else {}
        delta: Dict[str, np.ndarray] = dict(given)
        todo = [n for n, e in target.items() if n not in given and serving.get(n) != e]
        if not delta and not todo:
            todo = [next(iter(target))]
        for name in todo:
            entry = target[name]
            try:
                delta[name] = self.store.read_blob(entry["sha256"], entry["dtype"], entry["shape"], name)
            except StoreError as e:
                raise _Reject("load", _one_line(e)) from None
        return delta

    def _stage_check_commit(self, version: int, delta: Dict[str, np.ndarray], cur: Optional[int],
                            pending: Optional[Future], event: str, fields: Dict[str, Any]) -> Any:
        """stage -> shadow check, beside the store write (``pending``: ``_store_write`` running
        in the background; None for a rollback, whose version is stored) -> commit once both
        succeeded -> publish. A rejection discards what the store write wrote."""
        engine, store = self.engine, self.store
        lap = self._lap if pending is not None else _Laps({})
        try:
            try:
                staged = engine.stage(delta, version, allow_nonfinite=self.allow_nonfinite)
            except Exception as e:  # RefitError and friends
                self._finite_reject(e, delta)
                raise _Reject("stage", _one_line(e)) from None
            lap("stage (copy + finite)")
            try:
                try:
                    self.health.run(engine, staged)
                except HealthError as e:
                    raise _Reject("health", _one_line(e)) from None
                lap("shadow check")
                written = self._written(pending)
                lap("wait for the store write")
                high = store.highest()
                try:
                    store.commit(version, event=event, **fields)
                except (OSError, StoreError) as e:
                    if pending is not None:
                        self._quiet(store.discard, version)
                    raise _Reject("commit", "cannot commit version %d: %s" % (version, _one_line(e))) from None
                warnings = getattr(store, "warnings", None)
                while warnings:
                    self.events.emit("store.warning", warning=warnings.pop(0))
                lap("commit")
                try:
                    engine.publish(staged)
                except Exception as e:
                    self._quiet(store.revert, version, cur, high, reason=_one_line(e))
                    raise _Reject("publish", _one_line(e)) from None
                self._served_at = time.perf_counter()
                lap("publish")
                return written
            finally:
                staged.close()
        except BaseException:
            self._undo_write(pending, version)
            raise

    def _finite_reject(self, e: Exception, delta: Dict[str, np.ndarray]) -> None:
        """A stage that refused non-finite values is a ``finite`` rejection, with the message
        ``check_finite`` gives (its pass runs only here, on the refused tensors)."""
        if getattr(e, "status", None) != "REFIT_ERR_NONFINITE":
            return
        try:
            check_finite(delta)
        except PackageError as pe:
            raise _Reject("finite", pe.reason) from None

    def _written(self, pending: Optional[Future]) -> Any:
        if pending is None:
            return None
        try:
            return pending.result()
        except StoreError as e:
            raise _Reject("store", _one_line(e)) from None

    def _undo_write(self, pending: Optional[Future], version: int) -> None:
        """A rejection after the background write started: wait for it (it never runs into the
        next delivery) and discard what it wrote, so the store is as it was. Not after the
        commit point: a publish failure is undone by ``store.revert``."""
        if pending is None:
            return
        wait([pending])
        if pending.exception() is None and self.store.has(version) and self.store.current() != version \
                and (self.store.highest() is None or version > self.store.highest()):
            self._quiet(self.store.discard, version)

    def _quiet(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        try:
            fn(*args, **kw)
        except Exception as e:
            self.events.emit("store.error", error=_one_line(e))

    def _gc(self) -> List[int]:
        try:
            return self.store.gc()["pruned"]
        except Exception as e:  # retention failing must not fail an applied update
            self.events.emit("store.error", error="retention: " + _one_line(e))
            return []

    # ---- rollback ------------------------------------------------------------------------

    def rollback(self, to: Optional[int] = None, source: str = "cli",
                 reason: Optional[str] = None, _expect_current: Optional[int] = None) -> Outcome:
        """Re-applies a stored version (default: the newest stored version older than the
        current one) through the same checks as ``apply``, except the newer-version rule
        (``deliver`` of a rollback command)."""
        return self.deliver(Delivery.of_command(ROLLBACK, Origin(source), to=to, reason=reason,
                                                expect_current=_expect_current))

    def _deliver_rollback(self, d: Delivery) -> Outcome:
        t0 = time.perf_counter()
        to, reason, source = d.args.get("to"), d.args.get("reason"), d.source
        expect = d.args.get("expect_current")
        previous = self.store.current()
        try:
            if expect is not None and previous != expect:
                raise _Reject("lookup", "version %d no longer serves (now %s); rollback skipped"
                              % (expect, previous))
            self.window.disarm()
            self._verify(d, d.read(self.max_package_bytes))
            to = self._rollback_locked(to, previous, source, reason)
            out = Outcome(True, to, None, "done", time.perf_counter() - t0, previous)
            self.events.emit("update.rolled_back", version=to, previous=previous,
                             source=source, reason=reason, seconds=round(out.seconds, 6))
        except (_Reject, Exception) as r:
            r = _as_reject(r)
            out = Outcome(False, to, r.reason, r.stage, time.perf_counter() - t0,
                          self.store.current())
            self.events.emit("update.rollback_failed", version=to, source=source,
                             stage=r.stage, reason=r.reason, seconds=round(out.seconds, 6))
        self.last = out
        return out

    def _deliver_pin(self, d: Delivery) -> Outcome:
        """pin / unpin: the store keeps a pinned version through retention. Both idempotent: a
        second pin or unpin succeeds at stage ``unchanged`` (UNCHANGED_STAGE), with no event."""
        t0 = time.perf_counter()
        v = d.args.get("version")
        try:
            self._verify(d, d.read(self.max_package_bytes))
            try:
                changed = (self.store.pin if d.command == PIN else self.store.unpin)(v)
            except StoreError as e:
                raise _Reject("lookup", _one_line(e)) from None
            if changed:
                self.events.emit("store.pinned" if d.command == PIN else "store.unpinned", version=v)
            return Outcome(True, v, None, "done" if changed else UNCHANGED_STAGE,
                           time.perf_counter() - t0, self.store.current())
        except (_Reject, Exception) as r:
            r = _as_reject(r)
            self.events.emit("store.%s_failed" % d.command, version=v, source=d.source,
                             stage=r.stage, reason=r.reason)
            return Outcome(False, v, r.reason, r.stage, time.perf_counter() - t0, self.store.current())

    def _rollback_locked(self, to: Optional[int], cur: Optional[int], source: str,
                         reason: Optional[str]) -> int:
        store = self.store
        stored = store.versions()
        if cur is None:
            raise _Reject("lookup", "the store has no current version to roll back from")
        if to is None:
            older = [v for v in stored if v < cur]
            if not older:
                raise _Reject("lookup", "no stored version older than %d to roll back to" % cur)
            to = older[-1]
        if to == cur:
            raise _Reject("lookup", "version %d is already serving" % to)
        if not store.has(to):
            raise _Reject("lookup", "version %d is not in the store (stored: %s)"
                          % (to, ", ".join(map(str, stored)) or "none"))
        man = store.manifest(to)
        if man.get("model") != self.engine.fingerprint:
            raise _Reject("model", "stored version %d is for model %s, the engine serves %s"
                          % (to, _short(str(man.get("model"))), _short(self.engine.fingerprint)))
        delta = self._delta(man["tensors"], {})
        if not self.allow_nonfinite and not self._stage_checks_finite():
            try:
                check_finite(delta)
            except PackageError as e:
                raise _Reject("finite", e.reason) from None
        fields = {"source": source}
        if reason:
            fields["reason"] = reason
        self._stage_check_commit(to, delta, cur, pending=None, event="rolled_back", fields=fields)
        return to

    # ---- watch window --------------------------------------------------------------------

    def observe(self, result: Any) -> None:
        """Runner observer: feeds the post-swap watch window."""
        self.window.observe(result)

    def _window_failed(self, version: int, previous: Optional[int], reason: str) -> None:
        self.events.emit("update.watch_failed", version=version, previous=previous, reason=reason)
        if not self._auto_rollback or previous is None:
            return
        self.rollback(to=previous, source="watch", reason=reason, _expect_current=version)
