"""Tests for gpt2_llm/tokenizer/training.py: train_merges against a naive reference, and the compiled trainer and
counting (training_kernels.py) against train_merges and bpe.count_chunks: the same merges, in the same order, and the
same counts."""
import pickle
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpe import BPE, _PATTERN, _split, _utf8_with_regions, count_chunks, merge_by_rank
from gpt2_llm.errors import UserError
from gpt2_llm.tests.tokenizer_fixtures import NASTY, TRAINING_KERNELS, needs_kernels
from gpt2_llm.tokenizer import training
from gpt2_llm.tokenizer.training import compiled_chunk_counts, train_merges, train_merges_compiled


def naive_train(chunk_counts, num_merges):
    """Reference trainer: recount every pair over every chunk before each merge (minbpe style), same tie-break."""
    words = [(list(chunk.encode("utf-8", "surrogatepass")), n) for chunk, n in chunk_counts.items()]
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts = Counter()
        for word, n in words:
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        words = [(merge_by_rank(word, {best: new_id}, {new_id: best}), n) for word, n in words]
    return merges


def test_train_merges_hand_example():
    # "aaab": (a, a) occurs twice -> merge 256; then (256, a) and (a, b) tie at 1 -> the lower pair (97, 98) wins.
    assert train_merges({"aaab": 1}, 2) == [(97, 97), (97, 98)]
    assert train_merges({"ab": 3, "ba": 2}, 5) == [(97, 98), (98, 97)]  # runs out of pairs: fewer merges


@settings(max_examples=300, deadline=None)
@given(
    chunk_counts=st.dictionaries(st.text(alphabet="aab c\né", min_size=1, max_size=12), st.integers(1, 5), max_size=12),
    num_merges=st.integers(1, 30),
)
def test_incremental_training_equals_naive_recount(chunk_counts, num_merges):
    assert train_merges(chunk_counts, num_merges, verbose=False) == naive_train(chunk_counts, num_merges)


def test_incremental_training_equals_naive_on_corpus(shakespeare):
    counts = Counter(_PATTERN.findall(shakespeare[:5000]))
    assert train_merges(counts, 60, verbose=False) == naive_train(counts, 60)


# The compiled trainer (training_kernels.py) must learn train_merges' merges exactly: same pairs, same order, same
# tie-breaks, and the same shortfall when the pairs run out.

def compiled_train(chunk_counts, num_merges):
    return train_merges_compiled(chunk_counts, num_merges, TRAINING_KERNELS)


@needs_kernels
def test_compiled_training_hand_examples():
    assert compiled_train({"aaab": 1}, 2) == [(97, 97), (97, 98)]
    assert compiled_train({"ab": 3, "ba": 2}, 5) == [(97, 98), (98, 97)]  # runs out of pairs: fewer merges
    assert compiled_train({"a": 4, "b": 1}, 3) == []  # no pairs at all
    assert compiled_train({"abab": 1, "xyxyxy": 2}, 10) == train_merges({"abab": 1, "xyxyxy": 2}, 10, verbose=False)


@needs_kernels
@pytest.mark.parametrize("text, num_merges", [
    ("shakespeare", 2000),  # mostly English words
    ("source", 2000),  # Python source, with some non-ASCII
    ("non-ASCII", 3000),  # more merges than the text has pairs for
    ("shakespeare", 100_000),  # runs out of pairs
])
def test_compiled_training_equals_python_on_real_text(shakespeare, python_source, text, num_merges):
    texts = {
        "shakespeare": shakespeare[:1_000_000],
        "source": python_source,
        "non-ASCII": "".join(NASTY) * 3 + "Ελληνικά κείμενα, кириллица и 中文字符 😀 \ud800 " + shakespeare[:20_000],
    }
    counts = Counter(_PATTERN.findall(texts[text]))
    expected = train_merges(counts, num_merges, verbose=False)
    assert compiled_train(counts, num_merges) == expected
    assert (len(expected) < num_merges) == (num_merges == 100_000 or text == "non-ASCII")


@needs_kernels
@settings(max_examples=500, deadline=None)
@given(
    chunk_counts=st.dictionaries(
        st.text(alphabet="aab c\né\ud800中", min_size=1, max_size=16),  # few letters: many ties; a lone surrogate
        st.one_of(st.integers(1, 5), st.integers(1, 2**40)), max_size=40,
    ),
    num_merges=st.integers(1, 80),
)
def test_compiled_training_equals_python_on_any_counts(chunk_counts, num_merges):
    assert compiled_train(chunk_counts, num_merges) == train_merges(chunk_counts, num_merges, verbose=False)


@needs_kernels
@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400), num_merges=st.integers(1, 200))
def test_compiled_training_equals_python_on_any_text(text, num_merges):
    counts = Counter(_split(text))
    assert compiled_train(counts, num_merges) == train_merges(counts, num_merges, verbose=False)


def compiled_trainings(monkeypatch):
    """A list that grows by one each time learn_merges runs the compiled trainer."""
    calls, train = [], training.train_merges_compiled
    monkeypatch.setattr(training, "train_merges_compiled", lambda *args: calls.append(args) or train(*args))
    return calls


@needs_kernels
@pytest.mark.parametrize("vocab_size", [300, 1024, 4000])
def test_create_vocab_compiled_equals_python(shakespeare, python_source, monkeypatch, vocab_size):
    fingerprints, compiled_runs = [], compiled_trainings(monkeypatch)
    for min_chunks in (1 << 62, 0):  # all in Python, then all compiled
        monkeypatch.setattr(training, "_COMPILED_TRAINING_MIN_CHUNKS", min_chunks)
        bpe = BPE()
        bpe.set_vocab_size(vocab_size)
        bpe.create_vocab(shakespeare[:200_000] + python_source[:100_000], verbose=False)
        fingerprints.append(bpe.fingerprint())
    assert fingerprints[0] == fingerprints[1]
    assert len(compiled_runs) == 1  # the second


@needs_kernels
def test_create_vocab_compiled_runs_out_of_pairs_like_python(monkeypatch):
    compiled_runs = compiled_trainings(monkeypatch)
    monkeypatch.setattr(training, "_COMPILED_TRAINING_MIN_CHUNKS", 0)
    bpe = BPE()
    bpe.set_vocab_size(400)
    with pytest.raises(UserError, match="only has material for 259 tokens"):
        bpe.create_vocab("ab ab", verbose=False)
    assert compiled_runs


def compiled_counts(*texts):
    counts = compiled_chunk_counts(_utf8_with_regions)
    for text in texts:
        counts.add_text(text)
    return counts


@needs_kernels
def test_compiled_counting_equals_count_chunks_on_real_text(shakespeare, python_source):
    long_chunks = ["x" * 10_000, " " * 9000 + "y", "é" * 5000]  # longer than the table's first block of bytes
    texts = [shakespeare, python_source, *NASTY, *long_chunks, "lone surrogates \ud800 \udfff x\udc80y"]
    expected = Counter()
    for text in texts:
        count_chunks(text, expected)
    assert compiled_counts(*texts).to_dict() == expected


@needs_kernels
@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(max_size=300), max_size=4))
def test_compiled_counting_equals_count_chunks_on_any_text(texts):
    expected = Counter()
    for text in texts:
        count_chunks(text, expected)
    assert compiled_counts(*texts).to_dict() == expected


@needs_kernels
def test_chunk_counts_add_up_select_and_train_like_a_counter(shakespeare):
    first, second = shakespeare[:50_000], shakespeare[40_000:120_000]
    counts = compiled_counts(first)
    counts.update(pickle.loads(pickle.dumps(compiled_counts(second))))  # as a worker process sends them
    expected = count_chunks(second, count_chunks(first))
    assert counts.to_dict() == expected and len(counts) == len(expected)
    assert sorted(counts.values()) == sorted(expected.values())
    assert counts.select(counts.values() > 2).to_dict() == {chunk: n for chunk, n in expected.items() if n > 2}
    assert counts.train_merges(700) == train_merges(expected, 700, verbose=False)
    from_counter, from_chunk_counts = BPE(), BPE()
    for bpe, chunk_counts in ((from_counter, expected), (from_chunk_counts, counts)):
        bpe.set_vocab_size(900)
        bpe.create_vocab_from_counts(chunk_counts, verbose=False)
    assert from_chunk_counts.fingerprint() == from_counter.fingerprint()


def test_training_picks_the_compiled_trainer_only_when_it_pays():
    assert training._training_kernels_for(100) is None  # a short training stays in Python: no numba import
    assert training._training_kernels_for(1 << 20) is TRAINING_KERNELS  # None where numba is missing

