"""Any vocab of ours as Hugging Face tokenizer files: AutoTokenizer then encodes exactly as BPE does.

    write_tokenizer_files(bpe, "exported/", context=1024)

    vocab.json + merges.txt    GPT-2's own two files (GPT2Tokenizer reads them; so does BPE.from_gpt2)
    tokenizer.json             the same vocab for the `tokenizers` library (what AutoTokenizer loads first)
    tokenizer_config.json      the class, <|endoftext|> as bos/eos/unk, the context, no BOS added
    special_tokens_map.json

Our tokenizer is GPT-2's algorithm (byte-level BPE, GPT-2's pre-split regex, merges by rank), so the files say the
same thing GPT-2's do, about our vocab: the tokens spelled with GPT-2's byte-to-unicode characters, the merges in
rank order, <|endoftext|> and any other special tokens (a chat's role markers) as added tokens. Plain JSON, written by hand: `tokenizers` and `transformers` are
the references the tests prove these files against, not dependencies.
"""
import json
import os

from bpe import EOT
from gpt2_llm.files import atomic_write
from gpt2_llm.tokenizer.openai_files import gpt2_spelling

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# GPT-2's pre-split as the `tokenizers` ByteLevel pre-tokenizer spells it (use_regex): the same pattern as bpe.py's
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def write_tokenizer_files(bpe, directory, context: int, chat_template: str | None = None) -> None:
    """Write TOKENIZER_FILES for bpe into directory (each atomically); UserError if the vocab cannot be spelled.
    chat_template: Jinja for apply_chat_template (a chat-tuned model's: chat/template.py)."""
    encoder, merges = gpt2_spelling(bpe)
    specials = [{"id": token_id, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for name, token_id in bpe.special_tokens.items()]
    fast = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials,
        "normalizer": None,
        "pre_tokenizer": BYTE_LEVEL,
        "post_processor": {**BYTE_LEVEL, "trim_offsets": False},
        "decoder": BYTE_LEVEL,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {token: token_id for token, token_id in encoder.items() if token_id < bpe.eot_id},
                  "merges": [merge.split(" ") for merge in merges]},
    }
    named = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    others = [name for name in bpe.special_tokens if name != EOT]  # a chat's role markers, say
    if others:
        named["additional_special_tokens"] = others
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **named,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
        "errors": "replace",
        "added_tokens_decoder": {str(special["id"]): {k: v for k, v in special.items() if k != "id"}
                                 for special in specials},
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    files = {
        "vocab.json": json.dumps(encoder, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(merge + "\n" for merge in merges),
        "tokenizer.json": json.dumps(fast, ensure_ascii=False),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(named, indent=2) + "\n",
    }
    for name, text in files.items():
        atomic_write(os.path.join(directory, name), text)
