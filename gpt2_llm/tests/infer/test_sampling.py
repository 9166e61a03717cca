import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2_llm.errors import UserError
from gpt2_llm.infer.sampling import apply_repetition_penalty, sample_next_token, top_k_filter, top_p_filter

DRAWS = 4000


def test_top_k_filter_example():
    out = top_k_filter(torch.tensor([[1.0, 3.0, 2.0]]), 2)
    assert out.tolist() == [[-math.inf, 3.0, 2.0]]


@given(st.lists(st.integers(-2000, 2000), min_size=2, max_size=30, unique=True), st.integers(1, 40))
@settings(max_examples=50, deadline=None)
def test_top_k_keeps_exactly_the_k_largest(values, k):
    logits = torch.tensor([values], dtype=torch.float32) / 100  # distinct logits: no ties at the k-th
    kept = top_k_filter(logits, k).isfinite()[0]
    expected = set(torch.topk(logits[0], min(k, len(values))).indices.tolist())
    assert set(kept.nonzero().flatten().tolist()) == expected


def test_top_k_never_samples_outside_the_k_best():
    torch.manual_seed(0)
    logits = torch.randn(1, 50).expand(DRAWS, 50)  # many rows = many independent draws
    best = set(torch.topk(logits[0], 5).indices.tolist())
    drawn = sample_next_token(logits, temperature=2.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) <= best
    assert len(set(drawn.tolist())) == 5  # and with a flat-ish distribution, all of them appear


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert top_p_filter(logits, 0.7).isfinite().tolist() == [[True, True, False, False]]
    assert top_p_filter(logits, 0.8).isfinite().tolist() == [[True, True, False, False]]
    assert top_p_filter(logits, 0.81).isfinite().tolist() == [[True, True, True, False]]
    assert top_p_filter(logits, 0.1).isfinite().tolist() == [[True, False, False, False]]  # top-1 always stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_never_samples_outside_the_nucleus():
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    probs = torch.empty(20)
    probs[order] = torch.tensor([0.4, 0.3, 0.2] + [0.1 / 17] * 17)  # nucleus at p=0.85: first three
    logits = probs.log().expand(DRAWS, 20)
    drawn = sample_next_token(logits, top_p=0.85, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(order[:3].tolist())


def test_top_k_and_top_p_compose():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().expand(DRAWS, 4)
    drawn = sample_next_token(logits, top_k=3, top_p=0.6, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1}


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 1.9], [5.0, -1.0, 4.0]])
    assert sample_next_token(logits, temperature=0).tolist() == [1, 0]
    assert sample_next_token(logits, temperature=0, top_k=1, top_p=0.5).tolist() == [1, 0]


def test_low_temperature_concentrates_high_temperature_flattens():
    logits = torch.tensor([[1.0, 0.0, -1.0]]).expand(DRAWS, 3)
    cold = sample_next_token(logits, temperature=0.05, generator=torch.Generator().manual_seed(0))
    hot = sample_next_token(logits, temperature=100.0, generator=torch.Generator().manual_seed(0))
    assert (cold == 0).float().mean() > 0.99
    assert 0.25 < (hot == 2).float().mean() < 0.4


def test_seeded_generator_is_reproducible():
    logits = torch.randn(8, 100)
    a = sample_next_token(logits, generator=torch.Generator().manual_seed(5))
    b = sample_next_token(logits, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.shape == (8,) and a.dtype == torch.long


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        sample_next_token(torch.randn(1, 5), **kwargs)


# --- repetition penalty ----------------------------------------------------------------------


def test_repetition_penalty_example():
    out = apply_repetition_penalty(torch.tensor([[2.0, -1.0, 3.0]]), torch.tensor([[0, 1, 0]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]  # 0 seen twice is penalised once; 2 unseen is untouched


@pytest.mark.parametrize("penalty", [1.0, 1.2, 2.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repetition_penalty_matches_transformers(penalty, seed):
    transformers = pytest.importorskip("transformers")
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 40, generator=generator) * 3
    logits[0, 5] = 0.0  # zero: neither branch changes it
    seen = torch.randint(0, 40, (3, 12), generator=generator)  # with repeats
    expected = transformers.RepetitionPenaltyLogitsProcessor(penalty)(seen, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, penalty), expected, rtol=0, atol=0)


def test_repetition_penalty_leaves_its_input_alone():
    logits = torch.tensor([[1.0, 2.0]])
    apply_repetition_penalty(logits, torch.tensor([[1]]), 3.0)
    assert logits.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("penalty", [0.0, -1.0, float("nan"), True, "2"])
def test_bad_repetition_penalty_is_a_user_error(penalty):
    with pytest.raises(UserError, match="repetition penalty"):
        apply_repetition_penalty(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long), penalty)


@pytest.mark.parametrize("temperature", [1e-30, 1e-45, 1e-300])
def test_a_temperature_too_small_to_divide_by_samples_greedily(temperature):
    logits = torch.tensor([[2.0, 9.0, -3.0, 8.5], [0.5, -1.0, 4.0, 3.0]])
    chosen = sample_next_token(logits, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert chosen.tolist() == [1, 2]


@pytest.mark.parametrize("penalty", [1e-300, 1e-30, 1e30, 1e300])
def test_an_extreme_repetition_penalty_keeps_the_logits_finite(penalty):
    logits = torch.tensor([[2.0, -3.0, 0.0, 1.0]])
    penalised = apply_repetition_penalty(logits, torch.tensor([[0, 1, 2]]), penalty)
    assert torch.isfinite(penalised).all()
    assert torch.isfinite(sample_next_token(penalised, temperature=1.0, generator=torch.Generator().manual_seed(0)))

