"""lora.py and LoRA fine-tuning through the Trainer: what trains, where it starts, merging, adapter files."""
import signal

import pytest
import torch

from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.finetune import lora
from gpt2_llm.errors import UserError
from gpt2_llm.gpt2 import GPT2
from gpt2_llm.train.optim import make_adamw
from gpt2_llm.tests.helpers import QUIET, interrupt_after, make_small_model, read_log
from gpt2_llm.train.trainer import Trainer
from gpt2_llm.tokenizer.vocab import load_vocab

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = dict(embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=32)


def micro_model(seed=0, **shape):
    """conftest's small model at the trainer tests' shape, over the 300-token vocab."""
    return make_small_model(seed, **{"vocab_size": 300, **SHAPE, **shape})


def random_ids(batch=2, length=16, vocab_size=300, seed=1):
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def with_random_updates(model):
    """Give every B a value, as training would: a zero B would make merge tests pass trivially."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model


def test_only_the_adapters_train():
    model = lora.add_lora(micro_model(), lora.LoRAConfig(rank=4))
    x = random_ids()
    model.loss(x, x).backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable and trainable
    assert all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    assert len(trainable) == 2 * 4 * 2  # (A, B) x 4 layers per block x 2 blocks
    optimizer = make_adamw(model, 1e-3)  # optimizer state only for the adapters
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == \
        sum(model.get_parameter(n).numel() for n in trainable)


def test_trainable_parameter_count_follows_rank_and_targets():
    C = SHAPE["embedding_dim"]
    per_block = {"attn": 4 * (C + 3 * C) + 4 * (C + C), "mlp": 4 * (C + 4 * C) + 4 * (4 * C + C)}
    for targets in ("attn", "mlp", "attn,mlp"):
        model = lora.add_lora(micro_model(), lora.LoRAConfig(rank=4, targets=targets))
        expected = 2 * sum(per_block[t] for t in targets.split(","))
        assert lora.count_parameters(model) == (expected, micro_model().num_parameters() + expected)


def test_adapted_model_starts_exactly_at_the_base():
    base = micro_model()
    adapted = lora.add_lora(micro_model(), lora.LoRAConfig(rank=8, alpha=32))
    x = random_ids()
    assert torch.equal(base(x), adapted(x))  # B = 0: the update adds exact zeros


def test_merged_model_computes_the_same_as_base_plus_adapter():
    model = with_random_updates(lora.add_lora(micro_model(), lora.LoRAConfig(rank=4, alpha=8)))
    model.eval()
    x = random_ids()
    with torch.no_grad():
        unmerged = model(x)
        base_logits = micro_model()(x)
        merged = lora.merge_lora(model)(x)
    assert not torch.allclose(unmerged, base_logits, atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert set(model.state_dict()) == set(micro_model().state_dict())  # a plain GPT2 again: saves as one


def test_trained_rows_learn_alone_and_merge_into_the_tied_table():
    """The new tokens' rows train beside the adapters; every other row of the (tied) table stays the base's, in
    the input embedding and the output head, before and after merging."""
    rows = [280, 281, 299]
    model = lora.add_lora(micro_model(), lora.LoRAConfig(rank=4), trained_rows=rows)
    x = random_ids()
    assert torch.equal(micro_model()(x), model(x))  # the rows start as the table's
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "wte.lora_rows" in trainable and not any("base" in name for name in trainable)
    optimizer = make_adamw(model, 1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(x, torch.full_like(x, 281)).backward()  # the target is a trained row: the head must move
        optimizer.step()
    with torch.no_grad():
        unmerged = model(x)
        merged_model = lora.merge_lora(model)
        torch.testing.assert_close(merged_model(x), unmerged, atol=1e-5, rtol=1e-5)
    table, base_table = merged_model.wte.weight, micro_model().wte.weight
    assert merged_model.lm_head.weight is table  # tied again
    others = [i for i in range(table.shape[0]) if i not in rows]
    assert torch.equal(table[others], base_table[others]) and not torch.equal(table[rows], base_table[rows])
    assert set(merged_model.state_dict()) == set(micro_model().state_dict())


def test_an_adapter_that_added_tokens_adds_them_to_the_base_it_is_applied_to(vocab):
    """apply_adapter puts the run's tokens into the base's vocab and table (the table grows if it must), then the
    trained rows: the same function as the model the run trained."""
    from gpt2_llm.chat.tokens import add_tokens

    names = ["<|a|>", "<|b|>"]
    base_bpe = load_vocab(str(vocab))
    trained_bpe = load_vocab(str(vocab))
    model = micro_model(vocab_size=base_bpe.get_model_vocab_size())
    fingerprint, base_config = lora.weights_fingerprint(model), model.config.to_dict()
    ids = add_tokens(model, trained_bpe, names)
    trained = with_random_updates(lora.add_lora(model, lora.LoRAConfig(rank=4), trained_rows=ids))
    with torch.no_grad():
        trained.wte.lora_rows.normal_()
    metadata = {"adapter": lora.adapter_metadata(lora.LoRAConfig(rank=4), type(model.config).from_dict(base_config),
                                                 fingerprint, {"checkpoint": "base.pt"}, names)}
    applied, warning = lora.apply_adapter(micro_model(vocab_size=base_bpe.get_model_vocab_size()),
                                          lora.adapter_tensors(trained), metadata, "adapter", base_bpe)
    assert warning is None and base_bpe.fingerprint() == trained_bpe.fingerprint()
    x = random_ids(vocab_size=max(ids) + 1)
    with torch.no_grad():
        assert torch.equal(applied(x), trained(x))


def test_lora_config_is_checked():
    for bad in (dict(rank=0), dict(rank=2.5), dict(alpha=0), dict(targets="attn,ffn"), dict(targets=""),
                dict(dropout=1.0)):
        with pytest.raises(UserError):
            lora.LoRAConfig(**bad)
    assert lora.LoRAConfig(targets="attn, c_attn").layer_names() == ["attn.c_attn", "attn.c_proj"]
    assert lora.LoRAConfig.from_dict(lora.LoRAConfig(rank=2).to_dict()) == lora.LoRAConfig(rank=2)


def test_an_adapter_refuses_a_base_of_another_shape():
    model = micro_model()
    metadata = {"adapter": lora.adapter_metadata(lora.LoRAConfig(), model.config, lora.weights_fingerprint(model),
                                                 {"checkpoint": "base.pt"})}
    tensors = lora.adapter_tensors(lora.add_lora(micro_model(), lora.LoRAConfig()))
    for other in (dict(embedding_dim=64), dict(num_layers=3), dict(vocab_size=320)):
        with pytest.raises(UserError, match="another shape.*base.pt"):
            lora.apply_adapter(micro_model(**other), tensors, metadata, "adapter.safetensors")
    # Same shape, other weights: it applies, with a warning.
    _, warning = lora.apply_adapter(micro_model(seed=9), tensors, metadata, "adapter.safetensors")
    assert warning and "other base weights" in warning
    _, warning = lora.apply_adapter(micro_model(), tensors, metadata, "adapter.safetensors")
    assert warning is None


def test_weights_fingerprint_ignores_adapters_and_tells_weights_apart():
    fingerprint = lora.weights_fingerprint(micro_model())
    assert lora.weights_fingerprint(lora.add_lora(micro_model(), lora.LoRAConfig())) == fingerprint
    assert lora.weights_fingerprint(micro_model(seed=1)) != fingerprint


# --- through the Trainer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_checkpoint(vocab, corpus, tmp_path_factory):
    """A micro model trained briefly on the first half of the corpus (the base to fine-tune)."""
    directory = tmp_path_factory.mktemp("base")
    first_half = directory / "first.txt"
    text = corpus.read_text(encoding="utf-8")
    first_half.write_text(text[: len(text) // 2], encoding="utf-8")
    trainer = Trainer.create_trainer_from_vocab(vocab, batch_size=8, learning_rate=3e-3, dtype="fp32", **SHAPE,
                                                **QUIET)
    trainer.train(first_half, max_steps=60, save_path=directory / "base.pt")
    return directory / "base.pt"


@pytest.fixture(scope="module")
def new_text(tmp_path_factory):
    """Text unlike the base's: fine-tuning has something to learn."""
    path = tmp_path_factory.mktemp("new") / "new.txt"
    lines = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def lora_trainer(base_path, bpe, config=lora.LoRAConfig(rank=4), **options):
    model = GPT2.from_checkpoint(base_path)
    adapter = lora.adapter_metadata(config, model.config, lora.weights_fingerprint(model),
                                    {"checkpoint": str(base_path)})
    lora.add_lora(model, config)
    settings = dict(dtype="fp32", device="cpu", eval_interval=10, weight_decay=0.0, **QUIET)
    return Trainer(model, bpe, 32, 4, 3e-3, adapter=adapter, **{**settings, **options})


def test_lora_fine_tuning_lowers_the_validation_loss_and_leaves_the_base(vocab, base_checkpoint, new_text, tmp_path):
    bpe = load_vocab(vocab)
    trainer = lora_trainer(base_checkpoint, bpe)
    data = trainer.load_data(new_text)
    before, _ = trainer.evaluate(data)
    result = trainer.train(new_text, max_steps=40, save_path=tmp_path / "adapter.safetensors")
    assert result.val_loss < before - 0.25, (before, result.val_loss)  # measured: 5.32 -> 4.93
    base = GPT2.from_checkpoint(base_checkpoint)
    trained = {k.replace(".base.", "."): v for k, v in trainer.model.state_dict().items() if ".lora_" not in k}
    for key, tensor in base.state_dict().items():
        assert torch.equal(trained[key], tensor), key  # frozen means frozen


def test_adapter_file_holds_only_the_adapters_and_resumes_exactly(vocab, base_checkpoint, new_text, tmp_path):
    bpe = load_vocab(vocab)
    dropout_lora = lora.LoRAConfig(rank=4, dropout=0.1)  # the RNG state must resume too
    straight = lora_trainer(base_checkpoint, bpe, dropout_lora, log_file=str(tmp_path / "straight.jsonl"))
    straight.train(new_text, max_steps=8, save_path=tmp_path / "straight.safetensors")

    first = lora_trainer(base_checkpoint, bpe, dropout_lora, log_file=str(tmp_path / "resumed.jsonl"))
    interrupt_after(first, 4)
    assert first.train(new_text, max_steps=8, save_path=tmp_path / "resumed.safetensors").stop_reason == "interrupted"
    tensors, metadata = checkpoint.load_checkpoint(tmp_path / "resumed.safetensors")
    model_keys = {k for k in tensors if "/" not in k}
    assert model_keys == set(lora.adapter_tensors(first.model)) and "config" not in metadata
    assert {k.split("/")[1] for k in tensors if k.startswith("optimizer/")} == model_keys  # adapters' state only
    del first

    model, warning = lora.apply_adapter(GPT2.from_checkpoint(base_checkpoint), tensors, metadata, "resumed")
    assert warning is None
    second = Trainer.resume(model, bpe, tensors, metadata, adapter=metadata["adapter"], device="cpu",
                            log_file=str(tmp_path / "resumed.jsonl"), **QUIET)
    assert second.state.step == 4
    second.train(new_text, save_path=tmp_path / "resumed.safetensors")  # no length: the saved plan
    for a, b in zip(read_log(tmp_path / "straight.jsonl"), read_log(tmp_path / "resumed.jsonl")):
        assert (a["loss"], a.get("val_loss")) == (b["loss"], b.get("val_loss")), a["step"]
    for key, tensor in lora.adapter_tensors(straight.model).items():
        assert torch.equal(tensor, lora.adapter_tensors(second.model)[key]), key


def test_a_model_loader_refuses_an_adapter_file_with_what_it_is(vocab, base_checkpoint, new_text, tmp_path):
    trainer = lora_trainer(base_checkpoint, load_vocab(vocab))
    trainer.train(new_text, max_steps=1, save_path=tmp_path / "adapter.safetensors")
    with pytest.raises(UserError, match="is a LoRA adapter file, not a model.*--adapter"):
        GPT2.from_checkpoint(tmp_path / "adapter.safetensors")
    with pytest.raises(UserError, match="not a LoRA adapter file"):
        lora.read_adapter_metadata(checkpoint.load_checkpoint(base_checkpoint)[1], base_checkpoint)


def test_sigint_during_fine_tuning_saves_the_adapter(vocab, base_checkpoint, new_text, tmp_path):
    trainer = lora_trainer(base_checkpoint, load_vocab(vocab))
    interrupt_after(trainer, 2)
    result = trainer.train(new_text, max_steps=50, save_path=tmp_path / "a.safetensors")
    assert (result.stop_reason, result.steps, result.signal_number) == ("interrupted", 2, signal.SIGINT)
    assert checkpoint.load_checkpoint(tmp_path / "a.safetensors")[1]["training"]["step"] == 2
