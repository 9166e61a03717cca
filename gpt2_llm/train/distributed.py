"""Data-parallel training under torchrun: one process per device, each on its own slice of the batch.

    torchrun --nproc_per_node=N main.py train ...   sets RANK, WORLD_SIZE, LOCAL_RANK (+ MASTER_ADDR/PORT)
    start()          join the process group (NCCL on CUDA, gloo on the CPU); None outside torchrun
    wrap(model)      DistributedDataParallel: gradients averaged across ranks during backward
    shard(model)     --fsdp: FSDP2's fully_shard per decoder block + the root: each rank holds 1/N of
                     the weights, gradients and optimizer state; full tensors are gathered to save
    rank_slice(...)  every rank draws the same global batch and keeps its own rows, so N processes
                     with batch B train exactly like one process with batch N*B

Only rank 0 talks to the user and writes files (Trainer.is_main_process).
"""
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from gpt2_llm.errors import UserError


@dataclass
class DistributedContext:
    rank: int  # this process among all of them (0 = main: logs and checkpoints)
    world_size: int  # processes in all, over all nodes
    local_rank: int  # this process on its node: picks its GPU

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device_name: str | None) -> DistributedContext | None:
    """Join the torchrun process group, or None when this is a plain single-process run.

    Returns the context; device_for(context, device_name) gives this rank's device.
    """
    if not launched_by_torchrun():
        return None
    context = DistributedContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                                 int(os.environ.get("LOCAL_RANK", 0)))
    device = device_for(context, device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return context


def device_for(context: DistributedContext, device_name: str | None) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is used (asked for, or present and nothing named), else the CPU."""
    wants_cuda = device_name is None and torch.cuda.is_available() or (device_name or "").startswith("cuda")
    if wants_cuda:
        if not torch.cuda.is_available():
            raise UserError(f"--device {device_name}: this PyTorch sees no CUDA GPU; use --device cpu")
        if context.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {context.local_rank} has no GPU: only {torch.cuda.device_count()} present; "
                            "lower --nproc_per_node")
        return torch.device("cuda", context.local_rank)
    if device_name not in (None, "cpu"):
        raise UserError(f"distributed training runs on cuda or cpu, not {device_name!r}")
    return torch.device("cpu")


@contextmanager
def main_process_first(context: DistributedContext | None):
    """Rank 0 runs the block first (e.g. to create a file), then the others do (and find it there)."""
    if context is not None and not context.is_main_process:
        dist.barrier()
    yield
    if context is not None and context.is_main_process:
        dist.barrier()


def wait_for_all(context: DistributedContext | None) -> None:
    """A barrier under torchrun; nothing in a single process."""
    if context is not None:
        dist.barrier()


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to run forward/backward through: DDP all-reduces (averages) gradients in backward."""
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_slice(batch: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """This rank's rows of a global batch: rank_slice(rows 0..7, rank 1 of 2) -> rows 4..7."""
    rows = batch.size(0) // context.world_size
    return batch[context.rank * rows:(context.rank + 1) * rows]


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place: each block is one all-gather unit (so at most one block is whole at a time),
    the root holds the embeddings, final norm and tied head. Returns the same (now sharded) model."""
    for block in model.decoder.blocks:
        fully_shard(block)
    fully_shard(model)
    # Generation calls next_token_logits, not forward: let that gather the root's weights too, so
    # that every rank can sample in lockstep (the blocks' own forwards gather theirs).
    register_fsdp_forward_method(model, "next_token_logits")
    return model


def no_sync(wrapped: nn.Module, sync: bool):
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP) on the micro-steps of gradient
    accumulation that are not the last."""
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(sync)
        return nullcontext()
    return nullcontext() if sync or not hasattr(wrapped, "no_sync") else wrapped.no_sync()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered whole (a collective: every rank calls it); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Whole model and optimizer state dicts, keyed by parameter name, on rank 0's CPU (empty elsewhere).
    A collective: every rank must call it."""
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, named_state: dict) -> None:
    """Each rank keeps its shard of a whole optimizer state keyed by parameter name (every rank passes it)."""
    set_optimizer_state_dict(model, optimizer, named_state, options=StateDictOptions(full_state_dict=True))


def all_reduce(values: list[float], op=dist.ReduceOp.SUM, device=torch.device("cpu")) -> list[float]:
    """values combined over all ranks (sum by default; AVG is not in gloo, so divide a SUM)."""
    tensor = torch.tensor(values, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()
