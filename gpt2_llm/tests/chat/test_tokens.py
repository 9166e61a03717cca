"""chat/tokens.py and the model's resize_token_embeddings: chat tokens added to a vocab and a model without
changing anything the model computed for text."""
import pytest
import torch

from bpe import BPE
from gpt2_llm.chat.template import CHAT_TOKENS
from gpt2_llm.chat.tokens import add_chat_tokens
from gpt2_llm.tests.helpers import make_small_model


@pytest.fixture
def base_bpe(vocab):
    bpe = BPE(str(vocab))
    bpe.load()
    return bpe


def test_chat_tokens_land_in_padding_rows_and_start_as_the_mean(base_bpe):
    model = make_small_model(vocab_size=base_bpe.get_model_vocab_size())  # 300 tokens in 320 rows
    ids = torch.tensor([base_bpe.encode("To be, or not to be")])
    before = model(ids)
    chat_ids = add_chat_tokens(model, base_bpe)
    assert chat_ids == list(range(300, 304)) and model.config.vocab_size == 320
    after = model(ids)
    kept = [i for i in range(320) if i not in chat_ids]
    torch.testing.assert_close(after[..., kept], before[..., kept], atol=0, rtol=0)  # every other score as before
    mean = model.wte.weight[:base_bpe.eot_id].mean(0)
    for token_id in chat_ids:
        torch.testing.assert_close(model.wte.weight[token_id], mean)


def test_a_full_table_grows_and_stays_tied(base_bpe):
    model = make_small_model(vocab_size=base_bpe.vocab_size)  # no padding rows at all
    ids = torch.tensor([base_bpe.encode("To be, or not to be")])
    before = model(ids)
    add_chat_tokens(model, base_bpe)
    assert model.config.vocab_size == model.wte.weight.shape[0] == base_bpe.get_model_vocab_size() == 320
    assert model.lm_head.weight is model.wte.weight
    torch.testing.assert_close(model(ids)[..., :300], before[..., :300], atol=1e-6, rtol=0)
    model.loss(ids, ids).backward()  # one Parameter, trainable, with a gradient for every row
    assert model.wte.weight.grad.shape == (320, model.config.embedding_dim)


def test_adding_them_twice_changes_nothing(base_bpe):
    model = make_small_model(vocab_size=base_bpe.get_model_vocab_size())
    first = add_chat_tokens(model, base_bpe)
    with torch.no_grad():
        model.wte.weight[first] += 1.0  # as if trained
    trained = model.wte.weight.clone()
    assert add_chat_tokens(model, base_bpe) == first and base_bpe.vocab_size == 304
    torch.testing.assert_close(model.wte.weight, trained, atol=0, rtol=0)
    assert set(CHAT_TOKENS) <= set(base_bpe.special_tokens)
