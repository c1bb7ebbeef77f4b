"""Optimistic bounds: what a model's results declare (metrics.json ``bounds``, from the model's
``bounds()``) that selects on the test labels, such as the CAE + OC-SVM oracle. Read here and
nowhere else: each bound becomes the pseudo-model ``{model}_{name}``, with rows of its own in
runs.csv (``bound_of`` names the model), shown beside its model in Table 1, left out of ranks,
statistical tests and claims. Nothing else in the analysis names a model or a bound.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pandas as pd

#: runs.csv column that marks a bound's row with the model it bounds (empty on a run's own row)
BOUND_OF = "bound_of"


def bound_rows(metrics: Mapping[str, Any], key: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pseudo-runs of one finished run: one row per declared bound, with the run's keys,
    ``model`` = ``{model}_{name}``, ``auc``, ``{name}_point`` (the selected setting),
    ``main_score`` (the bound's note), ``protocol`` ("{name}: how it selects") and ``bound_of``."""
    rows = []
    for name, bound in sorted((metrics.get("bounds") or {}).items()):
        rows.append(
            dict(
                key,
                model=f"{key['model']}_{name}",
                auc=float(bound["auc"]),
                **{f"{name}_point": bound.get("setting")},
                main_score=bound.get("note", ""),
                protocol=f"{name}: {bound.get('protocol', '')}",
                bound_of=key["model"],
            )
        )
    return rows


def bounds_unrecorded(metrics: Mapping[str, Any]) -> bool:
    """Whether a run's metrics.json predates bounds (format 1) but holds the extra scores a bound
    is drawn from: its model may have declared one, which the analysis cannot show."""
    old = int(metrics.get("format_version", 1)) < 2
    return old and "bounds" not in metrics and bool(metrics.get("auc_extra"))


def bounds_of(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """pseudo-model -> {"of": its model, "protocol", "note"} for every bound in ``runs``."""
    if runs.empty or BOUND_OF not in runs:
        return {}
    rows = runs[runs[BOUND_OF].notna() & (runs[BOUND_OF] != "")]
    return {
        str(row["model"]): {
            "of": str(row[BOUND_OF]),
            "protocol": str(row.get("protocol", "")),
            "note": str(row.get("main_score", "")),
        }
        for _, row in rows.drop_duplicates("model").iterrows()
    }


def real_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` without the bounds' pseudo-runs (for ranks, tests, claims, compute, provenance)."""
    if runs.empty or BOUND_OF not in runs:
        return runs
    return runs[runs[BOUND_OF].isna() | (runs[BOUND_OF] == "")]


def with_bounds(models: Iterable[str], bounds: Mapping[str, Mapping[str, str]]) -> list[str]:
    """``models`` with each bound's pseudo-model right after the model it bounds."""
    out = []
    for model in models:
        if model in bounds:
            continue
        out.append(model)
        out += [name for name, bound in bounds.items() if bound["of"] == model]
    return out
