"""Files written so that nothing the user had is lost: atomic writes, and reading a text file or saying why not.

Imports only the standard library and gpt2_llm.errors, so the tokenizer (bpe.py) and every layer can use it.
"""
import os
import tempfile
from contextlib import suppress

from gpt2_llm.errors import UserError


def atomic_write(path, data, mode=0o644):
    """Write a file so that readers see the old file or the new one, never half of one.

    data: bytes, str (written as UTF-8), or a function that writes the file at the path it is given
    (for writers that want a path: safetensors' save_file, np.save). The bytes go to a temp file
    beside `path` (same filesystem), are fsynced, and os.replace puts them in place; on any failure
    the temp file is removed and `path` is as it was. A temp file is named after the process that
    writes it (`.name.<pid>.<random>.tmp`), so one left by a process that was killed -9 mid-write is
    removed by the next write of the same file (those of live processes are left alone).

        atomic_write("vocab.txt", "text")                  # str or bytes
        atomic_write("m.safetensors", lambda tmp: save_file(tensors, tmp))
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    remove_stale_temp_files(folder, name)
    fd, temp_path = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        if callable(data):
            os.close(fd)
            data(temp_path)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(temp_path, mode)  # mkstemp makes it owner-only (and some writers recreate the file)
        with open(temp_path, "rb") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(temp_path, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    _fsync_folder(folder)


def remove_stale_temp_files(folder, name):
    """Delete `.name.<pid>.*.tmp` files in folder whose writing process no longer exists."""
    prefix = f".{name}."
    try:
        candidates = [f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".tmp")]
    except OSError:
        return
    for candidate in candidates:
        pid = candidate[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        with suppress(OSError):
            os.unlink(os.path.join(folder, candidate))


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform without signals: leave its file alone
    return True


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); some platforms cannot open or fsync folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. filesystems that refuse fsync on folders: the rename still happened
    finally:
        os.close(fd)


def read_text_file(path):
    """Read a whole UTF-8 text file exactly (no newline translation), or raise UserError saying what is wrong.

    read_text_file("windows.txt") -> "a\\r\\nb"  (newlines kept as they are in the file)
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, expected a text file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    if not data:
        raise UserError(f"{path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); convert it to UTF-8 first"
        ) from e
