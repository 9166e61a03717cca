"""Training data: a text file tokenized once into a cached token array, split, and cut into windows.

    shakespeare.txt --BPE.encode_file (all cores)--> shakespeare.txt.<key>.tokens.npy  (memory-mapped)
    tokens = [ ---------------- train ---------------- | ------ val (last 10%) ------ ]

The cache key hashes the file's bytes and the vocabulary, so editing either re-tokenizes. Training
batches are random windows of context + 1 tokens from the train part (x = w[:-1], y = w[1:]);
evaluation uses fixed, non-overlapping windows of the val part, so every eval scores the same tokens.
"""
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from bpe import atomic_write
from gpt2_llm.errors import UserError


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large corpora do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def token_dtype(vocab_size: int):
    """Smallest unsigned dtype that holds every id: token_dtype(8192) -> uint16."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def cache_key(text_path, bpe) -> str:
    """Short hex key of (file contents, vocab): 16 hex digits are plenty to tell versions apart."""
    return hashlib.sha256(f"{file_sha256(text_path)}:{bpe.fingerprint()}".encode()).hexdigest()[:16]


def cache_path(text_path, key) -> Path:
    """Beside the text file (`data.txt.<key>.tokens.npy`), or in the user cache if that is read-only."""
    text_path = Path(text_path)
    beside = text_path.with_name(f"{text_path.name}.{key}.tokens.npy")
    if os.access(text_path.parent, os.W_OK):
        return beside
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2-llm"
    return cache_dir / beside.name


def load_tokens(text_path, bpe, log=print) -> np.ndarray:
    """All tokens of a text file as a read-only memory-mapped array, tokenizing on first use.

    The special <|endoftext|> is not parsed from the text: the file is data, not markup.
    """
    text_path = Path(text_path)
    if text_path.is_dir():
        raise UserError(f"training file {text_path} is a directory, expected a text file")
    if not text_path.is_file():
        raise UserError(f"training file {text_path} not found")
    path = cache_path(text_path, cache_key(text_path, bpe))
    if path.exists():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:  # unreadable cache: rebuild it rather than fail
            log(f"Token cache {path} is unreadable ({e}); re-tokenizing")
    log(f"Tokenizing {text_path} on all cores (once; cached in {path})")
    start = time.perf_counter()
    tokens = np.asarray(bpe.encode_file(str(text_path), progress=True), dtype=token_dtype(bpe.vocab_size))
    save_array_atomic(path, tokens)
    seconds = time.perf_counter() - start
    log(f"Tokenized {text_path.stat().st_size:,} bytes into {len(tokens):,} tokens in {seconds:.1f}s")
    return np.load(path, mmap_mode="r")


def save_array_atomic(path, array: np.ndarray) -> None:
    """np.save through atomic_write (in a folder it creates if needed): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temp_path):
        with open(temp_path, "wb") as f:  # a file object: np.save would add ".npy" to a bare path
            np.save(f, array)

    atomic_write(path, write)


def token_byte_lengths(bpe, size: int) -> np.ndarray:
    """UTF-8 byte length of every token id below size; special and padding ids count 0 bytes.

    For bits per byte: the val text a window's targets decode to is sum(lengths[targets]) bytes.
    """
    lengths = np.zeros(size, dtype=np.int64)
    for token_id, piece in bpe.token_bytes().items():  # <|endoftext|> is not among them: it stands for no text
        if token_id < size:
            lengths[token_id] = len(piece)
    return lengths


class TokenDataset:
    """A token array cut into a train part and the last val_fraction as the val part.

    Train windows start at most at len(train) - context - 1, so they never touch val tokens.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, val_fraction: float = 0.1):
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        self.context_length = context_length
        window = context_length + 1
        num_val = int(round(len(tokens) * val_fraction))
        self.train = tokens[: len(tokens) - num_val]
        self.val = tokens[len(tokens) - num_val :]
        if len(self.train) < window or (val_fraction > 0 and len(self.val) < window):
            raise UserError(
                f"the file has {len(tokens):,} tokens: too few for one window of {window} tokens "
                f"in both the train part and the last {val_fraction:g} (validation); use a larger file, "
                f"a smaller --context or a different --val-fraction"
            )

    def random_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """batch_size random train windows -> x, y int64 (B, T) on the CPU, y shifted by one."""
        T = self.context_length
        starts = torch.randint(0, len(self.train) - T, (batch_size,), generator=generator).tolist()
        windows = np.stack([self.train[s : s + T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]

    def eval_starts(self, max_tokens: int) -> list[int]:
        """Starts of the fixed val windows: stride T (each val token is a target at most once), at
        most max_tokens // T of them, spread evenly over the val part.

        With len(val) = 10, T = 3, max_tokens = 6: windows at 0, 3, 6 fit; 2 are kept -> [0, 3].
        """
        T = self.context_length
        num_windows = (len(self.val) - 1) // T
        keep = max(1, min(num_windows, max_tokens // T))
        return [(i * num_windows // keep) * T for i in range(keep)]

    def eval_batches(self, batch_size: int, max_tokens: int):
        """Yield (x, y) int64 batches covering the fixed val windows, in order."""
        T = self.context_length
        starts = self.eval_starts(max_tokens)
        for i in range(0, len(starts), batch_size):
            windows = np.stack([self.val[s : s + T + 1] for s in starts[i : i + batch_size]]).astype(np.int64)
            windows = torch.from_numpy(windows)
            yield windows[:, :-1], windows[:, 1:]
