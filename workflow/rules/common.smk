# Helpers shared by all rule files (paths, the expected grid, command arguments).
# The run-directory layout comes from grad2vae.aggregate, so rules and aggregation agree.

import json
import os

from grad2vae.aggregate import RUN_DIR, TRAIN_BENCHMARK, TRAIN_LOG

RESULTS = config["results_dir"].rstrip("/")
REPORT_DIR = config["report_dir"].rstrip("/")
DATA_DIR = config["data"]["dir"].rstrip("/")
REPORT_HTML = f"{REPORT_DIR}/index.html"
AGGREGATE_DIR = f"{RESULTS}/aggregate"
FIGURES_DIR = f"{RESULTS}/figures"
EXPLAIN_SUMMARY = f"{RESULTS}/explain/summary.json"
TEMPLATE_DIR = os.path.join(workflow.basedir, "workflow", "report")

# The official IDX file names of both datasets (tests/test_workflow.py checks them against
# grad2vae.data.DATASETS; not imported here, so that parsing the workflow needs no torch).
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MANIFEST = "MANIFEST.json"

AGGREGATE_FILES = (
    "runs.csv",
    "history.csv.gz",
    "status.csv",
    "summary.csv",
    "averages.csv",
    "table1.csv",
    "compute.csv",
    "parameters.csv",
    "aggregate.json",
)
FIGURE_FILES = (
    "fig6_auc_vs_epoch.png",
    "per_class_auc.png",
    "parameters.png",
    "compute.png",
    "figures.json",
)


def up(path, levels=1):
    """The folder ``levels`` levels above ``path`` (params derived from input/output paths)."""
    for _ in range(levels):
        path = os.path.dirname(path)
    return path


def dataset_files(dataset):
    """The verified files of one dataset that `grad2vae fetch` leaves in the data dir."""
    return [f"{DATA_DIR}/{dataset}/{name}" for name in IDX_NAMES + (MANIFEST,)]


def fetch_options(wildcards, output):
    """Where `grad2vae fetch` looks (sources in order, local folder). Derived from `output`, so
    that Snakemake does not re-fetch when only these change: the files are the same, verified
    by their SHA-256 whatever their source."""
    options = ["--sources " + " ".join(config["data"]["sources"])]
    if config["data"]["local_dir"]:
        options.append(f"--local-dir {config['data']['local_dir']}")
    return " ".join(options)


def train_data(wildcards):
    # ancient(): refetching or re-verifying the data (new mtimes) must not retrain 800 runs.
    return [ancient(path) for path in dataset_files(wildcards.dataset)]


def run_keys():
    for dataset in config["datasets"]:
        for normal_class in config["normal_classes"]:
            for model in config["models"]:
                for seed in config["seeds"]:
                    yield dict(
                        dataset=dataset,
                        model=model,
                        normal_class=normal_class,
                        seed=seed,
                    )


def expected_metrics():
    """metrics.json of every run of the grid."""
    return [f"{RESULTS}/{RUN_DIR.format(**key)}/metrics.json" for key in run_keys()]


def aggregate_runs(wildcards):
    """The runs the aggregation waits for: the whole grid, or (allow_partial) only those that
    exist now, so that a grid with failed runs still gets its report."""
    wanted = expected_metrics()
    if config["allow_partial"]:
        return [path for path in wanted if os.path.exists(path)]
    return wanted


def roc_scores(wildcards):
    """scores.csv.gz of the runs drawn in the ROC figure (every seed of the ROC class)."""
    roc_class = config["figures"]["roc_class"]
    if roc_class not in config["normal_classes"]:
        roc_class = config["normal_classes"][0]
    paths = [
        f"{RESULTS}/{RUN_DIR.format(**key)}/scores.csv.gz"
        for key in run_keys()
        if key["normal_class"] == roc_class
    ]
    if config["allow_partial"]:
        return [path for path in paths if os.path.exists(path)]
    return paths


def roc_figure():
    roc_class = config["figures"]["roc_class"]
    if roc_class not in config["normal_classes"]:
        roc_class = config["normal_classes"][0]
    return f"{FIGURES_DIR}/roc_class{roc_class}.png"


def train_options():
    """`grad2vae train` options that define a run's results (its protocol): a change re-runs it."""
    train = config["train"]
    return " ".join(
        [
            f"--epochs {train['epochs']}",
            f"--batch-size {train['batch_size']}",
            f"--lr {train['lr']}",
            f"--lr-decay-epoch {train['lr_decay_epoch']}",
            f"--lr-decay-factor {train['lr_decay_factor']}",
            f"--eval-every {train['eval_every']}",
            f"--eval-batch-size {train['eval_batch_size']}",
            f"--train-limit {train['train_limit']}",
            f"--test-limit {train['test_limit']}",
        ]
    )


def execution_options(wildcards, threads):
    """How a run executes, not what it computes: device, GPU slots, checkpoint interval.
    Taking `threads` makes this a param derived from the job's execution settings, which
    Snakemake does not use as a re-run trigger: switching `device: auto` to `cuda` (or adding
    GPU slots) must not re-run 800 finished runs. The protocol (train_options) does re-run.
    """
    train = config["train"]
    options = [
        f"--device {train['device']}",
        f"--checkpoint-every {train['checkpoint_every']}",
        f"--threads {threads}",
    ]
    if train["gpu_slots"] is not None:
        options.append(f"--gpu-slots {train['gpu_slots']}")
    return " ".join(options)


def latent_dim(wildcards):
    return config["latent_dim"][wildcards.dataset]


def explain_inputs(wildcards):
    """{results}/explain/summary.json when a rule named `explain` makes it (the report then waits
    for it) or when the file is already there; else nothing, and the report has no such section."""
    if rules.has("explain") or os.path.exists(EXPLAIN_SUMMARY):
        return [EXPLAIN_SUMMARY]
    return []


def config_json():
    return json.dumps(config, sort_keys=True)
