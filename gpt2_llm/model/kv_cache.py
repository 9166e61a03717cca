"""A static key/value cache for incremental decoding (gpt-fast style).

Each layer owns a buffer (B, nh, max_seq_len, hs) for keys and one for values, written in place
at the current length, so decoding one token costs one token of work instead of re-running the
whole prefix. Buffers are allocated on the first write, on the device of the keys being written
and in their dtype, unless the cache was given one: a bf16 model may keep an fp32 cache (see
generation.cache_dtype), and attention then runs in the cache's precision.

    cache = model.new_cache()
    logits = model(prompt, cache)            # prefill: cache.length == prompt length
    logits = model(next_token[:, None], cache)  # one step: cache.length += 1

Rows may also stand at different lengths, as a server's batch does (a request that arrives while others
decode starts at position 0 beside rows at position 300): the caller keeps each row's length and passes
them as RowPositions (model.hidden_states(ids, cache, positions=[300, 12])); each row then writes its one
new key at its own position and attends to its own positions only. `rows(begin, end)` is a cache over some
rows of the same buffers (a server's slots), with no copy.
"""
from typing import NamedTuple

import torch

from gpt2_llm.errors import UserError


class RowPositions(NamedTuple):
    """Each row's position for one new token per row, as rows of a cache at different lengths have them.

    RowPositions.of([300, 12]) -> positions tensor([300, 12]), num_keys 301, mask (2, 1, 1, 301) with
    mask[1, 0, 0, :13] True and the rest of row 1 False: row 1 attends to its 13 positions only.
    """

    positions: torch.Tensor  # (B,) long: where row b's new token goes
    num_keys: int  # the longest row's length after this token: the keys every row's attention reads
    mask: torch.Tensor  # (B, 1, 1, num_keys) bool: True where row b may look

    @classmethod
    def of(cls, positions, device=None) -> "RowPositions":
        positions = torch.as_tensor(positions, dtype=torch.long, device=device)
        num_keys = int(positions.max()) + 1  # once per step, not once per layer
        mask = (torch.arange(num_keys, device=positions.device) <= positions[:, None])[:, None, None, :]
        return cls(positions, num_keys, mask)


class LayerKVCache:
    """Keys and values of one attention layer; written by `update`, read as a prefix slice."""

    def __init__(self, max_seq_len: int, dtype: torch.dtype | None = None):
        self.max_seq_len = max_seq_len
        self.dtype = dtype  # None: that of the keys written
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, start, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions start..start+T-1; return all keys/values so far.

        Returns views (B, nh, start + T, hs) of the buffers: no copy of the prefix. With RowPositions
        (T = 1), row b's key goes to its own position, and the views hold num_keys positions.
        """
        if isinstance(start, RowPositions):
            rows = torch.arange(k.size(0), device=k.device)
            self.keys[rows, :, start.positions] = k[:, :, 0].to(self.keys.dtype)  # (B, nh, hs) into (B, nh, max_T, hs)
            self.values[rows, :, start.positions] = v[:, :, 0].to(self.values.dtype)
            return self.keys[:, :, : start.num_keys], self.values[:, :, : start.num_keys]
        B, nh, T, hs = k.shape
        dtype = self.dtype or k.dtype
        if self.keys is None or self.keys.shape[0] != B or self.keys.dtype != dtype:
            shape = (B, nh, self.max_seq_len, hs)
            self.keys = torch.zeros(shape, dtype=dtype, device=k.device)
            self.values = torch.zeros(shape, dtype=dtype, device=v.device)
        self.keys[:, :, start : start + T] = k
        self.values[:, :, start : start + T] = v
        return self.keys[:, :, : start + T], self.values[:, :, : start + T]

    def allocate(self, shape: tuple, dtype: torch.dtype, device) -> None:
        """Buffers of shape (B, nh, max_seq_len, hs) now, for callers that write rows at different lengths.

        Zeros, not empty: a row's masked positions (past its length) still enter the matmuls with weight 0,
        and 0 x NaN from uninitialized memory would be NaN.
        """
        self.dtype = dtype
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    def rows(self, begin: int, end: int) -> "LayerKVCache":
        """This layer's rows begin..end-1, sharing its buffers (views)."""
        view = LayerKVCache(self.max_seq_len, self.dtype)
        view.keys, view.values = self.keys[begin:end], self.values[begin:end]
        return view

    def copy_row(self, source: int, target: int, length: int) -> None:
        """Copy row source's first `length` positions into row target."""
        self.keys[target, :, :length] = self.keys[source, :, :length]
        self.values[target, :, :length] = self.values[source, :, :length]

    def select_rows(self, rows: torch.Tensor, length: int) -> None:
        """Reorder the batch to `rows` (repeats allowed), copying only the first `length` positions."""
        if self.keys is None:
            return
        if rows.numel() != self.keys.size(0):  # the batch changes size (beam search's start): new buffers
            self.keys, self.values = self.keys[rows], self.values[rows]
            return
        # The right-hand side is a gathered copy, so overlapping source and destination rows are safe.
        self.keys[:, :, :length] = self.keys[rows, :, :length]
        self.values[:, :, :length] = self.values[rows, :, :length]


class KVCache:
    """One LayerKVCache per layer plus `length`, the number of positions already stored."""

    def __init__(self, num_layers: int, max_seq_len: int, dtype: torch.dtype | None = None):
        self.max_seq_len = max_seq_len
        self.layers = [LayerKVCache(max_seq_len, dtype) for _ in range(num_layers)]
        self.length = 0

    def allocate(self, batch_size: int, num_heads: int, head_dim: int, dtype: torch.dtype, device=None) -> None:
        """Every layer's buffers for batch_size rows now (see LayerKVCache.allocate)."""
        for layer in self.layers:
            layer.allocate((batch_size, num_heads, self.max_seq_len, head_dim), dtype, device)

    def rows(self, begin: int, end: int) -> "KVCache":
        """A cache over rows begin..end-1 of these buffers, at length 0: a server's slots, with no copy."""
        view = KVCache(0, self.max_seq_len)
        view.layers = [layer.rows(begin, end) for layer in self.layers]
        return view

    def copy_row(self, source: int, target: int, length: int) -> None:
        """Copy row source's first `length` positions into row target (a slot a finished sequence freed)."""
        for layer in self.layers:
            layer.copy_row(source, target, length)

    def reset(self) -> None:
        """Forget the stored positions; the buffers are kept and overwritten by the next prefill."""
        self.length = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows`, in that order: beam search moves the surviving beams' keys and values
        to their new slots. select_rows(tensor([0, 0, 0])) turns a cached prompt into 3 copies of it."""
        for layer in self.layers:
            layer.select_rows(rows, self.length)

    def check_room(self, num_new: int) -> None:
        if self.length + num_new > self.max_seq_len:
            raise UserError(
                f"the KV cache holds {self.length} of {self.max_seq_len} positions and cannot take "
                f"{num_new} more; reset it (cache.reset()) and prefill the last tokens again"
            )
