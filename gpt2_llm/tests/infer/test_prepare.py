"""Inference weight formats (infer/prepare.py): exact where they should be, close where they cannot be.

Stated tolerances, on a random model with wide logits (weights x5, logit std ~0.8), relative to
the standard deviation of the fp32 logits, teacher-forced over 2 x 48 positions:
    bf16 weights   max |error| <= 0.10, mean <= 0.02 (measured ~0.04 / 0.006)
    int8 weights   max |error| <= 0.15, mean <= 0.03 (measured ~0.09 / 0.013)
    both           the argmax (greedy choice) agrees with fp32 at >= 90% of positions (measured 96-100%)
Prepacked fp32 computes the same function: within 1e-4 of plain fp32.
"""
import copy
import json

import pytest
import torch
from torch import nn

from gpt2_llm.errors import UserError
from gpt2_llm import machine_cache
from gpt2_llm.infer.prepare import (MATVEC_MAX_ROWS, Int8Linear, MatvecLinear, PackedLinear, can_prepack, decoding_model,
                                fast_linear, fp32_decode_kernel, prepare_for_inference)
from gpt2_llm.tests.helpers import greedy_without_cache, wide_logits_model

CPU = torch.device("cpu")


def wide_model(seed=0):
    return wide_logits_model(seed, scale=5.0, vocab_size=512, max_seq_len=64)


def tokens(seed=0):
    return torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(seed))


def test_int8_linear_is_the_dequantized_matmul():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.scales.shape == (96,)
    dequantized = q.weight.float() * q.scales[:, None]
    # Rounding to the nearest step: no weight moves by more than half a step of its row.
    assert ((dequantized - linear.weight).abs() <= q.scales[:, None] / 2 + 1e-7).all()
    assert q.weight.abs().amax(dim=1).eq(127).all()  # each row's largest weight uses the full range
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(q(x), x @ dequantized.T + linear.bias, atol=1e-4, rtol=1e-4)


def test_int8_linear_with_bf16_activations():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)
    q = Int8Linear(linear).to(torch.bfloat16)
    assert q.weight.dtype == torch.int8 and q.scales.dtype == torch.float32  # .to() keeps the quantized numbers
    x = torch.randn(4, 64)
    y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), linear(x).detach(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("rows", [1, 3, MATVEC_MAX_ROWS, MATVEC_MAX_ROWS + 1, 40])
def test_decoding_rows_and_prompt_rows_compute_the_same_function(rows):
    """Up to MATVEC_MAX_ROWS rows run the compiled matvec, more the dequantized GEMM (or PyTorch's, in fp32)."""
    torch.manual_seed(rows)
    linear = nn.Linear(96, 200)
    x = torch.randn(rows, 96)
    q = Int8Linear(linear)
    dequantized = q.weight.float() * q.scales[:, None]
    torch.testing.assert_close(q(x), x @ dequantized.T + linear.bias, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(MatvecLinear(linear)(x), linear(x).detach(), atol=1e-4, rtol=1e-4)


def test_the_fp32_decode_kernel_is_measured_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_LLM_CACHE", str(tmp_path))
    monkeypatch.setattr(machine_cache, "_measured_here", {})
    fp32_decode_kernel.cache_clear()
    try:
        choice = fp32_decode_kernel()
        assert choice.name in ("matvec", "packed") and "ms per 768x3072" in choice.reason
        with open(tmp_path / "machine.json", encoding="utf-8") as f:
            remembered = json.load(f)
        assert [value[0] for key, value in remembered.items() if key.endswith(": fp32_decode_kernel")] == [choice.name]
        fp32_decode_kernel.cache_clear()
        monkeypatch.setattr(machine_cache, "_measured_here", {})
        monkeypatch.setattr("gpt2_llm.infer.prepare._race_fp32_kernels", lambda: pytest.fail("measured twice"))
        assert fp32_decode_kernel() == choice  # read back from the file
    finally:
        fp32_decode_kernel.cache_clear()


@pytest.mark.skipif(not can_prepack(torch.float32), reason="no oneDNN linear prepacking in this PyTorch")
@pytest.mark.parametrize("linear", [PackedLinear, MatvecLinear])
def test_fast_fp32_linears_are_the_same_function(linear, monkeypatch):
    monkeypatch.setattr("gpt2_llm.infer.prepare.fast_linear", lambda dtype: linear)
    model = wide_model()
    packed = prepare_for_inference(copy.deepcopy(model), CPU, torch.float32)
    assert any(isinstance(m, linear) for m in packed.modules())
    with torch.no_grad():
        torch.testing.assert_close(packed(tokens()), model(tokens()), atol=1e-4, rtol=1e-4)
    prompt = tokens()[:1, :8]
    assert torch.equal(packed.generate(prompt, 30, temperature=0), greedy_without_cache(model, prompt, 30))


# --- the decoding copy: what GPT2.generate (and so the trainer's samples) decode with ---------------


@pytest.mark.skipif(not can_prepack(torch.float32), reason="no oneDNN linear prepacking in this PyTorch")
def test_generate_on_a_plain_model_decodes_with_packed_weights_and_the_same_result():
    model = wide_model()
    prompt = tokens()[:, :8]
    decoder = decoding_model(model)
    assert decoder is not model and isinstance(decoder.lm_head, fast_linear(torch.float32))
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.wte.weight  # the model is untouched
    assert decoder.wte.weight is model.wte.weight  # every non-Linear weight is shared, not copied
    assert torch.equal(model.generate(prompt, 20, temperature=0), greedy_without_cache(model, prompt, 20))


@pytest.mark.skipif(not can_prepack(torch.float32), reason="no oneDNN linear prepacking in this PyTorch")
def test_the_decoding_copy_is_kept_until_a_weight_changes():
    model = wide_model()
    first = decoding_model(model)
    assert decoding_model(model) is first  # packed once, reused by every later generate
    with torch.no_grad():
        model.decoder.blocks[0].mlp.c_fc.weight.mul_(2.0)  # in place, as an optimizer step does
    second = decoding_model(model)
    assert second is not first
    prompt = tokens()[:1, :8]
    assert torch.equal(model.generate(prompt, 12, temperature=0), greedy_without_cache(model, prompt, 12))
    other = wide_model(seed=5)
    model.load_state_dict(other.state_dict())
    assert decoding_model(model) is not second
    assert torch.equal(model.generate(prompt, 12, temperature=0), greedy_without_cache(other, prompt, 12))
    model.train()  # training changes every weight: the copy is dropped rather than kept in memory
    model.eval()
    assert decoding_model(model) is not second


@pytest.mark.skipif(not can_prepack(torch.bfloat16), reason="no oneDNN bf16 prepacking on this CPU")
def test_generate_under_autocast_decodes_in_bf16_like_a_bf16_model():
    model = wide_model(3)
    prompt = tokens(3)[:1, :8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = model.generate(prompt, 16, temperature=0)
        assert decoding_model(model).lm_head.packed_weight.dtype == torch.bfloat16
    bf16_out = copy.deepcopy(model).to(torch.bfloat16).generate(prompt, 16, temperature=0)
    assert torch.equal(autocast_out, bf16_out)
    assert model.wte.weight.dtype == torch.float32  # the model itself stays fp32


def test_for_inference_converts_in_place_and_decodes_without_a_copy():
    model = wide_model()
    reference = greedy_without_cache(model, tokens()[:1, :8], 10)
    same = model.for_inference(torch.bfloat16, "int8")
    assert same is model and isinstance(model.lm_head, Int8Linear)
    assert decoding_model(model) is model
    out = model.generate(tokens()[:1, :8], 10, temperature=0)
    assert out.shape == reference.shape and torch.equal(out[:, :9], reference[:, :9])


@pytest.mark.parametrize("dtype, quantize, max_error, mean_error", [
    (torch.bfloat16, None, 0.10, 0.02),
    (torch.bfloat16, "int8", 0.15, 0.03),
    (torch.float32, "int8", 0.15, 0.03),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_reduced_precision_logits_stay_close_to_fp32(dtype, quantize, max_error, mean_error, seed):
    model = wide_model(seed)
    fast = prepare_for_inference(copy.deepcopy(model), CPU, dtype, quantize)
    with torch.no_grad():
        reference, logits = model(tokens(seed)), fast(tokens(seed)).float()
    error = (logits - reference).abs() / reference.std()
    assert error.max() <= max_error and error.mean() <= mean_error
    agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agreement >= 0.9


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_converted_model_runs_outside_no_grad(quantize):
    """for_inference's model may be called directly, as a plain module is, with autograd on."""
    model = prepare_for_inference(wide_model(), CPU, torch.float32, quantize)
    assert model(tokens()[:1, :8]).shape == (1, 8, 512)


def test_a_first_decode_leaves_the_users_random_stream_alone(tmp_path, monkeypatch):
    """Racing the fp32 kernels (a machine's first decode) draws its own numbers, not the caller's."""
    monkeypatch.setenv("GPT2_LLM_CACHE", str(tmp_path))
    monkeypatch.setattr(machine_cache, "_measured_here", {})
    fp32_decode_kernel.cache_clear()
    try:
        torch.manual_seed(42)
        expected = torch.rand(3)
        torch.manual_seed(42)
        fp32_decode_kernel()
        assert torch.equal(torch.rand(3), expected)
    finally:
        fp32_decode_kernel.cache_clear()


def test_int8_swaps_every_linear_and_the_head_keeps_its_own_copy():
    model = prepare_for_inference(wide_model(), CPU, torch.bfloat16, "int8")
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear)
    assert model.wte.weight.dtype == torch.bfloat16  # the embedding lookup stays in float
    out = model.generate(tokens()[:1, :8], 70, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 78)  # decoding works, through a sliding window (context 64)


def test_greedy_int8_and_bf16_mostly_agree_with_fp32():
    model = wide_model(2)
    prompt = tokens(2)[:1, :8]
    reference = model.generate(prompt, 24, temperature=0)[0, 8:]
    for dtype, quantize in [(torch.bfloat16, None), (torch.bfloat16, "int8")]:
        fast = prepare_for_inference(copy.deepcopy(model), CPU, dtype, quantize)
        out = fast.generate(prompt, 24, temperature=0)[0, 8:]
        # Once one token differs the two continue different texts, so compare the common start.
        same_start = next((i for i, (a, b) in enumerate(zip(out.tolist(), reference.tolist())) if a != b), 24)
        assert same_start >= 12, (dtype, quantize, same_start)


def test_bad_choices_are_user_errors():
    with pytest.raises(UserError, match="int4"):
        prepare_for_inference(wide_model(), CPU, torch.float32, "int4")
    with pytest.raises(UserError, match="CPU"):
        prepare_for_inference(wide_model(), torch.device("cuda"), torch.float32, "int8")


@pytest.fixture(scope="module")
def trained_model(corpus, vocab):
    """A 2x64 model trained for 300 steps on the corpus (~3 s): the peaked, structured predictions int8 meets in
    use, which a random model does not have."""
    from bpe import BPE
    from gpt2_llm.tests.helpers import make_small_model

    bpe = BPE(str(vocab))
    bpe.load()
    ids = torch.tensor(bpe.encode(corpus.read_text(encoding="utf-8")))
    model = make_small_model(vocab_size=bpe.get_model_vocab_size(), max_seq_len=64).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=generator)
        windows = torch.stack([ids[s : s + 65] for s in starts.tolist()])
        loss = model.loss(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), ids


def test_int8_decodes_a_trained_model_like_fp32_within_int8s_error(trained_model):
    """Greedy int8 text equals fp32's (where a first difference comes, it is between near-tied tokens: the fp32
    logits of the two choices differ by less than int8's logit error), and the logits stay close."""
    model, ids = trained_model
    fast = prepare_for_inference(copy.deepcopy(model), CPU, torch.float32, "int8")
    assert isinstance(fast.lm_head, Int8Linear)
    windows = ids[:4 * 48].view(4, 48)
    with torch.no_grad():
        reference, logits = model(windows), fast(windows)
    error = (logits - reference).abs()
    assert (error.max(-1).values / reference.std(-1)).max() <= 0.1  # measured ~0.03
    int8_error = error.max().item()
    for start in range(0, 4 * 48, 48):
        prompt = ids[start : start + 8][None]
        expected, got = model.generate(prompt, 32, temperature=0)[0], fast.generate(prompt, 32, temperature=0)[0]
        differ = (expected != got).nonzero()
        if len(differ):  # the first divergence must be a near-tie for the fp32 model
            at = differ[0].item()
            with torch.no_grad():
                fp32_logits = model(expected[None, :at])[0, -1]
            gap = fp32_logits[expected[at]] - fp32_logits[got[at]]
            assert gap <= 2 * int8_error, (start, at, gap.item(), int8_error)
