"""Render the HTML report (REPORT/index.html) from the aggregated tables and the figures.

Reads RESULTS/aggregate/ (`grad2vae aggregate`), RESULTS/figures/ (`grad2vae figures`) and, if it
exists, RESULTS/explain/summary.json (`grad2vae explain`: {"figures": [{"file", "title",
"caption"}], "tables": [{"file", "title", "caption"}]}, files relative to summary.json). Writes
REPORT/index.html (default: report/), with its assets beside it: style.css, figures/*.png,
explain/*, data/*.csv. Links are relative, so the folder opens from the file system (file://)
without a server and can be copied or zipped as a whole. The page is rendered by jinja2 with
autoescaping from the templates in --template-dir (default: the repository's workflow/report/).

Sections: summary (dataset averages, ours beside published; the paper's mstd claims and
learning setup), Table 1, statistics (RESULTS/aggregate/stats.json: average ranks, Friedman,
Wilcoxon-Holm, critical-difference diagrams, the paper's claims with our verdict), Fig. 6, per-class figures, parameters and compute, explainability (if any), the
assumptions every model and module documents, run status (complete / failed / missing) and
provenance (versions, commits, devices, configuration).

Example: grad2vae report --results-dir results --report-dir report
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from grad2vae import __version__, entropy_only
from grad2vae import ablations as ablation_study
from grad2vae import published as pub
from grad2vae.aggregate import PRINTED_AVERAGE, model_label, model_order
from grad2vae.atomic import atomic_path, write_text
from grad2vae.errors import UserError
from grad2vae.gitstate import git_commit_label

log = logging.getLogger(__name__)

TEMPLATE = "index.html.j2"
STYLESHEET = "style.css"
# Modules whose ASSUMPTIONS tuple the report shows; only `explain` may legitimately be absent.
ASSUMPTION_MODULES = ("grad2vae.data", "grad2vae.config", "grad2vae.schedule", "grad2vae.devices", "grad2vae.explain")
OPTIONAL_MODULES = ("grad2vae.explain",)
MAX_TABLE_ROWS = 200  # rows of an explain CSV shown inline (the whole file is linked)


def default_template_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "workflow" / "report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", default="results", help="folder holding aggregate/ and figures/ (default: results)")
    parser.add_argument("--aggregate-dir", help="default: RESULTS/aggregate")
    parser.add_argument("--figures-dir", help="default: RESULTS/figures")
    parser.add_argument("--explain-summary", help="default: RESULTS/explain/summary.json, used if it exists")
    parser.add_argument("--report-dir", default="report", help="where index.html and its assets go (default: report)")
    parser.add_argument("--template-dir", help="folder with index.html.j2 and style.css (default: workflow/report)")
    parser.add_argument("--title", default="Grad2VAE reproduction", help="page title")


# --------------------------------------------------------------------------------------------
# formatting helpers (jinja filters)


def _finite(value: Any) -> bool:
    try:
        return value is not None and value != "" and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt_num(value: Any, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "—"


def fmt_signed(value: Any, digits: int = 2) -> str:
    return f"{float(value):+.{digits}f}" if _finite(value) else "—"


def sign_class(value: Any) -> str:
    if not _finite(value):
        return "na"
    return "pos" if float(value) > 0 else ("neg" if float(value) < 0 else "zero")


def fmt_mean_std(mean: Any, std: Any, digits: int = 2) -> str:
    if not _finite(mean):
        return "—"
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f}" if _finite(std) else f"{float(mean):.{digits}f}"


def fmt_int(value: Any) -> str:
    return f"{int(float(value)):,}" if _finite(value) else "—"


# --------------------------------------------------------------------------------------------
# gathering


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} not found; run `grad2vae aggregate` first")
    try:
        return pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [] if frame.empty else frame.astype(object).where(frame.notna(), None).to_dict("records")


def gather_assumptions() -> list[dict[str, Any]]:
    """[{"source", "title", "items"}] for every registered model, then every module's ASSUMPTIONS."""
    from grad2vae.models import MODELS, model_names

    groups = []
    for name in model_order(model_names()):
        cls = MODELS[name]
        items = list(getattr(cls, "assumptions", ()) or ())
        groups.append(
            {
                "source": f"grad2vae.models: {name}",
                "title": f"{model_label(name)} ({cls.__name__}); main score: {getattr(cls, 'main_score', 'main')}",
                "items": items,
            }
        )
    for module_name in ASSUMPTION_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if module_name in OPTIONAL_MODULES and error.name == module_name:
                continue
            raise
        items = list(getattr(module, "ASSUMPTIONS", ()) or ())
        if items:
            summary = (module.__doc__ or "").strip().splitlines()
            groups.append({"source": module_name, "title": summary[0] if summary else module_name, "items": items})
    return groups


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
        out.append(f"{len(seeds)} seed(s) per class (paper: {setup['models_per_class']} models per class)")
    classes = workflow_config.get("normal_classes") if workflow_config else None
    if classes is not None and len(classes) != pub.N_CLASSES:
        out.append(f"{len(classes)} of the 10 normal classes")
    for name, variant in ((workflow_config or {}).get("variants") or {}).items():
        out.append(f"variant {name} = {variant['model']}: {ablation_study.describe(name, workflow_config)}")
    if not workflow_config and not runs.empty:
        epochs = sorted({int(e) for e in runs["epochs"].dropna()}) if "epochs" in runs else []
        if epochs and epochs != [setup["epochs"]]:
            out.append(f"epochs = {', '.join(map(str, epochs))} (paper: {setup['epochs']})")
    return out


def _safe_child(base: Path, relative: str) -> Path | None:
    """``base / relative`` if it stays inside ``base`` (no absolute paths, no ``..`` escapes)."""
    candidate = (base / relative).resolve()
    try:
        candidate.relative_to(base.resolve())
    except ValueError:
        return None
    return candidate


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _fresh_dir(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def gather_explain(summary_path: Path, report_dir: Path) -> dict[str, Any] | None:
    """Copy the explain outputs into REPORT/explain/ and describe them; None if there are none."""
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{summary_path} is not valid JSON ({error})") from None
    base = summary_path.parent
    target = report_dir / "explain"
    _fresh_dir(target)
    figures, tables, problems = [], [], []
    for index, entry in enumerate(summary.get("figures", []) or []):
        source = _safe_child(base, str(entry.get("file", "")))
        if source is None or not source.is_file():
            problems.append(f"figure {entry.get('file')!r} listed in {summary_path.name} was not found")
            continue
        name = f"{index:02d}-{source.name}"
        _copy(source, target / name)
        figures.append({"src": f"explain/{name}", "title": entry.get("title", source.stem), "caption": entry.get("caption", "")})
    for index, entry in enumerate(summary.get("tables", []) or []):
        source = _safe_child(base, str(entry.get("file", "")))
        if source is None or not source.is_file():
            problems.append(f"table {entry.get('file')!r} listed in {summary_path.name} was not found")
            continue
        name = f"{index:02d}-{source.name}"
        _copy(source, target / name)
        try:
            frame = pd.read_csv(source)
        except (ValueError, pd.errors.EmptyDataError) as error:
            problems.append(f"table {source.name} could not be read ({error})")
            continue
        shown = frame.head(MAX_TABLE_ROWS)
        rows = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
        tables.append(
            {
                "href": f"explain/{name}", "title": entry.get("title", source.stem), "caption": entry.get("caption", ""),
                "columns": [str(c) for c in frame.columns], "rows": rows, "total_rows": len(frame),
            }
        )
    return {"figures": figures, "tables": tables, "problems": problems}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return fmt_num(value, 4) if not float(value).is_integer() else str(int(value))
    return "" if value is None else str(value)


def _p(value: Any) -> str:
    """A p-value for display: 3 significant digits, '—' when not computed."""
    if not _finite(value):
        return "—"
    value = float(value)
    return f"{value:.3g}" if value >= 0.001 else f"{value:.2e}"


def _comparison(comparison: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """Display rows of one stats.Comparison.to_dict(): ranks (best first) and every pair."""
    methods = comparison["methods"]
    ranks = comparison["average_ranks"]
    means = comparison["mean_auc"]
    alpha = comparison["alpha"]
    rank_rows = [
        {"method": labels.get(m, m), "rank": fmt_num(ranks[m]), "mean": fmt_num(means[m])}
        for m in sorted(methods, key=lambda m: (ranks[m], m))
    ]
    pairs = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            holm_p = comparison["holm_p"][a][b]
            difference = means[a] - means[b]
            pairs.append(
                {"a": labels.get(a, a), "b": labels.get(b, b), "diff": fmt_signed(difference), "diff_class": sign_class(difference),
                 "p": _p(comparison["wilcoxon_p"][a][b]), "holm": _p(holm_p),
                 "significant": _finite(holm_p) and float(holm_p) <= alpha}
            )
    friedman = comparison.get("friedman") or {}
    return {
        "name": comparison.get("name", ""),
        "n_classes": len(comparison.get("classes", [])),
        "classes": comparison.get("classes", []),
        "k": len(methods),
        "alpha": alpha,
        "rank_rows": rank_rows,
        "pairs": pairs,
        "friedman_statistic": fmt_num(friedman.get("statistic"), 3),
        "friedman_p": _p(friedman.get("p")),
        "friedman_run": _finite(friedman.get("statistic")),
        "friedman_significant": _finite(friedman.get("p")) and float(friedman["p"]) <= alpha,
        "minimum_holm_p": _p(comparison.get("minimum_holm_p")),
        "critical_difference": fmt_num(comparison.get("nemenyi_critical_difference"), 2),
    }


def gather_statistics(agg_dir: Path, figures: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The statistics section from stats.json (``grad2vae aggregate``) and the cd_* figures."""
    path = agg_dir / "stats.json"
    if not path.is_file():
        return {"available": False, "reason": f"{path.name} not found; run `grad2vae aggregate` again", "datasets": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    labels = data.get("labels", {})
    paper_labels = {key: column["label"] for key, column in pub.published_columns().items()}
    diagrams = {f.get("dataset"): f for f in figures.get("stats", [])}
    datasets = []
    for dataset, section in data.get("datasets", {}).items():
        entry = {
            "dataset": dataset,
            "label": section.get("label", dataset),
            "ours": _comparison(section["ours"], labels) if section.get("ours") else None,
            "published": _comparison(section["published"], paper_labels) if section.get("published") else None,
            "skipped": section.get("skipped", []),
            "notes": section.get("notes", []),
            "diagram": diagrams.get(dataset),
        }
        datasets.append(entry)
    return {
        "available": True,
        "alpha": data.get("alpha"),
        "method": data.get("method", ""),
        "oracle_note": data.get("oracle_note", ""),
        "datasets": datasets,
    }


def gather_claims(agg_dir: Path) -> dict[str, Any]:
    """The claims section: claims.json (``grad2vae aggregate``) as it is, plus the evidence of
    each claim as indented JSON for display."""
    path = agg_dir / "claims.json"
    if not path.is_file():
        return {"available": False, "reason": f"{path.name} not found; run `grad2vae aggregate` again", "items": []}
    items = json.loads(path.read_text(encoding="utf-8"))
    for item in items:
        item["evidence_json"] = json.dumps(item.get("evidence"), indent=1, ensure_ascii=False)
        item["other_scores"] = [
            {"score": score, "verdict": judged["verdict"], "why": judged["why"]}
            for score, judged in (item.get("by_score") or {}).items() if score != "main"
        ]  # fmt: skip
    return {"available": True, "items": items}


def gather_ablations(agg_dir: Path) -> dict[str, Any]:
    """The Ablations section from ablations.json: per dataset, each variant beside its default
    (display strings) and the sentence on which choices matter; empty without variants."""
    path = agg_dir / "ablations.json"
    payload = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"datasets": {}}
    datasets = []
    for dataset, section in (payload.get("datasets") or {}).items():
        rows = [
            {
                "variant": model_label(row["variant"]),
                "base": model_label(row["base"]),
                "changes": row["changes"],
                "variant_auc": fmt_mean_std(row.get("variant_auc_pct"), row.get("variant_mstd")),
                "base_auc": fmt_mean_std(row.get("base_auc_pct"), row.get("base_mstd")),
                "difference": fmt_signed(row.get("difference_pct")),
                "difference_class": sign_class(row.get("difference_pct")),
                "n_classes": row.get("n_classes"),
                "p": _p(row.get("p")),
                "p_holm": _p(row.get("p_holm")),
                "significant": bool(row.get("significant")),
            }
            for row in section.get("rows", [])
        ]
        datasets.append({"dataset": dataset, "label": pub.dataset_label(dataset), "rows": rows, "sentence": section.get("sentence", "")})
    return {"datasets": datasets, "method": payload.get("method", "")}


def gather_scores(agg_dir: Path, figures: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The section "Which score, and what the attention path does": per dataset, the average AUC
    of every model under every score (scores.csv) and the sentences of score_findings.json."""
    table = _read_csv(agg_dir / "scores.csv") if (agg_dir / "scores.csv").is_file() else pd.DataFrame()
    findings_path = agg_dir / "score_findings.json"
    findings = json.loads(findings_path.read_text(encoding="utf-8")) if findings_path.is_file() else {}
    payload = json.loads((agg_dir / "aggregate.json").read_text(encoding="utf-8"))
    datasets = []
    for dataset in payload["grid"]["datasets"]:
        part = table[table["dataset"] == dataset] if not table.empty else table
        scores = list(dict.fromkeys(part["score"])) if not part.empty else []
        rows = []
        for model in (list(dict.fromkeys(part["model"])) if not part.empty else []):
            values = part[part["model"] == model].set_index("score")["auc_pct_mean"]
            label = entropy_only.LABEL if model == entropy_only.NAME else model_label(model)
            rows.append({"model": label, "cells": [fmt_num(values.get(score)) for score in scores]})
        datasets.append({"dataset": dataset, "label": pub.dataset_label(dataset), "scores": scores, "rows": rows,
                         "sentences": (findings.get(dataset) or {}).get("sentences", [])})  # fmt: skip
    return {"datasets": datasets, "entropy_note": payload.get("entropy_only", ""), "figures": figures.get("scores", [])}


def gather(results_dir: Path, agg_dir: Path, figures_dir: Path, explain_summary: Path, report_dir: Path) -> dict[str, Any]:
    payload_path = agg_dir / "aggregate.json"
    if not payload_path.is_file():
        raise UserError(f"{payload_path} not found; run `grad2vae aggregate` first")
    payload = json.loads(payload_path.read_text(encoding="utf-8"))
    grid = payload["grid"]
    runs = _read_csv(agg_dir / "runs.csv")
    status = _read_csv(agg_dir / "status.csv")
    averages = _read_csv(agg_dir / "averages.csv")
    table1 = _read_csv(agg_dir / "table1.csv")
    compute = _read_csv(agg_dir / "compute.csv")
    parameters = _read_csv(agg_dir / "parameters.csv")

    # figures: copy the PNGs listed in figures.json into REPORT/figures/
    manifest_path = figures_dir / "figures.json"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found; run `grad2vae figures` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    _fresh_dir(report_dir / "figures")
    figures: dict[str, list[dict[str, str]]] = {}
    for entry in manifest.get("figures", []):
        source = figures_dir / entry["file"]
        if not source.is_file():
            raise UserError(f"{source} is listed in {manifest_path} but missing; run `grad2vae figures` again")
        _copy(source, report_dir / "figures" / source.name)
        figures.setdefault(entry.get("section", "other"), []).append(
            {"src": f"figures/{source.name}", "title": entry.get("title", ""), "caption": entry.get("caption", ""),
             "dataset": entry.get("dataset", "")}
        )

    # the tables as downloadable CSVs
    _fresh_dir(report_dir / "data")
    downloads = []
    for name in ("table1.csv", "runs.csv", "summary.csv", "averages.csv", "status.csv", "compute.csv", "parameters.csv",
                 "stats.json", "claims.json", "ablations.json", "scores.csv", "entropy_only.csv"):
        if (agg_dir / name).is_file():
            _copy(agg_dir / name, report_dir / "data" / name)
            downloads.append({"href": f"data/{name}", "name": name})

    # Table 1 rows, with the layout (column groups) from aggregate.json
    layout = payload.get("table1_layout", [])
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
                    n=int(n) if _finite(n) else 0,
                    expected=expected,
                    incomplete=_finite(n) and int(n) < expected,
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
            {"dataset": row.get("dataset"), "dataset_label": row.get("dataset_label"), "class_label": row.get("class_label"),
             "is_average": is_average, "cells": cells}
        )
    # rowspan for the dataset cell
    for dataset in grid["datasets"]:
        rows = [r for r in table_rows if r["dataset"] == dataset]
        for i, r in enumerate(rows):
            r["dataset_rowspan"] = len(rows) if i == 0 else 0

    # summary: dataset averages, ours beside published
    summary_rows = []
    for row in _records(averages):
        summary_rows.append(
            {
                "dataset": pub.dataset_label(row["dataset"]),
                "model": model_label(row["model"]),
                "ours": fmt_num(row.get("auc_pct_mean")),
                "ours_reconstruction": fmt_num(row.get("auc_reconstruction_pct_mean")),
                "oracle": fmt_num(row.get("auc_oracle_pct_mean")) if _finite(row.get("auc_oracle_pct_mean")) else "",
                "mstd": fmt_num(row.get("mstd"), 3),
                "max_class_std": fmt_num(row.get("max_class_std"), 3),
                "published_label": pub.published_columns().get(row.get("published_column") or "", {}).get("label", ""),
                "published": fmt_num(row.get("published_average_pct")),
                "basis": row.get("published_average_basis") or "",
                "basis_note": (row.get("published_average_basis") or PRINTED_AVERAGE) != PRINTED_AVERAGE,
                "diff": fmt_signed(row.get("difference_pct")),
                "diff_class": sign_class(row.get("difference_pct")),
                "classes": f"{int(row.get('n_classes') or 0)}/{int(row.get('n_classes_expected') or 0)}",
                "runs": int(row.get("n_runs") or 0),
            }
        )


    param_rows = []
    for row in _records(parameters):
        param_rows.append(
            {"model": model_label(row["model"]), "dataset": pub.dataset_label(row["dataset"]),
             "latent_dim": fmt_int(row.get("latent_dim")), "ours": fmt_int(row.get("parameters")),
             "ours_m": fmt_num(row.get("parameters_millions"), 3), "paper_m": fmt_num(row.get("paper_millions"), 3),
             "ratio": fmt_num(row.get("ratio_to_paper"), 2)}
        )
    compute_rows = []
    for row in _records(compute):
        compute_rows.append(
            {"model": model_label(row["model"]), "dataset": pub.dataset_label(row["dataset"]), "device_type": row.get("device_type"),
             "runs": fmt_int(row.get("runs")), "mean_wall": fmt_num(row.get("mean_wall_seconds"), 1),
             "per_epoch": fmt_num(row.get("mean_seconds_per_epoch"), 2), "hours": fmt_num(row.get("wall_hours"), 3),
             "gpu_hours": fmt_num(row.get("gpu_hours"), 3)}
        )

    # run status: a dataset x model matrix of complete/expected, and the runs that are not complete
    status_matrix = []
    for dataset in grid["datasets"]:
        cells = []
        for model in model_order(grid["models"]):
            part = status[(status["dataset"] == dataset) & (status["model"] == model)] if not status.empty else status
            done = int((part["status"] == "complete").sum()) if len(part) else 0
            failed = int((part["status"] == "failed").sum()) if len(part) else 0
            cells.append({"complete": done, "failed": failed, "expected": int(len(part)),
                          "state": "ok" if len(part) and done == len(part) else ("bad" if failed else "partial")})
        status_matrix.append({"dataset": pub.dataset_label(dataset), "cells": cells})
    not_complete = _records(status[status["status"] != "complete"]) if not status.empty else []
    for row in not_complete:
        row["model_label"] = model_label(row["model"])
        row["dataset_label"] = pub.dataset_label(row["dataset"])

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
        "oracle_column": any(g["kind"] == "oracle" for g in layout),
        "statistics": gather_statistics(agg_dir, figures),
        "table_rows": table_rows,
        "average_note": any(c.get("published_note") for r in table_rows for c in r["cells"]),
        "summary_rows": summary_rows,
        "claims": gather_claims(agg_dir),
        "ablations": gather_ablations(agg_dir),
        "scores": gather_scores(agg_dir, figures),
        "param_rows": param_rows,
        "compute_rows": compute_rows,
        "figures": figures,
        "downloads": downloads,
        "status_matrix": status_matrix,
        "not_complete": not_complete,
        "deviations": protocol_deviations(workflow_config, runs),
        "assumptions": gather_assumptions(),
        "explain": gather_explain(explain_summary, report_dir),
        "provenance": provenance,
        "run_versions": provenance.get("run_versions", []),
        "workflow_config_text": json.dumps(workflow_config, indent=2, sort_keys=True) if workflow_config else "",
        "citation": pub.citation(),
        "citation_short": pub.load_published()["citation"]["short"],
        "doi": pub.load_published()["citation"]["doi"],
        "setup": pub.learning_setup(),
        "report_environment": {
            "grad2vae": __version__,
            "python": sys.version.split()[0],
            "git_commit": git_commit_label(Path.cwd()),
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
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
) -> Path:
    template_dir = template_dir or default_template_dir()
    if not (template_dir / TEMPLATE).is_file() or not (template_dir / STYLESHEET).is_file():
        raise UserError(f"{template_dir} lacks {TEMPLATE} or {STYLESHEET}; pass --template-dir (the repository's workflow/report)")
    report_dir.mkdir(parents=True, exist_ok=True)
    context = gather(
        results_dir,
        agg_dir or results_dir / "aggregate",
        figures_dir or results_dir / "figures",
        explain_summary or results_dir / "explain" / "summary.json",
        report_dir,
    )
    context["title"] = title
    page = render(context, template_dir)
    _copy(template_dir / STYLESHEET, report_dir / STYLESHEET)
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
    )
    log.info("report -> %s (open it in a browser: file://%s)", path, path.resolve())
    return 0
