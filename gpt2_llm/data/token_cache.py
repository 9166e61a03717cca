"""The token cache: a corpus encoded once, on all cores, into a folder of shards that training memory-maps.

    corpus/  --corpus.plan_pieces-->  pieces  --encode, one worker per core-->  corpus.<key>.tokens/
        manifest.json   the vocab's fingerprint, the dtype, the sources (path, size, mtime, sha256) and the
                        shards in order, each with its piece of source and its token count
        <digest>.bin    one piece's token ids, raw: uint16 when the vocab fits (GPT-2's does), else uint32

A shard's name is a hash of what it holds (its file's sha256, its byte range, the vocab), so a shard on
disk is always right. An interrupted build (Ctrl-C, SIGTERM, kill -9, a full disk) keeps its finished
shards and the next run encodes only the rest; a file that changed gets new shards (the others stay);
shards no longer named are deleted. Every file here is written atomically: a reader never sees half a shard.
Memory stays flat: a worker holds one ~1 MB block of text at a time, the parent holds no tokens at all,
and training reads the shards through memory maps.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from gpt2_llm.files import atomic_write
from gpt2_llm.data import corpus
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.compiled import load_kernels

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int):
    """Smallest unsigned dtype that holds every id: token_dtype(8192) -> uint16."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def cache_folder(inputs, bpe, text_field="text") -> Path:
    """Where the cache of these inputs under this vocab lives: beside the first input
    (`data.txt.<key>.tokens/`), or in the user's cache folder when that is read-only.

    The key hashes the inputs as named (not the files they hold), so a file added to a corpus folder
    joins the existing cache, and the vocab, so another vocab gets its own cache."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    named = {"inputs": [os.path.abspath(i) for i in map(str, inputs)], "vocab": bpe.fingerprint(), "field": text_field}
    key = hashlib.sha256(json.dumps(named).encode()).hexdigest()[:16]
    first = Path(str(inputs[0]))
    stem = "corpus" if any(c in str(first) for c in "*?[") else first.resolve().name or "corpus"
    folder = corpus.common_folder(inputs)
    if not os.access(folder, os.W_OK):
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2-llm"
    return folder / f"{stem}.{key}{corpus.CACHE_SUFFIX}"


def load_tokens(inputs, bpe, text_field="text", skip_bad_files=False, log=print, progress=True) -> "TokenStream":
    """All tokens of a corpus (see corpus.py for inputs) as one memory-mapped TokenStream, encoding
    what is not cached yet. Documents are joined with <|endoftext|>; the special is never parsed from
    the text itself: the files are data, not markup."""
    sources = corpus.find_sources(inputs)
    folder = cache_folder(inputs, bpe, text_field)
    manifest = read_manifest(folder)
    recorded = {(s["path"], s["size"], s["mtime_ns"]): s["sha256"] for s in manifest.get("sources", [])}
    known_paths = {s["path"] for s in manifest.get("sources", [])}
    for source in sources:
        if source.path in known_paths and _key(source) not in recorded:
            log(f"{source.path} changed since its tokens were cached: encoding it again")
    checked = {s for s in sources if _key(s) in recorded}
    hashes = {s.path: recorded[_key(s)] for s in checked}  # the files read before; check_sources hashes the rest
    sources = corpus.check_sources(sources, text_field, skip_bad_files, checked, log, sha256=hashes)
    pieces = corpus.plan_pieces(sources)
    dtype = token_dtype(bpe.vocab_size)
    names = [shard_name(p, hashes, bpe, text_field) for p in pieces]
    build_missing_shards(folder, pieces, names, bpe, text_field, dtype, sources, log, progress)
    shards = [np.memmap(folder / name, dtype=dtype, mode="r") if (folder / name).stat().st_size else
              np.zeros(0, dtype) for name in names]
    new_manifest = {
        "format": FORMAT_VERSION,
        "vocab": bpe.fingerprint(),
        "dtype": np.dtype(dtype).name,
        "text_field": text_field,
        "sources": [{"path": s.path, "size": s.size, "mtime_ns": s.mtime_ns, "sha256": hashes[s.path]}
                    for s in sources],
        "shards": [{"file": name, "tokens": len(shard),
                    "segments": [[seg.source.path, seg.start, seg.end] for seg in p.segments]}
                   for name, p, shard in zip(names, pieces, shards)],
        "tokens": int(sum(len(shard) for shard in shards)),
    }
    if new_manifest != manifest:
        atomic_write(folder / MANIFEST, json.dumps(new_manifest, indent=1))
    remove_unnamed_shards(folder, set(names))
    return TokenStream(shards)


def _key(source):
    return source.path, source.size, source.mtime_ns


def shard_name(piece, source_sha256, bpe, text_field) -> str:
    """A name that changes whenever the shard's content would: `3f2a...c1.bin`. source_sha256: path -> sha256."""
    what = [[source_sha256[seg.source.path], seg.start, seg.end, seg.source.is_jsonl and text_field]
            for seg in piece.segments]
    what += [piece.first_of_corpus, bpe.fingerprint(), FORMAT_VERSION]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24] + ".bin"


def read_manifest(folder) -> dict:
    """The manifest of a cache folder, or {} when there is none (or it cannot be read: it is rebuilt)."""
    try:
        with open(Path(folder) / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
        return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT_VERSION else {}
    except (OSError, ValueError):
        return {}


def build_missing_shards(folder, pieces, names, bpe, text_field, dtype, sources, log, progress):
    """Encode the pieces whose shard is not on disk yet, on all cores; each worker writes its own shard."""
    folder = Path(folder)
    todo = [(piece, name) for piece, name in zip(pieces, names) if not (folder / name).exists()]
    if not todo:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the token cache {folder}: {e.strerror or e}") from None
    done = len(pieces) - len(todo)
    log(f"Encoding {corpus.describe(sources)} into {folder} on all cores"
        + (f" (continuing: {done} of {len(pieces)} shards were already there)" if done else ""))
    finished = 0
    if sum(piece.size for piece, _ in todo) > 1 << 22:
        load_kernels()  # compiled encoding, loaded once here so that no worker loads it again
    try:
        jobs = [piece for piece, _ in todo]
        shared = (bpe, folder, dict(todo), text_field, dtype)
        for _ in corpus.map_pieces(encode_piece_to_shard, jobs, shared, desc="Encoding", progress=progress):
            finished += 1
    except OSError as e:
        raise UserError(f"cannot write the token cache in {folder}: {e.strerror or e}; the {done + finished} "
                        "finished shards are kept: free space and run the same command again to continue") from None
    except KeyboardInterrupt:
        log(f"Interrupted: {done + finished} of {len(pieces)} shards are done and kept; "
            "run the same command again to continue")
        raise


def encode_piece_to_shard(piece, shared) -> int:
    """Encode one piece (in a worker) and write its shard atomically -> its token count."""
    bpe, folder, names, text_field, dtype = shared
    tokens = encode_piece(piece, bpe, text_field, dtype)
    atomic_write(Path(folder) / names[piece], tokens.tofile)
    return len(tokens)


def encode_piece(piece, bpe, text_field="text", dtype=np.uint32) -> np.ndarray:
    """The token ids of one piece: its blocks encoded one by one, with <|endoftext|> before each document
    except the corpus's very first."""
    parts = []
    eot = np.array([bpe.eot_id], dtype=dtype)
    first_document = piece.first_of_corpus
    for starts_document, text in corpus.read_piece(piece, text_field):
        if starts_document and not first_document:
            parts.append(eot)
        first_document = False
        parts.append(bpe.encode_array(text, dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def remove_unnamed_shards(folder, names):
    """Delete shard files no plan names any more (a changed or removed source's old shards)."""
    for path in Path(folder).glob("*.bin"):
        if path.name not in names:
            path.unlink(missing_ok=True)


class TokenStream:
    """Token arrays (shards) seen as one sequence without copying them: len(), view(start, stop) for a
    part (still no copy), and stream[a:b] for a window, copied into one array even across two shards.

    TokenStream([np.arange(3), np.arange(3, 6)])[2:4] -> array([2, 3])
    """

    def __init__(self, arrays, start=0, stop=None):
        self.arrays = [a for a in arrays if len(a)]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])  # offsets[i]: where array i starts
        self.start = start
        self.stop = int(self.offsets[-1]) if stop is None else stop

    def __len__(self):
        return self.stop - self.start

    def view(self, start, stop) -> "TokenStream":
        start, stop, _ = slice(start, stop).indices(len(self))
        return TokenStream(self.arrays, self.start + start, self.start + max(start, stop))

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("TokenStream slices take no step")
        start, stop = self.start + start, self.start + max(start, stop)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while start < stop:
            array, offset = self.arrays[first], int(self.offsets[first])
            take = min(stop, offset + len(array)) - start
            parts.append(np.asarray(array[start - offset : start - offset + take]))
            start += take
            first += 1
        if not parts:
            return np.zeros(0, self.arrays[0].dtype if self.arrays else np.uint16)
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def tolist(self) -> list[int]:
        return self[:].tolist()
