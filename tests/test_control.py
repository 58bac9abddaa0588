"""The control socket: JSON lines server + client, socket permissions, stale/live sockets."""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest

from daemon_helpers import rmtree, short_dir

from refitd.control import (AlreadyRunning, ControlError, ControlServer, DaemonUnreachable,
                            bind_unix_socket, call)
from refitd.log import Events


@pytest.fixture
def sdir():
    d = short_dir()
    yield d
    rmtree(d)


def _server(sdir, handlers=None, mode=0o660):
    path = os.path.join(sdir, "c.sock")
    h = {"ping": lambda req: {"pong": True},
         "echo": lambda req: {"got": req.get("x")},
         "fail": lambda req: (_ for _ in ()).throw(ControlError("version 7 is not in the store")),
         "bug": lambda req: 1 / 0}
    h.update(handlers or {})
    srv = ControlServer(path, mode, h, Events(stream=open(os.devnull, "w")))
    srv.start()
    return srv, path


def test_request_response_and_mode(sdir):
    srv, path = _server(sdir)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert call(path, {"cmd": "ping"}) == {"ok": True, "pong": True}
        assert call(path, {"cmd": "echo", "x": [1, "a"]}) == {"ok": True, "got": [1, "a"]}
    finally:
        srv.stop()
    assert not os.path.exists(path)  # removed on stop


def test_mode_is_configurable(sdir):
    srv, path = _server(sdir, mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        srv.stop()


def test_errors_are_one_line_responses_and_server_survives(sdir):
    srv, path = _server(sdir)
    try:
        r = call(path, {"cmd": "fail"})
        assert r == {"ok": False, "error": "version 7 is not in the store"}
        r = call(path, {"cmd": "bug"})
        assert r["ok"] is False and r["error"].startswith("internal error in bug: ZeroDivisionError")
        r = call(path, {"cmd": "nope"})
        assert r["ok"] is False and "unknown command 'nope'" in r["error"] and "ping" in r["error"]
        r = call(path, {"x": 1})
        assert r == {"ok": False, "error": 'a request is a JSON object with "cmd"'}
        assert call(path, {"cmd": "ping"})["ok"] is True
    finally:
        srv.stop()


def test_several_requests_on_one_connection_and_bad_json(sdir):
    srv, path = _server(sdir)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        f = s.makefile("rb")
        s.sendall(b'{"cmd": "ping"}\n\n{not json}\n{"cmd": "echo", "x": 5}\n')
        replies = [json.loads(f.readline()) for _ in range(3)]
        assert replies[0] == {"ok": True, "pong": True}
        assert replies[1]["ok"] is False and replies[1]["error"].startswith("request is not JSON")
        assert replies[2] == {"ok": True, "got": 5}
        s.close()
    finally:
        srv.stop()


def _file_fd(sdir, data: bytes) -> int:
    """A read-only descriptor of a new file holding ``data`` (the caller closes it)."""
    f = os.path.join(sdir, "pkg")
    with open(f, "wb") as fh:
        fh.write(data)
    return os.open(f, os.O_RDONLY)


def test_descriptors_travel_with_their_request_and_are_closed_after(sdir):
    """A request may carry open files (how ``refitd apply`` hands over a package the daemon's
    sandbox cannot see); only descriptors that really came along reach the handler, never
    numbers named in the JSON, and the server closes its copies once the handler is done."""
    def peek(req):
        return {"n": len(req.fds), "head": [os.pread(fd, 5, 0).decode() for fd in req.fds]}
    srv, path = _server(sdir, {"peek": peek})
    try:
        fd = _file_fd(sdir, b"hello world")
        try:
            assert call(path, {"cmd": "peek"}, fds=(fd,)) == {"ok": True, "n": 1, "head": ["hello"]}
            assert os.pread(fd, 5, 6) == b"world"  # the caller's descriptor is still the caller's
        finally:
            os.close(fd)
        # numbers in the JSON are only data: the handler sees no descriptors
        assert call(path, {"cmd": "peek", "fds": [0, 1], "_fds": [2]}) == {"ok": True, "n": 0, "head": []}
        # the server's copy is closed after the handler: the pipe's reader then sees EOF
        r, w = os.pipe()
        try:
            assert call(path, {"cmd": "ping"}, fds=(w,))["ok"]
            os.close(w)
            w = -1
            os.set_blocking(r, False)
            assert os.read(r, 1) == b""  # EOF: no writer left open anywhere
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        srv.stop()


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_descriptor_flood_is_refused_and_leaves_nothing_open(sdir):
    """MAX_FDS bounds a request, however many receives bring its descriptors: a client dribbling
    one byte with 4 descriptors at a time gets one error line, its connection closed, and the
    server (this process) holds none of them afterwards."""
    srv, path = _server(sdir)
    try:
        before = _open_fds()
        r, w = os.pipe()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(10)
        c.connect(path)
        try:
            for ch in b'{"cmd": "ping"':  # no newline: one line that never ends
                try:
                    socket.send_fds(c, [bytes([ch])], [r, w, r, w])
                except OSError:  # the server hung up already
                    break
            resp = c.makefile("rb").readline()
        finally:
            c.close()
            os.close(r)
            os.close(w)
        assert json.loads(resp) == {"ok": False, "error": "a request carries at most 4 descriptors"}
        deadline = time.monotonic() + 10
        while _open_fds() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _open_fds() <= before
        assert call(path, {"cmd": "ping"}) == {"ok": True, "pong": True}  # still serving
    finally:
        srv.stop()


def test_pipelined_requests_keep_their_own_descriptors_which_are_cloexec(sdir):
    """Two requests written back to back, only the second with a descriptor: it reaches the
    second handler call, not the first; and it is close-on-exec in the daemon."""
    import fcntl
    seen = []

    def peek(req):
        seen.append([(os.pread(fd, 5, 0), bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
                     for fd in req.fds])
        return {}
    srv, path = _server(sdir, {"peek": peek})
    try:
        fd = _file_fd(sdir, b"hello")
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(10)
        c.connect(path)
        try:
            c.sendall(b'{"cmd": "peek"}\n')
            socket.send_fds(c, [b'{"cmd": "peek"}\n'], [fd])
            rf = c.makefile("rb")
            assert json.loads(rf.readline())["ok"] and json.loads(rf.readline())["ok"]
        finally:
            c.close()
            os.close(fd)
        assert seen == [[], [(b"hello", True)]]
    finally:
        srv.stop()


def test_accept_survives_running_out_of_descriptors(sdir):
    """EMFILE on accept must not end the accept loop: once descriptors are free again, the
    socket serves (a real server in a child process with RLIMIT_NOFILE at 64)."""
    import subprocess
    import sys
    path = os.path.join(sdir, "c.sock")
    code = (
        "import resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "from refitd.control import ControlServer\n"
        "srv = ControlServer(sys.argv[1], 0o600, {'ping': lambda r: {'pong': True}})\n"
        "srv.start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "srv.stop()\n")
    from daemon_helpers import env
    p = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert p.stdout.readline().strip() == "ready"
        conns = []
        for _ in range(80):  # more than the child's limit: its accept() hits EMFILE
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)  # the kernel queues them (backlog) even when accept fails
            conns.append(c)
            if len(conns) % 10 == 0:
                time.sleep(0.05)
        time.sleep(0.5)
        for c in conns:
            c.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert call(path, {"cmd": "ping"}, timeout=5) == {"ok": True, "pong": True}
                break
            except DaemonUnreachable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(10)


def test_concurrent_clients(sdir):
    srv, path = _server(sdir)
    errors = []

    def client(i):
        try:
            for j in range(20):
                assert call(path, {"cmd": "echo", "x": i * 100 + j})["got"] == i * 100 + j
        except Exception as e:  # collected and asserted below
            errors.append(e)

    try:
        ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
    finally:
        srv.stop()


def test_unreachable_messages(sdir):
    path = os.path.join(sdir, "c.sock")
    with pytest.raises(DaemonUnreachable) as ei:
        call(path, {"cmd": "status"})
    assert str(ei.value) == "cannot reach the daemon at %s: no such socket (is refitd running?)" % path
    # a stale socket file: nobody listening
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    with pytest.raises(DaemonUnreachable) as ei:
        call(path, {"cmd": "status"})
    assert str(ei.value) == "cannot reach the daemon at %s: connection refused (is refitd running?)" % path


def test_stale_socket_is_replaced_live_one_refused(sdir):
    path = os.path.join(sdir, "c.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # stale file left behind, as after kill -9
    srv, _ = _server(sdir)
    try:
        assert call(path, {"cmd": "ping"})["ok"]
        with pytest.raises(AlreadyRunning):
            bind_unix_socket(path, 0o660)
        assert call(path, {"cmd": "ping"})["ok"]  # the live one is untouched
    finally:
        srv.stop()


def test_stop_does_not_remove_a_successors_socket(sdir):
    srv, path = _server(sdir)
    # simulate a successor that took over the path (the old one was wedged)
    os.unlink(path)
    other = bind_unix_socket(path, 0o660)
    try:
        srv.stop()
        assert os.path.exists(path)
    finally:
        other.close()


def test_control_channel_carries_package_and_signature_descriptors(sdir, engine, store, tmp_path):
    """apply over the real control socket with the package and its .sig as two descriptors:
    the verifier gets the signature's bytes; a third descriptor is refused in one line."""
    from types import SimpleNamespace

    from conftest import kernel, write_pkg
    from refitd.channels.control import ControlChannel
    from refitd.pipeline import Pipeline

    seen = []
    p = Pipeline(engine, store, None, None,
                 verifier=lambda data, sig, d: seen.append((len(data), sig, d.source, d.origin.where)))
    p.start()
    services = SimpleNamespace(engine=engine)
    ch = ControlChannel(os.path.join(sdir, "c.sock"), 0o600, p, None, services)
    ch.start()
    try:
        f = write_pkg(tmp_path / "v1.safetensors", kernel(1.0), 1, engine.fingerprint)
        with open(f + ".sig", "wb") as fh:
            fh.write(b"\x01" * 64)
        fds = [os.open(f, os.O_RDONLY), os.open(f + ".sig", os.O_RDONLY)]
        try:
            r = call(ch.path, {"cmd": "apply", "path": "/client/view/v1.safetensors"}, fds=tuple(fds))
            assert (r["ok"], r["version"], r["stage"]) == (True, 1, "done"), r
            assert seen == [(os.path.getsize(f), b"\x01" * 64, "cli", "/client/view/v1.safetensors")]
            r = call(ch.path, {"cmd": "apply", "path": f}, fds=tuple(fds + [fds[0]]))
            assert r == {"ok": False, "error": "apply takes the package and at most one signature "
                                               "descriptor, got 3"}
        finally:
            for fd in fds:
                os.close(fd)
        r = call(ch.path, {"cmd": "rollback"})
        assert (r["ok"], r["version"], r["serving"]) == (True, 0, 0) and seen[-1][2] == "cli"
        r = call(ch.path, {"cmd": "pin", "version": 1})
        assert r == {"ok": True, "version": 1, "pinned": [1], "changed": True}
        # pin and unpin are idempotent: a second one succeeds and says it changed nothing
        r = call(ch.path, {"cmd": "pin", "version": 1})
        assert r == {"ok": True, "version": 1, "pinned": [1], "changed": False}
    finally:
        ch.stop()
