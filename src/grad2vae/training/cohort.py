"""Seeds that train together in one process: the lock-step epoch loop (``train_in_lockstep``),
steps in turn or vmapped, cohorts that fit the device's memory, and the progress bar."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from grad2vae.errors import UserError
from grad2vae.progress import Progress
from grad2vae.training import devices
from grad2vae.training.evaluate import NonFiniteLossError, as_numpy
from grad2vae.training.lifecycle import DeviceSplit, Run, SharedData
from grad2vae.training.run_config import SUBSAMPLE_SEED, RunConfig

log = logging.getLogger(__name__)

#: how ``train_seeds`` steps several seeds in one process (see its docstring)
SEED_BATCHING = ("auto", "vmap", "sequential")


#: what "auto" means per device type, where the model supports vmap: the verdict of `grad2vae
#: bench` (docs/benchmarks.md). CPU: measured, vmapped steps are slower than steps in turn
#: (2 seeds, one thread: Grad2VAE 0.84x, VAE 0.94x, CAE 0.76x, Inception-CAENN 0.68x). CUDA: not
#: measured yet (no GPU was lent); vmap replaces k small kernels by one k-times larger, which is
#: what an idle GPU needs.
AUTO_SEED_BATCHING = {"cpu": "sequential", "cuda": "vmap"}


def _step_sequential(runs: list[Run], indexes: list[Tensor]) -> list[dict[str, Tensor]]:
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


def vmapped_losses(
    models: list[torch.nn.Module], xs: Tensor, noise: Tensor | None
) -> dict[str, Tensor]:
    """``models[j].loss(xs[j], noise[j])`` for every j in one call: the models' parameters stacked
    along a new first dimension (``torch.stack`` keeps the graph, so a backward fills each
    model's own ``.grad``) and the loss vmapped over (parameters, buffers, batch, noise). Every
    term comes back with shape (k,). ``randomness="error"``: any random op inside the loss
    raises (draws belong in ``sample_noise``). Buffers (BatchNorm's running statistics) are
    updated in the stacked copy and written back to each model."""
    template = _LossOf(models[0])
    per_model = [dict(_LossOf(model).named_parameters()) for model in models]
    params = {
        name: torch.stack([parameters[name] for parameters in per_model]) for name in per_model[0]
    }
    per_model_buffers = [dict(_LossOf(model).named_buffers()) for model in models]
    with torch.no_grad():
        buffers = {
            name: torch.stack([b[name] for b in per_model_buffers]) for name in per_model_buffers[0]
        }

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
    terms come back with shape (k,). ``train_seeds`` and ``grad2vae bench`` both step this way."""
    noise = None if noises[0] is None else torch.stack(noises)
    terms = vmapped_losses(models, xs, noise)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    terms["total"].sum().backward()  # each model's parameters get only its own loss's gradient
    for optimizer in optimizers:
        optimizer.step()
    return terms


def _step_vmap(runs: list[Run], indexes: list[Tensor]) -> list[dict[str, Tensor]]:
    """``vmapped_step`` for the runs. Each run draws its noise in its own RNG turn: the draws
    it would make alone."""
    xs = torch.stack([run.shared.train_x[index] for run, index in zip(runs, indexes)])
    noises = []
    for run, x in zip(runs, xs):
        with run.own_rng():
            noises.append(run.model.sample_noise(len(x), like=x))
    terms = vmapped_step([run.model for run in runs], [run.optimizer for run in runs], xs, noises)
    return [{name: value[j] for name, value in terms.items()} for j in range(len(runs))]


def _seed_step(runs: list[Run], seed_batching: str) -> tuple[str | None, Callable]:
    """(the mode recorded in metrics.json, the step function) for these runs."""
    if len(runs) == 1 and runs[0].rng is None:
        return None, _step_sequential
    device = runs[0].device
    supported = runs[0].model.supports_seed_vmap(device)
    if seed_batching == "auto":
        seed_batching = AUTO_SEED_BATCHING.get(device.type, "vmap") if supported else "sequential"
    elif seed_batching == "vmap" and not supported:
        # the workflow's seed_batching applies to every model; those without vmap step in turn
        log.warning(
            "%s cannot vmap its loss on %s: its seeds step in turn",
            runs[0].config.model,
            device.type,
        )
        seed_batching = "sequential"
    return seed_batching, _step_vmap if seed_batching == "vmap" else _step_sequential


def train_in_lockstep(
    configs: list[RunConfig],
    out_dirs: list[Path],
    data_dir: str | os.PathLike,
    device: torch.device,
    *,
    checkpoint_every: int,
    threads: int | None,
    progress: bool | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    seed_batching: str,
    group_size: int,
    derivatives: str | None,
) -> list[dict[str, Any]]:
    """Train the runs of ``configs`` (one model, dataset and class; they differ only in their
    seed) together in this process and return each one's metrics (``lifecycle.Run.finish``).

    How an epoch flows: the split is loaded once (``SharedData``); each ``lifecycle.Run`` sets
    itself up (model from its seed, optimizer, schedule, resume from its checkpoint). The runs
    step in cohorts of equal start epoch that fit the device (``memory_cohorts``): per epoch,
    ``Run.begin_epoch``, then per batch one step of every run (vmapped or in turn, by
    ``seed_batching``: ``_seed_step``) and ``Run.record``, then ``Run.end_epoch`` (non-finite
    check, ``evaluate`` when due, history, checkpoint). Last, ``Run.finish`` writes the run's
    files (``outputs``, ``metrics_file``). A run whose loss turns non-finite stops alone when it
    shares the process; the first such error is raised once the others have finished.
    ``group_size``: the seeds of the job (recorded as ``seeds_in_process``)."""
    from grad2vae.data import datasets as data

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
    labels = as_numpy(split.test_labels).astype(np.int64)
    if len(split.train_x) == 0:
        raise UserError(f"no training images of class {config.normal_class} in {config.dataset}")
    if labels.min() == labels.max():
        raise UserError(
            f"the test set ({len(labels)} images) holds only "
            f"{'anomalies' if labels[0] else 'normal images'}; AUC "
            "needs both: raise --test-limit (0 = full test set)"
        )
    train_x = split.train_x.to(device)
    shared = SharedData(
        split=split,
        labels=labels,
        train_x=train_x,
        eval_split=DeviceSplit(train_x=train_x, test_x=split.test_x.to(device)),
    )
    shares_process = len(configs) > 1
    runs = [
        Run(
            config,
            Path(out_dir),
            shared,
            device,
            checkpoint_every=checkpoint_every,
            on_epoch=on_epoch,
            shares_process=shares_process,
            derivatives=derivatives,
            progress=progress,
        )
        for config, out_dir in zip(configs, out_dirs)
    ]
    n_train = len(train_x)
    batches = math.ceil(n_train / config.batch_size)
    log.info(
        "%s %s class %d seed %s on %s: %d training images "
        "(%d batches of %d), %d test images, %d epochs",
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
    bar = Progress(progress)
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
            execution = {"cpu_malloc": malloc, "seeds_in_process": group_size,
                         "seed_batching": modes.get(id(run)),
                         "mig_instance": devices.mig_instance()}  # fmt: skip
            with run.own_rng():
                metrics.append(run.finish(setup_seconds, execution))
    failures = [run.failure for run in runs if run.failure is not None]
    if failures:
        raise failures[0]
    return metrics


def memory_cohorts(
    runs: list["Run"], device: torch.device, batch_size: int, train_x: Tensor
) -> list[list["Run"]]:
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
                    "%d seeds need about %.1f GiB on %s to step together (%.1f "
                    "MiB per image and seed, %d images a step), more than fits: "
                    "training them in sub-cohorts of %d, one after another",
                    len(cohort), len(cohort) * devices.per_step_bytes(memory, batch_size) / 2**30,
                    device, memory["per_image"] / 2**20, batch_size, size,
                )  # fmt: skip
        cohorts += [cohort[i : i + size] for i in range(0, len(cohort), size)]
    return cohorts
