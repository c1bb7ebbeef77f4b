"""Train and evaluate one run: one model on one dataset's normal class with one seed.

Writes into --out-dir (see CONTRIBUTING.md):
  metrics.json     written last, only when the run finished (its presence means "done")
  history.tsv      one row per epoch: lr, seconds, every loss term, test AUC every --eval-every
  scores.csv.gz    index, test_class, label, score_main, score_reconstruction per test image
  model.pt         final weights (grad2vae.training.lifecycle.load_trained_model)
  checkpoint.pt    every --checkpoint-every epochs while running; at the end the final weights,
                   kept until `grad2vae aggregate` reads the run (or this command runs again)
Started again, a finished run does nothing and a killed run continues from its last checkpoint;
a finished run whose outputs were deleted (Snakemake after Ctrl-C) is only evaluated again.
Several seeds train in one process (``train_seeds``), each into its own folder.
docs/design-notes.md gives the protocol (the paper's, every value an option) and the guarantees.

examples:
  grad2vae train --model grad2vae --dataset mnist --normal-class 0 --seed 0 \\
                 --data-dir data --out-dir results/runs/mnist/grad2vae/class0/seed0
  grad2vae train --model grad2vae --dataset mnist --normal-class 0 --seed 0 1 2 3 4 \\
                 --data-dir data --out-dir 'results/runs/mnist/grad2vae/class0/seed{seed}'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from grad2vae import atomic
from grad2vae.errors import UserError
from grad2vae.training import devices
from grad2vae.training.cohort import SEED_BATCHING, train_in_lockstep
from grad2vae.training.lifecycle import RunLock, finished_metrics
from grad2vae.training.run_config import (
    DEFAULT_LATENT_DIM,
    PROTOCOL_FIELDS,
    SCHEDULE_FIELDS,
    RunConfig,
    check_data_present,
    cli_flag,
    protocol_defaults,
    validate_config,
)

log = logging.getLogger(__name__)


def train_one(config: RunConfig, out_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Train and evaluate one run into ``out_dir``; return its metrics (see CONTRIBUTING.md).

    A finished run of the same configuration returns its metrics without doing anything; an
    unfinished one continues from its checkpoint. ``options`` are ``train_seeds``' keywords:
    ``data_dir``, ``device`` (a torch.device or a --device string: auto | cpu | cuda | cuda:N,
    resolved with GPU slots), ``checkpoint_every``, ``threads``, ``gpu_slots``, ``slot_dir``,
    ``slot_timeout``, ``progress`` (show the bar; default: when stderr is a terminal) and
    ``on_epoch`` (called with each history row)."""
    return train_seeds([config], [out_dir], **options)[0]


def train_seeds(
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
    its own out dir exactly as ``train_one`` would (same files, checkpoints, resume); return
    their metrics in order. Why: the grid's models are small, so one run leaves most of a GPU
    idle; k seeds of one (model, dataset, class) share the data on the device and the process.

    Every run keeps its own RNG streams (initialisation, batch order, training noise, evaluation),
    so each ends with the results of a separate run: exactly with ``seed_batching="sequential"``
    (each run's step in turn), up to float rounding with ``"vmap"``: one step for all seeds,
    ``torch.func.vmap`` over their stacked parameters (``torch.func.stack_module_state``'s
    layout), which turns k small kernels into one batched kernel. ``"auto"`` = vmap where the
    model says its loss supports it on the device (``AnomalyModel.supports_seed_vmap``), else
    sequential, per device type as ``cohort.AUTO_SEED_BATCHING`` says. Time in each run's metrics
    and history is its share (the group's training time / its number of seeds, plus its own
    evaluations), so that times summed over runs are device time. A run whose loss turns
    non-finite leaves the group (checkpoint kept, as alone); the others finish, then the first
    such error is raised. Runs of the group that are finished
    are skipped; unfinished ones that resume from different epochs train in turn, each cohort
    of equal epochs in lock-step. ``derivatives``: Grad2VAE's second-derivative implementation
    (``create_model``; other models ignore it), like ``device`` not part of the config hash."""
    if not configs or len(configs) != len(out_dirs):
        raise UserError(
            "train_seeds needs one out dir per configuration "
            f"(got {len(configs)} and {len(out_dirs)})"
        )
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
    # before Path(): Path("") is the current folder
    out_dirs = [atomic.check_folder_path(out_dir, "--out-dir") for out_dir in out_dirs]
    if len({out_dir.resolve() for out_dir in out_dirs}) < len(out_dirs):
        raise UserError("two runs share an out dir: give --out-dir a {seed} placeholder")
    results: list[dict[str, Any] | None] = [
        finished_metrics(out_dir, config) for config, out_dir in zip(configs, out_dirs)
    ]
    for out_dir, done in zip(out_dirs, results):
        if done is not None:
            from grad2vae.analysis.collect import release_final_checkpoint

            release_final_checkpoint(out_dir)  # its outputs are all there
            log.info(
                "%s: run already finished (auc %.4f); nothing to do",
                out_dir,
                done.get("auc", float("nan")),
            )
    with contextlib.ExitStack() as locks:
        pending = [i for i, done in enumerate(results) if done is None]
        for i in pending:
            locks.enter_context(RunLock(out_dirs[i]))
        for i in pending:
            # Re-check under the lock: another process may have finished it meanwhile.
            results[i] = finished_metrics(out_dirs[i], configs[i])
        pending = [i for i in pending if results[i] is None]
        if pending:
            for i in pending:
                # under the run lock every temporary file is one a killed process left
                for stray in out_dirs[i].glob(f"{atomic.TEMPORARY_PREFIX}*"):
                    stray.unlink(missing_ok=True)
            if not isinstance(device, torch.device):
                device = devices.resolve_device(
                    str(device), gpu_slots=gpu_slots, slot_dir=slot_dir, slot_timeout=slot_timeout,
                    jobs_per_gpu=jobs_per_gpu,
                )  # fmt: skip
            with devices.deterministic():
                trained = train_in_lockstep(
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


#: what each protocol option of ``run_config.PROTOCOL_FIELDS`` sets
PROTOCOL_HELP = {
    "epochs": "training epochs",
    "batch_size": "training batch size",
    "lr": "Adam learning rate",
    "lr_decay_epoch": "multiply the learning rate by --lr-decay-factor after this epoch; 0: never",
    "lr_decay_factor": "the factor of --lr-decay-epoch",
    "eval_every": "test AUC every N epochs; the last epoch is always evaluated; 0: last only",
    "eval_batch_size": "test images per scoring batch",
    "train_limit": "use at most N training images; 0: all",
    "test_limit": "use at most N test images; 0: all",
}


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
        help="a constructor option of the variant, e.g. "
        "kl=mean (repeat for several; needs --base-model)",
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
        "--data-dir",
        required=True,
        help="folder of `grad2vae fetch` (holds mnist/, fashion_mnist/)",
    )
    run_group.add_argument(
        "--out-dir",
        required=True,
        help="the run's folder (created); {seed} is replaced by the seed",
    )

    default = protocol_defaults()
    latent = ", ".join(f"{n} {d}" for d, n in DEFAULT_LATENT_DIM.items())
    protocol = parser.add_argument_group(
        "protocol (defaults: the paper's, Sect. 4; for the five schedule options, a model whose "
        "source trains otherwise uses its own defaults instead: "
        + "; ".join(
            f"{name} {', '.join(f'{k} {v}' for k, v in own.items())}"
            for name, own in _model_protocol_defaults().items()
        )
        + ")"
    )
    protocol.add_argument(
        "--latent-dim", type=int, default=None, help=f"bottleneck size (default: {latent})"
    )
    # the schedule's options default to None: the model's protocol_defaults, else RunConfig's
    # (schedule_from_args); the others to RunConfig's
    for field in PROTOCOL_FIELDS:
        value = default[field]
        protocol.add_argument(
            cli_flag(field),
            type=type(value),
            default=None if field in SCHEDULE_FIELDS else value,
            help=f"{PROTOCOL_HELP[field]} (default: {value:g})",
        )
    protocol.add_argument(
        "--lr-steps",
        nargs="+",
        default=None,
        metavar="EPOCH:LR",
        help="after each EPOCH set the learning rate to LR (absolute), e.g. 250:1e-5; replaces the "
        "decay, so give --lr-decay-epoch 0 with it (default: none)",
    )

    execution = parser.add_argument_group("execution (not part of the configuration hash)")
    execution.add_argument(
        "--checkpoint-every",
        type=int,
        default=5,
        help="checkpoint every N epochs; 0: never (default: 5)",
    )
    execution.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N (default: auto = CUDA if present)",
    )
    execution.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="GPU slots shared by jobs side by side (default: "
        "the visible device count x --jobs-per-gpu)",
    )
    execution.add_argument(
        "--jobs-per-gpu",
        type=int,
        default=1,
        help="jobs that may share one GPU (default 1: a "
        "job waits for a free card rather than share one)",
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
    execution.add_argument(
        "--no-progress", action="store_true", help="no progress bar even on a terminal"
    )
    execution.add_argument(
        "--derivatives",
        default="auto",
        help="Grad2VAE's second-derivative implementation: auto (per "
        "device, see `grad2vae bench`), loop, vectorized, closed_form "
        "or explicit; equal results up to rounding (default: auto)",
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


def _registered_models() -> list[str]:
    from grad2vae.models import model_names

    return model_names()


def _model_protocol_defaults() -> dict[str, dict[str, Any]]:
    """Each registered model with schedule defaults of its own (its ``protocol_defaults``)."""
    from grad2vae.models import MODELS, model_names

    return {
        name: MODELS[name].protocol_defaults
        for name in model_names()
        if MODELS[name].protocol_defaults
    }


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
            "--option needs --base-model: a model with options is a variant, "
            "so --model names the variant and --base-model the registered "
            "model, e.g. --model vae_kl_mean --base-model vae --option kl=mean"
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
        raise UserError(
            f"--derivatives {derivatives!r}: use auto or one of {', '.join(DERIVATIVE_METHODS)}"
        )
    seeds = list(args.seed)
    if len(seeds) > 1 and "{seed}" not in args.out_dir:
        raise UserError(
            f"--out-dir {args.out_dir!r}: with several seeds it needs a {{seed}} placeholder, "
            "e.g. results/runs/mnist/vae/class0/seed{seed}"
        )
    configs = [config_from_args(args, seed) for seed in seeds]
    out_dirs = [args.out_dir.replace("{seed}", str(seed)) for seed in seeds]
    results = train_seeds(
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
