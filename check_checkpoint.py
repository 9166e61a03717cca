"""Diagnose whether a checkpoint and a vocabulary file belong together, before training or predicting.

    python check_checkpoint.py <checkpoint> <vocab>

The same as `python main.py check <checkpoint> <vocab>` (gpt2_llm/commands/check_command.py).
<checkpoint> is a gpt2-llm checkpoint (what `main.py train` writes) or a Hugging Face GPT-2 directory;
<vocab> is a vocab file (what `main.py tokenize` writes) or a directory holding GPT-2's vocab.json and
merges.txt. Exit status: 0 compatible, 1 not compatible, 2 unreadable input.
"""
import sys

import main as cli


def main(argv=None):
    return cli.main(["check", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
