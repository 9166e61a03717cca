"""vocab.py's learn_vocab: a vocabulary learned from a streamed corpus equals the in-memory trainer's."""
import os
import subprocess
import sys
from collections import Counter

import pytest

from bpe import BPE, _utf8_with_regions, count_chunks
from gpt2_llm.errors import UserError
from gpt2_llm.tests.helpers import MAIN, REPO
from gpt2_llm.tests.tokenizer_fixtures import stop_background_compile
from gpt2_llm.tokenizer.training import compiled_chunk_counts
from gpt2_llm.tokenizer.vocab import learn_vocab


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of ~20 KB and blocks of ~2 KB: many pieces, counted in worker processes."""
    monkeypatch.setattr("gpt2_llm.data.corpus.PIECE_BYTES", 20_000)
    monkeypatch.setattr("gpt2_llm.data.corpus.BLOCK_BYTES", 2000)


@pytest.fixture(params=["python", "compiled"])
def counting(request, monkeypatch):
    """learn_vocab counting in Python (Counters), or compiled (training.ChunkCounts) even on a small corpus."""
    if request.param == "compiled":
        if compiled_chunk_counts(_utf8_with_regions) is None:
            pytest.skip("numba is not installed: no compiled counting")
        monkeypatch.setattr("gpt2_llm.tokenizer.vocab.COMPILED_COUNTING_MIN_BYTES", 0)
        monkeypatch.setattr("gpt2_llm.tokenizer.vocab.count_chunks", counted_in_python)  # the workers are forked: they see it
    return request.param


def counted_in_python(text, counts):
    raise AssertionError("counted in Python, not compiled")


def in_memory(texts, vocab_size, path):
    bpe = BPE(str(path))
    bpe.set_vocab_size(vocab_size)
    if len(texts) == 1:
        bpe.create_vocab(texts[0], verbose=False)
    else:
        counts = Counter()
        for text in texts:
            count_chunks(text, counts)
        bpe.create_vocab_from_counts(counts, verbose=False)
    return bpe


def test_streamed_vocab_equals_the_in_memory_one(corpus, tmp_path, small_pieces, counting):
    streamed = learn_vocab([corpus], tmp_path / "streamed.txt", 400, log=lambda m: None, progress=False)
    assert streamed.fingerprint() == in_memory([corpus.read_text(encoding="utf-8")], 400, tmp_path / "m").fingerprint()
    assert BPE(str(tmp_path / "streamed.txt")).load(), "saved"


def test_a_folder_of_documents_counts_each_document(corpus, tmp_path, small_pieces, counting):
    text = corpus.read_text(encoding="utf-8")
    source = (REPO / "bpe.py").read_text(encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "docs" / "b.py").write_text(source, encoding="utf-8")
    said = []
    streamed = learn_vocab([tmp_path / "docs"], tmp_path / "v.txt", 500, log=said.append, progress=False)
    assert streamed.fingerprint() == in_memory([text, source], 500, tmp_path / "m").fingerprint()
    assert "from 2 files" in said[-1]


def test_a_sample_says_so_and_is_smaller(corpus, tmp_path):
    said = []
    learn_vocab([corpus], tmp_path / "v.txt", 300, sample_bytes=20_000, log=said.append, progress=False)
    assert "MB sample spread evenly over" in said[-1]


@pytest.mark.parametrize("options, message", [
    (dict(vocab_size=100), "at least 257"), (dict(sample_bytes=0), "positive"), (dict(vocab_size=100_000), "too small"),
])
def test_bad_settings(corpus, tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        learn_vocab([corpus], tmp_path / "v.txt", log=lambda m: None, progress=False, **options)
    assert not (tmp_path / "v.txt").exists()


def test_tokenize_command_takes_several_inputs(corpus, tmp_path):
    (tmp_path / "more.jsonl").write_text('{"text": "More text, in JSON lines."}\n', encoding="utf-8")
    result = subprocess.run([sys.executable, MAIN, "tokenize", str(corpus), str(tmp_path / "more.jsonl"),
                             "--vocab-size", "300", "-o", str(tmp_path / "v.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Learned 300 tokens from 2 files")


def test_the_first_tokenize_on_a_machine_says_the_kernels_compile_and_learns_the_same_vocab(tmp_path):
    # numba's disk cache empty: the 5 MB corpus is learned in Python, faster than compiling the kernels would be,
    # while a background process compiles them; one line on stderr says so. The vocab is the compiled path's.
    cache, text = tmp_path / "cache", REPO / "data" / "shakespeare.txt"
    command = [sys.executable, MAIN, "tokenize", str(text), "--vocab-size", "2000", "-o", str(tmp_path / "first.txt")]
    try:
        result = subprocess.run(command, env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)), capture_output=True,
                                text=True)
    finally:
        stop_background_compile(cache)  # it would hold a core
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Compiling the tokenizer's kernels in the background (once per machine")
    assert len(result.stderr.splitlines()) == 1
    learned_here = learn_vocab([text], tmp_path / "here.txt", 2000, log=lambda m: None, progress=False)
    first = BPE(str(tmp_path / "first.txt"))
    assert first.load() and first.fingerprint() == learned_here.fingerprint()


def test_past_the_cap_the_rarest_chunks_are_dropped(corpus, tmp_path, small_pieces, monkeypatch, counting):
    monkeypatch.setattr("gpt2_llm.tokenizer.vocab.MAX_DISTINCT_CHUNKS", 2000)
    said = []
    capped = learn_vocab([corpus], tmp_path / "v.txt", 300, log=said.append, progress=False)
    assert any("most frequent distinct chunks" in line for line in said)
    full = in_memory([corpus.read_text(encoding="utf-8")], 300, tmp_path / "m")
    shared = set(capped.token_bytes().values()) & set(full.token_bytes().values())
    assert len(shared) > 0.9 * 300, "the frequent merges are the same"


def test_the_cap_drops_the_same_chunks_compiled_or_not(corpus, tmp_path, small_pieces, monkeypatch):
    if compiled_chunk_counts(_utf8_with_regions) is None:
        pytest.skip("numba is not installed: no compiled counting")
    monkeypatch.setattr("gpt2_llm.tokenizer.vocab.MAX_DISTINCT_CHUNKS", 2000)
    fingerprints = []
    fingerprints.append(learn_vocab([corpus], tmp_path / "v.txt", 300, log=print, progress=False).fingerprint())
    monkeypatch.setattr("gpt2_llm.tokenizer.vocab.COMPILED_COUNTING_MIN_BYTES", 0)  # now compiled
    monkeypatch.setattr("gpt2_llm.tokenizer.vocab.count_chunks", counted_in_python)
    fingerprints.append(learn_vocab([corpus], tmp_path / "v.txt", 300, log=print, progress=False).fingerprint())
    assert fingerprints[0] == fingerprints[1]


def test_most_frequent():
    from gpt2_llm.tokenizer.vocab import most_frequent

    assert most_frequent(Counter({"a": 3, "b": 1, "c": 1}), 2) == {"a": 3}
    assert most_frequent(Counter({"a": 3, "b": 2, "c": 1}), 2) == {"a": 3, "b": 2}
    counts = compiled_chunk_counts(_utf8_with_regions)
    if counts is not None:
        counts.add_text("a a a b b c")  # {"a": 1, " a": 2, " b": 2, " c": 1}
        assert most_frequent(counts, 2).to_dict() == {" a": 2, " b": 2}
        assert most_frequent(counts, 1).to_dict() == {}
