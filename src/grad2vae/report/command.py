"""Render the HTML report (REPORT/index.html) from the aggregated tables and the figures.

Reads RESULTS/aggregate/ (`grad2vae aggregate`), RESULTS/figures/ (`grad2vae figures`) and, if it
exists, RESULTS/explain/summary.json (`grad2vae explain`); each figure's caption is its file in
the templates' captions/ folder followed by the run's details (grad2vae.captions). Writes
REPORT/index.html (default: report/) with its assets beside it: style.css, figures/*.png,
explain/*, data/*.csv. Links are relative, so the folder opens from file:// and can be copied or
zipped as a whole. Rendered by jinja2 with autoescaping from the templates in --template-dir
(default: the package's report/templates/). The sections are those of index.html.j2.

Example: grad2vae report --results-dir results --report-dir report
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from grad2vae import __version__
from grad2vae import published as pub
from grad2vae.analysis import ablations as ablation_study
from grad2vae.analysis.labels import model_label, model_order
from grad2vae.analysis.tables import PRINTED_AVERAGE, read_table
from grad2vae.atomic import write_text
from grad2vae.captions import entry_caption
from grad2vae.errors import UserError
from grad2vae.gitstate import git_commit_label
from grad2vae.layout import ASSUMPTIONS_FILE
from grad2vae.report.sections import (
    copy_file,
    fmt_int,
    fmt_mean_std,
    fmt_num,
    fmt_signed,
    fresh_dir,
    gather_ablations,
    gather_claims,
    gather_explain,
    gather_scores,
    gather_statistics,
    gather_table1_metric,
    is_finite_number,
    sign_class,
)

log = logging.getLogger(__name__)


TEMPLATE = "index.html.j2"


STYLESHEET = "style.css"


def default_template_dir() -> Path:
    """The templates shipped inside the package (index.html.j2, style.css, captions/)."""
    return Path(__file__).resolve().parent / "templates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        default="results",
        help="folder holding aggregate/ and figures/ (default: results)",
    )
    parser.add_argument("--aggregate-dir", help="default: RESULTS/aggregate")
    parser.add_argument("--figures-dir", help="default: RESULTS/figures")
    parser.add_argument(
        "--explain-summary", help="default: RESULTS/explain/summary.json, used if it exists"
    )
    parser.add_argument(
        "--report-dir",
        default="report",
        help="where index.html and its assets go (default: report)",
    )
    parser.add_argument(
        "--template-dir",
        help="folder with index.html.j2 and style.css (default: the package's templates)",
    )
    parser.add_argument("--title", default="Grad2VAE reproduction", help="page title")
    parser.add_argument(
        "--assumptions",
        help=f"the choices the paper leaves open (`grad2vae assumptions`; default: "
        f"RESULTS/{ASSUMPTIONS_FILE})",
    )


# --------------------------------------------------------------------------------------------
# gathering


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [] if frame.empty else frame.astype(object).where(frame.notna(), None).to_dict("records")


def read_assumptions(path: Path) -> list[dict[str, Any]]:
    """The groups of ``grad2vae assumptions`` ({"source", "title", "items"}); one group saying how
    to write them when the file is missing."""
    if not path.is_file():
        log.warning("%s not found: the report's Assumptions section says how to write it", path)
        return [
            {
                "source": str(path),
                "title": "not recorded",
                "items": [f"run `grad2vae assumptions --out {path}`, then the report again"],
            }
        ]
    return json.loads(path.read_text(encoding="utf-8"))["groups"]


def protocol_deviations(workflow_config: dict[str, Any], runs: pd.DataFrame) -> list[str]:
    """Where the configuration differs from the paper's learning setup (Sect. 4)."""
    setup = pub.learning_setup()
    out = []
    train = workflow_config.get("train", {}) if workflow_config else {}
    for key in ("epochs", "batch_size", "lr", "lr_decay_epoch", "lr_decay_factor"):
        if key in train and train[key] != setup[key]:
            out.append(f"{key} = {train[key]} (paper: {setup[key]})")
    for key in ("train_limit", "test_limit"):
        if train.get(key):
            out.append(f"{key} = {train[key]} images (paper: the full split)")
    latent = workflow_config.get("latent_dim", {}) if workflow_config else {}
    for dataset, size in latent.items():
        if dataset in setup["latent_dim"] and size != setup["latent_dim"][dataset]:
            out.append(f"latent size {dataset} = {size} (paper: {setup['latent_dim'][dataset]})")
    seeds = workflow_config.get("seeds") if workflow_config else None
    if seeds is not None and len(seeds) != setup["models_per_class"]:
        out.append(
            f"{len(seeds)} seed(s) per class (paper: {setup['models_per_class']} models per class)"
        )
    classes = workflow_config.get("normal_classes") if workflow_config else None
    if classes is not None and len(classes) != pub.N_CLASSES:
        out.append(f"{len(classes)} of the 10 normal classes")
    for name, variant in ((workflow_config or {}).get("variants") or {}).items():
        out.append(
            f"variant {name} = {variant['model']}: {ablation_study.describe(name, workflow_config)}"
        )
    if not workflow_config and not runs.empty:
        epochs = sorted({int(e) for e in runs["epochs"].dropna()}) if "epochs" in runs else []
        if epochs and epochs != [setup["epochs"]]:
            out.append(f"epochs = {', '.join(map(str, epochs))} (paper: {setup['epochs']})")
    return out


DOWNLOADS = (
    "table1_pixel.csv",
    "table1.csv",
    "runs.csv",
    "summary.csv",
    "averages.csv",
    "status.csv",
    "compute.csv",
    "parameters.csv",
    "stats.json",
    "claims.json",
    "ablations.json",
    "scores.csv",
    "entropy_only.csv",
)


def gather_figures(
    figures_dir: Path, report_dir: Path, template_dir: Path
) -> dict[str, list[dict[str, str]]]:
    """Copy the PNGs listed in figures.json into REPORT/figures/; by section, what shows them."""
    manifest_path = figures_dir / "figures.json"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found; run `grad2vae figures` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    fresh_dir(report_dir / "figures")
    figures: dict[str, list[dict[str, str]]] = {}
    for entry in manifest.get("figures", []):
        source = figures_dir / entry["file"]
        if not source.is_file():
            raise UserError(
                f"{source} is listed in {manifest_path} but missing; run `grad2vae figures` again"
            )
        copy_file(source, report_dir / "figures" / source.name)
        figures.setdefault(entry.get("section", "other"), []).append(
            {
                "src": f"figures/{source.name}",
                "title": entry.get("title", ""),
                "caption": entry_caption(template_dir, entry),
                "dataset": entry.get("dataset", ""),
            }
        )
    return figures


def copy_downloads(agg_dir: Path, report_dir: Path) -> list[dict[str, str]]:
    """Copy the aggregate tables that exist into REPORT/data/; their links."""
    fresh_dir(report_dir / "data")
    downloads = []
    for name in DOWNLOADS:
        if (agg_dir / name).is_file():
            copy_file(agg_dir / name, report_dir / "data" / name)
            downloads.append({"href": f"data/{name}", "name": name})
    return downloads


def table1_rows(table1: pd.DataFrame, layout: list[dict], grid: dict) -> list[dict[str, Any]]:
    """Table 1's display rows, one cell per column group of ``layout`` (aggregate.json)."""
    n_seeds = len(grid["seeds"])
    n_classes = len(grid["normal_classes"])
    table_rows = []
    for row in _records(table1):
        is_average = row.get("class_label") == "Average"
        cells = []
        for group in layout:
            model, column = group.get("model"), group.get("published_column")
            cell: dict[str, Any] = {"kind": group["kind"]}
            if model:
                n = row.get(f"{model}_n")
                expected = n_classes if is_average else n_seeds
                cell.update(
                    ours=fmt_mean_std(row.get(f"{model}_mean"), row.get(f"{model}_std")),
                    n=int(n) if is_finite_number(n) else 0,
                    expected=expected,
                    incomplete=is_finite_number(n) and int(n) < expected,
                )
            if column:
                cell["published"] = fmt_num(row.get(f"published_{column}"))
                basis = row.get(f"published_{column}_basis") if is_average else None
                cell["published_note"] = basis if basis and basis != PRINTED_AVERAGE else ""
            if model and column:
                diff = row.get(f"{model}_difference")
                cell.update(diff=fmt_signed(diff), diff_class=sign_class(diff))
            cells.append(cell)
        table_rows.append(
            {
                "dataset": row.get("dataset"),
                "dataset_label": row.get("dataset_label"),
                "class_label": row.get("class_label"),
                "is_average": is_average,
                "cells": cells,
            }
        )
    # rowspan for the dataset cell
    for dataset in grid["datasets"]:
        rows = [r for r in table_rows if r["dataset"] == dataset]
        for i, r in enumerate(rows):
            r["dataset_rowspan"] = len(rows) if i == 0 else 0
    return table_rows


def summary_rows(
    averages: pd.DataFrame, bounds: dict[str, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Per dataset and model (and bound: ``bounds``, aggregate.json's): our average beside the
    published one."""
    summary_rows = []
    for row in _records(averages):
        summary_rows.append(
            {
                "dataset": pub.dataset_label(row["dataset"]),
                "model": model_label(row["model"], bounds),
                "ours": fmt_num(row.get("auc_pct_mean")),
                "ours_reconstruction": fmt_num(row.get("auc_reconstruction_pct_mean")),
                "mstd": fmt_num(row.get("mstd"), 3),
                "max_class_std": fmt_num(row.get("max_class_std"), 3),
                "published_label": pub.published_columns()
                .get(row.get("published_column") or "", {})
                .get("label", ""),
                "published": fmt_num(row.get("published_average_pct")),
                "basis": row.get("published_average_basis") or "",
                "basis_note": (row.get("published_average_basis") or PRINTED_AVERAGE)
                != PRINTED_AVERAGE,
                "diff": fmt_signed(row.get("difference_pct")),
                "diff_class": sign_class(row.get("difference_pct")),
                "classes": f"{int(row.get('n_classes') or 0)}/"
                f"{int(row.get('n_classes_expected') or 0)}",
                "runs": int(row.get("n_runs") or 0),
            }
        )
    return summary_rows


def parameter_rows(parameters: pd.DataFrame) -> list[dict[str, Any]]:
    """Our parameter counts beside the paper's."""
    param_rows = []
    for row in _records(parameters):
        param_rows.append(
            {
                "model": model_label(row["model"]),
                "dataset": pub.dataset_label(row["dataset"]),
                "latent_dim": fmt_int(row.get("latent_dim")),
                "ours": fmt_int(row.get("parameters")),
                "ours_m": fmt_num(row.get("parameters_millions"), 3),
                "paper_m": fmt_num(row.get("paper_millions"), 3),
                "ratio": fmt_num(row.get("ratio_to_paper"), 2),
            }
        )
    return param_rows


def compute_rows(compute: pd.DataFrame) -> list[dict[str, Any]]:
    """Wall time and device-hours per model and dataset."""
    compute_rows = []
    for row in _records(compute):
        compute_rows.append(
            {
                "model": model_label(row["model"]),
                "dataset": pub.dataset_label(row["dataset"]),
                "device_type": row.get("device_type"),
                "runs": fmt_int(row.get("runs")),
                "mean_wall": fmt_num(row.get("mean_wall_seconds"), 1),
                "per_epoch": fmt_num(row.get("mean_seconds_per_epoch"), 2),
                "hours": fmt_num(row.get("wall_hours"), 3),
                "gpu_hours": fmt_num(row.get("gpu_hours"), 3),
            }
        )
    return compute_rows


def run_status(status: pd.DataFrame, grid: dict) -> tuple[list[dict], list[dict]]:
    """A dataset x model matrix of complete / expected runs, and the runs not complete."""
    status_matrix = []
    for dataset in grid["datasets"]:
        cells = []
        for model in model_order(grid["models"]):
            part = (
                status[(status["dataset"] == dataset) & (status["model"] == model)]
                if not status.empty
                else status
            )
            done = int((part["status"] == "complete").sum()) if len(part) else 0
            failed = int((part["status"] == "failed").sum()) if len(part) else 0
            cells.append(
                {
                    "complete": done,
                    "failed": failed,
                    "expected": int(len(part)),
                    "state": "ok"
                    if len(part) and done == len(part)
                    else ("bad" if failed else "partial"),
                }
            )
        status_matrix.append({"dataset": pub.dataset_label(dataset), "cells": cells})
    not_complete = _records(status[status["status"] != "complete"]) if not status.empty else []
    for row in not_complete:
        row["model_label"] = model_label(row["model"])
        row["dataset_label"] = pub.dataset_label(row["dataset"])
    return status_matrix, not_complete


def gather(
    results_dir: Path,
    agg_dir: Path,
    figures_dir: Path,
    explain_summary: Path,
    report_dir: Path,
    template_dir: Path,
    assumptions: Path,
) -> dict[str, Any]:
    """What index.html.j2 shows, from the aggregate, figures and explain outputs; copies the
    figures and tables it links into ``report_dir``."""
    payload_path = agg_dir / "aggregate.json"
    if not payload_path.is_file():
        raise UserError(f"{payload_path} not found; run `grad2vae aggregate` first")
    payload = json.loads(payload_path.read_text(encoding="utf-8"))
    grid = payload["grid"]
    runs = read_table(agg_dir / "runs.csv")
    status = read_table(agg_dir / "status.csv")
    averages = read_table(agg_dir / "averages.csv")
    table1 = read_table(agg_dir / "table1.csv")
    compute = read_table(agg_dir / "compute.csv")
    parameters = read_table(agg_dir / "parameters.csv")

    figures = gather_figures(figures_dir, report_dir, template_dir)
    layout = payload.get("table1_layout", [])
    table_rows = table1_rows(table1, layout, grid)
    status_matrix, not_complete = run_status(status, grid)
    workflow_config = payload.get("workflow_config") or {}
    provenance = payload.get("provenance", {})
    return {
        "grid": grid,
        "models": [model_label(m) for m in model_order(grid["models"])],
        "counts": payload.get("counts", {}),
        "expected_runs": payload.get("expected_runs", 0),
        "extra_runs": payload.get("extra_runs_ignored", []),
        "definitions": payload.get("definitions", {}),
        "layout": layout,
        "published_only": [g["label"] for g in layout if g["kind"] == "published_only"],
        "ours_only": [g["label"] for g in layout if g["kind"] == "ours_only"],
        "bound_columns": [g for g in layout if g["kind"] == "bound"],
        "statistics": gather_statistics(agg_dir, figures),
        "table_rows": table_rows,
        "average_note": any(c.get("published_note") for r in table_rows for c in r["cells"]),
        "summary_rows": summary_rows(averages, payload.get("bounds")),
        "claims": gather_claims(agg_dir),
        "table1_metric": gather_table1_metric(agg_dir, figures),
        "ablations": gather_ablations(agg_dir),
        "scores": gather_scores(agg_dir, figures),
        "param_rows": parameter_rows(parameters),
        "compute_rows": compute_rows(compute),
        "figures": figures,
        "downloads": copy_downloads(agg_dir, report_dir),
        "status_matrix": status_matrix,
        "not_complete": not_complete,
        "deviations": protocol_deviations(workflow_config, runs),
        "assumptions": read_assumptions(assumptions),
        "explain": gather_explain(explain_summary, report_dir, template_dir),
        "provenance": provenance,
        "run_versions": provenance.get("run_versions", []),
        "workflow_config_text": json.dumps(workflow_config, indent=2, sort_keys=True)
        if workflow_config
        else "",
        "citation": pub.citation(),
        "citation_short": pub.load_published()["citation"]["short"],
        "doi": pub.load_published()["citation"]["doi"],
        "setup": pub.learning_setup(),
        "report_environment": {
            "grad2vae": __version__,
            "python": sys.version.split()[0],
            "git_commit": git_commit_label(Path.cwd()),
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"
            ),
            "results_dir": str(results_dir),
        },
    }


# --------------------------------------------------------------------------------------------
def render(context: dict[str, Any], template_dir: Path) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        autoescape=True,  # every value is escaped, whatever the template's file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, signed=fmt_signed, sign=sign_class, integer=fmt_int)
    return env.get_template(TEMPLATE).render(**context)


def build_report(
    results_dir: Path,
    report_dir: Path,
    agg_dir: Path | None = None,
    figures_dir: Path | None = None,
    explain_summary: Path | None = None,
    template_dir: Path | None = None,
    title: str = "Grad2VAE reproduction",
    assumptions: Path | None = None,
) -> Path:
    template_dir = template_dir or default_template_dir()
    if not (template_dir / TEMPLATE).is_file() or not (template_dir / STYLESHEET).is_file():
        raise UserError(
            f"{template_dir} lacks {TEMPLATE} or {STYLESHEET}; pass --template-dir "
            "(the package's grad2vae/report/templates)"
        )
    report_dir.mkdir(parents=True, exist_ok=True)
    context = gather(
        results_dir,
        agg_dir or results_dir / "aggregate",
        figures_dir or results_dir / "figures",
        explain_summary or results_dir / "explain" / "summary.json",
        report_dir,
        template_dir,
        assumptions or results_dir / ASSUMPTIONS_FILE,
    )
    context["title"] = title
    page = render(context, template_dir)
    copy_file(template_dir / STYLESHEET, report_dir / STYLESHEET)
    write_text(report_dir / "index.html", page)  # last: the page only ever links existing assets
    return report_dir / "index.html"


def run(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    path = build_report(
        results_dir,
        Path(args.report_dir),
        Path(args.aggregate_dir) if args.aggregate_dir else None,
        Path(args.figures_dir) if args.figures_dir else None,
        Path(args.explain_summary) if args.explain_summary else None,
        Path(args.template_dir) if args.template_dir else None,
        args.title,
        Path(args.assumptions) if args.assumptions else None,
    )
    log.info("report -> %s (open it in a browser: file://%s)", path, path.resolve())
    return 0
