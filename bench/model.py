"""Training-step throughput of our GPT2 vs transformers.GPT2LMHeadModel, same shape, same weights.

    python bench/model.py [--steps 7] [--warmup 2]

One step = forward + loss + backward (no optimizer step, identical for both). Config: 12 layers,
480 dim, 12 heads, context 256, batch 4, vocabulary 8192, dropout 0; fp32 and bf16 autocast.
HF runs its default (sdpa) attention and computes its loss from labels=...; ours calls
model.loss(x, y) with targets shifted by the data loader, as the trainer does. Steps of the two
models alternate so that machine noise hits both alike; the median step time is reported.
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt2_llm import GPT2  # noqa: E402

SHAPE = dict(vocab_size=8192, embedding_dim=480, num_layers=12, num_heads=12, max_seq_len=256)
BATCH = 4
TARGET = 1.15


def build_models():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT2(**SHAPE, dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)  # HF gets exactly our weights, through our own converter
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")
    hf.config.resid_pdrop = hf.config.embd_pdrop = hf.config.attn_pdrop = 0.0
    return ours.train(), hf.train()


def make_steps(ours, hf, x, y, autocast):
    def ours_step():
        with autocast():
            loss = ours.loss(x, y)
        loss.backward()
        ours.zero_grad(set_to_none=True)
        return loss.item()

    def hf_step():
        with autocast():
            loss = hf(input_ids=x, labels=x).loss  # HF shifts labels itself
        loss.backward()
        hf.zero_grad(set_to_none=True)
        return loss.item()

    return ours_step, hf_step


def timed(step):
    start = time.perf_counter()
    loss = step()
    return time.perf_counter() - start, loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per model and precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count())
    ours, hf = build_models()
    T = SHAPE["max_seq_len"]
    data = torch.randint(0, SHAPE["vocab_size"], (BATCH, T + 1), generator=torch.Generator().manual_seed(1))
    x, y = data[:, :-1], data[:, 1:]
    y = y.clone()
    y[:, -1] = -100  # HF's labels=x gives no target for the last position: same work, same loss

    print(f"GPT-2 training step (forward + loss + backward), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"config: {SHAPE['num_layers']} layers, {SHAPE['embedding_dim']} dim, {SHAPE['num_heads']} heads, "
        f"context {T}, batch {BATCH}, vocab {SHAPE['vocab_size']}, dropout 0; "
        f"median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    precisions = {
        "fp32": contextlib.nullcontext,
        "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    rows = []
    for name, autocast in precisions.items():
        ours_step, hf_step = make_steps(ours, hf, x, y, autocast)
        for _ in range(args.warmup):
            ours_step(), hf_step()
        ours_times, hf_times = [], []
        for _ in range(args.steps):
            seconds, ours_loss = timed(ours_step)
            ours_times.append(seconds)
            seconds, hf_loss = timed(hf_step)
            hf_times.append(seconds)
        tokens = BATCH * T
        ours_tps = tokens / statistics.median(ours_times)
        hf_tps = tokens / statistics.median(hf_times)
        rows.append((name, ours_tps, hf_tps, ours_loss, hf_loss))

    print(f"{'precision':<14} {'ours tok/s':>11} {'HF tok/s':>10} {'ours/HF':>8} {'target':>7}  met   loss ours / HF")
    all_met = True
    for name, ours_tps, hf_tps, ours_loss, hf_loss in rows:
        ratio = ours_tps / hf_tps
        met = ratio >= TARGET
        all_met &= met
        print(
            f"{name:<14} {ours_tps:>11.0f} {hf_tps:>10.0f} {ratio:>7.2f}x {TARGET:>6.2f}x  "
            f"{'yes' if met else 'NO ':<4}  {ours_loss:.4f} / {hf_loss:.4f}"
        )
    print("\nall targets met" if all_met else "\nsome targets missed")


if __name__ == "__main__":
    main()
