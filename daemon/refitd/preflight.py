"""What `refitd check-config` checks beyond the file itself: the config against this machine.

The model file exists, is readable and opens in the engine with the configured options (and the
health checks and name map fit it); every directory the daemon writes to exists or can be
created, and is writable, by the user the daemon runs as; every file it reads is readable by
that user; the watch-window hook is executable. Each problem is a ``config.Problem`` (key path
and cause), so the report reads like a validation error. Permissions are judged from the mode
bits, owner and groups (not ACLs or a systemd sandbox).
"""
from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from .config import Config, Problem

DAEMON_USER = "refitd"  # the user install.sh creates and systemd/refitd.service runs as
# What systemd/refitd.service's StateDirectory= and RuntimeDirectory= make (owned by the
# service's user) when the service starts: for that user they count as writable though absent.
UNIT_DIRS = ("/var/lib/refitd", "/run/refitd")

R, W, X = 4, 2, 1


class User(NamedTuple):
    name: str
    uid: int
    gids: Tuple[int, ...]


def default_user() -> str:
    """The user the daemon will run as: ``refitd`` when checking as root on a box where
    install.sh created it (the service runs as that user), else whoever runs the check."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(DAEMON_USER)
            return DAEMON_USER
        except KeyError:
            pass
    return pwd.getpwuid(os.geteuid()).pw_name


def lookup_user(name: str) -> User:
    """Raises KeyError for an unknown user."""
    pw = pwd.getpwnam(name)
    return User(pw.pw_name, pw.pw_uid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)))


def _allowed(st: os.stat_result, want: int, user: User) -> bool:
    if user.uid == 0:  # root: everything but executing a file nobody may execute
        return not (want & X) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in user.gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _blocked_ancestor(path: str, user: User) -> Optional[str]:
    """The first existing directory above ``path`` the user cannot enter, if any."""
    parts = os.path.abspath(path).split(os.sep)[1:-1]
    d = os.sep
    for part in [""] + parts:
        d = os.path.join(d, part) if part else d
        try:
            st = os.stat(d)
        except OSError:
            return None  # not there: the creatable check below reports it
        if not _allowed(st, X, user):
            return d
    return None


def _mode_word(want: int) -> str:
    return {R: "read", W | X: "write to", X: "execute", R | X: "run"}.get(want, "use")


class _Checker:
    def __init__(self, user: User, unit_dirs: Sequence[str] = ()):
        self.user = user
        self.unit_dirs = tuple(os.path.abspath(d) for d in unit_dirs)
        self.problems: List[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def _who(self) -> str:
        return "user %s" % self.user.name

    def readable_file(self, key: str, path: str, want: int = R) -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.add(key, "no such file: %s" % path)
            return False
        except OSError as e:
            self.add(key, "cannot stat %s: %s" % (path, e.strerror))
            return False
        if not stat.S_ISREG(st.st_mode):
            self.add(key, "%s is not a regular file" % path)
            return False
        blocked = _blocked_ancestor(path, self.user)
        if blocked:
            self.add(key, "%s cannot enter %s, so cannot %s %s" % (self._who(), blocked, _mode_word(want), path))
            return False
        if not _allowed(st, want, self.user):
            self.add(key, "%s cannot %s %s (mode %s, owner %s)" % (
                self._who(), _mode_word(want), path, oct(st.st_mode & 0o777)[2:], _owner(st)))
            return False
        return True

    def writable_dir(self, key: str, path: str) -> None:
        """``path`` is a directory the user can write to, or can be created by the user."""
        blocked = _blocked_ancestor(os.path.join(path, "x"), self.user)
        if blocked:
            self.add(key, "%s cannot enter %s, so cannot use %s" % (self._who(), blocked, path))
            return
        probe = path
        while not os.path.lexists(probe):
            if probe in self.unit_dirs:
                return  # systemd creates it for the service's user at start
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        try:
            st = os.stat(probe)
        except OSError as e:
            self.add(key, "cannot stat %s: %s" % (probe, e.strerror))
            return
        if not stat.S_ISDIR(st.st_mode):
            self.add(key, "%s is not a directory" % probe)
        elif not _allowed(st, W | X, self.user):
            what = "write to %s" % path if probe == path else "create %s (in %s)" % (path, probe)
            self.add(key, "%s cannot %s (mode %s, owner %s)" % (
                self._who(), what, oct(st.st_mode & 0o777)[2:], _owner(st)))

    def writable_file(self, key: str, path: str) -> None:
        """A file the daemon creates or appends to (a sink file, a socket)."""
        if os.path.isdir(path):
            self.add(key, "%s is a directory" % path)
            return
        if os.path.exists(path):
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode) and not _allowed(st, W, self.user):
                self.add(key, "%s cannot write to %s (mode %s, owner %s)" % (
                    self._who(), path, oct(st.st_mode & 0o777)[2:], _owner(st)))
                return
        self.writable_dir(key, os.path.dirname(os.path.abspath(path)))


def _owner(st: os.stat_result) -> str:
    try:
        u = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        u = str(st.st_uid)
    try:
        g = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        g = str(st.st_gid)
    return "%s:%s" % (u, g)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_model(c: _Checker, cfg: Config) -> Optional[dict]:
    """Opens the model as the daemon will; returns a summary for the report, or None."""
    if not c.readable_file("model.path", cfg.model.path):
        return None
    from .engine import Engine
    from .health import ShadowCheck
    try:
        eng = Engine.open(cfg.model.path, **cfg.model.engine_args())
    except Exception as e:  # EngineError, LibraryError: the line the daemon would fail with
        c.add("model.path", "the engine cannot open %s on backend %s: %s"
              % (cfg.model.path, cfg.model.backend, _first_line(e)))
        return None
    with eng:
        weights = {w.name for w in eng.weights()}
        for src, dst in sorted(cfg.model.name_map.items()):
            if dst not in weights:
                c.add("model.name_map", "%s maps to %s, which is not a refittable weight of the model"
                      % (src, dst))
        origin = cfg.origin if cfg.origin and os.path.exists(cfg.origin) else None
        try:  # relative tensor files resolve against the config's directory, as in the daemon
            ShadowCheck(cfg.health.checks, eng, os.path.dirname(os.path.abspath(origin)) if origin else None)
        except Exception as e:  # HealthError: a check that does not fit this model
            c.add("health.checks", _first_line(e))
        return {"fingerprint": eng.fingerprint, "inputs": len(eng.inputs()),
                "outputs": len(eng.outputs()), "weights": len(weights)}


def _check_store_model(c: _Checker, path: str, fingerprint: str) -> None:
    """A store holds one model's versions: a new model file over an old store (the demo model
    install.sh puts in place, then yours) does not start."""
    from .store import committed_model
    got = committed_model(path)
    if got is not None and got[1] != fingerprint:
        c.add("store.path", "%s holds version %d of another model (%s), the model file is %s: point "
              "store.path at a fresh directory, or move that store away" % (path, got[0], got[1][:23], fingerprint[:23]))


def check_machine(cfg: Config, user: User, unit_dirs: Optional[Sequence[str]] = None
                  ) -> Tuple[List[Problem], Optional[dict]]:
    """Every problem of ``cfg`` on this machine for the daemon running as ``user``, and the
    model summary (None when the model did not open). ``unit_dirs``: directories the service
    manager creates for the user (default: the shipped unit's, when ``user`` is its user)."""
    if unit_dirs is None:
        unit_dirs = UNIT_DIRS if user.name == DAEMON_USER else ()
    c = _Checker(user, unit_dirs)
    model = _check_model(c, cfg)
    c.writable_dir("store.path", cfg.store.path)
    if model is not None:
        _check_store_model(c, cfg.store.path, model["fingerprint"])
    if cfg.watch.path:
        c.writable_dir("watch.path", cfg.watch.path)
    c.writable_file("control.socket", cfg.control.socket)
    src = cfg.source
    if src.type == "npy-dir":
        c.writable_dir("source.path", src.path)  # inferred files move to done/
    elif src.type == "socket":
        c.writable_file("source.path", src.path)
    if getattr(cfg.sink, "type", None) == "jsonl":
        c.writable_file("sink.path", cfg.sink.path)
    if cfg.health.window.hook:
        c.readable_file("health.window.hook", cfg.health.window.hook, want=R | X)
    if cfg.mqtt.password_file:
        c.readable_file("mqtt.password_file", cfg.mqtt.password_file)
    for i, key in enumerate(cfg.security.trusted_keys):
        c.readable_file("security.trusted_keys[%d]" % i, key)
    return c.problems, model


def summary(cfg: Config, user: Any) -> dict:
    """The one-line summary's fields (also the --json report's ``config``)."""
    return {"model": cfg.model.path, "backend": cfg.model.backend, "workers": cfg.workers.threads,
            "source": cfg.source.type, "sink": cfg.sink.type, "store": cfg.store.path,
            "keep": cfg.store.keep, "watch": cfg.watch.path, "control": cfg.control.socket,
            "user": getattr(user, "name", user)}
