"""Causal multi-head self-attention, with optional rotary position embeddings (RoPE).

The fast path is PyTorch's fused `scaled_dot_product_attention`; `attention_math` beside it is
the same computation written out, softmax(Q K^T / sqrt(hs)) V, for reading and for the test
that proves the two agree.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm.kv_cache import LayerKVCache


def causal_mask(num_queries: int, start: int, device=None) -> torch.Tensor:
    """Boolean (Tq, start + Tq) mask, True where query i (at position start + i) may look.

    causal_mask(2, 1) -> [[True, True, False], [True, True, True]]
    """
    return torch.ones(num_queries, start + num_queries, dtype=torch.bool, device=device).tril(diagonal=start)


def attention_math(q, k, v, mask=None, dropout_p: float = 0.0):
    """softmax(q k^T / sqrt(hs) + mask) v, written out. q (B, nh, Tq, hs), k, v (B, nh, Tk, hs).

    mask: boolean (Tq, Tk), True = may attend; None = attend to everything.
    """
    B, nh, Tq, hs = q.shape
    Tk = k.size(-2)
    # The mask as an additive bias: 0 where allowed, -inf where not, so softmax gives those 0.
    bias = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device)
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    # baddbmm = bias + alpha * (q @ k^T) in one pass: the scale and the mask ride along with
    # the matmul instead of costing two more sweeps over the (Tq, Tk) scores.
    scores = torch.baddbmm(
        bias, q.reshape(B * nh, Tq, hs), k.reshape(B * nh, Tk, hs).transpose(1, 2), alpha=1.0 / math.sqrt(hs)
    )  # (B*nh, Tq, hs) @ (B*nh, hs, Tk) -> (B*nh, Tq, Tk)
    weights = F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v.reshape(B * nh, Tk, hs)  # (B*nh, Tq, Tk) @ (B*nh, Tk, hs) -> (B*nh, Tq, hs)
    return out.view(B, nh, Tq, hs)


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

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, nh, T, hs) at positions start..start+T-1 -> rotated x, same shape and dtype."""
        T = x.size(-2)
        cos = self.cos[start : start + T].to(x.dtype)  # (T, hs/2), broadcast over B, nh
        sin = self.sin[start : start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # two (B, nh, T, hs/2) halves: the pairs to rotate
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class QKVAttention(nn.Module):
    """Multi-head causal self-attention with one fused Q/K/V projection.

    `use_math = True` runs `attention_math` instead of PyTorch's fused kernel: the same numbers
    within float tolerance, and on some machines faster (see GPT2.use_math_attention).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        use_rope: bool = False,
        rope_max_seq_len: int = 2048,
        bias: bool = True,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        assert embedding_dim % num_heads == 0, "GPT2Config validates this for users"
        self.num_heads = num_heads
        self.head_dim = embedding_dim // num_heads
        self.dropout = dropout
        self.use_math = False
        # Names follow GPT-2's (c_attn, c_proj) so that weight conversion is a rename.
        self.c_attn = nn.Linear(embedding_dim, 3 * embedding_dim, bias=bias)  # one matmul for Q, K, V
        self.c_proj = nn.Linear(embedding_dim, embedding_dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.rope = RotaryPositionEmbedding(self.head_dim, rope_max_seq_len, rope_base) if use_rope else None

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None, start: int = 0) -> torch.Tensor:
        """x (B, T, C) at positions start..start+T-1 -> (B, T, C).

        With a cache, keys/values of earlier positions come from it and this call's are added.
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
        if self.use_math:
            mask = causal_mask(T, start, x.device) if T > 1 else None  # one new token sees all
            y = attention_math(q, k, v, mask, dropout_p)
        else:
            # A fresh sequence is plain causal; one new token may see every cached one; several
            # new tokens after a cached prefix need the offset mask, because SDPA's is_causal
            # aligns its triangle to the top-left corner, not to position `start`.
            is_causal = start == 0 and T > 1
            mask = causal_mask(T, start, x.device) if start > 0 and T > 1 else None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C).to(x.dtype)  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))
