"""The package's layers, read from its imports: data flows one way, data -> models ->
objectives -> training -> results (sweeps and experiments) -> report -> commands, and no module
imports one from a layer above it (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "dfl"

# Lowest first. A module may import its own layer and those below; a name matches a module
# and everything under it, the longest name winning (dfl.sweep.commands is a command).
LAYERS = [
    "dfl.errors dfl.validation dfl.atomic dfl.interrupts dfl.subnormals dfl.allocator "
    "dfl.core_share dfl.run_lock dfl.local_workers",
    "dfl.data",
    "dfl.models",
    "dfl.objectives",
    "dfl.config",  # a run's description: which model and objective, checked against both
    "dfl.checkpoint dfl.run_dir dfl.device_step dfl.trainer dfl.trained dfl.shapes "
    "dfl.conv_arithmetic dfl.attention_check dfl.api",
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


def imports() -> list[tuple[str, str]]:
    """(importer, imported) for every dfl import in src/dfl, deferred ones included."""
    pairs = []
    for path in SRC.rglob("*.py"):
        parts = ("dfl", *path.relative_to(SRC).with_suffix("").parts)
        name = ".".join(parts).removesuffix(".__init__")
        if name == "dfl":  # the package's lazy exports (dfl.train, dfl.lab) sit above all
            continue
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # `from .idx import ...`
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
                pairs += (
                    [(name, module)]
                    if node.module
                    else [(name, f"{base}.{a.name}") for a in node.names]
                )
            elif isinstance(node, ast.Import):
                pairs += [(name, a.name) for a in node.names if a.name.startswith("dfl.")]
            elif isinstance(node, ast.ImportFrom) and node.module == "dfl":
                # `from dfl import models`: each name is a module, or the package's lazy
                # exports (`__version__`), which sit at the bottom
                pairs += [(name, f"dfl.{a.name}") for a in node.names if a.name != "__version__"]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dfl."):
                pairs.append((name, node.module))
    return pairs


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{a} -> {b}" for a, b in imports() if layer(b) > layer(a)]
    assert upward == []


def test_the_package_is_read_as_expected():
    """The test above must see the real graph: known edges are in it."""
    pairs = set(imports())
    assert ("dfl.report.build", "dfl.experiments.registry") in pairs
    assert ("dfl.trainer", "dfl.run_dir") in pairs
    assert ("dfl.trainer", "dfl.checkpoint") in pairs  # `from dfl import checkpoint`
    assert ("dfl.data.dataset", "dfl.data.idx") in pairs  # `from .idx import ...`
