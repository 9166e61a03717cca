"""Read and write Hugging Face GPT-2 directories (config.json + model.safetensors).

No `transformers` import: the layout is simple enough to convert by hand, and the tests prove the
conversion against `transformers` itself. Differences from our layout:
    keys      "transformer.h.3.attn.c_attn.weight" <-> "decoder.blocks.3.attn.c_attn.weight"
    Conv1D    HF's c_attn/c_proj/c_fc store weights as (in, out); nn.Linear wants (out, in)
    buffers   old files carry attn.bias / attn.masked_bias (a causal mask), not weights
    lm_head   tied to wte, so usually absent; when present it must equal wte
"""
import json
import os
import pickle
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gpt2_llm.files import atomic_write
from gpt2_llm.checkpoints.checkpoint import model_tensors, write_safetensors
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.errors import UserError

# Activation names HF uses for the tanh-approximated GELU (same function, different code).
_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh"}
_CONV1D_WEIGHT = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")
_MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def read_hf_gpt2(directory) -> tuple[GPT2Config, dict[str, torch.Tensor]]:
    """HF GPT-2 directory -> (our config, tensors under our state_dict keys, Linear orientation)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UserError(f"{directory} is not a directory; from_pretrained wants a Hugging Face model directory")
    config = _read_config(directory)
    hf_tensors = _read_weights(directory)
    tensors = {}
    for key, tensor in hf_tensors.items():
        key = key.removeprefix("transformer.")
        if _MASK_BUFFER.match(key):
            continue
        if key == "lm_head.weight":
            wte = hf_tensors.get("transformer.wte.weight", hf_tensors.get("wte.weight"))
            if wte is not None and not torch.equal(tensor, wte):
                raise UserError(
                    f"{directory}: lm_head.weight differs from wte.weight, but GPT-2 ties them; "
                    "this model cannot be represented here"
                )
            continue
        if _CONV1D_WEIGHT.search(key):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        tensors[re.sub(r"^h\.", "decoder.blocks.", key)] = tensor
    return config, tensors


def _read_config(directory) -> GPT2Config:
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{directory} has no config.json: pass a gpt2-llm checkpoint file or a Hugging Face "
                        "GPT-2 directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); re-download or re-save the model") from None
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{path} describes a {hf['model_type']!r} model; from_pretrained reads GPT-2 only")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _TANH_GELUS:
        raise UserError(
            f"{path} uses activation {activation!r}; this GPT-2 implements the tanh GELU "
            f"({', '.join(sorted(_TANH_GELUS))}) only"
        )
    unsupported = {
        "scale_attn_weights": (False, "unscaled attention"),
        "scale_attn_by_inverse_layer_idx": (True, "attention scaled by layer index"),
        "add_cross_attention": (True, "cross-attention"),
    }
    for key, (bad, what) in unsupported.items():
        if hf.get(key) == bad:
            raise UserError(f"{path} asks for {what} ({key}={bad}), which this GPT-2 does not implement")
    try:
        return GPT2Config(
            vocab_size=hf.get("vocab_size", 50257),
            embedding_dim=hf.get("n_embd", 768),
            num_layers=hf.get("n_layer", 12),
            num_heads=hf.get("n_head", 12),
            max_seq_len=hf.get("n_positions", 1024),
            feedforward_dim=hf.get("n_inner"),
            dropout=hf.get("resid_pdrop", 0.1),  # one rate here; HF's residual one is the main one
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _read_weights(directory) -> dict[str, torch.Tensor]:
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        try:
            return load_file(safetensors_path)
        except (SafetensorError, OSError) as error:
            raise UserError(f"{safetensors_path} is truncated or corrupt ({error}); re-download it") from None
    if os.path.exists(bin_path):
        try:
            # weights_only: tensors and plain containers only, so the pickle cannot run code.
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
            raise UserError(f"cannot read {bin_path} as plain weights ({type(error).__name__}); re-save it") from None
        if not isinstance(state, dict):
            raise UserError(f"{bin_path} holds a {type(state).__name__}, not a state dict of tensors")
        return state
    raise UserError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def write_hf_gpt2(model, directory, eot_id: int | None = None, dtype: torch.dtype | None = None) -> None:
    """Write `model` as config.json + generation_config.json + model.safetensors, loadable by
    GPT2LMHeadModel.from_pretrained. eot_id: its vocab's <|endoftext|>, the bos and eos token (default: GPT-2's
    50256 when the vocab is GPT-2's size, else none); dtype: the weights' (default: as the model holds them)."""
    config = model.config
    if config.use_rope:
        raise UserError(
            "a RoPE model has no Hugging Face GPT-2 layout (GPT-2 has learned positions); train without --rope "
            "to export one, or keep this one as a checkpoint (model.save)"
        )
    if eot_id is None and config.vocab_size == 50257:  # only then is 50256 GPT-2's <|endoftext|>
        eot_id = 50256
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for key, tensor in model_tensors(model).items():
        if _CONV1D_WEIGHT.search(key):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        tensors[_hf_key(key)] = tensor
    # GPT-2 always has biases; a bias-free layer is the same function as one with zero bias.
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is None and name != "lm_head":
            tensors[_hf_key(f"{name}.bias")] = torch.zeros(module.weight.shape[0], dtype=module.weight.dtype)
    if dtype is not None:
        tensors = {key: tensor.to(dtype).contiguous() for key, tensor in tensors.items()}
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors, {"format": "pt"})
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_ctx": config.max_seq_len,  # what llama.cpp's converter reads (OpenAI's configs carry it)
        "n_embd": config.embedding_dim,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.feedforward_dim,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
    }
    if dtype is not None:
        hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    generation = {"bos_token_id": eot_id, "eos_token_id": eot_id}
    atomic_write(os.path.join(directory, "config.json"), json.dumps(hf_config, indent=2) + "\n")
    atomic_write(os.path.join(directory, "generation_config.json"), json.dumps(generation, indent=2) + "\n")


def _hf_key(key: str) -> str:
    """'decoder.blocks.3.ln_1.weight' -> 'transformer.h.3.ln_1.weight'; 'wte.weight' -> 'transformer.wte.weight'."""
    return "transformer." + re.sub(r"^decoder\.blocks\.", "h.", key)
