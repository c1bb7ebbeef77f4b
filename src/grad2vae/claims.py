"""Every claim of the paper, each with an operational definition, the evidence from our runs (and
where possible from the paper's own printed numbers) and a verdict: ``claims.json``.

A claim object: ``id``, ``section`` and ``words`` (the paper's, verbatim, from published.yaml),
``definition`` (ours), ``verdict`` (under the main score) in ``VERDICTS``, ``why`` (one sentence),
``evidence`` (numbers, tests, p-values), and for the claims about AUCs ``by_score``: the same
judgement under every score the runs report (``main`` plus the diagnostics of issue 13, e.g.
``mse``, ``bce_excess``, ``*_zero_noise``). Under a score that a model does not report, that
model is judged by its main score (``evidence.scored_by`` says which).

Each decision is a function of plain tables (class means, curves), so that tests can build
inputs where the answer is known. Verdicts combine per-dataset results by ``combine``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from grad2vae import published as pub
from grad2vae import stats

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
PARTLY = "partly supported"
CANNOT = "cannot be judged"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, PARTLY, CANNOT)

#: per-dataset results: the claim holds, fails, holds in part (mixed), or cannot be decided
HOLDS, FAILS, MIXED, UNKNOWN = "holds", "fails", "mixed", "unknown"
CLAIMED = "grad2vae"
VAE = "vae"
#: AUC levels of the compute comparison (fractions), besides the highest level both curves reach
COMPUTE_LEVELS = (0.80, 0.90, 0.95)


# --------------------------------------------------------------------------------------------
# building blocks


def combine(results: Mapping[str, str]) -> tuple[str, str]:
    """(verdict, why) from per-dataset results in {holds, fails, mixed, unknown}: all hold ->
    supported; every judged one fails -> not supported; some hold or are mixed and some fail or
    are mixed -> partly supported; otherwise (nothing judged, or some hold and the rest unknown)
    -> cannot be judged."""
    held = [d for d, r in results.items() if r == HOLDS]
    failed = [d for d, r in results.items() if r == FAILS]
    mixed = [d for d, r in results.items() if r == MIXED]
    unknown = [d for d, r in results.items() if r not in (HOLDS, FAILS, MIXED)]
    names = lambda items: ", ".join(pub.dataset_label(d) for d in items)  # noqa: E731
    parts = [f"{what} on {names(items)}" for what, items in
             (("holds", held), ("fails", failed), ("holds in part", mixed), ("cannot be judged", unknown)) if items]  # fmt: skip
    why = "; ".join(parts) or "no dataset of the claim is in the grid"
    if held and not (failed or mixed or unknown):
        return SUPPORTED, why
    if failed and not (held or mixed):
        return NOT_SUPPORTED, why
    if mixed or (held and failed):
        return PARTLY, why
    return CANNOT, why


def score_names(runs: pd.DataFrame) -> list[str]:
    """``main`` and every other score whose AUC the runs report (``auc_{score}`` columns),
    without ``reconstruction`` (the VAEs' equals their main score) and the oracle."""
    names = ["main"]
    for column in runs.columns:
        if column.startswith("auc_") and column not in ("auc_reconstruction", "auc_oracle"):
            values = pd.to_numeric(runs[column], errors="coerce")
            if values.notna().any():
                names.append(column.removeprefix("auc_"))
    return names


def scored_view(frame: pd.DataFrame, score: str, value: str = "auc") -> tuple[pd.DataFrame, dict[str, str]]:
    """``frame`` (runs or history) with ``value`` replaced by the AUC of ``score`` for every
    model that reports it, its main AUC otherwise; and model -> the score it is judged by."""
    frame = frame.copy()
    column = "auc" if score == "main" else f"auc_{score}"
    scored_by: dict[str, str] = {}
    if frame.empty or "model" not in frame:
        return frame, scored_by
    for model in frame["model"].unique():
        rows = frame["model"] == model
        alternative = pd.to_numeric(frame.loc[rows, column], errors="coerce") if column in frame else None
        if score != "main" and alternative is not None and alternative.notna().any():
            frame.loc[rows, value] = alternative
            scored_by[str(model)] = score
        else:
            scored_by[str(model)] = "main"
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    return frame, scored_by


def claim(
    claim_id: str, definition: str, verdict: str, why: str, evidence: Any, by_score: dict | None = None,
    sentences: list[str] | None = None,
) -> dict[str, Any]:
    """One object of claims.json (see the module docstring)."""
    paper = pub.claims()[claim_id]
    assert verdict in VERDICTS, verdict
    return {
        "id": claim_id, "section": paper["section"], "words": paper["words"], "definition": definition,
        "verdict": verdict, "why": why, "sentences": sentences or [], "evidence": evidence, "by_score": by_score or {},
    }  # fmt: skip


def _round(value: Any, digits: int = 4) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _label(model: str) -> str:
    labels = pub.load_published().get("paper_model_labels", {})
    return str(labels.get(model, model))


def judged_per_score(
    runs: pd.DataFrame, datasets: list[str], models: list[str], decide: Callable[[pd.DataFrame, str], dict]
) -> dict[str, dict]:
    """score -> {verdict, why, scored_by, datasets}: ``decide(class-mean table in percent,
    dataset)`` on our runs under every score (``scored_view``), combined over the datasets."""
    by_score = {}
    for score in score_names(runs) if not runs.empty else ["main"]:
        view, scored_by = scored_view(runs, score)
        results = {}
        for dataset in datasets:
            part = view[view["dataset"] == dataset] if not view.empty else view
            present = [m for m in models if m in set(part.get("model", []))]
            table = stats.class_means(part, present) * 100.0 if not part.empty else pd.DataFrame()
            results[dataset] = decide(table, dataset)
        verdict, why = combine({d: r["result"] for d, r in results.items()})
        by_score[score] = {"verdict": verdict, "why": why, "scored_by": scored_by, "datasets": results}
    return by_score


def judged_on_printed_table(datasets: list[str], decide: Callable[[pd.DataFrame, str], dict]) -> dict[str, dict]:
    """dataset -> ``decide`` on the paper's printed Table 1 (columns named by our models)."""
    printed = {}
    for dataset in datasets:
        table = stats.published_table(dataset)
        table.columns = [pub.published_columns()[c].get("ours", c) for c in table.columns]
        printed[dataset] = decide(table, dataset)
    return printed


# --------------------------------------------------------------------------------------------
# best_average


def best_average_dataset(table: pd.DataFrame, dataset: str, printed: bool = False) -> dict[str, Any]:
    """``table``: rows = classes, columns = methods, AUC in percent. The result of
    ``stats.best_average_claim`` for Grad2VAE, with ``result``: supported -> holds, not
    supported -> fails, partly supported (best average, not significantly better than all) ->
    mixed."""
    if CLAIMED not in table.columns or table.shape[1] < 2 or len(table) < 2:
        return {"result": UNKNOWN, "why": "needs Grad2VAE and another method on at least 2 common classes"}
    comparison = stats.compare(table, name=pub.dataset_label(dataset))
    published = pub.published_average(dataset, pub.column_for_model(CLAIMED) or CLAIMED)
    where = pub.dataset_label(dataset) + (" (tested on the paper's own Table 1 numbers)" if printed else "")
    judged = stats.best_average_claim(
        comparison, CLAIMED, published, {m: _label(m) for m in table.columns}, where, scale=1.0,
        value_label="mean of its printed classes" if printed else "ours",
    )  # fmt: skip
    result = {SUPPORTED: HOLDS, NOT_SUPPORTED: FAILS, PARTLY: MIXED}.get(judged["verdict"], UNKNOWN)
    return {"result": result, **{k: _round(v) if not isinstance(v, list) else v for k, v in judged.items()}}


def best_average(runs: pd.DataFrame, datasets: list[str], models: list[str]) -> dict[str, Any]:
    competitors = pub.claims()["best_average"]["competitors"]
    present = sorted(set(runs["model"])) if not runs.empty else []
    missing = [_label(m) for m in competitors if m not in present]
    by_score = judged_per_score(runs, datasets, models, best_average_dataset)
    printed = judged_on_printed_table(datasets, lambda table, dataset: best_average_dataset(table, dataset, printed=True))
    main = by_score["main"]
    why = main["why"]
    sentences = [r["sentence"] for r in list(main["datasets"].values()) + list(printed.values()) if "sentence" in r]
    if missing:
        why += f"; the paper's competitors {', '.join(missing)} were not run here, so the claim is checked against the models in the grid only"
    return claim(
        "best_average",
        "Per dataset, Grad2VAE's AUC averaged over seeds, then over the normal classes, is the highest "
        "of all methods in the grid, and the two-sided Wilcoxon signed-rank test over the classes "
        "(Holm-corrected over all pairs, alpha 0.05) finds it significantly better than each: holds; "
        "best average without significance against some: partly; another method higher: fails.",
        main["verdict"],
        why,
        {
            "competitors_in_grid": [_label(m) for m in models if m != CLAIMED and m in present],
            "paper_competitors_not_run": missing,
            "datasets": main["datasets"],
            "on_printed_table1": {
                "verdict": combine({d: r["result"] for d, r in printed.items()})[0],
                "datasets": printed,
            },
        },
        by_score=by_score,
        sentences=sentences,
    )


# --------------------------------------------------------------------------------------------
# mstd


def mstd(avgs: pd.DataFrame, datasets: list[str], n_seeds: int) -> dict[str, Any]:
    limit = pub.mstd_claims().get("grad2vae_max")
    rows = avgs[avgs["model"] == CLAIMED] if not avgs.empty else avgs
    per_dataset, readings = {}, {"mean_of_class_stds": {}, "max_class_std": {}}
    for dataset in datasets:
        part = rows[rows["dataset"] == dataset] if not rows.empty else rows
        mean_std = _round(part["mstd"].iloc[0]) if len(part) else None
        max_std = _round(part["max_class_std"].iloc[0]) if len(part) else None
        per_dataset[dataset] = {"mstd": mean_std, "max_class_std": max_std}
        for reading, value in (("mean_of_class_stds", mean_std), ("max_class_std", max_std)):
            readings[reading][dataset] = UNKNOWN if value is None else (HOLDS if value <= limit else FAILS)
    others = {}
    for model in ("deep_svdd", "inception_caenn"):
        part = avgs[avgs["model"] == model] if not avgs.empty else avgs
        others[model] = {
            "published": pub.mstd_claims().get(model),
            "ours_mstd": {d: _round(v) for d, v in zip(part.get("dataset", []), part.get("mstd", []))},
        }
    verdicts = {reading: combine(results) for reading, results in readings.items()}
    a, b = verdicts["mean_of_class_stds"][0], verdicts["max_class_std"][0]
    if n_seeds < 2:
        verdict, why = CANNOT, f"a standard deviation over seeds needs at least 2 seeds per class; the grid has {n_seeds}"
    elif a == b:
        verdict, why = a, f"both readings: {verdicts['mean_of_class_stds'][1]}"
    elif SUPPORTED in (a, b):
        verdict = PARTLY
        why = f"reading 'mean of class stds': {a}; reading 'largest class std': {b}"
    else:
        verdict, why = (CANNOT if CANNOT in (a, b) else NOT_SUPPORTED), f"reading 'mean of class stds': {a}; 'largest class std': {b}"
    return claim(
        "mstd",
        f"'mstd' is undefined in the paper; two readings, in AUC percentage points: (a) the mean over "
        f"normal classes of the per-class standard deviation over seeds, (b) the largest per-class "
        f"standard deviation. Holds on a dataset when Grad2VAE's value is <= {limit}.",
        verdict,
        why,
        {"limit": limit, "grad2vae": per_dataset, "readings": {r: dict(v) for r, v in readings.items()},
         "others": others},  # fmt: skip
    )


# --------------------------------------------------------------------------------------------
# Fig. 6: above 95 % in half the VAE's epochs, nobody else by epoch 50


def mean_curves(history: pd.DataFrame, value: str = "auc") -> dict[tuple[str, str], pd.Series]:
    """(dataset, model) -> mean of ``value`` over classes and seeds per evaluated epoch."""
    if history.empty or value not in history:
        return {}
    data = history.assign(**{value: pd.to_numeric(history[value], errors="coerce")}).dropna(subset=[value])
    return {
        (str(dataset), str(model)): group.groupby("epoch")[value].mean().sort_index()
        for (dataset, model), group in data.groupby(["dataset", "model"])
    }


def first_epoch_above(curve: pd.Series, threshold: float) -> int | None:
    above = curve[curve > threshold]
    return int(above.index[0]) if len(above) else None


def fig6_dataset(curves: Mapping[str, pd.Series], threshold: float = 0.95, window: int = 50) -> dict[str, Any]:
    """The Fig. 6 claim on one dataset's mean curves (model -> AUC by epoch, fractions).

    (a) Grad2VAE's first epoch above ``threshold`` is at most half the VAE's. Unknown when
    Grad2VAE's curve never exceeds it but stops before ``window``; fails when it never exceeds
    it over at least ``window`` epochs. If the VAE never exceeds it, (a) holds when Grad2VAE's
    epoch is at most half of one past the VAE's last epoch, else unknown.
    (b) no other model ("the other remaining models": neither Grad2VAE nor the VAE) exceeds it
    by epoch ``window``; unknown for a model whose curve stops earlier without exceeding it.
    """
    details: dict[str, Any] = {"threshold": threshold, "window_epochs": window, "first_epoch": {}, "last_epoch": {}}
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
        half_why = f"Grad2VAE first exceeds {threshold:.0%} at epoch {first[CLAIMED]}, the VAE at epoch {first[VAE]}"
    else:
        half = HOLDS if first[CLAIMED] <= (last[VAE] + 1) / 2 else UNKNOWN
        half_why = f"Grad2VAE first exceeds {threshold:.0%} at epoch {first[CLAIMED]}; the VAE not in its {last[VAE]} epochs"
    others = [m for m in curves if m not in (CLAIMED, VAE)]
    reached = [m for m in others if first[m] is not None and first[m] <= window]
    short = [m for m in others if m not in reached and last[m] < window]
    if reached:
        rest, rest_why = FAILS, f"{', '.join(_label(m) for m in reached)} exceed(s) {threshold:.0%} by epoch {window}"
    elif not others:
        rest, rest_why = UNKNOWN, "no other model in the grid"
    elif short:
        rest, rest_why = UNKNOWN, f"the curves of {', '.join(_label(m) for m in short)} stop before epoch {window}"
    else:
        rest, rest_why = HOLDS, f"no other model exceeds {threshold:.0%} by epoch {window}"
    result = FAILS if FAILS in (half, rest) else (HOLDS if half == rest == HOLDS else UNKNOWN)
    return {"result": result, "half_the_vae": half, "others": rest, "why": f"{half_why}; {rest_why}", **details}


def first_epochs_per_run(history: pd.DataFrame, threshold: float, value: str = "auc") -> list[dict[str, Any]]:
    """Per (dataset, model): how many runs ever exceed ``threshold`` and at which first epoch
    (min, median, max over the runs that do)."""
    if history.empty or value not in history:
        return []
    data = history.assign(**{value: pd.to_numeric(history[value], errors="coerce")}).dropna(subset=[value])
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
    paper = pub.claims()["fig6_above_95_in_50_epochs"]
    threshold, window = paper["threshold_pct"] / 100.0, int(paper["window_epochs"])
    by_score = {}
    for score in score_names(runs) if not runs.empty else ["main"]:
        view, scored_by = scored_view(history, score) if not history.empty else (history, {})
        curves = mean_curves(view)
        results = {d: fig6_dataset({m: c for (ds, m), c in curves.items() if ds == d}, threshold, window) for d in datasets}
        verdict, why = combine({d: r["result"] for d, r in results.items()})
        by_score[score] = {
            "verdict": verdict, "why": why, "scored_by": scored_by, "datasets": results,
            "per_run": first_epochs_per_run(view, threshold),
        }  # fmt: skip
    main = by_score["main"]
    return claim(
        "fig6_above_95_in_50_epochs",
        f"On the Fig. 6 curves (test AUC per epoch, mean over normal classes and seeds), per dataset: "
        f"the first epoch at which Grad2VAE's curve exceeds {threshold:.0%} is at most half the VAE's, "
        f"and no other model ('the other remaining models': the Baseline CAE, Inception-CAENN and any "
        f"further model of the grid) exceeds {threshold:.0%} by epoch {window}. Also: the first epoch of "
        "each single run.",
        main["verdict"],
        main["why"],
        {"datasets": main["datasets"], "per_run": main["per_run"]},
        by_score=by_score,
    )


# --------------------------------------------------------------------------------------------
# no class bias


def class_bias_dataset(table: pd.DataFrame) -> dict[str, Any]:
    """``table``: rows = classes, columns = methods (AUC percent). Each method's worst class and
    spread (max - min over classes). Holds when Grad2VAE has both the highest worst class and
    the smallest spread of all methods; fails when it has neither; mixed when only one."""
    if CLAIMED not in table.columns or table.shape[1] < 2 or len(table) < 2:
        return {"result": UNKNOWN, "why": "needs Grad2VAE and another method on at least 2 common classes"}
    worst = table.min(axis=0)
    spread = table.max(axis=0) - worst
    others = [m for m in table.columns if m != CLAIMED]
    best_worst = all(worst[CLAIMED] > worst[m] for m in others)
    smallest_spread = all(spread[CLAIMED] < spread[m] for m in others)
    result = HOLDS if best_worst and smallest_spread else (FAILS if not (best_worst or smallest_spread) else MIXED)
    return {
        "result": result,
        "classes": [int(c) for c in table.index],
        "worst_class_auc": {m: _round(worst[m], 3) for m in table.columns},
        "worst_class": {m: int(table[m].idxmin()) for m in table.columns},
        "spread": {m: _round(spread[m], 3) for m in table.columns},
        "highest_worst_class": best_worst,
        "smallest_spread": smallest_spread,
    }


def no_class_bias(runs: pd.DataFrame, datasets: list[str], models: list[str]) -> dict[str, Any]:
    by_score = judged_per_score(runs, datasets, models, lambda table, dataset: class_bias_dataset(table))
    printed = judged_on_printed_table(datasets, lambda table, dataset: class_bias_dataset(table))
    main = by_score["main"]
    return claim(
        "no_class_bias",
        "Per dataset, from the per-class AUC (mean over seeds): each method's worst class and its "
        "spread (max - min over classes). Holds when Grad2VAE has both the highest worst class and the "
        "smallest spread of all methods; partly when only one of the two; fails "
        "when neither.",
        main["verdict"],
        main["why"],
        {"datasets": main["datasets"],
         "on_printed_table1": {"verdict": combine({d: r["result"] for d, r in printed.items()})[0], "datasets": printed}},
        by_score=by_score,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# the remarks on Deep SVDD's and Inception-CAENN's classes


def class_remarks_check(table: pd.DataFrame, best: Mapping[str, int], worst: Mapping[str, int]) -> dict[str, Any]:
    """``table``: rows = classes (all ten needed), columns = methods. One check per remark: the
    method's best class is ``best[m]``, its worst class ``worst[m]``; None where the method is
    missing or lacks some class."""
    checks = {}
    for model in sorted(set(best) | set(worst)):
        complete = model in table.columns and table[model].notna().sum() == pub.N_CLASSES
        column = table[model] if complete else None
        for kind, wanted in (("best", best), ("worst", worst)):
            if model not in wanted:
                continue
            found = None if column is None else int(column.idxmax() if kind == "best" else column.idxmin())
            checks[f"{model}_{kind}_class"] = {
                "expected": wanted[model], "found": found,
                "auc": None if column is None or found is None else _round(float(column[found]), 3),
                "holds": None if found is None else found == wanted[model],
            }  # fmt: skip
    return checks


def class_remarks(runs: pd.DataFrame) -> dict[str, Any]:
    paper = pub.claims()["class_remarks"]
    dataset = paper["dataset"]
    best, worst = paper["best_class"], paper["worst_class"]
    models = sorted(set(best) | set(worst))
    part = runs[runs["dataset"] == dataset] if not runs.empty else runs
    table = pd.DataFrame()
    if not part.empty:
        table = part[part["model"].isin(models)].groupby(["normal_class", "model"])["auc"].mean().unstack("model") * 100.0
    ours = class_remarks_check(table, best, worst)
    printed = judged_on_printed_table([dataset], lambda table, _: class_remarks_check(table, best, worst))[dataset]
    outcomes = [c["holds"] for c in ours.values()]
    judged = [o for o in outcomes if o is not None]
    if not judged:
        verdict, why = CANNOT, f"Deep SVDD and Inception-CAENN need runs of all ten {pub.dataset_label(dataset)} classes (extra_models / the table1-complete preset)"
    elif all(judged) and len(judged) == len(outcomes):
        verdict, why = SUPPORTED, "all four remarks hold on our runs"
    elif not any(judged):
        verdict, why = NOT_SUPPORTED, f"none of the {len(judged)} judged remarks holds on our runs"
    else:
        verdict = PARTLY if any(judged) else CANNOT
        why = f"{sum(judged)} of {len(judged)} judged remarks hold on our runs ({len(outcomes) - len(judged)} not judged)"
    labels = pub.load_published()["table1"]["class_labels"][dataset]
    return claim(
        "class_remarks",
        f"The paper counts classes from 1: on {pub.dataset_label(dataset)}, 'the 2nd class' is "
        f"{labels[1]} (index 1), 'the 6th and 7th' are {labels[5]} and {labels[6]} (indices 5, 6). "
        "'Learn perfectly' is read as: it is the method's best class. Four checks, on the per-class "
        "AUC (mean over seeds) of all ten classes: Deep SVDD's and Inception-CAENN's best class is "
        f"{labels[1]}; Deep SVDD's worst is {labels[5]}; Inception-CAENN's worst is {labels[6]}.",
        verdict,
        why,
        {"ours": ours, "on_printed_table1": printed},
    )


# --------------------------------------------------------------------------------------------
# parameter ratios


def parameter_ratios(params: pd.DataFrame, tolerance: float = 0.10) -> dict[str, Any]:
    """Grad2VAE's parameter count over the CAE's, the VAE's and Inception-CAENN's, ours (MNIST,
    latent 16, the size our widths were calibrated on) beside the paper's stated ratios and the
    ratios of the paper's own counts."""
    paper = pub.claims()["parameter_ratios"]["ratios"]
    counts = pub.parameters_millions()
    ours_counts = {}
    if not params.empty:
        mnist = params[params["dataset"] == "mnist"]
        ours_counts = {m: float(v) for m, v in zip(mnist["model"], mnist["parameters"]) if pd.notna(v)}
    ratios, outcomes = {}, []
    for model, stated in paper.items():
        ours = ours_counts[CLAIMED] / ours_counts[model] if CLAIMED in ours_counts and model in ours_counts else None
        within = None if ours is None else abs(ours / stated - 1) <= tolerance
        outcomes.append(within)
        ratios[model] = {
            "stated": stated,
            "from_paper_counts": _round(counts[CLAIMED] / counts[model], 3),
            "ours": _round(ours, 3),
            "within_tolerance": within,
        }
    judged = [o for o in outcomes if o is not None]
    if not judged:
        verdict, why = CANNOT, "needs MNIST runs of Grad2VAE and of the compared models"
    elif all(judged) and len(judged) == len(outcomes):
        verdict, why = SUPPORTED, f"all ratios within {tolerance:.0%} of the stated ones"
    elif any(judged):
        verdict, why = PARTLY, f"{sum(judged)} of {len(outcomes)} ratios within {tolerance:.0%} of the stated ones"
    else:
        verdict, why = NOT_SUPPORTED, f"no judged ratio within {tolerance:.0%} of the stated ones"
    return claim(
        "parameter_ratios",
        f"Our trainable-parameter counts (MNIST, latent size 16): Grad2VAE's over each model's, within "
        f"{tolerance:.0%} of the stated ratio. The ratios of the paper's own counts (3.38 M over 0.266, "
        "3.25, 0.335 M) are shown too: the stated 1.03x is 1.04x by its own numbers.",
        verdict,
        why,
        {"ratios": ratios, "our_counts": ours_counts, "paper_counts_millions": counts},
    )


# --------------------------------------------------------------------------------------------
# acceleration per compute


def compute_curves(history: pd.DataFrame, runs: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, model) -> per evaluated epoch: mean AUC over classes and seeds, cumulative
    training FLOPs (epoch x the runs' mean FLOPs per epoch) and cumulative training seconds
    (mean over the runs of the sum of ``train_seconds`` up to that epoch)."""
    if history.empty or runs.empty or "train_flops_per_epoch" not in runs:
        return {}
    flops = runs.groupby(["dataset", "model"])["train_flops_per_epoch"].apply(lambda v: pd.to_numeric(v, errors="coerce").mean())
    data = history.copy()
    data["auc"] = pd.to_numeric(data["auc"], errors="coerce")
    seconds = "train_seconds" if "train_seconds" in data else "seconds"
    data = data.sort_values("epoch")
    data["cumulative_seconds"] = data.groupby(["dataset", "model", "normal_class", "seed"])[seconds].cumsum()
    curves = {}
    for (dataset, model), group in data.dropna(subset=["auc"]).groupby(["dataset", "model"]):
        per_epoch = group.groupby("epoch").agg(auc=("auc", "mean"), cumulative_seconds=("cumulative_seconds", "mean"))
        per_epoch["cumulative_flops"] = per_epoch.index.to_numpy(dtype=float) * flops.get((dataset, model), math.nan)
        curves[(str(dataset), str(model))] = per_epoch.sort_index()
    return curves


def _cost_to_reach(curve: pd.DataFrame, level: float, cost: str) -> float | None:
    reached = curve[curve["auc"] >= level]
    return float(reached[cost].iloc[0]) if len(reached) and pd.notna(reached[cost].iloc[0]) else None


def compute_dataset(curves: Mapping[str, pd.DataFrame], cost: str = "cumulative_flops", levels=COMPUTE_LEVELS) -> dict[str, Any]:
    """Grad2VAE against the VAE on one dataset: at each AUC level (``levels`` and the highest level
    both curves reach), the compute (``cost``) at which each curve first reaches it. Holds when
    Grad2VAE needs less at every level where one of them gets there; fails when it never does;
    mixed when at some levels only; unknown when no level is informative."""
    if CLAIMED not in curves or VAE not in curves:
        return {"result": UNKNOWN, "why": "needs Grad2VAE's and the VAE's curves"}
    g, v = curves[CLAIMED], curves[VAE]
    common = min(g["auc"].max(), v["auc"].max())
    rows, wins = [], []
    for level in sorted(set(levels) | ({round(float(common), 4)} if math.isfinite(common) else set())):
        cost_g, cost_v = _cost_to_reach(g, level, cost), _cost_to_reach(v, level, cost)
        if cost_g is None and cost_v is None:
            winner = None
        elif cost_v is None or (cost_g is not None and cost_g < cost_v):
            winner = CLAIMED
        else:
            winner = VAE
        rows.append({"auc_level": level, "grad2vae": _round(cost_g, 6), "vae": _round(cost_v, 6), "less_compute": winner})
        if winner is not None:
            wins.append(winner == CLAIMED)
    if not wins:
        result = UNKNOWN
    else:
        result = HOLDS if all(wins) else (FAILS if not any(wins) else MIXED)
    return {"result": result, "cost": cost, "levels": rows}


def acceleration_per_compute(history: pd.DataFrame, runs: pd.DataFrame, datasets: list[str]) -> dict[str, Any]:
    curves = compute_curves(history, runs)
    results, seconds = {}, {}
    for dataset in datasets:
        mine = {m: c for (d, m), c in curves.items() if d == dataset}
        results[dataset] = compute_dataset(mine, "cumulative_flops")
        seconds[dataset] = compute_dataset(mine, "cumulative_seconds")
    verdict, why = combine({d: r["result"] for d, r in results.items()})
    per_epoch = {}
    if not runs.empty and "train_flops_per_epoch" in runs:
        for (dataset, model), group in runs.groupby(["dataset", "model"]):
            per_epoch.setdefault(dataset, {})[model] = _round(pd.to_numeric(group["train_flops_per_epoch"], errors="coerce").mean(), 0)
    return claim(
        "acceleration_per_compute",
        "Fig. 6 counts epochs, but a Grad2VAE epoch costs several VAE epochs. Per dataset, on the mean "
        "curves (AUC over classes and seeds) against cumulative training FLOPs (FlopCounterMode on one "
        f"training step, times the steps per epoch): at each AUC level ({', '.join(f'{x:.2f}' for x in COMPUTE_LEVELS)} "
        "and the highest level both curves reach), which model first reaches it with less compute. Holds "
        "when Grad2VAE needs less at every level one of them reaches; fails when it never does. The same "
        "on measured training seconds is in the evidence.",
        verdict,
        why,
        {"flops": results, "training_seconds": seconds, "train_flops_per_epoch": per_epoch},
    )


# --------------------------------------------------------------------------------------------
# all of them


def all_claims(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    avgs: pd.DataFrame,
    params: pd.DataFrame,
    grid: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The claims of ``claims.json``, in the paper's order. ``runs`` without pseudo-models."""
    datasets, models = list(grid["datasets"]), list(grid["models"])
    return [
        best_average(runs, datasets, models),
        mstd(avgs, datasets, len(grid["seeds"])),
        fig6(history, runs, datasets),
        no_class_bias(runs, datasets, models),
        class_remarks(runs),
        parameter_ratios(params),
        acceleration_per_compute(history, runs, datasets),
    ]


def verdict_counts(claims: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for item in claims:
        counts[item["verdict"]] += 1
    return counts


# --------------------------------------------------------------------------------------------
# which score, and what the attention path does (the report's section of that name)


def score_findings(per_score: pd.DataFrame, runs: pd.DataFrame, datasets: list[str]) -> dict[str, Any]:
    """Per dataset: does the Grad2VAE-vs-VAE ordering of the average AUC under the main score
    survive each other score, and how well each model reconstructs anomalies relative to normal
    images at the last epoch (mean over runs of mean anomalous / mean normal reconstruction
    score). ``per_score``: aggregate.scores_table; ``runs``: runs.csv rows."""
    out: dict[str, Any] = {}
    for dataset in datasets:
        sentences, ordering, ratios = [], {}, {}
        part = per_score[per_score["dataset"] == dataset] if not per_score.empty else per_score
        table = part.pivot_table(index="score", columns="model", values="auc_pct_mean") if not part.empty else pd.DataFrame()
        if {CLAIMED, VAE} <= set(table.columns) and "main" in table.index:
            # "reconstruction" is the VAEs' main score again: not a change of score
            differences = (table[CLAIMED] - table[VAE]).dropna().drop("reconstruction", errors="ignore")
            main = differences.get("main")
            for score, difference in differences.items():
                ordering[score] = {"grad2vae_minus_vae_pct": _round(difference, 3),
                                   "same_order_as_main": bool(np.sign(difference) == np.sign(main))}  # fmt: skip
            kept = [s for s, o in ordering.items() if s != "main" and o["same_order_as_main"]]
            flipped = [s for s, o in ordering.items() if s != "main" and not o["same_order_as_main"]]
            leader = "Grad2VAE" if main > 0 else "the VAE"
            sentences.append(
                f"Under the main score {leader} has the higher average AUC ({main:+.2f} points, Grad2VAE minus VAE); "
                f"the ordering survives under {', '.join(kept) or 'no other score'}"
                + (f" and reverses under {', '.join(flipped)}." if flipped else ".")
            )
        else:
            sentences.append("The Grad2VAE-vs-VAE ordering needs runs of both models.")
        if not runs.empty and {"mean_reconstruction_anomalous", "mean_reconstruction_normal"} <= set(runs.columns):
            mine = runs[runs["dataset"] == dataset]
            ratio = pd.to_numeric(mine["mean_reconstruction_anomalous"], errors="coerce") / pd.to_numeric(
                mine["mean_reconstruction_normal"], errors="coerce")  # fmt: skip
            for model, values in ratio.groupby(mine["model"]):
                if values.notna().any():
                    ratios[str(model)] = _round(float(values.mean()), 3)
        if ratios:
            sentences.append(
                "At the last epoch, the mean reconstruction error of anomalous test images is "
                + "; ".join(f"{r:.2f}x that of normal ones for {_label(m)}" for m, r in ratios.items())
                + " (1x: anomalies reconstructed as well as normal images)."
            )
        entropy = part[part["model"] == "entropy_only"]["auc_pct_mean"] if not part.empty else pd.Series(dtype=float)
        if len(entropy):
            sentences.append(
                f"The image entropy H(x) alone, with no model, ranks anomalies with an average AUC of "
                f"{float(entropy.iloc[0]):.2f} % over these classes: BCE contains H(x), so part of a BCE-based AUC is "
                "the class's ink rather than the model."
            )
        out[dataset] = {"label": pub.dataset_label(dataset), "ordering": ordering,
                        "anomalous_over_normal_error": ratios, "sentences": sentences}  # fmt: skip
    return out
