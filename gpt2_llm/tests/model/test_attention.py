"""attention.py: the readable math, the fast bmm path and SDPA agree; causality; the KV cache; RoPE; the kernel choice."""
import pytest
import torch
import torch.nn.functional as F

from gpt2_llm.model.attention import (CausalSelfAttention, RotaryPositionEmbedding, attention_bmm, attention_kernel,
                                attention_math, causal_mask)
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.model.kv_cache import LayerKVCache

KERNELS = ["sdpa", "math", "bmm"]


def attention(embedding_dim, num_heads, max_seq_len=32, kernel="sdpa", **fields):
    attn = CausalSelfAttention(GPT2Config(vocab_size=10, embedding_dim=embedding_dim, num_heads=num_heads,
                                          max_seq_len=max_seq_len, **fields))
    attn.kernel = kernel
    return attn


def test_causal_mask_is_offset_lower_triangle():
    assert causal_mask(2, 1).tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(causal_mask(4, 0), torch.ones(4, 4, dtype=torch.bool).tril())


@pytest.mark.parametrize("mask_kind", ["none", "causal"])
def test_attention_math_equals_sdpa(mask_kind):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 16).unbind(0)
    if mask_kind == "none":
        expected, mask = F.scaled_dot_product_attention(q, k, v), None
    else:
        expected, mask = F.scaled_dot_product_attention(q, k, v, is_causal=True), causal_mask(7, 0)
    torch.testing.assert_close(attention_math(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention_bmm(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)


def test_attention_math_is_the_formula_by_hand():
    """One head, two positions, numbers small enough to check on paper."""
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    v = torch.tensor([[[[10.0, 0.0], [0.0, 20.0]]]])
    out = attention_math(q, k, v, causal_mask(2, 0))
    # Query 0 sees key 0 only -> v0. Query 1 scores k0, k1 as 0, 1/sqrt(2) -> softmax weights w.
    w = torch.softmax(torch.tensor([0.0, 2**-0.5]), dim=0)
    torch.testing.assert_close(out[0, 0], torch.stack([v[0, 0, 0], w[0] * v[0, 0, 0] + w[1] * v[0, 0, 1]]))


@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("kernel", ["math", "bmm", "auto"])
def test_module_kernels_equal_sdpa(use_rope, kernel):
    torch.manual_seed(0)
    attn = attention(64, 4, use_rope=use_rope)
    x = torch.randn(2, 11, 64)
    fast = attn(x)
    attn.kernel = kernel
    torch.testing.assert_close(attn(x), fast, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device_dtype_keys, expected", [
    (("cpu", torch.bfloat16, 128), "bmm"), (("cpu", torch.bfloat16, 512), "bmm"),
    (("cpu", torch.bfloat16, 1024), "sdpa"), (("cpu", torch.float32, 128), "sdpa"),
    (("meta", torch.bfloat16, 128), "sdpa"),
])
def test_the_kernel_is_picked_from_device_dtype_and_length(device_dtype_keys, expected):
    device, dtype, num_keys = device_dtype_keys
    assert attention_kernel(torch.empty(1, 1, 1, 8, dtype=dtype, device=device), num_keys) == expected


def test_bf16_training_step_on_cpu_takes_the_bmm_kernel(monkeypatch):
    """The model picks its kernel itself: a plain model.loss under autocast gets the fast one, no Trainer needed."""
    from gpt2_llm.model import attention as attention_module
    from gpt2_llm.gpt2 import GPT2

    calls = []
    monkeypatch.setattr(attention_module, "attention_bmm",
                        lambda *a, **k: calls.append("bmm") or attention_math(*a, **k))
    torch.manual_seed(0)
    model = GPT2(vocab_size=50, embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=16)
    x = torch.randint(0, 50, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(x, x).backward()
    assert calls == ["bmm", "bmm"]  # one per layer
    calls.clear()
    model.loss(x, x)  # fp32: the fused kernel
    assert calls == []


@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_attention_is_causal(use_rope, kernel):
    torch.manual_seed(0)
    attn = attention(32, 2, max_seq_len=16, use_rope=use_rope, kernel=kernel)
    x = torch.randn(1, 10, 32)
    changed = x.clone()
    changed[:, 6] += 1.0
    a, b = attn(x), attn(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_cached_chunks_equal_one_full_pass(use_rope, kernel):
    """Prefill at offset 0, a chunk at offset > 0 (masked), then single steps (unmasked)."""
    torch.manual_seed(0)
    attn = attention(32, 2, max_seq_len=16, use_rope=use_rope, kernel=kernel)
    x = torch.randn(2, 12, 32)
    full = attn(x)
    cache = LayerKVCache(16)
    pieces, start = [], 0
    for size in (5, 4, 1, 1, 1):
        pieces.append(attn(x[:, start : start + size], cache, start))
        start += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_distance():
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding(16, max_seq_len=64)
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)  # one vector each, shaped (B, nh, T, hs)

    def score(m, n):
        return (rope(q, start=m) * rope(k, start=n)).sum().item()

    for shift in (1, 7, 40):
        assert score(3, 1) == pytest.approx(score(3 + shift, 1 + shift), abs=1e-5)
        assert score(5, 5) == pytest.approx(score(5 + shift, 5 + shift), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(9, 1), abs=1e-3)  # but it does depend on distance


def test_rope_offset_equals_slice_of_longer_sequence_and_keeps_norms():
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding(8, max_seq_len=32)
    x = torch.randn(2, 3, 10, 8)
    whole = rope(x)
    torch.testing.assert_close(rope(x[:, :, 6:], start=6), whole[:, :, 6:])
    torch.testing.assert_close(whole.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(whole[:, :, 0], x[:, :, 0])  # position 0 is not rotated


def test_rope_tables_are_not_saved_and_follow_dtype():
    rope = RotaryPositionEmbedding(8, max_seq_len=32)
    assert rope.state_dict() == {}
    x = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    assert rope(x).dtype == torch.bfloat16


def test_rope_does_not_touch_values():
    """With RoPE, V is unrotated: if q and k were zero, the output would be the mean of v."""
    torch.manual_seed(0)
    attn = attention(8, 1, max_seq_len=8, use_rope=True)
    with torch.no_grad():
        attn.c_attn.weight[:16] = 0  # q and k weights
        attn.c_attn.bias.zero_()
        attn.c_proj.weight.copy_(torch.eye(8))
        attn.c_proj.bias.zero_()
    x = torch.randn(1, 4, 8)
    v = x @ attn.c_attn.weight[16:].T
    expected = v.cumsum(dim=1) / torch.arange(1, 5).view(1, 4, 1)
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_output_shape_and_gradients():
    attn = attention(48, 3, dropout=0.1)
    x = torch.randn(2, 5, 48, requires_grad=True)
    out = attn(x)
    assert out.shape == (2, 5, 48)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.parameters())
