"""Train and evaluate one run: one model on one dataset's normal class with one seed.

Protocol (paper Sect. 4; every value is an option): Adam, learning rate 1e-3, batch size 128,
100 epochs, learning rate x 0.01 after epoch 50; training on the normal class's training images
only; evaluation (AUC-ROC, anomaly = positive) on the full test set. The model after the last
epoch is the one evaluated: no selection on the test set.

Writes into --out-dir (see CONTRIBUTING.md):
  metrics.json     written last, only when the run finished (its presence means "done")
  history.tsv      one row per epoch: lr, seconds, every loss term, test AUC every --eval-every
  scores.csv.gz    index, test_class, label, score_main, score_reconstruction per test image
  model.pt         final weights (grad2vae.train.load_trained_model)
  checkpoint.pt    every --checkpoint-every epochs while running; deleted when the run finishes

Started again, a finished run does nothing, and a killed run continues from its last checkpoint
and ends with exactly the results of an uninterrupted run (same device and thread count).

Several seeds of one (model, dataset, class) can train in one process (``train_runs``): the
runs step in lock-step, batched with torch.func.vmap where the model supports it, each into its
own folder with exactly the files, checkpoints and resume behaviour of a run alone.

examples:
  grad2vae train --model grad2vae --dataset mnist --normal-class 0 --seed 0 \\
                 --data-dir data --out-dir results/runs/mnist/grad2vae/class0/seed0
  grad2vae train --model grad2vae --dataset mnist --normal-class 0 --seed 0 1 2 3 4 \\
                 --data-dir data --out-dir 'results/runs/mnist/grad2vae/class0/seed{seed}'
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from grad2vae import atomic, devices
from grad2vae.errors import UserError
from grad2vae.schedule import make_scheduler

log = logging.getLogger(__name__)

#: bottleneck size per dataset (paper Sect. 4.2: 16 neurons for MNIST, 32 for Fashion-MNIST)
DEFAULT_LATENT_DIM = {"mnist": 16, "fashion_mnist": 32}
#: seed of the train/test subsample drawn by --train-limit / --test-limit (the same for all runs)
SUBSAMPLE_SEED = 0

METRICS = "metrics.json"
HISTORY = "history.tsv"
SCORES = "scores.csv.gz"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
LOCK = ".train.lock"
CHECKPOINT_FORMAT = 1

ASSUMPTIONS: tuple[str, ...] = (
    "the model after the last epoch is evaluated; no epoch is selected on the test set — "
    'paper Sect. 4 ("100 epochs") and the one-class benchmark pitfalls in the anchors notes',
    '"the learning rate is reduced after 50 epochs by a factor of 10^-2" = MultiStepLR with '
    "milestone 50 and gamma 0.01, stepped once per epoch: epochs 1-50 use 1e-3, epochs 51-100 "
    "use 1e-5 — paper Sect. 4",
    "optimiser Adam with torch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay) — issue 4; "
    "the paper names the learning rate, not the optimiser",
    "each epoch visits the normal class's training images in a new order drawn by torch.randperm "
    "from a generator seeded from the run's seed; the last, smaller batch is kept (as Keras' fit "
    "does) — our choice",
    "the logged loss of an epoch is the per-image mean: each batch's mean weighted by its size — "
    "our choice",
    "AUC-ROC = sklearn.metrics.roc_auc_score with label 1 = anomaly (every class but the normal "
    "one) as the positive class and higher score = more anomalous — paper Sect. 4.2, anchors notes",
    "before every evaluation the model is put in eval() mode and fit_scorer(train images) runs "
    "under no_grad (1-NN models keep the training features); scores run with autograd enabled "
    "(Grad2VAE's attention needs second derivatives) and are detached — issue 4",
    "evaluation sampling (the sampled latent of the variational models) uses a fresh "
    "torch.Generator seeded from sha256(seed, 'eval') at every evaluation, and evaluation runs "
    "inside torch.random.fork_rng, so scores are reproducible and the training trajectory does "
    "not depend on how often it is evaluated — our choice",
    "test AUC is computed every epoch by default (Fig. 6 needs epochs 1-50); the last epoch is "
    "always evaluated — issue 4",
    "evaluation runs in batches of 1000 test images — issue 4 (speed); it is part of the "
    "configuration hash because batch size can change floating-point results",
    "model initialisation and training noise (the reparameterisation samples) come from torch's "
    "global RNG seeded with the run's seed; Python and NumPy are seeded too — issue 4",
    "deterministic algorithms (torch.use_deterministic_algorithms(True, warn_only=True), "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN benchmark off): identical results need the same "
    "device, thread count and library versions — issue 4",
    "a non-finite loss is detected from the epoch means (one device sync per epoch, not per "
    "batch): the run stops after that epoch, keeps its last checkpoint and writes no metrics — "
    "issue 4 and our choice",
    "checkpoint every 5 epochs by default (a kill loses at most 5 epochs of work); the checkpoint "
    "is deleted when the run finishes, since model.pt keeps the final weights and the optimiser "
    "state would cost about 2x the model size for each of the 800 runs — our choice",
    "--train-limit/--test-limit subsamples are drawn with the same data seed (0) for every run, so "
    "all models and seeds of a preset see the same images — our choice",
    "the configuration hash covers what determines the results (model, dataset, class, seed, "
    "latent size, schedule, batch sizes, eval_every, limits), not where or how it runs (data "
    "and output dirs, device, threads, checkpoint interval) — our choice",
    "a model's optional pretrain() runs once before epoch 1 with the run's schedule and its own "
    "batch-order generator (sha256(seed, 'pretrain')); a resumed run takes its result from the "
    "checkpoint's model state; extra_scores() run only at the final evaluation, after the main "
    "scores, and their AUCs go to metrics.json auc_extra — issue 9",
    "several seeds of one (model, dataset, class) may train in one process (train.seeds_per_job "
    "> 1): each run keeps its own RNG streams and files; stepped in turn the runs are bit-identical "
    "to runs alone, vmapped (the default on GPUs) equal up to float rounding, which Adam can "
    "amplify for parameters whose gradient is exactly zero (convolution biases before BatchNorm); "
    "metrics.json records seeds_in_process and seed_batching — issue 8 (speed) and our choice",
)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results; its canonical JSON is hashed (config_hash)."""

    model: str
    dataset: str
    normal_class: int
    seed: int
    latent_dim: int | None = None  # None: the dataset's default (16 MNIST, 32 Fashion-MNIST)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay_epoch: int = 50  # 0: no decay
    lr_decay_factor: float = 0.01
    eval_every: int = 1  # 0: evaluate the last epoch only
    eval_batch_size: int = 1000
    train_limit: int = 0  # 0: all the normal class's training images
    test_limit: int = 0  # 0: the full test set
    # A variant (``variants:`` in the workflow config): ``model`` is then the variant's name (its
    # runs' folders, tables and figures use it) and ``base_model`` the registered model built
    # with ``model_options``. None / {}: ``model`` itself, as published.
    base_model: str | None = None
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr_steps: tuple[tuple[int, float], ...] = ()  # after epoch E set lr to V (schedule.py); () = decay

    def __post_init__(self) -> None:
        if self.latent_dim is None and self.dataset in DEFAULT_LATENT_DIM:
            object.__setattr__(self, "latent_dim", DEFAULT_LATENT_DIM[self.dataset])
        object.__setattr__(self, "lr_steps", tuple((int(e), float(v)) for e, v in self.lr_steps))
        object.__setattr__(self, "model_options", dict(self.model_options))

    def __hash__(self) -> int:  # model_options is a dict: hash the canonical JSON instead
        return hash(canonical_json(self.to_dict()))

    @property
    def registered_model(self) -> str:
        """The registry name of the model to build (``base_model`` of a variant, else ``model``)."""
        return self.base_model or self.model

    def to_dict(self) -> dict[str, Any]:
        """The hashed configuration. The variant fields appear only when set, so that every run
        configured before variants existed keeps its hash (and its finished results)."""
        payload = dataclasses.asdict(self)
        for key in OPTIONAL_CONFIG_FIELDS:
            if not payload[key]:
                del payload[key]
        if "lr_steps" in payload:
            payload["lr_steps"] = [list(step) for step in payload["lr_steps"]]
        return payload


#: RunConfig fields left out of its hashed JSON while unset (absent before variants existed)
OPTIONAL_CONFIG_FIELDS = ("base_model", "model_options", "lr_steps")


def canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: RunConfig) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the run's configuration."""
    return hashlib.sha256(canonical_json(config.to_dict()).encode("utf-8")).hexdigest()


def derive_seed(seed: int, purpose: str) -> int:
    """A fixed 63-bit seed for one purpose (batch order, evaluation) derived from the run's seed."""
    digest = hashlib.sha256(f"grad2vae:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def validate_config(config: RunConfig) -> RunConfig:
    """Raise UserError for anything wrong in ``config`` (names, ranges); nothing is loaded."""
    from grad2vae.models import check_options, model_names
    from grad2vae.schedule import check_schedule

    known_models = model_names()
    if config.registered_model not in known_models:
        raise UserError(
            f"unknown model {config.registered_model!r}; known models: {', '.join(known_models)}"
        )
    if config.base_model is not None:
        check_variant_name(config.model, known_models)
    check_options(config.registered_model, config.model_options, label=config.model)
    try:
        check_schedule(config.lr_decay_epoch, config.lr_steps)
    except ValueError as error:
        raise UserError(str(error)) from None
    from grad2vae.data import DATASETS

    if config.dataset not in DATASETS:
        raise UserError(f"unknown dataset {config.dataset!r}; known datasets: {', '.join(DATASETS)}")
    n_classes = len(DATASETS[config.dataset].classes)
    if isinstance(config.normal_class, bool) or not 0 <= int(config.normal_class) < n_classes:
        raise UserError(
            f"normal class {config.normal_class!r} does not exist in {config.dataset}: "
            f"use 0..{n_classes - 1}"
        )
    checks = [
        ("latent_dim", config.latent_dim is not None and config.latent_dim >= 1, "--latent-dim must be >= 1"),
        ("epochs", config.epochs >= 1, "--epochs must be >= 1"),
        ("batch_size", config.batch_size >= 1, "--batch-size must be >= 1"),
        ("lr", config.lr > 0 and math.isfinite(config.lr), "--lr must be a positive number"),
        ("lr_decay_epoch", config.lr_decay_epoch >= 0, "--lr-decay-epoch must be >= 0 (0: no decay)"),
        (
            "lr_decay_factor",
            config.lr_decay_factor > 0 and math.isfinite(config.lr_decay_factor),
            "--lr-decay-factor must be a positive number",
        ),
        ("eval_every", config.eval_every >= 0, "--eval-every must be >= 0 (0: last epoch only)"),
        ("eval_batch_size", config.eval_batch_size >= 1, "--eval-batch-size must be >= 1"),
        ("train_limit", config.train_limit >= 0, "--train-limit must be >= 0 (0: no limit)"),
        ("test_limit", config.test_limit >= 0, "--test-limit must be >= 0 (0: no limit)"),
        ("seed", config.seed >= 0, "--seed must be >= 0"),
    ]
    for _name, ok, message in checks:
        if not ok:
            raise UserError(f"{message} (got {getattr(config, _name)!r})")
    return config


def check_variant_name(name: str, known_models: list[str]) -> None:
    """UserError unless ``name`` can name a variant: not a registered model's name, and made of
    the characters a run folder and a Snakemake wildcard take safely."""
    if name in known_models:
        raise UserError(f"variant {name!r} has a registered model's name: give it another name")
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name) or not name[0].isalpha():
        raise UserError(
            f"variant name {name!r}: use a letter then letters, digits, '_' or '-' (it names run folders)"
        )


def check_data_present(data_dir: str | os.PathLike, dataset: str) -> Path:
    """UserError naming the missing files and the rule that fetches them; else the folder.

    The same files ``data.load_split`` needs: the four IDX files and the manifest that
    ``grad2vae fetch`` writes once they are verified."""
    from grad2vae.data import DATASETS, MANIFEST_NAME

    folder = Path(data_dir) / dataset
    needed = [idx_file.name for idx_file in DATASETS[dataset].files.values()] + [MANIFEST_NAME]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"dataset {dataset!r} is missing from {folder} (no {', '.join(missing)}); fetch it with "
            f"`snakemake data` or `grad2vae fetch --data-dir {data_dir}`"
        )
    return folder


# --------------------------------------------------------------------------------------------
# Evaluation


class NonFiniteLossError(UserError):
    """Training produced a non-finite loss (or score): the run stops, its checkpoint stays."""


def evaluate(
    model, split, generator_seed: int, batch_size: int = 1000, extra: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(scores, extra scores) of every test image as float arrays: ``scores`` holds every score
    of ``model.scores`` (``"main"``, ``"reconstruction"``, the diagnostics), ``extra`` those of
    ``model.extra_scores`` when ``extra`` is True (the final evaluation only), else nothing.

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
    try:
        with torch.random.fork_rng(devices=rng_devices):
            with torch.no_grad():
                model.fit_scorer(split.train_x.to(device))
            generator = torch.Generator(device).manual_seed(generator_seed)
            test_x = split.test_x
            for start in range(0, len(test_x), batch_size):
                batch = test_x[start : start + batch_size].to(device, non_blocking=True)
                with torch.enable_grad():
                    scores = model.scores(batch, generator)
                for key, value in scores.items():
                    collected.setdefault(key, []).append(value.detach().reshape(-1).float().cpu())
            if extra:
                main_keys = set(collected)
                generator = torch.Generator(device).manual_seed((generator_seed + 1) % 2**63)
                for start in range(0, len(test_x), batch_size):
                    batch = test_x[start : start + batch_size].to(device, non_blocking=True)
                    with torch.enable_grad():
                        scores = model.extra_scores(batch, generator)
                    clash = main_keys & set(scores)
                    if clash:
                        raise RuntimeError(f"{type(model).__name__}.extra_scores() repeats {sorted(clash)}")
                    for key, value in scores.items():
                        collected_extra.setdefault(key, []).append(value.detach().reshape(-1).float().cpu())
    finally:
        model.train(was_training)
    missing = {"main", "reconstruction"} - set(collected)
    if missing:
        raise RuntimeError(f"model {type(model).__name__}.scores() lacks {sorted(missing)}")
    return (
        {key: torch.cat(parts).numpy() for key, parts in collected.items()},
        {key: torch.cat(parts).numpy() for key, parts in collected_extra.items()},
    )


def auc_column(score: str) -> str:
    """The column of a score's AUC in history.tsv, metrics.json and runs.csv: ``auc`` for the
    main score, ``auc_{score}`` for every other."""
    return "auc" if score == "main" else f"auc_{score}"


def auc_of(scores: dict[str, np.ndarray], labels: np.ndarray, epoch: int | None = None) -> dict[str, float]:
    """AUC-ROC (anomaly = positive) of every score, keyed by ``auc_column``; a non-finite score
    means the model diverged (NonFiniteLossError)."""
    from sklearn.metrics import roc_auc_score

    result = {}
    for key, values in scores.items():
        column = auc_column(key)
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
    well a model reconstructs anomalies relative to normal images (issue 13)."""
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
        return {"train_flops_per_step": None, "train_flops_batch": len(batch), "train_flops_per_epoch": None}
    return {
        "train_flops_per_step": per_step,
        "train_flops_batch": len(batch),
        "train_flops_per_epoch": per_step * n_train / len(batch),
    }


# --------------------------------------------------------------------------------------------
# Outputs


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def history_columns(history: list[dict[str, Any]]) -> list[str]:
    """epoch, lr, seconds (training and evaluation), train_seconds (the run's share of the
    training), the loss terms, the AUC of every score (main first), the score means."""
    found: dict[str, list[str]] = {"loss_": [], "auc_": [], "mean_": []}
    for row in history:
        for key in row:
            for prefix, columns in found.items():
                if key.startswith(prefix) and key not in columns and key != "auc_reconstruction":
                    columns.append(key)
    return [
        "epoch", "lr", "seconds", "train_seconds", *found["loss_"], "auc", "auc_reconstruction", *found["auc_"],
        *found["mean_"],
    ]  # fmt: skip


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    columns = history_columns(history)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_fmt(row.get(column)) for column in columns) for row in history]
    atomic.write_text(path, "\n".join(lines) + "\n")


def write_scores(path: Path, split, scores: dict[str, np.ndarray]) -> None:
    """index, test_class, label, score_main, score_reconstruction, then ``score_{key}`` for the
    model's other scores; gzip with a fixed header (mtime 0, no name) so equal scores give equal
    bytes. ``index`` is the image's position in the official test file (``split.test_indices``;
    differs from the row number under a limit)."""
    labels = _as_numpy(split.test_labels).astype(np.int64)
    classes = _as_numpy(split.test_classes).astype(np.int64)
    keys = ["main", "reconstruction"] + [key for key in scores if key not in ("main", "reconstruction")]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "test_class", "label", *(f"score_{key}" for key in keys)])
    indices = getattr(split, "test_indices", None)
    indices = _as_numpy(indices).astype(np.int64) if indices is not None else np.arange(len(labels))
    for row, (index, cls, label) in enumerate(zip(indices, classes, labels)):
        writer.writerow([int(index), int(cls), int(label), *(repr(float(scores[key][row])) for key in keys)])
    with atomic.atomic_open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
            handle.write(text.getvalue().encode("ascii"))


def read_scores(path: str | os.PathLike) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="ascii") as handle:
        return list(csv.DictReader(handle))


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _git_commit() -> tuple[str, bool | None]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return commit or "unknown", bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_versions() -> dict[str, Any]:
    from grad2vae import __version__

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "numpy": np.__version__,
        "scikit-learn": _version("scikit-learn"),
        "grad2vae": __version__,
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------------------------
# Checkpoints and RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state(device: torch.device, batch_generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "batches": batch_generator.get_state(),
    }
    if device.type == "cuda":
        # The run's own device only: a resumed run may get another index (GPU slots hand out the
        # first free card) or see fewer devices (a Slurm retry), and must continue its own stream.
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, batch_generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    if device.type == "cuda" and "cuda" in state:
        saved = state["cuda"]
        if isinstance(saved, (list, tuple)):  # checkpoints before the fix: every visible device
            saved = saved[min(device.index or 0, len(saved) - 1)]
        torch.cuda.set_rng_state(saved, device)


def _load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} ({error}); delete it to run again") from None


def _different_config_error(out_dir: Path, what: str, theirs: dict | None, ours: RunConfig) -> UserError:
    differing = ""
    if isinstance(theirs, dict):
        mine = ours.to_dict()
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        differing = "; differing: " + ", ".join(
            f"{k} {theirs.get(k)!r} there vs {mine.get(k)!r} now" for k in keys
        )
    return UserError(
        f"{out_dir} already holds {what} with a different configuration{differing}. "
        "Use another --out-dir, or delete that directory to start over."
    )


def finished_metrics(out_dir: str | os.PathLike, config: RunConfig) -> dict[str, Any] | None:
    """The metrics of a finished run of ``config`` in ``out_dir``; None if not finished; a
    UserError if ``out_dir`` holds a run (finished or not) of another configuration."""
    out_dir = Path(out_dir)
    wanted = config_hash(config)
    metrics_path = out_dir / METRICS
    if metrics_path.exists():
        metrics = _read_json(metrics_path)
        if metrics.get("config_hash") != wanted:
            raise _different_config_error(out_dir, "a finished run", metrics.get("config"), config)
        return metrics
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        try:
            checkpoint = _load(checkpoint_path)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
            raise UserError(f"cannot read {checkpoint_path} ({error}); delete it to start over") from None
        if checkpoint.get("config_hash") != wanted:
            raise _different_config_error(out_dir, "an unfinished run", checkpoint.get("config"), config)
    return None


#: environment: a folder on a local disk for the run locks, for run folders on a file system
#: without flock (the lock file is named after the run folder's absolute path)
LOCK_DIR_ENV = "GRAD2VAE_LOCK_DIR"
#: environment: "off" trains without the run lock (risk: two processes training the same run
#: at once overwrite each other's checkpoint and outputs)
RUN_LOCK_ENV = "GRAD2VAE_RUN_LOCK"


class _RunLock:
    """Non-blocking flock on the run dir: two processes never train the same run at once.
    ``GRAD2VAE_LOCK_DIR`` moves the lock files to a local folder, ``GRAD2VAE_RUN_LOCK=off``
    turns the lock off (for file systems without flock)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / LOCK
        lock_dir = os.environ.get(LOCK_DIR_ENV, "").strip()
        if lock_dir:
            name = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:32]
            self.path = Path(lock_dir) / f"run-{name}.lock"
        self.fd: int | None = None

    def __enter__(self):
        if os.environ.get(RUN_LOCK_ENV, "").strip().lower() == "off":
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        way_out = (
            f"set {LOCK_DIR_ENV} to a folder on a local disk (e.g. {LOCK_DIR_ENV}=/tmp/grad2vae-locks), "
            f"or {RUN_LOCK_ENV}=off to train without the run lock (then make sure no two jobs train "
            "the same run: they would overwrite each other's checkpoint)"
        )
        try:
            taken = devices.try_flock(fd, self.path, way_out)
        except UserError:
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            raise UserError(
                f"another process is training the run in {self.out_dir}; wait for it to finish"
            )
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A one-line \\r progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False

    def update(self, epoch: int, epochs: int, batch: int, batches: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if batch < batches and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = int(width * batch / max(batches, 1))
        self.stream.write(
            f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] {batch}/{batches}"
        )
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()
            self._shown = False


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# --------------------------------------------------------------------------------------------
# Training


def train_run(config: RunConfig, out_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Train and evaluate one run into ``out_dir``; return its metrics (see CONTRIBUTING.md).

    A finished run of the same configuration returns its metrics without doing anything; an
    unfinished one continues from its checkpoint. ``options`` are ``train_runs``' keywords:
    ``data_dir``, ``device`` (a torch.device or a --device string: auto | cpu | cuda | cuda:N,
    resolved with GPU slots), ``checkpoint_every``, ``threads``, ``gpu_slots``, ``slot_dir``,
    ``slot_timeout``, ``progress`` (show the bar; default: when stderr is a terminal) and
    ``on_epoch`` (called with each history row)."""
    return train_runs([config], [out_dir], **options)[0]


#: how ``train_runs`` steps several seeds in one process (see its docstring)
SEED_BATCHING = ("auto", "vmap", "sequential")
#: what "auto" means per device type, where the model supports vmap: the verdict of `grad2vae
#: bench` (docs/benchmarks.md). CPU: measured, vmapped steps are slower than steps in turn
#: (2 seeds, one thread: Grad2VAE 0.84x, VAE 0.94x, CAE 0.76x, Inception-CAENN 0.68x). CUDA: not measured yet (no GPU was lent); vmap
#: replaces k small kernels by one k-times larger, which is what an idle GPU needs.
AUTO_SEED_BATCHING = {"cpu": "sequential", "cuda": "vmap"}


def train_runs(
    configs: list[RunConfig],
    out_dirs: list[str | os.PathLike],
    *,
    data_dir: str | os.PathLike = "data",
    device: str | torch.device = "auto",
    checkpoint_every: int = 5,
    threads: int | None = None,
    gpu_slots: int | None = None,
    slot_dir: str | os.PathLike = devices.DEFAULT_SLOT_DIR,
    slot_timeout: float | None = None,
    jobs_per_gpu: int = 1,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    seed_batching: str = "auto",
    derivatives: str = "auto",
) -> list[dict[str, Any]]:
    """Train several runs that differ only in their seed in one process, in lock-step, each into
    its own out dir exactly as ``train_run`` would (same files, checkpoints, resume); return
    their metrics in order. Why: the grid's models are small, so one run leaves most of a GPU
    idle; k seeds of one (model, dataset, class) share the data on the device and the process.

    Every run keeps its own RNG streams (initialisation, batch order, training noise, evaluation),
    so each ends with the results of a separate run: exactly with ``seed_batching="sequential"``
    (each run's step in turn), up to float rounding with ``"vmap"``: one step for all seeds,
    ``torch.func.vmap`` over their stacked parameters (``torch.func.stack_module_state``'s
    layout), which turns k small kernels into one batched kernel. ``"auto"`` = vmap where the
    model says its loss supports it on the device (``AnomalyModel.supports_seed_vmap``), else
    sequential, per device type as ``AUTO_SEED_BATCHING`` says. Time in each run's metrics and
    history is its share (the group's training time / its number of seeds, plus its own
    evaluations), so that times summed over runs are device time. A run whose loss turns non-finite leaves the group (checkpoint kept, as alone);
    the others finish, then the first such error is raised. Runs of the group that are finished
    are skipped; unfinished ones that resume from different epochs train in turn, each cohort
    of equal epochs in lock-step. ``derivatives``: Grad2VAE's second-derivative implementation
    (``create_model``; other models ignore it), like ``device`` not part of the config hash."""
    if not configs or len(configs) != len(out_dirs):
        raise UserError(f"train_runs needs one out dir per configuration (got {len(configs)} and {len(out_dirs)})")
    if seed_batching not in SEED_BATCHING:
        raise UserError(f"--seed-batching {seed_batching!r}: use one of {', '.join(SEED_BATCHING)}")
    for config in configs:
        validate_config(config)
    if len({dataclasses.replace(config, seed=0) for config in configs}) > 1:
        raise UserError("runs trained in one process must differ only in their seed")
    if len({config.seed for config in configs}) < len(configs):
        raise UserError(f"seeds given twice: {[config.seed for config in configs]}")
    if checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0 (0: never) (got {checkpoint_every})")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1 (got {threads})")
    check_data_present(data_dir, configs[0].dataset)
    out_dirs = [Path(out_dir) for out_dir in out_dirs]
    if len({out_dir.resolve() for out_dir in out_dirs}) < len(out_dirs):
        raise UserError("two runs share an out dir: give --out-dir a {seed} placeholder")
    results: list[dict[str, Any] | None] = [
        finished_metrics(out_dir, config) for config, out_dir in zip(configs, out_dirs)
    ]
    for out_dir, done in zip(out_dirs, results):
        if done is not None:
            (out_dir / CHECKPOINT).unlink(missing_ok=True)
            log.info("%s: run already finished (auc %.4f); nothing to do", out_dir, done.get("auc", float("nan")))
    with contextlib.ExitStack() as locks:
        pending = [i for i, done in enumerate(results) if done is None]
        for i in pending:
            locks.enter_context(_RunLock(out_dirs[i]))
        for i in pending:
            # Re-check under the lock: another process may have finished it meanwhile.
            results[i] = finished_metrics(out_dirs[i], configs[i])
        pending = [i for i in pending if results[i] is None]
        if pending:
            for i in pending:
                for stray in out_dirs[i].glob(".tmp-*"):  # left by a process killed mid-write
                    stray.unlink(missing_ok=True)
            if not isinstance(device, torch.device):
                device = devices.resolve_device(
                    str(device), gpu_slots=gpu_slots, slot_dir=slot_dir, slot_timeout=slot_timeout,
                    jobs_per_gpu=jobs_per_gpu,
                )  # fmt: skip
            with devices.deterministic():
                trained = _train(
                    [configs[i] for i in pending],
                    [out_dirs[i] for i in pending],
                    Path(data_dir),
                    device,
                    checkpoint_every=checkpoint_every,
                    threads=threads,
                    progress=progress,
                    on_epoch=on_epoch,
                    seed_batching=seed_batching,
                    group_size=len(pending),  # those trained in this process
                    derivatives=derivatives,
                )
            for i, metrics in zip(pending, trained):
                results[i] = metrics
    return results


class _Run:
    """One run between setup and finish; ``_train`` steps one or several of them in lock-step.

    Setup (``__init__``): the model from the run's seed, optimizer, schedule, batch-order
    generator, resume from the checkpoint, the model's pretraining. Then per epoch:
    ``begin_epoch`` -> ``batch_index`` / ``record`` per batch -> ``end_epoch`` (non-finite check,
    evaluation, history, checkpoint); finally ``finish`` writes scores, model and metrics."""

    def __init__(self, config, out_dir, shared, device, checkpoint_every, on_epoch, shares_process, derivatives):
        from grad2vae.models import create_model

        self.config, self.out_dir, self.device = config, out_dir, device
        self.shared, self.checkpoint_every, self.on_epoch = shared, checkpoint_every, on_epoch
        self.chash = config_hash(config)
        seed_everything(config.seed)
        self.model = create_model(
            config.registered_model,
            config.latent_dim,
            dataset=config.dataset,
            derivatives=derivatives,
            options=config.model_options,
        ).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = make_scheduler(
            self.optimizer, config.lr_decay_epoch, config.lr_decay_factor, config.lr_steps
        )
        self.batch_generator = torch.Generator().manual_seed(derive_seed(config.seed, "batches"))
        self.eval_seed = derive_seed(config.seed, "eval")
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.resumes, self.checkpoint_epoch, self.pretrain_info = 1, 0, 0, None
        checkpoint_path = out_dir / CHECKPOINT
        if checkpoint_path.exists():
            # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
            checkpoint = _load(checkpoint_path, "cpu")
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            _set_rng_state(checkpoint["rng"], device, self.batch_generator)
            self.history = list(checkpoint["history"])
            self.start_epoch = int(checkpoint["epoch"]) + 1
            self.checkpoint_epoch = self.start_epoch - 1
            self.resumes = int(checkpoint.get("resumes", 0)) + 1
            self.pretrain_info = checkpoint.get("pretrain")
            log.info("%s: resuming after epoch %d from %s", out_dir, self.start_epoch - 1, checkpoint_path)
        # Drop rows of epochs after the checkpoint (a killed run's history.tsv may be ahead of it).
        write_history(out_dir / HISTORY, self.history)
        if self.start_epoch == 1:
            # The model's optional pretraining (Deep SVDD's autoencoder), once per run with the
            # run's protocol; a resumed run has its result in the checkpoint's model state.
            self.pretrain_info = self.model.pretrain(
                shared.train_x,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                lr_decay_epoch=config.lr_decay_epoch,
                lr_decay_factor=config.lr_decay_factor,
                lr_steps=config.lr_steps,
                generator=torch.Generator().manual_seed(derive_seed(config.seed, "pretrain")),
            )
        # Several runs in one process: each keeps torch's global RNG state (training noise) of
        # its own between its turns, as if it were alone.
        self.rng = self._global_rng() if shares_process else None
        self.last_scores: dict[str, np.ndarray] | None = None
        self.last_extra: dict[str, np.ndarray] = {}
        self.epoch_times: list[float] = []
        self.failure: NonFiniteLossError | None = None

    def _global_rng(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """The global RNGs (torch, CUDA, Python, NumPy) as this run left them, so that what runs
        inside (its steps, its checkpoints) sees the streams of the run alone. A no-op for a run
        alone in its process."""
        if self.rng is None:
            yield
            return
        torch.set_rng_state(self.rng["torch"])
        random.setstate(self.rng["python"])
        np.random.set_state(self.rng["numpy"])
        if "cuda" in self.rng:
            torch.cuda.set_rng_state(self.rng["cuda"], self.device)
        try:
            yield
        finally:
            self.rng = self._global_rng()

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.lr = float(self.optimizer.param_groups[0]["lr"])
        self.model.train()
        self.permutation = torch.randperm(len(self.shared.train_x), generator=self.batch_generator).to(
            self.device
        )
        # Per loss term, on the device (no sync per batch): the size-weighted sum, and the first
        # batch (1-based) where the term was not finite (inf: never).
        self.names: list[str] = []
        self.sums = self.first_bad = None

    def batch_index(self, batch: int) -> Tensor:
        size = self.config.batch_size
        return self.permutation[batch * size : (batch + 1) * size]

    def record(self, terms: dict[str, Tensor], size: int, batch: int) -> None:
        values = torch.stack([value.detach().reshape(()) for value in terms.values()])
        bad_at = torch.where(torch.isfinite(values), math.inf, float(batch + 1))
        if self.sums is None:
            self.names, self.sums, self.first_bad = list(terms), values * size, bad_at
        else:
            self.sums, self.first_bad = self.sums + values * size, torch.minimum(self.first_bad, bad_at)

    def end_epoch(self, train_seconds: float, batches: int) -> None:
        """Everything after an epoch's batches; raises NonFiniteLossError (nothing written)."""
        config, epoch = self.config, self.epoch
        n_train = len(self.shared.train_x)
        self.scheduler.step()
        means = dict(zip(self.names, (self.sums / n_train).tolist()))  # the epoch's one sync
        first_bad_at = dict(zip(self.names, self.first_bad.tolist()))
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            first = {name: first_bad_at[name] for name in bad}
            at = min(first.values())
            culprits = [name for name in bad if first[name] == at]
            if len(culprits) > 1 and "total" in culprits:
                culprits.remove("total")  # the sum follows its terms
            kept = (
                f"its last checkpoint (after epoch {self.checkpoint_epoch}) is kept"
                if self.checkpoint_epoch
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"epoch {epoch}: loss term {', '.join(repr(b) for b in culprits)} is not finite "
                f"(first in batch {int(at)} of {batches}; non-finite epoch means: {', '.join(bad)}); "
                f"training stopped, {kept} in {self.out_dir} and no metrics were written. "
                "Try another seed or a lower --lr."
            )
        eval_start = time.perf_counter()
        evaluated = epoch == config.epochs or (config.eval_every > 0 and epoch % config.eval_every == 0)
        aucs: dict[str, float | None] = {"auc": None, "auc_reconstruction": None}
        eval_seconds = 0.0
        if evaluated:
            self.last_scores, self.last_extra = evaluate(
                self.model,
                self.shared.eval_split,
                self.eval_seed,
                batch_size=config.eval_batch_size,
                extra=epoch == config.epochs,
            )
            aucs = auc_of(self.last_scores, self.shared.labels, epoch)
            aucs.update(score_means(self.last_scores, self.shared.labels))
            eval_seconds = time.perf_counter() - eval_start
        seconds = train_seconds + (time.perf_counter() - eval_start)
        row = {
            "epoch": epoch,
            "lr": self.lr,
            "seconds": seconds,
            **{f"loss_{name}": value for name, value in means.items()},
            **aucs,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
        }
        self.history.append(row)
        write_history(self.out_dir / HISTORY, self.history)
        self.epoch_times.append(seconds)
        remaining = (config.epochs - epoch) * (sum(self.epoch_times) / len(self.epoch_times))
        losses = " ".join(f"{name}={value:.4g}" for name, value in means.items())
        auc_text = f" auc={aucs['auc']:.4f} auc_rec={aucs['auc_reconstruction']:.4f}" if evaluated else ""
        log.info(
            "%sepoch %d/%d %s lr=%.3g%s %.1fs ETA %s",
            f"seed {config.seed}: " if self.rng is not None else "",
            epoch,
            config.epochs,
            losses,
            self.lr,
            auc_text,
            seconds,
            _fmt_duration(remaining),
        )
        if self.on_epoch is not None:
            self.on_epoch(row)
        if self.checkpoint_every and epoch % self.checkpoint_every == 0 and epoch < config.epochs:
            _save_checkpoint(
                self.out_dir / CHECKPOINT,
                config,
                self.chash,
                epoch,
                self.model,
                self.optimizer,
                self.scheduler,
                self.history,
                self.device,
                self.batch_generator,
                self.resumes,
                pretrain=self.pretrain_info,
            )
            self.checkpoint_epoch = epoch

    def finish(self, setup_seconds: float, execution: dict[str, Any]) -> dict[str, Any]:
        config, model, out_dir, labels = self.config, self.model, self.out_dir, self.shared.labels
        finish_start = time.perf_counter()
        if self.last_scores is None:  # resumed from a checkpoint at the last epoch: evaluate again
            self.last_scores, self.last_extra = evaluate(
                model, self.shared.eval_split, self.eval_seed, batch_size=config.eval_batch_size, extra=True
            )
        final = auc_of(self.last_scores, labels, config.epochs)
        auc_extra = extra_aucs(self.last_extra, labels)
        write_scores(out_dir / SCORES, self.shared.split, self.last_scores)
        model_payload = {
            "model": config.model,
            **({"base_model": config.base_model, "model_options": config.model_options} if config.base_model else {}),
            "latent_dim": config.latent_dim,
            "dataset": config.dataset,
            "normal_class": config.normal_class,
            "seed": config.seed,
            "config_hash": self.chash,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        with atomic.atomic_path(out_dir / MODEL) as tmp:
            torch.save(model_payload, tmp)

        commit, dirty = _git_commit()
        history = self.history
        train_total = sum(row["train_seconds"] for row in history)
        eval_total = sum(row["eval_seconds"] for row in history)
        metrics = {
            "model": config.model,
            # a variant's registered model and options (``variants:``); absent for a plain model
            **({"base_model": config.base_model, "model_options": config.model_options} if config.base_model else {}),
            "dataset": config.dataset,
            "normal_class": config.normal_class,
            "seed": config.seed,
            "main_score": getattr(model, "main_score", "main"),
            "auc": final["auc"],
            "auc_reconstruction": final["auc_reconstruction"],
            # every other score of model.scores() (diagnostics beside the main score, issue 13)
            "auc_scores": {key: final[auc_column(key)] for key in self.last_scores if key not in ("main", "reconstruction")},
            "score_means": score_means(self.last_scores, labels),
            "epochs": config.epochs,
            "wall_seconds": sum(row["seconds"] for row in history)
            + setup_seconds
            + (time.perf_counter() - finish_start),
            "seconds_per_epoch": train_total / len(history),
            "train_seconds": train_total,
            "eval_seconds": eval_total,
            "device": devices.device_name(self.device),
            "device_type": self.device.type,
            "threads": torch.get_num_threads(),
            **execution,
            "derivatives": getattr(model, "derivatives_used", None),  # Grad2VAE's method, else None
            "parameters": int(model.parameter_count()),
            **training_flops(model, self.shared.train_x[: config.batch_size], n_train=len(self.shared.train_x)),
            "train_images": len(self.shared.train_x),
            "test_images": int(len(labels)),
            "test_anomalies": int(labels.sum()),
            "resumes": self.resumes,
            "preprocessing": model.preprocessing_info(),
            "pretrain": self.pretrain_info,
            "auc_extra": auc_extra,
            "versions": environment_versions(),
            "git_commit": commit,
            "git_dirty": dirty,
            "config": config.to_dict(),
            "config_hash": self.chash,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.rng is not None:
            # Trained in a group: Snakemake removes the outputs of every run of a failed group
            # job (or of a job it reruns because one run is missing), so a final checkpoint stays
            # until the whole group has finished (``_train``): a rerun then only re-evaluates.
            _save_checkpoint(
                out_dir / CHECKPOINT,
                config,
                self.chash,
                config.epochs,
                model,
                self.optimizer,
                self.scheduler,
                history,
                self.device,
                self.batch_generator,
                self.resumes,
                pretrain=self.pretrain_info,
            )
        atomic.write_json(out_dir / METRICS, metrics)  # last: its presence means "finished"
        if self.rng is None:
            (out_dir / CHECKPOINT).unlink(missing_ok=True)
        log.info(
            "%s: finished, auc %.4f (reconstruction %.4f), %.1f s per epoch",
            out_dir,
            metrics["auc"],
            metrics["auc_reconstruction"],
            metrics["seconds_per_epoch"],
        )
        return metrics


def _step_sequential(runs: list[_Run], indexes: list[Tensor]) -> list[dict[str, Tensor]]:
    """One training step of each run in turn: exactly what each would do alone."""
    terms_per_run = []
    for run, index in zip(runs, indexes):
        with run.own_rng():
            terms = run.model.loss(run.shared.train_x[index])
            run.optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            run.optimizer.step()
        terms_per_run.append(terms)
    return terms_per_run


class _LossOf(torch.nn.Module):
    """``model.loss(x, noise)`` as a module call, for ``torch.func.functional_call``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, noise: Tensor | None) -> dict[str, Tensor]:
        return self.model.loss(x, noise)


def vmapped_losses(models: list[torch.nn.Module], xs: Tensor, noise: Tensor | None) -> dict[str, Tensor]:
    """``models[j].loss(xs[j], noise[j])`` for every j in one call: the models' parameters stacked
    along a new first dimension (``torch.stack`` keeps the graph, so a backward fills each
    model's own ``.grad``) and the loss vmapped over (parameters, buffers, batch, noise). Every
    term comes back with shape (k,). ``randomness="error"``: any random op inside the loss
    raises (draws belong in ``sample_noise``). Buffers (BatchNorm's running statistics) are
    updated in the stacked copy and written back to each model."""
    template = _LossOf(models[0])
    per_model = [dict(_LossOf(model).named_parameters()) for model in models]
    params = {name: torch.stack([parameters[name] for parameters in per_model]) for name in per_model[0]}
    per_model_buffers = [dict(_LossOf(model).named_buffers()) for model in models]
    with torch.no_grad():
        buffers = {name: torch.stack([b[name] for b in per_model_buffers]) for name in per_model_buffers[0]}

    def one_model(params, buffers, x, noise):
        return torch.func.functional_call(template, (params, buffers), (x, noise))

    in_noise = None if noise is None else 0
    terms = torch.func.vmap(one_model, in_dims=(0, 0, 0, in_noise), randomness="error")(
        params, buffers, xs, noise
    )
    with torch.no_grad():
        for name, stacked in buffers.items():
            for j, model_buffers in enumerate(per_model_buffers):
                model_buffers[name].copy_(stacked[j])
    return terms


def vmapped_step(models, optimizers, xs: Tensor, noises: list[Tensor | None]) -> dict[str, Tensor]:
    """One training step of k models at once (``vmapped_losses`` on batches ``xs`` (k, N, ...)
    with each model's ``sample_noise`` draw), then each model's own optimizer step; the loss
    terms come back with shape (k,). ``train_runs`` and ``grad2vae bench`` both step this way."""
    noise = None if noises[0] is None else torch.stack(noises)
    terms = vmapped_losses(models, xs, noise)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    terms["total"].sum().backward()  # each model's parameters get only its own loss's gradient
    for optimizer in optimizers:
        optimizer.step()
    return terms


def _step_vmap(runs: list[_Run], indexes: list[Tensor]) -> list[dict[str, Tensor]]:
    """``vmapped_step`` for the runs. Each run draws its noise in its own RNG turn: the draws
    it would make alone."""
    xs = torch.stack([run.shared.train_x[index] for run, index in zip(runs, indexes)])
    noises = []
    for run, x in zip(runs, xs):
        with run.own_rng():
            noises.append(run.model.sample_noise(len(x), like=x))
    terms = vmapped_step([run.model for run in runs], [run.optimizer for run in runs], xs, noises)
    return [{name: value[j] for name, value in terms.items()} for j in range(len(runs))]


def _seed_step(runs: list[_Run], seed_batching: str) -> tuple[str | None, Callable]:
    """(the mode recorded in metrics.json, the step function) for these runs."""
    if len(runs) == 1 and runs[0].rng is None:
        return None, _step_sequential
    device = runs[0].device
    supported = runs[0].model.supports_seed_vmap(device)
    if seed_batching == "auto":
        seed_batching = AUTO_SEED_BATCHING.get(device.type, "vmap") if supported else "sequential"
    elif seed_batching == "vmap" and not supported:
        # the workflow's seed_batching applies to every model; those without vmap step in turn
        log.warning("%s cannot vmap its loss on %s: its seeds step in turn", runs[0].config.model, device.type)
        seed_batching = "sequential"
    return seed_batching, _step_vmap if seed_batching == "vmap" else _step_sequential


def _train(
    configs, out_dirs, data_dir, device, *, checkpoint_every, threads, progress, on_epoch, seed_batching, group_size,
    derivatives,
) -> list[dict[str, Any]]:
    from grad2vae import data

    process_start = time.perf_counter()
    import sklearn.metrics  # noqa: F401  (imported now, so epoch 1's timing does not include it)

    if threads is not None:
        torch.set_num_threads(threads)
    malloc = devices.keep_freed_memory() if device.type == "cpu" else None
    config = configs[0]  # the runs differ only in their seed
    split = data.load_split(
        data_dir,
        config.dataset,
        config.normal_class,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
        seed=SUBSAMPLE_SEED,
    )
    labels = _as_numpy(split.test_labels).astype(np.int64)
    if len(split.train_x) == 0:
        raise UserError(f"no training images of class {config.normal_class} in {config.dataset}")
    if labels.min() == labels.max():
        raise UserError(
            f"the test set ({len(labels)} images) holds only {'anomalies' if labels[0] else 'normal images'}; "
            "AUC needs both: raise --test-limit (0 = full test set)"
        )
    train_x = split.train_x.to(device)
    shared = types.SimpleNamespace(
        split=split,
        labels=labels,
        train_x=train_x,
        eval_split=types.SimpleNamespace(train_x=train_x, test_x=split.test_x.to(device)),
    )
    shares_process = len(configs) > 1
    runs = [
        _Run(config, out_dir, shared, device, checkpoint_every, on_epoch, shares_process, derivatives)
        for config, out_dir in zip(configs, out_dirs)
    ]
    n_train = len(train_x)
    batches = math.ceil(n_train / config.batch_size)
    log.info(
        "%s %s class %d seed %s on %s: %d training images (%d batches of %d), %d test images, %d epochs",
        config.model,
        config.dataset,
        config.normal_class,
        ",".join(str(run.config.seed) for run in runs),
        device,
        n_train,
        batches,
        config.batch_size,
        len(labels),
        config.epochs,
    )
    setup_seconds = (time.perf_counter() - process_start) / len(runs)
    bar = _Progress(progress)
    modes: dict[int, str | None] = {}
    # Runs resumed from different epochs train in turn, each cohort of equal epochs together.
    for cohort in memory_cohorts(runs, device, config.batch_size, train_x):
        start_epoch = cohort[0].start_epoch
        for epoch in range(start_epoch, config.epochs + 1):
            epoch_start = time.perf_counter()
            for run in cohort:
                run.begin_epoch(epoch)
            mode, step = _seed_step(cohort, seed_batching)
            for batch in range(batches):
                indexes = [run.batch_index(batch) for run in cohort]
                for run, index, terms in zip(cohort, indexes, step(cohort, indexes)):
                    run.record(terms, len(index), batch)
                bar.update(epoch, config.epochs, batch + 1, batches)
            bar.clear()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the epoch's kernels belong to its training time
            # Each run's share of the cohort's training time, so that time summed over runs is
            # device time (aggregate's compute table); its evaluation is its own.
            train_seconds = (time.perf_counter() - epoch_start) / len(cohort)
            for run in cohort:
                modes[id(run)] = mode
                try:
                    with run.own_rng():  # the checkpoint records the run's own RNG state
                        run.end_epoch(train_seconds, batches)
                except NonFiniteLossError as error:
                    if not shares_process:
                        raise
                    log.error("%s", error)
                    run.failure = error
            cohort = [run for run in cohort if run.failure is None]
            if not cohort:
                break
    metrics = []
    for run in runs:
        if run.failure is None:
            execution = {"cpu_malloc": malloc, "seeds_in_process": group_size, "seed_batching": modes.get(id(run)),
                         "mig_instance": devices.mig_instance()}  # fmt: skip
            with run.own_rng():
                metrics.append(run.finish(setup_seconds, execution))
    failures = [run.failure for run in runs if run.failure is not None]
    if failures:
        raise failures[0]
    for run in runs:  # the whole group finished: the final checkpoints have done their job
        (run.out_dir / CHECKPOINT).unlink(missing_ok=True)
    return metrics


def memory_cohorts(runs: list["_Run"], device: torch.device, batch_size: int, train_x: Tensor) -> list[list["_Run"]]:
    """The runs in the cohorts that step together, one cohort after another: runs resumed from
    the same epoch together, split further into as many seeds as fit in the device's memory
    (``devices.seeds_per_cohort``; a log line says so). Stepped in turn, results do not depend on
    the split; vmapped, they equal runs alone up to rounding as always."""
    cohorts = []
    for start_epoch in sorted({run.start_epoch for run in runs}):
        cohort = [run for run in runs if run.start_epoch == start_epoch]
        size = len(cohort)
        if size > 1 and devices.available_memory(device) is not None:  # CUDA: plan; CPU: no limit
            memory = cohort[0].model.training_memory(train_x[:1])
            size = devices.seeds_per_cohort(device, len(runs), batch_size, memory)
            if size < len(cohort):
                log.info(
                    "%d seeds need about %.1f GiB on %s to step together (%.1f MiB per image and seed, "
                    "%d images a step), more than fits: training them in sub-cohorts of %d, one after another",
                    len(cohort), len(cohort) * devices.per_step_bytes(memory, batch_size) / 2**30,
                    device, memory["per_image"] / 2**20, batch_size, size,
                )  # fmt: skip
        cohorts += [cohort[i : i + size] for i in range(0, len(cohort), size)]
    return cohorts


def _save_checkpoint(
    path, config, chash, epoch, model, optimizer, scheduler, history, device, batch_generator, resumes,
    pretrain=None,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "config_hash": chash,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "rng": _rng_state(device, batch_generator),
        "resumes": resumes,
        "pretrain": pretrain,
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_trained_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The final model of a finished run (``model.pt``), in eval mode on ``device``."""
    from grad2vae.models import create_model

    path = Path(run_dir) / MODEL
    if not path.exists():
        raise UserError(f"{path} does not exist: the run in {run_dir} has not finished")
    payload = _load(path, "cpu")
    model = create_model(
        payload.get("base_model") or payload["model"],
        int(payload["latent_dim"]),
        dataset=payload.get("dataset"),
        options=payload.get("model_options"),
    )
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run_group = parser.add_argument_group("the run")
    run_group.add_argument(
        "--model",
        required=True,
        help="the registered model (" + ", ".join(_registered_models()) + "), or with --base-model "
        "the name of a variant: its runs, tables and figures use that name",
    )
    run_group.add_argument(
        "--base-model",
        default=None,
        help="--model names a variant of this registered model, built with the --option values "
        "(default: --model is itself a registered model, as published)",
    )
    run_group.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor option of the variant, e.g. kl=mean (repeat for several; needs --base-model)",
    )
    run_group.add_argument("--dataset", required=True, help="mnist or fashion_mnist")
    run_group.add_argument("--normal-class", type=int, required=True, help="the normal class, 0-9")
    run_group.add_argument(
        "--seed",
        type=int,
        nargs="+",
        required=True,
        help="seed of initialisation, batch order, sampling; several: those runs train in one "
        "process (see --seed-batching), --out-dir then needs a {seed} placeholder",
    )
    run_group.add_argument(
        "--data-dir", required=True, help="folder of `grad2vae fetch` (holds mnist/, fashion_mnist/)"
    )
    run_group.add_argument(
        "--out-dir", required=True, help="the run's folder (created); {seed} is replaced by the seed"
    )

    protocol = parser.add_argument_group(
        "protocol (defaults: the paper's, Sect. 4; for the five schedule options, a model whose source "
        "trains otherwise uses its own defaults instead: deep_svdd 150 epochs, batch 200, lr 1e-4, "
        "x 0.1 after epoch 50)"
    )
    protocol.add_argument(
        "--latent-dim", type=int, default=None, help="bottleneck size (default: 16 mnist, 32 fashion_mnist)"
    )
    protocol.add_argument("--epochs", type=int, default=None, help="training epochs (default: 100)")
    protocol.add_argument("--batch-size", type=int, default=None, help="training batch size (default: 128)")
    protocol.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3)")
    protocol.add_argument(
        "--lr-decay-epoch",
        type=int,
        default=None,
        help="multiply the learning rate by --lr-decay-factor after this epoch; 0: never (default: 50)",
    )
    protocol.add_argument("--lr-decay-factor", type=float, default=None, help="(default: 0.01)")
    protocol.add_argument(
        "--lr-steps",
        nargs="+",
        default=None,
        metavar="EPOCH:LR",
        help="after each EPOCH set the learning rate to LR (absolute), e.g. 250:1e-5; replaces the "
        "decay, so give --lr-decay-epoch 0 with it (default: none)",
    )
    protocol.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="test AUC every N epochs; the last epoch is always evaluated; 0: last only (default: 1)",
    )
    protocol.add_argument(
        "--eval-batch-size", type=int, default=1000, help="test images per scoring batch (default: 1000)"
    )
    protocol.add_argument(
        "--train-limit", type=int, default=0, help="use at most N training images; 0: all (default: 0)"
    )
    protocol.add_argument(
        "--test-limit", type=int, default=0, help="use at most N test images; 0: all (default: 0)"
    )

    execution = parser.add_argument_group("execution (not part of the configuration hash)")
    execution.add_argument(
        "--checkpoint-every", type=int, default=5, help="checkpoint every N epochs; 0: never (default: 5)"
    )
    execution.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = CUDA if present)"
    )
    execution.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="GPU slots shared by jobs side by side (default: the visible device count x --jobs-per-gpu)",
    )
    execution.add_argument(
        "--jobs-per-gpu",
        type=int,
        default=1,
        help="jobs that may share one GPU (default 1: a job waits for a free card rather than share one)",
    )
    execution.add_argument(
        "--slot-dir",
        default=str(devices.DEFAULT_SLOT_DIR),
        help="folder of the GPU slot lock files (default: .snakemake/gpu-slots)",
    )
    execution.add_argument(
        "--slot-timeout",
        type=float,
        default=None,
        help="seconds to wait for a free GPU slot before failing (default: wait)",
    )
    execution.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    execution.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    execution.add_argument(
        "--derivatives",
        default="auto",
        help="Grad2VAE's second-derivative implementation: auto (per device, see `grad2vae bench`), "
        "loop, vectorized, closed_form or explicit; equal results up to rounding (default: auto)",
    )
    execution.add_argument(
        "--seed-batching",
        choices=SEED_BATCHING,
        default="auto",
        help="with several --seed: vmap = one batched step for all seeds (results equal to "
        "separate runs up to rounding), sequential = each seed's step in turn (exactly equal); "
        "auto = vmap on a GPU where the model supports it, sequential on the CPU (measured "
        "faster there) (default: auto)",
    )


#: the options a model's ``protocol_defaults`` may set (RunConfig fields)
SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "lr_decay_epoch", "lr_decay_factor")


def _registered_models() -> list[str]:
    from grad2vae.models import model_names

    return model_names()


def schedule_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Each schedule option: as given, else the model's ``protocol_defaults``, else the paper's."""
    from grad2vae.models import MODELS, model_names

    registered = getattr(args, "base_model", None) or args.model
    model_defaults = MODELS[registered].protocol_defaults if registered in model_names() else {}
    fields = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    schedule = {}
    for name in SCHEDULE_FIELDS:
        given = getattr(args, name, None)
        schedule[name] = given if given is not None else model_defaults.get(name, fields[name])
    return schedule


def _parse_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: write KEY=VALUE, e.g. --option kl=mean")
        options[key.strip()] = value.strip()
    return options


def _parse_lr_steps(items: list[str] | None) -> tuple[tuple[int, float], ...]:
    steps = []
    for item in items or []:
        epoch, sep, value = item.partition(":")
        try:
            steps.append((int(epoch), float(value)))
        except ValueError:
            raise UserError(f"--lr-steps {item!r}: write EPOCH:LR, e.g. 250:1e-5") from None
    return tuple(steps)


def config_from_args(args: argparse.Namespace, seed: int) -> RunConfig:
    from grad2vae.models import check_options

    options = _parse_options(getattr(args, "option", []))
    base = getattr(args, "base_model", None)
    if options and not base:
        raise UserError(
            "--option needs --base-model: a model with options is a variant, so --model names the "
            "variant and --base-model the registered model, e.g. --model vae_kl_mean --base-model vae --option kl=mean"
        )
    return RunConfig(
        model=args.model,
        base_model=base,
        model_options=check_options(base, options, label=args.model) if base else {},
        lr_steps=_parse_lr_steps(getattr(args, "lr_steps", None)),
        dataset=args.dataset,
        normal_class=args.normal_class,
        seed=seed,
        latent_dim=args.latent_dim,
        **schedule_from_args(args),
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", devices.CUBLAS_WORKSPACE)  # before any CUDA
    from grad2vae.models.grad2vae import DERIVATIVE_METHODS

    derivatives = args.derivatives  # an execution choice: not part of the config hash
    if derivatives != "auto" and derivatives not in DERIVATIVE_METHODS:
        raise UserError(f"--derivatives {derivatives!r}: use auto or one of {', '.join(DERIVATIVE_METHODS)}")
    seeds = list(args.seed)
    if len(seeds) > 1 and "{seed}" not in args.out_dir:
        raise UserError(
            f"--out-dir {args.out_dir!r}: with several seeds it needs a {{seed}} placeholder, "
            "e.g. results/runs/mnist/vae/class0/seed{seed}"
        )
    configs = [config_from_args(args, seed) for seed in seeds]
    out_dirs = [args.out_dir.replace("{seed}", str(seed)) for seed in seeds]
    results = train_runs(
        configs,
        out_dirs,
        data_dir=args.data_dir,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
        gpu_slots=args.gpu_slots,
        jobs_per_gpu=args.jobs_per_gpu,
        slot_dir=args.slot_dir,
        slot_timeout=args.slot_timeout,
        progress=False if args.no_progress else None,
        seed_batching=args.seed_batching,
        derivatives=derivatives,
    )
    for config, out_dir, metrics in zip(configs, out_dirs, results):
        print(
            f"{config.model} {config.dataset} class {config.normal_class} seed {config.seed}: "
            f"auc {metrics['auc']:.4f}, auc_reconstruction {metrics['auc_reconstruction']:.4f} "
            f"-> {out_dir}"
        )
    return 0
