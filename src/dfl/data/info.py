"""What `dfl data info` shows: where a dataset came from, its sizes, class balance, checksums."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .dataset import Dataset, load_dataset


def dataset_info(
    dataset: str | Path | Dataset = "mnist",
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Describe a dataset (loading it first unless a Dataset is given) as a JSON-ready dict."""
    ds = (
        dataset
        if isinstance(dataset, Dataset)
        else load_dataset(dataset, data_dir, download=download, mirrors=mirrors)
    )
    mean, std = _pixel_stats(ds.train_images)
    return {
        "name": ds.name,
        "source": ds.source,
        "path": str(ds.path),
        "verified": ds.verified,
        "num_classes": ds.num_classes,
        "image_shape": list(ds.train_images.shape[1:]),
        "train": _split_info(ds.train_labels, ds.num_classes),
        "test": _split_info(ds.test_labels, ds.num_classes),
        "pixel_mean": round(mean, 4),
        "pixel_std": round(std, 4),
    }


def _pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the pixels scaled to [0, 1] (what a Normalize step needs).

    From a 256-bin histogram: exact, and no 376 MB float64 copy of the training set.
    """
    hist = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = hist.sum()
    mean = (hist * values).sum() / n
    var = (hist * (values - mean) ** 2).sum() / max(n.item() - 1, 1)
    return mean.item(), var.sqrt().item()


def _split_info(labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    counts = torch.bincount(labels, minlength=num_classes)
    return {"count": int(labels.numel()), "class_counts": [int(c) for c in counts]}


def format_info(info: dict[str, Any]) -> str:
    """A small readable text block of `dataset_info`'s dict."""
    h, w = info["image_shape"]
    lines = [
        f"dataset   {info['name']} ({info['num_classes']} classes, {h}x{w} uint8)",
        f"source    {info['source']}: {info['path']}",
        f"checksum  {info['verified']}",
    ]
    for split in ("train", "test"):
        part = info[split]
        counts = " ".join(f"{c}:{n}" for c, n in enumerate(part["class_counts"]))
        lines.append(f"{split:<9} {part['count']} images")
        lines.append(textwrap.fill(counts, 90, initial_indent=" " * 10, subsequent_indent=" " * 10))
    lines.append(
        f"pixels    mean {info['pixel_mean']:.4f}, std {info['pixel_std']:.4f} "
        "(training set, scaled to [0, 1])"
    )
    return "\n".join(lines)
