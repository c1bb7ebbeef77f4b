"""The paper's claims about how training proceeds: Fig. 6's epochs to 95 % (per epoch) and the
same curves against training compute (FLOPs, seconds). Part of ``claims.all_claims``."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from grad2vae import published as pub
from grad2vae.analysis.verdicts import (
    CLAIMED,
    FAILS,
    HOLDS,
    MIXED,
    PAPER_MODELS,
    UNKNOWN,
    VAE,
    claim,
    claim_label,
    combine,
    round_value,
    scope,
    score_names,
    scored_view,
    with_paper_datasets,
)

#: AUC levels of the compute comparison (fractions), besides the highest level both curves reach
COMPUTE_LEVELS = (0.80, 0.90, 0.95)


# --------------------------------------------------------------------------------------------
# Fig. 6: above 95 % in half the VAE's epochs, nobody else by epoch 50
def mean_curves(history: pd.DataFrame, value: str = "auc") -> dict[tuple[str, str], pd.Series]:
    """(dataset, model) -> mean of ``value`` over classes and seeds per evaluated epoch."""
    if history.empty or value not in history:
        return {}
    data = history.assign(**{value: pd.to_numeric(history[value], errors="coerce")}).dropna(
        subset=[value]
    )
    return {
        (str(dataset), str(model)): group.groupby("epoch")[value].mean().sort_index()
        for (dataset, model), group in data.groupby(["dataset", "model"])
    }


def first_epoch_above(curve: pd.Series, threshold: float) -> int | None:
    above = curve[curve > threshold]
    return int(above.index[0]) if len(above) else None


def fig6_dataset(
    curves: Mapping[str, pd.Series], threshold: float = 0.95, window: int = 50
) -> dict[str, Any]:
    """The Fig. 6 claim on one dataset's mean curves (model -> AUC by epoch, fractions).

    (a) Grad2VAE's first epoch above ``threshold`` is at most half the VAE's. Unknown when
    Grad2VAE's curve never exceeds it but stops before ``window``; fails when it never exceeds
    it over at least ``window`` epochs. If the VAE never exceeds it, (a) holds when Grad2VAE's
    epoch is at most half of one past the VAE's last epoch, else unknown.
    (b) no other model ("the other remaining models": neither Grad2VAE nor the VAE) exceeds it
    by epoch ``window``; unknown for a model whose curve stops earlier without exceeding it.
    """
    details: dict[str, Any] = {
        "threshold": threshold,
        "window_epochs": window,
        "first_epoch": {},
        "last_epoch": {},
    }
    for model, curve in curves.items():
        details["first_epoch"][model] = first_epoch_above(curve, threshold)
        details["last_epoch"][model] = int(curve.index.max()) if len(curve) else None
    if CLAIMED not in curves or VAE not in curves:
        return {"result": UNKNOWN, "why": "needs Grad2VAE's and the VAE's curves", **details}
    first, last = details["first_epoch"], details["last_epoch"]
    if first[CLAIMED] is None:
        half = FAILS if last[CLAIMED] >= window else UNKNOWN
        half_why = f"Grad2VAE never exceeds {threshold:.0%} in its {last[CLAIMED]} epochs"
    elif first[VAE] is not None:
        half = HOLDS if first[CLAIMED] <= first[VAE] / 2 else FAILS
        half_why = (
            f"Grad2VAE first exceeds {threshold:.0%} at epoch "
            f"{first[CLAIMED]}, the VAE at epoch {first[VAE]}"
        )
    else:
        half = HOLDS if first[CLAIMED] <= (last[VAE] + 1) / 2 else UNKNOWN
        half_why = (
            f"Grad2VAE first exceeds {threshold:.0%} at epoch "
            f"{first[CLAIMED]}; the VAE not in its {last[VAE]} epochs"
        )
    others = [m for m in curves if m not in (CLAIMED, VAE)]
    reached = [m for m in others if first[m] is not None and first[m] <= window]
    short = [m for m in others if m not in reached and last[m] < window]
    if reached:
        rest, rest_why = (
            FAILS,
            f"{', '.join(claim_label(m) for m in reached)} "
            f"exceed(s) {threshold:.0%} by epoch {window}",
        )
    elif not others:
        rest, rest_why = UNKNOWN, "no other model in the grid"
    elif short:
        rest, rest_why = (
            UNKNOWN,
            f"the curves of {', '.join(claim_label(m) for m in short)} stop before epoch {window}",
        )
    else:
        rest, rest_why = HOLDS, f"no other model exceeds {threshold:.0%} by epoch {window}"
    result = FAILS if FAILS in (half, rest) else (HOLDS if half == rest == HOLDS else UNKNOWN)
    return {
        "result": result,
        "half_the_vae": half,
        "others": rest,
        "why": f"{half_why}; {rest_why}",
        **details,
    }


def first_epochs_per_run(
    history: pd.DataFrame, threshold: float, value: str = "auc"
) -> list[dict[str, Any]]:
    """Per (dataset, model): how many runs ever exceed ``threshold`` and at which first epoch
    (min, median, max over the runs that do)."""
    if history.empty or value not in history:
        return []
    data = history.assign(**{value: pd.to_numeric(history[value], errors="coerce")}).dropna(
        subset=[value]
    )
    out = []
    for (dataset, model), group in data.groupby(["dataset", "model"]):
        firsts = []
        for _, run in group.groupby(["normal_class", "seed"]):
            firsts.append(first_epoch_above(run.set_index("epoch")[value].sort_index(), threshold))
        reached = [f for f in firsts if f is not None]
        out.append(
            {"dataset": dataset, "model": model, "runs": len(firsts), "runs_above": len(reached),
             "first_epoch_min": min(reached) if reached else None,
             "first_epoch_median": float(np.median(reached)) if reached else None,
             "first_epoch_max": max(reached) if reached else None}
        )  # fmt: skip
    return out


def fig6(history: pd.DataFrame, runs: pd.DataFrame, datasets: list[str]) -> dict[str, Any]:
    """Judged on ``datasets`` and the paper's datasets they lack: "for both datasets"."""
    datasets = with_paper_datasets(datasets)
    paper = pub.claims()["fig6_above_95_in_50_epochs"]
    threshold, window = paper["threshold_pct"] / 100.0, int(paper["window_epochs"])
    by_score = {}
    for score in score_names(runs) if not runs.empty else ["main"]:
        view, scored_by = scored_view(history, score) if not history.empty else (history, {})
        curves = mean_curves(view)
        results = {
            d: fig6_dataset({m: c for (ds, m), c in curves.items() if ds == d}, threshold, window)
            for d in datasets
        }
        verdict, why = combine({d: r["result"] for d, r in results.items()})
        by_score[score] = {
            "verdict": verdict, "why": why, "scored_by": scored_by, "datasets": results,
            "per_run": first_epochs_per_run(view, threshold),
        }  # fmt: skip
    main = by_score["main"]
    return claim(
        "fig6_above_95_in_50_epochs",
        "On the Fig. 6 curves (test AUC per epoch, mean over normal classes and seeds), per "
        f"dataset: the first epoch at which Grad2VAE's curve exceeds {threshold:.0%} is at most "
        "half the VAE's, and no other model ('the other remaining models': the Baseline CAE, "
        f"Inception-CAENN and any further model of the grid) exceeds {threshold:.0%} by epoch "
        f"{window}. Also: the first epoch of each single run.",
        main["verdict"],
        main["why"],
        {"datasets": main["datasets"], "per_run": main["per_run"]},
        by_score=by_score,
        scope=scope(runs, datasets, needed_models=PAPER_MODELS),
    )


# --------------------------------------------------------------------------------------------
# acceleration per compute
def compute_curves(
    history: pd.DataFrame, runs: pd.DataFrame
) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, model) -> per evaluated epoch: mean AUC over classes and seeds, cumulative
    training FLOPs (epoch x the runs' mean FLOPs per epoch) and cumulative training seconds
    (mean over the runs of the sum of ``train_seconds`` up to that epoch)."""
    if history.empty or runs.empty or "train_flops_per_epoch" not in runs:
        return {}
    flops = runs.groupby(["dataset", "model"])["train_flops_per_epoch"].apply(
        lambda v: pd.to_numeric(v, errors="coerce").mean()
    )
    data = history.copy()
    data["auc"] = pd.to_numeric(data["auc"], errors="coerce")
    seconds = "train_seconds" if "train_seconds" in data else "seconds"
    data = data.sort_values("epoch")
    data["cumulative_seconds"] = data.groupby(["dataset", "model", "normal_class", "seed"])[
        seconds
    ].cumsum()
    curves = {}
    for (dataset, model), group in data.dropna(subset=["auc"]).groupby(["dataset", "model"]):
        per_epoch = group.groupby("epoch").agg(
            auc=("auc", "mean"), cumulative_seconds=("cumulative_seconds", "mean")
        )
        per_epoch["cumulative_flops"] = per_epoch.index.to_numpy(dtype=float) * flops.get(
            (dataset, model), math.nan
        )
        curves[(str(dataset), str(model))] = per_epoch.sort_index()
    return curves


def _cost_to_reach(curve: pd.DataFrame, level: float, cost: str) -> float | None:
    reached = curve[curve["auc"] >= level]
    return (
        float(reached[cost].iloc[0]) if len(reached) and pd.notna(reached[cost].iloc[0]) else None
    )


def compute_dataset(
    curves: Mapping[str, pd.DataFrame], cost: str = "cumulative_flops", levels=COMPUTE_LEVELS
) -> dict[str, Any]:
    """Grad2VAE against the VAE on one dataset: at each AUC level (``levels`` and the highest level
    both curves reach), the compute (``cost``) at which each curve first reaches it. Holds when
    Grad2VAE needs less at every level where one of them gets there; fails when it never does;
    mixed when at some levels only; unknown when no level is informative."""
    if CLAIMED not in curves or VAE not in curves:
        return {"result": UNKNOWN, "why": "needs Grad2VAE's and the VAE's curves"}
    g, v = curves[CLAIMED], curves[VAE]
    common = min(g["auc"].max(), v["auc"].max())
    rows, wins = [], []
    for level in sorted(
        set(levels) | ({round(float(common), 4)} if math.isfinite(common) else set())
    ):
        cost_g, cost_v = _cost_to_reach(g, level, cost), _cost_to_reach(v, level, cost)
        if cost_g is None and cost_v is None:
            winner = None
        elif cost_v is None or (cost_g is not None and cost_g < cost_v):
            winner = CLAIMED
        else:
            winner = VAE
        rows.append(
            {
                "auc_level": level,
                "grad2vae": round_value(cost_g, 6),
                "vae": round_value(cost_v, 6),
                "less_compute": winner,
            }
        )
        if winner is not None:
            wins.append(winner == CLAIMED)
    if not wins:
        result = UNKNOWN
    else:
        result = HOLDS if all(wins) else (FAILS if not any(wins) else MIXED)
    return {"result": result, "cost": cost, "levels": rows}


def acceleration_per_compute(
    history: pd.DataFrame, runs: pd.DataFrame, datasets: list[str]
) -> dict[str, Any]:
    """Judged on ``datasets`` and the paper's datasets they lack: Fig. 6, which the claim is read
    off, shows both datasets."""
    datasets = with_paper_datasets(datasets)
    curves = compute_curves(history, runs)
    results, seconds = {}, {}
    for dataset in datasets:
        mine = {m: c for (d, m), c in curves.items() if d == dataset}
        results[dataset] = compute_dataset(mine, "cumulative_flops")
        seconds[dataset] = compute_dataset(mine, "cumulative_seconds")
    verdict, why = combine({d: r["result"] for d, r in results.items()})
    by_score = {}  # the same on the curves of every other score the runs report
    for score in score_names(runs) if not runs.empty and not history.empty else []:
        view, scored_by = scored_view(history, score)
        scored_curves = compute_curves(view, runs)
        scored = {
            d: compute_dataset(
                {m: c for (ds, m), c in scored_curves.items() if ds == d}, "cumulative_flops"
            )
            for d in datasets
        }
        by_score[score] = dict(
            zip(("verdict", "why"), combine({d: r["result"] for d, r in scored.items()})),
            scored_by=scored_by,
            datasets=scored,
        )
    per_epoch = {}
    if not runs.empty and "train_flops_per_epoch" in runs:
        for (dataset, model), group in runs.groupby(["dataset", "model"]):
            per_epoch.setdefault(dataset, {})[model] = round_value(
                pd.to_numeric(group["train_flops_per_epoch"], errors="coerce").mean(), 0
            )
    return claim(
        "acceleration_per_compute",
        "Fig. 6 counts epochs, but a Grad2VAE epoch costs several VAE epochs. Per dataset, "
        "on the mean curves (AUC over classes and seeds) against cumulative training FLOPs "
        "(FlopCounterMode on one training step, times the steps per epoch): at each AUC "
        f"level ({', '.join(f'{x:.2f}' for x in COMPUTE_LEVELS)} and the highest level "
        "both curves reach), which model first reaches it with less compute. Holds when "
        "Grad2VAE needs less at every level one of them reaches; fails when it never does. "
        "The same on measured training seconds is in the evidence.",
        verdict,
        why,
        {"flops": results, "training_seconds": seconds, "train_flops_per_epoch": per_epoch},
        by_score=by_score,
        scope=scope(runs, datasets, [CLAIMED, VAE]),
    )
