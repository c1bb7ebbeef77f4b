"""The files a run writes (their names, ``history.tsv``, ``scores.csv.gz``) and the software
environment it records."""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import io
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grad2vae import atomic
from grad2vae.training.evaluate import as_numpy

log = logging.getLogger(__name__)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def history_columns(history: list[dict[str, Any]]) -> list[str]:
    """epoch, lr, seconds (training and evaluation), train_seconds (the run's share of the
    training), the loss terms, the AUC of every score (main first), the score means, the
    pixel-level AUCs (``evaluate.pixel_column``) last, so that the older columns keep their
    places."""
    found: dict[str, list[str]] = {"loss_": [], "auc_": [], "mean_": [], "pixel_auc": []}
    for row in history:
        for key in row:
            for prefix, columns in found.items():
                if key.startswith(prefix) and key not in columns and key != "auc_reconstruction":
                    columns.append(key)
    return [
        "epoch", "lr", "seconds", "train_seconds", *found["loss_"], "auc", "auc_reconstruction",
        *found["auc_"], *found["mean_"], *found["pixel_auc"],
    ]  # fmt: skip


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    columns = history_columns(history)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_fmt(row.get(column)) for column in columns) for row in history]
    atomic.write_text(path, "\n".join(lines) + "\n")


def write_scores(path: Path, split, scores: dict[str, np.ndarray]) -> None:
    """index, test_class, label, score_main, score_reconstruction, then ``score_{key}`` for the
    model's other scores; gzip with a fixed header (mtime 0, no name) so equal scores give equal
    bytes. ``index`` is the image's position in the official test file (``split.test_indices``;
    differs from the row number under a limit)."""
    labels = as_numpy(split.test_labels).astype(np.int64)
    classes = as_numpy(split.test_classes).astype(np.int64)
    keys = ["main", "reconstruction"] + [
        key for key in scores if key not in ("main", "reconstruction")
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "test_class", "label", *(f"score_{key}" for key in keys)])
    indices = getattr(split, "test_indices", None)
    indices = as_numpy(indices).astype(np.int64) if indices is not None else np.arange(len(labels))
    for row, (index, cls, label) in enumerate(zip(indices, classes, labels)):
        writer.writerow(
            [int(index), int(cls), int(label), *(repr(float(scores[key][row])) for key in keys)]
        )
    with atomic.atomic_open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
            handle.write(text.getvalue().encode("ascii"))


def read_scores(path: str | os.PathLike) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="ascii") as handle:
        return list(csv.DictReader(handle))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_versions() -> dict[str, Any]:
    from grad2vae import __version__

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "numpy": np.__version__,
        "scikit-learn": _version("scikit-learn"),
        "grad2vae": __version__,
        "platform": platform.platform(),
    }
