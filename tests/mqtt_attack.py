"""One device daemon on a real mosquitto (loopback) that requires signatures on the MQTT
channel, and the tools to attack it: the real ``refitd push`` / ``sign`` CLI, a paho client
that publishes crafted desired states and commands, plays a rogue weight server and watches the
device's events and status topics. Shared by tests/test_trust_mqtt.py and the corpus replay
(tests/test_hostile_corpus.py), one broker and one daemon per module."""
from __future__ import annotations

import base64
import json
import os
import queue
from typing import Any, Callable, Dict, List, Optional

from brokers import Mosquitto
from daemon_helpers import fingerprint, rmtree, short_dir, tree_hash, wait_until
from fleet_helpers import Device, TestClient, cli, write_chain_package, N_TENSORS, SIZE

FLEET = "sec"
DEV = "dev-s"
#: what an attack must leave alone in the store: all but the lock and the channel's partial area
STORE_SKIP = ("lock", "fleet")


class Attacker:
    """The broker, the device and the keys (``keys[i]``: private key paths; ``kid``/``pub``)."""

    def __init__(self, n_keys: int = 3, model: Optional[str] = None, **mqtt: Any):
        """``model``: the chain model (10 tensors of 256 KiB) unless given; ``mqtt``: more
        settings for the device (``health``, mqtt keys)."""
        self.work = short_dir("sec")
        if model is None:
            from conftest import add_chain_model
            model = str(add_chain_model(os.path.join(self.work, "chain.onnx"), N_TENSORS, SIZE))
        self.model = model
        self.fp = fingerprint(model)
        self.broker = Mosquitto(os.path.join(self.work, "broker"))
        os.makedirs(self.broker.workdir)
        self.broker.start()
        self.keys, self.kid, self.pub = [], [], []
        for i in range(n_keys):
            path = os.path.join(self.work, "k%d.key" % i)
            r = cli("keygen", "-o", path, "--json")
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            self.keys.append(path)
            self.kid.append(out["key_id"])
            self.pub.append(out["trusted_key"])
        self.mqtt = mqtt
        self.dev: Optional[Device] = None
        self.client = TestClient(self.broker.url, "attacker")
        self.seen: "queue.Queue[Any]" = queue.Queue()
        self.client.c.on_message = lambda c, u, m: self._route(m)
        self.rogue: Optional[Callable[[Dict[str, Any]], Optional[bytes]]] = None
        self.desired_log: List[bytes] = []
        for t in (self.topic("events"), self.topic("status"), self.topic("cmd/response"),
                  "refitd/%s/desired" % FLEET, "refitd/%s/weights/request" % FLEET):
            self.client.subscribe(t)
        self.events: List[Dict[str, Any]] = []
        self.status_doc: Optional[Dict[str, Any]] = None
        self.responses: "queue.Queue[Dict[str, Any]]" = queue.Queue()

    # ---- the device --------------------------------------------------------------------

    def start(self, trusted=(0, 1), threshold: int = 1, **security: Any) -> Device:
        sec = {"require_signature": ["mqtt"], "threshold": threshold, "fleet": FLEET,
               "trusted_keys": {self.kid[i]: self.pub[i] for i in trusted}}
        sec.update(security)
        self.dev = Device(self.dev_state(), self.model, self.broker.url, FLEET, DEV,
                          security=sec, **self.mqtt)
        self.dev.start()
        wait_until(lambda: (self.status_doc or {}).get("serving_version") is not None
                   and self.dev.status()["channels"]["mqtt"]["connected"], 60,
                   what="the device on the broker")
        return self.dev

    def dev_state(self) -> str:
        """The device's state directory (its store, partial area and trust state beside it)."""
        return os.path.join(self.work, DEV)

    def stop(self) -> None:
        if self.dev is not None:
            assert self.dev.stop() == 0
            self.dev = None

    def close(self) -> None:
        try:
            if self.dev is not None and self.dev.proc.poll() is None:
                self.dev.stop()
            self.client.close()
        finally:
            self.broker.stop()
            if not os.environ.get("REFITD_KEEP_TEST_DIRS"):
                rmtree(self.work)

    @staticmethod
    def topic(leaf: str) -> str:
        return "refitd/%s/devices/%s/%s" % (FLEET, DEV, leaf)

    def store_hash(self) -> str:
        return tree_hash(os.path.join(self.dev.state_dir, "store"), skip=STORE_SKIP)

    # ---- what the broker shows -----------------------------------------------------------

    def _route(self, m: Any) -> None:
        t = m.topic
        try:
            if t == self.topic("events"):
                self.events.append(json.loads(m.payload))
            elif t == self.topic("status") and m.payload:
                self.status_doc = json.loads(m.payload)
            elif t == self.topic("cmd/response"):
                self.responses.put(json.loads(m.payload))
            elif t.endswith("/desired"):
                self.desired_log.append(bytes(m.payload))
            elif t.endswith("/weights/request") and self.rogue is not None:
                self._answer(m)
        except ValueError:
            pass

    def _answer(self, m: Any) -> None:
        from refitd.fleet import wire
        req = wire.parse_request(m.payload)
        data = self.rogue(req)
        if data is not None:
            self.client.c.publish(req["reply_to"], wire.response(req["corr"], req["obj"], req["off"], data))

    # ---- packages and deliveries -----------------------------------------------------------

    def package(self, name: str, version: int, variant: int = 0, sign: Any = (0,), **sign_args: Any) -> str:
        """A chain package (``variant`` picks which tensor differs, so no two are alike),
        signed by ``sign`` (key indices; () for none) with ``refitd sign`` options."""
        path = os.path.join(self.work, "pk", name + ".safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_chain_package(path, self.fp, version, changed=[variant % N_TENSORS], base_version=1000 + variant)
        if sign:
            args = ["sign", path]
            for i in sign:
                args += ["--key", self.keys[i]]
            for a, v in sign_args.items():
                args += ["--" + a.replace("_", "-"), str(v)]
            r = cli(*args)
            assert r.returncode == 0, r.stderr
        return path

    def push(self, pkg: str, *extra: str, timeout: int = 90) -> Dict[str, Any]:
        """``refitd push --json`` to this device; the device's row."""
        r = cli("push", pkg, "--fleet", FLEET, "--broker", self.broker.url, "--expect", DEV,
                "--timeout", str(timeout - 15), "--json", *extra, timeout=timeout)
        assert r.stdout, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        return out["devices"][0]

    def publish_desired(self, doc: Any) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.client.publish("refitd/%s/desired" % FLEET, body, retain=True)

    def desired_for(self, pkg: str, sig: Optional[bytes] = "file", **edit: Any) -> Dict[str, Any]:
        """The desired state ``refitd push`` would publish for ``pkg`` (its ``.sig`` unless
        ``sig`` is given), with ``edit`` applied to its ``signed`` part (dotted keys)."""
        from refitd.fleet import manifest as M
        data = open(pkg, "rb").read()
        from refitd.package import parse_package_bytes
        p = parse_package_bytes(data)
        if sig == "file":
            sig = open(pkg + ".sig", "rb").read() if os.path.exists(pkg + ".sig") else None
        doc = M.desired(M.build(data), p.version, p.model, FLEET, signature=sig)
        for key, v in edit.items():
            obj = doc["signed"]
            *path, last = key.split("__")
            for k in path:
                obj = obj[k]
            obj[last] = v
        return doc

    def command(self, req: Dict[str, Any]) -> Dict[str, Any]:
        while not self.responses.empty():
            self.responses.get()
        self.client.publish(self.topic("cmd"), json.dumps(req).encode() if isinstance(req, dict) else req)
        return self.responses.get(timeout=30)

    def serve_rogue(self, answer: Optional[Callable[[Dict[str, Any]], Optional[bytes]]]) -> None:
        """Answers every chunk request with ``answer(request)`` (None: stay silent)."""
        self.rogue = answer

    def serve_objects(self, objects: Dict[str, bytes]) -> None:
        """A weight server for exactly these objects (by sha256), whatever they hold."""
        self.serve_rogue(lambda r: objects[r["obj"]][r["off"]:r["off"] + r["n"]] if r["obj"] in objects else None)

    def sig_b64(self, pkg: str) -> str:
        return base64.b64encode(open(pkg + ".sig", "rb").read()).decode()


def objects_of(pkg: str) -> Dict[str, bytes]:
    """A package's transfer objects (manifest and tensor blobs) by sha256, as an honest weight
    server has them."""
    from refitd.fleet import manifest as M
    data = open(pkg, "rb").read()
    m = M.build(data)
    out = {m.sha256: m.raw}
    for t in m.tensors:
        out[t.sha256] = data[t.offset:t.offset + t.nbytes]
    return out
