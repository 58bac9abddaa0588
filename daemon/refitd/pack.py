"""Writing packages and the ``refitd pack`` authoring tool (the trusted side: run by whoever
builds a package). ``write_package`` refuses what ``package.read_package`` would refuse and writes
through the one atomic writer, so a file-drop watcher never sees half a package. ``pack`` builds
a package from training output (``.safetensors``, ``.npz``, a PyTorch ``state_dict``), maps names,
converts dtypes, checks it against the model and returns it as read back by ``read_package``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from .atomic import write_atomic
from .package import (DEFAULT_MAX_PACKAGE_BYTES, MAX_NOTE_BYTES, MAX_VERSION, Package, PackageError,
                      _FINGERPRINT_RE, _FLOAT_WEIGHT_DTYPES, _NP_TO_ST, _SOURCE_DTYPES, _int,
                      _parse_container, _schema, _shape_str, _show, _unknown_hint, check_against_model,
                      check_finite, check_tensor_name, read_capped, read_package)

__all__ = ["write_package", "pack"]


def write_package(
    path: str,
    tensors: Mapping[str, np.ndarray],
    version: int,
    model: str,
    base: Optional[int] = None,
    note: Optional[str] = None,
    created: Optional[str] = None,
) -> str:
    """Writes a package with the ``safetensors`` library, atomically (``.tmp-<name>...`` in the
    same directory, fsync, rename, fsync of the directory), so a file-drop watcher never sees half of
    it. Refuses what ``read_package`` would refuse (names, dtypes, metadata)."""
    from safetensors.numpy import save

    if not tensors:
        raise PackageError("a package needs at least one tensor")
    if not _int(version) or not 0 <= version <= MAX_VERSION:
        raise PackageError("version must be a non-negative integer, got %r" % (version,))
    if base is not None and (not _int(base) or not 0 <= base < version):
        raise PackageError("base must be an integer older than version %d, got %r" % (version, base))
    if not isinstance(model, str) or not _FINGERPRINT_RE.match(model):
        raise PackageError("model must be a fingerprint (sha256:<64 hex>), got %s" % _show(model))
    if note is not None and len(note.encode("utf-8")) > MAX_NOTE_BYTES:
        raise PackageError("note is longer than %d bytes" % MAX_NOTE_BYTES)
    out: Dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        why = check_tensor_name(name)
        if why is not None:
            raise PackageError(why)
        a = np.asarray(arr)
        if a.dtype.name not in _NP_TO_ST:
            raise PackageError(
                "tensor %s: dtype %s not accepted (float32 or float16 only)"
                % (_show(name), a.dtype.name)
            )
        # np.asarray, not ascontiguousarray: that one turns a 0-d weight (a Clip bound, a
        # scale) into shape [1], which the model then refuses.
        out[name] = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")
    meta = {"refit.version": str(version), "refit.model": model}
    if base is not None:
        meta["refit.base"] = str(base)
    meta["refit.created"] = created or _dt.datetime.now(_dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    if note is not None:
        meta["refit.note"] = note
    path = os.fspath(path)
    # safetensors serialises in memory; the one atomic writer makes it appear whole. Mode 0666
    # minus the umask: a package made by root stays readable by the daemon's own user
    # (safetensors >= 0.8 writing the file itself would leave it 0600).
    write_atomic(path, [save(out, metadata=meta)], mode=0o666)
    return path


# ---- pack: build a package from training output -------------------------------------------


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _load_source(source_path: str, max_bytes: int) -> Dict[str, np.ndarray]:
    src = os.fspath(source_path)
    low = src.lower()
    if low.endswith(".safetensors"):
        data = read_capped(src, max_bytes, what="source")
        # Same defensive parser, wider dtype set; BF16 becomes float32.
        _meta, raw = _parse_container(data, _SOURCE_DTYPES, what="source")
        # BF16 is the only source dtype read as uint16 (see _SOURCE_DTYPES).
        return {n: (_bf16_to_f32(a) if a.dtype == np.uint16 else a) for n, a in raw.items()}
    if low.endswith(".npz"):
        try:
            with np.load(src, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise PackageError("source not found: %s" % src) from None
        except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), ...
            raise PackageError("cannot read source %s: %s" % (src, str(e).splitlines()[0])) from None
    if low.endswith((".pt", ".pth", ".bin")):
        try:
            import torch  # type: ignore
        except ImportError:
            raise PackageError(
                "reading %s needs PyTorch, which is not installed here; "
                "convert the state_dict to .safetensors or .npz" % os.path.basename(src)
            ) from None
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise PackageError("source not found: %s" % src) from None
        except Exception as e:
            raise PackageError("cannot read source %s: %s" % (src, str(e).splitlines()[0])) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise PackageError("source %s is not a state_dict (a %s)" % (src, type(obj).__name__))
        out = {}
        for name, t in obj.items():
            if not hasattr(t, "detach"):
                continue  # non-tensor entries (e.g. _metadata) carry no weights
            t = t.detach().cpu()
            if str(t.dtype) == "torch.bfloat16":
                t = t.float()
            out[str(name)] = t.numpy()
        return out
    raise PackageError(
        "source %s: unknown format (expected .safetensors, .npz or a PyTorch .pt)" % src
    )


def pack(
    model_engine_or_specs: Any,
    source_path: str,
    version: int,
    out: str,
    base: Optional[int] = None,
    note: Optional[str] = None,
    name_map: Optional[Any] = None,
    ignore_unknown: bool = False,
    max_source_bytes: int = 4 << 30,
    warn: Optional[Callable[[str], None]] = None,
) -> Package:
    """Builds a package from training output and checks it against the model.

    ``model_engine_or_specs``: an ``Engine`` (``.weights()``, ``.fingerprint``), a
    ``(fingerprint, [WeightSpec])`` pair, or a path to an ONNX model (opened with the reference
    backend). ``source_path``: ``.safetensors``, ``.npz`` or a PyTorch ``state_dict`` ``.pt``
    (only when torch is importable). ``name_map``: a dict, or a JSON file, mapping source names
    to the model's initializer names (a name mapped to ``null`` is dropped); unmapped names are
    used as they are. PyTorch's exporter keeps state_dict names only when it exports without
    constant folding. Tensors the model does not have are an error (``ignore_unknown=True``
    drops them instead). A source may hold a subset of the weights: that is a partial package.

    float64 and bfloat16 sources are converted to the model weight's dtype; float32/float16 are
    kept (the engine accepts either for a float weight). Each conversion is one line passed to
    ``warn`` (the CLI prints them; precision may be lost). Returns the written ``Package`` as
    read back by ``read_package`` and checked against the model (so apply will not refuse it
    for its names, dtypes or shapes).
    """
    engine_opened = None
    model = model_engine_or_specs
    if isinstance(model, (str, os.PathLike)):
        from .engine import Engine  # imported lazily: packing from specs needs no native library

        engine_opened = model = Engine.open(os.fspath(model), backend="reference")
    try:
        fp, specs = _schema(model)
    finally:
        if engine_opened is not None:
            engine_opened.close()

    if isinstance(name_map, (str, os.PathLike)):
        try:
            with open(name_map, "r", encoding="utf-8") as f:
                name_map = json.load(f)
        except (OSError, ValueError) as e:
            raise PackageError("cannot read name map %s: %s" % (name_map, e)) from None
        if not isinstance(name_map, dict):
            raise PackageError("name map must be a JSON object of source name -> model name")
    name_map = dict(name_map or {})

    raw = _load_source(source_path, max_source_bytes)
    tensors: Dict[str, np.ndarray] = {}
    unknown: List[str] = []
    for src_name, arr in raw.items():
        name = name_map.get(src_name, src_name)
        if name is None:
            continue
        spec = specs.get(name)
        if spec is None:
            unknown.append(src_name)
            continue
        if name in tensors:
            raise PackageError("two source tensors map to model weight %s" % _show(name))
        a = np.asarray(arr)
        if tuple(a.shape) != tuple(spec.shape):
            raise PackageError(
                "source tensor %s: shape %s, model weight %s wants %s"
                % (_show(src_name), _shape_str(a.shape), _show(name), _shape_str(spec.shape))
            )
        if spec.dtype not in _FLOAT_WEIGHT_DTYPES:
            raise PackageError(
                "model weight %s is %s; packages carry float32/float16 only"
                % (_show(name), spec.dtype)
            )
        if a.dtype.kind != "f":
            raise PackageError(
                "source tensor %s is %s, model weight %s is %s"
                % (_show(src_name), a.dtype.name, _show(name), spec.dtype)
            )
        if a.dtype.name not in _FLOAT_WEIGHT_DTYPES:
            if warn is not None:
                warn("source tensor %s: converted %s to %s" % (_show(src_name), a.dtype.name, spec.dtype))
            with np.errstate(over="ignore"):
                a = a.astype(spec.dtype)
        tensors[name] = a
    if unknown and not ignore_unknown:
        first = unknown[0]
        raise PackageError(
            "source tensor %s is not a refittable weight of the model%s; %d unknown in all "
            "(map names with --name-map FILE.json, or drop them with --ignore-unknown)"
            % (_show(first), _unknown_hint(first, specs), len(unknown))
        )
    if not tensors:
        raise PackageError("source %s has no tensor the model refits" % os.fspath(source_path))
    check_finite(tensors)
    write_package(out, tensors, version, fp, base=base, note=note)
    written = read_package(out, max_bytes=max(max_source_bytes, DEFAULT_MAX_PACKAGE_BYTES))
    try:  # what apply checks, on what was written: a pack that "succeeds" must apply
        check_against_model(written, (fp, list(specs.values())))
    except PackageError:
        os.unlink(out)
        raise
    return written
