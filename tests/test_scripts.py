"""The README's entry points as a user runs them: scripts/setup.sh returns at once on a set-up
checkout (so scripts/demo.sh starts in well under 5 s), and says where the CLI is."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env():
    e = dict(os.environ)
    e["VENV"] = sys.prefix  # the venv running these tests (.venv after scripts/setup.sh)
    e.pop("SETUP_FORCE", None)
    return e


def test_demo_starts_in_under_5_s_when_set_up():
    # The first call brings the venv up to date if it is not (the test suite normally runs
    # right after scripts/setup.sh); the second is the one a user sees.
    first = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    t0 = time.monotonic()
    r = subprocess.run(["bash", "scripts/demo.sh", "--help"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "setup: current" in r.stderr and "pip" not in r.stderr, r.stderr
    assert "usage: refitd demo" in r.stdout
    assert took < 5.0, "scripts/demo.sh took %.1f s to start" % took


def test_setup_names_the_cli_and_how_to_put_it_on_path():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert "The CLI is $VENV/bin/refitd" in text and 'export PATH=' in text
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/refitd" in readme and "source .venv/bin/activate" in readme
