"""How a claim is judged: the four verdicts, combining per-dataset results into one, the claim
record of claims.json, judging again under every score and on the printed Table 1, and the scope
of a verdict: the paper's protocol, or exactly how the runs it stands on fall short of it.

A scope (``scope``) is ``{"paper_protocol": bool, "text": str, "shortfalls": [...], "coverage":
{...}}``. Each shortfall is ``{"aspect", "paper", "ours", "text"}`` with ``aspect`` in
``SCOPE_ASPECTS``; ``text`` is "the paper's protocol" when there is none, else "short of the
paper's protocol: " and the shortfalls' texts. ``coverage`` is what the runs have: ``runs``,
per dataset ``models``, ``classes`` and ``seeds_per_class`` ([fewest, most]), and ``epochs``,
``train_limit``, ``test_limit`` (the distinct recorded values).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from grad2vae import published as pub
from grad2vae.analysis import stats
from grad2vae.score_columns import column_score, score_column, score_columns

#: per-dataset results: the claim holds, fails, holds in part (mixed), or cannot be decided
HOLDS, FAILS, MIXED, UNKNOWN = "holds", "fails", "mixed", "unknown"

SUPPORTED = "supported"


NOT_SUPPORTED = "not supported"


PARTLY = "partly supported"


CANNOT = "cannot be judged"


VERDICTS = (SUPPORTED, NOT_SUPPORTED, PARTLY, CANNOT)


CLAIMED = "grad2vae"


VAE = "vae"

#: the four models of the paper's grid (config.yaml ``models``; Fig. 6's curves)
PAPER_MODELS = ("grad2vae", "vae", "cae", "inception_caenn")

#: a class mean, and a standard deviation, over seeds rests on at least this many seeds
MIN_SEEDS = 2

#: what a scope checks, in the order its shortfalls are listed
SCOPE_ASPECTS = (
    "datasets", "models", "epochs", "classes", "seeds", "training images", "test images",
)  # fmt: skip

PROTOCOL_TEXT = "the paper's protocol"


# --------------------------------------------------------------------------------------------
# the paper's protocol and the grid a verdict stands on
def paper_datasets() -> list[str]:
    """Table 1's datasets, in its order: the datasets of the claims made "for both datasets"."""
    return list(pub.load_published()["table1"]["per_class"])


def paper_protocol() -> dict[str, Any]:
    """The protocol a verdict's scope is measured against: config.yaml at the repository root,
    which is the paper's (Sect. 4.2: both datasets, every normal class, 10 models per class,
    100 epochs, all training and test images; published.yaml ``learning_setup``)."""
    setup = pub.learning_setup()
    return {
        "datasets": paper_datasets(),
        "epochs": int(setup["epochs"]),
        "classes": pub.N_CLASSES,
        "seeds": int(setup["models_per_class"]),
        "train_limit": 0,  # 0 = all images
        "test_limit": 0,
    }


def with_paper_datasets(datasets: Iterable[str]) -> list[str]:
    """``datasets`` and after them the paper's datasets they lack. A claim the paper makes for
    both datasets is judged on both: a dataset without runs is then "unknown", which keeps the
    verdict from "supported" (and leaves a failure on the other standing)."""
    datasets = list(datasets)
    return datasets + [d for d in paper_datasets() if d not in datasets]


def seeds_per_class(runs: pd.DataFrame, dataset: str, models: Iterable[str]) -> pd.DataFrame:
    """Rows = the ten normal classes, columns = ``models``: how many distinct seeds of the model
    have an AUC on ``dataset`` (0 where none)."""
    models = list(models)
    index = pd.Index(range(pub.N_CLASSES), name="normal_class")
    if runs.empty or "model" not in runs:
        return pd.DataFrame(0, index=index, columns=models)
    part = runs[(runs["dataset"] == dataset) & runs["model"].isin(models)]
    part = part[pd.to_numeric(part["auc"], errors="coerce").notna()]
    counts = part.groupby(["normal_class", "model"])["seed"].nunique().unstack("model")
    return counts.reindex(index=index, columns=models).fillna(0).astype(int)


def too_few_seeds(runs: pd.DataFrame, dataset: str, models: Iterable[str]) -> str | None:
    """Why ``runs`` cannot give each of ``models`` a mean and a spread over seeds in every one
    of the ten classes of ``dataset`` (fewer than ``MIN_SEEDS`` seeds in some class), or None."""
    counts = seeds_per_class(runs, dataset, models)
    parts = []
    for model in counts.columns:
        short = [int(c) for c in counts.index if counts.loc[c, model] < MIN_SEEDS]
        if len(short) == len(counts):
            parts.append(f"{claim_label(model)} has fewer than {MIN_SEEDS} seeds in every class")
        elif short:
            parts.append(
                f"{claim_label(model)} has fewer than {MIN_SEEDS} seeds in {len(short)} of the "
                f"ten classes ({', '.join(map(str, short))})"
            )
    return "; ".join(parts) or None


def _span(values: list[int], unit: str = "") -> str:
    """The text of a range of counts: '2 epochs', '1 seed', '1 to 10 seeds', '500'."""
    low, high = min(values), max(values)
    text = str(low) if low == high else f"{low} to {high}"
    return text if not unit else f"{text} {unit if high == 1 else unit + 's'}"


def _shortfall(aspect: str, paper: Any, ours: Any, text: str) -> dict[str, Any]:
    return {"aspect": aspect, "paper": paper, "ours": ours, "text": text}


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` as numbers, NaN where unreadable or where the column is missing."""
    if column not in frame:
        return pd.Series(math.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


def _epochs_shortfall(used: pd.DataFrame, paper: int) -> tuple[dict | None, list[int]]:
    """(the shortfall of the runs' epochs, or None; the distinct recorded epochs). Any epochs
    other than the paper's fall short, more as well as fewer: the claims are about its curves."""
    epochs = _numbers(used, "epochs")
    recorded = sorted({int(e) for e in epochs.dropna()})
    unrecorded = int(epochs.isna().sum())
    if recorded == [paper] and not unrecorded:
        return None, recorded
    parts = [f"{_span(recorded, 'epoch')} per run"] if recorded else []
    if unrecorded:
        parts.append(f"epochs not recorded for {unrecorded} run(s)")
    text = f"{', '.join(parts)} (the paper: {paper})"
    return _shortfall("epochs", paper, recorded, text), recorded


def _limit_shortfall(used: pd.DataFrame, column: str, aspect: str) -> tuple[dict | None, list[int]]:
    """(the shortfall of a ``train_limit``/``test_limit`` column, or None; its distinct recorded
    values). 0 (all images) is the paper's; a limit, or a run that did not record one, falls
    short."""
    values = _numbers(used, column)
    recorded = sorted({int(v) for v in values.dropna()})
    limited = [int(v) for v in values[values > 0]]
    missing = int(values.isna().sum())
    parts = []
    if limited:
        share = "" if len(limited) == len(used) else f" in {len(limited)} of {len(used)} runs"
        parts.append(f"{aspect} limited to {_span(limited)} per run{share}")
    if missing:
        parts.append(f"limit on {aspect} not recorded for {missing} run(s)")
    if not parts:
        return None, recorded
    return _shortfall(aspect, 0, recorded, "; ".join(parts) + " (the paper: all)"), recorded


def _dataset_coverage(part: pd.DataFrame) -> dict[str, Any]:
    """One dataset's runs: its models, the classes every one of them has, and the fewest and
    most seeds of a (model, class)."""
    models = sorted(set(part["model"]))
    if not {"normal_class", "seed"} <= set(part.columns):  # nothing says which runs they are
        return {"models": models, "classes": 0, "seeds_per_class": [0, 0]}
    per_model = [set(group["normal_class"]) for _, group in part.groupby("model")]
    seeds = part.groupby(["model", "normal_class"])["seed"].nunique()
    return {
        "models": models,
        "classes": len(set.intersection(*per_model)),
        "seeds_per_class": [int(seeds.min()), int(seeds.max())],
    }


def scope(
    runs: pd.DataFrame,
    datasets: Iterable[str],
    models: Iterable[str] | None = None,
    needed_models: Iterable[str] | None = None,
    aspects: Iterable[str] = SCOPE_ASPECTS,
) -> dict[str, Any]:
    """The scope of a verdict (format: the module docstring), from the runs it used: the rows of
    ``runs`` on ``datasets`` (those the claim is about) of ``models`` (None: all). Short of the
    paper's protocol: a dataset without runs; on a dataset with runs, a model of
    ``needed_models`` (default ``models``) without any; epochs other than the paper's; fewer
    than its ten classes common to all models; fewer than its ten seeds in some class; limited
    or unrecorded training or test images. Only ``aspects`` are checked: e.g. a parameter count
    does not depend on training, so its scope checks the datasets and models only."""
    protocol, aspects, datasets = paper_protocol(), set(aspects), list(datasets)
    used = runs if "dataset" in runs else pd.DataFrame(columns=["dataset", "model"])
    used = used[used["dataset"].isin(datasets)]
    if models is not None:
        used = used[used["model"].isin(list(models))]
    needed = list(needed_models if needed_models is not None else (models or []))
    label = pub.dataset_label
    present = [d for d in datasets if d in set(used["dataset"])]
    per_dataset = {d: _dataset_coverage(used[used["dataset"] == d]) for d in present}
    coverage: dict[str, Any] = {"runs": int(len(used)), "datasets": per_dataset}
    shortfalls: list[dict[str, Any]] = []
    if "datasets" in aspects and len(present) < len(datasets):
        missing = ", ".join(label(d) for d in datasets if d not in present)
        shortfalls.append(_shortfall("datasets", datasets, present, f"no runs on {missing}"))
    lacking = {
        d: [claim_label(m) for m in needed if m not in c["models"]] for d, c in per_dataset.items()
    }
    if "models" in aspects and any(lacking.values()):
        text = "; ".join(f"{label(d)}: no runs of {', '.join(m)}" for d, m in lacking.items() if m)
        ours = {d: c["models"] for d, c in per_dataset.items()}
        shortfalls.append(_shortfall("models", needed, ours, text))
    if "epochs" in aspects and len(used):
        shortfall, coverage["epochs"] = _epochs_shortfall(used, protocol["epochs"])
        shortfalls += [shortfall] if shortfall else []
    short = [d for d, c in per_dataset.items() if c["classes"] < protocol["classes"]]
    if "classes" in aspects and short:
        text = "; ".join(
            f"{label(d)}: {per_dataset[d]['classes']} of {protocol['classes']} normal classes"
            for d in short
        )
        ours = {d: c["classes"] for d, c in per_dataset.items()}
        shortfalls.append(_shortfall("classes", protocol["classes"], ours, text))
    short = [d for d, c in per_dataset.items() if c["seeds_per_class"][0] < protocol["seeds"]]
    if "seeds" in aspects and short:
        text = "; ".join(
            f"{label(d)}: {_span(per_dataset[d]['seeds_per_class'], 'seed')} per class"
            for d in short
        )
        ours = {d: c["seeds_per_class"] for d, c in per_dataset.items()}
        text += f" (the paper: {protocol['seeds']})"
        shortfalls.append(_shortfall("seeds", protocol["seeds"], ours, text))
    for aspect, column in (("training images", "train_limit"), ("test images", "test_limit")):
        if aspect in aspects and len(used):
            shortfall, coverage[column] = _limit_shortfall(used, column, aspect)
            shortfalls += [shortfall] if shortfall else []
    text = "; ".join(s["text"] for s in shortfalls)
    return {
        "paper_protocol": not shortfalls,
        "text": f"short of the paper's protocol: {text}" if shortfalls else PROTOCOL_TEXT,
        "shortfalls": shortfalls,
        "coverage": coverage,
    }


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
             (("holds", held), ("fails", failed), ("holds in part", mixed),
              ("cannot be judged", unknown)) if items]  # fmt: skip
    why = "; ".join(parts) or "no dataset of the claim is in the grid"
    if held and not (failed or mixed or unknown):
        return SUPPORTED, why
    if failed and not (held or mixed):
        return NOT_SUPPORTED, why
    if mixed or (held and failed):
        return PARTLY, why
    return CANNOT, why


def score_names(runs: pd.DataFrame) -> list[str]:
    """``main`` and every other score whose AUC the runs report (``auc_{score}`` and the
    pixel-level ``pixel_auc*`` columns, ``score_columns``), without ``reconstruction`` (the
    VAEs' equals their main score)."""
    names = ["main"]
    for column in score_columns(runs.columns):
        values = pd.to_numeric(runs[column], errors="coerce")
        if column != "auc" and values.notna().any():
            names.append(column_score(column))
    return names


def scored_view(
    frame: pd.DataFrame, score: str, value: str = "auc"
) -> tuple[pd.DataFrame, dict[str, str]]:
    """``frame`` (runs or history) with ``value`` replaced by the AUC of ``score`` for every
    model that reports it, its main AUC otherwise; and model -> the score it is judged by."""
    frame = frame.copy()
    column = score_column(score)
    scored_by: dict[str, str] = {}
    if frame.empty or "model" not in frame:
        return frame, scored_by
    for model in frame["model"].unique():
        rows = frame["model"] == model
        alternative = (
            pd.to_numeric(frame.loc[rows, column], errors="coerce") if column in frame else None
        )
        if score != "main" and alternative is not None and alternative.notna().any():
            frame.loc[rows, value] = alternative
            scored_by[str(model)] = score
        else:
            scored_by[str(model)] = "main"
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    return frame, scored_by


def claim(
    claim_id: str,
    definition: str,
    verdict: str,
    why: str,
    evidence: Any,
    by_score: dict | None = None,
    sentences: list[str] | None = None,
    *,
    scope: dict[str, Any],
) -> dict[str, Any]:
    """One object of claims.json (see grad2vae.analysis.claims) with its ``scope`` (see
    ``scope``); each verdict of ``by_score`` without a scope of its own gets the claim's (the same
    runs)."""
    paper = pub.claims()[claim_id]
    assert verdict in VERDICTS, verdict
    by_score = {s: {**judged, "scope": judged.get("scope", scope)}
                for s, judged in (by_score or {}).items()}  # fmt: skip
    return {
        "id": claim_id, "section": paper["section"], "words": paper["words"],
        "definition": definition, "verdict": verdict, "why": why, "sentences": sentences or [],
        "evidence": evidence, "by_score": by_score, "scope": scope,
    }  # fmt: skip


def round_value(value: Any, digits: int = 4) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


def claim_label(model: str) -> str:
    labels = pub.load_published().get("paper_model_labels", {})
    return str(labels.get(model, model))


def judged_per_score(
    runs: pd.DataFrame,
    datasets: list[str],
    models: list[str],
    decide: Callable[[pd.DataFrame, str], dict],
) -> dict[str, dict]:
    """score -> {verdict, why, scored_by, datasets}: ``decide(class-mean table in percent,
    dataset)`` on our runs under every score (``scored_view``), combined over the datasets."""
    by_score = {}
    for score in score_names(runs) if not runs.empty else ["main"]:
        view, scored_by = scored_view(runs, score)
        results = {}
        for dataset in datasets:
            part = view[view["dataset"] == dataset] if not view.empty else view
            if part.empty:
                results[dataset] = {"result": UNKNOWN, "why": "no runs of this dataset"}
                continue
            present = [m for m in models if m in set(part.get("model", []))]
            table = stats.class_means(part, present) * 100.0 if not part.empty else pd.DataFrame()
            results[dataset] = decide(table, dataset)
        verdict, why = combine({d: r["result"] for d, r in results.items()})
        by_score[score] = {
            "verdict": verdict,
            "why": why,
            "scored_by": scored_by,
            "datasets": results,
        }
    return by_score


def judged_on_printed_table(
    datasets: list[str], decide: Callable[[pd.DataFrame, str], dict]
) -> dict[str, dict]:
    """dataset -> ``decide`` on the paper's printed Table 1 (columns named by our models)."""
    printed = {}
    for dataset in datasets:
        table = stats.published_table(dataset)
        table.columns = [pub.published_columns()[c].get("ours", c) for c in table.columns]
        printed[dataset] = decide(table, dataset)
    return printed


def verdict_counts(claims: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for item in claims:
        counts[item["verdict"]] += 1
    return counts
