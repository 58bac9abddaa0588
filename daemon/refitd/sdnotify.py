"""Dependency-free sd_notify (the systemd notification protocol), after nobodd's systemd.py.

The protocol is one datagram of newline-separated ``KEY=value`` lines sent to the Unix socket
named by $NOTIFY_SOCKET (a leading "@" means the abstract namespace). ``Notifier.from_env()``
pops NOTIFY_SOCKET (and WATCHDOG_USEC/WATCHDOG_PID) from the environment so child processes do
not inherit them; without NOTIFY_SOCKET every call is a no-op.
"""
from __future__ import annotations

import os
import socket
from typing import Optional


class Notifier:
    def __init__(self, address: Optional[str] = None, watchdog_usec: int = 0):
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: Optional[socket.socket] = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, environ=None) -> "Notifier":
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        watchdog = 0
        if usec:
            try:
                watchdog = int(usec)
            except ValueError:
                watchdog = 0
            # WATCHDOG_PID names the process the watchdog is meant for; ignore it otherwise.
            if pid:
                try:
                    if int(pid) != os.getpid():
                        watchdog = 0
                except ValueError:
                    watchdog = 0
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between WATCHDOG=1 pings (half the configured timeout), or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec > 0 else None

    def notify(self, *lines: str) -> bool:
        if self._sock is None or not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), addr)
            return True
        except OSError:
            return False

    def ready(self, status: Optional[str] = None) -> bool:
        lines = ["READY=1", "MAINPID=%d" % os.getpid()]
        if status:
            lines.append("STATUS=" + status)
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text.replace("\n", " "))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append("STATUS=" + status)
        return self.notify(*lines)

    def watchdog_ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
