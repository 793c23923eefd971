"""Every ``from segbench... import name`` in the package, the scripts and the tests names something that
exists, the imports inside functions included (they run only on the path that needs them, so a moved name
would otherwise surface as a crash of that path alone, e.g. one command's error report)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("segbench", "scripts", "tests", "hydra_plugins")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def segbench_imports(path: Path) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of every ``from <segbench module> import name`` in ``path``."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module == "segbench" or module.startswith("segbench."):
            found += [(node.lineno, module, alias.name) for alias in node.names if alias.name != "*"]
    return found


CASES = [(path, *entry) for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))
         for entry in segbench_imports(path)]


def test_the_walk_finds_the_imports_inside_functions():
    lines = {(module, name) for path, _, module, name in CASES if path.name == "eval.py"}
    assert ("segbench.errors", "report_error") in lines  # imported inside main()


@pytest.mark.parametrize("module", sorted({module for _, _, module, _ in CASES}))
def test_every_imported_segbench_name_exists(module):
    loaded = importlib.import_module(module)
    missing = []
    for path, line, mod, name in CASES:
        if mod != module or hasattr(loaded, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")  # a submodule: from segbench.runtime import rundir
        except ImportError:
            missing.append(f"{path.relative_to(ROOT)}:{line}: from {module} import {name}")
    assert not missing, "names that do not exist:\n" + "\n".join(missing)
