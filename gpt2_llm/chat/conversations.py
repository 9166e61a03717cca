"""Conversation files -> what chat fine-tuning trains on: inputs, and targets masked to the assistant's tokens.

    conversations = read_conversations("chats.jsonl")     # each line {"messages": [{"role", "content"}, ...]}
    x, y = example(conversations[0], bpe, context=256)    # y is -100 wherever the model learns nothing
    x, y = batch([example(c, bpe, 256) for c in conversations[:8]], pad_id=bpe.eot_id)
    data = ConversationDataset(conversations, bpe, context_length=256, val_fraction=0.1)   # what Trainer draws on

The format is OpenAI's fine-tuning file (and the one most chat datasets ship as JSON lines): one conversation per
line. The loss is the model's own (model.loss ignores -100), so the mask is the whole of "train on the assistant
only": the system prompt, the user's words and the role markers are read, never predicted.
"""
import json
import math

import torch

from gpt2_llm.chat.template import CHAT_TEMPLATE, check_messages, render
from gpt2_llm.data.dataset import IGNORE_INDEX as IGNORE
from gpt2_llm.errors import UserError
from gpt2_llm.files import read_text_file


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


class ConversationDataset:
    """Conversations as Trainer's data, like data.dataset.TokenDataset: the last val_fraction of them (at least one)
    held out, random batches of whole conversations to train on, the held-out ones in order to evaluate on (the
    loss over their assistant tokens: what chat fine-tuning is for).

    train, val: lists of (inputs, targets), one per conversation (those with an assistant token within the context).
    """

    def __init__(self, conversations, bpe, context_length: int, val_fraction: float = 0.1):
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        self.bpe, self.context_length = bpe, context_length
        examples = [(c, example(c, bpe, context_length)) for c in conversations]
        kept = [(c, e) for c, e in examples if (e[1] != IGNORE).any()]  # an assistant token inside the context
        self.dropped = len(examples) - len(kept)
        num_val = min(len(kept) - 1, math.ceil(len(kept) * val_fraction)) if val_fraction else 0
        if len(kept) - num_val < 1:
            raise UserError(f"no conversation has an assistant token within the first {context_length} tokens: "
                            "nothing to train on; raise --context")
        self.train = [e for _, e in kept[: len(kept) - num_val]]
        self.val = [e for _, e in kept[len(kept) - num_val:]]
        self.val_conversations = [c for c, _ in kept[len(kept) - num_val:]]

    def random_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, len(self.train), (batch_size,), generator=generator).tolist()
        return batch([self.train[row] for row in rows], self.bpe.eot_id)

    def eval_batches(self, batch_size: int, max_tokens: int):
        """The held-out conversations in order, in batches, until max_tokens inputs have been scored."""
        seen = 0
        for start in range(0, len(self.val), batch_size):
            if seen >= max_tokens:
                return
            examples = self.val[start: start + batch_size]
            seen += sum(len(x) for x, _ in examples)
            yield batch(examples, self.bpe.eot_id)

    def windows_per_epoch(self) -> int:
        return len(self.train)

    def sample_prompt(self) -> torch.Tensor:
        """The first held-out conversation up to its first assistant reply, opened for the model to give it."""
        conversation = (self.val_conversations or [None])[0]
        if conversation is None:
            return torch.tensor([self.bpe.special_tokens["<|user|>"]])
        first_reply = next(i for i, m in enumerate(conversation) if m.role == "assistant")
        ids, _ = render(conversation[:first_reply], self.bpe, CHAT_TEMPLATE, add_generation_prompt=True)
        return torch.tensor(ids[-self.context_length // 2:])

    def describe(self) -> str:
        dropped = f" ({self.dropped} with no assistant token within the context left out)" if self.dropped else ""
        return f"{len(self.train):,} train / {len(self.val):,} held-out conversations{dropped}"
