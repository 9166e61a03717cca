"""Tests for gpt2_llm/tokenizer/parallel.py: a text cut at its safe places encodes exactly as the whole, and
BPE.encode_file, on threads or processes, compiled or not, gives exactly the ids of encode."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpe import EOT, BPE
from gpt2_llm.tests.tokenizer_fixtures import KERNELS, TRICKY
from gpt2_llm.tokenizer import compiled, parallel
from gpt2_llm.tokenizer.parallel import split_for_workers


def _concat_encode(bpe, pieces, specials=()):
    return [i for piece in pieces for i in bpe.encode(piece, allowed_special=specials)]


@pytest.mark.parametrize("specials", [(), {EOT}])
def test_every_safe_cut_is_exact(gpt2_bpe, specials):
    pieces = split_for_workers(TRICKY, len(TRICKY), specials)  # cut at every safe newline
    assert len(pieces) > 12 and "".join(pieces) == TRICKY
    assert _concat_encode(gpt2_bpe, pieces, specials) == gpt2_bpe.encode(TRICKY, allowed_special=specials)


def test_naive_cuts_would_not_be_exact(gpt2_bpe):
    # Why the cut rule matters: cutting right after a newline changes "\n\n" + "b" into one "\n\n" token.
    text = "a\n\nb"
    assert gpt2_bpe.encode("a\n\n") + gpt2_bpe.encode("b") != gpt2_bpe.encode(text)
    assert split_for_workers(text, len(text)) == ["a\n", "\nb"]
    assert gpt2_bpe.encode("a\n") + gpt2_bpe.encode("\nb") == gpt2_bpe.encode(text)
    # ... and cutting just before an allowed special token too.
    text = "a \n\n<|endoftext|>"
    assert split_for_workers(text, len(text), {EOT}) == [text]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(["\n", " ", "\r", "\t", "a", "'", "s", "1", ".", "é", "\u3000", "\x85", EOT])).map("".join))
def test_random_safe_cuts_are_exact(gpt2_bpe, text):
    for specials in ((), {EOT}):
        pieces = split_for_workers(text, len(text), specials)
        assert "".join(pieces) == text
        assert _concat_encode(gpt2_bpe, pieces, specials) == gpt2_bpe.encode(text, allowed_special=specials)


# Which workers encode_file uses: threads on the compiled path for mostly ASCII text (the kernels run without the
# GIL), processes otherwise: text that is not mostly ASCII (its `regex` pre-split holds the GIL), or no numba.
WORKER_CASES = {
    "compiled, threads": (TRICKY * 20, "ThreadPoolExecutor"),
    "compiled, processes": ("中文字符测试，日本語のテキスト\n" * 40 + TRICKY, "Pool"),
    "python, processes": (TRICKY * 20, "Pool"),
}


@pytest.mark.parametrize("specials", [(), "all"])
@pytest.mark.parametrize("case", sorted(WORKER_CASES))
def test_encode_file_equals_encode(gpt2_bpe, shakespeare, tmp_path, monkeypatch, specials, case):
    start, pool_name = WORKER_CASES[case]
    if case.startswith("compiled") and KERNELS is None:
        pytest.skip("numba is not installed")
    if case.startswith("python"):
        monkeypatch.setattr(parallel, "_kernels_for", lambda num_chars: None)
    text = start + shakespeare[:50_000] + TRICKY
    path = tmp_path / "data.txt"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(parallel, "_MIN_PARALLEL_CHARS", 0)  # force the parallel path on a small file
    monkeypatch.setattr(compiled, "_COMPILED_PAYS_CHARS", 0)
    module = parallel.multiprocessing if pool_name == "Pool" else parallel
    pools, real_pool = [], getattr(module, pool_name)
    monkeypatch.setattr(module, pool_name, lambda *a, **k: pools.append(a) or real_pool(*a, **k))
    ids = gpt2_bpe.encode_file(str(path), num_workers=2, allowed_special=specials)
    assert pools and pools[0][0] == 2  # the ids below came from two workers of that kind, not from a fallback
    assert ids.dtype == np.uint16
    expected = gpt2_bpe._encode(text, gpt2_bpe._allowed_specials(specials), None)  # the Python path, on one core
    assert ids.tolist() == expected
    assert gpt2_bpe.encode_file(str(path), num_workers=1, allowed_special=specials).tolist() == expected


def test_encode_file_uses_uint32_for_big_vocabs(monkeypatch, tmp_path):
    bpe = BPE()
    monkeypatch.setattr(BPE, "vocab_size", 70_000)
    path = tmp_path / "t.txt"
    path.write_text("hi")
    assert bpe.encode_file(str(path)).dtype == np.uint32
