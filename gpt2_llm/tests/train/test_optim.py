"""optim.py: the AdamW setup, the learning-rate schedule and the optimizer state as named tensors."""
import math

import pytest
import torch

from gpt2_llm.gpt2 import GPT2
from gpt2_llm.errors import UserError
from gpt2_llm.finetune.lora import LoRAConfig, add_lora
from gpt2_llm.train import optim
from gpt2_llm.train.optim import (BatchedMuon, MuonWithAdamW, learning_rate_at, load_optimizer_state, make_adamw,
                            make_optimizer, optimizer_state_tensors)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.1),  # warmup: (step + 1) / warmup_steps of the peak
        (4, 0.5),
        (9, 1.0),  # warmup ends at the peak
        (10, 1.0),  # the cosine starts at the peak
        (55, 0.1 + 0.9 * 0.5),  # half way through the cosine: half way down to the floor
        (100, 0.1),  # the floor is 10% of the peak
        (150, 0.1),  # and stays there
    ],
)
def test_warmup_then_cosine_to_ten_percent(step, expected):
    assert learning_rate_at(step, 1.0, warmup_steps=10, total_steps=100) == pytest.approx(expected)


def test_schedule_decreases_after_warmup():
    lrs = [learning_rate_at(s, 3e-4, 10, 200) for s in range(10, 201)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_time_budget_drives_the_schedule_when_it_is_further_along():
    # 10% of the time ends the warmup even after 2 of 100 warmup steps; all of it reaches the floor.
    assert learning_rate_at(1, 1.0, 100, 10_000, time_fraction=0.05) == pytest.approx(0.5)
    assert learning_rate_at(1, 1.0, 100, 10_000, time_fraction=0.5) == pytest.approx(0.55)
    assert learning_rate_at(1, 1.0, 100, 10_000, time_fraction=1.0) == pytest.approx(0.1)
    assert learning_rate_at(9_990, 1.0, 10, 10_000, time_fraction=0.0) == pytest.approx(0.1, abs=1e-4)


def test_no_warmup():
    assert learning_rate_at(0, 1.0, 0, 10) == pytest.approx(1.0)


def test_weight_decay_on_matrices_only_and_fused():
    model = GPT2(64, 16, 1, 2, 8)
    optimizer = make_adamw(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["fused"] and optimizer.defaults["betas"] == (0.9, 0.95)


def test_optimizer_state_round_trips_through_named_tensors():
    torch.manual_seed(0)
    model = GPT2(64, 16, 1, 2, 8)
    optimizer = make_adamw(model, 1e-3)
    model.loss(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).backward()
    optimizer.step()
    tensors, hyper = optimizer_state_tensors(optimizer, model)
    assert "optimizer/wte.weight/exp_avg_sq" in tensors and hyper["param_groups"][0]["params"][0] == "wte.weight"

    fresh = make_adamw(model, 5e-1)
    load_optimizer_state(fresh, model, tensors, hyper)
    assert fresh.param_groups[0]["lr"] == 1e-3
    for p in model.parameters():
        assert all(torch.equal(optimizer.state[p][k], fresh.state[p][k]) for k in optimizer.state[p])
    assert math.isclose(float(fresh.state[model.wte.weight]["step"]), 1.0)


def test_muon_takes_the_decoders_matrices_and_adamw_the_rest():
    model = GPT2(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=2, max_seq_len=8)
    optimizer = make_optimizer("muon", model, 1e-3)
    muon, adamw = optimizer.optimizers
    assert isinstance(optimizer, MuonWithAdamW) and isinstance(muon, torch.optim.Muon)
    name_of = {id(p): name for name, p in model.named_parameters()}
    muon_names = {name_of[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {name_of[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if n.startswith("decoder.") and p.dim() == 2}
    assert "wte.weight" in adamw_names and "wpe.weight" in adamw_names  # embeddings and the tied head
    assert muon_names | adamw_names == set(name_of.values()) and not muon_names & adamw_names
    assert len(optimizer.param_groups) == 3  # muon's, then adamw's decayed and not decayed


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_muon_orthogonalizes_in_bf16_only_where_bf16_is_native(monkeypatch, native_bf16, expected):
    """torch.optim.Muon's bf16 Newton-Schulz where the CPU runs bf16; fp32 where bf16 would be emulated (many times
    slower: bench/precision.py), with the same update to bf16's rounding."""
    monkeypatch.setattr(optim, "has_fast_bf16", lambda device: native_bf16)
    model = GPT2(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=2, max_seq_len=8)
    muon = make_optimizer("muon", model, 1e-3).optimizers[0]
    assert muon.ns_dtype == expected
    torch.manual_seed(0)
    update = torch.randn(3, 16, 48)
    coefficients, steps, eps = muon.param_groups[0]["ns_coefficients"], muon.param_groups[0]["ns_steps"], 1e-7
    fp32, bf16 = (optim.orthogonalize(update, coefficients, steps, eps, dtype)
                  for dtype in (torch.float32, torch.bfloat16))
    assert fp32.dtype == torch.float32 and (fp32 - bf16.float()).norm() < 0.05 * bf16.float().norm()


def test_muon_with_adamw_state_round_trips_through_checkpoint_tensors():
    torch.manual_seed(0)
    model = GPT2(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=2, max_seq_len=8)
    optimizer = make_optimizer("muon", model, 1e-2)
    for _ in range(2):
        model.loss(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))).backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors, hyper = optimizer_state_tensors(optimizer, model)
    assert any(k.endswith("/momentum_buffer") for k in tensors) and any(k.endswith("/exp_avg") for k in tensors)
    fresh = make_optimizer("muon", model, 1e-2)
    load_optimizer_state(fresh, model, tensors, hyper)
    for p in model.parameters():
        a, b = optimizer.state[p], fresh.state[p]
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    adamw_only = make_optimizer("adamw", model, 1e-2)
    with pytest.raises(UserError, match="another --optimizer"):
        load_optimizer_state(adamw_only, model, tensors, hyper)


@pytest.mark.parametrize("batch_max_elements", [0, 1 << 30], ids=["one-by-one", "batched"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_equals_torch_muon_bit_for_bit(monkeypatch, batch_max_elements, nesterov):
    """Square, wide and tall matrices, two of each shape, with the shapes interleaved: the same weights and
    momentum as torch.optim.Muon's after three steps, whether a shape runs batched or one matrix at a time."""
    monkeypatch.setattr(optim, "BATCH_MAX_ELEMENTS", batch_max_elements)
    torch.manual_seed(0)
    shapes = [(24, 24), (16, 40), (40, 16), (24, 24), (16, 40), (40, 16)]
    ours = [torch.nn.Parameter(torch.randn(shape) * 0.1) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    settings = dict(lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    batched, reference = BatchedMuon(ours, **settings), torch.optim.Muon(theirs, **settings)
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        batched.step()
        reference.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        assert torch.equal(batched.state[a]["momentum_buffer"], reference.state[b]["momentum_buffer"])
    assert batched.state_dict()["param_groups"] == reference.state_dict()["param_groups"]


def test_muon_for_lora_adapters_alone_is_refused():
    model = GPT2(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=2, max_seq_len=8)
    add_lora(model, LoRAConfig(rank=2))
    with pytest.raises(UserError, match="LoRA adapters train with adamw"):
        make_optimizer("muon", model, 1e-3)
