"""GPT2: the network (model/gpt2.py's Transformer) with the seed's doors to everything above it.

    model = GPT2(vocab_size=..., embedding_dim=..., num_layers=..., num_heads=..., max_seq_len=...)
    model = GPT2(GPT2Config(...))                      the same, from a config passed whole
    model.load(path) / model.save(path)                safetensors checkpoints (checkpoints/)
    GPT2.from_checkpoint(path), GPT2.from_pretrained(directory), model.save_pretrained(directory)
    model.generate(ids, max_new_tokens, ...)           sampling or greedy decoding (infer/)
    model.for_inference(dtype, quantize)               the fastest weights for decoding (infer/prepare.py)

Each door is a line or two into the module that does the work; the network itself reads no files.
"""
import os

import torch

from gpt2_llm.checkpoints import checkpoint, huggingface, loading
from gpt2_llm.device import keep_freed_memory_on_cpu
from gpt2_llm.errors import UserError
from gpt2_llm.infer import prepare
from gpt2_llm.infer.generation import generate_tokens
from gpt2_llm.infer.sampling import SamplingSettings
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.model.gpt2 import Transformer


class GPT2(Transformer):
    def __init__(
        self,
        vocab_size: int | GPT2Config,
        embedding_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        max_seq_len: int = 1024,
        dropout: float = 0.0,
        use_rope: bool = False,
        **config_fields,
    ):
        if isinstance(vocab_size, GPT2Config):  # GPT2(config): the config passed whole
            if config_fields:
                raise UserError("GPT2(config) takes no other arguments; set them on the config")
            config = vocab_size
        else:
            config = GPT2Config(vocab_size=vocab_size, embedding_dim=embedding_dim, num_layers=num_layers,
                                num_heads=num_heads, max_seq_len=max_seq_len, dropout=dropout, use_rope=use_rope,
                                **config_fields)
        super().__init__(config)
        # A training step on a CPU frees and reallocates the same activations every step; by default glibc
        # hands them back to the OS and page-faults them in again, a fifth of a small model's step. Set here,
        # not in the Trainer, so that a plain `model.loss(...).backward()` loop is as fast (see device.py).
        keep_freed_memory_on_cpu()

    def for_inference(self, dtype: torch.dtype | None = None, quantize: str | None = None,
                      device: torch.device | str | None = None) -> "GPT2":
        """Convert this model, in place, to its fastest form for generation and return it.

        dtype: torch.bfloat16 halves the bytes each token reads (default: keep the weights' dtype);
        quantize="int8": weight-only int8 Linear layers (CPU). Linear weights are prepacked for the CPU.
        Afterwards the model generates but can no longer train or be saved. Without this call,
        generate() is just as fast but keeps a packed copy of the Linear weights beside the model.
        """
        weight = self.wte.weight
        device = torch.device(device) if device is not None else weight.device
        return prepare.prepare_for_inference(self, device, dtype or weight.dtype, quantize)

    def train(self, mode: bool = True) -> "GPT2":  # nn.Module.train: also called by .eval()
        if mode:  # training changes every weight: a packed decoding copy would only hold memory
            prepare.forget_decoding_model(self)
        return super().train(mode)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eos_token_id: int | None = None,
        repetition_penalty: float = 1.0,
        vocab_size: int | None = None,
    ) -> torch.Tensor:
        """Continue prompts (B, T) by up to max_new_tokens -> (B, T + new). temperature 0 is greedy.

        The prompt is run once (prefill) into a KV cache, then each new token costs one position.
        Past the context length the cache is rebuilt from the last max_seq_len - 1 tokens (a
        sliding window). Rows that produced eos_token_id keep emitting it; generation stops when
        every row has. vocab_size keeps choices below it (a tokenizer smaller than the padded
        embedding). The loop itself, token by token, is generation.generate_tokens.
        """
        settings = SamplingSettings(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    repetition_penalty=repetition_penalty)
        steps = list(generate_tokens(self, input_ids, settings, generator, eos_token_id, vocab_size))
        if not steps:
            return input_ids.clone()
        return torch.cat((input_ids, torch.stack(steps, dim=1)), dim=1)  # one cat at the end, not one per step

    # --- doors to the I/O edge -------------------------------------------------------------

    def save(self, path, metadata: dict | None = None) -> None:
        """Write weights + config (+ extra JSON metadata) to a safetensors checkpoint, atomically."""
        checkpoint.save_model(self, path, metadata)

    def load(self, path) -> dict:
        """Load weights from a checkpoint of the same architecture; returns its metadata."""
        return checkpoint.load_model_weights(self, path)

    @classmethod
    def from_checkpoint(cls, path) -> "GPT2":
        """Build the model described by a checkpoint's stored config and load its weights (checkpoints/loading.py)."""
        return loading.load_model(path, cls)[0]

    @classmethod
    def from_pretrained(cls, directory) -> "GPT2":
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors or pytorch_model.bin)."""
        if not os.path.isdir(directory):
            raise UserError(f"{directory} is not a directory; from_pretrained wants a Hugging Face model directory")
        return cls.from_checkpoint(directory)

    def save_pretrained(self, directory) -> None:
        """Write config.json + model.safetensors in Hugging Face's GPT-2 layout."""
        huggingface.write_hf_gpt2(self, directory)
