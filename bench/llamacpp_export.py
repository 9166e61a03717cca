"""Our GGUF export (gpt2_llm/checkpoints/gguf.py) run by a real llama.cpp: the same greedy tokens, the same perplexity.

    python bench/llamacpp_export.py CHECKPOINT VOCAB [--text FILE] [--prompt TEXT] [--new-tokens 64]
                                    [--context 128] [--outtype f32] [--threads 2] [--llama-dir DIR]

CHECKPOINT is a model of ours trained with its own vocab VOCAB (GPT-2 or RoPE). llama.cpp is the build that
bench/llamacpp.py makes (--llama-dir, default $GPT2_LLM_LLAMA_DIR or ~/.cache/gpt2-llm/llama.cpp); this script adds
the tools it needs to that build (llama-tokenize, llama-completion, llama-perplexity: minutes, once). The model is
written with write_gguf to DIR/models/export-NAME-OUTTYPE.gguf, then:

  prompt     llama-tokenize's ids for the prompt (the file says add_bos_token false) must be ours, bpe.encode
  greedy     NEW_TOKENS tokens from the prompt ids through llama.cpp's C API (libllama: decode the prompt, then
             one token at a time, its greedy sampler; the bindings are the llama-cpp-python sdist's own ctypes
             file, which the build came from) against our model.generate(ids, NEW_TOKENS, temperature=0): the ids
             must be equal, every one
  completion llama-completion -p PROMPT -n NEW_TOKENS --temp 0 -no-cnv -sp (its default sampler chain, which adds
             the file's suppressed tokens as a logit bias, and stops at an end-of-generation token): the bytes it
             prints must be our greedy tokens' bytes, up to and including our first <|endoftext|>
  perplexity llama-perplexity -f TEXT -c CONTEXT -b CONTEXT against ours over the same windows: TEXT's ids cut
             into len // CONTEXT windows, each scored on its second half only (the tokens after position
             CONTEXT/2), as tools/perplexity does; both must agree within 1e-5 relative (0.001 at perplexity 100)

Our side runs in fp32. llama.cpp does not compute an f32 file bit-equal to that: its CPU GELU looks results up in a
table of fp16 values, and its KV cache is f16 by default, so a trained model's logits differ by about 1e-3. Greedy
tokens agree wherever the top two logits are further apart than that, which on a trained model is almost everywhere
(figures: bench/RESULTS.md). Exit code 1 if a check fails.
"""
import argparse
import importlib
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from llamacpp import LLAMA_CPP_PYTHON, build_llama_cpp, default_llama_dir  # noqa: E402  (bench/llamacpp.py)

from bpe import BPE, EOT  # noqa: E402
from gpt2_llm import GPT2  # noqa: E402
from gpt2_llm.checkpoints.gguf import OUTTYPES, write_gguf  # noqa: E402
from gpt2_llm.files import atomic_write  # noqa: E402
from gpt2_llm.hardware import machine_header  # noqa: E402

TOOLS = ("llama-tokenize", "llama-completion", "llama-perplexity")
PROMPT = "KING HENRY:\nWhat says the herald? Speak, and speak the truth;\n"
# Relative: llama.cpp's rounding moves every token's log-probability a little, so perplexity moves by a factor.
PERPLEXITY_TOLERANCE = 1e-5
_quiet_log = None


def build_tools(llama_dir: Path) -> Path:
    """The build's bin folder, with TOOLS built into it (cmake builds only what is missing)."""
    build_llama_cpp(llama_dir)
    bin_dir = llama_dir / "build" / "bin"
    if not all((bin_dir / tool).is_file() for tool in TOOLS):
        print(f"building {', '.join(TOOLS)} in {bin_dir} (once)", flush=True)
        subprocess.run(["cmake", "--build", str(llama_dir / "build"), "--config", "Release", "-j",
                        str(os.cpu_count() or 1), "--target", *TOOLS], check=True)
    return bin_dir


def run_tool(bin_dir: Path, tool: str, *args, complete=lambda result: True, tries: int = 5):
    """Run a llama.cpp tool -> its CompletedProcess; again while `complete(result)` is false.

    --no-escape is added: by default the tools turn a backslash and a letter in the prompt or file into a control
    character (a backslash and t into a tab), and the text would no longer be ours.

    Why again: llama.cpp's tools print through a logger thread that is, by design, never flushed at exit (see
    common_log_main in common/log.cpp), so on a busy CPU the last lines of their output can be lost.
    """
    command = [str(bin_dir / tool), *map(str, args), "--no-escape"]
    for _ in range(tries):
        # surrogateescape: a token may end inside a UTF-8 character; its bytes come back as they were printed
        result = subprocess.run(command, capture_output=True, text=True, errors="surrogateescape")
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        if complete(result):
            return result
    raise SystemExit(f"{' '.join(command)} lost the end of its output {tries} times:\n{result.stdout[-1000:]}\n"
                     f"{result.stderr[-1000:]}")


def llama_version(bin_dir: Path) -> str:
    """'version: 0.5.0-dev (build 1, commit 0c1e570)' -> '0.5.0-dev (build 1, commit 0c1e570)'"""
    output = subprocess.run([str(bin_dir / "llama-completion"), "--version"], capture_output=True, text=True)
    match = re.search(r"version: (.*)", output.stdout + output.stderr)
    return match.group(1).strip() if match else "?"


def llama_token_ids(bin_dir: Path, gguf: Path, *source) -> list[int]:
    """llama-tokenize's ids for source ("-p", TEXT or "-f", FILE), as the file tells it to tokenize (BOS or not):
    its last line, '[1, 2, 3]'."""
    output = run_tool(bin_dir, "llama-tokenize", "-m", gguf, *source, "--ids", "--log-disable").stdout
    return [int(i) for i in output.strip().splitlines()[-1].strip("[]").split(",") if i.strip()]


def llama_bindings(llama_dir: Path, bin_dir: Path):
    """llama-cpp-python's ctypes declarations of llama.h (llama_cpp/llama_cpp.py in the sdist the build came from),
    loading this build's libllama. Imported alone: the package's __init__ would also load its high-level wrapper."""
    os.environ["LLAMA_CPP_LIB_PATH"] = str(bin_dir)
    package = types.ModuleType("llama_cpp")
    package.__path__ = [str(llama_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "llama_cpp")]
    sys.modules.setdefault("llama_cpp", package)
    return importlib.import_module("llama_cpp.llama_cpp")


def llama_greedy_ids(llama, gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int) -> list[int]:
    """new_tokens ids from llama.cpp's greedy sampler after exactly prompt_ids (nothing added), as llama-simple
    decodes: the prompt in one batch, then one token per decode."""
    global _quiet_log  # llama.cpp keeps the pointer: the callback must outlive this call
    _quiet_log = llama.llama_log_callback(lambda level, text, data: None)
    llama.llama_log_set(_quiet_log, None)  # its log would bury the results
    llama.llama_backend_init()
    model = llama.llama_model_load_from_file(str(gguf).encode(), llama.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {gguf}")
    params = llama.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = len(prompt_ids) + new_tokens
    params.n_threads = params.n_threads_batch = threads
    context = llama.llama_init_from_model(model, params)
    sampler = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    llama.llama_sampler_chain_add(sampler, llama.llama_sampler_init_greedy())
    try:
        tokens = (llama.llama_token * len(prompt_ids))(*prompt_ids)
        batch = llama.llama_batch_get_one(tokens, len(prompt_ids))
        generated = []
        for _ in range(new_tokens):
            if llama.llama_decode(context, batch) != 0:
                raise SystemExit("llama_decode failed")
            generated.append(llama.llama_sampler_sample(sampler, context, -1))
            tokens = (llama.llama_token * 1)(generated[-1])  # kept alive until the next decode has read it
            batch = llama.llama_batch_get_one(tokens, 1)
        return generated
    finally:
        llama.llama_sampler_free(sampler)
        llama.llama_free(context)
        llama.llama_model_free(model)


def llama_completion_bytes(bin_dir: Path, gguf: Path, prompt: str, new_tokens: int, threads: int) -> bytes:
    """What llama-completion prints after the prompt, greedy, special tokens shown. It ends its output with
    '\n\n' (after ' [end of text]\n' where it stopped at an end-of-generation token); both are cut off here."""
    result = run_tool(bin_dir, "llama-completion", "-m", gguf, "-p", prompt, "-n", new_tokens, "--temp", 0, "-no-cnv",
                      "--no-display-prompt", "-sp", "-t", threads, "--no-warmup",
                      complete=lambda result: result.stdout.endswith("\n\n"))
    return result.stdout.removesuffix("\n\n").removesuffix(" [end of text]\n").encode("utf-8", "surrogateescape")


def printed_bytes(bpe, ids: list[int]) -> bytes:
    """The bytes a generator that stops at <|endoftext|> prints for ids, the special token spelled out.
    [5, 9, EOT, 7] -> bytes of 5 and 9, then b"<|endoftext|>"."""
    ids = ids[: ids.index(bpe.eot_id) + 1] if bpe.eot_id in ids else ids
    pieces = bpe.token_bytes()
    return b"".join(pieces.get(i, EOT.encode()) for i in ids)


def llama_perplexity(bin_dir: Path, gguf: Path, text_file: Path, context: int, threads: int) -> float:
    """llama-perplexity's 'Final estimate: PPL = 99.5163 +/- 2.63562' -> 99.5163"""
    final = re.compile(r"Final estimate: PPL = ([0-9.]+)")
    result = run_tool(bin_dir, "llama-perplexity", "-m", gguf, "-f", text_file, "-c", context, "-b", context,
                      "-t", threads, complete=lambda result: final.search(result.stderr) is not None)
    return float(final.search(result.stderr).group(1))


@torch.no_grad()
def our_perplexity(model, ids: list[int], context: int) -> float:
    """exp(mean NLL) over the windows llama-perplexity scores: ids cut into len // context windows of context
    tokens, each predicting its tokens after position context/2 from everything before them in the window.

    Windows of 4: [a b c d][e f g h] score c->d and g->h (the logits at positions 2 give tokens 3).
    """
    windows = torch.tensor(ids[: len(ids) // context * context]).view(-1, context)  # (N, T)
    first = context // 2
    nll = []
    for window in windows.split(16):  # a few windows per forward: bounded memory
        logits = model(window).double()  # (n, T, V)
        log_probs = torch.log_softmax(logits[:, first:-1], dim=-1)  # positions first .. T-2
        targets = window[:, first + 1:]  # tokens first+1 .. T-1
        nll.append(-log_probs.gather(-1, targets[..., None]).squeeze(-1))
    return math.exp(torch.cat(nll).mean().item())


def check_prompt(bin_dir, gguf, bpe, prompt) -> list[str]:
    ours, theirs = bpe.encode(prompt), llama_token_ids(bin_dir, gguf, "-p", prompt)
    print(f"\nprompt {prompt!r}: {len(ours)} ids; llama-tokenize's equal: {theirs == ours}")
    return [] if theirs == ours else [f"prompt ids: ours {ours}, llama-tokenize {theirs}"]


def check_greedy(llama, bin_dir, gguf, model, bpe, prompt, new_tokens, threads) -> list[str]:
    prompt_ids = bpe.encode(prompt)
    ours = model.generate(torch.tensor([prompt_ids]), new_tokens, temperature=0)[0, len(prompt_ids):].tolist()
    theirs = llama_greedy_ids(llama, gguf, prompt_ids, new_tokens, threads)
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), new_tokens)
    print(f"greedy (ours: model.generate, temperature 0; llama.cpp: libllama's greedy sampler): {same} of "
          f"{new_tokens} tokens equal\n  ours  {ours}\n  llama {theirs}")
    expected = printed_bytes(bpe, ours)
    completion = llama_completion_bytes(bin_dir, gguf, prompt, new_tokens, threads)
    print(f"llama-completion --temp 0 printed our greedy text: {completion == expected}\n  {completion!r}")
    failures = [] if same == new_tokens else [f"greedy ids differ from token {same} on"]
    return failures + ([] if completion == expected else [f"llama-completion printed {completion!r}, ours decode to "
                                                          f"{expected!r}"])


def check_perplexity(bin_dir, gguf, model, bpe, text, context, threads) -> list[str]:
    text_file = gguf.with_suffix(".text.txt")
    atomic_write(text_file, text)
    ids = bpe.encode(text)
    same_ids = llama_token_ids(bin_dir, gguf, "-f", text_file) == ids
    windows = len(ids) // context
    ours = our_perplexity(model, ids, context)
    theirs = llama_perplexity(bin_dir, gguf, text_file, context, threads)
    print(f"\nperplexity over {windows} windows of {context} tokens ({len(text):,} characters, llama-tokenize's ids "
          f"equal: {same_ids}), second halves scored: ours {ours:.4f}, llama-perplexity {theirs:.4f} "
          f"(|difference| {abs(ours - theirs):.4f})\n"
          f"  {bin_dir / 'llama-perplexity'} -m {gguf} -f {text_file} -c {context} -b {context} -t {threads} --no-escape")
    failures = [] if same_ids else [f"llama-tokenize's ids for {text_file} are not ours"]
    return failures + ([] if abs(ours - theirs) <= PERPLEXITY_TOLERANCE * ours else
                       [f"perplexity: ours {ours:.4f}, llama.cpp {theirs:.4f}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a model of ours (safetensors checkpoint)")
    parser.add_argument("vocab", help="the vocab file it was trained with")
    parser.add_argument("--text", type=Path, default=REPO / "data" / "shakespeare.txt",
                        help="text to score (default: the shipped Shakespeare)")
    parser.add_argument("--text-chars", type=int, default=40_000,
                        help="score the last N characters of --text (default 40,000)")
    parser.add_argument("--prompt", default=PROMPT, help="the greedy checks' prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens to compare (default 64)")
    parser.add_argument("--context", type=int, default=128, help="llama-perplexity's -c (default 128)")
    parser.add_argument("--outtype", default="f32", choices=list(OUTTYPES), help="GGUF weight type (default f32)")
    parser.add_argument("--threads", type=int, default=2, help="threads on both sides (default 2)")
    parser.add_argument("--llama-dir", type=Path, default=default_llama_dir(),
                        help="llama.cpp's source and build (default: $GPT2_LLM_LLAMA_DIR or ~/.cache/gpt2-llm/llama.cpp)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(machine_header(), flush=True)
    llama_dir = args.llama_dir.expanduser().resolve()
    bin_dir = build_tools(llama_dir)
    print(f"llama.cpp {llama_version(bin_dir)} ({bin_dir})")
    model = GPT2.from_checkpoint(args.checkpoint).eval()
    bpe = BPE(args.vocab)
    bpe.load()
    gguf = llama_dir / "models" / f"export-{Path(args.checkpoint).stem}-{args.outtype}.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(model, bpe, gguf, args.outtype)
    config = model.config
    print(f"model {args.checkpoint}: {config.num_layers}x{config.embedding_dim}, context {config.max_seq_len}, "
          f"{'RoPE' if config.use_rope else 'learned positions'}, vocab {bpe.vocab_size} ({config.vocab_size} rows), "
          f"written by write_gguf as {gguf} ({args.outtype})")

    text = args.text.read_text(encoding="utf-8")[-args.text_chars:]
    failures = [*check_prompt(bin_dir, gguf, bpe, args.prompt),
                *check_greedy(llama_bindings(llama_dir, bin_dir), bin_dir, gguf, model, bpe, args.prompt,
                              args.new_tokens, args.threads),
                *check_perplexity(bin_dir, gguf, model, bpe, text, args.context, args.threads)]
    print("\n" + ("all checks passed" if not failures else "FAILED:\n  " + "\n  ".join(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
