"""corpus.py: finding the files of a corpus, checking them, cutting them into pieces and reading them back."""
import argparse
import json
import os

import pytest

from gpt2_llm.data import corpus
from gpt2_llm.data.corpus import Source, check_sources, find_sources, plan_pieces, read_piece, sample_pieces
from gpt2_llm.errors import UserError
from gpt2_llm.tests.helpers import REPO

# Text that is hard to cut: long lines, CRLF, runs of blank lines and spaces, non-ASCII words and whitespace
# (NBSP, ideographic space), lines that start with a space, and a line with no newline at all.
AWKWARD = ("Ünïcödé wörds\u00a0and\u3000spaces\r\n  indented line\n\n\n   \nx" * 300 + "\n" + "y" * 5000 + " z\n") * 3
# Source code with some non-ASCII characters, ~100 KB: the tokenizer's own.
TOKENIZER_SOURCE = "".join(path.read_text(encoding="utf-8")
                           for path in [REPO / "bpe.py", *sorted((REPO / "gpt2_llm" / "tokenizer").glob("*.py"))])


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_find_sources_reads_files_folders_and_globs_in_order(tmp_path):
    write(tmp_path / "c" / "b.txt", "b")
    write(tmp_path / "c" / "a" / "z.txt", "z")
    write(tmp_path / "c" / ".hidden", "h")
    write(tmp_path / "c" / "x.tokens" / "shard.bin", "not text")  # a token cache inside the folder
    write(tmp_path / "d.md", "d")
    found = find_sources([tmp_path / "c", str(tmp_path / "*.md"), tmp_path / "c" / "b.txt"])
    assert [os.path.relpath(s.path, tmp_path) for s in found] == ["c/a/z.txt", "c/b.txt", "d.md"]  # b.txt once


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "has no files"),
    (lambda p: None, "not found"),
])
def test_find_sources_errors(tmp_path, make, message):
    make(tmp_path / "in")
    with pytest.raises(UserError, match=message):
        find_sources([tmp_path / "in"])
    with pytest.raises(UserError, match="matches no files"):
        find_sources([str(tmp_path / "*.none")])


def sources_of(*paths):
    return find_sources([str(p) for p in paths])


def test_a_bad_file_is_named_with_its_byte_offset_or_skipped_with_a_count(tmp_path):
    good = write(tmp_path / "a.txt", "fine text\n")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ok so far \xff\xfe then not")
    binary = tmp_path / "c.bin"
    binary.write_bytes(b"ELF\x00\x01\x02")
    with pytest.raises(UserError, match=r"b\.txt is not UTF-8 text \(byte 0xff at byte 10\).*--skip-bad-files"):
        check_sources(sources_of(good, bad))
    with pytest.raises(UserError, match=r"c\.bin is not UTF-8 text: it looks binary \(a NUL byte at byte 3\)"):
        check_sources(sources_of(binary))
    said = []
    assert [s.path for s in check_sources(sources_of(tmp_path), skip_bad_files=True, log=said.append)] == [str(good)]
    assert said and said[0].startswith("Skipped 2 bad file(s)")


def test_json_lines_are_checked_line_by_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "one"}\n\n{"body": "two"}\n')
    with pytest.raises(UserError, match=r'd\.jsonl line 3: has no "text" field'):
        check_sources(sources_of(path))
    with pytest.raises(UserError, match="line 1"):
        check_sources(sources_of(path), text_field="body")
    write(tmp_path / "e.jsonl", '{"text": 3}\n')
    with pytest.raises(UserError, match="not a string"):
        check_sources(sources_of(tmp_path / "e.jsonl"))
    write(tmp_path / "f.jsonl", '{"text": "a"\n')
    with pytest.raises(UserError, match="line 1: is not valid JSON"):
        check_sources(sources_of(tmp_path / "f.jsonl"))


def test_an_empty_corpus_is_refused(tmp_path):
    write(tmp_path / "empty.txt", "")
    with pytest.raises(UserError, match="empty"):
        check_sources(sources_of(tmp_path / "empty.txt"))


@pytest.mark.parametrize("piece_bytes, block_bytes", [(1 << 20, 1 << 20), (3000, 700), (40_000, 4096)])
def test_pieces_and_blocks_encode_exactly_as_the_whole(tmp_path, corpus, gpt2_bpe, piece_bytes, block_bytes):
    gpt2 = gpt2_bpe
    for text in (corpus.read_text(encoding="utf-8"), AWKWARD, TOKENIZER_SOURCE):
        path = write(tmp_path / "t.txt", text)
        pieces = plan_pieces(sources_of(path), piece_bytes)
        blocks = [block for piece in pieces for block in read_piece(piece, block_bytes=block_bytes)]
        assert "".join(text for _, text in blocks) == text
        assert [starts for starts, _ in blocks] == [True] + [False] * (len(blocks) - 1)
        assert sum((gpt2.encode(block) for _, block in blocks), []) == gpt2.encode(text)
        if piece_bytes < 1 << 20:
            assert len(pieces) > 1 and len(blocks) > len(pieces)


def test_json_lines_are_one_document_each(tmp_path):
    docs = [f"document {i}\nwith\u00a0text" for i in range(50)]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps({"text": d, "id": i}) + "\n" * (1 + i % 2)
                                              for i, d in enumerate(docs)))
    pieces = plan_pieces(sources_of(path), piece_bytes=200)
    assert len(pieces) > 3 and pieces[-1].segments[-1].end == path.stat().st_size
    assert [text for piece in pieces for _, text in read_piece(piece)] == docs


def test_a_sample_is_spread_over_the_whole_corpus(tmp_path):
    for i in range(8):
        write(tmp_path / f"{i}.txt", f"file {i} says\n" * 20_000)  # 270 KB each
    pieces = plan_pieces(sources_of(tmp_path), piece_bytes=100_000)
    sample = sample_pieces(pieces, 200_000)
    size = sum(p.size for p in sample)
    assert 150_000 < size <= 220_000
    assert {os.path.basename(source.path) for p in sample for source in p.sources} == {f"{i}.txt" for i in range(8)}
    assert sample_pieces(pieces, 10 << 20) == pieces  # more than the corpus: all of it


def test_parse_size():
    assert corpus.parse_size("200M") == 200 << 20 and corpus.parse_size("1g") == 1 << 30
    assert corpus.parse_size("4096") == 4096 and corpus.parse_size("1.5K") == 1536
    for bad in ("", "-5", "0", "12X"):
        with pytest.raises(argparse.ArgumentTypeError):
            corpus.parse_size(bad)


def test_sources_compare_by_path_size_and_time():
    assert Source("a", 1, 2) == Source("a", 1, 2) != Source("a", 1, 3)
    assert Source("x.JSONL", 1, 1).is_jsonl and not Source("x.json.txt", 1, 1).is_jsonl
