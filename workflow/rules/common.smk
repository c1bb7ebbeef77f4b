# Helpers shared by all rule files (paths, the expected grid, command arguments).
# Every path and file name comes from grad2vae.layout (torch-free), so rules and code agree.

import json
import os
import sys

import grad2vae
from grad2vae import grid
from grad2vae.training.run_config import PROTOCOL_FIELDS, cli_flag
from grad2vae.layout import (
    AGGREGATE_FILES,
    ASSUMPTIONS_FILE,
    CAPTIONS,
    CAPTIONS_DIR,
    CD_FIGURE,
    ENTROPY_TABLE,
    EXPLAIN_FIGURES_PER_CLASS,
    EXPLAIN_FIGURES_PER_DATASET,
    EXPLAIN_SUMMARY as EXPLAIN_SUMMARY_NAME,
    EXPLAIN_TABLES,
    FIGURE_FILES,
    IDX_NAMES,
    MANIFEST_NAME,
    ROC_FIGURE,
    RUN_DIR,
    TABLE1_METRIC_FIGURE,
    TRAIN_BENCHMARK,
    TRAIN_LOG,
)

RESULTS = config["results_dir"].rstrip("/")
REPORT_DIR = config["report_dir"].rstrip("/")
DATA_DIR = config["data"]["dir"].rstrip("/")
REPORT_HTML = f"{REPORT_DIR}/index.html"
AGGREGATE_DIR = f"{RESULTS}/aggregate"
FIGURES_DIR = f"{RESULTS}/figures"
EXPLAIN_SUMMARY = f"{RESULTS}/explain/{EXPLAIN_SUMMARY_NAME}"
# the installed package (an editable install: src/grad2vae); the report's templates and
# captions are its package data, so that `pip install .` ships them
PACKAGE_DIR = os.path.dirname(grad2vae.__file__)
TEMPLATE_DIR = os.path.join(PACKAGE_DIR, "report", "templates")
# The trained models: the grid's `models` plus `extra_models` (presets/table1-complete.yaml adds
# deep_svdd and cae_ocsvm, Table 1's other two columns) plus every variant of `variants`
# (presets/ablation.yaml, presets/table1-own-protocols.yaml): a variant is a model name like any
# other from here on.
VARIANTS = config["variants"]
MODELS = grid.trained_models(config)
# the grid of runs, the one grad2vae.analysis.collect expects too
GRID = dict(
    datasets=config["datasets"],
    normal_classes=config["normal_classes"],
    models=MODELS,
    seeds=config["seeds"],
    model_classes=grid.model_classes(config),
)


def check_variants():
    """Every variant's options against its model's constructor (grad2vae.models.check_options)
    and its schedule, before any job runs: a WorkflowError names the variant and what is wrong.
    Imports torch only when there are variants."""
    if not VARIANTS:
        return
    from grad2vae.errors import UserError
    from grad2vae.models import check_options
    from grad2vae.schedule import check_schedule

    for name, variant in VARIANTS.items():
        try:
            check_options(
                variant["model"], variant.get("options", {}), label=f"variant {name}"
            )
            train = model_protocol(name)
            check_schedule(train["lr_decay_epoch"], train["lr_steps"])
        except (UserError, ValueError) as error:
            raise WorkflowError(f"variants: {error}") from None


def variant_options(model):
    """--base-model and --option of a variant's runs (none for a registered model): with the
    variant's name as --model. Part of the protocol, so a changed option re-runs the variant;
    a plain model's command line is the same as before variants existed (nothing re-runs).
    """
    if model not in VARIANTS:
        return []
    variant = VARIANTS[model]
    options = [
        f"--option {key}={value}" for key, value in variant.get("options", {}).items()
    ]
    return [f"--base-model {variant['model']}"] + options


def registered_model(model):
    """The registry name behind a model name of the grid (a variant's `model`)."""
    return VARIANTS[model]["model"] if model in VARIANTS else model


def model_protocol(model):
    """The `train` settings of a model name's runs: `train`, then `model_train` of its registered
    model, then (a variant) the variant's own `train`."""
    base = registered_model(model)
    protocol = config["train"] | config["model_train"].get(base, {})
    if model in VARIANTS:
        protocol = protocol | VARIANTS[model].get("train", {})
    return protocol


# The category of each figure in `snakemake --report` (its caption: layout.CAPTIONS).
REPORT_CATEGORIES = {
    "fig6_auc_vs_epoch.png": "Training (Fig. 6)",
    "fig6_compute.png": "Training (Fig. 6)",
    "fig6_scores.png": "Scores",
    "anomaly_ratio.png": "Scores",
    "per_class_auc.png": "Results (Table 1)",
    ROC_FIGURE: "Results (Table 1)",
    CD_FIGURE: "Statistical tests",
    TABLE1_METRIC_FIGURE: "What Table 1 measures",
    "parameters.png": "Models and compute",
    "compute.png": "Models and compute",
}


def report_output(path, name, category=None, subcategory=None):
    """``path``, marked for `snakemake --report` with the caption file of ``name`` (its pattern
    in grad2vae.layout.CAPTIONS, the one `grad2vae report` shows too) if it has one."""
    if name not in CAPTIONS:
        return path
    return report(
        path,
        caption=f"{TEMPLATE_DIR}/{CAPTIONS_DIR}/{CAPTIONS[name]}",
        category=category or REPORT_CATEGORIES[name],
        subcategory=subcategory,
    )


def source_files():
    """The package's Python files (the assumptions rule's input: each states its assumptions)."""
    return sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(PACKAGE_DIR)
        for name in names
        if name.endswith(".py")
    )


def caption_files():
    """Every caption file the report shows (a changed caption renders the report again)."""
    return [
        f"{TEMPLATE_DIR}/{CAPTIONS_DIR}/{name}"
        for name in sorted(set(CAPTIONS.values()))
    ]


def figure_files():
    """What `grad2vae figures` writes: FIGURE_FILES, a critical-difference diagram per dataset;
    the figures marked for `snakemake --report`."""
    files = [report_output(f"{FIGURES_DIR}/{name}", name) for name in FIGURE_FILES]
    return files + [
        report_output(
            f"{FIGURES_DIR}/{pattern.format(dataset=d)}", pattern, subcategory=d
        )
        for pattern in (CD_FIGURE, TABLE1_METRIC_FIGURE)
        for d in config["datasets"]
    ]


def up(path, levels=1):
    """The folder ``levels`` levels above ``path`` (params derived from input/output paths)."""
    for _ in range(levels):
        path = os.path.dirname(path)
    return path


def dataset_files(dataset):
    """The verified files of one dataset that `grad2vae fetch` leaves in the data dir."""
    return [f"{DATA_DIR}/{dataset}/{name}" for name in IDX_NAMES + (MANIFEST_NAME,)]


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
    return grid.run_keys(GRID)


def expected_metrics():
    """metrics.json of every run of the grid."""
    return [f"{RESULTS}/{RUN_DIR.format(**key)}/metrics.json" for key in run_keys()]


def expected_run_outputs():
    """Every file a training job declares, for the whole grid; none with allow_partial (a report
    of what exists must not wait for the rest)."""
    if config["allow_partial"]:
        return []
    names = ("metrics.json", "history.tsv", "scores.csv.gz", "model.pt")
    return [
        f"{RESULTS}/{RUN_DIR.format(**key)}/{name}"
        for key in run_keys()
        for name in names
    ]


def aggregate_runs(wildcards):
    """The runs the aggregation waits for: the whole grid, or (allow_partial) only those that
    exist now, so that a grid with failed runs still gets its report."""
    wanted = expected_metrics()
    if config["allow_partial"]:
        return [path for path in wanted if os.path.exists(path)]
    return wanted


def roc_scores(wildcards):
    """scores.csv.gz of the runs drawn in the ROC figure (every seed of the ROC class)."""
    roc_class = grid.roc_class(config["figures"]["roc_class"], config["normal_classes"])
    paths = [
        f"{RESULTS}/{RUN_DIR.format(**key)}/scores.csv.gz"
        for key in run_keys()
        if key["normal_class"] == roc_class
    ]
    if config["allow_partial"]:
        return [path for path in paths if os.path.exists(path)]
    return paths


def roc_figure():
    roc_class = grid.roc_class(config["figures"]["roc_class"], config["normal_classes"])
    path = f"{FIGURES_DIR}/{ROC_FIGURE.format(normal_class=roc_class)}"
    return report_output(path, ROC_FIGURE)


def train_options(wildcards):
    """`grad2vae train` options that define a run's results (its protocol): a change re-runs it.
    config["model_train"][model] overrides config["train"] for that model (e.g. Deep SVDD's own
    schedule in presets/table1-complete.yaml); a variant's `train` overrides both."""
    train = model_protocol(wildcards.model)
    steps = [f"{epoch}:{lr}" for epoch, lr in train["lr_steps"]]
    # one option per RunConfig protocol field, in PROTOCOL_FIELDS' order (the command line is a
    # re-run trigger: the order is that of every finished run)
    return " ".join(
        variant_options(wildcards.model)
        + ([f"--lr-steps {' '.join(steps)}"] if steps else [])
        + [f"{cli_flag(field)} {train[field]}" for field in PROTOCOL_FIELDS]
    )


def execution_options(wildcards, threads):
    """How a run executes, not what it computes: device, GPU slots, checkpoint interval and
    Grad2VAE's second-derivative implementation.
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
    if train["jobs_per_gpu"] != 1:
        options.append(f"--jobs-per-gpu {train['jobs_per_gpu']}")
    # equal results up to rounding (tests/test_second_derivatives.py), so not a re-run trigger
    options.append(f"--derivatives {train['derivatives']}")
    options.append(f"--seed-batching {train['seed_batching']}")
    return " ".join(options)


# A training job trains one seed (`rule train`) or, with train.seeds_per_job > 1, a group of
# seeds in one process (one `train_seeds_*` rule per group). Both run TRAIN_SHELL with the seeds
# and run folder derived from their outputs, so switching seeds_per_job re-runs nothing.
RUN_FOLDER = "seed{seed}"  # the last part of RUN_DIR (train_run_dir relies on it)
if os.path.basename(RUN_DIR) != RUN_FOLDER:
    raise WorkflowError(f"RUN_DIR {RUN_DIR!r} must end in {RUN_FOLDER}")


def seed_groups():
    """config["seeds"] in chunks of train.seeds_per_job, in order."""
    seeds, size = config["seeds"], config["train"]["seeds_per_job"]
    return [seeds[start : start + size] for start in range(0, len(seeds), size)]


def seed_group_paths(template, seeds):
    """`{RESULTS}/template` for each seed, other wildcards left in place."""
    return [f"{RESULTS}/{template}".replace("{seed}", str(seed)) for seed in seeds]


def _metrics_paths(output):
    return [output.metrics] if isinstance(output.metrics, str) else list(output.metrics)


def train_seeds(wildcards, output):
    """--seed of a training job: the seed of each metrics.json it makes."""
    return " ".join(
        os.path.basename(os.path.dirname(path)).removeprefix("seed")
        for path in _metrics_paths(output)
    )


def train_run_dir(wildcards, output):
    """--out-dir of a training job: its run folder with a {seed} placeholder."""
    return os.path.join(
        os.path.dirname(os.path.dirname(_metrics_paths(output)[0])), RUN_FOLDER
    )


def train_resource(name, seeds=1):
    """resources.train[name] of a job training ``seeds`` seeds (mem_mb, runtime scale with it)."""
    value = config["resources"]["train"][name]
    return value * seeds if name in ("mem_mb", "runtime") else value


def latent_dim(wildcards):
    return config["latent_dim"][wildcards.dataset]


def explain_inputs(wildcards):
    """{results}/explain/summary.json when a rule named `explain` makes it (the report then waits
    for it) or when the file is already there; else nothing, and the report has no such section.
    """
    if rules.has("explain") or os.path.exists(EXPLAIN_SUMMARY):
        return [EXPLAIN_SUMMARY]
    return []


def config_json():
    return json.dumps(config, sort_keys=True)


# ---- explainability targets (rule in explain.smk) ----

EXPLAIN_DIR = os.path.dirname(EXPLAIN_SUMMARY)
EXPLAIN_MODELS = grid.EXPLAIN_MODELS


def explain_run_dir(dataset, model, normal_class):
    key = dict(
        dataset=dataset,
        model=model,
        normal_class=normal_class,
        seed=config["explain"]["seed"],
    )
    return f"{RESULTS}/{RUN_DIR.format(**key)}"


def explain_targets():
    """(datasets, normal classes) to explain (grad2vae.grid.explain_targets); with allow_partial,
    only classes whose runs all exist now. Says on stderr what it skipped."""
    run_exists = None
    if config["allow_partial"]:
        run_exists = lambda d, m, c: os.path.exists(
            f"{explain_run_dir(d, m, c)}/metrics.json"
        )
    datasets, classes, skipped = grid.explain_targets(config, run_exists)
    if skipped:
        print(
            "explain: skipped (not in the training grid): " + ", ".join(skipped),
            file=sys.stderr,
        )
    return datasets, classes


def explain_figure_classes(number):
    """The explained classes that Fig. `number` shows: explain.fig{number}_classes among the
    explained ones (null: all). Configured classes that are not explained here are skipped with
    a message; if none is left, the figure shows every explained class (said too)."""
    shown, missing = grid.figure_classes(
        config["explain"][f"fig{number}_classes"], EXPLAIN_CLASSES
    )
    if missing:
        print(
            f"explain: Fig. {number}: classes {missing} of explain.fig{number}_classes are not "
            f"explained here (explain.normal_classes within the grid: {EXPLAIN_CLASSES}); "
            + (
                f"it shows {shown}"
                if shown
                else "it shows every explained class instead"
            ),
            file=sys.stderr,
        )
    return shown or list(EXPLAIN_CLASSES)


EXPLAIN_DATASETS, EXPLAIN_CLASSES = explain_targets()
EXPLAIN_FIGURE_CLASSES = {n: explain_figure_classes(n) for n in (3, 4, 5)}


def explain_runs():
    return [
        f"{explain_run_dir(d, m, c)}/{name}"
        for d in EXPLAIN_DATASETS
        for c in EXPLAIN_CLASSES
        for m in EXPLAIN_MODELS
        for name in ("metrics.json", "model.pt")
    ]


def explain_figures():
    """What `grad2vae explain` draws, marked for `snakemake --report`."""
    figures = []
    shown = (EXPLAIN_FIGURE_CLASSES[3], EXPLAIN_FIGURE_CLASSES[4])
    for dataset in EXPLAIN_DATASETS:
        for normal_class in EXPLAIN_CLASSES:
            figures += [
                (
                    pattern,
                    pattern.format(dataset=dataset, normal_class=normal_class),
                    dataset,
                )
                for pattern, classes in zip(EXPLAIN_FIGURES_PER_CLASS, shown)
                if normal_class in classes
            ]
        figures += [
            (pattern, pattern.format(dataset=dataset), dataset)
            for pattern in EXPLAIN_FIGURES_PER_DATASET
        ]
    return [
        report_output(f"{EXPLAIN_DIR}/{name}", pattern, "Explainability", dataset)
        for pattern, name, dataset in figures
    ]


def explain_tables():
    """The tables `grad2vae explain` writes; those with a caption marked for the report."""
    return [
        report_output(f"{EXPLAIN_DIR}/{name}", name, "Explainability")
        for name in EXPLAIN_TABLES
    ]


def explain_options():
    """`grad2vae explain` options from config["explain"]."""
    wanted = config["explain"]
    options = [
        f"--seed {wanted['seed']}",
        f"--fig4-images {wanted['fig4_images']}",
        f"--faithfulness-per-class {wanted['faithfulness_per_class']}",
        f"--fill {wanted['fill']}",
        f"--max-fraction {wanted['max_fraction']}",
        f"--steps {wanted['steps']}",
        f"--random-repeats {wanted['random_repeats']}",
        f"--device {wanted['device']}",
    ]
    if wanted["units"]:
        options.append("--units " + " ".join(str(u) for u in wanted["units"]))
    for number, classes in EXPLAIN_FIGURE_CLASSES.items():
        options.append(f"--fig{number}-classes " + " ".join(str(c) for c in classes))
    return " ".join(options)


check_variants()
