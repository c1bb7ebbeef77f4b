"""Compare methods over the ten normal classes of a dataset: ranks, Friedman, Wilcoxon-Holm.

``analyse(runs)`` returns the statistics section of the report (``grad2vae aggregate`` writes it
to stats.json): per dataset, one value per (class, method), the AUC averaged over seeds first
(``class_means``); the average rank of every method; the Friedman test; every pair of methods
compared by the two-sided Wilcoxon signed-rank test, Holm-corrected (``holm``) and judged at
alpha = 0.05; the Nemenyi critical difference for reference; and
the paper's "best average AUC" claim, all also on the paper's printed Table 1. The procedure
follows Demšar (JMLR 2006) and Benavoli, Corani & Mangili (JMLR 2016);
docs/design-notes.md gives it step by step, its power with ten classes and the library choice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

#: significance level of every test here
ALPHA = 0.05


# --------------------------------------------------------------------------------------------
# building blocks


def class_means(
    runs: pd.DataFrame,
    methods: Sequence[str] | None = None,
    value: str = "auc",
    block: str = "normal_class",
    method: str = "model",
) -> pd.DataFrame:
    """Rows = classes, columns = methods: ``value`` averaged over seeds first. Only classes where
    every method has at least one run are kept (the tests need complete blocks)."""
    if methods is None:
        methods = sorted(runs[method].unique())
    present = runs[runs[method].isin(methods)].dropna(subset=[value])
    table = present.groupby([block, method])[value].mean().unstack(method)
    table = table.reindex(columns=list(methods)).dropna(axis=0, how="any")
    return table.sort_index()


def average_ranks(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Average over rows of each column's rank within the row; 1 = best, ties share the mean."""
    values = table.to_numpy(dtype=float)
    ranks = sps.rankdata(-values if higher_is_better else values, axis=1)
    return pd.Series(ranks.mean(axis=0), index=table.columns, name="average_rank")


def friedman(table: pd.DataFrame) -> tuple[float, float]:
    """(chi-square statistic, p-value) of the Friedman test over the rows; needs >= 3 columns."""
    if table.shape[1] < 3 or table.shape[0] < 2:
        return math.nan, math.nan
    result = sps.friedmanchisquare(
        *(table[column].to_numpy(dtype=float) for column in table.columns)
    )
    return float(result.statistic), float(result.pvalue)


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired samples (SciPy's defaults: zero
    differences dropped, exact distribution when possible); 1.0 when every difference is 0."""
    differences = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if not np.any(differences != 0):
        return 1.0
    return float(sps.wilcoxon(x, y).pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: sort ascending, multiply the i-th smallest (0-based) by
    m - i, keep them non-decreasing, cap at 1. A hypothesis is rejected at level alpha when its
    adjusted p-value is <= alpha. NaN entries are left out of m and stay NaN."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, (m - i) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def pairwise_wilcoxon_holm(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw, Holm-adjusted) symmetric matrices of the pairwise Wilcoxon p-values (diagonal 1)."""
    methods = list(table.columns)
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
    raw_values = [wilcoxon_p(table[a], table[b]) for a, b in pairs]
    adjusted_values = holm(raw_values)
    raw = pd.DataFrame(1.0, index=methods, columns=methods)
    adjusted = raw.copy()
    for (a, b), p, q in zip(pairs, raw_values, adjusted_values):
        raw.loc[a, b] = raw.loc[b, a] = p
        adjusted.loc[a, b] = adjusted.loc[b, a] = q
    return raw, adjusted


def nemenyi_critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Demšar's CD = q_alpha sqrt(k(k+1)/(6N)), q_alpha = studentized range quantile / sqrt(2)."""
    if k < 2 or n < 1:
        return math.nan
    q = sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def minimum_holm_p(n: int, m: int) -> float:
    """The smallest Holm-adjusted p-value any pair can reach: m times the smallest two-sided exact
    Wilcoxon p-value with n pairs (2 / 2^n)."""
    return min(1.0, m * 2.0 / 2.0**n)


# --------------------------------------------------------------------------------------------
# one dataset's comparison


@dataclasses.dataclass
class Comparison:
    """Everything the report shows for one dataset's comparison of methods."""

    name: str
    table: pd.DataFrame  # rows = classes, columns = methods
    average_ranks: pd.Series
    friedman_statistic: float
    friedman_p: float
    wilcoxon_p: pd.DataFrame
    holm_p: pd.DataFrame
    critical_difference: float
    alpha: float = ALPHA

    @property
    def methods(self) -> list[str]:
        return list(self.table.columns)

    @property
    def n_blocks(self) -> int:
        return len(self.table)

    @property
    def n_pairs(self) -> int:
        k = len(self.methods)
        return k * (k - 1) // 2

    def significant(self, a: str, b: str) -> bool:
        return bool(self.holm_p.loc[a, b] <= self.alpha)

    def mean(self, method: str) -> float:
        return float(self.table[method].mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "methods": self.methods,
            "classes": [
                int(c) if isinstance(c, (int, np.integer)) else c for c in self.table.index
            ],
            "alpha": self.alpha,
            "mean_auc": {m: self.mean(m) for m in self.methods},
            "average_ranks": {m: float(r) for m, r in self.average_ranks.items()},
            "friedman": {"statistic": self.friedman_statistic, "p": self.friedman_p},
            "wilcoxon_p": _matrix(self.wilcoxon_p),
            "holm_p": _matrix(self.holm_p),
            "nemenyi_critical_difference": self.critical_difference,
            "minimum_holm_p": minimum_holm_p(self.n_blocks, self.n_pairs),
        }


def _matrix(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {a: {b: float(frame.loc[a, b]) for b in frame.columns} for a in frame.index}


def compare(table: pd.DataFrame, name: str = "", alpha: float = ALPHA) -> Comparison:
    """Average ranks, Friedman, pairwise Wilcoxon + Holm and the Nemenyi CD of ``table``
    (rows = classes, columns = methods, higher = better)."""
    ranks = average_ranks(table)
    statistic, p = friedman(table)
    raw, adjusted = pairwise_wilcoxon_holm(table)
    cd = nemenyi_critical_difference(table.shape[1], table.shape[0], alpha)
    return Comparison(name, table, ranks, statistic, p, raw, adjusted, cd, alpha)


# --------------------------------------------------------------------------------------------
# claims


def best_average_claim(
    comparison: Comparison,
    method: str,
    published: float | None,
    labels: Mapping[str, str] | None = None,
    dataset_label: str = "",
    scale: float = 100.0,
    value_label: str = "ours",
) -> dict[str, Any]:
    """The paper's claim "``method`` has the best average AUC on ``dataset_label``" checked on
    ``comparison``: our average (x ``scale``), rank, the pairwise Wilcoxon-Holm decisions and a
    verdict: supported (best average, significantly better than every other method), partly
    supported (best average, not significantly better than some), not supported (another method
    has a higher average)."""
    labels = dict(labels or {})
    label = labels.get(method, method)
    others = [m for m in comparison.methods if m != method]
    ours = comparison.mean(method) * scale
    ranks = comparison.average_ranks.sort_values()
    position = int(list(ranks.index).index(method)) + 1
    better, worse, undecided = [], [], []
    for other in others:
        difference = comparison.mean(method) - comparison.mean(other)
        if comparison.significant(method, other):
            (better if difference > 0 else worse).append(other)
        else:
            undecided.append(other)
    best = all(comparison.mean(method) > comparison.mean(other) for other in others)
    if best and not undecided and not worse:
        verdict = "supported"
    elif best:
        verdict = "partly supported"
    else:
        verdict = "not supported"

    def names(items: Iterable[str]) -> str:
        return ", ".join(labels.get(m, m) for m in items) or "none"

    published_text = f"published {published:.2f}" if published is not None else "not published"
    sentence = (
        f"{label} has the best average AUC on {dataset_label}: {published_text}, "
        f"{value_label} {ours:.2f} (average rank {comparison.average_ranks[method]:.2f}, "
        f"{position} of {len(comparison.methods)}); significantly better than: "
        f"{names(better)}; not significantly different from: {names(undecided)}; "
        f"significantly worse than: {names(worse)} (two-sided Wilcoxon signed-rank over "
        f"{comparison.n_blocks} classes, Holm-corrected over {comparison.n_pairs} pairs, "
        f"alpha = {comparison.alpha:g}). Verdict: {verdict}."
    )
    return {
        "claim": f"{label} has the best average AUC on {dataset_label}",
        "method": method,
        "dataset": comparison.name,
        "published": published,
        "ours": ours,
        "average_rank": float(comparison.average_ranks[method]),
        "rank_position": position,
        "best_average": best,
        "significantly_better_than": better,
        "not_significant": undecided,
        "significantly_worse_than": worse,
        "verdict": verdict,
        "sentence": sentence,
    }


def published_table(dataset: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 as printed (percent): rows = classes, columns = the paper's columns."""
    from grad2vae import published as pub

    columns = list(columns or pub.published_columns())
    data = {c: [pub.published_auc(dataset, c, k) for k in range(10)] for c in columns}
    return pd.DataFrame(data, index=pd.Index(range(10), name="normal_class")).dropna(
        axis=1, how="any"
    )


def analyse(
    runs: pd.DataFrame,
    methods: Sequence[str] | None = None,
    claim_method: str = "grad2vae",
    labels: Mapping[str, str] | None = None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Everything of the report's statistics section, JSON-able.

    ``runs``: one row per finished run with ``dataset, model, normal_class, seed, auc`` (0-1; no
    bound's rows: ``bounds.real_runs``). Per dataset: our comparison (AUC x 100, mean over seeds
    first, complete classes only), the same analysis of the paper's printed Table 1 and the claim
    "<claim_method> has the best average AUC" checked on both. ``grad2vae figures`` draws the
    critical-difference diagram of ours from this (stats.json).
    """
    from grad2vae import published as pub

    labels = dict(labels or {})
    out: dict[str, Any] = {"alpha": alpha, "datasets": {}}
    for dataset in sorted(runs["dataset"].unique()):
        present = runs[runs["dataset"] == dataset]
        names = [
            m for m in (methods or sorted(present["model"].unique())) if m in set(present["model"])
        ]
        section: dict[str, Any] = {"label": pub.dataset_label(dataset)}
        table = class_means(present, names) * 100.0
        if table.shape[1] >= 2 and len(table) >= 2:
            ours = compare(table, name=pub.dataset_label(dataset), alpha=alpha)
            section["ours"] = ours.to_dict()
            if claim_method in ours.methods:
                published_average = pub.published_average(
                    dataset, pub.column_for_model(claim_method) or claim_method
                )
                section["claim_ours"] = best_average_claim(
                    ours,
                    claim_method,
                    published_average,
                    labels,
                    pub.dataset_label(dataset),
                    scale=1.0,
                )
        paper = published_table(dataset)
        if paper.shape[1] >= 2:
            printed = compare(
                paper, name=f"{pub.dataset_label(dataset)} (paper's Table 1)", alpha=alpha
            )
            section["published"] = printed.to_dict()
            column = pub.column_for_model(claim_method) or claim_method
            if column in printed.methods:
                paper_labels = {c: info["label"] for c, info in pub.published_columns().items()}
                section["claim_published"] = best_average_claim(
                    printed, column, pub.published_average(dataset, column), paper_labels,
                    pub.dataset_label(dataset) + " (tested on the paper's own Table 1 numbers)",
                    scale=1.0,
                    value_label="mean of its printed classes",
                )  # fmt: skip
        out["datasets"][dataset] = section
    return out
