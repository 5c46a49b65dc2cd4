"""Imports point one way: inference and evaluation never import training code (DESIGN.md, "The way data flows").

Checked by parsing every module's imports, including the ones inside functions, and following
them through the package: a pipeline that imports a helper that imports a trainer breaks the rule
as surely as one that imports the trainer itself.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = "xray_generator"
TRAINING = f"{PACKAGE}.training"
# (what must not import training, as a description, and the test for a module name)
RULES = [
    ("inference (xray_generator/pipelines/ and xray_generator/weights.py)",
     lambda module: module.startswith(f"{PACKAGE}.pipelines.") or module == f"{PACKAGE}.weights"),
    ("evaluation (xray_generator/evaluation/)", lambda module: module.startswith(f"{PACKAGE}.evaluation.")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name `source` imports anywhere (top level, in functions, via importlib), relative ones resolved.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c``: c may be a module; a name that is not one
    is dropped later, when the graph keeps only modules that exist.
    """
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in sorted((REPO / PACKAGE).rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        targets = imported_names(path.read_text(), module, is_package=path.name == "__init__.py")
        graph[module] = {parent for name in targets if name.startswith(PACKAGE) for parent in with_parents(name) if parent in files} - {module}
    return graph


def path_to_training(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import chain from `start` into xray_generator.training, or None."""
    previous = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        if current == TRAINING or current.startswith(TRAINING + "."):
            chain = [current]
            while previous[chain[-1]] is not None:
                chain.append(previous[chain[-1]])
            return chain[::-1]
        for target in sorted(graph.get(current, ())):
            if target not in previous:
                previous[target] = current
                queue.append(target)
    return None


@pytest.mark.parametrize("description, applies", RULES, ids=["inference", "evaluation"])
def test_no_import_chain_leads_from_inference_or_evaluation_into_training(description, applies):
    graph = import_graph()
    checked = [module for module in graph if applies(module)]
    assert checked, f"no modules found for {description}: has the layout moved?"
    chains = {module: chain for module in checked if (chain := path_to_training(graph, module))}
    assert not chains, f"{description} must not import {TRAINING}; import chains:\n" + "\n".join(" -> ".join(c) for c in chains.values())


@pytest.mark.parametrize("source", [
    "import xray_generator.training.train_vae",
    "import xray_generator.training.train_vae as tv",
    "from xray_generator.training.checkpointing import EMA",
    "from xray_generator import training",
    "from xray_generator.training import train_ldm",
    "from ..training import train_ldm",
    "def later():\n    from xray_generator.training.train_cvae import export_cvae\n",
    "import importlib\nimportlib.import_module('xray_generator.training.train_gan')",
])
def test_the_parser_sees_every_form_of_importing_training(source):
    graph = {"xray_generator.pipelines.example": {
        parent for name in imported_names(source, "xray_generator.pipelines.example") if name.startswith(PACKAGE)
        for parent in with_parents(name)
    }}
    assert path_to_training(graph, "xray_generator.pipelines.example") is not None


def test_the_chain_is_followed_through_modules_that_are_neither():
    graph = {"xray_generator.pipelines.a": {"xray_generator.models.b"}, "xray_generator.models.b": {"xray_generator.training.c"}}
    assert path_to_training(graph, "xray_generator.pipelines.a") == ["xray_generator.pipelines.a", "xray_generator.models.b", "xray_generator.training.c"]
    assert path_to_training({"xray_generator.pipelines.a": {"xray_generator.models.b"}}, "xray_generator.pipelines.a") is None
