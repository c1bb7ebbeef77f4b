"""The diagnostic scores beside every model's main score (issue 13): BCE - H(x) is KL(x || x_hat),
the zero-noise scores, the entropy-only scorer, and their AUCs in a run's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from grad2vae.analysis import entropy_only
from grad2vae.models import create_model, scoring
from grad2vae.models.grad2vae import DERIVATIVE_METHODS, Grad2VAE
from grad2vae.models.vae import VAE, bce_per_sample, reparameterize, sample_eps
from grad2vae.training import command as train
from grad2vae.training.run_config import RunConfig

VARIATIONAL = ("vae", "grad2vae")
ZERO_NOISE_KEYS = ("bce_zero_noise", "mse_zero_noise", "bce_excess_zero_noise")


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Grey levels strictly inside (0, 1), exact 0 and exact 1: every case of x log x."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    return x


def kl_reference(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """KL(x || p) per sample in float64, from the definition."""
    x, p = x.double(), reconstruction.double()
    per_pixel = (
        torch.xlogy(x, x)
        - torch.xlogy(x, p)
        + torch.xlogy(1 - x, 1 - x)
        - torch.xlogy(1 - x, 1 - p)
    )
    return per_pixel.flatten(1).sum(1)


def test_bce_minus_entropy_is_the_kl_divergence():
    x = images()
    logits = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 3
    bce = bce_per_sample(logits.double(), x.double())
    entropy = scoring.binary_entropy(x.double())
    excess = scoring.kl_from_logits(logits, x)
    assert (excess >= 0).all()
    reference = kl_reference(torch.sigmoid(logits.double()), x)
    torch.testing.assert_close(excess.double(), reference, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(bce - entropy, reference, rtol=1e-9, atol=1e-9)
    # a perfect reconstruction of a binary image leaves nothing: H(x) = 0 and KL = 0
    binary = (x > 0.5).float()
    assert scoring.binary_entropy(binary).abs().max() == 0
    torch.testing.assert_close(scoring.kl_from_probabilities(binary, binary), torch.zeros(len(x)))


@pytest.mark.parametrize("name", VARIATIONAL)
def test_variational_scores_keep_the_main_score_and_add_the_diagnostics(name):
    torch.manual_seed(0)
    model = create_model(name, 8).eval()
    x = images()
    generator_seed = 5
    scores = model.scores(x, torch.Generator().manual_seed(generator_seed))
    assert set(scores) == {
        "main",
        "reconstruction",
        *scoring.RECONSTRUCTION_SCORES,
        *ZERO_NOISE_KEYS,
    }
    # main: the BCE of a sampled z, as before these scores existed
    eps = sample_eps(len(x), 8, torch.Generator().manual_seed(generator_seed), like=x)
    with torch.enable_grad():
        logits = model(x, eps, create_graph=False)["logits"] if name == "grad2vae" else None
    if logits is None:
        mu, logvar = model.encoder(x)
        logits = model.decoder(reparameterize(mu, logvar, eps))
    torch.testing.assert_close(scores["main"], bce_per_sample(logits.detach(), x))
    for suffix in ("", "_zero_noise"):
        assert (scores["bce_excess" + suffix] >= 0).all()
        bce = scores["main"] if not suffix else scores["bce_zero_noise"]
        torch.testing.assert_close(
            scores["bce_excess" + suffix].double(),
            bce.double() - scoring.binary_entropy(x.double()),
            rtol=1e-4,
            atol=1e-2,
        )


def test_vae_zero_noise_scores_reconstruct_the_mean():
    torch.manual_seed(0)
    model = VAE(8).eval()
    x = images()
    scores = model.scores(x, torch.Generator().manual_seed(0))
    mu, _ = model.encoder(x)
    torch.testing.assert_close(scores["bce_zero_noise"], bce_per_sample(model.decoder(mu), x))


@pytest.mark.parametrize("method", DERIVATIVE_METHODS)
def test_grad2vae_second_derivatives_are_exactly_zero_without_noise(method):
    torch.manual_seed(0)
    model = Grad2VAE(8, derivatives=method, channels=(4, 8, 8), hidden=32, attention_width=8).eval()
    x = images(3)
    with torch.enable_grad():
        out = model(x, torch.zeros(3, 8), create_graph=False)
    assert torch.count_nonzero(out["second_derivatives"]) == 0
    # the zero-noise shortcut of the scores is the same forward pass without differentiating
    torch.testing.assert_close(
        model.zero_noise_logits(x), out["logits"].detach(), rtol=0, atol=1e-5
    )


def test_grad2vae_zero_noise_scores_switch_the_attention_path_off():
    """With noise, the attention path changes the reconstruction; without, only its biases reach
    the decoder, whatever the image."""
    torch.manual_seed(0)
    model = Grad2VAE(8, channels=(4, 8, 8), hidden=32, attention_width=8).eval()
    with torch.no_grad():
        for parameter in model.attention_module.parameters():
            parameter.add_(0.5)  # make the path's effect visible
    x = images(4)
    scores = model.scores(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(scores["main"], scores["bce_zero_noise"])
    zeros = torch.zeros(1, 8, 4, 28, 28)
    constant, _ = model.attention_module(zeros)
    mu, _ = model.encoder(x)
    expected = bce_per_sample(model.decoder(mu, residual=constant.expand(4, -1, -1, -1)), x)
    torch.testing.assert_close(scores["bce_zero_noise"], expected.detach())


@pytest.mark.parametrize("name", ["cae", "inception_caenn", "cae_ocsvm"])
def test_feature_models_report_the_reconstruction_diagnostics_on_the_28x28_image(name):
    torch.manual_seed(0)
    model = create_model(name, 16).eval()
    x = images(5)
    model.fit_scorer(x)
    scores = model.scores(x)
    assert {"main", "reconstruction", "mse", "bce_excess"} <= set(scores)
    _, reconstruction = model(torch.nn.functional.pad(x, (2, 2, 2, 2)))
    inner = reconstruction[..., 2:-2, 2:-2]
    torch.testing.assert_close(scores["mse"], (inner - x).square().flatten(1).sum(1))
    torch.testing.assert_close(
        scores["bce_excess"].double(), kl_reference(inner, x), rtol=1e-4, atol=1e-2
    )


def test_entropy_only_auc_is_the_auc_of_the_image_entropy(tiny_data_dir, tmp_path):
    """`grad2vae entropy` writes the table (torch, data); the analysis reads it (neither)."""
    from sklearn.metrics import roc_auc_score

    from grad2vae.cli import main
    from grad2vae.data import datasets as data

    out = tmp_path / "entropy_only.csv"
    assert main(["entropy", "--data-dir", str(tiny_data_dir), "--datasets", "mnist",
                 "--normal-classes", "0", "3", "--out", str(out)]) == 0  # fmt: skip
    table, note = entropy_only.read_entropy_table(out, pd.DataFrame())
    assert table.columns.tolist() == entropy_only.COLUMNS and len(table) == 2
    assert note == "H(x) of the full test set of each normal class"
    split = data.load_split(tiny_data_dir, "mnist", 3)
    x = split.test_x.double().flatten(1)
    entropy = -(torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x)).sum(1).numpy()
    expected = roc_auc_score(np.asarray(split.test_labels), entropy)
    assert table.set_index("normal_class").loc[3, "auc"] == pytest.approx(expected)


def test_the_entropy_table_is_checked_when_read(tmp_path):
    from grad2vae.errors import UserError

    table, note = entropy_only.read_entropy_table(None, pd.DataFrame())
    assert table.empty and "grad2vae entropy" in note
    bad = tmp_path / "entropy_only.csv"
    bad.write_text("dataset,auc\nmnist,0.5\n")
    with pytest.raises(UserError, match="lacks the columns normal_class, test_images"):
        entropy_only.read_entropy_table(bad, pd.DataFrame())


def test_aggregate_no_longer_takes_the_data_and_says_what_replaced_it(tmp_path, capsys):
    from grad2vae.cli import main

    assert main(["aggregate", "--results-dir", str(tmp_path), "--data-dir", "data"]) == 2
    assert "grad2vae entropy" in capsys.readouterr().err


def test_a_run_records_the_auc_of_every_score_per_epoch(tiny_data_dir, tmp_path):
    config = RunConfig(
        model="vae", dataset="mnist", normal_class=2, seed=0, latent_dim=4, epochs=2, batch_size=32,
        lr=1e-3, lr_decay_epoch=0, lr_decay_factor=0.1, eval_every=1, eval_batch_size=50,
        train_limit=30, test_limit=40,
    )  # fmt: skip
    metrics = train.train_one(config, tmp_path / "run", data_dir=tiny_data_dir, device="cpu")
    assert set(metrics["auc_scores"]) == {"mse", "bce_excess", *ZERO_NOISE_KEYS}
    history = pd.read_csv(tmp_path / "run" / "history.tsv", sep="\t")
    for key in metrics["auc_scores"]:
        assert history[f"auc_{key}"].notna().all()
        assert history[f"auc_{key}"].iloc[-1] == pytest.approx(metrics["auc_scores"][key])
    scores = pd.read_csv(tmp_path / "run" / "scores.csv.gz")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(scores["label"], scores["score_mse"]) == pytest.approx(
        metrics["auc_scores"]["mse"]
    )
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["train_flops_per_step"] > 0
    # one step of the 30 training images (fewer than a batch): one step per epoch
    assert on_disk["train_flops_batch"] == 30
    assert on_disk["train_flops_per_epoch"] == pytest.approx(on_disk["train_flops_per_step"])
