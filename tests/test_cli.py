"""The real ``refitd`` command against a real daemon process: output, exit codes, one-line
errors."""
from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest

from daemon_helpers import (DEMO_MODEL, DaemonProc, base_config, fingerprint, rmtree, run_cli,
                            seed_package, short_dir, write_config)


@pytest.fixture(scope="module")
def daemon():
    d = short_dir()
    import socket
    with socket.socket() as s:  # a free loopback port for the metrics endpoint
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = base_config(d, metrics={"listen": "127.0.0.1:%d" % port})
    path = write_config(d, cfg)
    proc = DaemonProc(path, cfg["control"]["socket"]).start()
    proc.state = d
    proc.port = port
    proc.fp = proc.status()["serving"]["fingerprint"]
    yield proc
    proc.stop()
    rmtree(d)


def _pkg(daemon, name, k, version, **kw):
    p = os.path.join(daemon.state, name)
    seed_package(p, k, version, daemon.fp, **kw)
    return p


def _one_line_error(r):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refitd: "), r.stderr
    return lines[0]


def test_status_text_and_json(daemon):
    r = daemon.cli("status")
    assert r.returncode == 0, r.stderr
    for word in ("serving", "fingerprint  sha256:", "uptime", "inference", "p50", "p99", "last update", "store"):
        assert word in r.stdout, (word, r.stdout)
    r = daemon.cli("status", "--json")
    st = json.loads(r.stdout)
    assert st["serving"]["backend"] == "reference"
    assert st["serving"]["fingerprint"] == fingerprint()
    assert st["inference"]["threads"] == 2 and st["inference"]["inferences_total"] > 0
    assert st["uptime"] > 0 and st["pid"] == daemon.proc.pid


def test_apply_rollback_pin_versions(daemon):
    base = daemon.status()["serving"]["version"]
    v1, v2 = base + 1, base + 2
    r = daemon.cli("apply", _pkg(daemon, "a.safetensors", 1, v1))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("applied version %d in " % v1)
    r = daemon.cli("apply", "--json", _pkg(daemon, "b.safetensors", 2, v2))
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == v2
    assert daemon.status()["serving"]["version"] == v2

    r = daemon.cli("versions")
    assert r.returncode == 0
    row = [line for line in r.stdout.splitlines() if line.startswith(str(v2) + " ")][0]
    assert "current" in row and "kernel all 2" in row
    vs = json.loads(daemon.cli("versions", "--json").stdout)
    assert [x["version"] for x in vs["versions"]][-2:] == [v1, v2]

    r = daemon.cli("pin", str(v1))
    assert r.returncode == 0 and "pinned version %d" % v1 in r.stdout
    assert json.loads(daemon.cli("versions", "--json").stdout)["versions"][-2]["pinned"] is True

    r = daemon.cli("rollback")
    assert r.returncode == 0, r.stderr
    assert "rolled back to version %d" % v1 in r.stdout
    out = daemon.cli("infer", _npy(daemon))
    assert out.returncode == 0 and "y 1x1x1x1 = 9" in out.stdout and "(version %d" % v1 in out.stdout

    r = daemon.cli("rollback", "--to", str(v2))
    assert r.returncode == 0
    r = daemon.cli("unpin", str(v1))
    assert r.returncode == 0 and "unpinned version %d" % v1 in r.stdout
    # both equally idempotent: a second pin or unpin succeeds and says it changed nothing
    r = daemon.cli("unpin", str(v1))
    assert r.returncode == 0 and r.stdout.startswith("version %d was not pinned; nothing changed" % v1), r.stderr
    assert daemon.cli("pin", str(v1)).returncode == 0
    r = daemon.cli("pin", str(v1))
    assert r.returncode == 0 and r.stdout.startswith("version %d was already pinned; nothing changed" % v1)
    assert daemon.cli("unpin", str(v1)).returncode == 0

    st = json.loads(daemon.cli("status", "--json").stdout)
    assert st["last_update"]["action"] == "rollback" and st["last_update"]["ok"] is True
    assert st["updates"]["applied"] >= 2 and st["updates"]["rolled_back"] >= 2


def _npy(daemon):
    p = os.path.join(daemon.state, "x.npy")
    np.save(p, np.ones((1, 1, 3, 3), np.float32))
    return p


def test_failures_are_one_line_and_exit_1(daemon):
    cur = daemon.status()["serving"]["version"]
    line = _one_line_error(daemon.cli("apply", _pkg(daemon, "old.safetensors", 5, cur)))
    assert "apply failed at" in line and "version" in line
    garbage = os.path.join(daemon.state, "garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(b"\x00" * 100)
    assert "apply failed at" in _one_line_error(daemon.cli("apply", garbage))
    assert _one_line_error(daemon.cli("apply", "/nonexistent/p.safetensors")) == \
        "refitd: no such file: /nonexistent/p.safetensors"
    line = _one_line_error(daemon.cli("rollback", "--to", "999"))
    assert "999 is not in the store" in line
    assert "999 is not in the store" in _one_line_error(daemon.cli("unpin", "999"))
    assert "not in the store" in _one_line_error(daemon.cli("pin", "999"))
    bad = os.path.join(daemon.state, "bad.npy")
    np.save(bad, np.ones((2, 2), np.float32))
    assert "shape" in _one_line_error(daemon.cli("infer", bad))
    assert daemon.status()["serving"]["version"] == cur  # nothing changed


def test_apply_reads_the_file_the_cli_opened_not_the_path(daemon):
    """Under systemd the daemon's view has no ~/ (ProtectHome=) and its own /tmp (PrivateTmp=):
    the CLI opens the package as the caller and passes the descriptor. Here the path is gone
    (unlinked after opening), so only the descriptor can deliver the package."""
    from refitd.control import call
    v = daemon.status()["serving"]["version"] + 1
    p = _pkg(daemon, "gone.safetensors", 3, v)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        r = call(daemon.socket, {"cmd": "apply", "path": p}, fds=(fd,))
    finally:
        os.close(fd)
    assert r["ok"] and r["version"] == v, r
    assert daemon.status()["serving"]["version"] == v
    # a descriptor that is not a regular file is refused in one line, nothing changes
    rd, wr = os.pipe()
    try:
        r = call(daemon.socket, {"cmd": "apply", "path": "/x/pipe.safetensors"}, fds=(rd,))
    finally:
        os.close(rd)
        os.close(wr)
    assert not r["ok"] and r["error"] == "package is not a regular file: /x/pipe.safetensors", r
    assert daemon.status()["serving"]["version"] == v


def test_cli_apply_sends_the_file_it_opened(daemon):
    """The real CLI, given /dev/fd/N (a file only the CLI's process has open): the same name in
    the daemon's process is one of the daemon's own descriptors, so this applies only if the
    CLI passed the file it opened rather than the path."""
    import subprocess
    import sys
    from daemon_helpers import env
    v = daemon.status()["serving"]["version"] + 1
    p = _pkg(daemon, "mine.safetensors", 4, v)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        r = subprocess.run([sys.executable, "-m", "refitd", "apply", "--socket", daemon.socket,
                            "/dev/fd/%d" % fd], capture_output=True, text=True, env=env(),
                           timeout=120, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("applied version %d in " % v)
    assert daemon.status()["serving"]["version"] == v


def test_infer_json_and_output_file(daemon):
    outp = os.path.join(daemon.state, "y.npy")
    r = daemon.cli("infer", _npy(daemon), "--json", "-o", outp)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    v = daemon.status()["serving"]["version"]
    assert res["version"] == v
    y = np.load(outp)
    assert y.shape == (1, 1, 1, 1) and res["outputs"]["y"]["values"] == y.tolist()


def test_unreachable_daemon(tmp_path):
    d = short_dir()
    try:
        sock = os.path.join(d, "control.sock")
        r = run_cli("status", "--socket", sock)
        assert r.returncode == 1
        assert r.stderr == "refitd: cannot reach the daemon at %s: no such socket (is refitd running?)\n" % sock
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(sock)
        s.close()
        r = run_cli("versions", "--socket", sock)
        assert r.stderr == "refitd: cannot reach the daemon at %s: connection refused (is refitd running?)\n" % sock
        # --config finds the socket in the config
        cfg = base_config(d)
        cfg["control"]["socket"] = sock
        path = write_config(d, cfg)
        r = run_cli("status", "--config", path)
        assert "cannot reach the daemon at %s: connection refused" % sock in r.stderr
        # and so does $REFITD_SOCKET
        import subprocess, sys
        from daemon_helpers import env
        e = env()
        e["REFITD_SOCKET"] = sock
        r = subprocess.run([sys.executable, "-m", "refitd", "status"], capture_output=True, text=True, env=e)
        assert "cannot reach the daemon at %s: connection refused" % sock in r.stderr
    finally:
        rmtree(d)


def test_usage_errors_exit_2():
    r = run_cli()
    assert r.returncode == 2
    r = run_cli("rollback", "--to", "three")
    assert r.returncode == 2 and r.stderr == ("refitd rollback: error: argument --to: invalid int "
                                              "value: 'three' (see refitd rollback --help)\n")
    r = run_cli("frobnicate")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "invalid choice" in r.stderr
    r = run_cli("apply")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "refitd apply: error: the following arguments are required: package (see refitd apply --help)"]


def test_pack_then_apply(daemon, tmp_path):
    src = str(tmp_path / "trained.npz")
    np.savez(src, **{"conv.weight": np.full((1, 1, 3, 3), 4.0, np.float32)})
    v = daemon.status()["serving"]["version"] + 10
    out = str(tmp_path / "p.safetensors")
    r = run_cli("pack", "--model", DEMO_MODEL, "--from", src, "--version", str(v), "-o", out, "--note", "from npz")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote %s: version %d, 1 tensor" % (out, v))
    r = daemon.cli("apply", out)
    assert r.returncode == 0, r.stderr
    outs = daemon.cli("infer", _npy(daemon))
    assert "y 1x1x1x1 = 36" in outs.stdout
    # a tensor the model does not have
    np.savez(src, **{"conv.weihgt": np.zeros((1, 1, 3, 3), np.float32)})
    r = run_cli("pack", "--model", DEMO_MODEL, "--from", src, "--version", str(v + 1), "-o", out)
    assert r.returncode == 1 and r.stderr.startswith("refitd: ") and "conv.weihgt" in r.stderr


def test_metrics_endpoint(daemon):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % daemon.port, timeout=10).read().decode()
    assert "refitd_up 1" in body
    v = daemon.status()["serving"]["version"]
    assert "refitd_serving_version %d" % v in body
    assert 'refitd_inference_latency_seconds_bucket{le="+Inf"}' in body
    assert 'refitd_updates_total{outcome="applied"}' in body
    total = [line for line in body.splitlines() if line.startswith("refitd_inferences_total ")][0]
    assert int(total.split()[1]) > 0


def test_status_after_a_package_that_failed_to_parse(daemon):
    bad = os.path.join(daemon.state, "garbage.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    r = daemon.cli("apply", bad)
    assert r.returncode == 1 and "apply failed at parse" in r.stderr
    line = [l for l in daemon.cli("status").stdout.splitlines() if l.startswith("last update")][0]
    assert "None" not in line, line
    assert line.startswith("last update  apply of garbage.safetensors via cli at ") and ": FAILED at parse: " in line, line
