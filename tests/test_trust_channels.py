"""Signatures and the defences on every channel a real daemon has (the CLI through the control
socket, the file drop): unsigned, wrongly signed, revoked key, below threshold, expired, older
version, another package's signature (mix-and-match), oversize, replayed command; each refused
with its reason in status and events, the store and the serving version unchanged; the version
floor survives a restart and a store that is deleted and re-seeded. The same list over MQTT is
tests/test_trust_mqtt.py; docs/security.md §4 is the table of attacks x channels x tests."""
from __future__ import annotations

import os
import shutil

import pytest

from daemon_helpers import (DaemonProc, base_config, run_cli, seed_package, tree_hash, wait_until,
                            write_config)

from refitd.signing import generate_key, keyid_of, public_key_text, write_key_pair


class Box:
    """A daemon that requires signatures on every channel, and the keys to sign for it."""

    def __init__(self, state, n_keys=2, threshold=1, trusted=None, **security):
        self.state = state
        self.keys = []
        for i in range(n_keys):
            path = os.path.join(state, "k%d" % i)
            if not os.path.exists(path):
                write_key_pair(path, generate_key())
            self.keys.append(path)
        self.configure(trusted if trusted is not None else range(n_keys), threshold, **security)

    def configure(self, trusted, threshold=1, **security):
        from refitd.signing import load_private_key
        keys = {}
        for i in trusted:
            k = load_private_key(self.keys[i])
            keys[keyid_of(k.public_key())] = public_key_text(k)
        sec = {"require_signature": True, "trusted_keys": keys, "threshold": threshold}
        sec.update(security)
        self.cfg = base_config(self.state, security=sec,
                               store={"path": os.path.join(self.state, "store"), "keep": 3,
                                      "max_package_bytes": 4096})
        path = write_config(self.state, self.cfg)
        self.d = DaemonProc(path, self.cfg["control"]["socket"])

    def start(self):
        self.d.start()
        self.fp = self.d.status()["serving"]["fingerprint"]
        return self

    def package(self, name, version, *key_idx, k=None, sign=True, **sign_args):
        path = os.path.join(self.state, "pk", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        seed_package(path, float(version if k is None else k), version, self.fp)
        if sign:
            args = ["sign", path]
            for i in key_idx or (0,):
                args += ["--key", self.keys[i]]
            for a, v in sign_args.items():
                args += ["--" + a.replace("_", "-"), str(v)]
            r = run_cli(*args)
            assert r.returncode == 0, r.stderr
        return path

    def deliver(self, channel, path):
        """Sends the package (and its .sig) by ``channel``; returns status.last_update."""
        before = self.d.status()["last_update"]
        if channel == "cli":
            self.d.cli("apply", path)
        else:
            watch = self.cfg["watch"]["path"]
            name = os.path.basename(path)
            if os.path.exists(path + ".sig"):
                shutil.copy(path + ".sig", os.path.join(watch, name + ".sig"))
            shutil.copy(path, os.path.join(watch, "." + name))
            os.rename(os.path.join(watch, "." + name), os.path.join(watch, name))
        return wait_until(lambda: self._changed(before), what="the outcome of %s" % path)

    def _changed(self, before):
        last = self.d.status()["last_update"]
        return last if last != before else None


def _refused(box, channel, path, stage, words):
    store = os.path.join(box.state, "store")
    before, serving = tree_hash(store, skip=("lock", "history.jsonl")), box.d.status()["serving"]["version"]
    last = box.deliver(channel, path)
    assert last["ok"] is False and last["stage"] == stage, last
    assert words in last["reason"], (words, last["reason"])
    assert "\n" not in last["reason"]
    ev = [e for e in box.d.events() if e.get("event") == "update.rejected"][-1]
    assert ev["stage"] == stage and ev["reason"] == last["reason"]
    assert box.d.status()["serving"]["version"] == serving
    assert tree_hash(store, skip=("lock", "history.jsonl")) == before


@pytest.mark.parametrize("channel", ["cli", "file"])
def test_every_bad_signature_is_refused_on_the_channel(state, channel):
    box = Box(state, n_keys=3, trusted=(0, 1)).start()
    try:
        good = box.package("good", 2)
        assert box.deliver(channel, good)["ok"] is True
        _refused(box, channel, good, "signature", "not above the version floor 2")  # replayed as is
        _refused(box, channel, box.package("unsigned", 3, sign=False), "signature",
                 "unsigned package: the %s channel requires a signature" % channel)
        _refused(box, channel, box.package("stranger", 3, 2), "signature", "which is not trusted")
        _refused(box, channel, box.package("expired", 3, expires="2020-01-01T00:00:00Z"),
                 "signature", "expired at 2020-01-01T00:00:00Z")
        _refused(box, channel, box.package("older", 1), "signature", "not above the version floor 2")
        _refused(box, channel, box.package("same", 2, k=7), "signature", "not above the version floor 2")
        # mix-and-match: a valid signature of one package beside another package's bytes
        a, b = box.package("mixa", 3), box.package("mixb", 4)
        shutil.copy(a + ".sig", b + ".sig")
        _refused(box, channel, b, "signature", "does not match the signed")
        _refused(box, channel, box.package("fleet", 3, fleet="elsewhere"), "signature",
                 'signed for fleet "elsewhere"')
        # oversize: refused on its size before a byte is read or a signature looked at
        big = box.package("big", 3)
        with open(big, "ab") as f:
            f.write(b"\0" * 8192)
        _refused(box, channel, big, "size", "package too large")
        assert box.deliver(channel, box.package("next", 3, 1))["ok"] is True  # the other trusted key
        assert box.d.status()["trust"]["floor"] == 3
    finally:
        assert box.d.stop() == 0


@pytest.mark.parametrize("channel", ["cli", "file"])
def test_removed_key_and_threshold(state, channel):
    box = Box(state, n_keys=2).start()
    try:
        assert box.deliver(channel, box.package("by1", 1, 1))["ok"] is True
    finally:
        assert box.d.stop() == 0
    box.configure(trusted=(0,))  # key 1 removed: revoked
    box.start()
    try:
        _refused(box, channel, box.package("revoked", 2, 1), "signature", "which is not trusted")
    finally:
        assert box.d.stop() == 0
    box.configure(trusted=(0, 1), threshold=2)
    box.start()
    try:
        _refused(box, channel, box.package("one", 2, 0), "signature", "signed by 1 trusted key; 2 of 2")
        assert box.deliver(channel, box.package("two", 2, 0, 1))["ok"] is True
    finally:
        assert box.d.stop() == 0


def _box_with_versions(state, *versions, stop=False):
    box = Box(state, n_keys=1).start()
    try:
        for v in versions:
            assert box.deliver("cli", box.package("v%d" % v, v))["ok"] is True
    finally:
        if stop:
            assert box.d.stop() == 0
    return box


def test_floor_survives_restart_and_a_deleted_store(state):
    box = _box_with_versions(state, 1, 2, stop=True)
    shutil.rmtree(os.path.join(state, "store"))  # a store lost (or recovered to something older)
    box.start()
    try:
        assert box.d.status()["serving"]["version"] == 0  # re-seeded from the model file
        assert box.d.status()["trust"]["floor"] == 2
        _refused(box, "cli", box.package("again1", 1), "signature", "not above the version floor 2")
        # unsigned-allowed channels are held to the floor too, after parsing
    finally:
        assert box.d.stop() == 0
    box.configure(trusted=(0,), require_signature=False)
    box.start()
    try:
        _refused(box, "file", box.package("plain", 2, sign=False), "version",
                 "not above the version floor 2")
        last = box.deliver("file", box.package("v3", 3, sign=False))
        assert last["ok"] is True, last
    finally:
        assert box.d.stop() == 0


def test_signed_rollback_command_and_replay(state):
    box = _box_with_versions(state, 1, 2)
    try:
        r = box.d.cli("rollback", "--to", "1")
        assert r.returncode == 1 and "unsigned rollback command: the cli channel requires" in r.stderr
        sig = os.path.join(state, "rb1.json")
        assert run_cli("sign-command", "rollback", "--to", "1", "--key", box.keys[0], "-o", sig).returncode == 0
        r = box.d.cli("rollback", "--to", "1", "--sig", sig)
        assert r.returncode == 0, r.stderr
        assert box.d.status()["serving"]["version"] == 1  # below the floor: by signed command only
        r = box.d.cli("rollback", "--to", "1", "--sig", sig)
        assert r.returncode == 1 and "replayed command" in r.stderr, r.stderr
        r = box.d.cli("rollback", "--to", "2", "--sig", sig)
        assert r.returncode == 1 and "signed rollback to=1, the delivery asks to=2" in r.stderr
    finally:
        assert box.d.stop() == 0
    box.start()
    try:  # the nonce outlives the restart
        r = box.d.cli("rollback", "--to", "1", "--sig", sig)
        assert r.returncode == 1 and "replayed command" in r.stderr, r.stderr
        assert any(e.get("event") == "update.rollback_failed" and "replayed" in e.get("reason", "")
                   for e in box.d.events())
    finally:
        assert box.d.stop() == 0


def test_offline_trust_commands_print_json(tmp_path):
    """keygen, sign and verify with --json: one JSON object each, naming what they did."""
    import json
    key = str(tmp_path / "k")
    r = run_cli("keygen", "-o", key, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["public_key"] == key + ".pub" and out["trusted_key"].startswith("ed25519:")
    pkg = str(tmp_path / "w4.safetensors")
    fp = "sha256:" + "ab" * 32
    seed_package(pkg, 4.0, 4, fp)
    r = run_cli("sign", pkg, "--key", key, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["signature"] == pkg + ".sig" and out["version"] == 4, r.stderr
    r = run_cli("verify", pkg, "--trust", key + ".pub", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["ok"] and out["version"] == 4 and out["model"] == fp, r.stderr
