"""Explainability: offline attention (Liu et al.) against a direct computation, per-image
independence, the deletion faithfulness measure, and the figures + summary.json end to end."""

from __future__ import annotations

import argparse
import html
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import unavailable
from torch import nn

from grad2vae.explain import attention_maps
from grad2vae.explain import command as explain
from grad2vae.explain import runs as explain_runs
from grad2vae.explain.attention_maps import (
    curve_area,
    deletion_order,
    faithfulness,
    normalise_per_image,
    offline_attention,
    online_attention,
)
from grad2vae.layout import CAPTIONS_DIR
from grad2vae.models.base import AnomalyModel
from grad2vae.report.command import default_template_dir

# --------------------------------------------------------------------------------------------
# Tiny models honouring the contracts of the real ones
# --------------------------------------------------------------------------------------------


class TinyVAE(AnomalyModel):
    """Conv4x4 s2 -> ReLU -> Conv4x4 s2 (= gradcam_layer, 7x7) -> in-place ReLU -> Linear -> mu."""

    name = "tiny_vae"
    main_score = "squared reconstruction error"
    assumptions = ()

    def __init__(self, latent_dim: int = 3, channels: int = 4, features: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, features, 4, stride=2, padding=1)
        self.act2 = nn.ReLU(inplace=True)  # in place: the hook must still see pre-activation A
        self.fc_mu = nn.Linear(features * 49, latent_dim)
        self.fc_logvar = nn.Linear(features * 49, latent_dim)
        self.decoder = nn.Linear(latent_dim, 784)
        self.gradcam_layer = self.conv2

    def encode(self, x):
        h = self.act2(self.conv2(torch.relu(self.conv1(x)))).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def loss(self, x):
        mu, _ = self.encode(x)
        total = (torch.sigmoid(self.decoder(mu)).view_as(x) - x).pow(2).mean()
        return {"total": total}

    def scores(self, x, generator=None):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(
            mu.shape, generator=generator, dtype=mu.dtype
        )
        error = (torch.sigmoid(self.decoder(z)).view_as(x) - x).pow(2).flatten(1).sum(1)
        return {"main": error.detach(), "reconstruction": error.detach()}


class TinyGrad2VAE(TinyVAE):
    """L_e1 = a stride-1 conv (28x28, C channels) with a smooth activation; attention = sigmoid of
    a 1x1 conv of the mean second derivative over latent units (as the contract's shapes)."""

    name = "tiny_grad2vae"

    def __init__(self, latent_dim: int = 3, channels: int = 2, features: int = 3):
        super().__init__(latent_dim, channels, features)
        self.le1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, features, 4, stride=2, padding=1)
        self.gradcam_layer = self.conv2
        self.mix = nn.Conv2d(channels, 1, 1)

    def _encode_from(self, a1):
        h = torch.tanh(self.conv1(a1))
        h = self.act2(self.conv2(h)).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def encode(self, x):
        return self._encode_from(torch.tanh(self.le1(x)))

    def attention(self, x, generator=None):
        with torch.enable_grad():
            a1 = torch.tanh(self.le1(x.detach()))
            mu, logvar = self._encode_from(a1)
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps
            seconds = []
            for unit in range(z.shape[1]):
                (g,) = torch.autograd.grad(z[:, unit].sum(), a1, create_graph=True)
                (h,) = torch.autograd.grad(g.sum(), a1, retain_graph=True)
                seconds.append(h)
        second = torch.stack(seconds, dim=1)  # (N, d, C, 28, 28)
        image = torch.sigmoid(self.mix(second.mean(dim=1)))
        return {"second_derivatives": second.detach(), "attention_image": image.detach()}


# --------------------------------------------------------------------------------------------
# Offline attention
# --------------------------------------------------------------------------------------------


def _bilinear_matrix(size_out: int, size_in: int) -> torch.Tensor:
    """Bilinear interpolation weights, half-pixel centres (align_corners=False), as a matrix."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    scale = size_in / size_out
    for i in range(size_out):
        source = max((i + 0.5) * scale - 0.5, 0.0)
        low = min(int(np.floor(source)), size_in - 1)
        high = min(low + 1, size_in - 1)
        weight = source - low
        matrix[i, low] += 1 - weight
        matrix[i, high] += weight
    return matrix


def _offline_by_hand(model: TinyVAE, x: torch.Tensor) -> torch.Tensor:
    """Liu et al.'s map from the explicit gradient formula, no autograd: for
    mu = W relu(A) + b, d(sum mu)/dA = (W^T 1) * [A > 0]."""
    with torch.no_grad():
        a = F.conv2d(
            torch.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias, 2, 1)),
            model.conv2.weight,
            model.conv2.bias,
            2,
            1,
        )  # (N, K, 7, 7), pre-activation
        column = model.fc_mu.weight.sum(dim=0).view(1, *a.shape[1:])  # W^T 1
        grads = column * (a > 0).to(a.dtype)
        alpha = grads.mean(dim=(2, 3), keepdim=True)
        cam = (alpha * a).sum(dim=1)  # (N, 7, 7)
        m = _bilinear_matrix(28, 7)
        up = (m @ cam @ m.T).abs()
        out = []
        for image in up:
            out.append((image - image.min()) / (image.max() - image.min()))
        return torch.stack(out).unsqueeze(1)


def _images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 28, 28, generator=generator, dtype=torch.float64)


def test_offline_attention_matches_direct_computation():
    torch.manual_seed(0)
    model = TinyVAE().double()
    x = _images(4)
    got = offline_attention(model, x)
    expected = _offline_by_hand(model, x)
    assert got.shape == (4, 1, 28, 28)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert got.amin(dim=(1, 2, 3)).eq(0).all() and got.amax(dim=(1, 2, 3)).eq(1).all()


def test_offline_attention_uses_pre_activation_map_despite_inplace_relu():
    torch.manual_seed(1)
    model = TinyVAE().double()
    x = _images(2, seed=1)
    with torch.no_grad():
        pre = model.conv2(torch.relu(model.conv1(x)))
    assert (pre < 0).any()  # otherwise the test could not tell pre- from post-activation
    captured = []
    handle = model.gradcam_layer.register_forward_hook(lambda m, i, o: captured.append(o))
    offline_attention(model, x)
    handle.remove()
    # our hook runs first and hands a clone on; the module's real output is not overwritten
    torch.testing.assert_close(captured[0].detach(), pre)


def test_offline_attention_is_per_image_and_restores_training_mode():
    torch.manual_seed(2)
    model = TinyVAE().double()
    model.train()
    x = _images(5, seed=2)
    batch = offline_attention(model, x)
    alone = torch.cat([offline_attention(model, x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, alone, rtol=1e-9, atol=1e-9)
    assert model.training  # restored
    # scaling one image leaves the others' maps unchanged (no normalisation across the batch)
    x2 = x.clone()
    x2[0] = x2[0] * 0.1
    torch.testing.assert_close(offline_attention(model, x2)[1:], batch[1:], rtol=1e-9, atol=1e-9)


def test_offline_attention_rejects_model_without_gradcam_layer():
    from grad2vae.errors import UserError

    with pytest.raises(UserError, match="gradcam_layer"):
        offline_attention(nn.Linear(2, 2), torch.zeros(1, 1, 28, 28))


def test_online_attention_and_normalisation_per_image():
    torch.manual_seed(3)
    model = TinyGrad2VAE().double()
    x = _images(3, seed=3)
    maps = online_attention(model, x, torch.Generator().manual_seed(0))
    assert maps.shape == (3, 1, 28, 28)
    assert torch.isfinite(maps).all()
    normalised = normalise_per_image(maps)
    alone = torch.cat([normalise_per_image(maps[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(normalised, alone)
    assert normalise_per_image(torch.ones(2, 1, 4, 4)).eq(0).all()  # constant map: no NaN


# --------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------

REGION = (slice(None), slice(None), slice(3, 11), slice(15, 23))  # 8x8 = 64 pixels, 8 % of 784


def _region_scorer(x: torch.Tensor) -> torch.Tensor:
    """A model whose anomaly score depends only on a known pixel region."""
    return x[REGION].flatten(1).sum(1).to(torch.float64)


def test_faithfulness_is_higher_for_a_planted_perfect_map_than_for_a_random_one():
    x = _images(24, seed=4)
    generator = torch.Generator().manual_seed(5)
    perfect = torch.rand(x.shape, generator=generator, dtype=torch.float64) * 0.1
    perfect[REGION] += 1.0  # the region first, in any order
    random_map = torch.rand(x.shape, generator=generator, dtype=torch.float64)

    good = faithfulness(_region_scorer, x, perfect, seed=0)
    bad = faithfulness(_region_scorer, x, random_map, seed=0)
    assert good.ratio() > bad.ratio()
    assert good.auc > bad.auc
    assert good.ratio() > 3  # the whole region is gone after 10 % of the pixels
    assert 0.6 < bad.ratio() < 1.4  # a random map is no better than random order
    assert good.win_rate == 1.0
    low, high = good.ratio_interval(seed=0)
    assert low <= good.ratio() <= high and low > bad.ratio_interval(seed=0)[1]
    # an inverted map (region last) is worse than random
    assert faithfulness(_region_scorer, x, -perfect, seed=0).ratio() < 0.5
    # the same inputs give the same numbers (seeded)
    again = faithfulness(_region_scorer, x, perfect, seed=0)
    assert again.auc == good.auc and again.random_auc == good.random_auc


def test_deletion_order_breaks_ties_randomly_and_respects_ranking():
    attention = torch.zeros(2, 1, 4, 4)
    attention[0, 0, 3, 3] = 1.0
    order = deletion_order(attention, torch.Generator().manual_seed(0))
    assert order.shape == (2, 16)
    assert order[0, 0] == 15  # the attended pixel first
    assert sorted(order[1].tolist()) == list(range(16))
    assert order[1].tolist() != list(range(16))  # ties not in raster order


def test_curve_area_is_mean_of_a_constant_curve():
    curve = torch.full((11, 3), 2.0, dtype=torch.float64)
    torch.testing.assert_close(curve_area(curve), torch.full((3,), 2.0, dtype=torch.float64))


def test_blank_and_blur_fill():
    x = torch.ones(1, 1, 28, 28)
    order = torch.arange(784).unsqueeze(0)
    blanked = attention_maps.blank(x, order, 10)
    assert blanked.flatten()[:10].eq(0).all() and blanked.flatten()[10:].eq(1).all()
    torch.testing.assert_close(
        attention_maps.blur(x), x
    )  # blurring a constant image changes nothing
    filled = attention_maps.blank(x, order, 5, fill=torch.full_like(x, 0.5))
    assert filled.flatten()[:5].eq(0.5).all()


# --------------------------------------------------------------------------------------------
# End to end: figures, table, summary.json
# --------------------------------------------------------------------------------------------


def _fake_split(normal_class: int, per_class: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    classes = torch.arange(10).repeat_interleave(per_class)
    test_x = torch.rand(len(classes), 1, 28, 28, generator=generator) * 0.2
    for index, k in enumerate(classes.tolist()):
        test_x[index, 0, 2 + 2 * k : 5 + 2 * k, 4:24] = 1.0
    return types.SimpleNamespace(
        train_x=test_x[classes == normal_class],
        test_x=test_x,
        test_labels=(classes != normal_class).long(),
        test_classes=classes,
    )


@pytest.fixture
def fake_pipeline(monkeypatch, tmp_path):
    """Fake run dirs with tiny models; data and loader replaced by fakes when the real modules
    are not there (the real ones are exercised by test_explain_with_real_modules)."""
    built = {}

    def fake_load_run(path: Path, device):
        assert (path / "metrics.json").is_file()
        model_name = path.parts[-3]
        torch.manual_seed(int(path.parts[-2].removeprefix("class")) + 10 * (model_name == "vae"))
        model = (TinyGrad2VAE() if model_name == "grad2vae" else TinyVAE()).eval()
        built[str(path)] = model
        return model

    for dataset in ("mnist",):
        for model in ("grad2vae", "vae"):
            for c in (9, 2):
                folder = explain_runs.run_dir(tmp_path, dataset, model, c, 0)
                folder.mkdir(parents=True)
                (folder / "metrics.json").write_text("{}")
                (folder / "model.pt").write_bytes(b"")
    monkeypatch.setattr(explain_runs, "load_run", fake_load_run)
    fake_data = types.ModuleType("grad2vae.data.datasets")
    fake_data.DATASETS = {"mnist": [str(k) for k in range(10)]}
    fake_data.load_split = lambda data_dir, dataset, normal_class, **kw: _fake_split(normal_class)
    monkeypatch.setitem(sys.modules, "grad2vae.data.datasets", fake_data)
    return tmp_path, built


def _args(tmp_path: Path, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    explain.add_arguments(parser)
    argv = [
        "--results-dir",
        str(tmp_path),
        "--data-dir",
        str(tmp_path / "data"),
        "--out-dir",
        str(tmp_path / "explain"),
        "--normal-classes",
        "9",
        "2",
        "--fig4-images",
        "3",
        "--faithfulness-per-class",
        "2",
        "--random-repeats",
        "1",
        "--steps",
        "4",
    ]
    for key, value in overrides.items():
        argv += [f"--{key}", *value.split()]
    return parser.parse_args(argv)


CAPTIONS_FOLDER = default_template_dir() / CAPTIONS_DIR  # the package's templates


def _check_summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"figures", "tables"}
    for kind in ("figures", "tables"):
        assert summary[kind], kind
        for entry in summary[kind]:
            assert set(entry) == {"file", "title", "caption_file", "details"}
            assert not Path(entry["file"]).is_absolute()
            assert (out / entry["file"]).is_file()
            assert (CAPTIONS_FOLDER / entry["caption_file"]).is_file()
            assert entry["title"].strip() and entry["details"].strip()
    for entry in summary["figures"]:
        assert (out / entry["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


def test_explain_writes_figures_table_and_summary(fake_pipeline):
    tmp_path, _built = fake_pipeline
    out = tmp_path / "explain"
    assert explain.run(_args(tmp_path)) == 0
    summary = _check_summary(out)
    expected = explain_runs.output_files(["mnist"], [9, 2])
    assert [f["file"] for f in summary["figures"]] == expected["figures"]
    for name in expected["figures"] + expected["tables"] + expected["summary"]:
        assert (out / name).is_file(), name
    assert not list(out.glob(".tmp-*"))  # atomic writes left nothing behind

    import pandas as pd

    table = pd.read_csv(out / "faithfulness.csv")
    assert set(table["normal_class"]) == {9, 2}
    assert set(table["scorer"]) == {"grad2vae", "vae"}
    assert len(table) == 2 * 2 * 4  # classes x scorers x attentions
    assert table["n_images"].eq(20).all() and table["n_normal"].eq(2).all()
    assert np.isfinite(table["deletion_auc"]).all() and np.isfinite(table["random_auc"]).all()
    assert (table["faithfulness_ci_low"] <= table["faithfulness"]).all()
    assert (table["faithfulness"] <= table["faithfulness_ci_high"]).all()
    own = table[table["own_model"]]
    assert set(zip(own["attention"], own["scorer"])) == {
        ("Grad2VAE online attention", "grad2vae"),
        ("offline attention (Liu et al.)", "grad2vae"),
        ("offline attention (Liu et al.)", "vae"),
    }
    curves = pd.read_csv(out / "deletion_curves.csv")
    assert sorted(set(curves["fraction"])) == [0, 0.125, 0.25, 0.375, 0.5]
    assert curves.loc[curves["fraction"] == 0, "mean_abs_score_change"].eq(0).all()

    # deterministic: a second run gives the same table
    first = (out / "faithfulness.csv").read_text()
    assert explain.run(_args(tmp_path)) == 0
    assert (out / "faithfulness.csv").read_text() == first


def test_explain_missing_run_is_a_user_error(fake_pipeline):
    from grad2vae.errors import UserError

    tmp_path, _ = fake_pipeline
    with pytest.raises(UserError, match="no finished run"):
        explain.run(_args(tmp_path, **{"normal-classes": "9 4"}))


def test_explain_rejects_bad_arguments(fake_pipeline):
    from grad2vae.errors import UserError

    tmp_path, _ = fake_pipeline
    with pytest.raises(UserError):
        explain.run(_args(tmp_path, **{"normal-classes": "11"}))
    with pytest.raises(UserError, match="units"):
        explain.run(_args(tmp_path, units="2 7"))
    with pytest.raises(UserError, match=r"--fig5-classes \[4\] are not in --normal-classes"):
        explain.run(_args(tmp_path, **{"fig5-classes": "4"}))


def test_each_figure_shows_its_own_classes(fake_pipeline):
    """The paper's figures use different classes (Fig. 3: digit 8, Fig. 4: 9, Fig. 5: 1 and 3):
    each figure is drawn for the classes asked for it, the faithfulness table for all."""
    tmp_path, _ = fake_pipeline
    out = tmp_path / "explain"
    assert (
        explain.run(
            _args(tmp_path, **{"fig3-classes": "9", "fig4-classes": "2", "fig5-classes": "2"})
        )
        == 0
    )
    summary = _check_summary(out)
    files = [f["file"] for f in summary["figures"]]
    assert (
        files
        == explain_runs.output_files(["mnist"], [9, 2], fig3_classes=[9], fig4_classes=[2])[
            "figures"
        ]
    )
    assert (
        "fig3_second_derivatives_mnist_class9.png" in files
        and "fig3_second_derivatives_mnist_class2.png" not in files
    )
    assert (
        "fig4_attention_mnist_class2.png" in files
        and "fig4_attention_mnist_class9.png" not in files
    )
    fig5 = next(f for f in summary["figures"] if f["file"] == "fig5_attention_mnist.png")
    assert "trained on class 2)" in fig5["title"]
    import pandas as pd

    assert set(pd.read_csv(out / "faithfulness.csv")["normal_class"]) == {9, 2}


def test_default_explain_classes_are_the_papers_counted_from_one():
    import yaml

    parser = argparse.ArgumentParser()
    explain.add_arguments(parser)
    assert parser.parse_args([]).normal_classes == [8, 9, 1, 3]
    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())["explain"]
    assert (config["fig3_classes"], config["fig4_classes"], config["fig5_classes"]) == (
        [8],
        [9],
        [1, 3],
    )
    assert set(config["normal_classes"]) == {8, 9, 1, 3}


def test_module_documents_assumptions_and_help():
    assert explain.__doc__ and "faithfulness" in explain.__doc__.lower()
    assert attention_maps.ASSUMPTIONS and all(
        " — " in entry for entry in attention_maps.ASSUMPTIONS
    )


@pytest.fixture(scope="module")
def trained_runs(tiny_data_dir, tmp_path_factory):
    """A results folder with one-epoch grad2vae and vae runs written by the real trainer (mnist,
    class 2, seed 0, latent 3, tiny synthetic data)."""
    from grad2vae.cli import main

    results = tmp_path_factory.mktemp("explain_runs") / "results"
    for model in ("grad2vae", "vae"):
        out = explain_runs.run_dir(results, "mnist", model, 2, 0)
        assert (
            main(
                [
                    "train",
                    "--model",
                    model,
                    "--dataset",
                    "mnist",
                    "--normal-class",
                    "2",
                    "--seed",
                    "0",
                    "--data-dir",
                    str(tiny_data_dir),
                    "--out-dir",
                    str(out),
                    "--epochs",
                    "1",
                    "--latent-dim",
                    "3",
                    "--train-limit",
                    "16",
                    "--test-limit",
                    "20",
                    "--eval-every",
                    "0",
                    "--batch-size",
                    "16",
                    "--checkpoint-every",
                    "0",
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    return results


def test_explain_from_real_runs_through_the_cli(trained_runs, tiny_data_dir, tmp_path):
    """`grad2vae explain` loads the real trainer's model.pt files and writes every figure, the
    table and summary.json, which the report picks up."""
    from grad2vae.cli import main

    out = tmp_path / "explain"
    assert (
        main(
            [
                "explain",
                "--results-dir",
                str(trained_runs),
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(out),
                "--datasets",
                "mnist",
                "--normal-classes",
                "2",
                "--fig4-images",
                "2",
                "--faithfulness-per-class",
                "1",
                "--steps",
                "2",
                "--random-repeats",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    summary = _check_summary(out)
    assert len(summary["figures"]) == len(explain_runs.output_files(["mnist"], [2])["figures"])
    import pandas as pd

    table = pd.read_csv(out / "faithfulness.csv")
    assert len(table) == 8 and table["n_images"].eq(10).all()
    assert "z_2 and z_3 of d = 3" in summary["figures"][0]["details"]

    # the report picks every figure and the table up from summary.json
    from grad2vae.report.sections import gather_explain

    shown = gather_explain(out / "summary.json", tmp_path / "report", CAPTIONS_FOLDER.parent)
    assert shown["problems"] == []
    assert [f["title"] for f in shown["figures"]] == [f["title"] for f in summary["figures"]]
    assert all((tmp_path / "report" / f["src"]).is_file() for f in shown["figures"])
    assert len(shown["tables"]) == 1 and shown["tables"][0]["total_rows"] == 8


# --------------------------------------------------------------------------------------------
# The Snakemake rule
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXPLAIN_SMK = ROOT / "workflow" / "rules" / "explain.smk"


def test_rule_is_snakefmt_formatted():
    import subprocess

    snakefmt = Path(sys.executable).parent / "snakefmt"
    if not snakefmt.exists():
        unavailable("snakefmt is not installed (pip install -e '.[test]')")
    done = subprocess.run(
        [str(snakefmt), "--check", str(EXPLAIN_SMK)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _workflow_copy(tmp_path: Path) -> Path:
    """The repository's Snakefile and workflow/ in a temporary folder (Snakemake writes its
    .snakemake/ state beside the Snakefile; the tests must not touch the repository's)."""
    import shutil

    copy = tmp_path / "wf"
    copy.mkdir()
    shutil.copy(ROOT / "Snakefile", copy / "Snakefile")
    shutil.copy(ROOT / "config.yaml", copy / "config.yaml")
    shutil.copytree(ROOT / "workflow", copy / "workflow")
    shutil.copytree(ROOT / "envs", copy / "envs")  # the rules' `conda:` files
    return copy


def _snakemake(copy: Path, config: dict, *args: str):
    import os
    import subprocess

    import yaml

    (copy / "test.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--configfile",
            "test.yaml",
            "--nolock",
            *args,
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rule_setup(trained_runs, tiny_data_dir, tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(trained_runs, results)
    copy = _workflow_copy(tmp_path)
    config = {
        "results_dir": str(results),
        "report_dir": str(tmp_path / "report"),
        "data": {"dir": str(tiny_data_dir)},
        "datasets": ["mnist"],
        "normal_classes": [2],
        "seeds": [0],
        "models": ["grad2vae", "vae"],
        "latent_dim": {"mnist": 3},
        "explain": {
            "normal_classes": [2, 9],
            "fig4_images": 2,
            "faithfulness_per_class": 1,
            "steps": 2,
            "random_repeats": 1,
            "device": "cpu",
        },
        "resources": {"explain": {"threads": 1, "gpu": 0}},
    }
    return results, copy, config


def test_snakemake_rule_plans_explain_from_saved_runs(trained_runs, tiny_data_dir, tmp_path):
    """Dry run: the rule needs the saved runs only (no training job), skips targets outside the
    grid with a message, and does not exist when disabled (the report then has no section)."""
    results, copy, config = _rule_setup(trained_runs, tiny_data_dir, tmp_path)
    summary = results / "explain" / "summary.json"
    dry = _snakemake(copy, config, "-n", str(summary))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "explain: skipped (not in the training grid): class 9" in dry.stderr
    jobs = dry.stdout + dry.stderr
    assert "rule explain:" in jobs and "rule train:" not in jobs  # nothing is retrained
    for name in explain_runs.output_files(["mnist"], [2])["figures"]:
        assert name in jobs
    config["explain"]["enabled"] = False
    dry = _snakemake(copy, config, "-n", str(summary))
    assert dry.returncode != 0 and "MissingRuleException" in dry.stdout + dry.stderr


@pytest.mark.slow
def test_snakemake_rule_explains_the_saved_runs_into_the_report(
    trained_runs, tiny_data_dir, tmp_path
):
    """The rule's outputs are exactly what the command writes, and the report shows them."""
    results, copy, config = _rule_setup(trained_runs, tiny_data_dir, tmp_path)
    summary = results / "explain" / "summary.json"
    done = _snakemake(copy, config, str(summary))
    assert done.returncode == 0, (
        done.stdout + done.stderr + (results / "logs" / "explain.log").read_text()
    )
    written = _check_summary(results / "explain")
    assert [f["file"] for f in written["figures"]] == explain_runs.output_files(["mnist"], [2])[
        "figures"
    ]
    assert (results / "logs" / "explain.log").is_file()
    # aggregate, figures and report run on the two runs; the page has the explain section
    report = tmp_path / "report" / "index.html"
    done = _snakemake(copy, config, str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rule train:" not in done.stdout + done.stderr
    page = report.read_text()
    assert 'id="explainability"' in page
    for entry in written["figures"]:
        assert 'src="explain/' in page and entry["file"] in page
        assert html.escape(entry["title"]) in page
    assert html.escape(written["tables"][0]["title"]) in page
