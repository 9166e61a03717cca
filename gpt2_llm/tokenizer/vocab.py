"""The vocabulary a model is used with: learning it from a corpus, loading it, and checking that it
belongs to the model.

No torch here: the tokenizer commands (`tokenize`, `encode`, `decode`) must start fast.
"""
import os
import time
from collections import Counter

import numpy as np

from bpe import BPE, FORMAT_HEADER, _utf8_with_regions, count_chunks
from gpt2_llm.data import corpus
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.training import compiled_chunk_counts

DEFAULT_VOCAB = "vocab.txt"
# learn_vocab keeps the counts of at most this many distinct chunks (~250 bytes each at the peak, while training,
# when counted and trained compiled; several times that in Python): past it, the rarest are dropped. Merges come from
# frequent pairs, so a chunk seen a handful of times in a corpus this varied barely moves them; a corpus with fewer
# distinct chunks loses nothing.
MAX_DISTINCT_CHUNKS = 1_000_000
# Corpora of at least this many bytes are counted by compiled code where numba is installed (training.ChunkCounts): ~5x
# faster than Python's ~6 MB/s per core, once loading numba (~0.3 s) is paid.
COMPILED_COUNTING_MIN_BYTES = 1 << 22
# learn_vocab in Python, counting on 2 cores and then training: the 5 MB Shakespeare corpus in ~3 s. On a machine's
# first run, compiled.load_kernels weighs it against compiling the kernels.
PYTHON_LEARNING_BYTES_PER_SECOND = 1_600_000
# A worker's counts of one piece are its memory: 4 MB pieces keep them small (the parent merges them fast).
COUNTING_PIECE_BYTES = 4 << 20
GPT2_FILES = ("vocab.json", "merges.txt")  # OpenAI's encoder.json and vocab.bpe under Hugging Face's names


def is_vocab(path) -> bool:
    """Whether path is a vocabulary: a file that starts with the header `tokenize` writes, or a directory
    with GPT-2's vocab.json + merges.txt (a Hugging Face directory)."""
    if os.path.isdir(path):
        return all(os.path.isfile(os.path.join(path, name)) for name in GPT2_FILES)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(len(FORMAT_HEADER) + 1) == (FORMAT_HEADER + "\n").encode()


def load_vocab(path) -> BPE:
    """A vocab file (what `tokenize` writes), or a directory with GPT-2's vocab.json + merges.txt."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = [os.path.join(path, name) for name in GPT2_FILES]
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            raise UserError(f"{path} has no {' or '.join(missing)}: pass a vocab file, or a directory with GPT-2's "
                            "tokenizer files (encoder.json and vocab.bpe under Hugging Face's names)")
        return BPE.from_gpt2(*files, vocab_path=path)
    bpe = BPE(path)
    if not bpe.load():
        raise UserError(f"vocab file {path} not found; create one with: python main.py tokenize <file> --output {path}")
    return bpe


def learn_vocab(inputs, vocab_path, vocab_size=None, sample_bytes=None, text_field="text", skip_bad_files=False,
                log=print, progress=True) -> BPE:
    """Learn a vocab from a corpus of any size and save it to vocab_path (atomically).

    The text streams through: each worker counts the pre-split chunks of one piece at a time, and only
    the counts are merged here, so memory follows the number of distinct chunks, not the corpus size.
    sample_bytes: learn from about that many bytes spread evenly over the corpus instead of all of it.
    vocab_size None: recommended from the counts (see training.recommended_vocab_size).
    """
    if vocab_size is not None and (type(vocab_size) is not int or vocab_size < 257):
        raise UserError(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    if sample_bytes is not None and sample_bytes < 1:
        raise UserError(f"--sample-bytes must be positive, got {sample_bytes}")
    sources = corpus.check_sources(corpus.find_sources(inputs), text_field, skip_bad_files, log=log)
    pieces = corpus.plan_pieces(sources, COUNTING_PIECE_BYTES)
    total = sum(p.size for p in pieces)
    if sample_bytes is not None and sample_bytes < total:
        pieces = corpus.sample_pieces(pieces, sample_bytes)
        what = f"a {sum(p.size for p in pieces) / 1e6:,.1f} MB sample spread evenly over {corpus.describe(sources)}"
    else:
        what = corpus.describe(sources) if len(sources) > 1 else f"{total:,} bytes"
    start = time.perf_counter()
    num_bytes = sum(p.size for p in pieces)
    # the counts, compiled where it pays (loaded here: the forked workers inherit it), else in Counters
    counts = None
    if num_bytes >= COMPILED_COUNTING_MIN_BYTES:
        counts = compiled_chunk_counts(_utf8_with_regions, num_bytes / PYTHON_LEARNING_BYTES_PER_SECOND)
    counts, dropped = Counter() if counts is None else counts, 0  # (not `or`: empty counts are falsy)
    counting = text_field, isinstance(counts, Counter)
    for piece_counts in corpus.map_pieces(count_piece, pieces, counting, desc="Counting", progress=progress):
        counts.update(piece_counts)
        if len(counts) > MAX_DISTINCT_CHUNKS:
            before = len(counts)
            counts = most_frequent(counts, MAX_DISTINCT_CHUNKS // 2)
            dropped += before - len(counts)
    if dropped:
        log(f"Kept the counts of the {len(counts):,} most frequent distinct chunks; {dropped:,} counts of rare ones "
            "were dropped to bound memory")
    bpe = BPE(os.fspath(vocab_path))
    if vocab_size is not None:
        bpe.set_vocab_size(vocab_size)
    bpe.create_vocab_from_counts(counts, verbose=progress)
    save_vocab(bpe)
    log(f"Learned {bpe.vocab_size} tokens from {what} in {time.perf_counter() - start:.1f}s; saved {vocab_path} "
        f"(model vocab size {bpe.get_model_vocab_size()})")
    return bpe


def most_frequent(counts, keep):
    """At most `keep` of the most frequent entries of counts (len(counts) > keep; a Counter or a ChunkCounts):
    those counted more often than the (keep + 1)-th most frequent, so ties at that count all go.
    most_frequent({"a": 3, "b": 1, "c": 1}, 2) -> {"a": 3}"""
    values = np.fromiter(counts.values(), np.int64, len(counts))
    threshold = np.partition(values, len(values) - keep - 1)[len(values) - keep - 1]
    if not isinstance(counts, Counter):
        return counts.select(values > threshold)
    return Counter({chunk: count for chunk, count in counts.items() if count > threshold})


def count_piece(piece, counting):
    """{pre-split chunk: count} of one piece of a corpus (in a worker process). counting: (text_field, in_python):
    a Counter from bpe.count_chunks if in_python, else a training.ChunkCounts (the same counts, compiled)."""
    text_field, in_python = counting
    counts = Counter() if in_python else compiled_chunk_counts(_utf8_with_regions)
    for _, text in corpus.read_piece(piece, text_field):
        if in_python:
            count_chunks(text, counts)
        else:
            counts.add_text(text)
    return counts


def save_vocab(bpe):
    """bpe.save(), with a failed write (no such folder, disk full) as a UserError; the old file stays as it was."""
    try:
        bpe.save()
    except OSError as e:
        raise UserError(f"cannot write vocab {bpe.vocab_path}: {e.strerror or e}; nothing was changed") from None


def vocab_problems(bpe, metadata: dict, config) -> list[str]:
    """Why bpe cannot drive the model that config and metadata describe; [] when it can.

    metadata["vocab"] is what the trainer records: {"fingerprint": sha256 of the vocab file, "size": ...};
    a model saved without it (model.save, a Hugging Face directory) is checked by size alone.
    """
    problems = []
    saved = metadata.get("vocab") or {}
    if saved.get("fingerprint") and saved["fingerprint"] != bpe.fingerprint():
        problems.append(
            f"the model was trained with a different vocabulary ({saved.get('size')} tokens, hash "
            f"{str(saved['fingerprint'])[:12]}) than {bpe.vocab_path} ({bpe.vocab_size} tokens, hash "
            f"{bpe.fingerprint()[:12]}): the same token ids would mean different text"
        )
    if bpe.vocab_size > config.vocab_size:
        problems.append(
            f"{bpe.vocab_path} has {bpe.vocab_size} tokens but the model has only {config.vocab_size} embedding "
            "rows: ids past the table would crash (CUDA 'index out of bounds')"
        )
    return problems


def check_vocab(bpe, metadata: dict, config, source) -> None:
    """Refuse a vocabulary that does not belong to the model from source (a checkpoint, a directory)."""
    problems = vocab_problems(bpe, metadata, config)
    if problems:
        raise UserError(f"{source}: {'; and '.join(problems)}. Pass the vocab file the model was trained with")
