"""refitd.engine on the seeds' model: demos, refused refits, staging, threads, lifetime."""
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from refitd import engine as E
from refitd.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
ONES = {"x": np.ones((1, 1, 3, 3), dtype=np.float32)}


def _seed_model(path: Path, k: float = 0.0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1, 1, 3, 3), k, dtype=np.float32), "conv.weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv")], "seed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture
def seed(tmp_path):
    with Engine.open(_seed_model(tmp_path / "seed.onnx")) as eng:
        yield eng


def _y(eng):
    out, version = eng.infer(ONES)
    return float(out["y"].ravel()[0]), version


def test_describes_model(seed):
    assert seed.inputs() == [E.WeightSpec("x", "float32", (1, 1, 3, 3), 36)]
    assert seed.outputs() == [E.WeightSpec("y", "float32", (1, 1, 1, 1), 4)]
    assert seed.weights() == [E.WeightSpec("conv.weight", "float32", (1, 1, 3, 3), 36)]
    assert seed.backend == "reference" and seed.version == 0
    assert seed.fingerprint.startswith("sha256:") and len(seed.fingerprint) == 71


def test_fingerprint_depends_on_schema_not_values(tmp_path):
    with Engine.open(_seed_model(tmp_path / "a.onnx", 0)) as a, Engine.open(_seed_model(tmp_path / "b.onnx", 5)) as b:
        assert a.fingerprint == b.fingerprint
    other = [E.WeightSpec("conv.weight", "float32", (1, 1, 5, 5), 100)]
    assert E.schema_fingerprint(other) != a.fingerprint


def test_seed_single_thread_demo(seed):
    assert _y(seed) == (0.0, 0)
    seed.refit({"conv.weight": np.ones((1, 1, 3, 3), np.float32)}, version=1)
    assert _y(seed) == (9.0, 1)
    assert seed.version == 1
    np.testing.assert_array_equal(seed.read_weight("conv.weight"), np.ones((1, 1, 3, 3), np.float32))


def test_float16_weights_accepted(seed):
    seed.refit({"conv.weight": np.full((1, 1, 3, 3), 0.5, np.float16)}, version=2)
    assert _y(seed) == (4.5, 2)


@pytest.mark.parametrize("tensors, cls, words", [
    ({"nope": np.ones((1, 1, 3, 3), np.float32)}, E.UnknownWeightError, ["'nope'", "not a refittable weight"]),
    ({"conv.weight": np.ones((1, 1, 3, 3), np.int64)}, E.DtypeError, ["'conv.weight'", "int64"]),
    ({"conv.weight": np.ones((1, 1, 3, 3), np.float64)}, E.DtypeError, ["'conv.weight'", "float64"]),
    ({"conv.weight": np.ones((1, 1, 3, 3), bool)}, E.DtypeError, ["'conv.weight'", "bool"]),
    ({"conv.weight": np.ones((3, 3), np.float32)}, E.ShapeError, ["'conv.weight'", "[3, 3]", "[1, 1, 3, 3]"]),
    ({"conv.weight": np.ones((1, 1, 2, 2), np.float32)}, E.ShapeError, ["'conv.weight'", "[1, 1, 2, 2]"]),
    ({}, E.EmptyRefitError, ["no tensors"]),
    ({"conv.weight": np.full((1, 1, 3, 3), np.nan, np.float32)}, E.NonFiniteError, ["'conv.weight'", "NaN at element 0"]),
    ({"conv.weight": np.full((1, 1, 3, 3), -np.inf, np.float32)}, E.NonFiniteError, ["'conv.weight'", "-Inf"]),
])
def test_bad_refit_rejected_and_nothing_changes(seed, tensors, cls, words):
    seed.refit({"conv.weight": np.full((1, 1, 3, 3), 2, np.float32)}, version=3)
    with pytest.raises(cls) as info:
        seed.refit(tensors, version=4)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message
    if tensors:
        assert info.value.tensor == next(iter(tensors))
    assert isinstance(info.value, E.RefitError)
    assert _y(seed) == (18.0, 3) and seed.version == 3
    np.testing.assert_array_equal(seed.read_weight("conv.weight"), np.full((1, 1, 3, 3), 2, np.float32))


def test_nonfinite_allowed_on_request(seed):
    seed.refit({"conv.weight": np.full((1, 1, 3, 3), np.inf, np.float32)}, version=5, allow_nonfinite=True)
    y, v = _y(seed)
    assert np.isinf(y) and v == 5


def test_bad_inputs_to_infer(seed):
    with pytest.raises(E.ShapeError, match=r"input 'x': shape \[1, 9\]"):
        seed.infer({"x": np.ones((1, 9), np.float32)})
    with pytest.raises(E.EngineError, match="input 'z': not an input"):
        seed.infer({"x": ONES["x"], "z": ONES["x"]})
    with pytest.raises(E.EngineError, match="input 'x': missing"):
        seed.infer({})


def test_stage_shadow_publish(seed):
    with seed.stage({"conv.weight": np.full((1, 1, 3, 3), 3, np.float32)}, version=7) as staged:
        out = seed.infer_staged(staged, ONES)
        assert float(out["y"].ravel()[0]) == 27.0
        assert _y(seed) == (0.0, 0), "a staged set does not serve"
        seed.publish(staged)
    assert _y(seed) == (27.0, 7)


def test_publish_conflict(seed):
    staged = seed.stage({"conv.weight": np.full((1, 1, 3, 3), 3, np.float32)}, version=7)
    seed.refit({"conv.weight": np.full((1, 1, 3, 3), 4, np.float32)}, version=8)
    with pytest.raises(E.ConflictError, match="version 8 has been published"):
        seed.publish(staged)
    staged.close()
    assert _y(seed) == (36.0, 8)


def test_open_errors(tmp_path):
    with pytest.raises(E.ModelError, match="cannot open model"):
        Engine.open(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\xff")
    with pytest.raises(E.ModelError):
        Engine.open(bad)
    good = _seed_model(tmp_path / "s.onnx")
    with pytest.raises(E.EngineError, match="unknown backend 'mlu-9000'"):
        Engine.open(good, backend="mlu-9000")
    with pytest.raises(E.EngineError, match="unknown option 'colour'"):
        Engine.open(good, colour="blue")
    with Engine.open(good, initial_version=12) as eng:
        assert eng.version == 12 and _y(eng) == (0.0, 12)


def test_close_is_idempotent_and_final(seed):
    seed.infer(ONES)
    seed.close()
    seed.close()
    with pytest.raises(E.EngineError, match="closed"):
        seed.infer(ONES)
    with pytest.raises(E.EngineError, match="closed"):
        seed.refit({"conv.weight": np.ones((1, 1, 3, 3), np.float32)}, 1)


@pytest.mark.parametrize("strategy", ["swap", "quiesce", "ab"])
def test_threads_never_see_a_torn_result(tmp_path, strategy):
    """Python-level version of the C stress test: 4 threads infer while refits land every ms,
    under each refit strategy."""
    with Engine.open(_seed_model(tmp_path / "seed.onnx"), strategy=strategy) as seed:
        _threads_never_see_a_torn_result(seed)


def _threads_never_see_a_torn_result(seed):
    stop = threading.Event()
    problems, counts = [], []

    def reader():
        last, n = -1, 0
        while not stop.is_set():
            out, v = seed.infer(ONES)
            if float(out["y"].ravel()[0]) != 9.0 * v or v < last:
                problems.append((float(out["y"].ravel()[0]), v, last))
            last, n = v, n + 1
        counts.append(n)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for v in range(1, 301):
        seed.refit({"conv.weight": np.full((1, 1, 3, 3), v, np.float32)}, version=v)
        time.sleep(0.001)
    stop.set()
    for t in threads:
        t.join()
    assert problems == []
    assert sum(counts) > 1000 and min(counts) > 0


def _conv_chain(path, n: int):
    """``n`` 64-channel 3x3 convs on 1x64x64x64, one weight shared (compute, no memory)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((64, 64, 3, 3)) * 0.02).astype(np.float32), "w")
    names = ["x"] + ["h%d" % i for i in range(1, n)] + ["y"]
    nodes = [helper.make_node("Conv", [names[i], "w"], [names[i + 1]], pads=[1, 1, 1, 1]) for i in range(n)]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 64, 64])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_gil_released_during_compute(tmp_path):
    """While one thread is inside C, another must run Python. Held, the GIL would let the main
    thread run only just before the call enters C (one switch interval, 5 ms) and just after it
    returns; released, the main thread runs in the middle of a long call too. So: one infer of
    >= 100 ms, and a main-thread timestamp more than 25 ms from both of its ends. Load on the
    machine only delays when the main thread runs, never makes a held GIL look released."""
    x = {"x": np.ones((1, 64, 64, 64), np.float32)}
    with Engine.open(_conv_chain(tmp_path / "one.onnx", 1)) as eng:  # size the chain to the machine
        eng.infer(x)
        one = 1.0
        for _ in range(3):  # the fastest: a chain sized on it runs at least as long as planned
            t0 = time.perf_counter()
            eng.infer(x)
            one = min(one, time.perf_counter() - t0)
    n = max(2, min(128, int(0.3 / max(one, 1e-4)) + 1))
    with Engine.open(_conv_chain(tmp_path / "chain.onnx", n)) as eng:
        eng.infer(x)
        span = []

        def work():
            t0 = time.perf_counter()
            eng.infer(x)
            span.append((t0, time.perf_counter()))

        t = threading.Thread(target=work)
        stamps = []
        t.start()
        while t.is_alive():
            now = time.perf_counter()
            if not stamps or now - stamps[-1] > 0.001:
                stamps.append(now)
        t.join()
    (start, end), margin = span[0], 0.025
    assert end - start >= 0.1, "the call took %.3f s (%d convs): too short to judge" % (end - start, n)
    inside = [s for s in stamps if start + margin < s < end - margin]
    assert inside, "the main thread was starved: the GIL was held during compute (%d stamps, none " \
        "inside the %.3f s call)" % (len(stamps), end - start)


@pytest.mark.parametrize("script, expect", [
    ("seed_single.py", "kernel all 1: output 9"),
    ("seed_multithread.py", "outputs seen 0, 9, 18, 27, 36, 45, 54, 63, 72, 81"),
])
def test_examples_reproduce_seeds(script, expect):
    args = [sys.executable, str(ROOT / "examples" / script)]
    if script == "seed_multithread.py":
        args += ["--step", "0.1", "--threads", "2", "--quiet"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expect in proc.stdout
    if script == "seed_multithread.py":
        assert "torn 0, out of order 0" in proc.stdout


def test_unclosed_engine_with_live_contexts_exits_cleanly(tmp_path):
    """An engine never closed, with contexts on several threads and an unpublished staged set,
    must be torn down in a safe order by the garbage collector at interpreter exit."""
    model = _seed_model(tmp_path / "seed.onnx")
    script = f"""
import threading, numpy as np
from refitd.engine import Engine
eng = Engine.open({str(model)!r})
x = {{"x": np.ones((1, 1, 3, 3), np.float32)}}
eng.infer(x)
threads = [threading.Thread(target=eng.infer, args=(x,)) for _ in range(3)]
[t.start() for t in threads]; [t.join() for t in threads]
staged = eng.stage({{"conv.weight": np.ones((1, 1, 3, 3), np.float32)}}, 1)
print("done")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize("n, index, value, word", [
    (40000, 0, np.nan, "NaN"), (40000, 16383, np.inf, "+Inf"), (40000, 16384, -np.inf, "-Inf"),
    (40000, 39999, np.nan, "NaN"),
    # >= 1 MiB: the streaming (AVX2) copy; 262147 floats leave a 3-element scalar tail
    (262147, 7, np.nan, "NaN"), (262147, 16384 * 5 + 3, np.inf, "+Inf"), (262147, 262146, -np.inf, "-Inf"),
])
def test_nonfinite_found_at_any_position(tmp_path, n, index, value, word):
    """The copy checks finiteness chunk by chunk: a bad value at a chunk edge, in a vector tail or
    at the very end is found and named by its element index, and nothing changes."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((n,), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], [w])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with Engine.open(path) as eng:
        good = np.arange(n, dtype=np.float32)
        eng.refit({"w": good}, version=1)
        np.testing.assert_array_equal(eng.read_weight("w"), good)
        bad = good.copy()
        bad[index] = value
        with pytest.raises(E.NonFiniteError, match=f"'w': {re.escape(word)} at element {index} "):
            eng.refit({"w": bad}, version=2)
        assert eng.version == 1
        np.testing.assert_array_equal(eng.read_weight("w"), good)
        out, v = eng.infer({"x": np.ones(n, np.float32)})
        assert v == 1 and np.array_equal(out["y"], good + 1)


@pytest.mark.parametrize("version", [-1, 1.5, "3", True, 2**64])
def test_bad_version_numbers_are_refused_not_truncated(seed, version):
    with pytest.raises(E.EngineError, match="version must be an integer"):
        seed.refit({"conv.weight": np.ones((1, 1, 3, 3), np.float32)}, version=version)
    assert seed.version == 0
