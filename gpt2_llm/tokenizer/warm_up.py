"""Every compiled kernel run once, on a tiny input, through the tokenizer's own code, so that numba compiles each for
the argument types real calls give it (a numba kernel compiles once per distinct set of argument types).

The processes that compile the kernels on a machine's first run (compiled.py) hand run_kernels_once to
compiled.compile_in_this_process. It lives apart from compiled.py because it runs bpe.py's code, and bpe.py imports
compiled.py.
"""
import bpe
from gpt2_llm.tokenizer.training import ChunkCounts, train_merges_compiled


def run_kernels_once(groups, kernels, training_kernels):
    """Run the kernels of groups (of "encode", "count", "train") as BPE.encode, ChunkCounts and learn_merges do."""
    text, chunk_counts = "Hi hi, héllo 42!\n", {"hi": 2, " hi": 1}
    if "encode" in groups:
        tokenizer = bpe.BPE()
        tokenizer._build(range(256), [(104, 105)])
        tokenizer._encode(text, (), kernels)
    if "count" in groups:
        counts, more = (ChunkCounts(training_kernels, bpe._utf8_with_regions) for _ in range(2))
        counts.add_text(text)
        more.add_text(text)
        counts.update(more)
        counts.select(counts.values() > 1)
    if "train" in groups:
        train_merges_compiled(chunk_counts, 1, training_kernels)
