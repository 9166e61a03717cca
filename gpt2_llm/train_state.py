"""What a training checkpoint carries beyond the weights and the optimizer.

    TrainingState   where the run stands: step, tokens, time, the schedule's plan, best/last val
    rng states      every random generator training draws from, so a resumed run draws the same
    vocab check     a checkpoint is only valid with the vocabulary it was trained on
"""
import random
from dataclasses import dataclass, fields

import numpy as np
import torch

from gpt2_llm.config import GPT2Config
from gpt2_llm.data import vocab_fingerprint
from gpt2_llm.errors import UserError


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


def check_vocab_matches(bpe, metadata: dict, config: GPT2Config, path) -> None:
    """Refuse a checkpoint trained with another vocabulary: the same ids would mean other text."""
    saved = metadata.get("vocab")
    if saved and saved.get("fingerprint") != vocab_fingerprint(bpe):
        raise UserError(
            f"checkpoint {path} was trained with a different vocabulary ({saved.get('size')} tokens, hash "
            f"{str(saved.get('fingerprint'))[:12]}) than {bpe.vocab_path} ({bpe.vocab_size} tokens, hash "
            f"{vocab_fingerprint(bpe)[:12]}): the same token ids would mean different text. Pass the vocab "
            "file this checkpoint was trained with, or leave out the checkpoint to train a new model"
        )
    if bpe.vocab_size > config.vocab_size:
        raise UserError(
            f"{bpe.vocab_path} has {bpe.vocab_size} tokens but the model in {path} has only {config.vocab_size} "
            "embedding rows; use the vocab file it was trained with"
        )


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
