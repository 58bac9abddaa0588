"""What every drop folder shares (the file-drop channel's packages, the npy-dir source's
inputs): which names are complete files, and moving a handled file aside with a ``.reason``.

A writer drops a file safely by writing ``x.part`` / ``.x`` / ``x.tmp`` and renaming it in; those
names are never taken. A handled file moves into a subfolder (``applied/``, ``rejected/``,
``done/``, ``failed/``) under a free name, its companions (``.sig``) beside it, and its
``.reason`` is written atomically: whole or absent.

Retention (``prune``): an unattended box must not keep every package it was ever sent (one
update a second is ~220 MB/h; one 100 MB update a day ~36 GB a year, on the store's disk). An
entry is a file plus its companions (``.sig``, ``.reason``); entries go whole, oldest first (by
the file's mtime: when it was moved there).

A handled file leaves the folder by a hard link into the subfolder and an unlink, not a rename:
inotify reports a rename out of a watched directory as IN_MOVED_FROM, which watchdog holds back
0.5 s waiting for its IN_MOVED_TO (and, racing its reader, sometimes even when the pair comes),
and every later drop waits behind it. A link + unlink is IN_CREATE + IN_DELETE, delayed by
nothing. A crash between the two leaves the file in both places; ``finish_moves`` ends the move
on the next start.
"""
from __future__ import annotations

import os
import threading
from typing import Iterable, List, Optional, Set, Tuple

from .atomic import TMP_PREFIX, write_atomic

__all__ = ["complete_name", "move_aside", "finish_moves", "prune", "remove_leftovers", "Claims"]

_COMPANIONS = (".sig", ".reason")

TEMP_SUFFIXES = (".part", ".tmp")


def complete_name(name: str) -> bool:
    """Whether ``name`` is a finished file (not a dot file, not a temp name)."""
    return bool(name) and not (name.startswith(".") or name.endswith(TEMP_SUFFIXES))


class Claims:
    """The names in a drop folder that are taken and not finished yet, so a file noticed again
    meanwhile (a second inotify event, the next scan) is not taken twice. Thread-safe."""

    def __init__(self) -> None:
        self._names: Set[str] = set()
        self._lock = threading.Lock()

    def claim(self, name: str) -> bool:
        """True (and ``name`` is now taken) unless it was taken already."""
        with self._lock:
            if name in self._names:
                return False
            self._names.add(name)
            return True

    def release(self, name: str) -> None:
        with self._lock:
            self._names.discard(name)


def move_aside(folder: str, sub: str, name: str, reason: Optional[str] = None,
               companions: Iterable[str] = ()) -> str:
    """Moves ``folder/name`` (and ``folder/name + suffix`` for each companion suffix) into
    ``folder/sub/`` under a free name, its ``<that name>.reason`` (when given) written before,
    and the file itself last. Returns the name it got. A file already gone is not an error."""
    dest_dir = os.path.join(folder, sub)
    os.makedirs(dest_dir, exist_ok=True)
    dest_name, i = name, 1
    while os.path.lexists(os.path.join(dest_dir, dest_name)):
        dest_name = "%s.%d" % (name, i)
        i += 1
    # The reason first: whoever sees the file in its new place finds its reason beside it. On a
    # full disk the file still moves (a rename needs no space) and the error is raised after, so
    # the drop folder does not take the same file again and again.
    failed: Optional[OSError] = None
    if reason is not None:
        try:
            write_atomic(os.path.join(dest_dir, dest_name + ".reason"), [(reason.rstrip("\n") + "\n").encode()])
        except OSError as e:  # write_atomic removed its temp file
            failed = e
    for suffix in companions:
        src = os.path.join(folder, name + suffix)
        if os.path.exists(src):
            try:
                _move(src, os.path.join(dest_dir, dest_name + suffix))
            except OSError:
                pass
    try:
        _move(os.path.join(folder, name), os.path.join(dest_dir, dest_name))
    except FileNotFoundError:
        pass
    if failed is not None:
        raise failed
    return dest_name


def _move(src: str, dst: str) -> None:
    """``src`` to ``dst`` (same file system) by link + unlink; a rename where the file system
    has no hard links or ``dst`` exists."""
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError:  # EPERM / ENOTSUP / EMLINK (vfat, some FUSE), EEXIST
        os.replace(src, dst)
        return
    os.unlink(src)


def finish_moves(folder: str, subs: Iterable[str]) -> List[str]:
    """Unlinks the files of ``folder`` that are also in one of its ``subs`` (the same inode: a
    move_aside cut off between its link and its unlink). Returns their names."""
    handled = set()
    for sub in subs:
        try:
            with os.scandir(os.path.join(folder, sub)) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    if st.st_nlink > 1:
                        handled.add((st.st_dev, st.st_ino))
        except FileNotFoundError:
            continue
    done = []
    if not handled:
        return done
    with os.scandir(folder) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            if st.st_nlink > 1 and (st.st_dev, st.st_ino) in handled:
                os.unlink(e.path)
                done.append(e.name)
    return done


def remove_leftovers(d: str) -> List[str]:
    """Removes the temp files of reason files a crash interrupted (``.tmp-*``; ``.*.reason.part``
    from before the atomic writer). Returns their paths."""
    out = []
    for name in os.listdir(d):
        if name.startswith(TMP_PREFIX) or (name.startswith(".") and name.endswith(".reason.part")):
            try:
                os.unlink(os.path.join(d, name))
                out.append(os.path.join(d, name))
            except OSError:
                pass
    return out


def _entries(d: str) -> List[Tuple[float, str, int]]:
    """(mtime, name, bytes incl. companions) for every handled file in ``d``, oldest first."""
    names = set(os.listdir(d))
    out = []
    for name in names:
        if name.startswith(".") or name.endswith(_COMPANIONS):
            continue
        try:
            st = os.lstat(os.path.join(d, name))
        except FileNotFoundError:
            continue
        size = st.st_size
        for ext in _COMPANIONS:
            if name + ext in names:
                try:
                    size += os.lstat(os.path.join(d, name + ext)).st_size
                except FileNotFoundError:
                    pass
        out.append((st.st_mtime, name, size))
    out.sort()
    return out


def prune(d: str, keep: int, keep_bytes: int) -> List[str]:
    """Removes the oldest entries of ``d`` until at most ``keep`` remain and they hold at most
    ``keep_bytes`` (the newest always stays, however large: it explains the last outcome).
    Returns the names removed."""
    entries = _entries(d)
    total = sum(e[2] for e in entries)
    gone = []
    while entries:
        over_count = len(entries) > keep
        over_bytes = total > keep_bytes and len(entries) > 1
        if not (over_count or over_bytes):
            break
        _, name, size = entries.pop(0)
        for n in (name,) + tuple(name + ext for ext in _COMPANIONS):
            try:
                os.unlink(os.path.join(d, n))
            except FileNotFoundError:
                pass
            except OSError:
                return gone  # an unwritable folder: tried again after the next drop
        total -= size
        gone.append(name)
    return gone
