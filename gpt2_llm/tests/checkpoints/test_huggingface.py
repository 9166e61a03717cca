"""Our GPT2 against transformers' GPT2LMHeadModel: same weights must give the same numbers.

Models are built from configs with fixed seeds and saved to tmp dirs; nothing is downloaded.
"""
import json

import pytest
import torch

from gpt2_llm import GPT2
from gpt2_llm.errors import UserError

def import_transformers():
    """The reference, for the tests that compare with it: only those skip where it is not installed."""
    return pytest.importorskip("transformers")

SMALL_HF = dict(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=64)


def hf_model(seed=0, **overrides):
    """A random HF GPT-2 whose every weight (LayerNorms and biases too) is non-trivial."""
    transformers = import_transformers()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**SMALL_HF, **overrides}, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
            else:
                p.mul_(5.0)  # wider logits: greedy choices far from ties
    return model


def hf_logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    hf = hf_model()
    directory = tmp_path_factory.mktemp("hf_small")
    hf.save_pretrained(directory)
    return hf, GPT2.from_pretrained(directory).eval(), directory


@pytest.mark.parametrize("batch, length", [(1, 1), (2, 7), (3, 33), (2, 64)])  # 64 = n_positions
def test_logits_match_transformers(hf_pair, batch, length):
    hf, ours, _ = hf_pair
    x = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(length))
    torch.testing.assert_close(ours(x), hf_logits(hf, x), atol=1e-4, rtol=1e-4)


def test_config_and_tying_after_from_pretrained(hf_pair):
    _, ours, directory = hf_pair
    config = ours.config
    assert (config.vocab_size, config.embedding_dim, config.num_layers, config.num_heads) == (1000, 64, 2, 4)
    assert config.max_seq_len == 64 and not config.use_rope
    assert ours.lm_head.weight is ours.wte.weight
    assert "lm_head.weight" not in json.dumps(sorted(p.name for p in directory.iterdir()))


def test_greedy_generation_matches_transformers(hf_pair):
    hf, ours, _ = hf_pair
    prompt = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(0))
    expected = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours.generate(prompt, 32, temperature=0), expected)


@pytest.mark.parametrize("layout", ["transformer-prefix", "bare-keys-with-mask-buffers"])
def test_pytorch_model_bin_is_read_with_weights_only(tmp_path, layout):
    hf = hf_model(seed=1)
    hf.config.save_pretrained(tmp_path)
    state = hf.state_dict()  # includes the tied lm_head.weight
    if layout == "bare-keys-with-mask-buffers":  # GPT2Model-style keys, plus the buffers old files carry
        state = {k.removeprefix("transformer."): v for k, v in state.items() if not k.startswith("lm_head")}
        for i in range(2):
            state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = GPT2.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(x), hf_logits(hf, x), atol=1e-4, rtol=1e-4)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pytorch_model_bin_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL_HF))
    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": torch.zeros(2), "x": _Marker(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="cannot read .* as plain weights"):
        GPT2.from_pretrained(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("overrides", [{}, {"bias": False}, {"feedforward_dim": 96}])
def test_save_pretrained_loads_in_transformers(tmp_path, overrides):
    transformers = import_transformers()
    torch.manual_seed(0)
    ours = GPT2(vocab_size=500, embedding_dim=64, num_layers=2, num_heads=4, max_seq_len=48, **overrides).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hf_logits(hf, x), ours(x), atol=1e-4, rtol=1e-4)
    again = GPT2.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(x), ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gpt2_small_shape_at_full_context(tmp_path):
    """GPT-2's real width, heads and vocabulary (two layers to stay quick), at length n_positions."""
    hf = hf_model(vocab_size=50257, n_embd=768, n_head=12, n_layer=2, n_positions=1024)
    hf.save_pretrained(tmp_path)
    ours = GPT2.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 50257, (1, 1024), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(x), hf_logits(hf, x), atol=1e-4, rtol=1e-4)


def test_rope_model_cannot_be_saved_in_gpt2_layout(tmp_path):
    model = GPT2(vocab_size=50, embedding_dim=32, num_layers=1, num_heads=2, max_seq_len=8, use_rope=True)
    with pytest.raises(UserError, match="RoPE"):
        model.save_pretrained(tmp_path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "has no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"activation_function": "relu"}'), "activation 'relu'"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "GPT-2 only"),
        (lambda d: (d / "config.json").write_text("{}"), "neither model.safetensors nor pytorch_model.bin"),
    ],
)
def test_bad_hugging_face_directories(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        GPT2.from_pretrained(tmp_path)


def test_from_pretrained_needs_a_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        GPT2.from_pretrained(tmp_path / "missing")
