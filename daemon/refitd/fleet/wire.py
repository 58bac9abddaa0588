"""Chunk request/response framing.

A request is JSON: ``{"reply_to", "corr", "obj", "off", "n"}`` -- ``obj`` the sha256 of the
object (a tensor blob or a transfer manifest), ``[off, off+n)`` the byte range wanted. Over
MQTT 5 the response topic and correlation data also travel as properties; over 3.1.1 the payload
fields are all there is, so servers always read them from the payload.

A response is binary, so a chunk costs its bytes plus a small header, never base64:
``b"RFC1"``, a 4-byte big-endian header length, the JSON header ``{"corr", "obj", "off", "n"}``
(or ``{"corr", "obj", "err"}``), then the data.
"""
from __future__ import annotations

import json
import re
import struct
from typing import Any, Dict, Optional, Tuple

MAGIC = b"RFC1"
#: bytes a response adds to its data: magic, length, JSON header, MQTT fixed/variable header
#: and properties with a ~100-byte topic; chunk sizes are kept this far under the broker limit
OVERHEAD = 1024
MAX_REQUEST = 2048
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CORR = re.compile(r"^[0-9a-f]{1,64}$")


class WireError(ValueError):
    """A malformed request or response (one line)."""


def request(reply_to: str, corr: str, obj: str, off: int, n: int) -> bytes:
    return json.dumps({"reply_to": reply_to, "corr": corr, "obj": obj, "off": off, "n": n},
                      separators=(",", ":")).encode()


def parse_request(payload: bytes) -> Dict[str, Any]:
    if len(payload) > MAX_REQUEST:
        raise WireError("request of %d bytes, limit %d" % (len(payload), MAX_REQUEST))
    try:
        req = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError("request is not JSON: %s" % str(e).splitlines()[0]) from None
    if not isinstance(req, dict):
        raise WireError("request is not a JSON object")
    for k in ("off", "n"):
        v = req.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise WireError("request field %s must be a non-negative integer" % k)
    if not _HEX64.match(str(req.get("obj"))):
        raise WireError("request field obj must be a sha256 (64 hex)")
    if not _CORR.match(str(req.get("corr"))):
        raise WireError("request field corr must be hex")
    rt = req.get("reply_to")
    if not isinstance(rt, str) or not rt or "+" in rt or "#" in rt:
        raise WireError("request field reply_to must be a topic without wildcards")
    return req


def response(corr: str, obj: str, off: int, data: bytes = b"", err: Optional[str] = None) -> bytes:
    head: Dict[str, Any] = {"corr": corr, "obj": obj}
    if err is None:
        head.update(off=off, n=len(data))
    else:
        head["err"] = err
    h = json.dumps(head, separators=(",", ":")).encode()
    return b"".join((MAGIC, struct.pack(">I", len(h)), h, data))


def parse_response(payload: bytes) -> Tuple[Dict[str, Any], memoryview]:
    """(header, data). Raises ``WireError``."""
    mv = memoryview(payload)
    if len(mv) < 8 or bytes(mv[:4]) != MAGIC:
        raise WireError("response does not start with %r" % MAGIC)
    (hl,) = struct.unpack(">I", mv[4:8])
    if hl > 4096 or 8 + hl > len(mv):
        raise WireError("response header length %d out of range" % hl)
    try:
        head = json.loads(bytes(mv[8:8 + hl]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WireError("response header is not JSON") from None
    if not isinstance(head, dict) or not isinstance(head.get("corr"), str):
        raise WireError("response header lacks corr")
    data = mv[8 + hl:]
    if "err" not in head and head.get("n") != len(data):
        raise WireError("response header says %r bytes, %d came" % (head.get("n"), len(data)))
    return head, data
