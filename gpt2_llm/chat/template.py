"""A conversation -> token ids: the chat template, and which tokens a chat model learns to say.

    ids, learned = render(messages, bpe)                              # a whole conversation, to train on
    ids, _ = render(messages, bpe, add_generation_prompt=True)        # a conversation so far, to continue

A conversation is OpenAI's list of messages, [{"role": "system" | "user" | "assistant", "content": "..."}, ...].
Two templates:

    markers  (CHAT_TEMPLATE)  each turn is its role's special token, the content, then <|end|>:
                              <|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>
                              The tokens are added to the vocab by chat fine-tuning (bpe.add_special_tokens), so a
                              user's text can never forge a turn: "<|user|>" typed in a message is plain text.
    plain    (PLAIN_TEMPLATE) for a model that was never chat-tuned: turns as text, "User: Hi\n\nAssistant:",
                              ending where the model writes "\n\nUser:" (a stop string); to prompt with, not to
                              train on.

learned[i] says whether ids[i] is a token the model is taught to produce (markers template): an assistant's content
and the <|end|> after it (so it learns to stop), never the role markers or the other turns; the loss is masked to
these.
"""
from dataclasses import dataclass

from gpt2_llm.errors import UserError

ROLES = ("system", "user", "assistant")
MARKERS = {role: f"<|{role}|>" for role in ROLES}
END = "<|end|>"  # the end of a turn: where a chat model stops
CHAT_TOKENS = (*MARKERS.values(), END)
CHAT_TEMPLATE, PLAIN_TEMPLATE = "markers", "plain"
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP = "\n\nUser:"
STOPS = {CHAT_TEMPLATE: (), PLAIN_TEMPLATE: (PLAIN_STOP,)}  # stop strings a template's replies end at (besides <|end|>)
# The markers template in Hugging Face's Jinja, for `export`: apply_chat_template gives render's ids.
JINJA = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def check_messages(messages, where: str = "messages") -> list[Message]:
    """OpenAI's messages -> [Message], or UserError naming the field: messages[1].role, messages[0].content, ...

    A conversation needs a user turn; a system message may only open it."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where} must be a non-empty list of {{\"role\": ..., \"content\": ...}} objects")
    checked = []
    for i, message in enumerate(messages):
        field = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise UserError(f"{field} must be an object with a role and a content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"{field}.role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise UserError(f"{field}.content must be a string, got {type(content).__name__}")
        if role == "system" and i > 0:
            raise UserError(f"{field}: a system message may only come first")
        checked.append(Message(role, content))
    if not any(m.role == "user" for m in checked):
        raise UserError(f"{where} has no user message")
    return checked


def render(messages, bpe, template: str = CHAT_TEMPLATE, add_generation_prompt: bool = False):
    """Messages (checked) -> (ids, learned): the conversation's token ids, and for each whether it is one the
    model learns to produce. add_generation_prompt: end with the assistant's opening, for the model to continue."""
    if template not in (CHAT_TEMPLATE, PLAIN_TEMPLATE):
        raise UserError(f"unknown chat template {template!r}; use {CHAT_TEMPLATE} or {PLAIN_TEMPLATE}")
    messages = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
    ids, learned = [], []

    def add(piece_ids, is_learned):
        ids.extend(piece_ids)
        learned.extend([is_learned] * len(piece_ids))

    if template == CHAT_TEMPLATE:
        specials = bpe.special_tokens
        missing = [name for name in CHAT_TOKENS if name not in specials]
        if missing:
            raise UserError(f"this vocab has no {', '.join(missing)}: the chat template needs a chat-tuned model's "
                            "vocab (finetune --chat adds them), or use the plain template")
        for message in messages:
            add([specials[MARKERS[message.role]]], False)
            add(bpe.encode(message.content), message.role == "assistant")  # specials in content: plain text
            add([specials[END]], message.role == "assistant")
        if add_generation_prompt:
            add([specials[MARKERS["assistant"]]], False)
        return ids, learned
    # Plain text is encoded whole, as the model saw text in training (pieces encoded apart would split "\n\nUser"
    # otherwise); it is a template to prompt a base model with, not to train on: nothing is marked learned.
    text = "".join(f"{PLAIN_NAMES[m.role]}: {m.content}\n\n" for m in messages)
    ids = bpe.encode(text + (f"{PLAIN_NAMES['assistant']}:" if add_generation_prompt else ""))
    return ids, [False] * len(ids)


def template_for(bpe) -> str:
    """The template a model with this vocab chats through: the markers when the vocab has the chat tokens (a
    chat-tuned model's), else the plain one."""
    return CHAT_TEMPLATE if all(name in bpe.special_tokens for name in CHAT_TOKENS) else PLAIN_TEMPLATE


def chat_template_record(bpe, chat: bool) -> dict:
    """What a checkpoint of a chat run records of its template ({"chat_template": "markers"}; {} for other runs):
    the model says how it was taught to converse, and `check` verifies that its vocab can say it too."""
    return {"chat_template": template_for(bpe)} if chat else {}


def jinja_for(bpe) -> str | None:
    """The chat template to export with this vocab, in Hugging Face's Jinja (None for a vocab without chat tokens:
    the plain template is for prompting a base model, not a template of its own)."""
    return JINJA if template_for(bpe) == CHAT_TEMPLATE else None
