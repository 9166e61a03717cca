"""Scoring a model on a text: bits per byte, nats per token and perplexity, with a sliding window.

The text is longer than the model's context, so it is read in windows of `context` tokens that start every
`stride` tokens (Hugging Face's recipe, https://huggingface.co/docs/transformers/perplexity). A window's
first token has nothing before it in the window, so it is never a target there; and a window scores only
the tokens the previous one did not, so every target counts once:

    tokens   0 1 2 3 4 5 6 7 8 9          context 4, stride 2           context 4, stride 4
    window   [0 1 2 3]                    targets 1 2 3                 targets 1 2 3
                 [2 3 4 5]                targets     4 5               [4 5 6 7]: targets 5 6 7
                     [4 5 6 7]            targets         6 7               [8 9]: target 9
                         [6 7 8 9]        targets             8 9

A stride below the context gives each target more of the text before it (a better, slower score); a
stride equal to it (no overlap) leaves out each window's first token. Nothing here reads files or prints:
the command (commands/evaluate_command.py) does.
"""
import math

import numpy as np
import torch

from gpt2_llm.device import autocast
from gpt2_llm.model.linear_cross_entropy import linear_cross_entropy
from gpt2_llm.train.metrics import bits_per_byte


def window_spans(num_tokens: int, context: int, stride: int):
    """Yield (begin, end, first_target) of each window that scores a target: the window is
    tokens[begin:end], its targets tokens[first_target:end].

    list(window_spans(10, 4, 2)) -> [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    list(window_spans(10, 4, 4)) -> [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    """
    previous_end = 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + context, num_tokens)
        first_target = max(previous_end, begin + 1)  # not scored before, and with a token before it here
        if first_target < end:
            yield begin, end, first_target
        previous_end = end
        if end == num_tokens:
            break


def count_targets(num_tokens: int, context: int, stride: int) -> int:
    """How many tokens the windows score: count_targets(10, 4, 4) -> 7 (tokens 0, 4 and 8 are not)."""
    return sum(end - first for _, end, first in window_spans(num_tokens, context, stride))


def window_batches(num_tokens: int, context: int, stride: int, batch_size: int):
    """window_spans grouped into lists of at most batch_size windows of one length (only the last
    window can be shorter than the others, so it gets a batch of its own)."""
    batch = []
    for span in window_spans(num_tokens, context, stride):
        if batch and (len(batch) == batch_size or span[1] - span[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(span)
    if batch:
        yield batch


def summarize(nats: float, num_targets: int, num_bytes: int) -> dict:
    """The scores of num_targets tokens that cost nats in all and spell num_bytes of text.

    summarize(2 * math.log(2), 2, 4) -> nats_per_token ln 2, perplexity 2.0, bits_per_byte 0.5
    bits_per_byte is None when the targets spell no text (only <|endoftext|>).
    """
    nats_per_token = nats / num_targets
    return {
        "tokens": num_targets,
        "bytes": num_bytes,
        "nats": nats,
        "nats_per_token": nats_per_token,
        "perplexity": math.exp(nats_per_token),
        "bits_per_byte": bits_per_byte(nats, num_bytes) if num_bytes else None,
    }


@torch.inference_mode()
def evaluate_tokens(model, tokens, byte_lengths, context: int, stride: int, batch_size: int,
                    device: torch.device, dtype: torch.dtype, progress=None) -> dict:
    """Score model (already on device) on tokens (a TokenStream or any array sliced as tokens[a:b]) -> summarize()'s dict.

    byte_lengths[id]: the UTF-8 bytes token id spells (data.token_byte_lengths; <|endoftext|> counts 0,
    its nats still count). dtype: the autocast precision (fp32: none). progress(n), if given, is called
    with the number of targets each batch scored.
    """
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per window
    num_targets = num_bytes = 0
    try:
        for batch in window_batches(len(tokens), context, stride, batch_size):
            windows = np.stack([tokens[begin:end] for begin, end, _ in batch]).astype(np.int64)  # (B, T)
            ids = torch.from_numpy(windows).to(device)
            with autocast(device, dtype):
                hidden = model.hidden_states(ids)  # (B, T) -> (B, T, C)
            scored = 0
            for row, (begin, end, first_target) in enumerate(batch):
                targets = slice(first_target - begin, end - begin)
                predictors = slice(targets.start - 1, targets.stop - 1)  # position t predicts token t + 1
                with autocast(device, dtype):  # the head and the loss together, without the (n, V) logits
                    total_nats += linear_cross_entropy(hidden[row, predictors], model.lm_head.weight,
                                                       ids[row, targets], reduction="sum")
                num_bytes += int(byte_lengths[windows[row, targets]].sum())
                scored += end - first_target
            num_targets += scored
            if progress is not None:
                progress(scored)
    finally:
        model.train(was_training)
    return summarize(float(total_nats), num_targets, num_bytes)
