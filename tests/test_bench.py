"""`grad2vae bench`: the tiny mode runs end to end and writes valid JSON with the expected keys;
the pieces it is built from compute what they claim. No timed assertions."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from grad2vae.bench import command as bench
from grad2vae.bench import results as bench_report
from grad2vae.bench import timing as bench_timing
from grad2vae.cli import main
from grad2vae.errors import UserError

ROW_KEYS = {
    "dataset",
    "latent_dim",
    "variant",
    "model",
    "derivatives",
    "auto",
    "ms_per_step",
    "images_per_second",
    "seconds_per_epoch",
    "seconds_per_eval",
    "flops_per_step",
    "achieved_flops_per_second",
    "fraction_of_matmul_rate",
    "speedup_vs_loop",
    "flop_ratio_vs_loop",
    "parameters",
}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("bench") / "out" / "bench.json"
    assert main(["bench", "--tiny", "--output", str(path)]) == 0
    return json.loads(path.read_text())


def test_tiny_mode_writes_json_with_every_key(tiny_result):
    result = tiny_result
    for key in (
        "schema",
        "date",
        "device",
        "device_type",
        "threads",
        "cpu_malloc",
        "torch",
        "settings",
        "matmul",
        "rows",
        "derivative_checks",
        "seed_groups",
        "loaders",
        "auto_method",
        "verdict",
        "grid",
    ):
        assert key in result, key
    assert result["schema"] == bench.SCHEMA
    assert result["settings"]["tiny"] is True
    assert result["matmul"]["flops_per_second"] > 0
    variants = {row["variant"] for row in result["rows"]}
    assert {"vae", "cae", "inception_caenn"} <= variants
    assert {f"grad2vae[{m}]" for m in ("loop", "vectorized", "closed_form", "explicit")} <= variants
    for row in result["rows"]:
        assert ROW_KEYS <= row.keys()
        assert row["ms_per_step"] > 0 and row["flops_per_step"] > 0 and row["seconds_per_eval"] > 0
        assert row["eval_scores_with_pixel_seconds_measured"] > 0 and row["pixel_metric_ratio"] > 0
    by_variant = {row["variant"]: row for row in result["rows"]}
    # FlopCounterMode sees the double backward: the loop costs more than a plain VAE step and the
    # closed forms do fewer FLOPs than the loop.
    assert by_variant["grad2vae[loop]"]["flops_per_step"] > by_variant["vae"]["flops_per_step"]
    for method in ("closed_form", "explicit"):
        assert by_variant[f"grad2vae[{method}]"]["flop_ratio_vs_loop"] > 1
    checks = result["derivative_checks"]["mnist"]
    assert all(entry["agrees"] for entry in checks.values()), checks
    loader = result["loaders"]["mnist"]
    assert loader["ours_seconds_per_epoch"] > 0 and loader["straightforward_seconds_per_epoch"] > 0
    assert set(loader["per_model"]) == variants
    grid = result["grid"]
    assert grid["runs"] == 4 * 10 * 10 * 1  # the tiny mode measures one dataset
    assert grid["hours"] > 0 and set(grid["hours_per_model"]) == {
        "grad2vae",
        "vae",
        "cae",
        "inception_caenn",
    }
    assert result["verdict"]["per_dataset"]["mnist"] in checks
    groups = result["seed_groups"]["mnist"]
    # every grid model supports vmapped seeds on the CPU (Grad2VAE with auto = explicit)
    assert set(groups) == {"grad2vae[explicit]", "vae", "cae", "inception_caenn"}
    for group in groups.values():
        assert (
            group["seeds"] == 2
            and group["seconds_per_step_vmap"] > 0
            and group["seconds_per_step_in_turn"] > 0
        )
        assert group["speedup"] == pytest.approx(
            group["seconds_per_step_in_turn"] / group["seconds_per_step_vmap"]
        )


def test_report_formats_the_tiny_result(tiny_result):
    text = bench_report.format_report(tiny_result)
    assert "grad2vae[explicit]" in text and "TINY MODE" in text and "grid estimate" in text
    assert "several seeds in one process" in text


def _args(**overrides):
    values = dict(
        tiny=True,
        models=None,
        methods=None,
        datasets=None,
        batch_size=None,
        train_images=None,
        test_images=None,
        eval_images=None,
        eval_batch_size=None,
        repeats=None,
        steps=None,
        warmup=None,
        seeds_per_process=None,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def test_settings_keep_the_loop_and_reject_unknown_names():
    settings = bench.settings_from_args(_args(methods="explicit", datasets="fashion_mnist,mnist=4"))
    assert settings.methods == ("loop", "explicit")
    assert settings.datasets == {"fashion_mnist": 32, "mnist": 4}
    with pytest.raises(UserError, match="unknown model"):
        bench.settings_from_args(_args(models="vae,nope"))
    with pytest.raises(UserError, match="derivative method"):
        bench.settings_from_args(_args(methods="magic"))
    with pytest.raises(UserError, match="dataset=latent"):
        bench.settings_from_args(_args(datasets="imagenet"))
    with pytest.raises(UserError, match=">= 1"):
        bench.settings_from_args(_args(repeats=0))
    with pytest.raises(UserError, match="seeds-per-process"):
        bench.settings_from_args(_args(seeds_per_process=1))
    assert bench.settings_from_args(_args(seeds_per_process=0)).seeds_per_process == 0


def test_grid_estimate_arithmetic():
    def row(model, method, epoch, evaluation):
        return {
            "dataset": "mnist",
            "model": model,
            "derivatives": method,
            "seconds_per_epoch": epoch,
            "seconds_per_eval": evaluation,
            "ms_per_step": epoch,
        }

    rows = [
        row("vae", None, 3.0, 1.0),
        row("grad2vae", "loop", 30.0, 6.0),
        row("grad2vae", "explicit", 10.0, 2.0),
        row("grad2vae", "vectorized", 20.0, 2.0),
    ]
    grid = bench_report.grid_estimate(rows, bench_timing.Settings(), auto_method="explicit")
    # 100 runs per (dataset, model), 100 epochs and 100 evaluations each
    assert grid["hours_per_model"]["vae"] == pytest.approx(100 * 100 * 4.0 / 3600)
    assert grid["hours_per_model"]["grad2vae"] == pytest.approx(100 * 100 * 12.0 / 3600)
    assert grid["hours_with_grad2vae_loop"] == pytest.approx(100 * 100 * (4.0 + 36.0) / 3600)
    assert grid["runs"] == 200 and grid["grad2vae_method"] == {"mnist": "explicit"}
    # auto's method not measured: the fastest measured one stands in
    grid = bench_report.grid_estimate(
        rows[:2] + rows[3:], bench_timing.Settings(), auto_method="explicit"
    )
    assert grid["grad2vae_method"] == {"mnist": "vectorized"}
    assert grid["hours_per_model"]["grad2vae"] == pytest.approx(100 * 100 * 22.0 / 3600)
    assert grid["hours_seeds_per_job"] is None  # no seed groups measured


def test_grid_estimate_with_seeds_vmapped():
    settings = bench_timing.Settings(train_images=1000, batch_size=100)  # 10 steps per epoch
    rows = [
        {
            "dataset": "mnist",
            "model": "vae",
            "variant": "vae",
            "derivatives": None,
            "seconds_per_epoch": 2.5,
            "ms_per_step": 200.0,
            "seconds_per_eval": 1.0,
        }
    ]
    groups = {"mnist": {"vae": {"speedup": 4.0}}}
    vmapped = bench_report.grid_estimate(rows, settings, "explicit", groups, seed_batching="vmap")
    # the 2.0 s of steps per epoch take 0.5 s; data feeding (0.5 s) and evaluation stay
    assert vmapped["hours_seeds_per_job"] == pytest.approx(100 * (100 * 1.0 + 100 * 1.0) / 3600)
    assert vmapped["hours"] == pytest.approx(100 * (100 * 2.5 + 100 * 1.0) / 3600)
    in_turn = bench_report.grid_estimate(
        rows, settings, "explicit", groups, seed_batching="sequential"
    )
    assert in_turn["hours_seeds_per_job"] == pytest.approx(in_turn["hours"])


def test_dataset_rows_from_the_measured_times():
    def variant(label, method):
        model = "grad2vae" if method else label
        return bench_timing.Variant(label, model, method, lambda: torch.nn.Linear(2, 3))

    variants = [variant("grad2vae[loop]", "loop"), variant("grad2vae[explicit]", "explicit")]
    variants.append(variant("vae", None))
    flops = [400, 100, 50]
    prepared = [(v, v.build(), None, f) for v, f in zip(variants, flops)]
    times = bench_timing.DatasetTimes(
        dataset="mnist",
        latent_dim=4,
        prepared=prepared,
        step_times={"grad2vae[loop]": [0.4, 0.2], "grad2vae[explicit]": [0.1, 0.1], "vae": [0.1]},
        eval_times={
            v.label: {"fit_seconds": 1.0, "scores_seconds": 0.5, "scores_with_pixel_seconds": 0.6}
            for v in variants
        },
        eval_images=5,
        feed={"ours": 1.0, "straightforward": 3.0},
        feed_kind="map-style",
    )
    settings = bench_timing.Settings(train_images=1000, batch_size=100, test_images=10)
    rows, loader = bench_report.dataset_rows(times, settings, "explicit", matmul_rate=1000.0)
    loop, explicit, vae = rows
    assert [r["variant"] for r in rows] == ["grad2vae[loop]", "grad2vae[explicit]", "vae"]
    assert loop["ms_per_step"] == pytest.approx(300.0) and loop["auto"] is False
    assert explicit["auto"] is True and vae["auto"] is True
    assert explicit["speedup_vs_loop"] == pytest.approx(3.0)
    assert explicit["speedup_vs_loop_paired"] == pytest.approx(3.0)  # median of 4 and 2
    assert explicit["flop_ratio_vs_loop"] == pytest.approx(4.0)
    assert vae["speedup_vs_loop"] is None and vae["flop_ratio_vs_loop"] is None
    assert explicit["seconds_per_epoch"] == pytest.approx(10 * 0.1 + 1.0)
    # the evaluation as the trainer runs it: with the pixel-level AUC, whose share is a ratio
    assert explicit["seconds_per_eval"] == pytest.approx(1.0 + 0.6 * 10 / 5)
    assert explicit["pixel_metric_ratio"] == pytest.approx(0.6 / 0.5)
    assert explicit["fraction_of_matmul_rate"] == pytest.approx(100 / 0.1 / 1000.0)
    assert vae["parameters"] == 9 and set(ROW_KEYS) <= set(vae)
    assert (
        loader["data_ratio"] == pytest.approx(3.0) and loader["straightforward_kind"] == "map-style"
    )
    assert loader["per_model"]["vae"]["ratio"] == pytest.approx((10 * 0.1 + 3.0) / (10 * 0.1 + 1.0))


def test_straightforward_dataset_gives_the_trainers_tensors():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    dataset = bench_timing.StraightforwardDataset(images)
    expected = torch.from_numpy(images).float().unsqueeze(1) / 255
    got = torch.stack([dataset[i] for i in range(len(dataset))])
    torch.testing.assert_close(got, expected)


def train_argv(data_dir, out_dir, *options: str) -> list[str]:
    """`grad2vae train` of a grad2vae run on MNIST class 1, seed 0, plus ``options``."""
    return [
        "train",
        "--model",
        "grad2vae",
        "--dataset",
        "mnist",
        "--normal-class",
        "1",
        "--seed",
        "0",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        *options,
    ]


@pytest.mark.parametrize("method", ["loop", "explicit"])
def test_train_flag_picks_the_derivative_method_and_records_it(method, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(
        tiny_data_dir,
        out,
        "--latent-dim",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--train-limit",
        "8",
        "--test-limit",
        "20",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        "--derivatives",
        method,
    )
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["derivatives"] == method
    assert "derivatives" not in metrics["config"]  # like --device: not part of the config hash


def test_train_flag_rejects_unknown_methods(tiny_data_dir, tmp_path):
    argv = train_argv(tiny_data_dir, tmp_path / "r", "--derivatives", "magic")
    assert main(argv) == 2
