"""Peak memory of training steps at GPT-2 small's shape: the fused head + loss (model.loss) against the
plain path it replaced (the full logits, then cross_entropy), each in a fresh process.

    python bench/train_memory.py                  # context 1024, batch 4, fp32, 2 AdamW steps per path
    python bench/train_memory.py --optimizer muon

Peak RSS (ru_maxrss) of the process: weights, gradients, optimizer state and the step's activations.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PATHS = ("plain", "fused")


def one_path(path: str, context: int, batch: int, steps: int, optimizer_name: str) -> dict:
    import torch

    from gpt2_llm.train.config import PRESETS
    from gpt2_llm.gpt2 import GPT2
    from gpt2_llm.model.gpt2 import next_token_loss
    from gpt2_llm.train.optim import make_optimizer

    torch.manual_seed(0)
    model = GPT2(vocab_size=50257, **{**PRESETS["gpt2"], "max_seq_len": context}).train()
    optimizer = make_optimizer(optimizer_name, model, 1e-4)
    x = torch.randint(0, 50257, (batch, context))
    y = torch.randint(0, 50257, (batch, context))
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model.loss(x, y) if path == "fused" else next_token_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "peak_mb": round(peak_mb), "loss": loss.item(), "step_s": round(min(seconds), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_path(args.child, args.context, args.batch, args.steps, args.optimizer)))
        return
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    results = {}
    for path in PATHS:
        out = subprocess.run([sys.executable, __file__, "--child", path, "--context", str(args.context),
                              "--batch", str(args.batch), "--steps", str(args.steps), "--optimizer", args.optimizer],
                             check=True, capture_output=True, text=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])
        print(results[path], flush=True)
    plain, fused = results["plain"], results["fused"]
    print(f"GPT-2 small, context {args.context}, batch {args.batch}, fp32, {args.optimizer}: peak "
          f"{fused['peak_mb']} MB fused vs {plain['peak_mb']} MB plain = {fused['peak_mb'] / plain['peak_mb']:.2f}x; "
          f"step {fused['step_s']} s vs {plain['step_s']} s = {fused['step_s'] / plain['step_s']:.2f}x")


if __name__ == "__main__":
    main()
