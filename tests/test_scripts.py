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
    t0, cpu0 = time.monotonic(), _children_cpu()
    r = subprocess.run(["bash", "scripts/demo.sh", "--help"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60)
    took, cpu = time.monotonic() - t0, _children_cpu() - cpu0
    assert r.returncode == 0, r.stderr
    assert "setup: current" in r.stderr and "pip" not in r.stderr, r.stderr
    assert "usage: refitd demo" in r.stdout
    # CPU time, not wall time: on a loaded CI box the wall clock says more about the neighbours
    # (about 1 s of each on an idle 2-core box; the re-setup it replaces took 25-37 s).
    assert cpu < 5.0, "scripts/demo.sh used %.1f s of CPU (%.1f s wall) to start" % (cpu, took)


def _children_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def test_setup_names_the_cli_and_how_to_put_it_on_path():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert "The CLI is $VENV/bin/refitd" in text and 'export PATH=' in text
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/refitd" in readme and "source .venv/bin/activate" in readme


def test_heartbeat_fills_silences_and_keeps_the_exit_status():
    cmd = "echo building; sleep 2.2; echo linked; exit 3"
    r = subprocess.run([sys.executable, "scripts/heartbeat.py", "--every", "0.5", "--label", "hb", "--",
                        "bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    assert lines[0] == "building" and "linked" in lines
    beats = [l for l in lines if l.startswith("hb: ") and "so far, quiet" in l]
    assert len(beats) >= 2 and all(l.endswith("last: building") for l in beats), lines
    assert lines[-1].startswith("hb: done in ") and lines[-1].endswith("exit status 3")


def test_with_progress_names_the_step_and_its_last_log_line(tmp_path):
    script = ('. toolchain/lib.sh; PROGRESS_EVERY=0.5 with_progress "edge-root: second stage" %s '
              'bash -c "echo I: Unpacking libc6...; sleep 1.7; exit 5"' % (tmp_path / "stage.log"))
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 5 and r.stdout == ""
    beats = r.stderr.splitlines()
    assert len(beats) >= 2, r.stderr
    assert all(l.startswith("edge-root: second stage: ") and " s so far" in l for l in beats), beats
    # the first beat may come before a loaded machine has run the command's echo; the last cannot
    assert beats[-1].endswith(" s so far; I: Unpacking libc6..."), beats
    assert (tmp_path / "stage.log").read_text() == "I: Unpacking libc6...\n"
    # PROGRESS_DETAIL: the last line of a finer log (debootstrap's own, inside the root)
    detail = tmp_path / "debootstrap.log"
    detail.write_text("Unpacking python3.9 (3.9.2-1) ...\n")
    r = subprocess.run(["bash", "-c", "export PROGRESS_DETAIL=%s; " % detail + script], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 5 and r.stderr.splitlines()[0].endswith(" s so far; Unpacking python3.9 (3.9.2-1) ..."), r.stderr
    # edge_root.sh runs both debootstrap stages through it
    assert (ROOT / "toolchain" / "edge_root.sh").read_text().count("with_progress ") == 2
