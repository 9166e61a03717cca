import math

import pytest
import torch
import torch.nn.functional as F

from gpt2_llm import GPT2, PRESETS, GPT2Config
from gpt2_llm.errors import UserError

from gpt2_llm.tests.helpers import SMALL, greedy_without_cache


def ids(batch, length, seed=1, vocab=SMALL["vocab_size"]):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- config --------------------------------------------------------------------------------


def test_config_defaults_are_gpt2_small():
    config = GPT2Config()
    assert (config.vocab_size, config.embedding_dim, config.num_layers, config.num_heads) == (50257, 768, 12, 12)
    assert (config.max_seq_len, config.head_dim, config.mlp_dim) == (1024, 64, 3072)


def test_config_dict_round_trip():
    config = GPT2Config(vocab_size=10, embedding_dim=8, num_heads=2, feedforward_dim=12, use_rope=True)
    assert GPT2Config.from_dict(config.to_dict()) == config
    assert GPT2Config.from_dict({"vocab_size": 10}).embedding_dim == 768  # missing keys take defaults


@pytest.mark.parametrize(
    "values, message",
    [
        ({"embedding_dim": 100, "num_heads": 12}, "not divisible by num_heads"),
        ({"embedding_dim": 36, "num_heads": 12, "use_rope": True}, "must be even"),
        ({"num_layers": 0}, "positive integer"),
        ({"vocab_size": -3}, "positive integer"),
        ({"max_seq_len": 2.5}, "positive integer"),
        ({"num_heads": True}, "positive integer"),
        ({"feedforward_dim": 0}, "positive integer"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": "0.1"}, "must be a finite number"),
        ({"rope_base": float("nan")}, "must be a finite number"),
        ({"use_rope": "yes"}, "true or false"),
        ({"layer_norm_eps": 0}, "positive"),
        ({"n_embd": 768}, "unknown config key"),
    ],
)
def test_config_rejects_bad_values(values, message):
    with pytest.raises(UserError, match=message):
        GPT2Config.from_dict(values)


def test_presets_build_valid_configs():
    assert set(PRESETS) >= {"tiny", "small", "gpt2", "quick"}
    for preset in PRESETS.values():
        GPT2Config(vocab_size=100, **preset)
    assert PRESETS["small"] == dict(num_layers=12, embedding_dim=480, num_heads=12, max_seq_len=256)


# --- structure -----------------------------------------------------------------------------


def test_model_keeps_its_config_and_from_config_rebuilds_it(small_model):
    model = small_model(use_rope=True)
    assert model.config == GPT2Config(**SMALL, use_rope=True)
    assert GPT2.from_config(model.config).config == model.config


def test_head_is_tied_to_token_embedding(small_model):
    model = small_model()
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


def test_num_parameters_counts_tied_weight_once(small_model):
    model = small_model()
    V, C, L, T = 101, 64, 2, 32
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert model.num_parameters() == V * C + T * C + L * per_block + 2 * C


def test_rope_model_has_no_position_table(small_model):
    model = small_model(use_rope=True)
    assert model.wpe is None
    assert not any(name.startswith("wpe") for name in model.state_dict())
    assert small_model().num_parameters() - model.num_parameters() == 32 * 64


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = GPT2(vocab_size=2000, embedding_dim=128, num_layers=8, num_heads=4, max_seq_len=256)
    params = dict(model.named_parameters())
    residual_std = 0.02 / math.sqrt(2 * 8)
    for name, p in params.items():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight")) or name in ("wte.weight", "wpe.weight"):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif ".ln_" in name or name.startswith("ln_f"):
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            raise AssertionError(f"unchecked parameter {name}")


# --- forward, loss, gradients --------------------------------------------------------------


@pytest.mark.parametrize("use_rope", [False, True])
def test_logits_shape(use_rope, small_model):
    model = small_model(use_rope=use_rope)
    assert model(ids(3, 7)).shape == (3, 7, 101)
    assert model(ids(1, 32)).shape == (1, 32, 101)


@pytest.mark.parametrize("use_rope", [False, True])
def test_changing_a_future_token_never_changes_past_logits(use_rope, small_model):
    model = small_model(use_rope=use_rope)
    x = ids(2, 20)
    changed = x.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 101
    a, b = model(x), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_sequence_longer_than_context_is_a_user_error(small_model):
    with pytest.raises(UserError, match="longer than the model's context"):
        small_model()(ids(1, 33))


def test_loss_is_mean_cross_entropy_with_ignore_index(small_model):
    model = small_model()
    x, y = ids(2, 10), ids(2, 10, seed=2)
    y[0, :3] = -100
    logits = model(x)
    expected = F.cross_entropy(logits.reshape(-1, 101), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model.loss(x, y), expected)
    targets = y[y != -100]
    manual = -torch.log_softmax(logits[y != -100], dim=-1).gather(1, targets[:, None]).mean()
    torch.testing.assert_close(model.loss(x, y), manual, atol=1e-5, rtol=1e-5)


def test_loss_accepts_non_contiguous_targets(small_model):
    model = small_model()
    data = ids(2, 11)
    x, y = data[:, :-1], data[:, 1:]
    assert not y.is_contiguous()
    torch.testing.assert_close(model.loss(x, y), model.loss(x, y.contiguous()))


def test_loss_under_bf16_autocast_is_close_to_fp32(small_model):
    model = small_model()
    x, y = ids(4, 32), ids(4, 32, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.loss(x, y)
    assert low.item() == pytest.approx(model.loss(x, y).item(), abs=0.02)


@pytest.mark.parametrize("use_rope", [False, True])
def test_every_parameter_gets_a_gradient(use_rope, small_model):
    model = small_model(use_rope=use_rope).train()
    model.loss(ids(2, 16), ids(2, 16, seed=2)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_dropout_is_active_only_in_training(small_model):
    model = small_model(dropout=0.5)
    x = ids(1, 8)
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


# --- KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("chunks", [(9, 1, 1, 1, 1, 1, 1, 1), (1,) * 16, (4, 6, 1, 5)])
def test_cached_decoding_equals_full_forward(use_rope, chunks, small_model):
    model = small_model(use_rope=use_rope)
    x = ids(2, sum(chunks))
    full = model(x)
    cache, pieces, start = model.new_cache(), [], 0
    for size in chunks:
        pieces.append(model(x[:, start : start + size], cache))
        start += size
        assert cache.length == start
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_rope", [False, True])
def test_rows_at_their_own_positions_decode_as_each_row_alone(use_rope, small_model):
    # One forward pass for every decoder: a server's batch (rows at different lengths) runs hidden_states with a
    # position per row, and each row's logits are those of its sequence decoded alone, step after step.
    model = small_model(use_rope=use_rope)
    lengths, steps = (7, 2, 12), 4
    sequences = [ids(1, n + steps)[0] for n in lengths]
    cache = model.new_cache()
    cache.allocate(len(lengths), model.config.num_heads, model.config.head_dim, torch.float32)
    with torch.no_grad():
        for row, n in enumerate(lengths):  # each prompt alone in its row, from position 0
            model(sequences[row][None, :n], cache.rows(row, row + 1))
        for step in range(steps):
            positions = [n + step for n in lengths]
            batched = model(torch.stack([seq[p] for seq, p in zip(sequences, positions)])[:, None], cache,
                            positions=positions)
            alone = torch.stack([model(seq[None, : p + 1])[0, -1] for seq, p in zip(sequences, positions)])
            torch.testing.assert_close(batched[:, -1], alone, atol=1e-5, rtol=1e-5)
    assert cache.length == 0  # the caller keeps each row's length; the cache's own is not moved


def test_a_row_past_the_context_is_a_user_error(small_model):
    model = small_model()
    cache = model.new_cache()
    cache.allocate(2, model.config.num_heads, model.config.head_dim, torch.float32)
    with pytest.raises(UserError, match="past the model's context"):
        model(ids(2, 1), cache, positions=[3, 32])


def test_cache_fills_to_context_then_refuses(small_model):
    model = small_model()
    cache = model.new_cache()
    model(ids(1, 32), cache)
    with pytest.raises(UserError, match="reset"):
        model(ids(1, 1), cache)
    cache.reset()
    torch.testing.assert_close(model(ids(1, 5), cache), model(ids(1, 5)), atol=1e-5, rtol=1e-5)


def test_cache_follows_activation_dtype(small_model):
    model = small_model()
    cache = model.new_cache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids(1, 4), cache)
        model(ids(1, 1), cache)
    assert cache.layers[0].keys.dtype == torch.bfloat16


# --- generate ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_rope", [False, True])
def test_greedy_generate_equals_argmax_loop(use_rope, small_model):
    model = small_model(use_rope=use_rope)
    x = ids(2, 5)
    out = model.generate(x, 20, temperature=0)
    assert out.shape == (2, 25)
    assert torch.equal(out[:, :5], x)
    assert torch.equal(out, greedy_without_cache(model, x, 20))


@pytest.mark.parametrize("use_rope", [False, True])
def test_generate_slides_past_the_context(use_rope, small_model):
    model = small_model(use_rope=use_rope)  # context 32
    x = ids(2, 20)
    out = model.generate(x, 40, temperature=0)
    assert out.shape == (2, 60)
    # Until the window is full nothing is cropped, so it matches the plain loop.
    assert torch.equal(out[:, :33], greedy_without_cache(model, x, 13))
    long_prompt = model.generate(ids(1, 50), 5, temperature=1.0, top_k=5)
    assert long_prompt.shape == (1, 55)


def test_sliding_window_rebuilds_from_last_tokens(small_model):
    """Once the cache is full, each new token's logits come from the most recent max_seq_len - 1
    (or max_seq_len, after a cached step) tokens: the same logits a plain crop would give."""
    model = small_model()
    out = model.generate(ids(1, 32), 3, temperature=0)
    assert out[0, 32].item() == model(out[:, :32])[0, -1].argmax().item()
    assert out[0, 33].item() == model(out[:, 2:33])[0, -1].argmax().item()  # rebuilt from 31 tokens
    assert out[0, 34].item() == model(out[:, 2:34])[0, -1].argmax().item()  # then one cached step


def test_seeded_sampling_is_reproducible(small_model):
    model = small_model()
    x = ids(2, 4)
    a = model.generate(x, 15, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = model.generate(x, 15, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = model.generate(x, 15, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eos_stops_and_pads_finished_rows(small_model):
    model = small_model()
    x = ids(2, 3)
    free = model.generate(x, 10, temperature=0)
    eos = free[0, 5].item()  # row 0 will emit this as its 3rd new token
    out = model.generate(x, 10, temperature=0, eos_token_id=eos)
    row0 = out[0, 3:].tolist()
    first = row0.index(eos)
    assert all(token == eos for token in row0[first:])
    if eos not in free[1, 3:].tolist():
        assert out.shape[1] == 13  # row 1 never finished, so generation ran to the end
    single = model.generate(x[:1], 10, temperature=0, eos_token_id=eos)
    assert single.shape[1] == 3 + first + 1  # a lone row stops at its eos


def test_generate_restores_training_mode_and_tracks_no_gradients(small_model):
    model = small_model(dropout=0.1).train()
    out = model.generate(ids(1, 3), 4, temperature=0)
    assert model.training
    assert not out.requires_grad


def test_generate_rejects_empty_prompt(small_model):
    with pytest.raises(UserError, match="prompt"):
        small_model().generate(torch.zeros(1, 0, dtype=torch.long), 3)
