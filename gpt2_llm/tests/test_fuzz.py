"""Fuzzing the parsers a user's files and arguments reach: each input is refused with a UserError or gives
a correct result (never another exception, never garbage accepted in silence).

    vocab files         mutations of a valid vocab (lines deleted, duplicated, swapped; bytes inserted):
                        refused, or the very same vocabulary
    BPE.encode/decode   arbitrary Unicode, lone surrogates included, comes back unchanged
    parse_ids_json      arbitrary text and JSON: refused, or ids in range
    load_checkpoint     mutations of a valid checkpoint's bytes: refused, or a model holding the file's
                        tensors under the original names and shapes; odd config values: refused, or kept as given
"""
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bpe import BPE, EOT
from gpt2_llm.commands.tokenizer_commands import parse_ids_json
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.checkpoints import loading
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.errors import UserError
from gpt2_llm.gpt2 import GPT2
from gpt2_llm.tokenizer.vocab import load_vocab
from gpt2_llm.tests.helpers import REPO

TEXT = (REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")[:4000]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BPE_TRAINED = BPE("unused")
BPE_TRAINED.set_vocab_size(280)
BPE_TRAINED.create_vocab(TEXT, verbose=False)
VOCAB_BYTES = BPE_TRAINED._serialize().encode("utf-8")

torch.manual_seed(0)
with tempfile.TemporaryDirectory() as folder:
    _path = os.path.join(folder, "model")
    GPT2(320, embedding_dim=8, num_layers=1, num_heads=2, max_seq_len=8).save(_path, metadata={"step": 1})
    CHECKPOINT_BYTES = Path(_path).read_bytes()
    CHECKPOINT_SHAPES = {key: (t.shape, t.dtype) for key, t in checkpoint.load_checkpoint(_path)[0].items()}


def load_bytes(data: bytes, load):
    """Write data to a temp file and call load(path) on it."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "file")
        Path(path).write_bytes(data)
        return load(path)


@st.composite
def mutated_lines(draw, data: bytes):
    """data's lines with some deleted, duplicated or swapped: b"a\\nb\\nc" -> b"a\\nc\\nc" """
    lines = data.split(b"\n")
    for _ in range(draw(st.integers(1, 3))):
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            break
    return b"\n".join(lines)


@st.composite
def mutated_bytes(draw, data: bytes):
    """data with a few bytes inserted, overwritten or cut away (or the end cut off)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "overwrite", "delete", "truncate"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "insert":
            data[at:at] = chunk
        elif action == "overwrite":
            data[at : at + len(chunk)] = chunk
        elif action == "delete":
            del data[at : at + len(chunk)]
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(st.one_of(mutated_lines(VOCAB_BYTES), mutated_bytes(VOCAB_BYTES), st.binary(max_size=300)))
def test_vocab_loader_refuses_or_loads_the_same_vocab(data):
    try:
        bpe = load_bytes(data, load_vocab)
    except UserError:
        return
    assert bpe.fingerprint() == BPE_TRAINED.fingerprint()  # same tokens, same merges, same ids


# Lone surrogates too: encode works on their "surrogatepass" bytes and decode gives them back.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)


@FUZZ
@given(ANY_TEXT)
@example("\ud800 lone \udfff and a pair \ud83d\ude00, " + EOT + " and \x00\r\n")
def test_encode_decode_round_trip_any_unicode(text):
    ids = BPE_TRAINED.encode(text)
    assert all(0 <= i < BPE_TRAINED.eot_id for i in ids)
    assert BPE_TRAINED.decode(ids) == text
    assert BPE_TRAINED.decode(BPE_TRAINED.encode(text, allowed_special="all")) == text


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(st.text(max_size=50), JSON.map(json.dumps)))
@example("[1, 2")
@example("[-1]")
@example("[1e400]")
@example("[NaN, Infinity]")
def test_parse_ids_json_raises_only_user_error(text):
    try:
        ids = parse_ids_json(text, BPE_TRAINED.vocab_size)
    except UserError:
        return
    assert all(type(i) is int and 0 <= i < BPE_TRAINED.vocab_size for i in ids)


@pytest.mark.parametrize("text", ["[" + "9" * 5000 + "]", "[" * 50000 + "]" * 50000])
def test_parse_ids_json_huge_or_deep_json_raises_user_error(text):
    with pytest.raises(UserError):
        parse_ids_json(text, BPE_TRAINED.vocab_size)


@FUZZ
@given(mutated_bytes(CHECKPOINT_BYTES))
def test_load_checkpoint_refuses_or_loads_the_files_tensors(data):
    try:
        tensors, metadata = load_bytes(data, checkpoint.load_checkpoint)
        model = loading.model_from_tensors(GPT2, tensors, metadata, "fuzzed")
    except UserError:
        return
    assert {key: (t.shape, t.dtype) for key, t in tensors.items()} == CHECKPOINT_SHAPES
    for key, weight in checkpoint.model_tensors(model).items():
        assert torch.equal(weight, tensors[key]), key


CONFIG = GPT2(320, embedding_dim=8, num_layers=1, num_heads=2, max_seq_len=8).config.to_dict()


@FUZZ
@given(st.sampled_from(sorted(CONFIG)), JSON)
def test_config_from_metadata_refuses_or_keeps_the_value(field, value):
    try:
        config = checkpoint.config_from_metadata({"config": {**CONFIG, field: value}}, "fuzzed")
    except UserError:
        return
    accepted = getattr(config, field)
    assert accepted == value and (type(accepted) is bool) == (type(value) is bool), (field, value)
    json.dumps(config.to_dict(), allow_nan=False)  # no NaN or infinity got in
    assert GPT2Config.from_dict(config.to_dict()) == config
    assert config.head_dim * config.num_heads == config.embedding_dim
