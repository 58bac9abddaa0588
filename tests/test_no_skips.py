"""The suite's own gate (conftest.py): a skipped test fails the run, a slow test is deselected
(not skipped) unless REFITD_LONG=1, REFITD_ALLOW_SKIPS=1 lets a run by hand through."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _pytest(tmp_path, body: str, **env):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text("import pytest\n" + body)
    e = {k: v for k, v in os.environ.items() if k not in ("REFITD_LONG", "REFITD_ALLOW_SKIPS")}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env=e, timeout=120)


def test_a_skip_fails_the_run_and_is_named(tmp_path):
    r = _pytest(tmp_path, "def test_ok(): pass\ndef test_needs_tool(): pytest.skip('no frobnicator')\n")
    assert r.returncode == 1, r.stdout
    assert "1 test skipped, and a skip is not a pass" in r.stdout
    assert "test_probe.py::test_needs_tool: Skipped: no frobnicator" in r.stdout
    assert _pytest(tmp_path, "def test_x(): pytest.skip('no')\n", REFITD_ALLOW_SKIPS="1").returncode == 0


def test_slow_is_deselected_not_skipped(tmp_path):
    body = "@pytest.mark.slow\ndef test_long(): pass\ndef test_ok(): pass\n"
    r = _pytest(tmp_path, body)
    assert r.returncode == 0 and "1 passed, 1 deselected" in r.stdout, r.stdout
    r = _pytest(tmp_path, body, REFITD_LONG="1")
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout
