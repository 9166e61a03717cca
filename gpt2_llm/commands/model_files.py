"""Loading the model a command works on: a checkpoint + its vocab, or a Hugging Face GPT-2 directory,
optionally with a LoRA adapter on top. Shared by predict, finetune and merge."""
import os
import sys
from pathlib import Path

from gpt2_llm.errors import UserError

DEFAULT_MODEL = "gpt2_model.pt"
DEFAULT_VOCAB = "vocab.txt"


def load_model_and_vocab(model_path, vocab_path, pretrained):
    """-> (GPT2, BPE) from a checkpoint + vocab file, or from a Hugging Face directory (pretrained)."""
    from gpt2_llm import checkpoint
    from gpt2_llm.commands.tokenizer_commands import load_vocab, load_gpt2_directory_vocab
    from gpt2_llm.gpt2 import GPT2

    if pretrained is not None:
        if model_path is not None or vocab_path is not None:
            raise UserError("give either a checkpoint and vocab file or --pretrained DIR, not both")
        if not os.path.isdir(pretrained):
            raise UserError(f"--pretrained {pretrained}: no such directory; pass a Hugging Face GPT-2 directory")
        bpe = load_gpt2_directory_vocab(pretrained, f"--pretrained {pretrained}")
        model = GPT2.from_pretrained(pretrained)
        check_vocab_fits(bpe, model.config, pretrained)
        return model, bpe

    model_path = model_path or DEFAULT_MODEL
    if not os.path.exists(model_path):
        raise UserError(f"model file {model_path} not found; train one with: python main.py train "
                        "(or pass a checkpoint path, or --pretrained DIR)")
    bpe = load_vocab(vocab_path or DEFAULT_VOCAB)
    tensors, metadata = checkpoint.load_checkpoint(model_path)
    config = checkpoint.config_from_metadata(metadata, model_path)
    check_vocab_matches(bpe, metadata, model_path)
    check_vocab_fits(bpe, config, model_path)
    model = GPT2.from_config(config)
    checkpoint.copy_model_tensors(model, tensors, metadata, model_path)
    return model, bpe


def load_base(base_path, vocab_path, pretrained):
    """-> (GPT2, BPE): a checkpoint + its vocab, or a Hugging Face directory, which is its own vocab."""
    if pretrained is not None and vocab_path is not None:
        if Path(vocab_path).resolve() != Path(pretrained).resolve():
            raise UserError(f"with --pretrained the vocabulary is {pretrained}'s own: pass {pretrained} as the "
                            "vocab, or leave the vocab out")
        vocab_path = None
    return load_model_and_vocab(base_path, vocab_path, pretrained)


def check_vocab_matches(bpe, metadata, source) -> None:
    saved = metadata.get("vocab")  # written by the trainer; a plain model.save has none
    if saved and saved.get("fingerprint") != bpe.fingerprint():
        raise UserError(
            f"{source} was trained with a different vocabulary ({saved.get('size')} tokens) than "
            f"{bpe.vocab_path} ({bpe.vocab_size} tokens): the same ids would mean other text; pass the vocab "
            "file it was trained with"
        )


def check_vocab_fits(bpe, config, source) -> None:
    if bpe.vocab_size > config.vocab_size:
        raise UserError(f"the vocab has {bpe.vocab_size} tokens but the model in {source} only {config.vocab_size}; "
                        "use the vocab file the model was trained with")


def load_adapter_file(path):
    """-> (tensors, metadata) of a LoRA adapter file, refusing anything else with a clear message."""
    from gpt2_llm import checkpoint, lora

    tensors, metadata = checkpoint.load_checkpoint(path)
    lora.read_adapter_metadata(metadata, path)
    return tensors, metadata


def apply_adapter(model, bpe, adapter_path, tensors=None, metadata=None):
    """Add the LoRA adapter at adapter_path (or its loaded tensors + metadata) to a freshly loaded base
    model, in place: refused for a base of another shape or another vocabulary, a note for other weights."""
    from gpt2_llm import lora

    if tensors is None:
        tensors, metadata = load_adapter_file(adapter_path)
    check_vocab_matches(bpe, metadata, adapter_path)
    model, warning = lora.apply_adapter(model, tensors, metadata, adapter_path)
    if warning:
        print(f"note: {warning}", file=sys.stderr)
    return model


def recorded_base(metadata, adapter_path) -> tuple[str | None, str | None]:
    """(checkpoint, pretrained directory) of the base an adapter file says it was trained on."""
    from gpt2_llm import lora

    recorded = lora.read_adapter_metadata(metadata, adapter_path).get("base") or {}
    checkpoint_path, pretrained = recorded.get("checkpoint"), recorded.get("pretrained")
    if checkpoint_path is None and pretrained is None:
        raise UserError(f"{adapter_path} does not say which base it adapts: pass the base model")
    return checkpoint_path, pretrained
