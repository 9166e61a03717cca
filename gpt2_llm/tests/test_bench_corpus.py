"""bench/corpus.py builds the data benches' corpora: distinct UTF-8 text, the same bytes every time."""
import sys
from pathlib import Path

import pytest

from gpt2_llm.tests.helpers import REPO

sys.path.insert(0, str(REPO))

from bench import corpus as bench_corpus  # noqa: E402


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A small tree of installed-package-like files: text, a duplicate, a binary, bad UTF-8, a non-text suffix."""
    root = tmp_path / "site-packages"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("def hello(name):\n    return 'Hello, ' + name + '!'  # 42\n" * 50)
    (root / "pkg" / "sub" / "b.md").write_text("# Über uns\n\nThe quick brown fox jumps over the lazy dog.\n" * 50)
    (root / "pkg" / "copy.py").write_bytes((root / "pkg" / "a.py").read_bytes())
    (root / "pkg" / "data.json").write_bytes(b'{"x": 1}\0\0\0')
    (root / "pkg" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 20)
    (root / "pkg" / "image.png").write_bytes(b"\x89PNG....")
    monkeypatch.setattr(bench_corpus, "source_roots", lambda: [str(root)])
    return root


def test_cipher_is_a_case_keeping_letter_and_digit_permutation_that_keeps_utf8():
    assert bench_corpus.cipher(0) == bytes(range(256))
    table = bench_corpus.cipher(3)
    assert table == bench_corpus.cipher(3) != bench_corpus.cipher(4)
    lower, upper = bytes(range(97, 123)), bytes(range(65, 91))
    assert sorted(lower.translate(table)) == list(lower)
    assert lower.translate(table).upper() == upper.translate(table)
    assert table[128:] == bytes(range(128, 256))  # UTF-8 lead and continuation bytes untouched
    text = "Größe 12 ok".encode()
    assert text.translate(table).decode() != text.decode()


def test_corpus_is_distinct_utf8_text_and_the_same_each_build(sources, tmp_path):
    distinct = sum(len(t) for t in bench_corpus.distinct_texts(bench_corpus.source_files()))
    first = bench_corpus.build_corpus(3 * distinct, str(tmp_path / "one"), log=lambda *_: None)
    second = bench_corpus.build_corpus(3 * distinct, str(tmp_path / "two"), log=lambda *_: None)
    files = sorted(p.relative_to(first) for p in Path(first).rglob("*.txt"))
    assert files == sorted(p.relative_to(second) for p in Path(second).rglob("*.txt"))
    text = b"".join((Path(first) / f).read_bytes() for f in files)
    assert text == b"".join((Path(second) / f).read_bytes() for f in files)
    decoded = text.decode("utf-8")  # bad bytes were replaced, so this never raises
    assert "\0" not in decoded and "\ufffd" in decoded and "PNG" not in decoded
    assert decoded.count("def hello(name)") == 50  # the copy of a.py is not a second text
    assert bench_corpus.describe(first)["passes"] == 3  # past one pass, the text is ciphered: new words
    assert decoded.count("quick brown fox") == 50 and len(text) >= 3 * distinct
