"""`finetune <file> [vocab] [checkpoint] --base CHECKPOINT | --pretrained DIR`: adapt a trained model to new text.

    python main.py finetune my.txt vocab.txt --base gpt2_model.pt          # LoRA -> adapter.safetensors
    python main.py finetune my.txt --pretrained gpt2/ --max-time 600       # LoRA on OpenAI's GPT-2
    python main.py finetune my.txt vocab.txt --base gpt2_model.pt --full   # every weight -> finetuned_model.pt
    python main.py finetune my.txt vocab.txt adapter.safetensors           # resume (the base is recorded)

By default only LoRA adapters train (see lora.py): the base stays frozen and the run writes a small
adapter file, which `predict --adapter` applies and `merge` folds into a whole checkpoint. --full trains
every weight and writes a whole checkpoint, as `train` does. Either way this is the Trainer of `train`:
the same flags, bf16, evaluation in bits per byte, progress, atomic saves, Ctrl-C and exact resume.
"""

from gpt2_llm.commands.common import (DEFAULT_VOCAB, add_base_arguments, add_training_arguments, check_can_save,
                                      report_result, run_in_process_group, training_inputs, training_options)
from gpt2_llm.errors import UserError

DEFAULT_ADAPTER = "adapter.safetensors"
DEFAULT_FULL = "finetuned_model.pt"
LORA_DEFAULTS = dict(rank=8, alpha=16.0, targets="attn,mlp", dropout=0.0)
# Training settings for fine-tuning (flags override them): short runs, frequent evaluation. LoRA's
# few parameters take a much higher learning rate than the whole network does; weight decay would
# only pull the adapters back towards the base.
FINETUNE_SETTINGS = dict(batch_size=4, warmup_steps=20, eval_interval=100, eval_at_start=True)
LORA_SETTINGS = dict(learning_rate=1e-3, weight_decay=0.0)
FULL_SETTINGS = dict(learning_rate=1e-4)
MAX_DEFAULT_CONTEXT = 1024


def add_arguments(name, parser):
    parser.add_argument("file", help="UTF-8 text to fine-tune on (its last --val-fraction is held out): a file, "
                                     "a folder, a quoted glob or a .jsonl file")
    parser.add_argument("vocab", nargs="?", default=None,
                        help="the base checkpoint's vocab file (default: vocab.txt; with --pretrained the "
                             "directory's own vocab.json + merges.txt)")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="resume this fine-tuning run: an adapter file, or with --full a whole checkpoint")
    add_base_arguments(parser, "the model to fine-tune", "a gpt2-llm checkpoint (what `train` writes)")
    adapters = parser.add_argument_group("LoRA adapters (the default) or --full")
    adapters.add_argument("--lora-rank", type=int, help=f"rank r of each update (default {LORA_DEFAULTS['rank']})")
    adapters.add_argument("--lora-alpha", type=float,
                          help=f"the update is scaled by alpha / r (default {LORA_DEFAULTS['alpha']:g})")
    adapters.add_argument("--lora-targets", help="comma-separated layers of each block to adapt: attn, mlp, or "
                                                 "c_attn, attn.c_proj, c_fc, mlp.c_proj (default attn,mlp)")
    adapters.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input (default 0)")
    adapters.add_argument("--full", action="store_true", help="fine-tune every weight instead of adapters")
    parser.add_argument("--context", type=int,
                        help=f"training window in tokens (default: the base's context, at most {MAX_DEFAULT_CONTEXT})")
    add_training_arguments(parser, f"the checkpoint being resumed, else {DEFAULT_ADAPTER} ({DEFAULT_FULL} with --full)")


def run(args):
    return run_in_process_group(finetune, args)


def finetune(args, context):
    lora_flags = {key: getattr(args, f"lora_{key}") for key in LORA_DEFAULTS if getattr(args, f"lora_{key}") is not None}
    if args.full and lora_flags:
        raise UserError(f"--full trains every weight: drop --lora-{next(iter(lora_flags))}")
    save_path = args.save or args.checkpoint or (DEFAULT_FULL if args.full else DEFAULT_ADAPTER)
    check_can_save(save_path)
    options = training_options(args, context)
    if args.context is not None:
        options["context_length"] = args.context
    if args.checkpoint:
        trainer, base_flags = resumed_trainer(args, lora_flags, options)
    else:
        trainer, base_flags = new_trainer(args, lora_flags, options)
    result = trainer.train(training_inputs(args), args.epochs, save_path, args.max_steps, args.max_time, args.val_file)
    vocab = args.vocab or args.pretrained or DEFAULT_VOCAB
    resume = f"python main.py finetune {args.file} {vocab} {save_path} {base_flags}".strip()
    return report_result(result, save_path, context is None or context.is_main_process, resume)


def new_trainer(args, lora_flags, options):
    """A fresh fine-tuning run on --base or --pretrained: a new optimizer and schedule from step 0."""
    from gpt2_llm.finetune import lora
    from gpt2_llm.load import load_base
    from gpt2_llm.train.config import TrainingConfig
    from gpt2_llm.train.trainer import Trainer

    if args.base is None and args.pretrained is None:
        raise UserError("name the model to fine-tune: --base CHECKPOINT or --pretrained DIR")
    model, bpe = load_base(args.base, args.vocab, args.pretrained)
    settings = {**FINETUNE_SETTINGS, **(FULL_SETTINGS if args.full else LORA_SETTINGS), **options}
    context_length = settings.pop("context_length", min(model.config.max_seq_len, MAX_DEFAULT_CONTEXT))
    batch_size, learning_rate = settings.pop("batch_size"), settings.pop("learning_rate")
    if args.full:
        return Trainer(model, bpe, context_length, batch_size, learning_rate, **settings), "--full"
    base = {"pretrained": args.pretrained} if args.pretrained else {"checkpoint": args.base}
    fingerprint = lora.weights_fingerprint(model)  # of the weights as loaded, before adapters and devices
    config = lora.LoRAConfig(**{**LORA_DEFAULTS, **lora_flags})
    lora.add_lora(model, config, seed=settings.get("seed", TrainingConfig.seed))
    adapter = lora.adapter_metadata(config, model.config, fingerprint, base)
    return Trainer(model, bpe, context_length, batch_size, learning_rate, adapter=adapter, **settings), ""


def resumed_trainer(args, lora_flags, options):
    """Continue a fine-tuning run from its adapter file (or, with --full, its whole checkpoint)."""
    from gpt2_llm.checkpoints import checkpoint
    from gpt2_llm.finetune import lora
    from gpt2_llm.load import load_adapted_base
    from gpt2_llm.tokenizer.vocab import load_vocab
    from gpt2_llm.train.trainer import Trainer

    tensors, metadata = checkpoint.load_checkpoint(args.checkpoint)
    if "adapter" not in metadata:
        if not args.full:
            raise UserError(f"{args.checkpoint} is a whole-model checkpoint, not an adapter file: add --full to "
                            f"resume full fine-tuning, or pass it as --base to start LoRA on it")
        if args.base is not None:
            raise UserError("--full resumes the whole model from its checkpoint: drop --base")
        bpe = load_vocab(args.vocab or args.pretrained or DEFAULT_VOCAB)
        return Trainer.from_checkpoint(args.checkpoint, bpe, **options), "--full"
    if args.full:
        raise UserError(f"{args.checkpoint} is a LoRA adapter file; --full resumes a whole checkpoint: drop --full")
    adapter = lora.read_adapter_metadata(metadata, args.checkpoint)
    saved = lora.LoRAConfig.from_dict(adapter["lora"])
    changed = [f"--lora-{key} {value}" for key, value in lora_flags.items()
               if getattr(lora.LoRAConfig(**{**saved.to_dict(), key: value}), key) != getattr(saved, key)]
    if changed:
        raise UserError(f"{args.checkpoint} was trained with {saved.to_dict()}; a resumed adapter keeps its shape: "
                        f"drop {', '.join(changed)}")
    model, bpe, (base_path, pretrained) = load_adapted_base(args.base, args.vocab, args.pretrained, args.checkpoint,
                                                            (tensors, metadata))
    trainer = Trainer.resume(model, bpe, tensors, metadata, adapter=adapter, **options)
    flags = f"--pretrained {pretrained}" if pretrained else f"--base {base_path}"
    return trainer, flags
