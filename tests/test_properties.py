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
from refitd.trust import ChunkCheck, TrustError, package_claims

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


DATA_A, DATA_B = os.urandom(1000), os.urandom(1000)
CHUNKED = package_claims(DATA_A, 4, FP, time.time() + 3600, chunk_size=128)
CHUNKS_A = [DATA_A[i:i + 128] for i in range(0, 1000, 128)]
CHUNKS_B = [DATA_B[i:i + 128] for i in range(0, 1000, 128)]


@given(st.lists(st.tuples(st.integers(-2, 9), st.sampled_from(["a", "b", "junk"])), max_size=30))
def test_chunk_reassembly_takes_only_the_signed_chunks(sends):
    c = ChunkCheck(CHUNKED)
    for index, which in sends:
        chunk = {"a": CHUNKS_A, "b": CHUNKS_B}.get(which)
        data = chunk[index] if chunk is not None and 0 <= index < len(chunk) else b"x" * 128
        try:
            c.add(index, data)
        except TrustError as e:
            _one_line(e)
            assert not (which == "a" and 0 <= index < 8)  # the signed chunk is never refused
    if c.complete():
        assert c.data() == DATA_A  # whatever the order and the noise: exactly the signed bytes
    else:
        with pytest.raises(TrustError):
            c.data()


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
