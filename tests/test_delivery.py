"""Deliveries into the real pipeline (real engine, store, files): a package as bytes, as an open
descriptor and as a path goes through the same stages with the same outcomes; the verifier sees
the raw bytes before any parser and a refusal leaves the parser uncalled; commands (rollback,
pin, unpin) are deliveries through the same lock and reporting; a delivery id answers a
redelivery with its first outcome."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from conftest import kernel, store_digest, write_pkg, y_of
from refitd import pipeline as pipeline_mod
from refitd.delivery import PIN, ROLLBACK, UNPIN, Delivery, Origin, canonical_command
from refitd.pipeline import Pipeline


def _bytes_of(path):
    with open(path, "rb") as f:
        return f.read()


def _deliver(p, kind, path, **kw):
    """One package delivery of ``kind`` (bytes, fd, path) for the file at ``path``."""
    origin = Origin("test", where=path)
    if kind == "bytes":
        return p.deliver(Delivery.of_bytes(_bytes_of(path), origin, **kw))
    if kind == "path":
        return p.deliver(Delivery.of_path(path, origin, **kw))
    fd = os.open(path, os.O_RDONLY)
    try:
        return p.deliver(Delivery.of_fd(fd, origin, **kw))
    finally:
        os.close(fd)


def _cases(tmp_path, engine):
    """(name, file) in delivery order, each deciding at another stage."""
    fp = engine.fingerprint
    junk = str(tmp_path / "junk.safetensors")
    with open(junk, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    nan = kernel(1.0)
    nan["conv.weight"][0, 0, 0, 0] = np.nan
    big = str(tmp_path / "big.safetensors")
    write_pkg(big, {"conv.weight": np.ones((1, 1, 3, 3), np.float32), "pad": np.zeros(4096, np.float32)}, 9, fp)
    return [
        ("good", write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, fp)),
        ("same-again", str(tmp_path / "v1.safetensors")),
        ("older", write_pkg(tmp_path / "v0.safetensors", kernel(2.0), 1, fp)),
        ("size", big),
        ("parse", junk),
        ("model", write_pkg(tmp_path / "m.safetensors", kernel(1.0), 5, "sha256:" + "0" * 64)),
        ("finite", write_pkg(tmp_path / "nan.safetensors", nan, 6, fp)),
        ("good2", write_pkg(tmp_path / "v2.safetensors", kernel(3.0), 2, fp)),
    ]


@pytest.mark.parametrize("kind", ["bytes", "fd"])
def test_bytes_fd_and_path_deliveries_go_through_the_same_stages(kind, conv_model_path, engine, tmp_path, events):
    from refitd.engine import Engine
    from refitd.store import Store

    cases = _cases(tmp_path, engine)
    results = {}
    for k in ("path", kind):
        with Engine.open(conv_model_path, backend="reference") as eng, \
                Store(str(tmp_path / ("store-" + k)), keep=5) as st:
            p = Pipeline(eng, st, None, events, max_package_bytes=4096)
            p.start()
            results[k] = [(name,) + tuple((o.ok, o.stage, o.reason, o.version))
                          for name, f in cases for o in [_deliver(p, k, f)]]
            assert y_of(eng) == (27.0, 2)
    assert results[kind] == results["path"]
    stages = [r[2] for r in results["path"]]
    assert stages == ["done", "already-applied", "version", "size", "parse", "model", "finite", "done"]


def test_verifier_sees_the_raw_bytes_before_any_parser(engine, store, tmp_path, monkeypatch):
    calls = []
    real_parse = pipeline_mod.parse_package_bytes

    def parse(data, **kw):
        calls.append(("parse", bytes(data)))
        return real_parse(data, **kw)

    def verifier(data, signature, delivery):
        calls.append(("verify", bytes(data), signature, delivery.origin.channel))
        assert delivery.sha256 == hashlib.sha256(data).hexdigest()  # the identity it checks

    monkeypatch.setattr(pipeline_mod, "parse_package_bytes", parse)
    p = Pipeline(engine, store, None, None, verifier=verifier)
    p.start()
    f = write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, engine.fingerprint)
    raw = _bytes_of(f)
    out = p.deliver(Delivery.of_bytes(raw, Origin("mqtt", where="refit/box1"), signature=b"S" * 64))
    assert out.ok and out.version == 1
    assert calls == [("verify", raw, b"S" * 64, "mqtt"), ("parse", raw)]


def test_a_refusing_verifier_leaves_the_parser_uncalled(engine, store, tmp_path, monkeypatch):
    parsed = []
    monkeypatch.setattr(pipeline_mod, "parse_package_bytes", lambda *a, **k: parsed.append(a))

    def verifier(data, signature, delivery):
        raise ValueError("signature does not verify with key box-fleet")

    p = Pipeline(engine, store, None, None, verifier=verifier)
    p.start()
    before = store_digest(store.path)
    f = write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, engine.fingerprint)
    for kind in ("bytes", "fd", "path"):
        out = _deliver(p, kind, f, signature=b"bad")
        assert (out.ok, out.stage, out.reason, out.version) == (
            False, "signature", "signature does not verify with key box-fleet", None)
    assert parsed == [] and store_digest(store.path) == before and y_of(engine) == (0.0, 0)


def test_the_size_cap_comes_before_the_verifier(engine, store, tmp_path):
    seen = []
    p = Pipeline(engine, store, None, None, max_package_bytes=100,
                 verifier=lambda data, sig, d: seen.append(len(data)))
    p.start()
    f = write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, engine.fingerprint)
    out = _deliver(p, "bytes", f)
    assert (out.ok, out.stage) == (False, "size") and seen == []
    assert out.reason == "package too large: %d bytes, limit 100" % os.path.getsize(f)


def test_a_second_pin_or_unpin_succeeds_unchanged_without_an_event(pipeline, engine, store, tmp_path, events):
    """pin and unpin are equally idempotent (store.pin/unpin return whether they changed it):
    the repeat succeeds at stage ``unchanged`` and emits no store.pinned / store.unpinned."""
    assert pipeline.apply(write_pkg(tmp_path / "v1.safetensors", kernel(1), 1, engine.fingerprint)).ok
    stages = []
    for command in (PIN, PIN, UNPIN, UNPIN):
        o = pipeline.deliver(Delivery.of_command(command, Origin("cli"), version=1))
        assert o.ok, o
        stages.append(o.stage)
    assert stages == ["done", "unchanged", "done", "unchanged"] and store.pins() == []
    kinds = [k for k, _ in events.lines if k.startswith("store.")]
    assert kinds == ["store.pinned", "store.unpinned"]


def test_commands_are_deliveries_through_the_verifier(pipeline, engine, store, tmp_path, events):
    seen = []
    pipeline.verifier = lambda data, sig, d: seen.append((bytes(data), sig, d.command))
    for v in (1, 2):
        assert pipeline.apply(write_pkg(tmp_path / ("v%d.safetensors" % v), kernel(v), v, engine.fingerprint)).ok
    o = pipeline.deliver(Delivery.of_command(PIN, Origin("cli"), signature=b"s", version=1))
    assert (o.ok, o.version) == (True, 1) and store.pins() == [1]
    assert events.last("store.pinned") == {"version": 1}
    o = pipeline.deliver(Delivery.of_command(PIN, Origin("cli"), version=7))
    assert (o.ok, o.stage) == (False, "lookup") and "7" in o.reason
    o = pipeline.deliver(Delivery.of_command(ROLLBACK, Origin("mqtt"), to=1))
    assert (o.ok, o.version, o.stage, o.previous) == (True, 1, "done", 2) and y_of(engine) == (9.0, 1)
    assert events.last("update.rolled_back")["source"] == "mqtt"
    o = pipeline.deliver(Delivery.of_command(UNPIN, Origin("cli"), version=1))
    assert o.ok and store.pins() == []
    assert seen[2] == (canonical_command(PIN, {"version": 1}), b"s", PIN)
    assert [c for _, _, c in seen] == ["apply", "apply", PIN, PIN, ROLLBACK, UNPIN]
    # a refused command changes nothing
    pipeline.verifier = lambda data, sig, d: (_ for _ in ()).throw(ValueError("unsigned command"))
    before = store_digest(store.path)
    o = pipeline.deliver(Delivery.of_command(ROLLBACK, Origin("mqtt"), to=2))
    assert (o.ok, o.stage, o.reason) == (False, "signature", "unsigned command")
    assert store_digest(store.path) == before and y_of(engine) == (9.0, 1)


def test_a_delivery_id_seen_before_gets_its_first_outcome(pipeline, engine, store, tmp_path, events):
    f = write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, engine.fingerprint)
    first = pipeline.deliver(Delivery.of_bytes(_bytes_of(f), Origin("mqtt", id="m-17")))
    assert first.ok and first.stage == "done"
    again = pipeline.deliver(Delivery.of_bytes(_bytes_of(f), Origin("mqtt", id="m-17")))
    assert again is first and events.last("update.duplicate")["id"] == "m-17"
    assert [k for k in events.kinds() if k == "update.applied"] == ["update.applied"]


def test_a_delivery_carries_one_package_form():
    with pytest.raises(ValueError, match="exactly one of data, fd, path"):
        Delivery(Origin("x"), data=b"a", path="/p")
    with pytest.raises(ValueError, match="unknown delivery command"):
        Delivery.of_command("format", Origin("x"))


def test_channel_base_gates_delivers_and_reports(pipeline, engine, tmp_path):
    from refitd.channels.base import Channel, Gate, Stopping

    reported, heard = [], []

    class Probe(Channel):
        name = "probe"

        def start(self):
            pass

        def stop(self):
            pass

        def report(self, delivery, outcome):
            reported.append((delivery.origin, outcome.ok, outcome.version))

    pipeline.listeners.append(lambda d, o: heard.append((d.source, d.command, o.stage)))
    gate = Gate()
    ch = Probe(pipeline, None, gate)
    f = write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, engine.fingerprint)
    out = ch.deliver(Delivery.of_path(f, ch.origin(where=f, peer="uid 1000")))
    assert out.ok and reported == [(Origin("probe", where=f, peer="uid 1000"), True, 1)]
    assert heard == [("probe", "apply", "done")] and gate.busy == 0
    gate.close()
    with pytest.raises(Stopping, match="the daemon is stopping"):
        ch.deliver(Delivery.of_command(ROLLBACK, ch.origin()))
    assert gate.drain(0.1) and y_of(engine) == (9.0, 1)
