"""data/dataset.py: the train/val split, batches and evaluation windows (the token cache: test_token_cache.py)."""
import numpy as np
import pytest
import torch

from bpe import BPE
from gpt2_llm.data.dataset import TokenDataset, token_byte_lengths
from gpt2_llm.errors import UserError
from gpt2_llm.train.metrics import bits_per_byte
from gpt2_llm.data.token_cache import TokenStream

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def bpe(tmp_path):
    bpe = BPE(str(tmp_path / "vocab.txt"))
    bpe.set_vocab_size(300)
    bpe.create_vocab(TEXT, verbose=False)
    bpe.save()
    return bpe


def test_a_separate_val_text_is_all_validation_and_the_corpus_all_training():
    dataset = TokenDataset(np.arange(100, dtype=np.uint16), 8, 0.1, val_tokens=np.arange(500, 540, dtype=np.uint16))
    assert dataset.train.tolist() == list(range(100)) and dataset.val.tolist() == list(range(500, 540))
    with pytest.raises(UserError, match="validation text has 5 tokens"):
        TokenDataset(np.arange(100, dtype=np.uint16), 8, 0.1, val_tokens=np.arange(5, dtype=np.uint16))


def test_windows_span_shards():
    """Random windows are drawn over the whole token stream, across the seams of its shards."""
    shards = [np.arange(0, 7, dtype=np.uint16), np.arange(7, 10, dtype=np.uint16), np.arange(10, 60, dtype=np.uint16)]
    dataset = TokenDataset(TokenStream(shards), context_length=8, val_fraction=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        x, y = dataset.random_batch(8, generator)
        assert torch.equal(y - x, torch.ones_like(x)), "consecutive ids: no seam skipped or repeated"


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
