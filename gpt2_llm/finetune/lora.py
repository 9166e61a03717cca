"""LoRA: fine-tune a frozen model through small low-rank updates of its Linear layers.

    y = W x + b                      a frozen Linear of the base model (W: out x in)
    y = W x + b + (alpha / r) B A x  the adapted one; A: r x in, B: out x r, r << in, out

Only A and B train. For GPT-2 small at r = 8 on every attention and MLP matrix that is 1.2M
numbers instead of 124M, and AdamW keeps its two moments for those alone. B starts at zero, so
the adapted model starts exactly where the base is; A starts random, so B's first gradient is not
zero. `merge_lora` folds (alpha / r) B A into W: a plain model that computes the same function at
no extra cost per token. (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models".)

A run that adds tokens to the vocab (chat fine-tuning's <|user|>, <|end|>, ...) must also teach the model
those tokens, whose rows in the (tied) token table start as a mean. LoRA cannot: the table stays frozen. So
such a run trains those rows alone, beside the adapters (TrainedRows: PEFT calls it trainable_token_indices),
and the adapter file carries them; every other row of the table stays the base's.

An adapter file is a gpt2-llm checkpoint holding only the A and B tensors and the trained rows (plus, when the
trainer wrote it, their optimizer state), with metadata "adapter" = {lora: LoRAConfig, base_config,
base_fingerprint, base, added_tokens}: enough to refuse a base of another shape, to notice another base, and
to add the run's tokens to the base's vocab before the rows go in.
"""
import hashlib
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.errors import UserError

# --lora-targets names -> the Linear layers of each decoder block they adapt.
TARGET_GROUPS = {
    "attn": ("attn.c_attn", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "c_attn": ("attn.c_attn",),
    "attn.c_proj": ("attn.c_proj",),
    "c_fc": ("mlp.c_fc",),
    "mlp.c_proj": ("mlp.c_proj",),
}
ADAPTER_MARK = ".lora_"  # in the state_dict key of every adapter tensor, and of nothing else


@dataclass
class LoRAConfig:
    rank: int = 8  # r: the width of the update's bottleneck
    alpha: float = 16.0  # the update is scaled by alpha / rank, so changing rank keeps its size
    targets: tuple = ("attn", "mlp")  # keys of TARGET_GROUPS
    dropout: float = 0.0  # on the adapter's input only

    def __post_init__(self):
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise UserError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGET_GROUPS]
        if unknown or not self.targets:
            raise UserError(f"unknown LoRA target {', '.join(unknown) or '(none given)'}; "
                            f"use a comma-separated list of {', '.join(TARGET_GROUPS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def layer_names(self) -> list[str]:
        """The adapted Linear layers within one block: LoRAConfig(targets="attn").layer_names() ->
        ["attn.c_attn", "attn.c_proj"]."""
        names = [name for target in self.targets for name in TARGET_GROUPS[target]]
        return list(dict.fromkeys(names))  # "attn,c_attn" names c_attn once

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict) -> "LoRAConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            raise UserError(f"not a LoRA config: {values!r}")
        return cls(**values)


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + scaling * B(A(dropout(x)))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.scaling = alpha / rank
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        lora_A = torch.empty(rank, base.in_features)  # drawn on the CPU, where the generator is
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)  # as nn.Linear and PEFT do
        self.lora_A = nn.Parameter(lora_A.to(**factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out): never the full out x in product.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The plain Linear computing the same function (without dropout): W + scaling * B A."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, r) @ (r, in)
        linear.weight.copy_(base.weight.float() + delta)
        if base.bias is not None:
            linear.bias.copy_(base.bias)
        return linear


class TrainedRows(nn.Module):
    """The token table with some rows trainable: the frozen table where the rows at `lora_row_ids` are replaced by
    `lora_rows`, which train. It replaces the model's wte, and serves the tied head too (TiedHead): one table,
    two uses, as before. The rows start as the table's, so the model starts exactly where it was."""

    def __init__(self, base, row_ids: list[int]):
        super().__init__()
        self.base = base  # the TokenEmbedding, frozen
        ids = torch.tensor(sorted(set(row_ids)), dtype=torch.long, device=base.weight.device)
        self.register_buffer("lora_row_ids", ids)
        self.lora_rows = nn.Parameter(base.weight.detach()[ids].clone())

    @property
    def weight(self) -> torch.Tensor:
        # A full copy of the table per use (it is small beside the matmuls); the gradient reaches lora_rows alone.
        return self.base.weight.index_copy(0, self.lora_row_ids, self.lora_rows.to(self.base.weight.dtype))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)

    @torch.no_grad()
    def merged(self):
        """The plain TokenEmbedding holding the trained rows."""
        self.base.weight[self.lora_row_ids] = self.lora_rows.to(self.base.weight.dtype)
        return self.base


class TiedHead(nn.Module):
    """The output head over TrainedRows' table: logits = h @ table.T. It holds no weight of its own (the
    embedding's is not registered twice), so the model's state_dict has no lm_head.weight, as it stores the
    tied head once anyway (checkpoint.model_tensors)."""

    def __init__(self, embedding: TrainedRows):
        super().__init__()
        self.__dict__["embedding"] = embedding  # not a submodule: its tensors belong to wte

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight)


def add_lora(model: nn.Module, config: LoRAConfig, seed: int = 0, trained_rows: list[int] = ()) -> nn.Module:
    """Freeze every weight of a GPT2 and wrap the targeted Linear layers of each block, in place; with
    trained_rows (token ids), those rows of the token table train too (TrainedRows).

    Afterwards model.parameters() with requires_grad are exactly the adapters' A and B (and the rows). The
    random A matrices come from seed alone, so a run is reproducible whatever ran before it.
    """
    if any(isinstance(m, (LoRALinear, TrainedRows)) for m in model.modules()):
        raise UserError("this model already has LoRA adapters; merge them first (merge_lora)")
    model.requires_grad_(False)
    if trained_rows:
        model.wte = TrainedRows(model.wte, list(trained_rows))
        model.lm_head = TiedHead(model.wte)
    generator = torch.Generator().manual_seed(seed)
    for block in model.decoder.blocks:
        for name in config.layer_names():
            parent_name, _, child_name = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            base = getattr(parent, child_name)
            setattr(parent, child_name, LoRALinear(base, config.rank, config.alpha, config.dropout, generator))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place, and unfreeze: a plain GPT2 again."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    if isinstance(model.wte, TrainedRows):
        model.wte = model.wte.merged()
        # On the meta device: the head's own (random) table would only be thrown away for the tied one.
        model.lm_head = nn.Linear(model.config.embedding_dim, model.config.vocab_size, bias=False, device="meta")
        model.lm_head.weight = model.wte.weight  # tied again
    model.requires_grad_(True)
    return model


def is_adapter_key(key: str) -> bool:
    return ADAPTER_MARK in key


def adapter_tensors(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapters' A and B under their state_dict keys ("decoder.blocks.0.attn.c_attn.lora_A", ...)."""
    state_dict = model.state_dict() if state_dict is None else state_dict
    return {key: t for key, t in state_dict.items() if is_adapter_key(key)}


@torch.no_grad()
def load_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Copy an adapter file's A and B (and trained rows) into a model that add_lora prepared the same way."""
    stored = {key: t for key, t in tensors.items() if is_adapter_key(key) and "/" not in key}
    targets = adapter_tensors(model)
    missing, unexpected = sorted(set(targets) - set(stored)), sorted(set(stored) - set(targets))
    if missing or unexpected:
        raise UserError(f"adapter {source} does not fit: " + (f"it has no tensor {missing[0]}" if missing
                                                              else f"the model has no tensor {unexpected[0]}"))
    for key, target in targets.items():
        if stored[key].shape != target.shape:
            raise UserError(f"adapter {source}: tensor {key} has shape {tuple(stored[key].shape)}, "
                            f"the model expects {tuple(target.shape)}")
        if key.endswith("lora_row_ids") and not stored[key].equal(target):
            raise UserError(f"adapter {source} trained the rows of tokens {stored[key].tolist()}, but its added "
                            f"tokens are {target.tolist()} in this vocab: pass the base it was trained on")
        target.copy_(stored[key])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's weights (names, shapes, bytes): tells one base model from another.

    Computed on the CPU weights as loaded, before any adapter or device move (~0.5 s for GPT-2 small).
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(checkpoint.model_tensors(model).items()):  # the tied head once
        if is_adapter_key(key):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key.replace('.base.', '.')}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).reshape(-1).numpy())
    return digest.hexdigest()


def adapter_metadata(config: LoRAConfig, base_config: GPT2Config, base_fingerprint: str, base: str,
                     added_tokens: list[str] = ()) -> dict:
    """The "adapter" metadata of an adapter file: how it was built, on which base, and the special tokens the run
    added to the base's vocab (their rows train: TrainedRows)."""
    return {"lora": config.to_dict(), "base_config": base_config.to_dict(), "base_fingerprint": base_fingerprint,
            "base": base, "added_tokens": list(added_tokens)}


def check_base_fits(adapter: dict, base_config: GPT2Config, base_fingerprint: str | None, source) -> str | None:
    """Refuse a base of another shape (UserError); return a warning when only the weights differ."""
    saved = GPT2Config.from_dict(adapter["base_config"])
    shape_fields = ("vocab_size", "embedding_dim", "num_layers", "num_heads", "mlp_dim", "bias", "use_rope")
    differences = [f"{name} {getattr(saved, name)} (adapter's base) vs {getattr(base_config, name)}"
                   for name in shape_fields if getattr(saved, name) != getattr(base_config, name)]
    if differences:
        raise UserError(f"adapter {source} was trained on a base of another shape: {', '.join(differences)}; "
                        f"pass the base it was trained on ({adapter.get('base')})")
    if base_fingerprint is not None and base_fingerprint != adapter.get("base_fingerprint"):
        return (f"adapter {source} was trained on other base weights ({adapter.get('base')}) of the same shape; "
                "its output may be poor")
    return None


def apply_adapter(model: nn.Module, tensors: dict, metadata: dict, source, bpe=None) -> tuple[nn.Module, str | None]:
    """Add the adapter of a loaded adapter file to a base GPT2 (CPU weights as loaded), in place; the tokens the
    run added go into bpe (its vocab) and the model's table first (chat.tokens.add_tokens).

    -> (model, warning or None). The caller merges for inference or trains on.
    """
    adapter = read_adapter_metadata(metadata, source)
    warning = check_base_fits(adapter, model.config, weights_fingerprint(model), source)
    trained_rows = []
    if adapter.get("added_tokens"):
        from gpt2_llm.chat.tokens import add_tokens

        if bpe is None:
            raise ValueError(f"adapter {source} adds tokens to the vocab: pass the base's BPE")
        trained_rows = add_tokens(model, bpe, adapter["added_tokens"])
    add_lora(model, LoRAConfig.from_dict(adapter["lora"]), trained_rows=trained_rows)
    load_adapter_tensors(model, tensors, source)
    return model, warning


def read_adapter_metadata(metadata: dict, source) -> dict:
    adapter = metadata.get("adapter")
    if not isinstance(adapter, dict) or not {"lora", "base_config"} <= set(adapter):
        raise UserError(f"{source} is not a LoRA adapter file (no adapter metadata); "
                        "adapters are what `main.py finetune` writes without --full")
    return adapter
