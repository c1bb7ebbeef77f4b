"""Draw the report's figures (PNG, seaborn) from the aggregated tables and the runs' scores.

Reads AGG (default RESULTS/aggregate, written by `grad2vae aggregate`) and, for the ROC curves,
RESULTS/runs/.../scores.csv.gz; writes into OUT (default RESULTS/figures):
  fig6_auc_vs_epoch.png  Fig. 6: test AUC against epoch over the first 50 epochs, one panel per
                         dataset, mean over normal classes and seeds with a +-1 sd band
  fig6_compute.png       Fig. 6 against cumulative training FLOPs and training seconds
  fig6_scores.png        Fig. 6 once per score (main, mse, bce_excess, *_zero_noise), with the
                         model-free entropy-only AUC
  anomaly_ratio.png      mean reconstruction score of anomalous over normal test images, per epoch
  per_class_auc.png      per normal class: our mean AUC +- std over seeds for every model, with
                         the paper's Table 1 values as hollow markers
  roc_class{C}.png       ROC curves of every model for normal class C (one seed), per dataset
  parameters.png         our parameter counts beside the paper's
  compute.png            seconds per epoch, and device-hours (GPU-hours on CUDA) per model
  cd_{dataset}.png       critical-difference diagram of each dataset, from stats.json (average
                         ranks over the normal classes, bars = Wilcoxon-Holm not significant);
                         where the grid is too small for the tests, a figure saying why
  figures.json           every figure with its title, caption file (report/templates/captions) and
                         the details only this run can say; read by `grad2vae report`
A figure with no data to show is still written, saying so, so that a partial grid always gets a
complete set of files.

Example: grad2vae figures --results-dir results --roc-class 0
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import seaborn as sns

from grad2vae import grid as grid_module
from grad2vae.analysis.bounds import real_runs
from grad2vae.analysis.labels import model_order
from grad2vae.analysis.tables import read_table
from grad2vae.atomic import write_json
from grad2vae.errors import UserError
from grad2vae.figures.plotting import palette
from grad2vae.figures.results import (
    compute,
    critical_difference,
    parameters,
    per_class,
    roc,
    table1_metric_figures,
)
from grad2vae.figures.training import anomaly_ratio, fig6, fig6_compute, fig6_scores
from grad2vae.layout import ROC_FIGURE

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir", default="results", help="folder holding runs/ (default: results)"
    )
    parser.add_argument(
        "--aggregate-dir", help="output of `grad2vae aggregate` (default: RESULTS/aggregate)"
    )
    parser.add_argument("--out-dir", help="where to write the PNGs (default: RESULTS/figures)")
    parser.add_argument(
        "--roc-class",
        type=int,
        default=None,
        help="normal class of the ROC figure (default: the grid's first)",
    )
    parser.add_argument(
        "--fig6-epochs",
        type=int,
        default=50,
        help="epochs shown in Fig. 6 (default: 50, as the paper)",
    )
    parser.add_argument(
        "--dpi", type=int, default=110, help="resolution of the PNGs (default: 110)"
    )


def draw_all(
    results_dir: Path,
    agg_dir: Path,
    out_dir: Path,
    roc_class: int | None,
    fig6_epochs: int,
    dpi: int,
) -> list[dict]:
    payload_path = agg_dir / "aggregate.json"
    if not payload_path.is_file():
        raise UserError(f"{payload_path} not found; run `grad2vae aggregate` first")
    payload = json.loads(payload_path.read_text(encoding="utf-8"))
    grid = payload["grid"]
    grid["models"] = model_order(grid["models"])
    runs = read_table(agg_dir / "runs.csv")
    summary = read_table(agg_dir / "summary.csv")
    params = read_table(agg_dir / "parameters.csv")
    compute_table = read_table(agg_dir / "compute.csv")
    entropy = (
        read_table(agg_dir / "entropy_only.csv")
        if (agg_dir / "entropy_only.csv").is_file()
        else pd.DataFrame()
    )
    history_path = agg_dir / "history.csv.gz"
    history = (
        pd.read_csv(history_path)
        if history_path.is_file() and history_path.stat().st_size > 30
        else pd.DataFrame()
    )
    if roc_class is not None and roc_class not in grid["normal_classes"]:
        log.warning(
            "ROC class %s is not in the grid; using %s", roc_class, grid["normal_classes"][0]
        )
    roc_class = grid_module.roc_class(roc_class, grid["normal_classes"])

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    colours = palette(grid["models"])
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [
        fig6(history, grid, colours, fig6_epochs, out_dir / "fig6_auc_vs_epoch.png", dpi),
        fig6_compute(history, real_runs(runs), grid, colours, out_dir / "fig6_compute.png", dpi),
        fig6_scores(history, entropy, grid, colours, fig6_epochs, out_dir / "fig6_scores.png", dpi),
        anomaly_ratio(history, grid, colours, out_dir / "anomaly_ratio.png", dpi),
        per_class(summary, grid, colours, out_dir / "per_class_auc.png", dpi),
        roc(
            results_dir,
            runs,
            grid,
            colours,
            roc_class,
            out_dir / ROC_FIGURE.format(normal_class=roc_class),
            dpi,
        ),
        parameters(params, grid, out_dir / "parameters.png", dpi),
        compute(compute_table, grid, colours, out_dir / "compute.png", dpi),
    ]
    statistics = json.loads((agg_dir / "stats.json").read_text(encoding="utf-8"))
    entries += critical_difference(statistics, grid, out_dir, dpi)
    entries += table1_metric_figures(summary, grid, out_dir, dpi)
    write_json(out_dir / "figures.json", {"figures": entries})
    return entries


def run(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    agg_dir = Path(args.aggregate_dir) if args.aggregate_dir else results_dir / "aggregate"
    out_dir = Path(args.out_dir) if args.out_dir else results_dir / "figures"
    if args.fig6_epochs < 1:
        raise UserError("--fig6-epochs must be at least 1")
    entries = draw_all(results_dir, agg_dir, out_dir, args.roc_class, args.fig6_epochs, args.dpi)
    log.info("%d figures -> %s", len(entries), out_dir)
    return 0
