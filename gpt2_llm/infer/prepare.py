"""Inference: the one decoding path of the model, shared by GPT2.generate, `predict`, beam search and
the trainer's samples, and the weight formats that make token-by-token decoding fast on a CPU.

Decoding one token multiplies one vector by every weight matrix, so its speed is the speed at which
weights stream from memory. The formats, each replacing nn.Linear modules:

  Int8Linear    weight-only int8: each output channel's row becomes int8 values q with one float
                scale s (w ~ s * q, q in -127..127, s = max|w| / 127), a quarter of fp32's bytes.
                Activations stay fp32: a token's rows go through the compiled matvec_int8, a prompt's
                through one GEMM on the dequantized weights.
  MatvecLinear  fp32 weights (the model's own tensors) through the compiled matvec_fp32 for a few rows.
  PackedLinear  fp32/bf16 weights in oneDNN's blocked layout, whose gemv reads them near memory bandwidth
                on some CPUs and below it on others: fp32_decode_kernel measures
                which of it and MatvecLinear is faster, once per machine; bf16 is always PackedLinear
                where oneDNN has bf16 kernels (matvec_kernels has none).

Two ways in:
  decoding_model(model)            what generation runs: a copy that shares every weight with the model
                                   except the Linear ones, which it holds in their fast form (in the autocast
                                   dtype when one is active). Built on first use and kept until a weight
                                   changes or the model goes back to training, so `model.generate` is as
                                   fast as `predict` without changing the model; the price, with oneDNN's
                                   format, is a second, packed copy of the Linear weights while it is kept.
  prepare_for_inference(model, ..) GPT2.for_inference: converts the model itself, in place (dtype, int8,
                                   fast Linears): no second copy, but the model can no longer train or save.
"""
import copy
import functools
import sys
import time
import weakref
from typing import NamedTuple

import torch
from torch import nn

from gpt2_llm import machine_cache
from gpt2_llm.errors import UserError

QUANTIZE_CHOICES = ("int8",)


# Up to this many rows (tokens decoded together: one per sequence of a batch) the compiled matrix-vector loops
# run the Linear layers; more rows (a prompt's prefill) are a matrix product, which PyTorch's GEMM does best.
MATVEC_MAX_ROWS = 16


def load_matvec_kernels():
    """gpt2_llm.infer.matvec_kernels, imported on first use; None where numba is not installed."""
    global _matvec_kernels
    if _matvec_kernels is None:
        try:
            from gpt2_llm.infer import matvec_kernels# imports numba; compiles nothing until a kernel's first call
        except ImportError:  # numba missing, or one that cannot load (say, built for another numpy): no kernels
            matvec_kernels = False
        _matvec_kernels = matvec_kernels
    return _matvec_kernels or None


def _is_cached(kernel) -> bool:
    """Whether numba's disk cache holds compiled code for this kernel (its index file lists an entry)."""
    try:
        return len(kernel._cache._cache_file._load_index()) > 0
    except (AttributeError, OSError):  # another numba's internals, or no cache folder: assume it compiles
        return False


_matvec_kernels = None


def _matvec(kernel, rows: torch.Tensor, out_features: int, *arrays) -> torch.Tensor:
    """Run a compiled matvec kernel on rows (M, K) -> (M, out_features) fp32, on torch's thread count.

    numba runs it on its OpenMP threads, the same libgomp team torch uses here. A process that forks after this
    must not run these kernels in the child (GNU OpenMP is not fork-safe); the project's forked workers only encode.
    """
    if kernel not in _checked_kernels:
        _checked_kernels.add(kernel)
        if not _is_cached(kernel):  # no silent stall: a machine's first decode compiles the kernel it uses
            print("gpt2-llm: compiling a decoding kernel for this CPU (once per machine, ~2 s)", file=sys.stderr,
                  flush=True)
    numba = sys.modules["numba"]  # imported by load_matvec_kernels
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    out = torch.empty(rows.size(0), out_features)
    kernel(rows.detach().float().contiguous().numpy(), *arrays, out.numpy())
    return out


_checked_kernels: set = set()  # kernels whose disk cache this process has looked at


class Int8Linear(nn.Module):
    """nn.Linear with per-output-channel symmetric int8 weights; y = (x @ q.T) * scales + bias.

    A few rows (decoding) go through the compiled matvec_int8; a prompt's many rows through one GEMM on the
    dequantized weights: the same function either way, to fp32 rounding. Its numbers are fixed once quantized,
    so the fp32 scales and bias are plain tensors (a later model.to(dtype) leaves them, and the int8 weight, be).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # quantize from full precision, whatever the model's dtype
        self.scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,): max |w| of a row maps to 127
        self.register_buffer("weight", torch.round(weight / self.scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(
            linear.out_features)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._arrays = (self.weight.numpy(), self.scales.numpy(), self.bias.numpy())  # the kernel's views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        kernels = load_matvec_kernels()
        if kernels is not None and rows.size(0) <= MATVEC_MAX_ROWS:
            y = _matvec(kernels.matvec_int8, rows, self.out_features, *self._arrays)
        else:
            y = torch.addmm(self.bias, rows.float(), (self.weight.float() * self.scales[:, None]).T)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., in) -> (..., out)


class MatvecLinear(nn.Module):
    """nn.Linear in fp32 whose few-row products run the compiled matvec_fp32 (see MATVEC_MAX_ROWS), over the
    model's own weight tensor: no second copy, unlike PackedLinear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight.detach().contiguous()  # plain attributes: the model's tensors, not new state
        self.bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._arrays = (self.weight.numpy(), self.bias.numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.size(0) <= MATVEC_MAX_ROWS:
            y = _matvec(load_matvec_kernels().matvec_fp32, rows, self.out_features, *self._arrays)
        else:
            y = torch.addmm(self.bias, rows, self.weight.T)
        return y.view(*x.shape[:-1], self.out_features)


class PackedLinear(nn.Module):
    """nn.Linear whose weight is prepacked once into oneDNN's layout for this dtype (CPU only)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype | None = None):
        super().__init__()
        self.out_features = linear.out_features
        dtype = dtype or linear.weight.dtype
        weight = linear.weight.detach().to(dtype)
        # An opaque oneDNN tensor, kept as a plain attribute: it is not state to save or convert.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1)  # 1: batch hint
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN wants the input in the weight's dtype; under autocast a LayerNorm may hand over fp32.
        x = x.to(self.packed_weight.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def can_prepack(dtype: torch.dtype) -> bool:
    """Whether this PyTorch has oneDNN's linear prepacking for dtype on this CPU."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32


def swap_linears(model: nn.Module, make) -> nn.Module:
    """Replace every nn.Linear in model (the tied lm_head too) by make(linear), in place.

    The head gets its own converted copy of the embedding table; the embedding lookup keeps the
    float table, from which it reads one row per token.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child))
    return model


class KernelChoice(NamedTuple):
    name: str | None  # None: not available here, and the caller falls back
    reason: str  # one line for the user


def int8_kernel(device: torch.device) -> KernelChoice:
    """Whether int8 decoding runs fast here: Int8Linear's compiled matvec on a CPU with numba; elsewhere it would
    decode slower than fp32, so callers fall back to fp32 and say why.

    PyTorch's own weight-only kernel (torch._weight_int8pack_mm) is fast only with bf16 activations on a CPU that
    runs bf16 natively: without AVX512-BF16 it decoded GPT-2 small slower than fp32 (bench/RESULTS.md).
    """
    if device.type != "cpu":
        return KernelChoice(None, "int8: implemented for CPU decoding; on a GPU decode in bf16/fp16 instead")
    if load_matvec_kernels() is None:
        return KernelChoice(None, "int8: needs numba (pip install numba) for its compiled kernel; without it int8 "
                                  "decodes slower than fp32, so the weights stay unquantized")
    return KernelChoice("matvec", "int8: weight-only int8 (a quarter of fp32's bytes), compiled matvec for decoding, "
                                  "fp32 GEMM for prompts")


@functools.lru_cache(maxsize=None)
def fp32_decode_kernel() -> KernelChoice:
    """Which fp32 Linear decodes faster on this CPU, measured once per machine (and cached on disk): the compiled
    matvec (MatvecLinear) or oneDNN's prepacked gemv (PackedLinear). The winner differs between CPUs (measured
    figures: bench/RESULTS.md)."""
    packed = can_prepack(torch.float32)
    if load_matvec_kernels() is None:
        return KernelChoice("packed" if packed else None, "fp32: oneDNN's prepacked gemv (numba not installed)")
    if not packed:
        return KernelChoice("matvec", "fp32: compiled matvec (no oneDNN prepacking in this PyTorch)")
    winner, figures = machine_cache.remember("fp32_decode_kernel", _race_fp32_kernels)
    return KernelChoice(winner, f"fp32: {'compiled matvec' if winner == 'matvec' else 'oneDNN prepacked gemv'}, "
                                f"the faster here ({figures})")


def _race_fp32_kernels():
    """-> ('matvec' or 'packed', 'matvec 0.61 ms, oneDNN 0.95 ms per 768x3072'): one token through 8 layers of
    GPT-2 small's MLP shape (75 MB, more than a CPU's cache, as a model's weights are), each kernel at its best
    of 5 passes."""
    with torch.random.fork_rng():  # the user's random stream is theirs: a first decode must not move it
        torch.manual_seed(0)
        linears = [nn.Linear(768, 3072) for _ in range(8)]
        x = torch.randn(1, 768)
    times = {}
    for name, make in (("matvec", MatvecLinear), ("packed", PackedLinear)):
        layers = [make(linear) for linear in linears]
        layers[0](x)  # compile / pick the kernel
        times[name] = min(_seconds_per_layer(layers, x) for _ in range(5))
        del layers
    winner = min(times, key=times.get)
    return winner, f"matvec {times['matvec'] * 1e3:.2f} ms, oneDNN {times['packed'] * 1e3:.2f} ms per 768x3072"


def _seconds_per_layer(layers, x):
    start = time.perf_counter()
    for layer in layers:
        layer(x)
    return (time.perf_counter() - start) / len(layers)


def fast_linear(dtype: torch.dtype):
    """The Linear replacement that decodes fastest in dtype on this CPU, or None (keep nn.Linear)."""
    if dtype == torch.float32:
        return {"matvec": MatvecLinear, "packed": PackedLinear}.get(fp32_decode_kernel().name)
    return PackedLinear if can_prepack(dtype) else None


@torch.no_grad()
def prepare_for_inference(model: nn.Module, device: torch.device, dtype: torch.dtype, quantize: str | None = None):
    """Move model to device and dtype and swap its Linear layers for the fastest form there, in place.

    dtype casts the weights themselves (not autocast per op): bf16 halves the bytes each token reads.
    int8 quantizes from the fp32 weights into Int8Linear; where int8_kernel says it would not be fast (no numba),
    the weights stay in dtype and the caller reports int8_kernel(device).reason; on a GPU int8 is a UserError.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise UserError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8" and device.type != "cpu":
        raise UserError("--quantize int8 is implemented for CPU decoding; leave it out on a GPU (or use --device cpu)")
    int8 = quantize == "int8" and int8_kernel(device).name is not None
    model.eval()
    if int8:
        swap_linears(model.float(), Int8Linear)
    model = model.to(device=device, dtype=dtype)
    linear = fast_linear(dtype) if device.type == "cpu" and not int8 else None
    if linear is not None:
        swap_linears(model, linear)
    return model


# model -> {dtype: (key of the weights it was built from, decoding copy)}; weak: a model's copies go with it.
_DECODING_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def decoding_model(model: nn.Module) -> nn.Module:
    """The module to decode with: model itself, or its cached copy with prepacked Linear weights (CPU).

    A copy is kept per dtype (the weights' own, or autocast's) and rebuilt when any weight was changed
    in place (an optimizer step, load, .to()) since it was made: its key holds every parameter's
    storage address and version counter.
    """
    weight = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if weight is None or _is_sharded(model):
        return model  # nothing to pack (a stand-in model in a test), or FSDP's sharded weights: every rank
        # must run the model's own forward, whose hooks gather each layer's weights
    device = weight.device
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
    has_linears = any(type(m) is nn.Linear for m in model.modules())  # none after prepare_for_inference
    if device.type != "cpu" or not has_linears or dtype not in (torch.float32, torch.bfloat16):
        return model  # GPUs decode with the model as it is (under the caller's autocast, if any)
    linear = fast_linear(dtype)
    if linear is None:
        return model
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    copies = _DECODING_COPIES.setdefault(model, {})
    if dtype in copies and copies[dtype][0] == key:
        return copies[dtype][1]
    copies.pop(dtype, None)  # free the stale copy before packing the new one
    with torch.no_grad():
        decoder = _decoding_copy(model, dtype, linear).eval()
    copies[dtype] = (key, decoder)
    return decoder


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 (torchrun --fsdp) manages the model: its weights are DTensor shards between forwards.

    Looked up among the modules already imported: a model can only be sharded once FSDP is loaded, and
    importing it here would cost a single-process run about a second.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def forget_decoding_model(model: nn.Module) -> None:
    """Drop model's cached decoding copy (GPT2.train does, since training changes every weight)."""
    _DECODING_COPIES.pop(model, None)


def _decoding_copy(module: nn.Module, dtype: torch.dtype, linear) -> nn.Module:
    """A copy of the module tree whose nn.Linear layers are linear(layer) (fast_linear's class) in dtype and whose
    other floating-point parameters are module's own (or, in another dtype, converted copies)."""
    if type(module) is nn.Linear:
        return PackedLinear(module, dtype) if linear is PackedLinear else linear(module)
    clone = copy.copy(module)  # a new object over the same attribute values ...
    clone._modules = {name: _decoding_copy(child, dtype, linear)
                      for name, child in module._modules.items()}  # ... own children
    clone._parameters = {name: p if p is None or p.dtype == dtype or not p.is_floating_point()
                         else nn.Parameter(p.detach().to(dtype), requires_grad=False)
                         for name, p in module._parameters.items()}
    return clone
