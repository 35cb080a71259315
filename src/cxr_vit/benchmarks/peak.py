"""The CPU's peak for each precision the inference benchmark runs, computed from what it is, each with its basis.

peak = cores x (multiply-adds a core issues per cycle in that precision) x 2 operations x clock, where

- the vector width comes from ``/proc/cpuinfo``'s flags: 512 bits with AVX-512, 256 with AVX2 + FMA, else 128;
- the 512-bit FMAs a core issues per cycle come from the vendor and family: 1 on AMD Zen 4 (family 25: it splits an
  AVX-512 FMA over its two 256-bit FMA pipes), 2 on Zen 5 (family 26) and on Intel server cores with AVX-512 (one
  on some Xeon Silver/Bronze and client parts: ``--cpu_fma_per_cycle`` corrects it), 2 for 256-bit FMA units;
- bf16 with AVX512-BF16 (``VDPBF16PS``: two products per 32-bit lane) is twice fp32; with AMX-BF16, 1,024
  multiply-adds per cycle per core; without native bf16, fp32's peak (the same units compute it);
- int8 with VNNI (``VPDPBUSD``: four u8 x s8 products per 32-bit lane) is four times fp32; with AMX-INT8, 2,048
  multiply-adds per cycle per core; without VNNI, 4/3 of fp32 (``VPMADDUBSW`` + ``VPMADDWD`` + ``VPADDD``);
- the clock is measured: a chain of dependent integer adds (one a cycle on every x86-64 core since the Pentium
  Pro) timed on this core, the best of many short runs, so the boost clock the GEMMs run at, not the nominal one.

A rate above its peak means the measurement is wrong (the wrong work counted, or timed): the benchmark flags it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import time
from typing import Any

from ..cpu_features import cpu_fields, cpu_flags

ADDS_PER_LOOP = 64
ADD_RAX_1 = bytes.fromhex("4883c001")  # add rax, 1: each waits for the one before, so one a cycle


def dependent_add_loop():
    """A native function ``f(n)`` that runs ``n`` x ``ADDS_PER_LOOP`` dependent adds (x86-64 System V), and the
    mapping that holds its code (keep it alive while calling ``f``)."""
    body = ADD_RAX_1 * ADDS_PER_LOOP + bytes.fromhex("48ffc9")  # dec rcx
    jump = -(len(body) + 6)  # jnz rel32 back to the first add, from the end of the 6-byte jnz
    code = bytes.fromhex("4889f931c0") + body + b"\x0f\x85" + jump.to_bytes(4, "little", signed=True) + b"\xc3"
    # mov rcx, rdi; xor eax, eax; <body>; jnz; ret
    memory = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    memory.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    return ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64)(address), memory


def measure_clock_hz(runs: int = 200, seconds_per_run: float = 0.001) -> tuple[float | None, str]:
    """(clock in Hz, how it was measured), or (None, why not): the best rate of dependent adds over ``runs``."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"not measured: the dependent-add loop is x86-64 code, this is {platform.machine()}"
    try:
        loop, memory = dependent_add_loop()
    except (OSError, ValueError, PermissionError) as err:  # a kernel that forbids executable anonymous memory
        return None, f"not measured: cannot map executable memory ({err})"
    iterations = 10_000
    start = time.perf_counter()
    loop(iterations)
    per_iteration = max(time.perf_counter() - start, 1e-7) / iterations
    iterations = max(100, int(seconds_per_run / per_iteration))
    best = 0.0
    for _ in range(runs):
        start = time.perf_counter()
        loop(iterations)
        best = max(best, iterations * ADDS_PER_LOOP / (time.perf_counter() - start))
    del loop
    memory.close()
    return best, f"measured: dependent integer adds, the best of {runs} runs of {seconds_per_run * 1000:g} ms"


def physical_cores() -> int:
    """CPUs the OS sees, less SMT siblings (two hardware threads of a core share its FMA units)."""
    fields = cpu_fields()
    count = os.cpu_count() or 1
    if fields.get("siblings", "").isdigit() and fields.get("cpu cores", "").isdigit():
        return max(1, count * int(fields["cpu cores"]) // int(fields["siblings"]))
    return count


def fma_per_cycle(flags: frozenset[str], vendor: str, family: int | None) -> tuple[int, str]:
    """(full-width fp32 FMA instructions a core issues per cycle, why)."""
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family == 25:
            return 1, "AMD Zen 4: one 512-bit FMA a cycle, split over two 256-bit pipes"
        if vendor == "AuthenticAMD":
            return 2, f"AMD family {family}: two 512-bit FMA a cycle (Zen 5)"
        return 2, f"{vendor or 'this CPU'} with AVX-512: two 512-bit FMA units (Xeon Gold/Platinum; one on some parts)"
    return 2, "two vector FMA units a cycle"


def cpu_peaks(
    cores: int, clock_hz: float | None, fma_override: int | None = None, flags: frozenset[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per precision (``fp32``, ``bf16``, ``int8``): ``ops_per_s`` (multiply and add counted apart; None when the
    clock is unknown) and ``basis``, the sentence it is computed from."""
    flags = cpu_flags() if flags is None else flags
    fields = cpu_fields()
    vendor = fields.get("vendor_id", "")
    family = int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None
    if "avx512f" in flags:
        bits, isa = 512, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        bits, isa = 256, "AVX2 + FMA"
    else:
        bits, isa = 128, "SSE"
    issue, why = fma_per_cycle(flags, vendor, family)
    if fma_override:
        issue, why = fma_override, f"{fma_override} FMA a cycle (--cpu_fma_per_cycle)"
    lanes = bits // 32
    fp32_macs = lanes * issue  # fp32 multiply-adds a core does per cycle
    if "amx_bf16" in flags:
        bf16_macs, bf16_why = 1024, "AMX-BF16: 1,024 bf16 multiply-adds a cycle a core"
    elif "avx512_bf16" in flags:
        bf16_macs, bf16_why = 2 * fp32_macs, "AVX512-BF16, VDPBF16PS: 2 bf16 products a 32-bit lane, 2x fp32"
    else:
        bf16_macs, bf16_why = fp32_macs, "no native bf16: the fp32 units, fp32's peak"
    if "amx_int8" in flags:
        int8_macs, int8_why = 2048, "AMX-INT8: 2,048 int8 multiply-adds a cycle a core"
    elif "avx512_vnni" in flags or "avx_vnni" in flags:
        int8_macs, int8_why = 4 * fp32_macs, "VNNI, VPDPBUSD: 4 u8 x s8 products a 32-bit lane, 4x fp32"
    else:
        int8_macs, int8_why = fp32_macs * 4 // 3, "no VNNI: VPMADDUBSW + VPMADDWD + VPADDD, 4/3 of fp32"
    clock = f"{clock_hz / 1e9:.2f} GHz" if clock_hz else "clock unknown"
    fp32_basis = f"{cores} cores x {fp32_macs} fp32 FMA a cycle ({isa}: {lanes} lanes; {why}) x 2 x {clock}"
    peaks = {}
    for precision, macs, basis in (
        ("fp32", fp32_macs, fp32_basis),
        ("bf16", bf16_macs, f"{cores} cores x {bf16_macs} multiply-adds a cycle ({bf16_why}) x 2 x {clock}"),
        ("int8", int8_macs, f"{cores} cores x {int8_macs} multiply-adds a cycle ({int8_why}) x 2 x {clock}"),
    ):
        ops = cores * macs * 2 * clock_hz if clock_hz else None
        peaks[precision] = {"ops_per_s": ops, "macs_per_cycle_per_core": macs, "basis": basis}
    return peaks
