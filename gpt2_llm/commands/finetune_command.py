"""`finetune <file> [vocab] [checkpoint] --base CHECKPOINT | --pretrained DIR`: adapt a trained model to new text.

    python main.py finetune my.txt vocab.txt --base gpt2_model.pt          # LoRA -> adapter.safetensors
    python main.py finetune my.txt --pretrained gpt2/ --max-time 600       # LoRA on OpenAI's GPT-2
    python main.py finetune my.txt vocab.txt --base gpt2_model.pt --full   # every weight -> finetuned_model.pt
    python main.py finetune my.txt vocab.txt adapter.safetensors           # resume (the base is recorded)
    python main.py finetune chats.jsonl vocab.txt --base gpt2_model.pt --chat   # a chat adapter + its vocab
    python main.py finetune chats.jsonl vocab.txt --base gpt2_model.pt --full --chat   # a chat model + its vocab

By default only LoRA adapters train (see lora.py): the base stays frozen and the run writes a small
adapter file, which `predict --adapter` applies and `merge` folds into a whole checkpoint. --full trains
every weight and writes a whole checkpoint, as `train` does. Either way this is the Trainer of `train`:
the same flags, bf16, evaluation in bits per byte, progress, atomic saves, Ctrl-C and exact resume.
"""
from pathlib import Path

from gpt2_llm.commands.common import (DEFAULT_VOCAB, add_base_arguments, add_training_arguments, check_can_save,
                                      report_result, run_in_process_group, training_inputs, training_options)
from gpt2_llm.errors import UserError
from gpt2_llm.finetune.runs import LORA_DEFAULTS, MAX_DEFAULT_CONTEXT, resume_finetuning, start_finetuning

DEFAULT_ADAPTER = "adapter.safetensors"
DEFAULT_FULL = "finetuned_model.pt"


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
    chat = parser.add_argument_group("chat")
    chat.add_argument("--chat", action="store_true",
                      help="FILE is conversations, JSON lines of {\"messages\": [{\"role\", \"content\"}, ...]}: "
                           "add the chat tokens to the vocab and the model, and train on the assistant's tokens only "
                           "(under LoRA the chat tokens' embedding rows train too)")
    chat.add_argument("--chat-vocab", metavar="PATH",
                      help="where the vocab with the chat tokens is written (default: beside the checkpoint, "
                           "NAME.vocab.txt)")
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
    chat_vocab = None
    if args.chat:
        options["chat"] = True
        chat_vocab = args.chat_vocab or str(Path(save_path).with_suffix(".vocab.txt"))
    elif args.chat_vocab:
        raise UserError("--chat-vocab goes with --chat")
    if args.checkpoint:
        trainer, base = resume_finetuning(args.checkpoint, args.base, args.vocab, args.pretrained, args.full,
                                          lora_flags, options)
        base_flags = "--full" if base is None else f"--pretrained {base[1]}" if base[1] else f"--base {base[0]}"
    else:
        trainer = start_finetuning(args.base, args.vocab, args.pretrained, args.full, lora_flags, options, chat_vocab)
        base_flags = "--full" if args.full else ""
    base_flags += " --chat" if args.chat else ""
    result = trainer.train(training_inputs(args), args.epochs, save_path, args.max_steps, args.max_time, args.val_file)
    vocab = trainer.bpe.vocab_path if args.chat else args.vocab or args.pretrained or DEFAULT_VOCAB
    resume = f"python main.py finetune {args.file} {vocab} {save_path} {base_flags}".strip()
    return report_result(result, save_path, context is None or context.is_main_process, resume)
