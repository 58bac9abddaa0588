"""Backend API v2 from Python: refit strategies (swap, quiesce, ab) keep the refit contract and
survive failing refits, plugin backends load through the search path (the test-only plugin,
built here) and are refused with one line when missing or of the wrong api_version, backend
options reach the backend, and an engine left unclosed never crashes the interpreter at exit."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ONES, seed_conv_model
from plugin_backend import build_test_plugins
from refitd import engine as E
from refitd.engine import Engine

STRATEGIES = ["swap", "quiesce", "ab"]


def _kernel(k: float) -> dict:
    return {"conv.weight": np.full((1, 1, 3, 3), k, dtype=np.float32)}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return build_test_plugins(tmp_path_factory.mktemp("plugins"))


@pytest.fixture
def plugins(plugin_dir, monkeypatch):
    monkeypatch.setenv("REFIT_BACKEND_PATH", str(plugin_dir))
    return plugin_dir


@pytest.fixture
def seed(tmp_path):
    return seed_conv_model(tmp_path / "seed.onnx")


def _y(eng: Engine):
    out, version = eng.infer(ONES)
    return float(out["y"].ravel()[0]), version


@pytest.mark.parametrize("backend", ["reference", "testplug"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_refits_and_refusals(seed, plugins, backend, strategy):
    with Engine.open(seed, backend=backend, strategy=strategy) as eng:
        assert eng.strategy == strategy
        eng.refit(_kernel(2), version=1)
        assert _y(eng) == (18.0, 1)
        with eng.stage(_kernel(3), version=2) as staged:
            assert float(eng.infer_staged(staged, ONES)["y"].ravel()[0]) == 27.0
            assert _y(eng) == (18.0, 1)
            eng.publish(staged)
        assert _y(eng) == (27.0, 2)
        with pytest.raises(E.ShapeError, match="conv.weight"):
            eng.refit({"conv.weight": np.ones((1, 1, 3, 4), np.float32)}, version=3)
        assert _y(eng) == (27.0, 2) and eng.version == 2
        stats = eng.stats()
        assert stats["refits"] == 2 and stats["failed_refits"] == 1


@pytest.mark.parametrize("strategy, nth, fault, words", [
    ("swap", 3, "fail_prepare", "injected failure"),
    ("quiesce", 2, "fail_refit", "injected failure"), ("quiesce", 2, "corrupt_refit", "read-back"),
    ("quiesce", 3, "fail_prepare", "injected failure in weights_prepare"),
    ("ab", 3, "fail_refit", "injected failure"), ("ab", 3, "corrupt_refit", "non-finite")])
def test_failing_refit_keeps_serving_version(seed, plugins, strategy, nth, fault, words):
    """The plugin's backend write for the second refit fails (swap: its prepare; quiesce, ab: the
    in-place refit, part-way or silently writing NaN; quiesce: also the staging before its pause):
    the serving version and its output must be exactly as before, and the next refit must serve."""
    with Engine.open(seed, backend="testplug", strategy=strategy, backend_options={fault: nth}) as eng:
        eng.refit(_kernel(1), version=1)
        with pytest.raises(E.BackendError, match=words):
            eng.refit(_kernel(5), version=2)
        assert _y(eng) == (9.0, 1) and eng.version == 1
        eng.refit(_kernel(6), version=3)
        assert _y(eng) == (54.0, 3)


@pytest.mark.parametrize("backend", ["reference", "testplug"])
def test_quiesce_pause_holds_only_the_commit(seed, plugins, backend):
    """quiesce stages and verifies before its pause: a set whose canary fails (finite weights, an
    output that overflows) is refused with no pause, and a pause is reported broken down."""
    with Engine.open(seed, backend=backend, strategy="quiesce") as eng:
        eng.refit(_kernel(1), version=1)
        before = eng.stats()
        assert before["last_inplace_ns"] > 0 and before["last_pause_ns"] >= (
            before["last_drain_ns"] + before["last_inplace_ns"] + before["last_verify_ns"])
        with pytest.raises(E.BackendError, match="non-finite.*version 1 still serves, unchanged"):
            eng.refit(_kernel(3e38), version=2)
        after = eng.stats()
        assert _y(eng) == (9.0, 1) and after["failed_refits"] == 1
        assert (after["last_pause_ns"], after["max_pause_ns"]) == (before["last_pause_ns"], before["max_pause_ns"])


def test_plugin_listed_loaded_and_refused(seed, plugins):
    infos = {b.name: b for b in E.backend_infos()}
    assert infos["reference"].location == "built-in" and infos["reference"].error == ""
    assert infos["testplug"].location == str(plugins / "librefit_backend_testplug.so")
    assert infos["testplug"].error == ""
    assert "backend API 1" in infos["testplug_badapi"].error and "needs 3" in infos["testplug_badapi"].error
    assert "testplug" in E.backends() and "testplug_badapi" not in E.backends()
    with Engine.open(seed, backend="testplug") as eng:
        assert eng.backend == "testplug"
    with pytest.raises(E.EngineError) as exc:
        Engine.open(seed, backend="testplug_badapi")
    assert "librefit_backend_testplug_badapi.so" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_plugin_names_file_and_search_path(seed, plugins):
    with pytest.raises(E.EngineError) as exc:
        Engine.open(seed, backend="magicmind")
    msg = str(exc.value)
    assert "librefit_backend_magicmind.so" in msg and str(plugins) in msg and "REFIT_BACKEND_PATH" in msg
    assert "\n" not in msg


def test_backend_options_and_device(seed):
    with pytest.raises(E.EngineError, match="backend option 'nope'"):
        Engine.open(seed, backend_options={"nope": 1})
    with pytest.raises(E.EngineError, match="one device"):
        Engine.open(seed, device=1)
    with pytest.raises(E.EngineError, match="strategy"):
        Engine.open(seed, strategy="sideways")
    with Engine.open(seed, backend_options={"isa": "generic"}, threads=2) as eng:
        eng.refit(_kernel(1), version=1)
        assert _y(eng) == (9.0, 1)


UNCLOSED = """
import sys, threading
import numpy as np
from refitd.engine import Engine
eng = Engine.open(sys.argv[1])
x = {"x": np.ones((1, 1, 3, 3), dtype=np.float32)}
def work():
    for _ in range(50):
        eng.infer(x)
threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads:
    t.start()
for v in range(1, 4):
    eng.refit({"conv.weight": np.full((1, 1, 3, 3), v, np.float32)}, version=v)
    eng.infer(x)
for t in threads:
    t.join()
staged = eng.stage({"conv.weight": np.full((1, 1, 3, 3), 9, np.float32)}, version=9)
print("done")
"""


def test_unclosed_engine_exits_cleanly_20_of_20(seed):
    """The issue's scenario (main thread + two workers infer, refits, no close(), a staged set
    left over) crashed in the garbage collector every run before contexts and staged sets held a
    reference on their engine in C. Now: exit 0, 20 runs out of 20."""
    codes = []
    for _ in range(20):
        proc = subprocess.run([sys.executable, "-c", UNCLOSED, str(seed)], capture_output=True,
                              text=True, timeout=120)
        codes.append(proc.returncode)
        assert proc.returncode == 0 and proc.stdout.strip() == "done", (codes, proc.stderr[-2000:])
    assert codes == [0] * 20


@pytest.mark.parametrize("builder", ["mobilenetv2_block", "resnet_block"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_prepared_weights_match_the_per_run_path_after_partial_refits(tmp_path, builder, strategy):
    """Prepared weights (BN folded, kernels packed / Winograd-transformed once per set) give the
    outputs of the per-run path (backend.prepare=0), also after partial refits that re-prepare only
    the steps whose weights changed."""
    import onnx

    import models

    model = getattr(models, builder)()
    path = tmp_path / f"{builder}.onnx"
    onnx.save(model, str(path))
    feeds = models.random_inputs(model)
    new = models.random_weights(model, seed=11)
    names = sorted(new)
    with Engine.open(path, strategy=strategy) as prepared, \
            Engine.open(path, backend_options={"prepare": 0}) as per_run:
        for version, part in enumerate([names[::2], names[1::2], names[:1]], start=1):
            tensors = {n: new[n] * (1.0 + 0.1 * version) for n in part}
            prepared.refit(tensors, version=version)
            per_run.refit(tensors, version=version)
            got, v = prepared.infer(feeds)
            want, _ = per_run.infer(feeds)
            assert v == version
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_config_passes_the_strategy_to_the_engine(seed, tmp_path):
    from daemon_helpers import base_config
    from refitd import config as C

    def options(**opts):
        raw = base_config(str(tmp_path), model=str(seed))
        raw["model"]["options"] = opts
        return raw

    kwargs = C.parse_config(options(strategy="ab")).model.options.engine_kwargs()
    assert kwargs["strategy"] == "ab"
    with Engine.open(seed, **kwargs) as eng:
        assert eng.strategy == "ab"
    assert "strategy" not in C.parse_config(options()).model.options.engine_kwargs()
    with pytest.raises(C.ConfigError, match="model.options.strategy: must be one of swap, quiesce, ab"):
        C.parse_config(options(strategy="abba"))


def test_cli_lists_backends(plugins):
    proc = subprocess.run([sys.executable, "-m", "refitd", "backends"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "built-in" in lines["reference"] and " ok " in lines["reference"]
    assert str(plugins / "librefit_backend_testplug.so") in lines["testplug"]
    assert "refused" in lines["testplug_badapi"] and "backend API 1" in lines["testplug_badapi"]
