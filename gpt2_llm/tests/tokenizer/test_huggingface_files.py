"""tokenizer/huggingface_files.py: the files it writes make transformers' tokenizers (fast and slow) encode and
decode exactly as our BPE does, for a vocab of our own and for GPT-2's."""
import pytest

from bpe import BPE
from gpt2_llm.errors import UserError
from gpt2_llm.tests.tokenizer_fixtures import NASTY, TRICKY
from gpt2_llm.tokenizer.huggingface_files import TOKENIZER_FILES, write_tokenizer_files

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["ours", "gpt2"])
def pair(request, vocab, gpt2_bpe, tmp_path_factory):
    """(our BPE, transformers' fast tokenizer, its slow one) over the same written files."""
    if request.param == "ours":
        bpe = BPE(str(vocab))
        bpe.load()
    else:
        bpe = gpt2_bpe
    directory = tmp_path_factory.mktemp(f"tokenizer-{request.param}")
    write_tokenizer_files(bpe, directory, context=64)
    assert sorted(p.name for p in directory.iterdir()) == sorted(TOKENIZER_FILES)
    fast = transformers.AutoTokenizer.from_pretrained(directory)
    slow = transformers.GPT2Tokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    return bpe, fast, slow


@pytest.mark.parametrize("text", NASTY + [TRICKY])
def test_transformers_encodes_and_decodes_as_we_do(pair, text):
    bpe, fast, slow = pair
    ours = bpe.encode(text, allowed_special="all")
    assert fast(text)["input_ids"] == ours
    assert slow(text)["input_ids"] == ours
    assert fast.decode(ours) == bpe.decode(ours)


def test_the_end_of_text_token_and_the_context(pair):
    bpe, fast, _ = pair
    assert fast.eos_token_id == fast.bos_token_id == bpe.eot_id
    assert fast.model_max_length == 64 and len(fast) == bpe.eot_id + 1
    assert fast("x")["input_ids"] == bpe.encode("x")  # no BOS added


def test_a_vocab_with_two_tokens_of_the_same_bytes_is_refused(tmp_path):
    bpe = BPE(str(tmp_path / "vocab.txt"))
    bpe._build(list(range(256)), [(97, 98), (256, 99), (98, 99), (97, 258)])  # "ab"+"c" and "a"+"bc": "abc" twice
    with pytest.raises(UserError, match="the same bytes"):
        write_tokenizer_files(bpe, tmp_path, context=64)
    assert list(tmp_path.iterdir()) == []


def test_added_special_tokens_are_transformers_special_tokens(vocab, tmp_path):
    bpe = BPE(str(vocab))
    bpe.load()
    ids = bpe.add_special_tokens(["<|user|>", "<|assistant|>", "<|end|>"])
    write_tokenizer_files(bpe, tmp_path, context=64)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "<|user|>Who's there?<|end|><|assistant|>Nay, answer me<|end|>"
    assert fast(text)["input_ids"] == bpe.encode(text, allowed_special="all")
    assert fast.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|end|>"]) == ids
    assert fast.decode(bpe.encode(text, allowed_special="all"), skip_special_tokens=True) == "Who's there?Nay, answer me"
    assert len(fast) == bpe.vocab_size
