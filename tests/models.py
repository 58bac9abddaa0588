"""ONNX models for refitd's engine tests and benchmarks, built with ``onnx.helper``.

Every builder returns an ``onnx.ModelProto`` with deterministic random weights (numpy
``default_rng(seed)``), scaled by 1/sqrt(fan-in) so activations stay O(1) through the graph.
Clip bounds are ``Constant`` nodes (folded at load, so they are not refittable weights); every
initializer is a float32 weight.

Also: ``random_weights`` (new values for every initializer, keeping BatchNorm variances positive),
``with_initializers`` (the same model with replaced initializers: how the tests "refit"
onnxruntime) and ``ort_session`` (the onnxruntime session the tests and the benchmark compare with).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def rand(self, shape, scale=1.0) -> np.ndarray:
        return (self.rng.uniform(-1.0, 1.0, size=shape) * scale).astype(np.float32)

    def node(self, op: str, inputs, name=None, **attrs) -> str:
        name = name or self.name(op.lower())
        out = name + "_out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=0, group=1, bias=True, prefix=None):
        prefix = prefix or self.name("conv")
        fan_in = (cin // group) * k * k
        w = self.init(prefix + ".weight", self.rand((cout, cin // group, k, k), 1.7 / np.sqrt(fan_in)))
        ins = [x, w]
        if bias:
            ins.append(self.init(prefix + ".bias", self.rand((cout,), 0.1)))
        return self.node("Conv", ins, name=prefix, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def bn(self, x, c, prefix=None):
        prefix = prefix or self.name("bn")
        g = self.init(prefix + ".weight", 1.0 + self.rand((c,), 0.2))
        b = self.init(prefix + ".bias", self.rand((c,), 0.1))
        m = self.init(prefix + ".running_mean", self.rand((c,), 0.1))
        v = self.init(prefix + ".running_var", (1.0 + self.rand((c,), 0.3)).astype(np.float32))
        return self.node("BatchNormalization", [x, g, b, m, v], name=prefix, epsilon=1e-5)

    def clip(self, x, lo, hi):
        lo_n = self.node("Constant", [], value=numpy_helper.from_array(np.array(lo, np.float32)))
        hi_n = self.node("Constant", [], value=numpy_helper.from_array(np.array(hi, np.float32)))
        return self.node("Clip", [x, lo_n, hi_n])

    def gemm(self, x, k, n, prefix=None):
        prefix = prefix or self.name("fc")
        w = self.init(prefix + ".weight", self.rand((n, k), 1.7 / np.sqrt(k)))
        b = self.init(prefix + ".bias", self.rand((n,), 0.1))
        return self.node("Gemm", [x, w, b], name=prefix, transB=1)

    def model(self, name, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
            initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="refitd-tests")
        m.ir_version = IR_VERSION
        return m


def _rename_output(b: _Builder, out: str, name: str) -> None:
    """Makes the last node write `name` (readable output names)."""
    for n in b.nodes:
        for i, o in enumerate(n.output):
            if o == out:
                n.output[i] = name
        for i, o in enumerate(n.input):
            if o == out:
                n.input[i] = name


def seed_conv(seed: int = 0, value: float | None = None) -> onnx.ModelProto:
    """The seeds' demo: x 1x1x3x3, Conv 3x3 weight "conv.weight" (no bias) -> y 1x1x1x1.
    `value` fills the kernel with a constant (the demo starts at 0) instead of random numbers."""
    b = _Builder(seed)
    w = np.full((1, 1, 3, 3), value, np.float32) if value is not None else b.rand((1, 1, 3, 3))
    b.init("conv.weight", w)
    b.nodes.append(helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv", kernel_shape=[3, 3]))
    return b.model("seed_conv", [("x", (1, 1, 3, 3))], [("y", (1, 1, 1, 1))])


def mlp(seed: int = 1, din: int = 64, hidden: int = 128, classes: int = 10) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Softmax."""
    b = _Builder(seed)
    h = b.node("Relu", [b.gemm("x", din, hidden, "fc1")])
    z = b.gemm(h, hidden, classes, "fc2")
    y = b.node("Softmax", [z], axis=1)
    _rename_output(b, y, "probs")
    return b.model("mlp", [("x", (1, din))], [("probs", (1, classes))])


def lenet(seed: int = 2) -> onnx.ModelProto:
    """LeNet-style: (conv 5x5 -> relu -> maxpool 2) x2, flatten, gemm 120/84/10."""
    b = _Builder(seed)
    x = b.conv("x", 1, 6, 5, pad=2, prefix="conv1")
    x = b.node("MaxPool", [b.node("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, 6, 16, 5, prefix="conv2")
    x = b.node("MaxPool", [b.node("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x], axis=1)
    x = b.node("Relu", [b.gemm(x, 16 * 5 * 5, 120, "fc1")])
    x = b.node("Relu", [b.gemm(x, 120, 84, "fc2")])
    y = b.gemm(x, 84, 10, "fc3")
    _rename_output(b, y, "logits")
    return b.model("lenet", [("x", (1, 1, 28, 28))], [("logits", (1, 10))])


def mobilenetv2_block(seed: int = 3, c: int = 32, hw: int = 56, expand: int = 6) -> onnx.ModelProto:
    """MobileNetV2 inverted residual: 1x1 expand (c*expand) + BN + Clip(0,6), depthwise 3x3 + BN
    + Clip(0,6), 1x1 project (c) + BN, residual Add. Input 1 x c x hw x hw."""
    b = _Builder(seed)
    e = c * expand
    x = b.clip(b.bn(b.conv("x", c, e, 1, bias=False, prefix="expand"), e, "expand_bn"), 0.0, 6.0)
    x = b.clip(b.bn(b.conv(x, e, e, 3, pad=1, group=e, bias=False, prefix="dw"), e, "dw_bn"), 0.0, 6.0)
    x = b.bn(b.conv(x, e, c, 1, bias=False, prefix="project"), c, "project_bn")
    y = b.node("Add", ["x", x])
    _rename_output(b, y, "y")
    return b.model("mobilenetv2_block", [("x", (1, c, hw, hw))], [("y", (1, c, hw, hw))])


def resnet_block(seed: int = 4, hw: int = 112, classes: int = 10) -> onnx.ModelProto:
    """ResNet stem + basic block: conv 7x7/2 (64) + BN + Relu, MaxPool 3x3/2, (conv 3x3 + BN +
    Relu, conv 3x3 + BN, + identity, Relu), GlobalAveragePool, Flatten, Gemm(classes)."""
    b = _Builder(seed)
    x = b.node("Relu", [b.bn(b.conv("x", 3, 64, 7, stride=2, pad=3, bias=False, prefix="stem"), 64, "stem_bn")])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h = b.node("Relu", [b.bn(b.conv(x, 64, 64, 3, pad=1, bias=False, prefix="b1c1"), 64, "b1bn1")])
    h = b.bn(b.conv(h, 64, 64, 3, pad=1, bias=False, prefix="b1c2"), 64, "b1bn2")
    x = b.node("Relu", [b.node("Add", [h, x])])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    y = b.gemm(x, 64, classes, "fc")
    _rename_output(b, y, "logits")
    return b.model("resnet_block", [("x", (1, 3, hw, hw))], [("logits", (1, classes))])


def edge_cnn(seed: int = 6, hw: int = 96, classes: int = 10) -> onnx.ModelProto:
    """A depthwise-separable edge CNN (MobileNetV1-like, not one the kernels were tuned on):
    conv 3x3/2 (16) + BN + Relu, then four (depthwise 3x3 [stride 2 every other] + BN + Relu,
    pointwise 1x1 + BN + Relu) pairs widening 16 -> 32 -> 64 -> 64 -> 128, MaxPool 2x2/2,
    GlobalAveragePool, Flatten, Gemm(classes). Input 1x3xhwxhw."""
    b = _Builder(seed)
    x = b.node("Relu", [b.bn(b.conv("x", 3, 16, 3, stride=2, pad=1, bias=False, prefix="stem"), 16, "stem_bn")])
    c = 16
    for i, (cout, stride) in enumerate([(32, 1), (64, 2), (64, 1), (128, 2)]):
        x = b.conv(x, c, c, 3, stride=stride, pad=1, group=c, bias=False, prefix=f"dw{i}")
        x = b.node("Relu", [b.bn(x, c, f"dw{i}_bn")])
        x = b.node("Relu", [b.bn(b.conv(x, c, cout, 1, bias=False, prefix=f"pw{i}"), cout, f"pw{i}_bn")])
        c = cout
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    y = b.gemm(x, c, classes, "fc")
    _rename_output(b, y, "logits")
    return b.model("edge_cnn", [("x", (1, 3, hw, hw))], [("logits", (1, classes))])


def tiny_yolo(seed: int = 7, hw: int = 128, anchors_x_classes: int = 18) -> onnx.ModelProto:
    """A YOLOv3-tiny-like backbone and head (added after the CPU kernel work, to measure a model
    none of it was tuned on): four (conv 3x3 + BN + LeakyRelu(0.1), MaxPool 2x2/2) stages
    widening 3 -> 16 -> 32 -> 64 -> 128, a 1x1 conv (64) + BN + LeakyRelu, a 1x1 head conv with
    bias. Input 1x3xhwxhw, output 1 x anchors_x_classes x hw/16 x hw/16."""
    b = _Builder(seed)
    x, c = "x", 3
    for i, cout in enumerate([16, 32, 64, 128]):
        x = b.bn(b.conv(x, c, cout, 3, pad=1, bias=False, prefix=f"c{i}"), cout, f"bn{i}")
        x = b.node("LeakyRelu", [x], alpha=0.1)
        x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        c = cout
    x = b.node("LeakyRelu", [b.bn(b.conv(x, c, 64, 1, bias=False, prefix="c4"), 64, "bn4")], alpha=0.1)
    y = b.conv(x, 64, anchors_x_classes, 1, prefix="head")
    _rename_output(b, y, "y")
    side = hw // 16
    return b.model("tiny_yolo", [("x", (1, 3, hw, hw))], [("y", (1, anchors_x_classes, side, side))])


def gemm_stack(total_bytes: int, width: int = 1024, seed: int = 5) -> onnx.ModelProto:
    """A stack of Gemm (+Relu) layers whose weights total about `total_bytes` (refit benchmark)."""
    b = _Builder(seed)
    per_layer = 4 * (width * width + width)
    layers = max(1, round(total_bytes / per_layer))
    x = "x"
    for i in range(layers):
        x = b.gemm(x, width, width, f"fc{i}")
        if i + 1 < layers:
            x = b.node("Relu", [x])
    _rename_output(b, x, "y")
    return b.model("gemm_stack", [("x", (1, width))], [("y", (1, width))])


def weights_of(model: onnx.ModelProto) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def random_weights(model: onnx.ModelProto, seed: int) -> dict:
    """New float32 values for every initializer, same shapes; BatchNorm variances stay positive
    and the scale stays near the original so activations remain O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, arr in weights_of(model).items():
        scale = float(np.abs(arr).max()) if arr.size else 1.0
        new = rng.uniform(-1.0, 1.0, size=arr.shape) * (scale if scale > 0 else 1.0)
        if name.endswith("running_var"):
            new = 0.5 + np.abs(new)
        elif name.endswith(".weight") and arr.ndim == 1:  # BN gamma
            new = 1.0 + 0.2 * new / (scale if scale > 0 else 1.0)
        out[name] = new.astype(np.float32)
    return out


def with_initializers(model: onnx.ModelProto, new: dict) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, t in enumerate(m.graph.initializer):
        if t.name in new:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(new[t.name], np.float32), t.name))
    return m



def ort_session(model, threads: int = 1):
    """An onnxruntime CPU session for ``model`` (a ModelProto, serialized bytes or a path) on
    ``threads`` intra-op threads, one inter-op thread, sequential execution, default graph
    optimisations. onnxruntime is imported here: building models does not need it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


ALL = {
    "seed_conv": seed_conv,
    "mlp": mlp,
    "lenet": lenet,
    "mobilenetv2_block": mobilenetv2_block,
    "resnet_block": resnet_block,
    "edge_cnn": edge_cnn,
    "tiny_yolo": tiny_yolo,
}


def random_inputs(model, seed=0):
    """Standard-normal float32 feeds for every graph input of `model`, from `seed`."""
    rng = np.random.default_rng(seed)
    return {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim])
            .astype(np.float32) for vi in model.graph.input}
