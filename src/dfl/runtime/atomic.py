"""Write files so that a reader sees either nothing or the complete file, never a partial one.

Every file dfl writes (cache files, checkpoints, run records, reports) goes through here: a
temporary file in the same directory (so the final rename never crosses a filesystem), fsync,
then `os.replace`. A crash
or a failed checksum leaves at most a hidden `*.part` file, never a half-written final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def temp_path_in(directory: Path, name: str) -> Path:
    """Create an empty hidden temporary file next to where `name` will go, and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def is_interrupted_write(name: str, finals: Iterable[str]) -> bool:
    """Whether the file `name` is the temporary file of a write to one of `finals` that a kill
    stopped before its rename (`.config.toml.x1y2z3.part`): it holds nothing anyone will read."""
    return name.endswith(".part") and any(name.startswith(f".{final}.") for final in finals)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `final` only if the `with` block finishes without error."""
    tmp = temp_path_in(final.parent, final.name)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; cache files are ordinary data, readable like any other.
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """Write `data` to `final` atomically (temp file in the same dir, fsync, rename)."""
    with atomic_file(final) as f:
        f.write(data)


def atomic_write_json(final: Path, obj: Any) -> None:
    """Standard JSON: a NaN or an infinity (a std over one seed, a diverged metric) is written
    as null, which every JSON reader takes, where Python's bare NaN is not JSON."""
    text = json.dumps(_finite(obj), indent=1, allow_nan=False)
    atomic_write_bytes(final, (text + "\n").encode())


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; best effort, since some filesystems refuse it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
