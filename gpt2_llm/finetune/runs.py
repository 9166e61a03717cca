"""Fine-tuning runs: a LoRA (or full) run started on a trained model, or resumed from its adapter file, as a Trainer.

    trainer = start_finetuning("gpt2_model.pt", "vocab.txt", None, full=False, lora_flags={"rank": 16}, options={})
    trainer.train(["my.txt"], save_path="adapter.safetensors")

By default only LoRA adapters train (lora.py): the base stays frozen and a run writes a small adapter file.
"""
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.vocab import DEFAULT_VOCAB

LORA_DEFAULTS = dict(rank=8, alpha=16.0, targets="attn,mlp", dropout=0.0)
# Training settings for fine-tuning (flags override them): short runs, frequent evaluation. LoRA's
# few parameters take a much higher learning rate than the whole network does; weight decay would
# only pull the adapters back towards the base.
FINETUNE_SETTINGS = dict(batch_size=4, warmup_steps=20, eval_interval=100, eval_at_start=True)
LORA_SETTINGS = dict(learning_rate=1e-3, weight_decay=0.0)
FULL_SETTINGS = dict(learning_rate=1e-4)
MAX_DEFAULT_CONTEXT = 1024


def start_finetuning(base_path, vocab_path, pretrained, full: bool, lora_flags: dict, options: dict,
                     chat_vocab: str | None = None):
    """A Trainer for a fresh fine-tuning run on a checkpoint (base_path)
    or a Hugging Face directory (pretrained), LoRA with lora_flags over LORA_DEFAULTS or, with full, every weight;
    a new optimizer and schedule from step 0. options: TrainingConfig fields over the fine-tuning defaults.
    chat_vocab: a chat run's (options["chat"]): the chat tokens go into the vocab, written there, and the model;
    under LoRA their rows train beside the adapters and the adapter file carries them."""
    from gpt2_llm.finetune import lora
    from gpt2_llm.load import load_base
    from gpt2_llm.model.config import GPT2Config
    from gpt2_llm.train.config import TrainingConfig
    from gpt2_llm.train.trainer import Trainer

    if base_path is None and pretrained is None:
        raise UserError("name the model to fine-tune: --base CHECKPOINT or --pretrained DIR")
    model, bpe = load_base(base_path, vocab_path, pretrained)
    base_config = GPT2Config.from_dict(model.config.to_dict())  # as loaded: adding tokens may grow the table
    fingerprint = None if full else lora.weights_fingerprint(model)  # of the weights as loaded
    added_tokens, trained_rows = [], []
    if chat_vocab is not None:
        from gpt2_llm.chat.tokens import add_chat_tokens
        from gpt2_llm.chat.template import CHAT_TOKENS
        from gpt2_llm.tokenizer.vocab import save_vocab

        # Under LoRA the added tokens' rows train beside the adapters: nothing else could teach the model them.
        added_tokens, trained_rows = list(CHAT_TOKENS), add_chat_tokens(model, bpe)
        bpe.vocab_path = chat_vocab  # a vocab of its own: the base's file stays as it was
        save_vocab(bpe)
    settings = {**FINETUNE_SETTINGS, **(FULL_SETTINGS if full else LORA_SETTINGS), **options}
    context_length = settings.pop("context_length", min(model.config.max_seq_len, MAX_DEFAULT_CONTEXT))
    batch_size, learning_rate = settings.pop("batch_size"), settings.pop("learning_rate")
    if full:
        return Trainer(model, bpe, context_length, batch_size, learning_rate, **settings)
    base = {"pretrained": pretrained} if pretrained else {"checkpoint": base_path}
    config = lora.LoRAConfig(**{**LORA_DEFAULTS, **lora_flags})
    lora.add_lora(model, config, seed=settings.get("seed", TrainingConfig.seed), trained_rows=trained_rows)
    adapter = lora.adapter_metadata(config, base_config, fingerprint, base, added_tokens)
    return Trainer(model, bpe, context_length, batch_size, learning_rate, adapter=adapter, **settings)


def resume_finetuning(path, base_path, vocab_path, pretrained, full: bool, lora_flags: dict, options: dict):
    """-> (Trainer, (base_path, pretrained) or None for a whole checkpoint): continue a fine-tuning run from its adapter file at path (or,
    with full, its whole checkpoint); the base is the one the adapter records unless base_path or pretrained
    names it. An adapter keeps its shape: lora_flags that would change it are refused."""
    from gpt2_llm.checkpoints import checkpoint
    from gpt2_llm.finetune import lora
    from gpt2_llm.load import load_adapted_base
    from gpt2_llm.tokenizer.vocab import load_vocab
    from gpt2_llm.train.trainer import Trainer

    tensors, metadata = checkpoint.load_checkpoint(path)
    if "adapter" not in metadata:
        if not full:
            raise UserError(f"{path} is a whole-model checkpoint, not an adapter file: add --full to "
                            f"resume full fine-tuning, or pass it as --base to start LoRA on it")
        if base_path is not None:
            raise UserError("--full resumes the whole model from its checkpoint: drop --base")
        bpe = load_vocab(vocab_path or pretrained or DEFAULT_VOCAB)
        return Trainer.from_checkpoint(path, bpe, **options), None
    if full:
        raise UserError(f"{path} is a LoRA adapter file; --full resumes a whole checkpoint: drop --full")
    adapter = lora.read_adapter_metadata(metadata, path)
    saved = lora.LoRAConfig.from_dict(adapter["lora"])
    changed = [f"--lora-{key} {value}" for key, value in lora_flags.items()
               if getattr(lora.LoRAConfig(**{**saved.to_dict(), key: value}), key) != getattr(saved, key)]
    if changed:
        raise UserError(f"{path} was trained with {saved.to_dict()}; a resumed adapter keeps its shape: "
                        f"drop {', '.join(changed)}")
    model, bpe, (base_path, pretrained) = load_adapted_base(base_path, vocab_path, pretrained, path,
                                                            (tensors, metadata))
    return Trainer.resume(model, bpe, tensors, metadata, adapter=adapter, **options), (base_path, pretrained)
