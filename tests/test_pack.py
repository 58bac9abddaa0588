"""The writer and the authoring tool (pack.py): atomic writes that refuse what the reader
refuses, and ``pack`` from npz / safetensors / PyTorch sources with name maps and conversion."""
import json
import os
import struct

import numpy as np
import pytest

from conftest import kernel, write_pkg
from refitd import pack as K
from refitd import package as P
from refitd.package import PackageError
from test_package import CHAIN, FP, SCHEMA  # the schemas the reader's tests use

def test_write_package_refuses_what_read_refuses(tmp_path):
    with pytest.raises(PackageError, match="path-like"):
        write_pkg(tmp_path / "a.safetensors", {"../w": np.ones(3, np.float32)}, 1, FP)
    with pytest.raises(PackageError, match="dtype float64 not accepted"):
        write_pkg(tmp_path / "a.safetensors", {"w": np.ones(3)}, 1, FP)
    with pytest.raises(PackageError, match="older than version 1"):
        write_pkg(tmp_path / "a.safetensors", {"w": np.ones(3, np.float32)}, 1, FP, base=1)
    with pytest.raises(PackageError, match="fingerprint"):
        write_pkg(tmp_path / "a.safetensors", {"w": np.ones(3, np.float32)}, 1, "md5:x")
    assert os.listdir(tmp_path) == []


def test_write_package_is_atomic_no_temp_left(tmp_path):
    write_pkg(tmp_path / "p.safetensors", kernel(1), 1, FP)
    assert os.listdir(tmp_path) == ["p.safetensors"]


def test_written_package_mode_follows_the_umask(tmp_path):
    """A package packed by root must stay readable by the daemon's user (safetensors >= 0.8
    alone would leave it 0600)."""
    old = os.umask(0o022)
    try:
        path = write_pkg(tmp_path / "p.safetensors", kernel(1), 1, FP)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_pack_from_npz_with_name_map_and_conversion(tmp_path):
    src = tmp_path / "train.npz"
    np.savez(src, **{"features.0.weight": np.full((1, 1, 3, 3), 2.0, np.float64)})
    pkg = K.pack(SCHEMA, str(src), 3, str(tmp_path / "out.safetensors"),
                 name_map={"features.0.weight": "conv.weight"}, note="from npz")
    assert pkg.version == 3 and pkg.model == FP and pkg.note == "from npz"
    assert pkg.tensors["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(pkg.tensors["conv.weight"], np.full((1, 1, 3, 3), 2.0))


def test_pack_name_map_file_and_drop(tmp_path):
    src = tmp_path / "train.npz"
    np.savez(src, a=np.ones((1, 1, 3, 3), np.float32), num_batches=np.ones(1, np.float32))
    nm = tmp_path / "map.json"
    nm.write_text(json.dumps({"a": "conv.weight", "num_batches": None}))
    pkg = K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"), name_map=str(nm))
    assert pkg.names == ["conv.weight"]


def test_pack_from_safetensors_bf16_source(tmp_path):
    # bf16 1.5 is 0x3FC0; numpy has no bfloat16, so write the container by hand
    data = struct.pack("<H", 0x3FC0) * 9
    header = json.dumps({"conv.weight": {"dtype": "BF16", "shape": [1, 1, 3, 3],
                                         "data_offsets": [0, 18]}}).encode()
    header += b" " * (-len(header) % 8)
    src = tmp_path / "bf16.safetensors"
    src.write_bytes(struct.pack("<Q", len(header)) + header + data)
    pkg = K.pack(SCHEMA, str(src), 2, str(tmp_path / "o.safetensors"))
    np.testing.assert_array_equal(pkg.tensors["conv.weight"], np.full((1, 1, 3, 3), 1.5, np.float32))


def test_pack_partial_package_for_multi_weight_model(tmp_path):
    src = tmp_path / "part.npz"
    np.savez(src, w2=np.full(8, 3.0, np.float32))
    pkg = K.pack(CHAIN, str(src), 5, str(tmp_path / "o.safetensors"), base=4)
    assert pkg.names == ["w2"] and pkg.base == 4


def test_pack_unknown_name_suggests_close_match(tmp_path):
    src = tmp_path / "t.npz"
    np.savez(src, **{"conv.weights": np.ones((1, 1, 3, 3), np.float32)})
    with pytest.raises(PackageError) as ei:
        K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"))
    assert str(ei.value).startswith('source tensor "conv.weights" is not a refittable weight of '
                                    'the model (did you mean "conv.weight"?); 1 unknown in all')
    assert not (tmp_path / "o.safetensors").exists()
    pkg = K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"),
                 name_map={"conv.weights": "conv.weight"})
    assert pkg.names == ["conv.weight"]


def test_pack_ignore_unknown(tmp_path):
    src = tmp_path / "t.npz"
    np.savez(src, **{"conv.weight": np.ones((1, 1, 3, 3), np.float32), "bn.running_mean": np.ones(3)})
    pkg = K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"), ignore_unknown=True)
    assert pkg.names == ["conv.weight"]


@pytest.mark.parametrize("arr, msg", [
    (np.ones((3, 3), np.float32), 'source tensor "conv.weight": shape [3,3], model weight '
                                  '"conv.weight" wants [1,1,3,3]'),
    (np.ones((1, 1, 3, 3), np.int64), 'source tensor "conv.weight" is int64, model weight '
                                      '"conv.weight" is float32'),
    (np.full((1, 1, 3, 3), np.nan, np.float32), 'tensor "conv.weight" has 9 non-finite values'),
    (np.full((1, 1, 3, 3), 1e300), 'tensor "conv.weight" has 9 non-finite values (first: +Inf'),
])
def test_pack_checks_shapes_dtypes_values(tmp_path, arr, msg):
    src = tmp_path / "t.npz"
    np.savez(src, **{"conv.weight": arr})
    with pytest.raises(PackageError) as ei:
        K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"))
    assert str(ei.value).startswith(msg)


def test_pack_pt_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails even where it exists
    src = tmp_path / "model.pt"
    src.write_bytes(b"PK\x03\x04")
    with pytest.raises(PackageError) as ei:
        K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"))
    assert str(ei.value) == ("reading model.pt needs PyTorch, which is not installed here; "
                             "convert the state_dict to .safetensors or .npz")


def test_pack_pt_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "sd.pt"
    torch.save({"conv.weight": torch.full((1, 1, 3, 3), 4.0)}, str(src))
    pkg = K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"))
    np.testing.assert_array_equal(pkg.tensors["conv.weight"], np.full((1, 1, 3, 3), 4.0))


def test_pack_unknown_source_format(tmp_path):
    src = tmp_path / "w.h5"
    src.write_bytes(b"x")
    with pytest.raises(PackageError, match=r"unknown format \(expected .safetensors, .npz or a PyTorch .pt\)"):
        K.pack(SCHEMA, str(src), 1, str(tmp_path / "o.safetensors"))


def test_pack_with_a_real_engine(engine, tmp_path):
    src = tmp_path / "t.npz"
    np.savez(src, **{"conv.weight": np.full((1, 1, 3, 3), 2.0, np.float32)})
    pkg = K.pack(engine, str(src), 2, str(tmp_path / "o.safetensors"))
    assert pkg.model == engine.fingerprint
    P.check_against_model(pkg, engine)


