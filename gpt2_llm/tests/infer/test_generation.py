"""The decoding loop (generation.py) against transformers' generate and against a plain argmax loop.

Models are small and random, built from configs with fixed seeds; nothing is downloaded.
"""
import pytest
import torch

from gpt2_llm import GPT2
from gpt2_llm.errors import UserError
from gpt2_llm.infer.generation import TokenWindow, generate_tokens
from gpt2_llm.infer.sampling import SamplingSettings

def import_transformers():
    """The reference, for the tests that compare with it: only those skip where it is not installed."""
    return pytest.importorskip("transformers")

from gpt2_llm.tests.helpers import SMALL


def ids(batch, length, seed=1, vocab=SMALL["vocab_size"]):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A random HF GPT-2 with wide logits (greedy far from ties) and the same weights in ours."""
    transformers = import_transformers()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    directory = tmp_path_factory.mktemp("hf_generation")
    hf.save_pretrained(directory)
    return hf, GPT2.from_pretrained(directory).eval()


def hf_generate(hf, prompt, max_new_tokens, **kwargs):
    with torch.no_grad():
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                           pad_token_id=0, **kwargs)


@pytest.mark.parametrize("penalty", [1.3, 0.7])  # 1.0 (plain greedy): checkpoints/test_huggingface.py
def test_greedy_with_repetition_penalty_matches_transformers(hf_pair, penalty):
    hf, ours = hf_pair
    prompt = ids(2, 8, vocab=300)
    expected = hf_generate(hf, prompt, 40, do_sample=False, repetition_penalty=penalty)
    assert torch.equal(ours.generate(prompt, 40, temperature=0, repetition_penalty=penalty), expected)


def test_generate_tokens_streams_what_generate_returns(small_model):
    model = small_model()
    prompt = ids(2, 5)
    settings = SamplingSettings(max_tokens=12, temperature=0.9, top_k=20)
    steps = list(generate_tokens(model, prompt, settings, generator=torch.Generator().manual_seed(3)))
    assert len(steps) == 12 and all(step.shape == (2,) for step in steps)
    expected = model.generate(prompt, 12, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.stack(steps, dim=1), expected[:, 5:])


def test_stopping_a_stream_early_restores_training_mode(small_model):
    model = small_model(dropout=0.1).train()
    stream = generate_tokens(model, ids(1, 3), SamplingSettings(max_tokens=50, temperature=0))
    next(stream)
    assert not model.training  # no dropout while generating
    stream.close()
    assert model.training


def test_vocab_size_keeps_padding_ids_out(small_model):
    model = small_model()
    with torch.no_grad():  # final hidden state all ones, and rows past the tokenizer's 90 ids all ones:
        model.ln_f.weight.zero_(), model.ln_f.bias.fill_(1.0)  # those ids win every draw by ~64 nats
        model.lm_head.weight[90:] = 1.0
    out = model.generate(ids(3, 4), 20, temperature=1.5, vocab_size=90, generator=torch.Generator().manual_seed(0))
    assert int(out[:, 4:].max()) < 90
    assert int(model.generate(ids(1, 4), 3, temperature=0)[0, -1]) >= 90  # without the limit they would


def test_same_seed_same_tokens_other_seed_other_tokens(small_model):
    model = small_model()
    prompt = ids(1, 4)

    def sample(seed):
        return model.generate(prompt, 30, temperature=1.0, top_p=0.95, repetition_penalty=1.2,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(11), sample(11))
    assert not torch.equal(sample(11), sample(12))


def test_zero_new_tokens_returns_the_prompt(small_model):
    prompt = ids(2, 5)
    assert torch.equal(small_model().generate(prompt, 0), prompt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"repetition_penalty": 0.0}, "repetition penalty"),
        ({"temperature": 0, "top_k": 0}, "top_k"),  # checked even when greedy ignores it
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message, small_model):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(UserError, match=message):
        small_model().generate(ids(1, 3), **kwargs)


def test_window_select_rows_moves_tokens_and_cache_together(small_model):
    """After reordering rows, one more step gives each row the logits of its own sequence."""
    model = small_model()
    prompt = ids(3, 6)
    window = TokenWindow(model, prompt, 4)
    window.prefill()
    rows = torch.tensor([2, 0, 0])
    window.select_rows(rows)
    logits = window.append(torch.tensor([5, 6, 7]))
    expected = model(torch.cat((prompt[rows], torch.tensor([[5], [6], [7]])), dim=1))[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(window.ids[:, :6], prompt[rows])


def test_window_grows_a_single_prompt_into_beams(small_model):
    model = small_model()
    prompt = ids(1, 5)
    window = TokenWindow(model, prompt, 2)
    window.prefill()
    window.select_rows(torch.zeros(3, dtype=torch.long))
    logits = window.append(torch.tensor([1, 2, 3]))
    expected = model(torch.cat((prompt.expand(3, -1), torch.tensor([[1], [2], [3]])), dim=1))[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
