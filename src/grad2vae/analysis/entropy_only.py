"""The model-free scorer ``entropy_only``: score = H(x), the binary entropy of the test image.

BCE(x, x_hat) = H(x) + KL(x || x_hat), and no reconstruction removes H(x): it measures how much
ink or texture an image has, which differs between classes. Its AUC per (dataset, normal class),
on exactly the test images the runs are scored on, says how much of a BCE-based AUC the class's
ink alone explains (issue 13). No training: seconds for a whole grid.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pandas as pd

#: the pseudo-model's name in tables and figures
NAME = "entropy_only"
LABEL = "entropy only, H(x) (no model)"
COLUMNS = ["dataset", "normal_class", "auc", "test_images", "test_limit"]


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
