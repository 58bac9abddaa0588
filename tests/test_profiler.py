"""The reference backend's per-op profiler and intermediate dumps (engine options backend.profile*,
backend.dump*; docs/cpu-backend.md "Profiler and dumps").

- a profile of N inferences is a Chrome trace (one event per step per inference, plus one per
  inference) and a summary whose per-op calls and shares add up; a profile cut short by closing
  the engine is written with what was recorded;
- a dump of one chosen inference holds every node output the loader kept, each equal to
  onnxruntime's value of the same tensor (exposed by adding every node output as a graph output);
- bad options are refused with a one-line error naming the key; the daemon config's model.options
  profile / dump keys reach the engine.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

import models  # noqa: E402
from refitd.engine import Engine, EngineError  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # tests/test_engine_ort.py's tolerance


def _save(tmp_path, name):
    model = models.ALL[name]()
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return model, path


def _profile(tmp_path, name, runs, skip, infers):
    model, path = _save(tmp_path, name)
    out = tmp_path / "prof"
    feeds = models.random_inputs(model)
    with Engine.open(path, **{"backend.profile": str(out), "backend.profile_runs": runs,
                              "backend.profile_skip": skip}) as eng:
        for _ in range(infers):
            eng.infer(feeds)
    with open(out / "trace.json") as f:
        trace = json.load(f)
    with open(out / "summary.json") as f:
        summary = json.load(f)
    return trace, summary, (out / "summary.txt").read_text()


def test_profile_trace_and_summary(tmp_path):
    trace, summary, text = _profile(tmp_path, "resnet_block", runs=5, skip=2, infers=9)
    events = trace["traceEvents"]
    runs = [e for e in events if e["cat"] == "run"]
    steps = [e for e in events if e["cat"] != "run"]
    assert [e["name"] for e in runs] == ["inference %d" % i for i in range(2, 7)]
    n_steps = len(summary["steps"])
    assert n_steps == 6  # stem, MaxPool, 2 Winograd convs, GlobalAveragePool, Gemm (fused)
    assert len(steps) == 5 * n_steps
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    # Steps of one inference lie inside its envelope, in order.
    for r, run in enumerate(runs):
        mine = steps[r * n_steps:(r + 1) * n_steps]
        assert [e["args"]["step"] for e in mine] == list(range(n_steps))
        assert all(run["ts"] <= e["ts"] and e["ts"] + e["dur"] <= run["ts"] + run["dur"] + 1e-3 for e in mine)
    stem = steps[0]
    assert stem["name"] == "stem" and stem["cat"] == "Conv[wide]+BatchNormalization+Relu"
    assert stem["args"]["shapes"] == "1x3x112x112, 64x3x7x7 -> 1x64x56x56"
    assert summary["runs"] == 5 and summary["skip"] == 2 and summary["kernels"]
    assert sum(o["calls"] for o in summary["ops"]) == 5 * n_steps
    assert abs(sum(o["share"] for o in summary["ops"]) - 1.0) < 1e-3
    assert abs(sum(s["share"] for s in summary["steps"]) - 1.0) < 1e-3
    assert all(s["min_us"] <= s["mean_us"] + 1e-3 for s in summary["steps"])
    assert "MaxPool" in text and "calls" in text and "share" in text and "stem" in text


def test_profile_cut_short_is_written_at_close(tmp_path):
    trace, summary, _ = _profile(tmp_path, "mlp", runs=50, skip=0, infers=3)
    assert summary["runs"] == 3
    assert len([e for e in trace["traceEvents"] if e["cat"] == "run"]) == 3


def _ort_intermediates(model, feeds):
    """onnxruntime's value of every node output: each one added as a graph output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in have:
                m.graph.output.append(helper.make_empty_tensor_value_info(out))
                have.add(out)
    sess = models.ort_session(m, threads=1)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("name", ["mobilenetv2_block", "resnet_block", "edge_cnn", "lenet"])
def test_dump_matches_onnxruntime_intermediates(name, tmp_path):
    model, path = _save(tmp_path, name)
    out = tmp_path / "dump"
    feeds = [models.random_inputs(model, seed) for seed in (1, 2, 3)]
    with Engine.open(path, **{"backend.dump": str(out), "backend.dump_at": 1}) as eng:
        results = [eng.infer(f)[0] for f in feeds]
    with open(out / "index.json") as f:
        index = json.load(f)
    assert index["inference"] == 1 and index["fused"] is False
    want = _ort_intermediates(model, feeds[1])  # the dumped inference's input
    dumped = {v["output"]: v for v in index["values"]}
    kept = [n for n in model.graph.node if n.op_type != "Constant"]  # Constants fold at load
    assert set(dumped) == {n.output[0] for n in kept}
    for node in kept:
        v = dumped[node.output[0]]
        assert v["node"] == node.name and v["op"] == node.op_type and v["dtype"] == "float32"
        assert v["file"] in os.listdir(out)
        arr = np.load(out / v["file"])
        ref = want[node.output[0]]
        assert arr.shape == ref.shape == tuple(v["shape"]), node.name
        bad = ~np.isclose(arr, ref, rtol=RTOL, atol=ATOL)
        assert not bad.any(), "%s: %d/%d differ, worst %.3g" % (
            node.name, int(bad.sum()), ref.size, float(np.abs(arr - ref).max()))
    # The dump does not disturb the run it rides on: that inference's outputs are the real ones.
    for name_out, arr in results[1].items():
        np.testing.assert_allclose(arr, want[name_out], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("key,value,words", [
    ("backend.profil", "x", ["backend option 'profil'", "unknown", "profile"]),
    ("backend.profile_runs", "0", ["backend.profile_runs", ">= 1", "'0'"]),
    ("backend.dump_at", "-1", ["backend.dump_at"]),
    ("backend.dump", "FILE", ["backend.dump", "not a directory"]),
])
def test_bad_options_refused_naming_the_key(key, value, words, tmp_path):
    _, path = _save(tmp_path, "mlp")
    if value == "FILE":
        value = str(tmp_path / "plain")
        open(value, "w").close()
    with pytest.raises(EngineError) as e:
        Engine.open(path, **{key: value})
    msg = str(e.value)
    assert "\n" not in msg.strip()
    for w in words:
        assert w in msg


def test_a_backend_option_given_both_typed_and_passed_through_is_refused(tmp_path):
    from refitd import config

    raw = {"model": {"path": "m.onnx", "options": {"profile": "prof"},
                     "backend_options": {"profile_runs": 5, "isa": "generic"}},
           "store": {"path": str(tmp_path / "s")}, "control": {"socket": str(tmp_path / "c.sock")}}
    with pytest.raises(config.ConfigError) as e:
        config.parse_config(raw)
    assert "model.backend_options.profile_runs: is also set by model.options (profile); give it once" in str(e.value)
    raw["model"]["backend_options"] = {"isa": "generic"}
    kw = config.parse_config(raw).model.engine_args()
    assert kw["backend_options"] == {"isa": "generic", "profile": "prof", "profile_runs": "100",
                                     "profile_skip": "0"}
    assert not any(k.startswith("backend.") for k in kw)  # one way to the backend: its options


def test_daemon_config_profile_and_dump_reach_the_engine(tmp_path):
    from refitd import config

    model, path = _save(tmp_path, "mlp")
    cfg_path = tmp_path / "refitd.yaml"
    cfg_path.write_text(
        "model:\n  path: %s\n  options:\n    profile: prof\n    profile_runs: 2\n"
        "    dump: dump\n    dump_at: 0\nstore:\n  path: store\ncontrol:\n  socket: ctl.sock\n" % path)
    cfg = config.load_config(str(cfg_path))
    kw = cfg.model.engine_args()  # the typed keys travel as the backend options they name
    opts = kw["backend_options"]
    assert opts["profile"] == str(tmp_path / "prof") and opts["profile_runs"] == "2"
    assert opts["dump"] == str(tmp_path / "dump") and opts["dump_at"] == "0"
    with Engine.open(path, **kw) as eng:
        for _ in range(3):
            eng.infer(models.random_inputs(model))
    assert json.loads((tmp_path / "prof" / "summary.json").read_text())["runs"] == 2
    assert len(json.loads((tmp_path / "dump" / "index.json").read_text())["values"]) == len(model.graph.node)
