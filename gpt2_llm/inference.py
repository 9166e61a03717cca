"""Inference: the one decoding path of the model, shared by GPT2.generate, `predict`, beam search and
the trainer's samples, and the weight formats that make token-by-token decoding fast on a CPU.

Decoding one token multiplies one vector by every weight matrix, so its speed is the speed at which
weights stream from memory. Two ways to stream them faster, each replacing nn.Linear modules:

  Int8Linear    weight-only int8: each output channel's row becomes int8 values q with one float
                scale s (w ~ s * q, q in -127..127, s = max|w| / 127), a quarter of fp32's bytes.
                Activations stay floating point; torch._weight_int8pack_mm multiplies by the
                int8 rows directly and applies the scales at the end.
  PackedLinear  the same fp32/bf16 numbers in oneDNN's blocked weight layout, which its gemv reads
                at close to memory bandwidth (measured ~1.5-2x nn.Linear's plain row-major path
                for one token on a 2-core Zen4).

Two ways in:
  decoding_model(model)            what generation runs: a copy that shares every weight with the model
                                   except the Linear ones, which it holds prepacked (in the autocast
                                   dtype when one is active). Built on first use and kept until a weight
                                   changes or the model goes back to training, so `model.generate` is as
                                   fast as `predict` without changing the model; the price is a second,
                                   packed copy of the Linear weights while it is kept.
  prepare_for_inference(model, ..) GPT2.for_inference: converts the model itself, in place (dtype, int8,
                                   prepacking): no second copy, but the model can no longer train or save.
"""
import copy
import sys
import weakref

import torch
from torch import nn

from gpt2_llm.errors import UserError

QUANTIZE_CHOICES = ("int8",)


class Int8Linear(nn.Module):
    """nn.Linear with per-output-channel symmetric int8 weights; y = (x @ q.T) * scales + bias."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # quantize from full precision, whatever the model's dtype
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,): max |w| of a row maps to 127
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        # The kernel wants scales in the activations' dtype; model.to(dtype) converts them with the rest.
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel takes 2-D input with unit stride along features, which reshape keeps.
        y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)), self.weight, self.scales)
        if self.bias is not None:
            y += self.bias  # y is a fresh tensor: add in place, no second allocation
        return y.view(*x.shape[:-1], self.out_features)  # (..., in) -> (..., out)


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


def quantize_int8(model: nn.Module) -> nn.Module:
    """Weight-only int8 for every Linear layer, in place; see Int8Linear."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise UserError("this PyTorch has no torch._weight_int8pack_mm; int8 decoding needs PyTorch >= 2.4")
    return swap_linears(model, Int8Linear)


@torch.no_grad()
def prepare_for_inference(model: nn.Module, device: torch.device, dtype: torch.dtype, quantize: str | None = None):
    """Move model to device and dtype and swap its Linear layers for the fastest form there, in place.

    dtype casts the weights themselves (not autocast per op): bf16 halves the bytes each token reads.
    int8 quantizes from the fp32 weights before the cast, then runs its activations in dtype
    (PyTorch's CPU int8 kernel is fast with bf16 activations, several times slower with fp32).
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise UserError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8" and device.type != "cpu":
        raise UserError("--quantize int8 is implemented for CPU decoding; leave it out on a GPU (or use --device cpu)")
    model.eval()
    if quantize == "int8":
        model = quantize_int8(model.float())
    model = model.to(device=device, dtype=dtype)
    if quantize is None and device.type == "cpu" and can_prepack(dtype):
        swap_linears(model, PackedLinear)
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
    if device.type != "cpu" or not has_linears or dtype not in (torch.float32, torch.bfloat16) \
            or not can_prepack(dtype):
        return model  # GPUs decode with the model as it is (under the caller's autocast, if any)
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    copies = _DECODING_COPIES.setdefault(model, {})
    if dtype in copies and copies[dtype][0] == key:
        return copies[dtype][1]
    copies.pop(dtype, None)  # free the stale copy before packing the new one
    with torch.no_grad():
        decoder = _packed_copy(model, dtype).eval()
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


def _packed_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of the module tree whose nn.Linear layers are PackedLinear in dtype and whose other
    floating-point parameters are module's own (or, in another dtype, converted copies)."""
    if type(module) is nn.Linear:
        return PackedLinear(module, dtype)
    clone = copy.copy(module)  # a new object over the same attribute values ...
    clone._modules = {name: _packed_copy(child, dtype) for name, child in module._modules.items()}  # ... own children
    clone._parameters = {name: p if p is None or p.dtype == dtype or not p.is_floating_point()
                         else nn.Parameter(p.detach().to(dtype), requires_grad=False)
                         for name, p in module._parameters.items()}
    return clone
