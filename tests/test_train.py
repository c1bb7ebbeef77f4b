"""`grad2vae train`: outputs, reproducibility, resume after SIGKILL, bad input, non-finite loss.

Most tests use a tiny test-only model (registered here) on the synthetic `tiny_data_dir`; the
subprocess tests use the real `vae` (a subprocess cannot see a model registered in this one).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_config, train_on_cpu
from torch import nn

import grad2vae.training.cohort as cohort_module
from grad2vae import models
from grad2vae.cli import main
from grad2vae.data import datasets as data
from grad2vae.errors import UserError
from grad2vae.layout import CHECKPOINT
from grad2vae.models.base import AnomalyModel
from grad2vae.progress import Progress
from grad2vae.training import command as train
from grad2vae.training.cohort import AUTO_SEED_BATCHING, vmapped_losses
from grad2vae.training.evaluate import NonFiniteLossError, evaluate
from grad2vae.training.lifecycle import Run, load_trained_model
from grad2vae.training.outputs import read_scores
from grad2vae.training.run_config import ASSUMPTIONS, RunConfig, derive_seed

CONTRIBUTING_KEYS = {
    "model",
    "dataset",
    "normal_class",
    "seed",
    "main_score",
    "auc",
    "auc_reconstruction",
    "epochs",
    "wall_seconds",
    "seconds_per_epoch",
    "device",
    "parameters",
    "versions",
    "git_commit",
    "config",
    "config_hash",
}


class TinyVAE(AnomalyModel):
    """A 784-32-d MLP VAE: draws training noise from the global RNG and scores with the
    evaluation generator, so it exercises every RNG stream the trainer must manage."""

    name = "tiny_test_vae"
    main_score = "reconstruction error (BCE, sampled z)"
    assumptions = ("test-only model — tests/test_train.py",)

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, 784))

    def _errors(self, x, eps):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decoder(z).view_as(x)
        bce = (
            nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
            .flatten(1)
            .sum(1)
        )
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
        return bce, kl

    def loss(self, x):
        eps = torch.randn(len(x), self.latent_dim, device=x.device)
        bce, kl = self._errors(x, eps)
        return {"reconstruction": bce.mean(), "kl": kl.mean(), "total": bce.mean() + kl.mean()}

    def scores(self, x, generator=None):
        eps = torch.randn(len(x), self.latent_dim, generator=generator, device=x.device)
        bce, kl = self._errors(x, eps)
        return {"main": (bce + kl).detach(), "reconstruction": bce.detach()}


class NanAfterVAE(TinyVAE):
    """Its KL term turns NaN from the 3rd training batch on (the trainer sees it in epoch 3)."""

    name = "tiny_test_nan"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.calls = 0

    def loss(self, x):
        self.calls += 1
        terms = super().loss(x)
        if self.calls >= 3:
            terms["kl"] = terms["kl"] * float("nan")
            terms["total"] = terms["reconstruction"] + terms["kl"]
        return terms


@pytest.fixture
def tiny_models(monkeypatch):
    try:
        models._load_builtin_models()
    except ImportError:  # the real models are not all there (yet): test with ours only
        monkeypatch.setattr(models, "_load_builtin_models", lambda: None)
    for cls in (TinyVAE, NanAfterVAE):
        monkeypatch.setitem(models.MODELS, cls.name, cls)


def config(**changes) -> RunConfig:
    # batch 8 on 30 training images: 4 batches per epoch, the last one smaller.
    fields = dict(latent_dim=4, epochs=4, batch_size=8, lr=1e-2, lr_decay_epoch=2, eval_every=1,
                  eval_batch_size=32)  # fmt: skip
    return tiny_run_config(**{"model": "tiny_test_vae", **fields, **changes})


run = train_on_cpu


def read_tsv(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return header, [dict(zip(header, line.split("\t"))) for line in lines[1:]]


class Killed(Exception):
    """Stops a run from its on_epoch callback (``_kill_at``)."""


def _kill_at(epoch):
    def on_epoch(row):
        if row["epoch"] == epoch:
            raise Killed

    return on_epoch


def test_outputs_follow_the_contract(tiny_models, tiny_data_dir, tmp_path):
    cfg = config()
    metrics = run(cfg, tmp_path / "run", tiny_data_dir, checkpoint_every=1)
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt",  # the final state, until the aggregation has read the run
        "history.tsv",
        "metrics.json",
        "model.pt",
        "scores.csv.gz",
    ]
    assert_final_state(out, cfg.epochs)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert CONTRIBUTING_KEYS <= set(on_disk)
    assert on_disk["config"] == cfg.to_dict()
    canonical = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    assert on_disk["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert on_disk["epochs"] == 4 and on_disk["parameters"] == TinyVAE(4).parameter_count()
    assert set(on_disk["versions"]) >= {"python", "torch", "torchvision", "cuda"}
    assert on_disk["device"] and on_disk["git_commit"]
    assert 0.0 <= on_disk["auc"] <= 1.0

    header, rows = read_tsv(out / "history.tsv")
    assert header == [
        "epoch",
        "lr",
        "seconds",
        "train_seconds",
        "loss_reconstruction",
        "loss_kl",
        "loss_total",
        "auc",
        "auc_reconstruction",
        "mean_main_normal",
        "mean_main_anomalous",
        "mean_reconstruction_normal",
        "mean_reconstruction_anomalous",
    ]
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-3]
    )  # decay after epoch 2
    assert float(rows[-1]["auc"]) == on_disk["auc"]

    split = data.load_split(tiny_data_dir, "mnist", 3)
    with gzip.open(out / "scores.csv.gz", "rt") as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "index,test_class,label,score_main,score_reconstruction"
    scores = read_scores(out / "scores.csv.gz")
    assert len(scores) == len(split.test_x) == 100
    assert [int(r["label"]) for r in scores] == split.test_labels.tolist()
    assert [int(r["test_class"]) for r in scores] == split.test_classes.tolist()
    assert all((int(r["label"]) == 1) == (int(r["test_class"]) != 3) for r in scores)

    # The saved weights give the saved scores again.
    model = load_trained_model(out)
    again, extra, _ = evaluate(model, split, derive_seed(0, "eval"), batch_size=32)
    assert np.array_equal(
        again["main"], np.array([float(r["score_main"]) for r in scores], dtype=np.float32)
    )
    assert extra == {}  # extra scores only where asked for (the final evaluation)
    # the score means of the last epoch are those of the saved scores
    normal = [float(r["score_main"]) for r in scores if r["label"] == "0"]
    assert float(rows[-1]["mean_main_normal"]) == pytest.approx(np.mean(normal))
    assert on_disk["score_means"]["mean_main_normal"] == pytest.approx(np.mean(normal))
    assert on_disk["train_flops_per_step"] > 0 and on_disk["train_flops_batch"] == cfg.batch_size


def test_learns_the_easy_synthetic_task(tiny_models, tiny_data_dir, tmp_path):
    metrics = run(config(epochs=6, lr_decay_epoch=0, eval_every=0), tmp_path / "run", tiny_data_dir)
    assert metrics["auc"] > 0.9
    _, rows = read_tsv(tmp_path / "run" / "history.tsv")
    assert [r["auc"] for r in rows[:-1]] == [""] * 5 and rows[-1]["auc"]  # eval_every 0: last only


def test_same_seed_same_results_other_seed_differs(tiny_models, tiny_data_dir, tmp_path):
    a = run(config(epochs=2), tmp_path / "a", tiny_data_dir)
    b = run(config(epochs=2), tmp_path / "b", tiny_data_dir)
    run(config(epochs=2, seed=1), tmp_path / "c", tiny_data_dir)
    assert (a["auc"], a["auc_reconstruction"]) == (b["auc"], b["auc_reconstruction"])
    assert (tmp_path / "a" / "scores.csv.gz").read_bytes() == (
        tmp_path / "b" / "scores.csv.gz"
    ).read_bytes()
    assert (tmp_path / "a" / "scores.csv.gz").read_bytes() != (
        tmp_path / "c" / "scores.csv.gz"
    ).read_bytes()


def test_evaluation_does_not_disturb_training(tiny_models, tiny_data_dir, tmp_path):
    every = run(config(epochs=3), tmp_path / "every", tiny_data_dir)
    last = run(config(epochs=3, eval_every=0), tmp_path / "last", tiny_data_dir)
    assert every["auc"] == last["auc"]
    assert (tmp_path / "every" / "scores.csv.gz").read_bytes() == (
        tmp_path / "last" / "scores.csv.gz"
    ).read_bytes()


def test_interrupted_run_resumes_exactly(tiny_models, tiny_data_dir, tmp_path):
    cfg = config(epochs=5)
    full = run(cfg, tmp_path / "full", tiny_data_dir)

    with pytest.raises(Killed):
        run(cfg, tmp_path / "cut", tiny_data_dir, checkpoint_every=2, on_epoch=_kill_at(4))
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = run(cfg, tmp_path / "cut", tiny_data_dir, checkpoint_every=2)
    assert resumed["resumes"] == 1
    assert (resumed["auc"], resumed["auc_reconstruction"]) == (
        full["auc"],
        full["auc_reconstruction"],
    )
    assert (tmp_path / "cut" / "scores.csv.gz").read_bytes() == (
        tmp_path / "full" / "scores.csv.gz"
    ).read_bytes()
    drop = {"seconds", "train_seconds"}
    _, rows_full = read_tsv(tmp_path / "full" / "history.tsv")
    _, rows_cut = read_tsv(tmp_path / "cut" / "history.tsv")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_cut] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_full
    ]
    assert_final_state(tmp_path / "cut", cfg.epochs)


def assert_final_state(run_dir, epochs: int) -> None:
    """A finished run keeps its final state (weights and history, no optimizer) until the
    aggregation has read it: a rerun after Snakemake deleted its outputs only evaluates."""
    final = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert final["epoch"] == epochs and "optimizer" not in final
    assert len(final["history"]) == epochs


def test_finished_run_does_nothing_and_other_config_is_refused(
    tiny_models, tiny_data_dir, tmp_path
):
    out = tmp_path / "run"
    first = run(config(epochs=1), out, tiny_data_dir)
    stamp = (out / "metrics.json").stat().st_mtime_ns
    again = run(config(epochs=1), out, tiny_data_dir)
    assert again == json.loads(json.dumps(first))
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="another --out-dir.*delete"):
        run(config(epochs=2), out, tiny_data_dir)


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_models, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    # 30 images, batch 15: 2 batches per epoch; the 3rd batch (epoch 2) is NaN.
    with pytest.raises(NonFiniteLossError, match=r"epoch 2: loss term 'kl'.*after epoch 1"):
        run(config(model="tiny_test_nan", batch_size=15), out, tiny_data_dir, checkpoint_every=1)
    assert not (out / "metrics.json").exists()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert (
        main(
            [
                "train",
                "--model",
                "tiny_test_nan",
                "--dataset",
                "mnist",
                "--normal-class",
                "3",
                "--seed",
                "0",
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(tmp_path / "cli"),
                "--batch-size",
                "15",
                "--epochs",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--normal-class", "10"], "normal class 10 does not exist"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--data-dir", "MISSING"], "snakemake data.*grad2vae fetch"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(
    tiny_models, tiny_data_dir, tmp_path, capsys, change, message
):
    args = {
        "--model": "tiny_test_vae",
        "--dataset": "mnist",
        "--normal-class": "0",
        "--seed": "0",
        "--data-dir": str(tiny_data_dir),
        "--out-dir": str(tmp_path / "run"),
        "--epochs": "1",
    }
    key, value = change
    args[key] = str(tmp_path / "nodata") if value == "MISSING" else value
    argv = ["train", "--device", "cpu"] + [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_progress_bar_only_on_a_terminal():
    class Stream:
        def __init__(self, tty):
            self.tty, self.text = tty, ""

        def isatty(self):
            return self.tty

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    tty, pipe = Stream(True), Stream(False)
    for stream in (tty, pipe):
        bar = Progress(stream=stream)
        bar.update(1, 3, 4, 4)
        bar.clear()
    assert "\repoch 1/3 [" in tty.text and pipe.text == ""


def test_assumptions_are_documented():
    assert len(ASSUMPTIONS) >= 10
    assert all(" — " in entry for entry in ASSUMPTIONS)


@pytest.mark.parametrize("model", ["vae", "grad2vae", "cae", "inception_caenn"])
def test_real_models_one_epoch(tiny_data_dir, tmp_path, model):
    cfg = RunConfig(
        model=model,
        dataset="fashion_mnist",
        normal_class=1,
        seed=0,
        epochs=1,
        batch_size=16,
        train_limit=20,
        test_limit=40,
        eval_batch_size=20,
    )
    metrics = run(cfg, tmp_path / model, tiny_data_dir)
    assert metrics["config"]["latent_dim"] == 32
    assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["auc_reconstruction"] <= 1.0
    assert len(read_scores(tmp_path / model / "scores.csv.gz")) == 40
    reloaded = load_trained_model(tmp_path / model)
    assert reloaded.parameter_count() == metrics["parameters"]
    assert metrics["cpu_malloc"] == "kept" or metrics["cpu_malloc"].startswith("unavailable")


# --------------------------------------------------------------------------------------------
# The real command in a subprocess, killed with SIGKILL


def _cli(data_dir, out_dir, epochs):
    return [
        sys.executable,
        "-m",
        "grad2vae.cli",
        "train",
        "--model",
        "vae",
        "--dataset",
        "mnist",
        "--normal-class",
        "1",
        "--seed",
        "3",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--train-limit",
        "24",
        "--test-limit",
        "40",
        "--eval-batch-size",
        "20",
        "--lr-decay-epoch",
        "3",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _history_epochs(out_dir):
    try:
        return len((out_dir / "history.tsv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def test_sigkill_and_restart_gives_identical_results(tiny_data_dir, tmp_path):
    epochs = 8
    cfg = RunConfig(
        model="vae",
        dataset="mnist",
        normal_class=1,
        seed=3,
        epochs=epochs,
        batch_size=8,
        train_limit=24,
        test_limit=40,
        eval_batch_size=20,
        lr_decay_epoch=3,
    )
    full = tmp_path / "full"
    run(cfg, full, tiny_data_dir, threads=1)  # uninterrupted, in this process (one thread too)

    cut = tmp_path / "cut"
    kills = 0
    # SIGKILL twice while training: after the epoch-2 checkpoint once epoch 3 is done, then,
    # after resuming, once epoch 6 is done; the third start runs to the end.
    for reached in (3, 6):
        process = subprocess.Popen(
            _cli(tiny_data_dir, cut, epochs),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while process.poll() is None and not (
            (cut / "checkpoint.pt").exists() and _history_epochs(cut) >= reached
        ):
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        assert not (cut / "metrics.json").exists(), "the run ended before it could be killed"
    assert kills == 2
    finished = subprocess.run(
        _cli(tiny_data_dir, cut, epochs), env=_env(), timeout=300, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr
    assert "resuming after epoch" in finished.stderr

    m_full = json.loads((full / "metrics.json").read_text())
    m_cut = json.loads((cut / "metrics.json").read_text())
    assert m_cut["resumes"] == 2
    for key in ("auc", "auc_reconstruction", "config", "config_hash", "parameters", "epochs"):
        assert m_cut[key] == m_full[key], key
    assert (cut / "scores.csv.gz").read_bytes() == (full / "scores.csv.gz").read_bytes()
    _, rows_full = read_tsv(full / "history.tsv")
    _, rows_cut = read_tsv(cut / "history.tsv")

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows]

    assert strip(rows_cut) == strip(rows_full)
    assert_final_state(cut, m_cut["epochs"])

    # Started again, the finished run does nothing.
    stamp = (cut / "metrics.json").stat().st_mtime_ns
    assert run(cfg, cut, tiny_data_dir, threads=1) == m_cut
    assert (cut / "metrics.json").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------------------------
# Several seeds in one process (train_runs): each run ends as it would alone


def _seed_configs(model, seeds, epochs=2):
    return [
        RunConfig(
            model=model,
            dataset="mnist",
            normal_class=3,
            seed=seed,
            epochs=epochs,
            batch_size=8,
            lr_decay_epoch=1,
            lr_decay_factor=0.1,
            train_limit=20,
            test_limit=40,
            eval_batch_size=16,
        )
        for seed in seeds
    ]


def _run_files(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    _, history = read_tsv(run_dir / "history.tsv")
    return metrics, state, history


def _separate_and_together(model, tiny_data_dir, tmp_path, seed_batching, seeds=(4, 7)):
    configs = _seed_configs(model, seeds)
    for config in configs:
        run(config, tmp_path / "alone" / f"seed{config.seed}", tiny_data_dir)
    together = train.train_seeds(
        configs,
        [tmp_path / "together" / f"seed{config.seed}" for config in configs],
        data_dir=tiny_data_dir,
        device="cpu",
        progress=False,
        seed_batching=seed_batching,
    )
    return configs, together


@pytest.mark.parametrize("model", ["vae", "grad2vae", "cae", "inception_caenn", "deep_svdd"])
def test_seeds_stepped_in_turn_equal_separate_runs_exactly(tiny_data_dir, tmp_path, model):
    configs, together = _separate_and_together(model, tiny_data_dir, tmp_path, "sequential")
    for config, metrics in zip(configs, together):
        alone = _run_files(tmp_path / "alone" / f"seed{config.seed}")
        grouped = _run_files(tmp_path / "together" / f"seed{config.seed}")
        assert metrics["seed_batching"] == "sequential" and metrics["seeds_in_process"] == 2
        assert grouped[0]["auc"] == alone[0]["auc"]
        assert grouped[0]["config_hash"] == alone[0]["config_hash"]
        for name, value in alone[1].items():
            assert torch.equal(grouped[1][name], value), name
        for row_alone, row_grouped in zip(alone[2], grouped[2]):
            for key in row_alone:
                if key.startswith("loss_") or key.startswith("auc"):
                    assert row_grouped[key] == row_alone[key], (key, row_alone["epoch"])
    # the two seeds really are different runs
    first, second = (_run_files(tmp_path / "together" / f"seed{c.seed}")[1] for c in configs)
    assert any(not torch.equal(first[name], second[name]) for name in first)


VMAP_MODELS = ["vae", "grad2vae", "cae", "inception_caenn"]


def _biases_before_batchnorm(model_name):
    model = models.create_model(model_name, 16, dataset="mnist")
    names = set()
    for prefix, module in model.named_modules():
        children = list(module.named_children())
        for (name, layer), (_, following) in zip(children, children[1:]):
            if isinstance(layer, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
                names.add(f"{prefix}.{name}.bias".lstrip("."))
    return names


def test_models_declaring_seed_vmap():
    from grad2vae.models.grad2vae import Grad2VAE

    cpu = torch.device("cpu")
    assert sorted(_models_declaring_seed_vmap()) == sorted(VMAP_MODELS + ["cae_ocsvm"])
    assert not Grad2VAE(16, derivatives="loop").supports_seed_vmap(cpu)


@pytest.mark.parametrize("model", VMAP_MODELS)
def test_seeds_vmapped_equal_separate_runs_within_rounding(tiny_data_dir, tmp_path, model):
    configs, together = _separate_and_together(model, tiny_data_dir, tmp_path, "vmap")
    for config, metrics in zip(configs, together):
        alone = _run_files(tmp_path / "alone" / f"seed{config.seed}")
        grouped = _run_files(tmp_path / "together" / f"seed{config.seed}")
        assert metrics["seed_batching"] == "vmap"
        # what the runs compute: every test image's scores and every epoch's loss terms.
        # Without BatchNorm the weights agree to ~1e-4 (below) and scores and losses to ~1e-5
        # relative on any kernel (seen: <= 6e-6), so 1e-3 relative on the scores and 1e-4 on
        # the losses. With BatchNorm the bias noise below reaches the running means (eval mode)
        # and, through the few weights it moves by ~lr, the training losses: that drift is set
        # by Adam's step lr = 1e-3, not by float rounding, so it is as large on any CPU and
        # kernel (seen over 7 kernel choices: scores <= 3.2e-2 relative, <= 1.8e-3 absolute on
        # scores of 0.02 to 1.5; losses <= 7.5e-4 relative, 1.4e-4 on an Intel Xeon). A real
        # bug is larger: one step skipped, doubled or taken with another seed's batch moves an
        # epoch's loss by several percent (it falls ~8 % per step here), and the other seed's
        # model gives main scores ~40 % apart (median).
        batchnorm = bool(_biases_before_batchnorm(model))
        tolerance, score_floor, loss_tolerance = (
            (5e-2, 1e-2, 1e-2) if batchnorm else (1e-3, 1e-5, 1e-4)
        )
        scores = [
            read_scores(tmp_path / side / f"seed{config.seed}" / "scores.csv.gz")
            for side in ("alone", "together")
        ]
        for row_alone, row_grouped in zip(*scores):
            for key in ("score_main", "score_reconstruction"):
                assert float(row_grouped[key]) == pytest.approx(
                    float(row_alone[key]), rel=tolerance, abs=score_floor
                )
        for name, value in alone[1].items():
            if _biases_before_batchnorm(model) and value.is_floating_point():
                # A convolution bias before BatchNorm has a gradient of exactly 0 in exact
                # arithmetic; Adam scales its rounding noise to steps of ~lr, different in any
                # two implementations, and the weights drift apart from there. What the model
                # computes stays close (the scores above); each step's gradients are checked
                # strictly in test_vmapped_losses_give_each_model_its_own_loss_and_gradients.
                continue
            if value.is_floating_point():
                # Tensor-wise: Adam's update of an element whose gradient is ~0 is ~lr * sign, so
                # a rounding difference can move a handful of elements by up to lr per step:
                # how many depends on the kernels (seen: up to 2.2e-4 of encoder.hidden.weight's
                # norm with oneDNN limited to SSE4.1). A real bug (a wrong gradient, batch or
                # step) moves most elements by ~lr per step: >= 1e-2 of any tensor's norm here.
                difference = (grouped[1][name] - value).norm()
                assert difference <= 1e-3 * value.norm() + 1e-6, (name, float(difference))
            else:  # BatchNorm's num_batches_tracked
                assert torch.equal(grouped[1][name], value), name
        for row_alone, row_grouped in zip(alone[2], grouped[2]):
            for key in row_alone:
                if key.startswith("loss_"):
                    assert float(row_grouped[key]) == pytest.approx(
                        float(row_alone[key]), rel=loss_tolerance, abs=1e-6
                    )
        # 4 normal x 36 anomalous test images: 0.03 is 4 of 144 pairs swapped by the drift above
        assert grouped[0]["auc"] == pytest.approx(alone[0]["auc"], abs=0.03)


def test_seed_vmap_rejects_random_ops_outside_sample_noise(tiny_data_dir, tmp_path, monkeypatch):
    from grad2vae.models.vae import VAE

    def loss_drawing_its_own_noise(self, x, noise=None):
        mu, logvar = self.encoder(x)
        return {"total": (mu + torch.randn_like(mu)).square().mean()}

    monkeypatch.setattr(VAE, "loss", loss_drawing_its_own_noise)
    configs = _seed_configs("vae", (0, 1), epochs=1)
    with pytest.raises(RuntimeError, match="randomness"):
        train.train_seeds(
            configs,
            [tmp_path / f"seed{c.seed}" for c in configs],
            data_dir=tiny_data_dir,
            device="cpu",
            progress=False,
            seed_batching="vmap",
        )


def _train_alone(configs, folder, data_dir):
    out_dirs = [folder / f"seed{c.seed}" for c in configs]
    for config, out_dir in zip(configs, out_dirs):
        run(config, out_dir, data_dir)
    return out_dirs


def test_seed_group_resumes_each_run_from_its_checkpoint(tiny_data_dir, tmp_path):
    # seed 4 is killed after epoch 2 of 3 (its checkpoint stays), seed 7 never started: the group
    # trains them as two cohorts and both end exactly as uninterrupted runs alone.
    configs = _seed_configs("vae", (4, 7), epochs=3)
    reference = _train_alone(configs, tmp_path / "alone", tiny_data_dir)
    out_dirs = [tmp_path / "group" / f"seed{c.seed}" for c in configs]
    with pytest.raises(Killed):
        run(configs[0], out_dirs[0], tiny_data_dir, checkpoint_every=1, on_epoch=_kill_at(2))
    assert (out_dirs[0] / CHECKPOINT).exists()
    results = train.train_seeds(
        configs,
        out_dirs,
        data_dir=tiny_data_dir,
        device="cpu",
        progress=False,
        seed_batching="sequential",
    )
    assert [m["resumes"] for m in results] == [1, 0]
    for alone, grouped in zip(reference, out_dirs):
        a, g = _run_files(alone), _run_files(grouped)
        assert g[0]["auc"] == a[0]["auc"]
        assert all(torch.equal(g[1][name], a[1][name]) for name in a[1])


def test_auto_seed_batching_follows_the_device_table(tiny_data_dir, tmp_path, monkeypatch):
    configs = _seed_configs("vae", (0, 1), epochs=1)

    def train_with_auto(folder):
        return train.train_seeds(
            configs,
            [tmp_path / folder / f"seed{c.seed}" for c in configs],
            data_dir=tiny_data_dir,
            device="cpu",
            progress=False,
        )

    assert {m["seed_batching"] for m in train_with_auto("measured")} == {AUTO_SEED_BATCHING["cpu"]}
    monkeypatch.setitem(AUTO_SEED_BATCHING, "cpu", "vmap")
    assert {m["seed_batching"] for m in train_with_auto("vmap")} == {"vmap"}


def test_vmap_asked_for_a_model_that_cannot_falls_back_to_steps_in_turn(
    tiny_data_dir, tmp_path, caplog
):
    configs = _seed_configs("grad2vae", (0, 1), epochs=1)
    results = train.train_seeds(
        configs,
        [tmp_path / f"seed{c.seed}" for c in configs],
        data_dir=tiny_data_dir,
        device="cpu",
        progress=False,
        seed_batching="vmap",
        derivatives="loop",
    )
    assert [(m["seed_batching"], m["derivatives"]) for m in results] == [("sequential", "loop")] * 2
    assert "cannot vmap its loss" in caplog.text


def test_seed_group_input_errors(tiny_data_dir, tmp_path):
    configs = _seed_configs("vae", (0, 1))
    with pytest.raises(UserError, match="differ only in their seed"):
        train.train_seeds(
            [configs[0], dataclasses.replace(configs[1], lr=0.5)],
            [tmp_path / "a", tmp_path / "b"],
            data_dir=tiny_data_dir,
        )
    with pytest.raises(UserError, match="placeholder"):
        train.train_seeds(configs, [tmp_path / "same", tmp_path / "same"], data_dir=tiny_data_dir)
    with pytest.raises(UserError, match="seed-batching"):
        train.train_seeds(
            configs, [tmp_path / "a", tmp_path / "b"], data_dir=tiny_data_dir, seed_batching="fast"
        )


def _models_declaring_seed_vmap():
    return [
        name
        for name in models.model_names()
        if models.create_model(name, 16, dataset="mnist").supports_seed_vmap(torch.device("cpu"))
    ]


# variants (issue 15) whose options change the computation that vmap batches
VMAP_VARIANTS = [
    (
        "grad2vae",
        {"fusion": "notebook", "derivative_tensors": "summed", "sigma": "exp_logvar", "kl": "mean"},
    ),
    ("grad2vae", {"fusion": "none", "attention_weight": 0.5}),
    ("grad2vae", {"attention": "off"}),
    ("vae", {"sigma": "exp_logvar", "kl": "mean"}),
]


@pytest.mark.parametrize(
    "model_name, options", [(name, {}) for name in _models_declaring_seed_vmap()] + VMAP_VARIANTS
)
def test_vmapped_losses_give_each_model_its_own_loss_and_gradients(model_name, options):
    # The strict check of the vmap path, one step before any optimiser: losses, every
    # parameter's gradient and BatchNorm's updated running statistics equal those of each
    # model alone, up to float rounding.
    def fresh(seed):
        torch.manual_seed(seed)
        return models.create_model(model_name, 16, dataset="mnist", options=options).train()

    generator = torch.Generator().manual_seed(0)
    xs = torch.rand(2, 6, 1, 28, 28, generator=generator)
    noise = None
    if fresh(0).sample_noise(6, xs[0]) is not None:
        noise = torch.randn(2, 6, 16, generator=generator)
    alone_models = [fresh(seed) for seed in (1, 2)]
    alone = []
    for j, model in enumerate(alone_models):
        terms = model.loss(xs[j], None if noise is None else noise[j])
        terms["total"].backward()
        alone.append(terms)
    together_models = [fresh(seed) for seed in (1, 2)]
    terms = vmapped_losses(together_models, xs, noise)
    terms["total"].sum().backward()
    for j in range(2):
        # forward values (losses, BatchNorm statistics): summation order alone, ~1e-7 relative
        # on any kernel (seen <= 1e-7); a ReLU flipping at a pre-activation of ~1e-7 moves them
        # by as little. Another seed's data or weights move them by percents.
        for key, value in alone[j].items():
            torch.testing.assert_close(terms[key][j], value, rtol=1e-5, atol=1e-6, msg=key)
        named_alone = dict(alone_models[j].named_parameters())
        for name, parameter in together_models[j].named_parameters():
            # Relative to the tensor's largest gradient: the batched kernels sum in another order
            # (~1e-6), and a ReLU input within float32 rounding of 0 can land on either side of
            # it in the two paths, switching one unit of one sample on or off for every
            # gradient upstream: seen 1.9e-2 of decoder.expand.weight's largest with oneDNN
            # off (variant 0; a pre-activation of -1.6e-7 in float64). A real bug (another
            # seed's weights, batch or noise) changes gradients by the order of their largest;
            # a missing loss term shows in the losses above (rtol=1e-5). 1e-6: the gradient of
            # a bias before BatchNorm is rounding noise around 0 (seen <= 5e-8).
            expected = named_alone[name].grad
            if expected is None:  # a parameter off the loss's path (attention: off)
                assert parameter.grad is None or not parameter.grad.any(), name
                continue
            difference = (parameter.grad - expected).abs().max()
            assert difference <= 5e-2 * expected.abs().max() + 1e-6, (name, float(difference))
        buffers_alone = dict(alone_models[j].named_buffers())
        for name, buffer in together_models[j].named_buffers():
            torch.testing.assert_close(buffer, buffers_alone[name], rtol=1e-5, atol=1e-7, msg=name)


def test_command_line_trains_several_seeds_in_one_process(tiny_data_dir, tmp_path, capsys):
    common = [
        "train",
        "--model",
        "vae",
        "--dataset",
        "mnist",
        "--normal-class",
        "2",
        "--device",
        "cpu",
        "--data-dir",
        str(tiny_data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--train-limit",
        "16",
        "--test-limit",
        "30",
        "--no-progress",
    ]
    assert main(common + ["--seed", "3", "5", "--out-dir", str(tmp_path / "one")]) == 2
    assert "needs a {seed} placeholder" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()
    assert (
        main(
            common
            + [
                "--seed",
                "3",
                "5",
                "--out-dir",
                str(tmp_path / "seed{seed}"),
                "--seed-batching",
                "vmap",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for seed in (3, 5):
        metrics = json.loads((tmp_path / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["seeds_in_process"] == 2
        assert metrics["seed_batching"] == "vmap"
        assert f"seed {seed}: auc" in printed


def test_seed_group_records_each_runs_share_of_the_time(tiny_data_dir, tmp_path, monkeypatch):
    # Each lock-step step of the group takes 0.5 s more: 3 batches = 1.5 s of training time for
    # the whole group (plus well under a second of compute), so the three runs' shares sum to
    # about that, not to three times that.
    step = cohort_module._step_sequential

    def slow_step(runs, indexes):
        time.sleep(0.5)
        return step(runs, indexes)

    monkeypatch.setattr(cohort_module, "_step_sequential", slow_step)
    configs = _seed_configs("vae", (0, 1, 2), epochs=1)  # 20 images, batch 8: 3 steps
    results = train.train_seeds(
        configs,
        [tmp_path / f"seed{c.seed}" for c in configs],
        data_dir=tiny_data_dir,
        device="cpu",
        progress=False,
    )
    assert all(m["seeds_in_process"] == 3 and m["seed_batching"] == "sequential" for m in results)
    assert 1.5 <= sum(m["train_seconds"] for m in results) < 3.5


def test_group_killed_mid_run_resumes_from_its_own_checkpoints(tiny_data_dir, tmp_path):
    configs = _seed_configs("vae", (4, 7), epochs=3)
    alone = _train_alone(configs, tmp_path / "alone", tiny_data_dir)
    group = [tmp_path / "group" / f"seed{c.seed}" for c in configs]
    options = dict(data_dir=tiny_data_dir, device="cpu", progress=False, seed_batching="sequential")
    with pytest.raises(Killed):  # in seed 4's epoch 2, after its epoch-1 checkpoint
        train.train_seeds(configs, group, checkpoint_every=1, on_epoch=_kill_at(2), **options)
    assert (group[0] / CHECKPOINT).exists()
    results = train.train_seeds(configs, group, **options)
    assert results[0]["resumes"] == 1
    for a, g in zip(alone, group):
        expected, got = _run_files(a), _run_files(g)
        assert got[0]["auc"] == expected[0]["auc"]
        assert all(torch.equal(got[1][name], expected[1][name]) for name in expected[1])
        assert_final_state(g, 3)  # the group finished: each run's final state only


@pytest.mark.parametrize("seed_batching", ["sequential", "vmap"])
def test_one_diverging_seed_fails_the_group_after_the_others_finish(
    tiny_data_dir, tmp_path, monkeypatch, seed_batching
):
    configs = _seed_configs("vae", (4, 7))
    alone = tmp_path / "alone"
    run(configs[0], alone, tiny_data_dir)
    setup = Run.__init__

    def poison_seed_7(self, config, *args, **kwargs):
        setup(self, config, *args, **kwargs)
        if config.seed == 7:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Run, "__init__", poison_seed_7)
    group = [tmp_path / "group" / f"seed{c.seed}" for c in configs]
    options = dict(
        data_dir=tiny_data_dir, device="cpu", progress=False, seed_batching=seed_batching
    )
    with pytest.raises(NonFiniteLossError, match="seed7"):
        train.train_seeds(configs, group, **options)
    assert not (group[1] / "metrics.json").exists()
    expected, got = _run_files(alone), _run_files(group[0])
    assert got[0]["auc"] == pytest.approx(expected[0]["auc"], abs=0.02)
    # Snakemake removes the outputs of the failed job; its final checkpoint stays, so the
    # finished seed comes back by re-evaluating, without training again.
    assert (group[0] / CHECKPOINT).exists()
    for name in ("metrics.json", "history.tsv", "scores.csv.gz", "model.pt"):
        (group[0] / name).unlink()
    monkeypatch.undo()

    def no_training(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(cohort_module, "_step_sequential", no_training)
    monkeypatch.setattr(cohort_module, "_step_vmap", no_training)
    (again,) = train.train_seeds(configs[:1], group[:1], **options)
    assert again["auc"] == got[0]["auc"] and again["resumes"] == got[0]["resumes"] + 1
    assert all(torch.equal(_run_files(group[0])[1][name], got[1][name]) for name in got[1])
