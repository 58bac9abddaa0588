"""The ``mqtt`` config section (the daemon's fleet channel), declared once here as a config
``@section`` (schema.py: pydantic, unknown keys refused, each field's converter and
description); config.py lists it like every other section.

No paho import here: loading a config must not need the MQTT client."""
from __future__ import annotations

import os
import re
import socket
from typing import Optional

from ..schema import _BAD, _f, _refuse, _show, k_bool, k_float, k_int, k_path, k_str, section
from .manifest import DEFAULT_CHUNK, MIN_CHUNK
from .topics import _SEGMENT, check_segment

__all__ = ["MqttSettings", "default_client_id"]

_URL = re.compile(r"^(mqtts?)://([A-Za-z0-9_.:\[\]-]+?)(?::([0-9]{1,5}))?/?$")


def _k_broker(v, path, ctx):
    if isinstance(v, str) and _URL.match(v):
        return v
    ctx.add(path, "must be a URL mqtt://host[:port] or mqtts://host[:port], got %s" % _show(v))
    return _BAD


def _k_protocol(v, path, ctx):
    v = str(v)  # YAML reads `protocol: 5` as a number
    if v in ("5", "3.1.1"):
        return v
    ctx.add(path, 'must be "5" or "3.1.1", got %s' % _show(v))
    return _BAD


def _k_segment(v, path, ctx):
    try:
        return check_segment("", v)
    except ValueError:
        ctx.add(path, "must be one topic level (letters, digits, _ . : -), got %s" % _show(v))
        return _BAD


@section
class MqttSettings:
    """The fleet channel: off unless ``enabled``; then ``broker`` (or host/port/tls) and
    ``fleet`` are required."""
    enabled: bool = _f(False, k_bool, "connect this daemon to the fleet over MQTT")
    broker: Optional[str] = _f(None, _k_broker, "broker URL mqtt://host:port or mqtts://host:port (or host + port + tls)", nullable=True)
    host: Optional[str] = _f(None, k_str, "broker host, when broker is not given", nullable=True)
    port: Optional[int] = _f(None, k_int(1, 65535), "broker port; default 1883, 8883 with tls", nullable=True)
    tls: bool = _f(False, k_bool, "use TLS with host/port (mqtts:// in broker implies it)")
    protocol: str = _f("5", _k_protocol, 'MQTT protocol version: "5" or "3.1.1"')
    client_id: Optional[str] = _f(None, _k_segment, "client id, also the device id in the topics; default: /etc/machine-id, else the host name", nullable=True)
    fleet: Optional[str] = _f(None, _k_segment, "the fleet this box belongs to (a topic level)", nullable=True)
    group: Optional[str] = _f(None, _k_segment, "the group within the fleet; when set the box follows refitd/<fleet>/groups/<group>/desired", nullable=True)
    cafile: Optional[str] = _f(None, k_path, "CA certificate file the broker is verified against", nullable=True)
    certfile: Optional[str] = _f(None, k_path, "client certificate file (goes with keyfile)", nullable=True)
    keyfile: Optional[str] = _f(None, k_path, "client key file (goes with certfile)", nullable=True)
    username: Optional[str] = _f(None, k_str, "broker user name", nullable=True)
    password_file: Optional[str] = _f(None, k_path, "file holding the broker password", nullable=True)
    keepalive: int = _f(30, k_int(5, 3600), "seconds between MQTT keepalive pings")
    chunk_size: int = _f(DEFAULT_CHUNK, k_int(MIN_CHUNK, 64 << 20), "largest chunk request in bytes (lowered to the broker's MQTT 5 Maximum Packet Size)")
    max_in_flight: int = _f(8, k_int(1, 256), "chunk requests outstanding at once")
    request_timeout: float = _f(10.0, k_float(0.1, 3600.0), "seconds a chunk request may take before it is asked again")
    status_period: float = _f(30.0, k_float(0.5, 86400.0), "seconds between retained status reports (also sent on every change)")
    results_rate: float = _f(1.0, k_float(0.0, 10000.0), "results per second the mqtt sink publishes at most")
    backoff_max: float = _f(60.0, k_float(0.5, 3600.0), "longest reconnect delay in seconds (capped exponential backoff with jitter)")
    partial_dir: Optional[str] = _f(None, k_path, "where partial downloads survive restarts; default: <store.path>/fleet", nullable=True)

    def __post_init__(self) -> None:
        """The rules across keys, once each key is valid (each problem names its key)."""
        if not self.enabled:
            return
        problems = []
        if not self.broker and not self.host:
            problems.append((("broker",), "is required when mqtt.enabled (e.g. mqtt://127.0.0.1:1883)"))
        elif not self.fleet:
            problems.append((("fleet",), "is required when mqtt.enabled (the fleet this box belongs to)"))
        if (self.certfile is None) != (self.keyfile is None):
            problems.append((("certfile" if self.certfile is None else "keyfile",),
                             "client certificate and key go together"))
        for k in ("cafile", "certfile", "keyfile", "password_file"):
            v = getattr(self, k)
            if v is not None and not os.path.isfile(v):
                problems.append(((k,), "file not found: %s" % v))
        if problems:
            raise _refuse(problems)

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


def default_client_id() -> str:
    try:
        with open("/etc/machine-id", "r") as f:
            mid = f.read().strip()
        if _SEGMENT.match(mid):
            return mid
    except OSError:
        pass
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:128] or "refitd"
