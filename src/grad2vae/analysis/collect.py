"""The runs of a grid on disk: the expected grid, each run's metrics, history, log and benchmark
read into tables, and which runs are complete, failed or missing."""

from __future__ import annotations

import gzip
import json
import logging
import math
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from grad2vae.analysis.bounds import bound_rows, bounds_of, bounds_unrecorded, with_bounds
from grad2vae.analysis.labels import model_order
from grad2vae.errors import UserError
from grad2vae.grid import model_classes, run_keys, trained_models
from grad2vae.layout import (
    CHECKPOINT,
    HISTORY,
    METRICS,
    RUN_DIR,
    SCORES,
    TRAIN_BENCHMARK,
    TRAIN_LOG,
)
from grad2vae.metrics_file import read_metrics

log = logging.getLogger(__name__)


GRID_KEYS = ("datasets", "normal_classes", "models", "seeds")


KEY_COLUMNS = ["dataset", "normal_class", "model", "seed"]


def read_workflow_config(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"workflow config {path} not found; run the Snakefile's workflow_config rule or omit it"
        )
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
        # `extra_models` and `variants` train beside `models` (grad2vae.grid, as the workflow)
        grid["models"] = trained_models(workflow_config)
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
    # a variant trained on a subset of the classes (the workflow's variants.*.normal_classes);
    # the key only where there is one, so that other grids keep their shape
    subsets = model_classes(workflow_config)
    if subsets:
        grid["model_classes"] = subsets
    return grid


def grid_keys(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every expected run (``grad2vae.grid.run_keys``, the workflow's too); a model of
    ``grid["model_classes"]`` only on its classes."""
    return list(run_keys(grid))


def _failure_reason(log_path: Path, limit: int = 300) -> str:
    """The log's last line that reports an error, else why there is none to show. Never the
    last line as such: a run whose metrics.json was deleted after it finished ends its log with
    a success line."""
    try:
        lines = [
            line.strip()
            for line in log_path.read_text(errors="replace").splitlines()
            if line.strip()
        ]
    except OSError as error:
        return f"{METRICS} missing; its log {log_path} is unreadable ({error})"
    for line in reversed(lines):
        if "error" in line.lower() or "killed" in line.lower() or "exception" in line.lower():
            return line[:limit]
    if not lines:
        return f"{METRICS} missing; its log is empty (the job did not start, or was killed)"
    return (
        f"{METRICS} missing; its log reports no error (still running, interrupted, or the "
        "run's files were deleted after it finished): train it again"
    )


def damaged_files(run_dir: Path, metrics: dict[str, Any]) -> str | None:
    """Why the files of a finished run cannot be used (the file and the error), or None. The
    checks are those a truncated or edited file fails: every line of history.tsv complete and
    numeric, one row per epoch; scores.csv.gz a whole gzip stream with one row per test image."""
    history_path = run_dir / HISTORY
    if history_path.is_file():
        try:
            text = history_path.read_text(encoding="utf-8")
        except (OSError, ValueError) as error:
            return f"{history_path}: unreadable ({error})"
        lines = text.split("\n")
        if not text.endswith("\n"):
            return f"{history_path}: truncated (its last line is incomplete)"
        header, rows = lines[0].split("\t"), [line for line in lines[1:] if line]
        for number, line in enumerate(rows, start=2):
            fields = line.split("\t")
            if len(fields) != len(header):
                return (
                    f"{history_path}: line {number} has {len(fields)} fields, the header "
                    f"{len(header)}"
                )
            try:
                [float(field) for field in fields if field]
            except ValueError as error:
                return f"{history_path}: line {number} is not numeric ({error})"
        epochs = metrics.get("epochs")
        if isinstance(epochs, int) and len(rows) != epochs:
            return f"{history_path}: {len(rows)} epochs, {METRICS} says {epochs}"
    scores_path = run_dir / SCORES
    if scores_path.is_file():
        try:
            with gzip.open(scores_path, "rt", encoding="ascii") as handle:
                scores = pd.read_csv(handle)
        except (OSError, EOFError, ValueError, zlib.error, pd.errors.ParserError) as error:
            return f"{scores_path}: unreadable ({type(error).__name__}: {error})"
        missing = [column for column in ("label", "score_main") if column not in scores]
        if missing:
            return f"{scores_path}: no column {', '.join(missing)}"
        expected = metrics.get("test_images")
        if isinstance(expected, int) and len(scores) != expected:
            return f"{scores_path}: {len(scores)} rows, {METRICS} says {expected} test images"
    return None


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


def read_run(
    results_dir: Path, key: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None, pd.DataFrame | None]:
    """(status row, metrics row or None, history or None) of one expected run. The metrics row
    of a run whose model declared bounds carries their pseudo-run rows under ``"_bound_rows"``
    (``grad2vae.analysis.bounds``; ``collect`` moves them into rows of their own)."""
    run_dir = results_dir / RUN_DIR.format(**key)
    log_path = results_dir / TRAIN_LOG.format(**key)
    status = dict(
        key,
        status="missing",
        reason="",
        run_dir=str(run_dir),
        log=str(log_path) if log_path.exists() else "",
    )
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        try:
            metrics = read_metrics(metrics_path)
            auc = float(metrics["auc"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            status.update(status="failed", reason=f"unreadable metrics.json: {error}")
            return status, None, None
        damage = damaged_files(run_dir, metrics)
        if damage is not None:
            status.update(
                status="failed",
                reason=f"damaged: {damage}; delete the run folder and train it again",
            )
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
                {
                    "base_model": metrics["base_model"],
                    "model_options": json.dumps(metrics.get("model_options") or {}, sort_keys=True),
                }
                if metrics.get("base_model")
                else {}
            ),
            git_commit=metrics.get("git_commit") or "",
            config_hash=metrics.get("config_hash") or "",
            versions=json.dumps(metrics.get("versions") or {}, sort_keys=True),
            run_dir=str(run_dir),
        )
        for score, value in (metrics.get("auc_scores") or {}).items():
            row[f"auc_{score}"] = _float(value)
        for column, value in metrics.items():
            if column.startswith("pixel_auc"):  # evaluate.pixel_column
                row[column] = _float(value)
        for name, value in (metrics.get("score_means") or {}).items():
            row[name] = _float(value)
        row.update(
            train_seconds=_float(metrics.get("train_seconds")),
            train_flops_per_step=_float(metrics.get("train_flops_per_step")),
            train_flops_per_epoch=_float(metrics.get("train_flops_per_epoch")),
        )
        row.update(_benchmark(results_dir / TRAIN_BENCHMARK.format(**key)))
        pseudo = bound_rows(metrics, key)
        if bounds_unrecorded(metrics):
            log.warning(
                "%s: written before metrics.json recorded bounds (format 1); a bound of %s "
                "such as an oracle is left out: train the run again to get it",
                metrics_path,
                key["model"],
            )
        if pseudo:
            row["_bound_rows"] = [
                dict(bound, epochs=metrics.get("epochs"), run_dir=str(run_dir)) for bound in pseudo
            ]
        history = None
        history_path = run_dir / HISTORY
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
        status.update(status="failed", reason=_failure_reason(log_path))
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        status.update(status="failed", reason="run directory without metrics.json (interrupted?)")
    return status, None, None


def release_final_checkpoint(run_dir: str | Path) -> bool:
    """Delete the final checkpoint of a finished run (``run.Run.finish`` keeps it so that a run
    whose outputs Snakemake deleted is only evaluated again) once the run has been read; True if
    one was deleted. A folder that cannot be written keeps it, with a log line."""
    path = Path(run_dir) / CHECKPOINT
    if not (Path(run_dir) / METRICS).is_file() or not path.exists():
        return False
    try:
        path.unlink()
    except OSError as error:
        log.warning("%s: final checkpoint kept (%s)", path, error)
        return False
    return True


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect(
    results_dir: Path, grid: dict[str, list]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, status, history) over the expected grid; runs ends with the bounds' pseudo-runs."""
    statuses, rows, histories, bounds = [], [], [], []
    for key in grid_keys(grid):
        status, row, history = read_run(results_dir, key)
        statuses.append(status)
        if row is not None:
            bounds += row.pop("_bound_rows", [])
            rows.append(row)
        if history is not None:
            histories.append(history)
    rows += bounds  # after the real runs, so that runs.csv reads them first
    runs = pd.DataFrame(rows, columns=None if rows else KEY_COLUMNS + ["auc", "auc_reconstruction"])
    if "protocol" in runs:
        runs["protocol"] = runs["protocol"].fillna("default")
    status = pd.DataFrame(statuses, columns=KEY_COLUMNS + ["status", "reason", "run_dir", "log"])
    history = (
        pd.concat(histories, ignore_index=True)
        if histories
        else pd.DataFrame(columns=KEY_COLUMNS + ["epoch"])
    )
    return runs, status, history


def table_grid(grid: dict[str, list], runs: pd.DataFrame) -> dict[str, Any]:
    """The grid of the result tables: the run grid plus each bound's pseudo-model beside its
    model (``bounds`` holds what the labels need: ``bounds.bounds_of``)."""
    bounds = bounds_of(runs)
    return dict(grid, models=with_bounds(grid["models"], bounds), bounds=bounds)


def extra_runs(results_dir: Path, grid: dict[str, list]) -> list[str]:
    """Finished run directories under RESULTS/runs that are outside the expected grid."""
    expected = {str(results_dir / RUN_DIR.format(**key)) for key in grid_keys(grid)}
    return sorted(
        str(p.parent)
        for p in (results_dir / "runs").glob("*/*/class*/seed*/metrics.json")
        if str(p.parent) not in expected
    )
