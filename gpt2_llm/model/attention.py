"""Causal multi-head self-attention, with optional rotary position embeddings (RoPE).

    attention_math  softmax(Q K^T / sqrt(hs) + causal mask) V, written as the paper writes it: for reading
    attention_bmm   the same numbers through two batched matmuls with the scale and mask folded into the
                    first: the fastest kernel on a CPU in bf16 for short contexts
    SDPA            PyTorch's fused scaled_dot_product_attention: the fastest everywhere else

`attention_kernel` picks among them from the tensors themselves (device, dtype, length), in this one
place, so training through the Trainer, a plain `model.loss(...)` and decoding all get the fastest.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm.model.kv_cache import LayerKVCache, RowPositions

KERNELS = ("auto", "sdpa", "math", "bmm")


def causal_mask(num_queries: int, start: int, device=None) -> torch.Tensor:
    """Boolean (Tq, start + Tq) mask, True where query i (at position start + i) may look.

    causal_mask(2, 1) -> [[True, True, False], [True, True, True]]
    """
    return torch.ones(num_queries, start + num_queries, dtype=torch.bool, device=device).tril(diagonal=start)


def attention_math(q, k, v, mask=None, dropout_p: float = 0.0):
    """softmax(q k^T / sqrt(hs) + mask) v. q (B, nh, Tq, hs), k and v (B, nh, Tk, hs) -> (B, nh, Tq, hs).

    mask: boolean (Tq, Tk), True = may attend; None = attend to everything.
    """
    scale = 1.0 / math.sqrt(q.size(-1))  # keeps the scores' variance ~1 whatever the head size
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # a future token gets weight exp(-inf) = 0
    weights = F.softmax(scores, dim=-1)  # each query's weights over the keys sum to 1
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)


def attention_bmm(q, k, v, mask=None, dropout_p: float = 0.0):
    """attention_math's result through batched matmuls over (B*nh) with the scale and mask fused in.

    Why it exists: on a CPU in bf16, PyTorch's fused SDPA kernel is slow for small heads (hs = 40 in
    the `small` preset), while batched bf16 matmuls run near peak: forward + backward faster at every
    length up to 512 on a CPU with native bf16 (figures: bench/RESULTS.md). baddbmm computes bias + scale * (q @ k^T) in
    one pass, so the scale and the mask cost no extra sweeps over the (Tq, Tk) scores.
    """
    B, nh, Tq, hs = q.shape
    Tk = k.size(-2)
    bias = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device)  # the mask as 0 / -inf, added to the scores
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    scores = torch.baddbmm(
        bias, q.reshape(B * nh, Tq, hs), k.reshape(B * nh, Tk, hs).transpose(1, 2), alpha=1.0 / math.sqrt(hs)
    )  # (B*nh, Tq, hs) @ (B*nh, hs, Tk) -> (B*nh, Tq, Tk)
    weights = F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v.reshape(B * nh, Tk, hs)  # (B*nh, Tq, Tk) @ (B*nh, Tk, hs) -> (B*nh, Tq, hs)
    return out.view(B, nh, Tq, hs)


def attention_sdpa(q, k, v, start=0, dropout_p: float = 0.0):
    """PyTorch's fused kernel, for T new queries at positions start.. over start + T keys (start: an int, or
    RowPositions: one query per row at its own position, with its mask)."""
    if isinstance(start, RowPositions):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=start.mask, dropout_p=dropout_p)
    T = q.size(-2)
    # A fresh sequence is plain causal; one new token may see every cached one; several new tokens
    # after a cached prefix need the offset mask, because SDPA's is_causal aligns its triangle to
    # the top-left corner, not to position `start`.
    is_causal = start == 0 and T > 1
    mask = causal_mask(T, start, q.device) if start > 0 and T > 1 else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def attention_kernel(q: torch.Tensor, num_keys: int) -> str:
    """The fastest kernel for these queries: "bmm" on a CPU in bf16 up to 512 keys, else "sdpa".

    At 1024 keys on a CPU the (T, T) bf16 scores cost memory traffic and SDPA wins again (0.8x);
    in fp32 and on GPUs the fused kernel always wins.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and num_keys <= 512:
        return "bmm"
    return "sdpa"


class RotaryPositionEmbedding(nn.Module):
    """Rotate channel pairs of q and k by an angle proportional to their position.

    Pair i of a head turns by position * base^(-2i/dim), so q_m . k_n depends only on m - n:
    attention sees relative distance, and no position table is learned. Pairs are the two
    halves of the head (channel i with channel i + dim/2), the GPT-NeoX / LLaMA-HF layout.
    """

    def __init__(self, dim: int, max_seq_len: int = 2048, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (max_T, dim/2)
        # Derived from the config, so not saved: persistent=False keeps them out of checkpoints.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start=0) -> torch.Tensor:
        """x (B, nh, T, hs) at positions start..start+T-1 -> rotated x, same shape and dtype.
        With RowPositions (T = 1), row b turns by its own position."""
        if isinstance(start, RowPositions):
            cos = self.cos[start.positions][:, None, None].to(x.dtype)  # (B, hs/2) -> (B, 1, 1, hs/2)
            sin = self.sin[start.positions][:, None, None].to(x.dtype)
        else:
            T = x.size(-2)
            cos = self.cos[start : start + T].to(x.dtype)  # (T, hs/2), broadcast over B, nh
            sin = self.sin[start : start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # two (B, nh, T, hs/2) halves: the pairs to rotate
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused Q/K/V projection: CausalSelfAttention(config).

    `kernel` is "auto" (attention_kernel picks per call) or one of "sdpa", "math", "bmm" to force it
    (GPT2.set_attention_kernel sets every layer's); all give the same numbers within float tolerance.
    """

    def __init__(self, config):
        super().__init__()
        C = config.embedding_dim
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.kernel = "auto"
        # Names follow GPT-2's (c_attn, c_proj) so that weight conversion is a rename.
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)  # one matmul for Q, K, V
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rope = (RotaryPositionEmbedding(self.head_dim, config.max_seq_len, config.rope_base)
                     if config.use_rope else None)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None, start=0) -> torch.Tensor:
        """x (B, T, C) at positions start..start+T-1 -> (B, T, C).

        With a cache, keys/values of earlier positions come from it and this call's are added. start is an
        int (every row at the same positions) or RowPositions (one token per row, each at its own position).
        """
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3C) -> (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x (B, nh, T, hs)
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)  # V carries content, not position
        if cache is not None:
            k, v = cache.update(start, k, v)  # -> (B, nh, start + T, hs)
            q = q.to(k.dtype)  # a cache may hold more precision than the weights: attend in its dtype

        dropout_p = self.dropout if self.training else 0.0
        kernel = attention_kernel(q, k.size(-2)) if self.kernel == "auto" else self.kernel
        if kernel == "sdpa" or isinstance(start, RowPositions):  # a mask per row: SDPA takes it as it is
            y = attention_sdpa(q, k, v, start, dropout_p)
        else:
            mask = causal_mask(T, start, x.device) if T > 1 else None  # one new token sees all
            y = (attention_math if kernel == "math" else attention_bmm)(q, k, v, mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C).to(x.dtype)  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))
