"""Builds the TEST-ONLY plugin backend (native/tests/plugin/testplug.c) for the Python tests.

Compiled with the system C compiler into a scratch directory the tests put on
REFIT_BACKEND_PATH; never installed or bundled. Built twice: "testplug", and "testplug_badapi",
which claims backend API 1 (to check librefit's refusal)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "native" / "tests" / "plugin" / "testplug.c"


def build_test_plugins(out_dir: Path) -> Path:
    """Compiles both test plugins into out_dir; fails loudly if no C compiler is there."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("the plugin tests need a C compiler (cc or gcc) on PATH")
    variants = {"testplug": [], "testplug_badapi": ["-DTESTPLUG_API_VERSION=1"]}
    for name, extra in variants.items():
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-fvisibility=hidden", f'-DTESTPLUG_NAME="{name}"',
                        *extra, "-I", str(ROOT / "native" / "src"), "-I", str(ROOT / "native" / "include"),
                        "-o", str(out_dir / f"librefit_backend_{name}.so"), str(SOURCE)],
                       check=True, capture_output=True, text=True)
    return out_dir
