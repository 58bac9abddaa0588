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
