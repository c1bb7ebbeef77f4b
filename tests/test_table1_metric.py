"""Which quantity is the paper's Table 1 column? The pixel-level AUC through the model interface
and the evaluation, the claim table1_metric on constructed runs, Table 1 under the pixel metric,
and the figures' colours of the pair the paper compares."""

from __future__ import annotations

import colorsys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_run_config, train_on_cpu
from matplotlib.colors import to_rgb

from grad2vae import published as pub
from grad2vae.analysis.table1_metric import (
    LEVEL_POINTS,
    judge_dataset,
    pixel_table1,
    printed_column,
    table1_metric,
)
from grad2vae.analysis.verdicts import CANNOT, NOT_SUPPORTED, PARTLY, SUPPORTED
from grad2vae.figures.plotting import palette
from grad2vae.models import create_model
from grad2vae.models.base import AnomalyModel
from grad2vae.training.evaluate import evaluate


# --------------------------------------------------------------------------------------------
# the pixel AUC through the model interface and the evaluation
class Echo(AnomalyModel):
    """Outputs its input (``constant`` None) or a constant image: pixel AUC 1, resp. 0.5."""

    name, main_score, assumptions = "echo", "none", ()

    def __init__(self, constant: float | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.constant = constant

    def scores(self, x, generator=None):
        per_image = x.flatten(1).sum(1)
        return {"main": per_image, "reconstruction": per_image}

    def score_batch(self, x, generator=None):
        image = x if self.constant is None else torch.full_like(x, self.constant)
        return self.scores(x, generator), {"reconstruction": image}


class Split:
    def __init__(self, n: int = 12, seed: int = 0):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 1, 28, 28)) * (rng.random((n, 1, 28, 28)) > 0.7)
        self.test_x = torch.from_numpy(images.astype(np.float32) / 255)
        self.train_x = self.test_x[:2]


@pytest.mark.parametrize("constant, expected", [(None, 1.0), (0.3, 0.5)])
def test_evaluation_reports_the_pixel_auc_of_a_models_output_images(constant, expected):
    _, _, pixel = evaluate(Echo(constant), Split(), generator_seed=0, batch_size=5)
    assert pixel["pixel_auc"] == expected
    assert pixel["pixel_auc_keras"] == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("name", ["vae", "grad2vae", "cae", "inception_caenn"])
def test_image_models_hand_their_outputs_to_the_pixel_metric(name):
    torch.manual_seed(0)
    model = create_model(name, 4, dataset="mnist").eval()
    x = Split(4).test_x
    model.fit_scorer(x)
    scores, images = model.score_batch(x, torch.Generator().manual_seed(1))
    expected = {"reconstruction", "attention"} if name == "grad2vae" else {"reconstruction"}
    assert set(images) == expected
    for image in images.values():
        assert image.shape == x.shape and 0 <= float(image.min()) and float(image.max()) <= 1
    again = model.scores(x, torch.Generator().manual_seed(1))  # scores() is the same pass
    for key, value in scores.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)


def test_deep_svdd_has_no_output_image():
    model = create_model("deep_svdd", 4, dataset="mnist")
    x = Split(2).test_x
    assert model.score_batch.__func__ is AnomalyModel.score_batch
    assert AnomalyModel.score_batch(Echo(), x)[1] == {}


def test_a_run_writes_the_pixel_aucs_per_epoch_and_per_run(tiny_data_dir, tmp_path):
    import json

    config = tiny_run_config("grad2vae", epochs=2, eval_every=1, train_limit=32, test_limit=40)
    train_on_cpu(config, tmp_path, tiny_data_dir)
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    columns = ["pixel_auc", "pixel_auc_keras", "pixel_auc_attention", "pixel_auc_attention_keras"]
    assert list(history.columns[-4:]) == columns  # after every older column
    assert history[columns].notna().all().all() and len(history) == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {c: metrics[c] for c in columns} == history.iloc[-1][columns].to_dict()


# --------------------------------------------------------------------------------------------
# the claim on constructed runs
def runs_from(per_dataset: dict[str, dict[str, np.ndarray]], seeds=(0, 1)) -> pd.DataFrame:
    """Grad2VAE runs whose per-class mean of each column is the given values (percent)."""
    rows = []
    for dataset, columns in per_dataset.items():
        for normal_class in range(len(next(iter(columns.values())))):
            for seed in seeds:
                row = {"dataset": dataset, "model": "grad2vae", "normal_class": normal_class,
                       "seed": seed, "epochs": 100, "train_limit": 0, "test_limit": 0}  # fmt: skip
                for column, values in columns.items():
                    row[column] = values[normal_class] / 100.0
                rows.append(row)
    return pd.DataFrame(rows)


def near_printed(dataset: str, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(len(dataset))
    return printed_column(dataset).to_numpy() + rng.uniform(-noise, noise, 10)


def reversed_far(dataset: str) -> np.ndarray:
    """Far below the printed column and in the opposite order."""
    printed = printed_column(dataset).to_numpy()
    return 60.0 + (printed.max() - printed)


def test_a_pixel_candidate_that_follows_the_printed_column_supports_the_hypothesis():
    runs = runs_from({d: {"auc": reversed_far(d), "pixel_auc": near_printed(d)}
                      for d in ("mnist", "fashion_mnist")})  # fmt: skip
    claim = table1_metric(runs, pd.DataFrame(), ["mnist", "fashion_mnist"])
    assert claim["verdict"] == SUPPORTED, claim["why"]
    mnist = claim["evidence"]["ours"]["mnist"]
    assert mnist["closest_in_level"] == "pixel"
    assert mnist["candidates"]["pixel"]["mad_points"] <= LEVEL_POINTS
    assert mnist["candidates"]["pixel"]["spearman"] >= 0.6
    assert mnist["candidates"]["main"]["spearman"] < 0
    assert claim["scope"]["text"].startswith("short of the paper's protocol")  # 2 seeds


def test_an_image_level_candidate_that_matches_refutes_it():
    runs = runs_from({d: {"auc": near_printed(d), "pixel_auc": reversed_far(d)}
                      for d in ("mnist", "fashion_mnist")})  # fmt: skip
    claim = table1_metric(runs, pd.DataFrame(), ["mnist", "fashion_mnist"])
    assert claim["verdict"] == NOT_SUPPORTED, claim["why"]


def test_the_right_order_at_the_wrong_level_holds_in_part():
    runs = runs_from({d: {"auc": reversed_far(d), "pixel_auc": near_printed(d) - 10.0}
                      for d in ("mnist", "fashion_mnist")})  # fmt: skip
    claim = table1_metric(runs, pd.DataFrame(), ["mnist", "fashion_mnist"])
    assert claim["verdict"] == PARTLY, claim["why"]


def test_fewer_than_ten_classes_or_one_dataset_cannot_be_judged():
    runs = runs_from({"mnist": {"auc": reversed_far("mnist"), "pixel_auc": near_printed("mnist")}})
    claim = table1_metric(runs[runs["normal_class"] < 9], pd.DataFrame(), ["mnist"])
    assert claim["verdict"] == CANNOT
    assert "needs all 10 classes" in claim["evidence"]["ours"]["mnist"]["why"]
    claim = table1_metric(runs, pd.DataFrame(), ["mnist"])  # no Fashion-MNIST runs
    assert claim["verdict"] == CANNOT, claim["why"]


def test_the_entropy_only_candidate_is_judged_too():
    printed = printed_column("mnist")
    entropy = pd.DataFrame({"dataset": "mnist", "normal_class": range(10),
                            "auc": near_printed("mnist") / 100.0})  # fmt: skip
    found = {"entropy_only": pd.Series(entropy["auc"].to_numpy() * 100.0, index=range(10)),
             "pixel": pd.Series(near_printed("mnist", 0.1), index=range(10))}  # fmt: skip
    result = judge_dataset(found, printed)
    assert result["candidates"]["entropy_only"]["matches"]["both"]
    assert result["result"] != "holds"  # a per-image candidate matches as well
    assert len(runs_from({"mnist": {"auc": printed.to_numpy()}})) == 20  # helper sanity


def test_the_printed_table_alone_is_anticorrelated_as_the_notes_say():
    claim = table1_metric(pd.DataFrame(), pd.DataFrame(), ["mnist", "fashion_mnist"])
    alone = claim["evidence"]["printed_table_alone"]
    assert alone["mnist"]["cae_ocsvm"]["spearman"] == pytest.approx(-0.66, abs=0.01)
    assert alone["fashion_mnist"]["mean of the baselines"]["spearman"] == pytest.approx(
        -0.78, abs=0.01
    )


def test_table1_under_the_pixel_metric_sits_beside_the_published_column():
    summary = pd.DataFrame({
        "dataset": "mnist", "normal_class": [0, 1], "model": "grad2vae", "n_seeds": 2,
        "pixel_auc_pct_mean": [95.0, 96.0], "pixel_auc_pct_std": [0.1, 0.2],
        "pixel_auc_attention_pct_mean": [90.0, np.nan], "pixel_auc_attention_pct_std": 0.0,
    })  # fmt: skip
    grid = {"datasets": ["mnist"], "normal_classes": [0, 1], "models": ["grad2vae", "vae"]}
    table = pixel_table1(summary, grid)
    assert len(table) == 3  # two classes of pixel_auc, one of the attention
    first = table.iloc[0]
    assert first["published_grad2vae"] == pub.published_auc("mnist", "grad2vae", 0) == 97.62
    assert (first["score"], first["auc_pct_mean"]) == ("pixel_auc", 95.0)


# --------------------------------------------------------------------------------------------
# the pair the paper compares: colours no reader confuses, also printed in grey
def test_grad2vae_and_the_vae_differ_in_hue_and_in_grey():
    for models in (["cae", "vae", "inception_caenn", "grad2vae"],
                   [f"variant{i}" for i in range(12)] + ["grad2vae", "vae"]):  # fmt: skip
        colours = palette(models)
        ours, theirs = to_rgb(colours["grad2vae"]), to_rgb(colours["vae"])
        hue_gap = abs(colorsys.rgb_to_hls(*ours)[0] - colorsys.rgb_to_hls(*theirs)[0])
        assert min(hue_gap, 1 - hue_gap) > 0.25  # at least 90 degrees apart on the wheel

        def grey(rgb):
            return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]

        assert abs(grey(ours) - grey(theirs)) > 0.1
        assert len(set(map(tuple, colours.values()))) == len(models)
