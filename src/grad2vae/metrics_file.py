"""metrics.json, a finished run's results: one definition of its keys, written by training
(``training.lifecycle.Run.finish``) and read back by the analysis (``analysis.collect``).

Its presence means "finished" (it is written last). ``FORMAT_VERSION`` says how to read it:
format 1 (no ``format_version`` key) is every file written before the key existed; format 2 adds
``bounds`` (a model's optimistic bounds, ``models.base.AnomalyModel.bounds``), present only where
a model declares some. A reader of format 2 reads format 1 as it is (it has no bounds); a file of
a newer format than this code knows is refused with a message that says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from grad2vae import atomic

FORMAT_VERSION = 2

_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))

#: key -> (accepted types, required): what a reader may rely on. ``pixel_auc*`` (one per output
#: image and AUC variant, ``training.evaluate.pixel_column``) and the execution keys of
#: ``training.cohort`` are written beside these.
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    # the run: model (a variant's name; base_model and model_options then say what it is built
    # of), dataset, normal class, seed; the configuration and its hash
    "model": ((str,), True),
    "base_model": ((str,), False),
    "model_options": ((dict,), False),
    "dataset": ((str,), True),
    "normal_class": ((int,), True),
    "seed": ((int,), True),
    "config": ((dict,), True),
    "config_hash": ((str,), True),
    # the results: test AUC of the main score (its name), of the reconstruction score and of
    # every other score of ``scores()`` (auc_scores: name -> AUC), the mean scores of the normal
    # and anomalous test images, the AUCs of ``extra_scores()`` and the bounds drawn from them
    "main_score": ((str,), True),
    "auc": (_NUMBER, True),
    "auc_reconstruction": (_OPTIONAL_NUMBER, True),
    "auc_scores": ((dict,), False),
    "score_means": ((dict,), False),
    "auc_extra": ((dict,), False),
    "bounds": ((dict,), False),
    # how long and on what: epochs, seconds (a seed group's share: see CONTRIBUTING), device
    "epochs": ((int,), True),
    "wall_seconds": (_NUMBER, False),
    "seconds_per_epoch": (_NUMBER, False),
    "train_seconds": (_NUMBER, False),
    "eval_seconds": (_NUMBER, False),
    "device": ((str, dict), False),
    "device_type": ((str,), False),
    "threads": ((int,), False),
    "derivatives": ((str, type(None)), False),
    "parameters": ((int,), False),
    "train_flops_per_step": (_OPTIONAL_NUMBER, False),
    "train_flops_batch": ((int,), False),
    "train_flops_per_epoch": (_OPTIONAL_NUMBER, False),
    "train_images": ((int,), False),
    "test_images": ((int,), False),
    "test_anomalies": ((int,), False),
    "resumes": ((int, list), False),
    "preprocessing": ((dict,), False),
    "pretrain": ((dict, type(None)), False),
    # provenance
    "versions": ((dict,), False),
    "git_commit": ((str,), False),
    "git_dirty": ((bool, type(None)), False),
    "finished_utc": ((str,), False),
}


class MetricsError(ValueError):
    """A metrics.json that does not hold what its format promises (the message names the key)."""


def check_metrics(metrics: Mapping[str, Any], where: str = "metrics.json") -> None:
    """Raise MetricsError naming the first required key missing or key of the wrong type."""
    for key, (types, required) in FIELDS.items():
        if key not in metrics:
            if required:
                raise MetricsError(f"{where}: no {key!r}")
            continue
        value = metrics[key]
        if isinstance(value, bool) and bool not in types:
            raise MetricsError(f"{where}: {key!r} is {value!r}, not {_names(types)}")
        if not isinstance(value, types):
            raise MetricsError(f"{where}: {key!r} is {value!r}, not {_names(types)}")
    for name, bound in (metrics.get("bounds") or {}).items():
        if not isinstance(bound, Mapping) or not isinstance(bound.get("auc"), _NUMBER):
            raise MetricsError(f"{where}: bound {name!r} has no numeric 'auc'")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``metrics`` and write it with its format version, atomically; the written dict."""
    payload = {"format_version": FORMAT_VERSION, **metrics}
    check_metrics(payload, str(path))
    atomic.write_json(path, payload)
    return payload


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """The metrics of one finished run; MetricsError (a ValueError) for a file that is not
    JSON, of a newer format, or without what its format promises; OSError as open() raises."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path}: not JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise MetricsError(f"{path}: not a JSON object")
    version = metrics.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MetricsError(
            f"{path}: format_version {version!r}, newer than this grad2vae reads "
            f"({FORMAT_VERSION}): update grad2vae"
        )
    check_metrics(metrics, str(path))
    return metrics
