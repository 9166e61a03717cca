"""serving/slots.py and serving/engine.py without HTTP: rows at their own positions, continuous batching."""
import threading

import pytest
import torch

from gpt2_llm.serving.slots import Slots
from gpt2_llm.infer.sampling import SamplingSettings
from gpt2_llm.serving.engine import Engine, Sequence
from gpt2_llm.tests.helpers import wide_logits_model


@pytest.mark.parametrize("use_rope", [False, True], ids=["learned-positions", "rope"])
def test_rows_at_different_positions_get_the_logits_of_their_own_sequence(small_model, one_thread, use_rope):
    model = small_model(use_rope=use_rope)
    torch.manual_seed(1)
    sequences = [torch.randint(0, 101, (length,)) for length in (5, 9, 2)]
    slots = Slots(model, max_batch=4, cache_dtype=torch.float32)
    for slot, ids in enumerate(sequences):
        slots.prefill(slot, ids[:-1])  # all but the last token, each from position 0
    last = torch.stack([ids[-1] for ids in sequences])
    positions = [len(ids) - 1 for ids in sequences]
    logits = slots.step(last, positions)  # one step, three lengths
    with torch.no_grad():
        expected = torch.stack([model(ids[None])[0, -1] for ids in sequences])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_a_moved_slot_continues_where_it_was(small_model, one_thread):
    model = small_model()
    ids = torch.arange(1, 8)
    slots = Slots(model, max_batch=3, cache_dtype=torch.float32)
    slots.prefill(2, ids[:-1])
    slots.move(2, 0, len(ids) - 1)  # slot 0's sequence finished; the last one takes its place
    logits = slots.step(ids[-1:], [len(ids) - 1])
    with torch.no_grad():
        torch.testing.assert_close(logits[0], model(ids[None])[0, -1], atol=1e-4, rtol=1e-4)


def run_greedy(engine, prompts, max_tokens, stagger=None):
    """Submit one greedy sequence per prompt (the i-th after stagger(i) tokens of the first) -> their token ids."""
    outputs = [[] for _ in prompts]
    done = [threading.Event() for _ in prompts]
    tokens_of_first = threading.Semaphore(0)

    def collect(index):
        def on_token(event):
            outputs[index].append(event.token_id)
            if index == 0:
                tokens_of_first.release()
            if event.finish_reason:
                done[index].set()
        return on_token

    settings = SamplingSettings(max_tokens=max_tokens, temperature=0.0)
    for index, prompt in enumerate(prompts):
        if stagger is not None:
            for _ in range(stagger(index)):
                tokens_of_first.acquire(timeout=10)
        engine.submit([Sequence(prompt, settings, collect(index))])
    for event in done:
        assert event.wait(timeout=30)
    return outputs


@pytest.fixture
def bpe(vocab):
    from bpe import BPE

    bpe = BPE(str(vocab))
    bpe.load()
    return bpe


def test_sequences_that_join_a_running_batch_decode_as_if_alone(bpe, one_thread):
    model = wide_logits_model(vocab_size=bpe.get_model_vocab_size(), max_seq_len=64)
    prompts = [bpe.encode(text) for text in ("ROMEO:", "All: speak", "the", "First Citizen: Before we")]
    engine = Engine(model, bpe, max_batch=3, max_queue=8)  # 4 prompts, 3 slots: one also waits for a slot
    engine.start()
    try:
        joined = run_greedy(engine, prompts, 20, stagger=lambda i: 3 if i else 0)
    finally:
        engine.close()
    for prompt, tokens in zip(prompts, joined):
        alone = model.generate(torch.tensor([prompt]), 20, temperature=0, eos_token_id=bpe.eot_id,
                               vocab_size=bpe.vocab_size)  # what `predict` runs
        assert tokens == alone[0, len(prompt):].tolist()[: len(tokens)]
        assert len(tokens) == 20 or tokens[-1] == bpe.eot_id
    assert engine.counts["finished"] == len(prompts)


def test_a_fault_in_a_step_ends_its_sequences_and_the_engine_goes_on(bpe, small_model, one_thread):
    engine = Engine(small_model(vocab_size=bpe.get_model_vocab_size()), bpe, max_batch=2)
    engine.start()
    working_step = engine.slots.step

    def failing_step(*args):
        raise RuntimeError("out of memory")

    events, ended = [], threading.Event()

    def on_token(event):
        events.append(event)
        if event.finish_reason:
            ended.set()

    engine.slots.step = failing_step
    try:
        engine.submit([Sequence([1, 2, 3], SamplingSettings(max_tokens=5, temperature=0.0), on_token)])
        assert ended.wait(timeout=10)
        assert events[-1].finish_reason == "stop" and engine.counts["failed"] == 1  # a reason OpenAI defines
        engine.slots.step = working_step
        assert len(run_greedy(engine, [[1, 2, 3]], 4)[0]) >= 1  # and it still decodes
    finally:
        engine.close()


def test_a_fault_in_one_sequence_ends_that_sequence_only(bpe, small_model, one_thread, monkeypatch, caplog):
    # One request whose sampling raises (here: a patched sampler that fails for temperature 0.5) must not end its
    # neighbours: they finish with every token, equal to decoding alone.
    from gpt2_llm.serving import engine as engine_module

    sample = engine_module.sample_next_token

    def fails_at_one_temperature(logits, temperature, *args):
        if temperature == 0.5:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return sample(logits, temperature, *args)

    monkeypatch.setattr(engine_module, "sample_next_token", fails_at_one_temperature)
    model = small_model(vocab_size=bpe.get_model_vocab_size())
    engine = Engine(model, bpe, max_batch=4)
    engine.start()
    try:
        failed = []
        engine.submit([Sequence([5, 6, 7], SamplingSettings(max_tokens=8, temperature=0.5), failed.append)])
        outputs = run_greedy(engine, [[1, 2, 3], [4, 5]], 12)
        alone = [model.generate(torch.tensor([p]), 12, temperature=0, eos_token_id=bpe.eot_id,
                                vocab_size=bpe.vocab_size)[0, len(p):].tolist() for p in ([1, 2, 3], [4, 5])]
        assert [out[: len(a)] for out, a in zip(outputs, alone)] == [a[: len(out)] for out, a in zip(outputs, alone)]
        assert all(len(out) == 12 or out[-1] == bpe.eot_id for out in outputs)
        assert failed[-1].finish_reason == "stop" and engine.counts["failed"] == 1
        assert "decoding one sequence failed" in caplog.text
    finally:
        engine.close()

