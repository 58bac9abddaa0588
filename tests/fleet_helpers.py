"""Helpers for the fleet tests: real refitd daemons with the MQTT channel on, the real CLI,
chain-model packages (n equal weights, so changing one changes 1/n of the bytes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from daemon_helpers import DaemonProc, base_config, env, wait_until, write_config

N_TENSORS = 10
SIZE = 1 << 16  # floats per tensor: 256 KiB each, 2.5 MiB a package, 3 chunks per tensor


def chain_weights(version: int, changed: Optional[List[int]] = None, base: int = 0) -> Dict[str, np.ndarray]:
    """Every tensor filled with ``base`` except ``changed`` ones (default: all) filled with
    ``version``; random-looking content so no two tensors share a blob by accident."""
    out = {}
    for i in range(N_TENSORS):
        v = version if changed is None or i in changed else base
        rng = np.random.default_rng(1000 * v + i)
        out["w%d" % i] = (rng.standard_normal(SIZE).astype(np.float32) * 1e-3 + v)
    return out


def write_chain_package(path: str, fp: str, version: int, changed: Optional[List[int]] = None,
                        base_version: int = 0) -> str:
    from refitd.pack import write_package
    return write_package(path, chain_weights(version, changed, base_version), version=version, model=fp)


def device_config(state: str, model: str, broker_url: str, fleet: str, dev: str,
                  group: Optional[str] = None, protocol: str = "5",
                  health: Optional[Dict[str, Any]] = None, rate: float = 20.0,
                  security: Any = False, **mqtt: Any) -> str:
    m = {"enabled": True, "broker": broker_url, "fleet": fleet, "client_id": dev,
         "protocol": protocol, "status_period": 2.0, "request_timeout": 3.0, "backoff_max": 2.0}
    if group:
        m["group"] = group
    m.update(mqtt)
    # The transport tests push unsigned packages: signatures over MQTT (on by default with
    # mqtt.enabled) are tested on their own (a whole security section as ``security``), so
    # these devices opt out explicitly.
    sec = security if isinstance(security, dict) else {"require_signature": security}
    cfg = base_config(state, model=model, mqtt=m, watch={"path": None},
                      source={"type": "synthetic", "fill": "ones", "rate": rate}, security=sec)
    if health is not None:
        cfg["health"] = health
    return write_config(state, cfg)


class Device(DaemonProc):
    def __init__(self, state: str, model: str, broker_url: str, fleet: str, dev: str, **kw: Any):
        os.makedirs(state, exist_ok=True)
        cfg = device_config(state, model, broker_url, fleet, dev, **kw)
        super().__init__(cfg, os.path.join(state, "c.sock"))
        self.state_dir = state
        self.id = dev

    def serving(self) -> int:
        return self.status()["serving"]["version"]

    def wait_version(self, v: int, timeout: float = 120.0) -> None:
        wait_until(lambda: self.serving() == v, timeout, what="%s serving version %d\n%s" % (
            self.id, v, self.log()[-3000:]))

    def mqtt_events(self, kind: str) -> List[Dict[str, Any]]:
        """The channel's own events in the daemon log (``mqtt.<kind>``)."""
        out = []
        with open(self.log_path, "rb") as f:  # the whole log (DaemonProc.log keeps a tail)
            for line in f.read().decode("utf-8", "replace").splitlines():
                if line.startswith("{") and '"mqtt.%s"' % kind in line:
                    out.append(json.loads(line))
        return out

    def applied_count(self, v: int) -> int:
        """How many times the store committed version ``v`` (history.jsonl)."""
        n = 0
        for name in ("history.1.jsonl", "history.jsonl"):
            p = os.path.join(self.state_dir, "store", name)
            if os.path.exists(p):
                for line in open(p):
                    rec = json.loads(line)
                    n += rec.get("event") == "applied" and rec.get("version") == v
        return n


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refitd"] + list(args), capture_output=True,
                          text=True, env=env(), timeout=timeout)


def cli_bg(*args: str, log: str) -> subprocess.Popen:
    out = open(log, "ab")
    p = subprocess.Popen([sys.executable, "-m", "refitd"] + list(args), stdout=out,
                         stderr=subprocess.STDOUT, env=env())
    out.close()
    return p


class TestClient:
    """A plain paho client for what the tests do by hand: publish a crafted desired state,
    play a rogue weight server, watch a topic."""

    def __init__(self, url: str, client_id: str, protocol: str = "5"):
        import queue
        import paho.mqtt.client as mqtt
        host, port = url.split("//")[1].split(":")
        self.inbox: "queue.Queue" = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
        self.c.on_message = lambda c, u, m: self.inbox.put(m)
        self.c.connect(host, int(port))
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def subscribe(self, topic: str) -> None:
        import threading
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        done.wait(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
