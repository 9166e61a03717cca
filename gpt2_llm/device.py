"""Device and precision, decided once at the edge (CLI, trainer) and passed down to the model.

    device: CUDA, then Apple's MPS, then the CPU, unless one is named.
    dtype:  bf16 autocast where the hardware runs it natively (recent GPUs, CPUs with AVX512-BF16, AMX or
            ARM's BF16), else fp16 + loss scaling on CUDA, else fp32. Read from the CPU's flags, not from
            oneDNN, which calls bf16 supported wherever it can emulate it.
"""
import ctypes
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from typing import NamedTuple

import torch

from gpt2_llm.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str | None = None) -> torch.device:
    """The named device, or the fastest one present: pick_device() -> device('cuda') on a GPU box."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this PyTorch sees no CUDA GPU; use --device cpu (or leave --device out)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps")
    return device


# CPU instruction sets that run bf16 matmuls natively: x86's AVX512-BF16 and AMX, ARM's BF16 extension. Where
# oneDNN finds none of them but has AVX-512 it still reports bf16 "supported" and emulates it, slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_capabilities() -> Mapping:
    """This CPU's instruction sets as PyTorch's cpuinfo reads them: {'avx2': True, 'avx512_bf16': False, ...}."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return get() if get is not None else {}


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (not emulated) on this device."""
    return choose_dtype(None, device).dtype == torch.bfloat16


class Precision(NamedTuple):
    dtype: torch.dtype
    reason: str  # one line for the user: the choice, why, and how to override it


def choose_dtype(name: str | None, device: torch.device, capabilities: Mapping | None = None) -> Precision:
    """The autocast dtype for a --dtype choice (None = what the hardware runs natively), and why.

        choose_dtype(None, cpu) -> Precision(torch.float32, 'fp32: this CPU emulates bf16 (AVX-512 without ...')

    A bf16 request on a GPU without bf16 falls back to fp16, which the trainer pairs with a GradScaler.
    """
    if name is not None:
        if name not in DTYPES:
            raise UserError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
        if name == "bf16" and device.type == "cuda" and not _cuda_has_bf16(device):
            return Precision(torch.float16, "fp16: --dtype bf16 asked, but this GPU has no bf16; fp16 with loss scaling")
        emulated = name == "bf16" and device.type == "cpu" and choose_dtype(None, device, capabilities).dtype != \
            torch.bfloat16
        return Precision(DTYPES[name], f"{name}: asked for with --dtype" + (
            " (this CPU emulates bf16: slower than fp32)" if emulated else ""))
    if device.type == "cuda":
        if _cuda_has_bf16(device):
            return Precision(torch.bfloat16, "bf16: this GPU runs bf16 natively; --dtype fp32 forces full precision")
        return Precision(torch.float16, "fp16: this GPU has no bf16 (fp16 with loss scaling); --dtype fp32 forces "
                                        "full precision")
    if device.type != "cpu":
        return Precision(torch.float32, f"fp32: the default on {device.type}; --dtype bf16 forces bf16")
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    native = [flag for flag in NATIVE_BF16_FLAGS if capabilities.get(flag)]
    if native and torch.backends.mkldnn.is_available():
        return Precision(torch.bfloat16, f"bf16: this CPU runs bf16 natively ({', '.join(native).upper()}); "
                                         "--dtype fp32 forces full precision")
    if capabilities.get("avx512_f"):
        return Precision(torch.float32, "fp32: this CPU emulates bf16 (AVX-512 without AVX512-BF16/AMX); "
                                        "--dtype bf16 forces it")
    return Precision(torch.float32, "fp32: this CPU has no bf16 instructions; --dtype bf16 forces it (emulated)")


def _cuda_has_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere, compute capability 8.0, and later); older ones only emulate it."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The autocast dtype for a --dtype choice (None = best for the device); see choose_dtype."""
    return choose_dtype(name, device).dtype


def dtype_name(dtype: torch.dtype) -> str:
    """dtype_name(torch.bfloat16) -> 'bf16'"""
    return next(name for name, d in DTYPES.items() if d == dtype)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision context: matmuls in dtype, reductions and the loss kept in fp32 by autocast."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory_on_cpu() -> None:
    """Stop glibc from handing each step's freed activations back to the OS (Linux only).

    By default glibc unmaps big freed blocks and trims the heap, so every training step page-faults
    its activations in again, zero-filled by the kernel: for a small model that is a fifth of the
    step. Keeping up to 1 GB of freed memory for reuse makes small models' steps faster (bench/RESULTS.md).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MB (glibc's maximum) come from the heap
    mallopt(M_TRIM_THRESHOLD, 1 << 30)  # and freed ones stay there, up to 1 GB
    mallopt(M_TOP_PAD, 256 << 20)  # grow the heap in big steps, not page by page
