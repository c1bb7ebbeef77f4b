"""Pixel-level ROC AUC, as the authors' Keras notebook logged it (the Table 1 hypothesis).

Every pixel of every test image is one sample: its label is "target pixel != 0" (Keras casts
``y_true`` to bool; for image targets in [0, 1] that is "> 0") and its score the model's output
intensity in [0, 1]. ``PixelAUC`` accumulates over batches without a host sync and reports

- ``exact``: the ROC AUC with ties counted half, as ``sklearn.metrics.roc_auc_score``;
- ``keras``: what ``tf.keras.metrics.AUC()`` with its defaults returns (ROC, 200 thresholds,
  trapezoids), from a fixed 2 x 201 histogram of the scores.

docs/findings/table1-metric.md gives the reasons; the Keras facts are cited where used.
"""

from __future__ import annotations

import math
import warnings

import torch

#: tf.keras.metrics.AUC's default number of thresholds
NUM_THRESHOLDS = 200

#: keras.backend.epsilon(): keras-team/keras keras/backend_config.py line 27 (Dec 2020, the
#: TF 2.4 era of the notebook), keras/src/backend/config.py line 10 today
KERAS_EPSILON = 1e-7

#: outputs this far outside [0, 1] are reported by compute(): Keras <= 2.9 asserted the range
#: (keras/utils/metrics_utils.py lines 326-335 at 4fd825ddf9; removed in 8292b37254, v2.10),
#: later versions clip (keras/src/metrics/metrics_utils.py line 219 today)
RANGE_TOLERANCE = 1e-6


def keras_thresholds(num_thresholds: int = NUM_THRESHOLDS) -> list[float]:
    """The thresholds of ``tf.keras.metrics.AUC(num_thresholds)``: -eps, i/(n-1) for
    i = 1..n-2, 1+eps. Read in keras-team/keras keras/metrics.py lines 1959-1965 (commit
    4fd825ddf9, Dec 2020) and keras/src/metrics/confusion_metrics.py lines 1242-1253 today."""
    inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    return [0.0 - KERAS_EPSILON, *inner, 1.0 + KERAS_EPSILON]


def _device_thresholds(num_thresholds: int, device: torch.device) -> torch.Tensor:
    """``keras_thresholds`` as float32 (Keras casts them to its float32 variables), made on the
    device: copying a list there would synchronise. float64 division rounds as Python's does."""
    inner = torch.arange(1, num_thresholds - 1, dtype=torch.float64, device=device)
    inner = inner / (num_thresholds - 1)
    low = torch.full((1,), 0.0 - KERAS_EPSILON, dtype=torch.float64, device=device)
    high = torch.full((1,), 1.0 + KERAS_EPSILON, dtype=torch.float64, device=device)
    return torch.cat([low, inner, high]).to(torch.float32)


class PixelAUC:
    """Accumulates pixel scores and labels over ``update`` calls; ``compute`` gives both AUCs.

    ``update`` never synchronises with the device: the state stays on the tensors' device (set
    by the first update). It keeps every score (float32) and label (bool) for the exact AUC:
    MNIST's test split, 10,000 x 784 pixels, holds 31 MB of scores and 7.8 MB of labels on the
    device until ``reset()``. The Keras counts are a fixed-size histogram beside them.
    """

    def __init__(self, num_thresholds: int = NUM_THRESHOLDS):
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        self.num_thresholds = num_thresholds
        self.reset()

    def reset(self) -> None:
        """Forget every update and free the stored scores."""
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._thresholds: torch.Tensor | None = None
        # row 0 negatives, row 1 positives; column k = scores above exactly k thresholds
        self._hist: torch.Tensor | None = None
        self._low: torch.Tensor | None = None
        self._high: torch.Tensor | None = None

    def update(self, targets: torch.Tensor, outputs: torch.Tensor) -> None:
        """Add one batch: ``targets`` and ``outputs`` of the same shape (any), on one device.
        A ``ValueError`` when the shapes differ. Outputs should lie in [0, 1]; they are not
        checked here (that would sync) but clamped for the Keras histogram, as Keras >= 2.10
        does, and ``compute`` warns when they did not."""
        if targets.shape != outputs.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} differs from outputs shape "
                f"{tuple(outputs.shape)}"
            )
        if outputs.numel() == 0:  # a shape fact, no sync; aminmax refuses empty tensors
            return
        # a copy: the caller may reuse its output buffer before compute()
        scores = outputs.detach().reshape(-1).to(torch.float32, copy=True)
        # Keras casts y_true to float32, then to bool (keras-team/keras
        # keras/utils/metrics_utils.py lines 302 and 371 at 4fd825ddf9)
        labels = targets.detach().reshape(-1) != 0
        if self._hist is None:
            self._thresholds = _device_thresholds(self.num_thresholds, scores.device)
            self._hist = torch.zeros(
                2 * (self.num_thresholds + 1), dtype=torch.int64, device=scores.device
            )
            self._low = torch.full((), math.inf, device=scores.device)
            self._high = torch.full((), -math.inf, device=scores.device)
        self._scores.append(scores)
        self._labels.append(labels)

        low, high = torch.aminmax(scores)
        self._low = torch.minimum(self._low, low)
        self._high = torch.maximum(self._high, high)

        # Keras counts a prediction as positive at threshold t when y_pred > t (tf.greater:
        # keras-team/keras keras/utils/metrics_utils.py line 391 at 4fd825ddf9; the bucket path
        # of Keras >= 2.6, keras/src/metrics/metrics_utils.py lines 229-242, agrees except for
        # 27 float32 values). bucketize(right=False) = how many thresholds lie strictly below.
        above = torch.bucketize(scores.clamp(0.0, 1.0), self._thresholds, right=False)
        index = above + labels.to(torch.int64) * (self.num_thresholds + 1)
        # scatter_add_ into a fixed size: CUDA's bincount reads the maximum back to the host
        self._hist.scatter_add_(0, index, torch.ones_like(index))

    @property
    def counts(self) -> tuple[int, int]:
        """(positive pixels, negative pixels) so far; reads them back from the device."""
        if self._hist is None:
            return 0, 0
        hist = self._hist.view(2, -1).sum(dim=1).tolist()
        return int(hist[1]), int(hist[0])

    def compute(self) -> dict[str, float]:
        """``{"exact": ..., "keras": ...}`` as Python floats; both NaN when there is no positive
        or no negative pixel (Keras itself would return 0.0 there, by divide_no_nan)."""
        positives, negatives = self.counts
        if positives == 0 or negatives == 0:
            return {"exact": math.nan, "keras": math.nan}
        low, high = self._low.item(), self._high.item()
        if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
            warnings.warn(
                f"outputs span [{low:.6g}, {high:.6g}], outside [0, 1]: the Keras AUC clamps "
                "them, and Keras <= 2.9 would have refused them",
                stacklevel=2,
            )
        exact = _exact_auc(torch.cat(self._scores), torch.cat(self._labels))
        keras = _keras_auc(self._hist.cpu().view(2, -1))
        return {"exact": exact, "keras": keras}


def _exact_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney U / (P N) with ties counted half, from one sort on the scores' device.
    The counts are int64, exact where float32 stops at 2**24 (16.7 M) and a long float
    accumulation would drift; only the final ratio is a float64."""
    ordered, order = torch.sort(scores)
    positive = labels[order].to(torch.int64)
    _, sizes = torch.unique_consecutive(ordered, return_counts=True)
    # positives per group of equal scores, from the running count at each group's last item
    at_ends = torch.cumsum(positive, 0)[torch.cumsum(sizes, 0) - 1]
    group_pos = torch.diff(at_ends, prepend=at_ends.new_zeros(1))
    group_neg = sizes - group_pos
    neg_below = torch.cumsum(group_neg, 0) - group_neg
    # 2 U = sum over groups of positives x (2 negatives below + negatives tied)
    twice_u = (group_pos * (2 * neg_below + group_neg)).sum().item()
    n_pos = at_ends[-1].item()
    n_neg = scores.numel() - n_pos
    return twice_u / (2.0 * n_pos * n_neg)


def _keras_auc(hist: torch.Tensor) -> float:
    """ROC AUC with summation_method='interpolation' from the (2, n+1) histogram: the sum of
    (fpr[i] - fpr[i+1]) (tpr[i] + tpr[i+1]) / 2 over the n thresholds, tpr = tp / (tp + fn),
    fpr = fp / (fp + tn). Read in keras-team/keras keras/metrics.py lines 2192-2241 at
    4fd825ddf9 and keras/src/metrics/confusion_metrics.py lines 1464-1566 today. Keras sums in
    float32; this in float64, a difference near 1e-7."""
    hist = hist.to(torch.float64)
    # above[:, i] = pixels whose score exceeds threshold i, i = 0..n-1
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    fpr = above[0] / hist[0].sum()
    tpr = above[1] / hist[1].sum()
    return float(((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2.0).sum())


def pixel_auc(targets: torch.Tensor, outputs: torch.Tensor) -> dict[str, float]:
    """Both pixel AUCs of one set of targets and outputs: one ``update`` and ``compute``."""
    metric = PixelAUC()
    metric.update(targets, outputs)
    return metric.compute()
