"""What a command works on, loaded: a model (a checkpoint with its vocab file, or a Hugging Face GPT-2 directory,
which is its own vocab) and, optionally, a LoRA adapter on it, checked against each other before the slow load.

    model, bpe = load_model_and_vocab("model.pt", "vocab.txt")                   # for inference
    model, bpe = load_model_and_vocab(None, None, None, "adapter.pt")            # the base the adapter records
    model, bpe, (base, pretrained) = load_adapted_base(None, None, "gpt2/", "adapter.pt")   # unmerged: to train on
"""
import os
import sys
from pathlib import Path

from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.vocab import DEFAULT_VOCAB, check_vocab, load_vocab
from gpt2_llm.train.config import DEFAULT_MODEL


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
    base_bpe = None if adapter is None else base_vocab_inside(vocab_path, adapter[1])
    model, bpe = load_base(base_path, vocab_path, pretrained, base_bpe)
    if adapter is not None:
        model = apply_adapter(model, bpe, adapter_path, *adapter)
    return model, bpe, (base_path, pretrained)


def load_base(base_path, vocab_path, pretrained, bpe=None):
    """-> (GPT2, BPE): a checkpoint + its vocab, or a Hugging Face directory, which is its own vocab.
    bpe: the base's vocab, already read (base_vocab_inside), instead of vocab_path's."""
    from gpt2_llm.checkpoints import loading
    from gpt2_llm.gpt2 import GPT2

    if pretrained is not None:
        if base_path is not None:
            raise UserError("give either a checkpoint and vocab file or --pretrained DIR, not both")
        if bpe is None and vocab_path is not None and Path(vocab_path).resolve() != Path(pretrained).resolve():
            raise UserError(f"with --pretrained the vocabulary is {pretrained}'s own: pass {pretrained} as the "
                            "vocab, or leave the vocab out")
        if not os.path.isdir(pretrained):
            raise UserError(f"--pretrained {pretrained}: no such directory; pass a Hugging Face GPT-2 directory")
        base_path, vocab_path = pretrained, (vocab_path if bpe is not None else pretrained)
    else:
        base_path = base_path or DEFAULT_MODEL
        if not os.path.exists(base_path):
            raise UserError(f"model file {base_path} not found; train one with: python main.py train "
                            "(or pass a checkpoint path, or --pretrained DIR)")
    if bpe is None:
        bpe = load_vocab(vocab_path or DEFAULT_VOCAB)  # first: a wrong vocab fails before the slow model load
    model, metadata = loading.load_model(base_path, GPT2)
    check_vocab(bpe, metadata, model.config, base_path)
    return model, bpe


def base_vocab_inside(vocab_path, metadata):
    """The base's vocab when vocab_path is the one an adapter's run wrote (the base's plus the tokens it added, as
    chat fine-tuning writes): that vocab without them. None for any other (then vocab_path is the base's own)."""
    added = metadata["adapter"].get("added_tokens")
    if not added or vocab_path is None or os.path.isdir(vocab_path):
        return None
    bpe = load_vocab(vocab_path)
    if bpe.fingerprint() != (metadata.get("vocab") or {}).get("fingerprint"):
        return None
    return bpe.without_special_tokens(added)


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
    model, warning = lora.apply_adapter(model, tensors, metadata, adapter_path, bpe)  # adds the run's tokens to bpe
    check_vocab(bpe, metadata, model.config, adapter_path)
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
