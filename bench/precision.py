"""Training precision on this CPU: the default choice beside every --dtype, in one run, on texts never trained on.

    python bench/precision.py [--max-time 100] [--texts a.txt b.txt] [--dtypes fp32 bf16]

Each configuration is `python main.py train TEXT VOCAB --preset quick --max-time T` in a fresh process (the vocab is
learned once per text first), run one after the other so they never share the cores. Reported: the precision the
default picked (and its reason line), optimizer steps done, final val bits per byte, and the default's steps as a
fraction of the best --dtype's (issue target: >= 0.97x, and no worse bits per byte). First, Muon's Newton-Schulz alone
at the quick preset's matrix shapes, in bf16 (torch.optim.Muon's choice) and in fp32, which the trainer uses where
bf16 is not native, and the loop-vs-batched table behind optim.BATCH_MAX_ELEMENTS in the dtype this CPU gets. Default texts: bench/quick_texts.py's python.txt and docs.txt (run it first).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MAIN = os.path.join(ROOT, "main.py")
QUICK_TEXTS = "/tmp/gpt2-llm-bench/quick"


def train(text, vocab, folder, dtype, max_time):
    """-> (steps, final val bits/byte, the precision line) of one fresh `train` process."""
    log = os.path.join(folder, f"log-{dtype or 'default'}.jsonl")
    command = [sys.executable, MAIN, "train", text, vocab, "--preset", "quick", "--max-time", str(max_time),
               "--log-file", log, "--save", os.path.join(folder, f"model-{dtype or 'default'}.pt"), "--no-progress"]
    if dtype:
        command += ["--dtype", dtype]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    precision = next((line for line in result.stdout.splitlines() if line.startswith("Precision ")), "?")
    records = [json.loads(line) for line in open(log, encoding="utf-8")]
    evaluated = [r for r in records if "val_bpb" in r]
    return max(r["step"] for r in records), evaluated[-1]["val_bpb"], precision


def newton_schulz_seconds(dtype, shapes, repeats=5):
    """Seconds of one optimizer step's Newton-Schulz over matrices of these shapes, as BatchedMuon runs them."""
    import torch

    from gpt2_llm.train.optim import orthogonalize

    stacks = [torch.randn(count, *shape) for shape, count in shapes.items()]
    coefficients, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7  # torch.optim.Muon's defaults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for stack in stacks:
            orthogonalize(stack, coefficients, steps, eps, dtype)
        best = min(best, time.perf_counter() - start)
    return best


def batching_table(dtype):
    """Newton-Schulz of k same-shape matrices: a loop of one-matrix calls vs one batched call, in dtype: the
    measurement behind optim.BATCH_MAX_ELEMENTS, on this CPU."""
    import torch

    from gpt2_llm.train.optim import BATCH_MAX_ELEMENTS, orthogonalize

    coefficients, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7
    print(f"\nNewton-Schulz in {str(dtype).removeprefix('torch.')}, ms (best of 3): loop vs batched; "
          f"BATCH_MAX_ELEMENTS = {BATCH_MAX_ELEMENTS} batches shapes up to that many elements")
    print(f"{'shape x k':<18}{'loop':>8}{'batched':>9}")
    for (rows, columns), count in (((128, 128), 4), ((256, 256), 12), ((384, 384), 12), ((480, 480), 12),
                                   ((256, 1024), 12), ((480, 1440), 12)):
        stack = torch.randn(count, rows, columns)
        times = {}
        for name, run in (("loop", lambda: [orthogonalize(m, coefficients, steps, eps, dtype) for m in stack]),
                          ("batched", lambda: orthogonalize(stack, coefficients, steps, eps, dtype))):
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            times[name] = best
        print(f"{rows} x {columns} x {count:<6}{times['loop'] * 1e3:>8.1f}{times['batched'] * 1e3:>9.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-time", type=float, default=100)
    parser.add_argument("--texts", nargs="+", default=[os.path.join(QUICK_TEXTS, name)
                                                        for name in ("python.txt", "docs.txt")])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--skip-training", action="store_true", help="only the Newton-Schulz measurements")
    args = parser.parse_args()
    import torch

    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    # The quick preset's decoder matrices (4 layers, width 128): c_attn 384x128, c_proj 128x128, c_fc 512x128,
    # mlp c_proj 128x512, four of each.
    shapes = {(384, 128): 4, (128, 128): 4, (512, 128): 4, (128, 512): 4}
    ns = {name: newton_schulz_seconds(dtype, shapes) for name, dtype in (("bf16", torch.bfloat16),
                                                                          ("fp32", torch.float32))}
    print(f"Muon Newton-Schulz per step, quick shapes: bf16 {ns['bf16'] * 1e3:.1f} ms, fp32 {ns['fp32'] * 1e3:.1f} ms "
          f"(bf16/fp32 {ns['bf16'] / ns['fp32']:.2f}x)", flush=True)
    from gpt2_llm.device import has_fast_bf16

    batching_table(torch.bfloat16 if has_fast_bf16(torch.device("cpu")) else torch.float32)
    for text in [] if args.skip_training else args.texts:
        with tempfile.TemporaryDirectory() as folder:
            vocab = os.path.join(folder, "vocab.txt")
            subprocess.run([sys.executable, MAIN, "tokenize", text, "-o", vocab], check=True, capture_output=True)
            rows = {dtype: train(text, vocab, folder, dtype, args.max_time) for dtype in [None, *args.dtypes]}
        default_steps, default_bpb, precision = rows[None]
        best = max(args.dtypes, key=lambda d: rows[d][0])
        print(f"\n{os.path.basename(text)}, --max-time {args.max_time:g}: default {precision}")
        print(f"{'dtype':<9}{'steps':>7}{'bits/byte':>11}")
        for dtype, (steps, bpb, _) in rows.items():
            print(f"{dtype or 'default':<9}{steps:>7}{bpb:>11.4f}")
        print(f"default / best --dtype ({best}): steps {default_steps / rows[best][0]:.3f}x (target >= 0.97x), "
              f"bits/byte {default_bpb - rows[best][1]:+.4f} (target <= 0)", flush=True)


if __name__ == "__main__":
    main()
