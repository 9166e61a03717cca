"""`export --format hf` of a model trained here with its own vocab, read back by transformers: AutoTokenizer's ids,
the logits and greedy text equal ours; and the command's refusals. (GGUF: test_gguf.py.)"""
import json
import subprocess
import sys

import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2
from gpt2_llm.checkpoints.export import check_export, export, ollama_modelfile
from gpt2_llm.errors import UserError
from gpt2_llm.tests.helpers import MAIN

transformers = pytest.importorskip("transformers")

# Three scripts and source code, none of which the vocab below learned from (it learned from others of each kind).
SCRIPTS = {
    "latin": "Now is the winter of our discontent made glorious summer by this sun of York.",
    "cyrillic": "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный.",
    "cjk": "床前明月光，疑是地上霜。举头望明月，低头思故乡。日本語の文章も少し。",
    "greek": "Ἄνδρα μοι ἔννεπε, Μοῦσα, πολύτροπον, ὃς μάλα πολλὰ πλάγχθη.",
    "code": "def area(r: float) -> float:\n    \"\"\"Circle.\"\"\"\n    return 3.14159 * r ** 2  # ok\n\n\tx = [1, 2]\n",
}
LEARNED_FROM = ("Съешь же ещё этих мягких французских булок, да выпей чаю. 我能吞下玻璃而不伤身体。"
                "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. ")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare, python_source):
    """(model, bpe, checkpoint, vocab path): a vocab of our own learned from English, code and three scripts, and a
    small model trained on the same text for 150 steps, saved as `train` saves it."""
    directory = tmp_path_factory.mktemp("trained")
    text = shakespeare[:60_000] + python_source[:60_000] + LEARNED_FROM * 200
    bpe = BPE(str(directory / "vocab.txt"))
    bpe.set_vocab_size(700)
    bpe.create_vocab(text, verbose=False)
    bpe.save()
    ids = torch.tensor(bpe.encode(text))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a micro model: threads gain nothing, and on a busy machine cost a lot
    torch.manual_seed(0)
    model = GPT2(vocab_size=bpe.get_model_vocab_size(), embedding_dim=64, num_layers=2, num_heads=4, max_seq_len=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - 129, (16,))
        batch = torch.stack([ids[s:s + 129] for s in starts])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    checkpoint = directory / "model.pt"
    model.save(checkpoint, {"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    return model, bpe, checkpoint, directory / "vocab.txt"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained model exported by the CLI, as a user would: (directory, its AutoTokenizer, its HF model)."""
    _, _, checkpoint, vocab = trained
    directory = tmp_path_factory.mktemp("exported") / "hf"
    result = subprocess.run([sys.executable, MAIN, "export", str(checkpoint), str(vocab), "--output", str(directory)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    return directory, tokenizer, model


@pytest.mark.parametrize("name", SCRIPTS)
def test_autotokenizer_ids_equal_ours(trained, exported, name):
    _, bpe, _, _ = trained
    _, tokenizer, _ = exported
    text = SCRIPTS[name]
    assert tokenizer(text)["input_ids"] == bpe.encode(text)
    assert tokenizer.decode(bpe.encode(text)) == text


def test_autotokenizer_knows_the_special_token(trained, exported):
    _, bpe, _, _ = trained
    _, tokenizer, _ = exported
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == bpe.eot_id
    assert tokenizer("a<|endoftext|>b")["input_ids"] == bpe.encode("a<|endoftext|>b", allowed_special="all")


def test_logits_equal_ours(trained, exported):
    model, bpe, _, _ = trained
    _, _, hf = exported
    ids = torch.tensor([bpe.encode("".join(SCRIPTS.values()))[:128]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SCRIPTS)
def test_greedy_text_equals_ours_for_64_tokens(trained, exported, name):
    model, bpe, _, _ = trained
    _, tokenizer, hf = exported
    ids = torch.tensor([bpe.encode(SCRIPTS[name])])
    ours = model.generate(ids, 64, temperature=0)
    theirs = hf.generate(ids, max_new_tokens=64, do_sample=False, pad_token_id=bpe.eot_id)
    assert theirs.tolist() == ours.tolist()  # (this model's greedy choices lead the runner-up by > 0.1 logit)
    pipeline = transformers.pipeline("text-generation", model=hf, tokenizer=tokenizer)
    text = pipeline(SCRIPTS[name], max_new_tokens=16, do_sample=False)[0]["generated_text"]
    assert text == bpe.decode(ours[0, : ids.size(1) + 16].tolist())


def test_the_files_say_what_llama_cpp_and_transformers_need(trained, exported):
    _, bpe, _, _ = trained
    directory, _, _ = exported
    config = json.loads((directory / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 256
    assert config["bos_token_id"] == config["eos_token_id"] == bpe.eot_id
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == bpe.eot_id
    merges = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + len(bpe.merges())


def test_our_commands_read_an_exported_directory_as_they_read_the_checkpoint(trained, exported):
    _, bpe, checkpoint, vocab = trained
    directory, _, _ = exported
    again = BPE.from_gpt2(str(directory / "vocab.json"), str(directory / "merges.txt"))
    assert again.token_bytes() == bpe.token_bytes() and again.merges() == bpe.merges()
    text = directory.parent / "text.txt"
    text.write_text("".join(SCRIPTS.values()) * 3, encoding="utf-8")

    def run(*args) -> str:
        result = subprocess.run([sys.executable, MAIN, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def scores(report: str) -> list[str]:  # the last row's nats/token, perplexity and bits/byte
        return report.splitlines()[-1].split()[-3:]

    assert (run("predict", "Now is", 8, "--pretrained", directory, "--temperature", 0)
            == run("predict", "Now is", 8, checkpoint, vocab, "--temperature", 0))
    assert scores(run("evaluate", directory, text)) == scores(run("evaluate", checkpoint, vocab, text))


def test_gpt2s_vocab_exports_as_gpt2s_own_files(gpt2_bpe, tmp_path):
    model = GPT2(vocab_size=50257, embedding_dim=32, num_layers=1, num_heads=2, max_seq_len=16)
    export(model, gpt2_bpe, tmp_path / "out", "hf", "f32")
    from gpt2_llm.tests.tokenizer_fixtures import ENCODER_JSON, VOCAB_BPE

    assert json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8")) == json.loads(
        open(ENCODER_JSON, encoding="utf-8").read())
    ours = (tmp_path / "out" / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    theirs = [line for line in open(VOCAB_BPE, encoding="utf-8").read().splitlines()[1:] if line]
    assert ours == theirs


@pytest.mark.parametrize("outtype, dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_outtypes(trained, tmp_path, outtype, dtype):
    model, bpe, _, _ = trained
    export(model, bpe, tmp_path / "out", "hf", outtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert hf.transformer.wte.weight.dtype == torch.float32  # read back and widened: the values are dtype's
    torch.testing.assert_close(hf.transformer.wte.weight, model.wte.weight.to(dtype).float(), atol=0, rtol=0)


def test_an_export_may_be_overwritten_but_nothing_else(trained, tmp_path):
    model, bpe, _, _ = trained
    export(model, bpe, tmp_path / "out", "hf", "f32")
    export(model, bpe, tmp_path / "out", "hf", "f32")  # ours: overwritten
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "README.md").write_text("a user's file")
    with pytest.raises(UserError, match="files export did not write"):
        export(model, bpe, tmp_path / "theirs", "hf", "f32")
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["README.md"]
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.parametrize("output, fmt, outtype, message", [
    ("out", "hf", "q8_0", "--outtype q8_0 is not available for --format hf"),
    ("out", "onnx", "f32", "--format onnx: use hf"),
    ("model.gguf", "gguf", "q4_0", "--outtype q4_0 is not available"),
    ("missing/out", "hf", "f32", "the folder missing does not exist"),
])
def test_impossible_exports_are_refused_before_anything_is_written(tmp_path, monkeypatch, output, fmt, outtype,
                                                                   message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        check_export(output, fmt, outtype)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_gguf_is_never_overwritten(tmp_path):
    (tmp_path / "notes.gguf").write_text("my notes")
    with pytest.raises(UserError, match="not a GGUF file"):
        check_export(tmp_path / "notes.gguf", "gguf", "f32")
    (tmp_path / "model.Modelfile").write_text("FROM llama3\n")
    with pytest.raises(UserError, match="export did not write it"):
        check_export(tmp_path / "model.gguf", "gguf", "f32")


def test_the_modelfile_feeds_the_prompt_as_is_and_stops_at_the_end_of_text():
    text = ollama_modelfile("model.gguf", 1024)
    assert "FROM ./model.gguf\n" in text and 'TEMPLATE """{{ .Prompt }}"""' in text
    assert 'PARAMETER stop "<|endoftext|>"' in text and "PARAMETER num_ctx 1024" in text


@pytest.mark.parametrize("args, message", [
    ([], "export needs --output"),
    (["--output", "out", "--outtype", "q8_0"], "--outtype q8_0 is not available for --format hf"),
    (["missing.pt", "--output", "out"], "model file missing.pt not found"),
])
def test_cli_mistakes_are_one_line_errors_with_exit_code_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, MAIN, "export", *args], capture_output=True, text=True, cwd=tmp_path,
                            timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr


# --- lm-eval: a local multiple-choice task, scored from the exported directory and from `serve` over it ---
LM_EVAL_TASK = """task: gpt2_llm_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""
LM_EVAL_DOCS = [
    {"question": "Now is the winter of our", "choices": [" discontent", " summer", " York"], "answer": 0},
    {"question": "def area(r):\n    return", "choices": [" 3.14159 * r ** 2", " r", " None"], "answer": 0},
    {"question": "Мороз и", "choices": [" солнце", " день"], "answer": 0},
    {"question": "床前明月", "choices": ["光", "霜"], "answer": 0},
]


def lm_eval_loglikelihoods(tasks, model, model_args) -> list[float]:
    """lm-eval (its Python API, as `lm-eval run` calls it) on the tiny task -> each (doc, choice)'s log-likelihood."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["gpt2_llm_tiny_choice"],
                                      task_manager=TaskManager(include_path=str(tasks)), batch_size=1,
                                      device="cpu", log_samples=True, bootstrap_iters=0)
    samples = sorted(results["samples"]["gpt2_llm_tiny_choice"], key=lambda sample: sample["doc_id"])
    return [float(resp[0][0]) for sample in samples for resp in sample["resps"]]


def test_lm_eval_scores_the_export_and_the_server_alike(trained, exported, tmp_path, monkeypatch):
    from gpt2_llm.tests.helpers import LiveServer

    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "HF_DATASETS_CACHE": str(tmp_path / "datasets")}.items():
        monkeypatch.setenv(name, value)  # (before lm-eval imports `datasets`, which reads them then)
    pytest.importorskip("lm_eval", reason="lm-eval is a test dependency (requirements-dev.txt)")
    model, bpe, _, _ = trained
    directory, _, _ = exported
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in LM_EVAL_DOCS), encoding="utf-8")
    (tmp_path / "tiny.yaml").write_text(LM_EVAL_TASK.format(data=data), encoding="utf-8")
    server = LiveServer("--pretrained", directory)  # starts while lm-eval scores the directory
    try:
        direct = lm_eval_loglikelihoods(tmp_path, "hf", f"pretrained={directory},dtype=float32")
        served = lm_eval_loglikelihoods(tmp_path, "local-completions",
                                        f"base_url={server.wait_ready().url}/v1/completions,model={directory.name},"
                                        f"tokenizer={directory},tokenizer_backend=huggingface,max_retries=1")
    finally:
        server.stop()
    ours = []  # the same log-likelihoods, from our model directly
    for doc in LM_EVAL_DOCS:
        context = bpe.encode(doc["question"])
        for choice in doc["choices"]:
            continuation = bpe.encode(doc["question"] + choice)[len(context):]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = model(ids[:, :-1]).log_softmax(-1)[0, len(context) - 1:]
            ours.append(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum().item())
    assert len(direct) == len(served) == len(ours) == sum(len(doc["choices"]) for doc in LM_EVAL_DOCS)
    assert direct == pytest.approx(ours, abs=1e-4) and served == pytest.approx(ours, abs=1e-4)


def test_a_hugging_face_directory_exports_to_gguf_with_its_own_tokenizer(exported, trained, tmp_path):
    gguf = pytest.importorskip("gguf")
    directory, _, _ = exported
    _, bpe, _, _ = trained
    result = subprocess.run([sys.executable, MAIN, "export", "--pretrained", str(directory), "--output",
                             str(tmp_path / "m.gguf"), "--outtype", "q8_0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 704 and (tmp_path / "m.Modelfile").is_file()
    assert bytes(tokens.parts[tokens.data[bpe.eot_id]]).decode() == "<|endoftext|>"
