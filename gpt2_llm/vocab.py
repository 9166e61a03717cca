"""The vocabulary a model is used with: loading it, and checking that it belongs to the model.

No torch here: the tokenizer commands (`encode`, `decode`) load a vocab and must start fast.
"""
import os

from bpe import BPE
from gpt2_llm.errors import UserError

DEFAULT_VOCAB = "vocab.txt"
GPT2_FILES = ("vocab.json", "merges.txt")  # OpenAI's encoder.json and vocab.bpe under Hugging Face's names


def load_vocab(path) -> BPE:
    """A vocab file (what `tokenize` writes), or a directory with GPT-2's vocab.json + merges.txt."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = [os.path.join(path, name) for name in GPT2_FILES]
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            raise UserError(f"{path} has no {' or '.join(missing)}: pass a vocab file, or a directory with GPT-2's "
                            "tokenizer files (encoder.json and vocab.bpe under Hugging Face's names)")
        return BPE.from_gpt2(*files, vocab_path=path)
    bpe = BPE(path)
    if not bpe.load():
        raise UserError(f"vocab file {path} not found; create one with: python main.py tokenize <file> --output {path}")
    return bpe


def vocab_problems(bpe, metadata: dict, config) -> list[str]:
    """Why bpe cannot drive the model that config and metadata describe; [] when it can.

    metadata["vocab"] is what the trainer records: {"fingerprint": sha256 of the vocab file, "size": ...};
    a model saved without it (model.save, a Hugging Face directory) is checked by size alone.
    """
    problems = []
    saved = metadata.get("vocab") or {}
    if saved.get("fingerprint") and saved["fingerprint"] != bpe.fingerprint():
        problems.append(
            f"the model was trained with a different vocabulary ({saved.get('size')} tokens, hash "
            f"{str(saved['fingerprint'])[:12]}) than {bpe.vocab_path} ({bpe.vocab_size} tokens, hash "
            f"{bpe.fingerprint()[:12]}): the same token ids would mean different text"
        )
    if bpe.vocab_size > config.vocab_size:
        problems.append(
            f"{bpe.vocab_path} has {bpe.vocab_size} tokens but the model has only {config.vocab_size} embedding "
            "rows: ids past the table would crash (CUDA 'index out of bounds')"
        )
    return problems


def check_vocab(bpe, metadata: dict, config, source) -> None:
    """Refuse a vocabulary that does not belong to the model from source (a checkpoint, a directory)."""
    problems = vocab_problems(bpe, metadata, config)
    if problems:
        raise UserError(f"{source}: {'; and '.join(problems)}. Pass the vocab file the model was trained with")
