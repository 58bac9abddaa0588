"""`refitd inspect MODEL`: a model's inputs, outputs and refittable weights with dtype, shape
and bytes (what `polygraphy inspect model` shows TensorRT users), opened exactly as the daemon
opens it. The first thing needed before writing a package: the weight names, dtypes and shapes
a package must carry."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence


def _spec(s: Any) -> Dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "bytes": int(s.nbytes)}


def model_report(path: str, backend: str = "reference", **options: Any) -> Dict[str, Any]:
    """Raises what Engine.open raises (EngineError, LibraryError) for a model it refuses."""
    from .engine import Engine
    with Engine.open(path, backend=backend, **options) as eng:
        weights = [_spec(w) for w in eng.weights()]
        return {"model": path, "backend": backend, "fingerprint": eng.fingerprint,
                "version": eng.version, "inputs": [_spec(s) for s in eng.inputs()],
                "outputs": [_spec(s) for s in eng.outputs()], "weights": weights,
                "weight_bytes": sum(w["bytes"] for w in weights)}


def human_bytes(n: int) -> str:
    if n < 10240:
        return "%d B" % n
    if n < 10 << 20:
        return "%.1f KiB" % (n / 1024)
    if n < 10 << 30:
        return "%.1f MiB" % (n / (1 << 20))
    return "%.1f GiB" % (n / (1 << 30))


def _table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    cells = [[r["name"], r["dtype"], "[" + ",".join(map(str, r["shape"])) + "]", human_bytes(r["bytes"])]
             for r in rows]
    if not cells:
        return ["  (none)"]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return ["  " + "  ".join((c[i].rjust(widths[i]) if i == 3 else c[i].ljust(widths[i]))
                             for i in range(4)).rstrip() for c in cells]


def format_report(rep: Dict[str, Any]) -> str:
    def plural(n: int, word: str) -> str:
        return "%d %s%s" % (n, word, "" if n == 1 else "s")

    lines = ["model        %s (%s backend)" % (rep["model"], rep["backend"]),
             "fingerprint  %s" % rep["fingerprint"],
             "inputs: %s" % plural(len(rep["inputs"]), "tensor")] + _table(rep["inputs"])
    lines += ["outputs: %s" % plural(len(rep["outputs"]), "tensor")] + _table(rep["outputs"])
    lines += ["refittable weights: %s, %s (the model file's weights are version %s)" % (
        plural(len(rep["weights"]), "tensor"), human_bytes(rep["weight_bytes"]), rep["version"])]
    lines += _table(rep["weights"])
    lines.append("a package carries some or all of these weights by name: refitd pack --model %s "
                 "--from WEIGHTS.npz --version N -o OUT.safetensors" % rep["model"])
    return "\n".join(lines)


def parse_input_shapes(items: Optional[Sequence[str]]) -> Optional[Dict[str, tuple]]:
    """``["x=1,3,224,224", ...]`` -> ``{"x": (1, 3, 224, 224)}``; ValueError names the bad item."""
    if not items:
        return None
    out: Dict[str, tuple] = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ValueError("--input-shape %s: expected NAME=D1,D2,... (e.g. x=1,3,224,224)" % item) from None
    return out
