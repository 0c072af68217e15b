"""Whether this CPU does bf16 arithmetic natively (issue 35).

bf16 autocast runs on any x86 CPU, but only AVX-512 BF16 or AMX make it
faster than float32; elsewhere (AVX2-only CPUs) every bf16 matrix product is
emulated, several times slower. So ``precision: bf16`` on a CPU is accepted
only where :func:`cpu_bf16` finds one of those, and refused otherwise with
:func:`bf16_refusal` naming the YAML key and the fix, before any compute (the
project's pre-run check and ``pipelines/utils.inference_setup``; the core
``train()`` itself does what its ``mixed_precision`` says).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

#: /proc/cpuinfo flags of native bf16 arithmetic (AVX-512 BF16 dot products, AMX tiles).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Vector flags shown beside them, so a report says what the CPU has instead.
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuBf16:
    """What the CPU is and whether it has native bf16 arithmetic."""

    name: str
    flags: tuple[str, ...]  # those of SHOWN_FLAGS it has
    capability: str  # torch.backends.cpu.get_cpu_capability(): e.g. AVX2, AVX512, AMX...
    supported: bool

    def describe(self) -> str:
        flags = " ".join(self.flags) or "none of " + " ".join(SHOWN_FLAGS)
        return f"{self.name} (flags: {flags}; torch kernels: {self.capability})"


def _cpuinfo() -> tuple[str, set[str]]:
    """The model name and the flags of the first processor in /proc/cpuinfo (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    name, flags = platform.processor() or platform.machine(), set()
    if not path.exists():
        return name, flags
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


@lru_cache(maxsize=1)
def cpu_bf16() -> CpuBf16:
    """This machine's CPU (read once): native bf16 when /proc/cpuinfo has
    ``avx512_bf16`` or ``amx_bf16``, or torch's kernels were built for AMX."""
    name, flags = _cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    supported = any(f in flags for f in BF16_FLAGS) or "AMX" in capability.upper()
    return CpuBf16(name, tuple(f for f in SHOWN_FLAGS if f in flags), capability, supported)


def bf16_refusal(key: str, fix: str = '"no"') -> str | None:
    """None where the CPU does bf16 natively; else the message refusing
    ``<key>: bf16`` (the YAML key), with the fix (``<key>: <fix>``, float32)."""
    cpu = cpu_bf16()
    if cpu.supported:
        return None
    return (f"Invalid parameters in '{key}': bf16 on this CPU, {cpu.describe()}, which has no native bf16 "
            f"arithmetic (neither {' nor '.join(BF16_FLAGS)}): bf16 autocast would be emulated, over ten times "
            f"slower than float32 (docs/BENCHMARK.md). Set '{key}: {fix}' (float32) on this machine; bf16 pays "
            "on CPUs with AVX-512 BF16 or AMX, and on GPUs.")
