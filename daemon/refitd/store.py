"""The versioned, content-addressed weight store.

Layout under the store directory (see docs/store.md for the full format and the crash-safety
argument)::

    blobs/ab/abcdef...      raw tensor bytes (C order), named by their sha256
    versions/<v>.json       one manifest per version: the *full* name -> {sha256, dtype, shape,
                            nbytes} map after applying a partial package on its base, + metadata
    current                 {"version": v, "highest": h} -- the commit point
    pins.json               pinned versions (kept by retention)
    history.jsonl           append-only log of what changed the store (applied, rolled_back,
                            pinned, unpinned, pruned, recovered); at HISTORY_MAX bytes it
                            becomes history.1.jsonl (one older generation is kept)
    lock                    flock'ed by the one process that owns the store

Every file is written the same way: a ``.tmp-*`` file in the destination directory, write, fsync,
rename over the destination, fsync the directory. An update is written in this order: blobs (all
renamed, their directories fsynced), then its manifest, then ``current``. ``current`` is the
commit point: a manifest whose version is above ``current.highest`` was written by an update that
never committed, so opening the store discards it (with its now-unreferenced blobs), together with
every ``.tmp-*`` leftover and a torn last line of the history.

Rejected updates never reach the store (the pipeline writes only after every check passed), so
the store's bytes are unchanged by a rejection; history.jsonl records only what changed it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import numpy as np

from .atomic import TMP_PREFIX, append_durable, fsync_dir, write_atomic, write_temp

__all__ = ["Store", "StoreError", "Pending", "tensor_sha256", "FORMAT"]

FORMAT = 1
_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION_FILE = re.compile(r"^([0-9]{1,19})\.json$")


class StoreError(Exception):
    """A store operation failed; ``str(e)`` is one line naming the version/tensor/blob."""


def _unwritable(e: OSError) -> bool:
    """The error of writing to a read-only filesystem or a directory we may not write."""
    return e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_bytes_view(arr: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(arr)
    return a.reshape(-1).view(np.uint8)


def tensor_sha256(arr: np.ndarray) -> str:
    """sha256 (hex) of a tensor's bytes in C order: the blob name."""
    return hashlib.sha256(_as_bytes_view(arr)).hexdigest()


def _on_read_only_fs(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))


def _hash_file(path: str) -> Tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def committed_model(path: str) -> Optional[Tuple[int, str]]:
    """(current version, its model fingerprint) of the store at ``path``, read without opening
    or locking it (for `refitd check-config`, while a daemon may hold the store); None when
    there is no committed version or it cannot be read (opening the store then says why)."""
    try:
        with open(os.path.join(path, "current"), "rb") as f:
            v = int(json.loads(f.read())["version"])
        with open(os.path.join(path, "versions", "%d.json" % v), "rb") as f:
            model = json.loads(f.read()).get("model")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (v, model) if isinstance(model, str) else None


@dataclass
class Pending:
    """A version computed in memory by ``Store.prepare``; nothing is on disk yet.

    ``manifest`` is the full manifest that ``write`` will store; ``new_blobs`` maps the sha256
    of each tensor the store does not hold yet to its array; ``changed`` the names whose blob
    differs from the base's."""

    version: int
    manifest: Dict[str, Any]
    new_blobs: Dict[str, np.ndarray] = field(default_factory=dict)
    changed: List[str] = field(default_factory=list)

    @property
    def new_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.new_blobs.values())


class Store:
    """A versioned weight store in directory ``path`` keeping the newest ``keep`` versions
    (plus pinned ones and the current one). Thread-safe; one process at a time (flock)."""

    #: history.jsonl is rotated at this size: an unattended box applying an update an hour
    #: writes ~2 MiB a year, and its disk must not fill up with the log of it
    HISTORY_MAX = 1 << 20

    def __init__(self, path: str, keep: int = 5, durable: bool = True, lock: bool = True,
                 read_only: bool = False):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise StoreError("store keep must be an integer >= 1, got %r" % (keep,))
        self.path = os.path.abspath(os.fspath(path))
        #: why the store cannot be written (None: writable). Set by ``read_only=True`` (an
        #: offline check that must change nothing) or on open when the directory turns out
        #: read-only: then the committed version still serves and every write is refused with
        #: this reason rather than failing half-way.
        self.read_only: Optional[str] = "opened read-only" if read_only else None
        self.keep = keep
        self.durable = durable
        self._mu = threading.RLock()
        self._lock_fd: Optional[int] = None
        self._manifests: Dict[int, Dict[str, Any]] = {}
        self._current: Optional[int] = None
        self._highest: Optional[int] = None
        self._pins: Set[int] = set()
        self._hasher: Optional[ThreadPoolExecutor] = None  # spool's blob hashes (lazily)
        #: one line per thing ``open`` discarded or repaired (the daemon logs them)
        self.recovered: List[str] = []
        #: problems after a commit point that did not undo it (history line lost, ...)
        self.warnings: List[str] = []
        if not read_only:
            try:
                for d in (self.path, self._p("blobs"), self._p("versions")):
                    os.makedirs(d, exist_ok=True)
            except OSError as e:
                if not (_unwritable(e) and os.path.isdir(self._p("versions"))):
                    raise StoreError("cannot create store directory %s: %s"
                                     % (self.path, e.strerror)) from None
                self.read_only = e.strerror
        elif not os.path.isdir(self._p("versions")):
            raise StoreError("%s is not a refitd store (no versions/ directory)" % self.path)
        if lock:
            self._take_lock()
        if self.read_only is None and not all(os.access(d, os.W_OK) for d in (
                self.path, self._p("blobs"), self._p("versions"))):
            self.read_only = os.strerror(errno.EROFS if _on_read_only_fs(self.path) else errno.EACCES)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # ---- plumbing ----------------------------------------------------------------------

    def _p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def _blob_path(self, sha: str) -> str:
        return self._p("blobs", sha[:2], sha)

    def _take_lock(self) -> None:
        # Read-only descriptor: flock does not need write access, and a descriptor open for
        # writing would keep the filesystem from being remounted read-only under us (EBUSY).
        cloexec = getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self._p("lock"), os.O_RDONLY | os.O_CREAT | cloexec, 0o644)
        except OSError as e:
            if not _unwritable(e):
                raise
            self.read_only = self.read_only or e.strerror
            try:
                fd = os.open(self._p("lock"), os.O_RDONLY | cloexec)
            except FileNotFoundError:  # never opened by a daemon: nobody to keep out
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError("store %s is in use by another refitd process" % self.path) from None
            raise
        self._lock_fd = fd

    def close(self) -> None:
        """Releases the store lock. Idempotent."""
        with self._mu:
            if self._hasher is not None:
                self._hasher.shutdown(wait=True)
                self._hasher = None
            if self._lock_fd is not None:
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                finally:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _fsync_dir(self, path: str) -> None:
        if self.durable:
            fsync_dir(path)

    def _write_atomic(self, dest: str, chunks: Iterable[Any], sync_dir: bool = True) -> None:
        write_atomic(dest, chunks, durable=self.durable, sync_dir=sync_dir)

    def _write_json(self, dest: str, obj: Any) -> None:
        data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")
        self._write_atomic(dest, [data])

    # ---- recovery (open) ----------------------------------------------------------------

    def _recover(self) -> None:
        # Read-only, every repair below is only reported ("would ...") and done in memory: what
        # serves is still exactly what a writable open would serve.
        # 1. temp files of interrupted writes
        for d in [self.path, self._p("versions"), self._p("blobs")] + self._blob_dirs():
            for name in os.listdir(d):
                if name.startswith(TMP_PREFIX):
                    self._unlink(os.path.join(d, name))
                    self.recovered.append("%s %s (interrupted write)" % (
                        self._did("removed"), os.path.join(os.path.relpath(d, self.path), name)))
        # 2. a torn last history line
        if not self.read_only:
            self._repair_history()
        # 3. the commit point
        cur = self._read_current()
        if cur is not None:
            self._current, self._highest = cur
        self._pins = self._read_pins()
        # 4. manifests: drop uncommitted ones and ones whose blobs are missing
        for name in sorted(os.listdir(self._p("versions"))):
            m = _VERSION_FILE.match(name)
            path = self._p("versions", name)
            if not m:
                continue
            v = int(m.group(1))
            if self._highest is None or v > self._highest:
                self._unlink(path)
                self.recovered.append(
                    "%s version %d: written but never committed (interrupted update)" % (self._did("discarded"), v))
                continue
            try:
                with open(path, "rb") as f:
                    man = json.loads(f.read().decode("utf-8"))
                self._check_manifest(v, man)
            except (OSError, ValueError, StoreError) as e:
                self._unlink(path)
                self.recovered.append("%s version %d: unreadable manifest (%s)" % (self._did("discarded"), v, e))
                continue
            missing = self._missing_blobs(man)
            if missing:
                self._unlink(path)
                self.recovered.append(
                    "%s version %d: blob %s of tensor %s is missing or has the wrong size"
                    % (self._did("discarded"), v, missing[1][:12], json.dumps(missing[0])))
                continue
            self._manifests[v] = man
        if (self._manifests or self._current is not None) and not self.read_only:
            self._fsync_dir(self._p("versions"))
        # 5. a current that no longer stands (should not happen: it is only ever written after
        #    its manifest; it can if blobs were deleted or corrupted behind our back)
        if self._current is not None and self._current not in self._manifests:
            lost = self._current
            committed_before = [e.get("version") for e in self.history if e.get("event") in
                                ("applied", "rolled_back", "initial", "recovered")]
            fallback = [v for v in committed_before if v in self._manifests]
            new = fallback[-1] if fallback else (max(self._manifests) if self._manifests else None)
            if new is None:
                self._current = None
                self.recovered.append("current version %d is unusable and no other version is "
                                      "stored; the store starts empty" % lost)
                self._unlink(self._p("current"))
            else:
                self._current = new
                if not self.read_only:
                    self._write_json(self._p("current"), {"format": FORMAT, "version": new,
                                                          "highest": self._highest})
                    self._append_history({"event": "recovered", "version": new, "from": lost})
                self.recovered.append("current version %d is unusable; serving version %d instead"
                                      % (lost, new))
        if self._pins - set(self._manifests):
            self._pins &= set(self._manifests)
            if not self.read_only:
                self._write_json(self._p("pins.json"), sorted(self._pins))
        # 6. blobs no manifest references (leftovers of an interrupted update or gc)
        if not self.read_only:
            freed = self._collect_blobs()
            if freed[0]:
                self.recovered.append("removed %d unreferenced blobs (%d bytes)" % freed)

    def _blob_dirs(self) -> List[str]:
        b = self._p("blobs")
        return [os.path.join(b, n) for n in sorted(os.listdir(b))
                if os.path.isdir(os.path.join(b, n))]

    def _unlink(self, path: str) -> None:
        if self.read_only:  # recovery on a read-only store only reports what it would remove
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _did(self, verb: str) -> str:
        return "would have " + verb if self.read_only else verb

    def _writable(self, what: str) -> None:
        """Refuses a write up front on a read-only store, naming the operation and why."""
        if self.read_only:
            raise StoreError("cannot %s: the store %s is read-only (%s)"
                             % (what, self.path, self.read_only))

    def _cleanup(self, path: str) -> None:
        """Best-effort removal after a failed write: the filesystem that failed the write (full,
        turned read-only) may fail this too, and that must not mask the first error."""
        try:
            os.unlink(path)
        except OSError:
            pass

    def _read_current(self) -> Optional[Tuple[int, int]]:
        try:
            with open(self._p("current"), "rb") as f:
                obj = json.loads(f.read().decode("utf-8"))
            v, h = obj["version"], obj["highest"]
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (v, h)) \
                    or h < v:
                raise ValueError("bad fields")
            return v, h
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError("store %s: the current pointer is unreadable (%s); it is only ever "
                             "replaced atomically, so the disk or a person changed it"
                             % (self.path, e)) from None

    def _read_pins(self) -> Set[int]:
        try:
            with open(self._p("pins.json"), "rb") as f:
                pins = json.loads(f.read().decode("utf-8"))
            return {int(v) for v in pins}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as e:
            raise StoreError("store %s: pins.json is unreadable (%s)" % (self.path, e)) from None

    def _check_manifest(self, v: int, man: Any) -> None:
        if not isinstance(man, dict) or man.get("version") != v or not isinstance(
                man.get("tensors"), dict) or not man["tensors"]:
            raise StoreError("manifest of version %d is malformed" % v)
        for name, t in man["tensors"].items():
            if (not isinstance(t, dict) or not _HEX64.match(str(t.get("sha256")))
                    or t.get("dtype") not in _DTYPES or not isinstance(t.get("shape"), list)
                    or not isinstance(t.get("nbytes"), int)):
                raise StoreError("manifest of version %d: entry %s is malformed"
                                 % (v, json.dumps(name)))

    def _missing_blobs(self, man: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
        for name, t in man["tensors"].items():
            try:
                if os.stat(self._blob_path(t["sha256"])).st_size != t["nbytes"]:
                    return name, t["sha256"]
            except FileNotFoundError:
                return name, t["sha256"]
        return None

    def _repair_history(self) -> None:
        path = self._p("history.jsonl")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(path, "r+b") as f:
                f.truncate(keep)
                if self.durable:
                    os.fsync(f.fileno())
            self.recovered.append("dropped a torn last history line (%d bytes)" % (len(data) - keep))

    # ---- reading ------------------------------------------------------------------------

    def versions(self) -> List[int]:
        """Stored versions, oldest first."""
        with self._mu:
            return sorted(self._manifests)

    def current(self) -> Optional[int]:
        """The committed current version (what a restarted daemon serves), or None if empty."""
        with self._mu:
            return self._current

    def highest(self) -> Optional[int]:
        """The highest version ever committed (retention does not lower it)."""
        with self._mu:
            return self._highest

    def pins(self) -> List[int]:
        with self._mu:
            return sorted(self._pins)

    def has(self, version: int) -> bool:
        with self._mu:
            return version in self._manifests

    def manifest(self, version: int) -> Dict[str, Any]:
        with self._mu:
            man = self._manifests.get(version)
            if man is None:
                raise StoreError("version %d is not in the store (stored: %s)"
                                 % (version, self._list_str()))
            return json.loads(json.dumps(man))  # a copy the caller may keep

    def _list_str(self) -> str:
        return ", ".join(str(v) for v in sorted(self._manifests)) or "none"

    def load(self, version: int) -> Dict[str, np.ndarray]:
        """All tensors of ``version``, read from their blobs with every sha256 verified."""
        man = self.manifest(version)
        out = {}
        for name, t in man["tensors"].items():
            out[name] = self.read_blob(t["sha256"], t["dtype"], t["shape"], name, version)
        return out

    def has_blob(self, sha: str, nbytes: Optional[int] = None) -> bool:
        """Whether blob ``sha`` is stored (with ``nbytes`` bytes, when given). The fleet
        transfer asks this to fetch only the tensors a box lacks."""
        if not _HEX64.match(sha):
            return False
        try:
            size = os.stat(self._blob_path(sha)).st_size
        except FileNotFoundError:
            return False
        return nbytes is None or size == nbytes

    def blob_bytes(self, sha: str, where: Optional[str] = None) -> bytes:
        """The raw bytes of blob ``sha``, their sha256 verified (``StoreError`` naming ``where``,
        e.g. the tensor, if not)."""
        of = "" if where is None else " of %s" % where
        try:
            with open(self._blob_path(sha), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise StoreError("blob %s%s is missing" % (sha[:12], of)) from None
        except OSError as e:
            raise StoreError("cannot read blob %s%s: %s" % (sha[:12], of, e.strerror)) from None
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise StoreError("blob %s%s is corrupt: its sha256 is %s" % (sha[:12], of, got[:12]))
        return data

    def read_blob(self, sha: str, dtype: str, shape: List[int], name: str = "?",
                  version: Optional[int] = None) -> np.ndarray:
        where = "tensor %s%s" % (json.dumps(name), "" if version is None else
                                 " of version %d" % version)
        data = self.blob_bytes(sha, where)
        dt = _DTYPES[dtype]
        n = 1
        for d in shape:
            n *= int(d)
        if n * dt.itemsize != len(data):
            raise StoreError("blob %s of %s has %d bytes, shape %s %s needs %d"
                             % (sha[:12], where, len(data), shape, dtype, n * dt.itemsize))
        return np.frombuffer(data, dtype=dt).reshape(tuple(shape))

    def verify(self) -> Tuple[List[str], List[str]]:
        """Checks every stored version's blobs against their sha256 and size, reading only.
        Returns ``(problems, notes)``, one line each: problems are damage (a blob missing or
        corrupt, a manifest unreadable, current unusable); notes are leftovers a writable open
        tidies away (temp files, a version written but never committed)."""
        problems: List[str] = []
        notes: List[str] = []
        for line in self.recovered:
            (notes if "interrupted" in line else problems).append(line)
        with self._mu:
            mans = sorted(self._manifests.items())
        for v, man in mans:
            for name, t in sorted(man["tensors"].items()):
                try:
                    got, n = _hash_file(self._blob_path(t["sha256"]))
                except FileNotFoundError:
                    problems.append("version %d: blob %s of tensor %s is missing"
                                    % (v, t["sha256"][:12], json.dumps(name)))
                    continue
                except OSError as e:
                    problems.append("version %d: blob %s of tensor %s is unreadable: %s"
                                    % (v, t["sha256"][:12], json.dumps(name), e.strerror))
                    continue
                if got != t["sha256"]:
                    problems.append("version %d: blob %s of tensor %s is corrupt: its sha256 is %s"
                                    % (v, t["sha256"][:12], json.dumps(name), got[:12]))
                elif n != t["nbytes"]:
                    problems.append("version %d: blob %s of tensor %s has %d bytes, the manifest "
                                    "says %d" % (v, t["sha256"][:12], json.dumps(name), n, t["nbytes"]))
        return problems, notes

    @property
    def history(self) -> List[Dict[str, Any]]:
        """The history log (the rotated generation, then the live one), oldest first (a torn
        last line is ignored)."""
        lines: List[bytes] = []
        with self._mu:  # not between the two reads of a rotation
            for name in ("history.1.jsonl", "history.jsonl"):
                try:
                    with open(self._p(name), "rb") as f:
                        lines += f.read().split(b"\n")
                except FileNotFoundError:
                    pass
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line.decode("utf-8")))
                except ValueError:
                    pass
        return out

    def disk_usage(self) -> Dict[str, int]:
        """Bytes on disk: blobs, manifests, and blob count."""
        blobs = n = 0
        for d in self._blob_dirs():
            for name in os.listdir(d):
                blobs += os.stat(os.path.join(d, name)).st_size
                n += 1
        mans = sum(os.stat(self._p("versions", f)).st_size
                   for f in os.listdir(self._p("versions")))
        return {"blob_bytes": blobs, "manifest_bytes": mans, "blobs": n}

    # ---- writing ------------------------------------------------------------------------

    def prepare(self, version: int, tensors: Mapping[str, np.ndarray], base: Optional[int] = None,
                meta: Optional[Mapping[str, Any]] = None,
                hashes: Optional[Mapping[str, str]] = None) -> Pending:
        """Computes (in memory only) the manifest of ``version``: ``tensors`` applied on ``base``
        (default: the current version; nothing if the store is empty, then ``tensors`` must be
        the full set). Hashes every tensor not in ``hashes`` (name -> hex sha256 of its bytes,
        computed from these very arrays in this process: ``spool``; a content-addressed store may
        trust that, and hashing again would be a second pass over every byte). Raises
        ``StoreError`` if ``version`` is already stored or ``base`` is not."""
        with self._mu:
            self._writable("store version %d" % version)
            if version in self._manifests:
                raise StoreError("version %d is already in the store" % version)
            if base is None:
                base = self._current
            if base is not None and base not in self._manifests:
                raise StoreError("base version %d is not in the store (stored: %s)"
                                 % (base, self._list_str()))
            entries: Dict[str, Any] = (
                dict(self._manifests[base]["tensors"]) if base is not None else {})
            new_blobs: Dict[str, np.ndarray] = {}
            changed = []
            for name, arr in tensors.items():
                a = np.asarray(arr)
                if a.dtype.name not in _DTYPES:
                    raise StoreError("tensor %s: dtype %s cannot be stored" % (json.dumps(name),
                                                                               a.dtype.name))
                sha = hashes[name] if hashes and name in hashes else tensor_sha256(a)
                entry = {"sha256": sha, "dtype": a.dtype.name, "shape": [int(d) for d in a.shape],
                         "nbytes": int(a.nbytes)}
                if entries.get(name) != entry:
                    changed.append(name)
                entries[name] = entry
                if sha not in new_blobs and not self._blob_ok(sha, int(a.nbytes)):
                    new_blobs[sha] = a
            man: Dict[str, Any] = {
                "format": FORMAT,
                "version": int(version),
                "base": base,
                "stored": _now(),
                "tensors": dict(sorted(entries.items())),
                "changed": sorted(changed),
            }
            for k, v in (meta or {}).items():
                if k not in man and v is not None:
                    man[k] = v
            return Pending(version=int(version), manifest=man, new_blobs=new_blobs,
                           changed=sorted(changed))

    def spool(self, version: int, tensors: Mapping[str, np.ndarray], base: Optional[int] = None,
              meta: Optional[Mapping[str, Any]] = None) -> Tuple[Pending, Dict[str, str]]:
        """``prepare`` with the bytes written meanwhile, so the hash and the write overlap: each
        tensor goes to a temp file in blobs/ (write, fsync) in the calling thread while its
        sha256 runs in the store's hash thread (hashlib and file writes release the GIL).
        Returns the ``Pending`` and the temp files of its new blobs for ``write(pending,
        spooled)``; the temp files of tensors the store holds already are removed (written for
        nothing: a tensor is not known to be unchanged before its hash is). Nothing is visible
        until ``write``; a crash leaves only ``.tmp-*`` files, which opening the store removes.
        A write failure raises ``StoreError`` with ``write``'s message, leaving nothing."""
        self._writable("store version %d" % version)
        arrays = {name: np.asarray(a) for name, a in tensors.items()}
        for name, a in arrays.items():
            if a.dtype.name not in _DTYPES:
                raise StoreError("tensor %s: dtype %s cannot be stored" % (json.dumps(name), a.dtype.name))
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="refitd-blobhash")
        hashing: Dict[str, Future] = {n: self._hasher.submit(tensor_sha256, a) for n, a in arrays.items()}
        temps: Dict[str, str] = {}
        try:
            try:
                for name, a in arrays.items():
                    temps[name] = write_temp(self._p("blobs"), "blob", [_as_bytes_view(a)],
                                             durable=self.durable)
            except OSError as e:
                raise StoreError("cannot write version %d to the store: %s"
                                 % (version, e.strerror or e)) from None
            hashes = {n: f.result() for n, f in hashing.items()}
            pending = self.prepare(version, arrays, base, meta, hashes=hashes)
        except BaseException:
            wait(list(hashing.values()))
            for tmp in temps.values():
                self._cleanup(tmp)
            raise
        spooled: Dict[str, str] = {}
        for name, tmp in temps.items():
            sha = hashes[name]
            if sha in pending.new_blobs and sha not in spooled:
                spooled[sha] = tmp
            else:
                self._cleanup(tmp)
        return pending, spooled

    def _blob_ok(self, sha: str, nbytes: int) -> bool:
        return self.has_blob(sha, nbytes)

    def write(self, pending: Pending, spooled: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
        """Makes ``pending`` durable: every new blob (temp, fsync, rename; ``spooled``: sha256 ->
        its temp file ``spool`` wrote and fsynced already, renamed here), the fsync of each
        blob directory touched, then the manifest (temp, fsync, rename, fsync of versions/).
        Does not move ``current``: until ``commit`` the version is invisible after a restart.
        On failure whatever was written is removed again (the spooled temp files too)."""
        spooled = dict(spooled or {})
        try:
            return self._write(pending, spooled)
        finally:
            for tmp in spooled.values():  # not renamed: a failure, or a blob stored meanwhile
                self._cleanup(tmp)

    def _write(self, pending: Pending, spooled: Dict[str, str]) -> Dict[str, Any]:
        with self._mu:
            v = pending.version
            self._writable("store version %d" % v)
            if v in self._manifests:
                raise StoreError("version %d is already in the store" % v)
            written: List[str] = []
            made: List[str] = []
            try:
                dirs: Set[str] = set()
                for sha, arr in pending.new_blobs.items():
                    d = self._p("blobs", sha[:2])
                    if not os.path.isdir(d):
                        os.mkdir(d)
                        made.append(d)
                        self._fsync_dir(self._p("blobs"))
                    dest = self._blob_path(sha)
                    if sha in spooled:
                        # blobs/ itself is not synced for the temp name that left it: were that
                        # lost in a crash, the stray .tmp- name is removed on the next open
                        os.replace(spooled.pop(sha), dest)
                    else:
                        self._write_atomic(dest, [_as_bytes_view(arr)], sync_dir=False)
                    written.append(dest)
                    dirs.add(d)
                for d in sorted(dirs):
                    self._fsync_dir(d)
                self._write_json(self._p("versions", "%d.json" % v), pending.manifest)
            except OSError as e:
                # leave the store as it was: no blob, no manifest, no new directory
                for p in written:
                    self._cleanup(p)
                self._cleanup(self._p("versions", "%d.json" % v))
                for d in made:
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
                raise StoreError("cannot write version %d to the store: %s"
                                 % (v, e.strerror or e)) from None
            self._manifests[v] = pending.manifest
            return json.loads(json.dumps(pending.manifest))

    def commit(self, version: int, event: str = "applied", **fields: Any) -> None:
        """Moves ``current`` to ``version`` (the commit point; crash-safe) and appends
        ``event`` to the history. ``highest`` never goes down."""
        with self._mu:
            self._writable("move current to version %d" % version)
            if version not in self._manifests:
                raise StoreError("version %d is not in the store (stored: %s)"
                                 % (version, self._list_str()))
            previous = self._current
            highest = version if self._highest is None else max(self._highest, version)
            try:
                self._write_json(self._p("current"), {"format": FORMAT, "version": version,
                                                      "highest": highest})
            except OSError as e:
                # Failed before the rename: nothing changed, the caller may discard the version.
                # Failed after it (the directory fsync): the new pointer is what a restart reads,
                # so the version *is* committed -- say so rather than pretend otherwise.
                try:
                    on_disk = self._read_current()
                except StoreError:
                    on_disk = None
                if on_disk is None or on_disk[0] != version:
                    raise StoreError("cannot move current to version %d: %s"
                                     % (version, e.strerror or e)) from None
                self.warnings.append("current moved to version %d but its directory could "
                                     "not be synced: %s" % (version, e.strerror or e))
            self._current, self._highest = version, highest
            rec = {"event": event, "version": version, "previous": previous}
            rec.update(fields)
            try:
                self._append_history(rec)
            except OSError as e:  # the commit point is passed; a lost log line must not undo it
                self.warnings.append("history line for version %d not written: %s"
                                     % (version, e.strerror or e))

    def discard(self, version: int) -> None:
        """Removes a version that was written but never committed (an update that failed after
        ``write``), and the blobs only it referenced. Refuses the current version."""
        with self._mu:
            if version == self._current:
                raise StoreError("version %d is current; it cannot be discarded" % version)
            if self._highest is not None and version <= self._highest:
                raise StoreError("version %d was committed; only retention removes it" % version)
            self._manifests.pop(version, None)
            self._unlink(self._p("versions", "%d.json" % version))
            self._fsync_dir(self._p("versions"))
            self._collect_blobs()

    def revert(self, version: int, to: Optional[int], highest: Optional[int], **fields: Any) -> None:
        """Undoes ``commit(version)`` of an update whose engine publish failed: ``current`` and
        ``highest`` go back to ``to``/``highest``, the version is discarded if it was new."""
        with self._mu:
            if to is None:
                self._unlink(self._p("current"))
                self._fsync_dir(self.path)
            else:
                self._write_json(self._p("current"), {"format": FORMAT, "version": to,
                                                      "highest": highest})
            self._current, self._highest = to, highest
            rec = {"event": "reverted", "version": version, "to": to}
            rec.update(fields)
            self._append_history(rec)
            if highest is None or version > highest:
                self.discard(version)

    def put(self, version: int, tensors: Mapping[str, np.ndarray], base: Optional[int] = None,
            meta: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """``spool`` + ``write``: stores a version (not yet current). Returns its manifest."""
        return self.write(*self.spool(version, tensors, base, meta))

    def pin(self, version: int) -> bool:
        """Keeps ``version`` through retention until unpinned. Idempotent, as ``unpin`` is:
        False when it was pinned already. A version not in the store is an error."""
        with self._mu:
            if version not in self._manifests:
                raise StoreError("version %d is not in the store (stored: %s)"
                                 % (version, self._list_str()))
            if version in self._pins:
                return False
            self._write_pins(sorted(self._pins | {version}), "pin version %d" % version)
            self._pins.add(version)
            self._history_quiet({"event": "pinned", "version": version})
            return True

    def unpin(self, version: int) -> bool:
        """Lets retention remove ``version`` again. False when it was not pinned; a version
        not in the store is an error (as for ``pin``: a typo must not pass silently)."""
        with self._mu:
            if version not in self._pins:
                if version not in self._manifests:
                    raise StoreError("version %d is not in the store (stored: %s)"
                                     % (version, self._list_str()))
                return False
            self._write_pins(sorted(self._pins - {version}), "unpin version %d" % version)
            self._pins.discard(version)
            self._history_quiet({"event": "unpinned", "version": version})
            return True

    def _write_pins(self, pins: List[int], what: str) -> None:
        self._writable(what)
        try:
            self._write_json(self._p("pins.json"), pins)
        except OSError as e:  # full or turned read-only: pins.json is unchanged (atomic write)
            raise StoreError("cannot %s: %s (pins.json unchanged)" % (what, e.strerror or e)) from None

    def _history_quiet(self, rec: Dict[str, Any]) -> None:
        # after the change is durable, a lost log line must not report it as failed
        try:
            self._append_history(rec)
        except OSError as e:
            self.warnings.append("history line not written: %s" % (e.strerror or e))

    def record(self, event: str, **fields: Any) -> None:
        """Appends an event to history.jsonl (O_APPEND, fsync)."""
        with self._mu:
            self._writable("record %s" % event)
            rec = {"event": event}
            rec.update(fields)
            self._append_history(rec)

    def _append_history(self, rec: Dict[str, Any]) -> None:
        line = dict(ts=_now())
        line.update(rec)
        data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode("utf-8")
        self._rotate_history()
        append_durable(self._p("history.jsonl"), data, durable=self.durable)

    def _rotate_history(self) -> None:
        """Keeps the log bounded: at HISTORY_MAX the live file replaces the older generation."""
        try:
            if os.stat(self._p("history.jsonl")).st_size < self.HISTORY_MAX:
                return
        except FileNotFoundError:
            return
        os.replace(self._p("history.jsonl"), self._p("history.1.jsonl"))
        self._fsync_dir(self.path)

    # ---- retention ----------------------------------------------------------------------

    def retained(self) -> List[int]:
        """Versions retention keeps: the newest ``keep``, pinned ones and the current one."""
        with self._mu:
            vs = sorted(self._manifests)
            keep = set(vs[-self.keep:]) | (self._pins & set(vs))
            if self._current is not None:
                keep.add(self._current)
            return sorted(keep)

    def gc(self) -> Dict[str, Any]:
        """Applies retention, then deletes blobs no remaining manifest references. Manifests go
        first (a crash in between leaves only unreferenced blobs, collected on the next open)."""
        with self._mu:
            if self.read_only:
                return {"pruned": [], "blobs": 0, "bytes": 0}
            keep = set(self.retained())
            drop = [v for v in sorted(self._manifests)
                    if v not in keep and (self._highest is not None and v <= self._highest)]
            for v in drop:
                self._unlink(self._p("versions", "%d.json" % v))
                del self._manifests[v]
            if drop:
                self._fsync_dir(self._p("versions"))
            blobs, freed = self._collect_blobs()
            if drop:
                self._append_history({"event": "pruned", "versions": drop, "blobs": blobs,
                                      "bytes": freed})
            return {"pruned": drop, "blobs": blobs, "bytes": freed}

    def _collect_blobs(self) -> Tuple[int, int]:
        referenced = {t["sha256"] for m in self._manifests.values() for t in m["tensors"].values()}
        n = freed = 0
        emptied = False
        for d in self._blob_dirs():
            removed = False
            for name in os.listdir(d):
                if name not in referenced:
                    p = os.path.join(d, name)
                    try:
                        freed += os.stat(p).st_size
                        os.unlink(p)
                    except FileNotFoundError:
                        continue
                    n += 1
                    removed = True
            if removed:
                if not os.listdir(d):  # an empty fan-out directory goes too
                    os.rmdir(d)
                    emptied = True
                else:
                    self._fsync_dir(d)
        if emptied:
            self._fsync_dir(self._p("blobs"))
        return n, freed
