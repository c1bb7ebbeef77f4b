"""grad2vae.analysis.stats against known small examples: a hand-computed Friedman statistic, SciPy's
documented Wilcoxon example, Holm on the textbook example, Demšar's Nemenyi table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from grad2vae.analysis import stats

# 4 classes x 3 methods; ranks per row (1 = best): [1,2,3], [1,3,2], [1,2,3], [2,1,3]
TABLE = pd.DataFrame(
    {"a": [0.9, 0.9, 0.9, 0.8], "b": [0.8, 0.7, 0.8, 0.9], "c": [0.7, 0.8, 0.7, 0.7]},
    index=pd.Index([0, 1, 2, 3], name="normal_class"),
)


def test_average_ranks_by_hand():
    ranks = stats.average_ranks(TABLE)
    assert ranks.to_dict() == {"a": 1.25, "b": 2.0, "c": 2.75}
    tied = pd.DataFrame({"x": [0.5, 0.9], "y": [0.5, 0.1]})
    assert stats.average_ranks(tied).to_dict() == {"x": 1.25, "y": 1.75}  # ties share 1.5


def test_friedman_statistic_by_hand():
    # rank sums R = 5, 8, 11 with N = 4, k = 3:
    # chi2 = 12 / (N k (k + 1)) * sum R^2 - 3 N (k + 1) = 12/48 * 210 - 48 = 4.5
    # with k - 1 = 2 degrees of freedom the chi-square tail is exp(-x / 2)
    statistic, p = stats.friedman(TABLE)
    assert statistic == pytest.approx(4.5)
    assert p == pytest.approx(math.exp(-2.25))
    assert all(math.isnan(v) for v in stats.friedman(TABLE[["a", "b"]]))


def test_wilcoxon_p_value_of_scipys_example():
    # SciPy's documented example (Darwin's plant heights, differences): statistic 24, exact p
    d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    assert stats.wilcoxon_p(d, [0] * len(d)) == pytest.approx(0.041259765625)
    # ten classes, one method better on all: the exact two-sided minimum 2 / 2^10
    x = np.linspace(0.9, 0.99, 10)
    assert stats.wilcoxon_p(x + np.linspace(0.001, 0.01, 10), x) == pytest.approx(2 / 1024)
    assert stats.wilcoxon_p(x, x) == 1.0


def test_holm_on_the_textbook_example():
    # four hypotheses, alpha 0.05 (the Holm-Bonferroni example on Wikipedia): sorted p
    # 0.005, 0.01, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2: reject the first two, stop at 0.03
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert list(adjusted <= 0.05) == [True, False, False, True]
    np.testing.assert_allclose(stats.holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    assert stats.holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # capped at 1


def test_holm_agrees_with_statsmodels():
    # statsmodels comes with scikit-posthocs (pinned): no skip that could hide a difference
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).uniform(0, 0.1, size=12)
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1])


def test_pairwise_matrix_and_nemenyi_cd():
    raw, adjusted = stats.pairwise_wilcoxon_holm(TABLE)
    assert (raw.to_numpy() == raw.to_numpy().T).all() and (np.diag(adjusted) == 1).all()
    assert raw.loc["a", "c"] == pytest.approx(stats.wilcoxon_p(TABLE["a"], TABLE["c"]))
    assert adjusted.loc["a", "c"] >= raw.loc["a", "c"]
    # Demšar (2006) Table 5(a): q_0.05 for k = 2..10
    q = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q_alpha in zip(range(2, 11), q):
        cd = stats.nemenyi_critical_difference(k, 6)
        assert cd == pytest.approx(q_alpha * math.sqrt(k * (k + 1) / 36), abs=2e-3)
    assert stats.minimum_holm_p(10, 21) == pytest.approx(21 * 2 / 1024)


def runs_frame() -> pd.DataFrame:
    """3 methods x 10 classes x 2 seeds; 'good' beats the rest on every class."""
    rows = []
    rng = np.random.default_rng(1)
    for normal_class in range(10):
        base = 0.8 + 0.01 * normal_class
        for seed in range(2):
            rows.append(
                dict(
                    model="good",
                    normal_class=normal_class,
                    seed=seed,
                    auc=base + 0.1 + 0.001 * seed,
                )
            )
            rows.append(
                dict(
                    model="mid",
                    normal_class=normal_class,
                    seed=seed,
                    auc=base + rng.uniform(-0.02, 0.02),
                )
            )
            rows.append(
                dict(
                    model="low",
                    normal_class=normal_class,
                    seed=seed,
                    auc=base + rng.uniform(-0.02, 0.02),
                )
            )
    return pd.DataFrame(rows)


def test_class_means_average_seeds_first_and_keep_complete_classes():
    runs = runs_frame()
    runs = runs[~((runs.model == "low") & (runs.normal_class == 9))]  # class 9 incomplete
    table = stats.class_means(runs, ["good", "mid", "low"])
    assert list(table.columns) == ["good", "mid", "low"] and list(table.index) == list(range(9))
    assert table.loc[0, "good"] == pytest.approx(0.9005)


def test_compare_and_claim_sentence():
    comparison = stats.compare(
        stats.class_means(runs_frame(), ["good", "mid", "low"]), name="mnist"
    )
    assert comparison.average_ranks["good"] == 1.0
    assert comparison.friedman_p < 0.05
    claim = stats.best_average_claim(
        comparison, "good", published=98.23, labels={"good": "Good"}, dataset_label="MNIST"
    )
    # good wins on all 10 classes: raw p = 2/1024, Holm over 3 pairs: 3 * 2/1024 < 0.05
    assert claim["significantly_better_than"] == ["mid", "low"] and claim["verdict"] == "supported"
    assert claim["sentence"].startswith(
        "Good has the best average AUC on MNIST: published 98.23, ours 94."
    )
    assert "rank 1.00, 1 of 3" in claim["sentence"] and "alpha = 0.05" in claim["sentence"]
    lost = stats.best_average_claim(comparison, "mid", published=None, dataset_label="MNIST")
    assert lost["verdict"] == "not supported" and lost["significantly_worse_than"] == ["good"]
    payload = comparison.to_dict()
    assert payload["holm_p"]["good"]["mid"] == pytest.approx(3 * 2 / 1024)


def test_critical_difference_diagram_is_drawn_from_the_stats_json_payload(tmp_path):
    """grad2vae figures draws the diagram from what stats.json holds (a JSON round trip), not by
    running the analysis again."""
    pytest.importorskip("scikit_posthocs")
    import json

    from grad2vae.figures.results import critical_difference

    runs = runs_frame()
    runs["dataset"] = "mnist"
    payload = json.loads(json.dumps(stats.analyse(runs, methods=["good", "mid", "low"])))
    payload["labels"] = {"good": "Good"}
    grid = {"datasets": ["mnist", "fashion_mnist"]}
    entries = critical_difference(payload, grid, tmp_path, dpi=50)
    assert [entry["dataset"] for entry in entries] == ["mnist", "fashion_mnist"]
    for dataset in grid["datasets"]:
        assert (tmp_path / f"cd_{dataset}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert entries[0]["details"].startswith("Normal classes with a run of every method: 10")
    assert entries[1]["details"].startswith("Not drawn: no comparison")  # no runs there


def test_analyse_runs_and_the_papers_table(tmp_path):
    runs = runs_frame().replace({"model": {"good": "grad2vae", "mid": "vae", "low": "cae"}})
    runs["dataset"] = "mnist"
    result = stats.analyse(runs, labels={"grad2vae": "Grad2VAE"})
    mnist = result["datasets"]["mnist"]
    assert set(mnist["ours"]["methods"]) == {"cae", "grad2vae", "vae"}
    assert (
        mnist["claim_ours"]["verdict"] == "supported"
        and "published 98.23" in mnist["claim_ours"]["sentence"]
    )
    # the paper's own Table 1: Grad2VAE ranks first on MNIST but is not significantly better
    # than Deep SVDD or Inception-CAENN over 10 classes after Holm
    paper = mnist["claim_published"]
    assert paper["rank_position"] == 1 and paper["verdict"] == "partly supported"
    assert set(paper["not_significant"]) == {"deep_svdd", "inception_caenn"}
