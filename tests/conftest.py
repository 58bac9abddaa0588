"""Shared fixtures: the seeds' conv model and a few small multi-weight models built with
onnx.helper, real engines on them, stores, pipelines, and helpers to write packages and hash a
store's whole content."""
from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "daemon") not in sys.path:  # run from a checkout without an install too
    sys.path.insert(0, str(ROOT / "daemon"))

ONES = {"x": np.ones((1, 1, 3, 3), dtype=np.float32)}


# ---- models -------------------------------------------------------------------------------


def seed_conv_model(path, k: float = 0.0):
    """The seeds' demo model: input "x" 1x1x3x3, one Conv 3x3 weight "conv.weight", no bias,
    output "y" 1x1x1x1. With x all ones and the kernel all k, y = 9k."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1, 1, 3, 3), k, dtype=np.float32), "conv.weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv")], "seed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return Path(path)


def clip_scalar_model(path):
    """y = Clip(x * w, lo, hi) with x, w float32 [4] and the bounds 0-d initializers (lo 0,
    hi 6): refittable scalar weights, as a Clip's bounds or a scale are in exported models."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((4,), np.float32), "w"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["m"], name="scale"),
         helper.make_node("Clip", ["m", "lo", "hi"], ["y"], name="clip")], "clip_scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return Path(path)


def add_chain_model(path, n: int = 10, size: int = 16):
    """y = x + w0 + w1 + ... + w{n-1}, every w a float32 vector of `size` (initially zeros):
    n equally sized weights, so a version that changes one of them changes 1/n of the bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros((size,), np.float32), "w%d" % i) for i in range(n)]
    nodes, prev = [], "x"
    for i in range(n):
        out = "y" if i == n - 1 else "s%d" % i
        nodes.append(helper.make_node("Add", [prev, "w%d" % i], [out], name="add%d" % i))
        prev = out
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return Path(path)


@pytest.fixture(scope="session")
def conv_model_path(tmp_path_factory):
    return seed_conv_model(tmp_path_factory.mktemp("models") / "seed.onnx")


@pytest.fixture(scope="session")
def chain_model_path(tmp_path_factory):
    return add_chain_model(tmp_path_factory.mktemp("models") / "chain.onnx", n=4, size=8)


@pytest.fixture
def engine(conv_model_path):
    from refitd.engine import Engine

    with Engine.open(conv_model_path, backend="reference") as eng:
        yield eng


@pytest.fixture
def chain_engine(chain_model_path):
    from refitd.engine import Engine

    with Engine.open(chain_model_path, backend="reference") as eng:
        yield eng


# ---- stores, pipelines, events --------------------------------------------------------------


class RecordingEvents:
    """An ``events`` object that keeps every (kind, fields) emitted."""

    def __init__(self):
        self.lines: List[Tuple[str, Dict[str, Any]]] = []
        self._mu = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> None:
        with self._mu:
            self.lines.append((kind, fields))

    def kinds(self) -> List[str]:
        with self._mu:
            return [k for k, _ in self.lines]

    def last(self, kind: str) -> Dict[str, Any]:
        with self._mu:
            for k, f in reversed(self.lines):
                if k == kind:
                    return f
        raise AssertionError("no %s event in %s" % (kind, self.kinds()))


@pytest.fixture
def events():
    return RecordingEvents()


@pytest.fixture
def store(tmp_path):
    from refitd.store import Store

    with Store(tmp_path / "store", keep=5) as s:
        yield s


@pytest.fixture
def pipeline(engine, store, events):
    from refitd.pipeline import Pipeline

    p = Pipeline(engine, store, None, events)
    p.start()
    return p


def store_digest(root) -> str:
    """sha256 over every path and file content under ``root``: "the store is unchanged"."""
    h = hashlib.sha256()
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        h.update(b"D" + rel.encode() + b"\0")
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            h.update(b"F" + os.path.join(rel, name).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def kernel(k: float, dtype=np.float32) -> Dict[str, np.ndarray]:
    return {"conv.weight": np.full((1, 1, 3, 3), k, dtype=dtype)}


def write_pkg(path, tensors, version: int, model: str, base: Optional[int] = None,
              note: Optional[str] = None) -> str:
    from refitd.pack import write_package

    return write_package(str(path), tensors, version, model, base=base, note=note)


def y_of(eng) -> Tuple[float, int]:
    out, version = eng.infer(ONES)
    return float(out["y"].ravel()[0]), version


def fail_replace(monkeypatch, suffix: str) -> list:
    """Makes os.replace fail with ENOSPC for destinations ending in `suffix` (a disk that fills
    at that step); returns the list of every destination os.replace was asked for."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if str(dst).endswith(suffix):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.fixture
def state():
    """A short state directory under /tmp (Unix socket paths stay under 107 bytes), removed after."""
    from daemon_helpers import rmtree, short_dir
    d = short_dir()
    yield d
    rmtree(d)


# ---- no silent skips ----------------------------------------------------------------------
# A skip is not a pass: a fresh machine that lacks a tool would otherwise go green without
# running the tests that need it. Long runs (marked slow) are deselected unless REFITD_LONG=1,
# so they never count as skipped; any other skip fails the run (REFITD_ALLOW_SKIPS=1 allows
# them for a run by hand, e.g. on a machine that cannot have a tool).

_SKIPPED: List[str] = []


def pytest_collection_modifyitems(config, items):
    if os.environ.get("REFITD_LONG"):
        return
    slow = [it for it in items if it.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [it for it in items if not it.get_closest_marker("slow")]


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append("%s: %s" % (report.nodeid, reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _SKIPPED and not os.environ.get("REFITD_ALLOW_SKIPS"):
        terminalreporter.write_line(
            "refitd: %d test%s skipped, and a skip is not a pass: install what they need "
            "(or set REFITD_ALLOW_SKIPS=1 for a run by hand)" % (len(_SKIPPED), "" if len(_SKIPPED) == 1 else "s"),
            red=True)
        for line in _SKIPPED:
            terminalreporter.write_line("  " + line)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED and not os.environ.get("REFITD_ALLOW_SKIPS") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
