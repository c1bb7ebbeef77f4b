"""The result tables from the runs: per class and model (summary), per dataset (averages, every
score), Table 1 beside the published numbers, compute, parameters and the mstd statements."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grad2vae import published as pub
from grad2vae.analysis import entropy_only
from grad2vae.analysis.bounds import real_runs
from grad2vae.analysis.labels import model_label
from grad2vae.errors import UserError
from grad2vae.score_columns import column_score
from grad2vae.score_columns import score_columns as columns_of_scores

log = logging.getLogger(__name__)


PRINTED_AVERAGE = "the paper's printed Average row"


SCORES = ("auc", "auc_reconstruction")


def score_columns(runs: pd.DataFrame) -> list[str]:
    """``auc``, ``auc_reconstruction`` and the AUC column of every further score in ``runs``
    (``auc_mse``, ``auc_bce_excess``, ..., ``pixel_auc``...)."""
    extra = [c for c in columns_of_scores(runs.columns) if c not in SCORES]
    return list(SCORES) + extra


def summarise(runs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Per (dataset, normal class, model): n seeds, mean and std (ddof=1) of each AUC, percent."""
    index = pd.MultiIndex.from_product(
        [grid["datasets"], grid["normal_classes"], grid["models"]],
        names=["dataset", "normal_class", "model"],
    )
    scores = score_columns(runs)
    if runs.empty:
        table = pd.DataFrame(index=index).reset_index()
        table["n_seeds"] = 0
        for score in scores:
            table[f"{score}_pct_mean"] = np.nan
            table[f"{score}_pct_std"] = np.nan
    else:
        pct = runs[["dataset", "normal_class", "model"]].copy()
        for score in scores:
            pct[score] = 100.0 * pd.to_numeric(runs[score], errors="coerce")
        grouped = pct.groupby(["dataset", "normal_class", "model"])
        table = pd.DataFrame({"n_seeds": grouped.size()})
        for score in scores:
            table[f"{score}_pct_mean"] = grouped[score].mean()
            table[f"{score}_pct_std"] = grouped[score].std(ddof=1)
        table = table.reindex(index)
        table["n_seeds"] = table["n_seeds"].fillna(0).astype(int)
        table = table.reset_index()
    table.insert(
        2,
        "class_label",
        [pub.class_label(d, c) for d, c in zip(table["dataset"], table["normal_class"])],
    )
    table["n_seeds_expected"] = len(grid["seeds"])
    column = [pub.column_for_model(m) for m in table["model"]]
    table["published_column"] = [c or "" for c in column]
    table["published_auc_pct"] = [
        pub.published_auc(d, c, k) if c else None
        for d, c, k in zip(table["dataset"], column, table["normal_class"])
    ]
    table["published_auc_pct"] = pd.to_numeric(table["published_auc_pct"], errors="coerce")
    table["difference_pct"] = table["auc_pct_mean"] - table["published_auc_pct"]
    return table


def averages(summary: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Per (dataset, model): mean over classes of per-class means; mstd; largest per-class std."""
    rows = []
    for dataset in grid["datasets"]:
        for model in grid["models"]:
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
            present = part[part["n_seeds"] > 0]
            column = pub.column_for_model(model)
            published, basis = None, ""
            if column and len(present):
                # A partial grid is compared like with like: the paper's values of the same classes.
                published, basis = published_column_average(
                    dataset, column, [int(c) for c in present["normal_class"]]
                )
            stds = present["auc_pct_std"].dropna()
            mean = present["auc_pct_mean"].mean() if len(present) else math.nan
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "n_classes": int(len(present)),
                    "n_classes_expected": len(grid["normal_classes"]),
                    "n_runs": int(present["n_seeds"].sum()),
                    "auc_pct_mean": mean,
                    "auc_reconstruction_pct_mean": present["auc_reconstruction_pct_mean"].mean()
                    if len(present)
                    else math.nan,
                    "mstd": stds.mean() if len(stds) else math.nan,
                    "max_class_std": stds.max() if len(stds) else math.nan,
                    "published_column": column or "",
                    "published_average_pct": math.nan if published is None else published,
                    "published_average_basis": basis,
                    "difference_pct": mean - published if published is not None else math.nan,
                }
            )
    return pd.DataFrame(rows)


def scores_table(
    summary: pd.DataFrame, grid: dict[str, list], entropy: pd.DataFrame | None
) -> pd.DataFrame:
    """Per (dataset, model, score): the average AUC (percent; mean over the normal classes of the
    per-class means over seeds) and the classes it covers; plus the model-free ``entropy_only``
    scorer (score ``entropy``) where its table is given. Scores a model does not report are
    left out."""
    rows = []
    scores = [
        c.removesuffix("_pct_mean")
        for c in summary.columns
        if c.startswith("auc") and c.endswith("_pct_mean")
    ]
    for dataset in grid["datasets"]:
        for model in grid["models"]:
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
            for column in scores:
                values = (
                    part[f"{column}_pct_mean"].dropna() if len(part) else pd.Series(dtype=float)
                )
                if values.empty:
                    continue
                score = column_score(column)
                rows.append({"dataset": dataset, "model": model, "score": score,
                             "n_classes": int(len(values)),
                             "auc_pct_mean": float(values.mean())})  # fmt: skip
        if entropy is not None and not entropy.empty:
            part = entropy[
                (entropy["dataset"] == dataset)
                & entropy["normal_class"].isin(grid["normal_classes"])
            ]
            if len(part):
                rows.append({"dataset": dataset, "model": entropy_only.NAME, "score": "entropy",
                             "n_classes": int(len(part)),
                             "auc_pct_mean": 100.0 * float(part["auc"].mean())})  # fmt: skip
    return pd.DataFrame(rows, columns=["dataset", "model", "score", "n_classes", "auc_pct_mean"])


def published_column_average(
    dataset: str, column: str, classes: list[int]
) -> tuple[float | None, str]:
    """The paper's average of one column over ``classes``: its printed Average row when these are
    all ten classes, else the mean of its values for these classes (like with like)."""
    if sorted(classes) == list(range(pub.N_CLASSES)):
        return pub.published_average(dataset, column), PRINTED_AVERAGE
    values = [v for v in (pub.published_auc(dataset, column, c) for c in classes) if v is not None]
    if not values:
        return None, ""
    return float(np.mean(values)), f"mean of the paper's {len(values)} matching classes"


def table1_layout(
    models: list[str],
    bases: dict[str, str] | None = None,
    bounds: dict[str, dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Column groups of Table 1 in the paper's order: one per published column (with our model
    beside it when we have one, then each bound of that model (``bounds``: ``bounds.bounds_of``;
    kind ``bound``, never compared with a published number), then each variant of that model:
    ``bases`` maps a variant to its registered model), then our models that the paper's Table 1
    lacks."""
    bases = bases or {}
    bounds = bounds or {}
    groups = []
    placed: set[str] = set()
    for key, column in pub.published_columns().items():
        ours = column.get("ours")
        variants = [m for m in models if bases.get(m) == ours]
        if ours in models:
            groups.append(
                {
                    "kind": "compared",
                    "model": ours,
                    "label": model_label(ours),
                    "published_column": key,
                    "published_label": column["label"],
                    "source": column.get("source", ""),
                }
            )
            groups += _bound_groups(ours, models, bounds)
        else:
            groups.append(
                {
                    "kind": "published_only",
                    "model": None,
                    "label": column["label"],
                    "published_column": key,
                    "published_label": column["label"],
                    "source": column.get("source", ""),
                }
            )
        for variant in variants:
            # a variant of the column's model (its own protocol, other options) beside the same
            # number
            groups.append(
                {
                    "kind": "compared",
                    "model": variant,
                    "label": model_label(variant),
                    "published_column": key,
                    "published_label": column["label"],
                    "variant_of": ours,
                    "source": f"variant of {model_label(ours)} (see the Ablations section)",
                }
            )
            placed.add(variant)
    for model in models:
        if pub.column_for_model(model) is None and model not in bounds and model not in placed:
            groups.append(
                {
                    "kind": "ours_only",
                    "model": model,
                    "label": model_label(model),
                    "published_column": None,
                    "published_label": None,
                    "source": "not in the paper's Table 1",
                }
            )
            groups += _bound_groups(model, models, bounds)
    return groups


def _bound_groups(
    model: str, models: list[str], bounds: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """The Table 1 column group of each bound of ``model`` among ``models``."""
    return [
        {
            "kind": "bound",
            "model": name,
            "label": model_label(name, bounds),
            "protocol": bound["protocol"],
            "published_column": None,
            "published_label": None,
            "source": bound["note"],
        }
        for name, bound in bounds.items()
        if bound["of"] == model and name in models
    ]


def table1(summary: pd.DataFrame, avgs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Wide Table 1: per dataset, one row per normal class and an Average row; for each group of
    ``table1_layout``: ``{model}_mean``, ``{model}_std``, ``{model}_n`` (ours, percent),
    ``published_{column}``, ``{model}_difference`` (ours - published)."""
    layout = table1_layout(grid["models"], grid.get("variants"), grid.get("bounds"))
    rows = []
    for dataset in grid["datasets"]:
        for normal_class in list(grid["normal_classes"]) + ["Average"]:
            is_average = normal_class == "Average"
            row: dict[str, Any] = {
                "dataset": dataset,
                "dataset_label": pub.dataset_label(dataset),
                "normal_class": "" if is_average else normal_class,
                "class_label": "Average" if is_average else pub.class_label(dataset, normal_class),
            }
            for group in layout:
                model, column = group["model"], group["published_column"]
                if column is not None:
                    if not is_average:
                        published = pub.published_auc(dataset, column, normal_class)
                    else:
                        published, basis = published_column_average(
                            dataset, column, grid["normal_classes"]
                        )
                        if model is not None:
                            # ours averages the classes present: compare with the same classes
                            cell = avgs[
                                (avgs["dataset"] == dataset) & (avgs["model"] == model)
                            ].iloc[0]
                            if cell["published_average_basis"]:
                                published, basis = (
                                    cell["published_average_pct"],
                                    cell["published_average_basis"],
                                )
                        row[f"published_{column}_basis"] = basis
                    row[f"published_{column}"] = published
                if model is None:
                    continue
                if is_average:
                    cell = avgs[(avgs["dataset"] == dataset) & (avgs["model"] == model)].iloc[0]
                    mean, std, n = cell["auc_pct_mean"], cell["mstd"], cell["n_classes"]
                else:
                    cell = summary[
                        (summary["dataset"] == dataset)
                        & (summary["normal_class"] == normal_class)
                        & (summary["model"] == model)
                    ].iloc[0]
                    mean, std, n = cell["auc_pct_mean"], cell["auc_pct_std"], cell["n_seeds"]
                row[f"{model}_mean"] = mean
                row[f"{model}_std"] = std
                row[f"{model}_n"] = int(n)
                if column is not None:
                    row[f"{model}_difference"] = (
                        mean - published if published is not None else math.nan
                    )
            rows.append(row)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns and not key.endswith("_basis"):
                columns.append(key)
                if f"{key}_basis" in rows[-1]:
                    columns.append(f"{key}_basis")
    return pd.DataFrame(rows, columns=columns)


def compute_table(runs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Wall time per model and dataset, and device-hours split by device type."""
    columns = [
        "model",
        "dataset",
        "device_type",
        "runs",
        "wall_hours",
        "mean_wall_seconds",
        "mean_seconds_per_epoch",
        "gpu_hours",
    ]
    runs = real_runs(runs)
    if runs.empty:
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby(["model", "dataset", "device_type"])
    table = pd.DataFrame(
        {
            "runs": grouped.size(),
            "wall_hours": grouped["wall_seconds"].sum() / 3600.0,
            "mean_wall_seconds": grouped["wall_seconds"].mean(),
            "mean_seconds_per_epoch": grouped["seconds_per_epoch"].mean(),
        }
    ).reset_index()
    table["gpu_hours"] = np.where(table["device_type"] == "cuda", table["wall_hours"], 0.0)
    order = {m: i for i, m in enumerate(grid["models"])}
    table = table.sort_values(
        ["model", "dataset"], key=lambda s: s.map(order) if s.name == "model" else s
    )
    return table[columns].reset_index(drop=True)


def parameters_table(runs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    paper = pub.parameters_millions()
    runs = real_runs(runs)
    rows = []
    for model in grid["models"]:
        for dataset in grid["datasets"]:
            part = (
                runs[(runs["model"] == model) & (runs["dataset"] == dataset)]
                if not runs.empty
                else runs
            )
            counts = sorted(
                {int(p) for p in part.get("parameters", pd.Series(dtype=float)).dropna()}
            )
            latent = sorted(
                {int(v) for v in part.get("latent_dim", pd.Series(dtype=float)).dropna()}
            )
            ours = counts[0] if len(counts) == 1 else (math.nan if not counts else counts[-1])
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "latent_dim": latent[0]
                    if len(latent) == 1
                    else (math.nan if not latent else latent[-1]),
                    "parameters": ours,
                    "parameters_millions": ours / 1e6 if ours == ours else math.nan,
                    "paper_millions": paper.get(model, math.nan),
                    "ratio_to_paper": (ours / 1e6) / paper[model]
                    if model in paper and ours == ours
                    else math.nan,
                    "distinct_counts": len(counts),
                }
            )
    return pd.DataFrame(rows)


def mstd_table(avgs: pd.DataFrame) -> list[dict[str, Any]]:
    """The paper's mstd statements beside ours (mstd and largest per-class std)."""
    paper = pub.mstd_claims()
    out = []
    for model, published, text in (
        (
            "grad2vae",
            paper.get("grad2vae_max"),
            "Grad2VAE's mstd does not exceed 0.117 on either dataset",
        ),
        (
            "inception_caenn",
            paper.get("inception_caenn"),
            "Inception-CAENN's mstd reaches 3.9 ([25])",
        ),
    ):
        part = avgs[avgs["model"] == model]
        out.append(
            {
                "model": model,
                "claim": text,
                "published": published,
                "ours_max_mstd": json_scalar(part["mstd"].max()) if len(part) else None,
                "ours_max_class_std": json_scalar(part["max_class_std"].max())
                if len(part)
                else None,
            }
        )
    part = avgs[avgs["model"] == "deep_svdd"]
    ran = len(part) and part["n_classes"].sum() > 0
    out.append(
        {
            "model": "deep_svdd",
            "claim": "Deep SVDD's mstd reaches 3.8 ([25])"
            + ("" if ran else "; not run here (extra_models)"),
            "published": paper.get("deep_svdd"),
            "ours_max_mstd": json_scalar(part["mstd"].max()) if ran else None,
            "ours_max_class_std": json_scalar(part["max_class_std"].max()) if ran else None,
        }
    )
    return out


def json_scalar(value: Any) -> Any:
    """NaN -> None (for JSON)."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_table(path: Path) -> pd.DataFrame:
    """A CSV that `grad2vae aggregate` wrote (empty frame for an empty file); a UserError that
    says to run the aggregation when it is missing."""
    if not path.is_file():
        raise UserError(f"{path} not found; run `grad2vae aggregate` first")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
