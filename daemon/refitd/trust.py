"""What a box accepts: the verifier on the raw bytes of every delivery (``Delivery`` hook), the
persisted version floor, expiry, targets, and replay protection for signed commands.

The policy (``Trust``), per delivery, before any parser sees a byte:

* package, no signature: refused when the channel requires one (``security.require_signature``:
  by default the mqtt channel; ``true`` every channel; a list names them), else accepted as
  before (the local channels' trust is the filesystem's and the control socket's permissions);
* package with a signature: refused unless the envelope verifies (``signing.verify_envelope``:
  trusted keys, threshold, expiry) *and* the bytes have the signed length and sha256, the model
  is the one this box serves, the target fleet/group (if signed) is this box's, and the signed
  version is above the floor. A bad signature is refused on every channel, required or not;
* command (rollback, pin, unpin) with a signature: the signed command must name the same
  command and arguments, be issued within ``security.command_window`` seconds of now, and carry
  a nonce never seen before (nonces are kept, on disk, for the window: a replay is refused
  across restarts too). Without a signature: as for packages.

The version floor (``Floor``) is the highest version ever accepted, kept in its own file outside
the store (``security.state_dir``), so it survives a restart, a store that recovers to an older
version, and a store that is deleted and re-seeded (go-tuf shipped without one:
CVE-2022-29173). The pipeline refuses a package at or below it on every channel (signed or
not; ``Pipeline.floor``); only a rollback command goes below it, to a version in the store.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .atomic import write_atomic
from .delivery import APPLY, Delivery
from .signing import (COMMAND_TYPE, PACKAGE_TYPE, SPEC_VERSION, SignatureError, TrustedKeys,
                      format_time, parse_time, verify_envelope)

__all__ = ["Trust", "Floor", "NonceBook", "TrustError", "package_claims", "command_claims",
           "CHANNELS"]

CHANNELS = ("cli", "file", "mqtt")
_COMMAND_ARGS = {"rollback": ("to",), "pin": ("version",), "unpin": ("version",)}
_MAX_NONCES = 100000


class TrustError(SignatureError):
    """A delivery refused by the trust policy (one line)."""


# ---- what gets signed ----------------------------------------------------------------------

def package_claims(data: bytes, version: int, model: str, expires: float,
                   fleet: Optional[str] = None, group: Optional[str] = None,
                   layout: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``signed`` part of a package's envelope: the bytes' sha256 and length, the version
    and model, the target, the expiry, and (``layout``, fleet.manifest.layout: ``refitd sign``
    always adds it) the sha256 of the header and of the tensor table, so the MQTT transfer
    checks every tensor against signed hashes before it rebuilds the package (mix-and-match)."""
    out: Dict[str, Any] = {
        "_type": PACKAGE_TYPE, "spec_version": SPEC_VERSION,
        "sha256": hashlib.sha256(data).hexdigest(), "length": len(data),
        "version": int(version), "model": model, "expires": format_time(expires),
        "target": {k: v for k, v in (("fleet", fleet), ("group", group)) if v is not None},
    }
    if layout:
        out["layout"] = dict(layout)
    return out


def command_claims(command: str, args: Mapping[str, Any], nonce: Optional[str] = None,
                   issued: Optional[float] = None, ttl: float = 300.0,
                   fleet: Optional[str] = None, group: Optional[str] = None) -> Dict[str, Any]:
    """The ``signed`` part of a command's envelope (a fresh random nonce by default)."""
    issued = time.time() if issued is None else issued
    return {
        "_type": COMMAND_TYPE, "spec_version": SPEC_VERSION, "cmd": command,
        "args": {k: v for k, v in args.items() if v is not None},
        "issued": format_time(issued), "expires": format_time(issued + ttl),
        "nonce": nonce or os.urandom(16).hex(),
        "target": {k: v for k, v in (("fleet", fleet), ("group", group)) if v is not None},
    }


# ---- persisted state -----------------------------------------------------------------------

def _read_json(path: str, default: Any) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise TrustError("%s is unreadable (%s); it is only ever replaced atomically" % (path, e)) from None


class Floor:
    """The highest version ever accepted, in ``<dir>/floor.json``. It only goes up."""

    def __init__(self, directory: str, durable: bool = True):
        self.path = os.path.join(directory, "floor.json")
        self.durable = durable
        self._mu = threading.Lock()
        obj = _read_json(self.path, {"floor": None})
        v = obj.get("floor") if isinstance(obj, dict) else None
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise TrustError("%s: floor must be a version number" % self.path)
        self.value: Optional[int] = v

    def raise_to(self, version: Optional[int]) -> bool:
        """Raises the floor to ``version`` if that is higher; returns whether it moved. The
        file is written before the value changes in memory."""
        with self._mu:
            if version is None or (self.value is not None and version <= self.value):
                return False
            data = (json.dumps({"floor": int(version)}) + "\n").encode()
            write_atomic(self.path, [data], durable=self.durable)
            self.value = int(version)
            return True


class NonceBook:
    """Nonces of signed commands accepted, each until its command can no longer be valid; kept
    in ``<dir>/nonces.json`` so a replay after a restart is refused too."""

    def __init__(self, directory: str, durable: bool = True):
        self.path = os.path.join(directory, "nonces.json")
        self.durable = durable
        self._mu = threading.Lock()
        obj = _read_json(self.path, {})
        self._until: Dict[str, float] = {str(k): float(v) for k, v in obj.items()} if isinstance(obj, dict) else {}

    def seen(self, nonce: str) -> bool:
        with self._mu:
            return self._until.get(nonce, 0.0) > time.time()

    def remember(self, nonce: str, until: float) -> None:
        with self._mu:
            now = time.time()
            self._until = {n: t for n, t in self._until.items() if t > now}
            if len(self._until) >= _MAX_NONCES:
                raise TrustError("too many signed commands within the validity window")
            self._until[nonce] = until
            data = (json.dumps(self._until, sort_keys=True) + "\n").encode()
            write_atomic(self.path, [data], durable=self.durable)


# ---- the policy ----------------------------------------------------------------------------

def required_channels(setting: Any, mqtt_enabled: bool) -> List[str]:
    """``security.require_signature`` -> the channels that require a signature."""
    if setting is None:
        return ["mqtt"] if mqtt_enabled else []
    if setting is True:
        return list(CHANNELS)
    if setting is False:
        return []
    return list(setting)


class Trust:
    """The trust policy of one daemon. ``verify`` is the pipeline's verifier, ``floor_value``
    its floor, ``on_outcome`` a pipeline listener (raises the floor after an apply)."""

    def __init__(self, keys: TrustedKeys, state_dir: str, required: Iterable[str] = (),
                 fingerprint: Optional[str] = None, fleet: Optional[str] = None,
                 group: Optional[str] = None, command_window: float = 300.0, events: Any = None,
                 durable: bool = True, floor_at_least: Optional[int] = None):
        self.keys = keys
        self.required = set(required)
        self.fingerprint = fingerprint
        self.fleet, self.group = fleet, group
        self.window = float(command_window)
        self.events = events
        self.state_dir = state_dir
        #: why the floor or nonces cannot be persisted (None: they can)
        self.degraded: Optional[str] = None
        try:
            os.makedirs(state_dir, exist_ok=True)
        except OSError as e:  # a read-only disk: the floor is kept in memory, signed commands refused
            self.degraded = "trust state %s cannot be created (%s)" % (state_dir, e.strerror)
        self.floor = Floor(state_dir, durable)
        self.nonces = NonceBook(state_dir, durable)
        if floor_at_least is not None:
            self._raise_floor(floor_at_least)

    @classmethod
    def from_config(cls, cfg: Any, fingerprint: Optional[str], events: Any = None,
                    floor_at_least: Optional[int] = None) -> "Trust":
        sec = cfg.security
        keys = TrustedKeys.from_config(sec.trusted_keys, sec.threshold)
        state = sec.state_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.store.path)), "trust")
        mqtt_on = bool(getattr(cfg.mqtt, "enabled", False))
        return cls(keys, state, required_channels(sec.require_signature, mqtt_on), fingerprint,
                   sec.fleet, sec.group, sec.command_window, events,
                   floor_at_least=floor_at_least)

    def describe(self) -> Dict[str, Any]:
        """For ``refitd status``."""
        return {"require_signature": sorted(self.required), "trusted_keys": sorted(self.keys.keys),
                "threshold": self.keys.threshold, "floor": self.floor.value,
                "fleet": self.fleet, "group": self.group, "state_dir": self.state_dir}

    # -- the pipeline's hooks --

    def floor_value(self) -> Optional[int]:
        return self.floor.value

    def on_outcome(self, delivery: Delivery, outcome: Any) -> None:
        if delivery.command == APPLY and outcome.ok:
            self._raise_floor(outcome.version)

    def _raise_floor(self, version: Optional[int]) -> None:
        try:
            if self.floor.raise_to(version) and self.events is not None:
                self.events.emit("trust.floor", floor=version)
        except OSError as e:  # a read-only state dir: the store's own highest still holds
            if self.events is not None:
                self.events.emit("trust.error", error="cannot persist the version floor %s: %s"
                                 % (version, e.strerror or e))

    def verify(self, data: Any, signature: Optional[bytes], delivery: Delivery) -> None:
        """The ``Delivery`` verifier: raises ``TrustError`` (one line) to refuse."""
        channel = delivery.origin.channel
        if signature is None:
            self._unsigned("package" if delivery.command == APPLY else delivery.command + " command",
                           channel)
            return
        if delivery.command == APPLY:
            self._verify_package(data, signature, delivery.sha256)
        else:
            self._verify_command(delivery, signature)

    def check_announced(self, signature: Optional[bytes], sha256: str, length: int,
                        channel: str) -> Optional[Dict[str, Any]]:
        """The same package checks as ``verify``, on what a channel announces before it fetches
        a byte (the MQTT desired state: the package's sha256 and size): refuses (``TrustError``)
        unsigned where required, untrusted, expired, other model or target, at or below the
        floor. Returns the verified ``signed`` part (None: unsigned and not required), whose
        ``length`` bounds the download. The delivered bytes are verified again by ``verify``."""
        if signature is None:
            self._unsigned("package", channel)
            return None
        return self._check_claims(signature, sha256, length)

    def _unsigned(self, what: str, channel: str) -> None:
        if channel in self.required:
            raise TrustError("unsigned %s: the %s channel requires a signature "
                             "(security.require_signature)" % (what, channel))

    # -- checks --

    def _target(self, signed: Mapping[str, Any]) -> None:
        target = signed.get("target") or {}
        if not isinstance(target, dict):
            raise TrustError("signed target must be an object")
        for key, mine in (("fleet", self.fleet), ("group", self.group)):
            want = target.get(key)
            if want is not None and want != mine:
                raise TrustError("signed for %s %s, this box is in %s %s"
                                 % (key, json.dumps(want)[:40], key, json.dumps(mine)))

    def _verify_package(self, data: Any, signature: bytes, sha256: Optional[str] = None) -> None:
        # sha256: the pipeline's one pass over these bytes (Delivery.sha256), not hashed again
        got = sha256 or hashlib.sha256(data).hexdigest()
        self._check_claims(signature, got, len(memoryview(data).cast("B")))

    def _check_claims(self, signature: bytes, got: str, n: int) -> Dict[str, Any]:
        """``signature`` verified for a package of ``n`` bytes with sha256 ``got``."""
        signed = verify_envelope(signature, self.keys, PACKAGE_TYPE)
        for key, kind in (("length", int), ("version", int), ("sha256", str), ("model", str)):
            if not isinstance(signed.get(key), kind) or isinstance(signed.get(key), bool):
                raise TrustError("signed package metadata lacks %s" % key)
        if n != signed["length"]:
            raise TrustError("package is %d bytes, the signature says %d" % (n, signed["length"]))
        if got != signed["sha256"]:
            raise TrustError("package sha256 %s does not match the signed %s"
                             % (got[:12], str(signed["sha256"])[:12]))
        if self.fingerprint is not None and signed["model"] != self.fingerprint:
            raise TrustError("signed for model %s, this box serves %s"
                             % (signed["model"][:23], self.fingerprint[:23]))
        self._target(signed)
        floor = self.floor.value
        if floor is not None and signed["version"] <= floor:
            raise TrustError("signed version %d is not above the version floor %d (the highest "
                             "ever accepted; older versions come back only by rollback)"
                             % (signed["version"], floor))
        return signed

    def _verify_command(self, d: Delivery, signature: bytes) -> None:
        signed = verify_envelope(signature, self.keys, COMMAND_TYPE)
        if signed.get("cmd") != d.command:
            raise TrustError("signed command is %s, the delivery is %s"
                             % (json.dumps(signed.get("cmd"))[:20], d.command))
        args = signed.get("args")
        if not isinstance(args, dict):
            raise TrustError("signed command lacks its arguments")
        for key in _COMMAND_ARGS.get(d.command, ()):
            if args.get(key) != d.args.get(key):
                raise TrustError("signed %s %s=%s, the delivery asks %s=%s"
                                 % (d.command, key, json.dumps(args.get(key)), key,
                                    json.dumps(d.args.get(key))))
        self._target(signed)
        issued = parse_time(signed.get("issued"), "issued")
        now = time.time()
        if abs(now - issued) > self.window:
            raise TrustError("signed command issued at %s, outside the %g s window around now (%s)"
                             % (signed["issued"], self.window, format_time(now)))
        nonce = signed.get("nonce")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise TrustError("signed command needs a nonce of 16 to 128 characters")
        if self.nonces.seen(nonce):
            raise TrustError("replayed command: nonce %s was already used" % nonce[:16])
        try:
            self.nonces.remember(nonce, min(parse_time(signed["expires"], "expires"), issued + self.window) + self.window)
        except OSError as e:  # without the record a replay could not be refused: refuse now
            raise TrustError("cannot record the command's nonce: %s" % (e.strerror or e)) from None
