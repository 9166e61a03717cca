"""data.py: the token cache, the train/val split, batches and evaluation windows."""
import numpy as np
import pytest
import torch

from bpe import BPE
from gpt2_llm import data
from gpt2_llm.data import TokenDataset, load_tokens, token_byte_lengths
from gpt2_llm.errors import UserError
from gpt2_llm.metrics import bits_per_byte

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text_file.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def bpe(tmp_path):
    bpe = BPE(str(tmp_path / "vocab.txt"))
    bpe.set_vocab_size(300)
    bpe.create_vocab(TEXT, verbose=False)
    bpe.save()
    return bpe


def count_encodes(monkeypatch, bpe):
    calls = []
    encode_file = bpe.encode_file
    monkeypatch.setattr(bpe, "encode_file", lambda *a, **k: calls.append(a) or encode_file(*a, **k))
    return calls


def test_tokens_match_encode_and_are_cached_beside_the_file(text_file, bpe, monkeypatch):
    calls = count_encodes(monkeypatch, bpe)
    tokens = load_tokens(text_file, bpe, log=lambda m: None)
    assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
    assert tokens.tolist() == bpe.encode(TEXT)
    assert len(list(text_file.parent.glob("text_file.txt.*.tokens.npy"))) == 1
    again = load_tokens(text_file, bpe, log=lambda m: None)
    assert len(calls) == 1, "the second load must come from the cache"
    assert again.tolist() == tokens.tolist()


def test_changed_file_or_vocab_retokenizes(text_file, bpe, tmp_path, monkeypatch):
    calls = count_encodes(monkeypatch, bpe)
    load_tokens(text_file, bpe, log=lambda m: None)
    text_file.write_text(TEXT + "Citizen!\n", encoding="utf-8")
    assert load_tokens(text_file, bpe, log=lambda m: None).tolist() == bpe.encode(TEXT + "Citizen!\n")
    assert len(calls) == 2

    other = BPE(str(tmp_path / "other.txt"))
    other.set_vocab_size(280)
    other.create_vocab(TEXT, verbose=False)
    assert load_tokens(text_file, other, log=lambda m: None).tolist() == other.encode(TEXT + "Citizen!\n")
    assert len(list(text_file.parent.glob("text_file.txt.*.tokens.npy"))) == 3


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "a.npy"
    data.save_array_atomic(target, np.arange(5, dtype=np.uint16))

    def fail(f, array):
        f.write(b"half a header")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError):
        data.save_array_atomic(target, np.arange(9, dtype=np.uint16))
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"], "no temp file left behind"


def test_missing_file_is_a_user_error(tmp_path, bpe):
    with pytest.raises(UserError, match="not found"):
        load_tokens(tmp_path / "nope.txt", bpe)


def test_split_is_the_last_fraction_and_train_windows_never_reach_it():
    tokens = np.arange(1000, dtype=np.uint32)  # token value = position, so windows show where they came from
    dataset = TokenDataset(tokens, context_length=16, val_fraction=0.1)
    assert dataset.train.tolist() == list(range(900)) and dataset.val.tolist() == list(range(900, 1000))
    generator = torch.Generator().manual_seed(0)
    seen_max = 0
    for _ in range(300):
        x, y = dataset.random_batch(32, generator)
        assert x.shape == y.shape == (32, 16) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
        seen_max = max(seen_max, int(y.max()))
    assert seen_max == 899, "the last train token is reachable, no val token is"


def test_random_batches_follow_the_generator():
    dataset = TokenDataset(np.arange(500, dtype=np.uint16), 8, 0.1)
    a = dataset.random_batch(4, torch.Generator().manual_seed(3))
    b = dataset.random_batch(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_eval_windows_are_fixed_non_overlapping_and_capped():
    dataset = TokenDataset(np.arange(1100, dtype=np.uint16), context_length=10, val_fraction=100 / 1100)
    assert dataset.eval_starts(max_tokens=10_000) == list(range(0, 90, 10))  # 9 windows of 11 tokens fit in 100
    starts = dataset.eval_starts(max_tokens=30)
    assert starts == [0, 30, 60]  # 3 windows spread over the 9
    batches = list(dataset.eval_batches(batch_size=2, max_tokens=30))
    targets = torch.cat([y for _, y in batches]).flatten().tolist()
    assert len(targets) == len(set(targets)) == 30, "each val token is a target at most once"
    assert min(targets) >= 1000 and targets == sorted(targets)
    assert [y.tolist() for _, y in batches] == [y.tolist() for _, y in dataset.eval_batches(2, 30)]


@pytest.mark.parametrize("num_tokens, val_fraction", [(10, 0.1), (40, 0.1), (16, 0.0)])
def test_too_small_for_a_window_says_so(num_tokens, val_fraction):
    with pytest.raises(UserError, match="too few for one window"):
        TokenDataset(np.arange(num_tokens, dtype=np.uint16), context_length=16, val_fraction=val_fraction)


def test_bad_val_fraction():
    with pytest.raises(UserError, match="val-fraction"):
        TokenDataset(np.arange(100, dtype=np.uint16), 8, 1.0)


def test_token_byte_lengths_count_utf8_bytes(bpe):
    lengths = token_byte_lengths(bpe, 320)
    assert lengths.shape == (320,)
    ids = bpe.encode("Before we proceed, é!")  # é is two bytes, possibly two byte tokens
    assert int(lengths[ids].sum()) == len("Before we proceed, é!".encode("utf-8"))
    assert lengths[bpe.eot_id] == 0 and lengths[bpe.vocab_size :].sum() == 0  # specials and padding


def test_bits_per_byte_by_hand():
    # 3 tokens with 2, 1, 3 nats spelling 4 bytes: 6 nats / 4 bytes = 1.5 nats/byte = 1.5 / ln 2 bits.
    assert bits_per_byte(6.0, 4) == pytest.approx(2.1640425613334453)
    assert bits_per_byte(8 * np.log(2), 8) == pytest.approx(1.0)
