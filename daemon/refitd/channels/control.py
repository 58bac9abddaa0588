"""The control channel: the CLI's requests on the control socket (control.py is the socket
transport: JSON lines, descriptors, the client) turned into deliveries and answers.

``apply`` carries the package as the first descriptor (``refitd apply`` opens it as the caller:
the daemon's sandbox cannot see the caller's paths) and its detached signature, when there is
one, as the second; an absolute ``path`` without descriptors is read by the daemon itself, with
the ``.sig`` beside it. ``rollback``, ``pin`` and ``unpin`` are command deliveries. ``status``,
``versions``, ``infer`` and ``reload`` are answered by the daemon (``ctx.services``); ``infer``
passes the gate so shutdown waits for it before the engine closes.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from ..control import AlreadyRunning, ControlError, ControlServer
from ..delivery import PIN, ROLLBACK, UNPIN, Delivery, command_signature, read_signature
from ..package import PackageError, signature_path
from ..pipeline import UNCHANGED_STAGE
from ..tensorwire import WireError, from_json, to_json
from .base import Channel, Stopping, register

__all__ = ["ControlChannel"]


def _version_arg(req: Dict[str, Any], key: str, required: bool = True) -> Optional[int]:
    v = req.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ControlError("%s must be a version number (an integer >= 0), got %r" % (key, v))
    return v


def _sig(req: Dict[str, Any]) -> Optional[bytes]:
    """A command's signature envelope (``"sig"``: its JSON text), when the request has one."""
    try:
        return command_signature(req)
    except ValueError as e:
        raise ControlError(str(e)) from None


@register("control")
class ControlChannel(Channel):
    source = "cli"
    order = 90  # last: once the CLI reaches the daemon, everything runs

    def __init__(self, path: str, mode: int, pipeline, events, services, gate=None):
        super().__init__(pipeline, events, gate)
        self.path, self.mode, self.services = path, mode, services
        self.server: Optional[ControlServer] = None

    @classmethod
    def from_config(cls, cfg: Any, ctx) -> "ControlChannel":
        return cls(cfg.control.socket, cfg.control.mode, ctx.pipeline, ctx.events, ctx.services,
                   gate=ctx.gate)

    def describe(self) -> str:
        return "the control socket %s" % self.path

    def handlers(self) -> Dict[str, Any]:
        s = self.services
        return {
            "ping": lambda req: {"pid": os.getpid()},
            "status": lambda req: s.status(),
            "versions": lambda req: s.versions(),
            "apply": self._apply,
            "rollback": lambda req: self._command(ROLLBACK, _sig(req), to=_version_arg(req, "to", required=False)),
            "pin": lambda req: self._pin(PIN, req),
            "unpin": lambda req: self._pin(UNPIN, req),
            "infer": self._infer,
            "reload": lambda req: s.reload(),
        }

    def start(self) -> None:
        self.server = ControlServer(self.path, self.mode, self.handlers(), self.events)
        try:
            self.server.start()
        except (AlreadyRunning, OSError):
            self.server = None
            raise

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    # ---- deliveries ------------------------------------------------------------------------

    def _run(self, delivery: Delivery):
        try:
            return self.deliver(delivery)
        except Stopping as e:
            raise ControlError(str(e)) from None

    def _answer(self, o) -> Dict[str, Any]:
        resp = {"ok": bool(o.ok), "version": o.version, "stage": o.stage, "seconds": o.seconds,
                "serving": self.services.engine.version}
        if not o.ok:
            resp["error"] = o.reason or "update failed"
        return resp

    def _apply(self, req: Dict[str, Any]) -> Dict[str, Any]:
        path = req.get("path")
        if not isinstance(path, str) or not path:
            raise ControlError("apply needs a package path")
        fds = getattr(req, "fds", ())
        if len(fds) > 2:
            raise ControlError("apply takes the package and at most one signature descriptor, got %d" % len(fds))
        origin = self.origin(where=path)
        if not fds and not os.path.isabs(path):
            raise ControlError("apply needs an absolute path (the daemon's working directory is not yours)")
        d = Delivery.of_fd(fds[0], origin) if fds else Delivery.of_path(path, origin)
        try:
            if fds:
                sig = read_signature(path + ".sig", fd=fds[1]) if len(fds) == 2 else None
            else:
                sp = signature_path(path)
                sig = read_signature(sp) if os.path.isfile(sp) else None
        except PackageError as e:  # reported like any rejection (status, events)
            return self._answer(self.pipeline.refuse(d, "signature", e.reason))
        d.signature = sig
        return self._answer(self._run(d))

    def _command(self, command: str, sig: Optional[bytes], **args: Any) -> Dict[str, Any]:
        return self._answer(self._run(Delivery.of_command(command, self.origin(), sig, **args)))

    def _pin(self, command: str, req: Dict[str, Any]) -> Dict[str, Any]:
        v = _version_arg(req, "version")
        o = self._run(Delivery.of_command(command, self.origin(), _sig(req), version=v))
        if not o.ok:
            raise ControlError(o.reason)
        return {"version": v, "pinned": self.pipeline.store.pins(), "changed": o.stage != UNCHANGED_STAGE}

    def _infer(self, req: Dict[str, Any]) -> Dict[str, Any]:
        engine = self.services.engine
        raw = req.get("inputs")
        specs = engine.inputs()
        if not isinstance(raw, dict) or not raw:
            raise ControlError("infer needs inputs: {name: {dtype, shape, data}}")
        if list(raw) == [""] and len(specs) == 1:  # "the only input"
            raw = {specs[0].name: raw[""]}
        try:
            inputs = {name: from_json(spec, name) for name, spec in raw.items()}
        except WireError as e:
            raise ControlError("input " + str(e)[len("tensor "):]) from None
        t0 = time.perf_counter()
        try:
            with self.gate.enter():  # shutdown waits for it before the engine closes
                outputs, version = engine.infer(inputs)
        except Stopping as e:
            raise ControlError(str(e)) from None
        except Exception as e:
            raise ControlError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return {"version": version, "seconds": round(time.perf_counter() - t0, 6),
                "outputs": {k: to_json(v) for k, v in outputs.items()}}
