"""Compiled kernels for bpe.py's fast encode path: the same pre-split, whole-token lookup and merges as its plain
Python code, on the UTF-8 bytes of the text, compiled with numba. compiled.py imports this module lazily, only for
texts big enough to pay numba's import; test_bpe proves both paths give the same ids.

    >>> tables = build_tables(byte_table, token_bytes, token_starts, lefts, rights)
    >>> encode_utf8(np.frombuffer(b"hello world", np.uint8), NO_REGIONS, NO_REGION_ENDS, *tables)
    array([31373, 995], dtype=int32)  # with GPT-2's vocab

The text's ASCII stretches are pre-split here by a hand-written scanner for GPT-2's pattern (ascii_chunk_end); the
stretches around non-ASCII characters come pre-split by bpe.py's `regex` path, as chunk ends in `regions`. Each chunk
is then what bpe._ChunkCache makes of it: a token if its bytes are one (a hash table of token bytes -> id), else the
merges by rank (merge_by_rank_fast's loop, with a hash table of pair -> merged id), remembered in a per-call chunk
cache so a repeated chunk is merged once.

Leaf module: numpy and numba only (no torch, nothing from gpt2_llm). The compiled code is cached on disk, so only the
first run on a machine pays the compile (~5 s; compiled.py decides when, and says so): in __pycache__ beside this file,
else (a read-only install) in numba's user cache folder, else in the temp folder; NUMBA_CACHE_DIR overrides all three
(compiled.kernel_cache_folder finds the same folder without numba). `nogil=True` lets threads encode in parallel.
"""
import os
import tempfile

import numpy as np
from numba import config, njit


def _probe():
    return 0


try:
    njit(cache=True)(_probe)  # numba finds a writable cache folder: beside this file, or the user's cache folder
except RuntimeError:  # "cannot cache function ...: no locator available": neither is writable
    config.CACHE_DIR = os.path.join(tempfile.gettempdir(), f"gpt2_llm_numba_cache_{getattr(os, 'getuid', str)()}")

# Byte classes of GPT-2's pattern on ASCII (bpe._ASCII_PATTERN): \p{L} is [A-Za-z], \p{N} is [0-9], \s is
# [\t\n\v\f\r ]. Bytes >= 128 never reach the scanner (their stretches come pre-split in `regions`).
LETTER, DIGIT, SPACE, OTHER = 0, 1, 2, 3
BYTE_CLASS = np.full(256, OTHER, np.uint8)
BYTE_CLASS[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")] = LETTER
BYTE_CLASS[list(b"0123456789")] = DIGIT
BYTE_CLASS[list(b"\t\n\x0b\x0c\r ")] = SPACE

NEVER = np.int32(2**31 - 1)  # the rank of a pair that is not a merge: above every real rank
_EMPTY = -1
_CACHE_MAX_SLOTS = 1 << 17  # the per-call chunk cache's cap: 5 MB of arrays; English has ~40k distinct chunks in 5 MB
NO_REGIONS = np.zeros((0, 2), np.int64)  # for pure-ASCII text
NO_REGION_ENDS = np.zeros(0, np.int64)


@njit(cache=True, nogil=True)
def ascii_chunk_end(data, i, stop):
    """End of the pre-split chunk that starts at data[i], in the ASCII stretch data[:stop] (stop acts as the end of
    the text, as `findall(text, pos, endpos)` does). The alternatives of the pattern, in its order:
    b"we'll go" -> "we" | "'ll" | " go";  b"a  \\nb" -> "a" | "  " | "\\n" | "b" """
    c = data[i]
    if c == 39 and i + 1 < stop:  # '(?:[sdmt]|ll|ve|re)
        d = data[i + 1]
        if d == 115 or d == 100 or d == 109 or d == 116:  # s d m t
            return i + 2
        if i + 2 < stop:
            e = data[i + 2]
            if (d == 108 and e == 108) or (d == 118 and e == 101) or (d == 114 and e == 101):  # ll ve re
                return i + 3
    kind = BYTE_CLASS[c]
    if kind == SPACE:
        if c == 32 and i + 1 < stop and BYTE_CLASS[data[i + 1]] != SPACE:
            kind = BYTE_CLASS[data[i + 1]]  # ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a space and a run
            i += 1
        else:
            j = i + 1
            while j < stop and BYTE_CLASS[data[j]] == SPACE:
                j += 1
            if j < stop and j - i >= 2:
                return j - 1  # `\s+(?!\S)`: the run's last space goes with the word after it
            return j  # the run up to the end, or `\s+` on one space char before a non-space
    j = i + 1
    while j < stop and BYTE_CLASS[data[j]] == kind:
        j += 1
    return j


@njit(cache=True, nogil=True)
def _hash_bytes(data, start, end):
    """FNV-1a over data[start:end] (int64 arithmetic wraps), its high bits folded down for masking."""
    h = -3750763034362895579  # FNV offset basis 14695981039346656037 as int64
    for i in range(start, end):
        h = (h ^ data[i]) * 1099511628211
    return h ^ (h >> 29)


@njit(cache=True, nogil=True)
def _hash_pair(a, b):
    """A hash of the pair (a, b) of ids < 2**31, for masking: Fibonacci hashing of the two ids packed into one int."""
    h = ((a << 32) | b) * -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
    return h >> 32


def _table_size(num_keys):
    """A power of two at least twice num_keys: open addressing stays under half full, so probe runs stay short."""
    size = 64
    while size < 2 * num_keys:
        size *= 2
    return size


@njit(cache=True)
def _fill_token_table(slots, token_bytes, token_starts):
    mask = len(slots) - 1
    for token in range(len(token_starts) - 1):
        start, end = token_starts[token], token_starts[token + 1]
        slot = _hash_bytes(token_bytes, start, end) & mask
        while slots[slot] != _EMPTY:
            other = slots[slot]
            if _same_bytes(token_bytes, token_starts[other], token_starts[other + 1], token_bytes, start, end):
                break  # two tokens with the same bytes: the later id wins, as in bpe.py's {bytes: id} dict
            slot = (slot + 1) & mask
        slots[slot] = token


@njit(cache=True)
def _fill_pair_table(keys, ranks, lefts, rights):
    mask = len(keys) - 1
    for k in range(len(lefts)):
        a, b = np.int64(lefts[k]), np.int64(rights[k])
        slot = _hash_pair(a, b) & mask
        while keys[slot] != _EMPTY:
            slot = (slot + 1) & mask
        keys[slot] = (a << 32) | b
        ranks[slot] = 256 + k  # merge k makes id 256 + k, and its rank is its id


def build_tables(byte_table, token_bytes, token_starts, lefts, rights):
    """The lookup tables of one vocab, as the tuple encode_utf8 takes after its first three arguments.

    byte_table: uint8 (256,), byte -> its id (bpe.py's byte_table); token_bytes, token_starts: the regular tokens'
    bytes joined and where each starts (token t is token_bytes[token_starts[t]:token_starts[t + 1]]); lefts, rights:
    merge k's pair (it makes id 256 + k).
    """
    token_slots = np.full(_table_size(len(token_starts) - 1), _EMPTY, np.int32)
    _fill_token_table(token_slots, token_bytes, token_starts)
    pair_keys = np.full(_table_size(len(lefts)), _EMPTY, np.int64)
    pair_ranks = np.full(len(pair_keys), NEVER, np.int32)
    _fill_pair_table(pair_keys, pair_ranks, lefts, rights)
    return np.asarray(byte_table, np.int32), token_bytes, token_starts, token_slots, pair_keys, pair_ranks


@njit(cache=True, nogil=True)
def _same_bytes(a, a_start, a_end, b, b_start, b_end):
    if a_end - a_start != b_end - b_start:
        return False
    for k in range(a_end - a_start):
        if a[a_start + k] != b[b_start + k]:
            return False
    return True


@njit(cache=True, nogil=True)
def _pair_rank(pair_keys, pair_ranks, a, b):
    mask = len(pair_keys) - 1
    key = (np.int64(a) << 32) | b
    slot = _hash_pair(np.int64(a), np.int64(b)) & mask
    while True:
        found = pair_keys[slot]
        if found == key:
            return pair_ranks[slot]
        if found == _EMPTY:
            return NEVER
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def merge_in_place(ids, start, end, ranks, pair_keys, pair_ranks):
    """merge_by_rank_fast on ids[start:end] in place: merge the leftmost lowest-ranked pair, look up only the two pairs
    beside it, repeat. Returns the new end. ranks is scratch space of at least end - start entries."""
    n = end - start
    for k in range(n - 1):
        ranks[k] = _pair_rank(pair_keys, pair_ranks, ids[start + k], ids[start + k + 1])
    ranks[n - 1] = NEVER
    while n > 1:
        best, i = NEVER, 0
        for k in range(n - 1):
            if ranks[k] < best:
                best, i = ranks[k], k
        if best == NEVER:
            break
        ids[start + i] = best
        for k in range(i + 1, n - 1):  # del ids[i + 1], ranks[i]
            ids[start + k] = ids[start + k + 1]
            ranks[k - 1] = ranks[k]
        n -= 1
        ranks[n - 1] = NEVER  # "no pair after the last id"
        if i:
            ranks[i - 1] = _pair_rank(pair_keys, pair_ranks, ids[start + i - 1], best)
        if i + 1 < n:
            ranks[i] = _pair_rank(pair_keys, pair_ranks, best, ids[start + i + 1])
    return start + n


@njit(cache=True, nogil=True)
def encode_utf8(data, regions, region_ends, byte_table, token_bytes, token_starts, token_slots, pair_keys, pair_ranks):
    """Token ids (int32) of the UTF-8 bytes data. regions (R, 2): the byte spans that come pre-split, in order;
    region_ends: the end of each of their chunks, all regions' in a row. Everything else is ASCII, split here."""
    out = np.empty(len(data), np.int32)  # a chunk never has more ids than bytes
    num_out = 0
    ranks = np.empty(256, np.int32)
    token_mask = len(token_slots) - 1
    # The chunk cache: a chunk seen before (a span of data) -> the span of `out` that holds its ids.
    cache_size = 64
    while cache_size < min(len(data) // 8, _CACHE_MAX_SLOTS):
        cache_size *= 2
    cache_mask, cache_used = cache_size - 1, 0
    cache_hash = np.empty(cache_size, np.int64)
    cache_start = np.full(cache_size, _EMPTY, np.int64)  # where the chunk's bytes are in data
    cache_end = np.empty(cache_size, np.int64)
    cache_out = np.empty(cache_size, np.int64)  # where its ids are in out, and how many
    cache_count = np.empty(cache_size, np.int64)

    pos, next_region, next_end = 0, 0, 0
    while pos < len(data):
        if next_region < len(regions) and pos >= regions[next_region, 0]:  # inside a pre-split region
            end = region_ends[next_end]
            next_end += 1
            if end >= regions[next_region, 1]:
                next_region += 1
        else:
            stop = regions[next_region, 0] if next_region < len(regions) else len(data)
            end = ascii_chunk_end(data, pos, stop)
        h = _hash_bytes(data, pos, end)

        # 1. a chunk that is itself a token is that token
        slot, token = h & token_mask, _EMPTY
        while token_slots[slot] != _EMPTY:
            candidate = token_slots[slot]
            if _same_bytes(token_bytes, token_starts[candidate], token_starts[candidate + 1], data, pos, end):
                token = candidate
                break
            slot = (slot + 1) & token_mask
        if token != _EMPTY:
            out[num_out] = token
            num_out += 1
            pos = end
            continue

        # 2. a chunk merged before: copy its ids
        slot, found = h & cache_mask, False
        while cache_start[slot] != _EMPTY:
            if cache_hash[slot] == h and _same_bytes(data, cache_start[slot], cache_end[slot], data, pos, end):
                first = cache_out[slot]
                for k in range(cache_count[slot]):
                    out[num_out + k] = out[first + k]
                num_out += cache_count[slot]
                found = True
                break
            slot = (slot + 1) & cache_mask
        if found:
            pos = end
            continue

        # 3. merge it (slot is now the free cache slot where it goes)
        if end - pos > len(ranks):
            ranks = np.empty(2 * (end - pos), np.int32)
        for k in range(end - pos):
            out[num_out + k] = byte_table[data[pos + k]]
        new_end = merge_in_place(out, num_out, num_out + end - pos, ranks, pair_keys, pair_ranks)
        if 2 * cache_used < cache_size:  # full (half the slots): merge from here on without remembering
            cache_hash[slot], cache_start[slot], cache_end[slot] = h, pos, end
            cache_out[slot], cache_count[slot] = num_out, new_end - num_out
            cache_used += 1
        num_out = new_end
        pos = end
    return out[:num_out].copy()  # not a view: that would keep all of `out` alive
