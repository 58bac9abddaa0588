"""The ONNX loader (native/src/onnx_*.c) through refitd.engine: what torch.onnx.export emits loads,
keeps its weight names and matches onnxruntime; opset variants and load-time folding compute what
onnxruntime computes; refusals name the op and the node.

The small models of native/tests/data (made by native/tests/data/make_models.py, also parsed by
the C test test_onnx) are run here end to end against onnxruntime.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from refitd.engine import Engine, EngineError, ModelError, UnknownWeightError, UnsupportedError

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "native" / "tests" / "data"
RTOL, ATOL = 1e-4, 1e-5
F = TensorProto.FLOAT


def _ort_run(model, feeds):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _feeds(eng, rng):
    return {spec.name: rng.standard_normal(spec.shape).astype(np.float32) for spec in eng.inputs()}


def _assert_matches(eng, model, rng):
    feeds = _feeds(eng, rng)
    ours, _ = eng.infer(feeds)
    ref = _ort_run(model, feeds)
    assert set(ours) == set(ref)
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
        np.testing.assert_allclose(ours[name], ref[name], rtol=RTOL, atol=ATOL, err_msg=name)


# ---- a model laid out like torch.onnx.export output ----------------------------------------


def torch_like_model(rng) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> x.view(x.size(0), -1) -> fc1 -> Relu -> fc2 -> fc3, where fc3
    ties its weight to fc2's the way the exporter writes it (Identity of the initializer), the
    view's shape is computed by Shape/Gather/Unsqueeze/Concat with Constant nodes, the batch is
    a dim_param, an int64 initializer (BatchNorm's num_batches_tracked) is present, and
    initializers are also listed as graph inputs (older exporters)."""
    def w(*shape):
        return (rng.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = [
        numpy_helper.from_array(w(4, 2, 3, 3), "conv.weight"),
        numpy_helper.from_array(w(4), "conv.bias"),
        numpy_helper.from_array(w(8, 36), "fc1.weight"),
        numpy_helper.from_array(w(8), "fc1.bias"),
        numpy_helper.from_array(w(8, 8), "fc2.weight"),
        numpy_helper.from_array(np.array(3, np.int64), "bn.num_batches_tracked"),
    ]
    c = lambda name, arr: helper.make_node(  # noqa: E731
        "Constant", [], [name], name="/" + name, value=numpy_helper.from_array(np.array(arr)))
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["/conv/Conv_output_0"],
                         name="/conv/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["/conv/Conv_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("MaxPool", ["/relu/Relu_output_0"], ["/pool/MaxPool_output_0"],
                         name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["/pool/MaxPool_output_0"], ["/Shape_output_0"], name="/Shape"),
        c("Constant_output_0", np.int64(0)),
        helper.make_node("Gather", ["/Shape_output_0", "Constant_output_0"], ["/Gather_output_0"],
                         name="/Gather", axis=0),
        c("Constant_1_output_0", np.array([0], np.int64)),
        helper.make_node("Unsqueeze", ["/Gather_output_0", "Constant_1_output_0"],
                         ["/Unsqueeze_output_0"], name="/Unsqueeze"),
        c("Constant_2_output_0", np.array([-1], np.int64)),
        helper.make_node("Concat", ["/Unsqueeze_output_0", "Constant_2_output_0"],
                         ["/Concat_output_0"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["/pool/MaxPool_output_0", "/Concat_output_0"],
                         ["/Reshape_output_0"], name="/Reshape"),
        helper.make_node("Gemm", ["/Reshape_output_0", "fc1.weight", "fc1.bias"],
                         ["/fc1/Gemm_output_0"], name="/fc1/Gemm", transB=1),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/Relu_1_output_0"], name="/Relu_1"),
        helper.make_node("Gemm", ["/Relu_1_output_0", "fc2.weight"], ["/fc2/Gemm_output_0"],
                         name="/fc2/Gemm", transB=1),
        helper.make_node("Identity", ["fc2.weight"], ["fc3.weight"], name="Identity_0"),
        helper.make_node("Gemm", ["/fc2/Gemm_output_0", "fc3.weight"], ["output"],
                         name="/fc3/Gemm", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", F, ["batch_size", 2, 6, 6])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "main_graph", inputs,
                              [helper.make_tensor_value_info("output", F, ["batch_size", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="pytorch")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def test_torch_like_model_loads_folds_and_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(1)
    model = torch_like_model(rng)
    path = tmp_path / "torch_like.onnx"
    onnx.save(model, str(path))
    with Engine.open(path, input_shape={"input": (3, 2, 6, 6)}) as eng:
        assert [s.name for s in eng.inputs()] == ["input"]  # initializers-as-inputs dropped
        assert [(s.name, s.shape) for s in eng.outputs()] == [("output", (3, 8))]
        weights = {s.name: s for s in eng.weights()}
        assert list(weights) == ["conv.weight", "conv.bias", "fc1.weight", "fc1.bias",
                                 "fc2.weight", "fc3.weight"]
        assert all(s.dtype == "float32" for s in weights.values())
        assert "bn.num_batches_tracked" not in weights  # int64: structure, not a weight
        _assert_matches(eng, model, rng)

        # The tied alias is its own weight: refitting it leaves fc2.weight alone.
        fc2 = eng.read_weight("fc2.weight")
        np.testing.assert_array_equal(eng.read_weight("fc3.weight"), fc2)
        new3 = rng.standard_normal((8, 8)).astype(np.float32)
        eng.refit({"fc3.weight": new3}, version=2)
        np.testing.assert_array_equal(eng.read_weight("fc2.weight"), fc2)
        np.testing.assert_array_equal(eng.read_weight("fc3.weight"), new3)
        untied = onnx.ModelProto()
        untied.CopyFrom(model)
        nodes = [n for n in untied.graph.node if n.op_type != "Identity"]
        del untied.graph.node[:]
        untied.graph.node.extend(nodes)
        untied.graph.initializer.append(numpy_helper.from_array(new3, "fc3.weight"))
        _assert_matches(eng, untied, rng)


def test_torch_like_model_with_an_explicit_refittable_set(tmp_path):
    rng = np.random.default_rng(2)
    model = torch_like_model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with Engine.open(path, refittable=["fc1.weight", "fc3.weight"]) as eng:
        assert [s.name for s in eng.weights()] == ["fc1.weight", "fc3.weight"]
        _assert_matches(eng, model, rng)
    with pytest.raises(UnknownWeightError, match="'nope'"):
        Engine.open(path, refittable="fc1.weight,nope")
    with pytest.raises(UnknownWeightError, match="bn.num_batches_tracked.*int64"):
        Engine.open(path, refittable=["bn.num_batches_tracked"])


# ---- the C test's models, end to end -------------------------------------------------------

VALID = sorted(p.stem for p in DATA.glob("*.onnx") if not p.stem.startswith("err_"))


@pytest.mark.parametrize("name", VALID)
def test_data_model_matches_onnxruntime(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    path = DATA / f"{name}.onnx"
    model = onnx.load(str(path))
    with Engine.open(path) as eng:
        _assert_matches(eng, model, rng)
        # refit every weight with new random values; onnxruntime gets the same initializers
        if eng.weights():
            dtypes = {t.name: helper.tensor_dtype_to_np_dtype(t.data_type)
                      for t in model.graph.initializer}
            new = {}
            for s in eng.weights():
                v = np.asarray(rng.uniform(0.5, 1.5, s.shape), dtype=np.float32)
                # what onnxruntime will see: the values in the initializer's own dtype
                new[s.name] = v.astype(dtypes.get(s.name, np.float32)).astype(np.float32)
            for node in model.graph.node:  # a tied alias gets its source's values
                if node.op_type == "Identity" and node.output[0] in new and node.input[0] in new:
                    new[node.output[0]] = new[node.input[0]]
            if not new:
                return
            eng.refit(new, version=7)
            changed = onnx.ModelProto()
            changed.CopyFrom(model)
            for t in changed.graph.initializer:
                if t.name in new:
                    t.CopyFrom(numpy_helper.from_array(new[t.name].astype(dtypes[t.name]), t.name))
            _assert_matches(eng, changed, rng)


@pytest.mark.parametrize("name,exc,words", [
    ("err_unsupported_op", UnsupportedError, ["node 'my_tanh' (Tanh): unsupported op"]),
    ("err_auto_pad", UnsupportedError, ["'pool'", "MaxPool", "auto_pad=FOO"]),
    ("err_domain", UnsupportedError, ["'gelu'", "com.microsoft"]),
    ("err_runtime_gather", UnsupportedError, ["'g'", "Gather"]),
    ("err_external", UnsupportedError, ["external data"]),
    ("err_conv_channels", ModelError, ["'conv3'", "Conv", "channels"]),
    ("err_gemm_k", ModelError, ["'fc'", "Gemm"]),
    ("err_reshape", ModelError, ["'rs'", "cannot reshape"]),
    ("err_cycle", ModelError, ["cycle"]),
])
def test_refusals_name_op_and_node(name, exc, words):
    with pytest.raises(exc) as info:
        Engine.open(DATA / f"{name}.onnx")
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_unsupported_op_in_a_fresh_model(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="ok"),
         helper.make_node("Erf", ["r"], ["y"], name="the_erf")], "g",
        [helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("y", F, [2])])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedError, match=r"node 'the_erf' \(Erf\): unsupported op"):
        Engine.open(path)


def test_refit_scalar_weight():
    """clip13's Clip bounds are scalar float initializers, hence refittable 0-d weights."""
    with Engine.open(DATA / "clip13.onnx") as eng:
        assert {s.name: s.shape for s in eng.weights()} == {"lo": (), "hi": ()}
        eng.refit({"hi": np.array(1.0, np.float32)}, version=2)
        out, version = eng.infer({"x": np.full((1, 4), 5.0, np.float32)})
        assert version == 2
        np.testing.assert_array_equal(out["y"], np.ones((1, 4), np.float32))


def test_input_shape_option_errors():
    with pytest.raises(EngineError, match="input_shape") as info:
        Engine.open(DATA / "cnn.onnx", input_shape="x:1x3")
    assert info.value.status == "REFIT_ERR_INVALID_ARG"
    with pytest.raises(EngineError, match="'y'"):
        Engine.open(DATA / "cnn.onnx", input_shape={"y": (1, 5)})
    with Engine.open(DATA / "cnn.onnx", input_shape={"x": (4, 3, 9, 9)}) as eng:
        assert eng.outputs()[0].shape == (4, 5)


def test_truncated_file_is_a_model_error(tmp_path):
    data = (DATA / "cnn.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        Engine.open(path)


# ---- a real torch.onnx.export ----------------------------------------------------------------


def _with_weights(model, new):
    """``model`` with the weights ``new`` (name -> array) as its initializers: how onnxruntime is
    "refitted". A name that is not an initializer must be the output of an Identity node (PyTorch
    aliases identical tensors as Identity(initializer), which the loader makes a weight of its
    own): that node is replaced by an initializer of that name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    index = {t.name: i for i, t in enumerate(m.graph.initializer)}
    for name, arr in new.items():
        t = numpy_helper.from_array(np.asarray(arr, np.float32), name)
        if name in index:
            m.graph.initializer[index[name]].CopyFrom(t)
            continue
        aliases = [n for n in m.graph.node if n.op_type == "Identity" and list(n.output) == [name]]
        assert len(aliases) == 1, f"weight {name!r} is neither an initializer nor an Identity output"
        m.graph.node.remove(aliases[0])
        m.graph.initializer.append(t)
    return m


def _ort_single_thread(model, feeds):
    from models import ort_session  # tests/ is on sys.path under pytest

    sess = ort_session(model, threads=1)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _assert_outputs_match(got, want, what):
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name, ref in want.items():
        assert got[name].shape == ref.shape, f"{what}: {name} shape {got[name].shape} != {ref.shape}"
        np.testing.assert_allclose(got[name], ref, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}")


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("dynamo", [False, True])
def test_real_torch_export(tmp_path, fold, dynamo):
    """A model exported by torch.onnx.export matches onnxruntime running the same file (rtol 1e-4,
    atol 1e-5) with its own weights and after the same random new values for every refittable
    weight are refitted into the engine and written into onnxruntime's initializers; torch agrees
    too (atol 1e-4), with the new weights loaded by name."""
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")  # the dynamo exporter needs it
    import inspect

    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(4 * 4 * 4, 16)
            self.fc2 = nn.Linear(16, 5)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv(x)))
            x = x.view(x.size(0), -1)
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "net.onnx"
    kwargs = dict(input_names=["x"], output_names=["y"], do_constant_folding=fold,
                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = dynamo
        if dynamo:  # keep the tensors inside the file: the loader refuses external data
            kwargs["external_data"] = False
    elif dynamo:
        pytest.skip("this torch has no dynamo exporter")
    torch.onnx.export(net, (x,), str(path), **kwargs)
    model = onnx.load(str(path))
    feeds = {"x": x.numpy()}
    with Engine.open(path, input_shape={"x": (2, 3, 8, 8)}) as eng:
        specs = {s.name: s for s in eng.weights()}
        params = {n for n, _ in net.named_parameters()}
        assert params <= set(specs), sorted(specs)

        # original weights: onnxruntime on the same file, and torch
        out, version = eng.infer(feeds)
        assert version == 0 and out["y"].shape == (2, 5)
        _assert_outputs_match(out, _ort_single_thread(model, feeds), "original weights vs onnxruntime")
        with torch.no_grad():
            ref = net(x).numpy()
        np.testing.assert_allclose(out["y"], ref, rtol=RTOL, atol=1e-4)

        # new random values for every refittable weight, into the engine and into onnxruntime
        rng = np.random.default_rng(1234)
        new = {n: (0.1 * rng.standard_normal(s.shape)).astype(np.float32) for n, s in specs.items()}
        eng.refit(new, version=2)
        out2, version = eng.infer(feeds)
        assert version == 2
        assert not np.allclose(out2["y"], out["y"]), "the refit changed nothing"
        _assert_outputs_match(out2, _ort_single_thread(_with_weights(model, new), feeds),
                              "refitted weights vs onnxruntime")
        for n, arr in new.items():
            np.testing.assert_array_equal(eng.read_weight(n), arr)

        # torch with the same weights, where the engine's weights are exactly its parameters
        if set(specs) == params:
            with torch.no_grad():
                net.load_state_dict({n: torch.from_numpy(a) for n, a in new.items()}, strict=True)
                ref = net(x).numpy()
            np.testing.assert_allclose(out2["y"], ref, rtol=RTOL, atol=1e-4)


# ---- geometry sweep: Conv / MaxPool / AveragePool shapes and values vs onnxruntime -------------


def _geometry_cases(seed=7, n=60):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        op = ["Conv", "MaxPool", "AveragePool"][len(cases) % 3]
        nsp = 1 if rng.random() < 0.25 else 2
        size = [int(rng.integers(3, 12)) for _ in range(nsp)]
        k = [int(rng.integers(1, 4)) for _ in range(nsp)]
        s = [int(rng.integers(1, 4)) for _ in range(nsp)]
        d = [int(rng.integers(1, 3)) for _ in range(nsp)]
        auto_pad = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
        attrs = {"kernel_shape": k, "strides": s}
        if auto_pad == "NOTSET":
            attrs["pads"] = [int(rng.integers(0, kk)) for kk in k] + [int(rng.integers(0, kk)) for kk in k]
            if op != "AveragePool" or rng.random() < 0.5:
                attrs["dilations"] = d
        else:
            attrs["auto_pad"] = auto_pad
        if op != "Conv":
            attrs["ceil_mode"] = int(rng.integers(0, 2))
        if op == "AveragePool":
            attrs["count_include_pad"] = int(rng.integers(0, 2))
        group = 2 if op == "Conv" and rng.random() < 0.3 else 1
        if op == "Conv":
            attrs["group"] = group
        cases.append((op, nsp, size, attrs, group))
    return cases


def _with_explicit_pads(model, size, attrs):
    """The model with auto_pad=SAME_UPPER/SAME_LOWER replaced by the pads the ONNX spec gives:
    output = ceil(in / stride), total = max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0),
    the odd one at the end (UPPER) or the start (LOWER)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = m.graph.node[0]
    kernel = attrs.get("kernel_shape") or list(m.graph.initializer[0].dims[2:])
    strides = attrs.get("strides", [1] * len(size))
    dil = attrs.get("dilations", [1] * len(size))
    begin, end = [], []
    for n, k, st, d in zip(size, kernel, strides, dil):
        out = -(-n // st)
        total = max((out - 1) * st + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        lower = attrs.get("auto_pad") == "SAME_LOWER"
        begin.append(big if lower else small)
        end.append(small if lower else big)
    kept = [a for a in node.attribute if a.name != "auto_pad"]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("pads", begin + end)])
    return m


@pytest.mark.parametrize("case", range(60))
def test_geometry_matches_onnxruntime(tmp_path, case):
    op, nsp, size, attrs, group = _geometry_cases()[case]
    rng = np.random.default_rng(case)
    C, M = 4, 6
    inits, inputs = [], ["x"]
    if op == "Conv":
        inits = [numpy_helper.from_array(rng.standard_normal([M, C // group] + attrs["kernel_shape"])
                                         .astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal([M]).astype(np.float32), "b")]
        inputs += ["w", "b"]
        del attrs["kernel_shape"]  # taken from the weight
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], name="op", **attrs)], "g",
                              [helper.make_tensor_value_info("x", F, [1, C] + size)],
                              [helper.make_tensor_value_info("y", F, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    feeds = {"x": rng.standard_normal([1, C] + size).astype(np.float32)}
    try:
        ref = _ort_run(model, feeds)["y"]
    except Exception:  # onnxruntime refuses a few legal auto_pad combinations: give it the
        # explicit pads the ONNX spec defines for them instead (same semantics), not a skip
        ref = _ort_run(_with_explicit_pads(model, size, attrs), feeds)["y"]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    if op == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
        # the loader resolves it; the reference CPU backend refuses dilated average pooling
        with pytest.raises(UnsupportedError, match="'op' \\(AveragePool\\).*dilation"):
            Engine.open(path)
        return
    with Engine.open(path) as eng:
        assert eng.outputs()[0].shape == ref.shape, (op, size, attrs)
        out, _ = eng.infer(feeds)
        np.testing.assert_allclose(out["y"], ref, rtol=RTOL, atol=ATOL, err_msg=f"{op} {size} {attrs}")


# ---- op sweep: broadcasting, MatMul ranks, Gemm flags, axes, opsets vs onnxruntime -----------


def _shape(rng, ndim, lo=1, hi=4):
    return [int(v) for v in rng.integers(lo, hi + 1, ndim)]


def _op_case(i):
    """One small random single-op model: (nodes, inputs {name: shape}, inits, opset)."""
    rng = np.random.default_rng(1000 + i)
    kind = ["binary", "matmul", "gemm", "softmax", "reducemean", "flatten", "concat",
            "squeeze", "reshape", "clip"][i % 10]
    opset = int(rng.choice([11, 13, 18]))
    w = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    if kind == "binary":
        a = _shape(rng, int(rng.integers(1, 5)))
        b = [d if rng.random() < 0.5 else 1 for d in a][int(rng.integers(0, len(a))):]
        if rng.random() < 0.5:
            a, b = b, a
        op = str(rng.choice(["Add", "Sub", "Mul", "Div"]))
        bv = w(b) if op != "Div" else (np.abs(w(b)) + 0.5)
        return [helper.make_node(op, ["x", "b"], ["y"], name="op")], {"x": a}, {"b": bv}, opset
    if kind == "matmul":
        ra, rb = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        K = int(rng.integers(1, 5))
        batch = _shape(rng, max(ra, rb) - 2) if max(ra, rb) > 2 else []
        a = (batch[len(batch) - (ra - 2):] if ra > 2 else []) + ([int(rng.integers(1, 4))] if ra > 1 else []) + [K]
        b = (batch[len(batch) - (rb - 2):] if rb > 2 else []) + [K] + ([int(rng.integers(1, 4))] if rb > 1 else [])
        if rng.random() < 0.5:  # weight as the second operand
            return [helper.make_node("MatMul", ["x", "b"], ["y"], name="op")], {"x": a}, {"b": w(b)}, opset
        return [helper.make_node("MatMul", ["b", "x"], ["y"], name="op")], {"x": b}, {"b": w(a)}, opset
    if kind == "gemm":
        M, K, N = (int(v) for v in rng.integers(1, 5, 3))
        ta, tb = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        c = [[], [N], [1], [M, N], [M, 1], [1, N]][int(rng.integers(0, 6))]
        attrs = dict(transA=ta, transB=tb, alpha=float(rng.uniform(0.5, 2)), beta=float(rng.uniform(0.5, 2)))
        return ([helper.make_node("Gemm", ["x", "b", "c"], ["y"], name="op", **attrs)],
                {"x": [K, M] if ta else [M, K]}, {"b": w([N, K] if tb else [K, N]), "c": w(c)}, opset)
    if kind == "softmax":
        s = _shape(rng, int(rng.integers(1, 5)))
        axis = int(rng.integers(-len(s), len(s)))
        return [helper.make_node("Softmax", ["x"], ["y"], name="op", axis=axis)], {"x": s}, {}, opset
    if kind == "reducemean":
        s = _shape(rng, int(rng.integers(1, 5)))
        dims = rng.choice(len(s), size=int(rng.integers(1, len(s) + 1)), replace=False)
        axes = [int(d) - len(s) if rng.random() < 0.5 else int(d) for d in sorted(dims)]
        keep = int(rng.integers(0, 2))
        if opset >= 18:
            return ([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="op", keepdims=keep)],
                    {"x": s}, {"axes": np.array(axes, np.int64)}, opset)
        return ([helper.make_node("ReduceMean", ["x"], ["y"], name="op", keepdims=keep, axes=axes)],
                {"x": s}, {}, opset)
    if kind == "flatten":
        s = _shape(rng, int(rng.integers(1, 5)))
        axis = int(rng.integers(-len(s), len(s) + 1))
        return [helper.make_node("Flatten", ["x"], ["y"], name="op", axis=axis)], {"x": s}, {}, opset
    if kind == "concat":
        s = _shape(rng, int(rng.integers(1, 4)))
        axis = int(rng.integers(-len(s), len(s)))
        s2 = list(s)
        s2[axis] = int(rng.integers(1, 4))
        return ([helper.make_node("Concat", ["x", "b", "x"], ["y"], name="op", axis=axis)],
                {"x": s}, {"b": w(s2)}, opset)
    if kind == "squeeze":
        s = _shape(rng, int(rng.integers(1, 4)), 1, 3)
        s.insert(int(rng.integers(0, len(s) + 1)), 1)
        ones = [i for i, d in enumerate(s) if d == 1]
        ax = [int(rng.choice(ones))]
        if opset >= 13:
            nodes = [helper.make_node("Squeeze", ["x", "a1"], ["s"], name="sq"),
                     helper.make_node("Unsqueeze", ["s", "a1"], ["u"], name="usq"),
                     helper.make_node("Relu", ["u"], ["y"], name="op")]
            return nodes, {"x": s}, {"a1": np.array(ax, np.int64)}, opset
        nodes = [helper.make_node("Squeeze", ["x"], ["s"], name="sq", axes=ax),
                 helper.make_node("Unsqueeze", ["s"], ["u"], name="usq", axes=ax),
                 helper.make_node("Relu", ["u"], ["y"], name="op")]
        return nodes, {"x": s}, {}, opset
    if kind == "reshape":
        s = _shape(rng, 3)
        n = int(np.prod(s))
        target = [[0, -1], [-1], [s[0], 0, -1], [n, 1], [1, -1, 1]][int(rng.integers(0, 5))]
        return ([helper.make_node("Reshape", ["x", "t"], ["r"], name="rs"),
                 helper.make_node("Sigmoid", ["r"], ["y"], name="op")],
                {"x": s}, {"t": np.array(target, np.int64)}, opset)
    s = _shape(rng, 2)
    lo, hi = sorted(float(v) for v in rng.uniform(-1, 1, 2))
    if opset < 11:
        return [helper.make_node("Clip", ["x"], ["y"], name="op", min=lo, max=hi)], {"x": s}, {}, opset
    return ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="op")], {"x": s},
            {"lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}, opset)


@pytest.mark.parametrize("case", range(80))
def test_op_sweep_matches_onnxruntime(tmp_path, case):
    nodes, inputs, inits, opset = _op_case(case)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(case)
    with Engine.open(path) as eng:
        _assert_matches(eng, model, rng)


# ---- attribute names ---------------------------------------------------------------------------


def _one_node(tmp_path, op, opset, **attrs):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name="n", **attrs)], "g",
        [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("y", F, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    return model, path


@pytest.mark.parametrize("op,opset,attrs,words", [
    ("Softmax", 13, dict(foo=3), ["node 'n' (Softmax): unknown attribute 'foo'"]),
    ("LeakyRelu", 13, dict(beta=0.5), ["node 'n' (LeakyRelu): unknown attribute 'beta'"]),
    ("LeakyRelu", 13, dict(alpha=0.2, beta=0.5), ["node 'n' (LeakyRelu): unknown attribute 'beta'"]),
    ("Relu", 13, dict(alpha=0.2), ["node 'n' (Relu): unknown attribute 'alpha'"]),
    # a name ONNX defines for the op, but not at the model's opset
    ("Clip", 13, dict(min=-0.5, max=0.5), ["node 'n' (Clip): unknown attribute", "opsets 7 to 10"]),
    ("Softmax", 7, dict(axis=1, foo=3), ["node 'n' (Softmax): unknown attribute 'foo'"]),
])
def test_unknown_attribute_is_refused(tmp_path, op, opset, attrs, words):
    model, path = _one_node(tmp_path, op, opset, **attrs)
    with pytest.raises(UnsupportedError) as info:
        Engine.open(path)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message
    assert info.value.status == "REFIT_ERR_UNSUPPORTED"
    with pytest.raises(Exception):  # onnxruntime refuses the same graph
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op,opset,attrs", [
    ("Softmax", 13, dict(axis=0)),
    ("Softmax", 7, dict(axis=1)),
    ("LeakyRelu", 13, dict(alpha=0.2)),
    ("Clip", 10, dict(min=-0.5, max=0.5)),
    ("Relu", 13, {}),
])
def test_known_attributes_still_load(tmp_path, op, opset, attrs):
    model, path = _one_node(tmp_path, op, opset, **attrs)
    with Engine.open(path) as eng:
        _assert_matches(eng, model, np.random.default_rng(1))


def test_attribute_table_matches_onnx_schemas():
    """The op table in onnx_ops.c (op -> attribute names, with the opsets that define each, and its
    fold and build functions) is what onnx.defs says for every op in it, for opsets 7..the
    table's (or the installed onnx's) newest."""
    import re
    src = (ROOT / "native" / "src" / "onnx_ops.c").read_text()
    table_opset = int(re.search(r"#define OX_ATTR_TABLE_OPSET (\d+)", src).group(1))
    body = " ".join(src.split("op_table[] = {", 1)[1].split("\n};", 1)[0].split())
    table, fns = {}, {}
    for m in re.finditer(r'\{"(\w+)", \{((?:\{[^{}]*\},? ?)*)\}, (\w+), (\w+), (\d+)\}', body):
        table[m.group(1)] = {a: (int(lo), int(hi)) for a, lo, hi in
                             re.findall(r'\{"(\w+)", (\d+), (\d+)\}', m.group(2))}
        fns[m.group(1)] = (m.group(3), m.group(4))
    assert list(table) == sorted(table), "op_table must stay sorted for bsearch"
    assert len(table) == len(re.findall(r'\{"\w+", \{\{', body)) > 40  # every row was read
    # every row folds or builds with a function defined in the file, and no node is dispatched by
    # op name outside the table (the old IS("Op") chain); onnx_fold.c's elementwise kernels still
    # pick their arithmetic by name, below the table's fold functions
    loader = "".join((ROOT / "native" / "src" / f).read_text()
                     for f in ("onnx_load.c", "onnx_shape.c", "onnx_ops.c"))
    defined = (ROOT / "native" / "src" / "onnx_fold.c").read_text() + loader
    for op, (fold, build) in fns.items():
        assert (fold, build) != ("NULL", "NULL"), op
        for fn in (fold, build):
            assert fn == "NULL" or re.search(r"^(?:static )?int %s\(" % fn, defined, re.M) or \
                re.search(r"^(?:BUILD_AS|FOLD_INPUT0)\(%s," % fn, src, re.M), (op, fn)
    assert not re.search(r'strcmp\([^;]*\bop, "', loader)
    assert not re.search(r'IS\("\w+"\)', loader)
    top = min(table_opset, onnx.defs.onnx_opset_version())
    for op, attrs in table.items():
        for opset in range(7, top + 1):
            try:
                schema = onnx.defs.get_schema(op, opset)
            except onnx.defs.SchemaError:
                want = set()
            else:
                want = set(schema.attributes)
            have = {a for a, (lo, hi) in attrs.items() if lo <= opset and (hi == 0 or opset <= hi)}
            assert have == want, (op, opset)
