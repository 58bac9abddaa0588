#!/usr/bin/env python3
"""Generates the tiny ONNX models test_onnx.c parses (run from anywhere; writes next to itself).

    python3 native/tests/data/make_models.py

Every model is built with onnx.helper and checked with onnx.checker where the model is meant to
be valid. The files are committed so the C tests need no Python; rerun this after editing it.
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
F = TensorProto.FLOAT
I64 = TensorProto.INT64


def vi(name, shape=None, dtype=F):
    if shape is None:  # output of unknown shape: elem type only
        return helper.make_value_info(name, helper.make_tensor_type_proto(dtype, None))
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def save(name, nodes, inputs, outputs, inits=(), opset=13, check=True, ir=None, reverse=False):
    """reverse=True: check the model as given, then store its nodes in reverse order (ONNX
    requires topological order; the loader must sort them itself)."""
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="make_models.py")
    if ir is not None:
        model.ir_version = ir
    elif opset <= 21:
        model.ir_version = min(model.ir_version, 10)
    if check:
        # outputs declared without a shape get the one ONNX shape inference finds
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in model.graph.output:
            if (not out.type.tensor_type.HasField("shape") and out.name in known
                    and known[out.name].type.tensor_type.HasField("shape")):
                out.type.CopyFrom(known[out.name].type)
        onnx.checker.check_model(model, full_check=True)
    if reverse:
        rev = list(model.graph.node)[::-1]
        del model.graph.node[:]
        model.graph.node.extend(rev)
    with open(os.path.join(HERE, name + ".onnx"), "wb") as f:
        f.write(model.SerializeToString())


rng = np.random.default_rng(0)


def rnd(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# seed: 1x1x3x3 input, 3x3 conv kernel all 0, no bias
save("seed_conv",
     [helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv")],
     [vi("x", [1, 1, 3, 3])], [vi("y", [1, 1, 1, 1])],
     [init("conv.weight", np.zeros((1, 1, 3, 3), np.float32))])

# a small CNN: Conv(pad) -> BN -> Relu -> MaxPool -> AvgPool(ceil) -> GAP -> Flatten -> Gemm
save("cnn", [
    helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c1", "bn.s", "bn.b", "bn.m", "bn.v"], ["bn"],
                     name="bn1", epsilon=1e-3),
    helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
    helper.make_node("MaxPool", ["r"], ["mp"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("AveragePool", ["mp"], ["ap"], name="pool2", kernel_shape=[2, 2],
                     strides=[2, 2], ceil_mode=1),
    helper.make_node("GlobalAveragePool", ["ap"], ["gap"], name="gap"),
    helper.make_node("Flatten", ["gap"], ["fl"], name="flat"),
    helper.make_node("Gemm", ["fl", "fc.w", "fc.b"], ["y"], name="fc", transB=1, alpha=0.5),
], [vi("x", ["N", 3, 9, 9])], [vi("y", ["N", 5])], [
    init("c1.w", rnd(4, 3, 3, 3)), init("c1.b", rnd(4)), init("bn.s", rnd(4)),
    init("bn.b", rnd(4)), init("bn.m", rnd(4)), init("bn.v", np.abs(rnd(4)) + 0.5),
    init("fc.w", rnd(5, 4)), init("fc.b", rnd(5)),
])

# what torch.onnx.export emits for x.view(x.size(0), -1) and weight tying, in an old-exporter
# layout (initializers also listed as graph inputs, IR 3), with an int64 initializer and Dropout.
shape_nodes = [
    helper.make_node("Constant", [], ["c0"], name="const0",
                     value=helper.make_tensor("c0v", I64, [], [0])),
    helper.make_node("Shape", ["r"], ["shp"], name="shape"),
    helper.make_node("Gather", ["shp", "c0"], ["n"], name="gather", axis=0),
    helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsq", axes=[0]),
    helper.make_node("Constant", [], ["m1"], name="constm1",
                     value=helper.make_tensor("m1v", I64, [1], [-1])),
    helper.make_node("Concat", ["n1", "m1"], ["newshape"], name="cat", axis=0),
    helper.make_node("Reshape", ["r", "newshape"], ["flat"], name="reshape"),
]
save("torch_like", [
    helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="/conv/Conv",
                     kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
    *shape_nodes,
    helper.make_node("Dropout", ["flat"], ["d"], name="drop"),
    helper.make_node("Gemm", ["d", "fc1.weight", "fc1.bias"], ["h"], name="/fc1/Gemm", transB=1),
    helper.make_node("Identity", ["fc1.weight2src"], ["onnx::Gemm_12"], name="alias"),
    helper.make_node("Relu", ["h"], ["h2"], name="/relu2/Relu"),
    helper.make_node("Gemm", ["h2", "onnx::Gemm_12"], ["y"], name="/fc2/Gemm", transB=1),
], [vi("x", [2, 1, 4, 4]), vi("conv.weight", [2, 1, 3, 3]), vi("conv.bias", [2]),
    vi("fc1.weight", [4, 32]), vi("fc1.bias", [4]), vi("fc1.weight2src", [4, 4])],
   [vi("y", [2, 4])], [
    init("conv.weight", rnd(2, 1, 3, 3)), init("conv.bias", rnd(2)),
    init("fc1.weight", rnd(4, 32)), init("fc1.bias", rnd(4)),
    init("fc1.weight2src", rnd(4, 4)),
    init("bn.num_batches_tracked", np.array(7, np.int64)),
], opset=11, ir=6)

# opset 13 torch-style: Unsqueeze axes as input, Identity output used directly as graph output
save("torch13", [
    helper.make_node("Shape", ["x"], ["shp"], name="shape"),
    helper.make_node("Constant", [], ["i1"], name="c1", value=helper.make_tensor("v", I64, [], [1])),
    helper.make_node("Gather", ["shp", "i1"], ["c"], name="gather", axis=0),
    helper.make_node("Constant", [], ["ax"], name="c2", value=helper.make_tensor("v", I64, [1], [0])),
    helper.make_node("Unsqueeze", ["c", "ax"], ["c1d"], name="unsq"),
    helper.make_node("Constant", [], ["mone"], name="c3", value=helper.make_tensor("v", I64, [1], [-1])),
    helper.make_node("Concat", ["mone", "c1d"], ["s"], name="cat", axis=0),
    helper.make_node("Cast", ["s"], ["s64"], name="cast", to=I64),
    helper.make_node("Reshape", ["x", "s64"], ["xr"], name="reshape"),
    helper.make_node("MatMul", ["xr", "w"], ["mm"], name="mm"),
    helper.make_node("Identity", ["mm"], ["y"], name="out_identity"),
    helper.make_node("Identity", ["mm"], ["mm_alias"], name="inner_identity"),
    helper.make_node("Add", ["mm_alias", "b"], ["z"], name="add"),
], [vi("x", ["batch", 3, 2])], [vi("y", ["M", 4]), vi("z", ["M", 4])],
   [init("w", rnd(3, 4)), init("b", rnd(4))])

# opset variations
save("clip10", [helper.make_node("Clip", ["x"], ["y"], name="clip", min=0.0, max=6.0)],
     [vi("x", [1, 4])], [vi("y", [1, 4])], opset=10)
save("clip13", [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")],
     [vi("x", [1, 4])], [vi("y", [1, 4])],
     [init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))])
save("clip13_noinit", [
    helper.make_node("Constant", [], ["hi"], name="c", value_float=6.0),
    helper.make_node("Clip", ["x", "", "hi"], ["y"], name="clip")],
    [vi("x", [1, 4])], [vi("y", [1, 4])])
save("squeeze11", [
    helper.make_node("Squeeze", ["x"], ["s"], name="sq", axes=[1]),
    helper.make_node("Unsqueeze", ["s"], ["y"], name="usq", axes=[0, 3])],
    [vi("x", [2, 1, 3])], [vi("y", None)], opset=11)
save("squeeze13", [
    helper.make_node("Squeeze", ["x", "ax"], ["s"], name="sq"),
    helper.make_node("Unsqueeze", ["s", "ax2"], ["y"], name="usq")],
    [vi("x", [2, 1, 3])], [vi("y", None)],
    [init("ax", np.array([-2], np.int64)), init("ax2", np.array([0, -1], np.int64))])
save("reducemean13", [helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=[2, 3],
                                       keepdims=0)],
     [vi("x", [1, 3, 4, 5])], [vi("y", None)])
save("reducemean18", [helper.make_node("ReduceMean", ["x", "ax"], ["y"], name="rm")],
     [vi("x", [1, 3, 4, 5])], [vi("y", None)], [init("ax", np.array([-1], np.int64))], opset=18)
save("softmax11", [helper.make_node("Softmax", ["x"], ["y"], name="sm")],
     [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], opset=11)
save("softmax13", [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)],
     [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], opset=13)
save("reshape_zero", [
    helper.make_node("Reshape", ["x", "s"], ["y"], name="r1"),
    helper.make_node("Reshape", ["x", "s2"], ["y2"], name="r2", allowzero=1)],
    [vi("x", [2, 3, 4])], [vi("y", None), vi("y2", None)],
    [init("s", np.array([0, -1], np.int64)), init("s2", np.array([4, 6], np.int64))], opset=14)
save("matmul", [
    helper.make_node("MatMul", ["a", "v"], ["y1"], name="mv"),
    helper.make_node("MatMul", ["v2", "b"], ["y2"], name="vm"),
    helper.make_node("MatMul", ["a", "bb"], ["y3"], name="batched"),
    helper.make_node("Sub", ["a", "row"], ["y4"], name="sub"),
    helper.make_node("Div", ["col", "row"], ["y5"], name="div")],
    [vi("a", [2, 1, 3, 4])], [vi("y1", None), vi("y2", None), vi("y3", None), vi("y4", None),
                              vi("y5", None)],
    [init("v", rnd(4)), init("v2", rnd(3)), init("b", rnd(5, 3, 2)), init("bb", rnd(6, 4, 2)),
     init("row", rnd(4)), init("col", rnd(3, 1))])
save("pools", [
    helper.make_node("MaxPool", ["x"], ["y1"], name="mp_same", kernel_shape=[3, 3], strides=[2, 2],
                     auto_pad="SAME_UPPER"),
    helper.make_node("MaxPool", ["x"], ["y2"], name="mp_ceil", kernel_shape=[3, 3], strides=[2, 2],
                     ceil_mode=1, pads=[0, 0, 1, 1], dilations=[1, 1]),
    helper.make_node("AveragePool", ["x"], ["y3"], name="ap_lower", kernel_shape=[2, 3],
                     strides=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1),
    helper.make_node("AveragePool", ["x"], ["y4"], name="ap_valid", kernel_shape=[3, 3],
                     strides=[3, 2], auto_pad="VALID"),
    helper.make_node("MaxPool", ["x"], ["y5"], name="mp_dil", kernel_shape=[2, 2],
                     dilations=[2, 2], strides=[1, 1]),
    helper.make_node("AveragePool", ["x"], ["y6"], name="ap_valid_ceil", kernel_shape=[1, 3],
                     strides=[3, 3], auto_pad="VALID", ceil_mode=1)],
    [vi("x", [1, 2, 7, 8])], [vi(f"y{i}", None) for i in range(1, 7)], opset=12)
save("conv1d", [
    helper.make_node("Conv", ["x", "w"], ["y"], name="c1d", auto_pad="SAME_UPPER", strides=[2],
                     group=2),
    helper.make_node("Conv", ["y", "w2", "b2"], ["y2"], name="c1d_dil", dilations=[2],
                     pads=[2, 1]),
    helper.make_node("MaxPool", ["y2"], ["z"], name="p1d", kernel_shape=[2], strides=[2])],
    [vi("x", [1, 4, 9])], [vi("z", None)],
    [init("w", rnd(6, 2, 3)), init("w2", rnd(3, 6, 3)), init("b2", rnd(3))])
save("concat_leaky", [
    helper.make_node("LeakyRelu", ["x"], ["l"], name="leaky", alpha=0.2),
    helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
    helper.make_node("Concat", ["l", "s", "k"], ["y"], name="cat", axis=-1),
    helper.make_node("Mul", ["y", "x2"], ["z"], name="mul")],
    [vi("x", [2, 3]), vi("x2", [1, 1])], [vi("z", None)], [init("k", rnd(2, 1))])
fp16 = numpy_helper.from_array(np.array([1.5, -2.0, 65504.0, 0.0], np.float16), "h")
fp64 = numpy_helper.from_array(np.array([0.25, 1e-3, -3.0, 2.0], np.float64), "d")
f32_typed = helper.make_tensor("t", F, [4], [1.0, 2.0, 3.0, 4.0])  # float_data, not raw
save("dtypes", [
    helper.make_node("Cast", ["h"], ["hf"], name="cast_h", to=F),
    helper.make_node("Cast", ["d"], ["df"], name="cast_d", to=F),
    helper.make_node("Add", ["x", "hf"], ["a"], name="add1"),
    helper.make_node("Mul", ["a", "df"], ["m"], name="mul1"),
    helper.make_node("Sub", ["m", "t"], ["y"], name="sub1")],
    [vi("x", [4])], [vi("y", None)], [fp16, fp64, f32_typed])
# the typed (non-raw) TensorProto fields: double_data, float16 bits in int32_data, int32_data,
# bfloat16 bits in int32_data; raw uint8 and typed int8; integer ones are constants cast to float
save("dtypes2", [
    helper.make_node("Cast", ["d2"], ["d2f"], name="cast_d2", to=F),
    helper.make_node("Cast", ["h2"], ["h2f"], name="cast_h2", to=F),
    helper.make_node("Cast", ["bf"], ["bff"], name="cast_bf", to=F),
    helper.make_node("Cast", ["i32"], ["i32f"], name="cast_i32", to=F),
    helper.make_node("Cast", ["u8"], ["u8f"], name="cast_u8", to=F),
    helper.make_node("Cast", ["i8"], ["i8f"], name="cast_i8", to=F),
    helper.make_node("Add", ["x", "d2f"], ["a1"], name="add_d2"),
    helper.make_node("Mul", ["a1", "h2f"], ["a2"], name="mul_h2"),
    helper.make_node("Add", ["a2", "bff"], ["a3"], name="add_bf"),
    helper.make_node("Add", ["a3", "i32f"], ["a4"], name="add_i32"),
    helper.make_node("Sub", ["a4", "u8f"], ["a5"], name="sub_u8"),
    helper.make_node("Add", ["a5", "i8f"], ["y"], name="add_i8")],
    [vi("x", [4])], [vi("y", [4])],
    [helper.make_tensor("d2", TensorProto.DOUBLE, [4], [0.5, -1.5, 1e-3, 4.0]),
     helper.make_tensor("h2", TensorProto.FLOAT16, [4], np.array([1.5, -2.0, 0.25, 3.0], np.float16)),
     helper.make_tensor("bf", TensorProto.BFLOAT16, [4], [1.0, -0.5, 2.0, 8.0]),
     helper.make_tensor("i32", TensorProto.INT32, [4], [1, -2, 3, 100000]),
     numpy_helper.from_array(np.array([0, 1, 200, 255], np.uint8), "u8"),
     helper.make_tensor("i8", TensorProto.INT8, [4], [-128, -1, 0, 127])])
# Constant-of-shape / Range / Slice / Where subgraph feeding a Reshape
save("fold_misc", [
    helper.make_node("Shape", ["x"], ["s"], name="shape"),
    helper.make_node("Slice", ["s", "st", "en"], ["tail"], name="slice"),   # [3, 4]
    helper.make_node("ConstantOfShape", ["one"], ["ones"], name="cos",
                     value=helper.make_tensor("v", I64, [1], [-1])),           # [-1]
    helper.make_node("Concat", ["ones", "tail"], ["s3"], name="cat", axis=0),  # [-1,3,4]
    helper.make_node("Range", ["r0", "r1", "r2"], ["rg"], name="range"),      # [0,1,2]
    helper.make_node("Mul", ["s3", "k2"], ["s3b"], name="imul"),              # [-1,3,4]*1
    helper.make_node("Reshape", ["x", "s3b"], ["y"], name="reshape"),
    helper.make_node("Cast", ["rg"], ["rgf"], name="castf", to=F),
    helper.make_node("Reshape", ["rgf", "rs"], ["rgf2"], name="rsh"),
    helper.make_node("Add", ["y", "rgf2"], ["z"], name="add"),
], [vi("x", [2, 3, 4])], [vi("z", [2, 3, 4])],
   [init("st", np.array([1], np.int64)), init("en", np.array([100], np.int64)),
    init("one", np.array([1], np.int64)), init("r0", np.array(0, np.int64)),
    init("r1", np.array(3, np.int64)), init("r2", np.array(1, np.int64)),
    init("k2", np.array([1], np.int64)), init("rs", np.array([1, 3, 1], np.int64))],
   reverse=True)

# weights are never folded: the bias is reshaped at run time (a refit must reach it)
save("weight_reshape", [
    helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
    helper.make_node("Constant", [], ["s"], name="shape_c",
                     value=helper.make_tensor("v", I64, [4], [1, -1, 1, 1])),
    helper.make_node("Reshape", ["b", "s"], ["b4"], name="bias_reshape"),
    helper.make_node("Add", ["c", "b4"], ["y"], name="add_bias"),
    helper.make_node("Identity", ["w"], ["w_out"], name="w_as_output"),
    helper.make_node("Identity", ["x"], ["x_out"], name="x_as_output")],
    [vi("x", [1, 2, 3, 3])], [vi("y", [1, 4, 1, 1]), vi("w_out", [4, 2, 3, 3]),
                              vi("x_out", [1, 2, 3, 3]), vi("x", [1, 2, 3, 3])],
    [init("w", rnd(4, 2, 3, 3)), init("b", rnd(4))])
# more load-time evaluation: Transpose, Equal/Where (torch's reshape-with-(-1) pattern), Expand,
# Neg, Size; float Constant nodes folded through Transpose and Expand and a float Mul
save("fold_more", [
    helper.make_node("Shape", ["x"], ["s"], name="shape"),                    # [2, 6]
    helper.make_node("Equal", ["s", "two"], ["eq"], name="eq"),               # [1, 0]
    helper.make_node("Where", ["eq", "mone", "s"], ["s2"], name="where"),     # [-1, 6]
    helper.make_node("Neg", ["s2"], ["s3"], name="neg"),                      # [1, -6]
    helper.make_node("Mul", ["s3", "mone"], ["s4"], name="imul"),             # [-1, 6]
    helper.make_node("Reshape", ["x", "s4"], ["r"], name="reshape"),          # [2, 6]
    helper.make_node("Constant", [], ["k"], name="kconst", value=numpy_helper.from_array(rnd(3, 6))),
    helper.make_node("Transpose", ["k"], ["kt"], name="transpose", perm=[1, 0]),  # [6, 3]
    helper.make_node("Constant", [], ["one3"], name="one3c", value=numpy_helper.from_array(
        np.ones((1, 3), np.float32))),
    helper.make_node("Expand", ["one3", "s5"], ["e"], name="expand"),         # [2, 3]
    helper.make_node("Size", ["x"], ["n"], name="size"),                      # 12
    helper.make_node("Cast", ["n"], ["nf"], name="castn", to=F),
    helper.make_node("Mul", ["e", "nf"], ["e12"], name="fmul"),               # 12s
    helper.make_node("MatMul", ["r", "kt"], ["m"], name="mm"),
    helper.make_node("Add", ["m", "e12"], ["y"], name="add")],
    [vi("x", [2, 6])], [vi("y", [2, 3])],
    [init("two", np.array([2, 2], np.int64)), init("mone", np.array(-1, np.int64)),
     init("s5", np.array([2, 1], np.int64))])
# float math on constants, as attention-style scale computations export it:
# x * (1 / sqrt(x.shape[-1])) + relu/pow/min/max/less/floor/... of constants
save("fold_math", [
    helper.make_node("Shape", ["x"], ["s"], name="shape"),
    helper.make_node("Gather", ["s", "last"], ["d"], name="gather", axis=0),
    helper.make_node("Cast", ["d"], ["df"], name="cast", to=F),
    helper.make_node("Sqrt", ["df"], ["sq"], name="sqrt"),
    helper.make_node("Reciprocal", ["sq"], ["scale"], name="recip"),
    helper.make_node("Mul", ["x", "scale"], ["xs"], name="mul_scale"),
    helper.make_node("Constant", [], ["c"], name="c", value=numpy_helper.from_array(
        np.array([-2.0, -0.5, 0.5, 3.0], np.float32))),
    helper.make_node("Constant", [], ["two"], name="c2v", value_float=2.0),
    helper.make_node("Constant", [], ["zero"], name="c0v", value_float=0.0),
    helper.make_node("Relu", ["c"], ["c1"], name="relu_c"),
    helper.make_node("Pow", ["c", "two"], ["c2"], name="pow_c"),
    helper.make_node("Max", ["c1", "c2"], ["c3"], name="max_c"),
    helper.make_node("Min", ["c3", "c"], ["c4"], name="min_c"),
    helper.make_node("Less", ["c", "zero"], ["neg"], name="less_c"),
    helper.make_node("Where", ["neg", "c2", "c4"], ["c5"], name="where_c"),
    helper.make_node("Floor", ["c5"], ["c6"], name="floor_c"),
    helper.make_node("Sigmoid", ["c"], ["c7"], name="sig_c"),
    helper.make_node("Add", ["c6", "c7"], ["c8"], name="add_c"),
    helper.make_node("Add", ["xs", "c8"], ["y"], name="add_y")],
    [vi("x", [2, 4])], [vi("y", [2, 4])],
    [init("last", np.array(-1, np.int64))])

# Gemm with a broadcast C of shape [M, 1], transA, alpha, beta
save("gemm_bcast", [
    helper.make_node("Gemm", ["a", "b", "c"], ["y"], name="gemm", transA=1, alpha=2.0, beta=0.5)],
    [vi("a", [3, 2])], [vi("y", [2, 4])], [init("b", rnd(3, 4)), init("c", rnd(2, 1))])

# scalars as torch exports them: a 0-d Constant, a 0-d weight, a [1] constant
save("scalar_ops", [
    helper.make_node("Constant", [], ["one"], name="c_one", value=numpy_helper.from_array(
        np.array(1.0, np.float32))),
    helper.make_node("Add", ["x", "one"], ["a"], name="add_scalar"),
    helper.make_node("Mul", ["a", "scale"], ["m"], name="mul_weight_scalar"),
    helper.make_node("Constant", [], ["two"], name="c_two", value=numpy_helper.from_array(
        np.array([2.0], np.float32))),
    helper.make_node("Div", ["m", "two"], ["y"], name="div_1")],
    [vi("x", [2, 3])], [vi("y", [2, 3])], [init("scale", np.array(0.5, np.float32))])

# what the dynamo exporter (torch.onnx.export(..., dynamo=True)) writes for nn.Linear:
# MatMul(x, Transpose(weight)) + Add(bias), for 2-D and 3-D inputs; also Gemm of a Transpose
# and an identity Transpose
save("dynamo_linear", [
    helper.make_node("Transpose", ["fc1.weight"], ["val_0"], name="node_Transpose_0", perm=[1, 0]),
    helper.make_node("MatMul", ["x", "val_0"], ["val_1"], name="node_MatMul_1"),
    helper.make_node("Add", ["val_1", "fc1.bias"], ["h"], name="node_Add_2"),
    helper.make_node("Transpose", ["fc2.weight"], ["val_3"], name="node_Transpose_3"),
    helper.make_node("MatMul", ["x3", "val_3"], ["val_4"], name="node_MatMul_4"),
    helper.make_node("Add", ["val_4", "fc2.bias"], ["h3"], name="node_Add_5"),
    helper.make_node("Transpose", ["fc3.weight"], ["val_6"], name="node_Transpose_6", perm=[1, 0]),
    helper.make_node("Gemm", ["h", "val_6"], ["g"], name="node_Gemm_7", transB=0),
    helper.make_node("Transpose", ["g"], ["gi"], name="node_Transpose_8", perm=[0, 1])],
    [vi("x", [2, 3]), vi("x3", [2, 4, 3])], [vi("gi", [2, 5]), vi("h3", [2, 4, 6])],
    [init("fc1.weight", rnd(4, 3)), init("fc1.bias", rnd(4)), init("fc2.weight", rnd(6, 3)),
     init("fc2.bias", rnd(6)), init("fc3.weight", rnd(5, 4))])

OPSET7_INITS = [init("w", rnd(4, 3, 3, 3) * 0.3), init("b", rnd(4)), init("s", rnd(4)),
                init("bb", rnd(4)), init("m", rnd(4)), init("v", np.abs(rnd(4)) + 0.5),
                init("shape", np.array([2, 16], np.int64)), init("fw", rnd(5, 16) * 0.3),
                init("fb", rnd(5))]
# an opset-7 model (model-zoo era, IR 3: initializers are also graph inputs): BatchNormalization with 'spatial', Dropout with 'ratio',
# Clip with attributes, Unsqueeze/Squeeze with attribute axes, Softmax with the default axis 1,
# Reshape with a shape initializer
save("opset7", [
    helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
    helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["bn"], name="bn",
                     epsilon=1e-4, momentum=0.9, spatial=1),
    helper.make_node("Clip", ["bn"], ["cl"], name="relu6", min=0.0, max=6.0),
    helper.make_node("MaxPool", ["cl"], ["mp"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Reshape", ["mp", "shape"], ["fl"], name="flatten"),
    helper.make_node("Dropout", ["fl"], ["dr"], name="drop", ratio=0.3),
    helper.make_node("Gemm", ["dr", "fw", "fb"], ["g"], name="fc", transB=1),
    helper.make_node("Unsqueeze", ["g"], ["g3"], name="unsq", axes=[1]),
    helper.make_node("Softmax", ["g3"], ["sm"], name="softmax"),
    helper.make_node("Squeeze", ["sm"], ["y"], name="sq", axes=[1])],
    [vi("x", [2, 3, 8, 8])] + [vi(t.name, list(t.dims), t.data_type) for t in OPSET7_INITS],
    [vi("y", [2, 5])], OPSET7_INITS, opset=7, ir=3)

# ---- invalid / unsupported models -------------------------------------------------------
save("err_unsupported_op", [helper.make_node("Tanh", ["x"], ["y"], name="my_tanh")],
     [vi("x", [1, 4])], [vi("y", [1, 4])])
save("err_auto_pad", [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                                       auto_pad="FOO")],
     [vi("x", [1, 1, 4, 4])], [vi("y", None)], check=False)
save("err_conv_channels", [helper.make_node("Conv", ["x", "w"], ["y"], name="conv3")],
     [vi("x", [1, 3, 5, 5])], [vi("y", None)], [init("w", rnd(2, 4, 3, 3))], check=False)
save("err_gemm_k", [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
     [vi("x", [1, 3])], [vi("y", None)], [init("w", rnd(4, 2))], check=False)
save("err_concat", [helper.make_node("Concat", ["x", "w"], ["y"], name="cat", axis=1)],
     [vi("x", [1, 3])], [vi("y", None)], [init("w", rnd(2, 2))], check=False)
save("err_reshape", [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
     [vi("x", [2, 3])], [vi("y", None)], [init("s", np.array([4, 2], np.int64))], check=False)
save("err_cycle", [helper.make_node("Relu", ["b"], ["a"], name="n1"),
                   helper.make_node("Relu", ["a"], ["b"], name="n2"),
                   helper.make_node("Add", ["x", "a"], ["y"], name="n3")],
     [vi("x", [1])], [vi("y", None)], check=False)
save("err_unknown_input", [helper.make_node("Add", ["x", "nope"], ["y"], name="add")],
     [vi("x", [1])], [vi("y", None)], check=False)
save("err_domain", [helper.make_node("Gelu", ["x"], ["y"], name="gelu", domain="com.microsoft")],
     [vi("x", [1])], [vi("y", None)], check=False)
ext = helper.make_tensor("w", F, [2], [0.0, 0.0])
ext.ClearField("float_data")
ext.data_location = TensorProto.EXTERNAL
e = ext.external_data.add()
e.key, e.value = "location", "weights.bin"
save("err_external", [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
     [vi("x", [2])], [vi("y", None)], [ext], check=False)
save("err_runtime_gather", [helper.make_node("Gather", ["x", "i"], ["y"], name="g", axis=0)],
     [vi("x", [3, 2])], [vi("y", None)], [init("i", np.array([0, 1], np.int64))])
save("err_bn_stats_used", [
    helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                     name="bn", training_mode=1)],
    [vi("x", [1, 2, 2])], [vi("y", None), vi("rm", None), vi("rv", None)],
    [init(k, np.ones(2, np.float32)) for k in "sbmv"], opset=15, check=False)
save("err_int_input", [helper.make_node("Identity", ["x"], ["y"], name="id")],
     [vi("x", [2], I64)], [vi("y", [2], I64)])
save("err_no_shape", [helper.make_node("Relu", ["x"], ["y"], name="relu")],
     [helper.make_value_info("x", helper.make_tensor_type_proto(F, None))], [vi("y", None)],
     check=False)
save("err_opset6", [helper.make_node("Relu", ["x"], ["y"], name="relu")],
     [vi("x", [2])], [vi("y", [2])], opset=6, check=False)
save("err_dup_output", [helper.make_node("Relu", ["x"], ["y"], name="r1"),
                        helper.make_node("Relu", ["x"], ["y"], name="r2")],
     [vi("x", [2])], [vi("y", [2])], check=False)
save("err_dropout_mask", [
    helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
    helper.make_node("Cast", ["mask"], ["mf"], name="cast", to=F),
    helper.make_node("Add", ["d", "mf"], ["y"], name="add")],
    [vi("x", [2])], [vi("y", [2])])
save("err_shape_not_const", [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
     [vi("x", [2, 3]), vi("s", [2])], [vi("y", None)], check=False)
save("err_concat9", [helper.make_node("Concat", ["x"] * 9, ["y"], name="cat9", axis=0)],
     [vi("x", [1, 2])], [vi("y", [9, 2])])
save("err_transpose_weight", [
    helper.make_node("Transpose", ["w"], ["wt"], name="tw", perm=[1, 0]),
    helper.make_node("Add", ["x", "wt"], ["y"], name="add")],
    [vi("x", [3, 2])], [vi("y", [3, 2])], [init("w", rnd(2, 3))])
save("err_transpose_3d", [
    helper.make_node("Transpose", ["x"], ["y"], name="t3", perm=[0, 2, 1])],
    [vi("x", [1, 2, 3])], [vi("y", [1, 3, 2])])
save("err_gather_weight", [
    helper.make_node("Gather", ["table", "idx"], ["rows"], name="emb", axis=0),
    helper.make_node("Add", ["x", "rows"], ["y"], name="add")],
    [vi("x", [2, 3])], [vi("y", [2, 3])],
    [init("table", np.arange(15, dtype=np.float32).reshape(5, 3)),
     init("idx", np.array([1, 4], np.int64))])
save("err_bcast", [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
     [vi("x", [2, 3])], [vi("y", None)], [init("w", rnd(4))], check=False)
print("wrote models to", HERE)
