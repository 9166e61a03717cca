"""gpt2-llm: GPT-2 from scratch in PyTorch.

Names are imported lazily so that `from gpt2_llm.errors import UserError` (used by the
tokenizer and the CLI's tokenizer commands) does not pay for importing torch.
"""
import importlib

_EXPORTS = {
    "GPT2Config": "gpt2_llm.model.config",
    "PRESETS": "gpt2_llm.train.config",
    "GPT2": "gpt2_llm.gpt2",
    "CausalSelfAttention": "gpt2_llm.model.attention",
    "RotaryPositionEmbedding": "gpt2_llm.model.attention",
    "GPT2Decoder": "gpt2_llm.model.blocks",
    "DecoderBlock": "gpt2_llm.model.blocks",
    "TokenEmbedding": "gpt2_llm.model.embedding",
    "Trainer": "gpt2_llm.train.trainer",
    "UserError": "gpt2_llm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpt2_llm' has no attribute {name!r}")
