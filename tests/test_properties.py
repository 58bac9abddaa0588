"""Property tests (hypothesis) of every parser that sees outside bytes: the package parser, the
signed-manifest (envelope) parser, chunk reassembly, the control-socket protocol and the config
loader. Each may refuse, with its own error type and one line, and must never raise anything
else. Bounded in CI (HYPOTHESIS_PROFILE=ci, the default); `make fuzz` runs the long profile."""
from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from refitd import config as C
from refitd.control import ControlServer
from refitd.package import PackageError, parse_package_bytes
from refitd.signing import PACKAGE_TYPE, SignatureError, TrustedKeys, dump_envelope, generate_key, \
    keyid_of, public_key_text, sign_envelope, verify_envelope
from refitd.trust import package_claims

settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FP = "sha256:" + "cd" * 32
KEY = generate_key()
TRUSTED = TrustedKeys.from_config({keyid_of(KEY.public_key()): public_key_text(KEY)})


def _one_line(e: BaseException) -> None:
    s = str(e)
    assert s and "\n" not in s, repr(s)


def _good_package() -> bytes:
    header = {"__metadata__": {"refit.version": "3", "refit.model": FP},
              "conv.weight": {"dtype": "F32", "shape": [1, 1, 3, 3], "data_offsets": [0, 36]}}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + np.ones(9, np.float32).tobytes()


GOOD = _good_package()


@given(st.binary(max_size=512))
def test_package_parser_on_any_bytes(data):
    try:
        parse_package_bytes(data)
    except PackageError as e:
        _one_line(e)


@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_package_parser_on_mutated_packages(edits):
    data = bytearray(GOOD)
    for i, b in edits:
        data[i] = b
    try:
        pkg = parse_package_bytes(bytes(data))
    except PackageError as e:
        _one_line(e)
    else:  # whatever it accepts is self-consistent
        assert pkg.version >= 0 and all(isinstance(a, np.ndarray) for a in pkg.tensors.values())


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                     max_leaves=20)


@given(st.one_of(st.binary(max_size=400), _json.map(lambda o: json.dumps(o).encode())))
def test_envelope_parser_on_any_input(raw):
    try:
        verify_envelope(raw, TRUSTED, PACKAGE_TYPE)
    except SignatureError as e:
        _one_line(e)
    else:
        pytest.fail("an envelope nobody signed was accepted")


SIGNED = json.loads(dump_envelope(sign_envelope(package_claims(GOOD, 3, FP, time.time() + 3600), [KEY])))


@given(st.sampled_from(sorted(SIGNED["signed"])), _json)
def test_any_change_to_signed_metadata_is_refused(key, value):
    env = json.loads(json.dumps(SIGNED))
    if env["signed"][key] == value:
        return
    env["signed"][key] = value
    with pytest.raises(SignatureError) as e:
        verify_envelope(json.dumps(env).encode(), TRUSTED, PACKAGE_TYPE)
    _one_line(e.value)


def _chain_packages():
    """Packages of version 4 (the signed one) and 5 (the same tensors, other values) and their
    transfer manifests at the smallest chunk size: three chunks per tensor."""
    import tempfile
    from refitd.fleet import manifest as M
    from refitd.pack import write_package
    d = tempfile.mkdtemp(prefix="refitd-prop-")
    out = []
    for v in (4, 5):
        w = {"w%d" % i: np.full(2500 + i, float(v * 10 + i), np.float32) for i in range(3)}
        p = write_package(os.path.join(d, "v%d.safetensors" % v), w, version=v, model=FP)
        data = open(p, "rb").read()
        out.append((p, data, M.build(data, M.MIN_CHUNK)))
    return d, out


PROP_DIR, ((PATH_A, DATA_A, MAN_A), (_PATH_B, DATA_B, MAN_B)) = _chain_packages()


@given(st.lists(st.sampled_from(["a", "b", "junk", "long", "short"]), max_size=40))
def test_chunk_reassembly_takes_only_the_signed_chunks(answers):
    """The MQTT transfer under a signed layout, answered with any mix of the right chunk, the
    same chunk of another version (mix-and-match), junk, and more or fewer bytes than asked
    (endless data): it holds only chunks that hash right, and what it rebuilds is exactly the
    signed package."""
    import tempfile
    from refitd.fleet import manifest as M, wire
    from refitd.fleet.transfer import Transfer
    from refitd.store import Store
    src = {"a": {t.sha256: DATA_A[t.offset:t.offset + t.nbytes] for t in MAN_A.tensors},
           "b": {t.name: DATA_B[t.offset:t.offset + t.nbytes] for t in MAN_B.tensors}}
    src["a"][MAN_A.sha256] = MAN_A.raw
    names = {t.sha256: t.name for t in MAN_A.tensors}
    d = M.parse_desired(json.dumps(M.desired(MAN_A, 4, FP, "f")).encode())
    work = tempfile.mkdtemp(dir=PROP_DIR)
    sent = []
    tr = Transfer(os.path.join(work, "partial"), Store(os.path.join(work, "store")), d,
                  lambda obj, off, n, corr: sent.append((obj, off, n, corr)), piece=M.MIN_CHUNK,
                  layout=M.layout(MAN_A))
    plan = list(answers)
    for _ in range(2000):
        if tr.complete:
            break
        tr.pump(now=1e9)
        while sent:
            obj, off, n, corr = sent.pop(0)
            kind = plan.pop(0) if plan else "a"
            good = src["a"][obj][off:off + n]
            data = {"a": good, "junk": os.urandom(n), "long": good + b"x", "short": good[:-1],
                    "b": src["b"].get(names.get(obj), b"")[off:off + n] or good}[kind]
            tr.on_response(*wire.parse_response(wire.response(corr, obj, off, data)))
    assert tr.complete
    assert open(tr.rebuild(), "rb").read() == DATA_A


def test_a_manifest_of_another_version_is_refused_against_the_signed_layout():
    from refitd.fleet import manifest as M
    M.check_layout(MAN_A, M.layout(MAN_A))
    with pytest.raises(M.ManifestError) as e:
        M.check_layout(MAN_B, M.layout(MAN_A))
    assert "not the signed package's" in str(e.value)
    _one_line(e.value)


def _server():
    return ControlServer("/nonexistent/never-bound.sock", 0o600,
                         {"ping": lambda req: {"pong": True}, "status": lambda req: {}})


@given(st.one_of(_json, st.dictionaries(st.sampled_from(["cmd", "to", "version", "path", "sig"]), _json)))
def test_control_protocol_dispatch_on_any_request(req):
    resp = _server().dispatch(req)
    assert isinstance(resp, dict) and isinstance(resp.get("ok"), bool)
    if not resp["ok"]:
        assert isinstance(resp["error"], str) and "\n" not in resp["error"]


_section = st.dictionaries(st.sampled_from(["path", "type", "keep", "threads", "socket", "every",
                                            "require_signature", "trusted_keys", "threshold",
                                            "max_bytes", "keep_bytes", "level"]), _json, max_size=4)


@given(st.dictionaries(st.sampled_from(list(C.SECTIONS) + ["bogus"]), st.one_of(_section, _json), max_size=6))
def test_config_loader_on_any_document(doc):
    try:
        C.parse_config(doc)
    except C.ConfigError as e:
        assert e.problems and all(str(p) for p in e.problems)
