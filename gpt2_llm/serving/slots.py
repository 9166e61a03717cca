"""A server's batch of slots, each holding one sequence at its own position, on the model's own forward pass.

A request that arrives while others are decoding starts at position 0 beside rows at position 300. Slots
keeps one KV cache of max_batch rows, where slot s holds one sequence, and runs the model's hidden_states
on it: a prompt alone in its slot's rows, a step over slots 0..B-1 with each row's position (the model
masks each row to its own keys: model/kv_cache.py's RowPositions):

    slots = Slots(model, max_batch=8, cache_dtype=torch.float32)
    logits = slots.prefill(slot=3, ids=prompt)                    # (V,) after the prompt, in slot 3
    logits = slots.step(ids, positions=[300, 12])                 # (B, V): one token for slots 0, 1

Rows in use are always slots 0..B-1 (`move` fills a freed slot with the last one), so a step reads one
contiguous block of the buffers. Alone (B = 1, or equal lengths) a step is the same computation as
generation.TokenWindow's (what `predict` runs); in a batch the numbers differ only by float rounding, so
greedy output does not depend on the company.
"""
import torch

from gpt2_llm.infer.prepare import PackedLinear, can_prepack, decoding_model, swap_linears


def prepare_for_batches(model, device: torch.device, dtype: torch.dtype, quantize: str | None, max_batch: int):
    """GPT2.for_inference (in place), but with CPU weights prepacked for batches of up to max_batch rows.

    oneDNN lays a prepacked weight out for the batch size it is told. PackedLinear's layout is for one
    row (what `predict` decodes); a batch of 8 rows through it runs a slow path, much slower than with
    the layout for 8, which is no slower for one row (figures: bench/RESULTS.md, `serve`).
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


class Slots:
    def __init__(self, model, max_batch: int, cache_dtype: torch.dtype | None = None):
        self.model = decoding_model(model)  # prepacked Linear weights on a CPU (the model itself after for_inference)
        config, weight = model.config, model.wte.weight
        self.cache = model.new_cache()
        self.cache.allocate(max_batch, config.num_heads, config.head_dim, cache_dtype or weight.dtype, weight.device)

    @torch.inference_mode()
    def prefill(self, slot: int, ids: torch.Tensor, every_position: bool = False) -> torch.Tensor:
        """Run one sequence's prompt ids (T,) into slot `slot` from position 0 -> logits after it (V,),
        or after each of its tokens (T, V) with every_position (to score the prompt itself)."""
        hidden = self.model.hidden_states(ids[None], self.cache.rows(slot, slot + 1))
        return self.model.lm_head(hidden[0] if every_position else hidden[0, -1])  # the V x C head: once if it can

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """One new token per slot 0..B-1: ids (B,) at positions (B ints) -> logits after each (B, V)."""
        rows = self.cache.rows(0, len(positions))
        if min(positions) == max(positions):  # every row at one position: plain causal attention, no mask
            rows.length = positions[0]
            hidden = self.model.hidden_states(ids[:, None], rows)
        else:
            hidden = self.model.hidden_states(ids[:, None], rows, positions)
        return self.model.lm_head(hidden[:, -1])

    @torch.inference_mode()
    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot source's first `length` positions into slot target (which a finished sequence freed)."""
        self.cache.copy_row(source, target, length)
