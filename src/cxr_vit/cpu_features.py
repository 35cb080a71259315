"""What this CPU computes natively, read from ``/proc/cpuinfo``: the vector width, bf16 and int8 dot products.

``--precision auto`` reads it (bf16 where the CPU has native bf16: AVX512-BF16 or AMX-BF16), and the CPU inference
benchmark builds the CPU's peak from it (:mod:`cxr_vit.benchmarks.peak`). Without ``/proc/cpuinfo`` (not Linux)
nothing is known: no flags, so ``auto`` stays fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` entries (``flags``, ``vendor_id``, ``cpu family`` ...); {} if none."""
    if not cpuinfo.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (``avx512f``, ``avx512_bf16``, ``avx512_vnni`` ...); empty where unknown."""
    return frozenset(cpu_fields(cpuinfo).get("flags", "").split())


def native_cpu_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16), so bf16 autocast is faster than fp32."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)
