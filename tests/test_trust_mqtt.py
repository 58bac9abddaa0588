"""The security tests on the MQTT channel: a real mosquitto on loopback, one real device daemon
that requires signatures on mqtt (trusting keys 0 and 1 of three), the real ``refitd push`` /
``sign`` / ``sign-command`` CLI, and a paho client that publishes crafted desired states and
commands and plays a rogue weight server. Every attack of the table (docs/security.md §4) is
refused with its reason in ``refitd status`` (channels.mqtt.last_update, or for a chunk the
transfer's last_rejected), in the local event log, on the device's events topic and in its
status topic; the serving version and the store stay as they were. The same list for the CLI
and the file drop is tests/test_trust_channels.py."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict

import pytest

from daemon_helpers import wait_until
from fleet_helpers import cli
from mqtt_attack import Attacker, objects_of


@pytest.fixture(scope="module")
def att():
    a = Attacker()
    try:
        a.start(trusted=(0, 1))
        for v, key in ((1, 0), (2, 1)):  # a history: the floor is 2, v1 and v2 in the store
            row = a.push(a.package("good%d" % v, v, sign=(key,)))
            assert row["state"] == "applied", row
        a.dev.wait_version(2)
        yield a
    finally:
        a.close()


def _status(att) -> Dict[str, Any]:
    r = att.dev.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _check_refused(att, deliver: Callable[[], Any], stage: str, words: str, event: str = "update.rejected"):
    """``deliver`` refused at ``stage`` with ``words`` in the reason, everywhere it shows."""
    dev = att.dev
    before, serving = att.store_hash(), dev.serving()
    n = len(att.events)
    deliver()
    ev = wait_until(lambda: next((e for e in att.events[n:] if e["event"] == event
                                  and words in str(e.get("reason"))), None), 60,
                    what="%s %r on the events topic" % (event, words))
    reason = ev["reason"]
    assert "\n" not in reason and ev.get("stage") == stage, ev
    assert any(e.get("reason") == reason for e in dev.mqtt_events(event)), "not in the local event log"
    if event == "update.chunk_rejected":  # the transfer goes on (fetching again): status says why
        last = _status(att)["channels"]["mqtt"]["last_rejected_chunk"]
        assert words in last["reason"] and "\n" not in last["reason"], last  # (more may have come since)
        wait_until(lambda: words in str(((att.status_doc or {}).get("last_rejected_chunk") or {}).get("reason")),
                   30, what="the rejected chunk on the status topic")
    else:
        last = _status(att)["channels"]["mqtt"]["last_update"]
        assert last["outcome"] == "rejected" and last["stage"] == stage and last["reason"] == reason, last
        wait_until(lambda: ((att.status_doc or {}).get("last_update") or {}).get("reason") == reason, 30,
                   what="the rejection on the status topic")
    assert dev.serving() == serving and _status(att)["serving"]["version"] == serving
    assert att.store_hash() == before
    return ev


def _push(name: str, version: int, variant: int, **kw):
    def go(att):
        row = att.push(att.package(name, version, variant, **kw))
        assert row["state"] == "rejected", row
    return go


def _publish(make: Callable[[Any], Any]):
    return lambda att: att.publish_desired(make(att))


def _mix_package(att):
    a = att.package("mixa", 3, 10)
    b = att.package("mixb", 3, 11, sign=())
    return att.desired_for(b, sig=open(a + ".sig", "rb").read())


def _rogue_manifest(att):
    """A's signed package and sha256, a manifest with B's tensor table, served by a rogue."""
    from refitd.fleet import manifest as M
    a, b = att.package("mma", 3, 12), att.package("mmb", 3, 13, sign=())
    ma, mb = M.build(open(a, "rb").read()), M.build(open(b, "rb").read())
    obj = json.loads(mb.raw)
    obj["package"] = {"sha256": ma.package_sha256, "size": ma.package_size}
    crafted = M.parse(M.canonical(obj))
    objs = dict(objects_of(b), **{crafted.sha256: crafted.raw})
    att.serve_rogue(lambda r: objs.get(r["obj"], b"")[r["off"]:r["off"] + r["n"]] or None)
    return att.desired_for(a, manifest__sha256=crafted.sha256, manifest__size=len(crafted.raw))


def _rogue_chunks(att, variant: int, answer: Callable[[bytes, bytes, Dict[str, Any]], bytes]):
    """The honest desired state and manifest of a signed package; every tensor chunk answered
    with ``answer(honest bytes, other version's bytes, request)``."""
    from refitd.fleet import manifest as M
    a, b = att.package("rca%d" % variant, 3, variant), att.package("rcb%d" % variant, 3, variant + 1, sign=())
    ma, mb = M.build(open(a, "rb").read()), M.build(open(b, "rb").read())
    honest, other = objects_of(a), objects_of(b)
    by_name = {t.sha256: u.sha256 for t, u in zip(ma.tensors, mb.tensors)}

    def rogue(r):
        obj, lo, hi = r["obj"], r["off"], r["off"] + r["n"]
        if obj == ma.sha256:
            return honest[obj][lo:hi]
        return answer(honest[obj][lo:hi], other[by_name[obj]][lo:hi], r)
    att.serve_rogue(rogue)
    return att.desired_for(a)


# (id, deliver, stage, words in the reason, event)
ATTACKS = [
    ("unsigned", _push("unsigned", 3, 1, sign=()), "signature",
     "unsigned package: the mqtt channel requires a signature", "update.rejected"),
    ("wrong-key", _push("stranger", 3, 2, sign=(2,)), "signature", "which is not trusted", "update.rejected"),
    ("expired-signature", _push("expired", 3, 3, expires="2020-01-01T00:00:00Z"), "signature",
     "expired at 2020-01-01T00:00:00Z", "update.rejected"),
    ("expired-desired", _publish(lambda att: att.desired_for(att.package("expd", 3, 4),
                                                            expires="2020-01-01T00:00:00Z")),
     "desired", "desired state expired at 2020-01-01T00:00:00Z", "update.rejected"),
    ("older-version", _push("older", 1, 5), "signature", "not above the version floor 2", "update.rejected"),
    ("same-version", _push("same", 2, 6), "signature", "not above the version floor 2", "update.rejected"),
    ("replayed-push", lambda att: att.publish_desired(next(
        p for p in att.desired_log if p and json.loads(p)["signed"]["version"] == 1)),
     "signature", "not above the version floor 2", "update.rejected"),
    ("other-fleet", _push("fleet", 3, 7, fleet="elsewhere"), "signature", 'signed for fleet "elsewhere"',
     "update.rejected"),
    ("mix-package", _publish(_mix_package), "signature", "does not match the signed", "update.rejected"),
    ("mix-manifest", _publish(_rogue_manifest), "manifest", "not the signed package's", "update.rejected"),
    ("mix-chunk", _publish(lambda att: _rogue_chunks(att, 20, lambda good, other, r: other)), None,
     "failed its sha256 check", "update.chunk_rejected"),
    ("oversize-announced", _publish(lambda att: att.desired_for(
        att.package("big", 3, 8), package__size=os.path.getsize(att.package("big", 3, 8)) + 4096)),
     "signature", "bytes, the signature says", "update.rejected"),
    ("oversize-manifest", _publish(lambda att: att.desired_for(att.package("bigm", 3, 9), manifest__size=1 << 30)),
     "signature", "more than the", "update.rejected"),
    ("oversize-during", _publish(lambda att: _rogue_chunks(att, 30, lambda good, other, r: good + b"\0" * 4096)),
     None, "answered", "update.chunk_rejected"),
    ("unsigned-command", lambda att: att.command({"cmd": "rollback", "to": 1, "id": "u"}), "command",
     "unsigned rollback command: the mqtt channel requires a signature", "command.rejected"),
    ("wrong-key-command", lambda att: att.command({"cmd": "rollback", "to": 1, "id": "w", "sig": cli(
        "sign-command", "rollback", "--to", "1", "--key", att.keys[2], "--fleet", "sec").stdout}),
     "command", "which is not trusted", "command.rejected"),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_over_mqtt(att, attack):
    cid, deliver, stage, words, event = attack
    try:
        ev = _check_refused(att, lambda: deliver(att), stage, words, event)
        assert ev.get("stage") == stage
    finally:
        att.serve_rogue(None)
        att.publish_desired(b"")  # cleared: a transfer a rogue kept busy is dropped


def test_signed_command_replayed_is_refused(att):
    """A signed rollback applies once; the same message again (a replay) is refused with its
    reason everywhere; the nonce outlives a restart of the daemon."""
    r = cli("sign-command", "rollback", "--to", "1", "--key", att.keys[0], "--fleet", "sec")
    assert r.returncode == 0, r.stderr
    req = {"cmd": "rollback", "to": 1, "id": "s", "sig": r.stdout}
    resp = att.command(req)
    assert resp["ok"] and resp["serving"] == 1, resp
    _check_refused(att, lambda: att.command(dict(req, id="r")), "command", "replayed command", "command.rejected")
    att.stop()
    att.start(trusted=(0, 1))
    _check_refused(att, lambda: att.command(dict(req, id="r2")), "command", "replayed command", "command.rejected")
    # the floor stayed at 2 across the rollback and the restart: only a push above it applies
    assert _status(att)["trust"]["floor"] == 2
    row = att.push(att.package("good3", 3, 40, sign=(0,)))
    assert row["state"] == "applied", row


def test_removed_key_and_threshold_over_mqtt(att):
    """Key 1 signed an applied version; removed from the config, its signature counts for
    nothing; with threshold 2 of keys 0 and 1, one signature is refused and two apply."""
    floor = _status(att)["trust"]["floor"]
    att.stop()
    att.start(trusted=(0,))
    _check_refused(att, lambda: _push("revoked", floor + 1, 41, sign=(1,))(att),
                   "signature", "which is not trusted")
    att.stop()
    att.start(trusted=(0, 1), threshold=2)
    _check_refused(att, lambda: _push("one-of-two", floor + 1, 42, sign=(0,))(att),
                   "signature", "signed by 1 trusted key; 2 of 2")
    row = att.push(att.package("two-of-two", floor + 1, 43, sign=(0, 1)))
    assert row["state"] == "applied", row
    att.dev.wait_version(floor + 1)


def test_floor_survives_restart_and_a_deleted_store_over_mqtt(att):
    """The floor the MQTT-delivered updates raised holds after a restart and after the store
    is lost (re-seeded from the model file, the channel's record of past updates gone with it):
    a signed push at or below it is refused, one above it applies."""
    import shutil
    floor = _status(att)["trust"]["floor"]
    assert floor is not None and att.dev.serving() == floor
    att.stop()
    att.start(trusted=(0, 1))
    assert _status(att)["trust"]["floor"] == floor
    _check_refused(att, lambda: _push("after-restart", floor, 50, sign=(0,))(att),
                   "signature", "not above the version floor %d" % floor)
    att.stop()
    shutil.rmtree(os.path.join(att.dev_state(), "store"))
    att.start(trusted=(0, 1))
    st = _status(att)
    assert st["serving"]["version"] == 0 and st["store"]["versions"] == [0] and st["trust"]["floor"] == floor, st
    _check_refused(att, lambda: att.publish_desired(next(  # the v1 announcement, replayed
        p for p in att.desired_log if p and json.loads(p)["signed"]["version"] == 1)),
        "signature", "not above the version floor %d" % floor)
    _check_refused(att, lambda: _push("after-loss", floor - 1, 51, sign=(0,))(att),
                   "signature", "not above the version floor %d" % floor)
    row = att.push(att.package("above", floor + 1, 52, sign=(0,)))
    assert row["state"] == "applied", row
    assert _status(att)["trust"]["floor"] == floor + 1
