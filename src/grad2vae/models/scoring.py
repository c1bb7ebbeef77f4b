"""Per-sample reconstruction scores that every reconstruction model reports beside its main score.

Why these scores: BCE(x, x̂) = H(x) + KL(x ‖ x̂) per pixel, where H(x) is the binary
entropy of the test image itself. H(x) cannot be reconstructed away: it measures how much ink or
texture an image has, which varies by class, so part of every BCE-based AUC is the class's ink,
not the model. ``bce_excess`` = BCE − H(x) = KL(x ‖ x̂) is the part a model can change; ``mse`` is
the squared error, which has no such floor; ``entropy`` alone is the model-free scorer
``entropy_only`` of the aggregation.

Every function returns one value per sample (summed over pixels), higher = more anomalous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the reconstruction diagnostics every reconstruction model returns from ``scores()``
RECONSTRUCTION_SCORES = ("mse", "bce_excess")
#: suffix of the same scores computed with the latent noise set to zero (z = mu)
ZERO_NOISE = "_zero_noise"


def binary_entropy(x: Tensor) -> Tensor:
    """H(x) = -sum over pixels of x log x + (1 - x) log(1 - x), pixels in [0, 1]; 0 log 0 = 0."""
    return -(torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x)).flatten(1).sum(1)


def kl_from_logits(logits: Tensor, x: Tensor) -> Tensor:
    """KL(x ‖ sigmoid(logits)) summed over pixels = BCE − H(x), computed pixel by pixel (not as
    the difference of two large sums) and clamped at 0 per pixel, where only rounding can put it."""
    per_pixel = (
        torch.xlogy(x, x)
        + torch.xlogy(1 - x, 1 - x)
        - x * F.logsigmoid(logits)
        - (1 - x) * F.logsigmoid(-logits)
    )
    return per_pixel.clamp_min(0).flatten(1).sum(1)


def kl_from_probabilities(probabilities: Tensor, x: Tensor) -> Tensor:
    """As ``kl_from_logits`` for a sigmoid output; logs clamped at -100 as torch's BCE does."""
    log_p = probabilities.log().clamp_min(-100)
    log_q = (1 - probabilities).log().clamp_min(-100)
    per_pixel = torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x) - x * log_p - (1 - x) * log_q
    return per_pixel.clamp_min(0).flatten(1).sum(1)


def squared_error(reconstruction: Tensor, x: Tensor) -> Tensor:
    """Squared error summed over pixels."""
    return (reconstruction - x).square().flatten(1).sum(1)


def from_logits(logits: Tensor, x: Tensor, suffix: str = "") -> dict[str, Tensor]:
    """``mse`` and ``bce_excess`` (each + ``suffix``) of a reconstruction given as logits."""
    return {
        "mse" + suffix: squared_error(torch.sigmoid(logits), x),
        "bce_excess" + suffix: kl_from_logits(logits, x),
    }


def from_probabilities(reconstruction: Tensor, x: Tensor) -> dict[str, Tensor]:
    """``mse`` and ``bce_excess`` of a reconstruction given as probabilities (sigmoid output)."""
    return {
        "mse": squared_error(reconstruction, x),
        "bce_excess": kl_from_probabilities(reconstruction, x),
    }
