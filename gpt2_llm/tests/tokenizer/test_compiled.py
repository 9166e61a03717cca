"""Tests for gpt2_llm/tokenizer/compiled.py: the compiled kernels load only when they pay, and a machine's first run
compiles them once, never silently: in the background while Python serves a small job, first for a big one; the
cache folder is numba's; the kernel modules import only numpy and numba."""
import os
import subprocess
import sys

import pytest

from bpe import BPE
from gpt2_llm.tests.tokenizer_fixtures import (
    ENCODER_JSON,
    REPO,
    TRICKY,
    VOCAB_BPE,
    needs_kernels,
    stop_background_compile,
)
from gpt2_llm.tokenizer import compiled


def test_short_texts_do_not_import_numba():
    # The CLI's encode of a line must not pay numba's import; once the texts encoded add up to what loading the
    # compiled path costs (here lowered to 100k characters), the next text takes it, where there is one.
    code = (
        "import sys, bpe; from gpt2_llm.tokenizer import compiled; compiled._COMPILED_PAYS_CHARS = 100_000\n"
        "b = bpe.BPE(); b.encode('hello ' * 10_000); assert 'numba' not in sys.modules\n"
        "b.encode('hello ' * 10_000); assert ('numba' in sys.modules) == (compiled.load_kernels() is not None)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("check", [
    "compiled._COMPILED_PAYS_CHARS = 0; b = bpe.BPE(); text = open('data/shakespeare.txt').read(300_000)\n"
    "assert b.encode(text) == b.encode_ordinary_plain(text) and compiled.load_kernels() is None",
    "training._COMPILED_TRAINING_MIN_CHUNKS = 0; b = bpe.BPE(); b.set_vocab_size(300)\n"
    "b.create_vocab(open('data/shakespeare.txt').read(20_000), verbose=False); assert b.vocab_size == 300\n"
    "assert compiled.load_training_kernels() is None\n"
    "assert training.compiled_chunk_counts(bpe._utf8_with_regions) is None",
], ids=["encode", "training"])
def test_without_numba_runs_in_python(check):
    code = ("import sys; sys.modules['numba'] = None  # as if not installed\n"
            "import bpe; from gpt2_llm.tokenizer import compiled, training\n" + check)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---- the first run on a machine: the kernels compile once, never silently ----


def run_python(code, cache_dir, args=(), **kwargs):
    """Run code in a fresh Python in the repository's root with numba's disk cache in cache_dir; returns the
    CompletedProcess."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, check=True, capture_output=True,
                          text=True, **kwargs)


def test_cache_status_needs_no_numba(tmp_path):
    code = (
        "import sys, bpe; from gpt2_llm.tokenizer import compiled; status = compiled.kernels_cache_status()\n"
        "assert 'numba' not in sys.modules, 'imported numba'; assert status == compiled.KERNELS_NOT_COMPILED, status\n"
        "sys.modules['numba'] = None; assert compiled.kernels_cache_status() == compiled.NUMBA_MISSING"
    )
    run_python(code, tmp_path)


@needs_kernels
@pytest.mark.parametrize("cache", ["NUMBA_CACHE_DIR", "in the source tree", "nowhere writable"])
def test_cache_folder_is_numbas(tmp_path, cache):
    # kernel_cache_folder finds, without numba, the folder numba's own cache locators pick for the kernels
    code = (
        "from gpt2_llm.tokenizer import compiled, kernels\n"
        "assert compiled.kernel_cache_folder() == kernels.encode_utf8.stats.cache_path, "
        "(compiled.kernel_cache_folder(), kernels.encode_utf8.stats.cache_path)"
    )
    env, tree = dict(os.environ), REPO
    env.pop("NUMBA_CACHE_DIR", None)
    if cache == "NUMBA_CACHE_DIR":
        env["NUMBA_CACHE_DIR"] = str(tmp_path)
    elif cache == "nowhere writable":
        # A copy of the kernels and what compiled.py imports, whose __pycache__ and user cache folder are files, not
        # folders: numba can write in neither (as in a read-only install, even as root), so the kernels module picks
        # a folder in the temp folder.
        tree = tmp_path / "tree"
        (tree / "gpt2_llm" / "tokenizer").mkdir(parents=True)
        for name in ("__init__.py", "errors.py", "files.py", "tokenizer/__init__.py", "tokenizer/compiled.py",
                     "tokenizer/kernels.py"):
            (tree / "gpt2_llm" / name).write_bytes((REPO / "gpt2_llm" / name).read_bytes())
        (tree / "gpt2_llm" / "tokenizer" / "__pycache__").write_text("not a folder")
        (tmp_path / "file").write_text("not a folder")
        env.update(XDG_CACHE_HOME=str(tmp_path / "file" / "cache"), PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True)


@needs_kernels
def test_first_run_stays_in_python_while_the_kernels_compile_in_the_background(tmp_path, shakespeare):
    # An empty cache and a job Python ends before a compile would: the Python path serves it, the same merges and
    # ids, with one line on stderr, in this process and in the forked encode_file workers alike.
    (tmp_path / "text.txt").write_bytes((shakespeare[:100_000] + TRICKY).encode("utf-8"))
    code = (
        "import sys, bpe; from gpt2_llm.files import read_text_file; from gpt2_llm.tokenizer import compiled, "
        "parallel, training\n"
        "training._COMPILED_TRAINING_MIN_CHUNKS = compiled._COMPILED_PAYS_CHARS = parallel._MIN_PARALLEL_CHARS = 0\n"
        "text = read_text_file(sys.argv[1]); b = bpe.BPE(); b.set_vocab_size(600)\n"
        "b.create_vocab(text, verbose=False)\n"
        "assert b._merge_list == training.train_merges(bpe.count_chunks(text), 343)\n"
        "assert b.encode(text) == b.encode_ordinary_plain(text)\n"
        "assert b.encode_file(sys.argv[1], num_workers=2).tolist() == b.encode_ordinary_plain(text)\n"
        "assert 'numba' not in sys.modules, 'this process compiled'; print(compiled.kernels_cache_status())"
    )
    cache = tmp_path / "cache"
    try:
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "text.txt")], cwd=REPO, check=True,
                                env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)), capture_output=True, text=True)
    finally:
        stop_background_compile(cache)
    assert result.stdout.strip() == compiled.KERNELS_COMPILING
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "in the background (once per machine" in lines[0], result.stderr


@needs_kernels
def test_a_big_first_job_compiles_the_kernels_first_and_says_so(tmp_path, shakespeare):
    # A job big enough to pay the compile waits for it, with a message; then the cache serves every later process.
    # (The encoding kernels alone, to keep the test short: the training ones compile alike.)
    code = (
        "import sys, bpe; from gpt2_llm.tokenizer import compiled\n"
        "compiled._COMPILE_SECONDS = 0; compiled._COMPILED_PAYS_CHARS = 0; compiled._KERNEL_GROUPS = ('encode',)\n"
        "ids = bpe.BPE.from_gpt2(sys.argv[1], sys.argv[2]).encode(sys.stdin.read())\n"
        "print(ids, compiled.load_kernels() is not None)"
    )
    text = shakespeare[:100_000] + TRICKY
    first = run_python(code, tmp_path, input=text, args=[ENCODER_JSON, VOCAB_BPE])
    assert first.stderr.startswith("Compiling the tokenizer's kernels (once per machine"), first.stderr
    assert first.stdout.strip() == f"{BPE.from_gpt2(ENCODER_JSON, VOCAB_BPE).encode_ordinary_plain(text)} True"
    status = run_python("from gpt2_llm.tokenizer import compiled; print(compiled.kernels_cache_status())", tmp_path)
    assert status.stdout.strip() == "cached"
    second = run_python(code, tmp_path, input=text, args=[ENCODER_JSON, VOCAB_BPE])
    assert second.stderr == "" and second.stdout == first.stdout


def test_kernels_import_only_numpy_and_numba():
    code = "import sys, gpt2_llm.tokenizer.kernels; assert 'torch' not in sys.modules and 'bpe' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_training_kernels_import_only_numpy_numba_and_the_encoding_kernels():
    code = (
        "import sys, gpt2_llm.tokenizer.training_kernels\n"
        "assert 'torch' not in sys.modules and 'bpe' not in sys.modules and 'gpt2_llm.tokenizer.vocab' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)

