"""The report's sections that render one aggregate file each (statistics, claims, ablations,
which score, explainability) and the display formats every section uses."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from grad2vae import published as pub
from grad2vae.analysis import entropy_only
from grad2vae.analysis.labels import model_label
from grad2vae.analysis.tables import read_table
from grad2vae.atomic import atomic_path
from grad2vae.captions import entry_caption
from grad2vae.errors import UserError

MAX_TABLE_ROWS = 200  # rows of an explain CSV shown inline (the whole file is linked)


# --------------------------------------------------------------------------------------------
# formatting helpers (jinja filters)
def is_finite_number(value: Any) -> bool:
    try:
        return value is not None and value != "" and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt_num(value: Any, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}" if is_finite_number(value) else "—"


def fmt_signed(value: Any, digits: int = 2) -> str:
    return f"{float(value):+.{digits}f}" if is_finite_number(value) else "—"


def sign_class(value: Any) -> str:
    if not is_finite_number(value):
        return "na"
    return "pos" if float(value) > 0 else ("neg" if float(value) < 0 else "zero")


def fmt_mean_std(mean: Any, std: Any, digits: int = 2) -> str:
    if not is_finite_number(mean):
        return "—"
    return (
        f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"
        if is_finite_number(std)
        else f"{float(mean):.{digits}f}"
    )


def fmt_int(value: Any) -> str:
    return f"{int(float(value)):,}" if is_finite_number(value) else "—"


def _safe_child(base: Path, relative: str) -> Path | None:
    """``base / relative`` if it stays inside ``base`` (no absolute paths, no ``..`` escapes)."""
    candidate = (base / relative).resolve()
    try:
        candidate.relative_to(base.resolve())
    except ValueError:
        return None
    return candidate


def copy_file(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def fresh_dir(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def gather_explain(
    summary_path: Path, report_dir: Path, template_dir: Path
) -> dict[str, Any] | None:
    """Copy the explain outputs into REPORT/explain/ and describe them; None if there are none."""
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{summary_path} is not valid JSON ({error})") from None
    base = summary_path.parent
    target = report_dir / "explain"
    fresh_dir(target)
    figures, tables, problems = [], [], []
    for index, entry in enumerate(summary.get("figures", []) or []):
        source = _safe_child(base, str(entry.get("file", "")))
        if source is None or not source.is_file():
            problems.append(
                f"figure {entry.get('file')!r} listed in {summary_path.name} was not found"
            )
            continue
        name = f"{index:02d}-{source.name}"
        copy_file(source, target / name)
        figures.append(
            {
                "src": f"explain/{name}",
                "title": entry.get("title", source.stem),
                "caption": entry_caption(template_dir, entry),
            }
        )
    for index, entry in enumerate(summary.get("tables", []) or []):
        source = _safe_child(base, str(entry.get("file", "")))
        if source is None or not source.is_file():
            problems.append(
                f"table {entry.get('file')!r} listed in {summary_path.name} was not found"
            )
            continue
        name = f"{index:02d}-{source.name}"
        copy_file(source, target / name)
        try:
            frame = pd.read_csv(source)
        except (ValueError, pd.errors.EmptyDataError) as error:
            problems.append(f"table {source.name} could not be read ({error})")
            continue
        shown = frame.head(MAX_TABLE_ROWS)
        rows = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
        tables.append(
            {
                "href": f"explain/{name}",
                "title": entry.get("title", source.stem),
                "caption": entry_caption(template_dir, entry),
                "columns": [str(c) for c in frame.columns],
                "rows": rows,
                "total_rows": len(frame),
            }
        )
    return {"figures": figures, "tables": tables, "problems": problems}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return fmt_num(value, 4) if not float(value).is_integer() else str(int(value))
    return "" if value is None else str(value)


def _p(value: Any) -> str:
    """A p-value for display: 3 significant digits, '—' when not computed."""
    if not is_finite_number(value):
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
        for b in methods[i + 1 :]:
            holm_p = comparison["holm_p"][a][b]
            difference = means[a] - means[b]
            pairs.append(
                {
                    "a": labels.get(a, a),
                    "b": labels.get(b, b),
                    "diff": fmt_signed(difference),
                    "diff_class": sign_class(difference),
                    "p": _p(comparison["wilcoxon_p"][a][b]),
                    "holm": _p(holm_p),
                    "significant": is_finite_number(holm_p) and float(holm_p) <= alpha,
                }
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
        "friedman_run": is_finite_number(friedman.get("statistic")),
        "friedman_significant": is_finite_number(friedman.get("p"))
        and float(friedman["p"]) <= alpha,
        "minimum_holm_p": _p(comparison.get("minimum_holm_p")),
        "critical_difference": fmt_num(comparison.get("nemenyi_critical_difference"), 2),
    }


def gather_statistics(agg_dir: Path, figures: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The statistics section from stats.json (``grad2vae aggregate``) and the cd_* figures."""
    path = agg_dir / "stats.json"
    if not path.is_file():
        return {
            "available": False,
            "reason": f"{path.name} not found; run `grad2vae aggregate` again",
            "datasets": [],
        }
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
            "published": _comparison(section["published"], paper_labels)
            if section.get("published")
            else None,
            "skipped": section.get("skipped", []),
            "notes": section.get("notes", []),
            "diagram": diagrams.get(dataset),
        }
        datasets.append(entry)
    return {
        "available": True,
        "alpha": data.get("alpha"),
        "method": data.get("method", ""),
        "bounds_note": data.get("bounds_note", ""),
        "datasets": datasets,
    }


def gather_claims(agg_dir: Path) -> dict[str, Any]:
    """The claims section: claims.json (``grad2vae aggregate``) as it is, plus the evidence of
    each claim as indented JSON for display, and each verdict's scope
    (``grad2vae.analysis.verdicts``) to show beside it. A claims.json written before verdicts had
    a scope gets one that says so and is never the paper's protocol; a score's scope is shown
    only where it differs from its claim's (``other_scores[].scope``, else empty)."""
    path = agg_dir / "claims.json"
    if not path.is_file():
        return {
            "available": False,
            "reason": f"{path.name} not found; run `grad2vae aggregate` again",
            "items": [],
        }
    unknown_scope = {
        "paper_protocol": False,
        "text": "scope not recorded (claims.json older than verdict scopes; aggregate again)",
        "shortfalls": [],
    }
    items = json.loads(path.read_text(encoding="utf-8"))
    for item in items:
        item["evidence_json"] = json.dumps(item.get("evidence"), indent=1, ensure_ascii=False)
        item["scope"] = item.get("scope") or unknown_scope
        item["other_scores"] = [
            {"score": score, "verdict": judged["verdict"], "why": judged["why"],
             "scope": "" if judged.get("scope", item["scope"]) == item["scope"]
             else (judged.get("scope") or unknown_scope)["text"]}
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
        datasets.append(
            {
                "dataset": dataset,
                "label": pub.dataset_label(dataset),
                "rows": rows,
                "sentence": section.get("sentence", ""),
            }
        )
    return {"datasets": datasets, "method": payload.get("method", "")}


def gather_scores(agg_dir: Path, figures: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The section "Which score, and what the attention path does": per dataset, the average AUC
    of every model under every score (scores.csv) and the sentences of score_findings.json."""
    table = (
        read_table(agg_dir / "scores.csv") if (agg_dir / "scores.csv").is_file() else pd.DataFrame()
    )
    findings_path = agg_dir / "score_findings.json"
    findings = (
        json.loads(findings_path.read_text(encoding="utf-8")) if findings_path.is_file() else {}
    )
    payload = json.loads((agg_dir / "aggregate.json").read_text(encoding="utf-8"))
    datasets = []
    for dataset in payload["grid"]["datasets"]:
        part = table[table["dataset"] == dataset] if not table.empty else table
        scores = list(dict.fromkeys(part["score"])) if not part.empty else []
        rows = []
        for model in list(dict.fromkeys(part["model"])) if not part.empty else []:
            values = part[part["model"] == model].set_index("score")["auc_pct_mean"]
            label = entropy_only.LABEL if model == entropy_only.NAME else model_label(model)
            rows.append({"model": label, "cells": [fmt_num(values.get(score)) for score in scores]})
        datasets.append(
            {
                "dataset": dataset,
                "label": pub.dataset_label(dataset),
                "scores": scores,
                "rows": rows,
                "sentences": (findings.get(dataset) or {}).get("sentences", []),
            }
        )
    return {
        "datasets": datasets,
        "entropy_note": payload.get("entropy_only", ""),
        "figures": figures.get("scores", []),
    }


# --------------------------------------------------------------------------------------------
# what the paper's Table 1 measures (claims.json's table1_metric, table1_pixel.csv)
#: a per-dataset result of claims.json in the report's words (verdicts.HOLDS, ...)
RESULT_WORDS = {"holds": "holds", "fails": "fails", "mixed": "holds in part",
                "unknown": "cannot be judged"}  # fmt: skip


def gather_table1_metric(agg_dir: Path, figures: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The section "What does the paper's Table 1 measure?": the claim ``table1_metric`` with,
    per dataset, every candidate's rank statistics against the printed column, the printed column
    against the printed baselines, and Table 1 under the pixel-level AUC beside the published
    column."""
    claims_path = agg_dir / "claims.json"
    claims = json.loads(claims_path.read_text(encoding="utf-8")) if claims_path.is_file() else []
    found = next((c for c in claims if c.get("id") == "table1_metric"), None)
    if found is None:
        return {"available": False, "reason": "claims.json has no table1_metric (aggregate again)"}
    pixel_path = agg_dir / "table1_pixel.csv"
    pixel = read_table(pixel_path) if pixel_path.is_file() else pd.DataFrame()
    datasets = []
    for dataset, result in found["evidence"]["ours"].items():
        candidates = [
            {
                "name": name,
                "classes": s.get("classes"),
                "spearman": fmt_num(s.get("spearman")),
                "spearman_p": fmt_num(s.get("spearman_p"), 3),
                "kendall": fmt_num(s.get("kendall")),
                "kendall_p": fmt_num(s.get("kendall_p"), 3),
                "mad": fmt_num(s.get("mad_points")),
                "level": s.get("matches", {}).get("level"),
                "order": s.get("matches", {}).get("order"),
            }  # fmt: skip
            for name, s in sorted(
                result.get("candidates", {}).items(),
                key=lambda item: _or_inf(item[1].get("mad_points")),
            )
        ]
        printed = [
            {"against": model_label(name) if name in pub.published_columns() else name,
             "spearman": fmt_num(s.get("spearman")), "spearman_p": fmt_num(s.get("spearman_p"), 3),
             "kendall": fmt_num(s.get("kendall")), "kendall_p": fmt_num(s.get("kendall_p"), 3)}
            for name, s in found["evidence"]["printed_table_alone"].get(dataset, {}).items()
        ]  # fmt: skip
        part = pixel[pixel["dataset"] == dataset] if not pixel.empty else pixel
        pairs = list(dict.fromkeys(zip(part["model"], part["score"]))) if len(part) else []
        rows = []
        for normal_class, cells in part.groupby("normal_class", sort=True) if len(part) else []:
            by_pair = {(r["model"], r["score"]): r for _, r in cells.iterrows()}
            first = cells.iloc[0]
            rows.append({
                "label": first["class_label"], "published": fmt_num(first["published_grad2vae"]),
                "cells": [fmt_mean_std(by_pair[p]["auc_pct_mean"], by_pair[p]["auc_pct_std"])
                          if p in by_pair else "—" for p in pairs],
            })  # fmt: skip
        datasets.append({
            "dataset": dataset, "label": pub.dataset_label(dataset),
            "result": RESULT_WORDS.get(result.get("result"), result.get("result")),
            "why": result.get("why"),
            "candidates": candidates, "printed": printed,
            "pixel_columns": [f"{model_label(m)} (ours), {c}" for m, c in pairs],
            "pixel_rows": rows,
        })  # fmt: skip
    return {
        "available": True,
        "verdict": found["verdict"],
        "why": found["why"],
        "definition": found["definition"],
        "scope": found.get("scope", {}).get("text", ""),
        "paper_protocol": found.get("scope", {}).get("paper_protocol", False),
        "datasets": datasets,
        "figures": figures.get("table1_metric", []),
    }


def _or_inf(value: Any) -> float:
    return float(value) if is_finite_number(value) else math.inf
