"""Collect finished runs into one tidy table, per-class statistics, mstd and the paper's Table 1.

Reads the run directories of CONTRIBUTING.md under RESULTS (default ``results``):
  RESULTS/runs/{dataset}/{model}/class{c}/seed{s}/metrics.json, history.tsv
  RESULTS/logs/train/{dataset}/{model}/class{c}/seed{s}.log   (the Snakemake log of the run)
and writes, into OUT (default RESULTS/aggregate), atomically:
  runs.csv        one row per finished run of the expected grid: dataset, normal_class, model,
                  seed, main_score, auc, auc_reconstruction (both 0-1), epochs, wall_seconds,
                  seconds_per_epoch, device, device_type, parameters, ...
  history.csv.gz  the per-epoch history of every finished run (long format, for Fig. 6)
  status.csv      every expected run: complete | failed | missing, with the reason
  summary.csv     per (dataset, normal class, model): seeds found, mean and std of the AUC of
                  each score over seeds, in percent (Table 1's units)
  averages.csv    per (dataset, model): mean over classes, mstd, largest per-class std, the
                  published average and the difference
  table1.csv      Table 1 laid out like the paper: one row per dataset and normal class plus an
                  Average row; ours (mean, std) beside the published column, and the difference
  compute.csv     wall time and device-hours (GPU-hours for CUDA runs) per model and dataset
  parameters.csv  our parameter counts beside the paper's
  aggregate.json  grid, counts, mstd claims, provenance (versions, commits, devices)
  claims.json     every claim of the paper with our definition, evidence and verdict, under
                  the main and every other score (grad2vae.claims)
  scores.csv      per (dataset, model, score): the average AUC under every score a model reports
                  (main, mse, bce_excess, *_zero_noise), and the model-free entropy-only AUC
  entropy_only.csv  AUC of H(x), the test image's binary entropy, per (dataset, normal class)
                  (needs --data-dir; empty without)
  score_findings.json  the sentences of the report's section "Which score, and what the
                  attention path does" (grad2vae.claims.score_findings)
  stats.json      the statistics section (grad2vae.stats.analyse): per dataset, average ranks over
                  the normal classes (mean over seeds first), Friedman, pairwise Wilcoxon signed-rank
                  p-values with Holm's correction, the paper's "best average AUC" claim checked on
                  ours and on its printed Table 1; ``skipped`` says why a test could not run

CAE + OC-SVM's oracle protocol (the best TEST AUC over its nu x gamma grid, Golan & El-Yaniv;
``grad2vae.stats.oracle_run``) becomes the pseudo-model ``cae_ocsvm_oracle``: extra rows of
runs.csv (``protocol`` = oracle), of summary/averages and its own Table 1 column, labelled as
selecting hyperparameters on the test labels. It is not a run (no status row) and is left out of
the ranks and tests.

The expected grid comes from --workflow-config (the JSON that the Snakefile writes, or any YAML
or JSON with datasets / normal_classes / models / seeds), from --datasets/--models/
--normal-classes/--seeds (which override it), or else from the run directories present. A run is
complete when its metrics.json exists (train writes it last); failed when it has a train log or a
non-empty run directory but no metrics.json (the last error line of the log is the reason);
missing otherwise. A partial grid aggregates whatever is complete and lists the rest.

Statistics: std is the sample standard deviation over seeds (ddof=1; empty with one seed). A
dataset average is the mean over normal classes of the per-class means (the paper's Average row).
"mstd" is not defined in the paper; we read it as the mean over the normal classes of the
per-class std over seeds (percentage points), and also report the largest per-class std, since
"maximum mstd ... did not exceed 0.117" may mean either.

Example: grad2vae aggregate --results-dir results --workflow-config results/aggregate/workflow_config.json
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
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

from grad2vae import __version__, entropy_only
from grad2vae import ablations as ablation_study
from grad2vae import claims as paper_claims
from grad2vae import published as pub
from grad2vae import stats
from grad2vae.atomic import atomic_open, write_json
from grad2vae.errors import UserError
from grad2vae.gitstate import git_commit_label
from grad2vae.layout import METRICS, RUN_DIR, TRAIN_BENCHMARK, TRAIN_LOG

log = logging.getLogger(__name__)

GRID_KEYS = ("datasets", "normal_classes", "models", "seeds")
KEY_COLUMNS = ["dataset", "normal_class", "model", "seed"]
PRINTED_AVERAGE = "the paper's printed Average row"
SCORES = ("auc", "auc_reconstruction")


# --------------------------------------------------------------------------------------------
# labels


ORACLE_MODEL = stats.ORACLE_MODEL
ORACLE_LABEL = "CAE OCSVM oracle: selects hyperparameters on the test labels"
ORACLE_PROTOCOL = "oracle: selects hyperparameters on the test labels"


def model_label(model: str) -> str:
    """The paper's name for one of our models (Baseline CAE, vanilla VAE, ...), else the key."""
    if model == ORACLE_MODEL:
        return ORACLE_LABEL
    return str(pub.load_published().get("paper_model_labels", {}).get(model, model))


def with_oracle(models: Iterable[str]) -> list[str]:
    """``models`` with the CAE + OC-SVM oracle pseudo-model right after ``cae_ocsvm`` (if there)."""
    out = []
    for model in models:
        if model != ORACLE_MODEL:
            out.append(model)
        if model == "cae_ocsvm":
            out.append(ORACLE_MODEL)
    return out


def model_order(models: Iterable[str]) -> list[str]:
    """Our models in the paper's order (Fig. 6: Baseline CAE, vanilla VAE, Inception CAENN,
    Grad2VAE; Table 1's other baselines after the CAE), then any others alphabetically."""
    models = list(dict.fromkeys(models))
    paper = [m for m in pub.load_published().get("paper_model_labels", {}) if m in models]
    return paper + sorted(m for m in models if m not in paper)


# --------------------------------------------------------------------------------------------
# the expected grid


def read_workflow_config(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"workflow config {path} not found; run the Snakefile's workflow_config rule or omit it")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping (datasets, normal_classes, models, seeds)")
    return data


def discover_grid(results_dir: Path) -> dict[str, list]:
    """The grid spanned by the run directories present (used when no grid is given)."""
    found: dict[str, set] = {key: set() for key in GRID_KEYS}
    for seed_dir in (results_dir / "runs").glob("*/*/class*/seed*"):
        dataset, model, class_part = seed_dir.parts[-4], seed_dir.parts[-3], seed_dir.parts[-2]
        try:
            normal_class = int(class_part.removeprefix("class"))
            seed = int(seed_dir.name.removeprefix("seed"))
        except ValueError:
            continue
        found["datasets"].add(dataset)
        found["models"].add(model)
        found["normal_classes"].add(normal_class)
        found["seeds"].add(seed)
    return {key: sorted(values) for key, values in found.items()}


def expected_grid(
    results_dir: Path, workflow_config: dict[str, Any], overrides: dict[str, list | None]
) -> dict[str, list]:
    grid = {key: workflow_config.get(key) for key in GRID_KEYS}
    if grid["models"]:
        # the workflow's `extra_models` (presets/table1-complete.yaml) and `variants`
        # (presets/ablation.yaml, presets/table1-own-protocols.yaml) train beside `models`
        more = list(workflow_config.get("extra_models") or []) + list(workflow_config.get("variants") or {})
        grid["models"] = list(dict.fromkeys(list(grid["models"]) + more))
    for key, value in overrides.items():
        if value:
            grid[key] = value
    if any(not grid[key] for key in GRID_KEYS):
        discovered = discover_grid(results_dir)
        for key in GRID_KEYS:
            grid[key] = grid[key] or discovered[key]
    grid["normal_classes"] = [int(c) for c in grid["normal_classes"]]
    grid["seeds"] = [int(s) for s in grid["seeds"]]
    grid["models"] = model_order(grid["models"])
    return grid


def grid_keys(grid: dict[str, list]) -> list[dict[str, Any]]:
    return [
        {"dataset": d, "normal_class": c, "model": m, "seed": s}
        for d in grid["datasets"]
        for c in grid["normal_classes"]
        for m in grid["models"]
        for s in grid["seeds"]
    ]


# --------------------------------------------------------------------------------------------
# reading runs


def _last_error_line(log_path: Path, limit: int = 300) -> str:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "error" in line.lower() or "killed" in line.lower() or "exception" in line.lower():
            return line[:limit]
    return lines[-1][:limit] if lines else "empty log"


def _device_text(device: Any) -> str:
    if isinstance(device, dict):
        parts = [str(device.get(k)) for k in ("type", "name") if device.get(k)]
        return " ".join(parts) or json.dumps(device, sort_keys=True)
    return "" if device is None else str(device)


def device_type(device: Any) -> str:
    """``cuda`` or ``cpu`` (or ``mps``...), from whatever metrics.json records as the device."""
    if isinstance(device, dict) and device.get("type"):
        return str(device["type"])
    text = _device_text(device).lower()
    for kind in ("cuda", "mps", "xpu"):
        if kind in text:
            return kind
    return "cpu" if text else "unknown"


def _benchmark(path: Path) -> dict[str, float]:
    """Snakemake's benchmark TSV of the run, if any: wall seconds and peak RSS (MB)."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return {}
    if table.empty:
        return {}
    row = table.iloc[-1]
    out = {}
    if "s" in row:
        out["benchmark_seconds"] = float(row["s"])
    if "max_rss" in row and pd.notna(pd.to_numeric(row["max_rss"], errors="coerce")):
        out["max_rss_mb"] = float(row["max_rss"])
    return out


def read_run(results_dir: Path, key: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, pd.DataFrame | None]:
    """(status row, metrics row or None, history or None) of one expected run. The metrics row
    of a ``cae_ocsvm`` run with the oracle grid carries the oracle's pseudo-run row under
    ``"_oracle_run"`` (``grad2vae.stats.oracle_run``; ``collect`` moves it into its own row)."""
    run_dir = results_dir / RUN_DIR.format(**key)
    log_path = results_dir / TRAIN_LOG.format(**key)
    status = dict(key, status="missing", reason="", run_dir=str(run_dir), log=str(log_path) if log_path.exists() else "")
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            auc = float(metrics["auc"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            status.update(status="failed", reason=f"unreadable metrics.json: {error}")
            return status, None, None
        status["status"] = "complete"
        config = metrics.get("config") or {}
        row = dict(key)
        row.update(
            main_score=metrics.get("main_score", ""),
            auc=auc,
            auc_reconstruction=_float(metrics.get("auc_reconstruction")),
            epochs=metrics.get("epochs"),
            wall_seconds=_float(metrics.get("wall_seconds")),
            seconds_per_epoch=_float(metrics.get("seconds_per_epoch")),
            device=_device_text(metrics.get("device")),
            device_type=str(metrics.get("device_type") or device_type(metrics.get("device"))),
            parameters=metrics.get("parameters"),
            latent_dim=config.get("latent_dim") if isinstance(config, dict) else None,
            train_limit=config.get("train_limit") if isinstance(config, dict) else None,
            test_limit=config.get("test_limit") if isinstance(config, dict) else None,
            **(
                {"base_model": metrics["base_model"], "model_options": json.dumps(metrics.get("model_options") or {}, sort_keys=True)}
                if metrics.get("base_model") else {}
            ),
            git_commit=metrics.get("git_commit") or "",
            config_hash=metrics.get("config_hash") or "",
            versions=json.dumps(metrics.get("versions") or {}, sort_keys=True),
            run_dir=str(run_dir),
        )
        for score, value in (metrics.get("auc_scores") or {}).items():
            row[f"auc_{score}"] = _float(value)
        for name, value in (metrics.get("score_means") or {}).items():
            row[name] = _float(value)
        row.update(
            train_seconds=_float(metrics.get("train_seconds")),
            train_flops_per_step=_float(metrics.get("train_flops_per_step")),
            train_flops_per_epoch=_float(metrics.get("train_flops_per_epoch")),
        )
        row.update(_benchmark(results_dir / TRAIN_BENCHMARK.format(**key)))
        row.update(_oracle(metrics.get("auc_extra")))
        oracle = stats.oracle_run(metrics)
        if oracle is not None:
            row["_oracle_run"] = dict(
                oracle, main_score=stats.ORACLE_NOTE, protocol=ORACLE_PROTOCOL, epochs=metrics.get("epochs"),
                run_dir=str(run_dir),
            )
        history = None
        history_path = run_dir / "history.tsv"
        if history_path.is_file():
            try:
                history = pd.read_csv(history_path, sep="\t")
            except (ValueError, pd.errors.EmptyDataError) as error:
                log.warning("%s: unreadable history (%s)", history_path, error)
            else:
                history = history.drop(columns=[c for c in KEY_COLUMNS if c in history])
                for position, column in enumerate(KEY_COLUMNS):
                    history.insert(position, column, key[column])
        return status, row, history
    if log_path.exists():
        status.update(status="failed", reason=_last_error_line(log_path) or "train log without metrics.json")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        status.update(status="failed", reason="run directory without metrics.json (interrupted?)")
    return status, None, None


def _oracle(auc_extra: Any) -> dict[str, Any]:
    """CAE + OC-SVM's oracle (Golan & El-Yaniv: the best test AUC over the nu x gamma grid),
    when the run recorded the grid's AUCs (metrics.json auc_extra). It selects on the test
    labels: an optimistic bound, reported apart from the main AUC, never in Table 1."""
    if not isinstance(auc_extra, dict) or not any(str(k).startswith("ocsvm_nu") for k in auc_extra):
        return {}
    from grad2vae.models.cae_ocsvm import oracle_auc

    try:
        best, key = oracle_auc({k: v for k, v in auc_extra.items() if v is not None})
    except KeyError as error:
        log.warning("no oracle AUC: %s", error)
        return {}
    return {"auc_oracle": best, "oracle_setting": key}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect(results_dir: Path, grid: dict[str, list]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, status, history) over the expected grid; runs ends with the oracle pseudo-runs."""
    statuses, rows, histories, oracles = [], [], [], []
    for key in grid_keys(grid):
        status, row, history = read_run(results_dir, key)
        statuses.append(status)
        if row is not None:
            oracle = row.pop("_oracle_run", None)
            if oracle is not None:
                oracles.append(oracle)
            rows.append(row)
        if history is not None:
            histories.append(history)
    rows += oracles  # after the real runs, so that runs.csv reads them first
    runs = pd.DataFrame(rows, columns=None if rows else KEY_COLUMNS + ["auc", "auc_reconstruction"])
    if "protocol" in runs:
        runs["protocol"] = runs["protocol"].fillna("default")
    status = pd.DataFrame(statuses, columns=KEY_COLUMNS + ["status", "reason", "run_dir", "log"])
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=KEY_COLUMNS + ["epoch"])
    return runs, status, history


def real_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` without the oracle pseudo-runs (for compute, parameters, provenance)."""
    if runs.empty or "model" not in runs:
        return runs
    return runs[runs["model"] != ORACLE_MODEL]


def table_grid(grid: dict[str, list]) -> dict[str, list]:
    """The grid of the result tables: the run grid plus the oracle pseudo-model beside cae_ocsvm."""
    return dict(grid, models=with_oracle(grid["models"]))


def extra_runs(results_dir: Path, grid: dict[str, list]) -> list[str]:
    """Finished run directories under RESULTS/runs that are outside the expected grid."""
    expected = {str(results_dir / RUN_DIR.format(**key)) for key in grid_keys(grid)}
    return sorted(
        str(p.parent) for p in (results_dir / "runs").glob("*/*/class*/seed*/metrics.json") if str(p.parent) not in expected
    )


# --------------------------------------------------------------------------------------------
# statistics


def score_columns(runs: pd.DataFrame) -> list[str]:
    """``auc``, ``auc_reconstruction`` and the AUC column of every further score in ``runs``
    (``auc_mse``, ``auc_bce_excess``, ...; not the oracle's, which has its own column)."""
    extra = [c for c in runs.columns if c.startswith("auc_") and c not in SCORES and c != "auc_oracle"]
    return list(SCORES) + extra


def summarise(runs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Per (dataset, normal class, model): n seeds, mean and std (ddof=1) of each AUC, percent."""
    index = pd.MultiIndex.from_product(
        [grid["datasets"], grid["normal_classes"], grid["models"]], names=["dataset", "normal_class", "model"]
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
        if "auc_oracle" in runs:
            table["auc_oracle_pct_mean"] = (100.0 * runs["auc_oracle"]).groupby(
                [runs["dataset"], runs["normal_class"], runs["model"]]).mean()
        table = table.reindex(index)
        table["n_seeds"] = table["n_seeds"].fillna(0).astype(int)
        table = table.reset_index()
    table.insert(2, "class_label", [pub.class_label(d, c) for d, c in zip(table["dataset"], table["normal_class"])])
    table["n_seeds_expected"] = len(grid["seeds"])
    column = [pub.column_for_model(m) for m in table["model"]]
    table["published_column"] = [c or "" for c in column]
    table["published_auc_pct"] = [
        pub.published_auc(d, c, k) if c else None for d, c, k in zip(table["dataset"], column, table["normal_class"])
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
                published, basis = published_column_average(dataset, column, [int(c) for c in present["normal_class"]])
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
                    "auc_reconstruction_pct_mean": present["auc_reconstruction_pct_mean"].mean() if len(present) else math.nan,
                    "auc_oracle_pct_mean": (
                        present["auc_oracle_pct_mean"].mean() if "auc_oracle_pct_mean" in present and len(present) else math.nan
                    ),
                    "mstd": stds.mean() if len(stds) else math.nan,
                    "max_class_std": stds.max() if len(stds) else math.nan,
                    "published_column": column or "",
                    "published_average_pct": math.nan if published is None else published,
                    "published_average_basis": basis,
                    "difference_pct": mean - published if published is not None else math.nan,
                }
            )
    return pd.DataFrame(rows)


def scores_table(summary: pd.DataFrame, grid: dict[str, list], entropy: pd.DataFrame | None) -> pd.DataFrame:
    """Per (dataset, model, score): the average AUC (percent; mean over the normal classes of the
    per-class means over seeds) and the classes it covers; plus the model-free ``entropy_only``
    scorer (score ``entropy``) where its table is given. Scores a model does not report are
    left out."""
    rows = []
    scores = [c.removesuffix("_pct_mean") for c in summary.columns if c.startswith("auc") and c.endswith("_pct_mean")]
    scores = [s for s in scores if s != "auc_oracle"]
    for dataset in grid["datasets"]:
        for model in grid["models"]:
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
            for column in scores:
                values = part[f"{column}_pct_mean"].dropna() if len(part) else pd.Series(dtype=float)
                if values.empty:
                    continue
                score = "main" if column == "auc" else column.removeprefix("auc_")
                rows.append({"dataset": dataset, "model": model, "score": score, "n_classes": int(len(values)),
                             "auc_pct_mean": float(values.mean())})  # fmt: skip
        if entropy is not None and not entropy.empty:
            part = entropy[(entropy["dataset"] == dataset) & entropy["normal_class"].isin(grid["normal_classes"])]
            if len(part):
                rows.append({"dataset": dataset, "model": entropy_only.NAME, "score": "entropy",
                             "n_classes": int(len(part)), "auc_pct_mean": 100.0 * float(part["auc"].mean())})  # fmt: skip
    return pd.DataFrame(rows, columns=["dataset", "model", "score", "n_classes", "auc_pct_mean"])


def published_column_average(dataset: str, column: str, classes: list[int]) -> tuple[float | None, str]:
    """The paper's average of one column over ``classes``: its printed Average row when these are
    all ten classes, else the mean of its values for these classes (like with like)."""
    if sorted(classes) == list(range(pub.N_CLASSES)):
        return pub.published_average(dataset, column), PRINTED_AVERAGE
    values = [v for v in (pub.published_auc(dataset, column, c) for c in classes) if v is not None]
    if not values:
        return None, ""
    return float(np.mean(values)), f"mean of the paper's {len(values)} matching classes"


def table1_layout(models: list[str], bases: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Column groups of Table 1 in the paper's order: one per published column (with our model
    beside it when we have one, then each variant of that model: ``bases`` maps a variant to its
    registered model), then our models that the paper's Table 1 lacks."""
    bases = bases or {}
    groups = []
    placed: set[str] = set()
    for key, column in pub.published_columns().items():
        ours = column.get("ours")
        variants = [m for m in models if bases.get(m) == ours]
        if ours in models:
            groups.append(
                {"kind": "compared", "model": ours, "label": model_label(ours), "published_column": key,
                 "published_label": column["label"], "source": column.get("source", "")}
            )
            if ours == "cae_ocsvm" and ORACLE_MODEL in models:
                groups.append(
                    {"kind": "oracle", "model": ORACLE_MODEL, "label": ORACLE_LABEL, "published_column": None,
                     "published_label": None, "source": stats.ORACLE_NOTE}
                )
        else:
            groups.append(
                {"kind": "published_only", "model": None, "label": column["label"], "published_column": key,
                 "published_label": column["label"], "source": column.get("source", "")}
            )
        for variant in variants:
            # a variant of the column's model (its own protocol, other options) beside the same number
            groups.append(
                {"kind": "compared", "model": variant, "label": model_label(variant), "published_column": key,
                 "published_label": column["label"], "variant_of": ours,
                 "source": f"variant of {model_label(ours)} (see the Ablations section)"}
            )
            placed.add(variant)
    for model in models:
        if pub.column_for_model(model) is None and model != ORACLE_MODEL and model not in placed:
            groups.append(
                {"kind": "ours_only", "model": model, "label": model_label(model), "published_column": None,
                 "published_label": None, "source": "not in the paper's Table 1"}
            )
    return groups


def table1(summary: pd.DataFrame, avgs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Wide Table 1: per dataset, one row per normal class and an Average row; for each group of
    ``table1_layout``: ``{model}_mean``, ``{model}_std``, ``{model}_n`` (ours, percent),
    ``published_{column}``, ``{model}_difference`` (ours - published)."""
    layout = table1_layout(grid["models"], grid.get("variants"))
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
                        published, basis = published_column_average(dataset, column, grid["normal_classes"])
                        if model is not None:
                            # ours averages the classes present: compare with the same classes
                            cell = avgs[(avgs["dataset"] == dataset) & (avgs["model"] == model)].iloc[0]
                            if cell["published_average_basis"]:
                                published, basis = cell["published_average_pct"], cell["published_average_basis"]
                        row[f"published_{column}_basis"] = basis
                    row[f"published_{column}"] = published
                if model is None:
                    continue
                if is_average:
                    cell = avgs[(avgs["dataset"] == dataset) & (avgs["model"] == model)].iloc[0]
                    mean, std, n = cell["auc_pct_mean"], cell["mstd"], cell["n_classes"]
                else:
                    cell = summary[
                        (summary["dataset"] == dataset) & (summary["normal_class"] == normal_class) & (summary["model"] == model)
                    ].iloc[0]
                    mean, std, n = cell["auc_pct_mean"], cell["auc_pct_std"], cell["n_seeds"]
                row[f"{model}_mean"] = mean
                row[f"{model}_std"] = std
                row[f"{model}_n"] = int(n)
                if column is not None:
                    row[f"{model}_difference"] = mean - published if published is not None else math.nan
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
    columns = ["model", "dataset", "device_type", "runs", "wall_hours", "mean_wall_seconds", "mean_seconds_per_epoch", "gpu_hours"]
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
    table = table.sort_values(["model", "dataset"], key=lambda s: s.map(order) if s.name == "model" else s)
    return table[columns].reset_index(drop=True)


def parameters_table(runs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    paper = pub.parameters_millions()
    runs = real_runs(runs)
    rows = []
    for model in grid["models"]:
        for dataset in grid["datasets"]:
            part = runs[(runs["model"] == model) & (runs["dataset"] == dataset)] if not runs.empty else runs
            counts = sorted({int(p) for p in part.get("parameters", pd.Series(dtype=float)).dropna()})
            latent = sorted({int(v) for v in part.get("latent_dim", pd.Series(dtype=float)).dropna()})
            ours = counts[0] if len(counts) == 1 else (math.nan if not counts else counts[-1])
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "latent_dim": latent[0] if len(latent) == 1 else (math.nan if not latent else latent[-1]),
                    "parameters": ours,
                    "parameters_millions": ours / 1e6 if ours == ours else math.nan,
                    "paper_millions": paper.get(model, math.nan),
                    "ratio_to_paper": (ours / 1e6) / paper[model] if model in paper and ours == ours else math.nan,
                    "distinct_counts": len(counts),
                }
            )
    return pd.DataFrame(rows)


def mstd_table(avgs: pd.DataFrame) -> list[dict[str, Any]]:
    """The paper's mstd statements beside ours (mstd and largest per-class std)."""
    paper = pub.mstd_claims()
    out = []
    for model, published, text in (
        ("grad2vae", paper.get("grad2vae_max"), "Grad2VAE's mstd does not exceed 0.117 on either dataset"),
        ("inception_caenn", paper.get("inception_caenn"), "Inception-CAENN's mstd reaches 3.9 ([25])"),
    ):
        part = avgs[avgs["model"] == model]
        out.append(
            {
                "model": model,
                "claim": text,
                "published": published,
                "ours_max_mstd": _none(part["mstd"].max()) if len(part) else None,
                "ours_max_class_std": _none(part["max_class_std"].max()) if len(part) else None,
            }
        )
    part = avgs[avgs["model"] == "deep_svdd"]
    ran = len(part) and part["n_classes"].sum() > 0
    out.append({"model": "deep_svdd",
                "claim": "Deep SVDD's mstd reaches 3.8 ([25])" + ("" if ran else "; not run here (extra_models)"),
                "published": paper.get("deep_svdd"),
                "ours_max_mstd": _none(part["mstd"].max()) if ran else None,
                "ours_max_class_std": _none(part["max_class_std"].max()) if ran else None})
    return out


def _none(value: Any) -> Any:
    """NaN -> None (for JSON)."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# the statistics section (issue 9)


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value with ``n`` pairs: 2 / 2^n."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else math.nan


def statistics_payload(runs: pd.DataFrame, grid: dict[str, list], figure_dir: Path | None = None) -> dict[str, Any]:
    """``grad2vae.stats.analyse`` over the grid's models (the oracle left out), with, per dataset,
    ``skipped``: why a test was not run (too few methods or classes, a partial grid) and
    ``notes``: what limits the tests that did run. Never raises for a small or partial grid."""
    methods = [m for m in model_order(grid["models"]) if m != ORACLE_MODEL]
    labels = {m: model_label(m) for m in methods}
    usable = real_runs(runs)
    if not usable.empty and "auc" in usable:
        usable = usable[pd.to_numeric(usable["auc"], errors="coerce").notna()]
    if usable.empty or "model" not in usable:
        result: dict[str, Any] = {"alpha": stats.ALPHA, "oracle_note": stats.ORACLE_NOTE, "datasets": {}}
    else:
        result = stats.analyse(usable, methods=methods, labels=labels, figure_dir=figure_dir)
    result["methods"] = methods
    result["labels"] = labels
    result["method"] = (
        "Per dataset: one value per normal class and method, the AUC (percent) averaged over seeds first; "
        "only classes where every method has a run. Average rank over the classes (1 = best AUC, ties share "
        "the mean rank); Friedman test (scipy.stats.friedmanchisquare); every pair of methods by the two-sided "
        "Wilcoxon signed-rank test on the paired class values (scipy.stats.wilcoxon), p-values corrected by "
        f"Holm's step-down method over the pairs, significant at alpha = {stats.ALPHA:g}. Critical-difference "
        "diagram drawn by scikit-posthocs from these ranks and Holm-corrected p-values."
    )
    for dataset in grid["datasets"]:
        section = result["datasets"].setdefault(dataset, {"label": pub.dataset_label(dataset)})
        skipped, notes = [], []
        part = usable[usable["dataset"] == dataset] if not usable.empty and "dataset" in usable else usable
        present = [m for m in methods if not part.empty and m in set(part["model"])]
        absent = [labels[m] for m in methods if m not in present]
        table = stats.class_means(part, present) if present else pd.DataFrame()
        left_out = sorted(set(grid["normal_classes"]) - {int(c) for c in table.index})
        ours = section.get("ours")
        if ours is None:
            skipped.append(
                f"Ranks, Friedman and Wilcoxon tests not computed: they need at least 2 methods and 2 normal "
                f"classes on which every method has a run; this grid has {len(present)} method(s) with runs "
                f"and {len(table)} such class(es)."
            )
        else:
            n, k = len(ours["classes"]), len(ours["methods"])
            if not math.isfinite(ours["friedman"]["statistic"]):
                skipped.append(f"Friedman test not run: it needs at least 3 methods (this comparison has {k}).")
            smallest = smallest_wilcoxon_p(n)
            if smallest > stats.ALPHA:
                notes.append(
                    f"With {n} normal classes the smallest possible two-sided Wilcoxon p-value is 2/2^{n} = "
                    f"{smallest:.3g} > alpha = {stats.ALPHA:g}: no pairwise difference can be significant, whatever "
                    "the AUCs (the paper's protocol has 10 classes)."
                )
        if ours is not None and len(grid["normal_classes"]) < pub.N_CLASSES:
            notes.append(
                f"This grid has {len(grid['normal_classes'])} of the 10 normal classes: the published averages "
                "quoted in the claims are the paper's over all 10, ours over the classes here."
            )
        if absent:
            notes.append("Methods of the grid without any complete run here (left out): " + ", ".join(absent) + ".")
        if present and left_out:
            notes.append(
                "Normal classes left out because some method has no run for them: "
                + ", ".join(pub.class_label(dataset, c) for c in left_out) + "."
            )
        if "published" not in section:  # no runs of this dataset: the paper's numbers still are
            paper = stats.published_table(dataset)
            if paper.shape[1] >= 2:
                section["published"] = stats.compare(paper, name=f"{pub.dataset_label(dataset)} (paper's Table 1)").to_dict()
            else:
                skipped.append("The paper's Table 1 was not analysed (fewer than 2 complete columns).")
        section["skipped"] = skipped
        section["notes"] = notes
    # the grid's order of datasets (the report's order), then any others
    order = list(grid["datasets"]) + sorted(set(result["datasets"]) - set(grid["datasets"]))
    result["datasets"] = {dataset: result["datasets"][dataset] for dataset in order}
    return result


# --------------------------------------------------------------------------------------------
# provenance


def provenance(runs: pd.DataFrame) -> dict[str, Any]:
    def counts(column: str) -> dict[str, int]:
        if runs.empty or column not in runs:
            return {}
        return {str(k): int(v) for k, v in Counter(runs[column].fillna("").astype(str)).most_common()}

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


# --------------------------------------------------------------------------------------------
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", default="results", help="folder holding runs/ and logs/ (default: results)")
    parser.add_argument("--out-dir", help="where to write the tables (default: RESULTS/aggregate)")
    parser.add_argument("--workflow-config", help="JSON or YAML with the expected grid (the Snakefile writes one)")
    parser.add_argument("--datasets", nargs="+", help="expected datasets (overrides the workflow config)")
    parser.add_argument("--models", nargs="+", help="expected models")
    parser.add_argument("--normal-classes", nargs="+", type=int, help="expected normal classes")
    parser.add_argument("--seeds", nargs="+", type=int, help="expected seeds")
    parser.add_argument(
        "--data-dir",
        help="verified datasets (`grad2vae fetch`): the model-free entropy-only AUC is computed from "
        "their test images; without it, entropy_only.csv is written empty and the report says why",
    )


def entropy_for_grid(data_dir: Path | None, grid: dict[str, list], runs: pd.DataFrame, workflow_config: dict) -> tuple[pd.DataFrame, str]:
    """(entropy_only table, note): H(x)'s AUC per (dataset, class) of the grid on the test images
    the runs were scored on (their test_limit, else the workflow's, else all)."""
    if data_dir is None:
        return pd.DataFrame(columns=entropy_only.COLUMNS), "not computed: `grad2vae aggregate` ran without --data-dir"
    limits = sorted({int(v) for v in pd.to_numeric(runs.get("test_limit", pd.Series(dtype=float)), errors="coerce").dropna()})
    if len(limits) > 1:
        log.warning("runs with different test limits %s: entropy-only AUC on test_limit %d", limits, limits[0])
    limit = limits[0] if limits else int((workflow_config.get("train") or {}).get("test_limit") or 0)
    table = entropy_only.entropy_table(data_dir, grid["datasets"], grid["normal_classes"], limit)
    return table, f"H(x) of the {'full test set' if not limit else f'{limit} test images (test_limit)'} of each normal class"


def aggregate(
    results_dir: Path,
    out_dir: Path,
    workflow_config: dict[str, Any],
    overrides: dict[str, list | None] | None = None,
    data_dir: Path | None = None,
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
    tables = table_grid(grid)
    summary = summarise(runs, tables)
    avgs = averages(summary, tables)
    table = table1(summary, avgs, tables)
    statistics = statistics_payload(runs, grid)
    compute = compute_table(runs, grid)
    params = parameters_table(runs, grid)
    entropy, entropy_note = entropy_for_grid(data_dir, grid, real_runs(runs), workflow_config)
    per_score = scores_table(summary, tables, entropy)
    # The paper's claims concern its models: variants (ablations, other protocols) are left out.
    paper_models = [m for m in grid["models"] if m not in grid["variants"]]
    claims = paper_claims.all_claims(
        _only(real_runs(runs), paper_models), _only(history, paper_models), _only(avgs, paper_models),
        _only(params, paper_models), dict(grid, models=paper_models),
    )
    ablation = ablation_study.ablations(real_runs(runs), avgs, grid, grid["variants"], workflow_config)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(runs, out_dir / "runs.csv")
    _write_csv(status, out_dir / "status.csv")
    _write_csv(summary, out_dir / "summary.csv")
    _write_csv(avgs, out_dir / "averages.csv")
    _write_csv(table, out_dir / "table1.csv")
    _write_csv(compute, out_dir / "compute.csv")
    _write_csv(params, out_dir / "parameters.csv")
    _write_csv(entropy, out_dir / "entropy_only.csv")
    _write_csv(per_score, out_dir / "scores.csv")
    write_json(out_dir / "claims.json", _jsonable(claims))
    write_json(out_dir / "ablations.json", _jsonable(ablation))
    write_json(out_dir / "score_findings.json", _jsonable(paper_claims.score_findings(per_score, real_runs(runs), grid["datasets"])))
    with atomic_open(out_dir / "history.csv.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(history.to_csv(index=False).encode("utf-8"))
    write_json(out_dir / "stats.json", _jsonable(statistics))

    counts = status["status"].value_counts().to_dict()
    payload = {
        "results_dir": str(results_dir),
        "grid": grid,
        "counts": {k: int(counts.get(k, 0)) for k in ("complete", "failed", "missing")},
        "expected_runs": int(len(status)),
        "extra_runs_ignored": extra_runs(results_dir, grid),
        "table1_layout": table1_layout(tables["models"], grid["variants"]),
        "mstd_claims": mstd_table(avgs),
        "claim_verdicts": paper_claims.verdict_counts(claims),
        "entropy_only": entropy_note,
        "definitions": {
            "auc_pct": "100 x AUC-ROC of the model's main score, label 1 = anomaly (Table 1's units)",
            "std": "sample standard deviation over seeds (ddof=1), percentage points",
            "average": "mean over normal classes of the per-class means (Table 1's Average row)",
            "mstd": "mean over normal classes of the per-class std over seeds (our reading of the paper's 'mstd')",
            "max_class_std": "largest per-class std over seeds (the other reading of 'maximum mstd')",
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
    return _none(value)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)


def run(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    out_dir = Path(args.out_dir) if args.out_dir else results_dir / "aggregate"
    overrides = {"datasets": args.datasets, "models": args.models, "normal_classes": args.normal_classes, "seeds": args.seeds}
    data_dir = Path(args.data_dir) if args.data_dir else None
    payload = aggregate(results_dir, out_dir, read_workflow_config(args.workflow_config), overrides, data_dir)
    counts = payload["counts"]
    log.info(
        "%d expected runs: %d complete, %d failed, %d missing -> %s",
        payload["expected_runs"], counts["complete"], counts["failed"], counts["missing"], out_dir,
    )
    if counts["failed"] or counts["missing"]:
        log.warning("partial grid: the tables cover the %d complete runs; see %s", counts["complete"], out_dir / "status.csv")
    return 0
