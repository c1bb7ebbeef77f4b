"""One run's configuration: the protocol values that determine its results (``RunConfig``),
their hash, their checks, and the assumptions of the training protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from grad2vae import published as pub
from grad2vae.errors import UserError

log = logging.getLogger(__name__)

#: the paper's learning setup (Sect. 4), from the cited data file published.yaml: the one source
#: of the protocol's defaults (RunConfig's fields; the CLI's and the workflow's derive from them)
PAPER = pub.learning_setup()

#: bottleneck size per dataset (paper Sect. 4.2: 16 neurons for MNIST, 32 for Fashion-MNIST)
DEFAULT_LATENT_DIM: dict[str, int] = {d: int(n) for d, n in PAPER["latent_dim"].items()}


#: seed of the train/test subsample drawn by --train-limit / --test-limit (the same for all runs)
SUBSAMPLE_SEED = 0


ASSUMPTIONS: tuple[str, ...] = (
    "the model after the last epoch is evaluated; no epoch is selected on the test set — "
    'paper Sect. 4 ("100 epochs") and the one-class benchmark pitfalls in the anchors notes',
    '"the learning rate is reduced after 50 epochs by a factor of 10^-2" = MultiStepLR with '
    "milestone 50 and gamma 0.01, stepped once per epoch: epochs 1-50 use 1e-3, epochs 51-100 "
    "use 1e-5 — paper Sect. 4",
    "optimiser Adam with torch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay) — project "
    "requirement; the paper names the learning rate, not the optimiser",
    "each epoch visits the normal class's training images in a new order drawn by torch.randperm "
    "from a generator seeded from the run's seed; the last, smaller batch is kept (as Keras' fit "
    "does) — our choice",
    "the logged loss of an epoch is the per-image mean: each batch's mean weighted by its size — "
    "our choice",
    "AUC-ROC = sklearn.metrics.roc_auc_score with label 1 = anomaly (every class but the normal "
    "one) as the positive class and higher score = more anomalous — paper Sect. 4.2, anchors notes",
    "before every evaluation the model is put in eval() mode and fit_scorer(train images) runs "
    "under no_grad (1-NN models keep the training features); scores run with autograd enabled "
    "(Grad2VAE's attention needs second derivatives) and are detached — project requirement",
    "evaluation sampling (the sampled latent of the variational models) uses a fresh "
    "torch.Generator seeded from sha256(seed, 'eval') at every evaluation, and evaluation runs "
    "inside torch.random.fork_rng, so scores are reproducible and the training trajectory does "
    "not depend on how often it is evaluated — our choice",
    "test AUC is computed every epoch by default (Fig. 6 needs epochs 1-50); the last epoch is "
    "always evaluated — project requirement",
    "evaluation runs in batches of 1000 test images — project requirement, for speed; it is part "
    "of the configuration hash because batch size can change floating-point results",
    "model initialisation and training noise (the reparameterisation samples) come from torch's "
    "global RNG seeded with the run's seed; Python and NumPy are seeded too — project requirement",
    "deterministic algorithms (torch.use_deterministic_algorithms(True, warn_only=True), "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN benchmark off): identical results need the same "
    "device, thread count and library versions — project requirement",
    "a non-finite loss is detected from the epoch means (one device sync per epoch, not per "
    "batch): the run stops after that epoch, keeps its last checkpoint and writes no metrics — "
    "project requirement and our choice",
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
    "scores, and their AUCs go to metrics.json auc_extra — project requirement, for Table 1's "
    "Deep SVDD (pretrain) and CAE + OC-SVM (extra scores) reruns",
    "several seeds of one (model, dataset, class) may train in one process (train.seeds_per_job > "
    "1): each run keeps its own RNG streams and files; stepped in turn the runs are bit-identical "
    "to runs alone, vmapped (the default on GPUs) equal up to float rounding, which Adam can "
    "amplify for parameters whose gradient is exactly zero (convolution biases before BatchNorm); "
    "metrics.json records seeds_in_process and seed_batching — project requirement (speed) and "
    "our choice",
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results; its canonical JSON is hashed (config_hash)."""

    model: str
    dataset: str
    normal_class: int
    seed: int
    latent_dim: int | None = None  # None: the dataset's default (16 MNIST, 32 Fashion-MNIST)
    epochs: int = int(PAPER["epochs"])
    batch_size: int = int(PAPER["batch_size"])
    lr: float = float(PAPER["lr"])
    lr_decay_epoch: int = int(PAPER["lr_decay_epoch"])  # 0: no decay
    lr_decay_factor: float = float(PAPER["lr_decay_factor"])
    eval_every: int = 1  # 0: evaluate the last epoch only
    eval_batch_size: int = 1000
    train_limit: int = 0  # 0: all the normal class's training images
    test_limit: int = 0  # 0: the full test set
    # A variant (``variants:`` in the workflow config): ``model`` is then the variant's name (its
    # runs' folders, tables and figures use it) and ``base_model`` the registered model built
    # with ``model_options``. None / {}: ``model`` itself, as published.
    base_model: str | None = None
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr_steps: tuple[
        tuple[int, float], ...
    ] = ()  # after epoch E set lr to V (schedule.py); () = decay

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

    def identity(self) -> dict[str, Any]:
        """What names this run in its outputs (metrics.json, model.pt): model, a variant's
        registered model and options (only for a variant), dataset, normal class, seed."""
        variant = (
            {"base_model": self.base_model, "model_options": self.model_options}
            if self.base_model
            else {}
        )
        return {
            "model": self.model,
            **variant,
            "dataset": self.dataset,
            "normal_class": self.normal_class,
            "seed": self.seed,
        }

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


#: the protocol fields a command line sets (``grad2vae train --epochs ...``; the workflow's
#: ``train:`` keys), in the order the workflow passes them
PROTOCOL_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "lr_decay_epoch",
    "lr_decay_factor",
    "eval_every",
    "eval_batch_size",
    "train_limit",
    "test_limit",
)


def protocol_defaults() -> dict[str, Any]:
    """Each of ``PROTOCOL_FIELDS`` -> RunConfig's default (the paper's where it says one)."""
    fields = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    return {name: fields[name] for name in PROTOCOL_FIELDS}


def cli_flag(field: str) -> str:
    """The ``grad2vae train`` option of a RunConfig field: lr_decay_epoch -> --lr-decay-epoch."""
    return "--" + field.replace("_", "-")


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
    from grad2vae.data.datasets import DATASETS

    if config.dataset not in DATASETS:
        raise UserError(
            f"unknown dataset {config.dataset!r}; known datasets: {', '.join(DATASETS)}"
        )
    n_classes = len(DATASETS[config.dataset].classes)
    if isinstance(config.normal_class, bool) or not 0 <= int(config.normal_class) < n_classes:
        raise UserError(
            f"normal class {config.normal_class!r} does not exist in {config.dataset}: "
            f"use 0..{n_classes - 1}"
        )
    checks = [
        (
            "latent_dim",
            config.latent_dim is not None and config.latent_dim >= 1,
            "--latent-dim must be >= 1",
        ),
        ("epochs", config.epochs >= 1, "--epochs must be >= 1"),
        ("batch_size", config.batch_size >= 1, "--batch-size must be >= 1"),
        ("lr", config.lr > 0 and math.isfinite(config.lr), "--lr must be a positive number"),
        (
            "lr_decay_epoch",
            config.lr_decay_epoch >= 0,
            "--lr-decay-epoch must be >= 0 (0: no decay)",
        ),
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
            f"variant name {name!r}: use a letter then "
            "letters, digits, '_' or '-' (it names run folders)"
        )


def check_data_present(data_dir: str | os.PathLike, dataset: str) -> Path:
    """UserError naming the missing files and the rule that fetches them; else the folder.

    The same files ``data.load_split`` needs: the four IDX files and the manifest that
    ``grad2vae fetch`` writes once they are verified."""
    from grad2vae.data.datasets import DATASETS, MANIFEST_NAME

    folder = Path(data_dir) / dataset
    needed = [idx_file.name for idx_file in DATASETS[dataset].files.values()] + [MANIFEST_NAME]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"dataset {dataset!r} is missing from {folder} (no {', '.join(missing)}); fetch it "
            f"with `snakemake data` or `grad2vae fetch --data-dir {data_dir}`"
        )
    return folder


#: the options a model's ``protocol_defaults`` may set (RunConfig fields)
SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "lr_decay_epoch", "lr_decay_factor")
