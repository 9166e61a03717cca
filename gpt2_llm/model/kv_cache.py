"""A static key/value cache for incremental decoding (gpt-fast style).

Each layer owns a buffer (B, nh, max_seq_len, hs) for keys and one for values, written in place
at the current length, so decoding one token costs one token of work instead of re-running the
whole prefix. Buffers are allocated on the first write, on the device of the keys being written
and in their dtype, unless the cache was given one: a bf16 model may keep an fp32 cache (see
generation.cache_dtype), and attention then runs in the cache's precision.

    cache = model.new_cache()
    logits = model(prompt, cache)            # prefill: cache.length == prompt length
    logits = model(next_token[:, None], cache)  # one step: cache.length += 1
"""
import torch

from gpt2_llm.errors import UserError


class LayerKVCache:
    """Keys and values of one attention layer; written by `update`, read as a prefix slice."""

    def __init__(self, max_seq_len: int, dtype: torch.dtype | None = None):
        self.max_seq_len = max_seq_len
        self.dtype = dtype  # None: that of the keys written
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions start..start+T-1; return all keys/values so far.

        Returns views (B, nh, start + T, hs) of the buffers: no copy of the prefix.
        """
        B, nh, T, hs = k.shape
        dtype = self.dtype or k.dtype
        if self.keys is None or self.keys.shape[0] != B or self.keys.dtype != dtype:
            shape = (B, nh, self.max_seq_len, hs)
            self.keys = torch.zeros(shape, dtype=dtype, device=k.device)
            self.values = torch.zeros(shape, dtype=dtype, device=v.device)
        self.keys[:, :, start : start + T] = k
        self.values[:, :, start : start + T] = v
        return self.keys[:, :, : start + T], self.values[:, :, : start + T]

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
