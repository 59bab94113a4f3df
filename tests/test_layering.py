"""The package's layers, read from its imports: data flows one way, data -> models ->
objectives -> training -> results (sweeps and experiments) -> report -> commands, and no module
imports one from a layer above it (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "dfl"

# Lowest first. A module may import its own layer and those below; a name matches a module
# and everything under it, the longest name winning (dfl.sweep.commands is a command).
LAYERS = [
    "dfl.errors dfl.validation dfl.arguments dfl.runtime",
    "dfl.data",
    "dfl.models",
    "dfl.objectives",
    "dfl.config",  # a run's description: which model and objective, checked against both
    "dfl.training dfl.labtools dfl.api",
    "dfl.sweep",
    "dfl.experiments",
    "dfl.report",
    "dfl.reproduce dfl.lab",
    "dfl.commands dfl.cli dfl.__main__ dfl.sweep.__main__ dfl.sweep.commands",
]


def layer(module: str) -> int:
    found = [
        (len(name), i)
        for i, names in enumerate(LAYERS)
        for name in names.split()
        if module == name or module.startswith(name + ".")
    ]
    assert found, f"{module} is in no layer: add it to LAYERS"
    return max(found)[1]


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports() -> list[tuple[str, str]]:
    """(importer, imported) for every dfl import in src/dfl, deferred ones included, in every
    form: `import dfl.x`, `from dfl.x import y`, `from dfl import x` (x a module) and relative
    imports (`from .idx import ...`)."""
    pairs = []
    for path in SRC.rglob("*.py"):
        parts = ("dfl", *path.relative_to(SRC).with_suffix("").parts)
        name = ".".join(parts).removesuffix(".__init__")
        if name == "dfl":  # the package's lazy exports (dfl.train, dfl.lab) sit above all
            continue
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                pairs += [(name, a.name) for a in node.names if a.name.startswith("dfl.")]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    module = f"{base}.{module}" if module else base
                if module != "dfl" and not module.startswith("dfl."):
                    continue
                if module != "dfl":
                    pairs.append((name, module))
                # `from dfl.training import checkpoint`: the module named, not only its package
                pairs += [
                    (name, f"{module}.{a.name}")
                    for a in node.names
                    if is_module(f"{module}.{a.name}")
                ]
    return pairs


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{a} -> {b}" for a, b in imports() if layer(b) > layer(a)]
    assert upward == []


def test_the_package_is_read_as_expected():
    """The test above must see the real graph: known edges are in it."""
    pairs = set(imports())
    assert ("dfl.report.build", "dfl.experiments.registry") in pairs
    assert ("dfl.training.trainer", "dfl.training.run_dir") in pairs
    assert ("dfl.training.trainer", "dfl.models") in pairs  # `from dfl import models`
    assert ("dfl.training.trainer", "dfl.training.checkpoint") in pairs  # from a package
    assert ("dfl.data.dataset", "dfl.data.idx") in pairs  # `from .idx import ...`
