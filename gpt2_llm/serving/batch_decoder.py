"""The model's forward pass over a batch of slots that each sit at their own position.

GPT2.hidden_states continues one KV cache whose rows all share one length. A server's rows do not:
a request that arrives while others are decoding starts at position 0 beside rows at position 300.
SlotDecoder keeps one key/value buffer per layer, (max_batch, nh, max_seq_len, hs), where slot s
holds one sequence, and runs the model's own modules (wte, wpe, blocks, ln_f, lm_head) with a
position per row:

    decoder = SlotDecoder(model, max_batch=8, cache_dtype=torch.float32)
    logits = decoder.prefill(slot=3, ids=prompt)                  # (V,) after the prompt, in slot 3
    logits = decoder.step(ids, positions=[300, 12])               # (B, V): one token for slots 0, 1

Rows in use are always slots 0..B-1 (`move` fills a freed slot with the last one), so a step reads
one contiguous block of the buffers. A row attends to its own positions only: a boolean mask hides
the keys past each row's length when lengths differ. Alone (B = 1, or equal lengths) a step is the
same computation as generation.TokenWindow's (what `predict` runs); in a batch the numbers differ
only by float rounding, so greedy output does not depend on the company.
"""
import torch
import torch.nn.functional as F

from gpt2_llm.model.attention import attention_sdpa
from gpt2_llm.infer.prepare import PackedLinear, can_prepack, decoding_model, swap_linears


def prepare_for_batches(model, device: torch.device, dtype: torch.dtype, quantize: str | None, max_batch: int):
    """GPT2.for_inference (in place), but with CPU weights prepacked for batches of up to max_batch rows.

    oneDNN lays a prepacked weight out for the batch size it is told. PackedLinear's layout is for one
    row (what `predict` decodes); a batch of 8 rows through it runs a slow path: a GPT-2 small step on
    2 cores takes 27 ms for 8 rows, against 16.5 ms with the layout for 8, which is no slower for one.
    """
    if quantize is not None or device.type != "cpu" or not can_prepack(dtype):
        return model.for_inference(dtype, quantize, device)
    model = model.eval().to(device=device, dtype=dtype)
    with torch.no_grad():
        return swap_linears(model, lambda linear: BatchPackedLinear(linear, max_batch))


class BatchPackedLinear(PackedLinear):
    """PackedLinear with its weight in oneDNN's layout for `batch_size` rows."""

    def __init__(self, linear, batch_size: int):
        super().__init__(linear)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_size)


class SlotDecoder:
    def __init__(self, model, max_batch: int, cache_dtype: torch.dtype | None = None):
        self.model = decoding_model(model)  # prepacked Linear weights on a CPU (the model itself after for_inference)
        config = model.config
        self.config = config
        weight = model.wte.weight
        shape = (max_batch, config.num_heads, config.max_seq_len, config.head_dim)
        dtype = cache_dtype or weight.dtype
        # Zeros, not empty: a row's masked positions (past its length) still enter the matmuls with weight 0,
        # and 0 x NaN from uninitialized memory would be NaN.
        self.keys = [torch.zeros(shape, dtype=dtype, device=weight.device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=weight.device) for _ in range(config.num_layers)]
        self.device = weight.device

    @torch.inference_mode()
    def prefill(self, slot: int, ids: torch.Tensor, every_position: bool = False) -> torch.Tensor:
        """Run one sequence's prompt ids (T,) into slot `slot` from position 0 -> logits after it (V,),
        or after each of its tokens (T, V) with every_position (to score the prompt itself)."""
        hidden = self._forward(ids[None], [0], slice(slot, slot + 1), start=0)
        return self.model.lm_head(hidden[0] if every_position else hidden[0, -1])  # the V x C head: once if it can

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """One new token per slot 0..B-1: ids (B,) at positions (B ints) -> logits after each (B, V)."""
        start = positions[0] if min(positions) == max(positions) else None  # None: lengths differ
        hidden = self._forward(ids[:, None], positions, slice(0, len(positions)), start)
        return self.model.lm_head(hidden[:, -1])

    @torch.inference_mode()
    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot source's first `length` positions into slot target (which a finished sequence freed)."""
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]

    def _forward(self, ids, starts: list[int], slots: slice, start: int | None) -> torch.Tensor:
        """ids (B, T), row b at positions starts[b].. of slot b of slots -> final hidden states (B, T, C).

        start: the first position when every row starts there (plain causal attention, as in
        TokenWindow, and the keys written by slicing), None when rows differ (T = 1: a mask per row).
        """
        model = self.model
        T = ids.size(1)
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(T, device=self.device)  # (B, T)
        x = model.wte(ids)  # (B, T) -> (B, T, C)
        if model.wpe is not None:
            x = x + model.wpe(positions)  # each row its own positions
        num_keys = max(starts) + T
        mask = None
        if start is None:  # (B, 1, 1, num_keys): row b may see keys at positions <= its own
            mask = (torch.arange(num_keys, device=self.device) <= positions)[:, None, None, :]
        for block, keys, values in zip(model.decoder.blocks, self.keys, self.values, strict=True):
            x = x + self._attend(block.attn, block.ln_1(x), keys[slots], values[slots], positions, num_keys, start,
                                 mask)
            x = x + block.mlp(block.ln_2(x))
        return model.ln_f(x)

    @staticmethod
    def _attend(attn, x, keys, values, positions, num_keys, start, mask):
        """CausalSelfAttention.forward with a position per row: (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        qkv = attn.c_attn(x).view(B, T, 3, attn.num_heads, attn.head_dim)  # (B, T, 3C) -> (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x (B, nh, T, hs)
        if attn.rope is not None:
            q, k = rotate(attn.rope, q, positions), rotate(attn.rope, k, positions)
        if start is not None:  # every row at the same positions: a slice, as LayerKVCache writes
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
        else:  # row b's one new key at its own position
            rows = torch.arange(B, device=x.device)
            keys[rows, :, positions[:, 0]] = k[:, :, 0].to(keys.dtype)  # (B, nh, hs) into (B, nh, max_T, hs)
            values[rows, :, positions[:, 0]] = v[:, :, 0].to(values.dtype)
        k, v = keys[:, :, :num_keys], values[:, :, :num_keys]  # (B, nh, num_keys, hs): views, no copy
        q = q.to(k.dtype)  # attend in the cache's precision, as CausalSelfAttention does
        if mask is None:
            y = attention_sdpa(q, k, v, start)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C).to(x.dtype)  # (B, nh, T, hs) -> (B, T, C)
        return attn.c_proj(y)


def rotate(rope, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RotaryPositionEmbedding.forward with a position per row: x (B, nh, T, hs), positions (B, T)."""
    cos = rope.cos[positions][:, None].to(x.dtype)  # (B, T, hs/2) -> (B, 1, T, hs/2), broadcast over heads
    sin = rope.sin[positions][:, None].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
