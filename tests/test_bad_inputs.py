"""The bad-input corpus: every case is rejected by the real pipeline with its own one-line
message, and afterwards the engine serves the same version and the store's bytes are unchanged.

The baseline (module scope): the seeds' conv model, a store holding versions 0 (model file), 1, 2
and 3 (kernel all 1, 2, 3; version 3 serving, y = 27), a golden shadow check that accepts
y in [0, 90.5] (kernel up to 10), and a 64 KiB package cap.
"""
import json
import os
import struct

import numpy as np
import pytest

from conftest import kernel, store_digest, write_pkg, y_of
from refitd.engine import Engine
from refitd.pipeline import Pipeline
from refitd.store import Store

CAP = 64 * 1024
GOLDEN = [{"type": "golden", "inputs": {"x": 1.0}, "expect": {"y": 45.0}, "atol": 45.5, "rtol": 0.0}]
ONES_BYTES = np.ones((1, 1, 3, 3), np.float32).tobytes()
OTHER_FP = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def base(tmp_path_factory, conv_model_path):
    d = tmp_path_factory.mktemp("bad")
    eng = Engine.open(conv_model_path)
    st = Store(d / "store", keep=10)
    p = Pipeline(eng, st, None, None, checks=GOLDEN, max_package_bytes=CAP)
    p.start()
    for k in (1, 2, 3):
        assert p.apply(write_pkg(d / ("v%d.safetensors" % k), kernel(k), k, eng.fingerprint)).ok
    yield {"engine": eng, "store": st, "pipeline": p, "dir": d, "fp": eng.fingerprint}
    st.close()
    eng.close()


# ---- crafting ---------------------------------------------------------------------------


def container(header, data=b"", hlen=None):
    """safetensors bytes from a header (dict -> JSON, or raw str/bytes) and data."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(header) if hlen is None else hlen) + header + data


def meta(fp, version="10", **extra):
    m = {"refit.version": version, "refit.model": fp}
    m.update(extra)
    return {k: v for k, v in m.items() if v is not None}


def one(fp, name="conv.weight", dtype="F32", shape=(1, 1, 3, 3), offs=(0, 36), data=ONES_BYTES,
        m=None, **entry_extra):
    entry = {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
             "data_offsets": list(offs)}
    entry.update(entry_extra)
    return container({"__metadata__": m or meta(fp), name: entry}, data)


def good_pkg(fp, tensors=None, version=10, base=None, note=None):
    from safetensors.numpy import save

    m = {"refit.version": str(version), "refit.model": fp}
    if base is not None:
        m["refit.base"] = str(base)
    if note is not None:
        m["refit.note"] = note
    return save(tensors if tensors is not None else kernel(1), metadata=m)


def with_value(v, index=0, k=1.0):
    t = np.full((1, 1, 3, 3), k, np.float32)
    t.flat[index] = v
    return {"conv.weight": t}


def two(fp, a_offs, b_offs, data_len=72):
    return container({"__metadata__": meta(fp),
                      "a": {"dtype": "F32", "shape": [9], "data_offsets": list(a_offs)},
                      "conv.weight": {"dtype": "F32", "shape": [1, 1, 3, 3],
                                      "data_offsets": list(b_offs)}}, b"\0" * data_len)


def raw_json(fp, body):
    """A header whose JSON text is written by hand (duplicate keys, odd constants)."""
    return container(body.replace("FP", fp), ONES_BYTES)


ENTRY = '{"dtype":"F32","shape":[1,1,3,3],"data_offsets":[0,36]}'
META = '{"refit.version":"10","refit.model":"FP"}'


# (id, builder(fp) -> bytes, stage, exact message)
CASES = [
    # -- size and container framing
    ("empty", lambda fp: b"", "parse", "package is empty (0 bytes)"),
    ("five-bytes", lambda fp: b"\x10\0\0\0\0", "parse",
     "package truncated: 5 bytes, shorter than the 8-byte header length"),
    ("length-only", lambda fp: struct.pack("<Q", 100), "parse",
     "package truncated: header says 100 bytes, file has 0 after the length field"),
    ("header-length-beyond-file", lambda fp: container("{" + " " * 91, hlen=4096), "parse",
     "package truncated: header says 4096 bytes, file has 92 after the length field"),
    ("header-length-huge", lambda fp: container("{}", hlen=1 << 40), "parse",
     "package header too large: header length says 1099511627776 bytes, limit 16777216"),
    ("header-one-byte", lambda fp: container("{", hlen=1), "parse",
     "package header is 1 bytes, too short for a JSON object"),
    ("oversized", lambda fp: good_pkg(fp) + b"\0" * CAP, "size", None),
    ("text-file", lambda fp: b"hello, this is not a weight package at all\n", "parse",
     "package is not safetensors: no JSON header after the 8-byte length"),
    ("zip-npz", lambda fp: b"PK\x03\x04" + b"\0" * 60, "parse",
     "package is not safetensors: no JSON header after the 8-byte length "
     "(looks like a zip archive (.npz or a PyTorch .pt?))"),
    ("npy", lambda fp: b"\x93NUMPY\x01\x00" + b"v" * 60, "parse",
     "package is not safetensors: no JSON header after the 8-byte length (looks like a .npy array)"),
    ("pickle", lambda fp: b"\x80\x04\x95" + b"\0" * 60, "parse",
     "package is not safetensors: no JSON header after the 8-byte length (looks like a Python pickle)"),
    # -- the JSON header
    ("not-utf8", lambda fp: container(b'{"\xff\xfe": 1}'), "parse", "package header is not UTF-8 (byte 2)"),
    ("invalid-json", lambda fp: container('{"a": }'), "parse",
     "package header is not valid JSON: Expecting value: line 1 column 7 (char 6)"),
    ("trailing-garbage", lambda fp: container('{} {}'), "parse",
     "package header is not valid JSON: Extra data: line 1 column 4 (char 3)"),
    ("json-list", lambda fp: container('[1, 2]'), "parse",
     "package header is a JSON list, not an object"),
    ("nan-constant", lambda fp: container('{"x": NaN}'), "parse",
     "package header is not valid JSON: JSON constant NaN is not allowed"),
    ("nested-too-deep", lambda fp: container('{"a":' + "[" * 30000 + "]" * 30000 + "}"), "parse",
     "package header JSON is nested too deeply"),
    ("duplicate-tensor", lambda fp: raw_json(fp, '{"__metadata__":%s,"conv.weight":%s,"conv.weight":%s}'
                                             % (META, ENTRY, ENTRY)), "parse",
     'package header names tensor "conv.weight" twice'),
    ("duplicate-metadata", lambda fp: raw_json(fp, '{"__metadata__":%s,"__metadata__":%s,"conv.weight":%s}'
                                               % (META, META, ENTRY)), "parse",
     "package header has __metadata__ twice"),
    ("duplicate-metadata-key", lambda fp: raw_json(
        fp, '{"__metadata__":{"refit.version":"1","refit.version":"10","refit.model":"FP"},'
            '"conv.weight":%s}' % ENTRY), "parse",
     'package metadata key "refit.version" appears twice'),
    ("duplicate-entry-key", lambda fp: raw_json(
        fp, '{"__metadata__":%s,"conv.weight":{"dtype":"F32","dtype":"F16","shape":[1,1,3,3],'
            '"data_offsets":[0,36]}}' % META), "parse",
     'tensor "conv.weight": key "dtype" appears twice'),
    # -- metadata
    ("metadata-list", lambda fp: container({"__metadata__": [], "conv.weight": json.loads(ENTRY)}, ONES_BYTES),
     "parse", "package __metadata__ is a JSON list, not an object"),
    ("metadata-int-value", lambda fp: one(fp, m={"refit.version": 10, "refit.model": fp}), "parse",
     'package metadata value of "refit.version" is a JSON int, not a string'),
    ("metadata-huge-value", lambda fp: one(fp, m=meta(fp, **{"tool.blob": "x" * 17000})), "parse",
     'package metadata value of "tool.blob" is longer than 16384 bytes'),
    ("no-metadata", lambda fp: container({"conv.weight": json.loads(ENTRY)}, ONES_BYTES), "parse",
     "package has no __metadata__ (refit.version and refit.model are required)"),
    ("no-version", lambda fp: one(fp, m={"refit.model": fp, "refit.note": "x"}), "parse",
     "package metadata lacks refit.version"),
    ("version-not-int", lambda fp: one(fp, m=meta(fp, version="ten")), "parse",
     'package refit.version is not a non-negative integer: "ten"'),
    ("version-negative", lambda fp: one(fp, m=meta(fp, version="-4")), "parse",
     'package refit.version is not a non-negative integer: "-4"'),
    ("version-overflow", lambda fp: one(fp, m=meta(fp, version="99999999999999999999")), "parse",
     'package refit.version is not a non-negative integer: "99999999999999999999"'),
    ("no-model", lambda fp: one(fp, m={"refit.version": "10"}), "parse", "package metadata lacks refit.model"),
    ("model-not-fingerprint", lambda fp: one(fp, m=meta("md5:1234")), "parse",
     'package refit.model is not a fingerprint (sha256:<64 hex>): "md5:1234"'),
    ("base-not-older", lambda fp: one(fp, m=meta(fp, **{"refit.base": "10"})), "parse",
     "package refit.base 10 is not older than its refit.version 10"),
    ("base-not-int", lambda fp: one(fp, m=meta(fp, **{"refit.base": "v9"})), "parse",
     'package refit.base is not a non-negative integer: "v9"'),
    ("note-too-long", lambda fp: one(fp, m=meta(fp, **{"refit.note": "\u00e9" * 2100})), "parse",
     "package refit.note is longer than 4096 bytes"),
    # -- tensor entries
    ("no-tensors", lambda fp: container({"__metadata__": meta(fp)}), "parse", "package has no tensors"),
    ("entry-not-object", lambda fp: container({"__metadata__": meta(fp), "conv.weight": [1, 2]}), "parse",
     'tensor "conv.weight": entry is a JSON list, not an object'),
    ("entry-lacks-offsets", lambda fp: container({"__metadata__": meta(fp), "conv.weight":
                                                  {"dtype": "F32", "shape": [1, 1, 3, 3]}}, ONES_BYTES),
     "parse", 'tensor "conv.weight": entry lacks data_offsets'),
    ("entry-extra-key", lambda fp: one(fp, checksum="x"), "parse",
     'tensor "conv.weight": unexpected entry key "checksum"'),
    ("dtype-bf16", lambda fp: one(fp, dtype="BF16", offs=(0, 18), data=b"\0" * 18), "parse",
     'tensor "conv.weight": dtype BF16 not accepted (F32 or F16 only)'),
    ("dtype-f64", lambda fp: one(fp, dtype="F64", offs=(0, 72), data=b"\0" * 72), "parse",
     'tensor "conv.weight": dtype F64 not accepted (F32 or F16 only)'),
    ("dtype-i32", lambda fp: one(fp, dtype="I32"), "parse",
     'tensor "conv.weight": dtype I32 not accepted (F32 or F16 only)'),
    ("dtype-i64", lambda fp: one(fp, dtype="I64", offs=(0, 72), data=b"\0" * 72), "parse",
     'tensor "conv.weight": dtype I64 not accepted (F32 or F16 only)'),
    ("dtype-u8", lambda fp: one(fp, dtype="U8", offs=(0, 9), data=b"\0" * 9), "parse",
     'tensor "conv.weight": dtype U8 not accepted (F32 or F16 only)'),
    ("dtype-bool", lambda fp: one(fp, dtype="BOOL", offs=(0, 9), data=b"\0" * 9), "parse",
     'tensor "conv.weight": dtype BOOL not accepted (F32 or F16 only)'),
    ("dtype-unknown", lambda fp: one(fp, dtype="F128"), "parse", 'tensor "conv.weight": unknown dtype "F128"'),
    ("dtype-not-string", lambda fp: one(fp, dtype=1), "parse", 'tensor "conv.weight": dtype is not a string'),
    ("shape-not-list", lambda fp: one(fp, shape="1x1x3x3"), "parse", 'tensor "conv.weight": shape is not a list'),
    ("shape-negative", lambda fp: one(fp, shape=(1, 1, -3, -3)), "parse",
     'tensor "conv.weight": shape dimension -3 is not a non-negative integer'),
    ("shape-float", lambda fp: one(fp, shape=(1, 1, 3.0, 3)), "parse",
     'tensor "conv.weight": shape dimension 3.0 is not a non-negative integer'),
    ("shape-too-many-dims", lambda fp: one(fp, shape=(1,) * 7 + (3, 3)), "parse",
     'tensor "conv.weight": shape has 9 dimensions, limit 8'),
    ("offsets-arity", lambda fp: one(fp, offs=(0, 18, 36)), "parse",
     'tensor "conv.weight": data_offsets must be two non-negative integers, got "[0, 18, 36]"'),
    ("offsets-negative", lambda fp: one(fp, offs=(-36, 0)), "parse",
     'tensor "conv.weight": data_offsets must be two non-negative integers, got "[-36, 0]"'),
    ("offsets-reversed", lambda fp: one(fp, offs=(36, 0)), "parse",
     'tensor "conv.weight": data_offsets [36, 0] end before they begin'),
    ("shape-bytes-mismatch", lambda fp: one(fp, offs=(0, 32), data=ONES_BYTES[:32]), "parse",
     'tensor "conv.weight": shape [1,1,3,3] F32 needs 36 bytes, data_offsets give 32'),
    ("data-truncated", lambda fp: one(fp, data=ONES_BYTES[:20]), "parse",
     "package truncated: tensors need 36 data bytes, file has 20"),
    ("overlapping-offsets", lambda fp: two(fp, (0, 36), (20, 56)), "parse",
     'tensors "a" and "conv.weight" overlap (bytes 0-36 and 20-56)'),
    ("gap-between", lambda fp: two(fp, (0, 36), (40, 76), 76), "parse",
     'package data has a 4-byte gap between tensors "a" and "conv.weight"'),
    ("gap-before-first", lambda fp: one(fp, offs=(8, 44), data=b"\0" * 44), "parse",
     'package data has a 8-byte gap before the first tensor "conv.weight"'),
    ("trailing-bytes", lambda fp: one(fp, data=ONES_BYTES + b"\0" * 12), "parse",
     "package has 12 trailing bytes after the last tensor"),
    # -- tensor names
    ("name-empty", lambda fp: one(fp, name=""), "parse", "tensor name is empty"),
    ("name-dotdot", lambda fp: one(fp, name="../../etc/passwd"), "parse",
     'tensor name "../../etc/passwd" is path-like'),
    ("name-absolute", lambda fp: one(fp, name="/etc/passwd"), "parse", 'tensor name "/etc/passwd" is path-like'),
    ("name-backslash", lambda fp: one(fp, name="..\\windows\\w"), "parse",
     'tensor name "..\\\\windows\\\\w" is path-like'),
    ("name-huge", lambda fp: one(fp, name="w" * 300), "parse",
     'tensor name "%s..." is 300 bytes, limit 256' % ("w" * 48)),
    ("name-newline", lambda fp: one(fp, name="conv\nweight"), "parse",
     'tensor name "conv\\nweight" contains control character U+000A'),
    ("name-nul", lambda fp: one(fp, name="conv\0weight"), "parse",
     'tensor name "conv\\u0000weight" contains control character U+0000'),
    ("name-bidi", lambda fp: one(fp, name="conv\u202eweight"), "parse",
     'tensor name "conv\\u202eweight" contains control character U+202E'),
    ("name-lone-surrogate", lambda fp: raw_json(fp, '{"__metadata__":%s,"conv\\ud800":%s}' % (META, ENTRY)),
     "parse", 'tensor name "conv\\ud800" contains a lone surrogate'),
    # -- against the model
    ("wrong-fingerprint", lambda fp: good_pkg(OTHER_FP), "model", None),
    ("unknown-tensor", lambda fp: good_pkg(fp, {"conv.bias": np.ones((1,), np.float32)}), "model",
     'tensor "conv.bias" is not a refittable weight of the model (did you mean "conv.weight"?)'),
    ("unknown-tensor-beside-good", lambda fp: good_pkg(fp, dict(kernel(1), extra=np.ones(2, np.float32))),
     "model", 'tensor "extra" is not a refittable weight of the model'),
    ("wrong-shape", lambda fp: good_pkg(fp, {"conv.weight": np.ones((1, 1, 2, 2), np.float32)}), "model",
     'tensor "conv.weight": shape [1,1,2,2], model wants [1,1,3,3]'),
    ("wrong-rank", lambda fp: good_pkg(fp, {"conv.weight": np.ones(9, np.float32)}), "model",
     'tensor "conv.weight": shape [9], model wants [1,1,3,3]'),
    # -- values
    ("nan", lambda fp: good_pkg(fp, kernel(np.nan)), "finite",
     'tensor "conv.weight" has 9 non-finite values (first: NaN at flat index 0)'),
    ("pos-inf", lambda fp: good_pkg(fp, with_value(np.inf, 3)), "finite",
     'tensor "conv.weight" has 1 non-finite values (first: +Inf at flat index 3)'),
    ("neg-inf-f16", lambda fp: good_pkg(fp, {"conv.weight": with_value(-np.inf, 8)["conv.weight"]
                                             .astype(np.float16)}), "finite",
     'tensor "conv.weight" has 1 non-finite values (first: -Inf at flat index 8)'),
    # -- version policy (serving 3, highest 3)
    ("equal-version", lambda fp: good_pkg(fp, version=3), "version",
     "package version 3 equals the serving version 3"),
    ("older-version", lambda fp: good_pkg(fp, version=1), "version",
     "package version 1 is older than the serving version 3"),
    ("version-zero", lambda fp: good_pkg(fp, version=0), "version",
     "package version 0 is older than the serving version 3"),
    ("base-not-stored", lambda fp: good_pkg(fp, version=12, base=11), "version",
     "package base version 11 is not in the store (stored: 0, 1, 2, 3)"),
    # -- the shadow check
    ("fails-golden", lambda fp: good_pkg(fp, kernel(20)), "health",
     'health check 1 (golden): output "y" differs from golden at flat index 0: got 180, expected 45 '
     '(1 of 1 values off; rtol 0, atol 45.5)'),
    ("fails-golden-negative", lambda fp: good_pkg(fp, kernel(-1)), "health",
     'health check 1 (golden): output "y" differs from golden at flat index 0: got -9, expected 45 '
     '(1 of 1 values off; rtol 0, atol 45.5)'),
]

def _expected(case_id, msg, fp, data_len):
    if case_id == "oversized":
        return "package too large: %d bytes, limit %d" % (data_len, CAP)
    if case_id == "wrong-fingerprint":
        return "package is for model %s..., this engine serves model %s..." % (OTHER_FP[:23], fp[:23])
    return msg


def _check_unchanged(base, before):
    eng, st = base["engine"], base["store"]
    assert eng.version == 3 and y_of(eng) == (27.0, 3)
    assert st.current() == 3 and st.highest() == 3 and st.versions() == [0, 1, 2, 3]
    assert store_digest(st.path) == before


def test_corpus_is_big_and_messages_are_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 50
    msgs = [c[3] for c in CASES if c[3] is not None]
    assert len(msgs) == len(set(msgs))


@pytest.mark.parametrize("case_id, build, stage, msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_rejected_and_nothing_changes(base, tmp_path, case_id, build, stage, msg):
    p, st = base["pipeline"], base["store"]
    before = store_digest(st.path)
    data = build(base["fp"])
    path = tmp_path / ("%s.safetensors" % case_id)
    path.write_bytes(data)
    out = p.apply(str(path), source="test")
    assert not out.ok
    assert out.reason == _expected(case_id, msg, base["fp"], len(data))
    assert out.stage == stage
    assert out.previous == 3
    _check_unchanged(base, before)


@pytest.mark.parametrize("case_id", ["directory", "fifo", "missing-file"])
def test_bad_paths(base, tmp_path, case_id):
    before = store_digest(base["store"].path)
    path = str(tmp_path / "nope.safetensors")
    if case_id == "directory":
        path = str(tmp_path)
    elif case_id == "fifo":  # opening a FIFO without a writer must not block the pipeline
        os.mkfifo(path)
    out = base["pipeline"].apply(path)
    want = ("package not found: %s" % path if case_id == "missing-file"
            else "package is not a regular file: %s" % path)
    assert (out.ok, out.stage, out.reason) == (False, "size", want)
    _check_unchanged(base, before)


def test_good_package_after_the_corpus_still_applies(base, tmp_path):
    # the corpus ran against a live pipeline; it still takes a good update, then goes back
    p, eng = base["pipeline"], base["engine"]
    path = write_pkg(tmp_path / "ok.safetensors", kernel(4), 4, base["fp"])
    out = p.apply(path)
    assert out.ok and y_of(eng) == (36.0, 4)
    assert p.rollback(to=3).ok and y_of(eng) == (27.0, 3)
