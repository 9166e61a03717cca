"""A corpus: the text files the user named, read as a stream of documents in pieces that fit in memory.

    inputs  data.txt | a b c | corpus/ (recursively, sorted) | "books/*.txt" | docs.jsonl (--text-field)
       -> find_sources: the files, in order        -> check_sources: UTF-8 text? JSON lines with the field?
       -> plan_pieces: byte ranges of ~8 MB, cut where cutting changes no token
       -> read_piece: (starts_document, text) blocks of ~1 MB, for one worker process

A text file is one document; each line of a JSON-lines file (.jsonl / .ndjson) is one, its text under
--text-field. Documents are joined with <|endoftext|>, so a model learns where one ends: the token
stream is doc1, EOT, doc2, EOT, ... (one file alone has no EOT: it encodes exactly as it always did).

Why pieces: nothing here holds a corpus in memory. The tokenizer's counts and the token cache are built
piece by piece on all cores, and a piece is the unit that an interrupted cache build keeps.
"""
import argparse
import glob
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.parallel import usable_cores

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PIECE_BYTES = 8 << 20  # a worker's unit of work: big enough to amortize its start, small enough to resume often
BLOCK_BYTES = 1 << 20  # what a worker encodes at once: bounds its memory (~100 bytes per chunk of the pre-split)
CACHE_SUFFIX = ".tokens"  # token-cache folders; never read as input when they sit inside a corpus folder

# A byte offset where a text can be cut without changing its tokens: a newline followed by a printable
# non-space ASCII byte. It is one of _SAFE_CUT's places in gpt2_llm/tokenizer/parallel.py (a newline before a
# non-space), found in the bytes without decoding: an ASCII byte is always a whole character, and 0x21-0x7e is never
# whitespace.
SAFE_TEXT_CUT = re.compile(rb"\n(?=[\x21-\x7e])")
LINE_END = re.compile(rb"\n")


@dataclass(frozen=True)
class Source:
    path: str  # as found (relative paths stay relative, for messages)
    size: int
    mtime_ns: int  # with size, tells whether the file changed since it was checked or cached

    @property
    def is_jsonl(self) -> bool:
        return self.path.lower().endswith(JSONL_SUFFIXES)


@dataclass(frozen=True)
class Segment:
    source: Source
    start: int  # byte offsets in the file: [start, end)
    end: int


@dataclass(frozen=True)
class Piece:
    """A worker's unit of work (one shard of the token cache): part of a big file, or several small files."""
    segments: tuple  # of Segment, in corpus order
    first_of_corpus: bool  # the corpus's first piece: its first document gets no EOT before it

    @property
    def size(self) -> int:
        return sum(segment.end - segment.start for segment in self.segments)

    @property
    def sources(self) -> list[Source]:
        return [segment.source for segment in self.segments]


# --- the flags every command that reads a corpus shares ---------------------------------------


def add_corpus_arguments(parser):
    parser.add_argument("--text-field", default="text",
                        help="the field that holds the text in JSON-lines files (default: text)")
    parser.add_argument("--skip-bad-files", action="store_true", default=None,
                        help="skip files that are not UTF-8 text (or bad JSON lines), with a count, "
                             "instead of stopping at the first")


def parse_size(text) -> int:
    """A byte count with an optional K, M or G (powers of 1024): parse_size("200M") -> 209715200."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", str(text), re.IGNORECASE)
    if not match or float(match[1]) * units[match[2].upper()] < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size like 200M or 1G, got {text!r}")
    return int(float(match[1]) * units[match[2].upper()])


# --- finding and checking the files -------------------------------------------------------------


def find_sources(inputs, what="input") -> list[Source]:
    """The files named by inputs (files, folders, globs), in order, each once.

    A folder gives every file under it in sorted path order, except hidden ones and token caches.
    find_sources(["corpus/"]) -> [Source("corpus/a.txt", ...), Source("corpus/sub/b.jsonl", ...)]
    """
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not inputs:
        raise UserError(f"no {what} given")
    paths = []
    for spec in map(str, inputs):
        if os.path.isdir(spec):
            found = sorted(_files_under(spec))
            if not found:
                raise UserError(f"{what} folder {spec} has no files")
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise UserError(f"{what} pattern {spec!r} matches no files")
        elif os.path.exists(spec):
            raise UserError(f"{what} {spec} is not a regular file or folder")
        else:
            raise UserError(f"{what} {spec} not found: no such file or folder")
        paths += found
    sources, seen = [], set()
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            stat = os.stat(path)
            sources.append(Source(path, stat.st_size, stat.st_mtime_ns))
    return sources


def _files_under(folder):
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(CACHE_SUFFIX)]
        yield from (os.path.join(root, f) for f in files if not f.startswith("."))


def check_source(source: Source, text_field: str, digest=None) -> str | None:
    """What is wrong with a file as a corpus file, in a few words naming the place, or None.

    Reads it once, in blocks: UTF-8 throughout, no NUL byte (a binary file), and for JSON lines
    every non-blank line an object whose text_field is a string. The bytes read also go to digest
    (a hashlib object) if one is given, so that a caller needing the file's hash reads it only once.
    """
    update = digest.update if digest is not None else lambda data: None
    try:
        with open(source.path, "rb") as f:
            if source.is_jsonl:
                for line_number, line in enumerate(f, 1):
                    update(line)
                    if line.strip() and (problem := _json_line_problem(line, text_field)):
                        return f"line {line_number}: {problem}"
                return None
            return _text_problem(f, update)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"


def _text_problem(f, update) -> str | None:
    decoder, offset = _strict_utf8(), 0
    while block := f.read(BLOCK_BYTES * 16):
        update(block)
        nul = block.find(b"\0")
        if nul >= 0:
            return f"is not UTF-8 text: it looks binary (a NUL byte at byte {offset + nul})"
        try:
            decoder.decode(block)
        except UnicodeDecodeError as e:
            return f"is not UTF-8 text (byte 0x{block[e.start]:02x} at byte {offset + e.start})"
        offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"is not UTF-8 text (it ends inside a character, at byte {offset})"
    return None


def _strict_utf8():
    import codecs

    return codecs.getincrementaldecoder("utf-8")("strict")


def _json_line_problem(line: bytes, text_field: str) -> str | None:
    try:
        record = json.loads(line)
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (byte 0x{line[e.start]:02x})"
    except (ValueError, RecursionError):
        return "is not valid JSON"
    if not isinstance(record, dict) or text_field not in record:
        return f'has no "{text_field}" field (choose the field with --text-field)'
    if not isinstance(record[text_field], str):
        return f'its "{text_field}" field is not a string'
    return None


def check_sources(sources, text_field="text", skip_bad_files=False, checked=(), log=print,
                  sha256=None) -> list[Source]:
    """The sources that are good corpus files; the first bad one is a UserError naming the file and the place,
    unless skip_bad_files, which drops the bad ones and says how many. Sources in `checked` (a set of
    Sources, same path, size and mtime) were checked before and are not read again. sha256: a dict that
    gets path -> hex sha256 of each file read here (the others are in `checked`)."""
    good, skipped = [], []
    for source in sources:
        digest = None if source in checked or sha256 is None else hashlib.sha256()
        problem = None if source in checked else check_source(source, text_field, digest)
        if digest is not None:
            sha256[source.path] = digest.hexdigest()
        if problem is None:
            good.append(source)
        elif skip_bad_files:
            skipped.append(f"{source.path} {problem}")
        else:
            raise UserError(f"{source.path} {problem}; fix or remove it (or pass --skip-bad-files)")
    if skipped:
        log(f"Skipped {len(skipped)} bad file(s) (--skip-bad-files), e.g. {skipped[0]}")
    if not good or not any(s.size for s in good):
        raise UserError("the corpus is empty: no text in " + (good[0].path if len(good) == 1 else "its files"))
    return good


# --- cutting files into pieces, and reading one ------------------------------------------------


def plan_pieces(sources, piece_bytes=None) -> list[Piece]:
    """Cut the corpus into pieces of about piece_bytes (default PIECE_BYTES): a big file into several, at
    safe newlines (SAFE_TEXT_CUT) or, for JSON lines, at line ends; small files grouped into one.

    A group of small files also ends after any file whose path hashes to 0 mod 64, so the groups are
    stable: a file that grows or is added changes its own group, not every group after it (the pieces
    name the shards that an interrupted or repeated build reuses).
    """
    piece_bytes = piece_bytes or PIECE_BYTES
    pieces, group = [], []

    def close(segments):
        if segments:
            pieces.append(Piece(tuple(segments), first_of_corpus=not pieces))
        return []

    for source in sources:
        if source.size >= piece_bytes:
            group = close(group)
            for start, end in _cuts(source, piece_bytes):
                close([Segment(source, start, end)])
            continue
        if source.size:
            group.append(Segment(source, 0, source.size))
        if sum(s.end for s in group) >= piece_bytes or _ends_a_group(source.path):
            group = close(group)
    close(group)
    return pieces


def _ends_a_group(path) -> bool:
    return zlib.crc32(os.path.basename(path).encode("utf-8", "surrogateescape")) % 64 == 0


def _cuts(source, piece_bytes):
    """(start, end) byte ranges of about piece_bytes that cover one big file, cut where cutting changes nothing."""
    with open(source.path, "rb") as f:
        start = 0
        while start < source.size:
            end = _find_cut(f, start + piece_bytes, source.size, source.is_jsonl)
            yield start, end
            start = end


def _find_cut(f, target, size, is_jsonl, window=1 << 16) -> int:
    """The first cut at or after target (size if there is none): after a newline in JSON lines (a line keeps its
    newline), before a safe newline in text (SAFE_TEXT_CUT)."""
    cut, keep_newline = (LINE_END, 1) if is_jsonl else (SAFE_TEXT_CUT, 0)
    position = target
    while position < size:
        f.seek(position)
        data = f.read(window + 1)  # one byte more: the cut pattern looks one byte ahead
        match = cut.search(data, 0, len(data))
        if match and match.start() < window:
            return position + match.start() + keep_newline
        position += window
    return size


def read_piece(piece: Piece, text_field="text", block_bytes=None):
    """Yield (starts_document, text) for a piece, segment by segment: a text file's bytes in blocks of about
    block_bytes (default BLOCK_BYTES), cut at safe newlines so the blocks encode as the whole does; a
    JSON-lines file one document a line."""
    for segment in piece.segments:
        yield from read_segment(segment, text_field, block_bytes or BLOCK_BYTES)


def read_segment(segment: Segment, text_field, block_bytes):
    with open(segment.source.path, "rb") as f:
        f.seek(segment.start)
        if segment.source.is_jsonl:
            consumed = 0
            for line in f:
                consumed += len(line)
                if line.strip():
                    yield True, json.loads(line)[text_field]
                if segment.start + consumed >= segment.end:
                    return
            return
        position, carry = segment.start, b""  # position: the next byte to read; carry: read, not yet yielded
        while position < segment.end:
            block_start = position - len(carry)
            data = carry + f.read(min(block_bytes, segment.end - position))
            position = block_start + len(data)
            carry = b""
            if position < segment.end:  # keep the text after the last safe cut for the next block
                cut = _last_cut(data)  # 0 when there is none: then all of it waits for more text
                data, carry = data[:cut], data[cut:]
            if data:
                yield block_start == 0, data.decode("utf-8")


def _last_cut(data: bytes) -> int:
    """Offset of the last safe cut in data, 0 if none. Searches backwards from the end, a window at a time."""
    end = len(data)
    while end > 0:
        start = max(0, end - (1 << 16))
        last = None
        for last in SAFE_TEXT_CUT.finditer(data, start, min(len(data), end + 1)):
            pass
        if last is not None and last.start() < end:
            return last.start()
        end = start
    return 0


def sample_pieces(pieces, sample_bytes, block_bytes=1 << 20) -> list[Piece]:
    """About sample_bytes of the corpus, in blocks spread evenly over all of it (each cut like a piece), so a
    vocab learned from the sample sees every part of a corpus too big to count whole."""
    segments = [segment for piece in pieces for segment in piece.segments]
    total = sum(s.end - s.start for s in segments)
    if sample_bytes >= total:
        return pieces
    block_bytes = max(1 << 12, min(block_bytes, sample_bytes // 256))  # from 256 places, unless tiny
    count = max(1, sample_bytes // block_bytes)
    stride = total / count
    sampled, segment_iter = [], iter(segments)
    segment, segment_start = next(segment_iter), 0  # segment_start: its offset in the whole corpus
    for i in range(count):
        offset = int(i * stride)
        while offset >= segment_start + segment.end - segment.start:
            segment_start += segment.end - segment.start
            segment = next(segment_iter)
        source = segment.source
        with open(source.path, "rb") as f:
            start = segment.start if offset == segment_start else \
                _find_cut(f, segment.start + offset - segment_start, segment.end, source.is_jsonl)
            end = min(segment.end, _find_cut(f, start + block_bytes, segment.end, source.is_jsonl))
        if start < end:
            sampled.append(Piece((Segment(source, start, end),), first_of_corpus=False))
    return _grouped(sampled, block_bytes * 16)


def _grouped(pieces, piece_bytes) -> list[Piece]:
    """Consecutive pieces joined into pieces of about piece_bytes: fewer, bigger jobs for the workers."""
    groups, group = [], []
    for piece in pieces:
        group += piece.segments
        if sum(s.end - s.start for s in group) >= piece_bytes:
            groups.append(Piece(tuple(group), first_of_corpus=False))
            group = []
    if group:
        groups.append(Piece(tuple(group), first_of_corpus=False))
    return groups


# --- running a function over pieces on all cores -------------------------------------------------


def map_pieces(function, pieces, shared=None, desc="Reading", progress=True, num_workers=None):
    """Yield function(piece, shared) for each piece, in order, computed in worker processes (here, when
    one worker is enough), with a progress bar in MB/s and the ETA. `shared` (a tokenizer, say) goes to
    each worker once, not with every piece. Ctrl-C or SIGTERM stop the workers at once."""
    total = sum(p.size for p in pieces)
    show = progress and sys.stderr.isatty()
    num_workers = min(num_workers or usable_cores(), len(pieces))
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show) as bar:
        if num_workers <= 1:
            for piece in pieces:
                yield function(piece, shared)
                bar.update(piece.size)
            return
        with _sigterm_as_interrupt(), multiprocessing.Pool(num_workers, _start_worker, (function, shared)) as pool:
            try:
                for piece, result in zip(pieces, pool.imap(_run_in_worker, pieces)):
                    yield result
                    bar.update(piece.size)
            except BaseException:
                pool.terminate()  # do not wait for pieces nobody will use
                raise


_worker_job = None  # (function, shared): set once per worker process by the pool's initializer


def _start_worker(function, shared):
    global _worker_job
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_job = function, shared


def _run_in_worker(piece):
    function, shared = _worker_job
    return function(piece, shared)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt here, so the pool is terminated rather than orphaned."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(sources) -> str:
    """'data.txt' or '12 files (3.4 GB)' for messages."""
    if len(sources) == 1:
        return sources[0].path
    return f"{len(sources)} files ({sum(s.size for s in sources) / 1e6:,.1f} MB)"


def common_folder(inputs) -> Path:
    """The folder a corpus's derived files go beside: the first input's folder (a glob's fixed prefix)."""
    first = str(inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
    if glob.has_magic(first):
        first = first[: re.search(r"[*?\[]", first).start()] or "."
        return Path(first if first.endswith(os.sep) else os.path.dirname(first) or ".")
    return Path(first).resolve().parent
