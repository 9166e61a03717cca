"""Write a model and its tokenizer as one GGUF file: what llama.cpp (and the tools built on it) load.

    write_gguf(model, bpe, "model.gguf", outtype="q8_0")

The file is written by `gguf.GGUFWriter`, llama.cpp's own writer, in the layout llama.cpp's loader reads:
    GPT-2 (learned positions)  architecture "gpt2": token_embd, position_embd, blk.N.{attn_norm, attn_qkv,
                               attn_output, ffn_norm, ffn_up, ffn_down}, output_norm; the head is tied to
                               token_embd, as ours is, so no output tensor
    RoPE (config.use_rope)     architecture "gptneox": the same blocks (LayerNorm with biases, fused Q/K/V,
                               tanh GELU, one residual after the other) with NEOX rotary embeddings, which pair
                               channel i with channel i + head_dim/2 as ours do; no position table, and an
                               output tensor (gptneox requires one), a copy of token_embd
Our nn.Linear weights are (out, in), which is ggml's order already: no transpose (Hugging Face's Conv1D needs one).
A model without biases (config.bias=False) gets zero biases: llama.cpp's graphs require them, and a zero bias is
the same function.

Which tensors take `outtype` follows llama.cpp's converter (convert_hf_to_gguf.py): the 2-D matrices, token
embedding included; the norms, the biases and the position table stay f32. q8_0 quantizes rows in blocks of 32,
so a matrix whose rows are not a multiple of 32 long is written f16 instead, as the converter does.

The tokenizer goes in as GPT-2's files spell it (openai_files.gpt2_spelling) with llama.cpp's "gpt-2" pre-split,
which is our pre-split. <|endoftext|> is a control token and the BOS, EOS and EOT id, all three written: where a
"gpt2" tokenizer names no BOS/EOS, llama.cpp takes id 11 (GPT-2's ",") for both and ends generation at it. No BOS
is added to prompts (add_bos_token false), as our generate and evaluate add none: with one, llama.cpp's greedy
tokens and perplexity would be another model's. Embedding rows past the tokenizer (the vocab is padded up to a
multiple of 64) get placeholder tokens [PAD<id>] of type UNUSED and are listed as suppressed tokens, so that
llama.cpp's samplers never pick them, as our generate(vocab_size=...) never does.
"""
import os
from pathlib import Path

import gguf
import numpy as np
import torch

from gpt2_llm.errors import UserError
from gpt2_llm.files import atomic_write
from gpt2_llm.tokenizer.openai_files import gpt2_spelling

Q = gguf.GGMLQuantizationType
OUTTYPES = {  # name -> (what the 2-D matrices are stored as, the file type llama.cpp reports)
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
SUPPRESS_TOKENS = "tokenizer.ggml.suppress_tokens"  # int32 ids that llama.cpp's common samplers never pick
# Module inside decoder.blocks.N -> llama.cpp's tensor ("blk.N.attn_qkv"); each has a .weight and a .bias.
_BLOCK_TENSORS = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": gguf.MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}


def write_gguf(model, bpe, path, outtype: str = "f32", chat_template: str | None = None) -> None:
    """Write `model` (a GPT2) with the tokenizer `bpe` (a loaded BPE) to `path` as GGUF, atomically.

    outtype: "f32", "f16", "bf16" or "q8_0", the storage of the weight matrices; chat_template: Jinja for
    tokenizer.chat_template (a chat-tuned model's). UserError when the tokenizer does not fit the model or outtype is
    unknown; on any failure the file at `path` is as it was.
    """
    if outtype not in OUTTYPES:
        raise UserError(f"unknown GGUF type {outtype!r}; use one of {', '.join(OUTTYPES)}")
    config = model.config
    if bpe.vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer has {bpe.vocab_size} tokens but the model only {config.vocab_size} embedding "
                        "rows: pass the vocab the model was trained with")
    matrix_type, file_type = OUTTYPES[outtype]
    writer = gguf.GGUFWriter(None, "gptneox" if config.use_rope else "gpt2")
    _add_hyperparameters(writer, config, name=os.path.splitext(os.path.basename(os.fspath(path)))[0])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, bpe, config.vocab_size)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, tensor in _gguf_tensors(model).items():
        data, qtype = _stored(name, tensor, matrix_type)
        writer.add_tensor(name, data, raw_dtype=qtype)

    def write(temp_path):
        try:
            writer.write_header_to_file(Path(temp_path))
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    atomic_write(path, write)


def _add_hyperparameters(writer, config, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.embedding_dim)
    writer.add_feed_forward_length(config.mlp_dim)
    writer.add_block_count(config.num_layers)
    writer.add_head_count(config.num_heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    if config.use_rope:
        writer.add_rope_dimension_count(config.head_dim)  # every channel of a head rotates
        writer.add_rope_freq_base(config.rope_base)
        writer.add_parallel_residual(False)  # x + attn(ln_1(x)), then + mlp(ln_2(.)): GPT-2's order


def _add_tokenizer(writer, bpe, num_rows: int) -> None:
    """The vocab as llama.cpp's BPE tokenizer reads it, padded with UNUSED tokens to the embedding's rows."""
    encoder, merges = gpt2_spelling(bpe)
    tokens = sorted(encoder, key=encoder.get)  # id order: ids run 0..vocab_size - 1 without gaps
    types = [gguf.TokenType.NORMAL] * bpe.eot_id + [gguf.TokenType.CONTROL] * len(bpe.special_tokens)
    padding = range(len(tokens), num_rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens + [f"[PAD{i}]" for i in padding])
    writer.add_token_types(types + [gguf.TokenType.UNUSED] * len(padding))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bpe.eot_id)
    writer.add_eos_token_id(bpe.eot_id)
    writer.add_eot_token_id(bpe.eot_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if padding:  # llama.cpp's samplers give these -inf (the pip gguf 0.19.0 has no constant for the key yet)
        writer.add_array(SUPPRESS_TOKENS, list(padding))


def _gguf_tensors(model) -> dict[str, torch.Tensor]:
    """Our state_dict under llama.cpp's names, in fp32 on the CPU.

    {"wte.weight": ..., "decoder.blocks.0.ln_1.weight": ...} -> {"token_embd.weight": ..., "blk.0.attn_norm.weight": ...}
    """
    config = model.config
    state = model.state_dict()

    def take(key):
        if key not in state:
            raise UserError(f"the model has no {key}: export a model as loaded or trained, not one converted "
                            "for inference (for_inference) or wrapped with adapters (merge them first)")
        return state[key].detach().to("cpu", torch.float32)

    def weight_and_bias(prefix, gguf_name):
        weight = take(f"{prefix}.weight")
        # llama.cpp's gpt2 and gptneox graphs require every bias; without one the layer adds zero.
        bias = take(f"{prefix}.bias") if config.bias else torch.zeros(weight.shape[0])
        return {f"{gguf_name}.weight": weight, f"{gguf_name}.bias": bias}

    names = gguf.TENSOR_NAMES
    embedding = take("wte.weight")
    tensors = {names[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight": embedding}
    if config.use_rope:
        tensors[names[gguf.MODEL_TENSOR.OUTPUT] + ".weight"] = embedding  # the tied head, which gptneox reads apart
    else:
        tensors[names[gguf.MODEL_TENSOR.POS_EMBD] + ".weight"] = take("wpe.weight")
    for block in range(config.num_layers):
        for ours, theirs in _BLOCK_TENSORS.items():
            tensors.update(weight_and_bias(f"decoder.blocks.{block}.{ours}", names[theirs].format(bid=block)))
    tensors.update(weight_and_bias("ln_f", names[gguf.MODEL_TENSOR.OUTPUT_NORM]))
    return tensors


def _stored(name: str, tensor: torch.Tensor, matrix_type) -> tuple[np.ndarray, "gguf.GGMLQuantizationType"]:
    """(the bytes to write, their type): matrix_type for weight matrices, f32 for vectors and the position table."""
    data = tensor.numpy()
    qtype = matrix_type
    if data.ndim == 1 or name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD]):
        qtype = Q.F32
    if qtype == Q.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        qtype = Q.F16  # rows that are not whole 32-value blocks: llama.cpp's converter falls back to f16 too
    return gguf.quants.quantize(data, qtype), qtype
