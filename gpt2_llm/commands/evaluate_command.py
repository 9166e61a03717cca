"""`evaluate <model> [vocab] <text...>`: score models on texts (bits per byte, nats per token, perplexity).

    python main.py evaluate gpt2_model.pt vocab.txt data/val.txt          # one row
    python main.py evaluate gpt2_model.pt val.txt test.jsonl --stride 64  # a row per text + a total
    python main.py evaluate a.pt vocab.txt val.txt --model b.pt --json    # two models, as JSON
    python main.py evaluate --pretrained gpt2/ wiki.txt --context 1024 --stride 512

The vocab is optional, so the second argument is the vocab only when it is one (a file with the header
`tokenize` writes, or a directory with vocab.json + merges.txt); otherwise it is the first text. Each text
(any corpus: a file, folder, glob or .jsonl) is read through the token cache, scored on its own with
evaluation.py's sliding window, and printed as a row. Every flag is checked before the slow model load.
"""
import json
import os
import sys

from gpt2_llm.commands.common import check_inference_weights, parse_number
from gpt2_llm.data.corpus import add_corpus_arguments
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.vocab import DEFAULT_VOCAB, is_vocab

MAX_CONTEXT = 1024  # the default context is the model's, at most this (GPT-2's own)
DEFAULT_BATCH_SIZE = 8
COLUMNS = [("model", "model"), ("text", "text"), ("context", "context"), ("stride", "stride"),
           ("tokens", "targets"), ("bytes", "bytes"), ("nats_per_token", "nats/token"),
           ("perplexity", "perplexity"), ("bits_per_byte", "bits/byte")]


def add_arguments(name, parser):
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="the model (a checkpoint, or a Hugging Face GPT-2 directory; left out with "
                             "--pretrained), its vocab (default: vocab.txt, or the model directory's own), then "
                             "one or more texts, each scored on its own: a file, folder, quoted glob or .jsonl")
    parser.add_argument("--model", action="append", default=[], metavar="M", dest="more_models",
                        help="another model to score on the same texts with the same vocab (repeatable)")
    parser.add_argument("--pretrained", metavar="DIR", default=None,
                        help="a Hugging Face GPT-2 directory (its own vocab) instead of a checkpoint and vocab")
    parser.add_argument("--adapter", metavar="FILE", default=None,
                        help="a LoRA adapter file (what `finetune` writes), merged into the first model")
    window = parser.add_argument_group("sliding window")
    window.add_argument("--context", default=None, metavar="N",
                        help=f"tokens per window (default: the model's context, at most {MAX_CONTEXT})")
    window.add_argument("--stride", default=None, metavar="S",
                        help="tokens between window starts, at most the context (default: the context: no overlap); "
                             "smaller gives each token more context: usually a better, slower score")
    window.add_argument("--batch-size", default=str(DEFAULT_BATCH_SIZE), metavar="B",
                        help=f"windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    output = parser.add_argument_group("output, device and precision")
    output.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    output.add_argument("--dtype", default=None, help="fp32 or bf16 autocast (default: fp32 on the CPU, bf16 on a "
                                                      "GPU that has it)")
    output.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    add_corpus_arguments(output)


def run(args):
    options = parse_options(args)  # every flag checked before the (slow) model load
    from gpt2_llm.load import load_model_and_vocab
    from gpt2_llm.device import DTYPES, pick_device

    device = pick_device(args.device)
    dtype = DTYPES[options["dtype"] or default_dtype_name(device)]
    model_path, vocab_path, texts = split_paths(args.paths, args.pretrained)
    # Every model loaded and checked (vocab, context) before any text is encoded or scored: a mistake
    # in the last --model fails at once.
    first, bpe = load_model_and_vocab(model_path, vocab_path, args.pretrained, args.adapter)
    models = [(args.pretrained or model_path, first)]
    models += [(name, load_model_and_vocab(name, vocab_path, None)[0]) for name in args.more_models]
    for name, model in models:
        window_size(options, model.config.max_seq_len, name)
    streams = read_texts(texts, bpe, args)
    rows = []
    for index, (name, model) in enumerate(models):
        label = name + (f" + {args.adapter}" if args.adapter and index == 0 else "")
        rows += score_model(model.to(device), label, streams, bpe, options, device, dtype)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


def read_texts(texts, bpe, args) -> list:
    """(text argument, its TokenStream through the token cache) for each text, each checked to have a target."""
    from gpt2_llm.data.token_cache import load_tokens

    streams = []
    for text in texts:
        tokens = load_tokens([text], bpe, args.text_field, bool(args.skip_bad_files), log=print_to_stderr,
                             progress=sys.stderr.isatty())
        if len(tokens) < 2:
            raise UserError(f"{text} has {len(tokens)} token: too short to score (a target needs a token before it)")
        streams.append((text, tokens))
    return streams


def score_model(model, label, streams, bpe, options, device, dtype) -> list[dict]:
    """One row per text (and a total row, text None, when there are several) for one model."""
    from tqdm import tqdm

    from gpt2_llm.data.dataset import token_byte_lengths
    from gpt2_llm.infer.evaluation import count_targets, evaluate_tokens, summarize

    context, stride = window_size(options, model.config.max_seq_len, label)
    byte_lengths = token_byte_lengths(bpe, model.config.vocab_size)
    rows, totals = [], [0.0, 0, 0]  # nats, targets, bytes over every text
    for text, tokens in streams:
        with tqdm(total=count_targets(len(tokens), context, stride), unit="tok", leave=False,
                  desc=os.path.basename(text), disable=not sys.stderr.isatty()) as bar:
            scores = evaluate_tokens(model, tokens, byte_lengths, context, stride, options["batch_size"], device,
                                     dtype, progress=bar.update)
        rows.append({"model": label, "text": text, "context": context, "stride": stride, **scores})
        totals = [totals[0] + scores["nats"], totals[1] + scores["tokens"], totals[2] + scores["bytes"]]
    if len(streams) > 1:
        rows.append({"model": label, "text": None, "context": context, "stride": stride, **summarize(*totals)})
    return rows


def print_to_stderr(message):
    """The token cache's notes (encoding, skipped files), on a terminal only: stdout is the table or JSON,
    and a script reading stderr gets nothing but an error."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr)


# --- the arguments ------------------------------------------------------------------------------------


def parse_options(args) -> dict:
    """The window and precision flags as numbers, or a UserError naming the flag (no torch yet)."""
    if args.more_models and args.pretrained:
        raise UserError("--model scores more checkpoints with the same vocab file; with --pretrained the vocab is "
                        "the directory's own: evaluate each --pretrained directory in its own command")
    check_inference_weights(args.dtype)
    context = None if args.context is None else parse_number(args.context, "--context", int, low=2)
    stride = None if args.stride is None else parse_number(args.stride, "--stride", int, low=1)
    if context is not None and stride is not None and stride > context:
        raise UserError(f"--stride {stride} is larger than --context {context}: tokens between windows would never "
                        "be scored; use a stride of at most the context")
    return {"context": context, "stride": stride, "dtype": args.dtype,
            "batch_size": parse_number(args.batch_size, "--batch-size", int, low=1)}


def window_size(options, max_seq_len, model_name) -> tuple[int, int]:
    """(context, stride) for a model of max_seq_len positions: the flags', checked, or the defaults."""
    context = options["context"] or min(max_seq_len, MAX_CONTEXT)
    if context > max_seq_len:
        raise UserError(f"--context {context} is larger than {model_name}'s context of {max_seq_len} tokens; "
                        f"use --context {max_seq_len} or less")
    stride = options["stride"] or context
    if stride > context:
        raise UserError(f"--stride {stride} is larger than the context of {context} tokens ({model_name}'s); "
                        "use a stride of at most the context")
    return context, stride


def default_dtype_name(device) -> str:
    """fp32 on the CPU (exact scores); bf16 autocast on a GPU that runs it natively."""
    from gpt2_llm.device import has_fast_bf16

    return "bf16" if device.type == "cuda" and has_fast_bf16(device) else "fp32"


def split_paths(paths, pretrained) -> tuple[str | None, str | None, list[str]]:
    """(model, vocab, texts) from the positional arguments: the model first (none with --pretrained),
    then the vocab if the next one is a vocab, then the texts."""
    paths = list(paths)
    model = None if pretrained else (paths.pop(0) if paths else None)
    if model is None and pretrained is None:
        raise UserError("evaluate needs a model and a text: python main.py evaluate <model> [vocab] <text>...")
    vocab = paths.pop(0) if paths and is_vocab(paths[0]) else None
    if not paths:
        raise UserError("evaluate needs at least one text to score after the model"
                        + (" and vocab" if vocab else ""))
    if vocab is None and pretrained is None:
        vocab = default_vocab(model)
    return model, vocab, paths


def default_vocab(model_path) -> str:
    """A Hugging Face directory with tokenizer files is its own vocab; anything else uses vocab.txt."""
    return model_path if model_path and os.path.isdir(model_path) and is_vocab(model_path) else DEFAULT_VOCAB


# --- the table ----------------------------------------------------------------------------------------


def format_table(rows) -> str:
    """Rows as aligned columns: text left, numbers right; a total row (text None) reads "total"."""
    cells = [[title for _, title in COLUMNS]]
    for row in rows:
        cells.append([format_cell(key, row[key]) if row[key] is not None or key != "text" else "total"
                      for key, _ in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
                     for line in cells)


def format_cell(key, value) -> str:
    """format_cell("perplexity", 31.7123) -> "31.71"; counts with thousands separators; None -> "-"."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if key in ("tokens", "bytes", "context", "stride"):
        return f"{value:,}"
    return f"{value:.2f}" if key == "perplexity" else f"{value:.4f}"
