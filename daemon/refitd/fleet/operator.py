"""The operator's side: ``refitd serve``, ``refitd push``, ``refitd rollout``, ``refitd fleet
status``. Each is one MQTT client (``Link``); push and rollout also run a weight server for the
package they publish, so one command is enough for a site."""
from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional

from ..package import (DEFAULT_MAX_PACKAGE_BYTES, PackageError, parse_package_bytes, read_capped,
                       signature_path)
from . import manifest as _manifest
from . import topics
from .link import Link, LinkError, LinkOptions
from .server import WeightServer

OUTCOMES = ("applied", "rejected", "rolled_back")


class OperatorError(Exception):
    """One line for the CLI; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def connect(args: Any, role: str) -> Link:
    opts = LinkOptions(url=args.broker, client_id=args.client_id or "refitd-%s-%s" % (role, uuid.uuid4().hex[:8]),
                       protocol=args.protocol, cafile=args.cafile, certfile=args.cert, keyfile=args.key,
                       username=args.username, password_file=args.password_file,
                       backoff_max=10.0)  # a handful of operator tools: reconnect soon
    try:
        link = Link(opts).start()
        link.wait_connected(args.connect_timeout)
    except LinkError as e:
        raise OperatorError(str(e)) from None
    return link


# ---- the fleet as the operator sees it --------------------------------------------------------

class FleetView:
    """Devices of one fleet from their retained ``online`` and ``status`` messages."""

    def __init__(self, link: Link, fleet: str, ids: Iterable[str] = ()):
        self.fleet = fleet
        self.link = link
        self.devices: Dict[str, Dict[str, Any]] = {}
        self.last_change = time.monotonic()
        for leaf in ("online", "status", "events"):
            link.subscribe(topics.all_devices(fleet, leaf), qos=1)
            for dev in ids:  # exact too: some brokers send retained messages to no wildcard
                link.subscribe(topics.device(fleet, dev, leaf), qos=1)

    def census(self) -> None:
        """Asks every online device to publish its status again (see ``topics.census``)."""
        self.link.publish(topics.census(self.fleet), b"", qos=0)

    def update(self, msg: Any) -> bool:
        parts = msg.topic.split("/")
        if len(parts) != 5 or parts[2] != "devices":
            return False
        dev, leaf = parts[3], parts[4]
        d = self.devices.setdefault(dev, {"id": dev, "online": None, "status": None, "events": []})
        if leaf == "online":
            d["online"] = msg.payload == b"true"
        elif leaf == "status":
            try:
                d["status"] = json.loads(msg.payload.decode("utf-8")) if msg.payload else None
            except ValueError:
                return False
        elif leaf == "events":
            try:
                d["events"] = (d["events"] + [json.loads(msg.payload.decode("utf-8"))])[-20:]
            except ValueError:
                return False
        else:
            return False
        self.last_change = time.monotonic()
        return True

    def in_group(self, group: Optional[str]) -> List[str]:
        return sorted(k for k, d in self.devices.items()
                      if group is None or (d["status"] or {}).get("group") == group)


def device_state(d: Dict[str, Any], want: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One row: state (pending, downloading n %, applied, rejected, rolled_back, offline),
    version, detail. With ``want`` (a desired ``signed`` part) the row is about that update."""
    st = d.get("status") or {}
    last = st.get("last_update") or {}
    row = {"device": d["id"], "online": d.get("online"), "group": st.get("group"),
           "serving": st.get("serving_version"), "desired": st.get("desired_version"),
           "state": st.get("state") or "unknown", "detail": last.get("reason") or "",
           "inferences_per_s": st.get("inferences_per_s"), "p99_ms": st.get("p99_ms"),
           "healthy": False}
    if want is not None:
        pkg, v = want["package"]["sha256"], want["version"]
        tr = st.get("transfer")
        if last.get("package") == pkg and last.get("outcome") in OUTCOMES and (
                last.get("stage") != "signature" or last.get("signature") == want.get("_signature")):
            # a refused signature is about that announcement only (_signature: the one pushed)
            row["state"] = last["outcome"]
        elif (st.get("serving_version") == v and st.get("desired_version") == v
              and st.get("desired_package", pkg) == pkg):
            # (only once the device has seen this package's announcement: other bytes under the
            # same version number are the device's to judge, a stale status is not "applied")
            row["state"] = "applied"
        elif tr and st.get("desired_version") == v:
            row["state"] = "downloading"
            total = tr.get("bytes_total") or 0
            row["detail"] = "%d %%" % (100 * tr.get("bytes_done", 0) // total if total else 0)
        else:
            row["state"] = "pending"
            row["detail"] = ""
        if row["state"] == "applied":
            row["detail"] = ""
            row["healthy"] = st.get("state") == "serving" and st.get("serving_version") == v
        elif row["state"] not in OUTCOMES:
            row["detail"] = row["detail"] if row["state"] == "downloading" else ""
    if d.get("online") is False and row["state"] not in OUTCOMES:
        row["state"] = "offline"
    return row


def render(rows: List[Dict[str, Any]]) -> str:
    out = ["%-24s %-12s %-8s %-8s %s" % ("DEVICE", "STATE", "SERVING", "DESIRED", "DETAIL")]
    for r in rows:
        out.append("%-24s %-12s %-8s %-8s %s" % (r["device"][:24], r["state"], _s(r["serving"]),
                                                _s(r["desired"]), (r["detail"] or "")[:100]))
    return "\n".join(out)


def _s(v: Any) -> str:
    return "-" if v is None else str(v)


# ---- the one loop: serve chunks, watch devices ------------------------------------------------

def pump(link: Link, view: Optional[FleetView], server: Optional[WeightServer], until: float) -> None:
    """Handles every message that arrives before ``until`` (monotonic)."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            kind, msg = link.inbox.get(timeout=min(left, 0.2))
        except queue.Empty:
            continue
        if kind != "msg":
            continue
        if msg.topic.endswith("/weights/request"):
            if server is not None:
                server.answer(msg)
        elif view is not None:
            view.update(msg)


def settle(link: Link, view: FleetView, server: Optional[WeightServer] = None,
           quiet: float = 0.5, limit: float = 3.0, census_wait: float = 1.5) -> None:
    """Reads retained messages and census answers until ``quiet`` s pass without news, but at
    least ``census_wait`` s (devices answer a census from their own loop) and at most
    ``limit`` s."""
    start = time.monotonic()
    end = start + max(limit, census_wait)
    view.census()
    while time.monotonic() < end:
        pump(link, view, server, time.monotonic() + 0.1)
        now = time.monotonic()
        if now - start >= census_wait and now - view.last_change >= quiet:
            return


class Progress:
    """Prints the table when it changes (at most once a second), redrawn on a terminal."""

    def __init__(self, stream: Any = None, enabled: bool = True):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = ""
        self._lines = 0
        self._t = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled or text == self._last or (not force and time.monotonic() - self._t < 1.0):
            return
        if self.tty and self._lines:
            self.stream.write("\x1b[%dA\x1b[J" % self._lines)
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last, self._lines, self._t = text, text.count("\n") + 1, time.monotonic()


def _bar(done: int, total: int, width: int = 30) -> str:
    k = width * done // total if total else width
    return "[%s%s] %d/%d" % ("#" * k, "." * (width - k), done, total)


# ---- push -------------------------------------------------------------------------------------

def load_package(path: str) -> Any:
    try:
        data = bytes(read_capped(path, DEFAULT_MAX_PACKAGE_BYTES))
        return data, parse_package_bytes(data, path=path)
    except PackageError as e:
        raise OperatorError("%s: %s" % (path, e)) from None


def load_signature(args: Any, sha256: str) -> Optional[bytes]:
    """``--sig FILE``, else ``PACKAGE.sig`` when it exists (``refitd sign`` writes it), else
    None (unsigned: devices that require signatures refuse it). Refused here when it plainly
    signs other bytes; the devices check the rest (keys, expiry, target, floor)."""
    from ..delivery import read_signature
    path = args.sig or signature_path(args.package)
    if args.sig is None and not os.path.isfile(path):
        return None
    try:
        sig = read_signature(path)
        signed = json.loads(sig.decode("utf-8")).get("signed", {})
    except PackageError as e:
        raise OperatorError("%s: %s" % (path, e.reason)) from None
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise OperatorError("%s is not a signature envelope (refitd sign writes one)" % path) from None
    if not isinstance(signed, dict) or signed.get("sha256") != sha256:
        raise OperatorError("%s signs other bytes than %s" % (path, args.package))
    return sig


def publish_desired(link: Link, fleet: str, group: Optional[str], doc: Optional[Dict[str, Any]]) -> None:
    """Retained desired state (``None`` clears it), published again on every reconnect while
    this command runs: a broker restarted without persistence must not forget it."""
    t = topics.group_desired(fleet, group) if group else topics.fleet_desired(fleet)
    body = b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode()
    try:
        link.wait_connected(30)
        link.publish(t, body, qos=1, retain=True).wait_for_publish(30)
    except (LinkError, RuntimeError, ValueError) as e:
        raise OperatorError("cannot publish the desired state on %s: %s" % (t, e)) from None
    previous = link.on_up

    def again() -> None:
        if previous is not None:
            previous()
        link.publish(t, body, qos=1, retain=True)
    link.on_up = again


def wait_outcomes(link: Link, view: FleetView, server: WeightServer, want: Dict[str, Any],
                  targets: Iterable[str], group: Optional[str], deadline: float,
                  progress: Progress, stop_after: Optional[int] = None) -> List[Dict[str, Any]]:
    """Serves and watches until every targeted online device has an outcome for ``want``, the
    deadline passes, or more than ``stop_after`` failed. Returns the rows."""
    fixed = set(targets)
    while True:
        names = sorted(fixed | set(view.in_group(group)))
        rows = [device_state(view.devices.get(n, {"id": n}), want) for n in names]
        done = [r for r in rows if r["state"] in OUTCOMES]
        failed = [r for r in rows if r["state"] in ("rejected", "rolled_back")]
        waiting = [r for r in rows if r["state"] not in OUTCOMES and r["state"] != "offline"]
        progress.show("%s\n%s" % (_bar(len(done), len(rows)), render(rows)))
        if rows and not waiting and all(r["healthy"] or r["state"] != "applied" or not want.get("_healthy")
                                        for r in rows):
            return rows
        if stop_after is not None and len(failed) > stop_after:
            return rows
        if time.monotonic() >= deadline:
            for r in rows:
                if r["state"] not in OUTCOMES and r["state"] != "offline":
                    r["state"] = "timeout"
            return rows
        pump(link, view, server, time.monotonic() + 0.25)


def _targets(args: Any) -> List[str]:
    return [t for t in (args.expect or "").split(",") if t]


def _start_push(args: Any, role: str):
    data, pkg = load_package(args.package)
    sig = load_signature(args, pkg.sha256)
    link = connect(args, role)
    server = WeightServer(link, chunk_size=args.chunk_size, shared=not args.no_share,
                          max_rate=args.max_bytes_per_s, serve=not args.no_serve)
    m = server.add(os.path.abspath(args.package), data)
    view = FleetView(link, args.fleet, _targets(args))
    settle(link, view, server)
    return link, server, view, m, pkg, sig


def _summary(rows: List[Dict[str, Any]]) -> str:
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return ", ".join("%d %s" % (n, s) for s, n in sorted(counts.items())) or "no devices"


def cmd_push(args: Any) -> int:
    for name, v in (("fleet", args.fleet), ("group", args.group)):
        if v is not None:
            try:
                topics.check_segment(name, v)
            except ValueError as e:
                raise OperatorError(str(e), 2) from None
    link, server, view, m, pkg, sig = _start_push(args, "push")
    try:
        want = _manifest.desired(m, pkg.version, pkg.model, args.fleet, args.group, base=pkg.base,
                                 signature=sig)
        publish_desired(link, args.fleet, args.group, want)
        watch = dict(want["signed"], _signature=_manifest.signature_id(sig))
        progress = Progress(enabled=not args.json)
        if not args.json:
            print("pushing version %d (package %s, %d bytes, %d tensors) to %s%s"
                  % (pkg.version, m.package_sha256[:12], m.package_size, len(m.tensors),
                     args.fleet, "/" + args.group if args.group else ""))
        rows = wait_outcomes(link, view, server, watch, _targets(args), args.group,
                             time.monotonic() + args.timeout, progress)
        if args.json:
            print(json.dumps({"version": pkg.version, "package": m.package_sha256, "devices": rows,
                              "served_requests": server.served, "served_bytes": server.served_bytes}))
        else:
            progress.show("%s\n%s" % (_bar(sum(r["state"] in OUTCOMES for r in rows), len(rows)),
                                      render(rows)), force=True)
            print("push of version %d: %s; served %d chunk requests (%d bytes)"
                  % (pkg.version, _summary(rows), server.served, server.served_bytes))
        return 0 if rows and all(r["state"] in ("applied", "offline") for r in rows) else 1
    finally:
        link.stop()


def cmd_rollout(args: Any) -> int:
    link, server, view, m, pkg, sig = _start_push(args, "rollout")
    try:
        progress = Progress(enabled=not args.json)
        want = _manifest.desired(m, pkg.version, pkg.model, args.fleet, args.canary, base=pkg.base,
                                 signature=sig)
        publish_desired(link, args.fleet, args.canary, want)
        # canaries must pass their watch window
        signed = dict(want["signed"], _healthy=True, _signature=_manifest.signature_id(sig))
        canary = wait_outcomes(link, view, server, signed, _targets(args), args.canary,
                               time.monotonic() + args.timeout, progress, stop_after=args.max_failures)
        failed = [r for r in canary if r["state"] not in ("applied", "offline")]
        if not canary or len(failed) > args.max_failures:
            why = "no canary device in group %s" % args.canary if not canary else \
                "%d canary failures > %d: %s" % (len(failed), args.max_failures,
                                                 "; ".join("%s %s %s" % (r["device"], r["state"], r["detail"]) for r in failed))
            if args.restore:
                publish_desired(link, args.fleet, args.canary, None)  # back to the fleet's desired
                why += " (canaries restored to the fleet's desired version)"
            print("rollout of version %d stopped at the canaries: %s" % (pkg.version, why))
            return 1
        fleet_want = _manifest.desired(m, pkg.version, pkg.model, args.fleet, None, base=pkg.base,
                                       signature=sig)
        publish_desired(link, args.fleet, None, fleet_want)
        rows = wait_outcomes(link, view, server, dict(fleet_want["signed"], _signature=_manifest.signature_id(sig)), [], None,
                             time.monotonic() + args.timeout, progress, stop_after=args.max_failures)
        failed = [r for r in rows if r["state"] not in ("applied", "offline")]
        print("rollout of version %d: canaries %s; fleet %s" % (pkg.version, _summary(canary), _summary(rows)))
        return 0 if len(failed) <= args.max_failures else 1
    finally:
        link.stop()


def cmd_fleet_status(args: Any) -> int:
    link = connect(args, "status")
    try:
        view = FleetView(link, args.fleet, _targets(args))
        settle(link, view, quiet=args.quiet, limit=args.wait)
        rows = [device_state(view.devices[k]) for k in sorted(view.devices)]
        if args.json:
            print(json.dumps({"fleet": args.fleet, "devices": rows}))
        else:
            print(render(rows) if rows else "no devices in fleet %s" % args.fleet)
        return 0
    finally:
        link.stop()


def cmd_serve(args: Any) -> int:
    if not os.path.isdir(args.dir):
        raise OperatorError("--dir %s is not a directory" % args.dir, 2)
    link = connect(args, "serve")
    server = WeightServer(link, directory=args.dir, chunk_size=args.chunk_size, shared=not args.no_share,
                          log=lambda s: print(s, flush=True), max_rate=args.max_bytes_per_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print("serving %d packages from %s on %s" % (len(server.manifests), args.dir, args.broker), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        link.stop()
        print("served %d chunk requests (%d bytes)" % (server.served, server.served_bytes), flush=True)
    return 0
