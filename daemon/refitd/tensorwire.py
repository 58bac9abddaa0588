"""The one tensor wire codec: how a tensor travels between the daemon and its clients.

A tensor is described by ``{"dtype": numpy name, "shape": [...]}`` and carried as its C-order
bytes. Two framings use that one description, both read and written only here:

* JSON (the control socket, ``refitd infer``): the description plus ``"data"``, base64 of the
  bytes (``to_json`` / ``from_json``);
* binary frames (the inference socket): a 4-byte big-endian header length, a JSON header whose
  ``inputs`` / ``outputs`` list ``{name, dtype, shape}``, then each tensor's raw bytes in that
  order (``encode_frame`` / ``read_frame``).

Only numeric dtypes (float, int, uint) are accepted; every refusal is one ``WireError`` line
naming the tensor.
"""
from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["WireError", "ProtocolError", "describe", "to_json", "from_json", "encode_frame",
           "read_frame", "MAX_HEADER"]

_LEN = struct.Struct(">I")
MAX_HEADER = 1 << 20


class WireError(ValueError):
    """A tensor (or frame) that cannot be decoded; ``str(e)`` is one line."""


ProtocolError = WireError  # the inference socket's name for it


def describe(a: np.ndarray) -> Dict[str, Any]:
    return {"dtype": a.dtype.name, "shape": [int(d) for d in a.shape]}


def _layout(spec: Any, name: str) -> Tuple[np.dtype, Tuple[int, ...], int]:
    """(dtype, shape, byte count) of a tensor description, checked."""
    try:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(d) for d in spec["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise WireError("tensor %s: needs dtype and shape (%s)" % (name, _first_line(e))) from None
    if dtype.kind not in "fiu":
        raise WireError("tensor %s: dtype %s not accepted" % (name, dtype))
    if any(d < 0 for d in shape):
        raise WireError("tensor %s: shape %s has a negative dimension" % (name, list(shape)))
    return dtype, shape, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _array(data: Any, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ---- JSON --------------------------------------------------------------------------------


def to_json(a: np.ndarray) -> Dict[str, Any]:
    a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d tensor 1-d)
    out = describe(a)
    out["data"] = base64.b64encode(a.tobytes()).decode()
    return out


def from_json(spec: Any, name: str) -> np.ndarray:
    dtype, shape, n = _layout(spec, name)
    try:
        data = base64.b64decode(spec["data"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise WireError("tensor %s: needs base64 data (%s)" % (name, _first_line(e))) from None
    if n != len(data):
        raise WireError("tensor %s: %d bytes of data, shape %s %s needs %d"
                        % (name, len(data), list(shape), dtype, n))
    return _array(data, dtype, shape)


# ---- binary frames -----------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            if not buf:
                raise EOFError
            raise WireError("connection closed in the middle of a frame")
        buf += chunk
    return bytes(buf)


def encode_frame(header: Dict[str, Any], tensors: List[np.ndarray] = ()) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return _LEN.pack(len(h)) + h + b"".join(np.ascontiguousarray(t).tobytes() for t in tensors)


def frame_header(key: str, tensors: Dict[str, np.ndarray]) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """The ``{key: [{name, dtype, shape}]}`` header for ``tensors`` and their arrays in order."""
    arrs = [np.asarray(a, order="C") for a in tensors.values()]  # 0-d stays 0-d
    return {key: [dict(describe(a), name=n) for n, a in zip(tensors, arrs)]}, arrs


def read_frame(sock: socket.socket, key: str, max_bytes: int) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Reads one frame; ``key`` is "inputs" (server side) or "outputs" (client side)."""
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if n > MAX_HEADER:
        raise WireError("header of %d bytes is larger than %d" % (n, MAX_HEADER))
    try:
        header = json.loads(_recv_exact(sock, n))
    except ValueError as e:
        raise WireError("header is not JSON: %s" % e)
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object")
    tensors: Dict[str, np.ndarray] = {}
    if header.get("ok") is False:
        return header, tensors
    specs = header.get(key)
    if not isinstance(specs, list):
        raise WireError('header needs "%s": a list of {name, dtype, shape}' % key)
    total = 0
    for spec in specs:
        name = str(spec.get("name")) if isinstance(spec, dict) else json.dumps(spec)[:80]
        dtype, shape, nbytes = _layout(spec, name)
        total += nbytes
        if total > max_bytes:
            raise WireError("request larger than %d bytes" % max_bytes)
        tensors[name] = _array(_recv_exact(sock, nbytes) if nbytes else b"", dtype, shape)
    return header, tensors
