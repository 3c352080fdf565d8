"""The machine a benchmark ran on, as its JSON records it: float kernels differ between CPU models (MKL and oneDNN
pick their code paths by vendor, microarchitecture and instruction set), so a figure is reproducible bit for bit only
on the CPU that wrote it."""

from __future__ import annotations

import platform
from pathlib import Path

# the instruction sets MKL's and oneDNN's float kernels dispatch on (a VM may hide some of them)
KERNEL_ISAS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 9R14"), else what `platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> str:
    """The CPU as far as float results depend on it: its name, family and model (VMs often show one name for several
    generations) and the kernel instruction sets it exposes."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isas = " ".join(isa for isa in KERNEL_ISAS if isa in flags)
    return f"{cpu_name()}, family {info.get('cpu family', '?')} model {info.get('model', '?')}, {isas or 'no AVX2'}"
