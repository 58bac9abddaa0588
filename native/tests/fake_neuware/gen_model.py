"""TEST-ONLY: the fake Neuware tree's "model compiler" (never shipped).

Turns an ONNX model of Conv (group 1, no dilation) and Relu nodes into a fake MagicMind model
file that the fake libmagicmind_runtime.so runs (format: src/fake_magicmind.cc), the way
MagicMind's builder would: weights renamed to engine names (main/mm.const/mm.refit_const:0,
main/mm.const/mm.refit_const_1:0, ...), conv filters relaid NHWC ([O, kh, kw, I]). It also writes
the name-map sidecar (<out>.names) a user would write for a real engine.

    python native/tests/fake_neuware/gen_model.py model.onnx model.mm
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "../../../daemon"))
from refitd.namemap import Entry, NameMap  # noqa: E402


def engine_name(i: int) -> str:
    return "main/mm.const/mm.refit_const%s:0" % ("" if i == 0 else "_%d" % i)


def _dims(v) -> list:
    return [d.dim_value for d in v.type.tensor_type.shape.dim]


def convert(onnx_path: str, out_path: str) -> NameMap:
    g = onnx.load(onnx_path).graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    filters = {n.input[1] for n in g.node if n.op_type == "Conv"}
    names = {src: engine_name(i) for i, src in enumerate(inits)}
    lines, entries = ["fake-magicmind-model 1"], []
    for kind, vals in (("input", g.input), ("output", g.output)):
        for v in vals:
            if v.name in inits:
                continue
            d = _dims(v)
            lines.append("%s %s %d %s" % (kind, v.name, len(d), " ".join(map(str, d))))
            entries.append(Entry(kind, v.name, v.name, "float32", tuple(d), "-"))
    for src, arr in inits.items():
        nhwc = src in filters
        eng = np.ascontiguousarray(arr.transpose(0, 2, 3, 1)) if nhwc else arr
        lines.append("weight %s %d %s %s" % (names[src], eng.ndim, " ".join(map(str, eng.shape)),
                                             " ".join("%.9g" % x for x in eng.ravel())))
        entries.append(Entry("weight", src, names[src], "float32", tuple(eng.shape), "NCHW>NHWC" if nhwc else "-"))
    for n in g.node:
        if n.op_type == "Relu":
            lines.append("relu %s %s" % (n.input[0], n.output[0]))
            continue
        if n.op_type != "Conv":
            raise SystemExit("gen_model: op %s is not supported by the fake runtime" % n.op_type)
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise SystemExit("gen_model: Conv group/dilation other than 1 is not supported by the fake runtime")
        s, p = a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
        bias = names[n.input[2]] if len(n.input) > 2 and n.input[2] else "-"
        lines.append("conv %s %s %s %s %d %d %d %d %d %d" % (n.input[0], names[n.input[1]], bias, n.output[0],
                                                             s[0], s[1], p[0], p[1], p[2], p[3]))
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    nm = NameMap(entries, NameMap.sidecar(out_path))
    nm.write(NameMap.sidecar(out_path))
    return nm


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
