"""`export` of a GPT-2-small-shaped checkpoint, against the peers that write the same files, in one run.

    python bench/export.py [--repeats 3] [--llama-dir DIR]

GPT-2 small shape (12x768, GPT-2's vocab of 50257), random weights from seed 0, saved as our checkpoint (model.save,
500 MB) with GPT-2's tokenizer as a vocab file, and as a Hugging Face directory for the peers. Each line is a fresh
process, timed whole (Python start and imports included: what a user waits for) with its peak resident memory:
  ours hf            python main.py export model.pt vocab.txt --output DIR
  transformers       GPT2LMHeadModel.from_pretrained(hf) + save_pretrained(DIR) (the model only, no tokenizer)
  ours gguf f32/q8_0 python main.py export model.pt vocab.txt --output model.gguf [--outtype q8_0]
  llama.cpp f32/q8_0 convert_hf_to_gguf.py hf --outtype f32|q8_0 (llama.cpp's own converter, from the
                     llama-cpp-python sdist's vendored source; bench/llamacpp.py builds and caches it)
Figures are the median (min-max) over --repeats runs, alternating ours and the peer; ratios are ours / peer.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from generate import SHAPE, gpt2_tokenizer_files  # noqa: E402  (bench/generate.py)
from llamacpp import default_llama_dir, llama_source  # noqa: E402  (bench/llamacpp.py)

from bpe import BPE  # noqa: E402
from gpt2_llm import GPT2  # noqa: E402
from gpt2_llm.tests.helpers import MAIN  # noqa: E402

TRANSFORMERS_SAVE = ("import sys, transformers; "
                     "transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])")


# Runs a command and reports its wall time and peak resident memory (the only child: RUSAGE_CHILDREN is its own).
MEASURE = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
           "result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
           "seconds = time.perf_counter() - start; sys.stderr.write(result.stderr); "
           "print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(result.returncode)")


def timed(command: list[str], env=None) -> tuple[float, float]:
    """(seconds, peak resident MB) of one fresh process running command (which must succeed)."""
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    seconds, peak_kb = result.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(peak_kb) / 1024


def summary(values) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-dir", type=Path, default=default_llama_dir())
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header

    print(machine_header(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        encoder_json, vocab_bpe = gpt2_tokenizer_files()
        bpe = BPE.from_gpt2(str(encoder_json), str(vocab_bpe), vocab_path=str(work / "vocab.txt"))
        bpe.save()
        torch.manual_seed(0)
        model = GPT2(**SHAPE)
        model.save(work / "model.pt", {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
        model.save_pretrained(work / "hf")
        shutil.copyfile(encoder_json, work / "hf" / "vocab.json")
        shutil.copyfile(vocab_bpe, work / "hf" / "merges.txt")
        del model
        source = llama_source(args.llama_dir)
        converter = source / "convert_hf_to_gguf.py"
        llama_env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
        ours = [sys.executable, MAIN, "export", str(work / "model.pt"), str(work / "vocab.txt"), "--output"]
        pairs = {  # what: (ours, the peer's command or None, the peer's name)
            "hf": (ours + [str(work / "out-hf")],
                   [sys.executable, "-c", TRANSFORMERS_SAVE, str(work / "hf"), str(work / "peer-hf")],
                   "transformers save_pretrained", None),
            "gguf f32": (ours + [str(work / "ours-f32.gguf")],
                         [sys.executable, str(converter), str(work / "hf"), "--outtype", "f32", "--outfile",
                          str(work / "peer-f32.gguf")], "convert_hf_to_gguf.py", llama_env),
            "gguf q8_0": (ours + [str(work / "ours-q8_0.gguf"), "--outtype", "q8_0"],
                          [sys.executable, str(converter), str(work / "hf"), "--outtype", "q8_0", "--outfile",
                           str(work / "peer-q8_0.gguf")], "convert_hf_to_gguf.py", llama_env),
        }
        print(f"GPT-2 small shape, checkpoint {os.path.getsize(work / 'model.pt') / 1e6:.0f} MB; {args.repeats} "
              f"runs each, alternating; llama.cpp converter: {converter}", flush=True)
        print("\n| output | ours s | peer | peer s | ours / peer | ours peak MB | peer peak MB |\n|---|---|---|---|---|---|---|")
        for what, (our_command, peer_command, peer_name, peer_env) in pairs.items():
            runs = {"ours": [], "peer": []}
            for _ in range(args.repeats):
                runs["ours"].append(timed(our_command))
                if converter.is_file() or what == "hf":
                    runs["peer"].append(timed(peer_command, peer_env))
            ours_s, peer_s = [s for s, _ in runs["ours"]], [s for s, _ in runs["peer"]]
            our_peak = max(m for _, m in runs["ours"])
            peer_peak = max((m for _, m in runs["peer"]), default=float("nan"))
            ratio = statistics.median(ours_s) / statistics.median(peer_s) if peer_s else float("nan")
            print(f"| {what} | {summary(ours_s)} | {peer_name} | {summary(peer_s) if peer_s else 'not built'} | "
                  f"{ratio:.2f} | {our_peak:.0f} | {peer_peak:.0f} |", flush=True)
        sizes = {path.name: path.stat().st_size / 1e6 for path in sorted(work.glob("*.gguf"))}
        print("\nGGUF sizes (MB): " + ", ".join(f"{name} {size:.0f}" for name, size in sizes.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
