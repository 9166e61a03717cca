"""model/blocks.py: the MLP, the pre-LN block and the stack, checked against GPT-2's equations written
out here from the raw weights (not from the modules' own forward), plus gradient checkpointing."""
import math

import pytest
import torch

from gpt2_llm.model.config import GPT2Config
from gpt2_llm.model.blocks import MLP, DecoderBlock, GPT2Decoder


def config(embedding_dim=32, num_heads=4, **fields):
    return GPT2Config(vocab_size=10, embedding_dim=embedding_dim, num_heads=num_heads,
                      **{"max_seq_len": 16, "num_layers": 3, **fields})


def reference_block(block, x):
    """GPT-2's block from its equations and the block's weights: x + attn(ln_1(x)), then + mlp(ln_2(.))."""
    B, T, C = x.shape
    nh = block.attn.num_heads

    def layer_norm(ln, h):
        mean, var = h.mean(-1, keepdim=True), h.var(-1, keepdim=True, unbiased=False)
        return (h - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    def linear(layer, h):
        return h @ layer.weight.T + layer.bias

    q, k, v = linear(block.attn.c_attn, layer_norm(block.ln_1, x)).split(C, dim=-1)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // nh)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    x = x + linear(block.attn.c_proj, attended)
    return x + linear(block.mlp.c_proj, gelu_new(linear(block.mlp.c_fc, layer_norm(block.ln_2, x))))


def gelu_new(x):
    """GPT-2's activation as OpenAI wrote it (HF's "gelu_new")."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def test_mlp_uses_gpt2_gelu():
    torch.manual_seed(0)
    mlp = MLP(config(embedding_dim=16, feedforward_dim=64))
    x = torch.randn(2, 3, 16)
    hidden = gelu_new(x @ mlp.c_fc.weight.T + mlp.c_fc.bias)
    expected = hidden @ mlp.c_proj.weight.T + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)


def test_block_is_pre_layernorm_residual():
    """With both branches' output projections zeroed, a block is the identity."""
    torch.manual_seed(0)
    block = DecoderBlock(config())
    with torch.no_grad():
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(block(x), x)


def test_block_equals_gpt2_equations():
    torch.manual_seed(0)
    block = DecoderBlock(config())
    with torch.no_grad():  # LayerNorm's affine parameters away from 1/0, so that they are checked too
        for ln in (block.ln_1, block.ln_2):
            ln.weight.normal_(1.0, 0.3)
            ln.bias.normal_(0.0, 0.3)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(block(x), reference_block(block, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feedforward_dim, expected", [(None, 128), (40, 40)])
def test_decoder_stacks_blocks_in_order(feedforward_dim, expected):
    torch.manual_seed(0)
    decoder = GPT2Decoder(config(feedforward_dim=feedforward_dim))
    assert len(decoder.blocks) == 3
    assert decoder.blocks[0].mlp.c_fc.out_features == expected
    x = torch.randn(2, 5, 32)
    out = decoder(x)
    y = x
    for block in decoder.blocks:
        y = reference_block(block, y)
    torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)
    reversed_order = x
    for block in reversed(decoder.blocks):
        reversed_order = reference_block(block, reversed_order)
    assert not torch.allclose(out, reversed_order, atol=1e-3)  # the order of the blocks matters, and is kept


def test_bias_free_layers():
    block = DecoderBlock(config(feedforward_dim=64, bias=False))
    assert all("bias" not in name for name, _ in block.named_parameters())
    assert block(torch.randn(1, 3, 32)).shape == (1, 3, 32)


def saved_tensor_bytes(fn):
    """Bytes autograd keeps for backward while fn() runs (deterministic, unlike process memory)."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.shape, t.stride())] = t.numel() * t.element_size()  # a shared tensor counts once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradient_checkpointing_same_gradients_less_saved_memory(dropout):
    torch.manual_seed(0)
    decoder = GPT2Decoder(config(dropout=dropout))
    x = torch.randn(2, 16, 32, requires_grad=True)
    results = {}
    for recompute in (False, True):
        decoder.gradient_checkpointing = recompute
        decoder.zero_grad(set_to_none=True)
        x.grad = None
        torch.manual_seed(1)  # the same dropout masks; checkpoint replays them in the recompute
        out, saved = saved_tensor_bytes(lambda: decoder(x))
        out.pow(2).mean().backward()
        grads = [x.grad.clone()] + [p.grad.clone() for p in decoder.parameters()]
        results[recompute] = (out.detach(), grads, saved)
    (out_plain, grads_plain, saved_plain), (out_ckpt, grads_ckpt, saved_ckpt) = results[False], results[True]
    torch.testing.assert_close(out_ckpt, out_plain, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_ckpt, grads_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert saved_ckpt < saved_plain / 3  # only each block's input survives the forward


def test_gradient_checkpointing_off_in_eval_and_no_grad():
    decoder = GPT2Decoder(config(embedding_dim=16, num_heads=2, num_layers=2, max_seq_len=8))
    decoder.gradient_checkpointing = True
    x = torch.randn(1, 8, 16, requires_grad=True)
    decoder.eval()
    _, saved_eval = saved_tensor_bytes(lambda: decoder(x))
    decoder.gradient_checkpointing = False
    _, saved_plain = saved_tensor_bytes(lambda: decoder(x))
    assert saved_eval == saved_plain  # eval mode: plain forward (checkpointing is for training only)
