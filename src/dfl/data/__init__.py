"""Datasets: MNIST, Fashion-MNIST or any 28x28 IDX dataset, from a verified source.

`load_dataset` tries a user directory, the cache, the embedded offline copy and the public
mirrors, in that order (see docs/DATA.md), and checks every known file against its sha256.
"""

from __future__ import annotations

from dfl.arguments import checked

from .dataset import Dataset, load_dataset
from .info import dataset_info, format_info
from .splits import random_subset, train_val_split

load = checked("dfl.data.load")(load_dataset)  # `dfl.data.load("mnist")`

__all__ = [
    "Dataset",
    "dataset_info",
    "format_info",
    "load",
    "load_dataset",
    "random_subset",
    "train_val_split",
]
