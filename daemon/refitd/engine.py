"""The Python face of librefit (native/include/refit.h), through cffi in ABI mode.

One loader (`_load`), one error helper (`_check`), handles owned by `ffi.gc` so the library outlives
every handle. Arrays are checked (dtype, shape, C-contiguity) before their address goes to C, and
passed zero-copy with `ffi.from_buffer`. cffi releases the GIL for the duration of every C call, so
`Engine.infer` runs in parallel from many threads; each thread gets its own native context.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import weakref
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from cffi import FFI

from ._cdef import CDEF

ABI_VERSION = 3
LIBRARY_NAME = "librefit.so"

ffi = FFI()
ffi.cdef(CDEF)

# refit_dtype codes (ONNX TensorProto.DataType) <-> numpy dtype names.
_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
_DTYPE_CODES = {v: k for k, v in _DTYPE_NAMES.items()}
_KIND_INPUT, _KIND_OUTPUT, _KIND_WEIGHT = 0, 1, 2
_ALLOW_NONFINITE = 1


_MISSING = object()  # an input name not in the feed dict


class EngineError(Exception):
    """A librefit call failed. `status` is the C status name, `tensor` the tensor it names."""

    def __init__(self, message: str, status: str = "", tensor: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.tensor = tensor


class LibraryError(EngineError):
    """librefit could not be loaded."""


class ModelError(EngineError):
    pass


class UnsupportedError(EngineError):
    pass


class BackendError(EngineError):
    pass


class RefitError(EngineError):
    """A refit was refused; the engine keeps serving the previous weights."""


class UnknownWeightError(RefitError):
    pass


class DtypeError(RefitError):
    pass


class ShapeError(RefitError):
    pass


class SizeError(RefitError):
    pass


class DuplicateWeightError(RefitError):
    pass


class EmptyRefitError(RefitError):
    pass


class NonFiniteError(RefitError):
    pass


class ConflictError(RefitError):
    pass


_STATUS_CLASSES = {
    "REFIT_ERR_INVALID_ARG": EngineError,
    "REFIT_ERR_NOT_FOUND": UnknownWeightError,
    "REFIT_ERR_DTYPE": DtypeError,
    "REFIT_ERR_SHAPE": ShapeError,
    "REFIT_ERR_SIZE": SizeError,
    "REFIT_ERR_DUPLICATE": DuplicateWeightError,
    "REFIT_ERR_EMPTY": EmptyRefitError,
    "REFIT_ERR_NONFINITE": NonFiniteError,
    "REFIT_ERR_UNSUPPORTED": UnsupportedError,
    "REFIT_ERR_MODEL": ModelError,
    "REFIT_ERR_IO": ModelError,
    "REFIT_ERR_NOMEM": EngineError,
    "REFIT_ERR_CONFLICT": ConflictError,
    "REFIT_ERR_BACKEND": BackendError,
}
_TENSOR_IN_MESSAGE = re.compile(r"(?:weight|input|output) '([^']*)'")


class WeightSpec(NamedTuple):
    name: str
    dtype: str
    shape: Tuple[int, ...]
    nbytes: int


# ---- loading ------------------------------------------------------------------------------

_lib = None
_lib_lock = threading.Lock()


def _candidates() -> List[Path]:
    env = os.environ.get("REFITD_NATIVE_LIB")
    if env:
        return [Path(env)]
    # Next to the package: every directory of refitd's __path__ (an editable install adds the
    # build's install directory there too).
    from . import __path__ as package_dirs

    return [Path(d) / LIBRARY_NAME for d in package_dirs]


def _load():
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        reasons = []
        for path in _candidates():
            if not path.exists():
                reasons.append(f"{path}: not found")
                continue
            try:
                lib = ffi.dlopen(str(path))
            except OSError as exc:
                reasons.append(f"{path}: {exc}")
                continue
            got = lib.refit_abi_version()
            if got != ABI_VERSION:
                reasons.append(f"{path}: ABI version {got}, refitd needs {ABI_VERSION}")
                continue
            _lib = lib
            return lib
        raise LibraryError("cannot load librefit (set REFITD_NATIVE_LIB or reinstall refitd): "
                           + "; ".join(reasons), "REFIT_ERR_IO")


def library_version() -> str:
    return ffi.string(_load().refit_version_string()).decode()


class BackendInfo(NamedTuple):
    """One available backend: built in, or a plugin file found on the search path."""
    name: str
    location: str   # "built-in" or the plugin's path
    error: str      # "" if it loads; else the one-line reason (e.g. wrong api_version)


def backend_infos() -> List[BackendInfo]:
    """Every backend librefit can see (plugins are loaded to check them)."""
    lib = _load()
    infos = []
    for i in range(lib.refit_backend_count()):
        name = ffi.string(lib.refit_backend_name(i)).decode()
        location = ffi.string(lib.refit_backend_location(i)).decode()
        ok = lib.refit_backend_probe(name.encode()) == 0
        infos.append(BackendInfo(name, location, "" if ok else ffi.string(lib.refit_last_error()).decode()))
    return infos


def backends() -> List[str]:
    """Names of the backends that load here."""
    return [b.name for b in backend_infos() if not b.error]


def _check(status: int) -> None:
    """Turns a refit_status into the matching exception, with the thread's message."""
    if status == 0:
        return
    lib = _load()
    name = ffi.string(lib.refit_status_string(status)).decode()
    message = ffi.string(lib.refit_last_error()).decode() or name
    match = _TENSOR_IN_MESSAGE.search(message)
    raise _STATUS_CLASSES.get(name, EngineError)(message, name, match.group(1) if match else None)


def _keepref(lib, destroy, *owners):
    """A destructor that keeps `lib` (and `owners`, e.g. the engine a context belongs to) alive
    until the handle is destroyed (cairocffi's idiom). The C side does not depend on it: contexts
    and staged sets hold a reference on their engine in librefit, so any destroy order is safe,
    the garbage collector's at interpreter exit included."""
    def release(pointer, _keepalive=(lib, owners)):
        destroy(pointer)

    return release


# ---- helpers ------------------------------------------------------------------------------


def _option_string(key: str, value) -> str:
    if key == "refittable" and not isinstance(value, str):
        return ",".join(value)
    if key == "input_shape" and isinstance(value, dict):
        return ";".join(f"{n}:{'x'.join(str(int(d)) for d in dims)}" for n, dims in value.items())
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _version(version) -> int:
    """A weight version is an integer in [0, 2**64): anything else is refused, not truncated."""
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 0 <= version < 2**64:
        raise EngineError(f"version must be an integer from 0 to 2**64-1, got {version!r}",
                          "REFIT_ERR_INVALID_ARG")
    return int(version)


def _tensor_array(tensors: Dict[str, np.ndarray], keep: list):
    """Builds a refit_tensor[] for `tensors`; `keep` holds what C points into."""
    if not isinstance(tensors, dict):
        raise EngineError(f"refit tensors must be a dict of name -> array, got {type(tensors).__name__}",
                          "REFIT_ERR_INVALID_ARG")
    arr = ffi.new("refit_tensor[]", max(len(tensors), 1))
    keep.append(arr)
    for i, (name, value) in enumerate(tensors.items()):
        a = np.asarray(value)
        if not a.flags.c_contiguous:  # (ascontiguousarray would also turn a 0-d array into 1-d)
            a = np.ascontiguousarray(a)
        code = _DTYPE_CODES.get(a.dtype.name)
        if code is None:
            raise DtypeError(f"weight '{name}': dtype {a.dtype.name} not accepted (float32 or float16 "
                             "accepted)", "REFIT_ERR_DTYPE", name)
        cname = ffi.new("char[]", name.encode())
        shape = ffi.new("int64_t[]", list(a.shape) or [0])
        keep.extend((a, cname, shape))
        t = arr[i]
        t.name, t.dtype, t.ndim, t.shape = cname, code, a.ndim, shape
        t.data = ffi.from_buffer(a) if a.nbytes else ffi.NULL
        t.nbytes = a.nbytes
    return arr


# ---- engine -------------------------------------------------------------------------------


class Staged:
    """A validated, copied weight set that is not serving yet (for a shadow check)."""

    def __init__(self, engine: "Engine", handle, version: int):
        self._engine = engine
        self._handle = handle
        self.version = version

    def close(self) -> None:
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Context:
    """One native execution context; used by one thread at a time.

    It keeps what it needs of its engine but not the Engine object: the engine holds its
    contexts (per thread), and a reference back would make a cycle, which the garbage collector
    may tear down in any order — destroying the engine before its contexts."""

    def __init__(self, engine: "Engine"):
        lib = self._lib = engine._lib
        out = ffi.new("refit_context **")
        _check(lib.refit_context_create(engine._handle, out))
        # The destructor holds the engine's handle, so the engine outlives every context.
        self._handle = ffi.gc(out[0], _keepref(lib, lib.refit_context_destroy, engine._handle))
        self._inputs, self._outputs, self._input_index = engine._inputs, engine._outputs, engine._input_index
        n_in, n_out = len(engine._inputs), len(engine._outputs)
        self._in_ptrs = ffi.new("void *[]", max(n_in, 1))
        self._out_ptrs = ffi.new("void *[]", max(n_out, 1))
        self._in_sizes = ffi.new("size_t[]", [s.nbytes for s in engine._inputs] or [0])
        self._out_sizes = ffi.new("size_t[]", [s.nbytes for s in engine._outputs] or [0])
        self._version = ffi.new("uint64_t *")

    def close(self) -> None:
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

    def _check_names(self, inputs: Dict[str, np.ndarray]) -> None:
        unknown = set(inputs) - set(self._input_index)
        if unknown:
            raise EngineError(f"input '{sorted(unknown)[0]}': not an input of this model (inputs: "
                              f"{', '.join(self._input_index)})", "REFIT_ERR_NOT_FOUND", sorted(unknown)[0])

    def _bind(self, inputs: Dict[str, np.ndarray], out: Optional[Dict[str, np.ndarray]] = None):
        if self._handle is None:
            raise EngineError("inference on a closed engine", "REFIT_ERR_INVALID_ARG")
        if not isinstance(inputs, dict):
            raise EngineError("inputs must be a dict of name -> array", "REFIT_ERR_INVALID_ARG")
        if len(inputs) != len(self._inputs):  # (the sets only then: this runs every inference)
            self._check_names(inputs)
        keep = []
        for i, spec in enumerate(self._inputs):
            x = inputs.get(spec.name, _MISSING)
            if x is _MISSING:
                self._check_names(inputs)
                raise EngineError(f"input '{spec.name}': missing", "REFIT_ERR_INVALID_ARG", spec.name)
            a = np.asarray(x, dtype=np.float32, order="C")  # 0-d stays 0-d
            if a.shape != spec.shape:
                raise ShapeError(f"input '{spec.name}': shape {list(a.shape)} does not match the "
                                 f"model's {list(spec.shape)}", "REFIT_ERR_SHAPE", spec.name)
            keep.append(a)
            self._in_ptrs[i] = ffi.from_buffer(a)
        outputs = {}
        for j, spec in enumerate(self._outputs):
            o = out.get(spec.name) if out else None
            if o is None or o.shape != spec.shape or o.dtype != np.float32 or not o.flags.c_contiguous:
                o = np.empty(spec.shape, dtype=np.float32)
            outputs[spec.name] = o
            self._out_ptrs[j] = ffi.from_buffer(o, require_writable=True)
        return keep, outputs

    def infer(self, inputs: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
        keep, outputs = self._bind(inputs)
        lib = self._lib
        _check(lib.refit_context_run(self._handle, self._in_ptrs, self._in_sizes, len(self._inputs),
                                     self._out_ptrs, self._out_sizes, len(outputs), self._version))
        del keep
        return outputs, int(self._version[0])

    def infer_staged(self, staged: Staged, inputs: Dict[str, np.ndarray],
                     out: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        if staged._handle is None:
            raise EngineError("the staged weight set is closed or published", "REFIT_ERR_INVALID_ARG")
        keep, outputs = self._bind(inputs, out)
        lib = self._lib
        _check(lib.refit_context_run_staged(self._handle, staged._handle, self._in_ptrs, self._in_sizes,
                                            len(self._inputs), self._out_ptrs, self._out_sizes,
                                            len(outputs)))
        del keep
        return outputs


class Engine:
    """A model on a backend, serving one weight version at a time and refittable while it runs."""

    def __init__(self, handle, lib, model_path: str):
        self._lib = lib
        self._handle = handle
        self.model_path = model_path
        self._inputs = self._infos(_KIND_INPUT)
        self._outputs = self._infos(_KIND_OUTPUT)
        self._weights = self._infos(_KIND_WEIGHT)
        self._input_index = {s.name: i for i, s in enumerate(self._inputs)}
        self._weight_index = {s.name: s for s in self._weights}
        self._local = threading.local()
        self._contexts: "weakref.WeakSet[Context]" = weakref.WeakSet()
        self._contexts_lock = threading.Lock()
        self.allow_nonfinite = False

    @classmethod
    def open(cls, model_path, backend: str = "reference", backend_options: Optional[dict] = None,
             **options) -> "Engine":
        """Opens `model_path` on `backend`. Options (docs/engine.md): refittable, input_shape,
        allow_nonfinite, initial_version, spare_weights, strategy ("swap", "quiesce", "ab"),
        device, threads; `backend_options` go to the backend as backend.<key>."""
        lib = _load()
        for key, value in (backend_options or {}).items():
            options[f"backend.{key}"] = value
        keep = [ffi.new("char[]", k.encode()) for k in options] + [
            ffi.new("char[]", _option_string(k, v).encode()) for k, v in options.items()]
        keys = ffi.new("char *[]", keep[:len(options)] or [ffi.NULL])
        values = ffi.new("char *[]", keep[len(options):] or [ffi.NULL])
        out = ffi.new("refit_engine **")
        _check(lib.refit_engine_open(str(model_path).encode(), backend.encode(), keys, values,
                                     len(options), out))
        engine = cls(ffi.gc(out[0], _keepref(lib, lib.refit_engine_destroy)), lib, str(model_path))
        engine.allow_nonfinite = bool(options.get("allow_nonfinite", False))
        from . import namemap  # a <model>.names sidecar maps source names to the model's (namemap.py)
        return namemap.attach(engine, model_path)

    def _infos(self, kind: int) -> List[WeightSpec]:
        info = ffi.new("refit_tensor_info *")
        specs = []
        for i in range(self._lib.refit_engine_count(self._handle, kind)):
            _check(self._lib.refit_engine_info(self._handle, kind, i, info))
            specs.append(WeightSpec(ffi.string(info.name).decode(), _DTYPE_NAMES.get(info.dtype, str(info.dtype)),
                                    tuple(int(info.shape[d]) for d in range(info.ndim)), int(info.nbytes)))
        return specs

    # -- description
    def inputs(self) -> List[WeightSpec]:
        return list(self._inputs)

    def outputs(self) -> List[WeightSpec]:
        return list(self._outputs)

    def weights(self) -> List[WeightSpec]:
        return list(self._weights)

    @property
    def fingerprint(self) -> str:
        return schema_fingerprint(self._weights)

    @property
    def backend(self) -> str:
        return ffi.string(self._lib.refit_engine_backend(self._live())).decode()

    @property
    def version(self) -> int:
        return int(self._lib.refit_engine_version(self._live()))

    @property
    def strategy(self) -> str:
        return self.stats()["strategy"]

    def stats(self) -> Dict[str, object]:
        """What the refit strategy has done: refits, failed_refits, and the last prepare /
        publish / pause times and the longest quiesce pause, in nanoseconds; the last quiesce
        pause broken down into drain, in-place refit (or commit) and verification."""
        out = ffi.new("refit_engine_stats *")
        _check(self._lib.refit_engine_get_stats(self._live(), out))
        fields = ("refits", "failed_refits", "last_prepare_ns", "last_publish_ns", "last_pause_ns",
                  "max_pause_ns", "last_drain_ns", "last_inplace_ns", "last_verify_ns")
        stats: Dict[str, object] = {f: int(getattr(out, f)) for f in fields}
        stats["strategy"] = ffi.string(out.strategy).decode()
        return stats

    def _live(self):
        if self._handle is None:
            raise EngineError("the engine is closed", "REFIT_ERR_INVALID_ARG")
        return self._handle

    # -- inference
    def context(self) -> Context:
        """The calling thread's context (created on first use)."""
        ctx = getattr(self._local, "context", None)
        if ctx is None or ctx._handle is None:
            self._live()
            ctx = Context(self)
            with self._contexts_lock:
                self._contexts.add(ctx)
            self._local.context = ctx
        return ctx

    def infer(self, inputs: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
        """Runs one inference; returns the outputs and the weight version they were computed with."""
        return self.context().infer(inputs)

    def infer_staged(self, staged: Staged, inputs: Dict[str, np.ndarray],
                     out: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """One inference on a staged (unpublished) set. ``out``: output arrays to write into
        (float32, C order, the model's shapes; others are ignored and allocated), so a caller
        that runs often (the shadow check) does not page-fault fresh outputs every time."""
        return self.context().infer_staged(staged, inputs, out)

    # -- refit
    def _flags(self, allow_nonfinite: Optional[bool]) -> int:
        allow = self.allow_nonfinite if allow_nonfinite is None else allow_nonfinite
        return _ALLOW_NONFINITE if allow else 0

    def refit(self, tensors: Dict[str, np.ndarray], version: int, allow_nonfinite: Optional[bool] = None) -> None:
        """Applies `tensors` as weight `version`, all or nothing; raises a RefitError naming the tensor."""
        version = _version(version)
        keep: list = []
        arr = _tensor_array(tensors, keep)
        _check(self._lib.refit_engine_refit(self._live(), arr, len(tensors), version,
                                            self._flags(allow_nonfinite)))

    def stage(self, tensors: Dict[str, np.ndarray], version: int, allow_nonfinite: Optional[bool] = None) -> Staged:
        version = _version(version)
        keep: list = []
        arr = _tensor_array(tensors, keep)
        out = ffi.new("refit_staged **")
        _check(self._lib.refit_engine_stage(self._live(), arr, len(tensors), version,
                                            self._flags(allow_nonfinite), out))
        return Staged(self, ffi.gc(out[0], _keepref(self._lib, self._lib.refit_staged_destroy)), version)

    def publish(self, staged: Staged) -> None:
        if staged._handle is None:
            raise EngineError("the staged weight set is closed or already published", "REFIT_ERR_INVALID_ARG")
        _check(self._lib.refit_engine_publish(self._live(), staged._handle))
        staged.close()

    def read_weight(self, name: str) -> np.ndarray:
        spec = self._weight_index.get(name)
        if spec is None:
            raise UnknownWeightError(f"weight '{name}': not a refittable weight of this model",
                                     "REFIT_ERR_NOT_FOUND", name)
        out = np.empty(spec.shape, dtype=spec.dtype)
        _check(self._lib.refit_engine_read_weight(self._live(), name.encode(),
                                                  ffi.from_buffer(out, require_writable=True), out.nbytes, ffi.NULL))
        return out

    # -- lifetime
    def close(self) -> None:
        """Releases every context and the engine. Idempotent. No inference may be running."""
        if self._handle is None:
            return
        with self._contexts_lock:
            for ctx in list(self._contexts):
                ctx.close()
            self._contexts.clear()
        ffi.release(self._handle)
        self._handle = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def schema_fingerprint(specs) -> str:
    """sha256 of the refittable schema (names, dtypes, shapes), independent of weight order."""
    doc = sorted([s.name, s.dtype, list(s.shape)] for s in specs)
    return "sha256:" + hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
