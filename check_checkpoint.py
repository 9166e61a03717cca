"""Diagnose whether a checkpoint and a vocabulary file belong together, before training or predicting.

    python check_checkpoint.py <checkpoint> <vocab>

<checkpoint> is a gpt2-llm checkpoint (what `main.py train` writes) or a Hugging Face GPT-2 directory;
<vocab> is a vocab file (what `main.py tokenize` writes) or a directory holding GPT-2's vocab.json and
merges.txt. Exit status: 0 compatible, 1 not compatible, 2 unreadable input.
"""
import argparse
import os
import sys

from gpt2_llm.errors import UserError

RULE = "=" * 60


def load_model_info(path):
    """-> (GPT2Config, parameter count, metadata) without building the model; for a LoRA adapter file
    the config is its base's and the count the adapter's."""
    from gpt2_llm import checkpoint, hf_interop, lora
    from gpt2_llm.config import GPT2Config

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        config, tensors = hf_interop.read_hf_gpt2(path)
        metadata = {"source": "Hugging Face GPT-2 directory"}
    else:
        tensors, metadata = checkpoint.load_checkpoint(path)
        if "adapter" in metadata:  # a LoRA adapter file: describe the base it adapts
            config = GPT2Config.from_dict(lora.read_adapter_metadata(metadata, path)["base_config"])
        else:
            config = checkpoint.config_from_metadata(metadata, path)
        tensors = {key: t for key, t in tensors.items() if "/" not in key}  # model weights only
    # The tied head is stored once (as the token embedding), so this counts it once.
    num_parameters = sum(t.numel() for key, t in tensors.items() if key != "lm_head.weight")
    return config, num_parameters, metadata


def compatibility_problems(bpe, config, metadata):
    """Reasons the pair cannot work together; empty when it can."""
    problems = []
    saved = metadata.get("vocab") or {}
    if saved.get("fingerprint") and saved["fingerprint"] != bpe.fingerprint():
        problems.append(
            f"the checkpoint was trained with a different vocabulary ({saved.get('size')} tokens, hash "
            f"{saved['fingerprint'][:12]}) than this one ({bpe.vocab_size} tokens, hash {bpe.fingerprint()[:12]}): "
            "the same ids would mean different text"
        )
    if bpe.vocab_size > config.vocab_size:
        problems.append(
            f"the vocabulary has {bpe.vocab_size} tokens but the model has only {config.vocab_size} embedding rows: "
            "ids past the table would crash (CUDA 'index out of bounds')"
        )
    return problems


def report(checkpoint_path, vocab_path, out=print):
    from gpt2_llm.commands.tokenizer_commands import load_vocab

    out(RULE)
    out("Checkpoint and Vocabulary Diagnostic")
    out(RULE)
    out("")
    out(f"1. Checking vocabulary: {vocab_path}")
    bpe = load_vocab(vocab_path)  # a vocab file, or a directory with GPT-2's vocab.json + merges.txt
    out("   ✓ Vocabulary loaded successfully")
    out(f"   Number of tokens: {bpe.vocab_size}")
    out(f"   Model vocabulary size: {bpe.get_model_vocab_size()} (for embedding layer)")
    out("")
    out(f"2. Checking checkpoint: {checkpoint_path}")
    config, num_parameters, metadata = load_model_info(checkpoint_path)
    out("   ✓ Checkpoint loaded successfully")
    out("")
    out("3. Model Configuration:")
    out(f"   Vocabulary size: {config.vocab_size}")
    out(f"   Embedding dimension: {config.embedding_dim}")
    out(f"   Layers: {config.num_layers}")
    out(f"   Attention heads: {config.num_heads}")
    out(f"   Max sequence length: {config.max_seq_len}")
    out(f"   Positions: {'rotary (RoPE)' if config.use_rope else 'learned'}")
    adapter = metadata.get("adapter")
    if adapter:
        lora_config = adapter["lora"]
        base = " ".join(f"--{'base' if kind == 'checkpoint' else kind} {where}"
                        for kind, where in (adapter.get("base") or {}).items())
        out(f"   LoRA adapter: rank {lora_config['rank']}, alpha {lora_config['alpha']:g}, targets "
            f"{','.join(lora_config['targets'])}; {num_parameters:,} adapter parameters")
        out(f"   Base model (shape above): {base or 'not recorded'}")
    else:
        out(f"   Total parameters: {num_parameters:,}")
    training = metadata.get("training") or {}
    if "step" in training:
        out(f"   Training step: {training['step']:,} ({training.get('tokens_seen', 0):,} tokens seen)")
    if training.get("last_val_loss") is not None:
        out(f"   Validation loss: {training['last_val_loss']:.4f} "
            f"(bits per byte {training.get('last_val_bpb') or float('nan'):.4f})")
    out("")
    out("4. Compatibility Check:")
    problems = compatibility_problems(bpe, config, metadata)
    if problems:
        for problem in problems:
            out(f"   ✗ {problem}")
        out("   What to do: pass the vocab file the checkpoint was trained with")
        out(f"   (python check_checkpoint.py {checkpoint_path} <that vocab>), or train a new model on this vocab:")
        out(f"   python main.py train <file> {vocab_path}")
        return 1
    if (metadata.get("vocab") or {}).get("fingerprint"):
        out("   ✓ Vocabulary matches the one the checkpoint was trained with!")
    elif bpe.get_model_vocab_size() == config.vocab_size or bpe.vocab_size == config.vocab_size:
        out("   ✓ Vocabulary sizes match!")
    else:
        out(f"   ✓ Every token id fits the model ({bpe.vocab_size} <= {config.vocab_size}); the checkpoint does not "
            "record its vocabulary, so make sure it is the one it was trained with")
    out("   The checkpoint and vocabulary are compatible.")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="gpt2-llm checkpoint file or Hugging Face GPT-2 directory")
    parser.add_argument("vocab", help="vocab file, or a directory with vocab.json + merges.txt")
    args = parser.parse_args(argv)
    try:
        return report(args.checkpoint, args.vocab)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the system refused a file: no permission, I/O error, ...
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
