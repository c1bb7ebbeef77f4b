"""What `grad2vae bench` measures on a GPU: peak memory, TF32 and torch.compile.

Each measured side by side in one run: the peak device memory of a training step, TF32 on
against off, and ``torch.compile(mode="reduce-overhead")`` against eager for the small models'
steps.

TF32 stays off in training (``devices.deterministic``) until its effect on the AUCs is measured;
this only times it. On the CPU there is no TF32 and no device memory counter: those sections say
so instead of measuring; compilation runs anywhere (on this project's CPU it gave the VAE step
1.14x after a 71 s compile, so it is off by default).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Callable, Iterator

import torch

#: models whose steps are small enough that launch overhead may dominate on a GPU
COMPILE_MODELS = ("vae", "cae", "inception_caenn")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model, optimizer, batch: torch.Tensor, loss: Callable | None = None) -> None:
    """One optimisation step; ``loss`` replaces ``model.loss`` (a compiled version of it)."""
    optimizer.zero_grad(set_to_none=True)
    (loss or model.loss)(batch)["total"].backward()
    optimizer.step()


def peak_memory(device: torch.device, work: Callable[[], None]) -> int | None:
    """``torch.cuda.max_memory_allocated`` over ``work``; None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    work()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for cuDNN convolutions and cuBLAS matmuls on or off inside the block."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def interleaved(
    variants: dict[str, Callable[[], None]], device: torch.device, repeats: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant, in rounds A, B, A, B, ...; round 0 is a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(repeats + 1):
        for name, work in variants.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                work()
            synchronize(device)
            if round_index:
                times[name].append((time.perf_counter() - start) / steps)
    return times


def _pair(times: dict[str, list[float]], slow: str, fast: str) -> dict:
    return {
        f"seconds_per_step_{slow}": statistics.median(times[slow]),
        f"seconds_per_step_{fast}": statistics.median(times[fast]),
        "speedup": statistics.median(times[slow]) / statistics.median(times[fast]),
        "speedup_paired": statistics.median(a / b for a, b in zip(times[slow], times[fast])),
        "rounds": times,
    }


def time_tf32(models: dict[str, torch.nn.Module], batch: torch.Tensor, repeats: int, steps: int,
              log: Callable[[str], None]) -> dict:  # fmt: skip
    """Per model: a training step with TF32 off (as trained) against on, interleaved."""
    device = batch.device
    if device.type != "cuda":
        return {
            "skipped": f"TF32 exists only on CUDA devices (Ampere and later), not on {device.type}"
        }
    results = {}
    for label, model in models.items():
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def with_tf32(enabled: bool, model=model, optimizer=optimizer) -> Callable[[], None]:
            def work() -> None:
                with tf32(enabled):
                    training_step(model, optimizer, batch)

            return work

        times = interleaved(
            {"off": with_tf32(False), "on": with_tf32(True)}, device, repeats, steps
        )
        results[label] = _pair(times, "off", "on")
        log(f"  {label}: TF32 off {1000 * results[label]['seconds_per_step_off']:.1f} ms, "
            f"on {1000 * results[label]['seconds_per_step_on']:.1f} ms per step")  # fmt: skip
    return results


def time_compile(models: dict[str, torch.nn.Module], batch: torch.Tensor, repeats: int, steps: int,
                 log: Callable[[str], None]) -> dict:  # fmt: skip
    """Per model: its eager training step against the same step with
    ``torch.compile(model.loss, mode="reduce-overhead")`` on a copy, interleaved; the first
    compiled call (the compilation) is timed on its own."""
    device = batch.device
    results = {}
    for label, model in models.items():
        compiled_model = copy.deepcopy(model)
        eager_optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        compiled_optimizer = torch.optim.Adam(compiled_model.parameters(), lr=1e-3)
        compiled_loss = torch.compile(compiled_model.loss, mode="reduce-overhead")
        synchronize(device)
        start = time.perf_counter()
        training_step(compiled_model, compiled_optimizer, batch, compiled_loss)
        synchronize(device)
        compile_seconds = time.perf_counter() - start
        times = interleaved(
            {"eager": lambda: training_step(model, eager_optimizer, batch),
             "compiled": lambda: training_step(
                 compiled_model, compiled_optimizer, batch, compiled_loss)},
            device, repeats, steps,
        )  # fmt: skip
        results[label] = {**_pair(times, "eager", "compiled"), "compile_seconds": compile_seconds}
        log(f"  {label}: eager {1000 * results[label]['seconds_per_step_eager']:.1f} ms, compiled "
            f"{1000 * results[label]['seconds_per_step_compiled']:.1f} ms per step "
            f"after {compile_seconds:.0f} s")  # fmt: skip
    return results
