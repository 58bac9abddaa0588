"""The hostile corpus (tests/hostile.py, >= 200 inputs) replayed against every channel of one
real daemon: packages and signatures by the CLI's control-socket apply (descriptors, as
`refitd apply` sends them) and by the file drop; raw control-socket requests; config files.
None crashes the daemon, none changes the store or the serving version, and each package gets
a specific one-line rejection in status (last_update) and in the events."""
from __future__ import annotations

import json
import os
import socket

import pytest

from daemon_helpers import (DaemonProc, base_config, rmtree, seed_package, short_dir, tree_hash,
                            wait_until, write_config)
from hostile import config_documents, control_lines, package_cases, signature_cases

from refitd import config as C
from refitd.control import call
from refitd.signing import generate_key, keyid_of, public_key_text

GOLDEN = [{"type": "golden", "inputs": {"x": 1.0}, "expect": {"y": 45.0}, "atol": 45.5, "rtol": 0.0}]
FP = None


def _fp():
    global FP
    if FP is None:
        from daemon_helpers import fingerprint
        FP = fingerprint()
    return FP


KEY, STRANGER = generate_key(), generate_key()
PACKAGES = package_cases(_fp())
def _package_bytes(version: int) -> bytes:
    d = short_dir("hc")
    try:
        with open(seed_package(os.path.join(d, "p"), 4.0, version, _fp()), "rb") as f:
            return f.read()
    finally:
        rmtree(d)


SIGNED_BASE = _package_bytes(10)
SIGNATURES = signature_cases(_fp(), SIGNED_BASE, KEY, STRANGER)
LINES = control_lines(KEY)
CONFIGS = config_documents()


def test_corpus_has_at_least_200_hostile_inputs():
    n = len(PACKAGES) + len(SIGNATURES) + len(LINES) + len(CONFIGS)
    assert n >= 200, n
    ids = [kind + c[0] for kind, cases in (("pkg:", PACKAGES), ("pkg:", SIGNATURES), ("req:", LINES),
                                           ("cfg:", CONFIGS)) for c in cases]
    assert len(ids) == len(set(ids))


@pytest.fixture(scope="module")
def box():
    state = short_dir("hcd")
    sec = {"require_signature": False, "trusted_keys": {keyid_of(KEY.public_key()): public_key_text(KEY)}}
    cfg = base_config(state, health={"checks": GOLDEN}, security=sec,
                      store={"path": os.path.join(state, "store"), "keep": 10, "max_package_bytes": 64 * 1024})
    d = DaemonProc(write_config(state, cfg), cfg["control"]["socket"]).start()
    for v in (1, 2, 3):
        r = call(cfg["control"]["socket"], {"cmd": "apply", "path": seed_package(os.path.join(state, "v%d" % v), v, v, _fp())})
        assert r["ok"], r
    yield {"d": d, "cfg": cfg, "state": state, "n": [0]}
    assert d.proc.poll() is None, "the daemon died during the corpus:\n" + d.log()
    assert d.stop() == 0
    rmtree(state)


def _deliver(box, channel, cid, data, sig):
    d, state = box["d"], box["state"]
    box["n"][0] += 1
    name = "%s-%d" % (cid, box["n"][0])
    before = d.status()["last_update"]
    if channel == "cli":
        path = os.path.join(state, "out", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        fds = [os.open(path, os.O_RDONLY)]
        if sig is not None:
            with open(path + ".sig", "wb") as f:
                f.write(sig)
            fds.append(os.open(path + ".sig", os.O_RDONLY))
        try:
            resp = call(d.socket, {"cmd": "apply", "path": path}, timeout=60, fds=tuple(fds))
        finally:
            for fd in fds:
                os.close(fd)
        assert resp["ok"] is False and "\n" not in resp["error"], resp
    else:
        watch = box["cfg"]["watch"]["path"]
        if sig is not None:
            with open(os.path.join(watch, "." + name + ".sig"), "wb") as f:
                f.write(sig)
            os.rename(os.path.join(watch, "." + name + ".sig"), os.path.join(watch, name + ".sig"))
        with open(os.path.join(watch, "." + name), "wb") as f:
            f.write(data)
        os.rename(os.path.join(watch, "." + name), os.path.join(watch, name))
    return wait_until(lambda: (lambda l: l if l != before else None)(d.status()["last_update"]),
                      timeout=30, what="the outcome of %s" % name)


def _check_refused(box, last):
    assert last["ok"] is False, last
    assert last["reason"] and "\n" not in last["reason"] and not last["reason"].startswith("internal"), last
    assert last["stage"] not in (None, "internal", "done"), last
    ev = [e for e in box["d"].events() if e.get("event") == "update.rejected"]
    assert ev and ev[-1]["reason"] == last["reason"] and ev[-1]["stage"] == last["stage"]
    st = box["d"].status()
    assert st["serving"]["version"] == 3 and st["store"]["current"] == 3


@pytest.mark.parametrize("channel", ["cli", "file"])
def test_hostile_packages_and_signatures_on_every_channel(box, channel):
    store = os.path.join(box["state"], "store")
    before = tree_hash(store)
    seen = {}
    for cid, data in PACKAGES:
        seen[cid] = _deliver(box, channel, cid, data, None)
        _check_refused(box, seen[cid])
    for cid, data, sig in SIGNATURES:
        seen[cid] = _deliver(box, channel, cid, data, sig)
        _check_refused(box, seen[cid])
        want = "parse" if cid.startswith("signed-") else "signature"  # signed garbage reaches the parser
        assert seen[cid]["stage"] == want, (cid, seen[cid])
    assert tree_hash(store) == before
    # specific: the rejections are not one generic line
    assert len({l["reason"] for l in seen.values()}) >= 0.8 * len(seen)


def test_hostile_control_requests(box):
    store = os.path.join(box["state"], "store")
    before = tree_hash(store)
    for cid, line in LINES:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(box["d"].socket)
            s.sendall(line + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        resp = json.loads(buf)
        assert resp["ok"] is False and resp["error"] and "\n" not in resp["error"], (cid, resp)
        assert "internal error" not in resp["error"], (cid, resp)
    st = box["d"].status()
    assert st["serving"]["version"] == 3 and tree_hash(store) == before


def test_hostile_config_documents(tmp_path):
    for cid, text in CONFIGS:
        path = tmp_path / (cid + ".yaml")
        path.write_text(text)
        with pytest.raises(C.ConfigError) as e:
            C.load_config(str(path))
        report = e.value.report()
        assert report.strip() and "Traceback" not in report, (cid, report)


# ---- the same corpus through MQTT -----------------------------------------------------------
# One device daemon on a real mosquitto (tests/mqtt_attack.py), signatures optional on mqtt so
# hostile bytes reach the parser: packages and signatures announced in desired states and served
# by a crafted weight server (a real one offers only what parses), malformed desired states,
# manifests, chunk responses and commands published to the device's topics.

def _mqtt_cases():
    """(id, kind, payload) for everything the MQTT channel takes in."""
    from hostile import desired_cases, manifest_cases, response_cases
    from mqtt_attack import FLEET
    out = [(cid, "package", (data, None)) for cid, data in PACKAGES]
    out += [(cid, "package", (data, sig)) for cid, data, sig in SIGNATURES]
    out += [(cid, "desired", raw) for cid, raw in desired_cases(_fp(), FLEET)]
    out += [(cid, "manifest", edit) for cid, edit in manifest_cases(_fp())]
    out += [(cid, "response", raw) for cid, raw in response_cases()]
    out += [("cmd-" + cid, "command", line) for cid, line in LINES]
    return out


MQTT_CASES = _mqtt_cases()
#: the default run replays every 4th input of each kind (and at least one); REFITD_LONG=1 all
MQTT_SAMPLE = [c for kind in dict.fromkeys(k for _i, k, _p in MQTT_CASES)
               for c in [c for c in MQTT_CASES if c[1] == kind][::4]]


def test_mqtt_corpus_counts():
    assert len(MQTT_CASES) >= 200, len(MQTT_CASES)
    assert len({c[0] for c in MQTT_CASES}) == len(MQTT_CASES)
    assert {c[1] for c in MQTT_SAMPLE} == {c[1] for c in MQTT_CASES}


@pytest.fixture(scope="module")
def mbox():
    from mqtt_attack import Attacker
    from daemon_helpers import DEMO_MODEL
    att = Attacker(n_keys=1, model=DEMO_MODEL, health={"checks": GOLDEN})
    try:
        att.start(trusted=(), require_signature=False,
                  trusted_keys={keyid_of(KEY.public_key()): public_key_text(KEY)})
        for v in (1, 2, 3):
            r = call(att.dev.socket, {"cmd": "apply", "path": seed_package(os.path.join(att.work, "v%d" % v), v, v, _fp())})
            assert r["ok"], r
        yield att
        assert att.dev.proc.poll() is None, "the daemon died during the corpus:\n" + att.dev.log()
    finally:
        att.close()


def _mqtt_last(att):
    return att.dev.status()["channels"]["mqtt"]


def _via_mqtt(att, cid, kind, payload):
    """Sends one input; returns the refusal as the device's status shows it."""
    import base64
    import hashlib
    from hostile import as_transfer, desired_doc
    from mqtt_attack import FLEET
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    before = _mqtt_last(att)
    key = "last_update"
    if kind == "package":
        data, sig = payload
        raw, objs = as_transfer(data)
        att.serve_objects(objs)
        att.publish_desired(desired_doc(_fp(), FLEET, (sha(data), len(data)), (sha(raw), len(raw)),
                                        signature=base64.b64encode(sig).decode() if sig is not None else None))
    elif kind == "desired":
        att.publish_desired(payload)
    elif kind == "manifest":
        from refitd.fleet import manifest as M
        good = M.build(_package_bytes(11))
        served = payload(good.raw, json.loads(good.raw))
        fake = os.urandom(32).hex()  # a package never tried before: the outcome is this manifest's
        att.serve_objects({sha(served): served})
        att.publish_desired(desired_doc(_fp(), FLEET, (fake, good.package_size), (sha(served), len(served)),
                                        version=11))
    elif kind == "response":
        key = "last_rejected_chunk"
        att.client.publish(att.topic("weights/response"), payload)
    else:
        resp = att.command(payload)
        assert resp["ok"] is False and resp["error"] and "\n" not in resp["error"], (cid, resp)
    return wait_until(lambda: (lambda m: m[key] if m[key] != before[key] else None)(_mqtt_last(att)),
                      timeout=30, what="the device's refusal of %s" % cid), key


def _replay_over_mqtt(att, cases):
    from mqtt_attack import STORE_SKIP
    before = tree_hash(os.path.join(att.dev.state_dir, "store"), skip=STORE_SKIP)
    reasons = {}
    for cid, kind, payload in cases:
        n = len(att.events)
        try:
            last, key = _via_mqtt(att, cid, kind, payload)
        finally:
            att.serve_rogue(None)
        reason = last["reason"]
        assert reason and "\n" not in reason and not reason.startswith("internal"), (cid, last)
        if key == "last_update":
            assert last["outcome"] == "rejected" and last["stage"] not in (None, "internal", "done"), (cid, last)
        event = {"last_update": ("update.rejected", "command.rejected"), "last_rejected_chunk": ("update.chunk_rejected",)}[key]
        wait_until(lambda: [e for e in att.events[n:] if e["event"] in event and e["reason"] == reason], 30,
                   what="%s's refusal on the events topic" % cid)
        local = [e for e in att.dev.events() if e.get("event") in ["mqtt." + x for x in event]]
        assert local and local[-1]["reason"] == reason, (cid, local[-1:])
        reasons[cid] = reason
        if kind == "package" and payload[1] is None:  # the bytes got through to the pipeline
            assert last["stage"] not in ("desired", "manifest", "transfer", "signature"), (cid, last)
        st = att.dev.status()
        assert st["serving"]["version"] == 3 and st["store"]["current"] == 3, cid
    assert tree_hash(os.path.join(att.dev.state_dir, "store"), skip=STORE_SKIP) == before
    assert len(set(reasons.values())) >= 0.6 * len(reasons), sorted(set(reasons.values()))[:20]
    att.publish_desired(b"")


def test_hostile_corpus_sample_over_mqtt(mbox):
    _replay_over_mqtt(mbox, MQTT_SAMPLE)


@pytest.mark.slow
def test_hostile_corpus_whole_over_mqtt(mbox):
    _replay_over_mqtt(mbox, [c for c in MQTT_CASES if c not in MQTT_SAMPLE])
