"""The fleet protocol pieces without a broker: manifest build/parse and its refusals, the chunk
wire format, the mqtt config section, and the transfer against a real in-process weight
server's answers (``WeightServer._read``) with a real store: only missing blobs are fetched,
bad chunks are refused, a restart resumes from the partial area, the rebuild is byte-exact."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from refitd.fleet import manifest as M
from refitd.fleet import wire
from refitd.fleet.settings import MqttSettings
from refitd.schema import _Ctx, _build
from refitd.fleet.transfer import Transfer, TransferError
from refitd.pack import write_package
from refitd.store import Store

FP = "sha256:" + "ab" * 32


def package(tmp_path, version=1, n=4, size=50_000, fill=None):
    rng = np.random.default_rng(version)
    t = {"w%d" % i: (rng.standard_normal(size).astype(np.float32) if fill is None else
                     np.full(size, fill[i], np.float32)) for i in range(n)}
    p = str(tmp_path / ("v%d.safetensors" % version))
    write_package(p, t, version=version, model=FP)
    return p, t


def test_manifest_round_trip_and_desired(tmp_path):
    p, _ = package(tmp_path)
    data = open(p, "rb").read()
    m = M.build(data, chunk_size=16 << 10)
    assert m.package_sha256 == hashlib.sha256(data).hexdigest() and m.package_size == len(data)
    assert [t.name for t in m.tensors] == ["w0", "w1", "w2", "w3"]
    assert all(len(t.chunks) == -(-t.nbytes // (16 << 10)) for t in m.tensors)
    assert M.parse(m.raw).sha256 == m.sha256
    d = M.desired(m, 1, FP, "site1", "g1")
    s = M.parse_desired(json.dumps(d).encode())
    assert s["package"]["sha256"] == m.package_sha256 and s["target"] == {"fleet": "site1", "group": "g1"}
    assert M.parse_desired(b"") is None  # a cleared retained message
    assert s["signature"] is None
    env = b'{"signed": {}, "signatures": []}\n'  # carried as the exact bytes, base64
    s = M.parse_desired(json.dumps(M.desired(m, 1, FP, "site1", signature=env)).encode())
    assert s["signature"] == env and M.signature_id(env) != M.signature_id(None)
    for bad, why in ((12, "must be base64"), ("***", "not base64")):
        d = dict(M.desired(m, 1, FP, "site1"), signature=bad)
        with pytest.raises(M.ManifestError, match=why):
            M.parse_desired(json.dumps(d).encode())


@pytest.mark.parametrize("mutate,why", [
    (lambda o: o.update(format=2), "format"),
    (lambda o: o["tensors"][1].update(offset=o["tensors"][1]["offset"] + 4), "contiguous"),
    (lambda o: o["tensors"][0]["chunks"].pop(), "chunk hashes"),
    (lambda o: o["package"].update(size=1), "package size"),
    (lambda o: o.update(header="***"), "base64"),
    (lambda o: o.update(chunk_size=10), "chunk_size"),
])
def test_manifest_refusals_name_the_field(tmp_path, mutate, why):
    p, _ = package(tmp_path)
    obj = json.loads(M.build(open(p, "rb").read()).raw)
    mutate(obj)
    with pytest.raises(M.ManifestError, match=why):
        M.parse(M.canonical(obj))


@pytest.mark.parametrize("payload,why", [
    (b"{", "not JSON"), (b'{"x":1}', "signed part"),
    (json.dumps({"signed": {"package": {"sha256": "x", "size": 1}}}).encode(), "package.sha256"),
    (b"x" * (M.MAX_DESIRED_BYTES + 1), "limit"),
])
def test_desired_refusals(payload, why):
    with pytest.raises(M.ManifestError, match=why):
        M.parse_desired(payload)


def test_desired_expired_is_refused(tmp_path):
    p, _ = package(tmp_path)
    d = M.desired(M.build(open(p, "rb").read()), 1, FP, "f", expires="2000-01-01T00:00:00Z")
    with pytest.raises(M.ManifestError, match="expired"):
        M.parse_desired(json.dumps(d).encode())


def test_wire_round_trip_and_refusals():
    obj = "cd" * 32
    head, data = wire.parse_response(wire.response("ab12", obj, 7, b"hello"))
    assert head == {"corr": "ab12", "obj": obj, "off": 7, "n": 5} and bytes(data) == b"hello"
    head, data = wire.parse_response(wire.response("ab12", obj, 0, err="nope"))
    assert head["err"] == "nope" and len(data) == 0
    req = wire.parse_request(wire.request("a/b", "ff", obj, 0, 10))
    assert req["reply_to"] == "a/b"
    for bad, why in ((b"x", "not JSON"), (wire.request("a/+", "ff", obj, 0, 1), "wildcards"),
                     (wire.request("a", "ff", "zz", 0, 1), "sha256"),
                     (wire.request("a", "ff", obj, -1, 1), "non-negative")):
        with pytest.raises(wire.WireError, match=why):
            wire.parse_request(bad)
    with pytest.raises(wire.WireError, match="start"):
        wire.parse_response(b"nope")
    with pytest.raises(wire.WireError, match="bytes"):
        wire.parse_response(wire.response("ab", obj, 0, b"abc")[:-1])


def test_settings_defaults_and_problems(tmp_path):
    def parse(raw):
        ctx = _Ctx()
        return _build(MqttSettings, raw, ("mqtt",), ctx), [(p.path, p.message) for p in ctx.problems]

    s, problems = parse({"enabled": True, "broker": "mqtt://127.0.0.1:1883", "fleet": "f1"})
    assert not problems and s.url == "mqtt://127.0.0.1:1883" and s.device_id
    s, problems = parse({"enabled": True, "host": "127.0.0.1", "tls": True, "fleet": "f"})
    assert not problems and s.url == "mqtts://127.0.0.1:8883"
    s, problems = parse({"enabled": True, "broker": "mqtt://h", "fleet": "f", "certfile": str(tmp_path / "c")})
    assert s is None and problems and problems[0][0] in ("mqtt.certfile", "mqtt.keyfile"), problems
    assert parse({})[0].enabled is False  # off by default: nothing else is required


class Wire:
    """The device side's send() answered at once from a real WeightServer's object table."""

    def __init__(self, server_objects, corrupt=0):
        self.objects = server_objects
        self.corrupt = corrupt
        self.answers = []
        self.asked = []

    def send(self, obj, off, n, corr):
        self.asked.append((obj, off, n))
        src = self.objects[obj]
        data = src[off:off + n] if isinstance(src, bytes) else self._file(src, off, n)
        if self.corrupt:
            self.corrupt -= 1
            data = bytes(len(data))
        self.answers.append(wire.parse_response(wire.response(corr, obj, off, data)))

    @staticmethod
    def _file(src, off, n):
        with open(src.path, "rb") as f:
            return os.pread(f.fileno(), min(n, src.nbytes - off), src.offset + off)


def run(tr, w, steps=10000):
    for _ in range(steps):
        if tr.complete:
            return
        tr.pump()
        while w.answers:
            tr.on_response(*w.answers.pop(0))
    raise AssertionError("transfer did not complete")


def served(path):
    from refitd.fleet.server import WeightServer

    class NoLink:
        max_packet = None

        def subscribe(self, *a, **k):
            pass
    s = WeightServer(NoLink(), chunk_size=16 << 10)
    m = s.add(path)
    return s, m


def test_transfer_fetches_only_missing_blobs_and_rebuilds_exactly(tmp_path):
    store = Store(str(tmp_path / "store"))
    p1, t1 = package(tmp_path, 1)
    store.put(1, t1)
    store.commit(1)
    t2 = dict(t1)
    t2["w2"] = np.full(50_000, 2.0, np.float32)  # one of four tensors changed
    p2 = str(tmp_path / "v2.safetensors")
    write_package(p2, t2, version=2, model=FP)
    server, m = served(p2)
    d = M.parse_desired(json.dumps(M.desired(m, 2, FP, "f")).encode())
    w = Wire(server.objects)
    tr = Transfer(str(tmp_path / "partial"), store, d, w.send, piece=16 << 10)
    run(tr, w)
    assert {a[0] for a in w.asked} == {m.sha256, m.tensors[2].sha256}  # manifest + the changed blob
    assert tr.counters.received == len(m.raw) + 200_000
    out = tr.rebuild()
    assert open(out, "rb").read() == open(p2, "rb").read()


def test_transfer_refuses_bad_chunks_and_resumes_after_restart(tmp_path):
    store = Store(str(tmp_path / "store"))
    p, _ = package(tmp_path, 3)
    server, m = served(p)
    d = M.parse_desired(json.dumps(M.desired(m, 3, FP, "f")).encode())
    rejected = []
    w = Wire(server.objects, corrupt=3)
    tr = Transfer(str(tmp_path / "partial"), store, d, w.send, piece=16 << 10, max_in_flight=2,
                  on_reject=rejected.append)
    for _ in range(12):  # part of the way, including the three bad answers
        tr.pump(now=1e9)
        while w.answers:
            tr.on_response(*w.answers.pop(0))
    assert len(rejected) == 3 and tr.counters.rejected == 3
    done = tr.done_bytes
    assert 0 < done < m.package_size
    # a new process: the manifest and the good chunks on disk count, only the rest is asked for
    w2 = Wire(server.objects)
    tr2 = Transfer(str(tmp_path / "partial"), store, d, w2.send, piece=16 << 10)
    assert tr2.done_bytes == done and tr2.manifest is not None
    run(tr2, w2)
    assert sum(a[2] for a in w2.asked) == m.package_size - len(m.header) - done
    assert open(tr2.rebuild(), "rb").read() == open(p, "rb").read()


def test_rebuild_with_a_lying_manifest_is_refused(tmp_path):
    store = Store(str(tmp_path / "store"))
    p, _ = package(tmp_path, 4)
    server, m = served(p)
    obj = json.loads(m.raw)
    obj["package"]["sha256"] = "0" * 64
    bad = M.parse(M.canonical(obj))
    server.add_manifest(bad, p)
    d = M.parse_desired(json.dumps(M.desired(bad, 4, FP, "f")).encode())
    w = Wire(server.objects)
    tr = Transfer(str(tmp_path / "partial"), store, d, w.send, piece=16 << 10)
    run(tr, w)
    with pytest.raises(TransferError, match="does not match"):
        tr.rebuild()


def test_chunks_that_match_a_lying_manifest_are_refused_per_tensor(tmp_path):
    """Mix-and-match with a rogue manifest: the signed layout (tensor table) of version 5, but
    the chunk hashes of version 6's bytes, whose chunks a rogue server sends. Every chunk passes
    its (unsigned) chunk hash; each tensor, once whole, fails its signed sha256 and is dropped
    and fetched again: version 6's bytes never reach a rebuild."""
    store = Store(str(tmp_path / "store"))
    pa, _ = package(tmp_path, 5)
    pb, _ = package(tmp_path, 6)
    server, ma = served(pa)
    _, mb = served(pb)
    obj = json.loads(ma.raw)
    for t, tb in zip(obj["tensors"], mb.tensors):
        t["chunks"] = tb.chunks
    lying = M.parse(M.canonical(obj))
    M.check_layout(lying, M.layout(ma))  # the table it shows is the signed one
    server.objects[lying.sha256] = lying.raw
    for t, tb in zip(ma.tensors, mb.tensors):  # the rogue server: version 6's bytes for each blob
        server.objects[t.sha256] = server.objects[tb.sha256] if tb.sha256 in server.objects else \
            open(pb, "rb").read()[tb.offset:tb.offset + tb.nbytes]
    d = M.parse_desired(json.dumps(M.desired(lying, 5, FP, "f")).encode())
    rejected = []
    w = Wire(server.objects)
    tr = Transfer(str(tmp_path / "partial"), store, d, w.send, piece=16 << 10,
                  on_reject=rejected.append, layout=M.layout(ma))
    for _ in range(40):
        tr.pump(now=1e9)
        while w.answers:
            tr.on_response(*w.answers.pop(0))
    assert not tr.complete
    per_tensor = [r for r in rejected if "its chunks do not make its sha256" in r]
    assert len(per_tensor) >= len(ma.tensors), rejected[:3]
    assert all("\n" not in r for r in rejected)
    assert tr.done_bytes < ma.package_size - len(ma.header)



def test_a_manifest_not_matching_the_signed_layout_is_refused_before_any_chunk(tmp_path):
    store = Store(str(tmp_path / "store"))
    pa, _ = package(tmp_path, 5)
    pb, _ = package(tmp_path, 6)
    server, ma = served(pa)
    _, mb = served(pb)
    d = M.parse_desired(json.dumps(M.desired(ma, 5, FP, "f")).encode())
    w = Wire(server.objects)
    tr = Transfer(str(tmp_path / "partial"), store, d, w.send, piece=16 << 10, layout=M.layout(mb))
    with pytest.raises(M.ManifestError, match="not the signed package's"):
        run(tr, w)
    assert {a[0] for a in w.asked} == {ma.sha256}  # the manifest only: no chunk was asked for
