"""The head and the loss in one step, without materializing the logits.

The readable form is two lines, and it is the reference every test compares against:

    logits = hidden @ weight.T                  # (N, C) @ (C, V) -> (N, V)
    loss = F.cross_entropy(logits, targets)     # mean over the targets that are not ignore_index

With a vocabulary of V tokens the logits are N x V floats, and cross_entropy keeps its log-softmax
for backward, and backward makes a gradient of the same size: at GPT-2 small's shape (N = 4 x 1024,
V = 50257) that is ~2.4 GB of fp32 for one line of the model. `linear_cross_entropy` walks the
rows in chunks instead. Because the loss is the last operation, each chunk's gradient is known the
moment its softmax is (d loss / d logits = softmax - one_hot(target)), so the chunk computes its
share of both gradients right away and is then dropped:

    for each chunk of rows:
        logits = h_chunk @ W.T;  p = softmax(logits)            # (n, V): the only big tensor, and per chunk
        loss += sum(logsumexp(logits) - logits[target])
        p[target] -= 1;  p /= num_targets                      # d loss / d logits
        grad_h[chunk] = p @ W;  grad_W += p.T @ h_chunk         # the same two matmuls backward would run

backward then only scales the stored gradients by the incoming one (1.0 for a plain loss.backward()).
The matmuls are the same three the plain path runs; what goes is the N x V memory traffic (the
softmax of a chunk is still in cache when its gradient is taken), and its peak memory.

PyTorch 2.13's own `F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())` does the same
but runs in fp32 under bf16 autocast, which on a CPU made it slower than even the plain path (bench/RESULTS.md,
"The head and the loss without the logits"), so this is the one the model uses.
"""
import torch
import torch.nn.functional as F

# Rows per chunk are chosen so a chunk's fp32 logits take about this much memory: big enough that the
# matmuls stay efficient (and few chunks add into grad_W), small enough to be a rounding error of a step.
CHUNK_BYTES = 64 * 1024 * 1024
MIN_CHUNK_ROWS = 256
# The softmax and its gradient walk a chunk's logits this many elements at a time, so that the four
# passes they make over them hit the cache instead of memory.
SOFTMAX_ELEMENTS = 1 << 20


def reference_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """The readable form: the full logits, then cross_entropy (hidden (..., C), targets (...))."""
    logits = F.linear(hidden.reshape(-1, hidden.size(-1)), weight)
    return F.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=ignore_index, reduction=reduction)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, reduction: str = "mean", chunk_rows: int | None = None
                         ) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) computed chunk by chunk (see the module docstring).

    hidden (..., C), weight (V, C), targets (...) holding class ids or ignore_index.
    reduction "mean" (over the targets that count) or "sum". Under autocast the matmuls run in the
    autocast dtype and the softmax in fp32, as autocast runs the plain path.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    hidden2d = hidden.reshape(-1, hidden.size(-1))
    targets1d = targets.reshape(-1)
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    if chunk_rows is None:
        chunk_rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * weight.size(0)))
    return _ChunkedLinearCrossEntropy.apply(hidden2d, weight, targets1d, ignore_index, reduction, compute_dtype,
                                            chunk_rows)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, reduction, compute_dtype, chunk_rows):
        want_grad_hidden, want_grad_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        counted = targets != ignore_index
        # A tensor, not a Python number: reading the count on the host would wait for the GPU every step.
        # clamp: an all-ignored batch gives loss 0 and zero gradients, not NaN.
        scale = 1.0 / counted.sum().clamp(min=1) if reduction == "mean" else 1.0
        safe_targets = torch.where(counted, targets, 0)  # gather needs a valid index; the row is masked anyway
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            grad_hidden = torch.empty_like(hidden) if want_grad_hidden else None
            # fp32 whatever the compute dtype: the chunks' contributions are summed here.
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_grad_weight else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            softmax_rows = max(1, SOFTMAX_ELEMENTS // weight.size(0))
            for start in range(0, hidden.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                h = hidden[rows].to(compute_dtype)
                logits = h @ w.T  # (n, V): the chunk's logits, overwritten below by their gradient
                for sub in range(0, logits.size(0), softmax_rows):  # a few MB at a time: stays in cache
                    part = slice(sub, sub + softmax_rows)
                    row_targets = safe_targets[rows][part, None]
                    row_weights = counted[rows][part, None].float()
                    log_probs = torch.log_softmax(logits[part], dim=-1, dtype=torch.float32)
                    total -= (log_probs.gather(1, row_targets) * row_weights).sum()
                    if want_grad_hidden or want_grad_weight:
                        # d loss / d logits = softmax - one_hot(target), times 1/num_targets (0 if ignored).
                        grad_logits = log_probs.exp_()
                        grad_logits.scatter_add_(1, row_targets, torch.full_like(row_weights, -1.0))
                        torch.mul(grad_logits, row_weights * scale, out=logits[part])
                if want_grad_hidden:
                    grad_hidden[rows] = logits @ w
                if want_grad_weight:
                    grad_weight += logits.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None
