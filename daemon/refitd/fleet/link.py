"""The one MQTT client wrapper every fleet part uses (device, weight server, operator CLI).

paho-mqtt 2.x with ``CallbackAPIVersion.VERSION2``. The network runs on one thread of our own
(``client.loop`` in a loop) so reconnects use *our* backoff: capped exponential with full
jitter, so 5,000 boxes do not reconnect in lockstep after a broker restart. Callbacks only
enqueue (``inbox``); subscriptions are (re)made in ``on_connect``; a refused CONNACK is an error
with its reason, never "connected"; TLS and socket failures are kept as one line in ``error``.
"""
from __future__ import annotations

import queue
import random
import re
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


class LinkError(Exception):
    """The broker could not be reached or refused us; one line."""


@dataclass
class LinkOptions:
    url: str  # mqtt://host:port or mqtts://host:port
    client_id: str
    protocol: str = "5"
    keepalive: int = 30
    cafile: Optional[str] = None
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    clean: bool = True


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    response_topic: Optional[str] = None
    correlation: Optional[bytes] = None


def parse_url(url: str) -> Tuple[str, int, bool]:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
        raise LinkError("broker URL %r: expected mqtt://host[:port] or mqtts://host[:port]" % url)
    tls = u.scheme in ("mqtts", "ssl")
    return u.hostname, u.port or (8883 if tls else 1883), tls


def backoff(attempt: int, lo: float, hi: float) -> float:
    """Full jitter: uniform in [lo, min(hi, lo * 2**attempt)]."""
    return random.uniform(lo, min(hi, lo * (2 ** min(attempt, 30))))


class Link:
    """One broker connection. ``subscribe`` filters are kept and renewed on every connect;
    incoming messages land in ``inbox`` as ``("msg", Message)``; connects and disconnects as
    ``("up", None)`` / ``("down", reason)``."""

    def __init__(self, opts: LinkOptions, inbox: Optional["queue.Queue[Any]"] = None,
                 will: Optional[Tuple[str, bytes]] = None):
        self.opts = opts
        self.host, self.port, tls = parse_url(opts.url)
        self.inbox: "queue.Queue[Any]" = inbox if inbox is not None else queue.Queue()
        self.v5 = opts.protocol == "5"
        if opts.protocol not in PROTOCOLS:
            raise LinkError("MQTT protocol %r: use 5 or 3.1.1" % opts.protocol)
        self._subs: List[Tuple[str, int]] = []
        self.connected = threading.Event()
        self.error: Optional[str] = None
        self.refused = False  # the broker answered and said no (credentials, not authorised)
        self.max_packet: Optional[int] = None  # the broker's MQTT 5 Maximum Packet Size
        self.connects = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.on_up: Optional[Callable[[], None]] = None  # runs on the network thread (publishes only)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id,
                        protocol=PROTOCOLS[opts.protocol],
                        **({} if self.v5 else {"clean_session": opts.clean}))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_log = self._on_log
        self._log_error: Optional[str] = None
        if tls or opts.cafile or opts.certfile:
            try:
                c.tls_set(ca_certs=opts.cafile, certfile=opts.certfile, keyfile=opts.keyfile,
                          cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise LinkError("TLS files: %s" % _line(e)) from None
        if opts.username is not None:
            c.username_pw_set(opts.username, self._password())
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        self.client = c

    def _password(self) -> Optional[str]:
        if not self.opts.password_file:
            return None
        try:
            with open(self.opts.password_file, "r", encoding="utf-8") as f:
                return f.read().strip("\r\n")
        except OSError as e:
            raise LinkError("cannot read password file %s: %s"
                            % (self.opts.password_file, e.strerror)) from None

    @property
    def where(self) -> str:
        return "%s:%d" % (self.host, self.port)

    # ---- paho callbacks: record and enqueue, nothing else ---------------------------------

    def _on_connect(self, client, _ud, _flags, reason, props) -> None:
        if reason.is_failure:
            self.refused = True
            self.error = "broker %s refused the connection: %s" % (self.where, reason)
            return
        self.refused = False
        self.error = None
        self.connects += 1
        mp = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self.max_packet = int(mp) if mp else None
        for topic, qos in list(self._subs):
            client.subscribe(topic, qos)
        if self.on_up is not None:
            self.on_up()
        self.connected.set()
        self.inbox.put(("up", None))

    def _on_disconnect(self, _client, _ud, _flags, reason, _props) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was:
            self.inbox.put(("down", str(reason)))

    def _on_log(self, _client, _ud, level, buf) -> None:
        # paho reports socket and TLS failures (e.g. a broker refusing our certificate after
        # the TLS 1.3 handshake) only as log lines: keep the last one as the reason
        if level == mqtt.MQTT_LOG_ERR and self._log_error is None and buf:
            self._log_error = str(buf).splitlines()[0]  # the first: later ones are its echoes

    def _on_message(self, _client, _ud, msg) -> None:
        rt = corr = None
        p = getattr(msg, "properties", None)
        if p is not None:
            rt = getattr(p, "ResponseTopic", None)
            corr = getattr(p, "CorrelationData", None)
        self.inbox.put(("msg", Message(msg.topic, bytes(msg.payload), bool(msg.retain), rt, corr)))

    # ---- the network thread ----------------------------------------------------------------

    def start(self) -> "Link":
        self._thread = threading.Thread(target=self._run, name="mqtt-%s" % self.opts.client_id,
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # paho writes a packet from the publishing thread unless it sees a loop thread; two
        # threads on one TLS socket (read here, write there) corrupt the session, so tell paho
        # this is its loop thread: publishes then wake our select and are written from here
        self.client._thread = threading.current_thread()  # type: ignore[attr-defined]
        attempt = 0
        while not self._stop.is_set():
            self._log_error = None
            try:
                if self.v5:
                    self.client.connect(self.host, self.port, self.opts.keepalive,
                                        clean_start=self.opts.clean)
                else:
                    self.client.connect(self.host, self.port, self.opts.keepalive)
                while not self._stop.is_set():
                    rc = self.client.loop(timeout=0.2)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        if not self.refused:
                            self.error = self._lost_reason(rc)
                        break
                    if self.connected.is_set():
                        attempt = 0
            except ssl.SSLError as e:  # e.g. the broker's certificate does not verify
                self.error = "TLS with broker %s failed: %s" % (self.where, _ssl_line(e))
                self.refused = True
            except OSError as e:
                self.error = "cannot connect to broker %s: %s" % (self.where, _line(e))
            self._on_disconnect(None, None, None, "connection lost", None)
            try:
                self.client.socket() and self.client._sock_close()  # type: ignore[attr-defined]
            except Exception:  # a half-open socket after a failed TLS handshake
                pass
            if self._stop.wait(backoff(attempt, self.opts.backoff_min, self.opts.backoff_max)):
                break
            attempt += 1

    def _lost_reason(self, rc: int) -> str:
        why = self._log_error or mqtt.error_string(rc)
        if "_ssl.c" in why or "SSL" in why:
            why = re.sub(r"^failed to receive on socket: |^\[SSL: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)$", "", why)
            hint = "" if "certificate" in why else " (no valid client certificate for its CA?)"
            if not self.connected.is_set():
                self.refused = True  # not a flaky network: retrying will not fix our certificate
            return "broker %s closed the TLS connection before accepting us: %s%s" % (
                self.where, why, hint)
        return "lost the connection to broker %s: %s" % (self.where, why)

    def wait_connected(self, timeout: float) -> None:
        """Raises ``LinkError`` with the last reason when not connected within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.05):
            if self.refused or time.monotonic() > deadline:
                raise LinkError(self.error or "no connection to broker %s after %.0f s"
                                % (self.where, timeout))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if (topic, qos) not in self._subs:
            self._subs.append((topic, qos))
            if self.connected.is_set():
                self.client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        self._subs = [s for s in self._subs if s[0] != topic]
        if self.connected.is_set():
            self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                response_topic: Optional[str] = None, correlation: Optional[bytes] = None) -> Any:
        props = None
        if self.v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def stop(self, final: Optional[Tuple[str, bytes]] = None, timeout: float = 5.0) -> None:
        """Publishes ``final`` (e.g. online=false) if connected, disconnects cleanly, joins."""
        if final is not None and self.connected.is_set():
            try:
                self.publish(final[0], final[1], qos=1, retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        try:
            self.client.disconnect()
        except Exception:
            pass
        if self._thread is not None:
            self._thread.join(timeout)


def _line(e: BaseException) -> str:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).splitlines()[0]


def _ssl_line(e: ssl.SSLError) -> str:
    return (getattr(e, "reason", None) or _line(e)).lower().replace("_", " ")
