"""Speed benchmark: every model of the grid side by side on one device, Grad2VAE's derivative
implementations against the per-unit loop, our training loop against a DataLoader one, and the
estimated hours of the full 800-run grid on this device.

What is measured, per (dataset, model variant), at the paper's settings (batch 128, ~6,000
training images of the normal class, 10,000 test images; synthetic tensors of the same shapes):

- ms per training step (loss + backward + Adam step) and images/s: the median of --repeats
  rounds after --warmup steps; the rounds are interleaved (A, B, C, A, B, C, ...) with a
  matrix-multiply probe, so that other load on the machine hits every variant alike;
- seconds per epoch = ceil(train images / batch) steps + the data feeding of one epoch;
- seconds per evaluation = ``fit_scorer`` on the training images + ``scores`` over the test set
  in chunks of --eval-batch-size (timed on --eval-images test images, scaled to --test-images);
- FLOPs per step (``torch.utils.flop_counter.FlopCounterMode`` over forward + backward; it
  works at the dispatcher, so the double-backward ops of the derivative methods are counted),
  the achieved FLOP/s and its fraction of the measured matmul rate (same device, same rounds);
- for Grad2VAE: every derivative method (loop, vectorized, closed_form, explicit) with the check
  that it agrees with the loop (values, loss and every parameter gradient) and its speed-up;
- the data feeding of our trainer (a device tensor indexed by a seeded randperm) against the
  straightforward one (a map-style dataset that converts each uint8 image on access, as
  torchvision's MNIST + ToTensor does, and a shuffling DataLoader per batch, moved to the
  device), per model as the ratio of whole-epoch times;
- several seeds in one process: one vmapped step of --seeds-per-process models against the
  same models stepped in turn (the two ways ``grad2vae train --seed 0 1 ...`` can step them),
  per model that supports vmap on the device, as the speed-up of the vmapped step;
- peak device memory (``torch.cuda.max_memory_allocated``) of one training step per variant and
  of each seed group's step, vmapped and in turn (CUDA only);
- with --tf32: each model's step with TF32 off (as trained) against on; with --compile: the
  small models' steps eager against ``torch.compile(mode="reduce-overhead")`` (``bench_gpu``);
- the estimated hours of the grid (4 models x 10 classes x 10 seeds x 2 datasets, 100 epochs,
  evaluation every epoch), runs one after another on this device, Grad2VAE with the method that
  "auto" picks on this device.

On the CPU the benchmark sets the C allocator as the trainer does
(``devices.keep_freed_memory``) and records it; ``GRAD2VAE_MALLOC=default`` measures without it.

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
import dataclasses
import datetime
import math
import os
import platform
import statistics
from typing import Any, Callable

import torch

from grad2vae import bench_gpu
from grad2vae.atomic import write_json
from grad2vae.bench_gpu import training_step
from grad2vae.bench_report import format_report, grid_estimate, verdict
from grad2vae.bench_timing import (
    GRID_DATASETS,
    GRID_MODELS,
    REFERENCE_METHOD,
    Settings,
    StraightforwardDataset,
    build_variants,
    check_derivatives,
    count_step_flops,
    feed_ours,
    feed_straightforward,
    time_evaluation,
    time_matmul,
    time_seed_groups,
    time_steps,
)
from grad2vae.devices import (
    deterministic,
    device_name,
    keep_freed_memory,
    resolve_device,
)

SCHEMA = "grad2vae-bench/1"


# --------------------------------------------------------------------------------------------
# The benchmark
def run_benchmark(
    device: torch.device,
    settings: Settings,
    log: Callable[[str], None] = print,
    on_section: Callable[[dict], None] | None = None,
) -> dict:
    """Every section for every dataset; ``on_section`` gets the result so far (``complete``
    False) after each section, so that a crash (out of memory) keeps what was measured."""
    from grad2vae.cohort import AUTO_SEED_BATCHING
    from grad2vae.models.grad2vae import AUTO_DERIVATIVES, resolve_derivatives

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
    steps_per_epoch = math.ceil(settings.train_images / settings.batch_size)
    straightforward = StraightforwardDataset(images.numpy())
    matmul_a = torch.randn(settings.matmul_size, settings.matmul_size, device=device)

    rows: list[dict[str, Any]] = []
    seed_groups: dict[str, dict] = {}
    derivative_checks: dict[str, dict] = {}
    loaders: dict[str, dict] = {}
    matmul_rates: list[float] = []
    peaks: dict[str, dict[str, int | None]] = {}
    tf32_results: dict[str, dict] = {}
    compile_results: dict[str, dict] = {}

    def snapshot(complete: bool) -> dict:
        result = {
            "schema": SCHEMA,
            "complete": complete,
            "date": datetime.date.today().isoformat(),
            "device": device_name(device),
            "device_type": device.type,
            "threads": torch.get_num_threads(),
            "cpu_malloc": malloc,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "settings": dataclasses.asdict(settings),
            "matmul": {
                "size": settings.matmul_size,
                "flops_per_second": statistics.median(matmul_rates) if matmul_rates else None,
                "flops_per_second_all": matmul_rates,
            },
            "rows": rows,
            "peak_memory_bytes": peaks,
            "seed_groups": seed_groups,
            "tf32": tf32_results,
            "compile": compile_results,
            "derivative_checks": derivative_checks,
            "loaders": loaders,
            "auto_method": auto_method,
            "auto_table": dict(AUTO_DERIVATIVES),
        }
        if complete:
            result["verdict"] = verdict(rows, derivative_checks)
            result["grid"] = grid_estimate(
                rows,
                settings,
                auto_method,
                seed_groups,
                AUTO_SEED_BATCHING.get(device.type, "vmap"),
            )
        return result

    def section_done() -> None:
        if on_section is not None:
            on_section(snapshot(complete=False))

    for dataset, latent_dim in settings.datasets.items():
        log(f"[{dataset}] latent {latent_dim}: preparing {len(settings.models)} models")
        prepared = []
        for variant in build_variants(settings, dataset, latent_dim):
            torch.manual_seed(settings.seed)
            model = variant.build().to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            flops = count_step_flops(model, optimizer, batch)  # also the first warm-up step
            for _ in range(settings.warmup - 1):
                training_step(model, optimizer, batch)
            peak = bench_gpu.peak_memory(device, lambda: training_step(model, optimizer, batch))
            peaks.setdefault(dataset, {})[variant.label] = peak
            prepared.append((variant, model, optimizer, flops))
            peak_text = f", peak {peak / 2**30:.2f} GiB" if peak is not None else ""
            log(f"  {variant.label}: {flops / 1e9:.2f} GFLOP per step{peak_text}")
        time_matmul(device, settings.matmul_size, matmul_a)  # warm-up
        step_times: dict[str, list[float]] = {v.label: [] for v, *_ in prepared}
        for round_index in range(settings.repeats):
            matmul_rates.append(time_matmul(device, settings.matmul_size, matmul_a))
            for variant, model, optimizer, _ in prepared:
                step_times[variant.label].append(
                    time_steps(model, optimizer, batch, settings.steps)
                )
            log(
                f"  round {round_index + 1}/{settings.repeats}: "
                + ", ".join(
                    f"{label} {1000 * times[-1]:.0f} ms" for label, times in step_times.items()
                )
            )
        # data feeding, both loaders interleaved
        feed = {"ours": [], "straightforward": []}
        for repeat in range(settings.loader_repeats + 1):
            ours = feed_ours(train_x, settings.batch_size, torch.Generator().manual_seed(repeat))
            plain = feed_straightforward(straightforward, settings.batch_size, device, repeat)
            if repeat:  # the first is a warm-up
                feed["ours"].append(ours)
                feed["straightforward"].append(plain)
        feed_median = {key: statistics.median(values) for key, values in feed.items()}
        # evaluation, once per variant (it is long; its noise is small relative to its length)
        eval_times = {}
        for variant, model, _, _ in prepared:
            t = time_evaluation(model, train_x, eval_x, settings.eval_batch_size, settings.seed)
            eval_times[variant.label] = t
            log(
                f"  {variant.label}: evaluation fit {t['fit_seconds']:.2f} s, scores of {len(eval_x)} "
                f"images {t['scores_seconds']:.2f} s"
            )
        section_done()
        if settings.seeds_per_process > 1:
            log(
                f"[{dataset}] {settings.seeds_per_process} seeds in one process: vmapped against in turn"
            )
            seed_groups[dataset] = time_seed_groups(
                device, settings, dataset, latent_dim, train_x, log
            )
            section_done()
        auto_models = {
            v.label: m for v, m, _, _ in prepared if v.method is None or v.method == auto_method
        }
        if settings.tf32:
            log(f"[{dataset}] TF32 off (as trained) against on")
            tf32_results[dataset] = bench_gpu.time_tf32(
                auto_models, batch, settings.repeats, settings.steps, log
            )
            section_done()
        if settings.compile:
            log(f"[{dataset}] torch.compile(mode='reduce-overhead') against eager")
            small = {
                label: m for label, m in auto_models.items() if label in settings.compile_models
            }
            compile_results[dataset] = bench_gpu.time_compile(
                small, batch, settings.repeats, settings.steps, log
            )
            section_done()
        if any(v.method for v, *_ in prepared):
            methods = tuple(v.method for v, *_ in prepared if v.method)
            derivative_checks[dataset] = check_derivatives(
                latent_dim, methods, device, settings.check_images, settings.seed
            )
        matmul_rate = statistics.median(matmul_rates)
        loop_label = f"grad2vae[{REFERENCE_METHOD}]"
        loop_step = statistics.median(step_times[loop_label]) if loop_label in step_times else None
        loaders[dataset] = {
            "ours_seconds_per_epoch": feed_median["ours"],
            "straightforward_seconds_per_epoch": feed_median["straightforward"],
            "straightforward_kind": straightforward.kind,
            "data_ratio": feed_median["straightforward"] / max(feed_median["ours"], 1e-12),
            "per_model": {},
        }
        for variant, model, _, flops in prepared:
            times = step_times[variant.label]
            step = statistics.median(times)
            epoch = steps_per_epoch * step + feed_median["ours"]
            epoch_plain = steps_per_epoch * step + feed_median["straightforward"]
            evaluation = eval_times[variant.label]
            eval_seconds = evaluation["fit_seconds"] + evaluation["scores_seconds"] * (
                settings.test_images / max(len(eval_x), 1)
            )
            achieved = flops / step
            row = {
                "dataset": dataset,
                "latent_dim": latent_dim,
                "variant": variant.label,
                "model": variant.model_name,
                "derivatives": variant.method,
                "auto": variant.method is None or variant.method == auto_method,
                "ms_per_step": 1000 * step,
                "ms_min": 1000 * min(times),
                "ms_max": 1000 * max(times),
                "images_per_second": settings.batch_size / step,
                "seconds_per_epoch": epoch,
                "seconds_per_eval": eval_seconds,
                "eval_fit_seconds": evaluation["fit_seconds"],
                "eval_scores_seconds_measured": evaluation["scores_seconds"],
                "eval_images_measured": len(eval_x),
                "flops_per_step": flops,
                "achieved_flops_per_second": achieved,
                "fraction_of_matmul_rate": achieved / matmul_rate,
                "speedup_vs_loop": (loop_step / step) if (variant.method and loop_step) else None,
                # the same ratio paired round by round (both timed within seconds of each other),
                # more robust to load that changes between rounds
                "speedup_vs_loop_paired": (
                    statistics.median(a / b for a, b in zip(step_times[loop_label], times))
                    if (variant.method and loop_step)
                    else None
                ),
                "seconds_per_step_rounds": times,
                "flop_ratio_vs_loop": None,
                "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            }
            rows.append(row)
            loaders[dataset]["per_model"][variant.label] = {
                "epoch_seconds_ours": epoch,
                "epoch_seconds_straightforward": epoch_plain,
                "ratio": epoch_plain / epoch,
            }
        loop_row = next(
            (r for r in rows if r["dataset"] == dataset and r["variant"] == loop_label), None
        )
        if loop_row:
            for row in rows:
                if row["dataset"] == dataset and row["derivatives"]:
                    row["flop_ratio_vs_loop"] = loop_row["flops_per_step"] / row["flops_per_step"]
        del prepared
        section_done()

    return snapshot(complete=True)


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
        help="also time TF32 on against off (CUDA; training keeps TF32 off until its AUC effect is measured)",
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
        help="seeds stepped together (vmap) against in turn, as `grad2vae train --seed 0 1 ...` does; "
        "0: skip (default 4; on a GPU try 10, the grid's seeds per class)",
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
