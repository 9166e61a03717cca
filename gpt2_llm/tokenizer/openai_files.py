"""OpenAI's GPT-2 tokenizer files, encoder.json (token -> id) and vocab.bpe (the merges in rank order), read into the
two things that define a vocab here: which byte each of ids 0..255 is, and the list of merged pairs (BPE.from_gpt2
builds its vocab from them), and any vocab of ours spelled back the same way (what `export` writes for Hugging Face
and GGUF).

No torch, and nothing of bpe.py, which imports this module.
"""
import json

from gpt2_llm.errors import UserError
from gpt2_llm.files import read_text_file


def _gpt2_bytes_to_unicode():
    """GPT-2's files spell each byte as a printable character: printable Latin-1 stands for itself, the other bytes
    are shifted to U+0100 and up. {32: "Ġ", 97: "a", 10: "Ċ", ...}"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for shift, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + shift)
    return mapping


def read_gpt2_files(encoder_json_path, vocab_bpe_path, eot):
    """(byte_values, merges, specials) for BPE._build from OpenAI's files, whose tokens are spelled with GPT-2's
    byte-to-unicode characters ("Ġthe" is b" the"); UserError when the two files do not make one vocab. eot: the
    special token <|endoftext|>, which encoder.json holds right after the last merge; any special tokens after it
    (a chat vocab that `export` wrote: <|user|>, ...) follow it in specials.

    read_gpt2_files("encoder.json", "vocab.bpe", EOT) -> ([33, 34, ...], [(220, 83), ...], ["<|endoftext|>"])
    """
    try:
        encoder = json.loads(read_text_file(encoder_json_path))
    except json.JSONDecodeError as e:
        raise UserError(f"{encoder_json_path} is not valid JSON: {e.msg} (line {e.lineno})") from e
    byte_decoder = {char: b for b, char in _gpt2_bytes_to_unicode().items()}
    id_to_token = {token_id: token for token, token_id in encoder.items() if token != eot}
    byte_values = []
    for token_id in range(256):
        token = id_to_token.get(token_id, "")
        if len(token) != 1 or token not in byte_decoder:
            raise UserError(f"{encoder_json_path}: id {token_id} should be a single byte, found {token!r}")
        byte_values.append(byte_decoder[token])
    merges = []
    lines = read_text_file(vocab_bpe_path).split("\n")
    lines = [line for line in lines[1 if lines[0].startswith("#version") else 0 :] if line]
    for rank, line in enumerate(lines):
        left, _, right = line.partition(" ")
        ids = encoder.get(left), encoder.get(right), encoder.get(left + right)
        if None in ids or ids[2] != 256 + rank:
            raise UserError(f"{vocab_bpe_path}: merge {rank} ({line!r}) does not match {encoder_json_path}")
        if max(ids[:2]) >= ids[2]:  # as in a vocab.txt; merge_by_rank_fast relies on it
            raise UserError(f"{vocab_bpe_path}: merge {rank} ({line!r}) uses a token that is merged only after it")
        merges.append(ids[:2])
    eot_id = 256 + len(merges)
    specials = [token for token, _ in sorted(((t, i) for t, i in encoder.items() if i >= eot_id), key=lambda x: x[1])]
    if encoder.get(eot) != eot_id or len(encoder) != eot_id + len(specials) or specials[:1] != [eot] or any(
            encoder[token] != eot_id + i or not (token.startswith("<|") and token.endswith("|>"))
            for i, token in enumerate(specials)):
        raise UserError(f"{encoder_json_path} and {vocab_bpe_path} do not belong together")
    return byte_values, merges, specials


def gpt2_spelling(bpe) -> tuple[dict[str, int], list[str]]:
    """A vocab spelled as OpenAI's files spell theirs: (encoder: token -> id, the special tokens included, as they
    are written; merges as "left right" lines in rank order). UserError if two tokens have the same bytes (a vocab
    can learn the same string by two merges; no byte-level BPE file can say which id it is).

    gpt2_spelling(BPE.from_gpt2(...)) -> ({"!": 0, ..., "<|endoftext|>": 50256}, ["Ġ t", "Ġ a", ...])
    """
    spell = _gpt2_bytes_to_unicode()
    token_bytes = bpe.token_bytes()
    names = ["".join(spell[b] for b in token_bytes[token_id]) for token_id in range(bpe.eot_id)]
    encoder = {}
    for token_id, name in enumerate(names):
        if name in encoder:
            raise UserError(f"{bpe.vocab_path}: tokens {encoder[name]} and {token_id} are the same bytes "
                            f"({token_bytes[token_id]!r}); a byte-level BPE file cannot hold both")
        encoder[name] = token_id
    encoder.update(bpe.special_tokens)
    return encoder, [f"{names[left]} {names[right]}" for left, right in bpe.merges()]
