"""A conversation with a model: the history, the template applied, the reply streamed until the turn ends.

    session = ChatSession(model, bpe, SamplingSettings(max_tokens=200, temperature=0))
    for piece in session.reply("Who says: 'O Romeo, Romeo'?"):
        print(piece, end="")
    session.reset()                      # forget the history (a system message stays)

A chat-tuned vocab (one with the chat tokens) gets the markers template and stops at <|end|>; any other model gets
the plain template ("User: ...\n\nAssistant:") and stops where it starts the user's next turn. The history is cut
from its oldest turns (never the system message, never the newest user turn) until the prompt and the reply fit
the model's context.
"""
from gpt2_llm.chat.template import END, PLAIN_TEMPLATE, STOPS, Message, render, template_for


class ChatSession:
    def __init__(self, model, bpe, settings, system: str | None = None, generator=None):
        self.model, self.bpe, self.settings, self.generator = model, bpe, settings, generator
        self.template = template_for(bpe)
        self.system = [Message("system", system)] if system else []
        self.turns: list[Message] = []

    def reset(self) -> None:
        self.turns = []

    def prompt_ids(self, turns) -> list[int]:
        """The prompt for the next reply: the newest turns that fit beside max_tokens in the context."""
        context = self.model.config.max_seq_len
        while True:
            ids, _ = render(self.system + turns, self.bpe, self.template, add_generation_prompt=True)
            if len(ids) + self.settings.max_tokens <= context or len(turns) <= 1:
                return ids[-(context - 1):]  # a lone turn too long for the context keeps its end
            turns = turns[2:] if turns[0].role == "user" and len(turns) > 2 else turns[1:]

    def reply(self, text: str):
        """Add the user's text and stream the model's reply, piece by piece; the reply joins the history."""
        import torch

        from gpt2_llm.infer.generation import generate_tokens
        from gpt2_llm.infer.text_stream import TextStream

        self.turns.append(Message("user", text))
        ids = self.prompt_ids(self.turns)
        device = self.model.wte.weight.device
        stream = TextStream(self.bpe.token_bytes(), [*self.settings.stop, *STOPS[self.template]])
        end_id = self.bpe.special_tokens.get(END, self.bpe.eot_id)
        pieces = []
        tokens = generate_tokens(self.model, torch.tensor([ids], device=device), self.settings, self.generator,
                                 eos_token_id=end_id, vocab_size=self.bpe.vocab_size)
        try:
            for next_ids in tokens:
                token_id = int(next_ids[0])
                if token_id == end_id or token_id in self.bpe.special_tokens.values():  # the turn (or text) ends
                    break
                piece = stream.push(token_id)
                pieces.append(piece)
                yield piece
                if stream.stopped:
                    break
        finally:
            tokens.close()
        pieces.append(stream.finish())
        yield pieces[-1]
        self.turns.append(Message("assistant", "".join(pieces).strip() if self.template == PLAIN_TEMPLATE
                                  else "".join(pieces)))
