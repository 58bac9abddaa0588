"""Soak: a real daemon under continuous inference while a signed refit arrives every
``--interval`` seconds, alternating the CLI (``refitd apply``, a process each time) and the
file drop. At the end it prints one JSON object: RSS, open-fd and thread slopes (least squares
after a warm-up), store and drop-folder growth, torn results (a result whose output is not
9 x the kernel of the version it reports: must be 0), failed inferences (must be 0), and the
applies by channel.

    python bench/soak.py --minutes 30          # the long run (make soak)
    python bench/soak.py --seconds 20          # the bounded run (tests/test_soak.py)

The seeds' conv model: version v carries the kernel all (v mod 10), so with x = ones every
result must read y = 9 (v mod 10). Signatures are required on the file drop and the CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))

from daemon_helpers import DaemonProc, base_config, env, fingerprint, seed_package, write_config  # noqa: E402


def _proc_sample(pid: int) -> Dict[str, float]:
    out: Dict[str, float] = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024.0
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    return out


def _du(path: str) -> int:
    n = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                n += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return n


def _slope_per_min(t: List[float], y: List[float]) -> float:
    if len(t) < 2:
        return 0.0
    mt, my = sum(t) / len(t), sum(y) / len(y)
    den = sum((a - mt) ** 2 for a in t)
    return 60.0 * sum((a - mt) * (b - my) for a, b in zip(t, y)) / den if den else 0.0


def _torn_and_failed(paths: List[str]) -> Dict[str, int]:
    rows = torn = failed = 0
    for p in paths:
        if not os.path.exists(p):
            continue
        with open(p) as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                rows += 1
                if "error" in r:
                    failed += 1
                    continue
                y = r["outputs"]["y"][0][0][0][0]
                if y != 9.0 * (r["version"] % 10):
                    torn += 1
    return {"results_checked": rows, "torn_results": torn, "failed_in_results": failed}


def _sign(path: str, key: Any, version: int, fp: str) -> None:
    from refitd.signing import dump_envelope, sign_envelope
    from refitd.trust import package_claims
    with open(path, "rb") as f:
        data = f.read()
    with open(path + ".sig", "wb") as f:
        f.write(dump_envelope(sign_envelope(package_claims(data, version, fp, time.time() + 3600), [key])))


def _cpu() -> str:
    from hostinfo import cpu_model  # bench/hostinfo.py: the one /proc/cpuinfo reader of the benches
    return cpu_model() or "unknown"


def soak(seconds: float, interval: float, warmup: float, state: str,
         max_refits: Optional[int] = None) -> Dict[str, Any]:
    from refitd.signing import generate_key, keyid_of, public_key_text, write_key_pair
    key_path = os.path.join(state, "signing.key")
    key = generate_key()
    write_key_pair(key_path, key)
    results = os.path.join(state, "results.jsonl")
    cfg = base_config(state, workers={"threads": 2},
                      source={"type": "synthetic", "fill": "ones", "rate": 400.0},
                      sink={"type": "jsonl", "path": results, "every": 0, "max_bytes": 16 << 20},
                      store={"path": os.path.join(state, "store"), "keep": 5},
                      watch={"path": os.path.join(state, "in"), "keep": 20, "keep_bytes": 1 << 20},
                      security={"require_signature": ["cli", "file"],
                                "trusted_keys": {keyid_of(key.public_key()): public_key_text(key)}})
    d = DaemonProc(write_config(state, cfg), cfg["control"]["socket"]).start()
    fp = fingerprint()
    pkgs = os.path.join(state, "pkgs")
    os.makedirs(pkgs)
    samples: List[Dict[str, float]] = []
    applies = {"cli": [0, 0], "file": [0, 0]}  # [ok, failed]
    failures: List[Dict[str, Any]] = []
    r = None
    t0 = time.monotonic()
    version, next_sample = 0, t0
    try:
        while time.monotonic() - t0 < seconds and (max_refits is None or version < max_refits):
            version += 1
            channel = "cli" if version % 2 else "file"
            p = seed_package(os.path.join(pkgs, "v%d" % version), float(version % 10), version, fp)
            _sign(p, key, version, fp)  # what `refitd sign` writes, without a process per refit
            before = d.status()["last_update"]
            if channel == "cli":
                r = subprocess.run([sys.executable, "-m", "refitd", "apply", p, "--socket", d.socket],
                                   capture_output=True, text=True, env=env())
            else:
                w = cfg["watch"]["path"]
                shutil.move(p + ".sig", os.path.join(w, "v%d.sig" % version))
                shutil.move(p, os.path.join(w, ".v%d" % version))
                os.rename(os.path.join(w, ".v%d" % version), os.path.join(w, "v%d" % version))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                last = d.status()["last_update"]
                if last != before and last and last.get("version") == version:
                    break
                time.sleep(0.01)
            ok = bool(last and last.get("ok") and last.get("version") == version)
            applies[channel][0 if ok else 1] += 1
            if not ok and len(failures) < 10:  # what went wrong, for the report
                failures.append({"version": version, "channel": channel,
                                 "last_update": last if last != before else "no outcome within 30 s",
                                 "cli": None if channel == "file" else (r.returncode, r.stderr.strip()[-300:])})
            for f in os.listdir(pkgs):
                os.unlink(os.path.join(pkgs, f))
            now = time.monotonic()
            if now >= next_sample:
                s = _proc_sample(d.proc.pid)
                s.update(t=now - t0, store=_du(cfg["store"]["path"]), drop=_du(cfg["watch"]["path"]))
                samples.append(s)
                next_sample = now + max(1.0, min(5.0, seconds / 20))
            time.sleep(max(0.0, interval - (time.monotonic() - now)))
        st = d.status()
    finally:
        code = d.stop()
    late = [s for s in samples if s["t"] >= warmup] or samples
    ts = [s["t"] for s in late]
    checked = _torn_and_failed([results + ".1", results])
    inf = st["inference"] or {}
    return {
        "bench": "soak", "seconds": round(time.monotonic() - t0, 1), "interval_s": interval,
        "cpu": _cpu(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(),
        "applies": {k: {"ok": v[0], "failed": v[1]} for k, v in applies.items()}, "failures": failures,
        "inferences": inf.get("inferences_total"), "failed_inferences": inf.get("errors_total"),
        **checked,
        "rss_mb": {"first": round(samples[0]["rss_mb"], 1), "last": round(samples[-1]["rss_mb"], 1),
                   "slope_per_min": round(_slope_per_min(ts, [s["rss_mb"] for s in late]), 3)},
        "fds": {"first": samples[0]["fds"], "last": samples[-1]["fds"], "max": max(s["fds"] for s in samples),
                "slope_per_min": round(_slope_per_min(ts, [s["fds"] for s in late]), 3)},
        "threads": {"first": samples[0]["threads"], "last": samples[-1]["threads"],
                    "slope_per_min": round(_slope_per_min(ts, [s["threads"] for s in late]), 3)},
        "store_bytes": {"first": samples[0]["store"], "last": samples[-1]["store"], "max": max(s["store"] for s in samples)},
        "drop_folder_bytes": {"first": samples[0]["drop"], "last": samples[-1]["drop"], "max": max(s["drop"] for s in samples)},
        "serving_version": st["serving"]["version"], "last_version_sent": version, "exit_code": code,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between refits (default 1)")
    ap.add_argument("--warmup", type=float, help="seconds before slopes are fitted (default: a tenth, at most 60)")
    ap.add_argument("--keep-state", action="store_true")
    a = ap.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else 60.0 * (a.minutes if a.minutes is not None else 30)
    warmup = a.warmup if a.warmup is not None else min(60.0, seconds / 10)
    state = tempfile.mkdtemp(prefix="soak", dir="/tmp")
    try:
        out = soak(seconds, a.interval, warmup, state)
    finally:
        if not a.keep_state:
            shutil.rmtree(state, ignore_errors=True)
    print(json.dumps(out))
    ok = (out["torn_results"] == 0 and not out["failed_inferences"] and out["failed_in_results"] == 0
          and all(v["failed"] == 0 for v in out["applies"].values()) and out["exit_code"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
