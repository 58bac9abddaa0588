"""The fleet's topic names. They are fixed: operators write broker ACLs against them
(docs/mqtt.md lists payloads, QoS and retain per topic)."""
from __future__ import annotations

import re

PREFIX = "refitd"
#: the shared-subscription group weight servers join, so replicas split the requests
SHARE_GROUP = "refitd-weights"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_segment(kind: str, value: str) -> str:
    """A fleet, group or device id must be one plain topic level (no wildcards, no '/')."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError("%s %r is not a plain topic level (letters, digits, _ . : - ; at most "
                         "128)" % (kind, value))
    return value


def device(fleet: str, dev: str, leaf: str) -> str:
    return "%s/%s/devices/%s/%s" % (PREFIX, fleet, dev, leaf)


def online(fleet: str, dev: str) -> str:
    return device(fleet, dev, "online")


def status(fleet: str, dev: str) -> str:
    return device(fleet, dev, "status")


def events(fleet: str, dev: str) -> str:
    return device(fleet, dev, "events")


def cmd(fleet: str, dev: str) -> str:
    return device(fleet, dev, "cmd")


def cmd_response(fleet: str, dev: str) -> str:
    return device(fleet, dev, "cmd/response")


def results(fleet: str, dev: str) -> str:
    return device(fleet, dev, "results")


def weights_response(fleet: str, dev: str) -> str:
    """Where a device's chunk responses arrive (MQTT 5 response topic and the 3.1.1 fallback)."""
    return device(fleet, dev, "weights/response")


def fleet_desired(fleet: str) -> str:
    return "%s/%s/desired" % (PREFIX, fleet)


def group_desired(fleet: str, group: str) -> str:
    return "%s/%s/groups/%s/desired" % (PREFIX, fleet, group)


def census(fleet: str) -> str:
    """Not retained: every online device answers by publishing its status and presence again,
    so an operator sees the fleet on brokers (RabbitMQ) that send retained messages to exact
    subscriptions only."""
    return "%s/%s/census" % (PREFIX, fleet)


def weights_request(fleet: str) -> str:
    return "%s/%s/weights/request" % (PREFIX, fleet)


def weights_request_filter(shared: bool, fleet: str = "+") -> str:
    """What weight servers subscribe to: every fleet's requests, shared between replicas."""
    t = weights_request(fleet)
    return "$share/%s/%s" % (SHARE_GROUP, t) if shared else t


def all_devices(fleet: str, leaf: str) -> str:
    """Operator-side wildcard over a fleet's devices (the devices themselves subscribe only to
    exact topics)."""
    return device(fleet, "+", leaf)
