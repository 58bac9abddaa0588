"""The daemon's MQTT channel: presence, status, events, desired state, commands, results.

One worker thread does everything: paho's callbacks only put messages on ``link.inbox``, and the
worker reads it, reconciles the desired state, drives the ``Transfer`` and hands the rebuilt
package to the pipeline (a ``Delivery``, like every other channel). Inference never waits on any
of it; a broker that is down costs a status line and a reconnect loop with jittered backoff.

Device state machine (docs/mqtt.md): ``idle`` -> ``downloading`` -> ``applying`` ->
``watching`` (post-swap window armed) -> ``serving``; or ``rejected`` / ``rolled_back``; and
``offline`` as the others see it (the Last Will).
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ..atomic import write_atomic
from . import manifest as _manifest
from . import topics, wire
from .link import Link, LinkError
from .transfer import Transfer, TransferError

TRUE, FALSE = b"true", b"false"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class FleetDevice:
    """``host`` is the daemon side (the MQTT channel, channels/mqtt.py): ``.pipeline``,
    ``.store``, ``.engine``, ``.events``, ``status()`` (the control socket's status dict),
    ``command(req, payload)`` (rollback/pin/unpin as deliveries, ``req["sig"]`` their
    signature), ``check_announced(signature, sha256, size)`` (the trust policy on a desired
    state), ``trust_floor()`` (the version floor, or None) and ``apply_path(path, where,
    signature)`` (a rebuilt package as a delivery)."""

    def __init__(self, settings: Any, link: Link, host: Any, partial_dir: str,
                 deliver: Optional[Callable[[str, str, Optional[bytes]], Any]] = None):
        self.s = settings
        self.link = link
        self.host = host
        self.fleet, self.id, self.group = settings.fleet, settings.device_id, settings.group
        self.partial = partial_dir
        os.makedirs(partial_dir, exist_ok=True)
        self.deliver = deliver or host.apply_path
        self.desired: Dict[str, Optional[Dict[str, Any]]] = {"fleet": None, "group": None}
        self.transfer: Optional[Transfer] = None
        self.state = "idle"
        self.last_update: Optional[Dict[str, Any]] = None
        self.last_rejected_chunk: Optional[Dict[str, Any]] = None
        self.outcomes = self._load_outcomes()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_status: Optional[bytes] = None
        self._next_status = 0.0
        self._results_tokens = float(settings.results_rate)
        self._results_t = time.monotonic()
        self.received_total = 0
        self._last_pub = 0.0
        link.on_up = self._on_up
        host.events.subscribe(self._on_event)
        subs = [topics.fleet_desired(self.fleet), topics.cmd(self.fleet, self.id),
                topics.weights_response(self.fleet, self.id), topics.census(self.fleet)]
        if self.group:
            subs.append(topics.group_desired(self.fleet, self.group))
        for t in subs:  # exact topics only: some brokers send retained messages to no wildcard
            link.subscribe(t, qos=1)

    # ---- persistence of outcomes (exactly once across restarts) --------------------------

    def _outcomes_path(self) -> str:
        return os.path.join(self.partial, "outcomes.json")

    def _load_outcomes(self) -> Dict[str, Dict[str, Any]]:
        try:
            with open(self._outcomes_path(), "rb") as f:
                obj = json.loads(f.read().decode("utf-8"))
            return obj if isinstance(obj, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_outcome(self, pkg: str, rec: Dict[str, Any]) -> None:
        self.outcomes[pkg] = rec
        if len(self.outcomes) > 64:  # bounded: only recent packages matter
            for k in list(self.outcomes)[:-64]:
                del self.outcomes[k]
        write_atomic(self._outcomes_path(), [_dumps(self.outcomes)])

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> "FleetDevice":
        self.link.start()
        self._thread = threading.Thread(target=self._run, name="mqtt-device", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        # false before a clean disconnect: the broker sends no Last Will then
        self.link.stop(final=(topics.online(self.fleet, self.id), FALSE))

    def _on_event(self, kind: str, fields: Dict[str, Any]) -> None:
        # from the pipeline's threads: the watch window judging a version this channel applied
        if kind in ("update.watch_failed", "update.rolled_back") and fields.get("source") != "mqtt":
            self.link.inbox.put(("window", (kind, dict(fields))))

    def _window(self, kind: str, fields: Dict[str, Any]) -> None:
        last = self.last_update
        if kind != "update.watch_failed" or not last or last.get("version") != fields.get("version"):
            return
        rec = dict(last, outcome="rolled_back", stage="watch", reason=fields.get("reason"),
                   at=time.time())
        self._save_outcome(last["package"], rec)
        self.last_update = rec
        self.state = "rolled_back"
        self._event("update.rolled_back", version=rec["version"], reason=rec["reason"],
                    package=rec["package"])
        self._publish_status(force=True)

    def _on_up(self) -> None:
        # on the network thread, inside on_connect: presence first, the rest via the worker
        self.link.publish(topics.online(self.fleet, self.id), TRUE, qos=1, retain=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, msg = self.link.inbox.get(timeout=0.2)
            except queue.Empty:
                kind = msg = None
            try:
                if kind == "up":
                    self._next_status = 0.0
                    self._last_status = None
                    if self.transfer is not None:
                        self.transfer.reset_in_flight()
                elif kind == "msg":
                    self._message(msg)
                elif kind == "window":
                    self._window(*msg)
                self._tick()
            except Exception as e:  # the channel must outlive any one bad message
                self._event("channel.error", reason="%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))

    # ---- incoming -----------------------------------------------------------------------

    def _message(self, msg: Any) -> None:
        t = msg.topic
        if t == topics.weights_response(self.fleet, self.id):
            try:
                head, data = wire.parse_response(msg.payload)
            except wire.WireError as e:
                self._chunk_rejected(str(e))
                return
            self.received_total += len(data)
            tr = self.transfer
            if tr is not None:
                try:
                    tr.on_response(head, data)
                except _manifest.ManifestError as e:  # the fetched manifest: refused whole
                    self.transfer = None
                    self._finish(tr.desired, False, "manifest", str(e))
        elif t == topics.fleet_desired(self.fleet) or (
                self.group and t == topics.group_desired(self.fleet, self.group)):
            which = "fleet" if t == topics.fleet_desired(self.fleet) else "group"
            try:
                self.desired[which] = _manifest.parse_desired(msg.payload)
            except _manifest.ManifestError as e:
                self.desired[which] = None
                self._refuse_message("desired", str(e))
                return
            self._reconcile()
        elif t == topics.cmd(self.fleet, self.id):
            self._command(msg.payload)
        elif t == topics.census(self.fleet):
            self._on_up()
            self._publish_status(force=True)

    def _chunk_rejected(self, reason: str, **fields: Any) -> None:
        """A response refused (malformed, or bytes that do not hash right): the transfer asks
        again; the reason goes to the events and, as the last one, to the status."""
        self.last_rejected_chunk = {"reason": reason, "at": time.time()}
        self._event("update.chunk_rejected", reason=reason, **fields)

    def _refuse_message(self, stage: str, reason: str, event: str = "update.rejected",
                        **fields: Any) -> None:
        """A desired state or command refused as it arrived: in the events and the status (local
        and on the broker), nothing else changes."""
        self.last_update = {"version": fields.get("version"), "outcome": "rejected", "stage": stage,
                            "reason": reason, "package": None, "at": time.time()}
        self._event(event, stage=stage, reason=reason, **fields)
        self._publish_status(force=True)

    def effective(self) -> Optional[Dict[str, Any]]:
        """The group's desired state when there is one, else the fleet's."""
        return self.desired["group"] or self.desired["fleet"]

    def _reconcile(self) -> None:
        d = self.effective()
        if d is None:  # cleared: a transfer in progress is not wanted any more
            self.transfer = None
            return
        pkg = d["package"]["sha256"]
        if self.transfer is not None and self.transfer.package_sha == pkg:
            return
        if self.transfer is not None:  # superseded: keep its chunks (blobs may recur)
            self.transfer = None
        if pkg in self.outcomes and self.outcomes[pkg].get("version") == d["version"]:
            # already tried: applied, rejected or rolled back -- never twice; but an old
            # version announced again (a replayed desired state) is refused aloud
            floor = self.host.trust_floor()
            why = self._refused(d)[0] if floor is not None and d["version"] < floor else None
            if why is not None:
                self._finish(d, False, "signature", why, remember=False)
            return
        why, layout = self._refused(d)
        if why is not None:  # before any chunk is asked for: nothing unsigned or untrusted is fetched
            self._finish(d, False, "signature", why, remember=False)
            return
        v = d["version"]
        eng = self.host.engine
        if d["model"] != eng.fingerprint:
            self._finish(d, False, "model", "desired package is for model %s, this box serves %s"
                         % (d["model"][:23], eng.fingerprint[:23]))
            return
        if eng.version == v:
            self._finish(d, True, "done", None, quiet=True)
            return
        if self.host.store.has(v):  # a stored version comes back through rollback, no transfer
            self.state = "applying"
            self._event("update.started", version=v, package=pkg, via="store")
            r = self.host.command({"cmd": "rollback", "to": v})
            self._finish(d, bool(r.get("ok")), r.get("stage") or "rollback", r.get("error"))
            return
        try:
            self.transfer = Transfer(os.path.join(self.partial), self.host.store, d, self._send,
                                     piece=self._piece(), max_in_flight=self.s.max_in_flight,
                                     timeout=self.s.request_timeout, layout=layout,
                                     on_reject=lambda why: self._chunk_rejected(why, version=v))
        except _manifest.ManifestError as e:
            self._finish(d, False, "manifest", str(e))
            return
        self.state = "downloading"
        self._event("update.started", version=v, package=pkg, via="mqtt")

    def _refused(self, d: Dict[str, Any]) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Why the trust policy refuses desired state ``d`` (None: go ahead), and the signed
        layout the transfer's manifest must match (None: unsigned and not required). The package
        checks are trust.py's (``host.check_announced``: signature, expiry, model, target, floor,
        the signed sha256 and size against the announced ones); here only what is MQTT's own:
        the desired version is the signed one, the signature signs the layout (so every tensor
        fetched is checked against a signed hash), the manifest is bounded by the signed size."""
        from ..signing import SignatureError
        try:
            signed = self.host.check_announced(d.get("signature"), d["package"]["sha256"],
                                               d["package"]["size"])
        except SignatureError as e:
            return str(e), None
        if signed is None:
            return None, None
        if signed["version"] != d["version"]:
            return ("desired version %d, the signature is for version %d"
                    % (d["version"], signed["version"])), None
        if not isinstance(signed.get("layout"), dict):
            return ("the signature does not sign the package's layout, which the MQTT transfer "
                    "checks every tensor against (sign it again with refitd sign)"), None
        limit = _manifest.max_manifest_bytes(signed["length"])
        if d["manifest"]["size"] > limit:
            return ("desired manifest of %d bytes, more than the %d a signed package of %d bytes "
                    "can need" % (d["manifest"]["size"], limit, signed["length"])), None
        return None, signed["layout"]

    def _desired_topic(self) -> str:
        if self.desired["group"] is not None:
            return topics.group_desired(self.fleet, self.group)
        return topics.fleet_desired(self.fleet)

    def _piece(self) -> int:
        limit = self.s.chunk_size
        if self.link.max_packet:
            limit = min(limit, self.link.max_packet - wire.OVERHEAD)
        return max(1024, limit)

    def _send(self, obj: str, off: int, n: int, corr: str) -> None:
        rt = topics.weights_response(self.fleet, self.id)
        self.link.publish(topics.weights_request(self.fleet), wire.request(rt, corr, obj, off, n),
                          qos=0, response_topic=rt, correlation=corr.encode())

    def _tick(self) -> None:
        tr = self.transfer
        if tr is not None and self.link.connected.is_set():
            try:
                tr.pump()
            except _manifest.ManifestError as e:
                self.transfer = None
                self._finish(tr.desired, False, "manifest", str(e))
                tr = None
            if tr is not None and tr.complete:
                self._apply(tr)
        self._status()

    def _apply(self, tr: Transfer) -> None:
        d = tr.desired
        self.state = "applying"
        self._publish_status(force=True)
        try:
            path = tr.rebuild()
        except (TransferError, OSError) as e:
            self.transfer = None
            self._finish(d, False, "transfer", str(e), transfer=tr)
            return
        # the envelope goes with the bytes: the pipeline's verifier checks it again over them
        o = self.deliver(path, self._desired_topic(), d.get("signature"))
        self.transfer = None
        self._finish(d, bool(o.ok), o.stage, o.reason, transfer=tr)
        # after the outcome is out: right after the store's fsyncs these unlinks can take
        # seconds on ext4, and nobody needs to wait for them
        tr.cleanup()

    def _finish(self, d: Dict[str, Any], ok: bool, stage: str, reason: Optional[str],
                quiet: bool = False, transfer: Optional[Transfer] = None,
                remember: bool = True) -> None:
        """``remember=False`` for a refused signature: anyone can announce a package's hash
        unsigned, which must not stop the properly signed announcement of it later."""
        outcome = "applied" if ok else "rejected"
        rec = {"version": d["version"], "outcome": outcome, "stage": stage, "reason": reason,
               "package": d["package"]["sha256"], "at": time.time(),
               "signature": _manifest.signature_id(d.get("signature"))}
        if transfer is not None:
            rec["received"] = transfer.counters.received
        if remember:
            self._save_outcome(d["package"]["sha256"], rec)
        self.last_update = rec
        self.state = "serving" if ok else "rejected"
        if not quiet:
            self._event("update." + outcome, version=d["version"], stage=stage, reason=reason,
                        package=d["package"]["sha256"],
                        **(transfer.progress() if transfer is not None else {}))
        self._publish_status(force=True)

    # ---- commands -----------------------------------------------------------------------

    def _command(self, payload: bytes) -> None:
        try:
            req = json.loads(payload.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            self._respond({"ok": False, "error": "command is not a JSON object"})
            self._refuse_message("command", "command is not a JSON object", "command.rejected")
            return
        cmd = req.get("cmd")
        rid = req.get("id")
        # "sig" goes with the command delivery: the trust layer verifies it before anything runs
        if cmd == "refresh":
            self._publish_status(force=True)
            resp = {"ok": True}
        elif cmd in ("rollback", "pin", "unpin"):
            resp = self.host.command(req, payload)
        else:
            resp = {"ok": False, "error": "unknown command %s (rollback, pin, unpin, refresh)"
                    % json.dumps(cmd)[:40]}
        resp["id"] = rid
        resp["cmd"] = cmd
        self._respond(resp)
        if not resp.get("ok"):
            self._refuse_message("command", resp.get("error") or "%s failed" % cmd, "command.rejected",
                                 cmd=cmd if isinstance(cmd, str) else json.dumps(cmd)[:40])
        self._publish_status(force=True)

    def _respond(self, resp: Dict[str, Any]) -> None:
        self.link.publish(topics.cmd_response(self.fleet, self.id), _dumps(resp), qos=1)

    # ---- outgoing -----------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        # locally "mqtt.<kind>", beside the pipeline's own update.* events for the same update
        self.host.events.emit("mqtt." + kind, **fields)
        if self.link.connected.is_set():
            rec = {"event": kind, "device": self.id, "ts": time.time()}
            rec.update(fields)
            self.link.publish(topics.events(self.fleet, self.id), _dumps(rec), qos=1)

    def status_doc(self) -> Dict[str, Any]:
        st = self.host.status()
        inf = st.get("inference") or {}
        d = self.effective()
        window = getattr(self.host.pipeline, "window", None)
        state = self.state
        if state == "serving" and window is not None and window.armed is not None:
            state = "watching"
        doc = {
            "device": self.id, "group": self.group,
            "serving_version": st["serving"]["version"], "model": st["serving"]["fingerprint"],
            "state": state, "last_update": self.last_update,
            "inferences_per_s": round(inf.get("per_second") or 0.0, 1),
            "p50_ms": inf.get("p50_ms"), "p99_ms": inf.get("p99_ms"),
            "desired_version": d["version"] if d else None,
            "desired_package": d["package"]["sha256"] if d else None,
            "transfer": self.transfer.progress() if self.transfer else None,
            "received_bytes": self.received_total,
            "last_rejected_chunk": self.last_rejected_chunk,
        }
        return doc

    def _status(self) -> None:
        now = time.monotonic()
        if now >= self._next_status:
            self._publish_status(force=True)
        elif self.transfer is not None and now - self._last_pub >= 1.0:
            self._publish_status(force=False)  # progress at most once a second while downloading

    def _publish_status(self, force: bool) -> None:
        if not self.link.connected.is_set():
            return
        doc = self.status_doc()
        body = _dumps(doc)
        if not force and body == self._last_status:
            return
        self.link.publish(topics.status(self.fleet, self.id), body, qos=1, retain=True)
        self._last_status = body
        self._last_pub = time.monotonic()
        self._next_status = time.monotonic() + self.s.status_period

    def publish_result(self, result: Dict[str, Any]) -> bool:
        """The ``mqtt`` results sink: at most ``results_rate`` results a second, QoS 0, dropped
        (not queued) while offline, so inference never waits."""
        now = time.monotonic()
        self._results_tokens = min(float(self.s.results_rate),
                                   self._results_tokens + (now - self._results_t) * self.s.results_rate)
        self._results_t = now
        if self._results_tokens < 1.0 or not self.link.connected.is_set():
            return False
        self._results_tokens -= 1.0
        self.link.publish(topics.results(self.fleet, self.id), _dumps(result), qos=0)
        return True
