"""`tokenize`, `encode` and `decode`: the tokenizer from the command line (no torch needed)."""
import json

from gpt2_llm.data.corpus import add_corpus_arguments, parse_size
from gpt2_llm.errors import UserError
from gpt2_llm.tokenizer.vocab import DEFAULT_VOCAB, learn_vocab, load_vocab

VOCAB_HELP = f"vocab file, or a directory with GPT-2's vocab.json + merges.txt (default: {DEFAULT_VOCAB})"


def add_arguments(name, parser):
    if name == "tokenize":
        parser.add_argument("files", nargs="+", metavar="file",
                            help="the text to learn the vocabulary from: UTF-8 text files, folders (read "
                                 "recursively), quoted globs, or JSON-lines files (.jsonl); any size, streamed")
        parser.add_argument("--vocab-size", type=int, default=None,
                            help="number of tokens incl. the 256 bytes and <|endoftext|> "
                                 "(default: recommended from the text)")
        parser.add_argument("--output", "-o", default=DEFAULT_VOCAB,
                            help=f"vocab file to write (default: {DEFAULT_VOCAB})")
        parser.add_argument("--sample-bytes", type=parse_size, metavar="N",
                            help="learn from about N bytes spread evenly over the corpus, e.g. 200M (K, M, G: "
                                 "powers of 1024), instead of all of it")
        add_corpus_arguments(parser)
    elif name == "prepare":
        parser.add_argument("files", nargs="+", metavar="file",
                            help="the corpus, as train takes it: files, folders, quoted globs, .jsonl files")
        parser.add_argument("--vocab", default=DEFAULT_VOCAB, help=VOCAB_HELP)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_corpus_arguments(parser)
    elif name == "encode":
        parser.add_argument("text", help="text to encode")
        parser.add_argument("vocab", nargs="?", default=DEFAULT_VOCAB, help=VOCAB_HELP)
        parser.add_argument("--allow-special", action="store_true",
                            help="encode '<|endoftext|>' in the text as the special token, not as plain text")
    else:  # decode
        parser.add_argument("ids", metavar="json_ids", help='JSON list of token ids, e.g. "[15496, 995]"')
        parser.add_argument("vocab", nargs="?", default=DEFAULT_VOCAB, help=VOCAB_HELP)
        parser.add_argument("--pieces", action="store_true", help="print each token's text as a JSON list")


def check_utf8_argument(text, what):
    """Bytes in a command-line argument that are not UTF-8 arrive as lone surrogates (Python's surrogateescape):
    refuse them rather than encode bytes the user never typed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{what} is not valid UTF-8 (at character {e.start}); pass UTF-8 text") from None


def printable(text):
    """Tokens can spell any bytes, even a UTF-16 surrogate half, which no terminal can print: show those as U+FFFD.

    printable("a\\ud800") -> "a\\ufffd\\ufffd\\ufffd"
    """
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def run(args):
    if args.command == "tokenize":
        learn_vocab(args.files, args.output, args.vocab_size, args.sample_bytes, args.text_field, args.skip_bad_files)
    elif args.command == "prepare":
        from gpt2_llm.data.token_cache import cache_folder, load_tokens

        bpe = load_vocab(args.vocab)
        tokens = load_tokens(args.files, bpe, args.text_field, bool(args.skip_bad_files), progress=not args.no_progress)
        print(f"{len(tokens):,} tokens cached in {cache_folder(args.files, bpe, args.text_field)} "
              f"({len(tokens.arrays)} shards); `train` with the same inputs and vocab reads them from there")
    elif args.command == "encode":
        check_utf8_argument(args.text, "the text to encode")
        bpe = load_vocab(args.vocab)
        allowed = "all" if args.allow_special else ()
        print(json.dumps(bpe.encode(args.text, allowed_special=allowed)))
    else:
        bpe = load_vocab(args.vocab)
        ids = parse_ids_json(args.ids, bpe.vocab_size)
        if args.pieces:
            print(printable(json.dumps(bpe.decode_pieces(ids), ensure_ascii=False)))
        else:
            print(printable(bpe.decode(ids)))
    return 0


def parse_ids_json(text, vocab_size):
    """Parse a JSON list of token ids for `decode`, checking each is an int in [0, vocab_size).

    parse_ids_json("[15496, 995]", 50257) -> [15496, 995]
    """
    try:
        ids = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an int of > 4300 digits, absurd nesting
        detail = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise UserError(f"token ids are not valid JSON ({detail}); expected a list like [15496, 995]") from None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise UserError("token ids must be a JSON list of integers, like [15496, 995]")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"token id {bad[0]} is out of range: this vocab has ids 0..{vocab_size - 1}")
    return ids
