"""What the model commands share: default paths, the training flags, and loading the model a command
works on (a checkpoint + its vocab, or a Hugging Face GPT-2 directory, optionally with a LoRA adapter).

No torch at import time: main.py imports a command's module to build its flags, and a mistyped
flag must be reported at once.
"""
import os
import sys
from pathlib import Path

from gpt2_llm.train.config import DEFAULT_MODEL, OPTIMIZERS
from gpt2_llm.data.corpus import add_corpus_arguments
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.vocab import DEFAULT_VOCAB, check_vocab, load_vocab

# flag -> TrainingConfig field, for flags that tune training rather than the model.
TRAINING_FLAGS = {
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "grad_accum": "grad_accum",
    "warmup": "warmup_steps",
    "seed": "seed",
    "optimizer": "optimizer",
    "val_fraction": "val_fraction",
    "eval_interval": "eval_interval",
    "eval_tokens": "eval_tokens",
    "dtype": "dtype",
    "device": "device",
    "compile": "compile",
    "log_file": "log_file",
    "grad_checkpoint": "grad_checkpoint",
    "fsdp": "fsdp",
    "text_field": "text_field",
    "skip_bad_files": "skip_bad_files",
}


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
    opt.add_argument("--lr", type=float, help="peak learning rate (preset default)")
    opt.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    opt.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay (preset default)")
    opt.add_argument("--optimizer", choices=OPTIMIZERS,
                     help="adamw (default), or muon: Muon for the decoder's weight matrices, AdamW for embeddings, "
                          "head, norms and biases")
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
    options = {field: getattr(args, flag) for flag, field in TRAINING_FLAGS.items() if getattr(args, flag) is not None}
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


def load_model_and_vocab(model_path, vocab_path, pretrained, adapter_path=None):
    """-> (GPT2, BPE): a checkpoint + vocab file, or a Hugging Face directory (pretrained), with the LoRA
    adapter at adapter_path (if any) applied and merged into the weights. With an adapter and no model,
    the base is the one the adapter records."""
    from gpt2_llm.finetune.lora import merge_lora

    model, bpe, _ = load_adapted_base(model_path, vocab_path, pretrained, adapter_path)
    return (model if adapter_path is None else merge_lora(model)), bpe


def load_adapted_base(base_path, vocab_path, pretrained, adapter_path=None, adapter=None):
    """-> (model, BPE, (base_path, pretrained)): the base (by default the one the adapter records) and
    its vocab, with the adapter at adapter_path (adapter: its (tensors, metadata) if already read) added,
    unmerged. The adapter file is read first, so that a wrong one fails before the slow model load."""
    if adapter_path is not None and adapter is None:
        adapter = load_adapter_file(adapter_path)
    if adapter is not None and base_path is None and pretrained is None:
        base_path, pretrained = recorded_base(adapter[1], adapter_path)
    model, bpe = load_base(base_path, vocab_path, pretrained)
    if adapter is not None:
        model = apply_adapter(model, bpe, adapter_path, *adapter)
    return model, bpe, (base_path, pretrained)


def load_base(base_path, vocab_path, pretrained):
    """-> (GPT2, BPE): a checkpoint + its vocab, or a Hugging Face directory, which is its own vocab."""
    from gpt2_llm.checkpoints import loading
    from gpt2_llm.gpt2 import GPT2

    if pretrained is not None:
        if base_path is not None:
            raise UserError("give either a checkpoint and vocab file or --pretrained DIR, not both")
        if vocab_path is not None and Path(vocab_path).resolve() != Path(pretrained).resolve():
            raise UserError(f"with --pretrained the vocabulary is {pretrained}'s own: pass {pretrained} as the "
                            "vocab, or leave the vocab out")
        if not os.path.isdir(pretrained):
            raise UserError(f"--pretrained {pretrained}: no such directory; pass a Hugging Face GPT-2 directory")
        base_path = vocab_path = pretrained
    else:
        base_path = base_path or DEFAULT_MODEL
        if not os.path.exists(base_path):
            raise UserError(f"model file {base_path} not found; train one with: python main.py train "
                            "(or pass a checkpoint path, or --pretrained DIR)")
    bpe = load_vocab(vocab_path or DEFAULT_VOCAB)  # first: a wrong vocab fails before the slow model load
    model, metadata = loading.load_model(base_path, GPT2)
    check_vocab(bpe, metadata, model.config, base_path)
    return model, bpe


def load_adapter_file(path):
    """-> (tensors, metadata) of a LoRA adapter file, refusing anything else with a clear message."""
    from gpt2_llm.checkpoints import checkpoint
    from gpt2_llm.finetune import lora

    tensors, metadata = checkpoint.load_checkpoint(path)
    lora.read_adapter_metadata(metadata, path)
    return tensors, metadata


def apply_adapter(model, bpe, adapter_path, tensors=None, metadata=None):
    """Add the LoRA adapter at adapter_path (or its loaded tensors + metadata) to a freshly loaded base
    model, in place: refused for a base of another shape or another vocabulary, a note for other weights."""
    from gpt2_llm.finetune import lora

    if tensors is None:
        tensors, metadata = load_adapter_file(adapter_path)
    check_vocab(bpe, metadata, model.config, adapter_path)
    model, warning = lora.apply_adapter(model, tensors, metadata, adapter_path)
    if warning:
        print(f"note: {warning}", file=sys.stderr)
    return model


def recorded_base(metadata, adapter_path) -> tuple[str | None, str | None]:
    """(checkpoint, pretrained directory) of the base an adapter file says it was trained on."""
    from gpt2_llm.finetune import lora

    recorded = lora.read_adapter_metadata(metadata, adapter_path).get("base") or {}
    checkpoint_path, pretrained = recorded.get("checkpoint"), recorded.get("pretrained")
    if checkpoint_path is None and pretrained is None:
        raise UserError(f"{adapter_path} does not say which base it adapts: pass the base model")
    return checkpoint_path, pretrained
