"""device.py: the precision each device gets, chosen from what the hardware runs natively (mocked CPU flags and
GPUs), and --dtype forcing any choice."""
import pytest
import torch

from gpt2_llm import device as device_module
from gpt2_llm.device import choose_dtype, pick_dtype
from gpt2_llm.errors import UserError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")

AVX2 = {"avx2": True, "fma3": True}  # a laptop or a Zen 3 VM: no AVX-512
AVX512 = {**AVX2, "avx512_f": True, "avx512_vnni": True}  # a Skylake/Cascade Lake Xeon: oneDNN emulates bf16
AVX512_BF16 = {**AVX512, "avx512_bf16": True}  # Zen 4, Cooper Lake
AMX = {**AVX512_BF16, "amx_tile": True, "amx_bf16": True, "amx_int8": True}  # Sapphire Rapids
ARM_BF16 = {"neon": True, "bf16": True}  # Graviton 3, Neoverse V1/N2


@pytest.mark.parametrize("flags, expected, says", [
    (AVX2, torch.float32, "no bf16 instructions"),
    (AVX512, torch.float32, "emulates bf16"),
    (AVX512_BF16, torch.bfloat16, "natively (AVX512_BF16)"),
    (AMX, torch.bfloat16, "AMX_BF16"),
    (ARM_BF16, torch.bfloat16, "natively (BF16)"),
    ({}, torch.float32, "no bf16 instructions"),  # a PyTorch too old to report flags
], ids=["avx2", "avx512-emulated-bf16", "avx512-bf16", "amx", "arm-bf16", "unknown"])
def test_cpu_training_takes_bf16_only_where_the_cpu_runs_it_natively(flags, expected, says):
    precision = choose_dtype(None, CPU, flags)
    assert precision.dtype == expected
    assert says in precision.reason and "\n" not in precision.reason
    assert ("--dtype fp32" if expected == torch.bfloat16 else "--dtype bf16") in precision.reason  # how to override


@pytest.mark.parametrize("flags", [AVX2, AVX512, AVX512_BF16], ids=["avx2", "avx512", "avx512-bf16"])
@pytest.mark.parametrize("name, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                            ("fp16", torch.float16)])
def test_dtype_flag_forces_any_precision_on_any_cpu(flags, name, expected):
    precision = choose_dtype(name, CPU, flags)
    assert precision.dtype == expected and "--dtype" in precision.reason
    assert ("emulates" in precision.reason) == (name == "bf16" and "avx512_bf16" not in flags)  # forced, but warned


def test_the_cpu_choice_reads_this_machines_flags(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_capabilities", lambda: AVX512)
    assert pick_dtype(None, CPU) == torch.float32 and not device_module.has_fast_bf16(CPU)
    monkeypatch.setattr(device_module, "cpu_capabilities", lambda: AVX512_BF16)
    assert pick_dtype(None, CPU) == torch.bfloat16 and device_module.has_fast_bf16(CPU)


@pytest.mark.parametrize("capability, expected", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                                  ((7, 5), torch.float16), ((7, 0), torch.float16)],
                         ids=["ampere", "hopper", "turing", "volta"])
def test_cuda_takes_bf16_where_the_gpu_has_it_natively_else_fp16(monkeypatch, capability, expected):
    """torch.cuda.is_bf16_supported() also says yes where a T4 or V100 emulates bf16: the choice reads the GPU's
    compute capability instead."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: capability)
    assert choose_dtype(None, CUDA).dtype == expected
    assert choose_dtype("bf16", CUDA).dtype == expected  # a bf16 request on a GPU without it: fp16 + loss scaling
    assert choose_dtype("fp32", CUDA).dtype == torch.float32


def test_mps_defaults_to_fp32():
    assert choose_dtype(None, torch.device("mps")).dtype == torch.float32


def test_an_unknown_dtype_is_a_user_error():
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        choose_dtype("fp8", CPU)


def test_the_clis_dtype_names_are_the_devices():
    from gpt2_llm.commands.common import DTYPE_NAMES, INFERENCE_DTYPE_NAMES

    assert DTYPE_NAMES == tuple(device_module.DTYPES)  # the flags are built without torch, from this list
    assert set(INFERENCE_DTYPE_NAMES) <= set(DTYPE_NAMES)
