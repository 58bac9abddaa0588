"""The refitd process: start-up, recovery, the main loop, signals, shutdown.

Start-up order (docs/daemon.md):
  1. events (log), sd_notify (NOTIFY_SOCKET popped from the environment), signal self-pipe
  2. engine (the model on its backend)
  3. store (its own crash recovery runs on open: uncommitted versions and temp files go)
  4. serve the store's committed ``current``: refit it into the engine before any worker starts
  5. pipeline (+ the post-swap watch window), workers, file-drop watcher, control socket, metrics
  6. READY=1
Signals are handled nobodd-style: the handler only writes the signal number to a pipe; the main
loop selects on it. SIGTERM / SIGINT: stop taking updates, drain the workers, exit 0 (a second
one forces exit 1). SIGHUP: reload the config where that is safe (log level and format, health
checks and window, store retention) and report what needs a restart.

Exit codes: 0 clean stop; 1 a start-up failure (model, store, socket in use); 2 a config error.
"""
from __future__ import annotations

import dataclasses
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from . import config as _config
from .channels.base import ChannelContext, Gate, registered
from .control import AlreadyRunning, ControlError
from .log import Events
from .sdnotify import Notifier

__all__ = ["Daemon", "run", "StartupError"]


class StartupError(Exception):
    """A one-line reason the daemon cannot start."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class Daemon:
    def __init__(self, cfg: _config.Config, events: Optional[Events] = None,
                 notifier: Optional[Notifier] = None, config_path: Optional[str] = None):
        self.cfg = cfg
        self.config_path = config_path
        self.events = events or Events(cfg.log.format, cfg.log.level)
        self.notifier = notifier or Notifier()
        self.engine = None
        self.store = None
        self.trust = None
        self.pipeline = None
        self.runner = None
        self.channels: List[Any] = []
        self.metrics = None
        self.window = None
        self.updates = None
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.last_update: Optional[Dict[str, Any]] = None
        self._last_lock = threading.Lock()
        self.gate = Gate()  # deliveries and inferences in flight; shutdown waits for them
        self._reload_lock = threading.Lock()
        self._rpipe = self._wpipe = -1

    # ---- start-up ----------------------------------------------------------------------

    def open(self) -> None:
        """Steps 2-5 of start-up. Raises StartupError with a one-line reason."""
        cfg = self.cfg
        from .engine import Engine, EngineError
        from .metrics import UpdateCounter
        from .store import Store, StoreError

        self.updates = UpdateCounter()
        self.events.subscribe(self.updates)

        try:
            self.engine = Engine.open(cfg.model.path, **cfg.model.engine_args())
        except EngineError as e:
            raise StartupError("cannot open the model %s on backend %s: %s"
                               % (cfg.model.path, cfg.model.backend, _first_line(e)))
        except OSError as e:  # the native library itself
            raise StartupError("cannot load librefit: %s" % _first_line(e))
        try:
            self.store = Store(cfg.store.path, keep=cfg.store.keep)
        except (StoreError, OSError) as e:
            raise StartupError("cannot open the store: %s" % _first_line(e))

        from .pipeline import Pipeline
        try:
            self.pipeline = Pipeline(self.engine, self.store, cfg, self.events)
        except Exception as e:  # a health check that does not fit the model, ...
            raise StartupError("cannot set up the update pipeline: %s" % _first_line(e))
        self._open_trust()
        # Serve the store's committed current before any worker starts (the pipeline seeds an
        # empty store with the model file's weights and falls back past a corrupt version).
        try:
            version = self.pipeline.start()
        except (StoreError, OSError) as e:
            raise StartupError("cannot serve from the store: %s" % _first_line(e))
        self.events.emit("store.serving", version=version, current=self.store.current())
        if self.store.read_only:
            self.events.emit("store.read_only", path=self.store.path, reason=self.store.read_only,
                             detail="serving version %d; updates, pins and rollbacks are refused"
                             % version)

        from .runner import Runner
        try:
            self.runner = Runner.from_config(cfg, self.engine, self.events)
        except OSError as e:  # the jsonl sink's file, ...
            raise StartupError("cannot open the %s sink: %s" % (cfg.sink.type, _first_line(e)))
        # Every result feeds the post-swap watch window (health.WatchWindow via the pipeline).
        self.runner.add_observer(self.pipeline.observe)
        # One listener remembers the last update, whichever channel (or the window) made it.
        self.pipeline.listeners.append(self._record)

    def _open_trust(self) -> None:
        """The verifier on every delivery's raw bytes, the persisted version floor (never below
        what the store has committed) and its listener (trust.py, docs/security.md)."""
        from .signing import SignatureError
        from .trust import Trust
        try:
            self.trust = Trust.from_config(self.cfg, self.engine.fingerprint, self.events,
                                           floor_at_least=self.store.highest())
        except SignatureError as e:
            raise StartupError("cannot set up signature checks: %s" % _first_line(e))
        self.pipeline.verifier = self.trust.verify
        self.pipeline.floor = self.trust.floor_value
        self.pipeline.listeners.append(self.trust.on_outcome)

    def start_services(self) -> None:
        cfg = self.cfg
        try:
            self.runner.start()
        except AlreadyRunning as e:
            raise StartupError("cannot start the %s source: %s" % (cfg.source.type, e))
        except OSError as e:  # the inference socket or the npy-dir folder
            raise StartupError("cannot start the %s source: %s" % (cfg.source.type, _first_line(e)))
        ctx = ChannelContext(self.pipeline, self.events, self.gate, services=self)
        for cls in registered():
            ch = cls.from_config(cfg, ctx)
            if ch is None:
                continue
            if cls.name == "control" and cfg.metrics.listen:
                self._start_metrics()  # before the control socket, which comes up last
            try:
                ch.start()
            except AlreadyRunning as e:
                raise StartupError("%s (is another refitd running?)" % e)
            except OSError as e:
                raise StartupError("cannot start %s: %s" % (ch.describe(), _first_line(e)))
            self.channels.append(ch)

    def _start_metrics(self) -> None:
        from .metrics import MetricsServer
        listen = self.cfg.metrics.listen
        self.metrics = MetricsServer(listen, self.metrics_text)
        try:
            self.metrics.start()
        except OSError as e:
            raise StartupError("cannot listen on %s:%d for metrics: %s"
                               % (listen[0], listen[1], _first_line(e)))

    # ---- state for status / versions ---------------------------------------------------

    def _record(self, delivery, outcome) -> None:
        if delivery.command not in ("apply", "rollback"):
            return  # pins are not updates
        with self._last_lock:
            self.last_update = {"ok": bool(outcome.ok), "action": delivery.command,
                                "version": outcome.version, "source": delivery.source,
                                "reason": outcome.reason, "stage": outcome.stage,
                                "seconds": outcome.seconds, "file": delivery.origin.where,
                                "at": time.time()}

    def status(self) -> Dict[str, Any]:
        eng = self.engine
        out: Dict[str, Any] = {
            "pid": os.getpid(),
            "serving": {"version": eng.version, "fingerprint": eng.fingerprint, "backend": eng.backend,
                        "model": self.cfg.model.path},
            "uptime": round(time.monotonic() - self.started, 3),
            "started": self.started_wall,
            "inference": self.runner.status() if self.runner else None,
            "last_update": self.last_update,
            "store": {"path": self.store.path, "current": self.store.current(),
                      "versions": self.store.versions(), "pinned": self.store.pins(),
                      "keep": self.store.keep},
            "watch": self.cfg.watch.path,
            "config": self.config_path,
            "updates": self.updates.snapshot() if self.updates else {},
            "degraded": self.degraded(),
            "trust": self.trust.describe() if self.trust is not None else None,
            "channels": {ch.name: st for ch, st in ((c, c.state()) for c in self.channels)
                         if st is not None},
        }
        return out

    def degraded(self) -> List[str]:
        """One line per reason the daemon serves but cannot do all it should (empty: healthy)."""
        out = []
        if self.store is not None and self.store.read_only:
            out.append("store %s is read-only (%s): serving version %s, updates are refused"
                       % (self.store.path, self.store.read_only, self.store.current()))
        if self.trust is not None and self.trust.degraded:
            out.append(self.trust.degraded)
        if self.runner is not None:
            dead = self.runner.dead()
            if dead:
                out.append("inference workers %s have died" % ",".join(map(str, dead)))
        return out

    def versions(self) -> Dict[str, Any]:
        from .store import StoreError
        cur = self.store.current()
        pins = set(self.store.pins())
        rows = []
        for v in self.store.versions():
            try:
                m = self.store.manifest(v)
            except StoreError:
                continue
            rows.append({
                "version": v, "current": v == cur, "pinned": v in pins,
                "base": m.get("base"), "stored": m.get("stored"), "created": m.get("created"),
                "note": m.get("note"), "source": m.get("source"),
                "changed": len(m.get("changed") or []), "tensors": len(m.get("tensors") or {}),
                "bytes": sum(int(t.get("nbytes", 0)) for t in (m.get("tensors") or {}).values()),
            })
        return {"current": cur, "serving": self.engine.version, "highest": self.store.highest(),
                "keep": self.store.keep, "versions": rows}

    def metrics_text(self) -> str:
        from .metrics import render
        return render(self.engine.version, self.runner.stats.snapshot(),
                      self.updates.snapshot(), time.monotonic() - self.started)

    # ---- reload (SIGHUP) ---------------------------------------------------------------

    def reload(self) -> Dict[str, Any]:
        """Re-reads the config file; applies what is safe to change live, reports the rest."""
        with self._reload_lock:
            self._reopen_sink()
            if not self.config_path:
                msg = "no config file to reload (running the built-in demo config)"
                self.events.emit("daemon.reload_partial", reason=msg)
                raise ControlError(msg)
            self.notifier.reloading()
            try:
                new = _config.load_config(self.config_path)
            except _config.ConfigError as e:
                self.events.emit("config.error", detail=e.report().replace("\n", "; "))
                self.notifier.ready(self._status_line())
                raise ControlError("config not reloaded: %s" % e.report().replace("\n", "; "))
            old = self.cfg
            changed: List[str] = []
            if new.log.level != old.log.level:
                self.events.level = new.log.level
                changed.append("log.level")
            if new.log.format != old.log.format:
                self.events.fmt = new.log.format
                changed.append("log.format")
            if new.store.keep != old.store.keep:
                self.store.keep = new.store.keep
                changed.append("store.keep")
            if new.store.max_package_bytes != old.store.max_package_bytes:
                changed.append("store.max_package_bytes")
            if new.health != old.health:
                changed.append("health")
            if self.pipeline is not None and ("health" in changed or "store.max_package_bytes" in changed):
                try:
                    self._reconfigure_pipeline(new)
                except Exception as e:  # e.g. a golden check that does not fit the model
                    changed = [c for c in changed if c not in ("health", "store.max_package_bytes")]
                    self.events.emit("config.error", detail="health checks not reloaded: %s" % _first_line(e))
                    new = dataclasses.replace(new, health=old.health,
                                              store=dataclasses.replace(new.store, max_package_bytes=old.store.max_package_bytes))
            self.cfg = dataclasses.replace(old, log=new.log, health=new.health,
                                           store=dataclasses.replace(old.store, keep=new.store.keep,
                                                                     max_package_bytes=new.store.max_package_bytes))
            unchanged = []
            for section in _config.SECTIONS:
                if section in ("log", "health"):
                    continue
                a, b = getattr(old, section), getattr(new, section)
                if section == "store":  # what SIGHUP applies live does not need a restart
                    a, b = (dataclasses.replace(x, keep=1, max_package_bytes=1) for x in (a, b))
                if a != b:
                    unchanged.append(section)
            self.events.emit("daemon.reloaded" if not unchanged else "daemon.reload_partial",
                             changed=",".join(changed) or "nothing",
                             needs_restart=",".join(unchanged) or None)
            self.notifier.ready(self._status_line())
            return {"changed": changed, "needs_restart": unchanged}

    def _reopen_sink(self) -> None:
        # logrotate renames the results file and sends SIGHUP: write on into a new one
        reopen = getattr(self.runner.sink, "reopen", None) if self.runner else None
        if reopen is None:
            return
        try:
            reopen()
            self.events.emit("sink.reopened", path=getattr(self.cfg.sink, "path", None))
        except OSError as e:
            self.events.emit("sink.error", error="cannot reopen: %s" % _first_line(e))

    def _reconfigure_pipeline(self, new: _config.Config) -> None:
        """Swaps the pipeline's shadow checks, watch window and size cap for the new config's,
        between updates (model.* needs a restart: the pipeline keeps the running model's)."""
        self.pipeline.reconfigure(dataclasses.replace(new, model=self.cfg.model))

    # ---- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        self.gate.close()  # new deliveries and inferences are refused from here
        for ch in reversed(self.channels):
            ch.stop()
        idle = self.gate.drain(30.0)  # updates and inferences already running finish
        drained = True
        if self.runner is not None:
            drained = self.runner.stop(drain=True)
        if self.metrics is not None:
            self.metrics.stop()
        if self.engine is not None and drained and idle:
            self.engine.close()
        if self.store is not None:
            self.store.close()

    def _status_line(self) -> str:
        try:
            st = self.runner.stats.snapshot() if self.runner else {}
            return "serving version %s, %.0f inferences/s" % (self.engine.version, st.get("per_second") or 0.0)
        except Exception:
            return "running"


# ---- process main ------------------------------------------------------------------------

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run(cfg: _config.Config, config_path: Optional[str] = None) -> int:
    """Runs the daemon until SIGTERM/SIGINT. Returns the process exit code."""
    events = Events(cfg.log.format, cfg.log.level)
    notifier = Notifier.from_env()
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)

    def on_signal(signum, _frame):
        try:
            os.write(wfd, bytes([signum]))
        except OSError:
            pass

    old = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    d = Daemon(cfg, events, notifier, config_path)
    events.emit("daemon.starting", pid=os.getpid(), config=config_path or "(demo)", model=cfg.model.path,
                backend=cfg.model.backend)
    code = 0
    try:
        try:
            d.open()
            d.start_services()
        except StartupError as e:
            events.emit("daemon.failed", reason=str(e))
            sys.stderr.write("refitd: %s\n" % e)
            notifier.notify("STATUS=failed: %s" % e, "ERRNO=1")
            d.close()
            return 1
        st = d.status()
        events.emit("daemon.started", version=st["serving"]["version"], backend=st["serving"]["backend"],
                    fingerprint=st["serving"]["fingerprint"], threads=cfg.workers.threads,
                    source=cfg.source.type, sink=cfg.sink.type, control=cfg.control.socket,
                    watch=cfg.watch.path, metrics=("%s:%d" % cfg.metrics.listen) if cfg.metrics.listen else None)
        notifier.ready(d._status_line())

        interval = notifier.watchdog_interval
        tick = min(interval, 5.0) if interval else 5.0
        next_status = time.monotonic() + 5.0
        stopping = False
        reported_stall = False
        while not stopping:
            try:
                ready, _, _ = select.select([rfd], [], [], tick)
            except InterruptedError:
                ready = []
            if ready:
                try:
                    data = os.read(rfd, 64)
                except BlockingIOError:
                    data = b""
                for signum in data:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        stopping = True
                        events.emit("daemon.stopping", signal=signal.Signals(signum).name)
                    elif signum == signal.SIGHUP and not stopping:
                        try:
                            d.reload()
                        except ControlError:
                            pass  # already reported as an event
            if interval:
                # Ping only while every worker comes round its loop: a worker stuck in an
                # inference for a whole watchdog period means a wedged process, and systemd
                # should restart it.
                stuck = d.runner.stalled(interval * 2) if d.runner else []
                if not stuck:
                    notifier.watchdog_ping()
                    reported_stall = False
                elif not reported_stall:
                    events.emit("runner.stalled", workers=stuck, seconds=round(interval * 2, 3))
                    reported_stall = True
            if time.monotonic() >= next_status:
                notifier.status(d._status_line())
                next_status = time.monotonic() + 5.0

        notifier.stopping("draining workers")

        # A second SIGTERM/SIGINT while draining forces the exit.
        def force(signum, _frame):
            os._exit(1)
        signal.signal(signal.SIGTERM, force)
        signal.signal(signal.SIGINT, force)
        t0 = time.monotonic()
        served = d.runner.stats.snapshot()["inferences_total"] if d.runner else 0
        d.close()
        events.emit("daemon.stopped", seconds=round(time.monotonic() - t0, 3), inferences=served)
        return code
    finally:
        for s, h in old.items():
            try:
                signal.signal(s, h)
            except (ValueError, TypeError):
                pass
        os.close(rfd)
        os.close(wfd)
        notifier.close()
