"""ed25519 envelopes and the trust policy on real keys, bytes and files (signing.py, trust.py):
canonical JSON, key ids, k-of-n, revocation, expiry, tampering, the persisted floor and nonces."""
from __future__ import annotations

import json
import os
import time

import pytest

from refitd.delivery import Delivery, Origin
from refitd.signing import (COMMAND_TYPE, PACKAGE_TYPE, SignatureError, TrustedKeys, canonical,
                            dump_envelope, generate_key, keyid_of, parse_public_key,
                            public_key_text, sign_envelope, verify_envelope)
from refitd.trust import Floor, NonceBook, Trust, command_claims, package_claims

FP = "sha256:" + "ab" * 32


def _trusted(*keys, threshold=1):
    return TrustedKeys.from_config({keyid_of(k.public_key()): public_key_text(k) for k in keys}, threshold)


def _pkg_sig(data, *keys, version=5, expires=None, **kw):
    claims = package_claims(data, version, FP, expires or time.time() + 3600, **kw)
    return dump_envelope(sign_envelope(claims, keys))


def test_canonical_json_is_one_byte_string_and_refuses_floats():
    assert canonical({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    with pytest.raises(SignatureError, match="floats"):
        canonical({"x": 1.5})


def test_key_text_round_trip_and_ids():
    k = generate_key()
    kid, pub = parse_public_key(public_key_text(k))
    assert kid == keyid_of(k.public_key()) and len(kid) == 16
    with pytest.raises(SignatureError, match="the key's id is"):
        TrustedKeys.from_config({"0" * 16: public_key_text(k)})


def test_envelope_verifies_and_every_tampering_is_refused():
    k = generate_key()
    data = b"package bytes"
    sig = _pkg_sig(data, k)
    signed = verify_envelope(sig, _trusted(k), PACKAGE_TYPE)
    assert signed["length"] == len(data) and signed["version"] == 5
    env = json.loads(sig)
    env["signed"]["version"] = 6  # the signed metadata changed after signing
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(json.dumps(env).encode(), _trusted(k), PACKAGE_TYPE)
    with pytest.raises(SignatureError, match="is for \"refitd/package\", expected refitd/command"):
        verify_envelope(sig, _trusted(k), COMMAND_TYPE)
    with pytest.raises(SignatureError, match="appears twice"):
        verify_envelope(b'{"signed": {}, "signed": {}, "signatures": []}', _trusted(k), PACKAGE_TYPE)
    with pytest.raises(SignatureError, match="not valid JSON"):
        verify_envelope(b"\x00garbage", _trusted(k), PACKAGE_TYPE)


def test_untrusted_removed_and_threshold():
    a, b, c = generate_key(), generate_key(), generate_key()
    sig = _pkg_sig(b"x", a, b)
    verify_envelope(sig, _trusted(a, b, threshold=2), PACKAGE_TYPE)
    with pytest.raises(SignatureError, match="not trusted"):
        verify_envelope(sig, _trusted(c), PACKAGE_TYPE)
    # b removed from the trusted set (revoked): a alone is below a threshold of 2
    with pytest.raises(SignatureError, match="signed by 1 trusted key; 2 of 2"):
        verify_envelope(sig, _trusted(a, c, threshold=2), PACKAGE_TYPE)
    # the same key twice is one key
    env = json.loads(_pkg_sig(b"x", a))
    env["signatures"] *= 2
    with pytest.raises(SignatureError, match="2 of 2"):
        verify_envelope(json.dumps(env).encode(), _trusted(a, b, threshold=2), PACKAGE_TYPE)


def test_expired_is_refused():
    k = generate_key()
    sig = _pkg_sig(b"x", k, expires=time.time() - 1)
    with pytest.raises(SignatureError, match="expired at"):
        verify_envelope(sig, _trusted(k), PACKAGE_TYPE)


def _trust(tmp_path, *keys, **kw):
    return Trust(_trusted(*keys), str(tmp_path / "trust"), fingerprint=FP, **kw)


def _apply(data, sig, channel="file"):
    return Delivery.of_bytes(data, Origin(channel), sig)


def test_trust_checks_length_hash_model_target_and_floor(tmp_path):
    k = generate_key()
    t = _trust(tmp_path, k, required=("mqtt",), fleet="north")
    data = b"0123456789"
    t.verify(data, _pkg_sig(data, k), _apply(data, None))
    for sig, match in ((_pkg_sig(data + b"!", k), "package is 10 bytes, the signature says 11"),
                       (_pkg_sig(b"9876543210", k), "does not match the signed"),
                       (_pkg_sig(data, k, fleet="south"), 'signed for fleet "south"')):
        with pytest.raises(SignatureError, match=match):
            t.verify(data, sig, _apply(data, sig))
    with pytest.raises(SignatureError, match="unsigned package: the mqtt channel requires"):
        t.verify(data, None, _apply(data, None, "mqtt"))
    t.floor.raise_to(5)
    with pytest.raises(SignatureError, match="not above the version floor 5"):
        t.verify(data, _pkg_sig(data, k, version=5), _apply(data, None))
    t.verify(data, _pkg_sig(data, k, version=6), _apply(data, None))


def test_announced_package_is_checked_like_its_bytes(tmp_path):
    """What the MQTT device checks before fetching: the same refusals on sha256 + size alone."""
    import hashlib
    k = generate_key()
    t = _trust(tmp_path, k, required=("mqtt",), fleet="north")
    data = b"0123456789"
    sha = hashlib.sha256(data).hexdigest()
    assert t.check_announced(_pkg_sig(data, k), sha, 10, "mqtt")["length"] == 10
    assert t.check_announced(None, sha, 10, "file") is None
    t.floor.raise_to(5)
    for sig, size, match in ((None, 10, "unsigned package: the mqtt channel requires"),
                             (_pkg_sig(data, k, version=6, fleet="south"), 10, 'signed for fleet "south"'),
                             (_pkg_sig(data, k, version=5), 10, "not above the version floor 5"),
                             (_pkg_sig(data, k, version=6), 1 << 40, "signature says 10"),
                             (_pkg_sig(data, generate_key(), version=6), 10, "not trusted")):
        with pytest.raises(SignatureError, match=match):
            t.check_announced(sig, sha, size, "mqtt")


def test_floor_persists_and_only_rises(tmp_path):
    f = Floor(str(tmp_path))
    assert f.value is None
    assert f.raise_to(7) and not f.raise_to(3)
    assert Floor(str(tmp_path)).value == 7


def test_signed_command_window_and_replay_across_restart(tmp_path):
    k = generate_key()
    t = _trust(tmp_path, k, required=("mqtt",))
    env = dump_envelope(sign_envelope(command_claims("rollback", {"to": 3}), [k]))
    d = Delivery.of_command("rollback", Origin("mqtt"), env, to=3)
    t.verify(b"", env, d)
    with pytest.raises(SignatureError, match="replayed command"):
        t.verify(b"", env, d)
    t2 = _trust(tmp_path, k, required=("mqtt",))  # a restart: the nonce is remembered on disk
    with pytest.raises(SignatureError, match="replayed command"):
        t2.verify(b"", env, d)
    other = Delivery.of_command("rollback", Origin("mqtt"), env, to=4)
    with pytest.raises(SignatureError, match="signed rollback to=3, the delivery asks to=4"):
        t2.verify(b"", env, other)
    old = dump_envelope(sign_envelope(command_claims("rollback", {"to": 3}, issued=time.time() - 3600,
                                                     ttl=7200), [k]))
    with pytest.raises(SignatureError, match="outside the 300 s window"):
        t2.verify(b"", old, Delivery.of_command("rollback", Origin("mqtt"), old, to=3))
    with pytest.raises(SignatureError, match="unsigned rollback command"):
        t2.verify(b"", None, Delivery.of_command("rollback", Origin("mqtt"), None, to=3))


def test_nonces_expire_after_the_window(tmp_path):
    book = NonceBook(str(tmp_path))
    book.remember("a" * 16, time.time() - 1)
    book.remember("b" * 16, time.time() + 60)
    again = NonceBook(str(tmp_path))
    assert not again.seen("a" * 16) and again.seen("b" * 16)


def test_sign_signs_the_package_layout(tmp_path):
    """`refitd sign` signs the header and tensor table (the MQTT transfer checks every tensor
    against them), the same whatever chunk size a weight server later picks."""
    from daemon_helpers import run_cli, seed_package
    from refitd.fleet import manifest as M
    from refitd.signing import write_key_pair
    key = str(tmp_path / "k")
    write_key_pair(key, generate_key())
    pkg = seed_package(str(tmp_path / "w.safetensors"), 2.0, 2, FP)
    r = run_cli("sign", pkg, "--key", key)
    assert r.returncode == 0, r.stderr
    signed = json.loads(open(pkg + ".sig", "rb").read())["signed"]
    data = open(pkg, "rb").read()
    for cs in (M.MIN_CHUNK, M.DEFAULT_CHUNK):
        assert signed["layout"] == M.layout(M.build(data, cs))

