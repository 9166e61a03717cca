"""chat/conversations.py: conversation files read and checked by line, and the proof that the loss is the
assistant's tokens only."""
import json

import pytest
import torch

from gpt2_llm.chat.conversations import IGNORE, batch, example, read_conversations
from gpt2_llm.chat.template import check_messages
from gpt2_llm.errors import UserError
from gpt2_llm.tests.helpers import make_small_model

CHATS = [
    {"messages": [{"role": "user", "content": "Who's there?"}, {"role": "assistant", "content": "Nay, answer me."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak."},
                  {"role": "assistant", "content": "I will."}, {"role": "user", "content": "More."},
                  {"role": "assistant", "content": "No."}]},
]


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_file_of_conversations_is_read_and_checked(tmp_path):
    conversations = read_conversations(write_lines(tmp_path / "chats.jsonl", [CHATS[0], "", CHATS[1]]))
    assert [[m.role for m in c] for c in conversations] == [["user", "assistant"],
                                                            ["system", "user", "assistant", "user", "assistant"]]


@pytest.mark.parametrize("line, message", [
    ("not json", ":1: not a JSON object"),
    ('{"text": "hi"}', ':1: expected {"messages"'),
    ('{"messages": [{"role": "user", "content": 5}]}', r":1: messages\[0\].content must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', ":1: the conversation has no assistant message"),
])
def test_a_bad_line_is_named(tmp_path, line, message):
    with pytest.raises(UserError, match=message):
        read_conversations(write_lines(tmp_path / "chats.jsonl", [line]))


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="holds no conversations"):
        read_conversations(write_lines(tmp_path / "chats.jsonl", [""]))


def test_targets_are_the_assistants_tokens_and_their_end_only(chat_bpe, tmp_path):
    conversation = read_conversations(write_lines(tmp_path / "c.jsonl", [CHATS[1]]))[0]
    x, y = example(conversation, chat_bpe, context=256)
    taught = y[y != IGNORE].tolist()
    end = chat_bpe.special_tokens["<|end|>"]
    assert taught == [*chat_bpe.encode("I will."), end, *chat_bpe.encode("No."), end]
    assert (y[y != IGNORE] == torch.cat((x[1:], torch.tensor([end])))[y != IGNORE]).all()  # y is x shifted


def test_the_loss_is_the_mean_over_the_assistants_tokens_and_nothing_else_moves_it(chat_bpe, tmp_path):
    conversations = read_conversations(write_lines(tmp_path / "c.jsonl", CHATS))
    x, y = batch([example(c, chat_bpe, context=256) for c in conversations], pad_id=chat_bpe.eot_id)
    model = make_small_model(vocab_size=chat_bpe.get_model_vocab_size(), max_seq_len=64)
    logits = model(x).detach().requires_grad_(True)
    learned = y != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[learned], y[learned])
    torch.testing.assert_close(model.loss(x, y), by_hand)
    by_hand.backward()
    untouched = logits.grad[~learned]
    assert untouched.abs().max() == 0 and logits.grad[learned].abs().max() > 0  # prompts and padding: no gradient


def test_a_long_conversation_keeps_its_start_within_the_context(chat_bpe):
    conversation = check_messages(CHATS[1]["messages"])
    x, y = example(conversation, chat_bpe, context=8)
    assert len(x) == len(y) == 8 and x[0] == chat_bpe.special_tokens["<|system|>"]


def test_the_shipped_conversations_are_valid_and_remade_exactly_by_their_script():
    import importlib.util

    from gpt2_llm.tests.helpers import REPO

    shipped = REPO / "data" / "shakespeare_chat.jsonl"
    conversations = read_conversations(shipped)
    assert len(conversations) == 2000 and sum(len(c) for c in conversations) > 4000
    spec = importlib.util.spec_from_file_location("make_shakespeare_chat", REPO / "data" / "make_shakespeare_chat.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")
    assert script.make(text) == shipped.read_text(encoding="utf-8")
