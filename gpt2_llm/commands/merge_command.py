"""`merge <adapter> [vocab] [--base CHECKPOINT | --pretrained DIR]`: fold a LoRA adapter into a whole checkpoint.

    python main.py merge adapter.safetensors                         # its recorded base -> merged_model.pt
    python main.py merge adapter.safetensors gpt2/ --pretrained gpt2/ --output shakespeare_gpt2.pt
    python main.py merge adapter.safetensors --hf --output shakespeare_gpt2/   # a Hugging Face directory (export)

An adapter of a chat run also adds the chat tokens to the base's vocab: the merged checkpoint's vocab (with them) is
written beside it, merged_model.vocab.txt.

Each adapted weight becomes W + (alpha / r) B A (see lora.py): the merged model computes what base +
adapter computed, needs no adapter at run time, and can be trained on, quantized or exported.
"""
from pathlib import Path

from gpt2_llm.commands.common import DEFAULT_VOCAB, add_base_arguments, check_can_save
from gpt2_llm.errors import UserError

DEFAULT_OUTPUT = "merged_model.pt"
DEFAULT_HF_OUTPUT = "merged_model"


def add_arguments(name, parser):
    parser.add_argument("adapter", help="LoRA adapter file (what `finetune` writes)")
    parser.add_argument("vocab", nargs="?", default=None,
                        help="the base's vocab file (default: vocab.txt; with --pretrained its own)")
    add_base_arguments(parser, "the base model (default: the one the adapter records)", "base checkpoint")
    parser.add_argument("--output", "-o", default=None,
                        help=f"whole checkpoint to write (default: {DEFAULT_OUTPUT}; with --hf the directory "
                             f"{DEFAULT_HF_OUTPUT})")
    parser.add_argument("--hf", action="store_true",
                        help="write a Hugging Face GPT-2 directory instead, with the vocab's tokenizer files (as "
                             "`export --format hf` does)")


def run(args):
    from safetensors import SafetensorError

    from gpt2_llm.checkpoints.export import check_export, export
    from gpt2_llm.finetune.lora import merge_lora
    from gpt2_llm.load import load_adapted_base, load_adapter_file
    from gpt2_llm.tokenizer.vocab import save_vocab

    output = args.output or (DEFAULT_HF_OUTPUT if args.hf else DEFAULT_OUTPUT)
    if args.hf:
        check_export(output, "hf", "f32")
    else:
        check_can_save(output)
    tensors, metadata = load_adapter_file(args.adapter)
    model, bpe, (base_path, pretrained) = load_adapted_base(args.base, args.vocab, args.pretrained, args.adapter,
                                                          (tensors, metadata))
    model = merge_lora(model)
    vocab = args.vocab or pretrained or DEFAULT_VOCAB
    if metadata["adapter"].get("added_tokens") and not args.hf:  # the merged model has the tokens the run added
        vocab = bpe.vocab_path = str(Path(output).with_suffix(".vocab.txt"))
        check_can_save(vocab)
        save_vocab(bpe)
    try:
        if args.hf:
            export(model, bpe, output, "hf", "f32")
        else:
            saved_vocab = {"vocab": metadata["vocab"]} if "vocab" in metadata else {}
            merged_from = {"adapter": args.adapter, **(metadata["adapter"].get("base") or {})}
            chat = {"chat_template": metadata["chat_template"]} if "chat_template" in metadata else {}
            model.save(output, metadata={**saved_vocab, **chat, "merged_from": merged_from})
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as SafetensorError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        kept = "" if args.hf else "; nothing was changed"
        raise UserError(f"cannot write {output}: {reason}{kept}") from None
    if args.hf:
        how = f'python main.py predict "..." 50 --pretrained {output}'
        print(f"Merged {args.adapter} into {pretrained or base_path}; saved the directory {output}. Try: {how}")
    else:
        print(f"Merged {args.adapter} into {pretrained or base_path}; saved {output}. "
              f"Try: python main.py predict \"...\" 50 {output} {vocab}")
    return 0

