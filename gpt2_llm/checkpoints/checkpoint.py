"""Checkpoints: safetensors files that carry the weights, the config and the trainer's metadata.

Layout of one file:
    tensors   model weights under their state_dict keys, no prefix, the tied head stored once
              (as wte.weight); the trainer adds its own under namespaced keys ("optimizer/...",
              "rng/..."), which loading a model ignores (any key containing "/").
    metadata  format="gpt2-llm", version="1", and every entry of the caller's metadata dict
              JSON-encoded under its own key: config=<GPT2Config as JSON>, step=..., ...

Safetensors, never pickle: unpickling a file can run arbitrary code, so a pickled file is refused.
Writes are atomic (files.atomic_write: temp file + fsync + os.replace): a crash leaves the old file intact,
and the temp file of a writer killed mid-write is removed by the next write of the same file.
"""
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt2_llm.files import atomic_write
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.errors import UserError

FORMAT = "gpt2-llm"
VERSION = "1"
_RESERVED = ("format", "version")
_TIED_HEAD = "lm_head.weight"  # the same Parameter as wte.weight; stored once, re-tied on load

# Why a config field changes tensor shapes, for mismatch messages.
_WHY = {
    "vocab_size": "the checkpoint was trained with a different vocabulary",
    "embedding_dim": "the checkpoint has a different model width",
    "num_layers": "the checkpoint has a different number of layers",
    "num_heads": "the checkpoint splits attention into a different number of heads",
    "max_seq_len": "the checkpoint has a different context length",
    "mlp_dim": "the checkpoint has a different MLP width",
    "use_rope": "the checkpoint encodes positions differently (rotary vs learned table)",
    "rope_base": "the checkpoint's rotary frequencies differ",
    "layer_norm_eps": "the checkpoint normalises with a different epsilon",
    "bias": "the checkpoint differs in whether layers have biases",
}


def write_safetensors(path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Write a safetensors file atomically; on any failure the previous file at `path` is untouched."""
    tensors = {key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}
    atomic_write(path, lambda temp_path: save_file(tensors, temp_path, metadata=header))


def save_checkpoint(path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Atomically write tensors + metadata (each value JSON-encoded) as a gpt2-llm checkpoint."""
    clash = [key for key in _RESERVED if key in metadata]
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved for the file format")
    header = {"format": FORMAT, "version": VERSION}
    header.update({key: json.dumps(value) for key, value in metadata.items()})
    write_safetensors(path, tensors, header)


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a gpt2-llm checkpoint -> (tensors on CPU, metadata with JSON values decoded).

    Every way a user can hand us the wrong file ends in a one-line UserError.
    """
    path = os.fspath(path)
    _check_is_safetensors_file(path)
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({error}); use an earlier checkpoint or re-save it"
        ) from None
    if header.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file but not a gpt2-llm checkpoint (no format={FORMAT} in its "
            "metadata); for a Hugging Face GPT-2 directory use GPT2.from_pretrained"
        )
    if header.get("version") != VERSION:
        raise UserError(
            f"checkpoint {path} has format version {header.get('version')!r}, this gpt2-llm reads version "
            f"{VERSION}; use the gpt2-llm release that wrote it"
        )
    metadata = {"format": FORMAT, "version": VERSION}
    for key, value in header.items():
        if key not in _RESERVED:
            try:
                metadata[key] = json.loads(value)
            except json.JSONDecodeError:
                raise UserError(f"checkpoint {path} has corrupt metadata under {key!r}; re-save it") from None
    return tensors, metadata


def _check_is_safetensors_file(path):
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist; check the path")
    if os.path.isdir(path):
        hint = (
            "; it looks like a Hugging Face directory: use GPT2.from_pretrained"
            if os.path.exists(os.path.join(path, "config.json"))
            else ""
        )
        raise UserError(f"{path} is a directory, not a checkpoint file; pass the .safetensors file{hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:  # e.g. no read permission
        raise UserError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if not head:
        raise UserError(f"checkpoint {path} is empty (0 bytes); the save was interrupted, use an earlier one")
    # torch.save writes a zip archive ("PK\x03\x04"); older torch and plain pickle start with
    # the pickle PROTO opcode 0x80 followed by the protocol number (2..5).
    if head.startswith(b"PK\x03\x04") or (head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5):
        raise UserError(
            f"{path} looks like a pickled PyTorch file; gpt2-llm refuses to unpickle it because that "
            "can run code; re-save it as safetensors (load it yourself if you trust it, then "
            "model.save(path)) or use GPT2.from_pretrained for a Hugging Face pytorch_model.bin"
        )


def model_tensors(model, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The model's weights for a checkpoint: its state_dict (or the one given) without the tied head."""
    state_dict = model.state_dict() if state_dict is None else state_dict
    return {key: t for key, t in state_dict.items() if key != _TIED_HEAD}


def config_from_metadata(metadata: dict, path) -> GPT2Config:
    if "adapter" in metadata and "config" not in metadata:
        raise UserError(f"{path} is a LoRA adapter file, not a model: apply it to its base model with "
                        f"`predict ... --adapter {path}`, or fold it into one with `merge {path}`")
    if "config" not in metadata:
        raise UserError(f"checkpoint {path} has no model config in its metadata; re-save it with model.save")
    return GPT2Config.from_dict(metadata["config"])


def save_model(model, path, metadata: dict | None = None) -> None:
    """model.save: weights + {"config": model.config, **metadata}."""
    save_checkpoint(path, model_tensors(model), {"config": model.config.to_dict(), **(metadata or {})})


def load_model_weights(model, path) -> dict:
    """model.load: copy a checkpoint's weights into `model` (checked against it); return metadata."""
    tensors, metadata = load_checkpoint(path)
    copy_model_tensors(model, tensors, metadata, path)
    return metadata


@torch.no_grad()
def copy_model_tensors(model, tensors: dict[str, torch.Tensor], metadata: dict, source) -> None:
    """Copy weights into the model's own Parameters in place (so the head stays tied to wte).

    Keys with a "/" (optimizer/..., rng/...) belong to the trainer and are skipped. Any key,
    shape or architecture mismatch raises UserError naming the tensor and the config difference.
    """
    stored = {key: t for key, t in tensors.items() if "/" not in key}
    stored.pop(_TIED_HEAD, None)  # a file may carry the tied copy; wte.weight is the one we use
    targets = model_tensors(model)
    differences = _config_differences(metadata.get("config"), model.config)
    why = "; ".join(differences) or "the checkpoint does not match this model's config"
    fix = f"build the model from the checkpoint instead (GPT2.from_checkpoint({os.fspath(source)!r}))"
    for key, target in targets.items():
        if key not in stored:
            raise UserError(f"cannot load {source}: it has no tensor {key}; {why}; {fix}")
        if stored[key].shape != target.shape:
            raise UserError(
                f"cannot load {source}: tensor {key} has shape {tuple(stored[key].shape)} in the checkpoint "
                f"but {tuple(target.shape)} in the model; {why}; {fix}"
            )
    unexpected = sorted(set(stored) - set(targets))
    if unexpected:
        raise UserError(f"cannot load {source}: the model has no tensor {unexpected[0]}; {why}; {fix}")
    if differences:  # same shapes, but e.g. another num_heads would silently compute something else
        raise UserError(f"cannot load {source}: {why}; {fix}")
    for key, target in targets.items():
        target.copy_(stored[key])


def _config_differences(stored_config: dict | None, config: GPT2Config) -> list[str]:
    """['vocab_size 1524 in checkpoint vs 1600 in model: the checkpoint was trained with ...', ...]"""
    if stored_config is None:
        return []
    stored = GPT2Config.from_dict(stored_config)
    differences = []
    for name, why in _WHY.items():
        ours, theirs = getattr(config, name), getattr(stored, name)
        if name == "max_seq_len" and config.use_rope and stored.use_rope:
            continue  # rotary tables are computed, not stored: any context length can load
        if theirs != ours:
            differences.append(f"{name} {theirs} in checkpoint vs {ours} in model: {why}")
    return differences
