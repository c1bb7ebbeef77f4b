"""CAE + OC-SVM (issue 9): the `cae` autoencoder with an OC-SVM scorer, two labelled protocols
(default hyperparameters = main score; the test-label oracle grid = extra scores + oracle_auc)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_run_config, tiny_train_argv
from sklearn.svm import OneClassSVM

from grad2vae.cli import main
from grad2vae.models import create_model
from grad2vae.models.cae_ocsvm import GRID_KEYS, SCALE_KEY, grid_key, oracle_auc
from grad2vae.training import command as train
from grad2vae.training.outputs import read_scores
from grad2vae.training.run_config import RunConfig


def tiny_config(model: str) -> RunConfig:
    return tiny_run_config(model, eval_every=1, lr_decay_epoch=50, lr_decay_factor=0.01)


def test_cli_trains_and_reports_both_protocols(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_train_argv("cae_ocsvm", tiny_data_dir, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["config"]["lr"] == 1e-3 and metrics["config"]["batch_size"] == 128
    )  # the grid's protocol
    assert metrics["preprocessing"]["ocsvm_default"] == {
        "kernel": "rbf",
        "nu": 0.5,
        "gamma": "auto",
    }
    extra = metrics["auc_extra"]
    assert set(extra) == set(GRID_KEYS) | {SCALE_KEY} and len(GRID_KEYS) == 90
    best, key = oracle_auc(extra)
    assert best == max(extra[k] for k in GRID_KEYS) and key in GRID_KEYS
    # easy synthetic class: the sign is right (decision_function negated: higher = more anomalous)
    assert metrics["auc"] > 0.6, metrics["auc"]
    assert best >= 0.6
    assert len(read_scores(out / "scores.csv.gz")) == 100


def test_same_seed_same_autoencoder_as_cae(tiny_data_dir, tmp_path):
    a = train.train_one(
        tiny_config("cae"), tmp_path / "cae", data_dir=tiny_data_dir, device="cpu", progress=False
    )
    b = train.train_one(
        tiny_config("cae_ocsvm"),
        tmp_path / "ocsvm",
        data_dir=tiny_data_dir,
        device="cpu",
        progress=False,
    )
    assert a["auc_reconstruction"] == b["auc_reconstruction"]
    state_a = torch.load(tmp_path / "cae" / "model.pt", weights_only=True)["state_dict"]
    state_b = torch.load(tmp_path / "ocsvm" / "model.pt", weights_only=True)["state_dict"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    rows_a = read_scores(tmp_path / "cae" / "scores.csv.gz")
    rows_b = read_scores(tmp_path / "ocsvm" / "scores.csv.gz")
    assert [r["score_reconstruction"] for r in rows_a] == [
        r["score_reconstruction"] for r in rows_b
    ]


def _fitted(seed=0):
    torch.manual_seed(seed)
    model = create_model("cae_ocsvm", 16).eval()
    g = torch.Generator().manual_seed(seed)
    train_x, test_x = torch.rand(40, 1, 28, 28, generator=g), torch.rand(25, 1, 28, 28, generator=g)
    with torch.no_grad():
        model.fit_scorer(train_x)
    return model, train_x, test_x


def test_scores_are_negated_sklearn_decisions_and_grid_matches_rbf():
    model, _, test_x = _fitted()
    features = model.features_and_reconstruction_scores(test_x)[0].double().numpy()
    train_features = model.train_features.double().numpy()
    scores = model.scores(test_x)
    default = OneClassSVM(kernel="rbf", nu=0.5, gamma=1 / 128).fit(
        train_features
    )  # 'auto' = 1/n_features
    np.testing.assert_allclose(
        scores["main"].numpy(), -default.decision_function(features), rtol=1e-9, atol=1e-9
    )
    extra = model.extra_scores(test_x)
    assert set(extra) == set(GRID_KEYS) | {SCALE_KEY}
    for nu, exponent in [(0.1, -7), (0.5, 0), (0.9, 2)]:
        direct = OneClassSVM(kernel="rbf", nu=nu, gamma=2.0**exponent).fit(train_features)
        np.testing.assert_allclose(
            extra[grid_key(nu, exponent)].numpy(),
            -direct.decision_function(features),
            rtol=1e-6,
            atol=1e-8,
        )
    scale = OneClassSVM(kernel="rbf", nu=0.5, gamma="scale").fit(train_features)
    np.testing.assert_allclose(
        extra[SCALE_KEY].numpy(), -scale.decision_function(features), rtol=1e-9, atol=1e-9
    )


def test_oracle_needs_the_whole_grid_and_takes_the_maximum():
    aucs = {key: 0.5 for key in GRID_KEYS}
    aucs[grid_key(0.3, -2)] = 0.9
    assert oracle_auc(aucs) == (0.9, "ocsvm_nu0.3_gamma2^-2")
    del aucs[grid_key(0.1, -7)]
    with pytest.raises(KeyError, match="incomplete"):
        oracle_auc(aucs)
