"""Plain helpers the tests share (fixtures are conftest.py's).

    REPO, MAIN                        the repository and its main.py
    make_small_model(seed=0, **kw)    a GPT2 of the SMALL shape in eval mode
    wide_logits_model(...)            the same with its matrices scaled up: greedy choices far from ties
    greedy_without_cache(model, x, n) the reference decoder: the whole sequence through the model each step
    ONE_THREAD_ENV, free_port, LiveServer   subprocesses: one thread each; `serve` on a free port
    QUIET, read_log(path), interrupt_after(trainer, n)   Trainer runs: no output; the metrics log; a Ctrl-C
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
MAIN = str(REPO / "main.py")
SMALL = dict(vocab_size=101, embedding_dim=64, num_layers=2, num_heads=4, max_seq_len=32)


def main_in_process(argv, cwd, monkeypatch, capfd) -> tuple[int, str, str]:
    """main.main(argv) in this process, from cwd, on a machine without a GPU -> (exit code, stdout, stderr): the
    CLI's own entry point without paying a Python start and torch's import (~4 s) per call."""
    import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    capfd.readouterr()
    try:
        code = main.main(argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    out, err = capfd.readouterr()
    return code, out, err


def make_small_model(seed=0, **overrides):
    """A GPT2 of the SMALL shape (any field overridable), weights drawn from seed, in eval mode."""
    from gpt2_llm.gpt2 import GPT2

    torch.manual_seed(seed)
    return GPT2(**{**SMALL, **overrides}).eval()


def wide_logits_model(seed=0, scale=4.0, **overrides):
    """make_small_model with every matrix multiplied by scale: wide logits, so that float rounding never flips
    a greedy choice between two near-tied tokens."""
    model = make_small_model(seed, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


@torch.no_grad()
def greedy_without_cache(model, x, n):
    """x (B, T) continued by n greedy tokens, each from a full forward over the last max_seq_len tokens:
    no KV cache, no prepacked weights, nothing of generation.py."""
    for _ in range(n):
        next_id = model(x[:, -model.config.max_seq_len :])[:, -1].argmax(-1)
        x = torch.cat((x, next_id[:, None]), dim=1)
    return x


# Subprocesses running micro models: one thread each (see one_thread), so that on a busy 2-core machine they do not
# wait on each other's descheduled OpenMP threads (a 128-wide layer then takes milliseconds instead of microseconds).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`python main.py serve ...` in a subprocess on a free port of 127.0.0.1; .url once it answers /health."""

    def __init__(self, *args, env=ONE_THREAD_ENV, main=MAIN):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would block a chatty server
        self.process = subprocess.Popen([sys.executable, main, "serve", *map(str, args), "--port", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)

    def wait_ready(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"serve did not answer on {self.url} within {timeout} s")

    def output(self) -> str:
        """What the server has printed and logged so far."""
        self.log.seek(0)
        return self.log.read()

    def rss_bytes(self) -> int:
        """The server process's resident memory now (Linux)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
            return json.load(response)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# --- Trainer runs ---
QUIET = dict(progress=False, sample_tokens=0)  # no progress bar, no samples


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def interrupt_after(trainer, num_steps):
    """Make the trainer's step send SIGINT to this process after num_steps steps, like a user's Ctrl-C."""
    step = trainer.train_step
    count = [0]

    def step_then_interrupt(*args):
        result = step(*args)
        count[0] += 1
        if count[0] == num_steps:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    trainer.train_step = step_then_interrupt
