"""Where downloaded and converted datasets are kept: `$DFL_DATA_DIR`, else `$XDG_CACHE_HOME/dfl`,
else `~/.cache/dfl`, one folder per dataset (and `wheels/` for the offline copy).

Not `platformdirs`: on Linux its user cache dir is this same `$XDG_CACHE_HOME` or `~/.cache`,
and elsewhere it would move the cache away from `~/.cache`, where torch hub and Hugging Face
keep theirs on every platform, for a dependency that replaces three lines (`DFL_DATA_DIR`
stays ours either way).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$DFL_DATA_DIR`, else `$XDG_CACHE_HOME/dfl`, else `~/.cache/dfl`."""
    if env := os.environ.get("DFL_DATA_DIR"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "dfl"
    return Path.home() / ".cache" / "dfl"


def dataset_cache_dir(name: str) -> Path:
    """The cache folder of one known dataset, e.g. `~/.cache/dfl/mnist`."""
    return cache_root() / name
