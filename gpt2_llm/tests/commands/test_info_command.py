"""`main.py info` (commands/info_command.py): every row, on a machine without numba and without a GPU too."""
import subprocess
import sys

from gpt2_llm.tests.helpers import REPO

ROWS = ("CPU", "ISA", "threads", "device", "training", "decoding", "int8", "attention", "tokenizer", "versions")


def run_info(*args, block=()):
    """`info` in a fresh process, with the modules in block made unimportable (as if not installed)."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({list(block)!r})); sys.path.insert(0, {str(REPO)!r}); "
            f"import main; sys.exit(main.main(['info', *{list(args)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return dict(line.split(None, 1) if not line.startswith("matmul peak") else ("matmul peak", line[11:].strip())
                for line in result.stdout.splitlines())


def test_info_names_the_machine_and_every_choice_with_its_reason():
    rows = run_info("--device", "cpu")
    assert set(ROWS) <= set(rows)
    assert rows["device"].startswith("cpu")
    assert rows["training"].split(":")[0] in ("fp32", "bf16") and "--dtype" in rows["training"]
    assert "matmul peak" in rows and "GFLOP/s" in rows["matmul peak"]


def test_info_runs_without_numba():
    rows = run_info("--no-peak", "--device", "cpu", block=("numba", "llvmlite"))
    assert rows["tokenizer"].endswith("numba not installed")
    assert "needs numba" in rows["int8"] and "stay unquantized" in rows["int8"]  # int8 says it would not be fast
    assert "numba not installed" in rows["decoding"] or "oneDNN" in rows["decoding"]
    assert "matmul peak" not in rows
