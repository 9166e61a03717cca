"""A model and its vocab, out to the tools people already have: a Hugging Face directory, or a GGUF file for
llama.cpp, Ollama and LM Studio.

    export(model, bpe, "exported/", "hf", "f32")        # config.json, generation_config.json, model.safetensors,
                                                        # and the tokenizer's files (tokenizer/huggingface_files.py)
    export(model, bpe, "model.gguf", "gguf", "q8_0")    # one file (gguf.py), and model.Modelfile beside it for Ollama

Every file is written atomically. An output that holds something export did not write is refused before anything
is written: a directory with other files, a file that is not a GGUF, a Modelfile of someone else's.
"""
import os
from pathlib import Path

import torch

from gpt2_llm.chat.template import jinja_for
from gpt2_llm.checkpoints.huggingface import write_hf_gpt2
from gpt2_llm.errors import UserError
from gpt2_llm.files import atomic_write
from gpt2_llm.tokenizer.huggingface_files import TOKENIZER_FILES, write_tokenizer_files

FORMATS = ("hf", "gguf")
OUTTYPES = {"hf": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0")}
HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES)
GGUF_MAGIC = b"GGUF"
MODELFILE_HEADER = "# Written by gpt2-llm's export."
# predict's default sampling, which the Modelfile gives Ollama
TEMPERATURE, TOP_K = 0.8, 40


def format_of(output: str) -> str:
    """The format an output path asks for: "model.gguf" -> "gguf"; anything else (a directory) -> "hf"."""
    return "gguf" if output.lower().endswith(".gguf") else "hf"


def modelfile_path(gguf_path) -> Path:
    """model.gguf -> model.Modelfile, beside it."""
    return Path(gguf_path).with_suffix(".Modelfile")


def check_export(output, fmt: str, outtype: str) -> None:
    """Refuse, before anything is loaded or written, a format, outtype or output that cannot be: UserError."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use hf (a Hugging Face directory) or gguf (llama.cpp, Ollama)")
    if outtype not in OUTTYPES[fmt]:
        raise UserError(f"--outtype {outtype} is not available for --format {fmt}; use one of "
                        f"{', '.join(OUTTYPES[fmt])}")
    path = Path(output)
    if not path.resolve().parent.is_dir():
        raise UserError(f"cannot write {output}: the folder {path.parent} does not exist; create it first")
    if fmt == "hf":
        if path.is_file():
            raise UserError(f"{output} is a file; --format hf writes a directory: pass a new or exported one")
        others = sorted(p.name for p in path.iterdir() if p.name not in HF_FILES) if path.is_dir() else []
        if others:
            raise UserError(f"{output} holds files export did not write ({', '.join(others[:3])}); pass an empty "
                            "directory or one export wrote")
        return
    if path.is_dir():
        raise UserError(f"{output} is a directory; --format gguf writes one file: pass a path ending in .gguf")
    if path.is_file() and not _starts_with(path, GGUF_MAGIC):
        raise UserError(f"{output} exists and is not a GGUF file; export will not overwrite it")
    modelfile = modelfile_path(path)
    if modelfile.exists() and not _starts_with(modelfile, MODELFILE_HEADER.encode()):
        raise UserError(f"{modelfile} exists and export did not write it; move it, or pass another --output")


def export(model, bpe, output, fmt: str, outtype: str) -> list[str]:
    """Write model + bpe to output in fmt ("hf" or "gguf") with weights in outtype; -> the paths written."""
    check_export(output, fmt, outtype)
    if bpe.eot_id >= model.config.vocab_size:
        raise UserError(f"the vocab has {bpe.eot_id + 1} tokens but the model only {model.config.vocab_size} rows")
    chat_template = jinja_for(bpe)  # a chat-tuned model's vocab carries its template out
    if fmt == "hf":
        write_hf_gpt2(model, output, eot_id=bpe.eot_id, dtype=HF_DTYPES[outtype])
        write_tokenizer_files(bpe, output, model.config.max_seq_len, chat_template)
        return [os.path.join(output, name) for name in HF_FILES]
    from gpt2_llm.checkpoints.gguf import write_gguf  # the gguf package only when writing one

    write_gguf(model, bpe, output, outtype, chat_template)
    modelfile = modelfile_path(output)
    atomic_write(modelfile, ollama_modelfile(Path(output).name, model.config.max_seq_len))
    return [os.fspath(output), os.fspath(modelfile)]


def ollama_modelfile(gguf_name: str, context: int) -> str:
    """An Ollama Modelfile for the GGUF beside it: the prompt as it is (a base model, no chat template), stopping
    at <|endoftext|>, with predict's sampling and the model's context."""
    return (f"{MODELFILE_HEADER} ollama create NAME -f THIS_FILE, then: ollama run NAME \"Your prompt\"\n"
            f"FROM ./{gguf_name}\n"
            'TEMPLATE """{{ .Prompt }}"""\n'
            'PARAMETER stop "<|endoftext|>"\n'
            f"PARAMETER temperature {TEMPERATURE}\n"
            f"PARAMETER top_k {TOP_K}\n"
            f"PARAMETER num_ctx {context}\n")


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix
