"""Device and precision, decided once at the edge (CLI, trainer) and passed down to the model.

    device: CUDA, then Apple's MPS, then the CPU, unless one is named.
    dtype:  bf16 autocast where the hardware has it (recent GPUs, CPUs with AVX512-BF16/AMX),
            else fp16 + loss scaling on CUDA, else fp32.
"""
import ctypes
import sys
from contextlib import nullcontext

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


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (not emulated) on this device."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The autocast dtype for a --dtype choice (None = best for the device).

    A bf16 request on a GPU without bf16 falls back to fp16, which the trainer pairs with a GradScaler.
    """
    if name is None:
        if has_fast_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return DTYPES[name]


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
    step. Keeping up to 1 GB of freed memory for reuse made the quick preset ~1.2x faster on CPU.
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
