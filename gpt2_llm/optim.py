"""AdamW as GPT-2/3 trained it, the learning-rate schedule, and the optimizer state as named tensors.

    lr: linear warmup 0 -> max_lr, then a cosine from max_lr down to min_lr_ratio * max_lr.
"""
import math

import torch
from torch import nn

from gpt2_llm.errors import UserError

WARMUP_TIME_FRACTION = 0.1  # with --max-time, warmup takes at most this share of the time


def make_adamw(model: nn.Module, learning_rate: float, weight_decay: float = 0.1, betas=(0.9, 0.95),
               device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (dim >= 2: Linear weights, embeddings).

    Biases and LayerNorm gains are not decayed: pulling them toward 0 would only bias the model.
    The fused kernel does the whole update in one pass over memory instead of a dozen.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device_type in ("cuda", "cpu", "mps")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), fused=fused)


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
                        "was it saved by a different model shape?")
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
