"""Training throughput and MFU: our Trainer's step and a plain model-API step vs transformers.GPT2LMHeadModel.

    python bench/train.py [--preset small] [--batch-size 4] [--steps 8] [--compile] [--device cuda]

One step = forward + loss + backward + grad clip + fused AdamW step (betas 0.9/0.95, weight decay
0.1 on matrices), in fp32 and in bf16 autocast. Three contenders with the same weights:
  trainer  `Trainer.train_step`, exactly what `train` runs;
  API      the loop a library user writes: `with torch.autocast(...): loss = model.loss(x, y)`,
           backward, clip, AdamW; no Trainer, so whatever makes it fast must live in the model;
  HF       GPT2LMHeadModel (through our converter), the same optimizer settings and its default sdpa
           attention, its loss from labels=... as HF training code does.
Steps alternate so that noise from other processes hits all alike; medians are reported.

MFU (model FLOPs utilization) = achieved FLOP/s / peak FLOP/s, where
    achieved = tokens/s * (6 * N + 12 * layers * dim * context)   (nanoGPT / PaLM appendix B)
    N        = parameters excluding the position table (the tied head's matmul is counted once)
    peak     = a large square matmul in the same dtype, measured in this run on this device.
"matmuls alone" times every matmul of one step (each Linear's forward and its two backward products, the
attention's batched ones, the head's three) in isolation at the step's shapes: the step time if everything
else (GELU, softmax, LayerNorm, casts, the optimizer) were free, and so the MFU this step could reach at most.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bpe import BPE  # noqa: E402
from gpt2_llm.train.config import PRESET_TABLE  # noqa: E402
from gpt2_llm.data.dataset import TokenDataset  # noqa: E402
from gpt2_llm.device import autocast, pick_device  # noqa: E402
from gpt2_llm.gpt2 import GPT2  # noqa: E402
from gpt2_llm.train.optim import make_adamw  # noqa: E402
from gpt2_llm.train.trainer import Trainer  # noqa: E402

VOCAB_SIZE = 8192
TARGET_SPEEDUP = {"fp32": 0.0, "bf16": 1.35}  # issue 14's targets: trainer / HF (none set for fp32)
TARGET_MFU = {"fp32": 0.90, "bf16": 0.80}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, seconds=2.0) -> float:
    """FLOP/s of the best of several large square matmuls: the ceiling MFU is measured against."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def flops_per_token(model: GPT2) -> float:
    cfg = model.config
    n = model.num_parameters() - (model.wpe.weight.numel() if model.wpe is not None else 0)
    return 6 * n + 12 * cfg.num_layers * cfg.embedding_dim * cfg.max_seq_len


def matmuls_alone(shape, batch_size, device, dtype, repeats=5) -> float:
    """Seconds that one training step's matmuls take on their own (see the module docstring)."""
    C, L, T, nh = shape["embedding_dim"], shape["num_layers"], shape["max_seq_len"], shape["num_heads"]
    N, hs = batch_size * T, C // nh

    def best_of(fn):
        fn()
        sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        return min(times)

    def linear(n_in, n_out, rows=N):  # forward, grad input, grad weight
        x, w, g = (torch.randn(*s, device=device, dtype=dtype) for s in ((rows, n_in), (n_out, n_in), (rows, n_out)))
        return best_of(lambda: (x @ w.T, g @ w, g.T @ x))

    q, scores = (torch.randn(batch_size * nh, T, d, device=device, dtype=dtype) for d in (hs, T))
    attention = best_of(lambda: (q @ q.mT, scores @ q, scores.mT @ q, scores @ q, q @ q.mT, scores.mT @ q))
    block = linear(C, 3 * C) + linear(C, C) + linear(C, 4 * C) + linear(4 * C, C) + attention
    return L * block + linear(C, VOCAB_SIZE)


def build(shape, batch_size, device, dtype_name, compile_models):
    """Our model inside a Trainer, and HF's GPT2LMHeadModel with the same weights and optimizer."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT2(VOCAB_SIZE, **shape, dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")
    hf.config.resid_pdrop = hf.config.embd_pdrop = hf.config.attn_pdrop = 0.0
    api_model = GPT2(VOCAB_SIZE, **shape, dropout=0.0)
    api_model.load_state_dict(ours.state_dict())
    trainer = Trainer(ours, BPE(), shape["max_seq_len"], batch_size, 3e-4, device=str(device), dtype=dtype_name,
                      compile=compile_models, progress=False)
    hf = hf.to(device).train()
    hf_optimizer = make_adamw(hf, 3e-4, 0.1, (0.9, 0.95), device.type)
    hf_forward = torch.compile(hf) if compile_models else hf
    return trainer, hf, hf_forward, hf_optimizer, api_model.to(device).train()


def loop_step_fn(model, loss_of_batch, optimizer, data, trainer):
    """One step of a hand-written training loop (what the Trainer's step does, without the Trainer):
    loss_of_batch(x, y) under autocast, backward, clip at 1.0, optimizer step."""

    def step():
        x, y = trainer.to_device(*data.random_batch(trainer.config.batch_size, trainer.batch_generator))
        with autocast(trainer.device, trainer.dtype):
            loss = loss_of_batch(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def api_step_fn(model, data, trainer):
    """The loop a library user writes with the model alone: model.loss, a stock fused AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=trainer.device.type in ("cpu", "cuda"))
    return loop_step_fn(model, model.loss, optimizer, data, trainer)


def hf_step_fn(hf, hf_forward, optimizer, data, trainer):
    """The same step written the way HF training loops write it: the loss from labels=x (HF shifts them)."""
    return loop_step_fn(hf, lambda x, y: hf_forward(input_ids=x, labels=x).loss, optimizer, data, trainer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESET_TABLE), help="model shape (default small)")
    parser.add_argument("--batch-size", type=int, help="default: the preset's training batch")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model and dtype (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; more with --compile)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--device", help="cpu, cuda, mps (default: the best present)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)

    device = pick_device(args.device)
    shape = dict(PRESET_TABLE[args.preset].shape)
    batch_size = args.batch_size or PRESET_TABLE[args.preset].training["batch_size"]
    T = shape["max_seq_len"]
    tokens_per_step = batch_size * T
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Training step throughput, torch {torch.__version__}, {device.type} ({name}){threads}")
    print(f"preset {args.preset}: {shape['num_layers']} layers, {shape['embedding_dim']} dim, {shape['num_heads']} "
          f"heads, context {T}, batch {batch_size}, vocab {VOCAB_SIZE}, dropout 0"
          f"{', compiled' if args.compile else ''}; median of {args.steps} steps after {args.warmup} warm-up\n")

    rows = []
    tokens = np.random.default_rng(0).integers(0, VOCAB_SIZE, 200_000 + T).astype(np.uint16)
    data = TokenDataset(tokens, T, val_fraction=0.0)
    for dtype_name in args.dtypes.split(","):
        trainer, hf, hf_forward, hf_optimizer, api_model = build(shape, batch_size, device, dtype_name, args.compile)
        peak = matmul_peak(device, DTYPES[dtype_name])
        steps = {"trainer": lambda: trainer.train_step(data, 3e-4)[0],  # returns after a device sync (.tolist())
                 "API": api_step_fn(api_model, data, trainer),
                 "HF": hf_step_fn(hf, hf_forward, hf_optimizer, data, trainer)}
        for _ in range(args.warmup):
            for step in steps.values():
                step()
        times, losses = {name: [] for name in steps}, {}
        for _ in range(args.steps):  # alternate, so a noisy neighbour slows all alike
            for name, step in steps.items():
                sync(device)
                start = time.perf_counter()
                losses[name] = step()
                times[name].append(time.perf_counter() - start)
        tps = {name: tokens_per_step / statistics.median(t) for name, t in times.items()}
        fpt = flops_per_token(trainer.model)
        floor = matmuls_alone(shape, batch_size, device, DTYPES[dtype_name])
        mfu = {name: t * fpt / peak for name, t in tps.items()}
        mfu_ceiling = tokens_per_step * fpt / floor / peak  # matmuls alone, at this step's shapes
        rows.append((dtype_name, tps, mfu, peak, losses, floor, mfu_ceiling))
        del trainer, hf, hf_forward, hf_optimizer, api_model, steps

    print(f"{'dtype':<6} {'trainer tok/s':>13} {'API tok/s':>10} {'HF tok/s':>9} {'trainer/HF':>10} {'API/trainer':>11} "
          f"{'MFU trainer':>11} {'MFU API':>8} {'MFU HF':>7} {'peak TFLOP/s':>13}   last loss trainer / API / HF")
    verdicts = []
    for dtype_name, tps, mfu, peak, losses, _, _ in rows:
        ratio = tps["trainer"] / tps["HF"]
        speedup_target = f" (target >= {TARGET_SPEEDUP[dtype_name]}x)" if TARGET_SPEEDUP[dtype_name] else ""
        verdicts.append(f"{dtype_name}: trainer/HF {ratio:.2f}x{speedup_target}, MFU "
                        f"{mfu['trainer']:.1%} (target >= {TARGET_MFU[dtype_name]:.0%}): "
                        + ("met" if ratio >= TARGET_SPEEDUP[dtype_name] and mfu["trainer"] >= TARGET_MFU[dtype_name]
                           else "NOT met"))
        print(f"{dtype_name:<6} {tps['trainer']:>13,.0f} {tps['API']:>10,.0f} {tps['HF']:>9,.0f} {ratio:>9.2f}x "
              f"{tps['API'] / tps['trainer']:>10.2f}x {mfu['trainer']:>10.1%} {mfu['API']:>8.1%} {mfu['HF']:>7.1%} "
              f"{peak / 1e12:>13.3f}   {losses['trainer']:.4f} / {losses['API']:.4f} / {losses['HF']:.4f}")
    print()
    for dtype_name, tps, _, _, _, floor, ceiling in rows:
        step = tokens_per_step / tps["trainer"]
        print(f"{dtype_name}: matmuls alone {floor * 1e3:.0f} ms of the trainer's {step * 1e3:.0f} ms step "
              f"({floor / step:.0%}); everything else {(step - floor) * 1e3:.0f} ms; the MFU with everything else "
              f"free: {ceiling:.1%}")
    print("\ntargets (issue 14): " + "; ".join(verdicts) + "; API/trainer ~1.00x (issue 12)")


if __name__ == "__main__":
    main()
