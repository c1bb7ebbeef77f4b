"""One run's lifecycle: its lock, its checkpoint and RNG state (exact resume), the per-epoch
bookkeeping, and the final scores, model and metrics. ``cohort`` steps one or several runs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from grad2vae import atomic
from grad2vae.errors import UserError
from grad2vae.gitstate import git_state
from grad2vae.layout import CHECKPOINT, HISTORY, LOCK, METRICS, MODEL, SCORES
from grad2vae.metrics_file import write_metrics
from grad2vae.progress import fmt_duration
from grad2vae.schedule import make_scheduler
from grad2vae.score_columns import score_column
from grad2vae.training import devices
from grad2vae.training.evaluate import (
    NonFiniteLossError,
    auc_of,
    evaluate,
    extra_aucs,
    score_means,
    training_flops,
)
from grad2vae.training.outputs import (
    environment_versions,
    write_history,
    write_scores,
)
from grad2vae.training.run_config import RunConfig, config_hash, derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device: torch.device, batch_generator: torch.Generator) -> dict[str, Any]:
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


def set_rng_state(
    state: dict[str, Any], device: torch.device, batch_generator: torch.Generator
) -> None:
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


def load_payload(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} ({error}); delete it to run again") from None


def different_config_error(
    out_dir: Path, what: str, theirs: dict | None, ours: RunConfig
) -> UserError:
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
        metrics = read_json(metrics_path)
        if metrics.get("config_hash") != wanted:
            raise different_config_error(out_dir, "a finished run", metrics.get("config"), config)
        return metrics
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        try:
            checkpoint = load_payload(checkpoint_path)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
            raise UserError(
                f"cannot read {checkpoint_path} ({error}); delete it to start over"
            ) from None
        if checkpoint.get("config_hash") != wanted:
            raise different_config_error(
                out_dir, "an unfinished run", checkpoint.get("config"), config
            )
    return None


#: environment: a folder on a local disk for the run locks, for run folders on a file system
#: without flock (the lock file is named after the run folder's absolute path)
LOCK_DIR_ENV = "GRAD2VAE_LOCK_DIR"


#: environment: "off" trains without the run lock (risk: two processes training the same run
#: at once overwrite each other's checkpoint and outputs)
RUN_LOCK_ENV = "GRAD2VAE_RUN_LOCK"


class RunLock:
    """Non-blocking flock on the run dir: two processes never train the same run at once.
    ``GRAD2VAE_LOCK_DIR`` moves the lock files to a local folder, ``GRAD2VAE_RUN_LOCK=off``
    turns the lock off (for file systems without flock).

    Entering creates the run dir (a ``UserError`` naming ``--out-dir`` when it cannot be);
    leaving removes the lock file, and the folder if it made it, when nothing else was written
    there (a run refused before training leaves nothing behind)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / LOCK
        lock_dir = os.environ.get(LOCK_DIR_ENV, "").strip()
        if lock_dir:
            name = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:32]
            self.path = Path(lock_dir) / f"run-{name}.lock"
        self.fd: int | None = None
        self.created_folder = False

    def __enter__(self):
        self.created_folder = not self.out_dir.exists()
        atomic.make_folder(self.out_dir, "--out-dir")
        if os.environ.get(RUN_LOCK_ENV, "").strip().lower() == "off":
            return self
        if self.path.parent != self.out_dir:
            atomic.make_folder(self.path.parent, LOCK_DIR_ENV)
        way_out = (
            f"set {LOCK_DIR_ENV} to a folder on a local disk (e.g. "
            f"{LOCK_DIR_ENV}=/tmp/grad2vae-locks), or {RUN_LOCK_ENV}=off to "
            "train without the run lock (then make sure no two jobs train "
            "the same run: they would overwrite each other's checkpoint)"
        )
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
            # A process leaving removes the lock file (__exit__): a lock taken on the file it
            # removed is no lock, since a third process may lock a new file of that name.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        if self.fd is not None:
            if self._only_the_lock_left():
                self.path.unlink(missing_ok=True)  # while still held: see __enter__
            os.close(self.fd)
            self.fd = None
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()  # only if empty: a run refused before training

    def _only_the_lock_left(self) -> bool:
        if self.path.parent != self.out_dir:
            return False
        try:
            return [entry.name for entry in self.out_dir.iterdir()] == [LOCK]
        except OSError:
            return False


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """The tensors ``evaluate`` reads, on the run's device."""

    train_x: Tensor
    test_x: Tensor


@dataclasses.dataclass(frozen=True)
class SharedData:
    """What the runs of one (model, dataset, class) share in one process: the one-class split
    (``data.datasets.OneClassSplit``), its test labels (1 = anomaly), the training images on the
    device and the split ``evaluate`` scores."""

    split: Any
    labels: np.ndarray
    train_x: Tensor
    eval_split: DeviceSplit


class Run:
    """One run between setup and finish; ``train_in_lockstep`` steps one or several of them in
    lock-step.

    Setup (``__init__``): the model from the run's seed, optimizer, schedule, batch-order
    generator, resume from the checkpoint, the model's pretraining. Then per epoch:
    ``begin_epoch`` -> ``batch_index`` / ``record`` per batch -> ``end_epoch`` (non-finite check,
    evaluation, history, checkpoint); finally ``finish`` writes scores, model and metrics."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        shared: SharedData,
        device: torch.device,
        *,
        checkpoint_every: int,
        on_epoch: Callable[[dict[str, Any]], None] | None,
        shares_process: bool,
        derivatives: str | None,
        progress: bool | None = None,
    ) -> None:
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
            checkpoint = load_payload(checkpoint_path, "cpu")
            self.model.load_state_dict(checkpoint["model"])
            if "optimizer" in checkpoint:  # not in the final state (save_checkpoint)
                self.optimizer.load_state_dict(checkpoint["optimizer"])
                self.scheduler.load_state_dict(checkpoint["scheduler"])
            set_rng_state(checkpoint["rng"], device, self.batch_generator)
            self.history = list(checkpoint["history"])
            self.start_epoch = int(checkpoint["epoch"]) + 1
            self.checkpoint_epoch = self.start_epoch - 1
            self.resumes = int(checkpoint.get("resumes", 0)) + 1
            self.pretrain_info = checkpoint.get("pretrain")
            log.info(
                "%s: resuming after epoch %d from %s",
                out_dir,
                self.start_epoch - 1,
                checkpoint_path,
            )
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
                progress=progress,
            )
        # Several runs in one process: each keeps torch's global RNG state (training noise) of
        # its own between its turns, as if it were alone.
        self.rng = self._global_rng() if shares_process else None
        self.last_scores: dict[str, np.ndarray] | None = None
        self.last_extra: dict[str, np.ndarray] = {}
        self.last_pixel: dict[str, float] = {}  # evaluate.pixel_metrics of the last evaluation
        self.epoch_times: list[float] = []
        self.failure: NonFiniteLossError | None = None

    def _global_rng(self) -> dict[str, Any]:
        state = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
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
        self.permutation = torch.randperm(
            len(self.shared.train_x), generator=self.batch_generator
        ).to(self.device)
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
            self.sums, self.first_bad = (
                self.sums + values * size,
                torch.minimum(self.first_bad, bad_at),
            )

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
                f"(first in batch {int(at)} of {batches}; non-finite epoch means: "
                f"{', '.join(bad)}); training stopped, {kept} in {self.out_dir} and no metrics "
                "were written. Try another seed or a lower --lr."
            )
        eval_start = time.perf_counter()
        evaluated = epoch == config.epochs or (
            config.eval_every > 0 and epoch % config.eval_every == 0
        )
        aucs: dict[str, float | None] = {"auc": None, "auc_reconstruction": None}
        eval_seconds = 0.0
        if evaluated:
            self.last_scores, self.last_extra, self.last_pixel = evaluate(
                self.model,
                self.shared.eval_split,
                self.eval_seed,
                batch_size=config.eval_batch_size,
                extra=epoch == config.epochs,
            )
            aucs = auc_of(self.last_scores, self.shared.labels, epoch)
            aucs.update(score_means(self.last_scores, self.shared.labels))
            aucs.update(self.last_pixel)
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
        auc_text = (
            f" auc={aucs['auc']:.4f} auc_rec={aucs['auc_reconstruction']:.4f}" if evaluated else ""
        )
        log.info(
            "%sepoch %d/%d %s lr=%.3g%s %.1fs ETA %s",
            f"seed {config.seed}: " if self.rng is not None else "",
            epoch,
            config.epochs,
            losses,
            self.lr,
            auc_text,
            seconds,
            fmt_duration(remaining),
        )
        if self.on_epoch is not None:
            self.on_epoch(row)
        if self.checkpoint_every and epoch % self.checkpoint_every == 0 and epoch < config.epochs:
            self.save_checkpoint(epoch)
            self.checkpoint_epoch = epoch

    def save_checkpoint(self, epoch: int, final: bool = False) -> None:
        """Everything a resume needs after ``epoch``; ``final``: without the optimizer and the
        schedule (nothing trains after the last epoch: the file is then the size of the model)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "config_hash": self.chash,
            "epoch": epoch,
            "model": self.model.state_dict(),
            **({} if final else {"optimizer": self.optimizer.state_dict()}),
            **({} if final else {"scheduler": self.scheduler.state_dict()}),
            "history": self.history,
            "rng": rng_state(self.device, self.batch_generator),
            "resumes": self.resumes,
            "pretrain": self.pretrain_info,
        }
        with atomic.atomic_path(self.out_dir / CHECKPOINT) as tmp:
            torch.save(payload, tmp)

    def finish(self, setup_seconds: float, execution: dict[str, Any]) -> dict[str, Any]:
        config, model, out_dir, labels = self.config, self.model, self.out_dir, self.shared.labels
        finish_start = time.perf_counter()
        if self.last_scores is None:  # resumed from a checkpoint at the last epoch: evaluate again
            self.last_scores, self.last_extra, self.last_pixel = evaluate(
                model,
                self.shared.eval_split,
                self.eval_seed,
                batch_size=config.eval_batch_size,
                extra=True,
            )
        final = auc_of(self.last_scores, labels, config.epochs)
        auc_extra = extra_aucs(self.last_extra, labels)
        write_scores(out_dir / SCORES, self.shared.split, self.last_scores)
        model_payload = {
            **config.identity(),
            "latent_dim": config.latent_dim,
            "config_hash": self.chash,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        with atomic.atomic_path(out_dir / MODEL) as tmp:
            torch.save(model_payload, tmp)

        commit, dirty = git_state()
        history = self.history
        train_total = sum(row["train_seconds"] for row in history)
        eval_total = sum(row["eval_seconds"] for row in history)
        metrics = {
            **config.identity(),
            "main_score": getattr(model, "main_score", "main"),
            "auc": final["auc"],
            "auc_reconstruction": final["auc_reconstruction"],
            # every other score of model.scores() (diagnostics beside the main score)
            "auc_scores": {
                key: final[score_column(key)]
                for key in self.last_scores
                if key not in ("main", "reconstruction")
            },
            "score_means": score_means(self.last_scores, labels),
            # pixel-level AUCs over the whole test split (evaluate.pixel_column): the quantity
            # the authors' notebook logged, perhaps the paper's Table 1 (table1_metric)
            **self.last_pixel,
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
            **training_flops(
                model, self.shared.train_x[: config.batch_size], n_train=len(self.shared.train_x)
            ),
            "train_images": len(self.shared.train_x),
            "test_images": int(len(labels)),
            "test_anomalies": int(labels.sum()),
            "resumes": self.resumes,
            "preprocessing": model.preprocessing_info(),
            "pretrain": self.pretrain_info,
            "auc_extra": auc_extra,
            # optimistic bounds the model declares (they select on the test labels); the key
            # only where there are any
            **({"bounds": bounds} if (bounds := model.bounds(auc_extra)) else {}),
            "versions": environment_versions(),
            "git_commit": commit or "unknown",
            "git_dirty": dirty,
            "config": config.to_dict(),
            "config_hash": self.chash,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # The final state stays beside the outputs until `grad2vae aggregate` has read the run
        # (collect.release_final_checkpoint): Snakemake deletes every declared output of a job
        # it saw interrupted (Ctrl-C while the run finished) or of a failed group job, and a
        # rerun then only re-evaluates from here instead of training again. Weights and history only
        # (no optimizer): nothing trains after the last epoch.
        self.save_checkpoint(config.epochs, final=True)
        metrics = write_metrics(out_dir / METRICS, metrics)  # last: its presence means "finished"
        log.info(
            "%s: finished, auc %.4f (reconstruction %.4f), %.1f s per epoch",
            out_dir,
            metrics["auc"],
            metrics["auc_reconstruction"],
            metrics["seconds_per_epoch"],
        )
        return metrics


def load_trained_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The final model of a finished run (``model.pt``), in eval mode on ``device``."""
    from grad2vae.models import create_model

    path = Path(run_dir) / MODEL
    if not path.exists():
        raise UserError(f"{path} does not exist: the run in {run_dir} has not finished")
    payload = load_payload(path, "cpu")
    model = create_model(
        payload.get("base_model") or payload["model"],
        int(payload["latent_dim"]),
        dataset=payload.get("dataset"),
        options=payload.get("model_options"),
    )
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
