"""The hostile corpus (>= 200 inputs): packages (test_bad_inputs' 85 cases), signatures and
signed manifests, control-socket requests and commands, and config documents. Built, not
stored: each entry is (id, bytes or text), and what it must be refused with is checked by
tests/test_hostile_corpus.py on every channel it can arrive by."""
from __future__ import annotations

import base64
import json
import os
import time
from typing import Any, Callable, Dict, List, Tuple

from refitd.signing import dump_envelope, sign_envelope
from refitd.trust import command_claims, package_claims


def package_cases(fp: str) -> List[Tuple[str, bytes]]:
    """test_bad_inputs' corpus (framing, header, metadata, tensors, model, values, version, health)."""
    import test_bad_inputs as b
    return [(cid, build(fp)) for cid, build, _stage, _msg in b.CASES]


def _env(signed: Dict[str, Any], key) -> Dict[str, Any]:
    return json.loads(dump_envelope(sign_envelope(signed, [key])))


def signature_cases(fp: str, data: bytes, key, stranger) -> List[Tuple[str, bytes, bytes]]:
    """(id, package bytes, signature bytes): every one must be refused at the signature stage
    (or, for signed garbage, by the parser after it)."""
    future = time.time() + 3600
    good = package_claims(data, 10, fp, future)
    ok = _env(good, key)

    def edit(fn: Callable[[Dict[str, Any]], None]) -> bytes:
        e = json.loads(json.dumps(ok))
        fn(e)
        return json.dumps(e).encode()

    def resign(**changes: Any) -> bytes:
        s = dict(good)
        s.update(changes)
        return json.dumps(_env({k: v for k, v in s.items() if v is not None}, key)).encode()

    raw: List[Tuple[str, bytes]] = [
        ("sig-empty", b""), ("sig-one-byte", b"{"), ("sig-random", os.urandom(200)),
        ("sig-nul", b"\0" * 64), ("sig-not-utf8", b'{"signed": "\xff"}'), ("sig-null", b"null"),
        ("sig-list", b"[]"), ("sig-number", b"42"), ("sig-string", b'"sig"'), ("sig-object-empty", b"{}"),
        ("sig-raw-64-bytes", os.urandom(64)), ("sig-base64-only", base64.b64encode(os.urandom(64))),
        ("sig-nan", b'{"signed": NaN, "signatures": []}'),
        ("sig-infinity", b'{"signed": {"length": Infinity}, "signatures": []}'),
        ("sig-dup-key", b'{"signed": {}, "signed": {}, "signatures": []}'),
        ("sig-deep", b'{"signed":' + b"[" * 5000 + b"]" * 5000 + b',"signatures":[]}'),
        ("sig-too-large", b" " * (70 << 10)),
        ("sig-trailing", dump_envelope(ok) + b"{}"),
        ("sig-extra-key", edit(lambda e: e.update(extra=1))),
        ("sig-no-signed", edit(lambda e: e.pop("signed"))),
        ("sig-signed-list", edit(lambda e: e.update(signed=[]))),
        ("sig-no-signatures", edit(lambda e: e.update(signatures=[]))),
        ("sig-signatures-object", edit(lambda e: e.update(signatures={}))),
        ("sig-17-signatures", edit(lambda e: e.update(signatures=e["signatures"] * 17))),
        ("sig-entry-string", edit(lambda e: e.update(signatures=["x"]))),
        ("sig-keyid-int", edit(lambda e: e["signatures"][0].update(keyid=5))),
        ("sig-bad-base64", edit(lambda e: e["signatures"][0].update(sig="!!!"))),
        ("sig-short", edit(lambda e: e["signatures"][0].update(sig=base64.b64encode(b"x" * 10).decode()))),
        ("sig-zero", edit(lambda e: e["signatures"][0].update(sig=base64.b64encode(b"\0" * 64).decode()))),
        ("sig-unknown-keyid", edit(lambda e: e["signatures"][0].update(keyid="0" * 16))),
        ("sig-version-edited", edit(lambda e: e["signed"].update(version=11))),
        ("sig-length-edited", edit(lambda e: e["signed"].update(length=1))),
        ("sig-expiry-edited", edit(lambda e: e["signed"].update(expires="2099-01-01T00:00:00Z"))),
        ("sig-by-stranger", json.dumps(_env(good, stranger)).encode()),
        ("sig-expired", resign(expires="2020-01-01T00:00:00Z")),
        ("sig-no-expiry", resign(expires=None)),
        ("sig-bad-expiry", resign(expires="tomorrow")),
        ("sig-wrong-type", resign(_type="refitd/command")),
        ("sig-wrong-spec", resign(spec_version=2)),
        ("sig-wrong-length", resign(length=len(data) + 1)),
        ("sig-wrong-sha", resign(sha256="0" * 64)),
        ("sig-wrong-model", resign(model="sha256:" + "ee" * 32)),
        ("sig-wrong-fleet", resign(target={"fleet": "elsewhere"})),
        ("sig-below-floor", resign(version=2)),
        ("sig-version-string", resign(version="10")),
        ("sig-no-sha", resign(sha256=None)),
    ]
    out = [(cid, data, sig) for cid, sig in raw]
    # signed garbage: authentic, so it reaches the parser, which refuses it
    for cid, junk in (("signed-garbage", os.urandom(300)), ("signed-empty-header", b"\0" * 8),
                      ("signed-text", b"not a package\n"), ("signed-zip", b"PK\x03\x04" + b"\0" * 60)):
        out.append((cid, junk, dump_envelope(_env(package_claims(junk, 10, fp, future), key))))
    return out


def control_lines(key) -> List[Tuple[str, bytes]]:
    """Raw request lines for the control socket: each answered {"ok": false, "error": one line}."""
    def j(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    expired = dump_envelope(_env(command_claims("rollback", {"to": 1}, issued=time.time() - 7200, ttl=60), key)).decode()
    wrong_cmd = dump_envelope(_env(command_claims("pin", {"version": 1}), key)).decode()
    return [
        ("not-json", b"hello"), ("half-json", b'{"cmd": '), ("json-list", b"[1, 2]"), ("json-null", b"null"),
        ("json-number", b"7"), ("no-cmd", b"{}"), ("cmd-int", j({"cmd": 5})), ("cmd-null", j({"cmd": None})),
        ("cmd-unknown", j({"cmd": "format-disk"})), ("cmd-empty", j({"cmd": ""})),
        ("not-utf8", b'{"cmd": "\xff"}'), ("nan", b'{"cmd": "rollback", "to": NaN}'),
        ("rollback-negative", j({"cmd": "rollback", "to": -1})),
        ("rollback-string", j({"cmd": "rollback", "to": "3"})),
        ("rollback-bool", j({"cmd": "rollback", "to": True})),
        ("rollback-float", j({"cmd": "rollback", "to": 2.5})),
        ("rollback-huge", j({"cmd": "rollback", "to": 10 ** 30})),
        ("rollback-not-stored", j({"cmd": "rollback", "to": 99})),
        ("rollback-current", j({"cmd": "rollback", "to": 3})),
        ("rollback-sig-int", j({"cmd": "rollback", "to": 1, "sig": 5})),
        ("rollback-sig-garbage", j({"cmd": "rollback", "to": 1, "sig": "garbage"})),
        ("rollback-sig-huge", j({"cmd": "rollback", "to": 1, "sig": "x" * (70 << 10)})),
        ("rollback-sig-expired", j({"cmd": "rollback", "to": 1, "sig": expired})),
        ("rollback-sig-other-cmd", j({"cmd": "rollback", "to": 1, "sig": wrong_cmd})),
        ("pin-missing", j({"cmd": "pin"})), ("pin-string", j({"cmd": "pin", "version": "1"})),
        ("pin-negative", j({"cmd": "pin", "version": -4})), ("pin-not-stored", j({"cmd": "pin", "version": 77})),
        # (unpin of a stored but unpinned version is idempotent, ok with changed false: not hostile)
        ("unpin-not-stored", j({"cmd": "unpin", "version": 77})),
        ("apply-no-path", j({"cmd": "apply"})), ("apply-path-int", j({"cmd": "apply", "path": 3})),
        ("apply-relative", j({"cmd": "apply", "path": "w.safetensors"})),
        ("apply-missing", j({"cmd": "apply", "path": "/nonexistent/w.safetensors"})),
        ("apply-directory", j({"cmd": "apply", "path": "/"})),
        ("apply-dev-zero", j({"cmd": "apply", "path": "/dev/zero"})),
        ("apply-proc", j({"cmd": "apply", "path": "/proc/self/environ"})),
        ("infer-no-inputs", j({"cmd": "infer"})), ("infer-bad-tensor", j({"cmd": "infer", "inputs": {"x": 1}})),
        ("infer-bad-base64", j({"cmd": "infer", "inputs": {"x": {"dtype": "float32", "shape": [1, 1, 3, 3], "data": "%%"}}})),
        ("infer-wrong-size", j({"cmd": "infer", "inputs": {"x": {"dtype": "float32", "shape": [1, 1, 3, 3], "data": "AAAA"}}})),
        ("cmd-list", j({"cmd": ["status"]})), ("cmd-object", j({"cmd": {"status": 1}})),
    ]


def config_documents() -> List[Tuple[str, str]]:
    """Config files that must be refused by the loader (ConfigError: key, cause, line)."""
    ok_key = "ed25519:" + base64.b64encode(b"\1" * 32).decode()
    docs = [
        ("empty-list", "[]"), ("scalar", "42"), ("string", "just text"), ("tab-indent", "model:\n\tpath: x"),
        ("bad-yaml", "model: [unclosed"), ("dup-key", "store: {path: /a}\nstore: {path: /b}"),
        ("anchor-bomb", "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]"),
        ("binary", "model: !!binary aGVsbG8="), ("python-tag", "model: !!python/object/apply:os.system ['true']"),
        ("nul", "store:\n  path: \"/tmp/a\\0b\""), ("unknown-section", "bogus: 1"),
        ("no-store", "control: {socket: /tmp/c.sock}"), ("no-control", "store: {path: /tmp/s}"),
        ("store-keep-zero", "store: {path: /tmp/s, keep: 0}\ncontrol: {socket: /tmp/c.sock}"),
        ("store-keep-string", "store: {path: /tmp/s, keep: many}\ncontrol: {socket: /tmp/c.sock}"),
        ("max-bytes-negative", "store: {path: /tmp/s, max_package_bytes: -1}\ncontrol: {socket: /tmp/c.sock}"),
        ("threads-zero", "workers: {threads: 0}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("threads-huge", "workers: {threads: 100000}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("socket-too-long", "store: {path: /tmp/s}\ncontrol: {socket: /tmp/%s}" % ("s" * 200)),
        ("metrics-public", "store: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}\nmetrics: {listen: '0.0.0.0:9100'}"),
        ("same-paths", "store: {path: /tmp/s}\nwatch: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("watch-in-store", "store: {path: /tmp/s}\nwatch: {path: /tmp/s/in}\ncontrol: {socket: /tmp/c.sock}"),
        ("source-unknown", "source: {type: camera}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("sink-unknown", "sink: {type: kafka}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("log-level", "log: {level: loud}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("health-not-list", "health: {checks: finite}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("window-share", "health: {window: {max_bad_share: 7}}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("watch-keep-negative", "watch: {path: /tmp/in, keep: -1}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("sink-max-bytes-string", "sink: {type: jsonl, path: /tmp/r, max_bytes: big}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("sig-required-no-keys", "security: {require_signature: true}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("sig-channel-unknown", "security: {require_signature: [ftp]}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("sig-required-string", "security: {require_signature: 'yes'}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("keys-list", "security: {trusted_keys: [a, b]}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("key-wrong-id", "security: {trusted_keys: {abcd: '%s'}}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}" % ok_key),
        ("key-not-ed25519", "security: {trusted_keys: {abcd: 'rsa:AAAA'}}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("key-short", "security: {trusted_keys: {abcd: 'ed25519:AAAA'}}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("threshold-zero", "security: {threshold: 0}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("threshold-above-keys", "security: {threshold: 3, trusted_keys: {}}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("window-zero", "security: {command_window: 0}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
        ("security-unknown-key", "security: {require_signatures: true}\nstore: {path: /tmp/s}\ncontrol: {socket: /tmp/c.sock}"),
    ]
    return docs


# ---- the MQTT channel's own inputs (tests/test_hostile_corpus.py::test_hostile_*_over_mqtt) ----

def as_transfer(data: bytes) -> Tuple[bytes, Dict[str, bytes]]:
    """Any bytes as a transfer manifest and its objects, so a device rebuilds exactly ``data``
    and hands it to the pipeline (a weight server only offers what parses: these need a crafted
    one): the first half as the "header", the rest as one tensor."""
    import hashlib
    from refitd.fleet import manifest as M
    cut = len(data) // 2
    blob = data[cut:]
    cs = M.MIN_CHUNK
    obj = {"format": M.FORMAT, "package": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)},
           "header": base64.b64encode(data[:cut]).decode(), "chunk_size": cs,
           "tensors": [{"name": "t", "offset": cut, "nbytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                        "chunks": [hashlib.sha256(blob[o:o + cs]).hexdigest() for o in range(0, len(blob), cs)]}]}
    raw = M.canonical(obj)
    return raw, {hashlib.sha256(raw).hexdigest(): raw, hashlib.sha256(blob).hexdigest(): blob}


def desired_doc(fp: str, fleet: str, package: Tuple[str, int], manifest: Tuple[str, int],
                version: int = 10, signature: Any = None) -> Dict[str, Any]:
    """A desired-state message as ``refitd push`` writes it (manifest.desired's shape)."""
    return {"signed": {"package": {"sha256": package[0], "size": package[1]},
                       "manifest": {"sha256": manifest[0], "size": manifest[1]},
                       "version": version, "model": fp, "base": None,
                       "target": {"fleet": fleet, "group": None}, "expires": None,
                       "issued": "2026-01-01T00:00:00Z"},
            "signature": signature}


def desired_cases(fp: str, fleet: str) -> List[Tuple[str, bytes]]:
    """Malformed desired-state messages (retained on .../desired): each refused at stage
    ``desired`` or, well-formed but announcing the impossible, at ``signature``/``model``."""
    sha = "ab" * 32
    good = desired_doc(fp, fleet, (sha, 100), ("cd" * 32, 100))

    def edit(fn: Callable[[Dict[str, Any]], Any]) -> bytes:
        d = json.loads(json.dumps(good))
        fn(d)
        return json.dumps(d).encode()
    s = lambda **kw: edit(lambda d: d["signed"].update(kw))  # noqa: E731
    return [
        ("desired-not-json", b"{not json"), ("desired-not-utf8", b'{"signed": "\xff"}'),
        ("desired-list", b"[]"), ("desired-null", b"null"), ("desired-number", b"12"),
        ("desired-no-signed", b'{"signature": null}'), ("desired-signed-string", b'{"signed": "x"}'),
        ("desired-too-large", b'{"signed": {}, "pad": "' + b"x" * (200 << 10) + b'"}'),
        ("desired-no-package", edit(lambda d: d["signed"].pop("package"))),
        ("desired-package-list", s(package=[])),
        ("desired-bad-sha", s(package={"sha256": "xyz", "size": 1})),
        ("desired-upper-sha", s(package={"sha256": "AB" * 32, "size": 1})),
        ("desired-negative-size", s(package={"sha256": sha, "size": -1})),
        ("desired-size-float", s(package={"sha256": sha, "size": 1.5})),
        ("desired-no-manifest", edit(lambda d: d["signed"].pop("manifest"))),
        ("desired-manifest-bad-sha", s(manifest={"sha256": 7, "size": 1})),
        ("desired-version-string", s(version="10")), ("desired-version-negative", s(version=-3)),
        ("desired-version-bool", s(version=True)),
        ("desired-model-garbage", s(model="resnet")), ("desired-model-int", s(model=5)),
        ("desired-expired", s(expires="2001-01-01T00:00:00Z")), ("desired-expires-int", s(expires=5)),
        ("desired-sig-int", edit(lambda d: d.update(signature=5))),
        ("desired-sig-not-base64", edit(lambda d: d.update(signature="%%%"))),
        ("desired-sig-huge", edit(lambda d: d.update(signature="A" * (100 << 10)))),
        ("desired-sig-garbage-envelope", edit(lambda d: d.update(signature=base64.b64encode(b"junk").decode()))),
        ("desired-other-model", s(model="sha256:" + "ee" * 32)),
    ]


def manifest_cases(fp: str) -> List[Tuple[str, Callable[[bytes, Dict[str, Any]], bytes]]]:
    """Transfer manifests a rogue weight server serves for a desired state naming their sha256:
    (id, edit(raw manifest of a real package, its object) -> the bytes served). Each refused at
    stage ``manifest``."""
    def j(fn: Callable[[Dict[str, Any]], Any]) -> Callable[[bytes, Dict[str, Any]], bytes]:
        def make(raw: bytes, obj: Dict[str, Any]) -> bytes:
            o = json.loads(json.dumps(obj))
            fn(o)
            return json.dumps(o).encode()
        return make
    t0 = lambda o: o["tensors"][0]  # noqa: E731
    return [
        ("manifest-not-json", lambda raw, obj: b"\x00garbage"), ("manifest-empty", lambda raw, obj: b""),
        ("manifest-list", lambda raw, obj: b"[]"), ("manifest-not-utf8", lambda raw, obj: b'{"a": "\xff"}'),
        ("manifest-format-2", j(lambda o: o.update(format=2))),
        ("manifest-no-package", j(lambda o: o.pop("package"))),
        ("manifest-chunk-tiny", j(lambda o: o.update(chunk_size=16))),
        ("manifest-header-not-b64", j(lambda o: o.update(header="%%"))),
        ("manifest-no-tensors", j(lambda o: o.update(tensors=[]))),
        ("manifest-tensor-string", j(lambda o: o.update(tensors=["w"]))),
        ("manifest-gap", j(lambda o: t0(o).update(offset=t0(o)["offset"] + 1))),
        ("manifest-too-few-chunks", j(lambda o: t0(o).update(chunks=t0(o)["chunks"][:-1] or ["00" * 32] * 9))),
        ("manifest-chunk-not-sha", j(lambda o: t0(o).update(chunks=["zz"] * len(t0(o)["chunks"])))),
        ("manifest-short-total", j(lambda o: o["tensors"].pop())),
        ("manifest-other-package", j(lambda o: o["package"].update(sha256="00" * 32))),
        ("manifest-other-size", j(lambda o: o["package"].update(size=o["package"]["size"] + 1))),
    ]


def response_cases() -> List[Tuple[str, bytes]]:
    """Malformed chunk responses published on a device's weights/response topic."""
    import struct
    from refitd.fleet import wire
    hdr = lambda h: wire.MAGIC + struct.pack(">I", len(h)) + h  # noqa: E731
    return [
        ("response-empty", b""), ("response-garbage", os.urandom(64)), ("response-magic-only", b"RFC1"),
        ("response-wrong-magic", b"RFC2" + b"\0" * 12), ("response-huge-header-len", b"RFC1\xff\xff\xff\xff"),
        ("response-header-past-end", b"RFC1\x00\x00\x01\x00{}"), ("response-header-not-json", hdr(b"{nope")),
        ("response-header-list", hdr(b"[1]")), ("response-no-corr", hdr(b'{"obj": "x", "off": 0, "n": 0}')),
        ("response-n-lies", hdr(b'{"corr": "ab", "obj": "x", "off": 0, "n": 99}') + b"short"),
    ]
