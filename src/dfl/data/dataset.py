"""`load_dataset`: the four IDX files of a dataset as CPU tensors, verified.

Known datasets (mnist, fashion-mnist) are checked file by file against the official sha256 of
the decompressed bytes, wherever they came from. A custom directory has no reference, so it is
checked for shape and label sanity only, and the number of classes is read from its labels.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfl.errors import DataError

from .checksums import (
    IDX_FILE_NAMES,
    KNOWN_DATASETS,
    KNOWN_FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    Checksum,
)
from .idx import IMAGES_MAGIC, IdxFile, read_idx
from .sources import Located, locate_in_dir, locate_known

IMAGE_SIZE = (28, 28)
MAX_LABEL_EXCLUSIVE = 255  # labels are stored as bytes; keep 255 free as a sentinel
KNOWN_NUM_CLASSES = 10
_MISMATCH_FIXES = {
    "data-dir": "not the official file; to use it as a custom dataset pass its directory instead",
    "debian": "reinstall dataset-fashion-mnist, or pass --data-dir DIR with the official files",
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is meaningless
class Dataset:
    """A whole image-classification dataset in memory (60,000 x 784 uint8 is only 47 MB)."""

    name: str  # "mnist", "fashion-mnist", or the directory name of a custom dataset
    train_images: torch.Tensor = field(repr=False)  # uint8 [N, 28, 28], CPU
    train_labels: torch.Tensor = field(repr=False)  # int64 [N]
    test_images: torch.Tensor = field(repr=False)  # uint8 [M, 28, 28]
    test_labels: torch.Tensor = field(repr=False)  # int64 [M]
    num_classes: int
    source: str  # "data-dir" | "cache" | "embedded" | "debian" | "download"
    path: Path  # the directory the IDX files were read from
    verified: str  # "sha256 verified (4/4 files)" or "no reference checksums (custom dataset)"

    @functools.cached_property
    def fingerprint(self) -> str:
        """The sha256 of the images and labels (16 hex digits), which a run directory records:
        a run killed on one dataset must not resume on another (about 50 ms for MNIST)."""
        digest = hashlib.sha256()
        for t in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def load_dataset(
    dataset: str | Path = "mnist",
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load "mnist", "fashion-mnist", or a directory of 28x28 IDX files (a custom dataset).

    `data_dir` names a directory holding a known dataset's four files (they must match the
    official checksums). Without it the cache, the embedded copy and, if `download`, the
    mirrors (`mirrors`, else `$DFL_MIRRORS`, else the public ones) are tried in turn.
    Any problem with the files raises DataError with a one-line message.
    """
    name, located = _locate(dataset, data_dir, download, mirrors)
    reference = KNOWN_FILES.get(name) if name in KNOWN_DATASETS else None
    files = {
        n: _read_verified(located, n, reference[n] if reference else None, name)
        for n in IDX_FILE_NAMES
    }
    train_images = _images(files[TRAIN_IMAGES])
    train_labels = _labels(files[TRAIN_LABELS], files[TRAIN_IMAGES])
    test_images = _images(files[TEST_IMAGES])
    test_labels = _labels(files[TEST_LABELS], files[TEST_IMAGES])
    if reference:
        num_classes = KNOWN_NUM_CLASSES
        verified = f"sha256 verified ({len(files)}/{len(IDX_FILE_NAMES)} files)"
    else:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
        verified = "no reference checksums (custom dataset)"
    return Dataset(
        name=name,
        train_images=torch.from_numpy(train_images),
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
        num_classes=num_classes,
        source=located.source,
        path=located.directory,
        verified=verified,
    )


def _locate(
    dataset: str | Path,
    data_dir: str | Path | None,
    download: bool,
    mirrors: Sequence[str] | None,
) -> tuple[str, Located]:
    if isinstance(dataset, str) and dataset in KNOWN_DATASETS:
        if data_dir is not None:
            return dataset, locate_in_dir(Path(data_dir).expanduser(), dataset)
        return dataset, locate_known(dataset, download=download, mirrors=mirrors)
    root = Path(dataset).expanduser()
    if not root.is_dir():
        known = ", ".join(KNOWN_DATASETS)
        what = "a file, not a directory" if root.exists() else "no such directory"
        raise DataError(
            f"unknown dataset {str(dataset)!r}: expected one of {known} "
            f"or a directory of IDX files ({what})"
        )
    if data_dir is not None and Path(data_dir).expanduser().resolve() != root.resolve():
        raise DataError(
            f"two directories given for one dataset: {root} (as the dataset) and {data_dir} "
            "(as the data dir); pass the custom dataset's directory once"
        )
    return root.resolve().name, locate_in_dir(root, None)


def _read_verified(
    located: Located, name: str, reference: Checksum | None, dataset: str
) -> IdxFile:
    idx = read_idx(located.files[name])
    if reference is None:
        return idx
    if idx.nbytes != reference.nbytes or idx.sha256 != reference.sha256:
        fix = _MISMATCH_FIXES.get(located.source, "delete it and rerun to fetch it again")
        raise DataError(
            f"checksum mismatch for {idx.path}: expected sha256 {reference.sha256} "
            f"({reference.nbytes} bytes) for {dataset} {name}, found {idx.sha256} "
            f"({idx.nbytes} bytes) ({fix})"
        )
    return idx


def _images(idx: IdxFile) -> np.ndarray:
    a = idx.array
    if idx.magic != IMAGES_MAGIC or a.shape[1:] != IMAGE_SIZE:
        raise DataError(
            f"wrong images file {idx.path}: expected uint8 images [N, 28, 28] (magic 2051), "
            f"found {a.dtype} [{', '.join(map(str, a.shape))}] (magic {idx.magic})"
        )
    if a.shape[0] == 0:
        raise DataError(f"empty images file {idx.path}: expected at least 1 image, found 0")
    return a


def _labels(idx: IdxFile, images: IdxFile) -> np.ndarray:
    a = idx.array
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(
            f"wrong labels file {idx.path}: expected integer labels [N] (magic 2049), "
            f"found {a.dtype} [{', '.join(map(str, a.shape))}] (magic {idx.magic})"
        )
    if a.shape[0] != images.array.shape[0]:
        raise DataError(
            f"label count mismatch: {idx.path} has {a.shape[0]} labels but {images.path} has "
            f"{images.array.shape[0]} images (expected one label per image)"
        )
    low, high = int(a.min()), int(a.max())
    if low < 0 or high >= MAX_LABEL_EXCLUSIVE:
        raise DataError(
            f"labels out of range in {idx.path}: expected integers in [0, {MAX_LABEL_EXCLUSIVE}), "
            f"found min {low}, max {high}"
        )
    return a.astype(np.int64)
