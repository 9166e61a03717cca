"""`train [file] [vocab] [checkpoint]`: train a model from a preset, or resume one from its checkpoint.

Flags left out fall back to the checkpoint being resumed, then to the preset; flags given win. On a
resumed checkpoint a length counts from its step (--max-steps 2: two more steps), and an interrupted
run given no length finishes its saved plan. Exit code 0 when the run ends (its steps, epochs or
--max-time are done); 130 (SIGINT) or 143 (SIGTERM) when it was interrupted, after saving a
checkpoint that the same command resumes.

Under `torchrun --nproc_per_node=N main.py train ...` the same command trains data-parallel (see
distributed.py): --batch-size is then per process, and only rank 0 prints and saves.
"""
import os
from pathlib import Path

from gpt2_llm.commands.common import (DEFAULT_MODEL, DEFAULT_VOCAB, add_training_arguments, check_can_save,
                                      report_result, run_in_process_group, training_inputs, training_options)
from gpt2_llm.train.config import DEFAULT_PRESET, PRESET_TABLE
from gpt2_llm.errors import UserError

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "shakespeare.txt"
MAX_CONTEXT = 1 << 16  # GPT-2 has 1024; far beyond, a typo is likelier than a wish (and memory runs out)

# The GPT2Config fields the shape flags set (each flag's dest is its field); they must agree with a checkpoint
# being resumed.
ARCHITECTURE_FIELDS = ("num_layers", "embedding_dim", "num_heads", "max_seq_len", "dropout", "use_rope")


def add_arguments(name, parser):
    parser.add_argument("file", nargs="?", default=None,
                        help="UTF-8 training text: a file, a folder (read recursively), a quoted glob or a .jsonl "
                             "file (default: the shipped data/shakespeare.txt)")
    parser.add_argument("vocab", nargs="?", default=DEFAULT_VOCAB,
                        help="BPE vocab file, or a directory with GPT-2's vocab.json + merges.txt; a missing file "
                             f"is learned from the training file (default: {DEFAULT_VOCAB})")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="resume from this checkpoint: model, optimizer, schedule and RNG state")
    shape = parser.add_argument_group("model (a new model; a resumed one keeps its checkpoint's shape)")
    shape.add_argument("--preset", choices=tuple(PRESET_TABLE), default=None,
                       help=f"named model shape and training settings (default: {DEFAULT_PRESET}). "
                            + "; ".join(f"{name}: {preset.summary}" for name, preset in PRESET_TABLE.items()))
    shape.add_argument("--layers", "--num-layers", dest="num_layers", type=int, help="number of decoder blocks")
    shape.add_argument("--dim", "--embedding-dim", dest="embedding_dim", type=int,
                       help="embedding (residual stream) width")
    shape.add_argument("--heads", "--num-heads", dest="num_heads", type=int, help="attention heads (must divide --dim)")
    shape.add_argument("--context", "--max-seq-len", dest="max_seq_len", type=int,
                       help="context length in tokens (window size for training)")
    shape.add_argument("--dropout", type=float, help="dropout rate (default 0)")
    shape.add_argument("--rope", "--use-rope", dest="use_rope", action="store_true", default=None,
                       help="rotary position embeddings instead of a learned position table")
    shape.add_argument("--vocab-size", type=int,
                       help="size of a vocab created here (default: recommended for the file)")
    add_training_arguments(parser, f"the checkpoint being resumed, else {DEFAULT_MODEL}")


def run(args):
    return run_in_process_group(train, args)


def train(args, context):
    from gpt2_llm.train import distributed
    from gpt2_llm.train.trainer import Trainer

    is_main_process = context is None or context.is_main_process
    inputs = training_inputs(args, str(DEFAULT_CORPUS))
    if args.max_seq_len is not None and not 1 <= args.max_seq_len <= MAX_CONTEXT:
        raise UserError(f"--context must be between 1 and {MAX_CONTEXT}, got {args.max_seq_len}")
    check_can_save(args.save or args.checkpoint or DEFAULT_MODEL)  # before training, not after
    with distributed.main_process_first(context):  # rank 0 creates a missing vocab; the others then load it
        bpe = ensure_vocab(args, inputs, is_main_process)
    options = training_options(args, context)
    if args.checkpoint:
        trainer = Trainer.from_checkpoint(args.checkpoint, bpe, **options)
        check_architecture_flags(args, trainer.model.config)
        save_path = args.save or args.checkpoint
    else:
        shape = {field: getattr(args, field) for field in ARCHITECTURE_FIELDS if getattr(args, field) is not None}
        trainer = Trainer.from_preset(bpe, args.preset or DEFAULT_PRESET, shape, **options)
        save_path = args.save or DEFAULT_MODEL
    result = trainer.train(inputs, args.epochs, save_path, args.max_steps, args.max_time, args.val_file)
    more = "".join(f" --input {path}" for path in inputs[1:])
    return report_result(result, save_path, is_main_process,
                         f"python main.py train {inputs[0]} {args.vocab} {save_path}{more}")


def check_architecture_flags(args, config):
    """A resumed model keeps its shape: refuse flags that ask for another one."""
    wanted = {field: getattr(args, field) for field in ARCHITECTURE_FIELDS if getattr(args, field) is not None}
    if args.preset:
        wanted = {**PRESET_TABLE[args.preset].shape, **wanted}
    conflicts = [f"{field} {value} (checkpoint has {getattr(config, field)})"
                 for field, value in wanted.items() if getattr(config, field) != value]
    if conflicts:
        raise UserError(
            f"{args.checkpoint} has a different shape than asked for: {', '.join(conflicts)}. A resumed model keeps "
            "its checkpoint's shape; drop those flags, or leave out the checkpoint to train a new model"
        )


def ensure_vocab(args, inputs, is_main_process):
    """Load the vocab, or learn one from the training corpus when it does not exist yet."""
    from gpt2_llm.tokenizer.vocab import learn_vocab, load_vocab

    if os.path.exists(args.vocab):  # a vocab file, or a directory with GPT-2's
        bpe = load_vocab(args.vocab)
        if args.vocab_size is not None and args.vocab_size != bpe.vocab_size:
            raise UserError(f"{args.vocab} already exists with {bpe.vocab_size} tokens, not --vocab-size "
                            f"{args.vocab_size}; delete it or pass another vocab path to create a new one")
        return bpe
    if args.checkpoint is not None:
        raise UserError(f"vocab file {args.vocab} not found; pass the vocab the checkpoint was trained with")
    if not is_main_process:  # the main process just failed to create it, and said why
        raise UserError(f"vocab file {args.vocab} was not created")
    print(f"Creating vocab {args.vocab} from {' '.join(map(str, inputs))}")
    return learn_vocab(inputs, args.vocab, args.vocab_size, text_field=args.text_field or "text",
                       skip_bad_files=bool(args.skip_bad_files), progress=not args.no_progress)
