"""The model-free scorer ``entropy_only`` as the analysis reads it: score = H(x), the binary entropy
of the test image, whose AUC per (dataset, normal class) ``grad2vae entropy``
(``grad2vae.training.entropy``) computes on exactly the test images the runs are scored on.

BCE(x, x_hat) = H(x) + KL(x || x_hat), and no reconstruction removes H(x): it measures how much
ink or texture an image has, which differs between classes. Its AUC says how much of a BCE-based
AUC the class's ink alone explains.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from grad2vae.errors import UserError

log = logging.getLogger(__name__)

#: the pseudo-model's name in tables and figures
NAME = "entropy_only"
LABEL = "entropy only, H(x) (no model)"
COLUMNS = ["dataset", "normal_class", "auc", "test_images", "test_limit"]


def read_entropy_table(path: Path | None, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(entropy_only table, note) from the CSV ``grad2vae entropy`` wrote; an empty table and a
    note saying why when there is none. Warns when the runs were scored on other test images."""
    if path is None:
        return pd.DataFrame(columns=COLUMNS), (
            "not computed: `grad2vae aggregate` ran without --entropy-table "
            "(`grad2vae entropy` writes it)"
        )
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise UserError(
            f"entropy table {path} unreadable ({error}); run `grad2vae entropy` again"
        ) from None
    missing = [column for column in COLUMNS if column not in table]
    if missing:
        raise UserError(
            f"entropy table {path} lacks the columns {', '.join(missing)}; write it with "
            "`grad2vae entropy`"
        )
    limits = sorted({int(v) for v in table["test_limit"].dropna()}) or [0]
    run_limits = sorted(
        {
            int(v)
            for v in pd.to_numeric(
                runs.get("test_limit", pd.Series(dtype=float)), errors="coerce"
            ).dropna()
        }
    )
    if run_limits and run_limits != limits:
        log.warning(
            "the runs were scored with test limits %s, the entropy-only AUC with %s",
            run_limits,
            limits,
        )
    limit = limits[0]
    return table[COLUMNS], (
        f"H(x) of the {'full test set' if not limit else f'{limit} test images (test_limit)'} "
        "of each normal class"
    )
