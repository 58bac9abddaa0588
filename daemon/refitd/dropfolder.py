"""The drop folder's applied/ and rejected/ directories: reason files written whole or not at
all, and retention so an unattended box does not keep every package it was ever sent (one
update a second is ~220 MB/h; one 100 MB update a day ~36 GB a year, on the store's disk).

An entry is a package file plus what travels with it: ``<name>.sig`` and ``<name>.reason``.
Retention counts packages and their bytes (all three files) and removes whole entries, oldest
(by the package's mtime, i.e. when it was moved there) first.
"""
from __future__ import annotations

import os
from typing import List, Tuple

__all__ = ["write_reason", "remove_partial_reasons", "prune"]

_COMPANIONS = (".sig", ".reason")
_PART = ".reason.part"


def write_reason(dest_dir: str, name: str, text: str) -> None:
    """Writes ``<name>.reason`` via a hidden ``.part`` file and a rename; on failure (a full
    disk) the ``.part`` file is removed again and the OSError raised."""
    tmp = os.path.join(dest_dir, "." + name + _PART)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")
        os.replace(tmp, os.path.join(dest_dir, name + ".reason"))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_partial_reasons(d: str) -> List[str]:
    """Removes ``.NAME.reason.part`` leftovers (a crash or a full disk while writing one)."""
    out = []
    for name in os.listdir(d):
        if name.startswith(".") and name.endswith(_PART):
            try:
                os.unlink(os.path.join(d, name))
                out.append(os.path.join(d, name))
            except OSError:
                pass
    return out


def _entries(d: str) -> List[Tuple[float, str, int]]:
    """(mtime, package name, bytes incl. companions) for every package in ``d``."""
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
    """Removes the oldest entries of ``d`` until at most ``keep`` packages and ``keep_bytes``
    bytes remain (the newest entry always stays, however large: it explains the last outcome).
    Returns the package names removed."""
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
                return gone  # an unwritable folder: try again after the next drop
        total -= size
        gone.append(name)
    return gone
