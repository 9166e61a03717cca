"""Conversation files -> what chat fine-tuning trains on: inputs, and targets masked to the assistant's tokens.

    conversations = read_conversations("chats.jsonl")     # each line {"messages": [{"role", "content"}, ...]}
    x, y = example(conversations[0], bpe, context=256)    # y is -100 wherever the model learns nothing
    x, y = batch([example(c, bpe, 256) for c in conversations[:8]], pad_id=bpe.eot_id)

The format is OpenAI's fine-tuning file (and the one most chat datasets ship as JSON lines): one conversation per
line. The loss is the model's own (model.loss ignores -100), so the mask is the whole of "train on the assistant
only": the system prompt, the user's words and the role markers are read, never predicted.
"""
import json

import torch

from gpt2_llm.chat.template import check_messages, render
from gpt2_llm.errors import UserError
from gpt2_llm.files import read_text_file

IGNORE = -100  # a target the loss skips


def read_conversations(path) -> list[list]:
    """A JSON-lines file of {"messages": [...]} -> the checked conversations; UserError naming the line and field.
    Each conversation needs an assistant reply (something to learn)."""
    conversations = []
    for lineno, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise UserError(f"{where}: not a JSON object ({error})") from None
        if not isinstance(record, dict) or "messages" not in record:
            raise UserError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        messages = check_messages(record["messages"], where=f"{where}: messages")
        if not any(m.role == "assistant" for m in messages):
            raise UserError(f"{where}: the conversation has no assistant message: nothing to learn from it")
        conversations.append(messages)
    if not conversations:
        raise UserError(f"{path} holds no conversations")
    return conversations


def example(messages, bpe, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One conversation -> (inputs, targets), each at most context long: targets[i] is the token after inputs[i]
    where the model learns it (an assistant's word or <|end|>), else IGNORE. A conversation longer than the context
    keeps its start."""
    ids, learned = render(messages, bpe)
    ids, learned = ids[: context + 1], learned[: context + 1]
    targets = [token if is_learned else IGNORE for token, is_learned in zip(ids[1:], learned[1:])]
    return torch.tensor(ids[:-1]), torch.tensor(targets)


def batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples of different lengths -> (B, T) inputs padded with pad_id and targets padded with IGNORE (padding
    comes after each conversation, where causal attention keeps it from changing what came before)."""
    length = max(len(x) for x, _ in examples)
    inputs = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        inputs[row, : len(x)], targets[row, : len(y)] = x, y
    return inputs, targets
