"""Evaluation of a model on the test split: every score, its AUC and class means, and the
training FLOPs of one step."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grad2vae.errors import UserError
from grad2vae.score_columns import PIXEL, score_column
from grad2vae.training.pixel_auc import PixelAUC

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training produced a non-finite loss (or score): the run stops, its checkpoint stays."""


def evaluate(
    model, split, generator_seed: int, batch_size: int, extra: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """(scores, extra scores, pixel AUCs) of the test split: ``scores`` holds every score of
    ``model.scores`` (``"main"``, ``"reconstruction"``, the diagnostics) per test image as float
    arrays, ``extra`` those of ``model.extra_scores`` when ``extra`` is True (the final
    evaluation only), else nothing; the pixel AUCs are those of each output image of
    ``model.score_batch`` over every pixel of the split (``pixel_metrics``; none for a model
    without images).

    Calls ``model.fit_scorer(train_x)`` (eval mode, no_grad) first; scores run with autograd
    enabled (Grad2VAE needs second derivatives) and a fresh generator seeded with
    ``generator_seed``. Runs inside ``fork_rng``, so the caller's RNG streams are untouched.
    The extra scores come after all of ``scores``, with their own generator, so the scores are
    the same either way."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    collected: dict[str, list[torch.Tensor]] = {}
    collected_extra: dict[str, list[torch.Tensor]] = {}
    pixel: dict[str, PixelAUC] = {}
    try:
        with torch.random.fork_rng(devices=rng_devices):
            with torch.no_grad():
                model.fit_scorer(split.train_x.to(device))
            generator = torch.Generator(device).manual_seed(generator_seed)
            test_x = split.test_x
            for start in range(0, len(test_x), batch_size):
                batch = test_x[start : start + batch_size].to(device, non_blocking=True)
                with torch.enable_grad():
                    scores, images = model.score_batch(batch, generator)
                for key, value in scores.items():
                    collected.setdefault(key, []).append(value.detach().reshape(-1).float().cpu())
                for name, image in images.items():  # on the device, no sync (pixel_auc)
                    pixel.setdefault(name, PixelAUC()).update(batch, image.detach())
            if extra:
                main_keys = set(collected)
                generator = torch.Generator(device).manual_seed((generator_seed + 1) % 2**63)
                for start in range(0, len(test_x), batch_size):
                    batch = test_x[start : start + batch_size].to(device, non_blocking=True)
                    with torch.enable_grad():
                        scores = model.extra_scores(batch, generator)
                    clash = main_keys & set(scores)
                    if clash:
                        raise RuntimeError(
                            f"{type(model).__name__}.extra_scores() repeats {sorted(clash)}"
                        )
                    for key, value in scores.items():
                        collected_extra.setdefault(key, []).append(
                            value.detach().reshape(-1).float().cpu()
                        )
    finally:
        model.train(was_training)
    missing = {"main", "reconstruction"} - set(collected)
    if missing:
        raise RuntimeError(f"model {type(model).__name__}.scores() lacks {sorted(missing)}")
    return (
        {key: torch.cat(parts).numpy() for key, parts in collected.items()},
        {key: torch.cat(parts).numpy() for key, parts in collected_extra.items()},
        pixel_metrics(pixel),
    )


def pixel_column(image: str, keras: bool = False) -> str:
    """The column of an output image's pixel-level AUC in history.tsv, metrics.json and
    runs.csv: ``pixel_auc`` for the reconstruction, ``pixel_auc_{image}`` for another (Grad2VAE's
    ``attention``); ``_keras`` for the notebook's 200-threshold computation
    (``score_columns``)."""
    score = PIXEL if image == "reconstruction" else f"{PIXEL}_{image}"
    return score_column(score + ("_keras" if keras else ""))


def pixel_metrics(accumulators: dict[str, PixelAUC]) -> dict[str, float]:
    """Both pixel AUCs of each image, keyed by ``pixel_column``."""
    result = {}
    for image, accumulator in accumulators.items():
        values = accumulator.compute()
        result[pixel_column(image)] = values["exact"]
        result[pixel_column(image, keras=True)] = values["keras"]
    return result


def auc_of(
    scores: dict[str, np.ndarray], labels: np.ndarray, epoch: int | None = None
) -> dict[str, float]:
    """AUC-ROC (anomaly = positive) of every score, keyed by ``score_columns.score_column``; a
    non-finite score means the model diverged (NonFiniteLossError)."""
    from sklearn.metrics import roc_auc_score

    result = {}
    for key, values in scores.items():
        column = score_column(key)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            where = f"epoch {epoch}: " if epoch is not None else ""
            raise NonFiniteLossError(
                f"{where}score {key!r} is not finite for {bad} of {len(values)} test images; "
                "the model diverged — try another seed or a lower --lr"
            )
        result[column] = float(roc_auc_score(labels, values))
    return result


def extra_aucs(extra: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float | None]:
    """AUC-ROC of each of a model's ``extra_scores``; None for one not finite everywhere."""
    from sklearn.metrics import roc_auc_score

    return {
        key: float(roc_auc_score(labels, values)) if np.isfinite(values).all() else None
        for key, values in extra.items()
    }


def score_means(scores: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Mean main and reconstruction score of the normal and of the anomalous test images: how
    well a model reconstructs anomalies relative to normal images."""
    means = {}
    for key in ("main", "reconstruction"):
        values = np.asarray(scores[key], dtype=np.float64)
        means[f"mean_{key}_normal"] = float(values[labels == 0].mean())
        means[f"mean_{key}_anomalous"] = float(values[labels == 1].mean())
    return means


def training_flops(model, batch: Tensor, n_train: int) -> dict[str, Any]:
    """FLOPs of one training step (forward + backward of ``model.loss`` on ``batch``), counted
    once by ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the model inside
    ``fork_rng``, so the run's weights, BatchNorm statistics and RNG streams are untouched; and
    per epoch, scaled by images (``n_train / len(batch)`` steps). The optimizer step, the
    evaluation and a model's pretraining are not counted. None where counting fails."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    device = batch.device
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            clone = copy.deepcopy(model).train()
            with FlopCounterMode(display=False) as counter:
                clone.loss(batch)["total"].backward()
        per_step = int(counter.get_total_flops())
    except Exception as error:  # noqa: BLE001 - a diagnostic must never fail a finished run
        log.warning("training FLOPs not counted: %s", error)
        return {
            "train_flops_per_step": None,
            "train_flops_batch": len(batch),
            "train_flops_per_epoch": None,
        }
    return {
        "train_flops_per_step": per_step,
        "train_flops_batch": len(batch),
        "train_flops_per_epoch": per_step * n_train / len(batch),
    }


def as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
