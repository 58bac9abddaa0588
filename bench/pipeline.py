"""File drop -> serving latency for 1, 16 and 64 MiB packages, next to the time of sha256 +
memcpy of the same bytes (the floor any verified copy pays), with the pipeline's own per-step
timings beside each figure.

Two measurements per size: ``drop_to_serving_ms`` renames a finished package into the watched
drop directory of a running DropWatcher (the real channel: inotify, the watcher thread, the
pipeline) and stops the clock when the engine reports the new version; ``apply_ms`` is the
pipeline alone, from ``Pipeline.apply(path)`` until the new weights serve.

Model: y = x + w with one float32 weight w of the package's size. Each sample writes a full
package for the next version (not timed), then measures ``Pipeline.apply(path)`` from the call
until the new weights serve (``Outcome.seconds``; ``apply_call_ms`` adds the retention that runs
after the swap, still inside the call): read under the size cap, sha256 (the package identity),
parse and check, engine stage (the copy, finite values checked in it), a shadow check (finite)
-- while the store write (blob sha256 | blob write + fsync, then renames, manifest, directory
fsyncs) runs beside them -- then commit and publish. The page cache holds the package (as it
does right after a file drop).

The floor (sha256 + memcpy into a preallocated buffer) is measured right before every timed
sample, so both see the same machine; ``*_over_sha256_memcpy`` divides the median latency by the
median floor. ``apply_steps_ms`` / ``drop_steps_ms``: the median of each ``Pipeline.timings``
step; ``store.*`` steps run in the background thread (their time overlaps stage and shadow
check; "wait for the store write" is what the main thread waited for them after the shadow
check); ``channel``: drop latency minus the pipeline's own. Prints one JSON object with the
CPU, kernel and 1-minute load average.

    python bench/pipeline.py [--sizes 1,16,64] [--repeat 5]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "daemon"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostinfo import cpu_model, kernel  # noqa: E402


class Floor:
    """sha256 of a package's bytes and a memcpy of them into a preallocated buffer, measured
    right before each timed sample (side by side: a load that comes and goes on the shared
    machine weighs on both), plus, for context and not part of the floor, a write + fsync of
    the same bytes in the store's file system."""

    def __init__(self, directory: str):
        self.directory = directory
        self.sha: list = []
        self.cp: list = []
        self.wr: list = []
        self._dst = None

    def sample(self, path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        src = np.frombuffer(data, dtype=np.uint8)
        if self._dst is None or self._dst.size != src.size:
            self._dst = np.empty_like(src)
            np.copyto(self._dst, src)  # faulted in once, as any preallocated buffer
        t = time.perf_counter()
        hashlib.sha256(data).digest()
        self.sha.append(time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(self._dst, src)
        self.cp.append(time.perf_counter() - t)

    def write_fsync(self, path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        probe = os.path.join(self.directory, "fsync-probe")
        t = time.perf_counter()
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        self.wr.append(time.perf_counter() - t)
        os.unlink(probe)

    def ms(self) -> dict:
        sha, cp = 1e3 * statistics.median(self.sha), 1e3 * statistics.median(self.cp)
        return {"sha256_ms": sha, "memcpy_ms": cp, "floor_ms": sha + cp,
                "write_fsync_ms": 1e3 * statistics.median(self.wr)}


def drop_to_serving(pipeline, eng, tmp: str, n: int, repeat: int, rng, floor: Floor) -> tuple:
    """Renames packages into a watched drop directory; (seconds until each version serves,
    the pipeline's step timings of each of those deliveries)."""
    import io

    from refitd.log import Events
    from refitd.pack import write_package
    from refitd.channels.watch import DropWatcher

    drop = os.path.join(tmp, "drop-%d" % n)
    watcher = DropWatcher(drop, pipeline, Events(fmt="json", stream=io.StringIO()))
    watcher.start()
    out, steps = [], []
    try:
        for _ in range(repeat):
            v = eng.version + 1
            w = rng.standard_normal(n).astype(np.float32)
            path = write_package(os.path.join(tmp, "d.safetensors"), {"w0": w}, v, eng.fingerprint)
            floor.sample(path)
            t = time.perf_counter()
            os.rename(path, os.path.join(drop, "v%d.safetensors" % v))
            deadline = t + 30
            while eng.version != v:
                if time.perf_counter() > deadline:
                    raise SystemExit("drop of version %d did not serve within 30 s" % v)
                time.sleep(0.0002)
            out.append(time.perf_counter() - t)
            while pipeline.last is None or pipeline.last.version != v:  # the delivery's end
                time.sleep(0.0002)
            steps.append(dict(pipeline.timings, channel=out[-1] - pipeline.last.seconds))
    finally:
        watcher.stop()
    return out, steps


def breakdown(steps: list) -> dict:
    """Median milliseconds of each pipeline step over the samples (``Pipeline.timings``; the
    ``store.*`` steps run in the background, beside stage and shadow check)."""
    names = [k for k in steps[0] if all(k in s for s in steps)]
    return {k: round(1e3 * statistics.median(s[k] for s in steps), 2) for k in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,16,64", help="package sizes in MiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--store-dir", default=None, help="where the store lives (default: a temp dir)")
    args = ap.parse_args()

    from conftest import add_chain_model
    from refitd.engine import Engine
    from refitd.pack import write_package
    from refitd.pipeline import Pipeline
    from refitd.store import Store

    results = []
    with tempfile.TemporaryDirectory(prefix="refitd-bench-pipe-", dir=args.store_dir) as tmp:
        for mib in (float(s) for s in args.sizes.split(",")):
            n = int(mib * (1 << 20)) // 4
            model = add_chain_model(os.path.join(tmp, "m%g.onnx" % mib), n=1, size=n)
            rng = np.random.default_rng(1)
            with Engine.open(str(model)) as eng, \
                    Store(os.path.join(tmp, "store%g" % mib), keep=2) as st:
                p = Pipeline(eng, st, None, None, checks=[{"type": "finite"}],
                             max_package_bytes=int(mib * (1 << 20)) + (1 << 20))
                p.start()
                times, total, steps, pkg_bytes = [], [], [], 0
                floor = Floor(tmp)
                for v in range(1, args.repeat + 1):
                    w = rng.standard_normal(n).astype(np.float32)
                    path = write_package(os.path.join(tmp, "p.safetensors"), {"w0": w}, v,
                                         eng.fingerprint)
                    pkg_bytes = os.path.getsize(path)
                    floor.sample(path)
                    t = time.perf_counter()
                    out = p.apply(path)
                    total.append(time.perf_counter() - t)
                    assert out.ok, out
                    steps.append(dict(p.timings))
                    dt = out.seconds  # file -> serving (publish returned)
                    got, version = eng.infer({"x": np.zeros(n, np.float32)})
                    assert version == v and np.array_equal(got["y"], w)
                    times.append(dt)
                drops, drop_steps = drop_to_serving(p, eng, tmp, n, args.repeat, rng, floor)
                for _ in range(args.repeat):  # after the samples: its dirty pages must not meet them
                    floor.write_fsync(path)
                base = floor.ms()
            results.append({
                "package_mib": mib,
                "package_bytes": pkg_bytes,
                "drop_to_serving_ms_median": round(1e3 * statistics.median(drops), 2),
                "drop_to_serving_ms_max": round(1e3 * max(drops), 2),
                "drop_over_sha256_memcpy": round(statistics.median(drops) * 1e3 / base["floor_ms"], 2),
                "apply_ms_median": round(1e3 * statistics.median(times), 2),
                "apply_ms_min": round(1e3 * min(times), 2),
                "apply_ms_max": round(1e3 * max(times), 2),
                "apply_call_ms_median": round(1e3 * statistics.median(total), 2),
                "sha256_ms": round(base["sha256_ms"], 2),
                "memcpy_ms": round(base["memcpy_ms"], 2),
                "sha256_plus_memcpy_ms": round(base["floor_ms"], 2),
                "floor_samples": len(floor.sha),
                "write_fsync_same_bytes_ms": round(base["write_fsync_ms"], 2),
                "apply_over_sha256_memcpy": round(statistics.median(times) * 1e3 / base["floor_ms"], 2),
                "apply_steps_ms": breakdown(steps),
                "drop_steps_ms": breakdown(drop_steps),
            })
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"bench": "pipeline-drop-to-serving", "repeat": args.repeat, "loadavg_1min": load,
                      "cpus": os.cpu_count(), "cpu": cpu_model(), "kernel": kernel(),
                      "durable_store": True, "shadow_check": "finite",
                      "sizes": results}))


if __name__ == "__main__":
    main()
