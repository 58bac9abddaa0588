"""A test supervisor that speaks systemd's side of sd_notify: it binds a datagram socket, starts
the service with NOTIFY_SOCKET and WATCHDOG_USEC, and applies WatchdogSec= semantics as systemd
does: once READY=1 has come, a gap of more than WatchdogSec between WATCHDOG=1 datagrams gets
the process SIGABRT, and Restart=on-failure starts it again after RestartSec. Real datagrams,
real processes; only systemd itself is replaced (this machine runs no systemd as PID 1)."""
from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from typing import Dict, List, Optional


class Supervisor:
    def __init__(self, argv: List[str], env: Dict[str, str], watchdog_sec: float, sock_path: str,
                 log_path: str, restart_sec: float = 0.2, first_env: Optional[Dict[str, str]] = None):
        self.argv, self.env, self.watchdog_sec = argv, env, watchdog_sec
        self.restart_sec = restart_sec
        self.first_env = first_env or {}  # extra variables for the first start only
        self.sock_path, self.log_path = sock_path, log_path
        self.events: List[tuple] = []  # (monotonic time, what, detail)
        self.starts = 0
        self.proc: Optional[subprocess.Popen] = None
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(sock_path)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _note(self, what: str, detail: str = "") -> None:
        self.events.append((time.monotonic(), what, detail))

    def _spawn(self) -> None:
        env = dict(self.env)
        if self.starts == 0:
            env.update(self.first_env)
        env["NOTIFY_SOCKET"] = self.sock_path
        env["WATCHDOG_USEC"] = str(int(self.watchdog_sec * 1e6))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        self._note("started", str(self.proc.pid))

    def start(self) -> "Supervisor":
        self._spawn()
        self._thread.start()
        return self

    def _run(self) -> None:
        ready, last_ping = False, 0.0
        while not self._stop.is_set():
            try:
                msg = self._sock.recv(4096).decode("utf-8", "replace")
                lines = msg.split("\n")
                if "READY=1" in lines:
                    ready, last_ping = True, time.monotonic()
                    self._note("ready")
                if "WATCHDOG=1" in lines:
                    last_ping = time.monotonic()
                    self._note("ping")
            except socket.timeout:
                pass
            p = self.proc
            if p is None:
                continue
            code = p.poll()
            if code is not None:
                self._note("exited", str(code))
                ready = False
                if code != 0 and not self._stop.is_set():  # Restart=on-failure
                    time.sleep(self.restart_sec)
                    self._spawn()
                else:
                    self.proc = None
                continue
            if ready and time.monotonic() - last_ping > self.watchdog_sec:
                self._note("watchdog-timeout", str(p.pid))
                p.send_signal(signal.SIGABRT)  # systemd's WatchdogSignal= default
                ready = False
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    def count(self, what: str) -> int:
        return sum(1 for e in self.events if e[1] == what)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._sock.close()
