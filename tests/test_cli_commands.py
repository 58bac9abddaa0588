"""The CLI's own surface, no daemon needed: --version, inspect, pack's --json and warnings,
help text on every subcommand and option, the status line's plurals."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

from conftest import clip_scalar_model
from daemon_helpers import DEMO_MODEL, env, fingerprint, run_cli

from refitd import cli


def _walk(parser, path=("refitd",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield from _walk(sp, path + (name,))


def test_every_subcommand_has_a_description_and_every_option_help():
    missing = []
    for path, parser in _walk(cli.build_parser()):
        if len(path) > 1 and not parser.description:
            missing.append("%s: no description" % " ".join(path))
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append("%s %s: no help" % (" ".join(path), "/".join(action.option_strings) or action.dest))
    assert missing == []
    assert len(list(_walk(cli.build_parser()))) >= 13  # refitd + every command (inspect included)


def test_every_printing_command_has_json():
    # the daemon, the demo and the weight server stream events, they print no result;
    # a command group (fleet) is judged by its subcommands
    no_json = {"run", "demo", "serve"}
    for path, parser in _walk(cli.build_parser()):
        groups = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if len(path) >= 2 and path[1] not in no_json and not groups:
            opts = {o for a in parser._actions for o in a.option_strings}
            assert "--json" in opts, path


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    from refitd import engine
    # The backend list comes from a fresh process: this one may have loaded test plugins.
    fresh = subprocess.run(
        [sys.executable, "-c", "from refitd import engine; print(', '.join(engine.backends()))"],
        capture_output=True, text=True, env=env(), check=True).stdout.strip()
    assert r.stdout == "refitd %s (librefit %s, ABI %d; backends: %s)\n" % (
        __import__("importlib.metadata").metadata.version("refitd"), engine.library_version(),
        engine.ABI_VERSION, fresh)
    info = json.loads(run_cli("--version", "--json").stdout)
    assert info["abi"] == engine.ABI_VERSION and "reference" in info["backends"]


def test_inspect_lists_inputs_outputs_weights(tmp_path):
    r = run_cli("inspect", DEMO_MODEL)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == "fingerprint  %s" % fingerprint()
    assert "inputs: 1 tensor" in lines and "  x  float32  [1,1,3,3]  36 B" in lines
    assert "  y  float32  [1,1,1,1]  4 B" in lines
    assert "refittable weights: 1 tensor, 36 B (the model file's weights are version 0)" in lines
    assert "  conv.weight  float32  [1,1,3,3]  36 B" in lines
    model = str(clip_scalar_model(tmp_path / "clip.onnx"))
    rep = json.loads(run_cli("inspect", "--json", model).stdout)
    assert {w["name"]: (w["shape"], w["bytes"]) for w in rep["weights"]} == {
        "w": ([4], 16), "lo": ([], 4), "hi": ([], 4)}
    assert rep["inputs"] == [{"name": "x", "dtype": "float32", "shape": [4], "bytes": 16}]
    assert rep["weight_bytes"] == 24
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = run_cli("inspect", str(bad))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("refitd: cannot open %s: " % bad)
    r = run_cli("inspect", str(tmp_path / "none.onnx"))
    assert r.returncode == 1 and r.stderr == "refitd: no such file: %s\n" % (tmp_path / "none.onnx")


def test_pack_json_and_dtype_warning(tmp_path):
    src = str(tmp_path / "w.npz")
    np.savez(src, **{"conv.weight": np.full((1, 1, 3, 3), 0.1, np.float64)})
    out = str(tmp_path / "p.safetensors")
    r = run_cli("pack", "--model", DEMO_MODEL, "--from", src, "--version", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == 'refitd: warning: source tensor "conv.weight": converted float64 to float32\n'
    r = run_cli("pack", "--model", DEMO_MODEL, "--from", src, "--version", "3", "-o", out, "--json")
    assert r.returncode == 0 and r.stderr == ""
    rep = json.loads(r.stdout)
    assert rep["version"] == 3 and rep["model"] == fingerprint() and rep["bytes"] == 36
    assert rep["tensors"] == {"conv.weight": {"dtype": "float32", "shape": [1, 1, 3, 3], "bytes": 36}}
    assert rep["warnings"] == ['source tensor "conv.weight": converted float64 to float32']
    np.savez(src, **{"conv.weight": np.zeros((1, 1, 3, 3), np.float32)})
    assert run_cli("pack", "--model", DEMO_MODEL, "--from", src, "--version", "3", "-o", out).stderr == ""


def test_pack_unknown_name_hint_names_the_options(tmp_path):
    src = str(tmp_path / "w.npz")
    np.savez(src, **{"features.0.weight": np.zeros((1, 1, 3, 3), np.float32)})
    r = run_cli("pack", "--model", DEMO_MODEL, "--from", src, "--version", "3", "-o", str(tmp_path / "p.safetensors"))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "--name-map" in r.stderr and "--ignore-unknown" in r.stderr


def test_status_says_1_version_not_1_versions():
    st = {"serving": {"version": 0, "backend": "reference", "fingerprint": "sha256:x", "model": "m"},
          "uptime": 1, "pid": 1, "inference": {}, "store": {"path": "/s", "versions": [0], "current": 0,
                                                          "pinned": [], "keep": 5}}
    assert "/s: 1 version (0), current 0" in cli.format_status(st)
    st["store"]["versions"] = [0, 1]
    assert "/s: 2 versions (0, 1)" in cli.format_status(st)
