"""Helpers for the daemon-side tests (test_config, test_runner, test_watch, test_control,
test_cli, test_e2e): real daemon processes, the real CLI, real files. No mocks."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "daemon") not in sys.path:
    sys.path.insert(0, str(ROOT / "daemon"))

import refitd  # noqa: E402

PKG_PARENT = str(Path(refitd.__file__).resolve().parents[1])
DEMO_MODEL = str(Path(refitd.__file__).resolve().parent / "demo" / "seed_conv.onnx")
ONES = {"x": np.ones((1, 1, 3, 3), dtype=np.float32)}


def short_dir(prefix: str = "rfd") -> str:
    """A short directory under /tmp: Unix socket paths must stay under 107 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def env() -> Dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = PKG_PARENT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("NOTIFY_SOCKET", None)
    e.pop("REFITD_SOCKET", None)
    return e


def base_config(state: str, model: str = DEMO_MODEL, **sections: Any) -> Dict[str, Any]:
    """A valid config mapping with state under ``state``; ``sections`` replace whole sections
    (None removes one)."""
    cfg: Dict[str, Any] = {
        "model": {"path": model, "backend": "reference"},
        "workers": {"threads": 2},
        "source": {"type": "synthetic", "fill": "ones", "rate": 100.0},
        "sink": {"type": "jsonl", "path": os.path.join(state, "results.jsonl"), "every": 0.05},
        "store": {"path": os.path.join(state, "store"), "keep": 3},
        "watch": {"path": os.path.join(state, "in")},
        "health": {"checks": [{"type": "finite"}]},
        "control": {"socket": os.path.join(state, "c.sock")},
        "log": {"format": "json", "level": "info"},
        "metrics": {"listen": None},
    }
    for k, v in sections.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def write_config(state: str, cfg: Dict[str, Any], name: str = "refitd.yaml") -> str:
    path = os.path.join(state, name)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def fingerprint(model: str = DEMO_MODEL) -> str:
    from refitd.engine import Engine
    with Engine.open(model, backend="reference") as e:
        return e.fingerprint


def seed_package(path: str, k: float, version: int, fp: str, base: Optional[int] = None) -> str:
    from refitd.pack import write_package
    return write_package(path, {"conv.weight": np.full((1, 1, 3, 3), float(k), np.float32)},
                         version=version, model=fp, base=base, note="kernel all %g" % k)


def chain_model(path: str, n: int = 4, size: int = 1 << 18) -> str:
    """conftest's chain model with MiB-sized weights by default, so an apply takes long enough
    for a SIGKILL to land inside it."""
    from conftest import add_chain_model
    return str(add_chain_model(path, n, size))


def chain_package(path: str, version: int, fp: str, n: int = 4, size: int = 1 << 18) -> str:
    """Every weight filled with ``version``: with x = ones, y = 1 + n * version everywhere (a
    torn mix of two versions would show)."""
    from refitd.pack import write_package
    return write_package(path, {"w%d" % i: np.full((size,), float(version), np.float32) for i in range(n)},
                         version=version, model=fp)


def verify_store_on_disk(store_dir: str) -> int:
    """Independent, read-only check of a store's commit point: reads ``current``, its manifest,
    and re-hashes every blob the manifest names. Returns the committed version."""
    with open(os.path.join(store_dir, "current")) as f:
        cur = json.load(f)
    v = cur["version"]
    with open(os.path.join(store_dir, "versions", "%d.json" % v)) as f:
        man = json.load(f)
    assert man["version"] == v
    for name, t in man["tensors"].items():
        p = os.path.join(store_dir, "blobs", t["sha256"][:2], t["sha256"])
        with open(p, "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == t["sha256"], "blob of %s corrupt" % name
        assert len(data) == t["nbytes"]
    return v


def tree_hash(path: str, skip=("lock",)) -> str:
    """sha256 over every file name and content under ``path`` (to prove it unchanged), but for
    the files and directories named in ``skip``."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in skip)  # a skipped name may be a directory
        for name in sorted(files):
            if name in skip:
                continue
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, path).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class DaemonProc:
    """A real ``refitd run --config`` process."""

    def __init__(self, config_path: str, socket_path: str, log_path: Optional[str] = None):
        self.config_path = config_path
        self.socket = socket_path
        self.log_path = log_path or config_path + ".log"
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    def start(self, wait: bool = True, timeout: float = 60.0) -> "DaemonProc":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "refitd", "run", "--config", self.config_path],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env())
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> Dict[str, Any]:
        from refitd.control import DaemonUnreachable, call
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited with %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                st = call(self.socket, {"cmd": "status"}, timeout=5)
                if st.get("ok"):
                    return st
            except DaemonUnreachable:
                pass
            time.sleep(0.05)
        raise AssertionError("daemon not ready after %.0f s:\n%s" % (timeout, self.log()))

    def request(self, req: Dict[str, Any], timeout: float = 60.0) -> Dict[str, Any]:
        from refitd.control import call
        return call(self.socket, req, timeout=timeout)

    def status(self) -> Dict[str, Any]:
        st = self.request({"cmd": "status"})
        assert st["ok"], st
        return st

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return run_cli(*args, "--socket", self.socket, timeout=timeout)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-6000:]
        except OSError:
            return ""

    def events(self) -> List[Dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None


def run_cli(*args: str, timeout: float = 120.0, input: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refitd"] + list(args), capture_output=True, text=True,
                          env=env(), timeout=timeout, input=input)


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))


def rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
