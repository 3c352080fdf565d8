"""The machine a benchmark ran on, as its JSON records it: float kernels differ between CPU models (MKL and oneDNN
pick their code paths by vendor and instruction set), so a figure is reproducible bit for bit only on the CPU that
wrote it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 9R14"), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
