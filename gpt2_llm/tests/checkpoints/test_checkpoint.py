"""checkpoint.py: the safetensors format, atomic writes, and every way a wrong file is refused.

small_model (conftest.py) is a GPT2 with vocab 101, width 64, 2 layers, 4 heads, context 32.
"""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from gpt2_llm import GPT2
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.checkpoints import loading
from gpt2_llm.errors import UserError


def test_save_checkpoint_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    tensors = {"a": torch.arange(6.0).view(2, 3), "optimizer/m": torch.ones(4, dtype=torch.bfloat16)}
    metadata = {"config": {"x": 1}, "step": 12, "lr": 3e-4, "note": "hi", "nested": {"list": [1, 2.5, None]}}
    checkpoint.save_checkpoint(path, tensors, metadata)
    loaded, meta = checkpoint.load_checkpoint(path)
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert meta == {"format": "gpt2-llm", "version": "1", **metadata}


def test_metadata_is_json_in_the_safetensors_header(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save_checkpoint(path, {"a": torch.zeros(1)}, {"config": {"vocab_size": 5}, "step": 3})
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert header == {"format": "gpt2-llm", "version": "1", "config": '{"vocab_size": 5}', "step": "3"}


def test_reserved_metadata_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save_checkpoint(tmp_path / "c", {"a": torch.zeros(1)}, {"format": "mine"})


@pytest.mark.parametrize("use_rope", [False, True])
def test_model_round_trip_keeps_weights_config_and_tying(tmp_path, small_model, use_rope):
    model = small_model(use_rope=use_rope)
    path = tmp_path / "model.safetensors"
    model.save(path, metadata={"step": 7})
    loaded = GPT2.from_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.wte.weight
    x = torch.randint(0, 101, (2, 9))
    torch.testing.assert_close(loaded.eval()(x), model(x), atol=0, rtol=0)

    other = small_model(seed=1, use_rope=use_rope)
    assert other.load(path)["step"] == 7
    assert other.lm_head.weight is other.wte.weight
    torch.testing.assert_close(other(x), model(x), atol=0, rtol=0)


def test_tied_weight_is_stored_once_without_prefix(tmp_path, small_model):
    path = tmp_path / "model.safetensors"
    small_model().save(path)
    tensors, _ = checkpoint.load_checkpoint(path)
    assert "wte.weight" in tensors and "lm_head.weight" not in tensors
    assert "decoder.blocks.0.attn.c_attn.weight" in tensors


def test_trainer_tensors_under_prefixes_are_ignored_by_model_load(tmp_path, small_model):
    model = small_model()
    path = tmp_path / "train.safetensors"
    tensors = {**checkpoint.model_tensors(model), "optimizer/0.exp_avg": torch.ones(3), "rng/cpu": torch.ones(2)}
    checkpoint.save_checkpoint(path, tensors, {"config": model.config.to_dict(), "step": 1})
    loaded = GPT2.from_checkpoint(path)
    assert torch.equal(loaded.wte.weight, model.wte.weight)


def test_atomic_save_keeps_old_file_when_replace_fails(tmp_path, monkeypatch, small_model):
    path = tmp_path / "model.safetensors"
    small_model(seed=0).save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        small_model(seed=1).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temp file left behind


def test_atomic_save_cleans_up_when_serialisation_fails(tmp_path):
    path = tmp_path / "c.safetensors"
    shared = torch.zeros(4)
    with pytest.raises(Exception):
        checkpoint.save_checkpoint(path, {"a": shared, "b": shared}, {})  # safetensors refuses shared memory
    assert os.listdir(tmp_path) == []


class _Marker:
    """Unpickling this creates a file: proof that a pickle would have run code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickled_files_are_refused_without_unpickling(tmp_path, writer, small_model):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = {"wte.weight": torch.zeros(2), "evil": _Marker(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    for load in (checkpoint.load_checkpoint, GPT2.from_checkpoint, small_model().load):
        with pytest.raises(UserError, match="looks like a pickled PyTorch file; gpt2-llm refuses to unpickle"):
            load(path)
    assert not marker.exists()


def test_shape_mismatch_names_tensor_shapes_and_reason(tmp_path, small_model):
    path = tmp_path / "model.safetensors"
    small_model(vocab_size=1524).save(path)
    with pytest.raises(UserError) as error:
        small_model(vocab_size=1600).load(path)
    message = str(error.value)
    assert "wte.weight" in message and "(1524, 64)" in message and "(1600, 64)" in message
    why = "vocab_size 1524 in checkpoint vs 1600 in model: the checkpoint was trained with a different vocabulary"
    assert why in message
    assert "from_checkpoint" in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"num_layers": 3}, "num_layers 3 in checkpoint vs 2 in model"),
        ({"num_heads": 2}, "num_heads 2 in checkpoint vs 4 in model"),  # same shapes, different math
        ({"use_rope": True}, "use_rope True in checkpoint vs False in model"),
        ({"max_seq_len": 8}, "max_seq_len 8 in checkpoint vs 32 in model"),
    ],
)
def test_architecture_mismatches_are_user_errors(tmp_path, overrides, expected, small_model):
    path = tmp_path / "model.safetensors"
    small_model(**overrides).save(path)
    with pytest.raises(UserError, match=expected):
        small_model().load(path)


def test_rope_checkpoint_loads_at_another_context_length(tmp_path, small_model):
    """Rotary tables are computed, not stored: a longer model computes the same on the positions both have."""
    path = tmp_path / "model.safetensors"
    short = small_model(use_rope=True, max_seq_len=8)
    short.save(path)
    longer = small_model(seed=1, use_rope=True, max_seq_len=32)
    longer.load(path)
    x = torch.randint(0, 101, (2, 8))
    torch.testing.assert_close(longer(x), short(x))
    assert longer(torch.randint(0, 101, (1, 32))).shape == (1, 32, 101)  # and it uses its whole context


def test_load_model_reads_a_checkpoint_or_a_hugging_face_directory(tmp_path, small_model):
    model = small_model()
    model.save(tmp_path / "m.pt", metadata={"step": 3})
    model.save_pretrained(tmp_path / "hf")
    x = torch.randint(0, 101, (1, 9))
    for source, recorded in ((tmp_path / "m.pt", {"step": 3}), (tmp_path / "hf", {})):
        loaded, metadata = loading.load_model(source, GPT2)
        assert loaded.config == model.config and metadata.items() >= recorded.items()
        torch.testing.assert_close(loaded.eval()(x), model(x))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json: pass a gpt2-llm checkpoint file or a Hugging Face"):
        loading.load_model(tmp_path / "empty", GPT2)


def dead_pid() -> int:
    """The id of a process that has exited (and so can write no more)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_the_next_save_removes_temp_files_that_killed_writers_left(tmp_path, small_model):
    path = tmp_path / "m.pt"
    small_model().save(path)
    stale = tmp_path / f".m.pt.{dead_pid()}.k9x2.tmp"  # what a kill -9 during a save leaves
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".m.pt.{os.getpid()}.live.tmp"  # a save in progress: not ours to remove
    other = tmp_path / f".other.pt.{dead_pid()}.k9x2.tmp"  # another file's: its own next save removes it
    live.write_bytes(b"")
    other.write_bytes(b"")
    small_model(seed=1).save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["m.pt", live.name, other.name])
    assert torch.equal(GPT2.from_checkpoint(path).wte.weight, small_model(seed=1).wte.weight)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"hello, I am not a checkpoint at all"), "truncated or corrupt"),
    ],
)
def test_unreadable_files_give_one_line_user_errors(tmp_path, make, message):
    path = tmp_path / "model.safetensors"
    make(path)
    with pytest.raises(UserError, match=message) as error:
        checkpoint.load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_truncated_checkpoint(tmp_path, small_model):
    path = tmp_path / "model.safetensors"
    small_model().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        GPT2.from_checkpoint(path)


def test_directory_of_a_hugging_face_model_gets_a_hint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="from_pretrained"):
        checkpoint.load_checkpoint(tmp_path)


def test_safetensors_file_from_another_project(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match="not a gpt2-llm checkpoint"):
        checkpoint.load_checkpoint(path)
