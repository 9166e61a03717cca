"""`merge <adapter> [vocab] [--base CHECKPOINT | --pretrained DIR]`: fold a LoRA adapter into a whole checkpoint.

    python main.py merge adapter.safetensors                         # its recorded base -> merged_model.pt
    python main.py merge adapter.safetensors gpt2/ --pretrained gpt2/ --output shakespeare_gpt2.pt

Each adapted weight becomes W + (alpha / r) B A (see lora.py): the merged model computes what base +
adapter computed, needs no adapter at run time, and can be trained on, quantized or exported.
"""
from gpt2_llm.errors import UserError

DEFAULT_OUTPUT = "merged_model.pt"


def add_arguments(name, parser):
    parser.add_argument("adapter", help="LoRA adapter file (what `finetune` writes)")
    parser.add_argument("vocab", nargs="?", default=None,
                        help="the base's vocab file (default: vocab.txt; with --pretrained its own)")
    parser.add_argument("--base", metavar="CHECKPOINT", help="base checkpoint (default: the one the adapter recorded)")
    parser.add_argument("--pretrained", metavar="DIR", help="base Hugging Face GPT-2 directory")
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT,
                        help=f"whole checkpoint to write (default: {DEFAULT_OUTPUT})")


def run(args):
    from safetensors import SafetensorError

    from gpt2_llm.commands.finetune_command import load_base
    from gpt2_llm.commands.model_files import apply_adapter, load_adapter_file, recorded_base
    from gpt2_llm.commands.train_command import check_can_save
    from gpt2_llm.lora import merge_lora

    if args.base is not None and args.pretrained is not None:
        raise UserError("give --base CHECKPOINT or --pretrained DIR, not both")
    check_can_save(args.output)
    tensors, metadata = load_adapter_file(args.adapter)
    base_path, pretrained = args.base, args.pretrained
    if base_path is None and pretrained is None:
        base_path, pretrained = recorded_base(metadata, args.adapter)
    model, bpe = load_base(base_path, args.vocab, pretrained)
    model = merge_lora(apply_adapter(model, bpe, args.adapter, tensors, metadata))
    saved_vocab = {"vocab": metadata["vocab"]} if "vocab" in metadata else {}
    try:
        model.save(args.output, metadata={**saved_vocab, "merged_from": {"adapter": args.adapter,
                                                                          **(metadata["adapter"].get("base") or {})}})
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as SafetensorError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(f"cannot write {args.output}: {reason}; nothing was changed") from None
    vocab = args.vocab or pretrained or "vocab.txt"
    print(f"Merged {args.adapter} into {pretrained or base_path}; saved {args.output}. "
          f"Try: python main.py predict \"...\" 50 {args.output} {vocab}")
    return 0
