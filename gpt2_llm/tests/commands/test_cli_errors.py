"""Bad input on the command line: one `error: ...` line on stderr, exit code 2, no traceback, no file changed.

One table drives every command (tokenize, encode, decode, train, predict, plot, check_checkpoint.py) over the ways
a user can get its input wrong, through main.main in this process; a row per command also runs as a real process.
Disk-full while saving is simulated in-process.
"""
import builtins
import errno
import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import main
from bpe import BPE
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.gpt2 import GPT2
from gpt2_llm.tests.helpers import REPO, main_in_process

TEXT = (REPO / "data" / "shakespeare.txt").read_text(encoding="utf-8")[:6000]


class MakesMarker:
    """Unpickling this creates a directory: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def flip(data: bytes, start: int, count: int) -> bytes:
    """Invert `count` bytes from `start`: flip(b"\\x00\\x00", 0, 1) -> b"\\xff\\x00" """
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + count]) + data[start + count :]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path of every good and bad input the table refers to as {name}."""
    tmp = tmp_path_factory.mktemp("cli")
    paths = {"tmp": tmp}

    def write(name, data):
        paths[name] = tmp / name
        (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))

    write("text", TEXT)
    bpe = BPE(str(tmp / "vocab"))
    bpe.set_vocab_size(300)
    bpe.create_vocab(TEXT, verbose=False)
    bpe.save()
    paths["vocab"] = tmp / "vocab"
    other = BPE(str(tmp / "other_vocab"))
    other.set_vocab_size(290)
    other.create_vocab(TEXT, verbose=False)
    other.save()
    paths["other_vocab"] = tmp / "other_vocab"

    torch.manual_seed(0)
    model = GPT2(bpe.get_model_vocab_size(), embedding_dim=32, num_layers=2, num_heads=2, max_seq_len=16)
    paths["ckpt"] = tmp / "ckpt"
    model.save(paths["ckpt"], metadata={"vocab": {"fingerprint": bpe.fingerprint(), "size": bpe.vocab_size}})
    model.save(tmp / "ckpt_other_vocab", metadata={"vocab": {"fingerprint": other.fingerprint(), "size": 290}})
    paths["ckpt_other_vocab"] = tmp / "ckpt_other_vocab"

    good_ckpt = paths["ckpt"].read_bytes()
    write("missing", b"")
    os.unlink(paths["missing"])
    paths["inside_file"] = paths["text"] / "x"  # as root chmod 000 still reads: a path through a file cannot
    write("empty", b"")
    write("binary", b"\xff\xfe\x00\x01 not utf-8 \xc3\x28" * 10)
    paths["dir"] = tmp / "dir"
    paths["dir"].mkdir()
    paths["bad_folder"] = tmp / "bad_folder"  # a corpus folder with a binary file in it
    (tmp / "bad_folder").mkdir()
    (tmp / "bad_folder" / "good.txt").write_text(TEXT, encoding="utf-8")
    (tmp / "bad_folder" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    paths["bad_jsonl"] = tmp / "bad.jsonl"
    paths["bad_jsonl"].write_text('{"text": "fine"}\n{"title": "no text field"}\n', encoding="utf-8")
    write("ckpt_truncated", good_ckpt[: len(good_ckpt) // 2])
    write("ckpt_header_only", good_ckpt[:8])
    write("ckpt_random", os.urandom(4096))
    write("ckpt_flipped_length", flip(good_ckpt, 0, 8))
    write("ckpt_flipped_header", flip(good_ckpt, 10, 20))
    paths["ckpt_foreign"] = tmp / "ckpt_foreign"
    save_file({"weight": torch.zeros(3, 3)}, str(paths["ckpt_foreign"]))
    paths["marker"] = tmp / "MARKER"
    write("ckpt_pickle", pickle.dumps(MakesMarker(paths["marker"]), protocol=4))
    write("ckpt_pickle0", pickle.dumps(MakesMarker(paths["marker"]), protocol=0))
    paths["ckpt_torchsave"] = tmp / "ckpt_torchsave"
    torch.save({"x": MakesMarker(paths["marker"])}, paths["ckpt_torchsave"])

    lines = paths["vocab"].read_text(encoding="utf-8").split("\n")
    write("vocab_duplicate_id", "\n".join(lines[:20] + [lines[19]] + lines[20:]))
    write("vocab_missing_id", "\n".join(lines[:20] + lines[21:]))
    write("vocab_truncated", "\n".join(lines[: len(lines) // 2]))
    write("vocab_cut_mid_line", paths["vocab"].read_bytes()[:-7])

    write("one_token", "a")  # a text of one token: nothing before it to predict it from

    write("log_not_json", '{"step": 1, "loss": 2.0}\nthis is not json\n')
    write("log_no_step", '{"loss": 2.0}\n')
    write("log_blank", "\n\n")
    return paths


# (command template, expected exit code, a word the message must contain (lowercase))
# {name} is replaced by files[name]; `check` runs check_checkpoint.py instead of main.py.
CHECKPOINT_CASES = [
    ("missing", "not exist"), ("inside_file", "not exist"), ("empty", "empty"), ("dir", "directory"),
    ("binary", "corrupt"), ("text", "corrupt"), ("vocab", "corrupt"),
    ("ckpt_truncated", "truncated"), ("ckpt_header_only", "corrupt"), ("ckpt_random", "corrupt"),
    ("ckpt_flipped_length", "corrupt"), ("ckpt_flipped_header", "corrupt"),
    ("ckpt_foreign", "not a gpt2-llm checkpoint"), ("ckpt_pickle", "pickle"), ("ckpt_pickle0", "corrupt"),
    ("ckpt_torchsave", "pickle"),
]
VOCAB_CASES = [
    ("missing", "not found"), ("inside_file", "not found"), ("empty", "empty"), ("dir", "directory"),
    ("binary", "utf-8"), ("text", "not a gpt2-llm bpe vocab"), ("vocab_duplicate_id", "expected token id"),
    ("vocab_missing_id", "expected token id"), ("vocab_truncated", "truncated"),
    ("vocab_cut_mid_line", "vocab"),
]
TEXT_CASES = [
    ("missing", "no such file"), ("inside_file", "no such file"), ("empty", "empty"), ("dir", "no files"),
    ("binary", "utf-8"),
]
TRAIN = "train {text} {vocab} --preset tiny --max-steps 2 --no-progress --save {tmp}/new_ckpt"
RESUME = "train {text} {vocab} {ckpt} --max-steps 2 --no-progress --save {tmp}/new_ckpt"
PREDICT = "predict hello 3 {ckpt} {vocab} --seed 0"
CASES = [
    *[(f"tokenize {{{f}}} -o {{tmp}}/new_vocab", 2, word) for f, word in TEXT_CASES],
    ("tokenize {text} -o {tmp}/new_vocab --vocab-size 10", 2, "at least 257"),
    ("tokenize {text} -o {tmp}/new_vocab --vocab-size 1000000", 2, "too small"),
    ("tokenize {text} -o {tmp}/no_such_dir/new_vocab --vocab-size 300", 2, "no_such_dir"),
    ("tokenize {text} -o {dir} --vocab-size 300", 2, "directory"),
    ("tokenize {bad_folder} -o {tmp}/new_vocab --vocab-size 300", 2, "image.png is not utf-8 text"),
    ("tokenize {bad_jsonl} -o {tmp}/new_vocab --vocab-size 300", 2, 'line 2: has no "text" field'),
    ("prepare {bad_folder} --vocab {vocab}", 2, "image.png is not utf-8 text"),
    (TRAIN.replace("{text}", "{bad_folder}"), 2, "image.png is not utf-8 text"),
    *[(f"encode hello {{{f}}}", 2, word) for f, word in VOCAB_CASES],
    ("encode a\udcffb {vocab}", 2, "utf-8"),  # the byte 0xff, which is no UTF-8, as Python passes it on
    *[(f"decode [1,2] {{{f}}}", 2, word) for f, word in VOCAB_CASES],
    ("decode [300] {vocab}", 2, "out of range"),
    ("decode [-1] {vocab}", 2, "out of range"),
    ("decode [1,2 {vocab}", 2, "not valid json"),
    ("decode '' {vocab}", 2, "not valid json"),
    ('decode {{"a":1}} {vocab}', 2, "list of integers"),
    ("decode [1.5] {vocab}", 2, "list of integers"),
    ("decode [true] {vocab}", 2, "list of integers"),
    ("decode [NaN] {vocab}", 2, "list of integers"),
    (f"decode [{'9' * 5000}] {{vocab}}", 2, "json"),  # an int past Python's 4300-digit limit
    (f"decode {'[' * 50000}{']' * 50000} {{vocab}}", 2, "json"),  # nesting past the recursion limit
    *[(TRAIN.replace("{text}", f"{{{f}}}"), 2, word) for f, word in TEXT_CASES if f not in ("missing", "inside_file")],
    (TRAIN.replace("{text}", "{missing}"), 2, "not found"),
    (TRAIN.replace("{text}", "{inside_file}"), 2, "not found"),
    # a missing vocab is learned from the text; one that cannot be written is an error
    *[(TRAIN.replace("{vocab}", f"{{{f}}}"), 2, word) for f, word in VOCAB_CASES if f not in ("missing", "inside_file")],
    (TRAIN.replace("{vocab}", "{inside_file}"), 2, "not a directory"),
    *[(RESUME.replace("{ckpt}", f"{{{f}}}"), 2, word) for f, word in CHECKPOINT_CASES],
    (RESUME.replace("{vocab}", "{other_vocab}"), 2, "different vocabulary"),
    (RESUME.replace("{vocab}", "{missing}"), 2, "not found"),
    (RESUME + " --context 64", 2, "different shape"),
    (RESUME + " --layers 3", 2, "different shape"),
    (TRAIN + " --context 100000000000", 2, "context"),
    (TRAIN + " --context 0", 2, "context"),
    (TRAIN + " --heads 3", 2, "heads"),
    (TRAIN + " --max-steps -1", 2, "max-steps"),
    (TRAIN + " --epochs 0 --max-steps 0", 2, "max-steps"),
    (TRAIN + " --batch-size 0", 2, "batch-size"),
    (TRAIN + " --lr -1", 2, "learning rate"),
    (TRAIN + " --val-fraction 1.5", 2, "val-fraction"),
    (TRAIN + " --device tpu", 2, "device"),
    (TRAIN + " --device cuda", 2, "cuda"),
    (TRAIN + " --device cuda:7", 2, "cuda"),
    (TRAIN.replace("{tmp}/new_ckpt", "{tmp}/no_such_dir/ckpt"), 2, "no_such_dir"),
    (TRAIN.replace("{tmp}/new_ckpt", "{dir}"), 2, "directory"),
    (TRAIN + " --log-file {tmp}/no_such_dir/log", 2, "no_such_dir"),
    (TRAIN + " --log-file {dir}", 2, "directory"),
    *[(PREDICT.replace("{ckpt}", f"{{{f}}}"), 2, word) for f, word in CHECKPOINT_CASES
      if f not in ("missing", "inside_file")],
    (PREDICT.replace("{ckpt}", "{missing}"), 2, "not found"),
    (PREDICT.replace("{ckpt}", "{inside_file}"), 2, "not found"),
    *[(PREDICT.replace("{vocab}", f"{{{f}}}"), 2, word) for f, word in VOCAB_CASES],
    (PREDICT.replace("{vocab}", "{other_vocab}"), 2, "different vocabulary"),
    ("predict hello -1 {ckpt} {vocab}", 2, "num_tokens"),
    ("predict hello 0 {ckpt} {vocab}", 2, "num_tokens"),
    ("predict hello 1000000000000 {ckpt} {vocab}", 2, "num_tokens"),
    ("predict hello ten {ckpt} {vocab}", 2, "num_tokens"),
    (PREDICT + " --device tpu", 2, "device"),
    (PREDICT + " --device cuda", 2, "cuda"),
    (PREDICT + " --temperature nan", 2, "temperature"),
    (PREDICT + " --top-k -3", 2, "top-k"),
    *[(f"plot {{{f}}} -o {{tmp}}/new.png", 2, word) for f, word in [
        ("missing", "not found"), ("inside_file", "not found"), ("empty", "no records"), ("dir", "not found"),
        ("binary", "log"), ("log_not_json", "not json"), ("log_no_step", "step"), ("log_blank", "no records"),
    ]],
    *[(f"evaluate {{{f}}} {{vocab}} {{text}}", 2, word) for f, word in CHECKPOINT_CASES
      if f not in ("missing", "inside_file")],
    ("evaluate {missing} {vocab} {text}", 2, "not found"),
    ("evaluate {ckpt} {other_vocab} {text}", 2, "different vocabulary"),
    ("evaluate {ckpt} {vocab} {empty}", 2, "empty"),
    ("evaluate {ckpt} {vocab} {missing}", 2, "no such file"),
    ("evaluate {ckpt} {vocab} {one_token}", 2, "too short"),
    ("evaluate {ckpt} {vocab}", 2, "text"),
    ("evaluate {ckpt} {vocab} {text} --context 8 --stride 9", 2, "stride"),
    ("evaluate {ckpt} {vocab} {text} --stride 0", 2, "stride"),
    ("evaluate {ckpt} {vocab} {text} --stride 17", 2, "stride"),
    ("evaluate {ckpt} {vocab} {text} --context 17", 2, "context"),
    ("evaluate {ckpt} {vocab} {text} --context 1", 2, "context"),
    ("evaluate {ckpt} {vocab} {text} --batch-size 0", 2, "batch-size"),
    ("evaluate {ckpt} {vocab} {text} --dtype fp64", 2, "dtype"),
    ("evaluate {ckpt} {vocab} {text} --model {missing}", 2, "not found"),
    ("evaluate {ckpt} {vocab} {text} --model {ckpt_other_vocab}", 2, "different vocabulary"),
    ("evaluate {text} --pretrained {dir} --model {ckpt}", 2, "pretrained"),
    *[(f"check {{{f}}} {{vocab}}", 2, word) for f, word in CHECKPOINT_CASES],
    *[(f"check {{ckpt}} {{{f}}}", 2, word) for f, word in VOCAB_CASES],
    ("check {ckpt_other_vocab} {vocab}", 1, "different vocabulary"),
    ("check {ckpt} {other_vocab}", 1, "different vocabulary"),
]


def tree_hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).rglob("*") if p.is_file()}


def case_id(case):
    template = case.values[0] if hasattr(case, "values") else case[0]
    return template[:90]


def run_case(files, template, monkeypatch, capfd) -> tuple[int, str, str]:
    """One table row through main.main in this process (main_in_process), from the repository: (exit code, stdout,
    stderr)."""
    words = template.split(" ")
    argv = [word.format(**files) if "{" in word and "[[[" not in word else word for word in words]
    argv = ["" if a == "''" else a for a in argv]
    argv = argv[1:] if argv[0] == "check" else argv  # check_checkpoint.py is `main.py check`
    argv = ["check", *argv] if words[0] == "check" else argv
    return main_in_process(argv, REPO, monkeypatch, capfd)


@pytest.mark.parametrize("template, expected_code, keyword", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_one_line_error(files, template, expected_code, keyword, monkeypatch, capfd):
    before = tree_hashes(files["tmp"])
    code, out, err = run_case(files, template, monkeypatch, capfd)
    assert_one_line_error(code, out, err, expected_code, keyword)
    after = tree_hashes(files["tmp"])
    assert {p: h for p, h in after.items() if p in before} == before, "an existing file changed"
    assert not files["marker"].exists(), "loading the checkpoint ran code"
    assert not [p for p in after if p.name.endswith(".tmp")], "a temp file was left behind"


def assert_one_line_error(code, out, err, expected_code, keyword):
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert code == expected_code, (out + err)[-3000:]
    if expected_code == 1:  # check_checkpoint's verdict: a report on stdout, no error
        assert keyword in out.lower() and err == "", out + err
    else:
        lines = err.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert keyword in lines[0].lower(), lines[0]


# One row per command, as a real process: the scripts themselves, argv bytes as the OS passes them, no GPU.
IN_A_PROCESS = [
    ("tokenize {missing} -o {tmp}/new_vocab", 2, "no such file"),
    ("encode a\udcffb {vocab}", 2, "utf-8"),
    ("decode [true] {vocab}", 2, "list of integers"),
    (TRAIN.replace("{text}", "{empty}"), 2, "empty"),
    (RESUME.replace("{ckpt}", "{ckpt_torchsave}"), 2, "pickle"),
    (PREDICT.replace("{ckpt}", "{ckpt_pickle}"), 2, "pickle"),
    ("plot {log_no_step} -o {tmp}/new.png", 2, "step"),
    ("evaluate {ckpt} {vocab} {one_token}", 2, "too short"),
    ("check {ckpt_other_vocab} {vocab}", 1, "different vocabulary"),
]


@pytest.mark.parametrize("template, expected_code, keyword", IN_A_PROCESS, ids=[case_id(c) for c in IN_A_PROCESS])
def test_bad_input_is_one_line_error_from_the_scripts(files, template, expected_code, keyword):
    result = run_script([word.format(**files) for word in template.split(" ")])
    assert_one_line_error(result.returncode, result.stdout, result.stderr, expected_code, keyword)


def run_script(argv: list[str]) -> subprocess.CompletedProcess:
    """A command line through its script, a process of its own on a machine without a GPU: `check ...` runs
    check_checkpoint.py, anything else main.py."""
    script, argv = ("check_checkpoint.py", argv[1:]) if argv[0] == "check" else ("main.py", argv)
    return subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


# --- disk full while saving --------------------------------------------------------------------------


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_checkpoint_save_on_full_disk_keeps_the_old_file(files, tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    path.write_bytes(files["ckpt"].read_bytes())
    old = path.read_bytes()
    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError) as raised:
        checkpoint.save_checkpoint(path, {"w": torch.zeros(2)}, {"config": {}})
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_vocab_save_on_full_disk_keeps_the_old_file(files, tmp_path, monkeypatch):
    path = tmp_path / "vocab.txt"
    path.write_bytes(files["vocab"].read_bytes())
    old = path.read_bytes()
    bpe = BPE(str(path))
    bpe.set_vocab_size(280)
    bpe.create_vocab(TEXT, verbose=False)
    monkeypatch.setattr(os, "fsync", disk_full)  # the write got buffered; the flush to disk fails
    with pytest.raises(OSError):
        bpe.save()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.txt"]


@pytest.mark.parametrize("command", ["tokenize", "train"])
def test_cli_turns_full_disk_while_saving_into_one_line(files, tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    if command == "tokenize":
        monkeypatch.setattr(os, "fsync", disk_full)
        argv = ["tokenize", str(files["text"]), "-o", str(out), "--vocab-size", "280"]
    else:
        monkeypatch.setattr(checkpoint, "save_file", disk_full)
        argv = ["train", str(files["text"]), str(files["vocab"]), "--preset", "tiny", "--max-steps", "1",
                "--no-progress", "--save", str(out), "--device", "cpu"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "space" in err.lower(), err
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- files the user may not read ------------------------------------------------------------------------

UNREADABLE = ["encode hello {vocab}", "train {text} {vocab} --preset tiny --max-steps 1", PREDICT,
              "check {ckpt} {vocab}", "plot {text}"]


def locked_copies(files, folder) -> dict:
    """Copies of the vocab, the text and the checkpoint in folder, by name."""
    locked = {name: folder / name for name in ("vocab", "text", "ckpt")}
    for name, path in locked.items():
        path.write_bytes(files[name].read_bytes())
    return locked


@pytest.mark.parametrize("command", UNREADABLE)
def test_unreadable_file_is_one_line_error_even_as_root(files, tmp_path, monkeypatch, capsys, command):
    """Root reads any file, so here open() refuses the copies as it refuses a user without read permission."""
    locked = locked_copies(files, tmp_path)
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() in [p.resolve() for p in locked.values()]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    argv = [word.format(**{**files, **locked}) for word in command.split(" ")]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "permission denied" in err.lower(), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
@pytest.mark.parametrize("command", UNREADABLE)
def test_unreadable_file_is_one_line_error(files, tmp_path, command):
    locked = locked_copies(files, tmp_path)
    for path in locked.values():
        path.chmod(0)
    result = run_script([word.format(**{**files, **locked}) for word in command.split(" ")])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr


# --- decode prints whatever bytes the tokens spell ----------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--pieces"]])
def test_decode_prints_a_surrogate_half_as_replacement_characters(files, flags):
    ids = list("\ud800".encode("utf-8", "surrogatepass"))  # byte tokens spelling a UTF-16 half: no UTF-8
    result = subprocess.run([sys.executable, "main.py", "decode", str(ids), str(files["vocab"]), *flags], cwd=REPO,
                            capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"}, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert "\ufffd" in result.stdout.decode("utf-8")
