"""The MQTT fleet channel end to end: a real mosquitto on loopback (plain + TLS listeners, its
config and certificates written here), real daemon processes with the MQTT channel on, the real
``refitd push / serve / rollout / fleet status`` CLI. No mocks."""
from __future__ import annotations

import json
import os
import signal
import zlib

import pytest

from brokers import Mosquitto, make_certs
from daemon_helpers import fingerprint, rmtree, short_dir, wait_until
from fleet_helpers import Device, chain_weights, cli, cli_bg, write_chain_package, N_TENSORS, SIZE

FLEET = "site1"  # each test gets its own (fresh_fleet): a session broker keeps retained state
#: per broker URL: what the CLI and devices need for it (RabbitMQ: MQTT 3.1.1, no $share)
BROKER_ARGS: dict = {}
PROTOCOL: dict = {}
NO_SHARE: set = set()  # brokers without shared subscriptions


@pytest.fixture(autouse=True)
def fresh_fleet(request):
    global FLEET
    FLEET = "site-%08x" % (zlib.crc32(request.node.nodeid.encode()) ^ os.getpid())
    yield


def _args(url, serving=False):
    return list(BROKER_ARGS.get(url, ())) + (["--no-share"] if serving and url in NO_SHARE else [])


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    make_certs(d)
    return d


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """The chain model (10 weights of 256 KiB) and its fingerprint."""
    from conftest import add_chain_model
    p = str(add_chain_model(tmp_path_factory.mktemp("model") / "chain.onnx", N_TENSORS, SIZE))
    return p, fingerprint(p)


@pytest.fixture
def broker(tmp_path, certs):
    b = Mosquitto(str(tmp_path / "broker"), certs=certs)
    os.makedirs(b.workdir)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory):
    """RabbitMQ's MQTT plugin, started once per session (~20 s)."""
    from brokers import RabbitMQ
    r = RabbitMQ(short_dir("rmq"))
    r.start()
    BROKER_ARGS[r.url] = ["--protocol", "3.1.1"]
    NO_SHARE.add(r.url)
    PROTOCOL[r.url] = "3.1.1"
    yield r
    r.stop()
    rmtree(r.workdir)


@pytest.fixture(params=["mosquitto", "rabbitmq"])
def dbroker(request):
    """The broker for the device-side tests: each runs against both implementations."""
    return request.getfixturevalue("broker" if request.param == "mosquitto" else "rabbitmq")


@pytest.fixture
def work():
    d = short_dir("fleet")
    yield d
    if not os.environ.get("REFITD_KEEP_TEST_DIRS"):
        rmtree(d)


@pytest.fixture
def devices():
    started = []
    yield started
    for d in started:
        d.stop()


def start_device(devices, work, chain, broker_url, dev, **kw) -> Device:
    kw.setdefault("protocol", PROTOCOL.get(broker_url, "5"))
    d = Device(os.path.join(work, dev), chain[0], broker_url, FLEET, dev, **kw)
    devices.append(d)
    return d.start()


def push(broker_url, pkg, *extra, timeout=180):
    r = cli("push", pkg, "--fleet", FLEET, "--broker", broker_url, "--timeout", str(timeout - 15), *extra,
            *_args(broker_url, serving=True), timeout=timeout)
    return r


def fleet_status(broker_url, ids=()):
    r = cli("fleet", "status", "--fleet", FLEET, "--broker", broker_url, "--json", *_args(broker_url),
            *(["--expect", ",".join(ids)] if ids else []))
    assert r.returncode == 0, r.stderr
    return {row["device"]: row for row in json.loads(r.stdout)["devices"]}


def presence(broker_url, ids, want=b"true", timeout=90):
    """Waits until every device in ``ids`` has its retained ``online`` equal to ``want``."""
    from fleet_helpers import TestClient
    seen = {}
    c = TestClient(broker_url, "presence-watcher", PROTOCOL.get(broker_url, "5"))
    try:
        for i in ids:  # exact topics: RabbitMQ sends retained messages to no wildcard
            c.subscribe("refitd/%s/devices/%s/online" % (FLEET, i))

        def all_there():
            while not c.inbox.empty():
                m = c.inbox.get()
                seen[m.topic.split("/")[3]] = bytes(m.payload)
            return all(seen.get(i) == want for i in ids)
        wait_until(all_there, timeout, what="devices %s online=%s (seen %s)" % (ids, want, seen))
    finally:
        c.close()


def wait_online(broker_url, ids, timeout=90):
    presence(broker_url, ids, b"true", timeout)


def test_push_reaches_two_devices(dbroker, work, chain, devices):
    a = start_device(devices, work, chain, dbroker.url, "dev-a")
    b = start_device(devices, work, chain, dbroker.url, "dev-b")
    wait_online(dbroker.url, ["dev-a", "dev-b"])
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    r = push(dbroker.url, pkg, "--expect", "dev-a,dev-b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 applied" in r.stdout, r.stdout
    assert a.serving() == 1 and b.serving() == 1
    st = fleet_status(dbroker.url, ["dev-a", "dev-b"])
    for dev in ("dev-a", "dev-b"):
        assert st[dev]["serving"] == 1 and st[dev]["desired"] == 1, st
        assert st[dev]["online"] is True
    # the table printed by `fleet status` names both
    r = cli("fleet", "status", "--fleet", FLEET, "--broker", dbroker.url, *_args(dbroker.url))
    assert r.returncode == 0 and "dev-a" in r.stdout and "dev-b" in r.stdout, r.stdout


def serve(broker_url, pkg_dir, log, *extra):
    return cli_bg("serve", "--dir", pkg_dir, "--broker", broker_url, *extra, *_args(broker_url, serving=True), log=log)


def stop_bg(p) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_offline_device_catches_up_when_it_starts(dbroker, work, chain, devices):
    a = start_device(devices, work, chain, dbroker.url, "dev-a")
    b = start_device(devices, work, chain, dbroker.url, "dev-b")
    wait_online(dbroker.url, ["dev-a", "dev-b"])
    b.stop()  # clean stop: online=false before the disconnect
    presence(dbroker.url, ["dev-b"], b"false")
    pkgs = os.path.join(work, "pkgs")
    os.makedirs(pkgs)
    pkg = write_chain_package(os.path.join(pkgs, "v1.safetensors"), chain[1], 1)
    r = push(dbroker.url, pkg, "--expect", "dev-a,dev-b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 applied" in r.stdout and "1 offline" in r.stdout, r.stdout
    assert a.serving() == 1
    srv = serve(dbroker.url, pkgs, os.path.join(work, "serve.log"))  # persistent server
    try:
        b.start()
        b.wait_version(1)
    finally:
        stop_bg(srv)
    assert b.applied_count(1) == 1


def test_partial_update_costs_the_changed_bytes(broker, work, chain, devices):
    a = start_device(devices, work, chain, broker.url, "dev-a")
    b = start_device(devices, work, chain, broker.url, "dev-b")
    wait_online(broker.url, ["dev-a", "dev-b"])
    v1 = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    assert push(broker.url, v1, "--expect", "dev-a,dev-b").returncode == 0
    v2 = write_chain_package(os.path.join(work, "v2.safetensors"), chain[1], 2, changed=[3],
                             base_version=1)  # 1 of 10 tensors changed
    r = push(broker.url, v2, "--expect", "dev-a,dev-b")
    assert r.returncode == 0, r.stdout + r.stderr
    changed_bytes = SIZE * 4
    for d in (a, b):
        assert d.serving() == 2
        done = wait_until(lambda: [e for e in d.mqtt_events("update.applied") if e.get("version") == 2],
                          30, what="the channel's applied event")
        assert len(done) == 1, d.mqtt_events("update.applied")
        received = done[0]["received"]
        assert 0 < received <= 1.05 * changed_bytes, (received, changed_bytes)
        assert done[0]["bytes_total"] == changed_bytes


def test_canary_failing_its_health_check_stops_the_rollout(broker, work, chain, devices):
    canary = start_device(devices, work, chain, broker.url, "can-1", group="canary",
                          health={"checks": [{"type": "range", "max": 5.0}]})  # y ~ 11 at v1
    rest = [start_device(devices, work, chain, broker.url, "dev-%d" % i) for i in (1, 2)]
    wait_online(broker.url, ["can-1", "dev-1", "dev-2"])
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    r = cli("rollout", pkg, "--fleet", FLEET, "--canary", "canary", "--max-failures", "0",
            "--broker", broker.url, "--expect", "can-1", "--timeout", "150", timeout=200)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "stopped at the canaries" in r.stdout and "can-1 rejected" in r.stdout, r.stdout
    assert canary.serving() == 0
    st = fleet_status(broker.url)
    for d in rest:
        assert d.serving() == 0
        assert st[d.id]["desired"] is None, st  # the fleet's desired state was never published
    assert st["can-1"]["state"] == "rejected" and "range" in st["can-1"]["detail"], st


def test_rollout_widens_after_healthy_canaries(broker, work, chain, devices):
    canary = start_device(devices, work, chain, broker.url, "can-1", group="canary")
    rest = start_device(devices, work, chain, broker.url, "dev-1")
    wait_online(broker.url, ["can-1", "dev-1"])
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    r = cli("rollout", pkg, "--fleet", FLEET, "--canary", "canary", "--broker", broker.url,
            "--expect", "can-1", "--timeout", "150", timeout=330)
    assert r.returncode == 0, r.stdout + r.stderr
    assert canary.serving() == 1 and rest.serving() == 1


def test_two_weight_servers_share_the_requests(broker, work, chain, devices):
    pkgs = os.path.join(work, "pkgs")
    os.makedirs(pkgs)
    pkg = write_chain_package(os.path.join(pkgs, "v1.safetensors"), chain[1], 1)
    logs = [os.path.join(work, "serve%d.log" % i) for i in (1, 2)]
    servers = [serve(broker.url, pkgs, log) for log in logs]
    try:
        for log in logs:
            wait_until(lambda: "serving 1 packages" in open(log).read(), 30, what="server up")
        devs = [start_device(devices, work, chain, broker.url, "dev-%d" % i) for i in (1, 2)]
        wait_online(broker.url, [d.id for d in devs])
        r = push(broker.url, pkg, "--no-serve", "--expect", "dev-1,dev-2")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for s in servers:
            stop_bg(s)
    served = []
    for log in logs:
        line = [ln for ln in open(log).read().splitlines() if ln.startswith("served ")][-1]
        served.append(int(line.split()[1]))
    assert all(n > 0 for n in served), served
    assert sum(served) >= 2 * N_TENSORS * 3  # every chunk of both devices came from them


def chunk_files(dev):
    d = os.path.join(dev.state_dir, "store", "fleet", "chunks")
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, n) for n in os.listdir(d) if not n.startswith(".tmp-")]


def test_transfer_resumes_after_broker_and_device_restarts(dbroker, work, chain, devices):
    # two requests in flight: what the killed process had asked for may still be answered once
    dev = start_device(devices, work, chain, dbroker.url, "dev-a", max_in_flight=2)
    wait_online(dbroker.url, ["dev-a"])
    pkgs = os.path.join(work, "pkgs")
    os.makedirs(pkgs)
    pkg = write_chain_package(os.path.join(pkgs, "v1.safetensors"), chain[1], 1)
    total_chunks = N_TENSORS * 3
    # a slow weight server (~ 8 s for the package), so both restarts land mid-transfer
    srv = serve(dbroker.url, pkgs, os.path.join(work, "serve.log"), "--max-bytes-per-s", "300000")
    pusher = cli_bg("push", pkg, "--fleet", FLEET, "--broker", dbroker.url, "--no-serve",
                    "--expect", "dev-a", "--timeout", "240", *_args(dbroker.url, serving=True),
                    log=os.path.join(work, "push.log"))
    try:
        wait_until(lambda: len(chunk_files(dev)) >= total_chunks // 5, 60, what="a fifth of the chunks")
        dbroker.kill9()
        before = len(chunk_files(dev))
        dbroker.start()  # same ports; clients reconnect with backoff
        wait_until(lambda: len(chunk_files(dev)) >= before + 3, 150, what="transfer resumed after the broker restart")
        dev.kill9()
        on_disk = sum(os.path.getsize(p) for p in chunk_files(dev))
        assert 0 < on_disk < os.path.getsize(pkg)
        dev.start()
        dev.wait_version(1, timeout=120)
        assert pusher.wait(120) == 0, open(os.path.join(work, "push.log")).read()
    finally:
        stop_bg(srv)
        stop_bg(pusher)
    applied = wait_until(lambda: [e for e in dev.mqtt_events("update.applied") if e.get("version") == 1],
                         30, what="the channel's applied event")
    assert len(applied) == 1, applied
    assert dev.applied_count(1) == 1
    # after the restart only what was missing came: at most the bytes not on disk, plus the
    # two pieces the killed process had in flight (the server still answers those)
    missing = os.path.getsize(pkg) - on_disk
    assert applied[0]["received"] <= missing + 2 * 126976, (applied[0]["received"], missing)
    assert applied[0]["received"] < os.path.getsize(pkg) - 126976
    wait_until(lambda: chunk_files(dev) == [], 30, what="the partial area cleaned after the apply")


def test_rogue_chunks_are_rejected_and_fetched_again(broker, work, chain, devices):
    import threading
    from fleet_helpers import TestClient
    from refitd.fleet import wire
    dev = start_device(devices, work, chain, broker.url, "dev-a")
    wait_online(broker.url, ["dev-a"])
    rogue = TestClient(broker.url, "rogue")
    rogue.subscribe("refitd/+/weights/request")
    stop = threading.Event()

    def answer_wrong():
        import queue
        while not stop.is_set():
            try:
                m = rogue.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            req = wire.parse_request(m.payload)
            rogue.c.publish(req["reply_to"], wire.response(req["corr"], req["obj"], req["off"],
                                                           b"\x01" * req["n"]))
    t = threading.Thread(target=answer_wrong, daemon=True)
    t.start()
    pkgs = os.path.join(work, "pkgs")
    os.makedirs(pkgs)
    pkg = write_chain_package(os.path.join(pkgs, "v1.safetensors"), chain[1], 1)
    pusher = cli_bg("push", pkg, "--fleet", FLEET, "--broker", broker.url, "--no-serve",
                    "--expect", "dev-a", "--timeout", "120", log=os.path.join(work, "push.log"))
    srv = None
    try:
        wait_until(lambda: dev.mqtt_events("update.chunk_rejected"), 30, what="a rejected chunk")
        stop.set()
        t.join(5)
        rogue.close()
        assert dev.serving() == 0
        srv = serve(broker.url, pkgs, os.path.join(work, "serve.log"))
        dev.wait_version(1, timeout=90)
    finally:
        stop.set()
        stop_bg(pusher)
        if srv is not None:
            stop_bg(srv)
    reasons = [e["reason"] for e in dev.mqtt_events("update.chunk_rejected")]
    assert any("sha256" in r for r in reasons), reasons
    assert dev.applied_count(1) == 1


def test_manifest_whose_package_hash_does_not_match_is_rejected(broker, work, chain, devices):
    from fleet_helpers import TestClient
    from refitd.fleet import manifest as M, topics
    from refitd.fleet.link import Link, LinkOptions
    from refitd.fleet.server import WeightServer
    from daemon_helpers import tree_hash
    dev = start_device(devices, work, chain, broker.url, "dev-a")
    wait_online(broker.url, ["dev-a"])
    store_before = tree_hash(os.path.join(dev.state_dir, "store"), skip=("lock", "fleet"))
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    data = open(pkg, "rb").read()
    obj = json.loads(M.build(data).raw)
    obj["package"]["sha256"] = "0" * 64  # the manifest lies about the package it rebuilds
    bad = M.parse(M.canonical(obj))
    watcher = TestClient(broker.url, "watcher")
    watcher.subscribe(topics.events(FLEET, "dev-a"))
    link = Link(LinkOptions(url=broker.url, client_id="crafted-server")).start()
    link.wait_connected(10)
    server = WeightServer(link)
    server.add_manifest(bad, pkg)
    server.start()
    try:
        doc = M.desired(bad, 1, chain[1], FLEET)
        link.publish(topics.fleet_desired(FLEET), json.dumps(doc).encode(), retain=True).wait_for_publish(10)
        wait_until(lambda: dev.mqtt_events("update.rejected"), 30, what="the rejection")
    finally:
        server.stop()
        link.stop()
    rej = dev.mqtt_events("update.rejected")[0]
    assert rej["stage"] == "transfer" and "does not match" in rej["reason"], rej
    seen = []
    while not watcher.inbox.empty():
        seen.append(json.loads(watcher.inbox.get().payload))
    watcher.close()
    assert any(e["event"] == "update.rejected" and "does not match" in e["reason"] for e in seen), seen
    assert dev.serving() == 0
    assert tree_hash(os.path.join(dev.state_dir, "store"), skip=("lock", "fleet")) == store_before


def test_tls_with_client_certificates(broker, work, chain, devices):
    tls = dict(cafile=broker.cert("ca.crt"), certfile=broker.cert("client.crt"),
               keyfile=broker.cert("client.key"))
    dev = start_device(devices, work, chain, broker.tls_url, "dev-tls", **tls)
    creds = ["--cafile", tls["cafile"], "--cert", tls["certfile"], "--key", tls["keyfile"]]
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    r = cli("push", pkg, "--fleet", FLEET, "--broker", broker.tls_url, "--expect", "dev-tls",
            "--timeout", "150", *creds, timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dev.serving() == 1, r.stdout
    for cert in (["--cert", broker.cert("rogue-client.crt"), "--key", broker.cert("rogue-client.key")], []):
        r = cli("fleet", "status", "--fleet", FLEET, "--broker", broker.tls_url,
                "--cafile", tls["cafile"], "--connect-timeout", "10", *cert)
        assert r.returncode == 1, r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("refitd: "), r.stderr
        assert "certificate" in lines[0] or "TLS" in lines[0], lines[0]


# ---- signatures over MQTT (docs/mqtt.md "Signatures") -----------------------------------------

def _keygen(work, name):
    path = os.path.join(work, name + ".key")
    r = cli("keygen", "-o", path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return path, out["key_id"], out["trusted_key"]


def _push_json(broker_url, pkg, *extra):
    r = push(broker_url, pkg, "--json", *extra, timeout=90)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def test_signed_push_is_applied_and_bad_ones_refused_before_any_chunk(broker, work, chain, devices):
    """One device that requires signatures on mqtt and trusts one key: an unsigned push, one
    signed by an untrusted key and an expired one are each refused from the desired state alone
    (no chunk requested, reason in events and status); the properly signed push of the same
    package then applies, its envelope checked again by the pipeline's verifier; a cmd-topic
    rollback goes through only with a signature."""
    from fleet_helpers import TestClient
    from refitd.fleet import topics
    from refitd.signing import dump_envelope, load_private_key, sign_envelope
    from refitd.trust import package_claims
    key, kid, pub = _keygen(work, "trusted")
    rogue, _, _ = _keygen(work, "rogue")
    dev = start_device(devices, work, chain, broker.url, "dev-a", security={
        "require_signature": ["mqtt"], "trusted_keys": {kid: pub}, "fleet": FLEET})
    wait_online(broker.url, ["dev-a"])
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    data = open(pkg, "rb").read()
    expired = os.path.join(work, "expired.sig")
    with open(expired, "wb") as f:
        f.write(dump_envelope(sign_envelope(package_claims(data, 1, chain[1], expires=1e9),
                                            [load_private_key(key)])))
    untrusted = os.path.join(work, "untrusted.sig")
    r = cli("sign", pkg, "--key", rogue, "-o", untrusted)
    assert r.returncode == 0, r.stderr

    for extra, why in (((), "unsigned package: the mqtt channel requires a signature"),
                       (("--sig", untrusted), "which is not trusted"),
                       (("--sig", expired), "signed data expired at 2001-09-09T01:46:40Z")):
        code, out = _push_json(broker.url, pkg, *extra)
        assert code == 1, out
        row = out["devices"][0]
        assert row["state"] == "rejected" and why in row["detail"], (extra, row)
        assert out["served_requests"] == 0 and out["served_bytes"] == 0, out  # nothing fetched
        rej = dev.mqtt_events("update.rejected")[-1]
        assert rej["stage"] == "signature" and why in rej["reason"] and "\n" not in rej["reason"], rej
        last = dev.status()
        assert last["serving"]["version"] == 0
    assert fleet_status(broker.url)["dev-a"]["state"] == "rejected"
    assert not chunk_files(dev) and not dev.mqtt_events("update.started")

    r = cli("sign", pkg, "--key", key, "--fleet", FLEET)  # writes v1.safetensors.sig
    assert r.returncode == 0, r.stderr
    code, out = _push_json(broker.url, pkg)
    assert code == 0 and out["devices"][0]["state"] == "applied", out
    dev.wait_version(1)
    assert out["served_requests"] > 0

    # commands on the cmd topic: unsigned refused, signed (sign-command) applied
    c = TestClient(broker.url, "cmd-sender")
    c.subscribe(topics.cmd_response(FLEET, "dev-a"))

    def ask(req):
        c.publish(topics.cmd(FLEET, "dev-a"), json.dumps(req).encode())
        return json.loads(c.inbox.get(timeout=30).payload)
    try:
        resp = ask({"cmd": "rollback", "to": 0, "id": "u"})
        assert not resp["ok"] and "unsigned rollback command" in resp["error"], resp
        assert dev.serving() == 1
        r = cli("sign-command", "rollback", "--to", "0", "--key", key, "--fleet", FLEET)
        assert r.returncode == 0, r.stderr
        resp = ask({"cmd": "rollback", "to": 0, "id": "s", "sig": r.stdout})
        assert resp["ok"] and resp["serving"] == 0, resp
        resp = ask({"cmd": "rollback", "to": 0, "id": "r", "sig": r.stdout})  # the same again
        assert not resp["ok"] and "replayed command" in resp["error"], resp
    finally:
        c.close()
