"""The MQTT channel: the fleet device (refitd.fleet.device) on the channel base.

What arrives over MQTT becomes a ``Delivery`` like on every channel: a rebuilt package (its
sha256 already matched the manifest's) as a path delivery, ``where`` the desired topic, its
``signature`` the envelope the desired state carried; a cmd message's rollback/pin/unpin as a
command delivery whose ``payload`` is the message as received and ``signature`` its ``sig``.
The trust layer (trust.py) checks both in the pipeline; ``check_announced`` lets the device run
the same package checks on the desired state before it fetches anything. paho is imported only
when the channel starts.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ..delivery import PIN, ROLLBACK, UNPIN, Delivery, command_signature
from .base import Channel, Stopping, register

__all__ = ["MqttChannel"]

_COMMANDS = {"rollback": ROLLBACK, "pin": PIN, "unpin": UNPIN}


@register("mqtt")
class MqttChannel(Channel):
    order = 40  # before the control socket

    def __init__(self, settings: Any, partial_dir: str, pipeline, events, services, gate=None):
        super().__init__(pipeline, events, gate)
        self.s, self.partial, self.services = settings, partial_dir, services
        self.device = None

    @classmethod
    def from_config(cls, cfg: Any, ctx) -> Optional["MqttChannel"]:
        m = cfg.mqtt
        if not m.enabled:
            return None
        return cls(m, m.partial_dir or os.path.join(cfg.store.path, "fleet"), ctx.pipeline,
                   ctx.events, ctx.services, gate=ctx.gate)

    def describe(self) -> str:
        return "the MQTT channel (broker %s, fleet %s)" % (self.s.url, self.s.fleet)

    # the device's view of the daemon
    @property
    def engine(self) -> Any:
        return self.services.engine

    @property
    def store(self) -> Any:
        return self.pipeline.store

    def status(self) -> Dict[str, Any]:
        return self.services.status()

    def state(self) -> Optional[Dict[str, Any]]:
        """The broker link (connected, or why not) and the device's last update: refusals made
        before any chunk is fetched (the signature on a desired state) never reach the pipeline,
        so this is where ``refitd status`` shows them."""
        dev = self.device
        if dev is None:
            return {"broker": self.s.url, "connected": False, "error": "not started"}
        link = dev.link
        return {"broker": self.s.url, "fleet": self.s.fleet, "connected": link.connected.is_set(),
                "error": None if link.connected.is_set() else (link.error or "connecting"),
                "connects": link.connects, "state": dev.state, "last_update": dev.last_update,
                "transfer": dev.transfer.progress() if dev.transfer is not None else None,
                "last_rejected_chunk": dev.last_rejected_chunk}

    def trust_floor(self) -> Optional[int]:
        trust = getattr(self.services, "trust", None)
        return trust.floor_value() if trust is not None else None

    def check_announced(self, signature: Optional[bytes], sha256: str, size: int) -> Optional[Dict[str, Any]]:
        """The trust policy's verdict on a desired state, before any chunk is fetched: the
        verified ``signed`` part, or None when unsigned and not required (trust.TrustError to
        refuse). No trust policy (a daemon without one): nothing to check."""
        trust = getattr(self.services, "trust", None)
        if trust is None:
            return None
        return trust.check_announced(signature, sha256, size, self.origin().channel)

    def start(self) -> None:
        """The broker being down is no start-up error: the channel reconnects on its own."""
        from ..fleet.device import FALSE, FleetDevice
        from ..fleet.link import Link, LinkError, LinkOptions
        from ..fleet import topics
        from ..runner import MqttSink
        m = self.s
        opts = LinkOptions(url=m.url, client_id=m.device_id, protocol=m.protocol,
                           keepalive=m.keepalive, cafile=m.cafile, certfile=m.certfile,
                           keyfile=m.keyfile, username=m.username, password_file=m.password_file,
                           backoff_max=m.backoff_max, clean=False)
        try:
            link = Link(opts, will=(topics.online(m.fleet, m.device_id), FALSE))
        except LinkError as e:
            raise OSError(str(e)) from None
        self.device = FleetDevice(m, link, self, self.partial, deliver=self.apply_path).start()
        runner = getattr(self.services, "runner", None)
        if runner is not None and isinstance(runner.sink, MqttSink):
            runner.sink.target = self.device
        self.events.emit("mqtt.started", broker=m.url, fleet=m.fleet, group=m.group,
                         client_id=m.device_id)

    def stop(self) -> None:
        if self.device is not None:
            self.device.stop()  # online=false before the clean disconnect

    def apply_path(self, path: str, where: Optional[str] = None,
                   signature: Optional[bytes] = None) -> Any:
        return self.deliver(Delivery.of_path(path, self.origin(where=where), signature))

    def command(self, req: Dict[str, Any], payload: Optional[bytes] = None) -> Dict[str, Any]:
        """rollback / pin / unpin from the cmd topic; the answer for cmd/response."""
        cmd = _COMMANDS[req["cmd"]]
        args: Dict[str, Any] = {}
        key = "to" if cmd == ROLLBACK else "version"
        v = req.get(key)
        if v is not None or cmd != ROLLBACK:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                return {"ok": False, "error": "%s must be a version number (an integer >= 0), got %r" % (key, v)}
            args[key] = v
        try:
            sig = command_signature(req)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        try:
            o = self.deliver(Delivery.of_command(cmd, self.origin(where="cmd"), sig, payload=payload, **args))
        except Stopping as e:
            return {"ok": False, "error": str(e)}
        resp = {"ok": bool(o.ok), "version": o.version, "stage": o.stage,
                "serving": self.engine.version}
        if not o.ok:
            resp["error"] = o.reason or "%s failed" % cmd
        if cmd in (PIN, UNPIN):
            resp["pinned"] = self.store.pins()
        return resp
