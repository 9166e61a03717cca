"""The decoding loop: run the prompt once into a KV cache (prefill), then one position per new token.

    for next_ids in generate_tokens(model, prompt, 100, temperature=0.8, top_k=40, generator=g):
        ...  # (B,) ids, yielded as soon as they are chosen: the CLI streams them and may stop early

GPT2.generate collects this loop, `predict` streams it, beam_search.py drives the same TokenWindow
with other choices, and the trainer's samples come from GPT2.generate: one decoding path. Decoding is
bound by memory bandwidth, since each new token reads every weight once, so the window decodes with
inference.decoding_model(model) (prepacked weights on a CPU), and the per-token path does no other
work that grows with the sequence: the cache is preallocated (kv_cache.py), tokens are written into
one preallocated buffer instead of a growing torch.cat, and the head runs on the last position only.
"""
from collections.abc import Iterator

from contextlib import nullcontext

import torch

from gpt2_llm.errors import UserError
from gpt2_llm.infer.prepare import decoding_model
from gpt2_llm.infer.sampling import SamplingSettings, apply_repetition_penalty, check_generation_args, sample_next_token


class TokenWindow:
    """A batch of token sequences plus the KV cache that holds the model's view of them.

    Tokens live in one (B, prompt + max_new_tokens) buffer. The cache covers at most the model's
    context; once it is full, it is rebuilt from the last max_seq_len - 1 tokens (a sliding
    window), because the positions already baked into the cached keys cannot be shifted.

    Every method runs under torch.inference_mode (cheaper than no_grad: no version counters or
    view tracking), so the buffers are inference tensors and are only ever changed in here. It is
    applied per call, not around the generation loop, because a `with` inside a generator would
    stay in force in the caller's code between two yields.
    """

    @torch.inference_mode()
    def __init__(self, model, prompt_ids: torch.Tensor, max_new_tokens: int):
        if prompt_ids.dim() != 2 or prompt_ids.size(1) == 0:
            raise UserError(f"generate needs prompt ids of shape (batch, length >= 1), got {tuple(prompt_ids.shape)}")
        batch, length = prompt_ids.shape
        self.model = decoding_model(model)
        # A decoding copy already holds its weights in the dtype autocast asked for; autocast itself
        # would only cast the fp32 cache and attention back down (see cache_dtype).
        self.precision = (torch.autocast(prompt_ids.device.type, enabled=False) if self.model is not model
                          else nullcontext())
        self.context = model.config.max_seq_len
        self.cache = model.new_cache(cache_dtype(prompt_ids.device))
        self.tokens = torch.empty(batch, length + max_new_tokens, dtype=torch.long, device=prompt_ids.device)
        self.tokens[:, :length] = prompt_ids
        self.length = length

    @property
    def ids(self) -> torch.Tensor:
        """Every token so far (B, length), prompt included: a view, not a copy."""
        return self.tokens[:, : self.length]

    @torch.inference_mode()
    def prefill(self) -> torch.Tensor:
        """Run the prompt (its last max_seq_len tokens) -> logits for the next position (B, V)."""
        self.cache.reset()
        return self._logits(self.ids[:, -self.context :])

    @torch.inference_mode()
    def append(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Add one token per row (B,) -> logits for the position after it (B, V)."""
        self.tokens[:, self.length] = next_ids
        self.length += 1
        if self.cache.length == self.context:  # full: slide the window by rebuilding the cache
            self.cache.reset()
            return self._logits(self.ids[:, -max(self.context - 1, 1) :])
        return self._logits(self.tokens[:, self.length - 1 : self.length])

    @torch.inference_mode()
    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` of the batch, in that order (beam search): tokens and cache alike."""
        if rows.numel() != self.tokens.size(0):
            self.tokens = self.tokens[rows]
        else:
            self.tokens[:, : self.length] = self.tokens[rows, : self.length]
        self.cache.select_rows(rows)

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        with self.precision:
            return self.model.next_token_logits(idx, self.cache)


def cache_dtype(device: torch.device) -> torch.dtype | None:
    """fp32 keys and values on a CPU, whatever the weights' dtype; elsewhere those of the model.

    PyTorch's CPU attention is several times slower in bf16 for one query, at short and long contexts
    alike, and the cache is small next to the weights each token reads, so its fp32 copy costs little
    and is more exact.
    """
    return torch.float32 if device.type == "cpu" else None


def generate_tokens(
    model,
    input_ids: torch.Tensor,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Continue prompts (B, T), yielding the next ids (B,) step by step, up to settings.max_tokens times.

    vocab_size limits choices to ids below it: a model's embedding is often padded past its tokenizer's
    vocabulary (to a multiple of 64), and a padding id would decode to nothing. Rows that produced
    eos_token_id keep emitting it; the loop ends when every row has. The model is in eval mode while the
    generator runs and back in its old mode after. (Stop strings are text: TextStream applies them.)
    """
    check_generation_args(settings.max_tokens, vocab_size)
    max_new_tokens = settings.max_tokens
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        window = TokenWindow(model, input_ids, max_new_tokens)
        if max_new_tokens == 0:
            return
        logits = window.prefill()
        finished = None  # rows that have produced eos_token_id
        if eos_token_id is not None:
            finished = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            logits = logits[:, :vocab_size].float()  # sampling in fp32 whatever the model's dtype
            logits = apply_repetition_penalty(logits, window.ids, settings.repetition_penalty)
            next_ids = sample_next_token(logits, settings.temperature, settings.top_k, settings.top_p, generator)
            if finished is not None:
                next_ids = next_ids.masked_fill(finished, eos_token_id)
                finished |= next_ids == eos_token_id
            yield next_ids
            if step == max_new_tokens - 1 or (finished is not None and bool(finished.all())):
                return
            logits = window.append(next_ids)
    finally:
        model.train(was_training)
