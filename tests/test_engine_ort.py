"""The reference backend against onnxruntime (a test-only dependency).

For each model in tests/models.py: the engine's outputs match onnxruntime's within rtol 1e-4,
atol 1e-5 with the model's own weights, and again after refitting the same random new weights
into both (onnxruntime gets a model rebuilt with the new initializers). A second input is used
after the refit too, and the engine must report the refit's version with the result.
"""
from __future__ import annotations

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import models  # noqa: E402  (tests/ is on sys.path under pytest)
from refitd.engine import Engine  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def _ort_run(model, feeds):
    sess = models.ort_session(model, threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _assert_match(got, want, what):
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name, ref in want.items():
        out = got[name]
        assert out.shape == ref.shape, f"{what}: {name} shape {out.shape} != {ref.shape}"
        bad = ~np.isclose(out, ref, rtol=RTOL, atol=ATOL)
        assert not bad.any(), (
            f"{what}: {name}: {int(bad.sum())}/{ref.size} elements differ; worst |diff| "
            f"{float(np.abs(out - ref).max()):.3g} (|ref| max {float(np.abs(ref).max()):.3g})")


# The reference backend picks its kernels when an engine is opened; REFIT_CPU_ISA forces a set
# (the selector falls back to what the CPU has), so the x86-64 AVX2 and portable kernels are
# checked against onnxruntime too, not only the best set of this machine.
ISAS = [None] + (["avx2", "generic"] if platform.machine() in ("x86_64", "AMD64") else [])


@pytest.mark.parametrize("isa", ISAS, ids=lambda v: v or "auto")
@pytest.mark.parametrize("name", list(models.ALL))
def test_matches_onnxruntime_before_and_after_refit(name, isa, tmp_path, monkeypatch):
    if isa:
        monkeypatch.setenv("REFIT_CPU_ISA", isa)
    model = models.ALL[name]()
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    eng = Engine.open(path)
    try:
        # The engine exposes exactly the model's initializers as refittable weights.
        specs = {w.name: w for w in eng.weights()}
        inits = models.weights_of(model)
        assert set(specs) == set(inits)
        for n, arr in inits.items():
            assert specs[n].shape == arr.shape and specs[n].dtype == "float32"

        for seed in (10, 11):
            feeds = models.random_inputs(model, seed)
            outs, version = eng.infer(feeds)
            assert version == 0
            _assert_match(outs, _ort_run(model, feeds), f"{name} original weights, input {seed}")

        new = models.random_weights(model, seed=99)
        # Sanity: the new weights really change the result (a refit that did nothing would fail).
        feeds = models.random_inputs(model, 12)
        before, _ = eng.infer(feeds)
        eng.refit(new, 7)
        refitted = models.with_initializers(model, new)
        for seed in (12, 13):
            feeds = models.random_inputs(model, seed)
            outs, version = eng.infer(feeds)
            assert version == 7
            _assert_match(outs, _ort_run(refitted, feeds), f"{name} refitted weights, input {seed}")
            if seed == 12:
                assert any(not np.allclose(outs[k], before[k]) for k in outs), "refit changed nothing"
        for n, arr in new.items():
            np.testing.assert_array_equal(eng.read_weight(n), arr)
    finally:
        eng.close()


def test_partial_refit_matches_onnxruntime(tmp_path):
    """Refitting only some tensors keeps the others (ResNet block: only the stem conv + fc)."""
    model = models.resnet_block()
    path = tmp_path / "resnet.onnx"
    onnx.save(model, str(path))
    eng = Engine.open(path)
    try:
        new = models.random_weights(model, seed=5)
        part = {k: v for k, v in new.items() if k in ("stem.weight", "fc.weight", "fc.bias")}
        eng.refit(part, 3)
        feeds = models.random_inputs(model, 21)
        outs, version = eng.infer(feeds)
        assert version == 3
        _assert_match(outs, _ort_run(models.with_initializers(model, part), feeds), "resnet partial refit")
    finally:
        eng.close()
