"""Benchmark corpora of real, varied text: what the data benches tokenize, built once and kept in /tmp.

    python bench/corpus.py --size 200M [--out DIR] [--single-file]     # prints the folder (or file) it made

    from bench.corpus import build_corpus; path = build_corpus("200M")  # the same, from another bench

The text is every distinct text file that the installed packages ship (~400 MB): the Python, C headers, docs,
licenses, HTML and JSON under the venv's site-packages, /usr/lib/python3*, /usr/include and /usr/share (docs
included). A file is taken whole, once (duplicates by content are dropped), when it is UTF-8 (bytes that are not
are replaced by U+FFFD) and has no NUL byte (a binary file); files over MAX_FILE_BYTES are left out so that a few
data tables do not make up the corpus. The files are shuffled (seeded), so any size samples every kind of text.

Real corpora of 2 GB hold far more distinct words than 200 MB do, and a bench that repeats one text warms every
cache and hides that cost. There is not 2 GB of distinct text here, so past the first pass over the files, pass
k (1, 2, ...) writes each file through its own letter substitution cipher (a seeded permutation of a-z, the same
one on A-Z, and another of 0-9): the words of pass k are new words, with English's letter statistics gone but
its word lengths, punctuation and layout kept. This is harsher than real text (Heaps' law: the number of
distinct words grows more slowly than the corpus), so the counting's memory on the 2 GB corpus is an upper bound.

The corpus is a folder of files of about FILE_BYTES each (distinct source files joined by a blank line, each
written whole, so a big one makes a bigger file), 100 to a subfolder, as a user's corpus folder looks;
--single-file writes the same bytes as one file instead. Same size, same bytes: deterministic (sorted walk,
seeded shuffle and ciphers). A corpus is built in a temporary folder and renamed when complete, so one that
exists is whole; it is rebuilt only when missing.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2_llm.data.corpus import parse_size  # noqa: E402

CACHE = "/tmp/gpt2-llm-bench"
SEED = 0
FILE_BYTES = 1 << 20  # corpus files of ~1 MB: each is one piece of the package's corpus plan
FILES_PER_FOLDER = 100
MAX_FILE_BYTES = 4 << 20
TEXT_SUFFIXES = (".py", ".pyi", ".txt", ".md", ".rst", ".h", ".hpp", ".c", ".cc", ".cpp", ".cu", ".cuh", ".html",
                 ".htm", ".json", ".js", ".css", ".xml", ".tex", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh",
                 ".pl", ".pm", ".f", ".f90", ".pxd", ".pyx", ".svg")


def source_roots():
    return [sysconfig.get_paths()["purelib"], *sorted(_glob_python_libs()), "/usr/include", "/usr/share"]


def _glob_python_libs():
    return [os.path.join("/usr/lib", d) for d in os.listdir("/usr/lib") if d.startswith("python3")]


def source_files(roots=None):
    """Every text-suffixed regular file under roots (symlinks not followed), in sorted path order, each path once."""
    found = set()
    for root in roots or source_roots():
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in names:
                path = os.path.join(folder, name)
                if name.lower().endswith(TEXT_SUFFIXES) and os.path.isfile(path) and not os.path.islink(path):
                    found.add(os.path.realpath(path))
    return sorted(found)


def distinct_texts(paths, max_bytes=MAX_FILE_BYTES):
    """Yield each file's text as UTF-8 bytes: non-empty, no NUL, at most max_bytes, each distinct content once.
    Invalid UTF-8 is replaced by U+FFFD (the corpus must be valid UTF-8: the package refuses other files)."""
    seen = set()
    for path in paths:
        try:
            if os.path.getsize(path) > max_bytes:
                continue
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if not data.strip() or b"\0" in data:
            continue
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        yield data.decode("utf-8", "replace").encode("utf-8")


def cipher(k):
    """bytes.translate table of pass k: identity for k == 0, else a seeded substitution of letters and digits.
    ASCII bytes never occur inside a UTF-8 multi-byte character, so the result is still valid UTF-8.
    cipher(0)[ord("a")] == ord("a"); cipher(1) maps b"the" to three other letters, the same each run."""
    table = bytearray(range(256))
    if k:
        rng = random.Random(f"cipher-{k}")
        lower, digits = list(b"abcdefghijklmnopqrstuvwxyz"), list(b"0123456789")
        new_lower, new_digits = rng.sample(lower, 26), rng.sample(digits, 10)
        for a, b in zip(lower, new_lower):
            table[a], table[a - 32] = b, b - 32  # the same letter substitution on upper case
        for a, b in zip(digits, new_digits):
            table[a] = b
    return bytes(table)


def corpus_texts(size, seed=SEED):
    """Yield (pass, text bytes) of the shuffled distinct files, pass after pass through ciphers, until size bytes."""
    texts = list(distinct_texts(source_files()))
    random.Random(seed).shuffle(texts)
    total = sum(len(t) for t in texts)
    written, k = 0, 0
    while written < size:
        table = cipher(k)
        for text in texts:
            if written >= size:
                return
            yield k, text.translate(table)
            written += len(text)
        k += 1
        if k > 1000 or total == 0:
            raise RuntimeError("no text found to build a corpus from")


def build_corpus(size, out=None, single_file=False, log=print) -> str:
    """Path of the corpus of about size bytes ("200M", "2G" or an int; it ends at a file boundary just past size),
    building it if missing. Default place: /tmp/gpt2-llm-bench/corpus-<size>[.txt]."""
    size_bytes = parse_size(size) if isinstance(size, str) else int(size)
    name = f"corpus-{size}" if isinstance(size, str) else f"corpus-{size_bytes}"
    out = out or os.path.join(CACHE, name + (".txt" if single_file else ""))
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    if os.path.isfile(partial):
        os.remove(partial)
    files, sources, passes, total = 0, 0, 0, 0
    if single_file:
        with open(partial, "wb") as f:
            for k, text in corpus_texts(size_bytes):
                f.write(text + b"\n\n")
                sources, passes, total = sources + 1, k + 1, total + len(text) + 2
        files = 1
    else:
        buffer = []
        buffered = 0

        def flush():
            nonlocal files, buffer, buffered
            folder = os.path.join(partial, f"{files // FILES_PER_FOLDER:04d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{files:06d}.txt"), "wb") as f:
                f.write(b"\n\n".join(buffer))
            files, buffer, buffered = files + 1, [], 0

        for k, text in corpus_texts(size_bytes):
            buffer.append(text)
            buffered += len(text) + 2
            sources, passes, total = sources + 1, k + 1, total + len(text) + 2
            if buffered >= FILE_BYTES:
                flush()
        if buffer:
            flush()
    description = {"size": total, "files": files, "source_files": sources, "passes": passes, "seed": SEED,
                   "ciphered_passes": max(0, passes - 1)}
    with open(out + ".json", "w") as f:
        json.dump(description, f)
    os.rename(partial, out)
    log(f"built {out}: {total / 1e6:,.1f} MB in {files} file(s), from {sources} source files "
        f"({passes} pass(es) over the distinct text, {max(0, passes - 1)} of them ciphered)")
    return out


def describe(path) -> dict:
    """What build_corpus recorded about the corpus at path: size, files, source_files, passes."""
    with open(path + ".json") as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="200M", help="about how many bytes: 200M, 2G (powers of 1024)")
    parser.add_argument("--out", help=f"where to write it (default: {CACHE}/corpus-<size>)")
    parser.add_argument("--single-file", action="store_true", help="one big file instead of a folder")
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    print(build_corpus(args.size, args.out, args.single_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
