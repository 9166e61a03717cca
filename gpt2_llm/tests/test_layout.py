"""The package's layout, read from its source: no import circle, and the model folder is the ground floor.

Every `import` and `from ... import` is read (at any depth, inside functions too), so a lazy import
cannot hide a circle.
"""
import ast
import sys
from pathlib import Path

import pytest
from gpt2_llm.tests.helpers import REPO

PACKAGE = REPO / "gpt2_llm"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files():
    files = [REPO / "bpe.py", *sorted(PACKAGE.rglob("*.py"))]
    return [path for path in files if "tests" not in path.relative_to(REPO).parts]


MODULES = {module_name(path): path for path in source_files()}


def imports_of(name: str) -> set[str]:
    """The project's modules that module `name` imports: `from gpt2_llm.infer import sampling` names
    gpt2_llm.infer.sampling, `from gpt2_llm.infer.sampling import SamplingSettings` the same module."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {module for module in found if module in MODULES and module != name and module != "gpt2_llm"}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_walk_sees_the_package():
    assert {"bpe", "gpt2_llm.gpt2", "gpt2_llm.model.gpt2", "gpt2_llm.serving.engine"} <= set(MODULES)
    assert "gpt2_llm.model.gpt2" in GRAPH["gpt2_llm.gpt2"]  # a plain `from ... import Name` counts


def test_no_import_circle():
    # Depth-first search; a module met again while it is still on the path closes a circle.
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(GRAPH)))
    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert circles == [], "\n".join(" -> ".join(circle) for circle in circles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("gpt2_llm.model")))
def test_the_model_folder_imports_nothing_above_it(module):
    allowed = {"gpt2_llm.errors"}  # the one error type, which imports nothing
    outside = {m for m in GRAPH[module] if not m.startswith("gpt2_llm.model") and m not in allowed}
    assert outside == set(), f"{module} imports {sorted(outside)}"


def test_no_command_imports_another_command():
    commands = {m for m in MODULES if m.startswith("gpt2_llm.commands.") and m != "gpt2_llm.commands.common"}
    for module in sorted(commands):
        assert GRAPH[module] & commands == set(), module
