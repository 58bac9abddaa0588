"""0-d (scalar) weights — a Clip's bounds, a scale — through the whole path a user takes:
`refitd pack` from .npz and .safetensors, then `refitd apply` to a real daemon, then an
inference that computes with the new bounds. (pack used to write them as shape [1], which
apply then refused: 'tensor "hi": shape [1], model wants []'.)"""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import clip_scalar_model
from daemon_helpers import DaemonProc, base_config, rmtree, run_cli, short_dir, write_config


@pytest.fixture(scope="module")
def clip_daemon():
    d = short_dir()
    model = str(clip_scalar_model(os.path.join(d, "clip.onnx")))
    cfg = base_config(d, model=model)
    proc = DaemonProc(write_config(d, cfg), cfg["control"]["socket"]).start()
    proc.state, proc.model = d, model
    yield proc
    proc.stop()
    rmtree(d)


def _write_source(path: str, tensors) -> None:
    if path.endswith(".npz"):
        np.savez(path, **tensors)
    else:
        from safetensors.numpy import save_file
        save_file(tensors, path)


def test_pack_keeps_scalar_shapes(tmp_path):
    from refitd.pack import pack
    model = str(clip_scalar_model(tmp_path / "clip.onnx"))
    for ext in (".npz", ".safetensors"):
        src = str(tmp_path / ("bounds" + ext))
        _write_source(src, {"lo": np.array(1.0, np.float32), "hi": np.array(3.0, np.float32)})
        pkg = pack(model, src, 2, str(tmp_path / "p.safetensors"))
        assert {n: a.shape for n, a in pkg.tensors.items()} == {"lo": (), "hi": ()}, ext
        assert float(pkg.tensors["hi"]) == 3.0


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_scalar_weights_pack_apply_infer(clip_daemon, tmp_path, ext):
    v = clip_daemon.status()["serving"]["version"] + 1
    src = str(tmp_path / ("trained" + ext))
    _write_source(src, {"w": np.full((4,), 5.0, np.float32), "lo": np.array(1.0, np.float32),
                        "hi": np.array(3.0 + v, np.float32)})
    out = str(tmp_path / "p.safetensors")
    r = run_cli("pack", "--model", clip_daemon.model, "--from", src, "--version", str(v), "-o", out)
    assert r.returncode == 0, r.stderr
    r = clip_daemon.cli("apply", out)
    assert r.returncode == 0, r.stderr
    assert "applied version %d" % v in r.stdout
    x = str(tmp_path / "x.npy")
    np.save(x, np.array([0.0, 0.1, 0.5, 10.0], np.float32))
    r = clip_daemon.cli("infer", x, "--json")
    assert r.returncode == 0, r.stderr
    import json
    got = json.loads(r.stdout)
    assert got["version"] == v
    # x * 5 clipped to [1, 3 + v]
    assert got["outputs"]["y"]["values"] == pytest.approx([1.0, 1.0, 2.5, 3.0 + v])
