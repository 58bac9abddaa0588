"""refitd.package: writing, defensive reading, model checks, pack from training output."""
import hashlib
import os
import struct

import numpy as np
import pytest

from conftest import kernel, write_pkg
from refitd import package as P
from refitd.engine import WeightSpec, schema_fingerprint
from refitd.package import PackageError, read_package

SPECS = [WeightSpec("conv.weight", "float32", (1, 1, 3, 3), 36)]
FP = schema_fingerprint(SPECS)
SCHEMA = (FP, SPECS)
CHAIN_SPECS = [WeightSpec("w%d" % i, "float32", (8,), 32) for i in range(4)]
CHAIN = (schema_fingerprint(CHAIN_SPECS), CHAIN_SPECS)


def test_roundtrip_metadata_and_values(tmp_path):
    path = write_pkg(tmp_path / "p.safetensors", kernel(2.5), 7, FP, base=3, note="retrained")
    pkg = read_package(path)
    assert (pkg.version, pkg.model, pkg.base, pkg.note) == (7, FP, 3, "retrained")
    assert pkg.created and pkg.created.endswith("Z")
    assert pkg.names == ["conv.weight"] and pkg.nbytes == 36
    np.testing.assert_array_equal(pkg.tensors["conv.weight"], np.full((1, 1, 3, 3), 2.5, np.float32))
    with open(path, "rb") as f:
        data = f.read()
    assert pkg.sha256 == hashlib.sha256(data).hexdigest() and pkg.size == len(data)
    # arrays are read-only views of the bytes that were checked, not copies
    arr = pkg.tensors["conv.weight"]
    assert not arr.flags.writeable and not arr.flags.owndata
    assert pkg.signature_path is None


def test_float16_and_several_tensors_zero_copy(tmp_path):
    t = {"w%d" % i: np.arange(8, dtype=np.float16) + i for i in range(4)}
    path = write_pkg(tmp_path / "p.safetensors", t, 1, CHAIN[0])
    pkg = read_package(path)
    assert set(pkg.tensors) == set(t)
    for n, a in t.items():
        assert pkg.tensors[n].dtype == np.float16
        np.testing.assert_array_equal(pkg.tensors[n], a)
    def root(a):
        while isinstance(a, (np.ndarray, memoryview)):
            a = a.base if isinstance(a, np.ndarray) else a.obj
        return a

    bases = {id(root(a)) for a in pkg.tensors.values()}
    assert len(bases) == 1 and isinstance(root(pkg.tensors["w0"]), (bytes, bytearray))  # every tensor views the one buffer that was read and checked


def test_reads_files_written_by_the_safetensors_library(tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "lib.safetensors")
    save_file({"conv.weight": np.ones((1, 1, 3, 3), np.float32)}, path,
              metadata={"refit.version": "4", "refit.model": FP, "other.tool": "kept"})
    pkg = read_package(path)
    assert pkg.version == 4 and pkg.metadata["other.tool"] == "kept" and pkg.base is None


def test_signature_hook_finds_detached_signature(tmp_path):
    path = write_pkg(tmp_path / "p.safetensors", kernel(1), 1, FP)
    assert P.signature_path(path) == path + ".sig"
    with open(path + ".sig", "wb") as f:
        f.write(b"sig")
    assert read_package(path).signature_path == path + ".sig"
    # read from a passed descriptor, the path is the client's: no .sig is looked up by it
    fd = os.open(path, os.O_RDONLY)
    try:
        pkg = read_package(path, fd=fd)
    finally:
        os.close(fd)
    assert pkg.version == 1 and pkg.signature_path is None


def test_size_cap_checked_before_reading(tmp_path, monkeypatch):
    path = write_pkg(tmp_path / "p.safetensors", kernel(1), 1, FP)
    size = os.path.getsize(path)

    def no_read(*a, **k):
        raise AssertionError("read an oversized package")

    monkeypatch.setattr(os, "readv", no_read)
    with pytest.raises(PackageError) as ei:
        read_package(path, max_bytes=size - 1)
    assert str(ei.value) == "package too large: %d bytes, limit %d" % (size, size - 1)
    assert ei.value.stage == "size"


def test_header_length_beyond_file_message(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(struct.pack("<Q", 4096) + b"{" + b" " * 91)
    with pytest.raises(PackageError, match=r"^package truncated: header says 4096 bytes, file has 92 "
                                           r"after the length field$"):
        read_package(str(p))


def test_check_against_model_accepts_float16_for_float32_weight(tmp_path):
    pkg = read_package(write_pkg(tmp_path / "p.safetensors", kernel(1, np.float16), 1, FP))
    P.check_against_model(pkg, SCHEMA)  # no exception


def test_check_finite_names_first_bad_value():
    t = np.zeros((1, 1, 3, 3), np.float32)
    t.flat[5] = -np.inf
    t.flat[7] = np.nan
    with pytest.raises(PackageError) as ei:
        P.check_finite({"conv.weight": t})
    assert str(ei.value) == 'tensor "conv.weight" has 2 non-finite values (first: -Inf at flat index 5)'
    assert ei.value.stage == "finite"


@pytest.mark.parametrize("name, why", [
    ("", "tensor name is empty"),
    ("a" * 257, "is 257 bytes, limit 256"),
    ("../x", "is path-like"),
    ("/abs", "is path-like"),
    ("a\\b", "is path-like"),
    ("a/../b", "is path-like"),
    ("tab\tname", "control character U+0009"),
    ("bidi\u202ename", "control character U+202E"),
])
def test_tensor_name_rules(name, why):
    assert why in P.check_tensor_name(name)


@pytest.mark.parametrize("name", ["conv.weight", "features.0.weight", "onnx::Conv_24",
                                  "model/conv2d/kernel:0", "\u00e9t\u00e9.w"])
def test_tensor_names_accepted(name):
    assert P.check_tensor_name(name) is None


def test_fuzzed_packages_raise_only_package_error(tmp_path):
    _fuzz(tmp_path, 3000)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("REFITD_LONG"), reason="long mode: set REFITD_LONG=1")
def test_fuzzed_packages_long(tmp_path):
    _fuzz(tmp_path, 200000, seed=7)


def _fuzz(tmp_path, n, seed=20261121):
    """Seeded mutations of a valid two-tensor package (byte flips in header and data, truncation,
    insertion, header-length edits): each either parses into consistent tensors or raises
    PackageError -- never another exception."""
    import random

    path = write_pkg(tmp_path / "p.safetensors",
                     {"w0": np.arange(8, dtype=np.float32), "w1": np.ones(8, np.float16)},
                     3, CHAIN[0], note="fuzz")
    good = open(path, "rb").read()
    (hlen,) = struct.unpack_from("<Q", good, 0)
    rng = random.Random(seed)
    parsed = rejected = 0
    for i in range(n):
        b = bytearray(good)
        op = i % 5
        if op == 0:  # flip bytes in the header
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(8, 8 + hlen)] = rng.randrange(256)
        elif op == 1:  # truncate anywhere
            del b[rng.randrange(len(b)):]
        elif op == 2:  # insert junk anywhere
            pos = rng.randrange(len(b))
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:  # a different header length
            struct.pack_into("<Q", b, 0, max(0, hlen + rng.randint(-40, 40)))
        else:  # flip data bytes (may make NaN/Inf: still a valid container)
            b[rng.randrange(8 + hlen, len(b))] = rng.randrange(256)
        try:
            pkg = P.parse_package_bytes(bytes(b))
        except PackageError as e:
            assert "\n" not in str(e) and str(e)
            rejected += 1
            continue
        parsed += 1
        for name, arr in pkg.tensors.items():
            assert P.check_tensor_name(name) is None and arr.dtype in (np.float32, np.float16)
        assert sum(a.nbytes for a in pkg.tensors.values()) == len(b) - 8 - struct.unpack_from("<Q", b)[0]
    assert parsed > n // 30 and rejected > n // 3
