"""A machine's first `tokenize` (numba's kernel cache empty) against a warm one and Hugging Face `tokenizers`.

    python bench/first_run.py [--texts FILE ...] [--trials 3]

Per corpus (default: the 5 MB Shakespeare and ~5 MB of the Python standard library's source, whole files in sorted
path order), each a fresh process, its wall time:
  cold     `python main.py tokenize FILE` with NUMBA_CACHE_DIR a new empty folder: a machine's first run. It learns
           in Python while a background process compiles the kernels (gpt2_llm/tokenizer/compiled.py);
  warm     the same command once that background compile has filled the cache;
  HF       read FILE and train Hugging Face's ByteLevel BPE to the same vocab size (its default threading): the
           process's wall time less its encode (timed in it, for the API row);
  API      BPE().create_vocab(text), then encode(text), cold and warm, against HF's train and encode.
Also how long after the cold run started the background compile was done. The cold trials' background compiles are
stopped, but the last one's, so none runs during the next measurement. Targets: cold at most 1.0x HF, or 2x with a
message on stderr (the message is checked). min / median / max over --trials.
"""
import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from gpt2_llm.files import read_text_file  # noqa: E402
from gpt2_llm.hardware import machine_header  # noqa: E402
from gpt2_llm.tokenizer.compiled import _LOCK  # noqa: E402
from quick_texts import gather  # noqa: E402  (bench/quick_texts.py)

STDLIB_CORPUS_BYTES = 5_000_000

API_CODE = """import json, sys, time; sys.path.insert(0, sys.argv[1]); import bpe
text = bpe.read_text_file(sys.argv[2]); start = time.perf_counter()
b = bpe.BPE(); b.set_vocab_size(int(sys.argv[3])); b.create_vocab(text, verbose=False); trained = time.perf_counter()
ids = b.encode(text); print(json.dumps([trained - start, time.perf_counter() - trained, len(ids)]))"""

HF_CODE = """import json, sys, time; from tokenizers import Tokenizer, models, pre_tokenizers, trainers
text = open(sys.argv[2], encoding="utf-8", newline="").read(); start = time.perf_counter()
tokenizer = Tokenizer(models.BPE()); tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=int(sys.argv[3]) - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
tokenizer.train_from_iterator([text], trainer); trained = time.perf_counter()
ids = tokenizer.encode(text).ids; print(json.dumps([trained - start, time.perf_counter() - trained, len(ids)]))"""


def write_stdlib_corpus(path, size=STDLIB_CORPUS_BYTES):
    """The standard library's .py files (sorted paths, UTF-8 ones, each whole) until ~size bytes."""
    paths = glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(gather(paths, size))
    return f"Python {sys.version_info[0]}.{sys.version_info[1]} standard library source, ~{size / 1e6:.0f} MB"


def run(command, cache_dir):
    """(wall seconds, stdout, stderr) of command in a fresh process with numba's cache in cache_dir."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stdout, result.stderr


def background_compile(cache_dir, wait):
    """Wait for the compile a cold run started in cache_dir (wait=True), or stop it."""
    for path in glob.glob(os.path.join(cache_dir, "*", _LOCK)):
        with open(path) as lock:
            if wait:
                fcntl.flock(lock, fcntl.LOCK_EX)
            else:
                try:
                    os.kill(int(lock.read()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


def measure(path, trials, scratch):
    """All the timings of one corpus, as {name: [seconds per trial]}, plus the vocab size and the cold messages."""
    times, messages, vocab_size = {}, set(), None
    tokenize = [sys.executable, os.path.join(ROOT, "main.py"), "tokenize", path, "-o", os.path.join(scratch, "v.txt")]
    warm_cache = None
    for trial in range(trials):
        cache = tempfile.mkdtemp(dir=scratch)
        start = time.perf_counter()
        seconds, out, err = run(tokenize, cache)
        times.setdefault("cold", []).append(seconds)
        messages.add(err.strip())
        vocab_size = int(re.search(r"Learned (\d+) tokens", out)[1])
        last = trial == trials - 1
        background_compile(cache, wait=last)
        if last:
            times["compiled in the background after"] = [time.perf_counter() - start]
            warm_cache = cache
    for _ in range(trials):
        times.setdefault("warm", []).append(run(tokenize, warm_cache)[0])
        seconds, out, _ = run([sys.executable, "-c", HF_CODE, ROOT, path, str(vocab_size)], warm_cache)
        hf_train, hf_encode, _ = json.loads(out)
        times.setdefault("HF", []).append(seconds - hf_encode)  # what tokenize does: start, read, train
        times.setdefault("HF train", []).append(hf_train)
        times.setdefault("HF encode", []).append(hf_encode)
        for temperature in ("cold", "warm"):
            cache = tempfile.mkdtemp(dir=scratch) if temperature == "cold" else warm_cache
            seconds, out, err = run([sys.executable, "-c", API_CODE, ROOT, path, str(vocab_size)], cache)
            if temperature == "cold":
                background_compile(cache, wait=False)
                messages.add(err.strip())
            train, encode, _ = json.loads(out)
            times.setdefault(f"API create_vocab, {temperature}", []).append(train)
            times.setdefault(f"API encode, {temperature}", []).append(encode)
    return times, vocab_size, messages


def spread(values):
    if len(values) == 1:
        return f"{values[0]:7.2f}"
    return f"{min(values):6.2f} /{statistics.median(values):6.2f} /{max(values):6.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", nargs="*", help="UTF-8 text files (default: Shakespeare and stdlib source)")
    parser.add_argument("--trials", type=int, default=3, help="fresh processes per measurement")
    args = parser.parse_args()
    print(machine_header())
    scratch = tempfile.mkdtemp(prefix="first_run_")
    try:
        texts = args.texts
        descriptions = {}
        if not texts:
            shakespeare = os.path.join(ROOT, "..", "shared", "data", "shakespeare.txt")
            stdlib = os.path.join(scratch, "stdlib_source.txt")
            descriptions[stdlib] = write_stdlib_corpus(stdlib)
            texts = [shakespeare if os.path.exists(shakespeare) else os.path.join(ROOT, "data", "shakespeare.txt"),
                     stdlib]
        print(f"{args.trials} fresh-process trials each; seconds, min / median / max\n")
        failed = []
        for path in texts:
            times, vocab_size, messages = measure(path, args.trials, scratch)
            size = len(read_text_file(path).encode("utf-8")) / 1e6
            name = descriptions.get(path, os.path.normpath(path))
            print(f"{name} ({size:.2f} MB), vocab {vocab_size} (recommended by tokenize)")
            hf = statistics.median(times["HF"])
            for what, values in times.items():
                ratio = f"{statistics.median(values) / hf:5.2f}x HF" if what in ("cold", "warm") else ""
                print(f"  {what:34}{spread(values):>24}  {ratio}")
            hf_api = statistics.median(times["HF train"]) + statistics.median(times["HF encode"])
            for temperature in ("cold", "warm"):
                api = (statistics.median(times[f"API create_vocab, {temperature}"])
                       + statistics.median(times[f"API encode, {temperature}"]))
                print(f"  API create_vocab + encode, {temperature}: {api / hf_api:.2f}x HF's train + encode")
            cold_ratio = statistics.median(times["cold"]) / hf
            said = " | ".join(sorted(messages))
            verdict = cold_ratio <= 1.0 or (cold_ratio <= 2.0 and "once per machine" in said)
            failed += [] if verdict else [name]
            print(f"  cold tokenize: {cold_ratio:.2f}x HF (target <= 1.0x, or <= 2x with a message): "
                  f"{'PASS' if verdict else 'FAIL'}")
            print(f"  stderr of the cold runs: {said or '(nothing)'}\n")
        return 1 if failed else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
