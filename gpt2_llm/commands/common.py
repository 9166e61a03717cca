"""What the model commands share: default paths, the training flags, the base-model flags, parsing a number,
and the dtype names (loading the model they name is the library's: gpt2_llm/load.py).

No torch at import time: main.py imports a command's module to build its flags, and a mistyped
flag must be reported at once.
"""
import math
from pathlib import Path

from gpt2_llm.train.config import DEFAULT_MODEL, OPTIMIZERS
from gpt2_llm.data.corpus import add_corpus_arguments
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.vocab import DEFAULT_VOCAB

# The --dtype choices: device.DTYPES's names (listed here so that building the flags needs no torch; a test
# holds the two equal). Inference runs in fp32 or bf16.
DTYPE_NAMES = ("fp32", "bf16", "fp16")
INFERENCE_DTYPE_NAMES = ("fp32", "bf16")

# The TrainingConfig fields the training flags set (each flag's dest is its field).
TRAINING_FIELDS = ("batch_size", "learning_rate", "grad_accum", "warmup_steps", "seed", "optimizer", "val_fraction",
                   "eval_interval", "eval_tokens", "dtype", "device", "compile", "log_file", "grad_checkpoint", "fsdp",
                   "text_field", "skip_bad_files")


# --- training: the flags and the run around it, shared by `train` and `finetune` -----------------


def add_training_arguments(parser, default_save):
    """The flags of how to train, shared by `train` and `finetune`."""
    length = parser.add_argument_group(
        "how long (on a resumed checkpoint, from its step: --max-steps N is N more steps; none given, an "
        "interrupted run finishes its saved plan)")
    length.add_argument("--epochs", type=float, default=None,
                        help="passes over the train tokens (default 1, or as many as --max-time allows); "
                             "one epoch = train tokens / (batch x context) steps")
    length.add_argument("--max-steps", type=int, help="optimizer steps to run, instead of --epochs")
    length.add_argument("--max-time", type=float, metavar="SECONDS",
                        help="stop after this many seconds of training steps, then evaluate and save; "
                             "the lr schedule is fitted to the time. Alone it sets the length (epochs repeat); "
                             "with --epochs or --max-steps, whichever ends first")
    data = parser.add_argument_group("data (the file may also be a folder, a quoted glob or a .jsonl file; "
                                      "documents are joined with <|endoftext|>)")
    data.add_argument("--input", action="append", metavar="PATH",
                      help="more training text, read after the file: a file, folder, quoted glob or .jsonl; "
                           "repeatable")
    data.add_argument("--val-file", metavar="PATH",
                      help="validate on this text (file, folder, glob, .jsonl) instead of the corpus's last "
                           "--val-fraction")
    add_corpus_arguments(data)
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--batch-size", type=int, help="windows per micro-batch (preset default)")
    opt.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float,
                     help="peak learning rate (preset default)")
    opt.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    opt.add_argument("--warmup", "--warmup-steps", dest="warmup_steps", type=int,
                     help="linear warmup steps before the cosine decay (preset default)")
    opt.add_argument("--optimizer", choices=OPTIMIZERS,
                     help="adamw (default), or muon: Muon for the decoder's weight matrices, AdamW for embeddings, "
                          "head, norms and biases")
    opt.add_argument("--seed", type=int, help="seed for weights, batches and dropout (default 1337)")
    run = parser.add_argument_group("where and how")
    run.add_argument("--dtype", choices=DTYPE_NAMES,
                     help="autocast precision (default: bf16 where the hardware has it, else fp16 on CUDA, else fp32)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (slow start)")
    run.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu); "
                                      "under torchrun each process takes cuda:LOCAL_RANK")
    run.add_argument("--grad-checkpoint", action="store_true", default=None,
                     help="recompute activations in backward: less memory for about 1/3 more compute")
    run.add_argument("--fsdp", action="store_true", default=None,
                     help="under torchrun: shard weights, gradients and optimizer state across the processes "
                          "(FSDP2) instead of replicating them (DDP)")
    evaluation = parser.add_argument_group("evaluation and output (given on a resume, these replace the saved ones)")
    evaluation.add_argument("--val-fraction", type=float, help="last fraction of the file held out for validation "
                                                               "(default 0.1)")
    evaluation.add_argument("--eval-interval", type=int, help="steps between evaluations and checkpoints")
    evaluation.add_argument("--eval-tokens", type=int, help="val tokens scored per evaluation (always the same ones)")
    evaluation.add_argument("--log-file", metavar="PATH", help="append JSON-lines metrics here (see `plot`)")
    evaluation.add_argument("--save", metavar="PATH",
                            help=f"checkpoint to write (default: {default_save})")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")


def training_inputs(args, default=None) -> list:
    """The training corpus the flags name: the file (or default), then each --input."""
    return [args.file or default, *(args.input or [])]


def training_options(args, context) -> dict:
    """Trainer options from the flags given (those left out fall back to a checkpoint, then a preset)."""
    options = {field: getattr(args, field) for field in TRAINING_FIELDS if getattr(args, field) is not None}
    options["progress"] = not args.no_progress
    if context is not None:
        options["distributed_context"] = context
    return options


def run_in_process_group(command, args):
    """command(args, context) inside torchrun's process group (context None in a plain process)."""
    from gpt2_llm.train import distributed

    context = distributed.start(args.device)
    try:
        exit_code = command(args, context)
        distributed.wait_for_all(context)  # leave together: a rank tearing down its group early can abort a peer
        return exit_code
    finally:
        distributed.stop()


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


def check_can_save(path):
    """Refuse a checkpoint path that can never be written, so that no training is thrown away at the first save."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot save the checkpoint to {path}: it is a directory; pass a file path (--save)")
    if not path.resolve().parent.is_dir():
        raise UserError(f"cannot save to {path}: the folder {path.parent} does not exist; create it first")


# --- the model a command works on ---------------------------------------------------------------


def add_base_arguments(parser, title, checkpoint_help):
    """--base CHECKPOINT | --pretrained DIR, one or the other (argparse refuses both: exit 2)."""
    group = parser.add_argument_group(title).add_mutually_exclusive_group()
    group.add_argument("--base", metavar="CHECKPOINT", help=checkpoint_help)
    group.add_argument("--pretrained", metavar="DIR",
                       help="a Hugging Face GPT-2 directory (config.json, model.safetensors or pytorch_model.bin, "
                            "vocab.json, merges.txt)")


def parse_number(text, name, kind, low=None, high=None, exclusive_low=False):
    """parse_number("0.8", "--temperature", float, low=0.0) -> 0.8; a bad value -> UserError."""
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {text!r}")
    too_low = low is not None and (value <= low if exclusive_low else value < low)
    if too_low or (high is not None and value > high):
        bounds = {(True, True): f"between {low} and {high}", (True, False): f"{'>' if exclusive_low else '>='} {low}",
                  (False, True): f"<= {high}"}[low is not None, high is not None]
        raise UserError(f"{name} must be {bounds}, got {text}")
    return value


def check_inference_weights(dtype: str | None, quantize: str | None = None) -> None:
    """--dtype and --quantize of the commands that decode or score (predict, serve, evaluate), or UserError."""
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: the one quantization is int8")
    if dtype is not None and dtype not in INFERENCE_DTYPE_NAMES:
        raise UserError(f"--dtype {dtype}: use fp32 or bf16")

