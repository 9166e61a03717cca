"""distributed.py: `torchrun main.py train` on 2 CPU processes (gloo), with DDP or --fsdp, trains
exactly like one process with the doubled batch, and its checkpoints resume in one process.

Micro models (2 layers, width 32, context 32), fp32, dropout 0: the only differences left are the
order of float additions in the gradient all-reduce.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.train.distributed import DistributedContext, rank_slice
from gpt2_llm.tests.helpers import MAIN

pytestmark = pytest.mark.usefixtures("vocab")  # conftest's: corpus.parent / "vocab.txt", which train() passes
MICRO_RUN = ["--layers", "2", "--dim", "32", "--heads", "2", "--context", "32", "--dtype", "fp32", "--device", "cpu",
             "--lr", "3e-3", "--warmup", "1", "--eval-interval", "1000", "--eval-tokens", "256", "--no-progress"]
# AdamW in fp32 leaves only the all-reduce's float order to differ; Muon has its own test.
MICRO = [*MICRO_RUN, "--optimizer", "adamw"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(corpus, *args, processes=1, command="train", shape=MICRO):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), MAIN, command, corpus, corpus.parent / "vocab.txt",
               *args, *shape]
    result = subprocess.run(list(map(str, command)), cwd=corpus.parent, capture_output=True, text=True, timeout=300,
                            env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def weights(path):
    tensors, metadata = checkpoint.load_checkpoint(path)
    return {k: v for k, v in tensors.items() if not k.startswith(("optimizer/", "rng/"))}, metadata


def assert_same_weights(a, b):
    (wa, _), (wb, _) = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4, msg=key)


def test_rank_slice_splits_the_global_batch():
    batch = torch.arange(8)[:, None]
    parts = [rank_slice(batch, DistributedContext(rank, 2, rank)) for rank in range(2)]
    assert torch.equal(torch.cat(parts), batch)


STEPS = ["--max-steps", "3", "--grad-accum", "2"]
RESUME = ["--max-steps", "2", "--grad-accum", "2"]


@pytest.fixture(scope="module")
def single(corpus):
    """One process, batch 8: a checkpoint after 3 steps, and after 2 more in a resumed run."""
    start, resumed = corpus.parent / "single_start.pt", corpus.parent / "single_resumed.pt"
    train(corpus, *STEPS, "--batch-size", "8", "--save", start)
    train(corpus, start, *RESUME, "--batch-size", "8", "--save", resumed)
    return start, resumed


@pytest.mark.parametrize("strategy", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_processes_match_one_with_double_batch_and_resume_in_one(corpus, single, strategy):
    two = corpus.parent / f"two{len(strategy)}.pt"
    out_two = train(corpus, *STEPS, "--batch-size", "4", "--save", two, *strategy, processes=2)
    assert out_two.count("Done at step 3") == 1  # only rank 0 talks
    assert "x 2 processes" in out_two
    assert out_two.count("  sample: ") == 1  # under FSDP too, where every rank takes part in generating it
    assert_same_weights(single[0], two)
    _, metadata = weights(two)
    assert metadata["training"]["tokens_seen"] == 3 * 2 * 4 * 2 * 32  # steps x ranks x batch x accum x context
    # The distributed checkpoint resumes in a single process (batch 8 = 2 x 4) exactly like the single one.
    train(corpus, two, *RESUME, "--batch-size", "8")
    assert_same_weights(single[1], two)


@pytest.mark.parametrize("strategy", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_one_process_checkpoint_resumes_in_two(corpus, single, strategy):
    two = corpus.parent / f"resumed_in_two{len(strategy)}.pt"
    train(corpus, single[0], *RESUME, "--batch-size", "4", "--save", two, *strategy, processes=2)
    assert_same_weights(single[1], two)  # optimizer moments and batch generator carried over as well


def test_muon_in_two_processes_matches_one_and_resumes_in_one(corpus, tmp_path):
    """DDP + Muon: every rank orthogonalizes the same all-reduced gradients, so the ranks stay equal and match
    one process with the doubled batch. Newton-Schulz amplifies the all-reduce's float reordering, how much
    depends on the CPU (bf16 where it is native, fp32 elsewhere), so the tolerance is measured in the test: the
    noise floor is one process summing the same 16 rows in another order (4 micro-batches of 4 instead of 2 of
    8). Ranks training on their own halves differ by ~70% of what two more steps move the weights."""
    muon = [*MICRO_RUN, "--optimizer", "muon"]
    one, two, reordered = tmp_path / "one.pt", tmp_path / "two.pt", tmp_path / "reordered.pt"
    train(corpus, "--max-steps", "3", "--batch-size", "8", "--grad-accum", "2", "--save", one, shape=muon)
    train(corpus, "--max-steps", "3", "--batch-size", "4", "--grad-accum", "4", "--save", reordered, shape=muon)
    out = train(corpus, "--max-steps", "3", "--batch-size", "4", "--grad-accum", "2", "--save", two, processes=2,
                shape=muon)
    assert out.count("Done at step 3") == 1
    runs = (one, two, reordered)
    after_3 = {path: weights(path)[0] for path in runs}
    for path in runs:  # on in one process from each checkpoint (Muon's state included)
        train(corpus, path, "--max-steps", "2", "--batch-size", "8", "--grad-accum", "2", shape=MICRO_RUN)
    after_5 = {path: weights(path)[0] for path in runs}
    matrices = [key for key, value in after_3[one].items() if key.startswith("decoder.") and value.dim() == 2]
    assert matrices

    def worst(after, path):  # the largest difference from the one-process run, in units of two steps' move
        return max(((after[path][key] - after[one][key]).norm() / (after_5[one][key] - after_3[one][key]).norm())
                   .item() for key in matrices)

    for after in (after_3, after_5):
        noise_floor = worst(after, reordered)
        tolerance = 5 * noise_floor + 0.01
        assert tolerance < 0.35, f"noise floor {noise_floor:.3f}: too noisy to tell a missing all-reduce apart"
        assert worst(after, two) < tolerance, f"DDP {worst(after, two):.4f}, noise floor {noise_floor:.4f}"


def test_fsdp_without_torchrun_is_a_clear_error(corpus):
    result = subprocess.run([sys.executable, MAIN, "train", str(corpus), str(corpus.parent / "vocab.txt"), "--fsdp",
                             *MICRO], cwd=corpus.parent, capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 2 and "torchrun" in result.stderr


FINETUNE = MICRO[6:]  # finetune takes its shape from the base: no --layers/--dim/--heads


@pytest.mark.parametrize("strategy", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_lora_fine_tuning_in_two_processes_matches_one(corpus, single, strategy):
    """Frozen base weights beside trainable adapters in every block: DDP skips them, FSDP shards them."""
    one, two = corpus.parent / "lora_one.safetensors", corpus.parent / f"lora_two{len(strategy)}.safetensors"
    base = ["--base", single[0], *STEPS, "--lora-rank", "4"]
    if not one.exists():
        train(corpus, *base, "--batch-size", "8", "--save", one, command="finetune", shape=FINETUNE)
    out = train(corpus, *base, "--batch-size", "4", "--save", two, *strategy, processes=2, command="finetune",
                shape=FINETUNE)
    assert out.count("Done at step 3") == 1
    (adapters, metadata), (expected, _) = weights(two), weights(one)
    assert adapters.keys() == expected.keys() and all(".lora_" in key for key in adapters)
    assert "adapter" in metadata
    assert_same_weights(one, two)


def test_two_processes_train_from_a_folder_and_resume_in_one(corpus, tmp_path):
    """A folder corpus under torchrun: rank 0 learns the vocab and builds the token cache while the other
    waits, both train from the same shards exactly like one process, and the checkpoint resumes in one."""
    text = corpus.read_text(encoding="utf-8")
    books = tmp_path / "books"
    for i in range(3):
        (books / f"part{i}").mkdir(parents=True)
        (books / f"part{i}" / "text.txt").write_text(text[i * 20_000 : (i + 1) * 20_000], encoding="utf-8")
    two, one = tmp_path / "two.pt", tmp_path / "one.pt"
    out = train(books, *STEPS, "--batch-size", "4", "--vocab-size", "300", "--save", two, processes=2)
    assert out.count("Creating vocab") == 1 and out.count("Encoding 3 files") == 1
    caches = list(tmp_path.glob("books.*.tokens"))
    manifest = json.loads((caches[0] / "manifest.json").read_text()) if len(caches) == 1 else {}
    assert len({segment[0] for shard in manifest["shards"] for segment in shard["segments"]}) == 3
    assert sorted(p.name for p in caches[0].glob("*.bin")) == sorted(s["file"] for s in manifest["shards"])
    train(books, *STEPS, "--batch-size", "8", "--save", one)
    assert_same_weights(one, two)
    resumed = train(books, two, *RESUME, "--batch-size", "8")
    assert "Done at step 5" in resumed and "Encoding" not in resumed
