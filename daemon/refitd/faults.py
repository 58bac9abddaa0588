"""TEST-ONLY fault injection, named as such: nothing here runs unless an environment variable
whose name starts with ``REFITD_TEST_ONLY_`` is set, and no config key reaches it. The fault
tests (tests/test_faults.py) use it to make the engine hang or the workers die inside a real
daemon, to prove the watchdog and the supervisor react.

* ``REFITD_TEST_ONLY_HANG_ENGINE_AFTER=N``: after N inferences every worker blocks forever
  inside its next inference, as a wedged device call would.
* ``REFITD_TEST_ONLY_KILL_WORKERS_AFTER=N``: after N inferences every worker thread ends with an
  exception the worker loop does not handle, as a bug would.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Optional

__all__ = ["worker_fault"]

HANG = "REFITD_TEST_ONLY_HANG_ENGINE_AFTER"
KILL = "REFITD_TEST_ONLY_KILL_WORKERS_AFTER"


class _WorkerKilled(BaseException):
    """Escapes the worker loop's ``except Exception`` on purpose (test-only)."""


def _count(var: str) -> Optional[int]:
    v = os.environ.get(var)
    return int(v) if v is not None and v.isdigit() else None


def worker_fault() -> Optional[Callable[[], None]]:
    """The hook a worker calls before each inference, or None (the normal case)."""
    hang, kill = _count(HANG), _count(KILL)
    if hang is None and kill is None:
        return None
    lock = threading.Lock()
    seen = [0]
    forever = threading.Event()

    def hook() -> None:
        with lock:
            seen[0] += 1
            n = seen[0]
        if hang is not None and n > hang:
            forever.wait()  # never set: the "engine call" never returns
        if kill is not None and n > kill:
            raise _WorkerKilled("test-only: worker killed after %d inferences" % kill)
    return hook
