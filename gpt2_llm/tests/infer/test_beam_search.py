"""Beam search: a constructed case where greedy loses, beam 1 = greedy, and agreement with transformers."""
import math

import pytest
import torch
from torch import nn

from gpt2_llm import GPT2
from gpt2_llm.infer.beam_search import beam_search
from gpt2_llm.infer.sampling import SamplingSettings
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.errors import UserError
from gpt2_llm.model.kv_cache import KVCache
from gpt2_llm.tests.helpers import wide_logits_model


class BigramModel(nn.Module):
    """Next-token probabilities that depend on the last token only: a table we can reason about."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.config = GPT2Config(vocab_size=probs.size(0), embedding_dim=8, num_layers=1, num_heads=1, max_seq_len=64)
        self.log_probs = probs.log()

    def new_cache(self, dtype=None):
        return KVCache(0, self.config.max_seq_len, dtype)  # no layers: only the length is tracked

    def next_token_logits(self, idx, cache):
        cache.length += idx.size(1)
        return self.log_probs[idx[:, -1]]


START, A, B, C, D, E = range(6)


def trap():
    """From START, A (0.6) beats B (0.4); but after A every token is 0.2 likely, after B, C is 0.9.
    Greedy: A then anything, 0.6 * 0.2 = 0.12. Beam search: B, C = 0.36."""
    probs = torch.full((6, 6), 1e-6)
    probs[START, A], probs[START, B] = 0.6, 0.4
    probs[A, 1:] = 0.2
    probs[B, C], probs[B, D] = 0.9, 0.1
    probs[C:, START] = 1.0
    return BigramModel(probs / probs.sum(dim=1, keepdim=True))


def test_beam_search_finds_what_greedy_misses():
    model = trap()
    prompt = torch.tensor([[START]])
    greedy = beam_search(model, prompt, SamplingSettings(max_tokens=2), num_beams=1)[0]
    assert greedy.tokens[0] == A
    best = beam_search(model, prompt, SamplingSettings(max_tokens=2), num_beams=2)[0]
    assert best.tokens == [B, C]
    assert best.score == pytest.approx(math.log(0.36) / 2, rel=1e-4)  # length_penalty 1: per-token mean
    assert best.score > greedy.score


def test_beams_come_best_first_and_eos_ends_a_beam():
    beams = beam_search(trap(), torch.tensor([[START]]), SamplingSettings(max_tokens=5), num_beams=3, eos_token_id=C)
    assert beams[0].tokens == [B, C]  # finished at the eos, two tokens long
    scores = [beam.score for beam in beams]
    assert scores == sorted(scores, reverse=True) and len(beams) == 3


def random_model(seed=0):
    return wide_logits_model(seed, scale=4.0, vocab_size=97)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_beam_is_greedy(seed):
    model = random_model(seed)
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(seed))
    greedy = model.generate(prompt, 40, temperature=0)  # 40 > context 32: the window slides too
    assert beam_search(model, prompt, SamplingSettings(max_tokens=40), num_beams=1)[0].tokens == greedy[0, 5:].tolist()


def test_zero_tokens_and_bad_arguments():
    model, prompt = trap(), torch.tensor([[START]])
    assert beam_search(model, prompt, SamplingSettings(max_tokens=0), num_beams=2)[0].tokens == []
    with pytest.raises(UserError, match="num_beams"):
        beam_search(model, prompt, SamplingSettings(max_tokens=3), num_beams=0)
    with pytest.raises(UserError, match="one prompt"):
        beam_search(model, torch.zeros(2, 3, dtype=torch.long), SamplingSettings(max_tokens=3), num_beams=2)


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                     bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    directory = tmp_path_factory.mktemp("hf_beam")
    hf.save_pretrained(directory)
    return hf, GPT2.from_pretrained(directory).eval()


# With these weights and prompts the eos cases end every beam early, at different lengths (found by
# looking), so the finishing and stopping rules are compared too, not only the ranking.
@pytest.mark.parametrize("num_beams, eos, seed", [(2, None, 0), (4, None, 3), (4, 40, 0), (3, 7, 2)])
def test_matches_transformers_beam_search(hf_pair, num_beams, eos, seed):
    """Every returned beam and its score equal HF's generate(num_beams=N, early_stopping=True)."""
    hf, ours = hf_pair
    prompt = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, num_beams=num_beams,
                          num_return_sequences=num_beams, do_sample=False, early_stopping=True, length_penalty=1.0,
                          eos_token_id=eos, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    beams = beam_search(ours, prompt, SamplingSettings(max_tokens=12), num_beams, eos_token_id=eos)
    if eos is not None:
        assert all(beam.tokens[-1] == eos and len(beam.tokens) < 12 for beam in beams)
    for row, beam in enumerate(beams):
        hf_tokens = out.sequences[row, 5:].tolist()
        assert hf_tokens[: len(beam.tokens)] == beam.tokens  # HF pads finished beams after their eos
        assert beam.score == pytest.approx(out.sequences_scores[row].item(), abs=1e-4)
