"""Continuous batching: one thread decodes every running sequence together, one token per step.

    engine = Engine(model, bpe, max_batch=8, max_queue=64)
    engine.start()                # decode in a new thread; or engine.run() to decode in this one until close()
    engine.submit([Sequence(prompt_ids, settings, on_token)])   # on_token(TokenEvent), called from the decode thread
    ...
    engine.cancel(sequence)                                      # the client went away: free its slot
    engine.close()

Decoding is bound by memory bandwidth: each step reads every weight once, whether for one row or
eight, so rows decoded together cost little more than one. Each loop of the thread:
  1. admit   waiting sequences take free slots; each runs its prompt alone (a prefill, Slots)
  2. choose  every running sequence picks its next token from its own logits with its own settings
             (temperature, top-k, top-p, repetition penalty, seed) and checks its own stop rules
             (max_tokens, <|endoftext|>, stop strings); a finished one leaves its slot at once
  3. step    one batched forward for the rest, each row at its own position
A request that arrives mid-generation therefore joins at the next step, not after the batch ends.

Which thread decodes matters on a small CPU. Each thread that runs PyTorch ops gets its own OpenMP
team, and once a process has more OpenMP threads than cores, OpenMP stops spinning between parallel
regions and puts its threads to sleep: every op of the decode then pays a wake-up. `serve` therefore
decodes in the thread that loaded the model (engine.run() in the main thread) and runs the HTTP server
in another, which does no tensor work: one client's tokens/s on GPT-2 small, 2 cores, went from
0.86-0.94x `predict`'s to 1.15x (bench/serve.py).
"""
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpt2_llm.infer.generation import cache_dtype
from gpt2_llm.infer.sampling import SamplingSettings, apply_repetition_penalty, sample_next_token
from gpt2_llm.serving.slots import Slots
from gpt2_llm.infer.text_stream import TextStream

log = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    """One chosen token, as the engine hands it to the request: text is what can be shown now (often '' while
    a character or a possible stop string is incomplete); finish_reason ends the sequence ("stop", "length": the
    values OpenAI defines; a sequence whose decoding failed ends with "stop", and the log says why)."""

    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None  # (token id, log probability), most likely first
    finish_reason: str | None = None


class QueueFull(Exception):
    """The engine holds max_batch running and max_queue waiting sequences already."""


@dataclass(eq=False)
class Sequence:
    """One continuation being generated: its prompt, its settings, and where its tokens go."""

    prompt_ids: list[int]
    settings: SamplingSettings
    on_token: Callable[[TokenEvent], None]
    seed_offset: int = 0  # choice index: n choices of one seeded request draw differently
    score_prompt: bool = False  # fill prompt_events: each prompt token's logprob (OpenAI's echo + logprobs)
    prompt_events: list[TokenEvent] | None = None
    cancelled: bool = False
    generated: int = 0
    ids: list[int] = field(default_factory=list)  # prompt + chosen tokens, for the repetition penalty
    length: int = 0  # positions in its slot's cache
    slot: int | None = None
    logits: torch.Tensor | None = None  # (V,) for its next token, from the last prefill or step
    stream: TextStream | None = None
    generator: torch.Generator | None = None


class Engine:
    def __init__(self, model, bpe, max_batch: int = 8, max_queue: int = 64):
        device = model.wte.weight.device
        self.slots = Slots(model, max_batch, cache_dtype(device))
        self.device = device
        self.token_bytes = bpe.token_bytes()
        self.eot_id = bpe.eot_id
        self.vocab_size = bpe.vocab_size  # the embedding may be padded past the vocab: never choose padding
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # running[s] sits in slot s
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}
        self._lock = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- called from the server's threads ---------------------------------------------------------

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all or none), or raise QueueFull."""
        with self._lock:
            if len(self.running) + len(self.waiting) + len(sequences) > self.max_batch + self.max_queue:
                raise QueueFull(f"the server is busy: {len(self.running)} sequences decoding and "
                                f"{len(self.waiting)} waiting; try again shortly")
            for sequence in sequences:
                self.waiting.append(sequence)
            self._lock.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Stop generating sequence; its slot is freed before the next step."""
        with self._lock:
            sequence.cancelled = True
            self._lock.notify()

    def load(self) -> dict:
        """What /health reports: sequences running and waiting, and counts of how they ended."""
        with self._lock:
            return {"running": len(self.running), "waiting": len(self.waiting), "max_batch": self.max_batch,
                    "max_queue": self.max_queue, **self.counts}

    def close(self) -> None:
        """End run() (or the thread of start()) after its current step."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the decode thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Decode in a new daemon thread (tests, benchmarks; see the module's note on threads)."""
        self._thread = threading.Thread(target=self.run, name="decode", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Decode in this thread until close()."""
        while True:
            with self._lock:
                while not (self.running or self.waiting or self._closing):
                    self._lock.wait()
                if self._closing:
                    return
                self._drop_cancelled()
                admitted = []
                while self.waiting and len(self.running) < self.max_batch:
                    sequence = self.waiting.popleft()
                    sequence.slot = len(self.running)
                    self.running.append(sequence)
                    admitted.append(sequence)
            try:
                self._advance(admitted)
            except Exception:  # the batch's step itself failed: no one sequence to blame, so it ends them all
                log.exception("decoding step failed; ending the %d running sequences", len(self.running))
                with self._lock:
                    for sequence in list(self.running):
                        self._fail(sequence)

    def _advance(self, admitted: list[Sequence]) -> None:
        for sequence in list(self.running):  # a copy: finishing one reorders the list
            try:
                if sequence in admitted:
                    self._start(sequence)
                    if sequence.settings.max_tokens == 0:  # the prompt scored (echo), nothing to generate
                        with self._lock:
                            self._finish(sequence, TokenEvent(None, "", finish_reason="length"), "finished")
                        continue
                self._choose(sequence)
            except Exception:  # one sequence's fault (its prompt, its settings) ends that sequence only
                log.exception("decoding one sequence failed; ending it, the others go on")
                with self._lock:
                    self._fail(sequence)
        if not self.running:
            return
        rows = self.running
        ids = torch.tensor([s.ids[-1] for s in rows], device=self.device)
        logits = self.slots.step(ids, [s.length for s in rows])  # (B, V)
        for row, sequence in enumerate(rows):
            sequence.length += 1
            sequence.logits = logits[row]

    def _start(self, sequence: Sequence) -> None:
        settings = sequence.settings
        sequence.ids = list(sequence.prompt_ids)
        sequence.stream = TextStream(self.token_bytes, settings.stop)
        sequence.generator = torch.Generator()  # on the CPU whatever the device: a seed gives the same text anywhere
        if settings.seed is None:
            sequence.generator.seed()
        else:
            sequence.generator.manual_seed(settings.seed + sequence.seed_offset)
        prompt = torch.tensor(sequence.prompt_ids, device=self.device)
        logits = self.slots.prefill(sequence.slot, prompt, every_position=sequence.score_prompt)
        if sequence.score_prompt:  # token t scored by the logits after t - 1; the first has nothing before it
            sequence.prompt_events = [TokenEvent(sequence.prompt_ids[0], "")]
            for position, token in enumerate(sequence.prompt_ids[1:]):
                event = TokenEvent(token, "")
                self._add_logprobs(event, logits[position], settings.logprobs or 0)
                sequence.prompt_events.append(event)
            logits = logits[-1]
        sequence.logits = logits
        sequence.length = len(sequence.prompt_ids)

    def _choose(self, sequence: Sequence) -> None:
        """Pick sequence's next token, hand it over, and end the sequence if a stop rule says so."""
        if sequence.cancelled:
            return
        settings = sequence.settings
        logits = sequence.logits[: self.vocab_size].float()[None]  # (1, V), sampling in fp32
        if settings.repetition_penalty != 1.0:
            seen = torch.tensor([sequence.ids], device=logits.device)
            logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
        token = int(sample_next_token(logits, settings.temperature, settings.top_k, settings.top_p,
                                      sequence.generator)[0])
        sequence.ids.append(token)
        sequence.generated += 1
        event = TokenEvent(token, "")
        if settings.logprobs is not None:
            self._add_logprobs(event, sequence.logits, settings.logprobs)
        if token >= self.eot_id:  # <|endoftext|>, or a chat vocab's <|end|> (any special token ends the text)
            event.text, event.finish_reason = sequence.stream.finish(), "stop"
        else:
            event.text = sequence.stream.push(token)
            if sequence.stream.stopped:
                event.finish_reason = "stop"
            elif sequence.generated >= settings.max_tokens:
                event.text += sequence.stream.finish()
                event.finish_reason = "length"
        if event.finish_reason is None:
            sequence.on_token(event)
        else:
            with self._lock:
                self._finish(sequence, event, "finished")

    def _add_logprobs(self, event: TokenEvent, logits: torch.Tensor, count: int) -> None:
        """The model's own distribution (before temperature, top-k, top-p and penalty): how likely it found the
        chosen token and its `count` most likely alternatives. Normalized over every row of the output, the
        padding rows past the vocab too, as in training, `evaluate` and transformers (so that a harness scores the
        same here and on an exported model); only the vocab's tokens are reported."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)[: self.vocab_size]
        event.logprob = float(logprobs[event.token_id])
        if count:
            top = torch.topk(logprobs, min(count, self.vocab_size))
            event.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist()))

    def _drop_cancelled(self) -> None:
        """Free the slots of sequences whose clients left (lock held)."""
        for sequence in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(sequence)
            self.counts["cancelled"] += 1
        for sequence in [s for s in self.running if s.cancelled]:
            self._release(sequence)
            self.counts["cancelled"] += 1

    def _fail(self, sequence: Sequence) -> None:
        """End a sequence whose decoding raised, with what it had (lock held). "stop" is the finish reason OpenAI's
        clients know for text that ends before max_tokens; the log and /health ("failed") say why."""
        if sequence.slot is not None:
            self._finish(sequence, TokenEvent(None, "", finish_reason="stop"), "failed")

    def _finish(self, sequence: Sequence, event: TokenEvent, outcome: str) -> None:
        """Hand over the last event and free the slot (lock held)."""
        if not sequence.cancelled:
            sequence.on_token(event)
        self._release(sequence)
        self.counts[outcome] += 1

    def _release(self, sequence: Sequence) -> None:
        """Take sequence out of the batch; the last running sequence moves into its slot, so that the rows in
        use stay slots 0..B-1 (lock held)."""
        last = self.running.pop()
        if last is not sequence:
            self.slots.move(last.slot, sequence.slot, last.length)
            self.running[sequence.slot] = last
            last.slot = sequence.slot
        sequence.slot = None
