"""Byte-level BPE tokenizer, exactly as GPT-2 does it: trainable, savable, and loadable from OpenAI's files.

Text is first pre-split with GPT-2's regex into chunks (a word with its leading space, a number, a punctuation run,
whitespace). Each chunk's UTF-8 bytes start as the 256 byte tokens, then adjacent pairs are merged in the order the
merges were learned (a merge's rank is its place in that order; here a merged token's id grows with its rank, so the
lowest rank is the lowest id). Merges never cross chunk boundaries, so a chunk always encodes the same way, which is
what makes caching chunk -> ids and splitting big files across processes exact.

    >>> bpe = BPE(); bpe.set_vocab_size(300); bpe.create_vocab(text, verbose=False)
    >>> bpe.decode(bpe.encode("hello world")) == "hello world"
    True

This file is that idea, top to bottom, split the way minbpe splits its tokenizer: the pre-split (with its hand-off to
the compiled encoder), encoding a chunk by merge rank, the pre-split counted (what training learns from), decoding,
the vocab file, and the class BPE that ties them. The rest is in gpt2_llm/tokenizer/, one job a module:
  training.py      learning the merges from chunk counts (train_merges, the reference, or a compiled trainer);
  compiled.py      when the compiled kernels load, and how they compile on a machine's first run: kernels.py encodes,
                   training_kernels.py counts and trains, with numba, exactly as the Python here and in training.py,
                   which stays the reference and the path taken where numba is not installed;
  parallel.py      BPE.encode_file: a big file cut where cutting changes nothing, encoded on every core;
  openai_files.py  BPE.from_gpt2: OpenAI's encoder.json and vocab.bpe.

This module must not import torch: the CLI's tokenizer commands should start fast. Of the package it imports
gpt2_llm.errors, gpt2_llm.files and the four modules above, none of which imports it back.
"""
import codecs
import hashlib
import os
import re
from collections import Counter
from itertools import accumulate, chain, repeat
from operator import methodcaller

import numpy as np
import regex

from gpt2_llm.errors import UserError
from gpt2_llm.files import atomic_write, read_text_file
from gpt2_llm.tokenizer.compiled import _kernels_for
from gpt2_llm.tokenizer.openai_files import read_gpt2_files
from gpt2_llm.tokenizer.parallel import encode_file_in_parallel
from gpt2_llm.tokenizer.training import learn_merges, recommended_vocab_size

EOT = "<|endoftext|>"  # the special token every vocab has; others (a chat's roles) may follow it
_SPECIAL_NAME = re.compile(r"<\|[A-Za-z0-9_.:-]{1,64}\|>")  # how a special token is spelled: <|user|>


# ---- the pre-split ----

# GPT-2's pre-split pattern, as tiktoken spells it: the contractions 's 't 're 've 'm 'll 'd (lowercase only), letter
# runs, digit runs and other-symbol runs each with one optional leading space, then whitespace. `\s+(?!\S)` leaves the
# last space of a run to start the next word, so " hello" keeps its space.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PATTERN = regex.compile(GPT2_PATTERN)

# The same pattern for pure-ASCII text, for the standard `re` module, which runs it about twice as fast. On ASCII the
# `regex` module's \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [\t\n\v\f\r ] (test_bpe checks both claims).
_WS = r"\t\n\x0b\x0c\r "
_ASCII_PATTERN = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)


def split_plain(text):
    """GPT-2's pre-split, the plain way: the `regex` pattern over the whole text. "Hi, you" -> ["Hi", ",", " you"]"""
    return _PATTERN.findall(text)


# Text that is mostly ASCII (source code, English with a few curly quotes) takes the fast `re` pattern for its ASCII
# stretches and `regex` only around its non-ASCII characters. A stretch ends at a word start: between a non-space and
# a space, the pre-split always ends a chunk (no alternative matches a non-space followed by a space; only " ?" starts
# a chunk with a space, and the pattern never looks behind), and each side splits alone as it does inside the text
# (a space run that touched the cut would need a non-space after it; there is none). Non-ASCII characters less than
# 256 apart share one stretch, so a stretch is not one word here and one there; and text whose UTF-8 has more than
# one extra byte per 64 characters (a few percent non-ASCII) skips all this: `regex` throughout is then as fast.
_NON_ASCII_STRETCH = regex.compile(r"[^\x00-\x7f][^\x00-\x7f]*+(?:[\x00-\x7f]{1,255}+[^\x00-\x7f]++)*+")
_WORD_START = regex.compile(r"\S\s")  # a cut goes between the two characters
_LAST_WORD_START = regex.compile(r"(?r)\S\s")  # the same, searched backwards from the end


def _split(text):
    """GPT-2's pre-split, as split_plain gives it, faster: `re` on ASCII text and on the ASCII stretches of mostly
    ASCII text (see above). _split("Hello, wörld!") -> ["Hello", ",", " wörld", "!"]"""
    if text.isascii():
        return _ASCII_PATTERN.findall(text)
    if not _is_mostly_ascii(len(text), len(text.encode("utf-8", "surrogatepass"))):
        return split_plain(text)
    return _split_mostly_ascii(text)


def _is_mostly_ascii(num_chars, num_bytes):
    """At most one extra UTF-8 byte per 64 characters: worth splitting in stretches."""
    return num_bytes - num_chars <= num_chars >> 6


def _stretches(text):
    """Cut text into (start, end, non_ascii) stretches that each pre-split alone as inside the text (see above):
    ASCII ones, for `re`, and ones from the word start before non-ASCII characters to the word start after, for
    `regex`. "ab cd é ef" -> (0, 5, False), (5, 8, True), (8, 11, False)"""
    start = 0
    while stretch := _NON_ASCII_STRETCH.search(text, start):
        before = _LAST_WORD_START.search(text, start, stretch.start() + 1)
        cut = before.start() + 1 if before else start
        after = _WORD_START.search(text, stretch.end() - 1)
        end = after.start() + 1 if after else len(text)
        yield start, cut, False
        yield cut, end, True
        start = end
    yield start, len(text), False


def _split_mostly_ascii(text):
    """The pre-split of any text, in stretches: `regex` on those around non-ASCII characters, `re` in between.
    "ab cd é ef" -> re: ["ab", " cd"], regex: [" é"], re: [" ef"]"""
    chunks = []
    for start, end, non_ascii in _stretches(text):
        chunks += (_PATTERN if non_ascii else _ASCII_PATTERN).findall(text, start, end)
    return chunks


# ---- encoding one chunk: apply the merges by rank ----

def merge_by_rank(ids, merges, parents):
    """Encode one chunk: repeatedly merge every occurrence of the lowest-ranked adjacent pair (rank == merged id).
    The plain form of BPE, and the reference: encode runs merge_by_rank_fast below, which test_bpe proves equal.

    merge_by_rank([104, 105, 104, 105], {(104, 105): 256}, {256: (104, 105)}) -> [256, 256]
    """
    never = repeat(1 << 62)
    while len(ids) > 1:
        new_id = min(map(merges.get, zip(ids, ids[1:]), never))
        if new_id == 1 << 62:
            break
        a, b = parents[new_id]
        merged, i, last = [], 0, len(ids) - 1
        while i <= last:
            if ids[i] == a and i < last and ids[i + 1] == b:
                merged.append(new_id)
                i += 2
            else:
                merged.append(ids[i])
                i += 1
        ids = merged
    return ids


_NEVER = 1 << 62  # the rank of a pair that is not a merge: above every real rank


def merge_by_rank_fast(ids, merges):
    """merge_by_rank's result, faster on the short chunks of real text: merge the leftmost lowest-ranked pair, then
    look up only the two pairs beside it instead of rescanning the chunk. (A pair made with the new id always ranks
    above it, since a merge's id is above its parents', so the next occurrence of the same pair is still the lowest;
    leftmost-first is merge_by_rank's left-to-right order, "aaa" -> "aa" "a".) tiktoken's loop is the same one.

    merge_by_rank_fast([104, 105, 104, 105], {(104, 105): 256}) -> [256, 256]
    """
    get = merges.get
    # ranks[i] is the rank of the pair (ids[i], ids[i + 1]); one more _NEVER at the end stands for "no pair after".
    ranks = [*map(get, zip(ids, ids[1:]), repeat(_NEVER)), _NEVER]
    new_id = min(ranks)
    while new_id != _NEVER:
        i = ranks.index(new_id)
        ids[i] = new_id
        del ids[i + 1], ranks[i]
        if i:
            ranks[i - 1] = get((ids[i - 1], new_id), _NEVER)
        if i + 1 < len(ids):
            ranks[i] = get((new_id, ids[i + 1]), _NEVER)
        new_id = min(ranks)
    return ids


_CACHE_MAX_CHUNKS = 1 << 18  # ~50 MB at most; a 5 MB English corpus has ~40k distinct chunks


class _ChunkCache(dict):
    """chunk -> tuple of ids. `__missing__` encodes a chunk not seen yet, so encoding a list of chunks is a C-speed map
    over `cache.__getitem__`. Cleared when full: simple, and a corpus's frequent chunks come back within a few lines.

    A chunk that is itself a token (a third of the distinct chunks of English text: " the", " Romeo") is that token,
    found in one lookup of its bytes. tiktoken encodes the same way, and for a vocab that BPE learned (GPT-2's or
    create_vocab's) the merges give the same id: test_bpe checks every token of both. Other chunks go through the
    merges, on merge_by_rank_fast."""

    def __init__(self, byte_table, token_ids, merges):
        super().__init__()
        self.byte_table, self.token_ids, self.merges = byte_table, token_ids, merges

    def __missing__(self, chunk):
        data = chunk.encode("utf-8", "surrogatepass")
        token = self.token_ids.get(data)
        if token is not None:
            ids = (token,)
        else:
            ids = tuple(merge_by_rank_fast(list(data.translate(self.byte_table)), self.merges))
        if len(self) >= _CACHE_MAX_CHUNKS:
            self.clear()
        self[chunk] = ids
        return ids


# ---- the pre-split's hand-off to the compiled kernels ----
# Big texts are encoded, and big corpora counted, by numba-compiled copies of the Python here (kernels.py and
# training_kernels.py in gpt2_llm/tokenizer/; compiled.py decides when they pay). They pre-split ASCII themselves,
# with a hand-written scanner of GPT-2's pattern; the stretches around non-ASCII characters are pre-split here, by
# `regex`, and handed over as the chunks' ends in bytes.
_utf8 = methodcaller("encode", "utf-8", "surrogatepass")


def _regex_regions(text, num_bytes):
    """The spans of text's UTF-8 bytes that the compiled path takes pre-split by `regex` (the non-ASCII stretches of
    _stretches, or the whole text when it is not mostly ASCII) and the ends of their chunks, in bytes.

    _regex_regions("中文 ok", 9) -> [[0, 9]], [6, 9]  (not mostly ASCII: one region of two chunks, "中文" and " ok")
    """
    if text.isascii():
        spans = []
    elif _is_mostly_ascii(len(text), num_bytes):
        spans = [(start, end) for start, end, non_ascii in _stretches(text) if non_ascii and start < end]
    else:
        spans = [(0, len(text))]
    regions, region_ends, offset, previous_end = [], [], 0, 0
    for start, end in spans:
        offset += start - previous_end  # ASCII in between: a byte per character
        ends = list(accumulate(map(len, map(_utf8, _PATTERN.findall(text, start, end))), initial=offset))
        regions.append((offset, ends[-1]))
        region_ends += ends[1:]
        offset, previous_end = ends[-1], end
    return np.array(regions, np.int64).reshape(-1, 2), np.array(region_ends, np.int64)


def _utf8_with_regions(text):
    """text's UTF-8 bytes as a uint8 array, with its _regex_regions: the first three arguments of encode_utf8 (and of
    count_utf8, the compiled count_chunks)."""
    data = _utf8(text)
    return (np.frombuffer(data, np.uint8), *_regex_regions(text, len(data)))


# ---- the pre-split counted: what training learns from ----

def count_chunks(text, counts=None):
    """{pre-split chunk: how often it occurs}: all that training needs from a text, added to counts if given.
    Counts of pieces of a text cut where cutting changes no chunk (parallel.split_for_workers) add up to the whole's.

    count_chunks("the cat the") -> Counter({"the": 1, " cat": 1, " the": 1})
    """
    counts = Counter() if counts is None else counts
    counts.update(_split(text))
    return counts


# ---- decoding: bytes back to text ----

def _keep_surrogates_else_replace(error):
    """Decode error handler: lone surrogates (encoded with surrogatepass) come back, other bad bytes become U+FFFD.

    b"\\xed\\xa0\\x80".decode("utf-8", "bpe-replace") -> "\\ud800";  b"\\xe4\\xb8".decode(...) -> "\\ufffd"
    """
    try:
        return codecs.lookup_error("surrogatepass")(error)
    except UnicodeDecodeError:
        return "\ufffd", error.end


codecs.register_error("bpe-replace", _keep_surrogates_else_replace)


# ---- the vocab file ----
# One token per line in id order, so the merge order is the line order and a person can read the vocab:
#
#     #gpt2-llm-bpe v1
#     #pattern '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#     #tokens 299
#     #special <|endoftext|> 299
#     #special <|user|> 300    (more special tokens, if any were added: ids after <|endoftext|>, in order)
#     # one token per line: ...
#     0 \x00
#     32 ␣
#     65 A
#     256 th 116 104         (a merged token: id, its bytes, the two ids merged)
#     295 ␣in 32 261

FORMAT_HEADER = "#gpt2-llm-bpe v1"


def _escape_byte(b):
    """How one byte is written in the vocab file: printable ASCII as-is, "\\\\" for a backslash, "␣" for a space,
    "\\xNN" otherwise. 65 -> "A", 32 -> "␣", 10 -> "\\x0a" """
    if b == 0x5C:
        return "\\\\"
    if b == 0x20:
        return "␣"
    return chr(b) if 0x21 <= b <= 0x7E else f"\\x{b:02x}"


_ESCAPES = [_escape_byte(b) for b in range(256)]
_UNESCAPES = {e: b for b, e in enumerate(_ESCAPES)}
_ESCAPE_PIECE = re.compile(r"\\x..|\\.|.", re.DOTALL)
_TOKEN_LINE = re.compile(r"([0-9]+) (\S+)(?: ([0-9]+) ([0-9]+))?")  # id, escaped bytes, [left right]


def _unescape(field):
    """Inverse of the escaping above; None when the field is not canonical escaped bytes. "␣the" -> b" the" """
    try:
        return bytes(_UNESCAPES[piece] for piece in _ESCAPE_PIECE.findall(field))
    except KeyError:
        return None


def _format_vocab(token_bytes, parents, specials=(EOT,)):
    """The vocab file's text for the regular tokens token_bytes (a list of bytes, in id order) and parents
    (merged id -> the pair it merges); the special tokens (<|endoftext|> first) take the ids after the last token.

    _format_vocab([bytes([b]) for b in range(256)] + [b"aa"], {256: (97, 97)}) -> "#gpt2-llm-bpe v1\n...256 aa 97 97\n"
    """
    eot_id = len(token_bytes)
    lines = [
        FORMAT_HEADER,
        f"#pattern {GPT2_PATTERN}",
        f"#tokens {eot_id}",
        *(f"#special {name} {eot_id + i}" for i, name in enumerate(specials)),
        "# one token per line: id, its bytes (printable ASCII as-is, ␣ = space, \\\\ = backslash, \\xNN = other"
        " bytes), and for merged tokens the two ids merged (the merge order is the id order)",
    ]
    for token_id, data in enumerate(token_bytes):
        text = "".join(_ESCAPES[b] for b in data)
        pair = parents.get(token_id)
        lines.append(f"{token_id} {text} {pair[0]} {pair[1]}" if pair else f"{token_id} {text}")
    return "\n".join(lines) + "\n"


def _parse_vocab(text, path):
    """Check and read a vocab file; returns (byte_values, merges, specials) for BPE._build. The inverse of
    _format_vocab."""
    lines = text.replace("\r\n", "\n").split("\n")  # a valid file has no raw \r: every such byte is escaped
    if lines[-1] == "":
        lines.pop()

    def fail(lineno, message):
        raise UserError(f"{path}:{lineno}: {message}")

    if lines[0] != FORMAT_HEADER:
        fail(1, f"not a gpt2-llm BPE vocab (first line should be {FORMAT_HEADER!r}); for OpenAI's files use from_gpt2")
    header = dict(line.partition(" ")[::2] for line in lines[1:4])
    if header.get("#pattern") != GPT2_PATTERN:
        fail(2, f"expected '#pattern {GPT2_PATTERN}' (the only pre-split pattern supported)")
    num_tokens = header.get("#tokens", "")
    if not re.fullmatch("[0-9]+", num_tokens) or int(num_tokens) < 256:
        fail(3, "expected '#tokens N' with N >= 256")
    num_tokens = int(num_tokens)
    if header.get("#special") != f"{EOT} {num_tokens}":
        fail(4, f"expected '#special {EOT} {num_tokens}' (the special token right after the last regular token)")
    specials = [EOT]
    for lineno, line in enumerate(lines[4:], start=5):  # more special tokens, each with the next id
        if not line.startswith("#special "):
            break
        name, _, special_id = line[len("#special "):].rpartition(" ")
        if not _SPECIAL_NAME.fullmatch(name) or name in specials or special_id != str(num_tokens + len(specials)):
            fail(lineno, f"expected '#special <|name|> {num_tokens + len(specials)}' (a new name, the next id)")
        specials.append(name)

    token_bytes, byte_values, merges = [], [], {}
    token_lines = [(lineno, line) for lineno, line in enumerate(lines[4:], start=5) if not line.startswith("#")]
    for lineno, line in token_lines:
        token_id = len(token_bytes)
        match = _TOKEN_LINE.fullmatch(line)
        if not match:
            fail(lineno, "expected 'id bytes' or, for a merged token, 'id bytes left_id right_id' (truncated?)")
        if int(match[1]) != token_id:
            fail(lineno, f"expected token id {token_id} here (ids must run 0, 1, 2, ... with no gaps or duplicates)")
        data = _unescape(match[2])
        if data is None:
            fail(lineno, f"bad escape in {match[2]!r}")
        if token_id < 256:
            if match[3] is not None or len(data) != 1 or data[0] in byte_values:
                fail(lineno, "ids 0..255 must each be a single byte, every byte exactly once, with no parents")
            byte_values.append(data[0])
        else:
            if match[3] is None:
                fail(lineno, f"merged token {token_id} lacks its two parent ids (truncated?)")
            pair = int(match[3]), int(match[4])
            if max(pair) >= token_id:
                fail(lineno, f"a merged token's parents must have smaller ids than {token_id}")
            if token_bytes[pair[0]] + token_bytes[pair[1]] != data:
                fail(lineno, f"bytes {match[2]!r} are not the bytes of tokens {pair[0]} and {pair[1]} joined")
            if pair in merges:
                fail(lineno, f"the pair {pair} was already merged into token {merges[pair]}")
            merges[pair] = token_id
        token_bytes.append(data)
    if len(token_bytes) != num_tokens:
        fail(len(lines), f"file ends after {len(token_bytes)} of {num_tokens} tokens (truncated?)")
    return byte_values, list(merges), specials


class BPE:
    """GPT-2 byte-level BPE. ids 0..255 are the 256 single bytes (in any order: GPT-2's files use their own), id
    256 + k is the k-th merge, and the special token <|endoftext|> comes right after the last merge, followed by any
    special tokens added since (add_special_tokens: a chat's role markers).

    A fresh BPE() has no merges yet: it encodes every byte as its own token, and the vocab has 257 entries.
    """

    def __init__(self, vocab_path="vocab.txt"):
        self.vocab_path = vocab_path
        self._target_vocab_size = None
        self._build(list(range(256)), [])

    # ---- building and inspecting the vocab ----

    def _build(self, byte_values, merges, specials=(EOT,)):
        """Derive every lookup table from the things that define the vocab: which byte each of ids 0..255 is, the
        list of merged pairs (merge k makes id 256 + k), and the special tokens (<|endoftext|> first)."""
        self._byte_values = list(byte_values)
        self._merge_list = list(merges)
        self._token_bytes = [bytes([b]) for b in self._byte_values]
        self._merges, self._parents = {}, {}
        for new_id, (a, b) in enumerate(self._merge_list, start=256):
            self._merges[a, b] = new_id
            self._parents[new_id] = (a, b)
            self._token_bytes.append(self._token_bytes[a] + self._token_bytes[b])
        self._eot_id = len(self._token_bytes)
        self._specials = {name: self._eot_id + i for i, name in enumerate(specials)}
        self._token_bytes += [name.encode("utf-8") for name in specials]  # decode spells a special token out
        byte_table = bytearray(256)
        for token_id, b in enumerate(self._byte_values):
            byte_table[b] = token_id
        # bytes -> id of every regular token: a chunk that is a token needs no merges (see _ChunkCache)
        token_ids = {data: token_id for token_id, data in enumerate(self._token_bytes[: self._eot_id])}
        self._cache = _ChunkCache(bytes(byte_table), token_ids, self._merges)
        self._compiled = None  # the compiled path's tables of this vocab, made on its first use
        self._fingerprint = None

    @property
    def vocab_size(self):
        """Number of tokens including <|endoftext|>: 50257 for GPT-2."""
        return len(self._token_bytes)

    @property
    def special_tokens(self):
        """name -> id of every special token, <|endoftext|> first: {"<|endoftext|>": 50256} for GPT-2."""
        return dict(self._specials)

    def add_special_tokens(self, names):
        """Add special tokens (spelled <|name|>) after the existing ones -> their ids; names already here keep theirs.
        Encoding text without them is unchanged; the vocab (and its fingerprint) is a new one.

        add_special_tokens(["<|user|>", "<|end|>"]) -> [50257, 50258] on GPT-2's vocab
        """
        for name in names:
            if not isinstance(name, str) or not _SPECIAL_NAME.fullmatch(name):
                raise UserError(f"a special token is spelled <|name|> (letters, digits, _.:-), got {name!r}")
        new = [name for name in dict.fromkeys(names) if name not in self._specials]
        if new:
            self._build(self._byte_values, self._merge_list, [*self._specials, *new])
        return [self._specials[name] for name in names]

    def without_special_tokens(self, names):
        """A copy of this vocab (same vocab_path) without the special tokens names, as it was before
        add_special_tokens(names): the vocab a base model was trained with, from its fine-tuned chat vocab."""
        if EOT in names:
            raise UserError(f"{EOT} is part of every vocab; it cannot be removed")
        copy = BPE(self.vocab_path)
        copy._build(self._byte_values, self._merge_list, [name for name in self._specials if name not in names])
        return copy

    @property
    def eot_id(self):
        """Id of <|endoftext|>: 50256 for GPT-2, vocab_size - 1 for a trained vocab."""
        return self._eot_id

    def get_model_vocab_size(self):
        """Rows of the model's embedding: vocab_size rounded up to a multiple of 64 (faster matmuls). 50257 -> 50304"""
        return (self.vocab_size + 63) // 64 * 64

    def set_vocab_size(self, vocab_size):
        """Set the vocab size create_vocab trains to, counting the 256 bytes and <|endoftext|>. 8192 -> 7935 merges"""
        if type(vocab_size) is not int or vocab_size < 257:
            raise UserError(f"vocab size must be an integer >= 257 (256 bytes + {EOT}), got {vocab_size!r}")
        self._target_vocab_size = vocab_size

    def get_recommended_vocab_size(self, text):
        """A vocab size for this text; see recommended_vocab_size. The 5 MB Shakespeare corpus gives ~10k."""
        return recommended_vocab_size(count_chunks(text))

    def token_bytes(self):
        """id -> bytes of every regular token (<|endoftext|> excluded: it stands for no text). {..., 256: b" t"}"""
        return dict(enumerate(self._token_bytes[: self._eot_id]))

    def merges(self):
        """The merged pairs of ids in rank order: merges()[k] made id 256 + k."""
        return list(self._merge_list)

    def fingerprint(self):
        """sha256 hex of the vocab file's content: equal fingerprints mean identical tokenization (cache keys)."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self._serialize().encode("utf-8")).hexdigest()
        return self._fingerprint

    # ---- training ----

    def create_vocab(self, text, verbose=True):
        """Learn merges from text up to the size set by set_vocab_size (or the recommended size if none was set).
        Raises UserError when the text is empty or has too few distinct pairs to learn that many merges."""
        if not text:
            raise UserError("cannot train a tokenizer on empty text")
        self.create_vocab_from_counts(count_chunks(text), verbose)

    def create_vocab_from_counts(self, chunk_counts, verbose=True):
        """create_vocab from {pre-split chunk: count} instead of the text: what a corpus too big to hold in memory
        gives when counted block by block (the merges depend on nothing else). {" the": 2, "cat": 1} -> merges"""
        if not chunk_counts:
            raise UserError("cannot train a tokenizer on empty text")
        target = self._target_vocab_size or recommended_vocab_size(chunk_counts)
        num_merges = target - 257
        merges = learn_merges(chunk_counts, num_merges, verbose)
        if len(merges) < num_merges:
            raise UserError(
                f"text too small for a vocab of {target}: it only has material for {257 + len(merges)} tokens; "
                f"use a bigger text or a vocab size <= {257 + len(merges)}"
            )
        self._build(range(256), merges)

    # ---- encoding and decoding ----

    def _allowed_specials(self, allowed_special):
        if allowed_special == "all":
            return set(self._specials)
        unknown = set(allowed_special) - set(self._specials)
        if unknown:
            raise UserError(f"unknown special token(s) {sorted(unknown)}; this vocab has {', '.join(self._specials)}")
        return set(allowed_special)

    def encode_ordinary(self, text):
        """Encode text with no special tokens: "<|endoftext|>" in it is plain text. "hello world" -> [31373, 995]"""
        return self.encode(text)

    def encode_ordinary_plain(self, text):
        """encode_ordinary in Python: the pre-split, then each chunk through the chunk cache (the reference path)."""
        return list(chain.from_iterable(map(self._cache.__getitem__, _split(text))))

    def encode(self, text, allowed_special=()):
        """Text -> token ids. A special token (<|endoftext|>, ...) becomes its id only when allowed_special holds it
        (or is "all"); otherwise it is encoded as ordinary text, like tiktoken's encode_ordinary.

        encode("hi<|endoftext|>", allowed_special="all") -> [5303, 50256] with GPT-2's files
        """
        ids = self._encode(text, self._allowed_specials(allowed_special), _kernels_for(len(text)))
        return ids.tolist() if isinstance(ids, np.ndarray) else ids

    def encode_array(self, text, dtype=np.uint32, allowed_special=()):
        """encode's ids as a numpy array of dtype, with no list of Python ints in between (for big texts)."""
        return np.asarray(self._encode(text, self._allowed_specials(allowed_special), _kernels_for(len(text))), dtype)

    def _encode(self, text, specials, kernels):
        """encode's ids: a list from the Python path (kernels None), or an int32 array from the compiled one. The
        text between allowed specials is encoded apart."""
        # ["text", special, "text", special, ...]: split on the allowed specials, keeping them (longest first)
        parts = re.split(f"({'|'.join(map(re.escape, sorted(specials, key=len, reverse=True)))})", text) \
            if specials else [text]
        if kernels is None:
            encode_part, join = self.encode_ordinary_plain, lambda pieces: list(chain.from_iterable(pieces))
        else:
            tables = self._compiled_tables(kernels)
            encode_part = lambda part: kernels.encode_utf8(*_utf8_with_regions(part), *tables)  # noqa: E731
            join = np.concatenate
        pieces = [encode_part(parts[0])]
        for special, part in zip(parts[1::2], parts[2::2]):
            pieces += [[self._specials[special]], encode_part(part)]
        return pieces[0] if len(pieces) == 1 else join(pieces)

    def _compiled_tables(self, kernels):
        """This vocab's lookup tables for kernels.encode_utf8, made once (~10 ms for GPT-2's)."""
        if self._compiled is None:
            tokens = self._token_bytes[: self._eot_id]
            starts = np.zeros(len(tokens) + 1, np.int64)
            np.cumsum([len(t) for t in tokens], out=starts[1:])
            pairs = np.array(self._merge_list, np.int64).reshape(-1, 2)
            byte_table = np.frombuffer(self._cache.byte_table, np.uint8).copy()
            joined = np.frombuffer(b"".join(tokens), np.uint8).copy()
            self._compiled = kernels.build_tables(byte_table, joined, starts, pairs[:, 0].copy(), pairs[:, 1].copy())
        return self._compiled

    def encode_file(self, path, num_workers=None, allowed_special=(), progress=False):
        """Encode a whole UTF-8 file on all cores, with exactly the ids of encode (see gpt2_llm/tokenizer/parallel.py).
        Returns a numpy array, uint16 when the vocab fits (GPT-2's does), else uint32. progress=True shows a bar of
        pieces done when stderr is a terminal."""
        return encode_file_in_parallel(self, _is_mostly_ascii, path, num_workers, allowed_special, progress)

    def _check_ids(self, ids):
        if len(ids) and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise UserError(f"token id {bad} is out of range: this vocab has ids 0..{self.vocab_size - 1}")

    def decode(self, ids):
        """Token ids -> text. Bytes that are not valid UTF-8 (a token cut inside a character) become U+FFFD.

        decode([31373, 995]) -> "hello world" with GPT-2's files
        """
        self._check_ids(ids)
        return b"".join(map(self._token_bytes.__getitem__, ids)).decode("utf-8", "bpe-replace")

    def decode_pieces(self, ids):
        """Each token's own text, for showing how a text was cut. [31373, 995] -> ["hello", " world"]"""
        self._check_ids(ids)
        return [self._token_bytes[i].decode("utf-8", "bpe-replace") for i in ids]

    @staticmethod
    def normalize_whitespace(text):
        """Opt-in clean-up, never applied by encode: \\r\\n and \\r become \\n, runs of spaces and tabs become one
        space, and spaces at line ends go. Use it on scraped text whose layout carries no meaning.

        normalize_whitespace("a \\t b  \\r\\nc ") -> "a b\\nc"
        """
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"[ \t]+", " ", text)
        return re.sub(r" +(?=\n)| +$", "", text)

    # ---- files ----

    def _serialize(self):
        return _format_vocab(self._token_bytes[: self._eot_id], self._parents, list(self._specials))

    def save(self):
        """Write the vocab to vocab_path atomically (see atomic_write): a crash never leaves half a vocab."""
        atomic_write(self.vocab_path, self._serialize())

    def load(self):
        """Load vocab_path. Returns False if there is no such file; raises UserError naming the file and line if it
        is not exactly a vocab this class wrote (wrong header, bad escape, ids out of order, truncated, ...)."""
        if not os.path.exists(self.vocab_path):
            return False
        text = read_text_file(self.vocab_path)
        self._build(*_parse_vocab(text, self.vocab_path))
        return True

    @classmethod
    def from_gpt2(cls, encoder_json_path, vocab_bpe_path, vocab_path="vocab.txt"):
        """Load OpenAI's GPT-2 files (encoder.json: token -> id, vocab.bpe: the merges in rank order; see
        gpt2_llm/tokenizer/openai_files.py). Encodes exactly like tiktoken."""
        bpe = cls(vocab_path)
        bpe._build(*read_gpt2_files(encoder_json_path, vocab_bpe_path, EOT))
        return bpe
