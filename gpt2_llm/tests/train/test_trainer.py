"""trainer.py: learning, exact resume, interruption, divergence, checkpoints, and the train/plot CLI.

The models here are micro GPTs (2 layers, width 32, context 32) so that the whole file runs in
well under a minute on two CPU cores. corpus, vocab and one_thread come from conftest.py.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bpe import BPE
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.errors import UserError
from gpt2_llm.gpt2 import GPT2
from gpt2_llm.model.config import GPT2Config
from gpt2_llm.tests.helpers import MAIN, QUIET, REPO, interrupt_after, read_log
from gpt2_llm.train.config import TrainingConfig
from gpt2_llm.train.trainer import Trainer
from gpt2_llm.tokenizer.vocab import load_vocab

pytestmark = pytest.mark.usefixtures("one_thread")
MICRO = dict(embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=32, batch_size=4, learning_rate=3e-3)


def micro_trainer(vocab, **options):
    return Trainer.create_trainer_from_vocab(vocab, **{**MICRO, **QUIET, "dtype": "fp32", **options})


def test_loss_falls(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab)
    data = trainer.load_data(corpus)
    loss_before, bpb_before = trainer.evaluate(data)
    result = trainer.train(corpus, max_steps=40, save_path=tmp_path / "m.pt")
    assert result.stop_reason == "finished" and result.steps == 40
    assert result.val_loss < loss_before - 1.0, (loss_before, result.val_loss)
    assert result.val_bpb < bpb_before - 1.0


def test_a_preset_gives_its_shape_and_settings_under_what_is_given(vocab):
    trainer = Trainer.from_preset(load_vocab(vocab), "tiny", {"num_layers": 1}, learning_rate=2e-3, **QUIET)
    assert (trainer.model.config.num_layers, trainer.model.config.embedding_dim) == (1, 64)  # given, preset
    assert (trainer.config.batch_size, trainer.config.learning_rate) == (8, 2e-3)


def test_a_config_passed_whole_trains_as_the_seeds_keyword_form(vocab):
    bpe = load_vocab(vocab)
    model = GPT2(GPT2Config(vocab_size=bpe.get_model_vocab_size(), embedding_dim=32, num_layers=2, num_heads=2,
                            max_seq_len=32))
    config = TrainingConfig(context_length=32, batch_size=4, learning_rate=3e-3, dtype="fp32", **QUIET)
    whole = Trainer(model, bpe, config)
    seed_form = Trainer(model=model, bpe=bpe, max_seq_len=32, batch_size=4, learning_rate=3e-3, dtype="fp32",
                        **QUIET)
    assert whole.config == seed_form.config
    with pytest.raises(UserError, match="from the config alone"):
        Trainer(model, bpe, config, batch_size=8)


@pytest.mark.parametrize("dtype, optimizer", [("fp32", "adamw"), ("bf16", "adamw"), ("fp32", "muon"), ("bf16", "muon")])
def test_interrupted_and_resumed_run_matches_a_straight_run(vocab, corpus, tmp_path, dtype, optimizer):
    # dropout: the RNG state must resume too. CPU: bit-exact there (CUDA's atomics-based kernels are not).
    # muon: the checkpoint holds Muon's momentum buffers beside AdamW's moments, and resumes with muon unasked.
    options = dict(dropout=0.1, eval_interval=3, dtype=dtype, device="cpu", optimizer=optimizer)
    straight = micro_trainer(vocab, log_file=str(tmp_path / "straight.jsonl"), **options)
    straight.train(corpus, max_steps=8, save_path=tmp_path / "straight.pt")

    first = micro_trainer(vocab, log_file=str(tmp_path / "resumed.jsonl"), **options)
    interrupt_after(first, 4)
    result = first.train(corpus, max_steps=8, save_path=tmp_path / "resumed.pt")
    assert (result.stop_reason, result.steps, result.signal_number) == ("interrupted", 4, signal.SIGINT)
    del first  # a new process would know only the checkpoint
    second = Trainer.from_checkpoint(tmp_path / "resumed.pt", load_vocab(vocab),
                                     log_file=str(tmp_path / "resumed.jsonl"), device="cpu", **QUIET)
    assert second.state.step == 4 and second.config.optimizer == optimizer
    assert second.train(corpus, save_path=tmp_path / "resumed.pt").steps == 8  # no length given: the saved plan

    straight_log, resumed_log = read_log(tmp_path / "straight.jsonl"), read_log(tmp_path / "resumed.jsonl")
    assert [r["step"] for r in resumed_log] == list(range(1, 9))
    for a, b in zip(straight_log, resumed_log):
        assert (a["loss"], a["lr"], a.get("val_loss")) == (b["loss"], b["lr"], b.get("val_loss")), a["step"]
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    second_params = dict(second.model.named_parameters())
    for name, p in straight.model.named_parameters():
        a, b = straight.optimizer.state[p], second.optimizer.state[second_params[name]]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_length_given_on_resume_replaces_the_interrupted_runs_plan(vocab, corpus, tmp_path, capsys):
    first = micro_trainer(vocab, eval_interval=1000, warmup_steps=1)
    interrupt_after(first, 3)
    assert first.train(corpus, max_steps=100_000, save_path=tmp_path / "m.pt").steps == 3
    resumed = Trainer.from_checkpoint(tmp_path / "m.pt", first.bpe, eval_interval=1, **QUIET)
    assert "eval_interval 1000 -> 1" in capsys.readouterr().out  # a setting given now wins too, and is said
    result = resumed.train(corpus, max_steps=2, save_path=tmp_path / "m.pt")
    assert (result.stop_reason, result.steps) == ("finished", 5)  # two more steps, not on towards 100,000
    out = capsys.readouterr().out
    assert "Resuming the interrupted run at step 3 for the length given now" in out and "steps 0..5" in out
    assert resumed.state.run_start_step == 0 and resumed.state.run_warmup_steps == first.state.run_warmup_steps
    assert resumed.learning_rate() == pytest.approx(0.1 * 3e-3)  # the cosine was fitted to the new end


def test_the_progress_bar_counts_whole_seconds_under_max_time(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab, progress=True)
    bars = []
    make_bar = trainer.progress_bar
    trainer.progress_bar = lambda: bars.append(make_bar()) or bars[-1]
    trainer.train(corpus, max_time=1.5, save_path=tmp_path / "m.pt")
    bar = bars[0]
    assert type(bar.n) is int and type(bar.total) is int and bar.total == 2, (bar.n, bar.total)
    assert 1 <= bar.n <= bar.total and f"{bar.n}/{bar.total}" in str(bar)


def test_kill_9_while_saving_leaves_a_temp_file_that_the_next_save_removes(vocab, corpus, tmp_path):
    path = tmp_path / "m.pt"
    micro_trainer(vocab).train(corpus, max_steps=2, save_path=path)
    good = path.read_bytes()
    dies_mid_write = f"""
import os, signal
from pathlib import Path
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.train.trainer import Trainer
from gpt2_llm.tokenizer.vocab import load_vocab

def write_half_then_die(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint.save_file = write_half_then_die
trainer = Trainer.from_checkpoint("m.pt", load_vocab({str(vocab)!r}), progress=False, sample_tokens=0)
trainer.train({str(corpus)!r}, max_steps=1, save_path="m.pt")
"""
    killed = subprocess.run([sys.executable, "-c", dies_mid_write], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[1] == "m.pt" and left[0].startswith(".m.pt.") and left[0].endswith(".tmp"), left
    assert path.read_bytes() == good  # the checkpoint is the last good one

    Trainer.from_checkpoint(path, load_vocab(vocab), **QUIET).train(corpus, max_steps=1, save_path=path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # the dead writer's temp file is gone


def test_checkpoint_layout(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab)
    trainer.train(corpus, max_steps=2, save_path=tmp_path / "m.pt")
    tensors, metadata = checkpoint.load_checkpoint(tmp_path / "m.pt")
    assert "wte.weight" in tensors and "lm_head.weight" not in tensors  # the tied head is stored once
    assert {"optimizer/wte.weight/exp_avg", "optimizer/wte.weight/exp_avg_sq", "optimizer/wte.weight/step",
            "rng/torch_cpu", "rng/batch"} <= set(tensors)
    assert metadata["training"]["step"] == 2 and metadata["training"]["tokens_seen"] == 2 * 4 * 32
    assert metadata["vocab"]["fingerprint"] == trainer.bpe.fingerprint()
    assert metadata["train_args"]["learning_rate"] == 3e-3 and "device" not in metadata["train_args"]
    assert [g["weight_decay"] for g in metadata["optimizer"]["param_groups"]] == [0.1, 0.0]
    assert set(metadata["rng"]) == {"numpy", "python"}
    # The plain model loader reads it too, ignoring the trainer's tensors.
    model = GPT2.from_checkpoint(tmp_path / "m.pt")
    assert torch.equal(model.wte.weight, trainer.model.wte.weight.cpu())


def test_a_failed_save_leaves_the_previous_checkpoint(vocab, corpus, tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    trainer = micro_trainer(vocab)
    trainer.train(corpus, max_steps=2, save_path=path)
    before = path.read_bytes()

    def write_half_then_die(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(checkpoint, "save_file", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "the temp file is cleaned up"
    assert Trainer.from_checkpoint(path, trainer.bpe, **QUIET).state.step == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(vocab, corpus, tmp_path):
    path = tmp_path / "m.pt"
    trainer = micro_trainer(vocab, eval_interval=3)
    loss_fn, calls = trainer.loss_fn, [0]

    def nan_from_step_5(x, y):
        calls[0] += 1
        loss = loss_fn(x, y)
        return loss * float("nan") if calls[0] >= 5 else loss

    trainer.loss_fn = nan_from_step_5
    kept = r"diverged: the loss became nan at step 5.*last good checkpoint \(step 3\) was kept"
    with pytest.raises(UserError, match=kept):
        trainer.train(corpus, max_steps=10, save_path=path)
    saved = Trainer.from_checkpoint(path, trainer.bpe, **QUIET)
    assert saved.state.step == 3
    assert all(p.isfinite().all() for p in saved.model.parameters())
    assert all(p.isfinite().all() for p in trainer.model.parameters()), "the NaN step was not applied"
    trainer.model.wte.weight.data[0, 0] = float("nan")
    with pytest.raises(UserError, match="refusing to save non-finite weights"):
        trainer.save_checkpoint(path)
    assert Trainer.from_checkpoint(path, trainer.bpe, **QUIET).state.step == 3


def test_muon_trains_and_fsdp_with_muon_is_refused(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab, optimizer="muon")
    loss_before, _ = trainer.evaluate(trainer.load_data(corpus))
    assert trainer.train(corpus, max_steps=40, save_path=tmp_path / "m.pt").val_loss < loss_before - 1.0
    with pytest.raises(UserError, match="muon.*--fsdp"):
        micro_trainer(vocab, optimizer="muon", fsdp=True)


def test_weights_alone_train_on_with_the_default_presets_settings(vocab, tmp_path):
    """A model.save file holds no training settings: training it on takes the default preset's batch, lr and
    optimizer together (not its lr with another optimizer), and flags given still win."""
    from gpt2_llm.train.config import DEFAULT_PRESET, PRESET_TABLE

    model = micro_trainer(vocab).model
    model.save(tmp_path / "weights.safetensors")
    trainer = Trainer.from_checkpoint(tmp_path / "weights.safetensors", load_vocab(vocab), **QUIET)
    preset = PRESET_TABLE[DEFAULT_PRESET].training
    settings = trainer.config.run_settings()
    assert {key: settings[key] for key in preset} == preset
    assert Trainer.from_checkpoint(tmp_path / "weights.safetensors", load_vocab(vocab), optimizer="adamw",
                                   **QUIET).config.optimizer == "adamw"


def test_fp16_scales_the_loss_and_resumes_the_scale(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab, dtype="fp16", device="cpu")
    assert trainer.scaler.is_enabled()
    trainer.train(corpus, max_steps=3, save_path=tmp_path / "m.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "m.pt", trainer.bpe, device="cpu", **QUIET)
    assert resumed.dtype == torch.float16 and resumed.scaler.state_dict() == trainer.scaler.state_dict()


def test_checkpoint_with_another_vocab_is_refused(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab)
    trainer.train(corpus, max_steps=1, save_path=tmp_path / "m.pt")
    other = BPE(str(tmp_path / "other.txt"))
    other.set_vocab_size(290)
    other.create_vocab(corpus.read_text(encoding="utf-8"), verbose=False)
    with pytest.raises(UserError, match=r"different vocabulary \(300 tokens.*\(290 tokens.*Pass the vocab file"):
        Trainer.from_checkpoint(tmp_path / "m.pt", other)


def test_vocab_larger_than_the_model_is_refused(vocab):
    bpe = load_vocab(vocab)
    with pytest.raises(UserError, match="300 tokens but the model has only 256"):
        Trainer(GPT2(256, 32, 1, 2, 32), bpe, 32, 4, 1e-3, **QUIET)


def test_context_longer_than_the_model_is_refused(vocab):
    bpe = load_vocab(vocab)
    with pytest.raises(UserError, match="context 64 is longer"):
        Trainer(GPT2(320, 32, 1, 2, 32), bpe, 64, 4, 1e-3, **QUIET)


def test_bits_per_byte_of_a_uniform_model(vocab, corpus):
    """A model with all-zero weights predicts uniformly: log2(V) bits per target token, exactly."""
    trainer = micro_trainer(vocab, eval_tokens=96)
    for p in trainer.model.parameters():
        torch.nn.init.zeros_(p)
    data = trainer.load_data(corpus)
    targets = [t for _, y in data.eval_batches(4, 96) for t in y.flatten().tolist()]
    text_bytes = len(trainer.bpe.decode(targets).encode("utf-8"))
    loss, bpb = trainer.evaluate(data)
    vocab_rows = trainer.model.config.vocab_size  # 320: padding rows get probability too
    assert len(targets) == 96 and loss == pytest.approx(math.log(vocab_rows), rel=1e-6)
    assert bpb == pytest.approx(math.log2(vocab_rows) * 96 / text_bytes, rel=1e-6)


def test_max_time_stops_and_finishes_the_schedule(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab, warmup_steps=2)
    start = time.perf_counter()
    result = trainer.train(corpus, max_steps=100_000, max_time=1.0, save_path=tmp_path / "m.pt")
    assert result.stop_reason == "max_time" and 2 < result.steps < 100_000
    assert time.perf_counter() - start < 30
    assert trainer.learning_rate() == pytest.approx(0.1 * 3e-3)  # the cosine reached its floor with the time


def test_new_run_after_a_finished_one(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab)
    trainer.train(corpus, max_steps=3, save_path=tmp_path / "m.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "m.pt", trainer.bpe, **QUIET)
    result = resumed.train(corpus, max_steps=2, save_path=tmp_path / "m.pt")
    assert result.steps == 5 and resumed.state.run_start_step == 3


def test_epoch_is_train_tokens_over_tokens_per_step(vocab, corpus, tmp_path):
    trainer = micro_trainer(vocab, batch_size=8, grad_accum=2)
    data = trainer.load_data(corpus)
    trainer.plan_run(data, num_epochs=0.5, max_steps=None, max_time=None)
    assert trainer.state.run_total_steps == round(0.5 * (len(data.train) // (8 * 2 * 32)))


def test_max_time_alone_runs_past_one_epoch(vocab, corpus, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(corpus.read_text(encoding="utf-8")[:4000], encoding="utf-8")
    trainer = micro_trainer(vocab, val_fraction=0.2)
    steps_per_epoch = len(trainer.load_data(short).train) // (4 * 32)
    result = trainer.train(short, num_epochs=None, max_time=1.0, save_path=tmp_path / "m.pt")
    assert result.stop_reason == "max_time" and result.steps > 2 * steps_per_epoch, (result.steps, steps_per_epoch)
    trainer.plan_run(trainer.load_data(short), num_epochs=None, max_steps=None, max_time=None)  # no limit: 1 epoch
    assert trainer.state.run_total_steps - trainer.state.run_start_step == steps_per_epoch


def test_one_preset_table_holds_each_shape_with_its_training_settings():
    from gpt2_llm.model.config import GPT2Config
    from gpt2_llm.train.config import PRESET_TABLE, PRESETS

    quick, tiny = PRESET_TABLE["quick"], PRESET_TABLE["tiny"]
    assert quick.shape == dict(num_layers=4, embedding_dim=128, num_heads=4, max_seq_len=128)  # published figures
    assert quick.training == dict(batch_size=8, learning_rate=6e-3, warmup_steps=60, eval_interval=250,
                                  eval_tokens=65536, optimizer="muon")
    assert PRESET_TABLE["small"].training == dict(batch_size=16, learning_rate=3e-3, warmup_steps=30,
                                                  eval_interval=60, optimizer="muon")  # published figures
    assert GPT2Config(vocab_size=300, **tiny.shape).num_layers < quick.shape["num_layers"]  # tiny is tinier
    assert PRESETS == {name: preset.shape for name, preset in PRESET_TABLE.items()}  # the API's view of the same table


def test_unknown_device_is_a_user_error(vocab):
    with pytest.raises(UserError, match="unknown device"):
        micro_trainer(vocab, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            micro_trainer(vocab, device="cuda")


# --- the CLI, in a subprocess as a user runs it ------------------------------------------------


def main_py(*args, cwd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, MAIN, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env, **kwargs)


def test_cli_train_resume_and_plot(corpus, tmp_path):
    (tmp_path / "corpus.txt").write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    run = main_py("train", "corpus.txt", "--preset", "tiny", "--max-steps", "3", "--log-file", "log.jsonl",
                  "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Creating vocab vocab.txt" in run.stdout and "Done at step 3" in run.stdout
    assert (tmp_path / "vocab.txt").exists() and (tmp_path / "gpt2_model.pt").exists()
    assert len(read_log(tmp_path / "log.jsonl")) == 3 and "val_bpb" in read_log(tmp_path / "log.jsonl")[-1]

    again = main_py("train", "corpus.txt", "vocab.txt", "gpt2_model.pt", "--max-steps", "1", "--no-progress",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Done at step 4" in again.stdout

    conflict = main_py("train", "corpus.txt", "vocab.txt", "gpt2_model.pt", "--dim", "128", cwd=tmp_path)
    assert conflict.returncode == 2 and "embedding_dim 128 (checkpoint has 64)" in conflict.stderr
    assert conflict.stderr.count("\n") == 1, "one line, no traceback"

    plot = main_py("plot", "log.jsonl", "--output", "loss.png", cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"

    # Two runs on one chart, at equal wall-clock: e.g. --optimizer muon against adamw.
    (tmp_path / "other.jsonl").write_text("".join(
        json.dumps(dict(step=s, loss=5.0 - s / 10, elapsed=2.0 * s, **({"val_loss": 4.0, "val_bpb": 2.5} if s == 3 else {})))
        + "\n" for s in (1, 2, 3)))
    both = main_py("plot", "log.jsonl", "other.jsonl", "--x", "time", "-o", "both.png", cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert "log.jsonl: 3 records, other.jsonl: 3 records" in both.stdout
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_signal_saves_a_resumable_checkpoint(corpus, vocab, tmp_path, signal_number, exit_code):
    args = [MAIN, "train", corpus, vocab, "--preset", "tiny", "--layers", "2", "--dim", "32", "--heads", "2",
            "--context", "32", "--max-steps", "100000", "--log-file", "log.jsonl", "--save", "m.pt", "--no-progress"]
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal_number)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == exit_code, err
    assert "Interrupted at step" in out and "Traceback" not in err
    resumed = Trainer.from_checkpoint(tmp_path / "m.pt", load_vocab(vocab), **QUIET)
    step = resumed.state.step
    assert step == len(read_log(log)) and resumed.state.run_total_steps == 100_000
    if signal_number == signal.SIGTERM:  # the case: --max-steps on the resume command wins
        again = main_py("train", corpus, vocab, "m.pt", "--max-steps", "2", "--no-progress", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert f"Resuming the interrupted run at step {step} for the length given now" in again.stdout
        assert f"Done at step {step + 2}" in again.stdout


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    from gpt2_llm.commands import plot_command

    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    args = type("Args", (), {"log": [str(tmp_path / "log.jsonl")], "output": str(tmp_path / "x.png"), "x": "step"})
    with pytest.raises(UserError, match="pip install matplotlib"):
        plot_command.run(args)


def test_grad_checkpoint_trains_the_same(vocab, corpus):
    """--grad-checkpoint trades compute for memory; the losses and weights stay the same."""
    trainers = [micro_trainer(vocab, grad_checkpoint=flag) for flag in (False, True)]
    assert trainers[1].model.decoder.gradient_checkpointing
    data = trainers[0].load_data(corpus)
    losses = [[t.train_step(data, 1e-3)[0] for _ in range(2)] for t in trainers]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(trainers[0].model.parameters(), trainers[1].model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
