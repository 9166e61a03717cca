"""Pure functions from next-token logits (B, V) to token ids (B,).

Each filter returns new logits (excluded tokens set to -inf, penalised ones lowered), so they
compose and end in one softmax + draw. The order is Hugging Face's: repetition penalty on the raw
logits, then temperature, top-k, top-p. GPT2.generate, the predict CLI, the trainer's samples, the server and
beam_search.py all choose tokens through these functions.

SamplingSettings holds one sequence's choices (and when it ends), checked once where it is built: GPT2.generate,
`predict` and the server each build one from their own inputs and hand it to the decoding loop.
"""
from dataclasses import dataclass

import torch

from gpt2_llm.errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    """How one sequence chooses its tokens and when it ends; a bad value is a UserError when it is built.

    SamplingSettings(max_tokens=50, temperature=0) -> greedy, 50 tokens at most.
    """

    max_tokens: int = 16  # new tokens at most
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = None  # the server's per-request seed (generate and predict take a torch.Generator)
    stop: tuple[str, ...] = ()  # strings that end the text (never printed, not even in part)
    logprobs: int | None = None  # how many top alternatives to report per token; None: no logprobs

    def __post_init__(self):
        check_generation_args(self.max_tokens)
        check_sampling_settings(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        for name in ("seed", "logprobs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UserError(f"{name} must be an integer >= 0, got {value!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if not all(isinstance(stop, str) and stop for stop in self.stop):
            raise UserError("a stop string must be a non-empty string")


def check_generation_args(max_new_tokens: int, vocab_size: int | None = None) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise UserError(f"vocab_size must be a positive integer, got {vocab_size!r}")


def check_sampling_settings(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0
) -> None:
    """Raise UserError for a setting no sampler accepts, before any work is done with it."""
    if not _is_number(temperature) or temperature < 0:
        raise UserError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise UserError(f"top_p must be in (0, 1], got {top_p!r}")
    if not _is_number(repetition_penalty) or not repetition_penalty > 0:
        raise UserError(f"repetition penalty must be a number > 0 (1 = off), got {repetition_penalty!r}")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == value  # not NaN


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty, as HF's RepetitionPenaltyLogitsProcessor: every token in seen_ids
    (B, L) has its logit divided by penalty if positive, multiplied by it if negative, so with
    penalty > 1 it always becomes less likely, however often it was seen.

    apply_repetition_penalty([[2., -1., 3.]], [[0, 1, 0]], 2.0) -> [[1., -2., 3.]]
    """
    check_sampling_settings(repetition_penalty=penalty)
    if penalty == 1.0 or seen_ids.size(-1) == 0:
        return logits
    seen = logits.gather(-1, seen_ids)  # (B, L); a token seen twice is gathered twice, penalised once
    penalised = torch.where(seen < 0, seen * penalty, seen / penalty)
    # A penalty far from 1 (1e-300 rounds to 0 in fp32) must not make inf, or NaN from 0 / 0, out of a logit (the
    # softmax of a row holding either is NaN): the most extreme finite value instead, and 0 stays 0.
    largest = torch.finfo(logits.dtype).max
    return logits.scatter(-1, seen_ids, torch.nan_to_num(penalised, nan=0.0, posinf=largest, neginf=-largest))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept too).

    top_k_filter([[1., 3., 2.]], 2) -> [[-inf, 3., 2.]]
    """
    check_sampling_settings(top_k=k)
    if k >= logits.size(-1):
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p (nucleus).

    top_p_filter(log([[0.5, 0.3, 0.2]]), 0.7) keeps the first two: 0.5 < 0.7 <= 0.5 + 0.3.
    """
    check_sampling_settings(top_p=p)
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens before it already reach p; the top token always stays.
    drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row from logits (B, V) -> (B,). temperature 0 means greedy argmax."""
    check_sampling_settings(temperature, top_k, top_p)
    # Below fp32's smallest normal number a temperature rounds towards 0, and so does the distribution: greedy.
    if temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1)
    # The same softmax as logits / temperature, but each row's largest logit becomes 0 first: dividing by a tiny
    # temperature then gives 0 for the best token and at worst -inf for the others (a greedy choice), never
    # inf - inf = NaN.
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        # A CPU generator (reproducible on every machine) may drive sampling of GPU logits.
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
