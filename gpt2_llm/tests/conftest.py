"""Fixtures shared by the package's tests: a small random model, the training corpus, its vocab.

    small_model(seed=0, **overrides)  a fresh GPT2 of the SMALL shape in eval mode (a factory fixture)
    corpus                            a 60,000-character slice of the shipped Shakespeare, as a file
    vocab                             a 300-token BPE vocab learned from corpus, as a file
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


@pytest.fixture
def one_thread():
    """Micro models gain nothing from threads, and on a busy machine OpenMP's spinning threads lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
