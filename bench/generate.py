"""Decoding speed of our GPT2 vs transformers' generate, GPT-2 small shape, batch 1, greedy.

    python bench/generate.py [--repeats 3] [--new-tokens 128] [--threads N]

Each contender continues the same 16-token prompt by 128 tokens (greedy, so every contender does
the same work: HF with its KV cache, min_new_tokens so that it never stops early); tok/s = 128 /
wall time of the whole call, prefill included. Contenders run round-robin, one warm-up call each,
then --repeats timed calls; best and median are reported. Random weights (nothing downloaded).

Decoding is memory-bandwidth bound: each token reads every weight once (the 85M matmul weights
of the 12 blocks + the 38.6M tied head; one row of each embedding). So besides tok/s each row shows
the bandwidth it achieves, weight bytes per token x tok/s, next to what one matrix-vector product
reaches on this machine (REFERENCE_GBS: torch.nn.functional.linear for fp32 and bf16,
torch._weight_int8pack_mm with bf16 activations for int8, measured on the 2-core Zen4 dev box).
Our fp32/bf16 rows read oneDNN-prepacked weights (quantize.PackedLinear), which stream faster
than F.linear's plain layout, so they can go past that reference.
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt2_llm import GPT2  # noqa: E402
from gpt2_llm.quantize import prepare_for_decoding  # noqa: E402

SHAPE = dict(vocab_size=50257, embedding_dim=768, num_layers=12, num_heads=12, max_seq_len=1024)
PROMPT_TOKENS = 16
TARGETS = {"ours fp32": 1.5, "ours bf16": 2.2, "ours int8": 4.0}  # x HF fp32 tok/s
REFERENCE_GBS = {"fp32": 19.5, "bf16": 16.5, "int8": 29.0}  # one matrix-vector product, GB/s


def weight_bytes_per_token(bytes_per_weight: float) -> float:
    """Bytes of weights one decoding step reads: every matmul weight once, the head included."""
    C, L, V = SHAPE["embedding_dim"], SHAPE["num_layers"], SHAPE["vocab_size"]
    per_block = 3 * C * C + C * C + 2 * (4 * C * C)  # c_attn, attn c_proj, c_fc, mlp c_proj
    return (L * per_block + V * C) * bytes_per_weight  # biases, LayerNorms, embedding rows: < 0.1%


def build_contenders():
    import transformers
    from transformers import GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    base = GPT2(**SHAPE).eval()
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)  # HF gets exactly our weights, through our own converter
        hf = GPT2LMHeadModel.from_pretrained(tmp).eval()
    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    cpu = torch.device("cpu")
    ours = {
        "ours fp32": (prepare_for_decoding(copy.deepcopy(base), cpu, torch.float32), "fp32", 4),
        "ours bf16": (prepare_for_decoding(copy.deepcopy(base), cpu, torch.bfloat16), "bf16", 2),
        "ours int8": (prepare_for_decoding(copy.deepcopy(base), cpu, torch.bfloat16, "int8"), "int8", 1),
        "ours fp32, nn.Linear": (base, "fp32", 4),  # no prepacking: the plain model, for the record
    }
    return ours, {"HF fp32": (hf, "fp32", 4), "HF bf16": (hf_bf16, "bf16", 2)}


def ours_call(model, prompt, new_tokens):
    return lambda: model.generate(prompt, new_tokens, temperature=0)


def hf_call(model, prompt, new_tokens):
    def call():
        with torch.inference_mode():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per contender (default 3)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per call (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours, hf = build_contenders()
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    calls = {name: ours_call(m, prompt, args.new_tokens) for name, (m, _, _) in ours.items()}
    calls.update({name: hf_call(m, prompt, args.new_tokens) for name, (m, _, _) in hf.items()})
    formats = {name: (fmt, size) for name, (_, fmt, size) in {**ours, **hf}.items()}

    outputs = {name: call() for name, call in calls.items()}  # warm-up, and the greedy texts to compare
    seconds = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)

    print(f"GPT-2 decoding, batch 1: {PROMPT_TOKENS}-token prompt + {args.new_tokens} new tokens, greedy; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"shape: {SHAPE['num_layers']} layers, {SHAPE['embedding_dim']} dim, {SHAPE['num_heads']} heads, vocab "
          f"{SHAPE['vocab_size']}, context {SHAPE['max_seq_len']}; random weights; best (median) of {args.repeats} "
          "calls after 1 warm-up\n")
    reference = outputs["HF fp32"][0, PROMPT_TOKENS:]
    hf_best = args.new_tokens / min(seconds["HF fp32"])
    header = (f"{'contender':<22} {'tok/s best':>10} {'(median)':>9} {'x HF fp32':>9} {'target':>7} {'met':>4}"
              f" {'MB/token':>8} {'GB/s':>6} {'ref GB/s':>8} {'of ref':>6} {'same as HF':>10}")
    print(header)
    print("-" * len(header))
    met = []
    for name, times in seconds.items():
        best, median = args.new_tokens / min(times), args.new_tokens / statistics.median(times)
        fmt, size = formats[name]
        gbs = weight_bytes_per_token(size) * best / 1e9
        ratio = best / hf_best
        target = TARGETS.get(name)
        if target is not None:
            met.append(ratio >= target)
        same = int((outputs[name][0, PROMPT_TOKENS:] == reference).sum())
        print(f"{name:<22} {best:>10.1f} {f'({median:.1f})':>9} {ratio:>8.2f}x "
              f"{f'{target:.1f}x' if target else '-':>7} {('yes' if ratio >= target else 'NO') if target else '-':>4}"
              f" {weight_bytes_per_token(size) / 1e6:>8.0f} {gbs:>6.1f} {REFERENCE_GBS[fmt]:>8.1f}"
              f" {gbs / REFERENCE_GBS[fmt]:>5.0%} {same:>6}/{args.new_tokens}")
    print(f"\ntargets met: {sum(met)} of {len(met)} (ours fp32 >= 1.5x, bf16 >= 2.2x, int8 >= 4x HF fp32 tok/s)")
    print("'same as HF': greedy tokens equal to HF fp32's at the same position; bf16 and int8 round the "
          "weights, so after the first differing token the texts part")


if __name__ == "__main__":
    main()
