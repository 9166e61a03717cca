"""bench/llamacpp_export.py's own side of the comparison, which needs no llama.cpp: the perplexity windows and the
bytes a generator that stops at <|endoftext|> prints."""
import math
import sys

import torch
import torch.nn.functional as F

from bpe import BPE
from gpt2_llm.tests.helpers import REPO, make_small_model

sys.path.insert(0, str(REPO))

from bench import llamacpp_export  # noqa: E402


def test_our_perplexity_scores_each_windows_second_half_only(vocab):
    bpe = BPE(str(vocab))
    bpe.load()
    model = make_small_model(vocab_size=bpe.get_model_vocab_size())
    ids = bpe.encode((REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")[:2000])[: 3 * 32 + 5]
    # Reference: each whole window through the model, the first half of its targets ignored, the 5 leftover ids unused.
    windows = torch.tensor(ids[: 3 * 32]).view(3, 32)
    targets = windows[:, 1:].clone()
    targets[:, :16] = -100  # the logits at positions 0..15 are not scored; position 16 predicts token 17
    with torch.no_grad():
        logits = model(windows)[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    assert (targets != -100).sum() == 3 * 15  # 32 - 16 - 1 scored per window, as llama-perplexity counts
    assert math.isclose(llamacpp_export.our_perplexity(model, ids, 32), math.exp(nll.item()), rel_tol=1e-6)


def test_printed_bytes_stop_after_the_first_end_of_text_and_spell_it(vocab):
    bpe = BPE(str(vocab))
    bpe.load()
    hello, eot = bpe.encode("Hello"), bpe.eot_id
    assert llamacpp_export.printed_bytes(bpe, hello + [eot] + hello) == b"Hello<|endoftext|>"
    assert llamacpp_export.printed_bytes(bpe, hello) == b"Hello"
    half_of_e_acute = next(i for i, piece in bpe.token_bytes().items() if piece == b"\xc3")
    assert llamacpp_export.printed_bytes(bpe, [half_of_e_acute]) == b"\xc3"  # bytes as printed, not U+FFFD
