"""The Snakemake workflow through the `snakemake` command: configuration checks, the 800-job dry
run, lint and format, and (slow) a tiny configuration end to end, including a partial report."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import write_synthetic_dataset
from test_report import check_report_in_browser, parse

from grad2vae.layout import (
    CAPTIONS,
    CAPTIONS_DIR,
    CD_FIGURE,
    ROC_FIGURE,
    RUN_DIR,
    TABLE1_METRIC_FIGURE,
    TRAIN_LOG,
)
from grad2vae.report.command import default_template_dir

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CAPTION_FOLDER = default_template_dir() / CAPTIONS_DIR  # the package's templates


def snakemake(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in the repository root, with this environment's `grad2vae` on PATH.
    --nolock: tests must not collide with (or be blocked by) a pipeline the user is running."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--nolock", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'job  count' table that a dry run prints."""
    counts = {}
    for line in output.splitlines():
        match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s+(\d+)\s*", line)
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def index_text(report: Path) -> str:
    return (report / "index.html").read_text(encoding="utf-8")


def write_config(path: Path, payload: dict) -> Path:
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# configuration


def test_paper_config_dry_run_lists_800_training_jobs(tmp_path):
    started = time.monotonic()
    result = snakemake(
        "-n",
        "--quiet",
        "rules",
        "--config",
        f"results_dir={tmp_path / 'results'}",
        f"report_dir={tmp_path / 'report'}",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout + result.stderr)
    assert counts["train"] == 800 == 2 * 10 * 4 * 10
    for rule in ("workflow_config", "aggregate", "figures", "report", "all"):
        assert counts[rule] == 1
    assert time.monotonic() - started < 120


def test_table1_complete_preset_adds_deep_svdd_and_cae_ocsvm(tmp_path):
    """presets/table1-complete.yaml: 1200 training jobs (config.yaml's 800 + 400), Deep SVDD with
    its source's schedule, the other models' commands unchanged."""
    overlay = write_config(
        tmp_path / "overlay.yaml",
        {"results_dir": str(tmp_path / "r"), "report_dir": str(tmp_path / "p")},
    )
    result = snakemake("-n", "-p", "--configfile", "presets/table1-complete.yaml", str(overlay))
    assert result.returncode == 0, result.stderr + result.stdout
    output = result.stdout + result.stderr
    assert job_counts(output)["train"] == 1200 == 2 * 10 * 6 * 10
    commands = [line for line in output.splitlines() if "grad2vae train" in line]
    per_model = {
        m: [c for c in commands if f"--model {m} " in c]
        for m in ("deep_svdd", "cae_ocsvm", "grad2vae")
    }
    assert all(len(v) == 200 for v in per_model.values())
    assert all(
        "--epochs 150 --batch-size 200 --lr 0.0001 --lr-decay-epoch 50 --lr-decay-factor 0.1 "
        "--eval-every 0" in c
        for c in per_model["deep_svdd"]
    )
    assert all(
        "--epochs 100 --batch-size 128" in c and "--eval-every 0" in c
        for c in per_model["cae_ocsvm"]
    )
    assert all(
        "--epochs 100 --batch-size 128 --lr 0.001" in c and "--eval-every 1" in c
        for c in per_model["grad2vae"]
    )
    preset = yaml.safe_load((ROOT / "presets" / "table1-complete.yaml").read_text())
    assert preset["extra_models"] == ["deep_svdd", "cae_ocsvm"]
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert paper["extra_models"] == [] and paper["model_train"] == {}


def test_quick_preset_dry_run(tmp_path):
    overlay = write_config(
        tmp_path / "overlay.yaml",
        {"results_dir": str(tmp_path / "r"), "report_dir": str(tmp_path / "p")},
    )
    result = snakemake("-n", "-p", "--configfile", "presets/quick.yaml", str(overlay))
    assert result.returncode == 0, result.stderr + result.stdout
    output = result.stdout + result.stderr
    assert job_counts(output)["train"] == 16  # 2 datasets x 2 classes x 4 models x 1 seed
    commands = [line for line in output.splitlines() if "grad2vae train" in line]
    assert commands and all(
        "--epochs 2" in c and "--device cpu" in c and "--train-limit" in c for c in commands
    )
    assert any("--latent-dim 32" in c and "fashion_mnist" in c for c in commands)
    assert any("--latent-dim 16" in c and "--dataset mnist" in c for c in commands)


def test_quick_preset_keeps_its_own_results_and_writes_the_readme_report():
    quick = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert quick["results_dir"] != paper["results_dir"]
    # the README's quick start promises report/index.html
    assert (
        quick["report_dir"] == "report" and "report/index.html" in (ROOT / "README.md").read_text()
    )
    assert (
        quick["resources"]["train"]["gpu"] == 0
        and quick["seeds"] == [0]
        and len(quick["normal_classes"]) == 2
    )


def test_paper_config_is_the_paper_protocol():
    from grad2vae.published import learning_setup

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    setup = learning_setup()
    assert config["datasets"] == ["mnist", "fashion_mnist"]
    assert config["normal_classes"] == list(range(10)) and config["seeds"] == list(range(10))
    assert sorted(config["models"]) == ["cae", "grad2vae", "inception_caenn", "vae"]
    assert config["latent_dim"] == setup["latent_dim"]
    for key in ("epochs", "batch_size", "lr", "lr_decay_epoch", "lr_decay_factor"):
        assert config["train"][key] == setup[key], key
    assert config["train"]["eval_every"] == 1 and config["resources"]["train"]["gpu"] == 1


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"train": {"epoch": 3}}, ["train", "'epoch' was unexpected"]),
        ({"bogus_key": 1}, ["(top level)", "'bogus_key' was unexpected"]),
        ({"datasets": ["mnist", "cifar10"]}, ["datasets.1", "'cifar10' is not one of"]),
        ({"train": {"epochs": 0}}, ["train.epochs", "less than the minimum"]),
        (
            {"model_train": {"deep_svdd": {"epoch": 3}}},
            ["model_train.deep_svdd", "'epoch' was unexpected"],
        ),
        ({"extra_models": ["svdd"]}, ["extra_models.0", "'svdd' is not one of"]),
    ],
)
def test_bad_config_fails_fast_naming_the_key(tmp_path, bad, named):
    config = write_config(tmp_path / "bad.yaml", {"results_dir": str(tmp_path / "results"), **bad})
    started = time.monotonic()
    result = snakemake("-n", "--configfile", str(config))
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "invalid configuration" in message
    for text in named:
        assert text in message, (text, message)
    assert elapsed < 60
    assert not (tmp_path / "results").exists()


def test_schema_fills_defaults(tmp_path):
    """A config stating almost nothing gets the paper's protocol from the schema's defaults."""
    from snakemake.utils import validate

    config = {"results_dir": "x"}
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["train"]["epochs"] == 100 and config["train"]["lr_decay_factor"] == 0.01
    assert config["latent_dim"] == {"mnist": 16, "fashion_mnist": 32}
    assert config["resources"]["train"]["gpu"] == 1 and config["allow_partial"] is False


def test_the_protocol_defaults_have_one_source():
    """RunConfig's defaults (the paper's learning setup, from published.yaml) are the source;
    the schema's defaults and config.yaml's values are written-out copies for readers of those
    files, and must say the same."""
    from grad2vae import published as pub
    from grad2vae.training.run_config import DEFAULT_LATENT_DIM, protocol_defaults

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    train_schema = schema["properties"]["train"]["properties"]
    for field, value in protocol_defaults().items():
        assert train_schema[field]["default"] == value, field
        assert config["train"][field] == value, field
    latent = schema["properties"]["latent_dim"]["properties"]
    assert {d: latent[d]["default"] for d in latent} == DEFAULT_LATENT_DIM == config["latent_dim"]
    paper = pub.learning_setup()
    for field in ("epochs", "batch_size", "lr", "lr_decay_epoch", "lr_decay_factor"):
        assert protocol_defaults()[field] == paper[field]


def test_schema_models_are_the_registry():
    from grad2vae.models import model_names

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert sorted(schema["properties"]["models"]["items"]["enum"]) == sorted(model_names())
    assert sorted(schema["properties"]["extra_models"]["items"]["enum"]) == sorted(model_names())
    assert sorted(schema["properties"]["model_train"]["propertyNames"]["enum"]) == sorted(
        model_names()
    )
    variants = schema["properties"]["variants"]
    assert sorted(variants["propertyNames"]["not"]["enum"]) == sorted(model_names())
    assert sorted(variants["additionalProperties"]["properties"]["model"]["enum"]) == sorted(
        model_names()
    )


def test_lint_and_format():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_every_rule_has_a_log_and_train_declares_resources():
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    rules = [r.lstrip() for r in re.split(r"^ *rule(?=[ :])", text, flags=re.M)[1:]]
    # the train rule and the seed-group rules of train.seeds_per_job > 1 (anonymous, named in a
    # loop)
    assert {r.split(":")[0] for r in rules} == {
        "data",
        "train",
        "workflow_config",
        "entropy_only",
        "aggregate",
        "figures",
        "assumptions",
        "explain",
        "report",
        "",
    }
    for body in rules:
        assert re.search(r"\n +log:\n", body), body.split(":")[0]
    training = [r for r in rules if r.startswith("train:") or r.startswith(":")]
    assert len(training) == 2
    for body in training:
        for word in ("benchmark:", "threads:", "gpu=", "mem_mb=", "runtime=", "TRAIN_SHELL"):
            assert word in body


def test_seeds_per_job_groups_seeds_into_one_process_per_job(tmp_path):
    overlay = write_config(
        tmp_path / "overlay.yaml",
        {
            "results_dir": str(tmp_path / "r"),
            "report_dir": str(tmp_path / "p"),
            "train": {"seeds_per_job": 4},
            "resources": {"train": {"mem_mb": 3000, "runtime": 60}},
        },
    )
    result = snakemake("-n", "-p", "--configfile", "config.yaml", str(overlay))
    assert result.returncode == 0, result.stderr + result.stdout
    output = result.stdout + result.stderr
    counts = job_counts(output)
    # 10 seeds in groups of 4: [0-3], [4-7], [8, 9]; 80 (dataset, model, class) each
    assert (
        counts["train_seeds_0_1_2_3"]
        == counts["train_seeds_4_5_6_7"]
        == counts["train_seeds_8_9"]
        == 80
    )
    assert "train" not in counts
    commands = [line for line in output.splitlines() if "grad2vae train" in line]
    assert len(commands) == 240
    assert all("--seed-batching auto" in c and "/seed{seed}'" in c for c in commands)
    assert (
        sum("--seed 0 1 2 3 " in c for c in commands) == 80
        and sum("--seed 8 9 " in c for c in commands) == 80
    )
    assert "mem_mb=12000" in output and "runtime=240" in output  # 4 seeds x the per-run resources


# --------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_tiny_configuration_end_to_end_then_partial_report(tmp_path):
    """The whole DAG through `snakemake` on synthetic data: both datasets, all four models, one
    class, one seed, 2 epochs on a few images; then a partial report after a run 'failed'."""
    data = tmp_path / "data"
    for offset, dataset in enumerate(("mnist", "fashion_mnist")):
        write_synthetic_dataset(data, dataset, train_per_class=12, test_per_class=4, seed=offset)
    results, report = tmp_path / "results", tmp_path / "report"
    config = write_config(
        tmp_path / "tiny.yaml",
        {
            "results_dir": str(results),
            "report_dir": str(report),
            "data": {"dir": str(data)},  # already there: the data rule has nothing to do
            "normal_classes": [1],
            "seeds": [0],
            "train": {
                "epochs": 2,
                "batch_size": 8,
                "train_limit": 8,
                "test_limit": 24,
                "checkpoint_every": 0,
                "device": "cpu",
            },
            "resources": {"train": {"threads": 1, "gpu": 0, "mem_mb": 2000, "runtime": 10}},
            "figures": {"roc_class": 1, "dpi": 50},
            "explain": {"enabled": False},  # its rule has tests of its own (test_explain.py)
        },
    )
    result = snakemake("--cores", "2", "--configfile", str(config), timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    runs = list(csv.DictReader((results / "aggregate" / "runs.csv").open()))
    assert len(runs) == 8 and {r["model"] for r in runs} == {
        "grad2vae",
        "vae",
        "cae",
        "inception_caenn",
    }
    assert all(r["epochs"] == "2" for r in runs)
    for key in ({"dataset": "mnist", "model": "grad2vae", "normal_class": 1, "seed": 0},):
        run_dir = results / RUN_DIR.format(**key)
        for name in ("metrics.json", "history.tsv", "scores.csv.gz", "model.pt"):
            assert (run_dir / name).is_file()
        assert (results / TRAIN_LOG.format(**key)).is_file()
        assert (
            results / "benchmarks" / "train" / "mnist" / "grad2vae" / "class1" / "seed0.tsv"
        ).is_file()
    figures = (
        "fig6_auc_vs_epoch.png",
        "per_class_auc.png",
        "parameters.png",
        "compute.png",
        "fig6_scores.png",
        "fig6_compute.png",
        "anomaly_ratio.png",
        "roc_class1.png",
        "cd_mnist.png",
        "cd_fashion_mnist.png",
        "table1_metric_mnist.png",
        "table1_metric_fashion_mnist.png",
    )
    for name in figures:
        assert (results / "figures" / name).is_file()
    # every score's AUC beside the main one, the paper's seven claims and table1_metric, the
    # entropy-only scorer
    for run in runs:
        expected = {"auc_mse", "auc_bce_excess"}
        if run["model"] in ("vae", "grad2vae"):
            expected |= {"auc_bce_zero_noise", "auc_mse_zero_noise", "auc_bce_excess_zero_noise"}
        assert all(0 <= float(run[column]) <= 1 for column in expected), run
        # the pixel-level AUC the authors' notebook logged (claim table1_metric)
        pixel = {"pixel_auc", "pixel_auc_keras"}
        if run["model"] == "grad2vae":
            pixel |= {"pixel_auc_attention", "pixel_auc_attention_keras"}
        assert all(0 <= float(run[column]) <= 1 for column in pixel), run
    with gzip.open(results / "aggregate" / "history.csv.gz", "rt") as handle:
        history_columns = next(csv.reader(handle))
    assert {"pixel_auc", "pixel_auc_keras", "pixel_auc_attention"} <= set(history_columns)
    claims = json.loads((results / "aggregate" / "claims.json").read_text())
    assert len(claims) == 8 and all(c["verdict"] in ("supported", "partly supported",
                                                        "not supported", "cannot be judged")
                                    for c in claims)  # fmt: skip
    entropy = list(csv.DictReader((results / "aggregate" / "entropy_only.csv").open()))
    assert [(e["dataset"], e["normal_class"], e["test_images"]) for e in entropy] == [
        ("mnist", "1", "24"),
        ("fashion_mnist", "1", "24"),
    ]
    assert "entropy only, H(x) (no model)" in index_text(report)
    assert "What does the paper&#39;s Table 1 measure?" in index_text(report)
    assert {c["id"]: c for c in claims}["table1_metric"]["verdict"] == "cannot be judged"
    index = report / "index.html"
    page = parse(index.read_text(encoding="utf-8"))
    rows = {"table1": 2 * (1 + 1), "summary-table": 2 * 4, "status-matrix": 2}
    for table, count in rows.items():
        assert page.rows.get(table) == count, (table, page.rows)
    assert "status-table" not in page.ids  # every run complete
    for figure in ("figures/fig6_auc_vs_epoch.png", "figures/roc_class1.png"):
        assert figure in page.images and (report / figure).is_file()
    # one normal class: the statistics section says why no test was run, instead of failing
    assert (
        "statistics" in page.ids
        and "need at least 2 methods and 2 normal classes" in index.read_text(encoding="utf-8")
    )
    payload = json.loads((results / "aggregate" / "aggregate.json").read_text())
    assert payload["counts"] == {"complete": 8, "failed": 0, "missing": 0}
    # the final checkpoints kept for a cheap rerun are released once the runs are aggregated
    assert not list((results / "runs").glob("*/*/*/*/checkpoint.pt"))
    assert payload["workflow_config"]["train"]["epochs"] == 2

    # The catalogue's report: every figure, with the caption file `grad2vae report` shows too.
    archive_path = tmp_path / "report.zip"
    done = snakemake("--report", str(archive_path), "--configfile", str(config))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    with zipfile.ZipFile(archive_path) as archive:
        names = archive.namelist()
        html = archive.read(next(n for n in names if n.endswith("report.html"))).decode()
    assert {Path(n).name for n in names if n.endswith(".png")} == set(figures)
    for caption in {
        CAPTIONS[name] for name in (*figures[:-5], CD_FIGURE, ROC_FIGURE, TABLE1_METRIC_FIGURE)
    }:
        first_words = " ".join((CAPTION_FOLDER / caption).read_text().split()[:5])
        assert first_words in html, caption

    # Execution settings (device, checkpoints) do not re-run finished runs; the protocol does.
    execution = write_config(
        tmp_path / "execution.yaml", {"train": {"device": "auto", "checkpoint_every": 1}}
    )
    dry = snakemake("-n", "--configfile", str(config), str(execution))
    assert dry.returncode == 0 and "train" not in job_counts(dry.stdout + dry.stderr), (
        dry.stdout + dry.stderr
    )
    protocol = write_config(tmp_path / "protocol.yaml", {"train": {"epochs": 3}})
    dry = snakemake("-n", "--configfile", str(config), str(protocol))
    assert dry.returncode == 0 and job_counts(dry.stdout + dry.stderr)["train"] == 8

    # A run "fails" (its metrics.json is gone, its log stays); with allow_partial the report is
    # rebuilt from what exists, without training anything.
    failed_dir = results / RUN_DIR.format(
        dataset="fashion_mnist", model="vae", normal_class=1, seed=0
    )
    (failed_dir / "metrics.json").unlink()
    # Without allow_partial the deleted file is noticed: its run is made again, and everything
    # that reads it after it (the report must not stand on a file that is gone).
    dry = snakemake("-n", "--configfile", str(config))
    counts = job_counts(dry.stdout + dry.stderr)
    assert dry.returncode == 0 and counts["train"] == 1, dry.stdout + dry.stderr
    assert {"aggregate", "figures", "report"} <= set(counts), counts
    partial = snakemake(
        "--cores", "2", "--configfile", str(config), "--config", "allow_partial=True", timeout=600
    )
    assert partial.returncode == 0, partial.stdout[-4000:] + partial.stderr[-4000:]
    assert "rule train" not in partial.stdout + partial.stderr
    payload = json.loads((results / "aggregate" / "aggregate.json").read_text())
    assert payload["counts"] == {"complete": 7, "failed": 1, "missing": 0}
    page = parse(index.read_text(encoding="utf-8"))
    assert page.rows.get("status-table") == 1 and "partial-notice" in page.ids
    status = list(csv.DictReader((results / "aggregate" / "status.csv").open()))
    failed = [row for row in status if row["status"] == "failed"]
    assert failed[0]["reason"].startswith("metrics.json missing"), failed
    check_report_in_browser(index, {**rows, "status-table": 1})


@pytest.mark.slow
def test_seed_group_job_trains_each_run_and_switching_back_reruns_nothing(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, "mnist", train_per_class=12, test_per_class=4, seed=0)
    results = tmp_path / "results"
    tiny = {
        "results_dir": str(results),
        "report_dir": str(tmp_path / "report"),
        "data": {"dir": str(data)},
        "datasets": ["mnist"],
        "normal_classes": [1],
        "seeds": [0, 1, 2],
        "models": ["vae", "grad2vae"],
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "train_limit": 8,
            "test_limit": 24,
            "checkpoint_every": 0,
            "device": "cpu",
            "seeds_per_job": 2,
        },
        "resources": {"train": {"threads": 1, "gpu": 0, "mem_mb": 2000, "runtime": 10}},
    }
    config = write_config(tmp_path / "grouped.yaml", tiny)
    keys = [
        dict(dataset="mnist", model=model, normal_class=1, seed=seed)
        for model in ("vae", "grad2vae")
        for seed in (0, 1, 2)
    ]
    targets = [str(results / RUN_DIR.format(**key) / "metrics.json") for key in keys]
    result = snakemake("--cores", "2", *targets, "--configfile", str(config), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts == {"train_seeds_0_1": 2, "train_seeds_2": 2}
    for key in keys:
        metrics = json.loads((results / RUN_DIR.format(**key) / "metrics.json").read_text())
        assert metrics["seed"] == key["seed"] and metrics["seeds_in_process"] == (
            2 if key["seed"] < 2 else 1
        )
        assert metrics["seed_batching"] == (
            "sequential" if key["seed"] < 2 else None
        )  # auto on the CPU
        log = (results / TRAIN_LOG.format(**key)).read_text()
        assert f"seed {key['seed']}: auc" in log  # the job's log, copied to every run of it
    # seeds_per_job is an execution setting: one job per run again trains nothing
    ungrouped = write_config(tmp_path / "ungrouped.yaml", {"train": {"seeds_per_job": 1}})
    dry = snakemake("-n", *targets, "--configfile", str(config), str(ungrouped))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert not job_counts(dry.stdout + dry.stderr), dry.stdout + dry.stderr
