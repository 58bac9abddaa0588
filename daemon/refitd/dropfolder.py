"""What every drop folder shares (the file-drop channel's packages, the npy-dir source's
inputs): which names are complete files, and moving a handled file aside with a ``.reason``.

A writer drops a file safely by writing ``x.part`` / ``.x`` / ``x.tmp`` and renaming it in; those
names are never taken. A handled file moves into a subfolder (``applied/``, ``rejected/``,
``done/``, ``failed/``) under a free name, its companions (``.sig``) beside it, and its
``.reason`` is written atomically: whole or absent.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from .atomic import write_atomic

__all__ = ["complete_name", "move_aside"]

TEMP_SUFFIXES = (".part", ".tmp")


def complete_name(name: str) -> bool:
    """Whether ``name`` is a finished file (not a dot file, not a temp name)."""
    return bool(name) and not (name.startswith(".") or name.endswith(TEMP_SUFFIXES))


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
    # The reason first: whoever sees the file in its new place finds its reason beside it.
    if reason is not None:
        write_atomic(os.path.join(dest_dir, dest_name + ".reason"), [(reason.rstrip("\n") + "\n").encode()])
    for suffix in companions:
        src = os.path.join(folder, name + suffix)
        if os.path.exists(src):
            try:
                os.replace(src, os.path.join(dest_dir, dest_name + suffix))
            except OSError:
                pass
    try:
        os.replace(os.path.join(folder, name), os.path.join(dest_dir, dest_name))
    except FileNotFoundError:
        pass
    return dest_name
