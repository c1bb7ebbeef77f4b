"""Which quantity does the paper's Grad2VAE column measure? The claim ``table1_metric`` and the
Table 1 under the pixel-level metric.

The hypothesis (docs/findings/table1-metric.md): the authors' companion notebook
(abukmeil/mgrad2vae, MgradVAE.ipynb, cell 8) logged ``tf.keras.metrics.AUC()([xx],
[x_decoded_mean_squash])`` over the test split, a pixel-level AUC (label
= input pixel > 0, score = output intensity), not a per-image one-class AUC. Every candidate
quantity our Grad2VAE runs report is set against the printed column, class by class.

Operational definition, fixed before any study's numbers were read:

- candidates: every per-image score of the runs (``main``, ``mse``, ``bce_excess``, the
  ``*_zero_noise`` ones), the model-free entropy-only AUC, and the pixel-level AUCs
  (``pixel``, ``pixel_keras``, ``pixel_attention``, ``pixel_attention_keras``); each as the
  per-class mean over seeds of Grad2VAE's runs, in percent;
- per dataset and candidate, over the classes both have: Spearman's rho and Kendall's tau with
  their p-values against the printed column, and the mean absolute difference (MAD) in AUC
  points;
- a candidate matches the level when its MAD is at most ``LEVEL_POINTS`` (2 points per class on
  average; the per-image AUCs of short runs differ by tens), the order when rho >= ``ORDER_RHO``
  with p < ``ORDER_P``; it matches the column when it matches both;
- per dataset, needing all ten classes: holds when a pixel-level candidate matches the column
  and no per-image candidate (entropy included) does; mixed when not, but a pixel-level
  candidate is the closest in level or matches the order; fails otherwise;
- combined over both datasets (``verdicts.combine``); the evidence also gives the same rank
  statistics of the printed column against the printed baselines (the table alone).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd

from grad2vae import published as pub
from grad2vae.analysis.verdicts import (
    CLAIMED,
    FAILS,
    HOLDS,
    MIXED,
    UNKNOWN,
    claim,
    combine,
    round_value,
    scope,
    score_names,
    with_paper_datasets,
)
from grad2vae.score_columns import PIXEL, is_pixel_score, score_column

#: the level: mean absolute difference from the printed column, AUC points
LEVEL_POINTS = 2.0

#: the order: Spearman's rho at least this, with p below ORDER_P, over all ten classes
ORDER_RHO = 0.6
ORDER_P = 0.05

#: the candidate computed from the test images alone (aggregate's entropy_only.csv)
ENTROPY = "entropy_only"

QUESTION = "Which quantity does the paper's Grad2VAE column measure?"


def printed_column(dataset: str, column: str = CLAIMED) -> pd.Series:
    """A printed Table 1 column (percent) by normal class."""
    values = pub.load_published()["table1"]["per_class"].get(dataset, {}).get(column, [])
    return pd.Series([float(v) for v in values], index=range(len(values)), dtype=float)


def candidates(runs: pd.DataFrame, entropy: pd.DataFrame, dataset: str) -> dict[str, pd.Series]:
    """Candidate name -> per-class mean AUC in percent (index: normal class) of Grad2VAE's runs
    on ``dataset`` under that score, plus the entropy-only AUC."""
    out: dict[str, pd.Series] = {}
    mine = (
        runs[(runs["dataset"] == dataset) & (runs["model"] == CLAIMED)]
        if not runs.empty and "model" in runs
        else pd.DataFrame()
    )
    if not mine.empty:
        for score in score_names(runs):
            column = score_column(score)
            if column not in mine:
                continue
            values = pd.to_numeric(mine[column], errors="coerce")
            means = (values.groupby(mine["normal_class"].astype(int)).mean() * 100.0).dropna()
            if len(means):
                out[score] = means
    if entropy is not None and not entropy.empty:
        part = entropy[entropy["dataset"] == dataset]
        if len(part):
            out[ENTROPY] = pd.Series(
                pd.to_numeric(part["auc"], errors="coerce").to_numpy() * 100.0,
                index=part["normal_class"].astype(int).to_numpy(),
            ).dropna()
    return out


def rank_match(ours: pd.Series, printed: pd.Series) -> dict[str, Any]:
    """Spearman and Kendall (with p) and the mean / largest absolute difference of ``ours``
    against ``printed`` over their common classes."""
    from scipy.stats import kendalltau, spearmanr

    common = sorted(set(ours.dropna().index) & set(printed.dropna().index))
    result: dict[str, Any] = {"classes": len(common)}
    a, b = ours.loc[common].to_numpy(), printed.loc[common].to_numpy()
    with warnings.catch_warnings():  # a constant column has no rank order: NaN, said below
        warnings.simplefilter("ignore")
        rho, rho_p = spearmanr(a, b) if len(common) >= 3 else (math.nan, math.nan)
        tau, tau_p = kendalltau(a, b) if len(common) >= 3 else (math.nan, math.nan)
    differences = abs(a - b)
    result.update(
        spearman=round_value(float(rho)), spearman_p=round_value(float(rho_p)),
        kendall=round_value(float(tau)), kendall_p=round_value(float(tau_p)),
        mad_points=round_value(float(differences.mean()) if len(common) else math.nan, 3),
        max_abs_points=round_value(float(differences.max()) if len(common) else math.nan, 3),
    )  # fmt: skip
    return result


def matches(statistics: dict[str, Any]) -> dict[str, bool]:
    """Whether one candidate's statistics match the printed column in level, order, both."""
    mad, rho, p = (statistics.get(k) for k in ("mad_points", "spearman", "spearman_p"))
    level = mad is not None and not _nan(mad) and mad <= LEVEL_POINTS
    order = not (_nan(rho) or _nan(p)) and rho >= ORDER_RHO and p < ORDER_P
    return {"level": bool(level), "order": bool(order), "both": bool(level and order)}


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def judge_dataset(found: dict[str, pd.Series], printed: pd.Series) -> dict[str, Any]:
    """The result on one dataset (the module docstring's rule) with every candidate's
    statistics."""
    table = {name: rank_match(series, printed) for name, series in found.items()}
    for statistics in table.values():
        statistics["matches"] = matches(statistics)
    pixel = {n: s for n, s in table.items() if is_pixel_score(n)}
    image = {n: s for n, s in table.items() if not is_pixel_score(n)}
    complete = [n for n, s in pixel.items() if s["classes"] == pub.N_CLASSES]
    if not complete:
        why = (
            "no pixel-level AUC of Grad2VAE in the runs"
            if not pixel
            else f"needs all {pub.N_CLASSES} classes of Grad2VAE with a pixel-level AUC (has "
            f"{max(s['classes'] for s in pixel.values())})"
        )
        return {"result": UNKNOWN, "why": why, "candidates": table}
    judged = {n: s for n, s in table.items() if s["classes"] == pub.N_CLASSES}
    closest = min(judged, key=lambda n: judged[n]["mad_points"])
    pixel_match = [n for n in complete if table[n]["matches"]["both"]]
    image_match = [n for n, s in image.items() if n in judged and s["matches"]["both"]]
    pixel_order = [n for n in complete if table[n]["matches"]["order"]]
    if pixel_match and not image_match:
        result = HOLDS
    elif is_pixel_score(closest) or pixel_order:
        result = MIXED
    else:
        result = FAILS
    best_pixel = max(complete, key=lambda n: (table[n]["spearman"] or -2, -table[n]["mad_points"]))
    why = (
        f"closest in level: {closest} (MAD {table[closest]['mad_points']:.2f} points); "
        f"pixel-level {best_pixel}: rho {table[best_pixel]['spearman']}, MAD "
        f"{table[best_pixel]['mad_points']:.2f}; matching the column in level and order: "
        + (", ".join(pixel_match + image_match) or "none")
    )
    return {"result": result, "why": why, "closest_in_level": closest, "candidates": table}


def printed_alone(dataset: str) -> dict[str, Any]:
    """The printed Grad2VAE column against each printed baseline column and their mean: how the
    column orders the classes compared with real per-image detectors."""
    printed = printed_column(dataset)
    baselines = [c for c in pub.published_columns() if c != CLAIMED]
    columns = {c: printed_column(dataset, c) for c in baselines}
    out = {c: rank_match(printed, series) for c, series in columns.items() if len(series)}
    if columns:
        out["mean of the baselines"] = rank_match(printed, pd.concat(columns, axis=1).mean(axis=1))
    return out


def table1_metric(
    runs: pd.DataFrame, entropy: pd.DataFrame | None, datasets: list[str]
) -> dict[str, Any]:
    """The claim ``table1_metric`` (see the module docstring); ``runs`` without pseudo-models,
    ``entropy``: aggregate's entropy-only table (may be empty)."""
    entropy = entropy if entropy is not None else pd.DataFrame()
    results, printed = {}, {}
    for dataset in with_paper_datasets(datasets):
        found = candidates(runs, entropy, dataset)
        results[dataset] = (
            judge_dataset(found, printed_column(dataset))
            if found
            else {"result": UNKNOWN, "why": "no runs of Grad2VAE on this dataset", "candidates": {}}
        )
        printed[dataset] = printed_alone(dataset)
    verdict, why = combine({d: r["result"] for d, r in results.items()})
    return claim(
        "table1_metric",
        f"{QUESTION} Hypothesis: the pixel-level AUC (label: input pixel > 0, score: output "
        "intensity, every pixel of the test split) that the authors' notebook logged. Per "
        "dataset, over all ten classes, each candidate's per-class mean (Grad2VAE's runs, "
        f"percent) against the printed column: level = mean absolute difference <= "
        f"{LEVEL_POINTS:g} points; order = Spearman rho >= {ORDER_RHO:g} with p < {ORDER_P:g}. "
        "Holds when a pixel-level candidate matches both and no per-image candidate (the "
        "entropy-only AUC included) does; holds in part when a pixel-level candidate is the "
        "closest in level or matches the order; fails otherwise; fewer than ten classes: "
        "cannot be judged.",
        verdict,
        why,
        {"ours": results, "printed_table_alone": printed,
         "thresholds": {"level_points": LEVEL_POINTS, "order_rho": ORDER_RHO,
                        "order_p": ORDER_P}},
        scope=scope(runs, with_paper_datasets(datasets), [CLAIMED]),
    )  # fmt: skip


def pixel_table1(summary: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Table 1 under the pixel-level metric, one row per dataset, class, model and pixel score
    (``pixel_auc``; Grad2VAE's ``pixel_auc_attention`` too): mean and std over seeds in percent,
    beside the printed Grad2VAE value of that class (``published_grad2vae``, as published).
    ``summary``: tables.summarise."""
    rows = []
    columns = [score_column(PIXEL), score_column(f"{PIXEL}_attention")]
    for dataset in grid["datasets"]:
        for normal_class in grid["normal_classes"]:
            part = summary[
                (summary["dataset"] == dataset) & (summary["normal_class"] == normal_class)
            ]
            for model in grid["models"]:
                mine = part[part["model"] == model]
                for column in columns:
                    mean = f"{column}_pct_mean"
                    if mine.empty or mean not in mine or mine[mean].isna().all():
                        continue
                    rows.append({
                        "dataset": dataset, "normal_class": normal_class,
                        "class_label": pub.class_label(dataset, normal_class),
                        "model": model, "score": column,
                        "auc_pct_mean": float(mine[mean].iloc[0]),
                        "auc_pct_std": float(mine[f"{column}_pct_std"].iloc[0]),
                        "n_seeds": int(mine["n_seeds"].iloc[0]),
                        "published_grad2vae": pub.published_auc(dataset, CLAIMED, normal_class),
                    })  # fmt: skip
    return pd.DataFrame(rows, columns=PIXEL_TABLE_COLUMNS)


PIXEL_TABLE_COLUMNS = [
    "dataset", "normal_class", "class_label", "model", "score", "auc_pct_mean", "auc_pct_std",
    "n_seeds", "published_grad2vae",
]  # fmt: skip
