"""``Delivery``: the one thing every channel hands the pipeline.

A delivery is either a package (``apply``) or a command (``rollback``, ``pin``, ``unpin``):

* the package as bytes (MQTT reassembles chunks), as an open descriptor (``refitd apply`` passes
  the file over the control socket) or as a path (the file drop). However it comes, it is read
  by ``Delivery.read(max_bytes)``, which refuses more than ``max_bytes`` *before* reading any of
  it (``fstat`` on the open file; ``len`` of bytes);
* an optional detached signature (bytes, at most ``MAX_SIGNATURE_BYTES``), checked by the
  pipeline's verifier over the raw bytes before any parser sees them;
* ``Origin``: who delivered it (``channel`` — ``cli``, ``file``, ``mqtt``, ``watch`` —,
  ``peer``, ``where``: the path or topic, ``id``: a delivery id; the pipeline answers a
  delivery id it has seen with the outcome it gave then, so a redelivery changes nothing).

The package identity is the sha256 of the whole package file, the bytes exactly as delivered:
the pipeline computes it in one pass over the raw bytes before any parser runs and hands it to
the verifier as ``delivery.sha256`` (a signature signs it); the store records it as
``package_sha256``. The blob hashes (one per tensor, the store's addresses) are a second hash of
the tensor bytes, which runs in the background, with the store write, while the engine stages
and shadow-checks the new weights (docs/store.md, "Package identity").

The verifier is ``fn(data, signature, delivery)``; it raises to refuse (stage ``signature``,
the exception's first line is the reason). ``data`` is the raw package bytes, or for a command
``delivery.payload``: the bytes as received when the channel kept them, else the canonical JSON
of the command (``canonical_command``), so a signature can cover commands too. The default,
``no_verifier``, accepts everything and claims nothing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

from .package import PackageError, ReadBuffer, read_capped

__all__ = ["Delivery", "Origin", "Verifier", "no_verifier", "canonical_command",
           "read_signature", "command_signature", "APPLY", "ROLLBACK", "PIN", "UNPIN", "COMMANDS",
           "MAX_SIGNATURE_BYTES"]

APPLY, ROLLBACK, PIN, UNPIN = "apply", "rollback", "pin", "unpin"
COMMANDS = (APPLY, ROLLBACK, PIN, UNPIN)
MAX_SIGNATURE_BYTES = 64 << 10  # an ed25519 signature is 64 bytes; room for a certificate chain

Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class Origin:
    """Who delivered what: ``channel`` names the channel (also the ``source`` in events and
    manifests), ``where`` the path or topic, ``peer`` the sender, ``id`` a delivery id."""

    channel: str
    where: Optional[str] = None
    peer: Optional[str] = None
    id: Optional[str] = None


Verifier = Callable[[Buffer, Optional[bytes], "Delivery"], None]


def no_verifier(data: Buffer, signature: Optional[bytes], delivery: "Delivery") -> None:
    """The verifier until the security issue fills the hook: accepts everything."""
    return None


def canonical_command(command: str, args: Dict[str, Any]) -> bytes:
    """The bytes a command's signature covers when the channel kept none of its own."""
    body = {"cmd": command}
    body.update({k: v for k, v in args.items() if v is not None})
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_signature(path: Optional[str] = None, fd: Optional[int] = None) -> bytes:
    """A detached signature file (or open descriptor) whole, refusing more than
    ``MAX_SIGNATURE_BYTES`` before reading. Raises ``PackageError(stage="signature")``."""
    try:
        return bytes(read_capped(path or "signature", MAX_SIGNATURE_BYTES, what="signature", fd=fd))
    except PackageError as e:
        raise PackageError(e.reason, stage="signature") from None


def command_signature(req: Dict[str, Any]) -> Optional[bytes]:
    """A command request's signature envelope (``"sig"``: its JSON text, as ``refitd
    sign-command`` prints it), when it has one; the same on the control socket and the MQTT
    cmd topic. ValueError (one line) if it is not a string of at most ``MAX_SIGNATURE_BYTES``."""
    sig = req.get("sig")
    if sig is None:
        return None
    if not isinstance(sig, str) or len(sig) > MAX_SIGNATURE_BYTES:
        raise ValueError("sig must be the signature envelope's JSON text (at most %d bytes)"
                         % MAX_SIGNATURE_BYTES)
    return sig.encode("utf-8")


@dataclass
class Delivery:
    """Build one with ``Delivery.of_bytes``, ``of_fd``, ``of_path`` or ``of_command``."""

    origin: Origin
    command: str = APPLY
    data: Optional[Buffer] = None
    fd: Optional[int] = None  # owned by the caller; read positioned, never closed here
    path: Optional[str] = None
    signature: Optional[bytes] = None
    args: Dict[str, Any] = field(default_factory=dict)
    payload: Optional[bytes] = None  # a command's bytes as received (what a signature covers)
    #: the package identity, hex sha256 of the raw bytes: set by the pipeline before it calls
    #: the verifier (computed once, in one pass; the verifier signs-checks this, not a re-hash)
    sha256: Optional[str] = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError("unknown delivery command %r (known: %s)" % (self.command, ", ".join(COMMANDS)))
        if self.command == APPLY and sum(x is not None for x in (self.data, self.fd, self.path)) != 1:
            raise ValueError("a package delivery carries exactly one of data, fd, path")
        if self.signature is not None and len(self.signature) > MAX_SIGNATURE_BYTES:
            raise ValueError("signature is %d bytes, limit %d" % (len(self.signature), MAX_SIGNATURE_BYTES))

    @classmethod
    def of_bytes(cls, data: Buffer, origin: Origin, signature: Optional[bytes] = None) -> "Delivery":
        return cls(origin, APPLY, data=data, signature=signature)

    @classmethod
    def of_fd(cls, fd: int, origin: Origin, signature: Optional[bytes] = None) -> "Delivery":
        return cls(origin, APPLY, fd=fd, signature=signature)

    @classmethod
    def of_path(cls, path: str, origin: Origin, signature: Optional[bytes] = None) -> "Delivery":
        return cls(origin, APPLY, path=os.fspath(path), signature=signature)

    @classmethod
    def of_command(cls, command: str, origin: Origin, signature: Optional[bytes] = None,
                   payload: Optional[bytes] = None, **args: Any) -> "Delivery":
        return cls(origin, command, signature=signature, args=args, payload=payload)

    @property
    def source(self) -> str:
        return self.origin.channel

    @property
    def name(self) -> str:
        """How messages and events name the package: its path, else where it came from."""
        return self.path or self.origin.where or ("<%s delivery>" % self.origin.channel)

    def read(self, max_bytes: int, into: Optional[ReadBuffer] = None, hasher: Any = None) -> Buffer:
        """The package bytes, refused (``PackageError(stage="size")``) above ``max_bytes``
        before any is read. Bytes already held are returned as they are (no copy); a file is
        read into ``into`` when given (the pipeline's buffer, kept between deliveries).
        ``hasher`` (hashlib) is fed the package bytes as they are read (a file) or at once."""
        if self.command != APPLY:
            return self.payload if self.payload is not None else canonical_command(self.command, self.args)
        if self.data is not None:
            n = len(memoryview(self.data).cast("B"))
            if n > max_bytes:
                raise PackageError("package too large: %d bytes, limit %d" % (n, max_bytes), stage="size")
            if hasher is not None:
                hasher.update(self.data)
            return self.data
        return read_capped(self.name, max_bytes, fd=self.fd, into=into, hasher=hasher)
