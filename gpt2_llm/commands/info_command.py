"""`info`: this machine as the project sees it, and the choices it makes here, each with its reason.

    python main.py info            # CPU, ISA flags, threads, device, precision and kernels, versions, matmul peaks
    python main.py info --no-peak  # without the ~1 s matmul measurement

Paste its output into a bug report or beside a benchmark figure: it names the machine. Runs without numba and
without a GPU.
"""
import importlib.metadata
import os
import platform


def add_arguments(name, parser):
    parser.add_argument("--no-peak", action="store_true", help="skip measuring the fp32 and bf16 matmul peaks")
    parser.add_argument("--device", default=None, help="report for this device (default: cuda, then mps, then cpu)")


def version(package: str) -> str:
    """The installed version of package, read without importing it: version('numba') -> '0.68.1'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def decoding_kernels(device, prepare) -> str:
    """'fp32: compiled matvec, the faster here (...); bf16: plain PyTorch kernels (oneDNN has no bf16 here)'"""
    import torch

    if device.type != "cpu":
        return f"the model as it is, under {device.type} autocast"
    bf16 = ("oneDNN prepacked" if prepare.can_prepack(torch.bfloat16)
            else "plain PyTorch kernels (no oneDNN bf16 on this CPU)")
    return f"{prepare.fp32_decode_kernel().reason}; bf16: {bf16}"


def run(args):
    import torch

    from gpt2_llm import hardware
    from gpt2_llm.infer import prepare
    from gpt2_llm.model.attention import attention_kernel
    from gpt2_llm.device import choose_dtype, pick_device
    from gpt2_llm.tokenizer.compiled import kernels_cache_status

    device = pick_device(args.device)
    cuda = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    rows = [
        ("CPU", hardware.cpu_model()),
        ("ISA", " ".join(hardware.isa_flags()) or "none of " + ", ".join(hardware.ISA_FLAGS)),
        ("threads", f"{torch.get_num_threads()} torch threads on {os.cpu_count()} cores "
                    "(OMP_NUM_THREADS or torch.set_num_threads change it)"),
        ("device", f"{device} (CUDA GPU: {cuda}; MPS: {'yes' if torch.backends.mps.is_available() else 'no'})"),
        ("training", choose_dtype(None, device).reason),
        ("decoding", decoding_kernels(device, prepare)),
        ("int8", prepare.int8_kernel(device).reason),
        ("attention", ", ".join(f"{name} {attention_kernel(torch.empty(1, 1, 1, 64, dtype=dtype, device=device), 256)}"
                                for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)))
                      + " (at 256 keys)"),
        ("tokenizer", f"compiled kernels: {kernels_cache_status()}"),
        ("versions", f"python {platform.python_version()}, torch {torch.__version__} "
                     f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), numba {version('numba')}, "
                     f"numpy {version('numpy')}"),
    ]
    if not args.no_peak:
        peaks = {name: hardware.matmul_peak(dtype) for name, dtype in (("fp32", torch.float32),
                                                                       ("bf16", torch.bfloat16))}
        rows.append(("matmul peak", ", ".join(f"{name} {gflops:.0f} GFLOP/s" for name, gflops in peaks.items())
                     + " (512x512, measured now)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
