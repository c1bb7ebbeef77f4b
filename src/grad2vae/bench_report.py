"""How `grad2vae bench` reports: the verdict per device, the estimated hours of the grid and the
printed tables."""

from __future__ import annotations

import math

from grad2vae.bench_timing import GRID, REFERENCE_METHOD, Settings


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
        lines.append(
            f"{dataset}: several seeds in one process, seconds per step of all seeds (vmap vs in turn)"
        )
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
