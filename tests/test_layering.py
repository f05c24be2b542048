"""Imports flow one way: config <- modeling <- processing <- data <- training <- evaluation <- lab <- cli.

Every module of the package is imported (none may fail), and its `wings` imports, read from the
source with `ast` (function-level ones included), must point to its own layer or a lower one.
Within the package the module import graph has no cycle (a cycle dodged by a function-local import
counts too).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import wings

# Lowest first. A module's layer is that of its longest listed prefix.
LAYERS: list[tuple[str, ...]] = [
    ("wings.errors", "wings.compat", "wings.validation", "wings.families", "wings.image_layout", "wings.config"),
    ("wings.modeling",),
    ("wings.processing", "wings.chat_content", "wings.presets"),
    ("wings.data",),
    ("wings.training",),
    ("wings.evaluation",),
    # Applications of the library: the lab, chat, serving, export, integrations with other tools.
    ("wings.lab", "wings.chat", "wings.demo", "wings.serving", "wings.export", "wings.integrations"),
    ("wings.cli", "wings.cli_builder", "wings.cli_commands"),
]
PACKAGE_ROOT = Path(wings.__file__).parent


def all_modules() -> list[str]:
    names = ["wings"]
    for info in pkgutil.walk_packages([str(PACKAGE_ROOT)], prefix="wings."):
        names.append(info.name)
    return sorted(names)


def layer_of(module: str) -> int | None:
    """Index into LAYERS; None for the package root (it only re-exports the public classes)."""
    if module == "wings":
        return None
    best, level = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return level


def source_path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE_ROOT / relative / "__init__.py"
    return package if package.is_file() else (PACKAGE_ROOT / relative).with_suffix(".py")


def wings_imports(module: str) -> set[str]:
    """The `wings` modules ``module`` imports anywhere in its source (as `from x import y` may name
    a submodule, ``x.y`` counts when it is a module)."""
    path = source_path(module)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    known = set(all_modules())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "wings")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "wings":
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {name for name in found if name in known and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def import_graph() -> dict[str, set[str]]:
    # A package's __init__ runs before its submodules; importing the package itself is not an
    # edge back into its own submodules, so only module-to-module edges are kept.
    return {module: wings_imports(module) for module in all_modules()}


# Modules that exist to plug into an optional tool import it at the top; they are imported where it is installed.
OPTIONAL_TOOLS = {"wings.serving.": "vllm", "wings.integrations.lmms_eval": "lmms_eval"}


@pytest.mark.parametrize("module", all_modules())
def test_every_module_imports(module):
    for prefix, tool in OPTIONAL_TOOLS.items():
        if module.startswith(prefix) and importlib.util.find_spec(tool) is None:
            pytest.skip(f"{module} needs {tool}, which this environment does not have")
    importlib.import_module(module)


def test_imports_flow_one_way():
    wrong = []
    for module, imported in import_graph().items():
        level = layer_of(module)
        if level is None:
            continue
        for target in sorted(imported):
            target_level = layer_of(target)
            if target_level is not None and target_level > level:
                wrong.append(f"{module} ({LAYERS[level][0]}) imports {target} ({LAYERS[target_level][0]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t in targets if t != "wings"} for m, targets in import_graph().items()}
    # A package importing its own submodules (an __init__ re-exporting) is not a cycle.
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The checker itself: the old scoring <-> iit cycle, and a model module importing evaluation."""
    old = {
        "wings.evaluation.scoring": {"wings.evaluation.iit", "wings.evaluation.pools"},
        "wings.evaluation.iit": {"wings.evaluation.scoring", "wings.evaluation.pools"},
        "wings.evaluation.pools": set(),
    }
    assert find_cycle(old) == ["wings.evaluation.iit", "wings.evaluation.scoring", "wings.evaluation.iit"]
    assert layer_of("wings.modeling.model") < layer_of("wings.evaluation.scoring")
    assert layer_of("wings.lab.pipeline") > layer_of("wings.evaluation.scoring")


def test_function_local_imports_are_seen(tmp_path, monkeypatch):
    """An import inside a function (how the old cycle was dodged) counts as an edge."""
    source = "def f():\n    from .iit import evaluate_iit\n    from wings.evaluation import pools\n"
    fake = PACKAGE_ROOT / "evaluation" / "scoring.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == fake else "")
    assert wings_imports("wings.evaluation.scoring") >= {"wings.evaluation.iit", "wings.evaluation.pools"}
