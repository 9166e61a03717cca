"""A training checkpoint: everything a stopped run needs to go on exactly as if it had never stopped.

    weights         the model's (an adapter file: the LoRA adapters' alone), whole even when sharded
    optimizer       AdamW's moments, by parameter name (optim.py)
    TrainingState   where the run stands: step, tokens, time, the schedule's plan, best/last val
    rng states      every random generator training draws from, so a resumed run draws the same
    train_args      the TrainingConfig's run settings; the vocab's fingerprint; the fp16 loss scale

save() and restore() are the Trainer's two halves of the same file; the format is checkpoint.py's.
"""
import random
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from safetensors import SafetensorError

from gpt2_llm.chat.template import chat_template_record
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.train import distributed
from gpt2_llm.finetune import lora
from gpt2_llm.errors import UserError
from gpt2_llm.train.optim import (load_optimizer_state, named_state_from_tensors, optimizer_state_tensors,
                            tensors_from_named_state)


@dataclass
class TrainingState:
    """Where training stands; JSON in the checkpoint. A "run" is one planned schedule (warmup + cosine)."""

    step: int = 0  # optimizer steps taken, over all runs
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds spent in training steps, over all runs (evals and saves excluded)
    run_start_step: int = 0
    run_total_steps: int = 0  # the step at which the current run's schedule ends
    run_warmup_steps: int = 0
    run_max_time: float | None = None  # the current run's time budget, in seconds of training steps
    run_start_elapsed: float = 0.0
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    last_val_loss: float | None = None
    last_val_bpb: float | None = None

    @property
    def run_elapsed(self) -> float:
        return self.elapsed - self.run_start_elapsed

    def run_finished(self) -> bool:
        out_of_time = self.run_max_time is not None and self.run_elapsed >= self.run_max_time
        return self.step >= self.run_total_steps or out_of_time

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingState":
        """From a checkpoint's JSON; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def save(trainer, path) -> None:
    """Weights, config, optimizer, schedule position, RNG states and vocab hash, written atomically.

    Refuses non-finite weights, so a diverged run can never replace a good checkpoint.
    """
    if trainer.sharded:  # every rank sends its shards; rank 0 receives the whole tensors
        model_state, named_optimizer_state = distributed.full_state(trainer.model, trainer.optimizer)
    if not trainer.is_main_process:
        return
    if trainer.sharded:
        weights = checkpoint.model_tensors(trainer.model, model_state)
        optimizer_tensors, optimizer_meta = tensors_from_named_state(named_optimizer_state)
    else:
        weights = checkpoint.model_tensors(trainer.model)
        optimizer_tensors, optimizer_meta = optimizer_state_tensors(trainer.optimizer, trainer.model)
    if trainer.adapter is not None:  # an adapter file: the frozen base is the user's already
        weights = lora.adapter_tensors(trainer.model, weights)
    if not all(t.isfinite().all() for t in weights.values() if t.is_floating_point()):
        raise UserError(f"refusing to save non-finite weights to {path}; the previous checkpoint was kept")
    rng_tensors, rng_meta = rng_states(trainer.batch_generator)
    tensors = {**weights, **optimizer_tensors, **rng_tensors}
    # An adapter file carries its base's config inside "adapter", and no "config": loading it
    # as a model then fails with a message that says what it is (checkpoint.config_from_metadata).
    described = {"config": trainer.model.config.to_dict()} if trainer.adapter is None else {"adapter": trainer.adapter}
    metadata = {
        **described,
        "vocab": {"fingerprint": trainer.bpe.fingerprint(), "size": trainer.bpe.vocab_size},
        **chat_template_record(trainer.bpe, trainer.config.chat),
        "training": asdict(trainer.state),
        "train_args": trainer.config.run_settings(),
        "optimizer": optimizer_meta,
        "rng": rng_meta,
    }
    if trainer.scaler.is_enabled():
        metadata["grad_scaler"] = trainer.scaler.state_dict()
    try:
        checkpoint.save_checkpoint(path, tensors, metadata)
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as SafetensorError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous checkpoint was kept") from None
    trainer.last_saved_step = trainer.state.step


def restore(trainer, tensors: dict, metadata: dict) -> None:
    """Load the optimizer, schedule position and RNG states that save() wrote into trainer."""
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer/")}
    if trainer.sharded:
        named = named_state_from_tensors(trainer.optimizer, trainer.model, optimizer_tensors, metadata["optimizer"])
        distributed.load_full_optimizer_state(trainer.model, trainer.optimizer, named)
    else:
        load_optimizer_state(trainer.optimizer, trainer.model, optimizer_tensors, metadata["optimizer"])
    trainer.state = TrainingState.from_dict(metadata["training"])
    restore_rng_states(trainer.batch_generator, tensors, metadata["rng"])
    if trainer.scaler.is_enabled() and "grad_scaler" in metadata:
        trainer.scaler.load_state_dict(metadata["grad_scaler"])
    trainer.last_saved_step = trainer.state.step


def rng_states(batch_generator: torch.Generator) -> tuple[dict, dict]:
    """Every random number generator training draws from: tensors (torch) + JSON (numpy, python)."""
    tensors = {"rng/torch_cpu": torch.get_rng_state(), "rng/batch": batch_generator.get_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    meta = {
        "numpy": [name, keys.tolist(), pos, has_gauss, cached_gaussian],
        "python": [version, list(python_state), gauss_next],
    }
    return tensors, meta


def restore_rng_states(batch_generator: torch.Generator, tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch_cpu"])
    batch_generator.set_state(tensors["rng/batch"])
    cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in tensors]
    if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    name, keys, pos, has_gauss, cached_gaussian = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    version, python_state, gauss_next = meta["python"]
    random.setstate((version, tuple(python_state), gauss_next))
