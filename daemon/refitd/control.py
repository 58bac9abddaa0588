"""The control socket: a local Unix stream socket (mode 0660 by default) speaking JSON lines.

Each request is one line, a JSON object with "cmd"; each gets exactly one response line:
    -> {"cmd": "status"}
    <- {"ok": true, "serving": {"version": 3, ...}, ...}
    -> {"cmd": "rollback", "to": 3}
    <- {"ok": false, "error": "version 3 is not in the store (have 4, 5, 6)"}
A connection may carry several requests. Commands (docs/daemon.md has the fields): ping,
status, versions, apply {path}, rollback {to?}, pin {version}, unpin {version},
infer {inputs: {name: {dtype, shape, data (base64 of C-order bytes)}}}, reload.

A request may carry open file descriptors (SCM_RIGHTS, at most MAX_FDS; more closes the
connection): ``refitd apply`` opens the package as the calling user and passes it, because the
daemon's sandbox (ProtectHome=, PrivateTmp=) cannot see the caller's paths. Handlers find them
on ``req.fds`` (never in the JSON, so a client cannot name the daemon's own descriptors); they
are close-on-exec, and the server closes them after the handler returns.

``ControlServer(path, mode, handlers, events)`` serves; ``call(path, request)`` is the client and
raises ``DaemonUnreachable`` with the one-line message the CLI prints.
"""
from __future__ import annotations

import array
import errno
import itertools
import json
import os
import socket
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["ControlServer", "ControlError", "DaemonUnreachable", "AlreadyRunning", "Request",
           "call", "accept_loop", "bind_unix_socket", "MAX_LINE", "MAX_FDS"]

MAX_LINE = 256 << 20  # an infer request carries its tensor, base64
MAX_FDS = 4  # a package and its detached signature, with room to spare; the kernel closes extras


class ControlError(Exception):
    """Raised by a handler: becomes {"ok": false, "error": str(e)}."""


class DaemonUnreachable(Exception):
    pass


class AlreadyRunning(Exception):
    pass


_tmp_counter = itertools.count()


def bind_unix_socket(path: str, mode: int) -> socket.socket:
    """Binds a listening Unix stream socket at ``path`` with permissions ``mode``, atomically:
    bound under a temporary name, chmod'ed, then renamed over ``path`` (so there is no moment
    when the socket exists with the wrong mode). A stale socket file (nobody listening) is
    replaced; a live one raises AlreadyRunning."""
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
            pass  # stale: replaced below
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                raise
        else:
            raise AlreadyRunning("another process is already listening on %s" % path)
        finally:
            probe.close()
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, ".s%d-%d" % (os.getpid(), next(_tmp_counter)))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        s.bind(tmp)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        s.listen(64)
    except BaseException:
        s.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return s


class Request(dict):
    """A decoded request; ``fds`` are the descriptors that came with it (owned by the server)."""
    fds: tuple = ()


Handler = Callable[[Dict[str, Any]], Dict[str, Any]]

_TRANSIENT_ACCEPT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class TooManyDescriptors(Exception):
    pass


class _Reader:
    """Request lines from a connection, each with the descriptors that came with it.

    Linux never reads past a message that carries descriptors (af_unix stops there), so the
    descriptors of one receive belong to its last byte: to the line that byte is in. A line
    that gathers more than MAX_FDS (however many receives bring them) raises
    TooManyDescriptors, after closing them all, so a client cannot pile up the daemon's
    descriptors."""

    _CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.buf = bytearray()
        self.pos = 0  # stream offset of buf[0]
        self.scanned = 0  # no newline before this offset: a long line is searched once
        self.pending: List[tuple] = []  # (stream offset of the receive's last byte, fd)

    def readline(self, limit: int) -> Tuple[bytes, tuple]:
        """(one line with its newline, its descriptors); at most ``limit + 1`` bytes (the
        caller checks); the rest of the stream at end of file (b"" when nothing is left)."""
        while True:
            i = self.buf.find(b"\n", self.scanned)
            if i >= 0:
                return self._cut(i + 1)
            self.scanned = len(self.buf)
            if len(self.buf) > limit:
                return self._cut(limit + 1)
            data, fds, truncated = self._recv()
            self.buf += data
            self.pending += [(self.pos + len(self.buf) - 1, fd) for fd in fds]
            if truncated or len(self.pending) > MAX_FDS:
                self.close()
                raise TooManyDescriptors("a request carries at most %d descriptors" % MAX_FDS)
            if not data:
                return self._cut(len(self.buf))

    def _recv(self) -> Tuple[bytes, List[int], bool]:
        # recvmsg itself, not socket.recv_fds: before 3.12 that drops its flags argument, and
        # the descriptors must be close-on-exec from the start.
        data, anc, flags, _ = self.conn.recvmsg(1 << 16, self._CMSG_SPACE,
                                                getattr(socket, "MSG_CMSG_CLOEXEC", 0))
        fds = array.array("i")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        return data, list(fds), bool(flags & socket.MSG_CTRUNC)

    def _cut(self, n: int) -> Tuple[bytes, tuple]:
        line = bytes(self.buf[:n])
        del self.buf[:n]
        self.pos += n
        self.scanned = 0
        mine = tuple(fd for end, fd in self.pending if end < self.pos)
        self.pending = [(end, fd) for end, fd in self.pending if end >= self.pos]
        return line, mine

    def close(self) -> None:
        _close_all(fd for _, fd in self.pending)
        self.pending = []


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def accept_loop(sock: socket.socket, stop: threading.Event, adopt: Callable[[socket.socket], None],
                events, event: str) -> None:
    """Accepts on ``sock`` (with a timeout set) until ``stop``, handing each blocking connection
    to ``adopt``. Running out of descriptors or memory is waited out, not the end: the socket
    must outlive it (a client can exhaust descriptors; the box can run short of memory)."""
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except socket.timeout:
            continue
        except OSError as e:
            if e.errno in _TRANSIENT_ACCEPT and not stop.is_set():
                if events is not None:
                    events.emit(event, error="accept: %s" % e.strerror)
                stop.wait(0.2)
                continue
            break
        conn.settimeout(None)
        adopt(conn)


class ControlServer:
    def __init__(self, path: str, mode: int, handlers: Dict[str, Handler], events=None):
        self.path = path
        self.mode = mode
        self.handlers = dict(handlers)
        self.events = events
        self._sock: Optional[socket.socket] = None
        self._ino = -1
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._conns: set = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._sock = bind_unix_socket(self.path, self.mode)
        self._ino = os.stat(self.path).st_ino
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept_loop, name="refitd-control", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        accept_loop(self._sock, self._stop, self._adopt, self.events, "control.error")

    def _adopt(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        threading.Thread(target=self._serve, args=(conn,), name="refitd-control-conn",
                         daemon=True).start()

    def dispatch(self, req: Any, fds: tuple = ()) -> Dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with "cmd"'}
        req = Request(req)
        req.fds = fds
        cmd = req["cmd"]
        fn = self.handlers.get(cmd)
        if fn is None:
            return {"ok": False, "error": "unknown command %r (known: %s)" % (cmd, ", ".join(sorted(self.handlers)))}
        try:
            out = fn(req)
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug in a handler must not take the socket down
            if self.events is not None:
                self.events.emit("control.error", cmd=cmd, error="%s: %s" % (type(e).__name__, e))
            return {"ok": False, "error": "internal error in %s: %s: %s" % (cmd, type(e).__name__, e)}
        resp = {"ok": True}
        resp.update(out or {})
        return resp

    def _serve(self, conn: socket.socket) -> None:
        r = _Reader(conn)
        try:
            while not self._stop.is_set():
                try:
                    line, fds = r.readline(MAX_LINE)
                except TooManyDescriptors as e:
                    conn.sendall(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
                    return
                if len(line) > MAX_LINE:
                    _close_all(fds)
                    conn.sendall(b'{"ok": false, "error": "request line too long"}\n')
                    return
                try:
                    if not line:
                        return
                    if not line.strip():
                        continue
                    try:
                        req = json.loads(line)
                    except ValueError as e:
                        resp = {"ok": False, "error": "request is not JSON: %s" % e}
                    else:
                        resp = self.dispatch(req, fds)
                finally:
                    _close_all(fds)
                conn.sendall(json.dumps(resp, default=str).encode() + b"\n")
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            r.close()
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            # Remove the socket file only if it is still ours (a new daemon may own the path).
            try:
                if os.stat(self.path).st_ino == self._ino:
                    os.unlink(self.path)
            except OSError:
                pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(2.0)


def _reason(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is refitd running?)"
    if isinstance(e, FileNotFoundError):
        return "no such socket (is refitd running?)"
    if isinstance(e, PermissionError):
        return "permission denied (is your user in the daemon's group?)"
    if isinstance(e, socket.timeout):
        return "timed out (the daemon is not answering)"
    return (e.strerror or str(e)).lower()


def call(path: str, request: Dict[str, Any], timeout: float = 30.0, fds: tuple = ()) -> Dict[str, Any]:
    """Sends one request (with open descriptors ``fds``, which stay the caller's), returns the
    response object. Raises DaemonUnreachable."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as e:
            raise DaemonUnreachable("cannot reach the daemon at %s: %s" % (path, _reason(e))) from None
        try:
            payload = json.dumps(request).encode() + b"\n"
            sent = socket.send_fds(s, [payload], list(fds)) if fds else 0
            s.sendall(payload[sent:])
            f = s.makefile("rb")
            line = f.readline(MAX_LINE + 1)
        except OSError as e:
            raise DaemonUnreachable("lost the daemon at %s: %s" % (path, _reason(e))) from None
        if not line:
            raise DaemonUnreachable("the daemon at %s closed the connection without answering" % path)
        try:
            resp = json.loads(line)
        except ValueError:
            raise DaemonUnreachable("the daemon at %s answered something that is not JSON" % path) from None
        if not isinstance(resp, dict):
            raise DaemonUnreachable("the daemon at %s answered something that is not an object" % path)
        return resp
    finally:
        s.close()
