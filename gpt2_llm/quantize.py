"""Inference-only forms of the Linear layers, for fast token-by-token decoding on a CPU.

Decoding one token multiplies one vector by every weight matrix, so its speed is the speed at which
weights stream from memory. Two ways to stream them faster, each swapping nn.Linear modules:

  Int8Linear    weight-only int8: each output channel's row becomes int8 values q with one float
                scale s (w ~ s * q, q in -127..127, s = max|w| / 127), a quarter of fp32's bytes.
                Activations stay floating point; torch._weight_int8pack_mm multiplies by the
                int8 rows directly and applies the scales at the end.
  PackedLinear  the same fp32/bf16 numbers in oneDNN's blocked weight layout, which its gemv reads
                at close to memory bandwidth (measured ~1.5-2x nn.Linear's plain row-major path
                for one token on a 2-core Zen4).

Both are for inference only: a swapped model can neither be trained nor saved. `prepare_for_decoding`
is the one entry point, called at the edge (predict CLI, benchmark) once device and dtype are known.
"""
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

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features = linear.out_features
        # An opaque oneDNN tensor, kept as a plain attribute: it is not state to save or convert.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)  # 1: batch hint
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
def prepare_for_decoding(model: nn.Module, device: torch.device, dtype: torch.dtype, quantize: str | None = None):
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
