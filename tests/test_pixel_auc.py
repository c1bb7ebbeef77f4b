"""grad2vae.training.pixel_auc: the exact pixel AUC against scikit-learn, the Keras variant
against values derived by hand, the edge cases, and that update() never reads a tensor back to
the host."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from grad2vae.training.pixel_auc import PixelAUC, keras_thresholds, pixel_auc


def test_exact_matches_sklearn_with_ties_over_batches():
    generator = torch.Generator().manual_seed(0)
    metric = PixelAUC()
    all_targets, all_outputs = [], []
    for batch in (1, 7, 32, 3):
        blank = torch.rand(batch, 1, 28, 28, generator=generator) < 0.6
        # ~60 % zeros, the others intensities in (0, 1)
        targets = torch.where(blank, 0.0, torch.rand(batch, 1, 28, 28, generator=generator))
        # 10 levels: most scores tie, and positives score a little higher
        outputs = torch.rand(batch, 1, 28, 28, generator=generator) + 0.3 * (targets > 0)
        outputs = (outputs.clamp(0, 1) * 9).round() / 9
        metric.update(targets, outputs)
        all_targets.append(targets.flatten())
        all_outputs.append(outputs.flatten())
    labels = (torch.cat(all_targets) > 0).numpy()
    expected = roc_auc_score(labels, torch.cat(all_outputs).numpy())
    result = metric.compute()
    assert isinstance(result["exact"], float) and isinstance(result["keras"], float)
    assert result["exact"] == pytest.approx(expected, abs=1e-12)
    assert metric.counts == (int(labels.sum()), int((~labels).sum()))
    metric.reset()
    assert metric.counts == (0, 0)
    assert math.isnan(metric.compute()["exact"])


def test_exact_is_exact_on_a_million_pixels():
    # 1e6 scores on 1000 levels: the AUC as a fraction of integers, computed with Python ints,
    # must come back to float64 precision (float32 counts stop being exact at 2**24 products)
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 1000, size=1_000_000)
    labels = rng.random(1_000_000) < (0.3 + 0.4 * levels / 1000)
    pos = np.bincount(levels[labels], minlength=1000).astype(object)
    neg = np.bincount(levels[~labels], minlength=1000).astype(object)
    below = np.concatenate([[0], np.cumsum(neg)[:-1]])
    twice_u = sum(int(p) * (2 * int(b) + int(n)) for p, b, n in zip(pos, below, neg))
    expected = Fraction(twice_u, 2 * int(pos.sum()) * int(neg.sum()))
    result = pixel_auc(torch.from_numpy(labels.astype(np.float32)), torch.from_numpy(levels / 999))
    assert abs(result["exact"] - float(expected)) < 1e-15
    assert result["exact"] == pytest.approx(roc_auc_score(labels, levels), abs=1e-12)


def test_keras_hand_derived_value():
    # Thresholds t_i = i/199 (t_0 = -1e-7, t_199 = 1 + 1e-7); a pixel counts as positive at t_i
    # when its score > t_i. Pixels (target -> score): 0 -> 0.0, 0 -> 0.503, 0.7 -> 0.505,
    # 1.0 -> 1.0; t_100 = 0.50251 and t_101 = 0.50754 put 0.503 and 0.505 in one bucket.
    #   i = 0:        all four above              fpr 1,   tpr 1
    #   i = 1..100:   0.503, 0.505, 1.0 above     fpr 1/2, tpr 1
    #   i = 101..198: only 1.0 above              fpr 0,   tpr 1/2
    #   i = 199:      none above                  fpr 0,   tpr 0
    # trapezoids: (1 - 1/2)(1 + 1)/2 + (1/2 - 0)(1 + 1/2)/2 + 0 = 1/2 + 3/8 = 7/8, where the
    # exact AUC, which sees 0.505 > 0.503, is 1.
    targets = torch.tensor([0.0, 0.0, 0.7, 1.0])
    result = pixel_auc(targets, torch.tensor([0.0, 0.503, 0.505, 1.0]))
    assert result["keras"] == pytest.approx(7 / 8, abs=1e-12)
    assert result["exact"] == 1.0
    # a score equal to a threshold is not above it (">" not ">="): a negative at exactly t_100
    # shares the bucket (t_99, t_100] with a positive at 0.5, so ROC goes (1,1) -> (0,0): 1/2;
    # with ">=" it would count at t_100 alone, (1,1) -> (1,0) -> (0,0): 0. Exact: 0.
    t_100 = keras_thresholds()[100]
    metric = PixelAUC()
    metric.update(targets, targets)  # the thresholds are built on the device, the same float32
    assert torch.equal(metric._thresholds, torch.tensor(keras_thresholds(), dtype=torch.float32))
    assert t_100 == pytest.approx(100 / 199)
    result = pixel_auc(torch.tensor([1.0, 0.0]), torch.tensor([0.5, t_100]))
    assert result["keras"] == pytest.approx(0.5, abs=1e-12)
    assert result["exact"] == 0.0


def test_keras_close_to_exact_on_smooth_scores():
    generator = torch.Generator().manual_seed(2)
    targets = (torch.rand(100_000, generator=generator) < 0.2).float()
    outputs = torch.sigmoid(torch.randn(100_000, generator=generator) + 1.5 * targets)
    result = pixel_auc(targets, outputs)
    assert 0.7 < result["exact"] < 0.9
    assert result["keras"] == pytest.approx(result["exact"], abs=1e-3)


def test_identity_model():
    # outputs = targets: every positive pixel scores above every zero, so the exact AUC is 1.
    # Keras cannot separate scores in (-1e-7, 1/199]: the zeros and the positives of intensity
    # 1/255 share that bucket and count as ties, so its AUC is 1 - (share of such positives)/2,
    # about 1 - 1/510 = 0.998 for intensities uniform on {1..255}/255.
    generator = torch.Generator().manual_seed(3)
    levels = torch.randint(1, 256, (64, 1, 28, 28), generator=generator)
    blank = torch.rand(64, 1, 28, 28, generator=generator) < 0.8
    images = torch.where(blank, 0, levels).float() / 255
    result = pixel_auc(images, images.clone())
    assert result["exact"] == 1.0
    faint = (levels[~blank] == 1).double().mean().item()
    assert 0 < faint < 0.01
    assert result["keras"] == pytest.approx(1 - faint / 2, abs=1e-12)
    assert result["keras"] > 0.995


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_constant_output_is_one_half(value):
    targets = torch.tensor([[0.0, 0.2], [0.9, 0.0], [0.0, 0.0]])
    result = pixel_auc(targets, torch.full_like(targets, value))
    assert result == {"exact": 0.5, "keras": 0.5}


def test_no_positives_or_negatives_is_nan():
    outputs = torch.rand(2, 1, 4, 4)
    for targets in (torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)):
        result = pixel_auc(targets, outputs)
        assert math.isnan(result["exact"]) and math.isnan(result["keras"])
    assert all(math.isnan(value) for value in PixelAUC().compute().values())


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 1, 28, 28\).*\(2, 784\)"):
        PixelAUC().update(torch.zeros(2, 1, 28, 28), torch.zeros(2, 784))


def test_outputs_out_of_range_warn_at_compute():
    metric = PixelAUC()
    metric.update(torch.tensor([0.0, 1.0]), torch.tensor([-0.5, 1.5]))  # no check yet
    with pytest.warns(UserWarning, match="outside"):
        result = metric.compute()
    assert result == {"exact": 1.0, "keras": 1.0}


def _forbid(*args, **kwargs):
    raise AssertionError("update() read a tensor back to the host")


def test_update_does_not_sync(monkeypatch):
    targets = torch.rand(4, 1, 28, 28)
    outputs = torch.rand(4, 1, 28, 28)
    if torch.cuda.is_available():
        metric = PixelAUC()
        torch.cuda.set_sync_debug_mode("error")
        try:
            metric.update(targets.cuda(), outputs.cuda())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert metric.counts[0] + metric.counts[1] == targets.numel()
    metric = PixelAUC()
    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
            patch.setattr(torch.Tensor, name, _forbid)
        metric.update(targets, outputs)
        metric.update(targets[:1], outputs[:1])
    assert sum(metric.counts) == 5 * 784


def test_update_runs_on_the_meta_device():
    # meta tensors have no data: any read-back, boolean mask or nonzero in update() would raise.
    # The first meta ops import torch's Python meta kernels (torch._dynamo, sympy): ~2 s once.
    targets = torch.rand(4, 1, 28, 28)
    outputs = torch.rand(4, 1, 28, 28)
    metric = PixelAUC()
    metric.update(targets.to("meta"), outputs.to("meta"))
    assert metric._hist.device.type == "meta" and metric._scores[0].device.type == "meta"
