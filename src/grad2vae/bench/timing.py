"""What `grad2vae bench` measures: every timing and check, returned as numbers.

The settings, the variants timed side by side (models and derivative methods), steps, seed
groups, evaluation, data feeding, FLOP counts and the derivative methods' agreement; and one
dataset's timed sections in the order ``bench.run_benchmark`` runs them."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import numpy as np
import torch

from grad2vae.bench import gpu as bench_gpu
from grad2vae.bench.gpu import synchronize, training_step
from grad2vae.training.pixel_auc import PixelAUC
from grad2vae.training.run_config import DEFAULT_LATENT_DIM

#: the four models of the paper's grid (config.yaml ``models``)
GRID_MODELS = ("grad2vae", "vae", "cae", "inception_caenn")


#: latent size per dataset (paper Sect. 4.2)
GRID_DATASETS = dict(DEFAULT_LATENT_DIM)


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
    """One variant per model; a model with second-derivative methods (Grad2VAE) one per method
    of ``settings.methods``, named ``model[method]``."""
    from grad2vae.models import accepts, create_model

    chosen = []
    for name in settings.models:
        if accepts(name, "derivatives"):
            for method in settings.methods:
                chosen.append(
                    Variant(
                        f"{name}[{method}]",
                        name,
                        method,
                        lambda n=name, m=method: create_model(
                            n, latent_dim, dataset=dataset, derivatives=m
                        ),
                    )
                )
        else:
            chosen.append(
                Variant(
                    name, name, None, lambda n=name: create_model(n, latent_dim, dataset=dataset)
                )
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
    device: torch.device,
    settings: Settings,
    dataset: str,
    latent_dim: int,
    train_x: torch.Tensor,
    log: Callable[[str], None],
) -> dict[str, dict]:
    """Several seeds in one process: one vmapped step of k models (``cohort.vmapped_step``, what
    ``train_seeds`` does with seed_batching vmap) against the same k models stepped one after
    another, per model that supports it on this device, in interleaved rounds. Returns per model
    the seconds per step of all k seeds both ways and the speed-up (in turn / vmapped)."""
    from grad2vae.models import create_model
    from grad2vae.training.cohort import vmapped_step

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
        label = (
            name
            if getattr(models[0], "derivatives", None) is None
            else f"{name}[{resolve(models[0], device)}]"
        )

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
            "speedup_paired": statistics.median(
                a / b for a, b in zip(times["in_turn"], times["vmap"])
            ),
            "rounds": times,
        }
        log(
            f"  {label}: {seeds} seeds, in turn {1000 * in_turn_s:.0f} ms, "
            f"vmapped {1000 * vmap_s:.0f} ms per step"
        )
        models.clear()  # free this model's seeds before the next model's
        optimizers.clear()
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


def time_evaluation(
    model, train_x: torch.Tensor, test_x: torch.Tensor, batch_size: int, seed: int
) -> dict:
    """Seconds of ``fit_scorer`` (training images) and of scoring ``test_x`` as the trainer's
    ``evaluate`` runs them (eval mode, no_grad fit, enable_grad ``score_batch``), side by side
    without and with the pixel-level AUC of the output images (``pixel_auc``: accumulated on the
    device, computed once at the end), so that the metric's share is a ratio of two runs."""
    device = train_x.device
    model.eval()
    try:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.fit_scorer(train_x)
        synchronize(device)
        fit = time.perf_counter() - start
        plain = _time_scoring(model, test_x, batch_size, seed, pixel=False)
        with_pixel = _time_scoring(model, test_x, batch_size, seed, pixel=True)
        return {
            "fit_seconds": fit,
            "scores_seconds": plain,
            "scores_with_pixel_seconds": with_pixel,
        }
    finally:
        model.train()


def _time_scoring(model, test_x: torch.Tensor, batch_size: int, seed: int, pixel: bool) -> float:
    device = test_x.device
    generator = torch.Generator(device).manual_seed(seed)
    metrics: dict[str, PixelAUC] = {}
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, len(test_x), batch_size):
        batch = test_x[first : first + batch_size]
        with torch.enable_grad():
            scores, images = model.score_batch(batch, generator)
        for value in scores.values():
            value.detach().cpu()
        if pixel:
            for name, image in images.items():
                metrics.setdefault(name, PixelAUC()).update(batch, image.detach())
    for metric in metrics.values():
        metric.compute()
    synchronize(device)
    return time.perf_counter() - start


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
            self.kind = (
                "per-item uint8 -> float / 255 (torchvision not installed; same work as ToTensor)"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._to_tensor(self.images[index])


def feed_ours(train_x: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
    """Seconds to produce every batch of one epoch as ``cohort.train_in_lockstep`` does."""
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
# One dataset's timed sections, in the order ``bench.run_benchmark`` runs them

#: a variant ready to time: the variant, its model, its optimizer and its FLOPs per step
Prepared = tuple[Variant, torch.nn.Module, torch.optim.Optimizer, int]


@dataclasses.dataclass
class DatasetTimes:
    """What the timed sections measured for one dataset (``bench.results.dataset_rows`` turns it
    into the JSON rows)."""

    dataset: str
    latent_dim: int
    prepared: list[Prepared]
    step_times: dict[str, list[float]]  # seconds per step, one per round, per variant label
    eval_times: dict[str, dict]  # time_evaluation per variant label
    eval_images: int  # test images actually scored
    feed: dict[str, float]  # median seconds per epoch of the data feeding: ours, straightforward
    feed_kind: str  # StraightforwardDataset.kind


def prepare_variants(
    device: torch.device,
    settings: Settings,
    dataset: str,
    latent_dim: int,
    batch: torch.Tensor,
    log: Callable[[str], None],
) -> tuple[list[Prepared], dict[str, int | None]]:
    """Every variant built, FLOP-counted and warmed up; with the peak device memory of one of its
    steps per label (None off CUDA)."""
    prepared: list[Prepared] = []
    peaks: dict[str, int | None] = {}
    for variant in build_variants(settings, dataset, latent_dim):
        torch.manual_seed(settings.seed)
        model = variant.build().to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        flops = count_step_flops(model, optimizer, batch)  # also the first warm-up step
        for _ in range(settings.warmup - 1):
            training_step(model, optimizer, batch)
        peak = bench_gpu.peak_memory(device, lambda: training_step(model, optimizer, batch))
        peaks[variant.label] = peak
        prepared.append((variant, model, optimizer, flops))
        peak_text = f", peak {peak / 2**30:.2f} GiB" if peak is not None else ""
        log(f"  {variant.label}: {flops / 1e9:.2f} GFLOP per step{peak_text}")
    return prepared, peaks


def time_rounds(
    device: torch.device,
    settings: Settings,
    prepared: list[Prepared],
    batch: torch.Tensor,
    matmul_a: torch.Tensor,
    log: Callable[[str], None],
) -> tuple[dict[str, list[float]], list[float]]:
    """--repeats rounds, each a matmul probe then every variant's steps (A, B, C, A, B, C, ...),
    so that other load on the machine hits every variant alike: the seconds per step of each
    round per variant label, and the probe's FLOP/s per round."""
    time_matmul(device, settings.matmul_size, matmul_a)  # warm-up
    step_times: dict[str, list[float]] = {v.label: [] for v, *_ in prepared}
    matmul_rates = []
    for round_index in range(settings.repeats):
        matmul_rates.append(time_matmul(device, settings.matmul_size, matmul_a))
        for variant, model, optimizer, _ in prepared:
            step_times[variant.label].append(time_steps(model, optimizer, batch, settings.steps))
        log(
            f"  round {round_index + 1}/{settings.repeats}: "
            + ", ".join(f"{label} {1000 * times[-1]:.0f} ms" for label, times in step_times.items())
        )
    return step_times, matmul_rates


def time_feeding(
    train_x: torch.Tensor,
    straightforward: StraightforwardDataset,
    settings: Settings,
    device: torch.device,
) -> dict[str, float]:
    """Median seconds of one epoch's data feeding, ours and straightforward, both interleaved."""
    feed: dict[str, list[float]] = {"ours": [], "straightforward": []}
    for repeat in range(settings.loader_repeats + 1):
        ours = feed_ours(train_x, settings.batch_size, torch.Generator().manual_seed(repeat))
        plain = feed_straightforward(straightforward, settings.batch_size, device, repeat)
        if repeat:  # the first is a warm-up
            feed["ours"].append(ours)
            feed["straightforward"].append(plain)
    return {key: statistics.median(values) for key, values in feed.items()}


def time_evaluations(
    prepared: list[Prepared],
    train_x: torch.Tensor,
    eval_x: torch.Tensor,
    settings: Settings,
    log: Callable[[str], None],
) -> dict[str, dict]:
    """``time_evaluation`` per variant label, once each (it is long; its noise is small relative
    to its length)."""
    eval_times = {}
    for variant, model, _, _ in prepared:
        t = time_evaluation(model, train_x, eval_x, settings.eval_batch_size, settings.seed)
        eval_times[variant.label] = t
        log(
            f"  {variant.label}: evaluation fit {t['fit_seconds']:.2f} s, "
            f"scores of {len(eval_x)} images {t['scores_seconds']:.2f} s, "
            f"with the pixel AUC {t['scores_with_pixel_seconds']:.2f} s"
        )
    return eval_times
