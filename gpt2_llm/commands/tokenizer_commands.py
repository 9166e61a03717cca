"""`tokenize`, `encode` and `decode`: the tokenizer from the command line (no torch needed)."""
import json
import time

from bpe import BPE, parse_ids_json, read_text_file
from gpt2_llm.errors import UserError
from gpt2_llm.vocab import DEFAULT_VOCAB, load_vocab

VOCAB_HELP = f"vocab file, or a directory with GPT-2's vocab.json + merges.txt (default: {DEFAULT_VOCAB})"


def add_arguments(name, parser):
    if name == "tokenize":
        parser.add_argument("file", help="UTF-8 text file to learn the vocabulary from")
        parser.add_argument("--vocab-size", type=int, default=None,
                            help="number of tokens incl. the 256 bytes and <|endoftext|> "
                                 "(default: recommended from the text)")
        parser.add_argument("--output", "-o", default=DEFAULT_VOCAB,
                            help=f"vocab file to write (default: {DEFAULT_VOCAB})")
    elif name == "encode":
        parser.add_argument("text", help="text to encode")
        parser.add_argument("vocab", nargs="?", default=DEFAULT_VOCAB, help=VOCAB_HELP)
        parser.add_argument("--allow-special", action="store_true",
                            help="encode '<|endoftext|>' in the text as the special token, not as plain text")
    else:  # decode
        parser.add_argument("ids", metavar="json_ids", help='JSON list of token ids, e.g. "[15496, 995]"')
        parser.add_argument("vocab", nargs="?", default=DEFAULT_VOCAB, help=VOCAB_HELP)
        parser.add_argument("--pieces", action="store_true", help="print each token's text as a JSON list")


def save_vocab(bpe):
    """bpe.save(), with a failed write (no such folder, disk full) as a UserError; the old file stays as it was."""
    try:
        bpe.save()
    except OSError as e:
        raise UserError(f"cannot write vocab {bpe.vocab_path}: {e.strerror or e}; nothing was changed") from None


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
        text = read_text_file(args.file)
        bpe = BPE(args.output)
        vocab_size = args.vocab_size or bpe.get_recommended_vocab_size(text)
        if vocab_size < 257:
            raise UserError(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
        bpe.set_vocab_size(vocab_size)
        start = time.perf_counter()
        bpe.create_vocab(text)
        save_vocab(bpe)
        print(f"Learned {bpe.vocab_size} tokens from {len(text.encode('utf-8')):,} bytes "
              f"in {time.perf_counter() - start:.1f}s; saved {args.output} "
              f"(model vocab size {bpe.get_model_vocab_size()})")
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
