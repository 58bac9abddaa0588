"""The channel base: what every channel (file drop, control socket, MQTT) shares, once.

A channel turns what arrives on it into ``Delivery`` objects and hands them to the pipeline
through ``Channel.deliver``, which passes the ``Gate`` (shutdown waits for deliveries in flight
and refuses new ones) and then calls ``report(delivery, outcome)``, where the channel answers
its sender (the watch channel moves the file to applied/ or rejected/, the control socket writes
the response line). What the daemon remembers about updates (``status``' last update) is kept
by one pipeline listener, not per channel.

A channel module defines one subclass, registered once with ``@register("name")``; the daemon
builds every registered channel with ``cls.from_config(cfg, ctx)`` (None: not configured) and
starts them in ``order`` (the control socket last: once the CLI reaches the daemon, everything
runs). docs/design.md has the steps for adding one.
"""
from __future__ import annotations

import abc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Type

from ..delivery import Delivery, Origin
from ..plugins import plugin, plugins

__all__ = ["Channel", "ChannelContext", "Gate", "Stopping", "register", "registered"]


class Stopping(Exception):
    """A delivery arrived while the daemon is stopping."""


class Gate:
    """Counts deliveries (and inferences) in flight so shutdown can wait for them; once closed
    it refuses new ones with ``Stopping``."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        return self._busy

    @contextmanager
    def enter(self) -> Iterator[None]:
        with self._cv:
            if self._closed:
                raise Stopping("the daemon is stopping")
            self._busy += 1
        try:
            yield
        finally:
            with self._cv:
                self._busy -= 1
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True

    def drain(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for what is in flight; True when nothing is."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy and time.monotonic() < deadline:
                self._cv.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            return not self._busy


@dataclass
class ChannelContext:
    """What a channel is built with: the pipeline it delivers to, the event log, the gate, and
    ``services`` (the daemon: status, versions, infer, reload for the control socket)."""

    pipeline: Any
    events: Any
    gate: Gate
    services: Any = None


class Channel(abc.ABC):
    #: the registry key (set by ``register``)
    name = "?"
    #: the origin channel name (``source`` in events and manifests); the key when not set
    source: Optional[str] = None
    #: start order: lower first
    order = 50

    def __init__(self, pipeline: Any, events: Any, gate: Optional[Gate] = None):
        self.pipeline = pipeline
        self.events = events
        self.gate = gate if gate is not None else Gate()

    @classmethod
    def from_config(cls, cfg: Any, ctx: ChannelContext) -> Optional["Channel"]:
        """The channel the config asks for (built with ``ctx.gate``), or None when it is not
        configured."""
        raise NotImplementedError

    def describe(self) -> str:
        """What it listens on, for start-up errors ("cannot start <describe()>: ...")."""
        return self.name

    @abc.abstractmethod
    def start(self) -> None:
        """Starts taking deliveries; raises OSError (or AlreadyRunning) naming what failed."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stops taking deliveries; one in progress finishes."""

    def state(self) -> Optional[Dict[str, Any]]:
        """What ``refitd status`` shows of this channel under ``channels`` (None: nothing beyond
        the daemon's own fields)."""
        return None

    def origin(self, where: Optional[str] = None, peer: Optional[str] = None,
               id: Optional[str] = None) -> Origin:
        return Origin(self.source or self.name, where=where, peer=peer, id=id)

    def deliver(self, delivery: Delivery) -> Any:
        """Hands ``delivery`` to the pipeline (through the gate) and reports its outcome."""
        with self.gate.enter():
            outcome = self.pipeline.deliver(delivery)
        self.report(delivery, outcome)
        return outcome

    def report(self, delivery: Delivery, outcome: Any) -> None:
        """Tells the sender (the default: nothing to tell)."""


def register(name: str) -> Callable[[Type[Channel]], Type[Channel]]:
    """Declares the channel ``name`` in the one plugin registry (plugins.py, kind ``channel``)."""
    def deco(cls: Type[Channel]) -> Type[Channel]:
        plugin("channel", name, None)(cls)
        cls.name = name
        return cls
    return deco


def registered() -> List[Type[Channel]]:
    """Every registered channel class, in start order."""
    return sorted(plugins("channel").values(), key=lambda c: (c.order, c.name))  # type: ignore[attr-defined]
