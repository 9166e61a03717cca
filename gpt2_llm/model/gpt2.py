"""The network: token + position embeddings, a stack of decoder blocks, a final LayerNorm, a tied head.

    ids (B, T) -> wte + wpe -> GPT2Decoder -> ln_f -> lm_head (= wte.weight) -> logits (B, T, V)

Transformer(config) is the math alone: it reads no files, prints nothing and knows no tokenizer.
gpt2_llm.GPT2 is this network with the seed's doors (load, save, generate, from_pretrained).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm.errors import UserError
from gpt2_llm.model.attention import KERNELS, CausalSelfAttention
from gpt2_llm.model.blocks import GPT2Decoder
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.model.embedding import TokenEmbedding
from gpt2_llm.model.kv_cache import KVCache, RowPositions
from gpt2_llm.model.linear_cross_entropy import linear_cross_entropy


class Transformer(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = TokenEmbedding(config.vocab_size, config.embedding_dim)
        # With RoPE, position lives in the rotation of Q and K; no table to learn.
        self.wpe = None if config.use_rope else nn.Embedding(config.max_seq_len, config.embedding_dim)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = GPT2Decoder(config)
        self.ln_f = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)
        # Weight tying: scoring a token as output uses the same vector that represents it as input.
        # One Parameter, so it gets one gradient (the sum of both uses) and is stored once.
        self.lm_head.weight = self.wte.weight
        self._init_weights()

    @classmethod
    def from_config(cls, config: GPT2Config) -> "Transformer":
        return cls(config)

    @torch.no_grad()
    def _init_weights(self):
        """GPT-2's scheme: N(0, 0.02) for weights and embeddings, zero biases, LayerNorm 1/0.

        Each block adds two branches (attention, MLP) to the residual stream, ending in a c_proj;
        scaling those by 1/sqrt(2 * num_layers) keeps the stream's variance from growing with depth.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Embedding, TokenEmbedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Trainable parameter count; the tied head/embedding counts once."""
        return sum(p.numel() for p in self.parameters())  # parameters() yields a shared one once

    @torch.no_grad()
    def resize_token_embeddings(self, num_rows: int) -> None:
        """Grow the token table (and so the tied head) to num_rows; the rows there stay as they were, the new ones
        start as their mean (a new token then starts with an average prediction, not a random spike)."""
        old = self.wte.weight
        if num_rows < old.shape[0]:
            raise ValueError(f"resize_token_embeddings only grows the table ({old.shape[0]} rows), got {num_rows}")
        grown = old.new_empty(num_rows, old.shape[1])
        grown[: old.shape[0]] = old
        grown[old.shape[0]:] = old.mean(dim=0)
        self.wte.weight = nn.Parameter(grown, requires_grad=old.requires_grad)
        self.lm_head.weight = self.wte.weight
        self.wte.vocab_size = self.lm_head.out_features = self.config.vocab_size = num_rows

    def set_attention_kernel(self, kernel: str = "auto") -> None:
        """Force every layer's attention kernel: "sdpa", "math" (the readable one), "bmm", or "auto" (the
        default: each call picks the fastest for its device, dtype and length; see attention.py)."""
        if kernel not in KERNELS:
            raise UserError(f"unknown attention kernel {kernel!r}; use one of {', '.join(KERNELS)}")
        for module in self.modules():
            if isinstance(module, CausalSelfAttention):
                module.kernel = kernel

    def new_cache(self, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache sized for this model's context, in dtype (None: the keys') (see model/kv_cache.py)."""
        return KVCache(self.config.num_layers, self.config.max_seq_len, dtype)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      positions: list[int] | None = None) -> torch.Tensor:
        """ids (B, T) -> final normalised hidden states (B, T, C), continuing the cache if given.

        positions: each row's position in the cache (B ints), for rows that stand at different lengths (a
        server's batch): one new token per row (T = 1), written at its row's position; the cache's own
        length is neither read nor moved (see model/kv_cache.py).
        """
        B, T = idx.shape
        if positions is not None:
            if cache is None or T != 1:
                raise ValueError("positions per row need a cache and one new token per row")
            row_positions = RowPositions.of(positions, idx.device)
            if row_positions.num_keys > self.config.max_seq_len:
                raise UserError(f"a row at position {row_positions.num_keys - 1} is past the model's context "
                                f"({self.config.max_seq_len} positions)")
        else:
            row_positions = None
            start = cache.length if cache is not None else 0
            if cache is not None:
                cache.check_room(T)
            elif T > self.config.max_seq_len:
                raise UserError(
                    f"sequence of {T} tokens is longer than the model's context ({self.config.max_seq_len}); "
                    "crop it to the last max_seq_len tokens"
                )
        x = self.wte(idx)  # (B, T) -> (B, T, C)
        if self.wpe is not None:
            if row_positions is not None:
                x = x + self.wpe(row_positions.positions)[:, None]  # (B, C) -> (B, 1, C): each row its own
            else:
                x = x + self.wpe(torch.arange(start, start + T, device=idx.device))  # (T, C) broadcast over B
        x = self.drop(x)
        x = self.decoder(x, cache, row_positions)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                targets: torch.Tensor | None = None, positions: list[int] | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, vocab_size). With a cache, idx continues the cached prefix (or, with
        positions, each row its own: see hidden_states).

        With targets (B, T) it returns the loss instead (see `loss`), as nanoGPT's forward does: a
        wrapper that must see the whole step go through forward (DistributedDataParallel, FSDP) gets it.
        """
        hidden = self.hidden_states(idx, cache, positions)  # (B, T, C)
        if targets is not None:
            return linear_cross_entropy(hidden, self.lm_head.weight, targets)
        return self.lm_head(hidden)  # (B, T, C) -> (B, T, V)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; targets (B, T) are already shifted (targets[:, t] = idx[:, t+1])
        and positions holding -100 are ignored.

        The readable form is `next_token_loss(self(idx), targets)`: the full (B, T, V) logits, then one
        cross_entropy. This runs the head and the loss together, chunk by chunk, without ever holding
        the logits or their gradient (linear_cross_entropy.py): the same loss and gradients, less memory,
        less time. Under bf16 autocast the head's matmuls run in bf16 and the softmax in fp32.
        """
        return self(idx, targets=targets)

    def next_token_logits(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Continue the cache with idx (B, T) -> logits of the last position only (B, V): the head's
        V x C matmul, the largest in the model, runs once instead of T times."""
        return self.lm_head(self.hidden_states(idx, cache)[:, -1])


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), ignoring -100: the readable form of
    GPT2.loss, and the reference its fused head + loss is tested against."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
