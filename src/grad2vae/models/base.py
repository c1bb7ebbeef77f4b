"""The one interface every model implements, so that trainer and scorer never branch on a name.

Inputs are always MNIST-sized batches ``x`` of shape (N, 1, 28, 28) with pixels in [0, 1]
(uint8 / 255); a model that wants another geometry (the Inception-CAENN pads to 32x32) does it
inside its own ``forward`` path.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class AnomalyModel(nn.Module):
    """Base class of every benchmarked model.

    Subclasses set the class attributes and implement ``loss`` and ``scores``:

    - ``loss(x)`` returns the named loss terms of one training batch, each a scalar averaged
      over the batch, plus ``"total"``, the sum that the trainer back-propagates.
    - ``fit_scorer(train_x)`` is called (under ``torch.no_grad`` and ``eval()``) before every
      evaluation with the normal class's training images; models whose score needs the training
      set (1-NN feature distance) keep what they need here. Default: nothing.
    - ``scores(x, generator)`` returns one score per sample for every score the model offers,
      higher = more anomalous: always ``"main"`` (the score the model's paper uses, whose AUC is
      the headline) and ``"reconstruction"`` (per-sample reconstruction error, reported for all
      models so that the report can compare both). ``generator`` drives any sampling done at
      test time, so that scores are reproducible; deterministic models ignore it.
    """

    #: registry name, e.g. "grad2vae"
    name: ClassVar[str]
    #: human-readable name of the "main" score, e.g. "reconstruction error (BCE)"
    main_score: ClassVar[str]
    #: every choice the paper leaves open, each "choice — source"; shown in the report
    assumptions: ClassVar[tuple[str, ...]]

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def fit_scorer(self, train_x: Tensor) -> None:
        return None

    def scores(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
