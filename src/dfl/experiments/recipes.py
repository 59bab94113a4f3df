"""The beyond-the-lab recipes as config files.

Each `NAME.toml` in dfl's `recipes/` folder is a whole `dfl train --config` file (in a checkout
`configs/recipes/` is that folder). The profile stages that train a recipe read it from here and
change only what a profile must (the seed; epochs and images in the smoke profile), so the
recipe the report names is the one a user trains alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dfl
from dfl.config import read_toml

FOLDER = Path(dfl.__file__).parent / "recipes"


def path(name: str) -> Path:
    """The recipe file `name.toml`."""
    return FOLDER / f"{name}.toml"


def recipe(name: str) -> dict[str, Any]:
    """The recipe `name` as a config tree (what `dfl train --config` reads)."""
    return read_toml(path(name))


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.toml"))
