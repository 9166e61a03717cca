"""`check <checkpoint> <vocab>`: do a checkpoint and a vocabulary belong together? (also check_checkpoint.py)

    python main.py check gpt2_model.pt vocab.txt
    python main.py check gpt2/ gpt2/              # a Hugging Face GPT-2 directory and its tokenizer files

<checkpoint> is a gpt2-llm checkpoint (what `train` writes), a LoRA adapter file, or a Hugging Face GPT-2
directory; <vocab> is a vocab file (what `tokenize` writes) or a directory holding GPT-2's vocab.json and
merges.txt. Exit status: 0 compatible, 1 not compatible, 2 unreadable input.
"""
RULE = "=" * 60


def add_arguments(name, parser):
    parser.add_argument("checkpoint",
                        help="gpt2-llm checkpoint file, LoRA adapter file or Hugging Face GPT-2 directory")
    parser.add_argument("vocab", help="vocab file, or a directory with vocab.json + merges.txt")


def run(args):
    return report(args.checkpoint, args.vocab)


def load_model_info(path):
    """-> (GPT2Config, parameter count, metadata) without building the model; for a LoRA adapter file
    the config is its base's and the count the adapter's."""
    from gpt2_llm.checkpoints import checkpoint
    from gpt2_llm.checkpoints import loading
    from gpt2_llm.finetune import lora
    from gpt2_llm.model.config import GPT2Config

    tensors, metadata = loading.read_model_files(path)
    if "adapter" in metadata:  # a LoRA adapter file: describe the base it adapts
        config = GPT2Config.from_dict(lora.read_adapter_metadata(metadata, path)["base_config"])
    else:
        config = checkpoint.config_from_metadata(metadata, path)
    # Model weights only; the tied head is stored once (as the token embedding), so this counts it once.
    num_parameters = sum(t.numel() for key, t in tensors.items() if "/" not in key and key != "lm_head.weight")
    return config, num_parameters, metadata


def report(checkpoint_path, vocab_path, out=print):
    """Print what the checkpoint and the vocabulary are and whether they fit -> 0 they do, 1 they do not."""
    from gpt2_llm.chat.template import CHAT_TEMPLATE, CHAT_TOKENS, template_for
    from gpt2_llm.tokenizer.vocab import load_vocab, vocab_problems

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
    recorded = metadata.get("chat_template")
    if recorded or template_for(bpe) == CHAT_TEMPLATE:
        where = "recorded by its chat fine-tuning" if recorded else "from the vocab's chat tokens"
        out(f"   Chat template: {recorded or CHAT_TEMPLATE}, {' '.join(CHAT_TOKENS)} ({where})")
    out("")
    out("4. Compatibility Check:")
    problems = vocab_problems(bpe, metadata, config)
    if recorded and template_for(bpe) != recorded:
        problems.append(f"the model was chat-tuned with the {recorded} template, whose tokens ({', '.join(CHAT_TOKENS)}) "
                        f"{vocab_path} does not have")
    if problems:
        for problem in problems:
            out(f"   ✗ {problem}")
        out("   What to do: pass the vocab file the checkpoint was trained with")
        out(f"   (python main.py check {checkpoint_path} <that vocab>), or train a new model on this vocab:")
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
