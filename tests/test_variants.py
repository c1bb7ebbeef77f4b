"""Variants as configuration (issue 15): a variant is a registered model with constructor options
and/or its own schedule, a model name like any other from the run folder to the report. Here:
the run configuration and its hash, option checking, the absolute learning-rate steps of [25],
the CLI, the workflow's plan and errors, Table 1's layout and the Ablations payload."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_synthetic_dataset
from test_workflow import job_counts, snakemake, write_config

from grad2vae.analysis.ablations import ablations, variant_bases
from grad2vae.analysis.tables import table1_layout
from grad2vae.errors import UserError
from grad2vae.models import check_options, create_model
from grad2vae.schedule import StepsToValues, make_scheduler
from grad2vae.training.run_config import RunConfig, config_hash, validate_config

# ---- the run configuration -----------------------------------------------------------------


def test_a_plain_configuration_keeps_the_hash_it_had_before_variants():
    """Computed on the code before this change (commit a306c05): finished runs stay finished."""
    assert config_hash(RunConfig(model="grad2vae", dataset="mnist", normal_class=3, seed=7)) == (
        "b1514b83eea3a4e1dcd151086473baeedf32adcacd1dcc7f2f03f141f661e077"
    )
    assert (
        config_hash(
            RunConfig(
                model="cae",
                dataset="fashion_mnist",
                normal_class=0,
                seed=0,
                epochs=2,
                train_limit=64,
            )
        )
        == "8458ebf70835b6d28e4675869e2db7ba0e4f008c618f8777beebd7fe13b6a1cc"
    )


def test_a_variants_options_and_schedule_are_part_of_its_hash():
    plain = RunConfig(model="cae", dataset="mnist", normal_class=0, seed=0)
    renamed = RunConfig(model="cae_x", base_model="cae", dataset="mnist", normal_class=0, seed=0)
    stepped = RunConfig(model="cae_x", base_model="cae", dataset="mnist", normal_class=0, seed=0,
                        lr_decay_epoch=0, lr_steps=((250, 1e-5),))  # fmt: skip
    hashes = {config_hash(c) for c in (plain, renamed, stepped)}
    assert len(hashes) == 3
    assert (
        stepped.to_dict()["lr_steps"] == [[250, 1e-5]] and "model_options" not in stepped.to_dict()
    )
    assert hash(stepped) == hash(RunConfig(**{**stepped.to_dict(), "lr_steps": ((250, 1e-5),)}))


def test_variant_configurations_are_checked_before_anything_runs():
    with pytest.raises(UserError, match="unknown model 'nope'"):
        validate_config(
            RunConfig(model="v", base_model="nope", dataset="mnist", normal_class=0, seed=0)
        )
    with pytest.raises(UserError, match="registered model's name"):
        validate_config(
            RunConfig(model="vae", base_model="cae", dataset="mnist", normal_class=0, seed=0)
        )
    with pytest.raises(UserError, match="variant name 'a b'"):
        validate_config(
            RunConfig(model="a b", base_model="cae", dataset="mnist", normal_class=0, seed=0)
        )
    with pytest.raises(UserError, match="set lr_decay_epoch to 0"):
        validate_config(RunConfig(model="v", base_model="cae", dataset="mnist", normal_class=0,
                                  seed=0, lr_steps=((5, 1e-5),)))  # fmt: skip


def test_unknown_options_and_values_name_the_variant_the_option_and_the_accepted_ones():
    with pytest.raises(
        UserError, match=r"variant x: model 'cae' has no option 'kl'; its options: none"
    ):
        check_options("cae", {"kl": "mean"}, label="variant x")
    with pytest.raises(UserError, match=r"variant y: unknown model 'nope'|unknown model 'nope'"):
        check_options("nope", {}, label="variant y")
    offered = create_model("vae", 4).options
    if "kl" in offered:  # the VAE's options (models/vae.py)
        with pytest.raises(
            UserError, match=r"variant z: option 'kl' of 'vae' is 'median'; accepted: sum, mean"
        ):
            check_options("vae", {"kl": "median"}, label="variant z")
    with pytest.raises(UserError, match="no option 'colour'"):
        check_options("vae", {"colour": "red"}, label="variant z")


# ---- the learning-rate schedule ---------------------------------------------------------------


def test_lr_steps_set_absolute_values_after_their_epochs_and_resume_exactly():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-4)
    scheduler = make_scheduler(optimizer, 0, 0.01, ((2, 1e-5), (3, 1e-6)))
    assert isinstance(scheduler, StepsToValues)
    seen = []
    for _epoch in range(1, 5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == [1e-4, 1e-4, 1e-5, 1e-6]  # after epoch 2: 1e-5, after epoch 3: 1e-6, exactly
    # resumed from a checkpoint written after epoch 2: the same values from there on
    first = torch.optim.Adam([parameter], lr=1e-4)
    before = make_scheduler(first, 0, 0.01, ((2, 1e-5), (3, 1e-6)))
    for _ in range(2):
        first.step()
        before.step()
    second = torch.optim.Adam([parameter], lr=1e-4)
    after = make_scheduler(second, 0, 0.01, ((2, 1e-5), (3, 1e-6)))
    second.load_state_dict(first.state_dict())
    after.load_state_dict(before.state_dict())
    assert second.param_groups[0]["lr"] == 1e-5
    second.step()
    after.step()
    assert second.param_groups[0]["lr"] == 1e-6


def test_without_lr_steps_the_schedule_is_the_multistep_decay_as_before():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    scheduler = make_scheduler(optimizer, 2, 0.01)
    assert type(scheduler) is torch.optim.lr_scheduler.MultiStepLR
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == [1e-3, 1e-3, 1e-3 * 0.01]


# ---- the command line -----------------------------------------------------------------------


def test_cli_trains_a_variant_under_its_name_with_absolute_lr_steps(tmp_path, capsys):
    from grad2vae.cli import main

    data = tmp_path / "data"
    write_synthetic_dataset(data, "mnist", train_per_class=6, test_per_class=3, seed=0)
    out = tmp_path / "run"
    args = ["train", "--model", "cae_own_protocol", "--base-model", "cae", "--dataset", "mnist",
            "--normal-class", "1", "--seed", "0", "--data-dir", str(data), "--out-dir", str(out),
            "--epochs", "2", "--batch-size", "4", "--lr", "1e-4", "--lr-decay-epoch", "0",
            "--lr-steps", "1:1e-5", "--device", "cpu", "--no-progress",
            "--checkpoint-every", "0"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "cae_own_protocol" and metrics["base_model"] == "cae"
    assert metrics["config"]["lr_steps"] == [[1, 1e-5]]
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert history["lr"].tolist() == [1e-4, 1e-5]
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["base_model"] == "cae"
    from grad2vae.training.lifecycle import load_trained_model

    assert (
        type(load_trained_model(out)).__name__ == "BaselineCAE"
        or load_trained_model(out).name == "cae"
    )


def test_cli_refuses_an_option_without_a_variant_name(tmp_path):
    from grad2vae.cli import main

    code = main(["train", "--model", "vae", "--option", "kl=mean", "--dataset", "mnist",
                 "--normal-class", "1", "--seed", "0", "--data-dir", str(tmp_path),
                 "--out-dir", str(tmp_path / "r")])  # fmt: skip
    assert code != 0


# ---- the workflow ---------------------------------------------------------------------------


def test_presets_plan_their_grids(tmp_path):
    overlay = write_config(tmp_path / "where.yaml", {"results_dir": str(tmp_path / "results")})
    ablation = snakemake("-n", "--configfile", "presets/ablation.yaml", str(overlay))
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    assert job_counts(ablation.stdout)["train"] == 2 * 10 * 3 * 12
    own = snakemake("-n", "-p", "--configfile", "presets/table1-own-protocols.yaml", str(overlay))
    assert own.returncode == 0, own.stderr[-3000:]
    assert job_counts(own.stdout)["train"] == 2000
    commands = [
        line for line in own.stdout.splitlines() if "--model inception_caenn_own_protocol " in line
    ]
    assert commands and all("--base-model inception_caenn " in c and "--lr-steps 250:1e-05" in c
                            and "--epochs 350" in c and "--batch-size 200" in c
                            and "--lr-decay-epoch 0" in c for c in commands)  # fmt: skip
    paper = [
        line for line in own.stdout.splitlines() if "--model deep_svdd_paper_protocol " in line
    ]
    assert paper and all("--epochs 100 " in c and "--batch-size 128 " in c for c in paper)
    # the short studies behind docs/findings: 20 VAE + 20 Grad2VAE + the fusion-free variant on
    # classes 1 and 8 of both datasets; VAE and Grad2VAE on MNIST 1 and 8
    metric = snakemake("-n", "--configfile", "presets/table1-metric.yaml", str(overlay))
    assert metric.returncode == 0, metric.stderr[-3000:]
    assert job_counts(metric.stdout)["train"] == 20 + 20 + 4
    study = snakemake("-n", "--configfile", "presets/score-study.yaml", str(overlay))
    assert study.returncode == 0, study.stderr[-3000:]
    assert job_counts(study.stdout)["train"] == 4


def test_a_variant_on_a_subset_of_the_classes_is_expected_only_there():
    from grad2vae.analysis.collect import expected_grid, grid_keys

    workflow = {
        "datasets": ["mnist"], "normal_classes": [0, 1, 2], "seeds": [0, 1], "models": ["vae"],
        "variants": {"vae_kl_mean": {"model": "vae", "options": {"kl": "mean"},
                                     "normal_classes": [1]}},
    }  # fmt: skip
    grid = expected_grid(Path("/nonexistent"), workflow, {})
    keys = grid_keys(grid)
    assert len(keys) == 3 * 2 + 1 * 2
    assert {k["normal_class"] for k in keys if k["model"] == "vae_kl_mean"} == {1}
    assert "model_classes" not in expected_grid(Path("/x"), dict(workflow, variants={}), {})


@pytest.mark.parametrize(
    "variants, named",
    [
        (
            {"cae_bad": {"model": "cae", "options": {"kl": "mean"}}},
            "variant cae_bad: model 'cae' has no option 'kl'",
        ),
        ({"bad": {"model": "nope"}}, "variants.bad.model"),
        ({"vae": {"model": "cae"}}, "variants"),
        (
            {"cae_steps": {"model": "cae", "train": {"lr_steps": [[5, 0.001]]}}},
            "set lr_decay_epoch to 0",
        ),
    ],
)
def test_a_bad_variant_is_an_error_before_any_job_runs(tmp_path, variants, named):
    config = write_config(
        tmp_path / "bad.yaml", {"results_dir": str(tmp_path / "r"), "variants": variants}
    )
    result = snakemake("-n", "--configfile", str(config))
    assert result.returncode != 0 and named in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )
    assert "rule train" not in result.stdout


# ---- aggregation ----------------------------------------------------------------------------


def test_table1_puts_each_variant_beside_its_models_published_column():
    layout = table1_layout(["inception_caenn", "grad2vae", "inception_caenn_own_protocol",
                            "vae_kl_mean", "vae"],
                           {"inception_caenn_own_protocol": "inception_caenn",
                            "vae_kl_mean": "vae"})  # fmt: skip
    models = [g["model"] for g in layout]
    at = models.index("inception_caenn")
    assert models[at + 1] == "inception_caenn_own_protocol"
    assert (
        layout[at + 1]["kind"] == "compared"
        and layout[at + 1]["published_column"] == layout[at]["published_column"]
    )
    kinds = {g["model"]: g["kind"] for g in layout if g["model"]}
    assert kinds["vae_kl_mean"] == "ours_only" and kinds["vae"] == "ours_only"


def _runs(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"dataset": "mnist", "model": model, "normal_class": c, "seed": s, "auc": auc + 0.001 * s}
        for model, aucs in values.items()
        for c, auc in enumerate(aucs)
        for s in range(2)
    ]
    return pd.DataFrame(rows)


def test_ablations_test_each_variant_against_its_default_with_holm():
    base = [0.90, 0.80, 0.85, 0.70, 0.95, 0.60, 0.75, 0.88]
    runs = _runs(
        {
            "vae": base,
            "vae_kl_mean": [a - 0.05 for a in base],
            "vae_same": [a + (0.01 if i % 2 else -0.01) for i, a in enumerate(base)],
        }
    )
    avgs = (
        runs.groupby(["dataset", "model", "normal_class"])["auc"]
        .mean()
        .mul(100)
        .groupby(["dataset", "model"])
        .mean()
    )
    avgs = avgs.rename("auc_pct_mean").reset_index().assign(mstd=0.07)
    config = {
        "variants": {
            "vae_kl_mean": {"model": "vae", "options": {"kl": "mean"}},
            "vae_same": {"model": "vae"},
        }
    }
    grid = {"datasets": ["mnist"], "models": ["vae", "vae_kl_mean", "vae_same"]}
    payload = ablations(runs, avgs, grid, variant_bases(config), config)
    rows = {r["variant"]: r for r in payload["datasets"]["mnist"]["rows"]}
    lower = rows["vae_kl_mean"]
    assert lower["changes"] == "kl=mean" and lower["n_classes"] == 8
    assert math.isclose(lower["difference_pct"], -5.0)
    assert math.isclose(lower["p"], 2 / 2**8) and math.isclose(lower["p_holm"], 2 * lower["p"])
    assert lower["significant"] and not rows["vae_same"]["significant"]
    sentence = payload["datasets"]["mnist"]["sentence"]
    assert sentence.startswith(
        "Choices that change the average AUC significantly: vae_kl_mean (kl=mean: -5.00"
    )
    assert (
        ablations(runs, avgs, {"datasets": ["mnist"], "models": ["vae"]}, {}, {})["datasets"] == {}
    )


def test_variant_bases_come_from_the_config_or_the_runs():
    runs = pd.DataFrame([{"model": "x", "base_model": "cae"}, {"model": "vae", "base_model": None}])
    assert variant_bases({}, runs) == {"x": "cae"}
    assert variant_bases({"variants": {"y": {"model": "vae"}}}, runs) == {"y": "vae", "x": "cae"}


@pytest.mark.slow
def test_tiny_ablation_grid_end_to_end_to_a_report_with_the_ablations_section(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, "mnist", train_per_class=10, test_per_class=4, seed=0)
    results, report = tmp_path / "results", tmp_path / "report"
    variants = {
        "inception_caenn_own_protocol": {
            "model": "inception_caenn",
            "train": {
                "epochs": 2,
                "lr": 0.0001,
                "lr_decay_epoch": 0,
                "lr_steps": [[1, 0.00001]],
                "eval_every": 0,
            },
        },
    }
    if "kl" in create_model("vae", 4).options:
        variants["vae_kl_mean"] = {"model": "vae", "options": {"kl": "mean"}}
    config = write_config(tmp_path / "ablation.yaml", {
        "results_dir": str(results), "report_dir": str(report), "data": {"dir": str(data)},
        "datasets": ["mnist"], "normal_classes": [1, 2], "seeds": [0], "models": ["vae"],
        "variants": variants,
        "train": {"epochs": 2, "batch_size": 8, "train_limit": 8, "test_limit": 24,
                  "checkpoint_every": 0, "device": "cpu"},
        "resources": {"train": {"threads": 1, "gpu": 0, "mem_mb": 2000, "runtime": 10}},
        "figures": {"roc_class": 1, "dpi": 50},
        "explain": {"enabled": False},
    })  # fmt: skip
    result = snakemake("--cores", "2", "--configfile", str(config), timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    runs = pd.read_csv(results / "aggregate" / "runs.csv")
    assert set(runs["model"]) == {"vae", *variants}
    own = runs[runs["model"] == "inception_caenn_own_protocol"]
    assert set(own["base_model"]) == {"inception_caenn"} and len(own) == 2
    run_dir = Path(own["run_dir"].iloc[0])
    assert pd.read_csv(run_dir / "history.tsv", sep="\t")["lr"].tolist() == [0.0001, 0.00001]
    ablation = json.loads((results / "aggregate" / "ablations.json").read_text())
    assert {r["variant"] for r in ablation["datasets"]["mnist"]["rows"]} == set(variants)
    claims = json.loads((results / "aggregate" / "claims.json").read_text())
    best = next(c for c in claims if c["id"] == "best_average")
    assert "own_protocol" not in json.dumps(
        best["evidence"]
    )  # the paper's claims: the paper's models only
    table1 = pd.read_csv(results / "aggregate" / "table1.csv")
    assert (
        "inception_caenn_own_protocol_difference" in table1
    )  # beside Inception-CAENN's published column
    page = (report / "index.html").read_text(encoding="utf-8")
    assert (
        'id="ablations"' in page
        and "ablations-mnist" in page
        and ablation["datasets"]["mnist"]["sentence"] in page
    )
