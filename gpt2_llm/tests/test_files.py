"""files.py: reading a text file exactly, or one clear error saying why not (atomic writes: checkpoints/test_checkpoint.py)."""
import errno
import os

import pytest
import regex

from gpt2_llm import files
from gpt2_llm.errors import UserError
from gpt2_llm.files import read_text_file


def test_read_text_file_errors(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\r")
    cases = {"missing.txt": "no such file", ".": "is a directory", "empty.txt": "is empty", "latin1.txt": "not UTF-8"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            read_text_file(str(tmp_path / name))
    assert read_text_file(str(tmp_path / "crlf.txt")) == "a\r\nb\r"  # newlines kept exactly


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_read_text_file_unreadable(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read"):
        read_text_file(str(path))


def test_read_text_file_unreadable_even_as_root(tmp_path, monkeypatch):
    # CI runs as root, which reads a chmod-000 file: refuse the open itself, as the OS does for other users.
    path = tmp_path / "secret.txt"
    path.write_text("x")

    def refuse(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)

    monkeypatch.setattr(files, "open", refuse, raising=False)  # shadows the builtin inside files.py only
    with pytest.raises(UserError, match=f"cannot read {regex.escape(str(path))}: {os.strerror(errno.EACCES)}"):
        read_text_file(str(path))
