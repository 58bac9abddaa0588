"""Channels: where deliveries come from (base.py has the contract). One module per channel,
listed here once; importing it registers it."""
from __future__ import annotations

import importlib

CHANNEL_MODULES = ("watch", "control")


def load_all() -> None:
    for name in CHANNEL_MODULES:
        importlib.import_module("%s.%s" % (__name__, name))
