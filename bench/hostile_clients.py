"""What hostile or broken clients cost `serve` below the API: this checkout's server beside an earlier one's.

    python bench/hostile_clients.py [--before PATH] [--wait 90]

PATH is a checkout of an earlier commit (git worktree add /tmp/before COMMIT); both serve the same small random
model with GPT-2's vocab (`serve --pretrained DIR --max-batch 4 --max-queue 8`, default limits) on 127.0.0.1, at
the same time. Against each, over raw sockets, at once:
  64 MB header     GET /health with a 64 MB header value: the answer, and the server's resident memory before and
                   2 s after
  lying length     POST /v1/completions whose Content-Length promises 100 bytes more than are sent
  slow body        a 118-byte body sent a byte a second
  slow headers     headers sent a byte a second
  silent           a connection that sends nothing
  100 incomplete   100 connections, each with headers and half a body: how many are still open after --wait s
  600 at once      600 connections opened together, each starting a request: how many are answered 503
For each: what came back (status, or "closed", or "nothing" by --wait s) and when.
"""
import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from generate import gpt2_tokenizer_files  # noqa: E402  (bench/generate.py)

from gpt2_llm import GPT2  # noqa: E402
from gpt2_llm.tests.helpers import MAIN, LiveServer  # noqa: E402

BODY = b'{"prompt": "ROMEO:", "max_tokens": 4}'


def post_head(extra: int) -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(BODY) + extra))


def outcome(sock, start: float, wait: float) -> str:
    """What the server did with a connection by `wait` seconds after start: its status line, or a close."""
    sock.settimeout(max(0.01, start + wait - time.monotonic()))
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return f"nothing by {wait:g} s"
    except OSError:
        return f"reset at {time.monotonic() - start:.1f} s"
    what = data.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")[2] or "closed"
    return f"{what} at {time.monotonic() - start:.1f} s"


def dribble(sock, data: bytes, stop: threading.Event) -> None:
    for byte in data:
        if stop.wait(1.0):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def big_header(server, wait) -> str:
    before = server.rss_bytes()
    sock = connect(server.port)
    start = time.monotonic()
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (64 << 20) + b"\r\n\r\n"
    sender = threading.Thread(target=lambda: send_quietly(sock, request), daemon=True)
    sender.start()
    result = outcome(sock, start, wait)
    sock.close()
    time.sleep(2)
    return f"{result}; memory {before / 2**20:.0f} -> {server.rss_bytes() / 2**20:.0f} MB"


def send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def slow(server, wait, first: bytes, trickle: bytes, stop) -> str:
    sock = connect(server.port)
    start = time.monotonic()
    sock.sendall(first)
    threading.Thread(target=dribble, args=(sock, trickle, stop), daemon=True).start()
    result = outcome(sock, start, wait)
    sock.close()
    return result


def still_open(sockets, start, wait) -> int:
    """How many of sockets the server has neither answered nor closed by start + wait."""
    time.sleep(max(0.0, start + wait - time.monotonic()))
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            sock.recv(1)  # an answer, or b"": closed
        except BlockingIOError:  # nothing to read yet: still open
            count += 1
        except OSError:  # reset: closed
            pass
    return count


def incomplete(server, wait) -> str:
    start = time.monotonic()
    sockets = [connect(server.port) for _ in range(100)]
    for sock in sockets:
        sock.sendall(post_head(0) + BODY[: len(BODY) // 2])
    left = still_open(sockets, start, wait)
    for sock in sockets:
        sock.close()
    return f"{left} of 100 still open after {wait:g} s"


def at_once(server, wait) -> str:
    sockets = [connect(server.port) for _ in range(600)]
    start = time.monotonic()
    for sock in sockets:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    answers = [outcome(sock, start, 3.0) for sock in sockets]
    refused = sum(a.startswith("503") for a in answers)
    for sock in sockets:
        sock.close()
    return f"{refused} of 600 answered 503 within 3 s"


def run_cases(server, wait) -> dict:
    stop = threading.Event()
    cases = {
        "lying length": lambda: slow(server, wait, post_head(100) + BODY, b"", stop),
        "slow body": lambda: slow(server, wait, post_head(80), BODY + b" " * 80, stop),  # ~2 min at 1 byte/s
        "slow headers": lambda: slow(server, wait, b"GET /health HTTP/1.1\r\n", b"X-Slow: " + b"a" * 500, stop),
        "silent": lambda: slow(server, wait, b"", b"", stop),
        "100 incomplete": lambda: incomplete(server, wait),
    }
    results = {"64 MB header": big_header(server, wait)}
    threads = [threading.Thread(target=lambda n=n, f=f: results.__setitem__(n, f())) for n, f in cases.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    time.sleep(1)
    results["600 at once"] = at_once(server, wait)
    results["/health afterwards"] = str(server.health()["status"])
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="PATH", help="a checkout of an earlier commit, served beside this one")
    parser.add_argument("--wait", type=float, default=90.0, help="seconds to wait for an answer (default 90)")
    args = parser.parse_args()
    from gpt2_llm.hardware import machine_header

    print(machine_header(), flush=True)
    encoder_json, vocab_bpe = gpt2_tokenizer_files()
    workdir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    servers = {}
    try:
        torch.manual_seed(0)
        GPT2(vocab_size=50257, embedding_dim=256, num_layers=4, num_heads=4, max_seq_len=512).save_pretrained(workdir)
        shutil.copyfile(encoder_json, workdir / "vocab.json")
        shutil.copyfile(vocab_bpe, workdir / "merges.txt")
        trees = {"now": MAIN} | ({"before": str(Path(args.before) / "main.py")} if args.before else {})
        servers = {name: LiveServer("--pretrained", workdir, "--max-batch", 4, "--max-queue", 8, main=main_py,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
                   for name, main_py in trees.items()}
        for server in servers.values():
            server.wait_ready(timeout=120)
        results = {}
        threads = [threading.Thread(target=lambda n=n, s=s: results.__setitem__(n, run_cases(s, args.wait)))
                   for n, s in servers.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    names = list(results)
    print("\n| case | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for case in results[names[0]]:
        print(f"| {case} | " + " | ".join(results[name][case] for name in names) + " |")


if __name__ == "__main__":
    main()
