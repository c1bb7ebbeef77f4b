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

example:
  grad2vae train --model grad2vae --dataset mnist --normal-class 0 --seed 0 \\
                 --data-dir data --out-dir results/runs/mnist/grad2vae/class0/seed0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fcntl
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
from typing import Any, Callable

import numpy as np
import torch

from grad2vae import atomic, devices
from grad2vae.errors import UserError

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

    def __post_init__(self) -> None:
        if self.latent_dim is None and self.dataset in DEFAULT_LATENT_DIM:
            object.__setattr__(self, "latent_dim", DEFAULT_LATENT_DIM[self.dataset])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    from grad2vae.models import model_names

    known_models = model_names()
    if config.model not in known_models:
        raise UserError(f"unknown model {config.model!r}; known models: {', '.join(known_models)}")
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
) -> dict[str, np.ndarray]:
    """Scores of every test image: ``{"main": ..., "reconstruction": ..., ...}`` as float arrays.

    Calls ``model.fit_scorer(train_x)`` (eval mode, no_grad) first; scores run with autograd
    enabled (Grad2VAE needs second derivatives) and a fresh generator seeded with
    ``generator_seed``. Runs inside ``fork_rng``, so the caller's RNG streams are untouched.
    ``extra``: also the model's ``extra_scores`` (the final evaluation only), after all of
    ``scores`` and with their own generator, so the main scores are the same either way."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    collected: dict[str, list[torch.Tensor]] = {}
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
                        collected.setdefault(key, []).append(value.detach().reshape(-1).float().cpu())
    finally:
        model.train(was_training)
    missing = {"main", "reconstruction"} - set(collected)
    if missing:
        raise RuntimeError(f"model {type(model).__name__}.scores() lacks {sorted(missing)}")
    return {key: torch.cat(parts).numpy() for key, parts in collected.items()}


def auc_of(scores: dict[str, np.ndarray], labels: np.ndarray, epoch: int | None = None) -> dict[str, float]:
    """AUC-ROC (anomaly = positive) of the main and the reconstruction score."""
    from sklearn.metrics import roc_auc_score

    result = {}
    for key, column in (("main", "auc"), ("reconstruction", "auc_reconstruction")):
        values = scores[key]
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            where = f"epoch {epoch}: " if epoch is not None else ""
            raise NonFiniteLossError(
                f"{where}score {key!r} is not finite for {bad} of {len(values)} test images; "
                "the model diverged — try another seed or a lower --lr"
            )
        result[column] = float(roc_auc_score(labels, values))
    return result


def extra_aucs(scores: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float | None]:
    """AUC-ROC of every score besides main and reconstruction (a model's ``extra_scores``);
    None for a score that is not finite everywhere."""
    from sklearn.metrics import roc_auc_score

    return {
        key: float(roc_auc_score(labels, values)) if np.isfinite(values).all() else None
        for key, values in scores.items()
        if key not in ("main", "reconstruction")
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
    loss_terms: list[str] = []
    for row in history:
        for key in row:
            if key.startswith("loss_") and key not in loss_terms:
                loss_terms.append(key)
    return ["epoch", "lr", "seconds", *loss_terms, "auc", "auc_reconstruction"]


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    columns = history_columns(history)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_fmt(row.get(column)) for column in columns) for row in history]
    atomic.write_text(path, "\n".join(lines) + "\n")


def write_scores(path: Path, split, scores: dict[str, np.ndarray]) -> None:
    """index, test_class, label, score_main, score_reconstruction; gzip with a fixed header
    (mtime 0, no name) so equal scores give equal bytes. ``index`` is the image's position in
    the official test file (``split.test_indices``; differs from the row number under a limit)."""
    labels = _as_numpy(split.test_labels).astype(np.int64)
    classes = _as_numpy(split.test_classes).astype(np.int64)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "test_class", "label", "score_main", "score_reconstruction"])
    indices = getattr(split, "test_indices", None)
    indices = _as_numpy(indices).astype(np.int64) if indices is not None else np.arange(len(labels))
    for index, cls, label, main, rec in zip(
        indices, classes, labels, scores["main"], scores["reconstruction"]
    ):
        writer.writerow([int(index), int(cls), int(label), repr(float(main)), repr(float(rec))])
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
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, batch_generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


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


class _RunLock:
    """Non-blocking flock on the run dir: two processes never train the same run at once."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(
                f"another process is training the run in {self.path.parent}; wait for it to finish"
            ) from None
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


def train_run(
    config: RunConfig,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike = "data",
    device: str | torch.device = "auto",
    checkpoint_every: int = 5,
    threads: int | None = None,
    gpu_slots: int | None = None,
    slot_dir: str | os.PathLike = devices.DEFAULT_SLOT_DIR,
    slot_timeout: float | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run into ``out_dir``; return its metrics (see CONTRIBUTING.md).

    A finished run of the same configuration returns its metrics without doing anything; an
    unfinished one continues from its checkpoint. ``device`` is a torch.device or a --device
    string (auto | cpu | cuda | cuda:N, resolved with GPU slots). ``progress``: show the bar
    (default: when stderr is a terminal). ``on_epoch`` is called with each history row."""
    validate_config(config)
    if checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0 (0: never) (got {checkpoint_every})")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1 (got {threads})")
    check_data_present(data_dir, config.dataset)
    out_dir = Path(out_dir)
    done = finished_metrics(out_dir, config)
    if done is not None:
        (out_dir / CHECKPOINT).unlink(missing_ok=True)
        log.info("%s: run already finished (auc %.4f); nothing to do", out_dir, done.get("auc", float("nan")))
        return done
    with _RunLock(out_dir):
        # Re-check under the lock: another process may have finished meanwhile.
        done = finished_metrics(out_dir, config)
        if done is not None:
            return done
        for stray in out_dir.glob(".tmp-*"):  # left by a process killed mid-write
            stray.unlink(missing_ok=True)
        if not isinstance(device, torch.device):
            device = devices.resolve_device(
                str(device), gpu_slots=gpu_slots, slot_dir=slot_dir, slot_timeout=slot_timeout
            )
        with devices.deterministic():
            return _train(
                config, out_dir, Path(data_dir), device, checkpoint_every, threads, progress, on_epoch
            )


def _train(config, out_dir, data_dir, device, checkpoint_every, threads, progress, on_epoch):
    from grad2vae import data
    from grad2vae.models import create_model

    process_start = time.perf_counter()
    import sklearn.metrics  # noqa: F401  (imported now, so epoch 1's timing does not include it)

    if threads is not None:
        torch.set_num_threads(threads)
    malloc = devices.keep_freed_memory() if device.type == "cpu" else None
    chash = config_hash(config)

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
    eval_split = types.SimpleNamespace(train_x=train_x, test_x=split.test_x.to(device))

    seed_everything(config.seed)
    model = create_model(config.model, config.latent_dim, dataset=config.dataset).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    milestones = [config.lr_decay_epoch] if config.lr_decay_epoch > 0 else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=milestones, gamma=config.lr_decay_factor
    )
    batch_generator = torch.Generator().manual_seed(derive_seed(config.seed, "batches"))
    eval_seed = derive_seed(config.seed, "eval")

    history: list[dict[str, Any]] = []
    start_epoch = 1
    resumes = 0
    checkpoint_epoch = 0
    pretrain_info = None
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        checkpoint = _load(checkpoint_path, "cpu")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"], device, batch_generator)
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"]) + 1
        checkpoint_epoch = start_epoch - 1
        resumes = int(checkpoint.get("resumes", 0)) + 1
        pretrain_info = checkpoint.get("pretrain")
        log.info("%s: resuming after epoch %d from %s", out_dir, start_epoch - 1, checkpoint_path)
    # Drop rows of epochs after the checkpoint (a killed run's history.tsv may be ahead of it).
    write_history(out_dir / HISTORY, history)
    if start_epoch == 1:
        # The model's optional pretraining (Deep SVDD's autoencoder), once per run with the run's
        # protocol; a resumed run has its result in the checkpoint's model state.
        pretrain_info = model.pretrain(
            train_x,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            lr_decay_epoch=config.lr_decay_epoch,
            lr_decay_factor=config.lr_decay_factor,
            generator=torch.Generator().manual_seed(derive_seed(config.seed, "pretrain")),
        )

    n_train = len(train_x)
    batches = math.ceil(n_train / config.batch_size)
    bar = _Progress(progress)
    log.info(
        "%s %s class %d seed %d on %s: %d training images (%d batches of %d), %d test images, %d epochs",
        config.model,
        config.dataset,
        config.normal_class,
        config.seed,
        device,
        n_train,
        batches,
        config.batch_size,
        len(labels),
        config.epochs,
    )
    setup_seconds = time.perf_counter() - process_start
    last_scores: dict[str, np.ndarray] | None = None
    epoch_times: list[float] = []

    for epoch in range(start_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        permutation = torch.randperm(n_train, generator=batch_generator).to(device)
        # Per loss term, on the device (no sync per batch): the size-weighted sum, and the first
        # batch (1-based) where the term was not finite (inf: never).
        names: list[str] = []
        sums = first_bad = None
        for batch in range(batches):
            index = permutation[batch * config.batch_size : (batch + 1) * config.batch_size]
            terms = model.loss(train_x[index])
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            values = torch.stack([value.detach().reshape(()) for value in terms.values()])
            bad_at = torch.where(torch.isfinite(values), math.inf, float(batch + 1))
            if sums is None:
                names, sums, first_bad = list(terms), values * len(index), bad_at
            else:
                sums, first_bad = sums + values * len(index), torch.minimum(first_bad, bad_at)
            bar.update(epoch, config.epochs, batch + 1, batches)
        scheduler.step()
        means = dict(zip(names, (sums / n_train).tolist()))  # the epoch's one sync
        first_bad_at = dict(zip(names, first_bad.tolist()))
        bar.clear()
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            first = {name: first_bad_at[name] for name in bad}
            at = min(first.values())
            culprits = [name for name in bad if first[name] == at]
            if len(culprits) > 1 and "total" in culprits:
                culprits.remove("total")  # the sum follows its terms
            kept = (
                f"its last checkpoint (after epoch {checkpoint_epoch}) is kept"
                if checkpoint_epoch
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"epoch {epoch}: loss term {', '.join(repr(b) for b in culprits)} is not finite "
                f"(first in batch {int(at)} of {batches}; non-finite epoch means: {', '.join(bad)}); "
                f"training stopped, {kept} in {out_dir} and no metrics were written. "
                "Try another seed or a lower --lr."
            )
        train_seconds = time.perf_counter() - epoch_start

        evaluated = epoch == config.epochs or (config.eval_every > 0 and epoch % config.eval_every == 0)
        aucs: dict[str, float | None] = {"auc": None, "auc_reconstruction": None}
        eval_seconds = 0.0
        if evaluated:
            eval_start = time.perf_counter()
            last_scores = evaluate(
                model, eval_split, eval_seed, batch_size=config.eval_batch_size, extra=epoch == config.epochs
            )
            aucs = auc_of(last_scores, labels, epoch)
            eval_seconds = time.perf_counter() - eval_start
        seconds = time.perf_counter() - epoch_start
        row = {
            "epoch": epoch,
            "lr": lr,
            "seconds": seconds,
            **{f"loss_{name}": value for name, value in means.items()},
            **aucs,
            "train_seconds": train_seconds,  # kept in the checkpoint, not in history.tsv
            "eval_seconds": eval_seconds,
        }
        history.append(row)
        write_history(out_dir / HISTORY, history)
        epoch_times.append(seconds)
        remaining = (config.epochs - epoch) * (sum(epoch_times) / len(epoch_times))
        losses = " ".join(f"{name}={value:.4g}" for name, value in means.items())
        auc_text = f" auc={aucs['auc']:.4f} auc_rec={aucs['auc_reconstruction']:.4f}" if evaluated else ""
        log.info(
            "epoch %d/%d %s lr=%.3g%s %.1fs ETA %s",
            epoch,
            config.epochs,
            losses,
            lr,
            auc_text,
            seconds,
            _fmt_duration(remaining),
        )
        if on_epoch is not None:
            on_epoch(row)
        if checkpoint_every and epoch % checkpoint_every == 0 and epoch < config.epochs:
            _save_checkpoint(
                checkpoint_path,
                config,
                chash,
                epoch,
                model,
                optimizer,
                scheduler,
                history,
                device,
                batch_generator,
                resumes,
                pretrain=pretrain_info,
            )
            checkpoint_epoch = epoch

    finish_start = time.perf_counter()
    if last_scores is None:  # resumed from a checkpoint at the last epoch: evaluate again
        last_scores = evaluate(model, eval_split, eval_seed, batch_size=config.eval_batch_size, extra=True)
    final = auc_of(last_scores, labels, config.epochs)
    auc_extra = extra_aucs(last_scores, labels)
    write_scores(out_dir / SCORES, split, last_scores)
    model_payload = {
        "model": config.model,
        "latent_dim": config.latent_dim,
        "dataset": config.dataset,
        "normal_class": config.normal_class,
        "seed": config.seed,
        "config_hash": chash,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic.atomic_path(out_dir / MODEL) as tmp:
        torch.save(model_payload, tmp)

    commit, dirty = _git_commit()
    train_total = sum(row["train_seconds"] for row in history)
    eval_total = sum(row["eval_seconds"] for row in history)
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        "normal_class": config.normal_class,
        "seed": config.seed,
        "main_score": getattr(model, "main_score", "main"),
        "auc": final["auc"],
        "auc_reconstruction": final["auc_reconstruction"],
        "epochs": config.epochs,
        "wall_seconds": sum(row["seconds"] for row in history)
        + setup_seconds
        + (time.perf_counter() - finish_start),
        "seconds_per_epoch": train_total / len(history),
        "train_seconds": train_total,
        "eval_seconds": eval_total,
        "device": devices.device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_malloc": malloc,  # devices.keep_freed_memory() on the CPU, else None
        "derivatives": getattr(model, "derivatives_used", None),  # Grad2VAE's method, else None
        "parameters": int(model.parameter_count()),
        "train_images": n_train,
        "test_images": int(len(labels)),
        "test_anomalies": int(labels.sum()),
        "resumes": resumes,
        "preprocessing": model.preprocessing_info(),
        "pretrain": pretrain_info,
        "auc_extra": auc_extra,
        "versions": environment_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "config": config.to_dict(),
        "config_hash": chash,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic.write_json(out_dir / METRICS, metrics)  # last: its presence means "finished"
    checkpoint_path.unlink(missing_ok=True)
    log.info(
        "%s: finished, auc %.4f (reconstruction %.4f), %.1f s per epoch",
        out_dir,
        metrics["auc"],
        metrics["auc_reconstruction"],
        metrics["seconds_per_epoch"],
    )
    return metrics


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
    model = create_model(payload["model"], int(payload["latent_dim"]), dataset=payload.get("dataset"))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run_group = parser.add_argument_group("the run")
    run_group.add_argument("--model", required=True, help="grad2vae, vae, cae or inception_caenn")
    run_group.add_argument("--dataset", required=True, help="mnist or fashion_mnist")
    run_group.add_argument("--normal-class", type=int, required=True, help="the normal class, 0-9")
    run_group.add_argument(
        "--seed", type=int, required=True, help="seed of initialisation, batch order, sampling"
    )
    run_group.add_argument(
        "--data-dir", required=True, help="folder of `grad2vae fetch` (holds mnist/, fashion_mnist/)"
    )
    run_group.add_argument("--out-dir", required=True, help="the run's folder (created)")

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
        help="GPU slots shared by jobs side by side (default: the visible device count)",
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


#: the options a model's ``protocol_defaults`` may set (RunConfig fields)
SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "lr_decay_epoch", "lr_decay_factor")


def schedule_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Each schedule option: as given, else the model's ``protocol_defaults``, else the paper's."""
    from grad2vae.models import MODELS, model_names

    model_defaults = MODELS[args.model].protocol_defaults if args.model in model_names() else {}
    fields = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    schedule = {}
    for name in SCHEDULE_FIELDS:
        given = getattr(args, name, None)
        schedule[name] = given if given is not None else model_defaults.get(name, fields[name])
    return schedule


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        model=args.model,
        dataset=args.dataset,
        normal_class=args.normal_class,
        seed=args.seed,
        latent_dim=args.latent_dim,
        **schedule_from_args(args),
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", devices.CUBLAS_WORKSPACE)  # before any CUDA
    derivatives = getattr(args, "derivatives", "auto") or "auto"
    if derivatives != "auto":  # read by Grad2VAE(derivatives="auto"); not part of the config hash
        from grad2vae.models.grad2vae import DERIVATIVE_METHODS, DERIVATIVES_ENV

        if derivatives not in DERIVATIVE_METHODS:
            raise UserError(f"--derivatives {derivatives!r}: use auto or one of {', '.join(DERIVATIVE_METHODS)}")
        os.environ[DERIVATIVES_ENV] = derivatives
    config = config_from_args(args)
    metrics = train_run(
        config,
        args.out_dir,
        data_dir=args.data_dir,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
        gpu_slots=args.gpu_slots,
        slot_dir=args.slot_dir,
        slot_timeout=args.slot_timeout,
        progress=False if args.no_progress else None,
    )
    print(
        f"{config.model} {config.dataset} class {config.normal_class} seed {config.seed}: "
        f"auc {metrics['auc']:.4f}, auc_reconstruction {metrics['auc_reconstruction']:.4f} "
        f"-> {args.out_dir}"
    )
    return 0
