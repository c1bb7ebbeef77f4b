"""What `grad2vae bench` reports: the JSON result, the verdict and grid estimate, the tables.

The JSON result: the rows of one dataset from its measurements (``dataset_rows``) and the whole
result so far (``result_json``, written after every section); from its rows, the verdict per
device and the estimated hours of the grid; from the result, the printed tables
(``format_report``)."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
from typing import Any

import torch

from grad2vae.bench.timing import GRID, REFERENCE_METHOD, DatasetTimes, Settings
from grad2vae.training.devices import device_name

SCHEMA = "grad2vae-bench/1"


# --------------------------------------------------------------------------------------------
# The JSON result
@dataclasses.dataclass
class Sections:
    """What the sections have measured so far, as it goes into the JSON (per dataset where a
    dict)."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    peak_memory_bytes: dict[str, dict[str, int | None]] = dataclasses.field(default_factory=dict)
    seed_groups: dict[str, dict] = dataclasses.field(default_factory=dict)
    tf32: dict[str, dict] = dataclasses.field(default_factory=dict)
    compile: dict[str, dict] = dataclasses.field(default_factory=dict)
    derivative_checks: dict[str, dict] = dataclasses.field(default_factory=dict)
    loaders: dict[str, dict] = dataclasses.field(default_factory=dict)
    matmul_rates: list[float] = dataclasses.field(default_factory=list)


def result_json(
    sections: Sections,
    device: torch.device,
    settings: Settings,
    malloc: str | None,
    auto_method: str,
    complete: bool,
) -> dict:
    """The benchmark's JSON: the machine, the settings and every section so far; once
    ``complete``, also the verdict and the grid estimate."""
    from grad2vae.models.grad2vae import AUTO_DERIVATIVES
    from grad2vae.training.cohort import AUTO_SEED_BATCHING

    rates = sections.matmul_rates
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
            "flops_per_second": statistics.median(rates) if rates else None,
            "flops_per_second_all": rates,
        },
        "rows": sections.rows,
        "peak_memory_bytes": sections.peak_memory_bytes,
        "seed_groups": sections.seed_groups,
        "tf32": sections.tf32,
        "compile": sections.compile,
        "derivative_checks": sections.derivative_checks,
        "loaders": sections.loaders,
        "auto_method": auto_method,
        "auto_table": dict(AUTO_DERIVATIVES),
    }
    if complete:
        result["verdict"] = verdict(sections.rows, sections.derivative_checks)
        result["grid"] = grid_estimate(
            sections.rows,
            settings,
            auto_method,
            sections.seed_groups,
            AUTO_SEED_BATCHING.get(device.type, "vmap"),
        )
    return result


def dataset_rows(
    times: DatasetTimes, settings: Settings, auto_method: str, matmul_rate: float
) -> tuple[list[dict[str, Any]], dict]:
    """One dataset's rows (one per variant: medians of the rounds, epoch and evaluation seconds,
    FLOP rates, speed-ups over the loop) and its data-feeding entry (``loaders``)."""
    step_times, feed = times.step_times, times.feed
    steps_per_epoch = math.ceil(settings.train_images / settings.batch_size)
    loop_label = f"grad2vae[{REFERENCE_METHOD}]"
    loop_step = statistics.median(step_times[loop_label]) if loop_label in step_times else None
    loader: dict[str, Any] = {
        "ours_seconds_per_epoch": feed["ours"],
        "straightforward_seconds_per_epoch": feed["straightforward"],
        "straightforward_kind": times.feed_kind,
        "data_ratio": feed["straightforward"] / max(feed["ours"], 1e-12),
        "per_model": {},
    }
    rows = []
    for variant, model, _, flops in times.prepared:
        step_rounds = step_times[variant.label]
        step = statistics.median(step_rounds)
        epoch = steps_per_epoch * step + feed["ours"]
        epoch_plain = steps_per_epoch * step + feed["straightforward"]
        evaluation = times.eval_times[variant.label]
        # what the trainer's evaluation costs: the scores and the pixel-level AUC beside them
        eval_seconds = evaluation["fit_seconds"] + evaluation["scores_with_pixel_seconds"] * (
            settings.test_images / max(times.eval_images, 1)
        )
        achieved = flops / step
        against_loop = bool(variant.method and loop_step)
        row = {
            "dataset": times.dataset,
            "latent_dim": times.latent_dim,
            "variant": variant.label,
            "model": variant.model_name,
            "derivatives": variant.method,
            "auto": variant.method is None or variant.method == auto_method,
            "ms_per_step": 1000 * step,
            "ms_min": 1000 * min(step_rounds),
            "ms_max": 1000 * max(step_rounds),
            "images_per_second": settings.batch_size / step,
            "seconds_per_epoch": epoch,
            "seconds_per_eval": eval_seconds,
            "eval_fit_seconds": evaluation["fit_seconds"],
            "eval_scores_seconds_measured": evaluation["scores_seconds"],
            # the pixel-level AUC's share of the scoring, measured side by side (time_evaluation)
            "eval_scores_with_pixel_seconds_measured": evaluation["scores_with_pixel_seconds"],
            "pixel_metric_ratio": evaluation["scores_with_pixel_seconds"]
            / max(evaluation["scores_seconds"], 1e-12),
            "eval_images_measured": times.eval_images,
            "flops_per_step": flops,
            "achieved_flops_per_second": achieved,
            "fraction_of_matmul_rate": achieved / matmul_rate,
            "speedup_vs_loop": (loop_step / step) if against_loop else None,
            # the same ratio paired round by round (both timed within seconds of each other),
            # more robust to load that changes between rounds
            "speedup_vs_loop_paired": (
                statistics.median(a / b for a, b in zip(step_times[loop_label], step_rounds))
                if against_loop
                else None
            ),
            "seconds_per_step_rounds": step_rounds,
            "flop_ratio_vs_loop": None,
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        rows.append(row)
        loader["per_model"][variant.label] = {
            "epoch_seconds_ours": epoch,
            "epoch_seconds_straightforward": epoch_plain,
            "ratio": epoch_plain / epoch,
        }
    loop_row = next((r for r in rows if r["variant"] == loop_label), None)
    if loop_row:
        for row in rows:
            if row["derivatives"]:
                row["flop_ratio_vs_loop"] = loop_row["flops_per_step"] / row["flops_per_step"]
    return rows, loader


# --------------------------------------------------------------------------------------------
# Verdict and grid estimate


def verdict(rows: list[dict], checks: dict) -> dict:
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
        "hours_with_grad2vae_loop": with_loop
        if with_loop is None or math.isfinite(with_loop)
        else None,
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
        f"matmul {result['matmul']['size']}^2 float32: "
        f"{result['matmul']['flops_per_second'] / gf:.1f} GFLOP/s (median of the rounds)",
        "",
        f"{'dataset':<14}{'variant':<24}{'ms/step':>10}{'img/s':>8}{'s/epoch':>9}{'s/eval':>9}"
        f"{'GFLOP':>9}{'GFLOP/s':>9}{'%mm':>6}{'pixel':>7}{'xloop':>7}{'paired':>7}{'flop/':>7}",
    ]
    for r in result["rows"]:
        variant = r["variant"] + (" *" if r["derivatives"] and r["auto"] else "")
        lines.append(
            f"{r['dataset']:<14}{variant:<24}"
            f"{r['ms_per_step']:>10.1f}{r['images_per_second']:>8.0f}{r['seconds_per_epoch']:>9.1f}"
            f"{r['seconds_per_eval']:>9.1f}{r['flops_per_step'] / gf:>9.2f}"
            f"{r['achieved_flops_per_second'] / gf:>9.1f}{100 * r['fraction_of_matmul_rate']:>6.0f}"
            f"{r['pixel_metric_ratio']:>7.2f}"
            + (
                f"{r['speedup_vs_loop']:>7.2f}{r['speedup_vs_loop_paired']:>7.2f}"
                f"{r['flop_ratio_vs_loop']:>7.2f}"
                if r["speedup_vs_loop"]
                else ""
            )
        )
    lines.append(
        "(* = the method 'auto' picks on this device; pixel = scoring time with the pixel-level "
        "AUC / without it; xloop = speed-up over the loop (ratio of medians), paired = median of "
        "the per-round ratios; flop/ = loop FLOPs / its FLOPs)"
    )
    for dataset, groups in result.get("seed_groups", {}).items():
        lines.append("")
        lines.append(
            f"{dataset}: several seeds in one process, seconds per step of all seeds "
            "(vmap vs in turn)"
        )
        for label, g in groups.items():
            lines.append(
                f"  {label:<22} {g['seeds']} seeds: "
                f"in turn {g['seconds_per_step_in_turn']:.3f} s, "
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
            f"{dataset}: data feeding per epoch: "
            f"ours {loader['ours_seconds_per_epoch'] * 1000:.1f} ms, "
            f"DataLoader {loader['straightforward_seconds_per_epoch'] * 1000:.1f} ms "
            f"({loader['data_ratio']:.1f}x); whole epoch DataLoader / ours:"
        )
        lines.append(
            "  " + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in loader["per_model"].items())
        )
    for key, title, slow, fast in (
        ("tf32", "TF32", "off", "on"),
        ("compile", "torch.compile", "eager", "compiled"),
    ):
        for dataset, section in result.get(key, {}).items():
            lines.append("")
            if "skipped" in section:
                lines.append(f"{dataset}: {title}: {section['skipped']}")
                continue
            lines.append(f"{dataset}: {title}, ms per step {slow} / {fast} (speed-up):")
            lines.append("  " + ", ".join(
                f"{label} {1000 * r[f'seconds_per_step_{slow}']:.1f} / "
                f"{1000 * r[f'seconds_per_step_{fast}']:.1f} ({r['speedup']:.2f}x)"
                for label, r in section.items()))  # fmt: skip
    for dataset, peaks in result.get("peak_memory_bytes", {}).items():
        if any(v is not None for v in peaks.values()):
            lines.append(f"{dataset}: peak memory of a step: " + ", ".join(
                f"{label} {v / 2**30:.2f} GiB"
                for label, v in peaks.items() if v is not None))  # fmt: skip
    grid = result["grid"]
    lines.append("")
    lines.append(
        f"verdict: fastest agreeing derivative method {result['verdict']['per_dataset']} "
        f"(auto on {result['device_type']} = {result['auto_method']})"
    )
    lines.append(
        f"grid estimate ({grid['runs']} runs: "
        f"{', '.join(grid['models'])} x {', '.join(grid['datasets'])}, one at a time): "
        f"{grid['hours']:.1f} h with grad2vae {grid['grad2vae_method']}"
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
            f"  with seeds_per_job {grid['seeds_per_job']} "
            f"(seed_batching auto = {grid['seed_batching']} on {result['device_type']}): "
            f"{grid['hours_seeds_per_job']:.1f} h"
        )
    return "\n".join(lines)
