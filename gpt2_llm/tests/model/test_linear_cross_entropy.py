"""The chunked head + loss against its readable form: the full logits, then F.cross_entropy."""
import pytest
import torch

from gpt2_llm.model.gpt2 import next_token_loss
from gpt2_llm.model.linear_cross_entropy import linear_cross_entropy, reference_linear_cross_entropy
from gpt2_llm.tests.helpers import make_small_model

N, C, V = 37, 16, 53  # 37 rows: chunks of 8 leave a short last one


def inputs(seed=0, ignored=(3, 4, 20)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    targets[list(ignored)] = -100
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, dtype=None, scale=1.0, **kwargs):
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = fn(hidden, weight, targets, **kwargs)
    (loss * scale).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fp32_equals_the_readable_form(chunk_rows, reduction):
    hidden, weight, targets = inputs()
    expected = loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets, reduction=reduction)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, reduction=reduction, chunk_rows=chunk_rows)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert got[1][[3, 4, 20]].abs().max() == 0  # an ignored row gets no gradient


def test_bf16_autocast_is_as_close_to_fp32_as_the_plain_autocast_path():
    hidden, weight, targets = inputs(1)
    exact = loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets)
    plain = loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets, dtype=torch.bfloat16)
    fused = loss_and_grads(linear_cross_entropy, hidden, weight, targets, dtype=torch.bfloat16, chunk_rows=8)
    assert fused[0].dtype == torch.float32 and fused[2].dtype == torch.float32
    for e, p, f in zip(exact, plain, fused):
        plain_error = (p - e).abs().max()
        assert (f - e).abs().max() <= 2 * plain_error + 1e-6
        torch.testing.assert_close(f, e, rtol=0.03, atol=0.03 * e.abs().max().item())


def test_gradients_scale_with_the_incoming_gradient():
    hidden, weight, targets = inputs(2)
    _, h1, w1 = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    _, h3, w3 = loss_and_grads(linear_cross_entropy, hidden, weight, targets, scale=3.0)
    torch.testing.assert_close(h3, 3 * h1)
    torch.testing.assert_close(w3, 3 * w1)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    """LoRA freezes the tied head: its V x C gradient is then never computed."""
    hidden, weight, targets = inputs(3)
    _, expected_h, _ = loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets)
    weight.requires_grad_(False)
    hidden.grad = weight.grad = None
    linear_cross_entropy(hidden, weight, targets, chunk_rows=8).backward()
    torch.testing.assert_close(hidden.grad, expected_h, rtol=1e-5, atol=1e-6)
    assert weight.grad is None


def test_without_autograd_it_only_scores():
    hidden, weight, targets = inputs(4)
    with torch.inference_mode():
        got = linear_cross_entropy(hidden, weight, targets, reduction="sum", chunk_rows=5)
        expected = reference_linear_cross_entropy(hidden, weight, targets, reduction="sum")
    torch.testing.assert_close(got, expected)


def test_every_target_ignored_gives_zero_not_nan():
    hidden, weight, targets = inputs(5, ignored=range(N))
    loss, grad_hidden, grad_weight = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    assert loss == 0 and grad_hidden.abs().max() == 0 and grad_weight.abs().max() == 0


def test_model_loss_equals_the_loss_of_the_full_logits_with_the_same_gradients():
    torch.manual_seed(0)
    model = make_small_model(seed=6).train()
    x = torch.randint(0, 101, (3, 32))
    y = torch.randint(0, 101, (3, 32))
    y[0, :5] = -100
    model.loss(x, y).backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    next_token_loss(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert model(x, targets=y).item() == pytest.approx(next_token_loss(model(x), y).item(), rel=1e-6)


def test_bad_reduction_is_refused():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")
