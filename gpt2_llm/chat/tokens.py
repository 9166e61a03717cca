"""A model and its vocab made ready to chat: the chat tokens in the vocab, and embedding rows for them.

    ids = add_chat_tokens(model, bpe)    # <|system|> <|user|> <|assistant|> <|end|>: their ids

The vocab gains the special tokens after <|endoftext|> (bpe.add_special_tokens: a vocab file of its own, with a new
fingerprint). They usually land in the rows the embedding was padded with (its rows are the vocab rounded up to 64);
past them the table grows. Each new token's row starts as the mean of the vocab's token rows: a token the model never
saw then starts with an average prediction, not a random spike in every softmax (Hewitt, "Initializing New Word
Embeddings for Pretrained Language Models", 2021). A model and vocab that have the tokens already are unchanged.
"""
import torch

from gpt2_llm.chat.template import CHAT_TOKENS


def add_chat_tokens(model, bpe) -> list[int]:
    """Add CHAT_TOKENS to bpe and rows for them to model (in place) -> their ids, in CHAT_TOKENS' order."""
    return add_tokens(model, bpe, CHAT_TOKENS)


@torch.no_grad()
def add_tokens(model, bpe, names) -> list[int]:
    """Add the special tokens names to bpe and rows for the new ones to model (in place) -> their ids."""
    had = set(bpe.special_tokens)
    ids = bpe.add_special_tokens(names)
    new = [token_id for name, token_id in zip(names, ids) if name not in had]
    if model.config.vocab_size < bpe.get_model_vocab_size():
        model.resize_token_embeddings(bpe.get_model_vocab_size())
    weight = model.wte.weight
    weight[new] = weight[: bpe.eot_id].mean(dim=0)
    return ids
