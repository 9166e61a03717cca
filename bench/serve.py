"""`serve` under load: batched decoding vs one client vs `predict`, and time to first token, side by side.

    python bench/serve.py [--repeats 3] [--new-tokens 128] [--clients 8]

GPT-2 small shape (12x768, vocab 50257), random weights written once as a Hugging Face directory,
served fp32 by `python main.py serve --pretrained DIR --max-batch 8` on 127.0.0.1. Greedy
(temperature 0), the same 16-token prompt as bench/generate.py. Per round:
  predict      `python main.py predict PROMPT N --pretrained DIR --temperature 0 --timing`: its own
               tokens/s (prefill included; model loading excluded)
  1 client     one streaming request for N tokens: N / (last token's arrival - request sent)
  8 clients    8 streaming requests at once (threads): all tokens / (last arrival - first request sent)
  TTFT         a streaming request with max_tokens 1 on an idle server: first token's arrival - request sent,
               against `prefill + 1 step`: in this process, the same weights through generation.py's
               TokenWindow, the time to run the prompt and then one decode step
Targets (issue 15): 8 clients >= 4x one client's tokens/s; one client within 10% of predict; TTFT <=
prefill + one step + 20 ms. Rounds repeat (--repeats) and every figure is reported as median with
its spread (min-max): the machine is shared, and a disturbed run shows as a wide spread.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from generate import PROMPT, SHAPE, cli_tokens_per_s, gpt2_tokenizer_files  # noqa: E402  (bench/generate.py)

from bpe import BPE  # noqa: E402
from gpt2_llm import GPT2  # noqa: E402
from gpt2_llm.infer.generation import TokenWindow  # noqa: E402
from gpt2_llm.tests.helpers import LiveServer  # noqa: E402  (the tests' server runner)

PROMPTS = [PROMPT, "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, filled with",
           "It was the best of times, it was the worst of times, it was the age of wisdom, it was",
           "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money",
           "All happy families are alike; every unhappy family is unhappy in its own way. Everything",
           "It is a truth universally acknowledged, that a single man in possession of a good fortune",
           "Many years later, as he faced the firing squad, Colonel Aureliano Buendia was to remember",
           "The sky above the port was the color of television, tuned to a dead channel. It was not"]


MILLISECONDS = ("TTFT", "prefill+1 step")  # figures in seconds, printed in ms; the others are tokens/s


def stream(url: str, prompt: str, max_tokens: int, arrivals: list) -> None:
    """One streaming completion; appends (arrival time, tokens in the chunk) per chunk to arrivals."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "logprobs": None}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter())


def single_client(url, new_tokens) -> float:
    arrivals = []
    start = time.perf_counter()
    stream(url, PROMPT, new_tokens, arrivals)
    assert len(arrivals) == new_tokens, f"{len(arrivals)} chunks for {new_tokens} tokens (an early end of text?)"
    return new_tokens / (arrivals[-1] - start)


def many_clients(url, new_tokens, clients) -> float:
    arrivals = [[] for _ in range(clients)]
    threads = [threading.Thread(target=stream, args=(url, PROMPTS[i % len(PROMPTS)], new_tokens, arrivals[i]))
               for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(len(a) for a in arrivals)
    assert total == clients * new_tokens, f"{total} chunks for {clients} x {new_tokens} tokens"
    return total / (max(a[-1] for a in arrivals) - start)


def time_to_first_token(url) -> float:
    arrivals = []
    start = time.perf_counter()
    stream(url, PROMPT, 1, arrivals)
    return arrivals[0] - start


def prefill_and_one_step(model, prompt_ids) -> float:
    """Seconds to run the prompt and then one decode step, in process: what the first token may cost at most."""
    window = TokenWindow(model, prompt_ids, 2)
    start = time.perf_counter()
    logits = window.prefill()
    window.append(logits.argmax(-1))
    return time.perf_counter() - start


def summary(values, unit="", scale=1.0) -> str:
    values = [v * scale for v in values]
    return f"{statistics.median(values):8.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per request (default 128)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header  # every figure names the machine it was measured on

    print(machine_header(), flush=True)
    threads = os.cpu_count()
    encoder_json, vocab_bpe = gpt2_tokenizer_files()
    bpe = BPE.from_gpt2(str(encoder_json), str(vocab_bpe))
    prompt_ids = torch.tensor([bpe.encode(PROMPT)])
    torch.manual_seed(0)
    model = GPT2(**SHAPE).eval()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    try:
        model.save_pretrained(workdir)
        shutil.copyfile(encoder_json, workdir / "vocab.json")
        shutil.copyfile(vocab_bpe, workdir / "merges.txt")
        server = LiveServer("--pretrained", workdir, "--max-batch", args.clients,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})  # as predict gets them
        server.wait_ready(timeout=300)
        model = model.for_inference()  # as the server holds it: fp32, prepacked
        print(f"GPT-2 small shape, fp32, {threads} threads, prompt {prompt_ids.size(1)} tokens, "
              f"{args.new_tokens} new tokens per request, {args.repeats} rounds", flush=True)
        figures = {name: [] for name in ("predict", "1 client", "8 clients", "TTFT", "prefill+1 step")}
        single_client(server.url, 8)  # warm-up: the server's first request
        for round_ in range(args.repeats):
            figures["predict"].append(cli_tokens_per_s(workdir, args.new_tokens, threads, [])[0])
            figures["1 client"].append(single_client(server.url, args.new_tokens))
            figures["8 clients"].append(many_clients(server.url, args.new_tokens, args.clients))
            for _ in range(3):
                figures["TTFT"].append(time_to_first_token(server.url))
                figures["prefill+1 step"].append(prefill_and_one_step(model, prompt_ids))
            latest = {k: v[-1] * (1000 if k in MILLISECONDS else 1) for k, v in figures.items()}
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in latest.items()), flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n| figure | median (min-max) |\n|---|---|")
    for name in ("predict", "1 client", "8 clients"):
        print(f"| {name} tokens/s | {summary(figures[name])} |")
    for name in MILLISECONDS:
        print(f"| {name} ms | {summary(figures[name], scale=1000)} |")
    med = {k: statistics.median(v) for k, v in figures.items()}
    ratios = {
        f"{args.clients} clients / 1 client (target >= 4)": med["8 clients"] / med["1 client"],
        "1 client / predict (target >= 0.9)": med["1 client"] / med["predict"],
        "TTFT - (prefill + 1 step), ms (target <= 20)": 1000 * (med["TTFT"] - med["prefill+1 step"]),
    }
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(json.dumps({"medians": med, "ratios": ratios}))


if __name__ == "__main__":
    main()
