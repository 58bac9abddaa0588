"""The name-map sidecar (refitd.namemap) end to end on the reference backend: an "engine" ONNX
whose weights carry engine names (main/mm.const/...) and an NHWC conv filter, its <model>.names
beside it, and packages in the source model's names and NCHW layout. Outputs are compared with
onnxruntime on the source model carrying the same weights."""
import numpy as np
import pytest

from conftest import write_pkg
from models import ort_session, with_initializers

O, C, K = 8, 4, 3  # filter [O, C, K, K]; the input is K x K, so the output is 1 x 1
W_ENG, B_ENG = "main/mm.const/mm.refit_const:0", "main/mm.const/mm.refit_const_1:0"
SIDECAR = ("refitd-names 1\n"
           "weight\tconv.weight\t%s\tfloat32\t%dx%dx%dx%d\tNCHW>NHWC\n"
           "weight\tconv.bias\t%s\tfloat32\t%d\t-\n"
           "input\tx\tx_nhwc\tfloat32\t1x%dx%dx%d\tNCHW>NHWC\n"
           "output\ty\ty\tfloat32\t1x%dx1x1\t-\n") % (W_ENG, O, K, K, C, B_ENG, O, K, K, C, O)


def _weights(seed):
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((O, C, K, K)).astype(np.float32),
            "conv.bias": rng.standard_normal(O).astype(np.float32)}


def source_model(w):
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    g = h.make_graph([h.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["y"])], "src",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, C, K, K])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, O, 1, 1])],
                     [nh.from_array(v, n) for n, v in w.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def engine_model(w):
    """The same function as source_model, built the way a compiler relays it: the filter NHWC
    under an engine name, the input NHWC, the conv as Reshape + Gemm over the (h, w, c) order."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    consts = [nh.from_array(np.ascontiguousarray(w["conv.weight"].transpose(0, 2, 3, 1)), W_ENG),
              nh.from_array(w["conv.bias"], B_ENG),
              nh.from_array(np.array([1, K * K * C], np.int64), "s_a"),
              nh.from_array(np.array([O, K * K * C], np.int64), "s_w"),
              nh.from_array(np.array([1, O, 1, 1], np.int64), "s_y")]
    nodes = [h.make_node("Reshape", ["x_nhwc", "s_a"], ["a"]),
             h.make_node("Reshape", [W_ENG, "s_w"], ["w2"]),
             h.make_node("Gemm", ["a", "w2", B_ENG], ["y2"], transB=1),
             h.make_node("Reshape", ["y2", "s_y"], ["y"])]
    g = h.make_graph(nodes, "eng", [h.make_tensor_value_info("x_nhwc", T.FLOAT, [1, K, K, C])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, O, 1, 1])], consts)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


@pytest.fixture
def mapped(tmp_path):
    import onnx
    from refitd.engine import Engine
    path = tmp_path / "engine.onnx"
    onnx.save(engine_model(_weights(0)), str(path))
    (tmp_path / "engine.onnx.names").write_text(SIDECAR)
    with Engine.open(path) as eng:
        yield eng


def _x(seed=7):
    return np.random.default_rng(seed).standard_normal((1, C, K, K)).astype(np.float32)


def test_engine_speaks_source_names_and_layouts(mapped, tmp_path):
    import onnx
    from refitd.engine import Engine
    assert [(s.name, s.shape) for s in mapped.weights()] == [("conv.weight", (O, C, K, K)), ("conv.bias", (O,))]
    assert [(s.name, s.shape) for s in mapped.inputs()] == [("x", (1, C, K, K))]
    assert mapped.labels()["conv.weight"] == "conv.weight (engine %s, NHWC)" % W_ENG
    onnx.save(source_model(_weights(0)), str(tmp_path / "source.onnx"))
    with Engine.open(tmp_path / "source.onnx") as src:  # packages made against the source model fit
        assert mapped.fingerprint == src.fingerprint
    np.testing.assert_array_equal(mapped.read_weight("conv.weight"), _weights(0)["conv.weight"])


def test_package_in_source_names_matches_onnxruntime(mapped, tmp_path):
    from refitd.package import read_package
    x = _x()
    for version, seed in ((1, 11), (2, 12)):
        w = _weights(seed)
        pkg = read_package(write_pkg(tmp_path / ("w%d.safetensors" % version), w, version, mapped.fingerprint),
                           max_bytes=1 << 20)
        mapped.refit(pkg.tensors, version)
        out, v = mapped.infer({"x": x})
        ref = ort_session(with_initializers(source_model(_weights(0)), w)).run(None, {"x": x})[0]
        assert v == version
        np.testing.assert_allclose(out["y"], ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(mapped.read_weight("conv.weight"), w["conv.weight"])


def test_staged_shadow_run_maps_too(mapped):
    w = _weights(21)
    with mapped.stage(w, 5) as staged:
        out = mapped.infer_staged(staged, {"x": _x()})
        mapped.publish(staged)
    ref = ort_session(with_initializers(source_model(_weights(0)), w)).run(None, {"x": _x()})[0]
    np.testing.assert_allclose(out["y"], ref, rtol=1e-5, atol=1e-5)
    assert mapped.version == 5


def test_errors_name_both_sides(mapped):
    from refitd.engine import ShapeError, UnknownWeightError
    with pytest.raises(ShapeError, match=r"conv\.weight \(engine main/mm\.const/mm\.refit_const:0, NHWC\)"):
        mapped.refit({"conv.weight": np.zeros((O, C, K), np.float32)}, 3)
    with pytest.raises(UnknownWeightError, match="that is an engine name; packages use source names"):
        mapped.refit({W_ENG: np.zeros((O, K, K, C), np.float32)}, 3)
    with pytest.raises(Exception, match=r"conv\.bias \(engine main/mm\.const/mm\.refit_const_1:0\)"):
        mapped.refit({"conv.bias": np.full(O, np.nan, np.float32)}, 3)
    assert mapped.version == 0


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("refitd-names 2\n", "first line must be 'refitd-names 1'"),
    ("refitd-names 1\nweight\ta\tb\tfloat32\t2\n", "expected 6 tab-separated fields"),
    ("refitd-names 1\nweight\ta\tb\tfloat32\t2\tNCHW>NHWC\n", "layout NCHW>NHWC needs a 4-D tensor"),
    ("refitd-names 1\nweight\ta\tb\tfloat32\t2\tNHWC\n", "layout 'NHWC' \\(known"),
    ("refitd-names 1\nweight\ta\tb\tint8\t2\t-\n", "float32 only"),
    ("refitd-names 1\nweight\ta\tb\tfloat32\t0x2\t-\n", "is not like 1x3x3x1"),
    ("refitd-names 1\nweight\ta\tb\tfloat32\t2\t-\nweight\ta\tc\tfloat32\t2\t-\n", "source name 'a' appears twice"),
])
def test_bad_sidecar_is_one_line_naming_file_and_line(tmp_path, text, why):
    from refitd.namemap import NameMap, NameMapError
    p = tmp_path / "m.names"
    p.write_text(text)
    with pytest.raises(NameMapError, match=why) as e:
        NameMap.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_sidecar_that_does_not_fit_the_engine_refuses_open(tmp_path):
    import onnx
    from refitd.engine import Engine, ModelError
    path = tmp_path / "engine.onnx"
    onnx.save(engine_model(_weights(0)), str(path))
    (tmp_path / "engine.onnx.names").write_text(SIDECAR.replace("%dx%dx%dx%d" % (O, K, K, C), "%dx%dx%dx%d" % (O, K, C, K)))
    with pytest.raises(ModelError, match="has shape 8x3x4x3 in the map, 8x3x3x4 in the engine"):
        Engine.open(path)


def test_write_then_load_round_trips(tmp_path):
    from refitd.namemap import NameMap
    p = tmp_path / "a.names"
    p.write_text(SIDECAR)
    first = NameMap.load(p)
    first.write(tmp_path / "b.names")
    assert NameMap.load(tmp_path / "b.names").entries == first.entries
    e = first.by_source("weight", "conv.weight")
    w = _weights(3)["conv.weight"]
    assert e.to_engine(w).shape == (O, K, K, C)
    np.testing.assert_array_equal(e.to_source(e.to_engine(w)), w)
