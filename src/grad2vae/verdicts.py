"""How a claim is judged: the four verdicts, combining per-dataset results into one, the claim
record of claims.json, and judging again under every score and on the printed Table 1."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from grad2vae import published as pub
from grad2vae import stats

#: per-dataset results: the claim holds, fails, holds in part (mixed), or cannot be decided
HOLDS, FAILS, MIXED, UNKNOWN = "holds", "fails", "mixed", "unknown"

SUPPORTED = "supported"


NOT_SUPPORTED = "not supported"


PARTLY = "partly supported"


CANNOT = "cannot be judged"


VERDICTS = (SUPPORTED, NOT_SUPPORTED, PARTLY, CANNOT)


CLAIMED = "grad2vae"


VAE = "vae"


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
    """``main`` and every other score whose AUC the runs report (``auc_{score}`` columns),
    without ``reconstruction`` (the VAEs' equals their main score) and the oracle."""
    names = ["main"]
    for column in runs.columns:
        if column.startswith("auc_") and column not in ("auc_reconstruction", "auc_oracle"):
            values = pd.to_numeric(runs[column], errors="coerce")
            if values.notna().any():
                names.append(column.removeprefix("auc_"))
    return names


def scored_view(
    frame: pd.DataFrame, score: str, value: str = "auc"
) -> tuple[pd.DataFrame, dict[str, str]]:
    """``frame`` (runs or history) with ``value`` replaced by the AUC of ``score`` for every
    model that reports it, its main AUC otherwise; and model -> the score it is judged by."""
    frame = frame.copy()
    column = "auc" if score == "main" else f"auc_{score}"
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
) -> dict[str, Any]:
    """One object of claims.json (see the module docstring)."""
    paper = pub.claims()[claim_id]
    assert verdict in VERDICTS, verdict
    return {
        "id": claim_id, "section": paper["section"], "words": paper["words"],
        "definition": definition, "verdict": verdict, "why": why, "sentences": sentences or [],
        "evidence": evidence, "by_score": by_score or {},
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
