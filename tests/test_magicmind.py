"""The MagicMind backend without an MLU: the compile-only check against the declaration header
(and that it catches a broken signature), and the real plugin source run against the TEST-ONLY
fake Neuware runtime (native/tests/fake_neuware) through librefit and refitd.engine: a package
in ONNX source names refits the NHWC engine through the name map, outputs match onnxruntime; a
refit the runtime refuses keeps the serving version; the backend options of seed 004."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, write_pkg
from models import ort_session, with_initializers

CHECK = ROOT / "toolchain" / "mm_compile_check.sh"
DECL = ROOT / "native" / "tests" / "fake_neuware" / "include"
BACKEND = ROOT / "native" / "backends" / "magicmind"


def _compile_check(cxx="g++", include=DECL, *flags):
    return subprocess.run([str(CHECK), cxx, str(include), *flags], capture_output=True, text=True, timeout=300)


# ---- compile-only check ------------------------------------------------------------------------

@pytest.mark.parametrize("cxx", ["g++", "aarch64-linux-gnu-g++"])
def test_backend_compiles_against_the_declaration_header(cxx):
    assert shutil.which(cxx), "%s missing: toolchain/ensure_tools.sh mm installs it" % cxx
    r = _compile_check(cxx)
    assert r.returncode == 0, r.stderr
    assert "4 sources compile" in r.stdout or "sources compile" in r.stdout


@pytest.mark.parametrize("old, new, symbol", [
    # a wrong argument type in a CNRT call the backend makes
    ("cnrtRet_t cnrtMemcpy(void *dst, void *src, size_t bytes, cnrtMemTransDir_t dir);",
     "cnrtRet_t cnrtMemcpy(void *dst, void *src, int *bytes, cnrtMemTransDir_t dir);", "cnrtMemcpy"),
    # a wrong argument type in a MagicMind method the refit path calls
    ("virtual Status SetNamedWeights(const std::string &name, IRTTensor *weights) = 0;",
     "virtual Status SetNamedWeights(const std::string &name, const float *weights) = 0;", "SetNamedWeights"),
    # a changed return type
    ("IRefitter *CreateIRefitter(IEngine *engine);", "IRefitter CreateIRefitter(IEngine *engine);", "CreateIRefitter"),
])
def test_a_broken_signature_fails_the_compile_check(tmp_path, old, new, symbol):
    inc = tmp_path / "include"
    shutil.copytree(DECL, inc)
    header = inc / "mm_decl_compile_check.h"
    text = header.read_text()
    assert text.count(old) == 1, "the declaration header no longer has: " + old
    header.write_text(text.replace(old, new))
    r = _compile_check("g++", inc)
    assert r.returncode != 0, "a broken %s still compiles" % symbol
    assert symbol in r.stderr


def test_declaration_header_declares_only_what_the_backend_uses():
    text = (DECL / "mm_decl_compile_check.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    declared = set(re.findall(r"\b(cnrt[A-Z]\w*)\s*\(", text))
    declared |= set(re.findall(r"\b([A-Z]\w+)\s*\([^;{]*\)\s*(?:const)?\s*(?:=\s*0)?;", text))
    declared -= {"Status", "Dims", "FakeAccess"}  # constructors
    used = "\n".join(p.read_text() for p in BACKEND.glob("*.cc")) + (BACKEND / "mm_error.h").read_text()
    unused = sorted(n for n in declared if not re.search(r"\b%s\b" % n, used))
    assert declared and not unused, "declared but not used by the backend: %s" % unused


# ---- the plugin against the fake runtime -------------------------------------------------------

@pytest.fixture(scope="session")
def plugin_dir():
    """Builds the fake Neuware prefix and the plugin from the real backend source (cached in build/)."""
    r = subprocess.run(["make", "-s", "fake-neuware"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    build = ROOT / "build" / "mm-py"
    env = dict(os.environ, NEUWARE_HOME=str(ROOT / "build" / "fake-neuware"))
    for cmd in (["cmake", "-S", str(BACKEND), "-B", str(build)],
                ["cmake", "--build", str(build), "-j2", "--target", "refit_backend_magicmind"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    assert (build / "librefit_backend_magicmind.so").exists()
    os.environ["REFIT_BACKEND_PATH"] = str(build)  # librefit reads it at each plugin lookup
    return build


def conv_relu_conv(seed):
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    rng = np.random.default_rng(seed)
    w = {"c1.weight": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) / 3,
         "c1.bias": rng.standard_normal(6).astype(np.float32),
         "c2.weight": rng.standard_normal((2, 6, 3, 3)).astype(np.float32) / 5}
    nodes = [h.make_node("Conv", ["x", "c1.weight", "c1.bias"], ["h"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["h"], ["r"]),
             h.make_node("Conv", ["r", "c2.weight"], ["y"], strides=[2, 2])]
    g = h.make_graph(nodes, "crc", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 7, 7])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 2, 3, 3])],
                     [nh.from_array(v, n) for n, v in w.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), w


@pytest.fixture
def compiled(tmp_path):
    """The source ONNX and its fake MagicMind compilation (engine names, NHWC) + sidecar."""
    import onnx
    sys.path.insert(0, str(ROOT / "native" / "tests" / "fake_neuware"))
    import gen_model
    model, w = conv_relu_conv(0)
    onnx.save(model, str(tmp_path / "model.onnx"))
    nm = gen_model.convert(str(tmp_path / "model.onnx"), str(tmp_path / "model.mm"))
    assert nm.by_source("weight", "c1.weight").engine == "main/mm.const/mm.refit_const:0"
    return tmp_path, model, w


def _open(d, **options):
    from refitd.engine import Engine
    return Engine.open(d / "model.onnx", backend="magicmind", **{"backend.model": str(d / "model.mm"), **options})


@pytest.mark.parametrize("strategy", ["quiesce", "ab"])
def test_source_package_refits_the_nhwc_engine_and_matches_onnxruntime(plugin_dir, compiled, strategy):
    from refitd.package import read_package
    d, model, w0 = compiled
    x = np.random.default_rng(5).standard_normal((1, 3, 7, 7)).astype(np.float32)
    with _open(d, strategy=strategy) as eng:
        assert eng.backend == "magicmind"
        assert [s.name for s in eng.weights()] == ["c1.weight", "c1.bias", "c2.weight"]
        out, v = eng.infer({"x": x})
        np.testing.assert_allclose(out["y"], ort_session(model).run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
        for version, seed in ((1, 1), (2, 2)):
            _, w = conv_relu_conv(seed)
            pkg = read_package(write_pkg(d / ("w%d.safetensors" % version), w, version, eng.fingerprint),
                               max_bytes=1 << 20)
            eng.refit(pkg.tensors, version)
            out, v = eng.infer({"x": x})
            assert v == version
            ref = ort_session(with_initializers(model, w)).run(None, {"x": x})[0]
            np.testing.assert_allclose(out["y"], ref, rtol=1e-4, atol=1e-4)


def test_refit_the_runtime_refuses_keeps_the_serving_version(plugin_dir, compiled, monkeypatch):
    d, model, _ = compiled
    x = np.ones((1, 3, 7, 7), np.float32)
    with _open(d) as eng:  # quiesce, the default for a backend that refits only in place
        _, w1 = conv_relu_conv(1)
        eng.refit(w1, 1)
        before, _ = eng.infer({"x": x})
        monkeypatch.setenv("FAKE_MAGICMIND_IGNORE_WEIGHT", "main/mm.const/mm.refit_const_2:0")
        monkeypatch.setenv("FAKE_MAGICMIND_IGNORE_COUNT", "1")  # refused once; the restore then succeeds
        _, w2 = conv_relu_conv(2)
        with pytest.raises(Exception, match=r"still misses weight\(s\) main/mm\.const/mm\.refit_const_2:0") as e:
            eng.refit(w2, 2)
        assert "\n" not in str(e.value)
        assert eng.version == 1
        after, v = eng.infer({"x": x})
        assert v == 1
        np.testing.assert_array_equal(after["y"], before["y"])


def test_seed_004_options(plugin_dir, compiled, tmp_path):
    d, model, _ = compiled
    x = np.ones((1, 3, 7, 7), np.float32)
    ref = ort_session(model).run(None, {"x": x})[0]
    opts = {"backend.device_ids": "0,1", "backend.memory": "static", "backend.contexts_per_device": "2",
            "backend.profiler_dir": str(tmp_path / "prof"), "backend.dump_dir": str(tmp_path / "dump"),
            "backend.dump_mode": "outputs"}
    with _open(d, **opts) as eng:
        out, _ = eng.infer({"x": x})
        np.testing.assert_allclose(out["y"], ref, rtol=1e-4, atol=1e-4)
    dumps = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumps and dumps[0].startswith("device0-context")
    assert list((tmp_path / "prof" / "plugins" / "profile").iterdir())  # the fake's placeholder
    from refitd.engine import EngineError
    with pytest.raises(EngineError, match="backend option 'memory'='fast': expected allocator or static"):
        _open(d, **{"backend.memory": "fast"})
    with pytest.raises(EngineError, match=r"backend option 'nope': unknown \(known: model, names"):
        _open(d, **{"backend.nope": "1"})
    with pytest.raises(EngineError, match=r"device id 7 out of range \(2 MLU device\(s\) found\)"):
        _open(d, **{"backend.device_ids": "7"})


def test_open_errors_name_the_file(plugin_dir, compiled):
    from refitd.engine import EngineError
    d, _, _ = compiled
    (d / "model.mm.names").rename(d / "elsewhere.names")
    with pytest.raises(EngineError, match=r"name map '.*model\.mm\.names': cannot open it"):
        _open(d)
    with pytest.raises(EngineError, match=r"backend option 'model': required"):
        from refitd.engine import Engine
        Engine.open(d / "model.onnx", backend="magicmind")


def test_inputs_and_outputs_must_match_by_name_and_layout(plugin_dir, compiled):
    from refitd.engine import EngineError
    d, _, _ = compiled
    names = d / "model.mm.names"
    text = names.read_text()
    names.write_text(text.replace("input\tx\tx\tfloat32\t1x3x7x7\t-", "input\tx\tx\tfloat32\t1x3x7x7\tNCHW>NHWC"))
    with pytest.raises(EngineError, match="input 'x': layout NCHW>NHWC for inputs and outputs is not supported"):
        _open(d)
    names.write_text(text.replace("input\tx\tx\t", "input\tx\timage\t"))
    with pytest.raises(EngineError, match=r"input 'x' \(#0\): expected engine name 'image', the MagicMind model's is 'x' \(map it with an input row"):
        _open(d)


def test_missing_plugin_names_the_file_and_where_it_looked(tmp_path, compiled):
    d, _, _ = compiled
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from refitd.engine import Engine\n"
            "try:\n    Engine.open(%r, backend='magicmind', **{'backend.model': 'x.mm'})\n"
            "except Exception as e:\n    print(e)\n") % (str(ROOT / "daemon"), str(d / "model.onnx"))
    env = {k: v for k, v in os.environ.items() if k != "REFIT_BACKEND_PATH"}
    env["REFIT_BACKEND_PATH"] = str(tmp_path / "empty")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    msg = r.stdout.strip()
    assert "librefit_backend_magicmind.so" in msg and str(tmp_path / "empty") in msg, msg
    assert "\n" not in msg


# ---- refitd run with backend: magicmind ---------------------------------------------------------

def _daemon_config(state):
    from daemon_helpers import base_config, write_config
    cfg = base_config(state)
    cfg["model"]["backend"] = "magicmind"
    return write_config(state, cfg)


def test_refitd_run_without_the_plugin_fails_at_start_naming_file_and_search_path(monkeypatch):
    from daemon_helpers import DaemonProc, rmtree, short_dir
    state = short_dir("rmm")
    empty = os.path.join(state, "no-plugins")
    os.mkdir(empty)
    monkeypatch.setenv("REFIT_BACKEND_PATH", empty)
    d = DaemonProc(_daemon_config(state), os.path.join(state, "c.sock")).start(wait=False)
    try:
        assert d.proc.wait(60) != 0
        # the one line on stderr (the JSON event log carries the same reason)
        lines = [l for l in d.log().splitlines() if l.startswith("refitd: ")]
        assert len(lines) == 1 and "librefit_backend_magicmind.so" in lines[0], d.log()
        assert empty in lines[0] and "magicmind" in lines[0]
    finally:
        d.stop()
        rmtree(state)


def test_the_same_config_starts_with_the_renamed_test_plugin(monkeypatch):
    """engine-v2's TEST-ONLY plugin (tests/plugin/testplug.c) built under the name magicmind."""
    from daemon_helpers import DaemonProc, rmtree, short_dir
    state = short_dir("rmm")
    plugins = os.path.join(state, "plugins")
    os.mkdir(plugins)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "needs a C compiler"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-fvisibility=hidden", '-DTESTPLUG_NAME="magicmind"',
                    "-I", str(ROOT / "native" / "src"), "-I", str(ROOT / "native" / "include"),
                    "-o", os.path.join(plugins, "librefit_backend_magicmind.so"),
                    str(ROOT / "native" / "tests" / "plugin" / "testplug.c")], check=True)
    monkeypatch.setenv("REFIT_BACKEND_PATH", plugins)
    d = DaemonProc(_daemon_config(state), os.path.join(state, "c.sock")).start()
    try:
        st = d.status()
        assert st.get("backend", st.get("engine", {}).get("backend", "magicmind")) == "magicmind", st
    finally:
        assert d.stop() == 0
        rmtree(state)


# ---- the edge bundle's install.sh -----------------------------------------------------------------

from test_edge import _build_so, _fake_bundle, _run, cffi_wheels  # noqa: E402,F401 (fixture)


def test_install_sh_opens_the_unit_to_the_mlu_only_with_the_plugin(tmp_path, cffi_wheels):
    base_python = getattr(sys, "_base_executable", sys.executable)
    lib = _build_so(tmp_path, ["cc"])
    box = tmp_path / "box"
    args = ["--no-user", "--python", base_python, "--prefix", box / "opt/refitd", "--confdir", box / "etc/refitd",
            "--statedir", box / "var/lib/refitd", "--unitdir", box / "etc/systemd/system",
            "--neuware-lib", "/usr/local/neuware/lib64"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    unit = box / "etc/systemd/system/refitd.service"

    with_plugin = _fake_bundle(tmp_path, "0.0.1", lib, cffi_wheels)
    (with_plugin / "plugins").mkdir()
    shutil.copy(lib, with_plugin / "plugins" / "librefit_backend_magicmind.so")  # any .so stands in
    with open(with_plugin / "BUNDLE", "a") as f:
        f.write("magicmind_plugin=plugins/librefit_backend_magicmind.so\n")
    proc = _run(["bash", with_plugin / "install.sh", *args], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = unit.read_text()
    assert "\nPrivateDevices=no\nDevicePolicy=closed\nDeviceAllow=/dev/cambricon_ctl rw\n" in text
    assert re.search(r"^DeviceAllow=/dev/cambricon_dev\d+ rw$", text, re.M)
    assert "\nEnvironment=LD_LIBRARY_PATH=/usr/local/neuware/lib64\n" in text
    assert not re.search(r"^PrivateDevices=yes", text, re.M)
    plugins = list((box / "opt/refitd").rglob("librefit_backend_magicmind.so"))
    assert len(plugins) == 1 and plugins[0].parent.name == "refitd"  # next to librefit

    without = _fake_bundle(tmp_path, "0.0.2", lib, cffi_wheels)
    proc = _run(["bash", without / "install.sh", *args], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = unit.read_text()
    assert re.search(r"^PrivateDevices=yes$", text, re.M)
    assert not re.search(r"^(DeviceAllow|DevicePolicy|Environment=LD_LIBRARY_PATH)", text, re.M)
    assert not list((box / "opt/refitd").rglob("librefit_backend_magicmind.so"))


@pytest.mark.parametrize("strategy, shadow_ok", [("ab", True), ("quiesce", False)])
def test_daemon_serves_and_applies_on_the_plugin(plugin_dir, tmp_path, strategy, shadow_ok):
    """The real daemon and CLI on the plugin + fake runtime, with the default shadow health check:
    under ab a package applies and serves (9k); under quiesce the shadow run is refused with one
    line and the daemon keeps serving (why docs/magicmind.md says: ab with health checks)."""
    import onnx
    from daemon_helpers import DaemonProc, DEMO_MODEL, base_config, fingerprint, rmtree, seed_package, short_dir, wait_until, write_config
    sys.path.insert(0, str(ROOT / "native" / "tests" / "fake_neuware"))
    import gen_model
    state = short_dir("rmm")
    try:
        shutil.copy(DEMO_MODEL, os.path.join(state, "model.onnx"))
        gen_model.convert(os.path.join(state, "model.onnx"), os.path.join(state, "model.mm"))
        cfg = base_config(state, model=os.path.join(state, "model.onnx"))
        cfg["model"].update(backend="magicmind", options={"strategy": strategy},
                            backend_options={"model": os.path.join(state, "model.mm")})
        d = DaemonProc(write_config(state, cfg), os.path.join(state, "c.sock")).start()
        try:
            r = d.cli("apply", seed_package(os.path.join(state, "p.safetensors"), 3, 1, fingerprint()))
            st = d.status()
            if shadow_ok:
                assert r.returncode == 0, r.stdout + r.stderr
                assert st["serving"]["version"] == 1 and st["serving"]["backend"] == "magicmind"
                import json

                def results():
                    with open(os.path.join(state, "results.jsonl")) as f:
                        return [json.loads(l) for l in f if l.strip()]
                wait_until(lambda: any(r["version"] == 1 for r in results()), timeout=30, what="a result of version 1")
                ys = {(r["version"], float(np.ravel(r["outputs"]["y"])[0])) for r in results() if "outputs" in r}
                assert ys <= {(0, 0.0), (1, 27.0)}, ys  # the demo model's kernel is 0, the package's 3
            else:
                assert r.returncode != 0
                line = (r.stdout + r.stderr).strip()
                assert "run_staged: strategy quiesce on backend 'magicmind'" in line and "\n" not in line, line
                assert st["serving"]["version"] == 0
        finally:
            assert d.stop() == 0
    finally:
        rmtree(state)
