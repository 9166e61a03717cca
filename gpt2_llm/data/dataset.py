"""Training data: the corpus's tokens (token_cache.py: memory-mapped shards), split and cut into windows.

    tokens = [ ---------------- train ---------------- | ------ val (last 10%) ------ ]
    or, with a separate validation text (--val-file):  train = all of the corpus, val = all of that text

Training batches are random windows of context + 1 tokens drawn over the whole train part (x = w[:-1],
y = w[1:]); only the windows are read from disk. Evaluation uses fixed, non-overlapping windows of the
val part, so every eval scores the same tokens.
"""
import numpy as np
import torch

from gpt2_llm.errors import UserError
from gpt2_llm.data.token_cache import TokenStream

IGNORE_INDEX = -100  # a target the loss skips (model.loss's, and cross_entropy's, default ignore_index)


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
    """A token sequence cut into a train part and the last val_fraction as the val part (or, given
    val_tokens, all of tokens to train on and val_tokens to validate on).

    Train windows start at most at len(train) - context - 1, so they never touch val tokens.
    """

    def __init__(self, tokens, context_length: int, val_fraction: float = 0.1, val_tokens=None):
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        tokens = tokens if isinstance(tokens, TokenStream) else TokenStream([np.asarray(tokens)])
        self.context_length = context_length
        window = context_length + 1
        if val_tokens is not None:
            self.train = tokens
            self.val = val_tokens if isinstance(val_tokens, TokenStream) else TokenStream([np.asarray(val_tokens)])
            if len(self.val) < window:
                raise UserError(f"the validation text has {len(self.val):,} tokens: too few for one window of "
                                f"{window} tokens; use a larger validation file or a smaller --context")
        else:
            num_val = int(round(len(tokens) * val_fraction))
            self.train = tokens.view(0, len(tokens) - num_val)
            self.val = tokens.view(len(tokens) - num_val, len(tokens))
            if val_fraction > 0 and len(self.val) < window:
                raise UserError(
                    f"the corpus has {len(tokens):,} tokens: too few for one window of {window} tokens "
                    f"in both the train part and the last {val_fraction:g} (validation); use a larger file, "
                    f"a smaller --context or a different --val-fraction"
                )
        if len(self.train) < window:
            raise UserError(f"the corpus has {len(self.train):,} training tokens: too few for one window of "
                            f"{window} tokens; use a larger file or a smaller --context")

    def windows_per_epoch(self) -> int:
        """Context-long windows in the train part: an epoch, in batch rows."""
        return len(self.train) // self.context_length

    def sample_prompt(self) -> torch.Tensor:
        """What the trainer's samples continue: the start of the val text."""
        return torch.from_numpy(self.val[:8].astype(np.int64))

    def describe(self) -> str:
        return f"{len(self.train):,} train / {len(self.val):,} val tokens"

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
