"""The transformer body: a stack of pre-LayerNorm decoder blocks, each built from the model's config.

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Normalising the input of each branch (not its output, as the 2017 Transformer did) keeps the
residual stream an untouched sum, which is what lets deep stacks train without warm-up tricks.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt2_llm.model.attention import CausalSelfAttention
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.model.kv_cache import KVCache, RowPositions


class MLP(nn.Module):
    """Position-wise feed-forward: expand to config.mlp_dim, GELU, project back."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.embedding_dim, config.mlp_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_dim, config.embedding_dim, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is exactly the tanh approximation; PyTorch runs it as one fused kernel
        # (forward and backward), where HF's Python formula launches about eight.
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, 4C) -> (B, T, C)


class DecoderBlock(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, start: int = 0):
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class GPT2Decoder(nn.Module):
    """config.num_layers DecoderBlocks applied in order; (B, T, C) -> (B, T, C).

    gradient_checkpointing (set by the trainer): while training, keep only each block's input for
    backward and recompute the block's activations there: about one extra forward of compute for
    activation memory that no longer grows with the (B, T, 4C) MLP and attention intermediates.
    """

    gradient_checkpointing = False

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_layers))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                positions: RowPositions | None = None) -> torch.Tensor:
        """Without a cache x is a whole sequence; with one, x continues at position cache.length, or with
        positions each row at its own (one token per row; the caller keeps the rows' lengths)."""
        if cache is None:
            recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            return x
        if positions is not None:
            for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
                x = block(x, layer_cache, positions)
            return x
        start = cache.length
        cache.check_room(x.size(1))
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x = block(x, layer_cache, start)
        cache.length = start + x.size(1)
        return x
