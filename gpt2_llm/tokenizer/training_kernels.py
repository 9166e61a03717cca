"""Compiled BPE training: training.py's, the same results, on flat arrays and compiled with numba. Two parts:
  - counting: count_utf8 counts a text's pre-split chunks into a hash table of byte strings, as bpe.count_chunks does
    into a Counter (training.ChunkCounts wraps it; gpt2_llm/tokenizer/vocab.py counts big corpora with it);
  - merging: train_merges learns the merges of training.train_merges, in the same order.
training.py runs them for big trainings only (see its _training_kernels_for); tests/tokenizer/test_training.py proves both
equal the Python reference, which stays the readable one.

    >>> ids, starts, counts = np.array([97, 97, 97, 98], np.int32), np.array([0, 4]), np.array([1])  # {"aaab": 1}
    >>> train_merges(ids, starts, counts, 2)
    array([[97, 97], [97, 98]], dtype=int32)

train_merges' algorithm is training.train_merges' own, with each Python structure replaced by a flat one:
  - the words: every distinct chunk's ids in one int32 array (word w is ids[starts[w]:starts[w] + lengths[w]]),
    merged in place, so a word only shrinks;
  - the pair counts: an open-addressing hash table, pair (a, b) -> count, key a << 32 | b, so comparing keys
    compares pairs the way train_merges' tuples do (first id, then second id);
  - `where`, pair -> the words that hold it: a linked list per pair, its entries (word, next entry) in one growing
    pool, its head in the pair's table slot; a merged pair's entries are reused for the pairs its merge makes. Lazy
    as in train_merges: a word stays listed after it lost the pair. A word is not listed twice in a row for the same
    pair, which is the only way it could repeat (a word's pairs are all noted while that word is being processed);
  - the heap: a binary max-heap of (count, key) with the same lazy invalidation, ties to the lowest key.
Growing arrays double, so the memory follows the number of distinct chunks and pairs, not the corpus.

Leaf module: numpy and numba only, plus gpt2_llm.tokenizer.kernels (also a leaf) for its hashes, its ASCII pre-split and
its choice of where numba caches compiled code on disk, so only the first run on a machine compiles (~20 s of one
core, counting and merging apart; compiled.py decides when, and says so).
"""
import numpy as np
from numba import njit

from gpt2_llm.tokenizer.kernels import _hash_bytes, _hash_pair, _same_bytes, ascii_chunk_end

_EMPTY = -1
_LOW_32_BITS = (1 << 32) - 1


@njit(cache=True)
def _grown(array, needed):
    """array (1-D or rows) with room for at least `needed` entries: itself, or a copy twice as big."""
    if len(array) >= needed:
        return array
    bigger = np.empty((max(needed, 2 * len(array)),) + array.shape[1:], array.dtype)
    _copy_into(bigger.reshape(-1), array.reshape(-1), 0)
    return bigger


@njit(cache=True)
def _copy_into(target, source, at):
    """target[at:at + len(source)] = source, as a loop: numba compiles a slice assignment with its shape-mismatch
    error message, which takes seconds of each kernel's first-run compile."""
    for i in range(len(source)):
        target[at + i] = source[i]


# ---- counting: {chunk: count} of a text, in a hash table of byte strings ----
# bpe.count_chunks' counts, without a Python string per chunk: the pre-split of kernels.encode_utf8 (its ASCII
# scanner, and the chunk ends that bpe.py's `regex` gives for the stretches around non-ASCII characters), each chunk
# counted by its bytes. The table is a tuple (slots, starts, counts, data, num_chunks): chunk e is
# data[starts[e]:starts[e + 1]], seen counts[e] times; slots, open addressing at most half full, hold each entry with
# the high bits of its hash as a tag (tag << 32 | e), so a probe rarely reads a chunk's bytes but its own.
# The counting loop (add_counts; count_utf8 finds the chunks, then adds them) stops when the table is full and starts
# again once it has grown, rather than grow it in the loop: numba makes a loop that reassigns arrays 2-3x slower.

_TAG_SHIFT = 33  # a chunk's tag: its hash's top 31 bits; its slot comes from the low bits


def new_chunk_table():
    """An empty table of chunk counts."""
    return (np.full(1 << 10, _EMPTY, np.int64), np.zeros((1 << 9) + 1, np.int64), np.zeros(1 << 9, np.int64),
            np.empty(1 << 12, np.uint8), 0)


@njit(cache=True)
def _chunk_slot(slots, starts, data, source, start, end, h):
    """The slot of the chunk source[start:end] (hash h): where its entry is, or the empty slot where it would go."""
    mask, tag = len(slots) - 1, (h >> _TAG_SHIFT) & _LOW_32_BITS
    slot = h & mask
    while slots[slot] != _EMPTY:
        e = slots[slot] & _LOW_32_BITS
        if slots[slot] >> 32 == tag and _same_bytes(data, starts[e], starts[e + 1], source, start, end):
            return slot
        slot = (slot + 1) & mask
    return slot


@njit(cache=True)
def _new_chunk(slots, starts, counts, data, num_chunks, slot, source, start, end, h, count):
    """Add the chunk source[start:end] (hash h, not in the table, its free slot `slot`), seen count times. Returns
    False, doing nothing, when the table has no room for it. (Apart from the lookup, which is inlined into the loops:
    called for every chunk, this function would make them 3x slower.)"""
    at = starts[num_chunks]
    if 2 * (num_chunks + 1) > len(slots) or num_chunks + 1 > len(counts) or at + end - start > len(data):
        return False
    slots[slot], counts[num_chunks] = (((h >> _TAG_SHIFT) & _LOW_32_BITS) << 32) | num_chunks, count
    _copy_into(data, source[start:end], at)
    starts[num_chunks + 1] = at + end - start
    return True


@njit(cache=True)
def _grown_chunk_table(slots, starts, counts, data, num_chunks, more_bytes):
    """The table with room for one more chunk of more_bytes bytes: each array that is short, twice as big."""
    if 2 * (num_chunks + 1) > len(slots):
        slots, mask = np.full(2 * len(slots), _EMPTY, np.int64), 2 * len(slots) - 1
        for e in range(num_chunks):  # rehash: the hashes are not kept, the bytes are
            h = _hash_bytes(data, starts[e], starts[e + 1])
            slot = h & mask
            while slots[slot] != _EMPTY:
                slot = (slot + 1) & mask
            slots[slot] = (((h >> _TAG_SHIFT) & _LOW_32_BITS) << 32) | e
    counts = _grown(counts, num_chunks + 1)
    starts = _grown(starts, len(counts) + 1)  # one more than the chunks: where the last one ends
    data = _grown(data, starts[num_chunks] + more_bytes)
    return slots, starts, counts, data, num_chunks


@njit(cache=True)
def _chunk_bounds(text, regions, region_ends):
    """Where each pre-split chunk of text starts, then where the last one ends: encode_utf8's pre-split."""
    bounds = np.empty(len(text) + 1, np.int64)
    bounds[0], num_chunks = 0, 0
    pos, next_region, next_end = 0, 0, 0
    while pos < len(text):
        if next_region < len(regions) and pos >= regions[next_region, 0]:  # inside a pre-split region
            pos = region_ends[next_end]
            next_end += 1
            if pos >= regions[next_region, 1]:
                next_region += 1
        else:
            pos = ascii_chunk_end(text, pos, regions[next_region, 0] if next_region < len(regions) else len(text))
        num_chunks += 1
        bounds[num_chunks] = pos
    return bounds[: num_chunks + 1]


@njit(cache=True)
def count_utf8(table, text, regions, region_ends):
    """Count the pre-split chunks of the UTF-8 bytes `text` into table (regions, region_ends: as encode_utf8 takes
    them); returns the table. count_utf8(new_chunk_table(), b"the cat the", ...) -> {"the": 1, " cat": 1, " the": 1}"""
    bounds = _chunk_bounds(text, regions, region_ends)
    return add_counts(table, text, bounds, np.ones(len(bounds) - 1, np.int64))


@njit(cache=True)
def _count_entries(slots, starts, counts, data, num_chunks, chunks, chunk_starts, chunk_counts, at):
    """add_counts' loop, from entry at[0] until the entries end or the table is full; returns the number of chunks,
    and at[0] where it stopped."""
    e = at[0]
    while e < len(chunk_counts):
        start, end = chunk_starts[e], chunk_starts[e + 1]
        h = _hash_bytes(chunks, start, end)
        slot = _chunk_slot(slots, starts, data, chunks, start, end, h)
        if slots[slot] != _EMPTY:
            counts[slots[slot] & _LOW_32_BITS] += chunk_counts[e]
        elif _new_chunk(slots, starts, counts, data, num_chunks, slot, chunks, start, end, h, chunk_counts[e]):
            num_chunks += 1
        else:
            break
        e += 1
    at[0] = e
    return num_chunks


@njit(cache=True)
def add_counts(table, chunks, chunk_starts, chunk_counts):
    """Add the counts of chunks[chunk_starts[e]:chunk_starts[e + 1]] (chunk_counts[e] each) to table; returns it."""
    slots, starts, counts, data, num_chunks = table
    at = np.zeros(1, np.int64)
    while True:
        num_chunks = _count_entries(slots, starts, counts, data, num_chunks, chunks, chunk_starts, chunk_counts, at)
        if at[0] >= len(chunk_counts):
            return slots, starts, counts, data, num_chunks
        slots, starts, counts, data, num_chunks = _grown_chunk_table(
            slots, starts, counts, data, num_chunks, chunk_starts[at[0] + 1] - chunk_starts[at[0]])


# ---- merging: train_merges ----

@njit(cache=True)
def _slot(keys, a, b):
    """The slot of pair (a, b) in the table: where its key is, or the empty slot where it would go."""
    mask = len(keys) - 1
    key = (np.int64(a) << 32) | b
    slot = _hash_pair(np.int64(a), np.int64(b)) & mask
    while keys[slot] != key and keys[slot] != _EMPTY:
        slot = (slot + 1) & mask
    return slot


@njit(cache=True)
def _grown_table(keys, pair_counts, heads, marks):
    """The pair table at twice the size, every pair rehashed into it."""
    new_keys = np.full(2 * len(keys), _EMPTY, np.int64)
    new_counts = np.zeros(2 * len(keys), np.int64)
    new_heads = np.full(2 * len(keys), _EMPTY, np.int32)
    new_marks = np.full(2 * len(keys), _EMPTY, np.int32)
    for old in range(len(keys)):
        key = keys[old]
        if key != _EMPTY:
            slot = _slot(new_keys, key >> 32, key & _LOW_32_BITS)
            new_keys[slot], new_counts[slot] = key, pair_counts[old]
            new_heads[slot], new_marks[slot] = heads[old], marks[old]
    return new_keys, new_counts, new_heads, new_marks


@njit(cache=True)
def _before(heap, i, j):
    """Whether heap entry i pops before entry j: a higher count, or the same count and a lower pair."""
    return heap[i, 0] > heap[j, 0] or (heap[i, 0] == heap[j, 0] and heap[i, 1] < heap[j, 1])


@njit(cache=True)
def _swap(heap, i, j):
    heap[i, 0], heap[i, 1], heap[j, 0], heap[j, 1] = heap[j, 0], heap[j, 1], heap[i, 0], heap[i, 1]


@njit(cache=True)
def _sift_down(heap, size, i):
    while True:
        first, child = i, 2 * i + 1
        if child < size and _before(heap, child, first):
            first = child
        if child + 1 < size and _before(heap, child + 1, first):
            first = child + 1
        if first == i:
            return
        _swap(heap, i, first)
        i = first


@njit(cache=True)
def _heap_push(heap, size, count, key):
    """Push (count, key) onto the heap of `size` entries; returns the heap (grown if it was full)."""
    heap = _grown(heap, size + 1)
    heap[size, 0], heap[size, 1] = count, key
    i = size
    while i and _before(heap, i, (i - 1) // 2):
        parent = (i - 1) // 2
        _swap(heap, i, parent)
        i = parent
    return heap


@njit(cache=True)
def _note_where(pool, pool_top, heads, slot, word):
    """List word under the pair in slot, unless it was the last word listed there. The entry comes from the free list
    if it has one, else from the end of the pool (pool_top: [entries used, first free entry]), which must have room."""
    head = heads[slot]
    if head != _EMPTY and pool[head, 0] == word:
        return
    entry = pool_top[1]
    if entry != _EMPTY:
        pool_top[1] = pool[entry, 1]
    else:
        entry = pool_top[0]
        pool_top[0] += 1
    pool[entry, 0], pool[entry, 1] = word, head
    heads[slot] = entry


@njit(cache=True)
def _add_new_pair(keys, pair_counts, heads, marks, used, new_keys, num_new, pool, pool_top, a, b, word, count, merge):
    """A merge made pair (a, b) in word, seen count times: add the count, note the pair among this merge's new pairs
    (once) and the word in its `where` list. The arrays must have room. Returns the new used and num_new."""
    slot = _slot(keys, a, b)
    if keys[slot] == _EMPTY:
        keys[slot] = (np.int64(a) << 32) | b
        used += 1
    pair_counts[slot] += count
    if marks[slot] != merge:
        marks[slot] = merge
        new_keys[num_new] = keys[slot]
        num_new += 1
    _note_where(pool, pool_top, heads, slot, word)
    return used, num_new


@njit(cache=True)
def train_merges(ids, starts, counts, num_merges):
    """Up to num_merges merges, as an (M, 2) int32 array of pairs, learned from the words ids[starts[w]:starts[w + 1]]
    (int32 byte ids, one word per distinct chunk) seen counts[w] times each. ids is merged in place (pass a copy to
    keep it). The same merges as training.train_merges on the same chunks, see the module docstring."""
    num_words = len(starts) - 1
    lengths = np.empty(num_words, np.int64)
    size = 1 << 10
    while size < 2 * min(len(ids), 1 << 16):  # byte pairs: at most 65536 distinct
        size *= 2
    keys = np.full(size, _EMPTY, np.int64)
    pair_counts = np.zeros(size, np.int64)
    heads = np.full(size, _EMPTY, np.int32)  # where: the first pool entry of each pair's list of words
    marks = np.full(size, _EMPTY, np.int32)  # the last merge that listed this pair as new (train_merges' new_pairs)
    used = 0
    # where's entries, (word, next entry of the same pair's list); those of merged pairs are reused, from a free list
    pool = np.empty((max(len(ids) - num_words, 16), 2), np.int32)
    pool_top = np.array([0, _EMPTY], np.int64)  # entries used, first free entry

    for w in range(num_words):
        start, end = starts[w], starts[w + 1]
        lengths[w] = end - start
        if 2 * (used + end - start) > len(keys):
            keys, pair_counts, heads, marks = _grown_table(keys, pair_counts, heads, marks)
        pool = _grown(pool, pool_top[0] + end - start)
        for p in range(start, end - 1):
            slot = _slot(keys, ids[p], ids[p + 1])
            if keys[slot] == _EMPTY:
                keys[slot] = (np.int64(ids[p]) << 32) | ids[p + 1]
                used += 1
            pair_counts[slot] += counts[w]
            _note_where(pool, pool_top, heads, slot, w)

    heap = np.empty((max(used, 16), 2), np.int64)
    heap_size = 0
    for slot in range(len(keys)):
        if keys[slot] != _EMPTY:
            heap[heap_size, 0], heap[heap_size, 1] = pair_counts[slot], keys[slot]
            heap_size += 1
    for i in range(heap_size // 2 - 1, -1, -1):
        _sift_down(heap, heap_size, i)

    merges = np.empty((num_merges, 2), np.int32)
    num_done = 0
    new_keys = np.empty(64, np.int64)  # the pairs this merge made, each once, to push when it is done
    while num_done < num_merges and heap_size:
        count, key = heap[0, 0], heap[0, 1]
        heap_size -= 1
        heap[0, 0], heap[0, 1] = heap[heap_size, 0], heap[heap_size, 1]
        _sift_down(heap, heap_size, 0)
        a, b = key >> 32, key & _LOW_32_BITS
        slot = _slot(keys, a, b)
        current = pair_counts[slot] if keys[slot] == key else 0
        if current != count:  # stale: the pair lost occurrences since this entry was pushed
            if current > 0:
                heap = _heap_push(heap, heap_size, current, key)
                heap_size += 1
            continue
        new_id = 256 + num_done
        merges[num_done, 0], merges[num_done, 1] = a, b
        entry, heads[slot] = heads[slot], _EMPTY
        num_new = 0
        while entry != _EMPTY:
            w, next_entry = pool[entry, 0], pool[entry, 1]
            pool[entry, 1], pool_top[1] = pool_top[1], entry  # read: free for the lists of the pairs made now
            entry = next_entry
            start, last = starts[w], lengths[w] - 1
            # room for this word's new pairs: each merge in it makes at most two
            if 2 * (used + last + 1) > len(keys):
                keys, pair_counts, heads, marks = _grown_table(keys, pair_counts, heads, marks)
            pool = _grown(pool, pool_top[0] + last + 1)
            new_keys = _grown(new_keys, num_new + last + 1)
            word_count, i, out = counts[w], 0, 0  # ids[start + out] is where the merged word is written
            while i <= last:
                if ids[start + i] == a and i < last and ids[start + i + 1] == b:
                    if i:  # the left neighbour now pairs with the new token (or with the previous new token)
                        pair_counts[_slot(keys, ids[start + i - 1], a)] -= word_count
                        used, num_new = _add_new_pair(
                            keys, pair_counts, heads, marks, used, new_keys, num_new, pool, pool_top,
                            ids[start + out - 1], new_id, w, word_count, num_done)
                    if i + 2 <= last and not (ids[start + i + 2] == a and i + 3 <= last and ids[start + i + 3] == b):
                        right = ids[start + i + 2]  # (skipped when the next merge is adjacent: it counts this pair)
                        pair_counts[_slot(keys, b, right)] -= word_count
                        used, num_new = _add_new_pair(
                            keys, pair_counts, heads, marks, used, new_keys, num_new, pool, pool_top,
                            new_id, right, w, word_count, num_done)
                    ids[start + out] = new_id
                    i += 2
                else:
                    ids[start + out] = ids[start + i]
                    i += 1
                out += 1
            lengths[w] = out
        pair_counts[_slot(keys, a, b)] = 0  # train_merges deletes it; no word holds it any more
        for k in range(num_new):
            new_key = new_keys[k]
            heap = _heap_push(heap, heap_size, pair_counts[_slot(keys, new_key >> 32, new_key & _LOW_32_BITS)], new_key)
            heap_size += 1
        num_done += 1
    return merges[:num_done].copy()
