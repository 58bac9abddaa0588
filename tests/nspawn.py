"""A real systemd to run the shipped unit under: ``systemd-nspawn --volatile=yes -D / -b`` boots
this machine's own /usr as a container with an empty, in-memory /etc and /var (so no host
service is started and nothing of the host is written), PID 1 the real systemd. The shipped
``systemd/refitd.service`` (with its sysusers.d and tmpfiles.d files) goes into the container's
/etc with a test drop-in (the venv's python as ExecStart, a short WatchdogSec, an optional fault
for the first start only); an observer unit waits for what the test wants, writes
``systemctl show`` / ``journalctl`` / ``refitd status`` into /out, and powers the container
off. Needs root and the systemd-container package (scripts/setup.sh installs it); PID 1 of the
machine need not be systemd."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NSPAWN = "/usr/bin/systemd-nspawn"

OBSERVER = """#!/bin/sh
%(before)s
# up to 90 s for the unit to be restarted (NRestarts >= 1) and active again
i=0
while [ $i -lt 900 ]; do
  n=$(systemctl show refitd -p NRestarts --value)
  if [ "${n:-0}" -ge 1 ] && [ "$(systemctl is-active refitd)" = active ]; then break; fi
  sleep 0.1; i=$((i+1))
done
sleep %(settle)s  # the restarted process must keep pinging for more than two watchdog periods
systemctl show refitd -p NRestarts -p ActiveState -p SubState -p Result -p WatchdogUSec -p MainPID > /out/show.txt
journalctl -u refitd -o cat --no-pager > /out/journal.txt 2>&1
%(python)s -m refitd status --json --socket /run/refitd/control.sock > /out/status.json 2> /out/status.err
systemctl poweroff
"""


def interpreter_home() -> str:
    """Where the venv's python really lives (outside /usr it must be bound into the container)."""
    return os.path.realpath(sys.base_prefix)


def available() -> Optional[str]:
    """None if a container can be booted here, else why not (one line)."""
    if not os.path.exists(NSPAWN):
        return "%s missing: scripts/setup.sh installs the systemd-container package" % NSPAWN
    if os.geteuid() != 0:
        return "booting a systemd container needs root"
    return None


APPLY = """# the package in /out applied through the control socket once the service is up
i=0
until [ -S /run/refitd/control.sock ] || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done
%(python)s -m refitd apply /out/%(name)s --socket /run/refitd/control.sock > /out/apply.txt 2>&1
"""


def layout(work: str, config_text: str, watchdog_sec: float, fault: Optional[Dict[str, str]],
           settle: float, apply: Optional[str] = None) -> Dict[str, str]:
    """The container's bind mounts (host dir -> container path) under ``work``; ``apply``: a
    package the observer applies first (written as the service's user, as on a real box)."""
    d = {name: os.path.join(work, name) for name in
         ("units", "sysusers", "tmpfiles", "etc-refitd", "state", "out")}
    for p in d.values():
        os.makedirs(p, exist_ok=True)
    units = d["units"]
    shutil.copy(os.path.join(ROOT, "systemd", "refitd.service"), units)
    shutil.copy(os.path.join(ROOT, "systemd", "refitd.sysusers.conf"), d["sysusers"])
    shutil.copy(os.path.join(ROOT, "systemd", "refitd.tmpfiles.conf"), d["tmpfiles"])
    python = os.path.join(ROOT, ".venv", "bin", "python")
    os.makedirs(os.path.join(units, "refitd.service.d"), exist_ok=True)
    # The checkout (its venv and librefit) may sit under /tmp, which PrivateTmp=yes replaces, or
    # in a home directory, which ProtectHome=yes hides: bind it (and the venv's interpreter) back
    # read-only, and keep the rest of the sandbox as shipped.
    home = "BindReadOnlyPaths=%s\n" % ROOT
    if interpreter_home().startswith(("/root/", "/home/")):
        # an empty home with just the interpreter in it keeps ProtectHome's intent
        home += "ProtectHome=tmpfs\nBindReadOnlyPaths=%s\n" % interpreter_home()
    elif ROOT.startswith(("/root/", "/home/")):
        home += "ProtectHome=tmpfs\n"
    with open(os.path.join(units, "refitd.service.d", "test.conf"), "w") as f:
        f.write("[Service]\nExecStart=\nExecStart=%s -m refitd run --config /etc/refitd/refitd.yaml\n"
                "WatchdogSec=%gs\nRestartSec=500ms\n%s"
                # the fault for the first start only: the file is gone once that one is up
                "EnvironmentFile=-/var/lib/refitd/fault.env\n"
                "ExecStartPost=/bin/rm -f /var/lib/refitd/fault.env\n" % (python, watchdog_sec, home))
    if fault:
        with open(os.path.join(d["state"], "fault.env"), "w") as f:
            f.write("".join("%s=%s\n" % kv for kv in fault.items()))
    with open(os.path.join(units, "observer.service"), "w") as f:
        f.write("[Unit]\nDescription=test observer\n[Service]\nType=oneshot\n"
                "ExecStart=/bin/sh /out/observe.sh\n")
    with open(os.path.join(d["out"], "observe.sh"), "w") as f:
        before = ""
        if apply:
            shutil.copy(apply, d["out"])
            before = APPLY % {"python": python, "name": os.path.basename(apply)}
        f.write(OBSERVER % {"settle": settle, "python": python, "before": before})
    wants = os.path.join(units, "multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    for u in ("refitd.service", "observer.service"):
        os.symlink("../" + u, os.path.join(wants, u))
    os.symlink("/dev/null", os.path.join(units, "systemd-firstboot.service"))  # no questions asked
    with open(os.path.join(d["etc-refitd"], "refitd.yaml"), "w") as f:
        f.write(config_text)
    return d


def boot(work: str, dirs: Dict[str, str], timeout: float = 240.0) -> subprocess.CompletedProcess:
    binds = {dirs["units"]: "/etc/systemd/system", dirs["sysusers"]: "/etc/sysusers.d",
             dirs["tmpfiles"]: "/etc/tmpfiles.d", dirs["etc-refitd"]: "/etc/refitd",
             dirs["state"]: "/var/lib/refitd", dirs["out"]: "/out"}
    cmd = [NSPAWN, "--quiet", "--keep-unit", "--register=no", "--volatile=yes", "--directory=/",
           "--machine=refitd-test-%d" % os.getpid(), "--bind-ro=%s" % ROOT]
    if not interpreter_home().startswith("/usr/"):
        cmd.append("--bind-ro=%s" % interpreter_home())
    cmd += ["--bind=%s:%s" % (h, c) for h, c in binds.items()]
    cmd += ["--boot", "systemd.firstboot=off"]
    with open(os.path.join(work, "boot.log"), "wb") as log:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout)


def read(dirs: Dict[str, str], name: str) -> str:
    try:
        with open(os.path.join(dirs["out"], name), "r", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def show(dirs: Dict[str, str]) -> Dict[str, str]:
    out = {}
    for line in read(dirs, "show.txt").splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


__all__ = ["available", "layout", "boot", "read", "show"]
