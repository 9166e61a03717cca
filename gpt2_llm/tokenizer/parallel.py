"""Encoding a big file on every core, with exactly the ids of encoding it whole: BPE.encode_file.

A text is cut only where cutting provably changes no token; each piece is encoded by a worker (a thread running the
compiled path, else a process) and the ids are joined in order.

    >>> split_for_workers("a\\nb\\nc", 3)
    ['a', '\\nb', '\\nc']

No torch, and nothing of bpe.py, which imports this module: the BPE object to encode with comes as an argument.
"""
import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import regex
from tqdm import tqdm

from gpt2_llm.files import read_text_file
from gpt2_llm.tokenizer.compiled import _kernels_for, load_kernels

_MIN_PARALLEL_CHARS = 1 << 19  # below ~0.5 MB, starting workers (processes: ~20 ms) costs more than it saves

# Where a text can be cut without changing its tokens: just before a newline that ends a whitespace run. Proof: the
# last whitespace char before a non-space is always a chunk of its own when it is a newline (" ?" only takes spaces),
# and the run before it is one chunk either way, because `\s+(?!\S)` stops before that newline in the whole text and
# at the end of the piece alone. Nothing in the pattern looks behind, so the rest encodes the same.
_SAFE_CUT = regex.compile(r"\n(?=\S)")


def split_for_workers(text, num_pieces, specials=()):
    """Cut text into about num_pieces parts at safe newlines (see _SAFE_CUT), so that encoding the parts one by one
    gives exactly the ids of encoding the whole. A cut never lands just before one of `specials`.

    split_for_workers("a\\nb\\nc", 3) -> ["a", "\\nb", "\\nc"]
    """
    specials = tuple(specials)
    step = max(1, len(text) // max(1, num_pieces))
    pieces, start = [], 0
    while True:
        match = _SAFE_CUT.search(text, max(start + 1, start + step))
        while match and specials and text.startswith(specials, match.end()):
            match = _SAFE_CUT.search(text, match.end())
        if not match:
            break
        pieces.append(text[start : match.start()])
        start = match.start()
    pieces.append(text[start:])
    return pieces


def usable_cores():
    """Cores this process may run on (taskset / container limits), falling back to all cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encode_file_in_parallel(bpe, is_mostly_ascii, path, num_workers, allowed_special, progress):
    """BPE.encode_file: read the file, cut it with split_for_workers, encode the pieces on num_workers cores and join
    the ids in order. Small files and num_workers=1 are encoded here, in one thread. is_mostly_ascii(num_chars,
    num_bytes): bpe._is_mostly_ascii, whether the pre-split takes `re` rather than `regex` for most of a text."""
    text = read_text_file(path)
    dtype = np.uint16 if bpe.vocab_size <= 1 << 16 else np.uint32
    num_workers = num_workers or usable_cores()
    specials = bpe._allowed_specials(allowed_special)
    if num_workers == 1 or len(text) < _MIN_PARALLEL_CHARS:
        return np.asarray(bpe._encode(text, specials, _kernels_for(len(text))), dtype=dtype)
    # Several pieces per worker balance the load; at most ~4 MB each bounds a worker's memory on big files.
    pieces = split_for_workers(text, max(4 * num_workers, len(text) >> 22), specials)
    show = progress and sys.stderr.isatty()
    kernels = _kernels_for(len(text))
    if kernels:
        bpe._compiled_tables(kernels)  # made once, here, for the workers to share or inherit
    if kernels and (text.isascii() or is_mostly_ascii(len(text), len(text.encode("utf-8", "surrogatepass")))):
        # The compiled path runs without the GIL but for its `regex` pre-split of non-ASCII stretches, so on mostly
        # ASCII text threads keep every core busy, sharing one copy of the tables, with no process to start.
        with ThreadPoolExecutor(num_workers) as pool:
            arrays = pool.map(lambda piece: np.asarray(bpe._encode(piece, specials, kernels), dtype), pieces)
            return np.concatenate(list(tqdm(arrays, total=len(pieces), desc="Encoding", disable=not show)))
    # With the fork start method (Linux) the workers inherit bpe, warm cache and loaded kernels included.
    initargs = bpe, specials, dtype, kernels is not None
    with multiprocessing.Pool(num_workers, initializer=_init_worker, initargs=initargs) as pool:
        arrays = pool.imap(_encode_in_worker, pieces, chunksize=1)
        return np.concatenate(list(tqdm(arrays, total=len(pieces), desc="Encoding", disable=not show)))


_worker_state = None  # (bpe, specials, dtype, kernels), set once per worker by the pool's initializer, not per piece


def _init_worker(bpe, specials, dtype, compiled):
    global _worker_state
    _worker_state = bpe, specials, dtype, load_kernels() if compiled else None  # the parent's choice of path


def _encode_in_worker(piece):
    bpe, specials, dtype, kernels = _worker_state
    return np.asarray(bpe._encode(piece, specials, kernels), dtype=dtype)
