"""The learning-rate schedule of a run (and of a model's pretraining), from its protocol values.

Two forms, never both:

- ``lr_decay_epoch`` / ``lr_decay_factor``: multiply the learning rate by the factor after that
  epoch (0: never) — the paper's protocol (x 0.01 after epoch 50) and Ruff et al.'s Deep SVDD
  (x 0.1 after epoch 50); ``torch.optim.lr_scheduler.MultiStepLR``, as every run used so far.
- ``lr_steps``: ((epoch, lr), ...) — after each listed epoch, set the learning rate to that
  absolute value: a source's schedule as it is written when it assigns a value rather than
  multiplies, e.g. [25]'s ``K.set_value(autoencoder.optimizer.lr, 1e-5)`` after 250 epochs at
  1e-4 (natasasdj/anomalyDetection FeaturesExtractor.py), and any number of drops.

The scheduler steps once per epoch, after it; its state is saved in checkpoints like any other.
"""

from __future__ import annotations

from typing import Sequence

import torch

ASSUMPTIONS = (
    "[25]'s protocol (presets/table1-own-protocols.yaml) = Adam, batch 200, lr 1e-4 for 250 "
    "epochs, then the same optimizer (its moments kept) at lr 1e-5 for 100 more: lr_steps "
    "[[250, 1e-5]] — natasasdj/anomalyDetection FeaturesExtractor.py (K.set_value(optimizer.lr, "
    "1e-5) between two fit() calls; each fit() reshuffles, as our per-epoch batch order does)",
)


class StepsToValues(torch.optim.lr_scheduler.LRScheduler):
    """After epoch ``epoch`` of each (epoch, lr) in ``steps`` (sorted, distinct), every parameter
    group's learning rate is ``lr``; before the first, the optimizer's initial learning rate."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: Sequence[tuple[int, float]]):
        self.steps = tuple((int(epoch), float(lr)) for epoch, lr in steps)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        passed = [lr for epoch, lr in self.steps if epoch <= self.last_epoch]
        if passed:
            return [passed[-1] for _ in self.optimizer.param_groups]
        return list(self.base_lrs)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    lr_decay_epoch: int,
    lr_decay_factor: float,
    lr_steps: Sequence[tuple[int, float]] = (),
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of one protocol (module docstring); ``lr_steps`` non-empty needs
    ``lr_decay_epoch`` 0 (``check_schedule`` says so before anything runs)."""
    check_schedule(lr_decay_epoch, lr_steps)
    if lr_steps:
        return StepsToValues(optimizer, lr_steps)
    milestones = [lr_decay_epoch] if lr_decay_epoch > 0 else []
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=milestones, gamma=lr_decay_factor
    )


def check_schedule(lr_decay_epoch: int, lr_steps: Sequence[tuple[int, float]]) -> None:
    """ValueError naming what is wrong with ``lr_steps`` (or its clash with the decay)."""
    if not lr_steps:
        return
    if lr_decay_epoch:
        raise ValueError(
            f"lr_steps {list(lr_steps)} and lr_decay_epoch {lr_decay_epoch} both set the schedule: "
            "set lr_decay_epoch to 0 when giving lr_steps"
        )
    epochs = [int(epoch) for epoch, _ in lr_steps]
    if any(epoch < 1 for epoch in epochs) or epochs != sorted(set(epochs)):
        raise ValueError(f"lr_steps epochs {epochs} must be >= 1, distinct and increasing")
    if any(not float(lr) > 0 or float(lr) == float("inf") for _, lr in lr_steps):
        raise ValueError(
            f"lr_steps learning rates {[lr for _, lr in lr_steps]} must be positive numbers"
        )
