"""Dedup figure of the versioned store: ten versions that each change 10 % of the weights.

A model of ten equally sized weights (y = x + w0 + ... + w9) goes through the real pipeline:
version 1 is a full package, versions 2..10 are partial packages that each change one weight
(10 % of the bytes). Prints one JSON object: the bytes the store holds next to one full copy and
next to ten full copies.

    python bench/store.py [--mib-per-weight 1] [--keep 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "daemon"))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def du(root: str) -> dict:
    apparent = allocated = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return {"apparent": apparent, "allocated": allocated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib-per-weight", type=float, default=1.0)
    ap.add_argument("--keep", type=int, default=10)
    args = ap.parse_args()

    from conftest import add_chain_model  # the same builder the tests use
    from refitd.engine import Engine
    from refitd.pack import write_package
    from refitd.pipeline import Pipeline
    from refitd.store import Store

    n = int(args.mib_per_weight * (1 << 20)) // 4
    with tempfile.TemporaryDirectory(prefix="refitd-bench-store-") as tmp:
        model = add_chain_model(os.path.join(tmp, "chain.onnx"), n=10, size=n)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        with Engine.open(str(model)) as eng, Store(os.path.join(tmp, "store"), keep=args.keep) as st:
            p = Pipeline(eng, st, None, None)
            p.start()
            full = {"w%d" % i: rng.standard_normal(n).astype(np.float32) for i in range(10)}
            f = write_package(os.path.join(tmp, "v1.safetensors"), full, 1, eng.fingerprint)
            assert p.apply(f).ok
            for v in range(2, 11):
                part = {"w%d" % (v - 1): rng.standard_normal(n).astype(np.float32)}
                f = write_package(os.path.join(tmp, "v%d.safetensors" % v), part, v,
                                  eng.fingerprint, note="changes w%d" % (v - 1))
                out = p.apply(f)
                assert out.ok, out
                os.unlink(f)
            # keep=10: retention has pruned version 0 (the model file's zeros) by now
            versions = st.versions()
            usage = st.disk_usage()
            tree = du(st.path)
        seconds = time.perf_counter() - t0
    full_copy = 10 * n * 4
    print(json.dumps({
        "bench": "store-dedup",
        "versions": len(versions),
        "weights": 10,
        "changed_per_version": "1 of 10 weights (10 %)",
        "full_copy_bytes": full_copy,
        "blob_bytes": usage["blob_bytes"],
        "manifest_bytes": usage["manifest_bytes"],
        "store_bytes_apparent": tree["apparent"],
        "store_bytes_allocated": tree["allocated"],
        "blobs_over_full_copy": round(usage["blob_bytes"] / full_copy, 4),
        "store_over_full_copy": round(tree["apparent"] / full_copy, 4),
        "expected_over_full_copy": 1.9,
        "ten_full_copies_bytes": 10 * full_copy,
        "seconds": round(seconds, 3),
    }))


if __name__ == "__main__":
    main()
