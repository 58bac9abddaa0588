"""Weight packages: a ``.safetensors`` file whose ``__metadata__`` carries refit metadata.

A package is untrusted input (it may arrive over a file drop or MQTT from anywhere), so
``read_package`` parses the safetensors container itself and checks every field before a single
byte is interpreted as a tensor:

* the file size against a cap, *before* reading (``fstat`` on the open descriptor);
* the 8-byte little-endian header length against a header cap and against the file size;
* the header: UTF-8, valid JSON (no NaN/Infinity constants, no duplicate keys at any level), an
  object whose ``__metadata__`` maps strings to strings;
* each tensor entry: exactly ``dtype``, ``shape``, ``data_offsets``; dtype ``F32`` or ``F16``
  (other safetensors dtypes are rejected by name); a shape of at most 8 non-negative integers;
  offsets in range, starting at 0, contiguous, non-overlapping and covering the data section
  exactly; ``prod(shape) * itemsize == end - begin``;
* tensor names: non-empty, at most 256 bytes of UTF-8, no control/format characters, not
  path-like (leading ``/`` or ``\\``, any ``\\``, ``..`` segments).

Only then are numpy arrays built, zero-copy, over the bytes that were read (the file is read once
into memory, so what was checked is exactly what is used even if the file changes afterwards; the
size cap bounds that memory). Every failure raises ``PackageError`` with one precise line.

Metadata (all values are strings, as safetensors requires):

=================  ===========================================================================
``refit.version``  decimal integer, strictly increasing per model (required)
``refit.model``    the engine's schema fingerprint, ``sha256:<64 hex>`` (required)
``refit.base``     decimal integer: the version the partial package was computed against
``refit.created``  free text, ISO 8601 UTC by convention (written by ``write_package``)
``refit.note``     free text, at most 4096 bytes
=================  ===========================================================================

Detached signature: ``<package>.sig`` beside the package. This module only locates it
(``Package.signature_path``); verification arrives with the security issue, through the
pipeline's ``verifier`` hook. Nothing here pretends to check it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import queue
import re
import stat
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "PackageError",
    "Package",
    "read_package",
    "read_capped",
    "ReadBuffer",
    "parse_package_bytes",
    "check_against_model",
    "check_finite",
    "check_tensor_name",
    "signature_path",
    "DEFAULT_MAX_PACKAGE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_NAME_BYTES",
    "SIGNATURE_SUFFIX",
]

DEFAULT_MAX_PACKAGE_BYTES = 1 << 30  # 1 GiB; the config's store.max_package_bytes overrides it
MAX_HEADER_BYTES = 16 << 20  # safetensors' own reader caps the header at 100 MB; we are stricter
MAX_NAME_BYTES = 256
MAX_NDIM = 8
MAX_NOTE_BYTES = 4096
MAX_META_VALUE_BYTES = 16384
MAX_VERSION = (1 << 63) - 1
SIGNATURE_SUFFIX = ".sig"

# safetensors dtype names -> numpy dtype for the ones a package may carry.
_PACKAGE_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
# Every dtype name the safetensors format defines, so an unaccepted one is rejected *by name*.
_KNOWN_DTYPES = {
    "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "I64", "U64", "F64", "C64",
}
# Source files for ``pack`` may hold more dtypes; they are converted to the model's dtype.
_SOURCE_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # converted to float32 by bit shifting
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "BOOL": np.dtype("?"),
}
_NP_TO_ST = {"float32": "F32", "float16": "F16"}
_FLOAT_WEIGHT_DTYPES = ("float32", "float16")
_FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_INT_RE = re.compile(r"^[0-9]{1,19}$")


class PackageError(ValueError):
    """A package (or a pack source) was refused. ``str(e)`` is one line naming the cause.

    ``stage`` says which check refused it: ``size``, ``parse``, ``model`` or ``finite``.
    """

    def __init__(self, reason: str, stage: str = "parse"):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


@dataclass
class Package:
    """A parsed, checked package. ``tensors`` are read-only arrays over the package bytes."""

    version: int
    model: str
    tensors: Dict[str, np.ndarray]
    sha256: str  # of the whole file, hex
    size: int  # bytes of the whole file
    base: Optional[int] = None
    created: Optional[str] = None
    note: Optional[str] = None
    metadata: Dict[str, str] = field(default_factory=dict)
    path: Optional[str] = None
    #: False when the bytes came from a descriptor a client passed: ``path`` is then the
    #: client's name for the file, and a ``.sig`` beside it in the daemon's view is not its
    #: signature (the security issue passes the signature as a second descriptor)
    beside_path: bool = True

    @property
    def names(self) -> List[str]:
        return list(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())

    @property
    def signature_path(self) -> Optional[str]:
        """``<package>.sig`` if it exists beside the package (not verified here)."""
        if self.path is None or not self.beside_path:
            return None
        sig = signature_path(self.path)
        return sig if os.path.exists(sig) else None


def signature_path(package_path: str) -> str:
    """Where the detached signature of ``package_path`` lives."""
    return os.fspath(package_path) + SIGNATURE_SUFFIX


# ---- small helpers -------------------------------------------------------------------------


def _show(name: Any, limit: int = 48) -> str:
    """A name quoted for a one-line message: JSON escapes, truncated."""
    s = name if isinstance(name, str) else repr(name)
    if len(s) > limit:
        s = s[:limit] + "..."
    return json.dumps(s, ensure_ascii=True)


def _short_fp(fp: str) -> str:
    return fp[: len("sha256:") + 16] + "..." if len(fp) > 23 else fp


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _is_bad_char(ch: str) -> bool:
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F:
        return True  # C0/C1 controls, DEL
    # line/paragraph separators, bidi overrides and isolates (log spoofing), BOM
    return o in (0x2028, 0x2029, 0xFEFF) or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069


def check_tensor_name(name: Any) -> Optional[str]:
    """Returns why ``name`` is not an acceptable tensor name, or None if it is."""
    if not isinstance(name, str):
        return "tensor name %s is not a string" % _show(name)
    if name == "":
        return "tensor name is empty"
    nb = len(name.encode("utf-8", "surrogatepass"))
    if nb > MAX_NAME_BYTES:
        return "tensor name %s is %d bytes, limit %d" % (_show(name), nb, MAX_NAME_BYTES)
    for ch in name:
        if _is_bad_char(ch):
            return "tensor name %s contains control character U+%04X" % (_show(name), ord(ch))
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return "tensor name %s contains a lone surrogate" % _show(name)
    if name[0] in "/\\" or "\\" in name or ".." in name.split("/"):
        return "tensor name %s is path-like" % _show(name)
    return None


class _JsonObject(dict):
    """A JSON object that remembers keys it saw more than once."""

    dups: List[str]


def _object_pairs(pairs: List[Tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    obj.dups = []
    for k, v in pairs:
        if k in obj:
            obj.dups.append(k)
        obj[k] = v
    return obj


def _no_constants(token: str) -> Any:
    raise ValueError("JSON constant %s is not allowed" % token)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- the container parser ------------------------------------------------------------------


def _parse_container(
    data: bytes, dtypes: Mapping[str, np.dtype], what: str = "package"
) -> Tuple[Optional[Dict[str, str]], Dict[str, np.ndarray]]:
    """Parses safetensors bytes without trusting them. Returns (metadata or None if the header
    has no ``__metadata__``, tensors)."""
    size = len(data)
    if size == 0:
        raise PackageError("%s is empty (0 bytes)" % what)
    if size < 8:
        raise PackageError(
            "%s truncated: %d bytes, shorter than the 8-byte header length" % (what, size)
        )
    (hlen,) = struct.unpack_from("<Q", data, 0)
    # A JSON header starts with '{' (or, malformed but still JSON, '['), maybe after spaces.
    lead = bytes(data[8 : 8 + max(1, min(hlen, 64))]).lstrip(b" \t\r\n")[:1]
    if size > 8 and lead not in (b"{", b"["):
        raise PackageError(
            "%s is not safetensors: no JSON header after the 8-byte length%s"
            % (what, _sniff(data))
        )
    if hlen > MAX_HEADER_BYTES:
        raise PackageError(
            "%s header too large: header length says %d bytes, limit %d"
            % (what, hlen, MAX_HEADER_BYTES)
        )
    if 8 + hlen > size:
        raise PackageError(
            "%s truncated: header says %d bytes, file has %d after the length field"
            % (what, hlen, size - 8)
        )
    if hlen < 2:
        raise PackageError("%s header is %d bytes, too short for a JSON object" % (what, hlen))
    raw = bytes(data[8 : 8 + hlen])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackageError("%s header is not UTF-8 (byte %d)" % (what, e.start)) from None
    try:
        header = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_no_constants)
    except RecursionError:
        raise PackageError("%s header JSON is nested too deeply" % what) from None
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PackageError("%s header is not valid JSON: %s" % (what, msg)) from None
    if not isinstance(header, dict):
        raise PackageError(
            "%s header is a JSON %s, not an object" % (what, type(header).__name__)
        )
    if header.dups:  # type: ignore[attr-defined]
        dup = header.dups[0]  # type: ignore[attr-defined]
        if dup == "__metadata__":
            raise PackageError("%s header has __metadata__ twice" % what)
        raise PackageError("%s header names tensor %s twice" % (what, _show(dup)))

    meta_raw = header.pop("__metadata__", None)
    metadata: Optional[Dict[str, str]] = None
    if meta_raw is not None:
        metadata = {}
        if not isinstance(meta_raw, dict):
            raise PackageError(
                "%s __metadata__ is a JSON %s, not an object" % (what, type(meta_raw).__name__)
            )
        if meta_raw.dups:  # type: ignore[attr-defined]
            raise PackageError(
                "%s metadata key %s appears twice" % (what, _show(meta_raw.dups[0]))  # type: ignore
            )
        for k, v in meta_raw.items():
            if not isinstance(v, str):
                raise PackageError(
                    "%s metadata value of %s is a JSON %s, not a string"
                    % (what, _show(k), type(v).__name__)
                )
            if len(v.encode("utf-8", "surrogatepass")) > MAX_META_VALUE_BYTES:
                raise PackageError(
                    "%s metadata value of %s is longer than %d bytes"
                    % (what, _show(k), MAX_META_VALUE_BYTES)
                )
            metadata[k] = v

    data_start = 8 + hlen
    data_len = size - data_start
    entries = []  # (begin, end, name, dtype, shape)
    for name, entry in header.items():
        why = check_tensor_name(name)
        if why is not None:
            raise PackageError(why)
        if not isinstance(entry, dict):
            raise PackageError(
                "tensor %s: entry is a JSON %s, not an object" % (_show(name), type(entry).__name__)
            )
        if entry.dups:  # type: ignore[attr-defined]
            raise PackageError(
                "tensor %s: key %s appears twice" % (_show(name), _show(entry.dups[0]))  # type: ignore
            )
        keys = set(entry)
        if keys != {"dtype", "shape", "data_offsets"}:
            missing = sorted({"dtype", "shape", "data_offsets"} - keys)
            extra = sorted(keys - {"dtype", "shape", "data_offsets"})
            if missing:
                raise PackageError("tensor %s: entry lacks %s" % (_show(name), ", ".join(missing)))
            raise PackageError(
                "tensor %s: unexpected entry key %s" % (_show(name), _show(extra[0]))
            )
        dt = entry["dtype"]
        if not isinstance(dt, str):
            raise PackageError("tensor %s: dtype is not a string" % _show(name))
        if dt not in dtypes:
            if dt in _KNOWN_DTYPES:
                raise PackageError(
                    "tensor %s: dtype %s not accepted (%s only)"
                    % (_show(name), dt, " or ".join(sorted(dtypes, reverse=True)))
                )
            raise PackageError("tensor %s: unknown dtype %s" % (_show(name), _show(dt)))
        shape = entry["shape"]
        if not isinstance(shape, list):
            raise PackageError("tensor %s: shape is not a list" % _show(name))
        if len(shape) > MAX_NDIM:
            raise PackageError(
                "tensor %s: shape has %d dimensions, limit %d" % (_show(name), len(shape), MAX_NDIM)
            )
        for d in shape:
            if not _int(d) or d < 0:
                raise PackageError(
                    "tensor %s: shape dimension %s is not a non-negative integer"
                    % (_show(name), json.dumps(d))
                )
        offs = entry["data_offsets"]
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(_int(o) and o >= 0 for o in offs)
        ):
            raise PackageError(
                "tensor %s: data_offsets must be two non-negative integers, got %s"
                % (_show(name), _show(json.dumps(offs), 40))
            )
        begin, end = offs
        if begin > end:
            raise PackageError(
                "tensor %s: data_offsets [%d, %d] end before they begin" % (_show(name), begin, end)
            )
        numel = 1
        for d in shape:
            numel *= d
        need = numel * dtypes[dt].itemsize
        if need != end - begin:
            raise PackageError(
                "tensor %s: shape %s %s needs %d bytes, data_offsets give %d"
                % (_show(name), _shape_str(shape), dt, need, end - begin)
            )
        entries.append((begin, end, name, dt, tuple(shape)))

    if not entries:
        raise PackageError("%s has no tensors" % what)
    entries.sort(key=lambda e: (e[0], e[1]))
    max_end = max(e[1] for e in entries)
    if max_end > data_len:
        raise PackageError(
            "%s truncated: tensors need %d data bytes, file has %d" % (what, max_end, data_len)
        )
    pos = 0
    prev = None
    for begin, end, name, _dt_, _shape in entries:
        if begin < pos:
            raise PackageError(
                "tensors %s and %s overlap (bytes %d-%d and %d-%d)"
                % (_show(prev[2]), _show(name), prev[0], prev[1], begin, end)
            )
        if begin > pos:
            if prev is None:
                raise PackageError(
                    "%s data has a %d-byte gap before the first tensor %s"
                    % (what, begin, _show(name))
                )
            raise PackageError(
                "%s data has a %d-byte gap between tensors %s and %s"
                % (what, begin - pos, _show(prev[2]), _show(name))
            )
        pos = end
        prev = (begin, end, name)
    if pos != data_len:
        raise PackageError(
            "%s has %d trailing bytes after the last tensor" % (what, data_len - pos)
        )

    tensors: Dict[str, np.ndarray] = {}
    for begin, end, name, dt, shape in sorted(entries, key=lambda e: e[2]):
        arr = np.frombuffer(data, dtype=dtypes[dt], count=(end - begin) // dtypes[dt].itemsize,
                            offset=data_start + begin)
        arr.flags.writeable = False  # views of the checked bytes (a bytearray when read from disk)
        tensors[name] = arr.reshape(shape)
    return metadata, tensors


_MAGICS = (
    (b"PK\x03\x04", "a zip archive (.npz or a PyTorch .pt?)"),
    (b"\x93NUMPY", "a .npy array"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x80", "a Python pickle"),
    (b"\x1f\x8b", "gzip data"),
)


def _sniff(data: bytes) -> str:
    for magic, what in _MAGICS:
        if bytes(data[: len(magic)]) == magic:
            return " (looks like %s)" % what
    return ""


def _meta_int(metadata: Mapping[str, str], key: str, required: bool) -> Optional[int]:
    v = metadata.get(key)
    if v is None:
        if required:
            raise PackageError("package metadata lacks %s" % key)
        return None
    if not _INT_RE.match(v) or int(v) > MAX_VERSION:
        raise PackageError("package %s is not a non-negative integer: %s" % (key, _show(v)))
    return int(v)


def parse_package_bytes(data: bytes, path: Optional[str] = None, sha256: Optional[str] = None) -> Package:
    """Parses and checks a package held in memory (see the module docstring). ``sha256``: the
    package identity (hex sha256 of the whole of ``data``) when the caller computed it already,
    in the one pass the pipeline makes over the raw bytes before any parser runs."""
    metadata, tensors = _parse_container(data, _PACKAGE_DTYPES)
    if metadata is None:
        raise PackageError("package has no __metadata__ (refit.version and refit.model are required)")
    version = _meta_int(metadata, "refit.version", True)
    base = _meta_int(metadata, "refit.base", False)
    model = metadata.get("refit.model")
    if model is None:
        raise PackageError("package metadata lacks refit.model")
    if not _FINGERPRINT_RE.match(model):
        raise PackageError(
            "package refit.model is not a fingerprint (sha256:<64 hex>): %s" % _show(model)
        )
    if base is not None and base >= version:  # type: ignore[operator]
        raise PackageError(
            "package refit.base %d is not older than its refit.version %d" % (base, version)
        )
    note = metadata.get("refit.note")
    if note is not None and len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise PackageError("package refit.note is longer than %d bytes" % MAX_NOTE_BYTES)
    return Package(
        version=version,  # type: ignore[arg-type]
        model=model,
        tensors=tensors,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        base=base,
        created=metadata.get("refit.created"),
        note=note,
        metadata=dict(metadata),
        path=path,
    )


class ReadBuffer:
    """Memory that ``read_capped`` reads into, kept from one read to the next by its owner (the
    pipeline, which reads one package at a time under its lock and holds no view of the last
    one when it reads the next). A fresh buffer is page-faulted in as the read fills it: 64 MiB
    cost ~40 ms that way on the 2-core EPYC VM (docs/design.md, "Pipeline timing"), more than
    the sha256 of the same bytes. The price is resident memory: the largest package read."""

    def __init__(self) -> None:
        self._buf: Optional[bytearray] = None

    def take(self, n: int) -> memoryview:
        """``n`` writable bytes; what an earlier ``take`` returned is overwritten."""
        if self._buf is None or len(self._buf) < n:
            self._buf = None  # the old one goes first: never both at once
            self._buf = bytearray(n)
        return memoryview(self._buf)[:n]


_HASH_PIECE = 4 << 20


def _read_all(fd: int, buf: memoryview, hasher: Any) -> int:
    """Reads ``fd`` from offset 0 into ``buf`` until it is full or the file ends; returns the
    bytes read. With ``hasher`` (hashlib) they are hashed too: a large file piece by piece in a
    helper thread while the next piece is read (pread and sha256 both release the GIL, so they
    run on two cores and the read costs next to nothing beside the hash)."""
    want, got = len(buf), 0
    pieces: "queue.Queue[Optional[memoryview]]" = queue.Queue()
    helper = None
    if hasher is not None and want > 2 * _HASH_PIECE:
        helper = threading.Thread(target=lambda: [hasher.update(p) for p in iter(pieces.get, None)],
                                  name="refitd-read-hash", daemon=True)
        helper.start()
    try:
        while got < want:
            n = os.preadv(fd, [buf[got: got + _HASH_PIECE]], got)
            if n == 0:
                break
            if helper is not None:
                pieces.put(buf[got: got + n])
            got += n
    finally:
        if helper is not None:
            pieces.put(None)
            helper.join()
    if hasher is not None and helper is None:
        hasher.update(buf[:got])
    return got


def read_capped(path: str, max_bytes: int, what: str = "package", fd: Optional[int] = None,
                into: Optional[ReadBuffer] = None, hasher: Any = None) -> Any:
    """Reads the file at ``path`` whole, refusing more than ``max_bytes`` before reading any.
    With ``fd`` (an open descriptor the caller keeps owning, e.g. one the CLI passed over the
    control socket) that file is read from its start and ``path`` only names it in errors.
    Returns a new ``bytearray``, or with ``into`` a memoryview of that buffer (valid until its
    next ``take``). ``hasher`` (e.g. ``hashlib.sha256()``) is fed the bytes as they are read."""
    own = fd is None
    if own:
        try:
            # O_NONBLOCK: a FIFO dropped where a package belongs must not hang the pipeline
            fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise PackageError("%s not found: %s" % (what, path), stage="size") from None
        except OSError as e:
            raise PackageError("cannot open %s %s: %s" % (what, path, e.strerror), stage="size") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PackageError("%s is not a regular file: %s" % (what, path), stage="size")
        if st.st_size > max_bytes:
            raise PackageError(
                "%s too large: %d bytes, limit %d" % (what, st.st_size, max_bytes), stage="size"
            )
        # Read straight into the memory that is kept, one spare byte to notice a file that grew
        # meanwhile; positioned: a passed fd's offset is not ours. A short read (not from the
        # page cache of a regular file) goes on in pieces.
        want = st.st_size + 1
        fresh = bytearray(want) if into is None else None
        buf = memoryview(fresh) if fresh is not None else into.take(want)  # type: ignore[union-attr]
        got = _read_all(fd, buf, hasher)
        if got != st.st_size:
            raise PackageError(
                "%s changed while being read: %d bytes, then %d" % (what, st.st_size, got),
                stage="size",
            )
        if fresh is None:
            return buf[:got]
        buf.release()
        del fresh[got:]
        return fresh  # nobody else holds it: the arrays built over it are read-only views
    except OSError as e:
        raise PackageError("cannot read %s %s: %s" % (what, path, e.strerror), stage="size") from None
    finally:
        if own:
            os.close(fd)


def read_package(path: str, max_bytes: int = DEFAULT_MAX_PACKAGE_BYTES, fd: Optional[int] = None) -> Package:
    """Reads and checks the package at ``path`` (or, given ``fd``, the open file it names).
    Raises ``PackageError`` (one line).

    The size cap is checked on the open descriptor before anything is read; the file is then read
    once, and the arrays of the returned ``Package`` are read-only views of those bytes.
    """
    data = read_capped(path, max_bytes, fd=fd)
    pkg = parse_package_bytes(data, path=os.fspath(path))
    pkg.beside_path = fd is None
    return pkg


# ---- checks against a model ----------------------------------------------------------------


def _schema(model: Any) -> Tuple[str, Dict[str, Any]]:
    """(fingerprint, {name: WeightSpec}) from an Engine, or a (fingerprint, specs) pair."""
    if hasattr(model, "weights") and hasattr(model, "fingerprint"):
        return model.fingerprint, {w.name: w for w in model.weights()}
    fp, specs = model
    return fp, {w.name: w for w in specs}


def _unknown_hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return " (did you mean %s?)" % _show(close[0]) if close else ""


def check_against_model(pkg: Package, model: Any) -> None:
    """Checks fingerprint, names, dtypes and shapes against the model (an Engine, or a
    ``(fingerprint, [WeightSpec])`` pair). Raises ``PackageError(stage="model")``."""
    fp, specs = _schema(model)
    if pkg.model != fp:
        raise PackageError(
            "package is for model %s, this engine serves model %s"
            % (_short_fp(pkg.model), _short_fp(fp)),
            stage="model",
        )
    for name, arr in pkg.tensors.items():
        spec = specs.get(name)
        if spec is None:
            raise PackageError(
                "tensor %s is not a refittable weight of the model%s"
                % (_show(name), _unknown_hint(name, specs)),
                stage="model",
            )
        if spec.dtype not in _FLOAT_WEIGHT_DTYPES:
            raise PackageError(
                "tensor %s: package dtype %s, but the model weight is %s"
                % (_show(name), _NP_TO_ST[arr.dtype.name], spec.dtype),
                stage="model",
            )
        if tuple(arr.shape) != tuple(spec.shape):
            raise PackageError(
                "tensor %s: shape %s, model wants %s"
                % (_show(name), _shape_str(arr.shape), _shape_str(spec.shape)),
                stage="model",
            )


def check_finite(tensors: Mapping[str, np.ndarray]) -> None:
    """Raises ``PackageError(stage="finite")`` naming the first tensor with NaN or Inf."""
    for name, arr in tensors.items():
        if arr.size == 0:
            continue
        ok = np.isfinite(arr)
        if ok.all():
            continue
        bad = np.flatnonzero(~ok.reshape(-1))
        first = arr.reshape(-1)[bad[0]]
        kind = "NaN" if np.isnan(first) else ("+Inf" if first > 0 else "-Inf")
        raise PackageError(
            "tensor %s has %d non-finite values (first: %s at flat index %d)"
            % (_show(name), bad.size, kind, int(bad[0])),
            stage="finite",
        )
