"""The name-map sidecar: source (ONNX / PyTorch) names <-> engine names, with layout transforms.

A compiled engine (MagicMind, or any model whose weights were renamed and relaid when it was
built) calls its weights by names of its own (``main/mm.const/mm.refit_const:0``) and may keep
them in another layout (NHWC conv filters where ONNX has NCHW). Packages speak source names and
source layouts; the sidecar file next to the model, ``<model>.names``, says how the two relate.
Format (docs/magicmind.md), one tab-separated row per tensor, ``#`` lines are comments::

    refitd-names 1
    weight  conv.weight  main/mm.const/mm.refit_const:0  float32  8x3x3x4  NCHW>NHWC
    input   x            x_nhwc                          float32  1x3x3x4  NCHW>NHWC
    output  y            y                               float32  1x8x1x1  -

Columns: kind (weight/input/output), source name, engine name, dtype, the *engine* shape, layout
(``-`` or ``NCHW>NHWC``: source [N, C, H, W] is engine [N, H, W, C]; for a conv filter
[O, I, kh, kw] is [O, kh, kw, I]). The MagicMind plugin reads the weight rows itself (the runtime
does not report weight shapes) and maps weights in C++; ``attach`` below does the same mapping in
Python for an engine whose own model file uses engine names, e.g. on the reference backend.
"""
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .engine import ModelError, ShapeError, UnknownWeightError, WeightSpec, schema_fingerprint

HEADER = "refitd-names 1"
SUFFIX = ".names"
KINDS = ("weight", "input", "output")
# layout -> permutation taking a source-layout array to the engine layout
LAYOUTS: Dict[str, Optional[Tuple[int, ...]]] = {"-": None, "NCHW>NHWC": (0, 2, 3, 1)}


class NameMapError(ModelError):
    """A sidecar that cannot be read or does not fit its engine; the message is one line."""

    def __init__(self, message: str):
        super().__init__(message, "REFIT_ERR_MODEL")


@dataclass(frozen=True)
class Entry:
    kind: str
    source: str
    engine: str
    dtype: str
    shape: Tuple[int, ...]  # engine layout
    layout: str

    @property
    def perm(self) -> Optional[Tuple[int, ...]]:
        return LAYOUTS[self.layout]

    @property
    def source_shape(self) -> Tuple[int, ...]:
        if self.perm is None:
            return self.shape
        inverse = np.argsort(self.perm)
        return tuple(self.shape[i] for i in inverse)

    def to_engine(self, arr: np.ndarray) -> np.ndarray:
        return arr if self.perm is None else np.ascontiguousarray(np.transpose(arr, self.perm))

    def to_source(self, arr: np.ndarray) -> np.ndarray:
        return arr if self.perm is None else np.ascontiguousarray(np.transpose(arr, np.argsort(self.perm)))

    def label(self) -> str:
        """Both names, for listings and errors: ``conv.weight (engine main/...:0, NHWC)``."""
        if self.source == self.engine and self.perm is None:
            return self.source
        layout = "" if self.perm is None else ", " + self.layout.split(">")[1]
        return "%s (engine %s%s)" % (self.source, self.engine, layout)


def _shape(text: str, where: str) -> Tuple[int, ...]:
    if text == "scalar":
        return ()
    try:
        dims = tuple(int(d) for d in text.split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise NameMapError("%s: shape '%s' is not like 1x3x3x1" % (where, text))
    return dims


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


class NameMap:
    """The rows of one sidecar, looked up by source or engine name per kind."""

    def __init__(self, entries: List[Entry], path: str = "<memory>"):
        self.path = path
        self.entries = list(entries)
        self._by_source: Dict[Tuple[str, str], Entry] = {}
        self._by_engine: Dict[Tuple[str, str], Entry] = {}
        for e in self.entries:
            for table, name, side in ((self._by_source, e.source, "source"), (self._by_engine, e.engine, "engine")):
                if (e.kind, name) in table:
                    raise NameMapError("name map %s: %s %s name '%s' appears twice" % (path, e.kind, side, name))
                table[(e.kind, name)] = e

    @staticmethod
    def sidecar(model_path) -> str:
        return str(model_path) + SUFFIX

    @classmethod
    def load(cls, path) -> "NameMap":
        path = str(path)
        try:
            with open(path, "r", encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise NameMapError("name map %s: cannot read it: %s" % (path, getattr(e, "strerror", None) or e)) from None
        entries, header = [], False
        for no, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            where = "name map %s line %d" % (path, no)
            if not header:
                if line.strip() != HEADER:
                    raise NameMapError("%s: first line must be '%s'" % (where, HEADER))
                header = True
                continue
            f = line.split("\t")
            if len(f) != 6:
                raise NameMapError("%s: expected 6 tab-separated fields (kind source engine dtype shape layout), "
                                   "got %d" % (where, len(f)))
            kind, source, engine, dtype, shape, layout = f
            if kind not in KINDS:
                raise NameMapError("%s: kind '%s' (known: %s)" % (where, kind, ", ".join(KINDS)))
            if not source or not engine:
                raise NameMapError("%s: empty name" % where)
            if dtype != "float32":
                raise NameMapError("%s: %s '%s' dtype %s (float32 only)" % (where, kind, source, dtype))
            if layout not in LAYOUTS:
                raise NameMapError("%s: layout '%s' (known: %s)" % (where, layout, ", ".join(LAYOUTS)))
            dims = _shape(shape, where)
            if LAYOUTS[layout] is not None and len(dims) != len(LAYOUTS[layout]):
                raise NameMapError("%s: layout %s needs a %d-D tensor, '%s' is %d-D"
                                   % (where, layout, len(LAYOUTS[layout]), source, len(dims)))
            entries.append(Entry(kind, source, engine, dtype, dims, layout))
        if not header:
            raise NameMapError("name map %s: empty (first line must be '%s')" % (path, HEADER))
        return cls(entries, path)

    def write(self, path) -> None:
        rows = [HEADER] + ["\t".join((e.kind, e.source, e.engine, e.dtype, _shape_text(e.shape), e.layout))
                           for e in self.entries]
        tmp = str(path) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("# refitd name map: kind source engine dtype engine-shape layout (docs/magicmind.md)\n")
            f.write("\n".join(rows) + "\n")
        os.replace(tmp, path)

    def by_source(self, kind: str, name: str) -> Optional[Entry]:
        return self._by_source.get((kind, name))

    def by_engine(self, kind: str, name: str) -> Optional[Entry]:
        return self._by_engine.get((kind, name))

    def check(self, kind: str, specs: List[WeightSpec]) -> None:
        """Every row of `kind` names a tensor of the engine with the row's shape (and only those)."""
        have = {s.name: s for s in specs}
        for e in self.entries:
            if e.kind != kind:
                continue
            spec = have.get(e.engine)
            if spec is None:
                raise NameMapError("name map %s: %s '%s' (source '%s') is not a %s of the engine"
                                   % (self.path, kind, e.engine, e.source, kind))
            if tuple(spec.shape) != e.shape:
                raise NameMapError("name map %s: %s '%s' has shape %s in the map, %s in the engine"
                                   % (self.path, kind, e.engine, _shape_text(e.shape), _shape_text(spec.shape)))

    def source_spec(self, kind: str, spec: WeightSpec) -> WeightSpec:
        e = self.by_engine(kind, spec.name)
        return spec if e is None else WeightSpec(e.source, spec.dtype, e.source_shape, spec.nbytes)

    def to_engine(self, kind: str, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = {}
        for name, arr in tensors.items():
            e = self.by_source(kind, name)
            if e is None and self.by_engine(kind, name) is not None:
                raise UnknownWeightError("%s '%s': that is an engine name; packages use source names (name map %s)"
                                         % (kind, name, self.path), "REFIT_ERR_NOT_FOUND", name)
            if e is None:
                out[name] = arr
                continue
            arr = np.asarray(arr)
            if e.perm is not None and tuple(arr.shape) != e.source_shape:
                raise ShapeError("%s '%s': shape %s, the model's is %s" % (kind, e.label(), _shape_text(arr.shape),
                                                                           _shape_text(e.source_shape)),
                                 "REFIT_ERR_SHAPE", name)
            out[e.engine] = e.to_engine(arr)
        return out

    def to_source(self, kind: str, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = {}
        for name, arr in tensors.items():
            e = self.by_engine(kind, name)
            out[e.source if e else name] = e.to_source(arr) if e else arr
        return out

    def translate(self, message: str) -> str:
        """Rewrites quoted engine names in an engine message as both names."""
        def one(m):
            for kind in KINDS:
                e = self.by_engine(kind, m.group(1))
                if e is not None:
                    return "'%s'" % e.label()
            return m.group(0)
        return re.sub(r"'([^']+)'", one, message)


class MappedEngine:
    """An Engine whose model uses engine names, seen through a name map: every call takes and
    returns source names and source layouts; errors name both. Anything else is the Engine's."""

    def __init__(self, engine, names: NameMap):
        names.check("weight", engine.weights())
        names.check("input", engine.inputs())
        names.check("output", engine.outputs())
        self._engine = engine
        self.names = names

    def __getattr__(self, attr):
        return getattr(self._engine, attr)

    def _call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:
            if e.args and isinstance(e.args[0], str):
                e.args = (self.names.translate(e.args[0]),) + e.args[1:]
            raise

    def weights(self) -> List[WeightSpec]:
        return [self.names.source_spec("weight", s) for s in self._engine.weights()]

    def inputs(self) -> List[WeightSpec]:
        return [self.names.source_spec("input", s) for s in self._engine.inputs()]

    def outputs(self) -> List[WeightSpec]:
        return [self.names.source_spec("output", s) for s in self._engine.outputs()]

    def labels(self) -> Dict[str, str]:
        """Source weight name -> both names, for listings."""
        return {e.source: e.label() for e in self.names.entries if e.kind == "weight"}

    @property
    def fingerprint(self) -> str:
        # the schema packages are made against: source names and source shapes
        return schema_fingerprint(self.weights())

    def infer(self, inputs):
        outputs, version = self._call(self._engine.infer, self.names.to_engine("input", inputs))
        return self.names.to_source("output", outputs), version

    def infer_staged(self, staged, inputs):
        outputs = self._call(self._engine.infer_staged, staged, self.names.to_engine("input", inputs))
        return self.names.to_source("output", outputs)

    def refit(self, tensors, version, allow_nonfinite=None):
        return self._call(self._engine.refit, self.names.to_engine("weight", tensors), version, allow_nonfinite)

    def stage(self, tensors, version, allow_nonfinite=None):
        return self._call(self._engine.stage, self.names.to_engine("weight", tensors), version, allow_nonfinite)

    def publish(self, staged):
        return self._call(self._engine.publish, staged)

    def read_weight(self, name: str) -> np.ndarray:
        e = self.names.by_source("weight", name)
        if e is None:
            raise UnknownWeightError("weight '%s': not a refittable weight of this model (name map %s)"
                                     % (name, self.names.path), "REFIT_ERR_NOT_FOUND", name)
        return e.to_source(self._call(self._engine.read_weight, e.engine))

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> "MappedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach(engine, model_path):
    """The engine as packages see it: wrapped in its model's name map if a sidecar
    (``<model>.names``) sits next to the model file, else unchanged. Backends that map names
    themselves (MagicMind: the sidecar is beside ``backend.model``, not the ONNX) see no change."""
    path = NameMap.sidecar(model_path)
    if not os.path.exists(path):
        return engine
    try:
        return MappedEngine(engine, NameMap.load(path))
    except Exception:
        engine.close()
        raise
