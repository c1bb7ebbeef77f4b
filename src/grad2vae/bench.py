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
import time
from typing import Any, Callable

import numpy as np
import torch

from grad2vae import bench_gpu
from grad2vae.atomic import write_json
from grad2vae.bench_gpu import synchronize, training_step
from grad2vae.devices import deterministic, device_name, keep_freed_memory, resolve_device

SCHEMA = "grad2vae-bench/1"
#: the four models of the paper's grid (config.yaml ``models``)
GRID_MODELS = ("grad2vae", "vae", "cae", "inception_caenn")
#: latent size per dataset (paper Sect. 4.2), as grad2vae.train.DEFAULT_LATENT_DIM
GRID_DATASETS = {"mnist": 16, "fashion_mnist": 32}
GRID = {"classes": 10, "seeds": 10, "epochs": 100, "eval_every": 1}
#: the derivative method every other one is compared with
REFERENCE_METHOD = "loop"


@dataclasses.dataclass
class Settings:
    batch_size: int = 128
    train_images: int = 6000
    test_images: int = 10000
    eval_images: int = 10000
    eval_batch_size: int = 1000
    datasets: dict[str, int] = dataclasses.field(default_factory=lambda: dict(GRID_DATASETS))
    models: tuple[str, ...] = GRID_MODELS
    methods: tuple[str, ...] = ("loop", "vectorized", "closed_form", "explicit")
    warmup: int = 1
    repeats: int = 3
    steps: int = 1
    loader_repeats: int = 3
    check_images: int = 4
    matmul_size: int = 2048
    seeds_per_process: int = 4  # 0: skip the several-seeds-per-process comparison
    seed: int = 0
    tiny: bool = False
    tf32: bool = False  # time TF32 on against off (CUDA only; training keeps it off)
    compile: bool = False  # time torch.compile(mode="reduce-overhead") against eager
    compile_models: tuple[str, ...] = bench_gpu.COMPILE_MODELS

    @classmethod
    def tiny_mode(cls) -> "Settings":
        return cls(
            batch_size=4,
            train_images=8,
            test_images=8,
            eval_images=8,
            eval_batch_size=8,
            datasets={"mnist": 2},
            warmup=1,
            repeats=1,
            steps=1,
            loader_repeats=1,
            check_images=2,
            matmul_size=128,
            seeds_per_process=2,
            tiny=True,
        )


@dataclasses.dataclass
class Variant:
    label: str
    model_name: str
    method: str | None  # Grad2VAE's derivative method, else None
    build: Callable[[], torch.nn.Module]


def build_variants(settings: Settings, dataset: str, latent_dim: int) -> list[Variant]:
    from grad2vae.models import create_model
    from grad2vae.models.grad2vae import Grad2VAE

    chosen = []
    for name in settings.models:
        if name == "grad2vae":
            for method in settings.methods:
                chosen.append(
                    Variant(
                        f"grad2vae[{method}]",
                        name,
                        method,
                        lambda m=method: Grad2VAE(latent_dim, derivatives=m),
                    )
                )
        else:
            chosen.append(
                Variant(name, name, None, lambda n=name: create_model(n, latent_dim, dataset=dataset))
            )
    return chosen


# --------------------------------------------------------------------------------------------
# Pieces that are timed


def time_steps(model, optimizer, batch: torch.Tensor, steps: int) -> float:
    """Seconds per optimisation step, averaged over ``steps`` steps."""
    synchronize(batch.device)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(model, optimizer, batch)
    synchronize(batch.device)
    return (time.perf_counter() - start) / steps


def time_seed_groups(
    device: torch.device, settings: Settings, dataset: str, latent_dim: int, train_x: torch.Tensor,
    log: Callable[[str], None],
) -> dict[str, dict]:
    """Several seeds in one process: one vmapped step of k models (``train.vmapped_step``, what
    ``train_runs`` does with seed_batching vmap) against the same k models stepped one after
    another, per model that supports it on this device, in interleaved rounds. Returns per model
    the seconds per step of all k seeds both ways and the speed-up (in turn / vmapped)."""
    from grad2vae.models import create_model
    from grad2vae.train import vmapped_step

    seeds = settings.seeds_per_process
    generator = torch.Generator().manual_seed(settings.seed)
    index = torch.randint(0, len(train_x), (seeds, settings.batch_size), generator=generator)
    xs = train_x[index.to(train_x.device)]  # (seeds, batch, 1, 28, 28): each seed its own batch
    results = {}
    for name in settings.models:
        models = []
        for seed in range(seeds):
            torch.manual_seed(settings.seed + seed)
            models.append(create_model(name, latent_dim, dataset=dataset).to(device).train())
        if not models[0].supports_seed_vmap(device):
            log(f"  {name}: no vmapped seeds on {device.type} (its loss does not support vmap)")
            continue
        optimizers = [torch.optim.Adam(model.parameters(), lr=1e-3) for model in models]
        label = name if getattr(models[0], "derivatives", None) is None else f"{name}[{resolve(models[0], device)}]"

        def in_turn():
            for model, optimizer, x in zip(models, optimizers, xs):
                training_step(model, optimizer, x)

        def together():
            noises = [model.sample_noise(len(x), like=x) for model, x in zip(models, xs)]
            vmapped_step(models, optimizers, xs, noises)

        times: dict[str, list[float]] = {"in_turn": [], "vmap": []}
        for round_index in range(settings.repeats + 1):  # round 0 is the warm-up
            for key, step in (("in_turn", in_turn), ("vmap", together)):
                synchronize(device)
                start = time.perf_counter()
                for _ in range(settings.steps):
                    step()
                synchronize(device)
                if round_index:
                    times[key].append((time.perf_counter() - start) / settings.steps)
        in_turn_s, vmap_s = statistics.median(times["in_turn"]), statistics.median(times["vmap"])
        results[label] = {
            "seeds": seeds,
            "peak_memory_bytes_in_turn": bench_gpu.peak_memory(device, in_turn),
            "peak_memory_bytes_vmap": bench_gpu.peak_memory(device, together),
            "seconds_per_step_in_turn": in_turn_s,
            "seconds_per_step_vmap": vmap_s,
            "speedup": in_turn_s / vmap_s,
            "speedup_paired": statistics.median(a / b for a, b in zip(times["in_turn"], times["vmap"])),
            "rounds": times,
        }
        log(f"  {label}: {seeds} seeds, in turn {1000 * in_turn_s:.0f} ms, vmapped {1000 * vmap_s:.0f} ms per step")
        del models, optimizers
    return results


def resolve(model, device: torch.device) -> str:
    """Grad2VAE's derivative method on ``device`` (what "auto" picks unless set)."""
    from grad2vae.models.grad2vae import resolve_derivatives

    return resolve_derivatives(device, model.derivatives)


def count_step_flops(model, optimizer, batch: torch.Tensor) -> int:
    """FLOPs of one training step (forward + backward, including every double-backward op)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        training_step(model, optimizer, batch)
    synchronize(batch.device)
    return int(counter.get_total_flops())


def time_matmul(device: torch.device, n: int, a: torch.Tensor | None = None) -> float:
    """FLOP/s of one n x n float32 matrix product (the device's dense rate under current load)."""
    if a is None:
        a = torch.randn(n, n, device=device)
    synchronize(device)
    start = time.perf_counter()
    reps = 3
    for _ in range(reps):
        torch.mm(a, a)
    synchronize(device)
    return reps * 2 * n**3 / (time.perf_counter() - start)


def time_evaluation(model, train_x: torch.Tensor, test_x: torch.Tensor, batch_size: int, seed: int) -> dict:
    """Seconds of ``fit_scorer`` (training images) and of ``scores`` (``test_x``), as the
    trainer's ``evaluate`` runs them (eval mode, no_grad fit, enable_grad scores)."""
    device = train_x.device
    model.eval()
    try:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.fit_scorer(train_x)
        synchronize(device)
        fit = time.perf_counter() - start
        generator = torch.Generator(device).manual_seed(seed)
        start = time.perf_counter()
        for first in range(0, len(test_x), batch_size):
            with torch.enable_grad():
                scores = model.scores(test_x[first : first + batch_size], generator)
            for value in scores.values():
                value.detach().cpu()
        synchronize(device)
        return {"fit_seconds": fit, "scores_seconds": time.perf_counter() - start}
    finally:
        model.train()


class StraightforwardDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.MNIST(transform=ToTensor())`` does per item: one uint8 image
    -> float tensor (1, 28, 28) in [0, 1] on every access (via PIL when torchvision is there)."""

    def __init__(self, images_uint8: np.ndarray):
        self.images = images_uint8
        try:
            from PIL import Image
            from torchvision.transforms import ToTensor

            self._to_tensor = lambda array: ToTensor()(Image.fromarray(array, mode="L"))
            self.kind = "torchvision ToTensor on PIL images"
        except ImportError:
            self._to_tensor = lambda array: torch.from_numpy(array).float().div_(255).unsqueeze(0)
            self.kind = "per-item uint8 -> float / 255 (torchvision not installed; same work as ToTensor)"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._to_tensor(self.images[index])


def feed_ours(train_x: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
    """Seconds to produce every batch of one epoch as ``train._train`` does."""
    device = train_x.device
    synchronize(device)
    start = time.perf_counter()
    permutation = torch.randperm(len(train_x), generator=generator).to(device)
    total = torch.zeros((), device=device)
    for first in range(0, len(train_x), batch_size):
        batch = train_x[permutation[first : first + batch_size]]
        total = total + batch[0, 0, 0, 0]  # touch it, as the model would
    synchronize(device)
    return time.perf_counter() - start


def feed_straightforward(
    dataset: StraightforwardDataset, batch_size: int, device: torch.device, seed: int
) -> float:
    """Seconds to produce every batch of one epoch with a shuffling DataLoader, moved to device."""
    synchronize(device)
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    total = torch.zeros((), device=device)
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        total = total + batch[0, 0, 0, 0]
    synchronize(device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Agreement of the derivative methods


def check_derivatives(
    latent_dim: int, methods: tuple[str, ...], device: torch.device, n: int, seed: int
) -> dict:
    """Each method against the loop on the same weights and noise (float32, ``n`` images): max
    relative difference of the second derivatives, of the loss and of every parameter gradient."""
    from grad2vae.models.grad2vae import Grad2VAE

    torch.manual_seed(seed)
    reference = Grad2VAE(latent_dim, derivatives=REFERENCE_METHOD).to(device)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, 28, 28, generator=generator).to(device)
    eps = torch.randn(n, latent_dim, generator=generator).to(device)

    def run(method: str):
        model = Grad2VAE(latent_dim, derivatives=method).to(device)
        model.load_state_dict(state)
        out = model(x, eps)
        from grad2vae.models.vae import bce_per_sample, kl_per_sample

        loss = (
            bce_per_sample(out["logits"], x).mean()
            + kl_per_sample(out["mu"], out["logvar"]).mean()
            + bce_per_sample(out["attention_logits"], x).mean()
        )
        loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        return out["second_derivatives"].detach(), loss.detach(), grads

    h_ref, loss_ref, grads_ref = run(REFERENCE_METHOD)

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    result = {}
    for method in methods:
        h, loss, grads = run(method)
        entry = {
            "second_derivatives_rel": rel(h, h_ref),
            "loss_rel": rel(loss, loss_ref),
            "gradient_rel_max": max(rel(g, r) for g, r in zip(grads, grads_ref)),
        }
        entry["agrees"] = all(value <= 1e-4 for value in entry.values())
        result[method] = entry
    return result


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
    from grad2vae.models.grad2vae import AUTO_DERIVATIVES, resolve_derivatives
    from grad2vae.train import AUTO_SEED_BATCHING

    auto_method = resolve_derivatives(device)
    # as the trainer does on the CPU (GRAD2VAE_MALLOC=default to measure without it)
    malloc = keep_freed_memory() if device.type == "cpu" else None
    gen = torch.Generator().manual_seed(settings.seed)
    images = torch.randint(0, 256, (settings.train_images, 28, 28), generator=gen, dtype=torch.uint8)
    test_images = torch.randint(0, 256, (settings.test_images, 28, 28), generator=gen, dtype=torch.uint8)
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
            result["verdict"] = _verdict(rows, derivative_checks)
            result["grid"] = grid_estimate(
                rows, settings, auto_method, seed_groups, AUTO_SEED_BATCHING.get(device.type, "vmap")
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
                step_times[variant.label].append(time_steps(model, optimizer, batch, settings.steps))
            log(
                f"  round {round_index + 1}/{settings.repeats}: "
                + ", ".join(f"{label} {1000 * times[-1]:.0f} ms" for label, times in step_times.items())
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
            log(f"[{dataset}] {settings.seeds_per_process} seeds in one process: vmapped against in turn")
            seed_groups[dataset] = time_seed_groups(device, settings, dataset, latent_dim, train_x, log)
            section_done()
        auto_models = {v.label: m for v, m, _, _ in prepared if v.method is None or v.method == auto_method}
        if settings.tf32:
            log(f"[{dataset}] TF32 off (as trained) against on")
            tf32_results[dataset] = bench_gpu.time_tf32(auto_models, batch, settings.repeats, settings.steps, log)
            section_done()
        if settings.compile:
            log(f"[{dataset}] torch.compile(mode='reduce-overhead') against eager")
            small = {label: m for label, m in auto_models.items() if label in settings.compile_models}
            compile_results[dataset] = bench_gpu.time_compile(small, batch, settings.repeats, settings.steps, log)
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
        loop_row = next((r for r in rows if r["dataset"] == dataset and r["variant"] == loop_label), None)
        if loop_row:
            for row in rows:
                if row["dataset"] == dataset and row["derivatives"]:
                    row["flop_ratio_vs_loop"] = loop_row["flops_per_step"] / row["flops_per_step"]
        del prepared
        section_done()

    return snapshot(complete=True)


def _verdict(rows: list[dict], checks: dict) -> dict:
    """The fastest derivative method that agrees with the loop, per dataset and overall."""
    per_dataset = {}
    for dataset, results in checks.items():
        candidates = [
            r
            for r in rows
            if r["dataset"] == dataset and r["derivatives"] and results[r["derivatives"]]["agrees"]
        ]
        if candidates:
            per_dataset[dataset] = min(candidates, key=lambda r: r["ms_per_step"])["derivatives"]
    choices = set(per_dataset.values())
    return {"per_dataset": per_dataset, "method": choices.pop() if len(choices) == 1 else None}


def grid_estimate(
    rows: list[dict],
    settings: Settings,
    auto_method: str,
    seed_groups: dict[str, dict] | None = None,
    seed_batching: str = "sequential",
) -> dict:
    """Hours of the 800-run grid on this device, runs one after another: per dataset and model,
    classes x seeds runs of epochs x (seconds per epoch + seconds per evaluation). Grad2VAE with
    the auto method (the fastest measured one if auto's was not measured) and, for comparison,
    with the loop. Only the datasets and models that were measured.

    ``hours_seeds_per_job``: the same grid with ``train.seeds_per_job`` = the measured seeds per
    process and ``seed_batching`` (what "auto" picks on this device): where that is vmap, each
    model's training steps take 1 / its measured speed-up (``seed_groups``); evaluation and data
    feeding are unchanged (they run per seed). None when no seed groups were measured."""
    runs_per_cell = GRID["classes"] * GRID["seeds"]
    evals = GRID["epochs"] // GRID["eval_every"]
    steps_per_epoch = math.ceil(settings.train_images / settings.batch_size)

    def hours(row: dict, speedup: float = 1.0) -> float:
        step_seconds = steps_per_epoch * row["ms_per_step"] / 1000
        epoch = row["seconds_per_epoch"] - step_seconds + step_seconds / speedup
        seconds = GRID["epochs"] * epoch + evals * row["seconds_per_eval"]
        return runs_per_cell * seconds / 3600

    def seed_group_speedup(row: dict) -> float:
        if seed_batching != "vmap":
            return 1.0
        group = (seed_groups or {}).get(row["dataset"], {}).get(row.get("variant", row["model"]))
        return group["speedup"] if group else 1.0

    per_model: dict[str, float] = {}
    grouped_hours = 0.0
    loop_hours = 0.0
    used: dict[str, str] = {}
    covered = set()
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        here = [row for row in rows if row["dataset"] == dataset]
        grad2vae_rows = [row for row in here if row["derivatives"]]
        if grad2vae_rows:
            chosen = next((r for r in grad2vae_rows if r["derivatives"] == auto_method), None)
            chosen = chosen or min(grad2vae_rows, key=lambda r: r["ms_per_step"])
            used[dataset] = chosen["derivatives"]
            loop = next((r for r in grad2vae_rows if r["derivatives"] == REFERENCE_METHOD), None)
            loop_hours += hours(loop) if loop else math.nan
        for row in here:
            if row["derivatives"] and row["derivatives"] != used.get(dataset):
                continue
            per_model[row["model"]] = per_model.get(row["model"], 0.0) + hours(row)
            grouped_hours += hours(row, seed_group_speedup(row))
            covered.add((row["dataset"], row["model"]))
    total = sum(per_model.values())
    datasets = sorted({d for d, _ in covered})
    models = sorted({m for _, m in covered})
    with_loop = total - per_model.get("grad2vae", 0.0) + loop_hours if used else None
    return {
        "runs": len(datasets) * len(models) * runs_per_cell,
        "datasets": datasets,
        "models": models,
        "epochs": GRID["epochs"],
        "evaluations_per_run": evals,
        "grad2vae_method": used,
        "hours_per_model": per_model,
        "hours": total,
        "hours_with_grad2vae_loop": with_loop if with_loop is None or math.isfinite(with_loop) else None,
        "hours_seeds_per_job": grouped_hours if seed_groups else None,
        "seeds_per_job": settings.seeds_per_process if seed_groups else None,
        "seed_batching": seed_batching,
        "note": "one run at a time on this device; synthetic data of the paper's sizes; the "
        "full grid is 4 models x 10 classes x 10 seeds x 2 datasets = 800 runs",
    }


# --------------------------------------------------------------------------------------------
# Output


def format_report(result: dict) -> str:
    gf = 1e9
    lines = [
        f"grad2vae bench {result['date']} on {result['device']} ({result['device_type']}, "
        f"{result['threads']} threads), torch {result['torch']}"
        + (f", CPU malloc {result['cpu_malloc']}" if result.get("cpu_malloc") else "")
        + (" [TINY MODE: toy sizes, numbers meaningless]" if result["settings"]["tiny"] else ""),
        f"matmul {result['matmul']['size']}^2 float32: {result['matmul']['flops_per_second'] / gf:.1f} GFLOP/s "
        f"(median of the rounds)",
        "",
        f"{'dataset':<14}{'variant':<24}{'ms/step':>10}{'img/s':>8}{'s/epoch':>9}{'s/eval':>9}"
        f"{'GFLOP':>9}{'GFLOP/s':>9}{'%mm':>6}{'xloop':>7}{'paired':>7}{'flop/':>7}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['dataset']:<14}{r['variant'] + (' *' if r['derivatives'] and r['auto'] else ''):<24}"
            f"{r['ms_per_step']:>10.1f}{r['images_per_second']:>8.0f}{r['seconds_per_epoch']:>9.1f}"
            f"{r['seconds_per_eval']:>9.1f}{r['flops_per_step'] / gf:>9.2f}"
            f"{r['achieved_flops_per_second'] / gf:>9.1f}{100 * r['fraction_of_matmul_rate']:>6.0f}"
            + (
                f"{r['speedup_vs_loop']:>7.2f}{r['speedup_vs_loop_paired']:>7.2f}{r['flop_ratio_vs_loop']:>7.2f}"
                if r["speedup_vs_loop"]
                else ""
            )
        )
    lines.append(
        "(* = the method 'auto' picks on this device; xloop = speed-up over the loop (ratio of medians), "
        "paired = median of the per-round ratios; "
        "flop/ = loop FLOPs / its FLOPs)"
    )
    for dataset, groups in result.get("seed_groups", {}).items():
        lines.append("")
        lines.append(f"{dataset}: several seeds in one process, seconds per step of all seeds (vmap vs in turn)")
        for label, g in groups.items():
            lines.append(
                f"  {label:<22} {g['seeds']} seeds: in turn {g['seconds_per_step_in_turn']:.3f} s, "
                f"vmapped {g['seconds_per_step_vmap']:.3f} s, speed-up {g['speedup']:.2f}x "
                f"(paired {g['speedup_paired']:.2f}x)"
            )
    for dataset, checks in result["derivative_checks"].items():
        lines.append("")
        lines.append(f"{dataset}: derivative methods against the loop (max relative difference)")
        for method, c in checks.items():
            lines.append(
                f"  {method:<12} h {c['second_derivatives_rel']:.1e}  loss {c['loss_rel']:.1e}  "
                f"grads {c['gradient_rel_max']:.1e}  {'agrees' if c['agrees'] else 'DISAGREES'}"
            )
    for dataset, loader in result["loaders"].items():
        lines.append("")
        lines.append(
            f"{dataset}: data feeding per epoch: ours {loader['ours_seconds_per_epoch'] * 1000:.1f} ms, "
            f"DataLoader {loader['straightforward_seconds_per_epoch'] * 1000:.1f} ms "
            f"({loader['data_ratio']:.1f}x); whole epoch DataLoader / ours:"
        )
        lines.append("  " + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in loader["per_model"].items()))
    for key, title, slow, fast in (("tf32", "TF32", "off", "on"), ("compile", "torch.compile", "eager", "compiled")):
        for dataset, section in result.get(key, {}).items():
            lines.append("")
            if "skipped" in section:
                lines.append(f"{dataset}: {title}: {section['skipped']}")
                continue
            lines.append(f"{dataset}: {title}, ms per step {slow} / {fast} (speed-up):")
            lines.append("  " + ", ".join(
                f"{label} {1000 * r[f'seconds_per_step_{slow}']:.1f} / {1000 * r[f'seconds_per_step_{fast}']:.1f} "
                f"({r['speedup']:.2f}x)" for label, r in section.items()))  # fmt: skip
    for dataset, peaks in result.get("peak_memory_bytes", {}).items():
        if any(v is not None for v in peaks.values()):
            lines.append(f"{dataset}: peak memory of a step: " + ", ".join(
                f"{label} {v / 2**30:.2f} GiB" for label, v in peaks.items() if v is not None))  # fmt: skip
    grid = result["grid"]
    lines.append("")
    lines.append(
        f"verdict: fastest agreeing derivative method {result['verdict']['per_dataset']} "
        f"(auto on {result['device_type']} = {result['auto_method']})"
    )
    lines.append(
        f"grid estimate ({grid['runs']} runs: {', '.join(grid['models'])} x {', '.join(grid['datasets'])}, "
        f"one at a time): {grid['hours']:.1f} h with grad2vae {grid['grad2vae_method']}"
        + (
            f", {grid['hours_with_grad2vae_loop']:.1f} h with the loop"
            if grid["hours_with_grad2vae_loop"]
            else ""
        )
        + "; per model: "
        + ", ".join(f"{m} {h:.1f} h" for m, h in grid["hours_per_model"].items())
    )
    if grid.get("hours_seeds_per_job") is not None:
        lines.append(
            f"  with seeds_per_job {grid['seeds_per_job']} (seed_batching auto = {grid['seed_batching']} "
            f"on {result['device_type']}): {grid['hours_seeds_per_job']:.1f} h"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--tiny", action="store_true", help="toy sizes for CI: runs in seconds")
    parser.add_argument("--output", help="write the results as JSON to this file (atomically)")
    parser.add_argument("--models", help=f"comma-separated (default: the grid's {','.join(GRID_MODELS)})")
    parser.add_argument(
        "--methods", help="Grad2VAE derivative methods, comma-separated (default: all; loop is always kept)"
    )
    parser.add_argument(
        "--datasets",
        help="comma-separated dataset=latent (default: mnist=16,fashion_mnist=32, the grid's)",
    )
    parser.add_argument("--batch-size", type=int, help="training batch (default 128, the paper's)")
    parser.add_argument("--train-images", type=int, help="images per epoch (default 6000)")
    parser.add_argument("--test-images", type=int, help="test set size the evaluation is scaled to (10000)")
    parser.add_argument(
        "--eval-images", type=int, help="test images actually scored (default: all; fewer to save time)"
    )
    parser.add_argument("--eval-batch-size", type=int, help="test images per scores() call (1000)")
    parser.add_argument("--repeats", type=int, help="interleaved timing rounds (default 3)")
    parser.add_argument("--steps", type=int, help="training steps per round and variant (default 1)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per variant (default 1, FLOP-counted)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--tf32", action="store_true",
        help="also time TF32 on against off (CUDA; training keeps TF32 off until its AUC effect is measured)",
    )
    parser.add_argument(
        "--compile", action="store_true",
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
            raise UserError(f"--seeds-per-process must be 0 (skip) or >= 2 (got {seeds_per_process})")
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
            raise UserError(f"unknown derivative method(s) {unknown}; known: {', '.join(DERIVATIVE_METHODS)}")
        settings.methods = (REFERENCE_METHOD,) + tuple(m for m in methods if m != REFERENCE_METHOD)
    if args.datasets:
        datasets = {}
        for item in args.datasets.split(","):
            name, _, latent = item.partition("=")
            try:
                datasets[name.strip()] = int(latent) if latent else GRID_DATASETS[name.strip()]
            except (KeyError, ValueError):
                raise UserError(f"--datasets: {item!r} is not dataset=latent (e.g. mnist=16)") from None
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
