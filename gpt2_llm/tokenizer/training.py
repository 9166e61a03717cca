"""Learning the merges: from {pre-split chunk: count} to the list of merged pairs, most frequent first.

train_merges is the readable trainer and the reference: each distinct chunk counted once with its multiplicity, pair
counts kept up to date as merges happen, a heap to find the most frequent pair. The compiled trainer
(training_kernels.py, numba) learns exactly its merges, faster, and learn_merges takes it when it pays. The counts
come from bpe.count_chunks (the pre-split, counted), or from ChunkCounts, which counts big corpora with compiled code.

    >>> train_merges({"aaab": 1}, 2)
    [(97, 97), (97, 98)]

No torch, and nothing of bpe.py, which imports this module: ChunkCounts is handed bpe.py's pre-split.
"""
import heapq
import sys
from collections import defaultdict
from operator import methodcaller

import numpy as np
from tqdm import tqdm

from gpt2_llm.tokenizer.compiled import load_training_kernels

_utf8 = methodcaller("encode", "utf-8", "surrogatepass")


def recommended_vocab_size(chunk_counts):
    """A vocab size for a text with these chunk counts: 257 plus half the distinct chunks seen at least twice (a
    word seen once is not worth a token; half because merges also build the pieces of words), rounded up to a
    multiple of 64 so no embedding row is padding, and clamped to [512, 50257]."""
    repeated = sum(1 for count in chunk_counts.values() if count > 1)
    size = (257 + repeated // 2 + 63) // 64 * 64
    return min(max(size, 512), 50257)


def _apply_merge(words, counts, chunk_indices, pair, new_id, pair_counts, where):
    """Replace `pair` by `new_id` in the chunks that hold it, adjusting the counts of the neighbouring pairs in place
    instead of recounting whole chunks. Returns the pairs that involve new_id (all new, so they need a heap entry).

    words [[1, 2, 3]] with pair (1, 2) -> [[9, 3]]; pair_counts: (2, 3) -1, (9, 3) +1
    """
    a, b = pair
    new_pairs = set()
    for index in chunk_indices:
        word = words[index]
        if a not in word:  # `where` is lazy: the pair may have left this chunk already
            continue
        count, last = counts[index], len(word) - 1
        merged, i = [], 0
        while i <= last:
            if word[i] == a and i < last and word[i + 1] == b:
                if i:  # the left neighbour now pairs with the new token (or with the previous new token)
                    left = merged[-1]
                    pair_counts[word[i - 1], a] -= count
                    pair_counts[left, new_id] += count
                    new_pairs.add((left, new_id))
                    where[left, new_id].append(index)
                if i + 2 <= last and not (word[i + 2] == a and i + 3 <= last and word[i + 3] == b):
                    right = word[i + 2]  # (skipped when the next merge is adjacent: that one counts it as its left)
                    pair_counts[b, right] -= count
                    pair_counts[new_id, right] += count
                    new_pairs.add((new_id, right))
                    where[new_id, right].append(index)
                merged.append(new_id)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        words[index] = merged
    return new_pairs


def train_merges(chunk_counts, num_merges, verbose=True):
    """Learn up to num_merges merges from {chunk: count}. Each distinct chunk is a list of ids counted once with its
    multiplicity; pair counts live in a dict and a max-heap with lazy invalidation (stale entries are re-pushed with
    their true count when popped). Ties go to the lowest pair of ids, (first id, then second id), like HF tokenizers.

    train_merges({"aaab": 1}, 2) -> [(97, 97), (97, 98)]  (the tie (256, 97) vs (97, 98) goes to the lower)
    """
    words, counts = [], []
    for chunk, count in chunk_counts.items():
        data = chunk.encode("utf-8", "surrogatepass")
        if len(data) > 1:
            words.append(list(data))
            counts.append(count)
    pair_counts, where = defaultdict(int), defaultdict(list)
    for index, word in enumerate(words):
        count = counts[index]
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where[pair].append(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    heappush, heappop = heapq.heappush, heapq.heappop

    merges = []
    show = verbose and sys.stderr.isatty()
    with tqdm(total=num_merges, desc="BPE merges", unit="merge", disable=not show) as progress:
        while len(merges) < num_merges and heap:
            negative_count, pair = heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -negative_count:  # stale: the pair lost occurrences since this entry was pushed
                if count > 0:
                    heappush(heap, (-count, pair))
                continue
            new_id = 256 + len(merges)
            merges.append(pair)
            chunks = dict.fromkeys(where.pop(pair))  # each chunk once, in the order it was listed
            new_pairs = _apply_merge(words, counts, chunks, pair, new_id, pair_counts, where)
            del pair_counts[pair]
            for new_pair in new_pairs:
                heappush(heap, (-pair_counts[new_pair], new_pair))
            progress.update()
    return merges


# ---- the compiled trainer, when it pays ----
# The compiled training (training_kernels.py) learns train_merges' merges, in the same order, ~10x faster and in a
# fraction of the memory: flat arrays instead of a list of ints per chunk and dicts of tuples.
# tests/tokenizer/test_training.py proves the merges equal. Loading numba costs ~0.3 s, what Python spends training on a few
# thousand distinct chunks, so smaller trainings (tests, create_vocab on a short text) stay in Python, as do all where
# numba is not installed. It also counts chunks (ChunkCounts, below), for corpora big enough to pay numba's load:
# gpt2_llm/tokenizer/vocab.py decides.
_COMPILED_TRAINING_MIN_CHUNKS = 1 << 13
_PYTHON_TRAINING_CHUNKS_PER_SECOND = 16_000  # train_merges to a vocab of ~10k (the 5 MB Shakespeare: 36k chunks)


def _training_kernels_for(num_chunks):
    """The compiled training kernels when they pay for num_chunks distinct chunks (see above), else None: Python."""
    if num_chunks < _COMPILED_TRAINING_MIN_CHUNKS:
        return None
    return load_training_kernels(num_chunks / _PYTHON_TRAINING_CHUNKS_PER_SECOND)


def learn_merges(chunk_counts, num_merges, verbose=True):
    """train_merges' merges, by the compiled trainer when it pays (see above). chunk_counts: {chunk: count}, or a
    ChunkCounts (always compiled)."""
    if isinstance(chunk_counts, ChunkCounts):
        return chunk_counts.train_merges(num_merges)
    kernels = _training_kernels_for(len(chunk_counts))
    if kernels is None:
        return train_merges(chunk_counts, num_merges, verbose)
    return train_merges_compiled(chunk_counts, num_merges, kernels)


def train_merges_compiled(chunk_counts, num_merges, kernels):
    """train_merges' merges, learned by the compiled trainer `kernels` (gpt2_llm.tokenizer.training_kernels)."""
    return _merge_list(kernels.train_merges(*chunk_arrays(chunk_counts), num_merges))


def chunk_arrays(chunk_counts):
    """{chunk: count} as the flat arrays the compiled trainer takes: every chunk's UTF-8 bytes as int32 ids in one
    array, where each starts (and where the last ends), and the counts. {"ab": 2, "c": 1} -> [97 98 99], [0 2 3], [2 1]
    """
    data = "".join(chunk_counts).encode("utf-8", "surrogatepass")  # surrogatepass never pairs two chunks' surrogates
    starts = np.zeros(len(chunk_counts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, map(_utf8, chunk_counts)), np.int64, len(chunk_counts)), out=starts[1:])
    counts = np.fromiter(chunk_counts.values(), np.int64, len(chunk_counts))
    return np.frombuffer(data, np.uint8).astype(np.int32), starts, counts


def _merge_list(merges):
    """The compiled trainer's (M, 2) array of merges as train_merges' list of pairs."""
    return list(map(tuple, merges.tolist()))


def compiled_chunk_counts(utf8_with_regions, python_seconds=float("inf")):
    """An empty ChunkCounts where numba is installed, else None: count with bpe.count_chunks. utf8_with_regions:
    bpe._utf8_with_regions, the pre-split that ChunkCounts counts. python_seconds: how long the job would take in
    Python, for load_kernels to weigh against compiling the kernels on a machine's first run."""
    kernels = load_training_kernels(python_seconds)
    return kernels and ChunkCounts(kernels, utf8_with_regions)


class ChunkCounts:
    """bpe.count_chunks' counts, counted by compiled code (training_kernels.py) into flat arrays: several times
    faster, and ~40 bytes per distinct chunk plus its bytes instead of a Counter's ~150. For corpora too big to count
    in Python (gpt2_llm/tokenizer/vocab.py's learn_vocab); only where numba is installed (compiled_chunk_counts).
    Pickles as its arrays, so a worker process can send it back. create_vocab_from_counts takes it as it is.
    utf8_with_regions: bpe._utf8_with_regions, which gives a text's UTF-8 bytes with its `regex`-split stretches.

    counts = compiled_chunk_counts(bpe._utf8_with_regions); counts.add_text("the cat the")
    counts.to_dict() -> {"the": 1, " cat": 1, " the": 1}
    """

    def __init__(self, kernels, utf8_with_regions):
        self._kernels, self._table = kernels, kernels.new_chunk_table()
        self._utf8_with_regions = utf8_with_regions

    def __len__(self):
        return self._table[-1]

    def add_text(self, text):
        """Count text's pre-split chunks, like bpe.count_chunks(text, counts)."""
        self._table = self._kernels.count_utf8(self._table, *self._utf8_with_regions(text))

    def update(self, other):
        """Add the counts of another ChunkCounts, like Counter.update."""
        self._table = self._kernels.add_counts(self._table, *other._arrays())

    def values(self):
        """The counts, as an int64 array in the order of the chunks."""
        return self._arrays()[2]

    def select(self, keep):
        """A ChunkCounts of the chunks where the bool array keep (in the order of values()) is True."""
        data, starts, counts = self._arrays()
        lengths = np.diff(starts)
        kept = ChunkCounts(self._kernels, self._utf8_with_regions)
        kept_starts = np.concatenate([[0], np.cumsum(lengths[keep])])
        kept._table = self._kernels.add_counts(kept._table, data[np.repeat(keep, lengths)], kept_starts, counts[keep])
        return kept

    def to_dict(self):
        """{chunk: count}, what bpe.count_chunks would have counted."""
        data, starts, counts = self._arrays()
        data = data.tobytes()
        return {data[start:end].decode("utf-8", "surrogatepass"): int(count)
                for start, end, count in zip(starts.tolist(), starts[1:].tolist(), counts.tolist())}

    def train_merges(self, num_merges):
        """train_merges' merges on these counts, by the compiled trainer."""
        data, starts, counts = self._arrays()
        return _merge_list(self._kernels.train_merges(data.astype(np.int32), starts, counts, num_merges))

    def _arrays(self):
        """The chunks' bytes joined (uint8), where each starts and the last ends, and the counts: views, no copy."""
        slots, starts, counts, data, num_chunks = self._table
        return data[: starts[num_chunks]], starts[: num_chunks + 1], counts[:num_chunks]

    def __getstate__(self):
        data, starts, counts = self._arrays()
        table = self._table[0], starts, counts, data, len(self)  # the arrays without their spare room
        return table, self._utf8_with_regions  # a function pickles as its name

    def __setstate__(self, state):
        (self._table, self._utf8_with_regions), self._kernels = state, load_training_kernels()

