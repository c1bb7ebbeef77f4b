"""The report's "Ablations" section: every variant against its default (its registered model, as
published, under the grid's protocol), per dataset, from the same runs as Table 1.

A variant (``variants:`` in the workflow config, presets/ablation.yaml and
presets/table1-own-protocols.yaml) is its base model with other constructor options and/or
another training schedule. For each dataset and variant: the average AUC over the normal
classes and the mstd beside the default's; the paired two-sided Wilcoxon signed-rank test over
the classes on which both have runs (per-class AUC averaged over seeds first, as the other
statistics), Holm-corrected over all the variants of that dataset; and one sentence on which
open choices move the average AUC significantly. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from grad2vae.analysis import stats


def variant_bases(
    workflow_config: Mapping[str, Any], runs: pd.DataFrame | None = None
) -> dict[str, str]:
    """Variant name -> registered model: from the workflow config's ``variants``, else from the
    runs' ``base_model`` column (``metrics.json`` of a variant's runs)."""
    bases = {
        name: str(spec["model"]) for name, spec in (workflow_config.get("variants") or {}).items()
    }
    if runs is not None and not runs.empty and "base_model" in runs:
        for model, base in (
            runs[["model", "base_model"]].dropna().drop_duplicates().itertuples(index=False)
        ):
            bases.setdefault(str(model), str(base))
    return bases


def describe(name: str, workflow_config: Mapping[str, Any]) -> str:
    """What the variant changes, e.g. "kl=mean" or "schedule: epochs=350, lr=0.0001"."""
    spec = (workflow_config.get("variants") or {}).get(name, {})
    parts = [f"{key}={value}" for key, value in (spec.get("options") or {}).items()]
    schedule = spec.get("train") or {}
    if schedule:
        parts.append("schedule: " + ", ".join(f"{key}={value}" for key, value in schedule.items()))
    return "; ".join(parts) or "(the base model, renamed)"


def ablations(
    runs: pd.DataFrame,
    avgs: pd.DataFrame,
    grid: Mapping[str, Any],
    bases: Mapping[str, str],
    workflow_config: Mapping[str, Any],
) -> dict[str, Any]:
    """The payload of ``ablations.json`` (module docstring). ``runs``: runs.csv rows without the
    bounds' pseudo-models; ``avgs``: tables.averages. Empty ``datasets`` when there are no
    variants."""
    variants = [model for model in grid["models"] if model in bases]
    out: dict[str, Any] = {
        "alpha": stats.ALPHA,
        "method": (
            "Each variant against its default (the registered model as published, same "
            "grid and seeds): average AUC over the normal classes (percent) and mstd; "
            "paired two-sided Wilcoxon signed-rank test over the classes on which both "
            "have runs (AUC averaged over seeds first), p-values Holm-corrected over "
            f"the dataset's variants, significant at alpha = {stats.ALPHA:g}."
        ),
        "datasets": {},
    }
    if not variants:
        return out
    for dataset in grid["datasets"]:
        part = runs[runs["dataset"] == dataset] if not runs.empty else runs
        rows = []
        for variant in variants:
            base = bases[variant]
            row: dict[str, Any] = {
                "variant": variant,
                "base": base,
                "changes": describe(variant, workflow_config),
            }
            for key, model in (("variant", variant), ("base", base)):
                cell = avgs[(avgs["dataset"] == dataset) & (avgs["model"] == model)]
                row[f"{key}_auc_pct"] = (
                    float(cell["auc_pct_mean"].iloc[0]) if len(cell) else math.nan
                )
                row[f"{key}_mstd"] = float(cell["mstd"].iloc[0]) if len(cell) else math.nan
            row["difference_pct"] = row["variant_auc_pct"] - row["base_auc_pct"]
            table = (
                stats.class_means(part, [variant, base])
                if len(part) and base in grid["models"]
                else pd.DataFrame()
            )
            if variant in (grid.get("model_classes") or {}) and len(table):
                # a variant on a subset of the classes: both averages over the classes it has,
                # not the default's over all of them
                row["variant_auc_pct"] = float(table[variant].mean() * 100.0)
                row["base_auc_pct"] = float(table[base].mean() * 100.0)
                row["difference_pct"] = row["variant_auc_pct"] - row["base_auc_pct"]
            row["n_classes"] = int(len(table))
            row["p"] = (
                stats.wilcoxon_p(table[variant], table[base]) if len(table) >= 2 else math.nan
            )
            row["smallest_possible_p"] = (
                min(1.0, 2.0 / 2.0 ** len(table)) if len(table) else math.nan
            )
            rows.append(row)
        adjusted = stats.holm([row["p"] for row in rows])
        for row, p_holm in zip(rows, adjusted):
            row["p_holm"] = float(p_holm)
            row["significant"] = bool(np.isfinite(p_holm) and p_holm <= stats.ALPHA)
        out["datasets"][dataset] = {"rows": rows, "sentence": _sentence(rows)}
    return out


def _sentence(rows: list[dict[str, Any]]) -> str:
    tested = [row for row in rows if np.isfinite(row["p"])]
    if not tested:
        return (
            "No variant could be tested against its default: the test needs both on at least two "
            "common normal classes."
        )
    matter = [row for row in tested if row["significant"]]
    if not matter:
        reachable = min(row["smallest_possible_p"] for row in tested) * len(tested)
        why = (
            f" (with {max(row['n_classes'] for row in tested)} classes the smallest reachable "
            f"Holm-corrected p-value is about {min(1.0, reachable):.3g})"
            if reachable > stats.ALPHA
            else ""
        )
        return f"No open choice changes the average AUC significantly{why}."
    parts = [
        f"{row['variant']} ({row['changes']}: {row['difference_pct']:+.2f} "
        f"points, Holm p = {row['p_holm']:.3g})"
        for row in sorted(matter, key=lambda r: -abs(r["difference_pct"]))
    ]
    return "Choices that change the average AUC significantly: " + "; ".join(parts) + "."
