"""`train [file] [vocab] [checkpoint]`: train a model from a preset, or resume one from its checkpoint.

Flags left out fall back to the checkpoint being resumed, then to the preset. Exit code 0 when the
run ends (its steps, epochs or --max-time are done); 130 (SIGINT) or 143 (SIGTERM) when it was
interrupted, after saving a checkpoint that the same command resumes.

Under `torchrun --nproc_per_node=N main.py train ...` the same command trains data-parallel (see
distributed.py): --batch-size is then per process, and only rank 0 prints and saves.
"""
from pathlib import Path

from gpt2_llm.errors import UserError

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "shakespeare.txt"
DEFAULT_VOCAB = "vocab.txt"
DEFAULT_SAVE = "gpt2_model.pt"
PRESET_NAMES = ("tiny", "quick", "small", "gpt2")
MAX_CONTEXT = 1 << 16  # GPT-2 has 1024; far beyond, a typo is likelier than a wish (and memory runs out)

# flag -> (GPT2Config field, what it means); these must agree with a checkpoint being resumed.
ARCHITECTURE_FLAGS = {
    "layers": "num_layers",
    "dim": "embedding_dim",
    "heads": "num_heads",
    "context": "max_seq_len",
    "dropout": "dropout",
    "rope": "use_rope",
}
# flag -> TrainingConfig field, for flags that tune training rather than the model.
TRAINING_FLAGS = {
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "grad_accum": "grad_accum",
    "warmup": "warmup_steps",
    "seed": "seed",
    "val_fraction": "val_fraction",
    "eval_interval": "eval_interval",
    "eval_tokens": "eval_tokens",
    "dtype": "dtype",
    "device": "device",
    "compile": "compile",
    "log_file": "log_file",
    "grad_checkpoint": "grad_checkpoint",
    "fsdp": "fsdp",
}


def add_arguments(name, parser):
    parser.add_argument("file", nargs="?", default=None,
                        help="UTF-8 training text (default: the shipped data/shakespeare.txt)")
    parser.add_argument("vocab", nargs="?", default=DEFAULT_VOCAB,
                        help="BPE vocab file; created from the training file when missing (default: vocab.txt)")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="resume from this checkpoint: model, optimizer, schedule and RNG state")
    shape = parser.add_argument_group("model (a new model; a resumed one keeps its checkpoint's shape)")
    shape.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="named model shape and training settings (default: small). tiny: 4x128, context 128; "
                            "quick: the best model a 2-core CPU trains in a few minutes; small: 12x480, context 256; "
                            "gpt2: GPT-2 small, 12x768, context 1024")
    shape.add_argument("--layers", type=int, help="number of decoder blocks")
    shape.add_argument("--dim", type=int, help="embedding (residual stream) width")
    shape.add_argument("--heads", type=int, help="attention heads (must divide --dim)")
    shape.add_argument("--context", type=int, help="context length in tokens (window size for training)")
    shape.add_argument("--dropout", type=float, help="dropout rate (default 0)")
    shape.add_argument("--rope", action="store_true", default=None,
                       help="rotary position embeddings instead of a learned position table")
    shape.add_argument("--vocab-size", type=int,
                       help="size of a vocab created here (default: recommended for the file)")
    add_training_arguments(parser, f"the checkpoint being resumed, else {DEFAULT_SAVE}")


def add_training_arguments(parser, default_save):
    """The flags of how to train, shared by `train` and `finetune`."""
    length = parser.add_argument_group("how long")
    length.add_argument("--epochs", type=float, default=None,
                        help="passes over the train tokens (default 1, or as many as --max-time allows); "
                             "one epoch = train tokens / (batch x context) steps")
    length.add_argument("--max-steps", type=int, help="optimizer steps to run, instead of --epochs")
    length.add_argument("--max-time", type=float, metavar="SECONDS",
                        help="stop after this many seconds of training steps, then evaluate and save; "
                             "the lr schedule is fitted to the time. Alone it sets the length (epochs repeat); "
                             "with --epochs or --max-steps, whichever ends first")
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--batch-size", type=int, help="windows per micro-batch (preset default)")
    opt.add_argument("--lr", type=float, help="peak learning rate (preset default)")
    opt.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    opt.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay (preset default)")
    opt.add_argument("--seed", type=int, help="seed for weights, batches and dropout (default 1337)")
    run = parser.add_argument_group("where and how")
    run.add_argument("--dtype", choices=("fp32", "bf16", "fp16"),
                     help="autocast precision (default: bf16 where the hardware has it, else fp16 on CUDA, else fp32)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (slow start)")
    run.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu); "
                                      "under torchrun each process takes cuda:LOCAL_RANK")
    run.add_argument("--grad-checkpoint", action="store_true", default=None,
                     help="recompute activations in backward: less memory for about 1/3 more compute")
    run.add_argument("--fsdp", action="store_true", default=None,
                     help="under torchrun: shard weights, gradients and optimizer state across the processes "
                          "(FSDP2) instead of replicating them (DDP)")
    evaluation = parser.add_argument_group("evaluation and output")
    evaluation.add_argument("--val-fraction", type=float, help="last fraction of the file held out for validation "
                                                               "(default 0.1)")
    evaluation.add_argument("--eval-interval", type=int, help="steps between evaluations and checkpoints")
    evaluation.add_argument("--eval-tokens", type=int, help="val tokens scored per evaluation (always the same ones)")
    evaluation.add_argument("--log-file", metavar="PATH", help="append JSON-lines metrics here (see `plot`)")
    evaluation.add_argument("--save", metavar="PATH",
                            help=f"checkpoint to write (default: {default_save})")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")


def run(args):
    return run_in_process_group(train, args)


def run_in_process_group(command, args):
    """command(args, context) inside torchrun's process group (context None in a plain process)."""
    from gpt2_llm import distributed

    context = distributed.start(args.device)
    try:
        exit_code = command(args, context)
        distributed.wait_for_all(context)  # leave together: a rank tearing down its group early can abort a peer
        return exit_code
    finally:
        distributed.stop()


def train(args, context):
    from gpt2_llm import distributed
    from gpt2_llm.trainer import Trainer

    is_main_process = context is None or context.is_main_process
    text_path = Path(args.file) if args.file else DEFAULT_CORPUS
    if args.context is not None and not 1 <= args.context <= MAX_CONTEXT:
        raise UserError(f"--context must be between 1 and {MAX_CONTEXT}, got {args.context}")
    check_can_save(args.save or args.checkpoint or DEFAULT_SAVE)  # before training, not after
    with distributed.main_process_first(context):  # rank 0 creates a missing vocab; the others then load it
        bpe = ensure_vocab(args.vocab, text_path, args.vocab_size, resuming=args.checkpoint is not None)
    options = training_options(args, context)
    if args.checkpoint:
        trainer = Trainer.from_checkpoint(args.checkpoint, bpe, **options)
        check_architecture_flags(args, trainer.model.config)
        save_path = args.save or args.checkpoint
    else:
        trainer = new_trainer(args, bpe, options)
        save_path = args.save or DEFAULT_SAVE
    result = trainer.train(text_path, args.epochs, save_path, args.max_steps, args.max_time)
    return report_result(result, save_path, is_main_process, f"python main.py train {text_path} {args.vocab} {save_path}")


def training_options(args, context) -> dict:
    """Trainer options from the flags given (those left out fall back to a checkpoint, then a preset)."""
    options = {field: getattr(args, flag) for flag, field in TRAINING_FLAGS.items() if getattr(args, flag) is not None}
    options["progress"] = not args.no_progress
    if context is not None:
        options["distributed_context"] = context
    return options


def report_result(result, save_path, is_main_process, resume_command) -> int:
    """Print how the run ended -> the exit code (128 + signal when interrupted)."""
    if not is_main_process:
        return 0 if result.stop_reason != "interrupted" else 128 + result.signal_number
    if result.stop_reason == "interrupted":
        print(f"Interrupted at step {result.steps}; saved {save_path}. Resume with: {resume_command}")
        return 128 + result.signal_number
    summary = f"Done at step {result.steps}"
    if result.val_bpb is not None:
        summary += f": val loss {result.val_loss:.4f}, val bits/byte {result.val_bpb:.4f}"
    print(f"{summary}; saved {save_path}")
    return 0


def new_trainer(args, bpe, options):
    from gpt2_llm.config import PRESETS
    from gpt2_llm.trainer import TRAINING_PRESETS, Trainer

    preset = args.preset or "small"
    shape = dict(PRESETS[preset])
    for flag, field in ARCHITECTURE_FLAGS.items():
        if getattr(args, flag) is not None:
            shape[field] = getattr(args, flag)
    settings = {**TRAINING_PRESETS[preset], **options}
    return Trainer.create_trainer_from_vocab(
        bpe.vocab_path,
        shape["embedding_dim"],
        shape["num_layers"],
        shape["num_heads"],
        shape["max_seq_len"],
        settings.pop("batch_size"),
        settings.pop("learning_rate"),
        dropout=shape.get("dropout", 0.0),
        use_rope=shape.get("use_rope", False),
        **settings,
    )


def check_can_save(path):
    """Refuse a checkpoint path that can never be written, so that no training is thrown away at the first save."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot save the checkpoint to {path}: it is a directory; pass a file path (--save)")
    if not path.resolve().parent.is_dir():
        raise UserError(f"cannot save to {path}: the folder {path.parent} does not exist; create it first")


def check_architecture_flags(args, config):
    """A resumed model keeps its shape: refuse flags that ask for another one."""
    from gpt2_llm.config import PRESETS

    wanted = {field: getattr(args, flag) for flag, field in ARCHITECTURE_FLAGS.items()
              if getattr(args, flag) is not None}
    if args.preset:
        wanted = {**PRESETS[args.preset], **wanted}
    conflicts = [f"{field} {value} (checkpoint has {getattr(config, field)})"
                 for field, value in wanted.items() if getattr(config, field) != value]
    if conflicts:
        raise UserError(
            f"{args.checkpoint} has a different shape than asked for: {', '.join(conflicts)}. A resumed model keeps "
            "its checkpoint's shape; drop those flags, or leave out the checkpoint to train a new model"
        )


def ensure_vocab(vocab_path, text_path, vocab_size, resuming):
    """Load the vocab, or learn one from the training file when it does not exist yet."""
    from bpe import BPE, read_text_file
    from gpt2_llm.commands.tokenizer_commands import save_vocab

    bpe = BPE(str(vocab_path))
    if bpe.load():
        if vocab_size is not None and vocab_size != bpe.vocab_size:
            raise UserError(f"{vocab_path} already exists with {bpe.vocab_size} tokens, not --vocab-size {vocab_size}; "
                            "delete it or pass another vocab path to create a new one")
        return bpe
    if resuming:
        raise UserError(f"vocab file {vocab_path} not found; pass the vocab the checkpoint was trained with")
    text = read_text_file(text_path)
    bpe.set_vocab_size(vocab_size or bpe.get_recommended_vocab_size(text))
    print(f"Creating vocab {vocab_path} from {text_path}")
    bpe.create_vocab(text)
    save_vocab(bpe)
    return bpe
