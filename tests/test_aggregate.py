"""Aggregation arithmetic and Table 1 on synthetic run directories (no training).

`write_fake_run` writes a run directory in the layout of CONTRIBUTING.md; test_report.py reuses it.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grad2vae import published as pub
from grad2vae.analysis.collect import expected_grid
from grad2vae.analysis.command import aggregate
from grad2vae.analysis.tables import published_column_average
from grad2vae.cli import main as cli_main
from grad2vae.layout import RUN_DIR, TRAIN_LOG

MODELS = ["grad2vae", "vae", "cae", "inception_caenn"]
PARAMETERS = {"grad2vae": 3_375_890, "vae": 3_258_305, "cae": 802_819, "inception_caenn": 333_699}


def write_fake_run(
    results: Path,
    dataset: str,
    model: str,
    normal_class: int,
    seed: int,
    auc: float = 0.9,
    auc_reconstruction: float | None = None,
    epochs: int = 3,
    device: str = "cpu",
    n_test: int = 60,
    auc_extra: dict | None = None,
) -> Path:
    """A finished run: metrics.json, history.tsv (AUC rising to ``auc``), scores.csv.gz,
    model.pt."""
    run = Path(results) / RUN_DIR.format(
        dataset=dataset, model=model, normal_class=normal_class, seed=seed
    )
    run.mkdir(parents=True, exist_ok=True)
    auc_reconstruction = auc - 0.05 if auc_reconstruction is None else auc_reconstruction
    lines = ["epoch\tlr\tseconds\tloss_reconstruction\tloss_total\tauc\tauc_reconstruction"]
    for epoch in range(1, epochs + 1):
        value = auc - 0.1 * (epochs - epoch) / epochs
        lines.append(
            f"{epoch}\t0.001\t1.5\t{100 / epoch:.3f}\t{110 / epoch:.3f}\t"
            f"{value:.6f}\t{value - 0.05:.6f}"
        )
    (run / "history.tsv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng([seed, normal_class, len(model), len(dataset)])
    classes = np.arange(n_test) % 10
    labels = (classes != normal_class).astype(int)
    scores = rng.normal(size=n_test) + 1.5 * labels
    with gzip.open(run / "scores.csv.gz", "wt") as handle:
        handle.write("index,test_class,label,score_main,score_reconstruction\n")
        for i in range(n_test):
            handle.write(f"{i},{classes[i]},{labels[i]},{scores[i]:.6f},{0.9 * scores[i]:.6f}\n")
    (run / "model.pt").write_bytes(b"")
    metrics = {
        "model": model,
        "dataset": dataset,
        "normal_class": normal_class,
        "seed": seed,
        "main_score": "reconstruction error",
        "auc": auc,
        "auc_reconstruction": auc_reconstruction,
        "epochs": epochs,
        "wall_seconds": 10.0 * epochs,
        "seconds_per_epoch": 10.0,
        "device": "NVIDIA H100 80GB HBM3" if device == "cuda" else "Some CPU",
        "device_type": device,
        "parameters": PARAMETERS.get(model, 1000),
        "versions": {"torch": "2.14.1", "python": "3.11.7"},
        "git_commit": "0123abc",
        "config": {"latent_dim": 16 if dataset == "mnist" else 32, "epochs": epochs},
        "config_hash": "cafe",
    }
    if auc_extra is not None:
        metrics["auc_extra"] = auc_extra
        # what the trainer writes beside them: the bounds the model declares
        bounds = declared_bounds(model, auc_extra)
        if bounds:
            metrics["bounds"] = bounds
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def declared_bounds(model: str, auc_extra: dict) -> dict:
    from grad2vae.models import create_model

    return create_model(model, latent_dim=16).bounds(auc_extra)


def grid(datasets=("mnist",), classes=(0, 1), models=("grad2vae",), seeds=(0, 1, 2)) -> dict:
    return {
        "datasets": list(datasets),
        "normal_classes": list(classes),
        "models": list(models),
        "seeds": list(seeds),
    }


def run_aggregate(tmp_path: Path, config: dict) -> tuple[dict, Path]:
    out = tmp_path / "results" / "aggregate"
    payload = aggregate(tmp_path / "results", out, config)
    return payload, out


# --------------------------------------------------------------------------------------------
# the published data file


def test_published_table_is_complete_and_consistent():
    data = pub.load_published()
    columns = pub.published_columns()
    assert list(columns) == ["cae_ocsvm", "deep_svdd", "inception_caenn", "grad2vae"]
    for dataset in ("mnist", "fashion_mnist"):
        for column in columns:
            values = data["table1"]["per_class"][dataset][column]
            assert len(values) == 10
            # The printed Average row agrees with the mean of the ten printed values (to rounding;
            # the paper's Deep SVDD MNIST average 96.60 vs mean 96.54 is the largest gap).
            assert abs(np.mean(values) - pub.published_average(dataset, column)) < 0.07
    assert pub.published_auc("mnist", "grad2vae", 0) == 97.62
    assert pub.published_auc("fashion_mnist", "deep_svdd", 1) == 99.77
    assert pub.published_average("fashion_mnist", "grad2vae") == 96.37
    assert pub.class_label("fashion_mnist", 9) == "Boot"
    assert pub.parameters_millions() == {
        "cae": 0.266,
        "vae": 3.25,
        "inception_caenn": 0.335,
        "grad2vae": 3.38,
    }
    assert (
        pub.column_for_model("cae_ocsvm") == "cae_ocsvm"
        and pub.column_for_model("deep_svdd") == "deep_svdd"
    )
    assert (
        pub.column_for_model("cae") is None and pub.column_for_model("vae") is None
    )  # not in Table 1
    setup = pub.learning_setup()
    assert (
        setup["batch_size"],
        setup["epochs"],
        setup["lr"],
        setup["lr_decay_epoch"],
        setup["lr_decay_factor"],
    ) == (128, 100, 0.001, 50, 0.01)
    assert setup["latent_dim"] == {"mnist": 16, "fashion_mnist": 32}
    assert pub.mstd_claims() == {"grad2vae_max": 0.117, "deep_svdd": 3.8, "inception_caenn": 3.9}
    assert "10.1007/978-3-031-06427-2_56" in pub.citation()


# --------------------------------------------------------------------------------------------
# arithmetic


def test_mean_std_difference_and_mstd(tmp_path):
    results = tmp_path / "results"
    # class 0: 0.90 0.92 0.94 -> mean 92, sample std 2; class 1: 0.95 0.96 0.97 -> 96, std 1
    for seed, (a0, a1) in enumerate([(0.90, 0.95), (0.92, 0.96), (0.94, 0.97)]):
        write_fake_run(results, "mnist", "grad2vae", 0, seed, auc=a0, auc_reconstruction=a0 - 0.1)
        write_fake_run(results, "mnist", "grad2vae", 1, seed, auc=a1)
    payload, out = run_aggregate(tmp_path, grid())
    assert payload["counts"] == {"complete": 6, "failed": 0, "missing": 0}

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6
    assert {
        "dataset",
        "normal_class",
        "model",
        "seed",
        "auc",
        "auc_reconstruction",
        "epochs",
        "wall_seconds",
        "device",
        "device_type",
        "parameters",
    } <= set(runs.columns)

    summary = pd.read_csv(out / "summary.csv").set_index("normal_class")
    assert summary.loc[0, "auc_pct_mean"] == pytest.approx(92.0)
    assert summary.loc[0, "auc_pct_std"] == pytest.approx(2.0)  # ddof=1
    assert summary.loc[0, "auc_reconstruction_pct_mean"] == pytest.approx(82.0)
    assert summary.loc[1, "auc_pct_std"] == pytest.approx(1.0)
    assert summary.loc[0, "published_auc_pct"] == pytest.approx(97.62)
    assert summary.loc[0, "difference_pct"] == pytest.approx(92.0 - 97.62)
    assert summary.loc[1, "difference_pct"] == pytest.approx(96.0 - 96.81)

    averages = pd.read_csv(out / "averages.csv").iloc[0]
    assert averages["auc_pct_mean"] == pytest.approx(94.0)
    assert averages["mstd"] == pytest.approx(1.5)  # mean of the per-class std
    assert averages["max_class_std"] == pytest.approx(2.0)
    # two of ten classes: compared with the paper's mean over the same two classes
    assert averages["published_average_pct"] == pytest.approx((97.62 + 96.81) / 2)
    assert averages["difference_pct"] == pytest.approx(94.0 - (97.62 + 96.81) / 2)
    assert "2 matching classes" in averages["published_average_basis"]

    claims = {c["model"]: c for c in payload["mstd_claims"]}
    assert claims["grad2vae"]["published"] == 0.117
    assert claims["grad2vae"]["ours_max_mstd"] == pytest.approx(1.5)
    assert claims["grad2vae"]["ours_max_class_std"] == pytest.approx(2.0)


def test_table1_full_grid_uses_the_printed_average(tmp_path):
    results = tmp_path / "results"
    for c in range(10):
        for seed in (0, 1):
            write_fake_run(
                results, "mnist", "grad2vae", c, seed, auc=0.95 + 0.002 * c + 0.001 * seed
            )
            write_fake_run(results, "mnist", "cae_ocsvm", c, seed, auc=0.85)
            write_fake_run(results, "mnist", "cae", c, seed, auc=0.80)
    _payload, out = run_aggregate(
        tmp_path, grid(classes=range(10), models=["grad2vae", "cae_ocsvm", "cae"], seeds=[0, 1])
    )
    table = pd.read_csv(out / "table1.csv")
    assert list(table["class_label"]) == [str(c) for c in range(10)] + ["Average"]
    # columns in the paper's order, ours beside the published column
    columns = list(table.columns)
    assert (
        columns.index("published_cae_ocsvm")
        < columns.index("cae_ocsvm_mean")
        < columns.index("published_deep_svdd")
    )
    assert (
        columns.index("published_inception_caenn")
        < columns.index("published_grad2vae")
        < columns.index("grad2vae_mean")
    )
    # the Baseline CAE is not in Table 1: ours only, after the paper's columns, no difference
    assert (
        columns.index("grad2vae_difference") < columns.index("cae_mean")
        and "cae_difference" not in columns
    )
    row3 = table.iloc[3]
    assert row3["grad2vae_mean"] == pytest.approx(100 * (0.95 + 0.006 + 0.0005))
    assert row3["grad2vae_std"] == pytest.approx(100 * math.sqrt(0.0005**2 * 2))
    assert row3["published_grad2vae"] == 98.53
    assert row3["grad2vae_difference"] == pytest.approx(row3["grad2vae_mean"] - 98.53)
    assert row3["published_deep_svdd"] == 95.10
    average = table.iloc[10]
    ours = np.mean([100 * (0.95 + 0.002 * c + 0.0005) for c in range(10)])
    assert average["grad2vae_mean"] == pytest.approx(ours)
    assert average["grad2vae_n"] == 10
    assert average["published_grad2vae"] == 98.23  # the printed Average row
    assert average["grad2vae_difference"] == pytest.approx(ours - 98.23)
    assert average["cae_ocsvm_difference"] == pytest.approx(85.0 - 86.50)
    assert average["cae_mean"] == pytest.approx(80.0)
    assert average["published_deep_svdd"] == 96.60
    assert average["published_grad2vae_basis"] == "the paper's printed Average row"


def test_partial_grid_lists_missing_and_failed(tmp_path):
    results = tmp_path / "results"
    write_fake_run(results, "mnist", "grad2vae", 0, 0, auc=0.9)
    write_fake_run(results, "mnist", "vae", 0, 0, auc=0.8)
    # failed: a train log, no metrics.json
    log = results / TRAIN_LOG.format(dataset="mnist", model="grad2vae", normal_class=1, seed=0)
    log.parent.mkdir(parents=True)
    log.write_text(
        "loading\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\nmore\n"
    )
    # failed: files in the run dir, no metrics.json (killed), no log
    killed = results / RUN_DIR.format(dataset="mnist", model="vae", normal_class=1, seed=0)
    killed.mkdir(parents=True)
    (killed / "checkpoint.pt").write_bytes(b"x")
    # outside the grid: ignored, but reported
    write_fake_run(results, "mnist", "grad2vae", 0, 7, auc=0.1)

    payload, out = run_aggregate(
        tmp_path, grid(classes=[0, 1, 2], models=["grad2vae", "vae"], seeds=[0])
    )
    assert payload["counts"] == {"complete": 2, "failed": 2, "missing": 2}
    assert payload["expected_runs"] == 6
    assert len(payload["extra_runs_ignored"]) == 1 and payload["extra_runs_ignored"][0].endswith(
        "seed7"
    )
    status = pd.read_csv(out / "status.csv", keep_default_na=False)
    failed = status[status["status"] == "failed"].set_index("model")
    assert failed.loc["grad2vae", "reason"] == "RuntimeError: CUDA out of memory"
    assert failed.loc["grad2vae", "log"].endswith("seed0.log")
    assert "without metrics.json" in failed.loc["vae", "reason"]
    missing = status[status["status"] == "missing"]
    assert set(missing["normal_class"]) == {2}

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 and 7 not in set(runs["seed"])  # the extra run is not aggregated
    table = pd.read_csv(out / "table1.csv")
    assert len(table) == 4  # 3 classes + Average
    assert pd.isna(table.iloc[1]["grad2vae_mean"]) and table.iloc[1]["grad2vae_n"] == 0
    assert table.iloc[1]["published_grad2vae"] == 96.81  # published still shown
    average = table.iloc[3]
    assert average["grad2vae_n"] == 1  # one class present
    assert average["published_grad2vae"] == pytest.approx(97.62)  # same class as ours
    assert average["published_deep_svdd"] == pytest.approx(
        np.mean([99.10, 99.70, 95.40])
    )  # the grid's classes

    history = pd.read_csv(out / "history.csv.gz")
    assert len(history) == 2 * 3 and list(history.columns[:4]) == [
        "dataset",
        "normal_class",
        "model",
        "seed",
    ]


def test_published_column_average():
    assert published_column_average("mnist", "grad2vae", list(range(10))) == (
        98.23,
        "the paper's printed Average row",
    )
    value, basis = published_column_average("fashion_mnist", "cae_ocsvm", [0, 1])
    assert value == pytest.approx((88.0 + 97.3) / 2) and "2 matching" in basis


def test_cae_ocsvm_oracle_is_kept_apart(tmp_path):
    """The oracle is a pseudo-model of its own rows (one form only): the run's own row and the
    main AUC are untouched, the bound's row names the model it bounds and the selected point."""
    from grad2vae.models.cae_ocsvm import GRID_KEYS

    results = tmp_path / "results"
    extra = {key: 0.5 + 0.004 * i for i, key in enumerate(GRID_KEYS)}
    write_fake_run(results, "mnist", "cae_ocsvm", 0, 0, auc=0.80, auc_extra=extra)
    _payload, out = run_aggregate(tmp_path, grid(classes=[0], models=["cae_ocsvm"], seeds=[0]))
    runs = pd.read_csv(out / "runs.csv")
    assert runs["model"].tolist() == ["cae_ocsvm", "cae_ocsvm_oracle"]
    assert runs.loc[0, "auc"] == pytest.approx(0.80)  # the main AUC is not the oracle
    assert "auc_oracle" not in runs and pd.isna(runs.loc[0, "bound_of"])
    assert runs.loc[1, "auc"] == pytest.approx(0.5 + 0.004 * (len(GRID_KEYS) - 1))
    assert runs.loc[1, "oracle_point"] == GRID_KEYS[-1] and runs.loc[1, "bound_of"] == "cae_ocsvm"
    table = pd.read_csv(out / "table1.csv")
    assert table.loc[0, "cae_ocsvm_mean"] == pytest.approx(80.0)
    averages = pd.read_csv(out / "averages.csv").set_index("model")
    assert averages.loc["cae_ocsvm_oracle", "auc_pct_mean"] == pytest.approx(
        100 * (0.5 + 0.004 * (len(GRID_KEYS) - 1))
    )


def test_a_run_written_before_bounds_were_recorded_has_no_oracle_row(tmp_path, caplog):
    """metrics.json of format 1 (no ``bounds``): no pseudo-model, and a warning that says why."""
    from grad2vae.models.cae_ocsvm import GRID_KEYS

    results = tmp_path / "results"
    run = write_fake_run(results, "mnist", "cae_ocsvm", 0, 0, auc=0.80)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["auc_extra"] = {key: 0.6 for key in GRID_KEYS}
    (run / "metrics.json").write_text(json.dumps(metrics))
    payload, out = run_aggregate(tmp_path, grid(classes=[0], models=["cae_ocsvm"], seeds=[0]))
    assert pd.read_csv(out / "runs.csv")["model"].tolist() == ["cae_ocsvm"]
    assert payload["bounds"] == {} and all(g["kind"] != "bound" for g in payload["table1_layout"])
    assert "written before metrics.json recorded bounds" in caplog.text


def test_compute_and_parameters(tmp_path):
    results = tmp_path / "results"
    write_fake_run(results, "mnist", "grad2vae", 0, 0, device="cuda", epochs=4)  # 40 s
    write_fake_run(results, "mnist", "grad2vae", 0, 1, device="cuda", epochs=5)  # 50 s
    write_fake_run(results, "mnist", "cae", 0, 0, device="cpu", epochs=3)  # 30 s
    _payload, out = run_aggregate(
        tmp_path, grid(classes=[0], models=["grad2vae", "cae"], seeds=[0, 1])
    )
    compute = pd.read_csv(out / "compute.csv").set_index("model")
    assert compute.loc["grad2vae", "gpu_hours"] == pytest.approx(90 / 3600)
    assert compute.loc["grad2vae", "runs"] == 2
    assert compute.loc["cae", "gpu_hours"] == 0 and compute.loc[
        "cae", "wall_hours"
    ] == pytest.approx(30 / 3600)
    params = pd.read_csv(out / "parameters.csv").set_index("model")
    assert params.loc["grad2vae", "parameters"] == PARAMETERS["grad2vae"]
    assert params.loc["grad2vae", "paper_millions"] == 3.38
    assert params.loc["grad2vae", "ratio_to_paper"] == pytest.approx(
        PARAMETERS["grad2vae"] / 1e6 / 3.38
    )


def test_grid_from_config_overrides_and_discovery(tmp_path):
    results = tmp_path / "results"
    write_fake_run(results, "fashion_mnist", "vae", 3, 4)
    write_fake_run(results, "fashion_mnist", "grad2vae", 5, 4)
    discovered = expected_grid(results, {}, {})
    assert discovered == {
        "datasets": ["fashion_mnist"],
        "normal_classes": [3, 5],
        "models": ["vae", "grad2vae"],
        "seeds": [4],
    }  # the paper's order (Fig. 6: ..., vanilla VAE, ..., Grad2VAE)
    config = grid(classes=[0, 1], models=["vae", "cae", "grad2vae"], seeds=[0])
    chosen = expected_grid(results, config, {"seeds": [4, 5]})
    assert chosen["seeds"] == [4, 5] and chosen["models"] == ["cae", "vae", "grad2vae"]


def test_command_line(tmp_path, capsys):
    results = tmp_path / "results"
    write_fake_run(results, "mnist", "cae", 0, 0)
    config = tmp_path / "workflow_config.json"
    config.write_text(json.dumps(grid(classes=[0, 1], models=["cae"], seeds=[0])))
    assert (
        cli_main(["aggregate", "--results-dir", str(results), "--workflow-config", str(config)])
        == 0
    )
    assert (
        json.loads((results / "aggregate" / "aggregate.json").read_text())["counts"]["missing"] == 1
    )
    assert not list((results / "aggregate").glob(".tmp-*"))  # written atomically
    # nothing to aggregate and no grid: a user error, not a traceback
    assert cli_main(["aggregate", "--results-dir", str(tmp_path / "empty")]) == 2
    assert "no runs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Table 1 complete: deep_svdd, cae_ocsvm and its oracle; the statistics

ALL_MODELS = MODELS + ["deep_svdd", "cae_ocsvm"]


def oracle_grid(best: float) -> dict:
    from grad2vae.models.cae_ocsvm import GRID_KEYS

    return {key: best - 0.001 * (len(GRID_KEYS) - 1 - i) for i, key in enumerate(GRID_KEYS)}


def write_complete_grid(
    results: Path, classes=range(10), seeds=(0, 1), datasets=("mnist",)
) -> None:
    """Every model; AUCs that order the methods the same way on every class (grad2vae best)."""
    quality = {
        "grad2vae": 0.95,
        "inception_caenn": 0.93,
        "deep_svdd": 0.91,
        "vae": 0.89,
        "cae": 0.87,
        "cae_ocsvm": 0.80,
    }
    for dataset in datasets:
        for c in classes:
            for model in ALL_MODELS:
                for seed in seeds:
                    auc = quality[model] + 0.002 * c + 0.001 * seed
                    extra = oracle_grid(auc + 0.1) if model == "cae_ocsvm" else None
                    write_fake_run(results, dataset, model, c, seed, auc=auc, auc_extra=extra)


def test_extra_models_join_the_grid_and_the_oracle_is_a_labelled_pseudo_model(tmp_path):
    oracle_model = "cae_ocsvm_oracle"  # the pseudo-model {model}_{bound}
    write_complete_grid(tmp_path / "results", classes=[0, 1], seeds=[0, 1])
    config = {
        **grid(classes=[0, 1], models=MODELS, seeds=[0, 1]),
        "extra_models": ["deep_svdd", "cae_ocsvm"],
    }
    payload, out = run_aggregate(tmp_path, config)
    assert set(payload["grid"]["models"]) == set(ALL_MODELS)
    assert payload["counts"] == {
        "complete": 2 * 6 * 2,
        "failed": 0,
        "missing": 0,
    }  # the oracle is not a run
    runs = pd.read_csv(out / "runs.csv")
    oracle = runs[runs["model"] == oracle_model]
    assert len(oracle) == 4 and set(oracle["protocol"]) == {
        "oracle: selects hyperparameters on the test labels"
    }
    assert set(runs.loc[runs["model"] == "cae_ocsvm", "protocol"]) == {"default"}
    assert oracle["auc"].to_numpy() == pytest.approx(
        runs.loc[runs["model"] == "cae_ocsvm", "auc"].to_numpy() + 0.1
    )
    assert set(oracle["bound_of"]) == {"cae_ocsvm"}
    assert oracle_model not in set(pd.read_csv(out / "status.csv")["model"])
    assert oracle_model not in set(pd.read_csv(out / "compute.csv")["model"])
    layout = payload["table1_layout"]
    kinds = [(g["kind"], g["model"]) for g in layout]
    assert kinds[:2] == [("compared", "cae_ocsvm"), ("bound", oracle_model)]
    assert ("compared", "deep_svdd") in kinds and not any(k == "published_only" for k, _ in kinds)
    assert layout[1]["label"] == "CAE OCSVM oracle: selects hyperparameters on the test labels"
    assert "Golan & El-Yaniv" in layout[1]["source"]
    table = pd.read_csv(out / "table1.csv")
    mnist0 = table[(table["dataset"] == "mnist") & (table["class_label"] == "0")].iloc[0]
    assert (
        mnist0["deep_svdd_mean"] == pytest.approx(91.05) and mnist0["published_deep_svdd"] == 99.10
    )
    assert mnist0["deep_svdd_difference"] == pytest.approx(91.05 - 99.10)
    assert mnist0["cae_ocsvm_mean"] == pytest.approx(80.05)
    assert mnist0[f"{oracle_model}_mean"] == pytest.approx(90.05)
    assert f"{oracle_model}_difference" not in table  # never compared with a published column
    claims = {c["model"]: c for c in payload["mstd_claims"]}
    assert claims["deep_svdd"]["ours_max_mstd"] == pytest.approx(100 * 0.001 / math.sqrt(2))


def test_stats_json_on_the_full_ten_class_grid(tmp_path):

    write_complete_grid(tmp_path / "results")
    config = {
        **grid(classes=list(range(10)), models=MODELS, seeds=[0, 1]),
        "extra_models": ["deep_svdd", "cae_ocsvm"],
    }
    _payload, out = run_aggregate(tmp_path, config)
    data = json.loads((out / "stats.json").read_text())
    assert data["alpha"] == 0.05 and "test labels" in data["bounds_note"]
    mnist = data["datasets"]["mnist"]
    ours = mnist["ours"]
    assert set(ours["methods"]) == set(ALL_MODELS)  # the oracle is not ranked
    assert ours["average_ranks"] == pytest.approx(
        {"grad2vae": 1, "inception_caenn": 2, "deep_svdd": 3, "vae": 4, "cae": 5, "cae_ocsvm": 6}
    )
    assert ours["classes"] == list(range(10))
    # identical ranking on all 10 classes: Friedman chi2 = 12N/(k(k+1)) * sum R^2 - 3N(k+1)
    k, n = 6, 10
    chi2 = 12 * n / (k * (k + 1)) * sum(r**2 for r in range(1, k + 1)) - 3 * n * (k + 1)
    assert ours["friedman"]["statistic"] == pytest.approx(chi2)
    # one method wins on all 10 classes: Wilcoxon p = 2/2^10, Holm over 15 pairs
    assert ours["wilcoxon_p"]["grad2vae"]["cae"] == pytest.approx(2 / 1024)
    assert ours["minimum_holm_p"] == pytest.approx(15 * 2 / 1024)
    assert max(
        ours["holm_p"][a][b] for a in ALL_MODELS for b in ALL_MODELS if a != b
    ) == pytest.approx(15 * 2 / 1024)
    assert (
        mnist["claim_ours"]["verdict"] == "supported"
        and "published 98.23" in mnist["claim_ours"]["sentence"]
    )
    assert set(mnist["published"]["methods"]) == {
        "cae_ocsvm",
        "deep_svdd",
        "inception_caenn",
        "grad2vae",
    }
    assert "claim_published" in mnist and mnist["skipped"] == []
    assert not any("grid has" in note for note in mnist["notes"])  # all 10 classes


@pytest.mark.parametrize(
    "classes, models, expected",
    [
        (
            [0, 1],
            MODELS,
            "smallest possible two-sided Wilcoxon p-value is 2/2^2",
        ),  # the quick preset
        ([0, 1], ["grad2vae", "vae"], "Friedman test not run: it needs at least 3 methods"),
        ([1], MODELS, "need at least 2 methods and 2 normal classes"),  # the end-to-end test
    ],
)
def test_stats_say_why_a_test_was_not_run(tmp_path, classes, models, expected):
    for c in classes:
        for model in models:
            write_fake_run(tmp_path / "results", "mnist", model, c, 0, auc=0.8 + 0.01 * len(model))
    _payload, out = run_aggregate(tmp_path, grid(classes=classes, models=models, seeds=[0]))
    section = json.loads((out / "stats.json").read_text())["datasets"]["mnist"]
    assert any(expected in text for text in section["skipped"] + section["notes"]), section
    assert "published" in section  # the paper's Table 1 is analysed whatever our grid


def test_stats_on_a_partial_grid_leave_out_incomplete_classes(tmp_path):
    write_complete_grid(tmp_path / "results", classes=[0, 1, 2], seeds=[0])
    run_dir = (
        tmp_path / "results" / RUN_DIR.format(dataset="mnist", model="vae", normal_class=2, seed=0)
    )
    (run_dir / "metrics.json").unlink()
    _payload, out = run_aggregate(
        tmp_path, {**grid(classes=[0, 1, 2], models=ALL_MODELS, seeds=[0])}
    )
    section = json.loads((out / "stats.json").read_text())["datasets"]["mnist"]
    assert section["ours"]["classes"] == [0, 1]
    assert any(
        "left out because some method has no run" in note and "2" in note
        for note in section["notes"]
    )
