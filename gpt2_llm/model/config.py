"""GPT2Config: a model's shape. Saved inside every checkpoint, so loading one needs no flags."""
import math
from dataclasses import asdict, dataclass, fields

from gpt2_llm.errors import UserError



@dataclass
class GPT2Config:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary; our own tokenizer sets its own size
    embedding_dim: int = 768  # width of the residual stream (HF: n_embd)
    num_layers: int = 12
    num_heads: int = 12
    max_seq_len: int = 1024  # context length: size of the position table and of the KV cache
    feedforward_dim: int | None = None  # hidden width of the MLP; None means 4 * embedding_dim as in GPT-2
    dropout: float = 0.0  # one rate for embeddings, attention weights and residual branches
    use_rope: bool = False  # rotary embeddings on Q, K instead of GPT-2's learned position table
    rope_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    bias: bool = True  # biases in Linear and LayerNorm; GPT-2 has them, HF interop needs them

    def __post_init__(self):
        for name in ("vocab_size", "embedding_dim", "num_layers", "num_heads", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        if self.feedforward_dim is not None:
            _check_positive_int("feedforward_dim", self.feedforward_dim)
        for name in ("use_rope", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"config {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("dropout", "rope_base", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"config {name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"config dropout must be in [0, 1), got {self.dropout}")
        if self.rope_base <= 0 or self.layer_norm_eps <= 0:
            raise UserError("config rope_base and layer_norm_eps must be positive")
        if self.embedding_dim % self.num_heads:
            raise UserError(
                f"embedding_dim {self.embedding_dim} is not divisible by num_heads {self.num_heads}; "
                "pick num_heads that divides it"
            )
        if self.use_rope and self.head_dim % 2:
            raise UserError(
                f"rotary embeddings rotate pairs of channels, so head_dim (embedding_dim / num_heads = "
                f"{self.head_dim}) must be even; change embedding_dim or num_heads"
            )

    @property
    def head_dim(self) -> int:
        return self.embedding_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        """The MLP's hidden width with the default resolved: GPT2Config(embedding_dim=8).mlp_dim -> 32."""
        return self.feedforward_dim if self.feedforward_dim is not None else 4 * self.embedding_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPT2Config":
        """Build from a dict (e.g. a checkpoint's JSON); missing keys take their defaults."""
        if not isinstance(values, dict):
            raise UserError(f"a model config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"unknown config key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}"
            )
        return cls(**values)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"config {name} must be a positive integer, got {value!r}")
