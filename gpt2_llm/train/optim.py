"""The optimizers (AdamW as GPT-2/3 trained it; Muon for the hidden matrices), the learning-rate schedule,
and the optimizer state as named tensors.

    lr: linear warmup 0 -> max_lr, then a cosine from max_lr down to min_lr_ratio * max_lr.
    adamw: every parameter by AdamW.
    muon:  the 2-D matrices inside the decoder blocks (attention and MLP weights) by Muon (torch.optim.Muon's
           algorithm; BatchedMuon runs it), which orthogonalizes each matrix's momentum (Newton-Schulz) so
           that every direction of the update moves at the same rate; embeddings, the tied head, norms and
           biases by AdamW, as the speedrun records (modded-nanogpt, nanochat) split them.
"""
import math
from collections import defaultdict

import torch
from torch import nn
from torch.optim._muon import _adjust_lr  # Muon's per-shape lr; torch is pinned (requirements.txt)

from gpt2_llm.train.config import OPTIMIZERS
from gpt2_llm.device import has_fast_bf16
from gpt2_llm.errors import UserError

WARMUP_TIME_FRACTION = 0.1  # with --max-time, warmup takes at most this share of the time


def make_adamw(model: nn.Module, learning_rate: float, weight_decay: float = 0.1, betas=(0.9, 0.95),
               device_type: str = "cpu", leave_out=()) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (dim >= 2: Linear weights, embeddings), for every trainable
    parameter of model except those in leave_out (which another optimizer trains).

    Biases and LayerNorm gains are not decayed: pulling them toward 0 would only bias the model.
    The fused kernel does the whole update in one pass over memory instead of a dozen.
    """
    left_out = {id(p) for p in leave_out}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in left_out]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device_type in ("cuda", "cpu", "mps")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), fused=fused)


def make_optimizer(name: str, model: nn.Module, learning_rate: float, weight_decay: float = 0.1,
                   betas=(0.9, 0.95), device_type: str = "cpu"):
    """The optimizer --optimizer names: make_adamw(...), or Muon + AdamW as one (MuonWithAdamW)."""
    if name == "adamw":
        return make_adamw(model, learning_rate, weight_decay, betas, device_type)
    if name != "muon":
        raise UserError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    hidden_matrices = [p for name_, p in model.named_parameters()
                       if p.requires_grad and p.dim() == 2 and name_.startswith("decoder.") and "lora_" not in name_]
    if not hidden_matrices:
        raise UserError("--optimizer muon trains the decoder's weight matrices, and none are trainable here "
                        "(LoRA adapters train with adamw)")
    # "match_rms_adamw" scales each matrix's orthogonal update to the RMS an AdamW update has (0.2 sqrt(max(A, B))),
    # so that Muon takes AdamW's learning rate and weight decay as they are (Moonshot, "Muon is Scalable").
    # Newton-Schulz in bf16 as torch.optim.Muon runs it, where bf16 is native; elsewhere bf16 matmuls are emulated,
    # many times slower than fp32 (bench/RESULTS.md), and fp32 is both faster and closer.
    ns_dtype = torch.bfloat16 if has_fast_bf16(torch.device(device_type)) else torch.float32
    muon = BatchedMuon(hidden_matrices, lr=learning_rate, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw",
                       ns_dtype=ns_dtype)
    return MuonWithAdamW(muon, make_adamw(model, learning_rate, weight_decay, betas, device_type,
                                          leave_out=hidden_matrices))


# Below this many elements a matrix's Newton-Schulz matmuls are too small to keep the cores busy, and the
# time goes to launching them: same-shape matrices then run as one batched matmul (modded-nanogpt's trick),
# which makes the optimizer step faster at the `quick` shape. Above it a loop of plain matmuls beats bmm on a
# CPU, so big matrices keep torch.optim.Muon's loop (figures for both CPU kinds: bench/RESULTS.md).
BATCH_MAX_ELEMENTS = 1 << 17


def orthogonalize(updates: torch.Tensor, coefficients, steps: int, eps: float,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz iteration, for one matrix (A, B) or a stack of same-shape ones (k, A, B).

    In dtype (torch's: bf16), on the wide orientation (so the Gram matrix is the small one), each matrix scaled by its
    own Frobenius norm first; X <- a X + (b G + c G^2) X with G = X X^T. The same operations as the
    per-matrix version, so the results are equal bit for bit (a test checks it).
    """
    a, b, c = coefficients
    multiply_add = torch.baddbmm if updates.dim() == 3 else torch.addmm  # beta * input + alpha * (m1 @ m2)
    x = updates.to(dtype)
    tall = updates.size(-2) > updates.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = multiply_add(x, multiply_add(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon with the same hyperparameters, state and results, whose step handles the matrices
    of one shape together: the elementwise updates as one foreach call, and small matrices' orthogonalization
    as one batched Newton-Schulz (see BATCH_MAX_ELEMENTS). Checkpoints are interchangeable with torch.optim.Muon's.

    ns_dtype: the Newton-Schulz iteration's precision; torch's bf16 by default, with which the results equal torch's
    bit for bit (fp32 gives the same update to bf16's rounding).
    """

    def __init__(self, params, *args, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape[p.shape].append(p)
            for shape, params in by_shape.items():
                self._step_same_shape(group, shape, params)
        return loss

    def _step_same_shape(self, group, shape, params):
        lr, momentum = group["lr"], group["momentum"]
        grads = [p.grad for p in params]
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        torch._foreach_lerp_(buffers, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
        ns = (group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
        if shape.numel() <= BATCH_MAX_ELEMENTS:
            orthogonal = orthogonalize(torch.stack(updates), *ns).unbind(0)
        else:
            orthogonal = [orthogonalize(u, *ns) for u in updates]
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_add_(params, orthogonal, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], shape))


class MuonWithAdamW:
    """Two optimizers that act as one: the Trainer, GradScaler and checkpoints see a single optimizer whose
    param_groups are Muon's then AdamW's (the same group dicts: setting a group's lr sets it in its optimizer),
    and whose state_dict numbers the parameters across both, as one optimizer would."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure=None):
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for optimizer in self.optimizers:
            own = optimizer.state_dict()
            state.update({offset + index: per_param for index, per_param in own["state"].items()})
            groups += [{**group, "params": [offset + i for i in group["params"]]} for group in own["param_groups"]]
            offset += sum(len(group["params"]) for group in optimizer.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, offset = iter(state_dict["param_groups"]), 0
        for optimizer in self.optimizers:
            own_groups = [next(groups) for _ in optimizer.param_groups]
            count = sum(len(group["params"]) for group in own_groups)
            optimizer.load_state_dict({
                "state": {index - offset: per_param for index, per_param in state_dict["state"].items()
                          if offset <= index < offset + count},
                "param_groups": [{**group, "params": [i - offset for i in group["params"]]} for group in own_groups],
            })
            offset += count


def learning_rate_at(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                     min_lr_ratio: float = 0.1, time_fraction: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based) in a run of total_steps.

    time_fraction (elapsed / --max-time) fits the schedule to a time budget, where the number of
    steps that fit is unknown: warmup ends after warmup_steps or 10% of the time, whichever comes
    first, and the cosine follows whichever of steps and time is further along.

    learning_rate_at(0, 1.0, 10, 100) -> 0.1;  learning_rate_at(100, 1.0, 10, 100) -> 0.1 (the floor)
    """
    warmup_done = (step + 1) / warmup_steps if warmup_steps else 1.0
    warmup_done = max(warmup_done, time_fraction / WARMUP_TIME_FRACTION)
    if warmup_done < 1.0:
        return max_lr * warmup_done
    step_fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(step_fraction, time_fraction))
    min_lr = min_lr_ratio * max_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[dict, dict]:
    """Flatten optimizer state to {"optimizer/<param name>/<key>": tensor} + JSON-able hyperparameters.

    Named by parameter (not by position) so a checkpoint is readable and survives refactors.
    """
    names = _names_in_optimizer_order(optimizer, model)
    state = optimizer.state_dict()
    return tensors_from_named_state({
        "state": {names[index]: per_param for index, per_param in state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
    })


def tensors_from_named_state(named: dict) -> tuple[dict, dict]:
    """An optimizer state keyed by parameter name (as torch.distributed.checkpoint gathers it) ->
    checkpoint tensors + JSON: {"state": {"wte.weight": {"exp_avg": t}}} -> {"optimizer/wte.weight/exp_avg": t}.
    """
    tensors = {
        f"optimizer/{name}/{key}": torch.as_tensor(value).detach().cpu()
        for name, per_param in named["state"].items()
        for key, value in per_param.items()
    }
    return tensors, {"param_groups": named["param_groups"]}


def named_state_from_tensors(optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict,
                             hyper: dict) -> dict:
    """Inverse of tensors_from_named_state, checked against this model's parameters."""
    names = _names_in_optimizer_order(optimizer, model)
    saved_groups = hyper["param_groups"]
    groups_here = [[names[i] for i in g["params"]] for g in optimizer.state_dict()["param_groups"]]
    if [g["params"] for g in saved_groups] != groups_here:
        raise UserError("the checkpoint's optimizer state does not match this model's parameters; "
                        "was it saved by a different model shape, or with another --optimizer?")
    state = {}
    for key, value in tensors.items():
        name, state_key = key.removeprefix("optimizer/").rsplit("/", 1)
        state.setdefault(name, {})[state_key] = value
    # How the update runs (fused kernel or not) belongs to this machine, not to the checkpoint.
    here = [{k: group[k] for k in _DEVICE_KEYS if k in group} for group in optimizer.param_groups]
    return {"state": state, "param_groups": [{**saved, **local} for saved, local in zip(saved_groups, here)]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict, hyper: dict) -> None:
    """Inverse of optimizer_state_tensors; load_state_dict moves each tensor to its parameter's device."""
    named = named_state_from_tensors(optimizer, model, tensors, hyper)
    index_of = {name: i for i, name in enumerate(_names_in_optimizer_order(optimizer, model))}
    optimizer.load_state_dict({
        "state": {index_of[name]: per_param for name, per_param in named["state"].items()},
        "param_groups": [{**group, "params": [index_of[n] for n in group["params"]]} for group in named["param_groups"]],
    })


_DEVICE_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _names_in_optimizer_order(optimizer, model) -> list[str]:
    """Parameter names in the order optimizer.state_dict() numbers them (0, 1, ... across groups)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
