"""GPT2: token + position embeddings, a stack of decoder blocks, a final LayerNorm, a tied head.

    ids (B, T) -> wte + wpe -> GPT2Decoder -> ln_f -> lm_head (= wte.weight) -> logits (B, T, V)

The model reads no files and prints nothing; `save`/`load`/`from_checkpoint`/`from_pretrained` are
thin doors to checkpoint.py, hf_interop.py and loading.py, where the I/O lives.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm import checkpoint, hf_interop, inference
from gpt2_llm.attention import KERNELS, CausalSelfAttention
from gpt2_llm.config import GPT2Config
from gpt2_llm.decoder import GPT2Decoder
from gpt2_llm.device import keep_freed_memory_on_cpu
from gpt2_llm.errors import UserError
from gpt2_llm.kv_cache import KVCache
from gpt2_llm.linear_cross_entropy import linear_cross_entropy
from gpt2_llm.lookup_nn import TokenEmbedding
from gpt2_llm.generation import generate_tokens


class GPT2(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        max_seq_len: int = 1024,
        dropout: float = 0.0,
        use_rope: bool = False,
        **config_fields,
    ):
        super().__init__()
        self.config = config = GPT2Config(
            vocab_size=vocab_size,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            max_seq_len=max_seq_len,
            dropout=dropout,
            use_rope=use_rope,
            **config_fields,
        )
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
        # A training step on a CPU frees and reallocates the same activations every step; by default glibc
        # hands them back to the OS and page-faults them in again, a fifth of a small model's step. Set here,
        # not in the Trainer, so that a plain `model.loss(...).backward()` loop is as fast (see device.py).
        keep_freed_memory_on_cpu()

    @classmethod
    def from_config(cls, config: GPT2Config) -> "GPT2":
        return cls(**config.to_dict())

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

    def set_attention_kernel(self, kernel: str = "auto") -> None:
        """Force every layer's attention kernel: "sdpa", "math" (the readable one), "bmm", or "auto" (the
        default: each call picks the fastest for its device, dtype and length; see attention.py)."""
        if kernel not in KERNELS:
            raise UserError(f"unknown attention kernel {kernel!r}; use one of {', '.join(KERNELS)}")
        for module in self.modules():
            if isinstance(module, CausalSelfAttention):
                module.kernel = kernel

    def for_inference(self, dtype: torch.dtype | None = None, quantize: str | None = None,
                      device: torch.device | str | None = None) -> "GPT2":
        """Convert this model, in place, to its fastest form for generation and return it.

        dtype: torch.bfloat16 halves the bytes each token reads (default: keep the weights' dtype);
        quantize="int8": weight-only int8 Linear layers (CPU). Linear weights are prepacked for the CPU.
        Afterwards the model generates but can no longer train or be saved. Without this call,
        generate() is just as fast but keeps a packed copy of the Linear weights beside the model.
        """
        weight = self.wte.weight
        device = torch.device(device) if device is not None else weight.device
        return inference.prepare_for_inference(self, device, dtype or weight.dtype, quantize)

    def train(self, mode: bool = True) -> "GPT2":
        if mode:  # training changes every weight: a packed decoding copy would only hold memory
            inference.forget_decoding_model(self)
        return super().train(mode)

    def new_cache(self, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache sized for this model's context, in dtype (None: the keys') (see kv_cache.py)."""
        return KVCache(self.config.num_layers, self.config.max_seq_len, dtype)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """ids (B, T) -> final normalised hidden states (B, T, C), continuing the cache if given."""
        B, T = idx.shape
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
            positions = torch.arange(start, start + T, device=idx.device)
            x = x + self.wpe(positions)  # (T, C) broadcast over the batch
        x = self.drop(x)
        x = self.decoder(x, cache)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, vocab_size). With a cache, idx continues the cached prefix.

        With targets (B, T) it returns the loss instead (see `loss`), as nanoGPT's forward does: a
        wrapper that must see the whole step go through forward (DistributedDataParallel, FSDP) gets it.
        """
        hidden = self.hidden_states(idx, cache)  # (B, T, C)
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

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eos_token_id: int | None = None,
        repetition_penalty: float = 1.0,
        vocab_size: int | None = None,
    ) -> torch.Tensor:
        """Continue prompts (B, T) by up to max_new_tokens -> (B, T + new). temperature 0 is greedy.

        The prompt is run once (prefill) into a KV cache, then each new token costs one position.
        Past the context length the cache is rebuilt from the last max_seq_len - 1 tokens (a
        sliding window). Rows that produced eos_token_id keep emitting it; generation stops when
        every row has. vocab_size keeps choices below it (a tokenizer smaller than the padded
        embedding). The loop itself, token by token, is generation.generate_tokens.
        """
        steps = list(
            generate_tokens(
                self, input_ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, generator,
                eos_token_id, vocab_size,
            )
        )
        if not steps:
            return input_ids.clone()
        return torch.cat((input_ids, torch.stack(steps, dim=1)), dim=1)  # one cat at the end, not one per step

    def next_token_logits(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Continue the cache with idx (B, T) -> logits of the last position only (B, V): the head's
        V x C matmul, the largest in the model, runs once instead of T times."""
        return self.lm_head(self.hidden_states(idx, cache)[:, -1])

    # --- doors to the I/O edge -------------------------------------------------------------

    def save(self, path, metadata: dict | None = None) -> None:
        """Write weights + config (+ extra JSON metadata) to a safetensors checkpoint, atomically."""
        checkpoint.save_model(self, path, metadata)

    def load(self, path) -> dict:
        """Load weights from a checkpoint of the same architecture; returns its metadata."""
        return checkpoint.load_model_weights(self, path)

    @classmethod
    def from_checkpoint(cls, path) -> "GPT2":
        """Build the model described by a checkpoint's stored config and load its weights (loading.py)."""
        from gpt2_llm.loading import load_model  # the one loader; it imports this module

        return load_model(path)[0]

    @classmethod
    def from_pretrained(cls, directory) -> "GPT2":
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors or pytorch_model.bin)."""
        if not os.path.isdir(directory):
            raise UserError(f"{directory} is not a directory; from_pretrained wants a Hugging Face model directory")
        return cls.from_checkpoint(directory)

    def save_pretrained(self, directory) -> None:
        """Write config.json + model.safetensors in Hugging Face's GPT-2 layout."""
        hf_interop.write_hf_gpt2(self, directory)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), ignoring -100: the readable form of
    GPT2.loss, and the reference its fused head + loss is tested against."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
