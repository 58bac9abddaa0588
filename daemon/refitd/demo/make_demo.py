"""Writes seed_conv.onnx, the bundled demo model (the seeds' MagicMind weight_refit sample).

Input "x" float32 1x1x3x3 (the demo feeds ones); one Conv with a 3x3 kernel "conv.weight"
(1x1x3x3, all zeros), no bias, no padding; output "y" 1x1x1x1. With a kernel of all k the output
is 9k, so a refit to k = 0, 1, ..., 9 walks the output 0, 9, ..., 81 and any other value would be
a torn mix of two weight sets.

    python daemon/refitd/demo/make_demo.py        # rewrites seed_conv.onnx beside this file

Needs the `onnx` package (a test dependency), not needed at run time.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.zeros((1, 1, 3, 3), dtype=np.float32), name="conv.weight")
    node = helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv",
                            kernel_shape=[3, 3], pads=[0, 0, 0, 0], strides=[1, 1])
    graph = helper.make_graph(
        [node], "seed_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])],
        initializer=[weight])
    model = helper.make_model(graph, producer_name="refitd-make_demo",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by older onnx/onnxruntime too
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> int:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seed_conv.onnx")
    if argv and len(argv) > 1:
        out = argv[1]
    onnx.save(build(), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
