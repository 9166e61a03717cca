"""pyproject.toml: `pip install .` and `pip install -e .` give a `gpt2-llm` command equal to `python main.py`.

Each case installs a copy of the project into a fresh virtual environment, offline: no build isolation (the
installed setuptools builds it) and no dependencies fetched (the venv sees this interpreter's packages, torch
included, so nothing is downloaded or reinstalled). The command then runs from a folder outside the project.
"""
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest
from gpt2_llm.tests.helpers import REPO

pytest.importorskip("setuptools", reason="pip builds the project offline with the installed setuptools")

MAIN = str(REPO / "main.py")
# What a user's clone holds that the build needs; the tests, data and benchmarks are not installed.
SOURCES = ["pyproject.toml", "README.md", "bpe.py", "main.py", "check_checkpoint.py", "gpt2_llm"]


def make_venv(folder):
    """A venv without its own pip or packages that sees this interpreter's (torch, setuptools, pip, ...)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True)
    python = folder / ("Scripts" if os.name == "nt" else "bin") / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # --system-site-packages reaches the base interpreter's packages, not those of a venv this test runs in.
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    with open(os.path.join(venv_site, "outer_site_packages.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(ours)) + "\n")
    return python


def run(command, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_gives_the_gpt2_llm_command(tmp_path, vocab, editable):
    source = tmp_path / "gpt2-llm"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("tests", "__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    python = make_venv(tmp_path / "venv")
    pip = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    installed = run(pip + (["-e", str(source)] if editable else [str(source)]), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import bpe, main, check_checkpoint, gpt2_llm.commands.train_command as m;"
                 "print('\\n'.join(x.__file__ for x in (bpe, main, check_checkpoint, m)))"], cwd=elsewhere)
    home = source if editable else tmp_path / "venv"
    assert where.returncode == 0, where.stderr
    paths = where.stdout.split()
    assert len(paths) == 4 and all(p.startswith(str(home)) for p in paths), where.stdout  # not this checkout

    command = python.parent / ("gpt2-llm.exe" if os.name == "nt" else "gpt2-llm")
    cases = [(["--help"], 0), (["encode", "hello world", str(vocab)], 0), (["encode", "hi", str(tmp_path / "no")], 2)]
    for args, code in cases:
        ours = run([str(command), *args], cwd=elsewhere)
        reference = run([sys.executable, MAIN, *args], cwd=elsewhere)
        assert (ours.returncode, ours.stdout, ours.stderr) == (code, reference.stdout, reference.stderr)
        assert (ours.stdout if code == 0 else ours.stderr).strip()  # each case printed something to compare
    assert ours.stderr.startswith("error: vocab file")  # the exit code 2 of main() reaches the shell


def test_every_subpackage_is_installed():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "gpt2_llm").rglob("__init__.py")}
    assert listed == {name for name in folders if ".tests" not in name}
