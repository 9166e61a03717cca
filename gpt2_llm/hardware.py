"""What this machine is and what it does fast: the CPU's model and instruction sets, the threads, and a measured
matmul peak. `python main.py info` prints it whole; every benchmark in bench/ prints `machine_header()` first, so
each figure names the machine it was measured on.

    >>> print(machine_header())
    machine: AMD EPYC (x86_64, family 25 model 1), 2 cores, 2 torch threads; ISA: avx2 fma3; torch 2.13.0+cpu (AVX2)

Reads flags only (PyTorch's cpuinfo, /proc/cpuinfo): nothing here needs numba or a GPU.
"""
import os
import platform
import subprocess
import time
from functools import lru_cache

import torch

from gpt2_llm.device import cpu_capabilities

# The instruction sets that decide this project's kernels, in the order a reader compares machines by.
ISA_FLAGS = ("avx2", "fma3", "avx_vnni", "avx512_f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "neon", "dot", "i8mm", "bf16", "sve")


@lru_cache(maxsize=None)
def cpu_model() -> str:
    """'AMD EPYC (x86_64, family 25 model 1)': the CPU's name, and on x86 Linux the family and model that tell
    one generation from the next when a cloud VM hides the rest of the name."""
    name, details = "", [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = {}
            for line in f:
                if not line.strip():
                    break  # the first processor says it all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        name = fields.get("model name", "")
        if "cpu family" in fields:
            details.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    except OSError:  # not Linux
        pass
    if not name and platform.system() == "Darwin":
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    name = name or str(cpu_capabilities().get("cpu_name", "")) or platform.processor() or "unknown CPU"
    return f"{name} ({', '.join(details)})"


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU has: ['avx2', 'fma3', 'avx512_f', ...]."""
    capabilities = cpu_capabilities()
    return [flag for flag in ISA_FLAGS if capabilities.get(flag)]


def machine_header() -> str:
    """One line naming the machine a figure was measured on."""
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
            f"ISA: {' '.join(isa_flags()) or 'none of ' + '/'.join(ISA_FLAGS[:4])}; "
            f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")


def matmul_peak(dtype: torch.dtype, size: int = 512, seconds: float = 0.25) -> float:
    """Measured GFLOP/s of (size x size) @ (size x size) matmuls in dtype on this CPU's torch threads."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # first call: oneDNN picks and builds its kernel
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 2:
        a @ b
        calls += 1
    return 2 * size**3 * calls / elapsed / 1e9
