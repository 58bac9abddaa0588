"""Seed 000 (MagicMind weight_refit, single thread), on refitd's engine.

Input all ones (1x1x3x3), a 3x3 conv kernel of all 0 gives 0; refit the kernel to all 1 and the
same input gives 9 — without reloading the model.

    python examples/seed_single.py [--model PATH] [--backend reference]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import refitd
from refitd.engine import Engine

DEMO_MODEL = Path(refitd.__file__).parent / "demo" / "seed_conv.onnx"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO_MODEL))
    ap.add_argument("--backend", default="reference")
    args = ap.parse_args(argv)
    x = np.ones((1, 1, 3, 3), dtype=np.float32)
    with Engine.open(args.model, backend=args.backend) as engine:
        outputs, version = engine.infer({"x": x})
        before = float(outputs["y"].ravel()[0])
        print(f"kernel all 0: output {before:g} (weight version {version})")
        engine.refit({"conv.weight": np.ones((1, 1, 3, 3), dtype=np.float32)}, version=1)
        outputs, version = engine.infer({"x": x})
        after = float(outputs["y"].ravel()[0])
        print(f"kernel all 1: output {after:g} (weight version {version})")
    return 0 if (before, after) == (0.0, 9.0) else 1


if __name__ == "__main__":
    sys.exit(main())
