"""TrainingConfig (how to train a model) and the preset table that names a shape together with the
training settings that suit it. The TrainingConfig is saved inside every checkpoint, so resuming needs no flags.
"""
from dataclasses import asdict, dataclass

from gpt2_llm.errors import UserError

OPTIMIZERS = ("adamw", "muon")  # --optimizer's choices (optim.make_optimizer builds them)
DEFAULT_MODEL = "gpt2_model.pt"  # the checkpoint `train` writes and `predict` reads when given none


@dataclass
class TrainingConfig:
    """How to train; saved in every checkpoint so that a resumed run continues the same way."""

    context_length: int  # tokens per training window (at most the model's max_seq_len)
    batch_size: int  # windows per micro-batch
    learning_rate: float  # peak lr, reached after warmup
    grad_accum: int = 1  # micro-batches per optimizer step: the effective batch is batch_size * grad_accum
    warmup_steps: int | None = None  # None: 5% of the run, at most 100 steps
    min_lr_ratio: float = 0.1  # the cosine ends at this fraction of the peak lr
    weight_decay: float = 0.1  # on matrices only
    betas: tuple = (0.9, 0.95)  # GPT-3's: a shorter memory for the second moment than Adam's 0.999
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # adamw, or muon: Muon for the decoder's matrices, AdamW for the rest (optim.py)
    seed: int = 1337
    val_fraction: float = 0.1  # the last 10% of the corpus is validation, never trained on (unless a val file)
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    eval_tokens: int = 32768  # val tokens scored per evaluation: the same windows every time
    sample_tokens: int = 48  # tokens of sample text printed at each evaluation; 0 for none
    eval_at_start: bool = False  # also evaluate before a new run's first step (fine-tuning: the base's score)
    chat: bool = False  # the corpus is conversations (JSON lines of messages): train on the assistant's tokens
    dtype: str | None = None  # fp32, bf16, fp16; None: bf16 where the hardware has it (then saved as chosen)
    # Where and how to run: these describe this machine, not the run, so a resume may change them.
    device: str | None = None  # None: cuda, then mps, then cpu
    compile: bool = False  # torch.compile the forward + loss
    log_file: str | None = None  # JSON-lines metrics log
    progress: bool = True  # show a progress bar
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state instead of replicating them
    # How to read the corpus (corpus.py): where the text is in a JSON line, and whether to skip bad files.
    text_field: str = "text"
    skip_bad_files: bool = False

    MACHINE_FIELDS = ("device", "compile", "log_file", "progress", "grad_checkpoint", "fsdp", "text_field",
                      "skip_bad_files")

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("context_length", "batch_size", "grad_accum", "eval_interval", "eval_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer == "muon" and self.fsdp:
            raise UserError("muon (--optimizer muon; the quick and small presets' default) orthogonalizes whole "
                            "matrices, which --fsdp splits across processes; drop --fsdp (DDP works with muon) or "
                            "pass --optimizer adamw with an AdamW lr (small: --lr 3e-4)")
        if not self.learning_rate > 0:
            raise UserError(f"learning rate must be positive, got {self.learning_rate}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise UserError(f"warmup steps must be >= 0, got {self.warmup_steps}")

    def run_settings(self) -> dict:
        """The fields that shape the training math (saved in checkpoints; machine fields are not)."""
        return {k: v for k, v in asdict(self).items() if k not in self.MACHINE_FIELDS}


@dataclass(frozen=True)
class Preset:
    """A named model shape and the training settings that go with it."""

    summary: str  # one line for --help
    shape: dict  # GPT2Config fields; vocab_size comes from the tokenizer, so it is not here
    training: dict  # TrainingConfig fields: batch size, lr, warmup, evaluation


# The one preset table: the CLI's --preset, the trainer and the benchmarks all read it.
PRESET_TABLE: dict[str, Preset] = {
    # Seconds, not minutes: for tests and smoke runs, where only "does it run" matters.
    "tiny": Preset("2x64, context 64: for tests and smoke runs",
                   dict(num_layers=2, embedding_dim=64, num_heads=2, max_seq_len=64),
                   dict(batch_size=8, learning_rate=1e-3, warmup_steps=20, eval_interval=100)),
    # The best a 2-core CPU trains in ~100 s. With a ~10k vocab the tied head is most of the compute, so a
    # wider or deeper body only costs tokens. Small batches (more updates per second) and a high lr, which a
    # 4x128 model takes well. Muon (see optim.py) beat AdamW here at equal wall-clock, at the best of the lrs
    # tried (bench/RESULTS.md, "`quick` preset").
    "quick": Preset("4x128, context 128: the best model a 2-core CPU trains in a few minutes",
                    dict(num_layers=4, embedding_dim=128, num_heads=4, max_seq_len=128),
                    dict(batch_size=8, learning_rate=6e-3, warmup_steps=60, eval_interval=250, eval_tokens=65536,
                         optimizer="muon")),
    # The benchmark's shape: GPT-2 depth at ~60% width and a quarter of the context. Muon at batch 16: its
    # Newton-Schulz costs the same at this width whatever the batch, so it needs tokens per step to pay off;
    # it beat AdamW in equal time at every batch and lr tried (bench/RESULTS.md, "`small` preset").
    "small": Preset("12x480, context 256",
                    dict(num_layers=12, embedding_dim=480, num_heads=12, max_seq_len=256),
                    dict(batch_size=16, learning_rate=3e-3, warmup_steps=30, eval_interval=60, optimizer="muon")),
    # GPT-2 small (124M with the 50257-token vocabulary).
    "gpt2": Preset("GPT-2 small, 12x768, context 1024",
                   dict(num_layers=12, embedding_dim=768, num_heads=12, max_seq_len=1024),
                   dict(batch_size=16, learning_rate=6e-4, warmup_steps=200, eval_interval=500)),
}
DEFAULT_PRESET = "small"

# The shapes alone, as the API has always offered them: GPT2(vocab_size=..., **PRESETS["small"]).
PRESETS: dict[str, dict] = {name: preset.shape for name, preset in PRESET_TABLE.items()}
