"""token_cache.py: a corpus encoded into shards equals the corpus encoded at once; interrupted builds resume;
changed files are re-encoded, and only they; bad input changes no file."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bpe import BPE, EOT
from gpt2_llm.data import token_cache
from gpt2_llm.errors import UserError
from gpt2_llm.tests.helpers import REPO
from gpt2_llm.data.token_cache import MANIFEST, TokenStream, cache_folder, load_tokens
from gpt2_llm.tokenizer.vocab import load_vocab


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.fixture
def folder(tmp_path, corpus):
    """A corpus folder: two plain texts (one in a subfolder, one with CRLF and non-ASCII) and a JSON-lines file."""
    shakespeare = corpus.read_text(encoding="utf-8")
    write(tmp_path / "corpus" / "a.txt", shakespeare[:30_000])
    write(tmp_path / "corpus" / "sub" / "b.txt", "Ünïcödé\r\nwörds " * 500 + shakespeare[30_000:40_000])
    docs = [shakespeare[i : i + 700] for i in range(40_000, 60_000, 700)]
    write(tmp_path / "corpus" / "c.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs))
    return tmp_path / "corpus"


def documents(folder):
    """The corpus's documents in the order of their sorted paths: a.txt, each line of c.jsonl, sub/b.txt."""
    lines = (folder / "c.jsonl").read_text(encoding="utf-8").splitlines()
    return [(folder / "a.txt").read_text(encoding="utf-8"), *[json.loads(line)["text"] for line in lines],
            (folder / "sub" / "b.txt").read_bytes().decode("utf-8")]


def encoded_at_once(bpe, docs):
    """The reference: the documents joined by <|endoftext|>, each encoded as plain text."""
    ids = []
    for i, doc in enumerate(docs):
        ids += ([bpe.eot_id] if i else []) + bpe.encode(doc)
    return ids


@pytest.fixture
def bpe(vocab):
    return load_vocab(vocab)


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of ~5 KB and blocks of ~1 KB, so the small test corpus gives many shards and many blocks."""
    monkeypatch.setattr("gpt2_llm.data.corpus.PIECE_BYTES", 5000)
    monkeypatch.setattr("gpt2_llm.data.corpus.BLOCK_BYTES", 1000)


def load(bpe, inputs, **options):
    said = []
    tokens = load_tokens(inputs, bpe, log=said.append, progress=False, **options)
    return tokens, "\n".join(said)


def test_sharded_cache_equals_encoding_the_whole_corpus_at_once(folder, bpe, small_pieces):
    tokens, said = load(bpe, [folder])
    assert "Encoding 3 files" in said
    manifest = json.loads((cache_folder([folder], bpe) / MANIFEST).read_text())
    assert len(manifest["shards"]) > 10 and manifest["dtype"] == "uint16" and manifest["tokens"] == len(tokens)
    assert all(s["sha256"] == hashlib.sha256(open(s["path"], "rb").read()).hexdigest() for s in manifest["sources"])
    assert tokens[:].tolist() == encoded_at_once(bpe, documents(folder))
    again, said = load(bpe, [folder])
    assert said == "" and again[:].tolist() == tokens[:].tolist(), "the second load encodes nothing"


def test_one_file_encodes_exactly_as_before(corpus, bpe):
    """A single file has no <|endoftext|>: the same ids as encoding its text, as always."""
    tokens, _ = load(bpe, corpus)
    assert tokens[:].tolist() == bpe.encode(corpus.read_text(encoding="utf-8"))
    assert EOT not in bpe.decode(tokens[:].tolist())


def test_a_changed_file_is_encoded_again_and_only_it(folder, bpe, small_pieces, monkeypatch):
    load(bpe, [folder])
    cache = cache_folder([folder], bpe)
    old_a = {s["file"] for s in json.loads((cache / MANIFEST).read_text())["shards"]
             if s["segments"][0][0].endswith("a.txt")}
    before = set(os.listdir(cache))
    text = (folder / "a.txt").read_text(encoding="utf-8") + "\nA new line at the end.\n"
    write(folder / "a.txt", text)
    encoded = []
    encode_piece = token_cache.encode_piece
    monkeypatch.setattr(token_cache, "encode_piece", lambda piece, *a: encoded.append(piece) or encode_piece(piece, *a))
    monkeypatch.setattr("gpt2_llm.data.corpus.usable_cores", lambda: 1)  # in this process, so `encoded` sees the calls
    tokens, said = load(bpe, [folder])
    assert f"{folder / 'a.txt'} changed since its tokens were cached: encoding it again" in said
    assert {os.path.basename(source.path) for p in encoded for source in p.sources} == {"a.txt"}
    assert tokens[:].tolist() == encoded_at_once(bpe, documents(folder))
    shards = {s["file"] for s in json.loads((cache / MANIFEST).read_text())["shards"]}
    assert set(os.listdir(cache)) == shards | {MANIFEST}, "nothing else is left"
    assert before - {MANIFEST} - shards == old_a, "exactly the old shards of a.txt are gone"


def test_small_files_share_shards_and_a_grown_file_changes_only_its_own(tmp_path, bpe):
    """A folder of many small files: grouped into a few shards (not one per file), and the groups are stable, so
    a file that grows re-encodes its group alone."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i in range(300):
        write(tmp_path / "many" / f"doc{i:03d}.txt", " ".join(words[(i + j) % 8] for j in range(i % 40 + 5)))
    many = tmp_path / "many"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gpt2_llm.data.corpus.PIECE_BYTES", 20_000)
        tokens, _ = load(bpe, [many])
        docs = [(many / f"doc{i:03d}.txt").read_text() for i in range(300)]
        assert tokens[:].tolist() == encoded_at_once(bpe, docs)
        shards = json.loads((cache_folder([many], bpe) / MANIFEST).read_text())["shards"]
        assert 3 <= len(shards) <= 60
        with open(many / "doc150.txt", "a") as f:
            f.write(" omega" * 30)
        docs[150] = (many / "doc150.txt").read_text()
        tokens, said = load(bpe, [many])
        assert tokens[:].tolist() == encoded_at_once(bpe, docs)
    assert f"continuing: {len(shards) - 1} of {len(shards)} shards" in said


def test_another_vocab_gets_its_own_cache(corpus, bpe, tmp_path):
    other = BPE(str(tmp_path / "other.txt"))
    other.set_vocab_size(280)
    other.create_vocab(corpus.read_text(encoding="utf-8"), verbose=False)
    assert cache_folder(corpus, other) != cache_folder(corpus, bpe)
    tokens, _ = load(other, corpus)
    assert tokens[:].tolist() == other.encode(corpus.read_text(encoding="utf-8"))


def test_a_killed_build_keeps_its_shards_and_resumes_to_the_same_tokens(folder, bpe, tmp_path):
    """SIGKILL to the whole build (parent and workers) part way; the next run continues from the shards."""
    script = f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from bpe import BPE
from gpt2_llm.data import corpus
from gpt2_llm.data import token_cache
corpus.PIECE_BYTES, corpus.BLOCK_BYTES = 5000, 1000
encode_piece = token_cache.encode_piece
def slow(*args):
    time.sleep(0.3)
    return encode_piece(*args)
token_cache.encode_piece = slow
bpe = BPE({str(bpe.vocab_path)!r}); bpe.load()
token_cache.load_tokens([{str(folder)!r}], bpe, progress=False)
"""
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    cache = cache_folder([folder], bpe)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(cache.glob("*.bin"))) < 4:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    kept = len(list(cache.glob("*.bin")))
    assert kept >= 4 and not (cache / MANIFEST).exists(), "killed before the end"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gpt2_llm.data.corpus.PIECE_BYTES", 5000)
        patch.setattr("gpt2_llm.data.corpus.BLOCK_BYTES", 1000)
        tokens, said = load(bpe, [folder])
    assert f"continuing: {kept} of" in said
    assert tokens[:].tolist() == encoded_at_once(bpe, documents(folder))
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")], "the killed writers' temp files are gone"


def test_a_full_disk_keeps_the_finished_shards_and_says_how_to_continue(folder, bpe, small_pieces, monkeypatch):
    writes = []
    real_write = token_cache.atomic_write

    def fill_up(path, data):
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        writes.append(path)
        real_write(path, data)

    monkeypatch.setattr(token_cache, "atomic_write", fill_up)
    monkeypatch.setattr("gpt2_llm.data.corpus.usable_cores", lambda: 1)
    with pytest.raises(UserError, match="No space left on device; the 3 finished shards are kept"):
        load(bpe, [folder])
    monkeypatch.setattr(token_cache, "atomic_write", real_write)
    tokens, said = load(bpe, [folder])
    assert "continuing: 3 of" in said and tokens[:].tolist() == encoded_at_once(bpe, documents(folder))


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"caf\xe9 latin-1", r"bad\.txt is not UTF-8 text \(byte 0xe9 at byte 3\)"),
    ("bad.jsonl", b'{"text": "a"}\n{"title": "b"}\n', r'bad\.jsonl line 2: has no "text" field'),
])
def test_a_bad_file_changes_nothing_or_is_skipped(folder, bpe, name, content, message):
    (folder / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        load(bpe, [folder])
    assert not cache_folder([folder], bpe).exists(), "nothing was written"
    tokens, said = load(bpe, [folder], skip_bad_files=True)
    assert "Skipped 1 bad file(s)" in said and tokens[:].tolist() == encoded_at_once(bpe, documents(folder))


def test_token_stream_slices_across_shards():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 1000, size=n).astype(np.uint16) for n in (5, 0, 1, 17, 3)]
    whole = np.concatenate(arrays)
    stream = TokenStream(arrays)
    assert len(stream) == len(whole)
    for _ in range(200):
        a, b = sorted(rng.integers(0, len(whole) + 1, size=2))
        assert stream[a:b].tolist() == whole[a:b].tolist()
        view = stream.view(a, b)
        c, d = sorted(rng.integers(0, len(view) + 1, size=2))
        assert len(view) == b - a and view[c:d].tolist() == whole[a:b][c:d].tolist()
