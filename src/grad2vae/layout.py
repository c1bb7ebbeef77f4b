"""Every path and file name that the workflow and the Python stages share, in one torch-free place.

``workflow/rules/common.smk`` imports these names (parsing the workflow imports no torch), and the
trainer, the aggregation, the figures and ``grad2vae explain`` write and read the same ones, so
the rules and the code cannot disagree. Paths with ``{placeholders}`` are relative to the results
folder and filled with ``str.format``.
"""

from __future__ import annotations

# ---- one training run, relative to the results folder
RUN_DIR = "runs/{dataset}/{model}/class{normal_class}/seed{seed}"
TRAIN_LOG = "logs/train/{dataset}/{model}/class{normal_class}/seed{seed}.log"
TRAIN_BENCHMARK = "benchmarks/train/{dataset}/{model}/class{normal_class}/seed{seed}.tsv"

# ---- the files in a run folder (see grad2vae.training.command's docstring)
METRICS = "metrics.json"  # written last: its presence means "finished"
HISTORY = "history.tsv"
SCORES = "scores.csv.gz"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
LOCK = ".train.lock"

# ---- the verified data of one dataset (`grad2vae fetch`): the official IDX names and the manifest
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MANIFEST_NAME = "MANIFEST.json"

# ---- what `grad2vae aggregate` writes into {results}/aggregate
AGGREGATE_FILES = (
    "runs.csv",
    "history.csv.gz",
    "status.csv",
    "summary.csv",
    "averages.csv",
    "table1.csv",
    "table1_pixel.csv",
    "compute.csv",
    "parameters.csv",
    "aggregate.json",
    "stats.json",
    "claims.json",
    "ablations.json",
    "scores.csv",
    "entropy_only.csv",
    "score_findings.json",
)
# what `grad2vae assumptions` writes into {results}: every choice the paper leaves open
ASSUMPTIONS_FILE = "assumptions.json"
# written beside them by `grad2vae entropy` (the one file of the folder that needs the data)
ENTROPY_TABLE = "entropy_only.csv"

# ---- what `grad2vae figures` writes into {results}/figures (plus one cd_{dataset}.png and one
# table1_metric_{dataset}.png per dataset and the ROC figure of the configured class)
FIGURE_FILES = (
    "fig6_auc_vs_epoch.png",
    "fig6_compute.png",
    "fig6_scores.png",
    "anomaly_ratio.png",
    "per_class_auc.png",
    "parameters.png",
    "compute.png",
    "figures.json",
)
CD_FIGURE = "cd_{dataset}.png"
TABLE1_METRIC_FIGURE = "table1_metric_{dataset}.png"
ROC_FIGURE = "roc_class{normal_class}.png"

# ---- what `grad2vae explain` writes into {results}/explain
EXPLAIN_SUMMARY = "summary.json"
EXPLAIN_FIGURES_PER_CLASS = (
    "fig3_second_derivatives_{dataset}_class{normal_class}.png",
    "fig4_attention_{dataset}_class{normal_class}.png",
)
EXPLAIN_FIGURES_PER_DATASET = ("fig5_attention_{dataset}.png", "deletion_curves_{dataset}.png")
EXPLAIN_TABLES = ("faithfulness.csv", "deletion_curves.csv")

# ---- the caption of every figure and table the report shows: a reStructuredText file in
# CAPTIONS_DIR of the report's templates (src/grad2vae/report/templates/captions), shown by
# `grad2vae report` and by `snakemake --report`
CAPTIONS_DIR = "captions"
CAPTIONS = {
    "fig6_auc_vs_epoch.png": "fig6.rst",
    "fig6_compute.png": "fig6_compute.rst",
    "fig6_scores.png": "fig6_scores.rst",
    "anomaly_ratio.png": "anomaly_ratio.rst",
    "per_class_auc.png": "per_class_auc.rst",
    "parameters.png": "parameters.rst",
    "compute.png": "compute.rst",
    CD_FIGURE: "critical_difference.rst",
    TABLE1_METRIC_FIGURE: "table1_metric.rst",
    ROC_FIGURE: "roc.rst",
    EXPLAIN_FIGURES_PER_CLASS[0]: "fig3.rst",
    EXPLAIN_FIGURES_PER_CLASS[1]: "fig4.rst",
    EXPLAIN_FIGURES_PER_DATASET[0]: "fig5.rst",
    EXPLAIN_FIGURES_PER_DATASET[1]: "deletion_curves.rst",
    EXPLAIN_TABLES[0]: "faithfulness.rst",
}
