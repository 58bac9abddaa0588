"""What every benchmark prints beside its figures: the CPU and the kernel it ran on."""
from __future__ import annotations

import platform

__all__ = ["cpu_model", "kernel"]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel() -> str:
    return platform.release()
