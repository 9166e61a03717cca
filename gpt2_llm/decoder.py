"""The transformer body: a stack of pre-LayerNorm decoder blocks.

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Normalising the input of each branch (not its output, as the 2017 Transformer did) keeps the
residual stream an untouched sum, which is what lets deep stacks train without warm-up tricks.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt2_llm.attention import QKVAttention
from gpt2_llm.kv_cache import KVCache


class MLP(nn.Module):
    """Position-wise feed-forward: expand, GELU, project back."""

    def __init__(self, embedding_dim: int, feedforward_dim: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.c_fc = nn.Linear(embedding_dim, feedforward_dim, bias=bias)
        self.c_proj = nn.Linear(feedforward_dim, embedding_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is exactly the tanh approximation; PyTorch runs it as one fused kernel
        # (forward and backward), where HF's Python formula launches about eight.
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, 4C) -> (B, T, C)


class DecoderBlock(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        feedforward_dim: int,
        dropout: float = 0.0,
        use_rope: bool = False,
        max_seq_len: int = 1024,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(embedding_dim, eps=layer_norm_eps, bias=bias)
        self.attn = QKVAttention(embedding_dim, num_heads, dropout, use_rope, max_seq_len, bias, rope_base)
        self.ln_2 = nn.LayerNorm(embedding_dim, eps=layer_norm_eps, bias=bias)
        self.mlp = MLP(embedding_dim, feedforward_dim, dropout, bias)

    def forward(self, x, cache=None, start: int = 0):
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class GPT2Decoder(nn.Module):
    """num_layers DecoderBlocks applied in order; (B, T, C) -> (B, T, C).

    gradient_checkpointing (set by the trainer): while training, keep only each block's input for
    backward and recompute the block's activations there: about one extra forward of compute for
    activation memory that no longer grows with the (B, T, 4C) MLP and attention intermediates.
    """

    gradient_checkpointing = False

    def __init__(
        self,
        num_layers: int,
        embedding_dim: int,
        num_heads: int,
        feedforward_dim: int | None = None,
        dropout: float = 0.0,
        use_rope: bool = False,
        max_seq_len: int = 1024,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        feedforward_dim = feedforward_dim or 4 * embedding_dim
        self.blocks = nn.ModuleList(
            DecoderBlock(
                embedding_dim, num_heads, feedforward_dim, dropout, use_rope, max_seq_len, layer_norm_eps, bias,
                rope_base,
            )
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Without a cache x is a whole sequence; with one, x continues at position cache.length."""
        if cache is None:
            recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            return x
        start = cache.length
        cache.check_room(x.size(1))
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x = block(x, layer_cache, start)
        cache.length = start + x.size(1)
        return x
