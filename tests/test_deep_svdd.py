"""Deep SVDD (issue 9): trains and scores through `grad2vae train` on the synthetic data, its
pretraining is part of exact resume, and the pieces match the source (preprocessing constants,
centre rule, weight decay as a loss term)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_config, tiny_train_argv, train_on_cpu
from torch import nn

from grad2vae.cli import main
from grad2vae.data import datasets as data
from grad2vae.models import create_model
from grad2vae.models.deep_svdd import (
    CENTER_EPS,
    WEIGHT_DECAY,
    DeepSVDD,
    global_contrast_normalization,
)
from grad2vae.training.lifecycle import load_trained_model
from grad2vae.training.outputs import read_scores
from grad2vae.training.run_config import SUBSAMPLE_SEED, RunConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_config(dataset="mnist", **changes) -> RunConfig:
    return tiny_run_config("deep_svdd", dataset=dataset, **changes)


run = train_on_cpu


def test_cli_trains_and_scores_with_the_readme_setup(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_train_argv("deep_svdd", tiny_data_dir, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the schedule options not given come from the README (protocol_defaults), --epochs from us
    assert {k: metrics["config"][k]
            for k in ("epochs", "lr", "batch_size", "lr_decay_epoch", "lr_decay_factor")} == {
        "epochs": 1, "lr": 1e-4, "batch_size": 200, "lr_decay_epoch": 50, "lr_decay_factor": 0.1,
    }  # fmt: skip
    assert metrics["parameters"] == 8 * 25 + 4 * 8 * 25 + 4 * 7 * 7 * 32  # phi only, bias-free
    prep = metrics["preprocessing"]
    assert (
        prep["gcn"] == "l1" and prep["min"] < 0 < prep["max"] and "min-max" in prep["description"]
    )
    assert metrics["pretrain"]["epochs"] == 1 and metrics["pretrain"]["weight_decay"] == 0.5e-3
    assert metrics["auc_extra"] == {}
    # the easy synthetic class: anomalies (other bars) lie farther from c
    assert metrics["auc"] > 0.6, metrics["auc"]
    rows = read_scores(out / "scores.csv.gz")
    assert len(rows) == 100
    # model.pt holds phi, c, the autoencoder and the preprocessing constants
    model = load_trained_model(out)
    split = data.load_split(
        tiny_data_dir, "mnist", 3, train_limit=64, test_limit=100, seed=SUBSAMPLE_SEED
    )
    scores = model.scores(split.test_x)
    np.testing.assert_allclose(
        scores["main"].numpy(), [float(r["score_main"]) for r in rows], rtol=1e-5, atol=1e-6
    )


def test_fashion_network_is_chosen_by_the_dataset(tiny_data_dir, tmp_path):
    cfg = tiny_config("fashion_mnist", epochs=1, normal_class=1, train_limit=20, test_limit=40)
    metrics = run(cfg, tmp_path / "fashion", tiny_data_dir)
    assert metrics["parameters"] == 32 * 25 + 64 * 32 * 25 + 128 * 64 * 25 + 1152 * 128
    assert "fmnist_LeNet" in metrics["preprocessing"]["network"]
    model = load_trained_model(tmp_path / "fashion")
    assert model.dataset == "fashion_mnist" and model.c.shape == (128,)
    # the registry ignores latent_dim for Deep SVDD and passes the dataset only to it
    assert create_model("deep_svdd", 16, dataset="fashion_mnist").net.rep_dim == 128
    assert create_model("deep_svdd", 32).net.rep_dim == 32  # no dataset given: MNIST's net
    assert create_model("cae", 16, dataset="fashion_mnist").name == "cae"


def test_interrupted_run_resumes_exactly_after_pretraining(tiny_data_dir, tmp_path):
    cfg = tiny_config(epochs=3)
    full = run(cfg, tmp_path / "full", tiny_data_dir)

    class Killed(Exception):
        pass

    def die_at_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, tmp_path / "cut", tiny_data_dir, checkpoint_every=1, on_epoch=die_at_epoch_2)
    resumed = run(cfg, tmp_path / "cut", tiny_data_dir, checkpoint_every=1)
    assert resumed["resumes"] == 1

    # the pretraining summary survives the resume (from the checkpoint); its timing may differ
    def without_seconds(info):
        return {k: v for k, v in info.items() if k != "seconds"}

    assert without_seconds(resumed["pretrain"]) == without_seconds(full["pretrain"])
    assert resumed["preprocessing"] == full["preprocessing"]
    assert (tmp_path / "cut" / "scores.csv.gz").read_bytes() == (
        tmp_path / "full" / "scores.csv.gz"
    ).read_bytes()


def test_preprocessing_is_l1_gcn_then_min_max_of_the_training_images():
    g = torch.Generator().manual_seed(0)
    train_x = torch.rand(10, 1, 28, 28, generator=g)
    model = DeepSVDD(dataset="mnist")
    with pytest.raises(RuntimeError, match="pretrain"):
        model.loss(train_x)
    model.fit_preprocessing(train_x)
    gcn = global_contrast_normalization(train_x)
    flat = gcn.flatten(1)
    # float32: the rounded image mean (~0.5) subtracted, / the L1 scale (~0.25), then a mean of
    # 784 values of ~1 whose rounding depends on the kernel's summation order: <= ~1e-6 (seen
    # 3.5e-7); an image left uncentred would give mean / scale ~ 2.
    torch.testing.assert_close(flat.mean(1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.abs().mean(1), torch.ones(10))
    scaled = model.preprocess(train_x)
    assert float(scaled.min()) == pytest.approx(0.0, abs=1e-6) and float(
        scaled.max()
    ) == pytest.approx(1.0)
    # test images use the same constants (they may leave [0, 1]); the mean of 784 equal float32
    # values takes up to ~10 roundings in a pairwise sum (seen 1.2e-7): rel=1e-5, far below
    # what the min / max of other images than the training images would change
    assert float(model.preprocess(torch.zeros(1, 1, 28, 28)).mean()) == pytest.approx(
        float(-model.gcn_min / (model.gcn_max - model.gcn_min)), rel=1e-5
    )


@pytest.mark.network
def test_min_max_constants_match_the_source_on_real_mnist(real_data_dir):
    # lukasruff/Deep-SVDD-PyTorch datasets/mnist.py hard-codes these for normal class 0
    split = data.load_split(real_data_dir, "mnist", 0)
    model = DeepSVDD(dataset="mnist")
    model.fit_preprocessing(split.train_x)
    assert float(model.gcn_min) == pytest.approx(-0.8826567065619495, abs=1e-5)
    assert float(model.gcn_max) == pytest.approx(9.001545489292527, abs=1e-5)


def test_centre_is_the_mean_with_small_entries_pushed_to_eps():
    class Fixed(nn.Module):
        rep_dim = 5

        def forward(self, x):
            return torch.tensor([[0.05, -0.05, 0.0, 0.5, -0.3]]).expand(len(x), 5)

    model = DeepSVDD(dataset="mnist")
    model.net = Fixed()
    model.c = torch.zeros(5)  # a buffer, resized for the 5-d stand-in network
    model.init_center(torch.zeros(3, 1, 28, 28))
    torch.testing.assert_close(model.c, torch.tensor([CENTER_EPS, -CENTER_EPS, 0.0, 0.5, -0.3]))


def test_weight_decay_term_gives_adams_coupled_weight_decay():
    torch.manual_seed(0)
    a, b = DeepSVDD(dataset="mnist"), DeepSVDD(dataset="mnist")
    b.load_state_dict(a.state_dict())
    x = torch.rand(8, 1, 28, 28)
    for model in (a, b):
        model.fit_preprocessing(x)
        model.c.fill_(0.1)
    opt_a = torch.optim.Adam(a.net.parameters(), lr=1e-2)  # our term in the loss
    opt_b = torch.optim.Adam(b.net.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)  # the source
    for _ in range(3):
        opt_a.zero_grad(), opt_b.zero_grad()
        a.loss(x)["total"].backward()
        b.loss(x)["svdd"].backward()
        opt_a.step(), opt_b.step()
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_pretraining_logs_every_epoch_and_shows_the_bar(caplog, capsys):
    """Issue 16: the 150-epoch autoencoder pretraining printed nothing for minutes."""
    torch.manual_seed(0)
    model = create_model("deep_svdd", 16, dataset="mnist")
    caplog.set_level("INFO", logger="grad2vae.models.deep_svdd")
    model.pretrain(torch.rand(20, 1, 28, 28), epochs=3, batch_size=8, lr=1e-4, lr_decay_epoch=2,
                   lr_decay_factor=0.1, generator=torch.Generator().manual_seed(0),
                   progress=True)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "pretraining: epoch" in r.getMessage()]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3", "3/3"]
    assert (
        "lr=0.0001" in lines[0]
        and "lr=1e-05" in lines[2]
        and "loss=" in lines[0]
        and "ETA" in lines[0]
    )
    assert "pretrain epoch 3/3 [" in capsys.readouterr().err
