"""``refitd demo``: the seeds' multi-thread refit demo, on the real daemon.

What happens, all of it real (nothing simulated):
  1. a fresh state directory; the demo config (bundled seed_conv.onnx on the reference backend,
     2 worker threads inferring a tensor of ones, a stdout sink printing a line every ~0.2 s) is
     written there as YAML, and ``refitd run --config <it>`` starts as a child process;
  2. once its control socket answers, packages with the kernel all k (k = 1..9, version k) are
     written into the file-drop directory one per interval (written to a temp name, renamed
     in); the daemon's own output lines show the serving version and y = 9k climbing 0 .. 81;
     after version 3 is applied, ``refitd pin 3`` keeps it through retention (keep: 5);
  3. ``refitd rollback --to 3`` (the real CLI, through the control socket): y goes back to 27;
  4. ``refitd versions`` and ``refitd status``; then SIGTERM, and the daemon drains and exits.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np

from .. import config as _config
from ..control import DaemonUnreachable, call

_BOLD = "\033[1m" if sys.stdout.isatty() else ""
_RESET = "\033[0m" if sys.stdout.isatty() else ""


def _say(msg: str) -> None:
    sys.stdout.write("%sdemo: %s%s\n" % (_BOLD, msg, _RESET))
    sys.stdout.flush()


def _env() -> dict:
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NOTIFY_SOCKET", None)
    return env


def _die_with_parent() -> None:
    """In the daemon child: SIGTERM it if the demo process dies (Linux prctl), so an
    interrupted demo never leaves a daemon behind."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _cli(args: List[str], sock: str) -> int:
    """Runs the real ``refitd`` command as a child process, showing the command line."""
    shown = "refitd " + " ".join(args)
    sys.stdout.write("%s$ %s%s\n" % (_BOLD, shown, _RESET))
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "refitd"] + args + ["--socket", sock], env=_env())


def _wait_for(sock: str, proc: subprocess.Popen, pred, timeout: float) -> Optional[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            st = call(sock, {"cmd": "status"}, timeout=5)
            if st.get("ok") and pred(st):
                return st
        except DaemonUnreachable:
            pass
        time.sleep(0.05)
    return None


def run_demo(args) -> int:
    from ..pack import write_package

    own_state = args.state_dir is None
    state = os.path.abspath(args.state_dir) if args.state_dir else tempfile.mkdtemp(prefix="refitd-demo-", dir="/tmp")
    os.makedirs(state, exist_ok=True)
    cfg = _config.demo_config(state, rate=200.0, threads=args.threads, every=0.2)
    cfg_path = os.path.join(state, "refitd.yaml")
    import yaml
    with open(cfg_path, "w") as f:
        f.write("# written by `refitd demo`\n")
        yaml.safe_dump(_config.config_to_dict(cfg), f, sort_keys=False)
    sock = cfg.control.socket
    drop = cfg.watch.path

    _say("the seeds' refit demo on a real refitd daemon")
    _say("model %s: y = conv3x3(x = ones, kernel = all k) = 9k; "
         "%d worker threads infer continuously" % (os.path.basename(cfg.model.path), args.threads))
    _say("state in %s; starting: refitd run --config %s" % (state, cfg_path))
    proc = subprocess.Popen([sys.executable, "-m", "refitd", "run", "--config", cfg_path], env=_env(),
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    code = 1
    try:
        st = _wait_for(sock, proc, lambda s: True, 30.0)
        if st is None:
            _say("the daemon did not come up (exit code %s)" % proc.poll())
            return 1
        fingerprint = st["serving"]["fingerprint"]
        start_version = int(st["serving"]["version"])
        time.sleep(1.0)
        pinned = False
        for k in range(1, 10):
            version = start_version + k
            name = "weights-v%d.safetensors" % version
            # write_package writes ".tmp-<name>..." in the drop dir and renames it in: the
            # watcher takes the file only once it is complete.
            write_package(os.path.join(drop, name), {"conv.weight": np.full((1, 1, 3, 3), float(k), np.float32)},
                          version=version, model=fingerprint, note="kernel all %d" % k)
            _say("dropped %s into %s (kernel all %d: expect y = %d)" % (name, drop, k, 9 * k))
            if k == 3:
                _wait_for(sock, proc, lambda s, v=version: s["serving"]["version"] >= v, 10.0)
                pinned = _cli(["pin", str(version)], sock) == 0
            time.sleep(args.interval)
        last = start_version + 9
        if _wait_for(sock, proc, lambda s: s["serving"]["version"] >= last, 15.0) is None:
            _say("version %d was not applied in time; see the daemon's log above" % last)
            return 1
        time.sleep(0.5)
        target = start_version + 3
        _say("rolling back to version %d%s" % (target, " (pinned, so retention kept it)" if pinned else ""))
        rc = _cli(["rollback", "--to", str(target)], sock)
        time.sleep(1.5)
        _cli(["versions"], sock)
        _cli(["status"], sock)
        applied = sorted(os.listdir(os.path.join(drop, "applied")))
        _say("file drop: %d files in applied/, %d in rejected/" % (
            len([a for a in applied if not a.endswith(".reason")]),
            len([r for r in os.listdir(os.path.join(drop, "rejected")) if not r.endswith(".reason")])))
        code = 0 if rc == 0 else 1
    finally:
        if proc.poll() is None:
            _say("stopping the daemon (SIGTERM: it drains the workers and exits)")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _say("daemon exited with status %s" % proc.returncode)
        if proc.returncode != 0:
            code = 1
        if own_state and not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)
        elif own_state:
            _say("state kept in %s" % state)
    return code
