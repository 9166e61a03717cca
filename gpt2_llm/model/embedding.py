"""TokenEmbedding: the table that turns token ids into vectors.

GPT-2 reuses this same table as its output head (logits = h @ weight.T), so the model ties
`lm_head.weight` to `TokenEmbedding.weight`: one Parameter, two uses.
"""
import torch
import torch.nn.functional as F
from torch import nn


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(vocab_size, embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)  # (B, T) -> (B, T, C)

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.embedding_dim}"
