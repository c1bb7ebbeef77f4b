"""Compute the model-free entropy-only AUC: score = H(x), the binary entropy of the test image,
per (dataset, normal class), on exactly the test images the runs are scored on (the trainer's
split and subsample seed). No training: seconds for a whole grid. ``grad2vae aggregate`` reads the
table (``grad2vae.analysis.entropy_only``); this command is the part that needs torch and the data.

Example: grad2vae entropy --data-dir data --datasets mnist --normal-classes 0 1 \\
             --test-limit 300 --out results/aggregate/entropy_only.csv
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from grad2vae.analysis.entropy_only import COLUMNS
from grad2vae.atomic import atomic_open


def entropy_auc(
    data_dir: str | os.PathLike, dataset: str, normal_class: int, test_limit: int = 0
) -> tuple[float, int]:
    """(AUC-ROC of H(x) with anomaly = positive, number of test images) for one normal class,
    on the test images of ``data.load_split`` with the trainer's subsample seed."""
    from sklearn.metrics import roc_auc_score

    from grad2vae.data import datasets as data
    from grad2vae.models.scoring import binary_entropy
    from grad2vae.training.run_config import SUBSAMPLE_SEED

    split = data.load_split(
        data_dir, dataset, normal_class, test_limit=test_limit, seed=SUBSAMPLE_SEED
    )
    entropy = binary_entropy(split.test_x.double()).numpy()
    labels = np.asarray(split.test_labels)
    return float(roc_auc_score(labels, entropy)), int(len(labels))


def entropy_table(
    data_dir: str | os.PathLike,
    datasets: Iterable[str],
    normal_classes: Iterable[int],
    test_limit: int = 0,
) -> pd.DataFrame:
    """One row per (dataset, normal class): ``COLUMNS``."""
    rows = []
    for dataset in datasets:
        for normal_class in normal_classes:
            auc, n = entropy_auc(data_dir, dataset, int(normal_class), test_limit)
            rows.append(
                {
                    "dataset": dataset,
                    "normal_class": int(normal_class),
                    "auc": auc,
                    "test_images": n,
                    "test_limit": test_limit,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="verified datasets (`grad2vae fetch`)")
    parser.add_argument("--datasets", nargs="+", required=True, help="datasets of the grid")
    parser.add_argument(
        "--normal-classes", nargs="+", type=int, required=True, help="normal classes of the grid"
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=0,
        help="the runs' test_limit: score the same stratified subset (default 0: all)",
    )
    parser.add_argument("--out", required=True, help="the CSV to write (entropy_only.csv)")


def run(args: argparse.Namespace) -> int:
    table = entropy_table(args.data_dir, args.datasets, args.normal_classes, args.test_limit)
    with atomic_open(Path(args.out), "w", encoding="utf-8", newline="") as handle:
        table.to_csv(handle, index=False)
    return 0
