"""gpt2-llm command line: tokenize, encode, decode, prepare, train, predict, evaluate, finetune, merge, export, plot,
check, info.

    python main.py tokenize <file>...              # learn a BPE vocabulary -> vocab.txt
    python main.py prepare <file>... [--vocab V]   # encode a corpus once into its token cache
    python main.py encode <text> [vocab]           # text -> JSON list of ids
    python main.py decode <json_ids> [vocab]       # ids -> text
    python main.py train [file] [vocab] [checkpoint]
    python main.py predict <prompt> <num_tokens> [model] [vocab]
    python main.py serve [model] [vocab]           # OpenAI-compatible HTTP API + playground page
    python main.py evaluate <model> [vocab] <text>...   # bits per byte, nats per token, perplexity
    python main.py finetune <file> [vocab] --base CHECKPOINT | --pretrained DIR
    python main.py merge <adapter> [vocab]
    python main.py export [model] [vocab] --output DIR|FILE.gguf   # for Hugging Face, llama.cpp, Ollama
    python main.py check <checkpoint> <vocab>      # do they belong together? (exit 0 yes, 1 no)
    python main.py info                            # this machine and the precision and kernels chosen for it

Each command lives in gpt2_llm/commands/<name>.py, which adds its own arguments and runs it.
Mistakes a user can make surface as one line on stderr and exit code 2, never a traceback.
"""
import argparse
import importlib
import sys

# command name -> module under gpt2_llm.commands; imported only when used, so that
# `encode` does not pay for importing torch.
COMMANDS = {
    "tokenize": ("tokenizer_commands", "learn a byte-level BPE vocabulary from a text file"),
    "encode": ("tokenizer_commands", "encode text into token ids (JSON list)"),
    "decode": ("tokenizer_commands", "decode a JSON list of token ids into text"),
    "prepare": ("tokenizer_commands", "encode a corpus into its token cache (what train reads), on all cores"),
    "train": ("train_command", "train a GPT-2 model (or resume from a checkpoint)"),
    "predict": ("predict_command", "generate text from a prompt"),
    "serve": ("serve_command", "serve a model over an OpenAI-compatible HTTP API, with a playground page"),
    "evaluate": ("evaluate_command", "score models on texts: bits per byte, nats per token, perplexity"),
    "finetune": ("finetune_command", "fine-tune a trained model on new text: LoRA adapters, or --full"),
    "merge": ("merge_command", "fold a LoRA adapter into a whole checkpoint"),
    "export": ("export_command", "write a model with its tokenizer for Hugging Face (a directory) or llama.cpp and "
                                 "Ollama (GGUF)"),
    "plot": ("plot_command", "plot the loss curves of a training metrics log"),
    "check": ("check_command", "diagnose whether a checkpoint and a vocabulary belong together"),
    "info": ("info_command", "this machine: CPU, ISA flags, threads, the precision and kernels chosen here, and why"),
}


def build_parser(argv):
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    # Only import the module of the command being run (plus all of them for --help).
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if wanted is None or wanted == name:
            module = importlib.import_module(f"gpt2_llm.commands.{module_name}")
            module.add_arguments(name, sub)
            sub.set_defaults(run=getattr(module, "run"))
    return parser


def main(argv=None):
    from gpt2_llm.errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the system refused a file the user named: no such folder, disk full, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
