"""ed25519 signatures of packages and commands: keys, canonical JSON, signed envelopes.

An envelope is TUF's shape::

    {"signed": {"_type": "refitd/package" | "refitd/command", ...},
     "signatures": [{"keyid": "<16 hex>", "sig": "<base64 of 64 bytes>"}, ...]}

Each signature covers ``canonical(signed)``: JSON with sorted keys, no whitespace, UTF-8, and
only strings, integers, booleans, null, lists and objects (no floats: their text is not unique).
A key id is the first 16 hex digits of sha256 over the raw 32-byte public key, so it names the
key itself, and a config that maps an id to a different key is refused when loaded.

Verification (``verify_envelope``) reads at most ``MAX_ENVELOPE_BYTES``, parses strictly (no
duplicate keys, no NaN), checks each signature against the *trusted* key its id names, and
counts distinct trusted keys whose signature verifies: at least ``threshold`` or the envelope
is refused. A key removed from the trusted set no longer counts (revocation). Every refusal is
``SignatureError`` with one line naming the cause.

Key files: the private key is PKCS#8 PEM, mode 0600; the public key file is one line
``ed25519:<base64 of the raw 32 bytes>`` (the same text ``security.trusted_keys`` takes).
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = ["SignatureError", "TrustedKeys", "canonical", "keyid_of", "generate_key",
           "load_private_key", "write_key_pair", "public_key_text", "parse_public_key",
           "sign_envelope", "dump_envelope", "verify_envelope", "parse_time", "format_time",
           "PACKAGE_TYPE", "COMMAND_TYPE", "MAX_ENVELOPE_BYTES"]

PACKAGE_TYPE = "refitd/package"
COMMAND_TYPE = "refitd/command"
SPEC_VERSION = 1
MAX_ENVELOPE_BYTES = 64 << 10  # delivery.MAX_SIGNATURE_BYTES: chunk hashes of a 1 GiB package fit
MAX_SIGNATURES = 16
_PUB_PREFIX = "ed25519:"
_INT_LIMIT = 1 << 63


class SignatureError(ValueError):
    """A signature or envelope is refused; ``str(e)`` is one line naming the cause."""


# ---- canonical JSON ------------------------------------------------------------------------

def _check_canonical(obj: Any, where: str = "signed") -> None:
    if obj is None or isinstance(obj, (bool, str)):
        return
    if isinstance(obj, int):
        if not -_INT_LIMIT < obj < _INT_LIMIT:
            raise SignatureError("%s: integer %d out of range" % (where, obj))
        return
    if isinstance(obj, float):
        raise SignatureError("%s: floats are not allowed in signed data" % where)
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_canonical(v, "%s[%d]" % (where, i))
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise SignatureError("%s: keys must be strings" % where)
            # a key that is not plain text is quoted, so the message stays one line
            _check_canonical(v, "%s.%s" % (where, k if k.isprintable() else json.dumps(k)))
        return
    raise SignatureError("%s: %s cannot be signed" % (where, type(obj).__name__))


def canonical(obj: Any) -> bytes:
    """The one byte string a signature covers."""
    _check_canonical(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise SignatureError("envelope: key %s appears twice" % json.dumps(k)[:40])
        out[k] = v
    return out


def _no_constant(token: str) -> Any:
    raise SignatureError("envelope: %s is not allowed" % token)


def _strict_json(raw: bytes, what: str) -> Any:
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("%s is not UTF-8 text" % what) from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except SignatureError:
        raise
    except (ValueError, RecursionError) as e:
        raise SignatureError("%s is not valid JSON (%s)" % (what, str(e).split(":")[0])) from None


# ---- time ----------------------------------------------------------------------------------

def format_time(t: float) -> str:
    return _dt.datetime.fromtimestamp(int(t), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: Any, what: str) -> float:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC) -> seconds since the epoch."""
    if not isinstance(s, str):
        raise SignatureError("%s must be a UTC time like 2027-01-31T00:00:00Z" % what)
    try:
        d = _dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise SignatureError("%s must be a UTC time like 2027-01-31T00:00:00Z, got %s"
                             % (what, json.dumps(s)[:40])) from None
    return d.timestamp()


# ---- keys ----------------------------------------------------------------------------------

def _crypto():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    return ed25519


def _raw_public(pub: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization as s
    return pub.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)


def keyid_of(pub: Any) -> str:
    """The key id of a public key (or its raw 32 bytes)."""
    raw = pub if isinstance(pub, (bytes, bytearray)) else _raw_public(pub)
    return hashlib.sha256(bytes(raw)).hexdigest()[:16]


def generate_key() -> Any:
    return _crypto().Ed25519PrivateKey.generate()


def public_key_text(key: Any) -> str:
    """``ed25519:<base64>`` of a private or public key's public half."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    return _PUB_PREFIX + base64.b64encode(_raw_public(pub)).decode("ascii")


def parse_public_key(text: str) -> Tuple[str, Any]:
    """``ed25519:<base64>`` -> (key id, public key). SignatureError if malformed."""
    if not isinstance(text, str) or not text.strip().startswith(_PUB_PREFIX):
        raise SignatureError("a public key must look like ed25519:<base64 of 32 bytes>")
    try:
        raw = base64.b64decode(text.strip()[len(_PUB_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("public key: not valid base64") from None
    if len(raw) != 32:
        raise SignatureError("public key: %d bytes, an ed25519 key has 32" % len(raw))
    return keyid_of(raw), _crypto().Ed25519PublicKey.from_public_bytes(raw)


def write_key_pair(path: str, key: Any) -> Tuple[str, str]:
    """Writes the private key to ``path`` (0600, refusing to overwrite) and the public key to
    ``path.pub``. Returns (key id, public key path)."""
    from cryptography.hazmat.primitives import serialization as s
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path = path + ".pub"
    with open(pub_path, "w", encoding="ascii") as f:
        f.write(public_key_text(key) + "\n")
    return keyid_of(key.public_key()), pub_path


def load_private_key(path: str) -> Any:
    from cryptography.hazmat.primitives import serialization as s
    try:
        with open(path, "rb") as f:
            key = s.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise SignatureError("cannot read key %s: %s" % (path, e.strerror)) from None
    except (ValueError, TypeError):
        raise SignatureError("%s is not a PEM private key" % path) from None
    if not isinstance(key, _crypto().Ed25519PrivateKey):
        raise SignatureError("%s is not an ed25519 key" % path)
    return key


class TrustedKeys:
    """The public keys a box trusts, by key id, and how many must sign (``threshold``)."""

    def __init__(self, keys: Mapping[str, Any], threshold: int = 1):
        self.keys = dict(keys)
        if not isinstance(threshold, int) or threshold < 1:
            raise SignatureError("threshold must be an integer >= 1")
        self.threshold = threshold

    @classmethod
    def from_config(cls, mapping: Mapping[str, str], threshold: int = 1) -> "TrustedKeys":
        keys = {}
        for kid, text in mapping.items():
            got, pub = parse_public_key(text)
            if got != kid:
                raise SignatureError("trusted key %s: the key's id is %s" % (kid, got))
            keys[kid] = pub
        return cls(keys, threshold)

    def __len__(self) -> int:
        return len(self.keys)


# ---- envelopes -----------------------------------------------------------------------------

def sign_envelope(signed: Mapping[str, Any], keys: Iterable[Any],
                  envelope: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """An envelope of ``signed`` signed by each private key in ``keys`` (added to the
    signatures of ``envelope`` when given: k-of-n signing by several holders)."""
    body = dict(signed)
    msg = canonical(body)
    sigs = list(envelope["signatures"]) if envelope else []
    if envelope and canonical(envelope["signed"]) != msg:
        raise SignatureError("the envelope to add a signature to signs different data")
    for key in keys:
        kid = keyid_of(key.public_key())
        sigs = [s for s in sigs if s.get("keyid") != kid]
        sigs.append({"keyid": kid, "sig": base64.b64encode(key.sign(msg)).decode("ascii")})
    return {"signed": body, "signatures": sigs}


def dump_envelope(env: Mapping[str, Any]) -> bytes:
    return json.dumps(env, sort_keys=True, indent=1).encode("utf-8") + b"\n"


def verify_envelope(raw: Any, trusted: TrustedKeys, expect_type: str,
                    now: Optional[float] = None) -> Dict[str, Any]:
    """Checks an envelope's signatures and expiry; returns its ``signed`` part. The caller
    checks what the signed fields claim (hash, length, version, target, nonce)."""
    data = bytes(raw)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SignatureError("signature envelope is %d bytes, limit %d" % (len(data), MAX_ENVELOPE_BYTES))
    env = _strict_json(data, "signature envelope")
    if not isinstance(env, dict) or set(env) != {"signed", "signatures"}:
        raise SignatureError("signature envelope must be an object with exactly signed and signatures")
    signed, sigs = env["signed"], env["signatures"]
    if not isinstance(signed, dict):
        raise SignatureError("signature envelope: signed must be an object")
    if signed.get("_type") != expect_type:
        raise SignatureError("signature envelope is for %s, expected %s"
                             % (json.dumps(signed.get("_type"))[:40], expect_type))
    if signed.get("spec_version") != SPEC_VERSION:
        raise SignatureError("signature envelope: spec_version %s, this refitd reads %d"
                             % (json.dumps(signed.get("spec_version"))[:20], SPEC_VERSION))
    if not isinstance(sigs, list) or not sigs:
        raise SignatureError("signature envelope carries no signatures")
    if len(sigs) > MAX_SIGNATURES:
        raise SignatureError("signature envelope carries %d signatures, limit %d" % (len(sigs), MAX_SIGNATURES))
    msg = canonical(signed)
    good, unknown, bad = set(), [], []
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or not isinstance(s.get("sig"), str):
            raise SignatureError("signature envelope: each signature is {keyid, sig} strings")
        kid = s["keyid"]
        pub = trusted.keys.get(kid)
        if pub is None:
            unknown.append(kid[:16])
            continue
        try:
            pub.verify(base64.b64decode(s["sig"], validate=True), msg)
        except Exception:  # InvalidSignature, bad base64, wrong length
            bad.append(kid)
            continue
        good.add(kid)
    if len(good) < trusted.threshold:
        if bad:
            why = "signature by key %s does not verify" % bad[0]
        elif unknown and not good:
            why = "signed by key %s, which is not trusted (security.trusted_keys)" % unknown[0]
        else:
            why = "signed by %d trusted key%s" % (len(good), "" if len(good) == 1 else "s")
        raise SignatureError("%s; %d of %d trusted keys must sign" % (why, trusted.threshold, len(trusted)))
    expires = signed.get("expires")
    if expires is None:
        raise SignatureError("signed data has no expiry")
    t = parse_time(expires, "expires")
    now = _now() if now is None else now
    if t <= now:
        raise SignatureError("signed data expired at %s (now %s)" % (expires, format_time(now)))
    return signed


def _now() -> float:
    import time
    return time.time()
