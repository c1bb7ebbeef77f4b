"""Speed benchmark (`grad2vae bench`): the command, which runs the timed sections in order.

It times every model of the grid side by side on one device, Grad2VAE's derivative
implementations against the per-unit loop, our training loop against a DataLoader one, and
estimates the hours of the full 800-run grid on this device; docs/design-notes.md lists what is
measured and how. On the CPU it sets the C allocator as the trainer does
(``GRAD2VAE_MALLOC=default`` measures without it).

Output: a table on stdout and, with --output, a JSON file (written atomically after every
section, ``complete`` false until the end, so a crash keeps what was measured). Ratios within
one run are meaningful; absolute times depend on the load of the machine. --tiny runs the same
code at toy sizes in seconds (CI).

examples:
  grad2vae bench --output results/bench/cpu.json
  grad2vae bench --device cuda --output results/bench/h100.json
  grad2vae bench --tiny --output /tmp/bench.json
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from grad2vae.atomic import write_json
from grad2vae.bench import gpu as bench_gpu
from grad2vae.bench.results import SCHEMA, Sections, dataset_rows, format_report, result_json
from grad2vae.bench.timing import (
    GRID_DATASETS,
    GRID_MODELS,
    REFERENCE_METHOD,
    DatasetTimes,
    Settings,
    StraightforwardDataset,
    check_derivatives,
    prepare_variants,
    time_evaluations,
    time_feeding,
    time_rounds,
    time_seed_groups,
)
from grad2vae.training.devices import deterministic, keep_freed_memory, resolve_device

# SCHEMA is re-exported (tests compare with bench.SCHEMA); time_seed_groups is called by its name
# here, so that a test can replace bench.time_seed_groups to simulate running out of memory
__all__ = ["SCHEMA", "add_arguments", "run", "run_benchmark", "settings_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N"
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes for CI: runs in seconds")
    parser.add_argument("--output", help="write the results as JSON to this file (atomically)")
    parser.add_argument(
        "--models", help=f"comma-separated (default: the grid's {','.join(GRID_MODELS)})"
    )
    parser.add_argument(
        "--methods",
        help="Grad2VAE derivative methods, comma-separated (default: all; loop is always kept)",
    )
    parser.add_argument(
        "--datasets",
        help="comma-separated dataset=latent (default: mnist=16,fashion_mnist=32, the grid's)",
    )
    parser.add_argument("--batch-size", type=int, help="training batch (default 128, the paper's)")
    parser.add_argument("--train-images", type=int, help="images per epoch (default 6000)")
    parser.add_argument(
        "--test-images", type=int, help="test set size the evaluation is scaled to (10000)"
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        help="test images actually scored (default: all; fewer to save time)",
    )
    parser.add_argument("--eval-batch-size", type=int, help="test images per scores() call (1000)")
    parser.add_argument("--repeats", type=int, help="interleaved timing rounds (default 3)")
    parser.add_argument(
        "--steps", type=int, help="training steps per round and variant (default 1)"
    )
    parser.add_argument(
        "--warmup", type=int, help="warm-up steps per variant (default 1, FLOP-counted)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="also time TF32 on against off (CUDA; training keeps TF32 off until its AUC effect "
        "is measured)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile(mode='reduce-overhead') against eager for the small models "
        f"({', '.join(bench_gpu.COMPILE_MODELS)}); compiling takes a minute or more per model",
    )
    parser.add_argument(
        "--seeds-per-process",
        type=int,
        help="seeds stepped together (vmap) against in turn, as `grad2vae train --seed 0 1 ...` "
        "does; 0: skip (default 4; on a GPU try 10, the grid's seeds per class)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    from grad2vae.errors import UserError
    from grad2vae.models import model_names
    from grad2vae.models.grad2vae import DERIVATIVE_METHODS

    settings = Settings.tiny_mode() if args.tiny else Settings()
    settings.tf32 = bool(getattr(args, "tf32", False))
    settings.compile = bool(getattr(args, "compile", False))
    for name in (
        "batch_size",
        "train_images",
        "test_images",
        "eval_images",
        "eval_batch_size",
        "repeats",
        "steps",
        "warmup",
    ):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
            setattr(settings, name, value)
    seeds_per_process = getattr(args, "seeds_per_process", None)
    if seeds_per_process is not None:
        if seeds_per_process < 0 or seeds_per_process == 1:
            raise UserError(
                f"--seeds-per-process must be 0 (skip) or >= 2 (got {seeds_per_process})"
            )
        settings.seeds_per_process = seeds_per_process
    if args.eval_images is None and args.test_images is not None:
        settings.eval_images = settings.test_images
    settings.eval_images = min(settings.eval_images, settings.test_images)
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        unknown = sorted(set(models) - set(model_names()))
        if unknown:
            raise UserError(f"unknown model(s) {unknown}; known: {', '.join(model_names())}")
        settings.models = models
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = sorted(set(methods) - set(DERIVATIVE_METHODS))
        if unknown:
            raise UserError(
                f"unknown derivative method(s) {unknown}; known: {', '.join(DERIVATIVE_METHODS)}"
            )
        settings.methods = (REFERENCE_METHOD,) + tuple(m for m in methods if m != REFERENCE_METHOD)
    if args.datasets:
        datasets = {}
        for item in args.datasets.split(","):
            name, _, latent = item.partition("=")
            try:
                datasets[name.strip()] = int(latent) if latent else GRID_DATASETS[name.strip()]
            except (KeyError, ValueError):
                raise UserError(
                    f"--datasets: {item!r} is not dataset=latent (e.g. mnist=16)"
                ) from None
        settings.datasets = datasets
    return settings


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    device = resolve_device(args.device)

    def on_section(partial: dict) -> None:
        if args.output:  # after every section: an out-of-memory error keeps what was measured
            write_json(args.output, partial)

    with deterministic():  # the numerical settings of `grad2vae train` (no TF32, deterministic)
        result = run_benchmark(device, settings, on_section=on_section)
    print()
    print(format_report(result))
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------------------------
# The sections, in order
def run_benchmark(
    device: torch.device,
    settings: Settings,
    log: Callable[[str], None] = print,
    on_section: Callable[[dict], None] | None = None,
) -> dict:
    """Every section for every dataset; ``on_section`` gets the result so far (``complete``
    False) after each section, so that a crash (out of memory) keeps what was measured."""
    from grad2vae.models.grad2vae import resolve_derivatives

    auto_method = resolve_derivatives(device)
    # as the trainer does on the CPU (GRAD2VAE_MALLOC=default to measure without it)
    malloc = keep_freed_memory() if device.type == "cpu" else None
    gen = torch.Generator().manual_seed(settings.seed)
    images = torch.randint(
        0, 256, (settings.train_images, 28, 28), generator=gen, dtype=torch.uint8
    )
    test_images = torch.randint(
        0, 256, (settings.test_images, 28, 28), generator=gen, dtype=torch.uint8
    )
    train_x = (images.float() / 255).unsqueeze(1).to(device)
    test_x = (test_images.float() / 255).unsqueeze(1).to(device)
    eval_x = test_x[: min(settings.eval_images, settings.test_images)]
    batch = train_x[: settings.batch_size]
    straightforward = StraightforwardDataset(images.numpy())
    matmul_a = torch.randn(settings.matmul_size, settings.matmul_size, device=device)
    sections = Sections()

    def section_done() -> None:
        if on_section is not None:
            on_section(result_json(sections, device, settings, malloc, auto_method, False))

    for dataset, latent_dim in settings.datasets.items():
        log(f"[{dataset}] latent {latent_dim}: preparing {len(settings.models)} models")
        prepared, peaks = prepare_variants(device, settings, dataset, latent_dim, batch, log)
        if peaks:
            sections.peak_memory_bytes[dataset] = peaks
        step_times, matmul_rates = time_rounds(device, settings, prepared, batch, matmul_a, log)
        sections.matmul_rates.extend(matmul_rates)
        feed = time_feeding(train_x, straightforward, settings, device)
        eval_times = time_evaluations(prepared, train_x, eval_x, settings, log)
        section_done()
        if settings.seeds_per_process > 1:
            log(
                f"[{dataset}] {settings.seeds_per_process} seeds in one process: "
                "vmapped against in turn"
            )
            sections.seed_groups[dataset] = time_seed_groups(
                device, settings, dataset, latent_dim, train_x, log
            )
            section_done()
        auto_models = {
            v.label: m for v, m, _, _ in prepared if v.method is None or v.method == auto_method
        }
        if settings.tf32:
            log(f"[{dataset}] TF32 off (as trained) against on")
            sections.tf32[dataset] = bench_gpu.time_tf32(
                auto_models, batch, settings.repeats, settings.steps, log
            )
            section_done()
        if settings.compile:
            log(f"[{dataset}] torch.compile(mode='reduce-overhead') against eager")
            small = {
                label: m for label, m in auto_models.items() if label in settings.compile_models
            }
            sections.compile[dataset] = bench_gpu.time_compile(
                small, batch, settings.repeats, settings.steps, log
            )
            section_done()
        if any(v.method for v, *_ in prepared):
            methods = tuple(v.method for v, *_ in prepared if v.method)
            sections.derivative_checks[dataset] = check_derivatives(
                latent_dim, methods, device, settings.check_images, settings.seed
            )
        times = DatasetTimes(
            dataset,
            latent_dim,
            prepared,
            step_times,
            eval_times,
            len(eval_x),
            feed,
            straightforward.kind,
        )
        matmul_rate = statistics.median(sections.matmul_rates)
        rows, sections.loaders[dataset] = dataset_rows(times, settings, auto_method, matmul_rate)
        sections.rows.extend(rows)
        del prepared, times
        section_done()

    return result_json(sections, device, settings, malloc, auto_method, True)
