"""The ``mqtt`` config section (the daemon's fleet channel), validated on its own so the config
module only calls ``parse``: every problem is reported with its key path, like every section.

No paho import here: loading a config must not need the MQTT client."""
from __future__ import annotations

import difflib
import os
import re
import socket
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Tuple

from .manifest import DEFAULT_CHUNK, MIN_CHUNK

_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_URL = re.compile(r"^(mqtts?)://([A-Za-z0-9_.:\[\]-]+?)(?::([0-9]{1,5}))?/?$")


@dataclass
class MqttSettings:
    enabled: bool = False
    broker: Optional[str] = None  # mqtt://host:port | mqtts://host:port (or host + port + tls)
    host: Optional[str] = None
    port: Optional[int] = None
    tls: bool = False
    protocol: str = "5"
    client_id: Optional[str] = None  # default: /etc/machine-id, else the host name
    fleet: Optional[str] = None
    group: Optional[str] = None
    cafile: Optional[str] = None
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    keepalive: int = 30
    chunk_size: int = DEFAULT_CHUNK
    max_in_flight: int = 8
    request_timeout: float = 10.0
    status_period: float = 30.0
    results_rate: float = 1.0
    backoff_max: float = 60.0
    partial_dir: Optional[str] = None  # default: <store.path>/fleet

    @property
    def device_id(self) -> str:
        """The client id, which is also the device id in the topics."""
        return self.client_id or default_client_id()

    @property
    def url(self) -> str:
        if self.broker:
            return self.broker
        return "%s://%s:%d" % ("mqtts" if self.tls else "mqtt", self.host,
                               self.port or (8883 if self.tls else 1883))


_INTS = {"keepalive": (5, 3600), "chunk_size": (MIN_CHUNK, 64 << 20), "max_in_flight": (1, 256),
         "port": (1, 65535)}
_FLOATS = {"request_timeout": (0.1, 3600.0), "status_period": (0.5, 86400.0),
           "results_rate": (0.0, 10000.0), "backoff_max": (0.5, 3600.0)}
_PATHS = ("cafile", "certfile", "keyfile", "password_file", "partial_dir")
_STRS = ("username",)


def default_client_id() -> str:
    try:
        with open("/etc/machine-id", "r") as f:
            mid = f.read().strip()
        if _SEGMENT.match(mid):
            return mid
    except OSError:
        pass
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:128] or "refitd"


def parse(raw: Any, add: Callable[[Tuple[str, ...], str], None],
          resolve: Callable[[str], str]) -> Optional[MqttSettings]:
    """Validates the section; ``add(path, message)`` records each problem."""
    s = MqttSettings()
    if raw is None:
        return s
    if not isinstance(raw, dict):
        add(("mqtt",), "must be a mapping, got %r" % (raw,))
        return None
    known = [f.name for f in fields(MqttSettings)]
    ok = True
    for k, v in raw.items():
        p = ("mqtt", str(k))
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            add(p, "unknown key%s" % (' (did you mean "%s"?)' % close[0] if close else ""))
            ok = False
        elif v is None:
            continue
        elif k in ("enabled", "tls"):
            if not isinstance(v, bool):
                add(p, "must be true or false, got %r" % (v,))
                ok = False
            setattr(s, k, v)
        elif k in _INTS:
            lo, hi = _INTS[k]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                add(p, "must be an integer in [%d, %d], got %r" % (lo, hi, v))
                ok = False
            setattr(s, k, v)
        elif k in _FLOATS:
            lo, hi = _FLOATS[k]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                add(p, "must be a number in [%g, %g], got %r" % (lo, hi, v))
                ok = False
            setattr(s, k, float(v))
        elif k == "protocol":
            v = str(v)
            if v not in ("5", "3.1.1"):
                add(p, 'must be "5" or "3.1.1", got %r' % (v,))
                ok = False
            s.protocol = v
        elif k == "broker":
            if not isinstance(v, str) or not _URL.match(v):
                add(p, "must be a URL mqtt://host[:port] or mqtts://host[:port], got %r" % (v,))
                ok = False
            s.broker = v
        elif k in ("fleet", "group", "client_id"):
            if not isinstance(v, str) or not _SEGMENT.match(v):
                add(p, "must be one topic level (letters, digits, _ . : -), got %r" % (v,))
                ok = False
            setattr(s, k, v)
        elif k in _PATHS:
            if not isinstance(v, str) or not v.strip():
                add(p, "must be a path, got %r" % (v,))
                ok = False
            else:
                setattr(s, k, resolve(v))
        elif k in _STRS or k == "host":
            if not isinstance(v, str) or not v:
                add(p, "must be a non-empty string, got %r" % (v,))
                ok = False
            setattr(s, k, v)
    if s.enabled and ok:
        if not s.broker and not s.host:
            add(("mqtt", "broker"), "is required when mqtt.enabled (e.g. mqtt://127.0.0.1:1883)")
            ok = False
        elif not s.fleet:
            add(("mqtt", "fleet"), "is required when mqtt.enabled (the fleet this box belongs to)")
            ok = False
        if (s.certfile is None) != (s.keyfile is None):
            add(("mqtt", "certfile" if s.certfile is None else "keyfile"),
                "client certificate and key go together")
            ok = False
        for k in ("cafile", "certfile", "keyfile", "password_file"):
            v = getattr(s, k)
            if v is not None and not os.path.isfile(v):
                add(("mqtt", k), "file not found: %s" % v)
                ok = False
    return s if ok else None
