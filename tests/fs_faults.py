"""Real filesystem faults for the survival tests: a read-only directory and a full one.

As root (CI here) permissions do not stop writes, so a fault is a real mount: a tmpfs of a given
size (ENOSPC when full) that can be remounted read-only (EROFS). Without root a read-only
directory is chmod 0555 (EACCES: the same refusal to the daemon) and a full disk cannot be
made, so those tests fail loudly rather than pass without running."""
from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterator


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(path: str, size: str = "64m") -> Iterator[str]:
    """A size-limited tmpfs mounted on ``path`` (created) for the with-block."""
    if not is_root():
        raise AssertionError("a size-limited tmpfs needs root (mount); run this test as root")
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def set_read_only(path: str, ro: bool = True) -> None:
    """Remounts the tmpfs at ``path`` read-only (root), or chmods its tree (not root)."""
    if is_root():
        subprocess.run(["mount", "-o", "remount,%s" % ("ro" if ro else "rw"), path], check=True)
        return
    mode = 0o555 if ro else 0o755
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), mode)
    os.chmod(path, mode)


def fill(path: str) -> int:
    """Writes a filler file in ``path`` until the filesystem is full (ENOSPC); returns its size."""
    n = 0
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\0" * 4096
        while True:
            try:
                n += os.write(fd, block)
            except OSError:
                break
    finally:
        os.close(fd)
    return n
