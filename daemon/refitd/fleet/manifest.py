"""Desired state and the transfer manifest.

The *desired* message (retained on ``.../desired``) is small: its ``signed`` part names the
package (sha256 and size), version, model fingerprint, base, target (fleet, group), expiry and the
transfer manifest (sha256 and size). ``signature`` is the package's signature envelope (the
``PACKAGE.sig`` file ``refitd sign`` writes, base64 of its exact bytes, or null): it signs the
package's sha256 and length, version, model, target and expiry, which the device checks against
``signed`` before fetching anything (docs/mqtt.md, docs/security.md).

The *transfer manifest* (fetched from a weight server like any other object, verified by its
sha256 from the desired message) holds the package's safetensors header verbatim (so the
rebuilt package is byte-for-byte the original) and every tensor in file order with its offset,
size, blob sha256 (the store's blob name) and the sha256 of each ``chunk_size`` piece.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..package import parse_package_bytes
from ..signing import MAX_ENVELOPE_BYTES

FORMAT = 1
DEFAULT_CHUNK = 124 << 10  # a chunk plus its response header stays under a 128 KB publish limit
MIN_CHUNK = 4 << 10
MAX_SIGNATURE_B64 = 4 * -(-MAX_ENVELOPE_BYTES // 3)
MAX_DESIRED_BYTES = (16 << 10) + MAX_SIGNATURE_B64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FP = re.compile(r"^sha256:[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A desired message or manifest was refused; one line naming the field."""


def canonical(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Tensor:
    name: str
    offset: int  # of its bytes in the package file
    nbytes: int
    sha256: str
    chunks: List[str]


@dataclass
class Manifest:
    package_sha256: str
    package_size: int
    header: bytes
    chunk_size: int
    tensors: List[Tensor]
    raw: bytes  # the JSON bytes (their sha256 is what the desired message names)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def chunk_range(self, t: Tensor, i: int) -> range:
        lo = i * self.chunk_size
        return range(lo, min(t.nbytes, lo + self.chunk_size))


def build(data: bytes, chunk_size: int = DEFAULT_CHUNK) -> Manifest:
    """The transfer manifest of a package's bytes (checked with the package parser first)."""
    if chunk_size < MIN_CHUNK:
        raise ManifestError("chunk size %d is below %d bytes" % (chunk_size, MIN_CHUNK))
    parse_package_bytes(data)  # a server never offers what a device would refuse to parse
    (hlen,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(bytes(data[8:8 + hlen]).decode("utf-8"))
    start = 8 + hlen
    rows = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in header.items()
                  if n != "__metadata__")
    tensors = []
    for b, e, name in rows:
        mv = memoryview(data)[start + b:start + e]
        chunks = [hashlib.sha256(mv[o:o + chunk_size]).hexdigest()
                  for o in range(0, max(1, e - b), chunk_size)] if e > b else []
        tensors.append({"name": name, "offset": start + b, "nbytes": e - b,
                        "sha256": hashlib.sha256(mv).hexdigest(), "chunks": chunks})
    obj = {"format": FORMAT, "package": {"sha256": hashlib.sha256(data).hexdigest(),
                                         "size": len(data)},
           "header": base64.b64encode(bytes(data[:start])).decode(), "chunk_size": chunk_size,
           "tensors": tensors}
    return parse(canonical(obj))


def parse(raw: bytes) -> Manifest:
    """Checks a fetched transfer manifest's structure (its sha256 was checked by the caller)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestError("manifest is not JSON: %s" % str(e).splitlines()[0]) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ManifestError("manifest format is not %d" % FORMAT)
    pkg = obj.get("package") or {}
    _sha(pkg.get("sha256"), "manifest package.sha256")
    size = _nonneg(pkg.get("size"), "manifest package.size")
    cs = _nonneg(obj.get("chunk_size"), "manifest chunk_size")
    if cs < MIN_CHUNK:
        raise ManifestError("manifest chunk_size %d is below %d" % (cs, MIN_CHUNK))
    try:
        header = base64.b64decode(obj.get("header", ""), validate=True)
    except (ValueError, TypeError):
        raise ManifestError("manifest header is not base64") from None
    pos = len(header)
    tensors = []
    for t in obj.get("tensors") or []:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ManifestError("manifest tensor entry is malformed")
        off, n = _nonneg(t.get("offset"), "tensor offset"), _nonneg(t.get("nbytes"), "tensor nbytes")
        if off != pos:
            raise ManifestError("tensor %s starts at %d, not at %d (tensors must be contiguous)"
                                % (json.dumps(t["name"]), off, pos))
        chunks = t.get("chunks")
        if not isinstance(chunks, list) or len(chunks) != -(-n // cs):
            raise ManifestError("tensor %s: %d bytes need %d chunk hashes"
                                % (json.dumps(t["name"]), n, -(-n // cs)))
        for c in chunks:
            _sha(c, "chunk hash")
        tensors.append(Tensor(t["name"], off, n, _sha(t.get("sha256"), "tensor sha256"), chunks))
        pos += n
    if not tensors:
        raise ManifestError("manifest lists no tensors")
    if pos != size:
        raise ManifestError("manifest tensors end at %d, package size is %d" % (pos, size))
    return Manifest(pkg["sha256"], size, header, cs, tensors, bytes(raw))


def desired(m: Manifest, version: int, model: str, fleet: str, group: Optional[str] = None,
            base: Optional[int] = None, expires: Optional[str] = None,
            signature: Optional[bytes] = None) -> Dict[str, Any]:
    """The retained desired-state message for manifest ``m`` (``signature``: the envelope's
    bytes, carried as base64)."""
    signed = {"package": {"sha256": m.package_sha256, "size": m.package_size},
              "manifest": {"sha256": m.sha256, "size": len(m.raw)},
              "version": version, "model": model, "base": base,
              "target": {"fleet": fleet, "group": group}, "expires": expires, "issued": _now()}
    sig = base64.b64encode(signature).decode("ascii") if signature is not None else None
    return {"signed": signed, "signature": sig}


def parse_desired(payload: bytes) -> Optional[Dict[str, Any]]:
    """The desired message's ``signed`` part, checked; None for an empty (cleared) retained
    message. Raises ``ManifestError``."""
    if not payload:
        return None
    if len(payload) > MAX_DESIRED_BYTES:
        raise ManifestError("desired message of %d bytes, limit %d" % (len(payload), MAX_DESIRED_BYTES))
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ManifestError("desired message is not JSON") from None
    s = obj.get("signed") if isinstance(obj, dict) else None
    if not isinstance(s, dict):
        raise ManifestError("desired message lacks its signed part")
    for k in ("package", "manifest"):
        if not isinstance(s.get(k), dict):
            raise ManifestError("desired %s is missing" % k)
        _sha(s[k].get("sha256"), "desired %s.sha256" % k)
        _nonneg(s[k].get("size"), "desired %s.size" % k)
    _nonneg(s.get("version"), "desired version")
    if not isinstance(s.get("model"), str) or not _FP.match(s["model"]):
        raise ManifestError("desired model is not a fingerprint")
    exp = s.get("expires")
    if exp is not None and (not isinstance(exp, str) or exp < _now()):
        raise ManifestError("desired state expired at %s" % exp)
    out = dict(s)
    out["signature"] = _signature(obj.get("signature"))
    return out


def _signature(v: Any) -> Optional[bytes]:
    """The envelope's bytes from the desired message's base64 ``signature`` (None: unsigned)."""
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > MAX_SIGNATURE_B64:
        raise ManifestError("desired signature must be base64 of the envelope, at most %d characters"
                            % MAX_SIGNATURE_B64)
    try:
        return base64.b64decode(v, validate=True)
    except (ValueError, TypeError):
        raise ManifestError("desired signature is not base64") from None


def signature_id(signature: Optional[bytes]) -> Optional[str]:
    """A short name of a desired state's signature envelope (None: unsigned), so a refusal of
    one announcement of a package is not mistaken for the outcome of another."""
    return hashlib.sha256(signature).hexdigest()[:16] if signature is not None else None


def layout(m: Manifest) -> Dict[str, Any]:
    """What ``refitd sign`` signs of a package's layout (the ``layout`` claim): the sha256 of
    its header and of its tensor table (name, offset, size and sha256 of every tensor, in file
    order). Independent of the chunk size (a weight server picks that to fit its broker), so
    one signature serves every transfer; a manifest whose table matches it authenticates every
    tensor hash the transfer checks before the package is rebuilt (mix-and-match)."""
    table = [[t.name, t.offset, t.nbytes, t.sha256] for t in m.tensors]
    return {"header_sha256": hashlib.sha256(m.header).hexdigest(),
            "tensors_sha256": hashlib.sha256(canonical(table)).hexdigest(),
            "tensors": len(m.tensors)}


def check_layout(m: Manifest, signed: Any) -> None:
    """Refuses (``ManifestError``) a manifest whose header or tensor table is not the signed
    package's: the tensor hashes it names would not be the signed ones."""
    mine = layout(m)
    if not isinstance(signed, dict) or any(signed.get(k) != v for k, v in mine.items()):
        raise ManifestError("manifest's header or tensor table is not the signed package's "
                            "(%d tensors, table %s; signed %s): a manifest of another package or version"
                            % (mine["tensors"], mine["tensors_sha256"][:12],
                               str(signed.get("tensors_sha256") if isinstance(signed, dict) else None)[:12]))


def max_manifest_bytes(package_size: int) -> int:
    """A bound on the transfer manifest of a package of ``package_size`` bytes (its header in
    base64 and a 64-hex hash per chunk of at least ``MIN_CHUNK`` are each far below the package
    itself): what a device fetches beyond the signed length, so a signed desired state cannot
    announce an endless manifest."""
    return (64 << 10) + 2 * package_size


def _sha(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise ManifestError("%s is not a sha256 (64 hex)" % what)
    return v


def _nonneg(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ManifestError("%s is not a non-negative integer" % what)
    return v
