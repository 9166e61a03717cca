"""When and how the tokenizer's compiled kernels load, and their first run on a machine.

The kernels are numba-compiled copies of the tokenizer's Python code, with the same results: kernels.py encodes (what
bpe.py does), training_kernels.py counts chunks and learns merges (what bpe.count_chunks and training.py do). The
Python stays the reference, and the path taken where numba is not installed. This module decides when loading the
kernels pays, loads them, and, on a machine whose numba disk cache lacks them, has them compiled once, in the
background or first, saying so on stderr.

    >>> kernels = load_kernels()  # gpt2_llm.tokenizer.kernels; None where numba is not installed
    >>> kernels_cache_status()
    'cached'

No torch, and nothing of bpe.py or training.py, which import this module: the process that compiles the kernels runs
their code through warm_up.py, handed to compile_in_this_process.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from contextlib import suppress

from tqdm import tqdm

from gpt2_llm.files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no lock files, so no background compile (see compile_kernels)
    fcntl = None


# ---- loading the kernels when they pay ----
# Loading the kernels (importing numba, loading the compiled code from its disk cache) takes ~0.35 s, what Python
# spends encoding ~4 M characters; the compiled path then encodes ~5x faster. So a process loads them once it has
# that many characters to encode, in one text or in several (never paying more than twice the best choice made
# knowing the future), and short CLI calls never pay the import.
_COMPILED_PAYS_CHARS = 1 << 22
_COMPILED_MIN_CHARS = 1 << 10  # shorter texts stay in Python: a warm chunk cache beats a call's fixed cost
_PYTHON_ENCODE_CHARS_PER_SECOND = 3_500_000  # the Python path, cold, on English (the compiled one: ~40 M)
_kernels = None  # gpt2_llm.tokenizer.kernels once imported; False where numba is missing
_python_chars = 0  # characters of texts of at least _COMPILED_MIN_CHARS encoded in Python so far


def load_kernels(python_seconds=float("inf")):
    """The compiled kernels (gpt2_llm.tokenizer.kernels), imported on first use; None where numba is not installed, and
    None while they are not compiled for this machine yet and the job at hand would take Python only python_seconds,
    less than compiling them: they then compile in the background for the next runs (see the next section)."""
    global _kernels
    if _kernels is None:
        status = kernels_cache_status()
        if status == NUMBA_MISSING:
            _kernels = False
            return None
        if status != KERNELS_CACHED:
            if python_seconds < _COMPILE_SECONDS and _start_background_compile():
                return None
            compile_kernels()
        try:
            from gpt2_llm.tokenizer import kernels as _kernels
        except ModuleNotFoundError as e:
            if e.name not in ("numba", "llvmlite"):
                raise
            _kernels = False
    return _kernels or None


def _kernels_for(num_chars):
    """The compiled kernels when they pay for a text of num_chars characters (see above), else None: Python."""
    global _python_chars
    if num_chars < _COMPILED_MIN_CHARS:
        return None
    if _kernels is None and _python_chars + num_chars < _COMPILED_PAYS_CHARS:
        _python_chars += num_chars
        return None
    return load_kernels(num_chars / _PYTHON_ENCODE_CHARS_PER_SECOND)


def load_training_kernels(python_seconds=float("inf")):
    """gpt2_llm.tokenizer.training_kernels, imported on first use; None where numba is not installed, or while the
    kernels compile for a job that Python ends in python_seconds (see load_kernels). training.py decides when they
    pay."""
    if not load_kernels(python_seconds):
        return None
    from gpt2_llm.tokenizer import training_kernels

    return training_kernels


# ---- the compiled path's first run on a machine: compiling the kernels once ----
# numba compiles the kernels on their first use and keeps the machine code in a disk cache, so later processes load
# it in ~0.3 s. Compiling takes ~25 s of one core (~15 s in parallel processes on 2 cores), several times what
# Python takes to tokenize a few MB. So that no run stalls silently to compile, a process that wants the
# kernels while the cache lacks them says so in one line on stderr and either
#   - keeps to the Python path, when its job takes Python less than compiling would (python_seconds above; the 5 MB
#     Shakespeare corpus: ~3 s to learn its vocab), and starts one background process that compiles the kernels
#     into the cache, at low priority, so the next runs are fast; or
#   - compiles them first (compile_kernels), in parallel processes with a progress bar, when the job is big enough
#     to pay for it.
# The results are the same either way: the tests prove both paths equal. Only one process compiles at a time: it
# holds a lock file in the cache folder; the others keep to Python, or wait when their job is big. A marker file
# written there once every kernel is cached tells kernels_cache_status so without importing numba. It records what
# numba's cache depends on (the numba and Python versions, the kernels' source, the CPU), so a change to any of them
# compiles again, as numba would.

_COMPILE_SECONDS = 15  # compile_kernels' wall time, on 2 cores; the background compile takes ~2x (one niced core)
KERNELS_CACHED = "cached"
NUMBA_MISSING = "numba not installed"
KERNELS_COMPILING = "being compiled by another process"
KERNELS_NOT_COMPILED = f"not compiled yet (the first big job compiles them, ~{_COMPILE_SECONDS} s, once per machine)"
_KERNEL_GROUPS = ("encode", "count", "train")  # compiled in parallel by compile_kernels: independent kernels
_MARKER, _LOCK, _LOG = "gpt2_llm_kernels.json", "gpt2_llm_kernels.lock", "gpt2_llm_kernels.log"
_background_compile_started = False  # this process started one, or found one running: it tries no other


def kernels_cache_status():
    """Whether the compiled kernels are in numba's disk cache for this machine, found without importing numba or
    compiling anything: KERNELS_CACHED, KERNELS_COMPILING (another process is compiling them), KERNELS_NOT_COMPILED
    or NUMBA_MISSING. kernels_cache_status() -> "cached" """
    expected = _cache_marker()
    if expected is None:
        return NUMBA_MISSING
    folder = kernel_cache_folder()
    if _read_marker(folder) == expected:
        return KERNELS_CACHED
    return KERNELS_COMPILING if _compile_lock_is_held(folder) else KERNELS_NOT_COMPILED


def _cache_marker():
    """What numba's cached kernels depend on, as the marker file records it; None where numba is not installed."""
    from importlib import metadata

    if "numba" in sys.modules and sys.modules["numba"] is None:  # blocked, as the tests do to mean "not installed"
        return None
    try:
        numba_version = metadata.version("numba")
    except metadata.PackageNotFoundError:
        return None
    sources = hashlib.sha256()
    for name in ("kernels.py", "training_kernels.py"):
        path = os.path.join(_kernels_folder(), name)
        with open(path, "rb") as f:
            sources.update(f.read())
        stat = os.stat(path)  # numba keys its cache by the source's time and size: a fresh checkout recompiles
        sources.update(f"{stat.st_mtime}:{stat.st_size}".encode())
    return {"numba": numba_version, "python": list(sys.version_info[:2]), "sources": sources.hexdigest(),
            "cpu": _cpu_description()}


def _kernels_folder():
    """The folder of the kernel modules, which is this module's: gpt2_llm/tokenizer/."""
    return os.path.dirname(os.path.abspath(__file__))


def _cpu_description():
    """The CPU numba compiles for: its model and instruction-set flags (Linux), or what the platform reports."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            first_cpu = f.read().split("\n\n", 1)[0]
        lines = [line for line in first_cpu.splitlines() if line.startswith(("model name", "flags", "Features"))]
    except OSError:
        lines = []
    return hashlib.sha256("\n".join([platform.machine(), platform.processor(), *lines]).encode()).hexdigest()[:16]


def kernel_cache_folder():
    """The folder numba caches the kernels in: the first writable of NUMBA_CACHE_DIR, __pycache__ beside the kernel
    modules, numba's user cache folder, and the temp folder that kernels.py falls back to (numba's own order, which
    tests check against numba). kernel_cache_folder() -> ".../gpt2_llm/tokenizer/__pycache__" """
    folder = _kernels_folder()
    # numba names a cache folder outside the source tree after the source folder's name and a hash of its path
    subfolder = f"{os.path.basename(folder)}_{hashlib.sha1(folder.encode()).hexdigest()}"
    if sys.platform == "win32":
        user_cache = os.path.join(os.environ.get("LOCALAPPDATA", os.path.expanduser("~")), "numba", "numba", "Cache")
    elif sys.platform == "darwin":
        user_cache = os.path.expanduser("~/Library/Caches/numba")
    else:
        user_cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "numba")
    candidates = [os.path.join(os.environ["NUMBA_CACHE_DIR"], subfolder)] if os.environ.get("NUMBA_CACHE_DIR") else []
    candidates += [os.path.join(folder, "__pycache__"), os.path.join(user_cache, subfolder)]
    writable = next((c for c in candidates if _could_write_in(c)), None)
    return writable or os.path.join(tempfile.gettempdir(), f"gpt2_llm_numba_cache_{getattr(os, 'getuid', str)()}",
                                    subfolder)


def _could_write_in(folder):
    """Whether folder is writable, or could be made in its nearest existing parent: as numba checks, less the write."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def _read_marker(folder):
    try:
        with open(os.path.join(folder, _MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _compile_lock_is_held(folder):
    if fcntl is None:
        return False
    try:
        fd = os.open(os.path.join(folder, _LOCK), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _open_compile_lock(folder):
    """The lock file of folder's compiles, opened (made if need be), not locked yet."""
    os.makedirs(folder, exist_ok=True)
    return open(os.path.join(folder, _LOCK), "a")


def _note_compiling_pid(lock, pid):
    """Write in the lock file which process compiles, for a person (or a test) to find it."""
    lock.truncate(0)
    lock.write(f"{pid}\n")
    lock.flush()


def _start_background_compile():
    """Start a process that compiles the kernels into the cache at low priority, unless one runs already; say so on
    stderr. False where that cannot be done here (no fcntl: Windows): then the caller compiles them itself."""
    global _background_compile_started
    if fcntl is None:
        return False
    if _background_compile_started:
        return True
    _background_compile_started = True
    folder = kernel_cache_folder()
    with _open_compile_lock(folder) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("The tokenizer's compiled kernels are being compiled by another process (once per machine); this "
                  "run uses the Python path", file=sys.stderr)
            return True
        with open(os.path.join(folder, _LOG), "w") as log:
            # The child inherits the locked file, so the lock is held until it exits, even after this one closes it.
            child = subprocess.Popen(_compile_command(_KERNEL_GROUPS, background=True), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, pass_fds=(lock.fileno(),), start_new_session=True)
        _note_compiling_pid(lock, child.pid)
    print(f"Compiling the tokenizer's kernels in the background (once per machine, ~{2 * _COMPILE_SECONDS} s); this "
          "run uses the Python path, the next runs the compiled one, several times faster", file=sys.stderr)
    return True


def compile_kernels(progress=True):
    """Compile the kernels into numba's disk cache now, unless they are there: one line on stderr, then a progress
    bar (on a terminal) while the groups compile in parallel processes. Waits for a compile in another process."""
    folder = kernel_cache_folder()
    with _open_compile_lock(folder) if fcntl else suppress() as lock:
        if fcntl:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print("Waiting for the tokenizer's kernels, being compiled by another process (once per machine)",
                      file=sys.stderr)
                fcntl.flock(lock, fcntl.LOCK_EX)
            _note_compiling_pid(lock, os.getpid())
        expected = _cache_marker()
        if _read_marker(folder) == expected:
            return
        print(f"Compiling the tokenizer's kernels (once per machine, ~{_COMPILE_SECONDS} s; later runs load them in "
              "under a second)", file=sys.stderr)
        children = [subprocess.Popen(_compile_command([group]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for group in _KERNEL_GROUPS]
        show = progress and sys.stderr.isatty()
        for group, child in tqdm(zip(_KERNEL_GROUPS, children), total=len(children), desc="Compiling kernels",
                                 unit="group", disable=not show):
            _, errors = child.communicate()
            if child.returncode:
                raise RuntimeError(f"compiling the tokenizer's {group} kernels failed:\n{errors}")
        atomic_write(os.path.join(folder, _MARKER), json.dumps(expected))


def _compile_command(groups, background=False):
    """The command line of a Python process that runs compile_in_this_process(groups, warm_up.run_kernels_once,
    background). It imports from the folder that holds gpt2_llm/ and bpe.py, wherever it was started."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from gpt2_llm.tokenizer import compiled, warm_up; "
            f"compiled.compile_in_this_process(sys.argv[3:], warm_up.run_kernels_once, write_marker={background})")
    source_root = os.path.dirname(os.path.dirname(_kernels_folder()))
    return [sys.executable, "-c", code, source_root, "--", *groups]


def compile_in_this_process(groups, run_kernels_once, write_marker=False):
    """Compile the kernel groups (of _KERNEL_GROUPS) into numba's disk cache: run_kernels_once(groups, kernels,
    training_kernels) runs the tokenizer's own code on tiny inputs (gpt2_llm/tokenizer/warm_up.py), so each kernel
    compiles for the argument types real calls give it; then, if asked, write the marker that says every kernel is
    cached. A background compile does all of this, niced, in one process."""
    global _kernels
    if write_marker:
        with suppress(OSError, AttributeError):
            os.nice(10)  # leave the cores to the run that started it
    from gpt2_llm.tokenizer import kernels as _kernels
    from gpt2_llm.tokenizer import training_kernels

    run_kernels_once(groups, _kernels, training_kernels)
    for kernel in (_kernels.encode_utf8, training_kernels.count_utf8, training_kernels.train_merges):
        if kernel.stats.cache_path != kernel_cache_folder():  # then kernels_cache_status would look in vain
            raise RuntimeError(f"numba caches in {kernel.stats.cache_path}, not in {kernel_cache_folder()}")
    if write_marker:
        atomic_write(os.path.join(kernel_cache_folder(), _MARKER), json.dumps(_cache_marker()))

