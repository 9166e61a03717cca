"""Byte-level BPE tokenizer, exactly as GPT-2 does it: trainable, savable, and loadable from OpenAI's files.

Text is first pre-split with GPT-2's regex into chunks (a word with its leading space, a number, a punctuation run,
whitespace). Each chunk's UTF-8 bytes start as the 256 byte tokens, then adjacent pairs are merged in the order the
merges were learned (a merge's rank is its place in that order; here a merged token's id grows with its rank, so the
lowest rank is the lowest id). Merges never cross chunk boundaries, so a chunk always encodes the same way, which is
what makes caching chunk -> ids and splitting big files across processes exact.

    >>> bpe = BPE(); bpe.set_vocab_size(300); bpe.create_vocab(text, verbose=False)
    >>> bpe.decode(bpe.encode("hello world")) == "hello world"
    True

The file reads top to bottom in three parts, split the way minbpe splits its tokenizer:
  1. the core: the pre-split, training, encoding and decoding, the vocab file, and the class BPE that ties them;
     big texts are encoded by a compiled copy of the same encoding (gpt2_llm/tokenizer/kernels.py, numba) when installed,
     and big corpora counted and trained by compiled copies of count_chunks and train_merges
     (gpt2_llm/tokenizer/training_kernels.py); the Python forms stay the reference the tests compare them with;
  2. OpenAI's GPT-2 files: BPE.from_gpt2 reads encoder.json and vocab.bpe into the same vocab;
  3. the parallel file encoder: BPE.encode_file cuts a big file where cutting changes nothing and uses every core.
At the end: the project's user-error type and file helpers, which live here because this is the lowest layer (the
gpt2_llm package imports the tokenizer, so the tokenizer imports nothing from it but, lazily, the leaf kernel modules).

This module must not import torch: the CLI's tokenizer commands should start fast.
"""
import codecs
import hashlib
import heapq
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from itertools import accumulate, chain, repeat
from operator import methodcaller

import numpy as np
import regex
from tqdm import tqdm

from gpt2_llm.errors import UserError
from gpt2_llm.files import atomic_write, read_text_file

try:
    import fcntl
except ImportError:  # Windows: no lock files, so no background compile (see compile_kernels)
    fcntl = None


# ======================================================================================================================
# 1. The core: pre-split, train, encode, decode, the vocab file
# ======================================================================================================================
# Everything a tokenizer is, independent of where its vocab came from and of how big the text is. Ids 0..255 are the
# 256 bytes, id 256 + k is the k-th merge, and <|endoftext|> comes right after the last merge.

EOT = "<|endoftext|>"


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


# ---- the compiled path: the same encoding, at C speed ----
# Big texts are encoded by gpt2_llm/tokenizer/kernels.py: numba-compiled code that does on the text's UTF-8 bytes what the
# Python above does (the ASCII pre-split, the whole-token lookup, merge_by_rank_fast, a chunk cache), with `regex`
# still pre-splitting the stretches around non-ASCII characters here. test_bpe proves it gives the same ids as the
# Python path, which stays the reference, and the path taken where numba is not installed.

# Loading the kernels (importing numba, loading the compiled code from its disk cache) takes ~0.35 s, what Python
# spends encoding ~4 M characters; the compiled path then encodes ~5x faster. So a process loads them once it has
# that many characters to encode, in one text or in several (never paying more than twice the best choice made
# knowing the future), and short CLI calls never pay the import.
_COMPILED_PAYS_CHARS = 1 << 22
_COMPILED_MIN_CHARS = 1 << 10  # shorter texts stay in Python: a warm chunk cache beats a call's fixed cost
_PYTHON_ENCODE_CHARS_PER_SECOND = 3_500_000  # the Python path, cold, on English (the compiled one: ~40 M)
_kernels = None  # gpt2_llm.tokenizer.kernels once imported; False where numba is missing
_python_chars = 0  # characters of texts of at least _COMPILED_MIN_CHARS encoded in Python so far
_utf8 = methodcaller("encode", "utf-8", "surrogatepass")


def load_kernels(python_seconds=float("inf")):
    """The compiled kernels (gpt2_llm.tokenizer.kernels), imported on first use; None where numba is not installed, and
    None while they are not compiled for this machine yet and the job at hand would take Python only python_seconds,
    less than compiling them: they then compile in the background for the next runs (see the next section)."""
    global _kernels
    if _kernels is None:
        status = kernels_cache_status()
        if status == NUMBA_MISSING:
            _kernels = False
            return None
        if status != KERNELS_CACHED:
            if python_seconds < _COMPILE_SECONDS and _start_background_compile():
                return None
            compile_kernels()
        try:
            from gpt2_llm.tokenizer import kernels as _kernels
        except ModuleNotFoundError as e:
            if e.name not in ("numba", "llvmlite"):
                raise
            _kernels = False
    return _kernels or None


def _kernels_for(num_chars):
    """The compiled kernels when they pay for a text of num_chars characters (see above), else None: Python."""
    global _python_chars
    if num_chars < _COMPILED_MIN_CHARS:
        return None
    if _kernels is None and _python_chars + num_chars < _COMPILED_PAYS_CHARS:
        _python_chars += num_chars
        return None
    return load_kernels(num_chars / _PYTHON_ENCODE_CHARS_PER_SECOND)


# ---- the compiled path's first run on a machine: compiling the kernels once ----
# numba compiles the kernels on their first use and keeps the machine code in a disk cache, so later processes load
# it in ~0.3 s. Compiling takes ~25 s of one core (~15 s in parallel processes on 2 cores), several times what
# Python takes to tokenize a few MB. So that no run stalls silently to compile, a process that wants the
# kernels while the cache lacks them says so in one line on stderr and either
#   - keeps to the Python path, when its job takes Python less than compiling would (python_seconds above; the 5 MB
#     Shakespeare corpus: ~3 s to learn its vocab), and starts one background process that compiles the kernels
#     into the cache, at low priority, so the next runs are fast; or
#   - compiles them first (compile_kernels), in parallel processes with a progress bar, when the job is big enough
#     to pay for it.
# The results are the same either way: test_bpe proves both paths equal. Only one process compiles at a time: it
# holds a lock file in the cache folder; the others keep to Python, or wait when their job is big. A marker file
# written there once every kernel is cached tells kernels_cache_status so without importing numba. It records what
# numba's cache depends on (the numba and Python versions, the kernels' source, the CPU), so a change to any of them
# compiles again, as numba would.

_COMPILE_SECONDS = 15  # compile_kernels' wall time, on 2 cores; the background compile takes ~2x (one niced core)
KERNELS_CACHED = "cached"
NUMBA_MISSING = "numba not installed"
KERNELS_COMPILING = "being compiled by another process"
KERNELS_NOT_COMPILED = f"not compiled yet (the first big job compiles them, ~{_COMPILE_SECONDS} s, once per machine)"
_KERNEL_GROUPS = ("encode", "count", "train")  # compiled in parallel by compile_kernels: independent kernels
_MARKER, _LOCK, _LOG = "gpt2_llm_kernels.json", "gpt2_llm_kernels.lock", "gpt2_llm_kernels.log"
_background_compile_started = False  # this process started one, or found one running: it tries no other


def kernels_cache_status():
    """Whether the compiled kernels are in numba's disk cache for this machine, found without importing numba or
    compiling anything: KERNELS_CACHED, KERNELS_COMPILING (another process is compiling them), KERNELS_NOT_COMPILED
    or NUMBA_MISSING. kernels_cache_status() -> "cached" """
    expected = _cache_marker()
    if expected is None:
        return NUMBA_MISSING
    folder = kernel_cache_folder()
    if _read_marker(folder) == expected:
        return KERNELS_CACHED
    return KERNELS_COMPILING if _compile_lock_is_held(folder) else KERNELS_NOT_COMPILED


def _cache_marker():
    """What numba's cached kernels depend on, as the marker file records it; None where numba is not installed."""
    from importlib import metadata

    if "numba" in sys.modules and sys.modules["numba"] is None:  # blocked, as the tests do to mean "not installed"
        return None
    try:
        numba_version = metadata.version("numba")
    except metadata.PackageNotFoundError:
        return None
    sources = hashlib.sha256()
    for name in ("kernels.py", "training_kernels.py"):
        path = os.path.join(_kernels_folder(), name)
        with open(path, "rb") as f:
            sources.update(f.read())
        stat = os.stat(path)  # numba keys its cache by the source's time and size: a fresh checkout recompiles
        sources.update(f"{stat.st_mtime}:{stat.st_size}".encode())
    return {"numba": numba_version, "python": list(sys.version_info[:2]), "sources": sources.hexdigest(),
            "cpu": _cpu_description()}


def _kernels_folder():
    """The folder of the kernel modules (gpt2_llm/tokenizer/), found without importing the package."""
    from importlib.util import find_spec

    return os.path.join(find_spec("gpt2_llm").submodule_search_locations[0], "tokenizer")


def _cpu_description():
    """The CPU numba compiles for: its model and instruction-set flags (Linux), or what the platform reports."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            first_cpu = f.read().split("\n\n", 1)[0]
        lines = [line for line in first_cpu.splitlines() if line.startswith(("model name", "flags", "Features"))]
    except OSError:
        lines = []
    return hashlib.sha256("\n".join([platform.machine(), platform.processor(), *lines]).encode()).hexdigest()[:16]


def kernel_cache_folder():
    """The folder numba caches the kernels in: the first writable of NUMBA_CACHE_DIR, __pycache__ beside the kernel
    modules, numba's user cache folder, and the temp folder that gpt2_llm/tokenizer/kernels.py falls back to (numba's own
    order, which tests check against numba). kernel_cache_folder() -> ".../gpt2_llm/tokenizer/__pycache__" """
    folder = _kernels_folder()
    # numba names a cache folder outside the source tree after the source folder's name and a hash of its path
    subfolder = f"{os.path.basename(folder)}_{hashlib.sha1(folder.encode()).hexdigest()}"
    if sys.platform == "win32":
        user_cache = os.path.join(os.environ.get("LOCALAPPDATA", os.path.expanduser("~")), "numba", "numba", "Cache")
    elif sys.platform == "darwin":
        user_cache = os.path.expanduser("~/Library/Caches/numba")
    else:
        user_cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "numba")
    candidates = [os.path.join(os.environ["NUMBA_CACHE_DIR"], subfolder)] if os.environ.get("NUMBA_CACHE_DIR") else []
    candidates += [os.path.join(folder, "__pycache__"), os.path.join(user_cache, subfolder)]
    writable = next((c for c in candidates if _could_write_in(c)), None)
    return writable or os.path.join(tempfile.gettempdir(), f"gpt2_llm_numba_cache_{getattr(os, 'getuid', str)()}",
                                    subfolder)


def _could_write_in(folder):
    """Whether folder is writable, or could be made in its nearest existing parent: as numba checks, less the write."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def _read_marker(folder):
    try:
        with open(os.path.join(folder, _MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _compile_lock_is_held(folder):
    if fcntl is None:
        return False
    try:
        fd = os.open(os.path.join(folder, _LOCK), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _open_compile_lock(folder):
    """The lock file of folder's compiles, opened (made if need be), not locked yet."""
    os.makedirs(folder, exist_ok=True)
    return open(os.path.join(folder, _LOCK), "a")


def _note_compiling_pid(lock, pid):
    """Write in the lock file which process compiles, for a person (or a test) to find it."""
    lock.truncate(0)
    lock.write(f"{pid}\n")
    lock.flush()


def _start_background_compile():
    """Start a process that compiles the kernels into the cache at low priority, unless one runs already; say so on
    stderr. False where that cannot be done here (no fcntl: Windows): then the caller compiles them itself."""
    global _background_compile_started
    if fcntl is None:
        return False
    if _background_compile_started:
        return True
    _background_compile_started = True
    folder = kernel_cache_folder()
    with _open_compile_lock(folder) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("The tokenizer's compiled kernels are being compiled by another process (once per machine); this "
                  "run uses the Python path", file=sys.stderr)
            return True
        with open(os.path.join(folder, _LOG), "w") as log:
            # The child inherits the locked file, so the lock is held until it exits, even after this one closes it.
            child = subprocess.Popen(_compile_command(_KERNEL_GROUPS, background=True), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, pass_fds=(lock.fileno(),), start_new_session=True)
        _note_compiling_pid(lock, child.pid)
    print(f"Compiling the tokenizer's kernels in the background (once per machine, ~{2 * _COMPILE_SECONDS} s); this "
          "run uses the Python path, the next runs the compiled one, several times faster", file=sys.stderr)
    return True


def compile_kernels(progress=True):
    """Compile the kernels into numba's disk cache now, unless they are there: one line on stderr, then a progress
    bar (on a terminal) while the groups compile in parallel processes. Waits for a compile in another process."""
    folder = kernel_cache_folder()
    with _open_compile_lock(folder) if fcntl else suppress() as lock:
        if fcntl:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print("Waiting for the tokenizer's kernels, being compiled by another process (once per machine)",
                      file=sys.stderr)
                fcntl.flock(lock, fcntl.LOCK_EX)
            _note_compiling_pid(lock, os.getpid())
        expected = _cache_marker()
        if _read_marker(folder) == expected:
            return
        print(f"Compiling the tokenizer's kernels (once per machine, ~{_COMPILE_SECONDS} s; later runs load them in "
              "under a second)", file=sys.stderr)
        children = [subprocess.Popen(_compile_command([group]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for group in _KERNEL_GROUPS]
        show = progress and sys.stderr.isatty()
        for group, child in tqdm(zip(_KERNEL_GROUPS, children), total=len(children), desc="Compiling kernels",
                                 unit="group", disable=not show):
            _, errors = child.communicate()
            if child.returncode:
                raise RuntimeError(f"compiling the tokenizer's {group} kernels failed:\n{errors}")
        atomic_write(os.path.join(folder, _MARKER), json.dumps(expected))


def _compile_command(groups, background=False):
    """The command line of a Python process that runs compile_in_this_process(groups, background)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import bpe; bpe.compile_in_this_process(sys.argv[3:], "
    code += f"write_marker={background})"
    return [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), "--", *groups]


def compile_in_this_process(groups, write_marker=False):
    """Compile the kernel groups (of _KERNEL_GROUPS) into numba's disk cache by running the compiled path on tiny
    inputs, so each kernel compiles for the argument types real calls give it; then, if asked, write the marker
    that says every kernel is cached. A background compile does all of this, niced, in one process."""
    global _kernels
    if write_marker:
        with suppress(OSError, AttributeError):
            os.nice(10)  # leave the cores to the run that started it
    from gpt2_llm.tokenizer import kernels as _kernels
    from gpt2_llm.tokenizer import training_kernels

    text, chunk_counts = "Hi hi, héllo 42!\n", {"hi": 2, " hi": 1}
    if "encode" in groups:
        bpe = BPE()
        bpe._build(range(256), [(104, 105)])
        bpe._encode(text, (), _kernels)
    if "count" in groups:
        counts, more = ChunkCounts(training_kernels), ChunkCounts(training_kernels)
        counts.add_text(text)
        more.add_text(text)
        counts.update(more)
        counts.select(counts.values() > 1)
    if "train" in groups:
        train_merges_compiled(chunk_counts, 1, training_kernels)
    for kernel in (_kernels.encode_utf8, training_kernels.count_utf8, training_kernels.train_merges):
        if kernel.stats.cache_path != kernel_cache_folder():  # then kernels_cache_status would look in vain
            raise RuntimeError(f"numba caches in {kernel.stats.cache_path}, not in {kernel_cache_folder()}")
    if write_marker:
        atomic_write(os.path.join(kernel_cache_folder(), _MARKER), json.dumps(_cache_marker()))


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
    """text's UTF-8 bytes as a uint8 array, with its _regex_regions: the first three arguments of encode_utf8."""
    data = _utf8(text)
    return (np.frombuffer(data, np.uint8), *_regex_regions(text, len(data)))


# ---- training: learn the merges ----

def count_chunks(text, counts=None):
    """{pre-split chunk: how often it occurs}: all that training needs from a text, added to counts if given.
    Counts of pieces of a text cut where cutting changes no chunk (see split_for_workers) add up to the whole's.

    count_chunks("the cat the") -> Counter({"the": 1, " cat": 1, " the": 1})
    """
    counts = Counter() if counts is None else counts
    counts.update(_split(text))
    return counts


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


# The compiled training (gpt2_llm/tokenizer/training_kernels.py) learns train_merges' merges, in the same order, ~10x faster
# and in a fraction of the memory: flat arrays instead of a list of ints per chunk and dicts of tuples. test_bpe proves
# the merges equal. Loading numba costs ~0.3 s, what Python spends training on a few thousand distinct chunks, so
# smaller trainings (tests, create_vocab on a short text) stay in Python, as do all where numba is not installed.
# It also counts chunks (ChunkCounts, below), for corpora big enough to pay numba's load: gpt2_llm/tokenizer/vocab.py decides.
_COMPILED_TRAINING_MIN_CHUNKS = 1 << 13
_PYTHON_TRAINING_CHUNKS_PER_SECOND = 16_000  # train_merges to a vocab of ~10k (the 5 MB Shakespeare: 36k chunks)


def load_training_kernels(python_seconds=float("inf")):
    """gpt2_llm.tokenizer.training_kernels, imported on first use; None where numba is not installed, or while the kernels
    compile for a job that Python ends in python_seconds (see load_kernels)."""
    if not load_kernels(python_seconds):
        return None
    from gpt2_llm.tokenizer import training_kernels

    return training_kernels


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


def compiled_chunk_counts(python_seconds=float("inf")):
    """An empty ChunkCounts where numba is installed, else None: count with count_chunks. python_seconds: how long
    the job would take in Python, for load_kernels to weigh against compiling the kernels on a machine's first run."""
    kernels = load_training_kernels(python_seconds)
    return kernels and ChunkCounts(kernels)


class ChunkCounts:
    """count_chunks' counts, counted by compiled code (gpt2_llm/tokenizer/training_kernels.py) into flat arrays: several
    times faster, and ~40 bytes per distinct chunk plus its bytes instead of a Counter's ~150. For corpora too big to
    count in Python (gpt2_llm/tokenizer/vocab.py's learn_vocab); only where numba is installed (compiled_chunk_counts).
    Pickles as its arrays, so a worker process can send it back. create_vocab_from_counts takes it as it is.

    counts = compiled_chunk_counts(); counts.add_text("the cat the")
    counts.to_dict() -> {"the": 1, " cat": 1, " the": 1}
    """

    def __init__(self, kernels):
        self._kernels, self._table = kernels, kernels.new_chunk_table()

    def __len__(self):
        return self._table[-1]

    def add_text(self, text):
        """Count text's pre-split chunks, like count_chunks(text, counts)."""
        self._table = self._kernels.count_utf8(self._table, *_utf8_with_regions(text))

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
        kept = ChunkCounts(self._kernels)
        kept_starts = np.concatenate([[0], np.cumsum(lengths[keep])])
        kept._table = self._kernels.add_counts(kept._table, data[np.repeat(keep, lengths)], kept_starts, counts[keep])
        return kept

    def to_dict(self):
        """{chunk: count}, what count_chunks would have counted."""
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
        return self._table[0], starts, counts, data, len(self)  # the arrays without their spare room

    def __setstate__(self, table):
        self._kernels, self._table = load_training_kernels(), table


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


def _format_vocab(token_bytes, parents):
    """The vocab file's text for the regular tokens token_bytes (a list of bytes, in id order) and parents
    (merged id -> the pair it merges); <|endoftext|> takes the id after the last token.

    _format_vocab([bytes([b]) for b in range(256)] + [b"aa"], {256: (97, 97)}) -> "#gpt2-llm-bpe v1\n...256 aa 97 97\n"
    """
    eot_id = len(token_bytes)
    lines = [
        FORMAT_HEADER,
        f"#pattern {GPT2_PATTERN}",
        f"#tokens {eot_id}",
        f"#special {EOT} {eot_id}",
        "# one token per line: id, its bytes (printable ASCII as-is, ␣ = space, \\\\ = backslash, \\xNN = other"
        " bytes), and for merged tokens the two ids merged (the merge order is the id order)",
    ]
    for token_id, data in enumerate(token_bytes):
        text = "".join(_ESCAPES[b] for b in data)
        pair = parents.get(token_id)
        lines.append(f"{token_id} {text} {pair[0]} {pair[1]}" if pair else f"{token_id} {text}")
    return "\n".join(lines) + "\n"


def _parse_vocab(text, path):
    """Check and read a vocab file; returns (byte_values, merges) for BPE._build. The inverse of _format_vocab."""
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
    return byte_values, list(merges)


class BPE:
    """GPT-2 byte-level BPE. ids 0..255 are the 256 single bytes (in any order: GPT-2's files use their own), id
    256 + k is the k-th merge, and the special token <|endoftext|> comes right after the last merge.

    A fresh BPE() has no merges yet: it encodes every byte as its own token, and the vocab has 257 entries.
    """

    def __init__(self, vocab_path="vocab.txt"):
        self.vocab_path = vocab_path
        self._target_vocab_size = None
        self._build(list(range(256)), [])

    # ---- building and inspecting the vocab ----

    def _build(self, byte_values, merges):
        """Derive every lookup table from the two things that define the vocab: which byte each of ids 0..255 is,
        and the list of merged pairs (merge k makes id 256 + k)."""
        self._byte_values = list(byte_values)
        self._merge_list = list(merges)
        self._token_bytes = [bytes([b]) for b in self._byte_values]
        self._merges, self._parents = {}, {}
        for new_id, (a, b) in enumerate(self._merge_list, start=256):
            self._merges[a, b] = new_id
            self._parents[new_id] = (a, b)
            self._token_bytes.append(self._token_bytes[a] + self._token_bytes[b])
        self._eot_id = len(self._token_bytes)
        self._token_bytes.append(EOT.encode("utf-8"))
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
            return {EOT}
        unknown = set(allowed_special) - {EOT}
        if unknown:
            raise UserError(f"unknown special token(s) {sorted(unknown)}; this vocab has only {EOT}")
        return set(allowed_special)

    def encode_ordinary(self, text):
        """Encode text with no special tokens: "<|endoftext|>" in it is plain text. "hello world" -> [31373, 995]"""
        return self.encode(text)

    def encode_ordinary_plain(self, text):
        """encode_ordinary in Python: the pre-split, then each chunk through the chunk cache (the reference path)."""
        return list(chain.from_iterable(map(self._cache.__getitem__, _split(text))))

    def encode(self, text, allowed_special=()):
        """Text -> token ids. <|endoftext|> becomes its special id only when allowed_special holds it (or is "all");
        otherwise it is encoded as ordinary text, like tiktoken's encode_ordinary.

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
        parts = text.split(EOT) if specials else [text]
        if kernels is None:
            encode_part, join = self.encode_ordinary_plain, lambda pieces: list(chain.from_iterable(pieces))
        else:
            tables = self._compiled_tables(kernels)
            encode_part = lambda part: kernels.encode_utf8(*_utf8_with_regions(part), *tables)  # noqa: E731
            join = np.concatenate
        pieces = [encode_part(parts[0])]
        for part in parts[1:]:
            pieces += [[self._eot_id], encode_part(part)]
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
        """Encode a whole UTF-8 file on all cores, with exactly the ids of encode (see part 3). Returns a numpy
        array, uint16 when the vocab fits (GPT-2's does), else uint32. progress=True shows a bar of pieces done when
        stderr is a terminal."""
        return encode_file_in_parallel(self, path, num_workers, allowed_special, progress)

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
        return _format_vocab(self._token_bytes[: self._eot_id], self._parents)

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
        """Load OpenAI's GPT-2 files (encoder.json: token -> id, vocab.bpe: the merges in rank order; see part 2).
        Encodes exactly like tiktoken."""
        byte_values, merges = read_gpt2_files(encoder_json_path, vocab_bpe_path)
        bpe = cls(vocab_path)
        bpe._build(byte_values, merges)
        return bpe


# ======================================================================================================================
# 2. OpenAI's GPT-2 files: encoder.json and vocab.bpe into the same vocab
# ======================================================================================================================
# OpenAI ship GPT-2's vocab as encoder.json (token -> id) and vocab.bpe (the merges in rank order), with every byte
# spelled as a printable character. Reading them gives the two things that define a vocab here: which byte each of
# ids 0..255 is, and the list of merged pairs.


def _gpt2_bytes_to_unicode():
    """GPT-2's files spell each byte as a printable character: printable Latin-1 stands for itself, the other bytes
    are shifted to U+0100 and up. {32: "Ġ", 97: "a", 10: "Ċ", ...}"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for shift, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + shift)
    return mapping


def read_gpt2_files(encoder_json_path, vocab_bpe_path):
    """(byte_values, merges) for BPE._build from OpenAI's files, whose tokens are spelled with GPT-2's
    byte-to-unicode characters ("Ġthe" is b" the"); UserError when the two files do not make one vocab.

    read_gpt2_files("encoder.json", "vocab.bpe") -> ([33, 34, ...], [(220, 83), (220, 64), ...])  # Ġ t, Ġ a, ...
    """
    try:
        encoder = json.loads(read_text_file(encoder_json_path))
    except json.JSONDecodeError as e:
        raise UserError(f"{encoder_json_path} is not valid JSON: {e.msg} (line {e.lineno})") from e
    byte_decoder = {char: b for b, char in _gpt2_bytes_to_unicode().items()}
    id_to_token = {token_id: token for token, token_id in encoder.items() if token != EOT}
    byte_values = []
    for token_id in range(256):
        token = id_to_token.get(token_id, "")
        if len(token) != 1 or token not in byte_decoder:
            raise UserError(f"{encoder_json_path}: id {token_id} should be a single byte, found {token!r}")
        byte_values.append(byte_decoder[token])
    merges = []
    lines = read_text_file(vocab_bpe_path).split("\n")
    lines = [line for line in lines[1 if lines[0].startswith("#version") else 0 :] if line]
    for rank, line in enumerate(lines):
        left, _, right = line.partition(" ")
        ids = encoder.get(left), encoder.get(right), encoder.get(left + right)
        if None in ids or ids[2] != 256 + rank:
            raise UserError(f"{vocab_bpe_path}: merge {rank} ({line!r}) does not match {encoder_json_path}")
        if max(ids[:2]) >= ids[2]:  # as in a vocab.txt; merge_by_rank_fast relies on it
            raise UserError(f"{vocab_bpe_path}: merge {rank} ({line!r}) uses a token that is merged only after it")
        merges.append(ids[:2])
    if encoder.get(EOT) != 256 + len(merges) or len(encoder) != 257 + len(merges):
        raise UserError(f"{encoder_json_path} and {vocab_bpe_path} do not belong together")
    return byte_values, merges


# ======================================================================================================================
# 3. The parallel file encoder: big files on all cores, with exactly the ids of encode
# ======================================================================================================================
# A text is cut only where cutting provably changes no token; each piece is encoded by a worker (a thread running the
# compiled path, else a process) and the ids are joined in order.

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


def encode_file_in_parallel(bpe, path, num_workers=None, allowed_special=(), progress=False):
    """BPE.encode_file: read the file, cut it with split_for_workers, encode the pieces on num_workers cores and join
    the ids in order. Small files and num_workers=1 are encoded here, in one thread."""
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
    if kernels and (text.isascii() or _is_mostly_ascii(len(text), len(_utf8(text)))):
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
