"""The MQTT fleet channel end to end: a real mosquitto on loopback (plain + TLS listeners, its
config and certificates written here), real daemon processes with the MQTT channel on, the real
``refitd push / serve / rollout / fleet status`` CLI. No mocks."""
from __future__ import annotations

import json
import os
import signal

import pytest

from brokers import Mosquitto, make_certs
from daemon_helpers import fingerprint, rmtree, short_dir, wait_until
from fleet_helpers import Device, chain_weights, cli, cli_bg, write_chain_package, N_TENSORS, SIZE

FLEET = "site1"


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


@pytest.fixture
def work():
    d = short_dir("fleet")
    yield d
    rmtree(d)


@pytest.fixture
def devices():
    started = []
    yield started
    for d in started:
        d.stop()


def start_device(devices, work, chain, broker_url, dev, **kw) -> Device:
    d = Device(os.path.join(work, dev), chain[0], broker_url, FLEET, dev, **kw)
    devices.append(d)
    return d.start()


def push(broker_url, pkg, *extra, timeout=90):
    r = cli("push", pkg, "--fleet", FLEET, "--broker", broker_url, "--timeout", str(timeout - 15), *extra,
            timeout=timeout)
    return r


def fleet_status(broker_url):
    r = cli("fleet", "status", "--fleet", FLEET, "--broker", broker_url, "--json")
    assert r.returncode == 0, r.stderr
    return {row["device"]: row for row in json.loads(r.stdout)["devices"]}


def wait_online(broker_url, ids, timeout=30):
    wait_until(lambda: all((fleet_status(broker_url).get(i) or {}).get("online") for i in ids),
               timeout, interval=0.3, what="devices %s online" % (ids,))


def test_push_reaches_two_devices(broker, work, chain, devices):
    a = start_device(devices, work, chain, broker.url, "dev-a")
    b = start_device(devices, work, chain, broker.url, "dev-b")
    wait_online(broker.url, ["dev-a", "dev-b"])
    pkg = write_chain_package(os.path.join(work, "v1.safetensors"), chain[1], 1)
    r = push(broker.url, pkg, "--expect", "dev-a,dev-b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 applied" in r.stdout, r.stdout
    assert a.serving() == 1 and b.serving() == 1
    st = fleet_status(broker.url)
    for dev in ("dev-a", "dev-b"):
        assert st[dev]["serving"] == 1 and st[dev]["desired"] == 1, st
        assert st[dev]["online"] is True
    # the table printed by `fleet status` names both
    r = cli("fleet", "status", "--fleet", FLEET, "--broker", broker.url)
    assert r.returncode == 0 and "dev-a" in r.stdout and "dev-b" in r.stdout, r.stdout
