"""The shape of `helpers/`: modules import one way only, and functions stay short enough to read.

Both read the source with `ast`, so they see imports inside functions as well as at module top.
"""

import ast
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
MAX_FUNCTION_LINES = 60
# The training loop reads as one story, top to bottom, on one screen (as nanoGPT's): cutting it into
# pieces under the limit would scatter the step over many functions. Every other function stays short.
ONE_SCREEN = 100
LONGER_ALLOWED: dict[tuple[str, str], int] = {("train.py", "fit"): ONE_SCREEN}


def imported_helpers(source: str, module: str) -> set[str]:
    """helpers modules that `source` (the text of helpers/<module>.py) imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                base = node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] == "helpers":
                base = node.module.removeprefix("helpers").removeprefix(".") or None
            else:
                continue
            names = [base] if base else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name.removeprefix("helpers.") for alias in node.names]
            names = [name for name, alias in zip(names, node.names) if alias.name.startswith("helpers.")]
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found - {module}


def import_graph(folder: Path = HELPERS) -> dict[str, set[str]]:
    """{module: helpers modules it imports} for every helpers/*.py but the package's __init__."""
    modules = {path.stem: path for path in folder.glob("*.py") if path.stem != "__init__"}
    return {
        name: imported_helpers(path.read_text(encoding="utf-8"), name) & modules.keys()
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_import_graph_reads_imports_at_any_depth():
    source = (
        "from helpers.files import write_json_atomic\n"
        "from .text import NULL\n"
        "import helpers.space\n"
        "from helpers import runlock\n"
        "import json\n"
        "def f():\n"
        "    from helpers.train import train\n"
        "    class A:\n"
        "        def g(self):\n"
        "            from .evaluate import x\n"
    )
    assert imported_helpers(source, "demo") == {"files", "text", "space", "runlock", "train", "evaluate"}


def test_find_cycle_finds_direct_and_chained_cycles():
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_helpers_modules_import_one_way():
    graph = import_graph()
    assert {"train", "evaluate", "config", "models"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, (
        f"helpers modules import each other: {' -> '.join(cycle)}. Move what both need into a module "
        "that neither imports from."
    )


# config.py checks a config without torch: the only helpers modules it imports are the plain facts of
# choices.py and the file locations of files.py, which import no helpers module themselves.
CONFIG_MAY_IMPORT = {"choices", "files"}


def imported_packages(source: str) -> set[str]:
    """Top-level names of the absolute imports in `source`, anywhere in the file (`torch` for `torch.nn`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_imported_packages_reads_imports_at_any_depth():
    source = "import torch.nn\nfrom yaml import load\nfrom .text import NULL\n"
    source += "def f():\n    import torchvision\n"
    assert imported_packages(source) == {"torch", "yaml", "torchvision"}


def test_config_is_a_leaf_without_torch():
    graph = import_graph()
    assert graph["config"] <= CONFIG_MAY_IMPORT, (
        f"config.py imports {sorted(graph['config'] - CONFIG_MAY_IMPORT)}: it holds the schema, layering, "
        "overrides, validation and run identity only; put the facts it checks against in choices.py"
    )
    assert not any(graph[module] for module in CONFIG_MAY_IMPORT), {m: graph[m] for m in CONFIG_MAY_IMPORT}
    for module in ("config", *sorted(CONFIG_MAY_IMPORT)):
        source = (HELPERS / f"{module}.py").read_text(encoding="utf-8")
        assert not imported_packages(source) & {"torch", "torchvision"}, f"{module}.py imports torch"


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of each function or method in `source` longer than `limit` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    lines = child.end_lineno - start + 1
                    if lines > limit:
                        found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_long_functions_measures_nested_functions_and_methods():
    body = "\n".join(f"        x{i} = {i}" for i in range(61))
    source = f"def short():\n    pass\n\nclass A:\n    def long(self):\n{body}\n"
    assert long_functions(source) == [("A.long", 62)]
    assert long_functions(source, limit=62) == []


@pytest.mark.parametrize("path", sorted(HELPERS.glob("*.py")), ids=lambda path: path.name)
def test_functions_stay_short_and_the_training_loop_fits_one_screen(path):
    measured = dict(long_functions(path.read_text(encoding="utf-8")))
    too_long = {
        name: lines
        for name, lines in measured.items()
        if lines > LONGER_ALLOWED.get((path.name, name), MAX_FUNCTION_LINES)
    }
    assert not too_long, (
        f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {too_long}; split them into named steps "
        f"(the training loop, train.fit, may take up to {ONE_SCREEN} lines: one screen)"
    )


def test_the_training_loop_is_one_function_within_three_calls_of_the_command_line():
    """`python -m helpers.train` -> main -> train -> fit, where the step (the objective's loss,
    apply_gradients) happens: a newcomer reads the loop without following a chain of small pieces."""
    tree = ast.parse((HELPERS / "train.py").read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    def calls(name: str) -> set[str]:
        return {node.func.id for node in ast.walk(functions[name])
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}

    assert "train" in calls("main") and "fit" in calls("train")
    assert {"apply_gradients", "_validate", "out_of_time"} <= calls("fit")
