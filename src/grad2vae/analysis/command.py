"""Collect finished runs into one tidy table, per-class statistics, mstd and the paper's Table 1.

Reads RESULTS/runs/{dataset}/{model}/class{c}/seed{s}/ (metrics.json, history.tsv) and the runs'
Snakemake logs RESULTS/logs/train/{dataset}/{model}/class{c}/seed{s}.log (RESULTS: --results-dir,
default ``results``). Writes atomically into OUT (default RESULTS/aggregate): runs.csv,
history.csv.gz, status.csv, summary.csv, averages.csv, table1.csv, table1_pixel.csv (Table 1
under the pixel-level AUC), compute.csv, parameters.csv,
aggregate.json, claims.json, scores.csv, the entropy-only table of --entropy-table
(`grad2vae entropy`) read into scores.csv and the claims,
score_findings.json and stats.json. The expected grid comes from --workflow-config, from
--datasets/--models/--normal-classes/--seeds (which override it), or else from the run
directories present; status.csv marks each expected run complete, failed or missing.
docs/design-notes.md describes every file, the CAE + OC-SVM oracle rows and the statistics.

Example: grad2vae aggregate --results-dir results \\
             --workflow-config results/aggregate/workflow_config.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grad2vae import __version__
from grad2vae import published as pub
from grad2vae.analysis import ablations as ablation_study
from grad2vae.analysis import claims as paper_claims
from grad2vae.analysis import entropy_only, stats
from grad2vae.analysis.bounds import bounds_of, real_runs
from grad2vae.analysis.collect import (
    GRID_KEYS,
    collect,
    expected_grid,
    extra_runs,
    read_workflow_config,
    release_final_checkpoint,
    table_grid,
)
from grad2vae.analysis.labels import model_label, model_order
from grad2vae.analysis.score_findings import score_findings
from grad2vae.analysis.table1_metric import pixel_table1, table1_metric
from grad2vae.analysis.tables import (
    averages,
    compute_table,
    json_scalar,
    mstd_table,
    parameters_table,
    scores_table,
    summarise,
    table1,
    table1_layout,
)
from grad2vae.analysis.verdicts import verdict_counts
from grad2vae.atomic import atomic_open, write_json
from grad2vae.errors import UserError
from grad2vae.gitstate import git_commit_label

log = logging.getLogger(__name__)


def statistics_payload(runs: pd.DataFrame, grid: dict[str, list]) -> dict[str, Any]:
    """``grad2vae.analysis.stats.analyse`` over the run grid's models (bounds left out), with, per
    dataset, ``skipped``: why a test was not run (too few methods or classes, a partial grid) and
    ``notes``: what limits the tests that did run; ``bounds_note`` says which bounds were left
    out. Never raises for a small or partial grid."""
    methods = model_order(grid["models"])
    labels = {m: model_label(m) for m in methods}
    usable = real_runs(runs)
    if not usable.empty and "auc" in usable:
        usable = usable[pd.to_numeric(usable["auc"], errors="coerce").notna()]
    if usable.empty or "model" not in usable:
        result: dict[str, Any] = {"alpha": stats.ALPHA, "datasets": {}}
    else:
        result = stats.analyse(usable, methods=methods, labels=labels)
    bounds = bounds_of(runs)
    result["bounds_note"] = " ".join(
        f"{model_label(name, bounds)}: {bound['note']}" for name, bound in bounds.items()
    )
    result["methods"] = methods
    result["labels"] = labels
    result["method"] = (
        "Per dataset: one value per normal class and method, the AUC (percent) averaged over seeds "
        "first; only classes where every method has a run. Average rank over the classes (1 = best "
        "AUC, ties share the mean rank); Friedman test (scipy.stats.friedmanchisquare); every pair "
        "of methods by the two-sided Wilcoxon signed-rank test on the paired class values "
        "(scipy.stats.wilcoxon), p-values corrected by Holm's step-down method over the pairs, "
        f"significant at alpha = {stats.ALPHA:g}. Critical-difference diagram drawn by "
        "scikit-posthocs from these ranks and Holm-corrected p-values."
    )
    for dataset in grid["datasets"]:
        section = result["datasets"].setdefault(dataset, {"label": pub.dataset_label(dataset)})
        skipped, notes = [], []
        part = (
            usable[usable["dataset"] == dataset]
            if not usable.empty and "dataset" in usable
            else usable
        )
        present = [m for m in methods if not part.empty and m in set(part["model"])]
        absent = [labels[m] for m in methods if m not in present]
        table = stats.class_means(part, present) if present else pd.DataFrame()
        left_out = sorted(set(grid["normal_classes"]) - {int(c) for c in table.index})
        ours = section.get("ours")
        if ours is None:
            skipped.append(
                "Ranks, Friedman and Wilcoxon tests not computed: they need at least 2 methods and "
                f"2 normal classes on which every method has a run; this grid has {len(present)} "
                f"method(s) with runs and {len(table)} such class(es)."
            )
        else:
            n, k = len(ours["classes"]), len(ours["methods"])
            if not math.isfinite(ours["friedman"]["statistic"]):
                skipped.append(
                    f"Friedman test not run: it needs at least 3 methods (this comparison has {k})."
                )
            smallest = stats.minimum_holm_p(n, 1)  # one pair: the smallest Wilcoxon p
            if smallest > stats.ALPHA:
                notes.append(
                    f"With {n} normal classes the smallest possible two-sided Wilcoxon p-value is "
                    f"2/2^{n} = {smallest:.3g} > alpha = {stats.ALPHA:g}: no pairwise difference "
                    "can be significant, whatever the AUCs (the paper's protocol has 10 classes)."
                )
        if ours is not None and len(grid["normal_classes"]) < pub.N_CLASSES:
            notes.append(
                f"This grid has {len(grid['normal_classes'])} of the 10 "
                "normal classes: the published averages quoted in the claims "
                "are the paper's over all 10, ours over the classes here."
            )
        if absent:
            notes.append(
                "Methods of the grid without any complete run here (left out): "
                + ", ".join(absent)
                + "."
            )
        if present and left_out:
            notes.append(
                "Normal classes left out because some method has no run for them: "
                + ", ".join(pub.class_label(dataset, c) for c in left_out)
                + "."
            )
        if "published" not in section:  # no runs of this dataset: the paper's numbers still are
            paper = stats.published_table(dataset)
            if paper.shape[1] >= 2:
                section["published"] = stats.compare(
                    paper, name=f"{pub.dataset_label(dataset)} (paper's Table 1)"
                ).to_dict()
            else:
                skipped.append(
                    "The paper's Table 1 was not analysed (fewer than 2 complete columns)."
                )
        section["skipped"] = skipped
        section["notes"] = notes
    # the grid's order of datasets (the report's order), then any others
    order = list(grid["datasets"]) + sorted(set(result["datasets"]) - set(grid["datasets"]))
    result["datasets"] = {dataset: result["datasets"][dataset] for dataset in order}
    return result


def provenance(runs: pd.DataFrame) -> dict[str, Any]:
    def counts(column: str) -> dict[str, int]:
        if runs.empty or column not in runs:
            return {}
        return {
            str(k): int(v) for k, v in Counter(runs[column].fillna("").astype(str)).most_common()
        }

    versions = [
        {"versions": json.loads(text), "runs": n} for text, n in counts("versions").items() if text
    ]
    return {
        "devices": counts("device"),
        "device_types": counts("device_type"),
        "git_commits": counts("git_commit"),
        "config_hashes": counts("config_hash"),
        "run_versions": versions,
        "aggregate_environment": {
            "grad2vae": __version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "git_commit": git_commit_label(Path.cwd()),
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir", default="results", help="folder holding runs/ and logs/ (default: results)"
    )
    parser.add_argument("--out-dir", help="where to write the tables (default: RESULTS/aggregate)")
    parser.add_argument(
        "--workflow-config", help="JSON or YAML with the expected grid (the Snakefile writes one)"
    )
    parser.add_argument(
        "--datasets", nargs="+", help="expected datasets (overrides the workflow config)"
    )
    parser.add_argument("--models", nargs="+", help="expected models")
    parser.add_argument("--normal-classes", nargs="+", type=int, help="expected normal classes")
    parser.add_argument("--seeds", nargs="+", type=int, help="expected seeds")
    parser.add_argument(
        "--entropy-table",
        help="the model-free entropy-only AUC per class (`grad2vae entropy` writes it, as "
        "entropy_only.csv beside the tables); without it the report says it was not computed",
    )
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--release-checkpoints",
        action="store_true",
        help="then delete the final checkpoint.pt of every complete run (kept by `grad2vae "
        "train` so that a run whose outputs an interrupted Snakemake deleted is only evaluated "
        "again; the workflow passes this once the runs are read)",
    )


def aggregate(
    results_dir: Path,
    out_dir: Path,
    workflow_config: dict[str, Any],
    overrides: dict[str, list | None] | None = None,
    entropy_table: Path | None = None,
) -> dict[str, Any]:
    """Do everything ``run`` does; return the aggregate.json payload."""
    grid = expected_grid(results_dir, workflow_config, overrides or {})
    if not all(grid[key] for key in GRID_KEYS):
        raise UserError(
            f"no runs under {results_dir / 'runs'} and no grid given; pass --workflow-config or "
            "--datasets/--models/--normal-classes/--seeds"
        )
    runs, status, history = collect(results_dir, grid)
    grid["variants"] = ablation_study.variant_bases(workflow_config, runs)
    tables = table_grid(grid, runs)
    summary = summarise(runs, tables)
    avgs = averages(summary, tables)
    table = table1(summary, avgs, tables)
    statistics = statistics_payload(runs, grid)
    compute = compute_table(runs, grid)
    params = parameters_table(runs, grid)
    entropy, entropy_note = entropy_only.read_entropy_table(entropy_table, real_runs(runs))
    per_score = scores_table(summary, tables, entropy)
    # The paper's claims concern its models: variants (ablations, other protocols) are left out.
    paper_models = [m for m in grid["models"] if m not in grid["variants"]]
    claims = paper_claims.all_claims(
        _only(real_runs(runs), paper_models),
        _only(history, paper_models),
        _only(avgs, paper_models),
        _only(params, paper_models),
        dict(grid, models=paper_models),
    )
    # not one of the paper's claims but a question about its Table 1, judged beside them
    claims.append(table1_metric(_only(real_runs(runs), paper_models), entropy, grid["datasets"]))
    ablation = ablation_study.ablations(
        real_runs(runs), avgs, grid, grid["variants"], workflow_config
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(runs, out_dir / "runs.csv")
    _write_csv(status, out_dir / "status.csv")
    _write_csv(summary, out_dir / "summary.csv")
    _write_csv(avgs, out_dir / "averages.csv")
    _write_csv(table, out_dir / "table1.csv")
    _write_csv(pixel_table1(summary, tables), out_dir / "table1_pixel.csv")
    _write_csv(compute, out_dir / "compute.csv")
    _write_csv(params, out_dir / "parameters.csv")
    _write_csv(per_score, out_dir / "scores.csv")
    write_json(out_dir / "claims.json", _jsonable(claims))
    write_json(out_dir / "ablations.json", _jsonable(ablation))
    write_json(
        out_dir / "score_findings.json",
        _jsonable(score_findings(per_score, real_runs(runs), grid["datasets"])),
    )
    with (
        atomic_open(out_dir / "history.csv.gz", "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle,
    ):
        handle.write(history.to_csv(index=False).encode("utf-8"))
    write_json(out_dir / "stats.json", _jsonable(statistics))

    counts = status["status"].value_counts().to_dict()
    payload = {
        "results_dir": str(results_dir),
        "grid": grid,
        "counts": {k: int(counts.get(k, 0)) for k in ("complete", "failed", "missing")},
        "expected_runs": int(len(status)),
        "extra_runs_ignored": extra_runs(results_dir, grid),
        "table1_layout": table1_layout(tables["models"], grid["variants"], tables["bounds"]),
        # each bound's pseudo-model -> the model it bounds, how it selects, its note
        "bounds": tables["bounds"],
        "mstd_claims": mstd_table(avgs),
        "claim_verdicts": verdict_counts(claims),
        "entropy_only": entropy_note,
        "definitions": {
            "auc_pct": "100 x AUC-ROC of the model's main "
            "score, label 1 = anomaly (Table 1's units)",
            "std": "sample standard deviation over seeds (ddof=1), percentage points",
            "average": "mean over normal classes of the per-class means (Table 1's Average row)",
            "mstd": "mean over normal classes of the per-class "
            "std over seeds (our reading of the paper's 'mstd')",
            "max_class_std": "largest per-class std over "
            "seeds (the other reading of 'maximum mstd')",
            "difference": "ours minus published, percentage points",
        },
        "citation": pub.citation(),
        "workflow_config": workflow_config,
        "provenance": provenance(real_runs(runs)),
    }
    write_json(out_dir / "aggregate.json", _jsonable(payload))
    return payload


def _only(frame: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """The rows of ``frame`` whose model is one of ``models`` (all rows without a model column)."""
    if frame.empty or "model" not in frame:
        return frame
    return frame[frame["model"].isin(models)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return json_scalar(value)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)


def run(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    out_dir = Path(args.out_dir) if args.out_dir else results_dir / "aggregate"
    overrides = {
        "datasets": args.datasets,
        "models": args.models,
        "normal_classes": args.normal_classes,
        "seeds": args.seeds,
    }
    if args.data_dir:
        raise UserError(
            "--data-dir is gone: the entropy-only AUC needs torch and the data, so `grad2vae "
            "entropy --data-dir DIR ... --out FILE` computes it; pass FILE as --entropy-table"
        )
    entropy_table = Path(args.entropy_table) if args.entropy_table else None
    payload = aggregate(
        results_dir, out_dir, read_workflow_config(args.workflow_config), overrides, entropy_table
    )
    if args.release_checkpoints:
        status = pd.read_csv(out_dir / "status.csv", keep_default_na=False)
        complete = status[status["status"] == "complete"]["run_dir"]
        released = sum(release_final_checkpoint(run_dir) for run_dir in complete)
        log.info("deleted the final checkpoint of %d complete runs", released)
    counts = payload["counts"]
    log.info(
        "%d expected runs: %d complete, %d failed, %d missing -> %s",
        payload["expected_runs"],
        counts["complete"],
        counts["failed"],
        counts["missing"],
        out_dir,
    )
    if counts["failed"] or counts["missing"]:
        log.warning(
            "partial grid: the tables cover the %d complete runs; see %s",
            counts["complete"],
            out_dir / "status.csv",
        )
    return 0
