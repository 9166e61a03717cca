"""Beam search: keep the num_beams most likely continuations instead of committing to one token.

Greedy decoding can take a likely first token that leads nowhere good; beam search keeps several
partial sequences alive and ranks them by total log-probability. The rules are Hugging Face's
(`generate(num_beams=N, do_sample=False, early_stopping=True)`), so the two agree:

    each step   every beam proposes its tokens; of all (beam, token) pairs the 2 * num_beams best
                by summed log-probability are candidates, in rank order
    finishing   a candidate ending in eos_token_id (or reaching max_new_tokens) is finished, if it
                ranks among the top num_beams; its score is sum_logprob / new_tokens ** length_penalty
    continuing  the best num_beams unfinished candidates are the next beams
    stopping    once num_beams sequences have finished, or after max_new_tokens

Deterministic: no sampling, so no temperature, top-k or top-p. The repetition penalty applies to
the logits before the log-softmax.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt2_llm.errors import UserError
from gpt2_llm.infer.generation import TokenWindow
from gpt2_llm.infer.sampling import SamplingSettings, apply_repetition_penalty, check_generation_args


@dataclass
class Beam:
    tokens: list[int]  # the new tokens, ending with eos_token_id if that finished it
    score: float  # sum of the tokens' log-probabilities / len(tokens) ** length_penalty


@torch.no_grad()
def beam_search(
    model,
    input_ids: torch.Tensor,
    settings: SamplingSettings,
    num_beams: int,
    eos_token_id: int | None = None,
    length_penalty: float = 1.0,
    vocab_size: int | None = None,
) -> list[Beam]:
    """Continue one prompt (1, T) -> the num_beams best finished Beams, best first.

    Of the settings, beam search reads max_tokens and repetition_penalty: it keeps the likeliest continuations,
    so temperature, top-k and top-p (which shape a random draw) do not apply, as in Hugging Face's beam search.
    """
    check_generation_args(settings.max_tokens, vocab_size)
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise UserError(f"num_beams must be a positive integer, got {num_beams!r}")
    if input_ids.dim() != 2 or input_ids.size(0) != 1:
        raise UserError(f"beam search continues one prompt of shape (1, length), got {tuple(input_ids.shape)}")
    if settings.max_tokens == 0:
        return [Beam([], 0.0)]
    was_training = model.training
    model.eval()
    try:
        return _search(model, input_ids, settings.max_tokens, num_beams, eos_token_id, length_penalty,
                       settings.repetition_penalty, vocab_size)
    finally:
        model.train(was_training)


def _search(model, input_ids, max_new_tokens, num_beams, eos_token_id, length_penalty, repetition_penalty,
            vocab_size) -> list[Beam]:
    prompt_length = input_ids.size(1)
    window = TokenWindow(model, input_ids, max_new_tokens)
    logits = window.prefill()  # the prompt runs once ...
    start = torch.zeros(num_beams, dtype=torch.long, device=input_ids.device)
    window.select_rows(start)  # ... and its cache is copied into every beam
    logits = logits[start]
    # The beams start as identical copies: counting only the first keeps the candidates distinct.
    beam_scores = torch.full((num_beams,), float("-inf"), device=input_ids.device)
    beam_scores[0] = 0.0
    finished: list[Beam] = []
    for step in range(max_new_tokens):
        logits = apply_repetition_penalty(logits[:, :vocab_size].float(), window.ids, repetition_penalty)
        log_probs = F.log_softmax(logits, dim=-1)  # (num_beams, V)
        V = log_probs.size(-1)
        totals = (beam_scores[:, None] + log_probs).view(-1)  # every (beam, token) pair, flattened
        top_scores, top_pairs = totals.topk(min(2 * num_beams, totals.numel()))
        last_step = step == max_new_tokens - 1
        continuing = []  # (row, token, score) of the next beams
        for rank, (score, pair) in enumerate(zip(top_scores.tolist(), top_pairs.tolist())):
            row, token = divmod(pair, V)
            if token == eos_token_id or last_step:
                if rank < num_beams and score > float("-inf"):
                    new_tokens = window.tokens[row, prompt_length : window.length].tolist() + [token]
                    finished.append(Beam(new_tokens, score / len(new_tokens) ** length_penalty))
            elif len(continuing) < num_beams:
                continuing.append((row, token, score))
        finished = sorted(finished, key=lambda beam: beam.score, reverse=True)[:num_beams]
        if last_step or len(finished) == num_beams or not continuing:
            break
        rows, tokens, scores = (torch.tensor(column, device=input_ids.device) for column in zip(*continuing))
        window.select_rows(rows)
        beam_scores = scores.float()
        logits = window.append(tokens)
    return finished
