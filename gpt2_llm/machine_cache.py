"""Choices measured once per machine and remembered: which kernel is faster here is a property of the CPU, and
measuring it costs a fraction of a second the first time and nothing after.

    winner = remember("fp32_decode_kernel", race)   # race() -> a JSON-able value, run once per machine

The file is `machine.json` in $GPT2_LLM_CACHE, else $XDG_CACHE_HOME/gpt2-llm, else ~/.cache/gpt2-llm. Its
entries are keyed by the CPU (model and ISA flags) and the torch and numba versions, so a new machine, a VM
moved to another host or an upgrade measures again. Where the folder cannot be written the value is measured
once per process instead.
"""
import importlib.metadata
import json
import os

import torch

from gpt2_llm.files import atomic_write

_measured_here: dict = {}  # this process's values: the fallback when the file cannot be written


def cache_folder() -> str:
    folder = os.environ.get("GPT2_LLM_CACHE")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "gpt2-llm")
    return folder


def machine_key() -> str:
    """'AMD EPYC (x86_64, family 25 model 1) avx2 fma3, 2 threads, torch 2.13.0+cpu numba 0.68.1': which kernel
    wins depends on the threads sharing the memory bandwidth too."""
    from gpt2_llm.hardware import cpu_model, isa_flags

    try:
        numba = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        numba = "none"
    return f"{cpu_model()} {' '.join(isa_flags())}, {torch.get_num_threads()} threads, torch {torch.__version__} " \
           f"numba {numba}"


def remember(name: str, measure):
    """measure()'s value for this machine: read from the cache file, or measured now and written there."""
    key = f"{machine_key()}: {name}"
    if key in _measured_here:
        return _measured_here[key]
    path = os.path.join(cache_folder(), "machine.json")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError):  # none yet, or unreadable: measure
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    if key in entries:
        value = entries[key]
    else:
        value = measure()
        entries[key] = value
        try:
            os.makedirs(cache_folder(), exist_ok=True)
            atomic_write(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
        except OSError:  # a read-only home: measured again by the next process
            pass
    _measured_here[key] = value
    return value
