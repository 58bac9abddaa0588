"""Seed 001 (MagicMind weight_refit, multi-thread), on refitd's engine.

Inference threads run non-stop and print what they see; a refit thread sets the kernel to all-k
as weight version k for k = 0..9, one step per --step seconds. Outputs walk 0, 9, 18, ... 81, and
every output equals 9 x the version it was computed with: no torn mix of two weight versions.
Exits 1 if any result was torn or versions went backwards on a thread.

    python examples/seed_multithread.py [--step 1.0] [--threads 1] [--quiet]
"""
import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

import refitd
from refitd.engine import Engine

DEMO_MODEL = Path(refitd.__file__).parent / "demo" / "seed_conv.onnx"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO_MODEL))
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--step", type=float, default=1.0, help="seconds between refits")
    ap.add_argument("--threads", type=int, default=1, help="inference threads")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args(argv)

    engine = Engine.open(args.model, backend=args.backend)
    x = {"x": np.ones((1, 1, 3, 3), dtype=np.float32)}
    done = threading.Event()
    lock = threading.Lock()
    stats = {"inferences": 0, "torn": 0, "backwards": 0, "seen": set()}

    def infer_loop(tid: int) -> None:
        last_version, last_print, n, torn, backwards = -1, 0.0, 0, 0, 0
        seen = set()
        while not done.is_set():
            outputs, version = engine.infer(x)
            y = float(outputs["y"].ravel()[0])
            n += 1
            torn += y != 9.0 * version
            backwards += version < last_version
            seen.add(y)
            now = time.monotonic()
            if not args.quiet and (version != last_version or now - last_print > 0.25):
                print(f"[infer {tid}] output {y:g}  version {version}", flush=True)
                last_print = now
            last_version = version
        with lock:
            stats["inferences"] += n
            stats["torn"] += torn
            stats["backwards"] += backwards
            stats["seen"] |= seen

    threads = [threading.Thread(target=infer_loop, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for k in range(10):
        engine.refit({"conv.weight": np.full((1, 1, 3, 3), k, dtype=np.float32)}, version=k)
        if not args.quiet:
            print(f"[refit] kernel all {k} -> version {k}", flush=True)
        time.sleep(args.step)
    done.set()
    for t in threads:
        t.join()
    engine.close()
    seen = sorted(stats["seen"])
    print(f"inferences {stats['inferences']}, torn {stats['torn']}, out of order {stats['backwards']}, "
          f"outputs seen {', '.join(f'{v:g}' for v in seen)}")
    ok = stats["torn"] == 0 and stats["backwards"] == 0 and seen == [9.0 * k for k in range(10)]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
